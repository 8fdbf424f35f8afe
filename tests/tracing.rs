//! One OTLP trace per utterance across instances: two instances as child processes export
//! spans with OTLP/gRPC to a receiver in this test (opentelemetry-proto + tonic). A session
//! on instance A sends one utterance that a node on instance B answers; the spans of both
//! processes must form one trace, under the client's trace_id, linked
//! session.utterance → script.submit → dispatch → node.job_result → script.job_result →
//! delivery.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::actors::{open_session, result_for, utterance};
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde_json::json;

/// A received span: name, ids (hex), the pid resource attribute of its process.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    trace: String,
    span: String,
    parent: String,
    pid: String,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut got = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let pid = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "process.pid")
                .map(|kv| format!("{:?}", kv.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Got {
                        name: s.name,
                        trace: hex(&s.trace_id),
                        span: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        pid: pid.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

struct Instance(Child, u16);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node on `b` answers one utterance of a session on `a` with `text`: the utterance's
/// trace id and the session's `translation_result`.
async fn one_utterance(a: &Instance, b: &Instance, text: &str) -> (String, serde_json::Value) {
    let mut node = WsClient::connect(&with_token(&format!("ws://127.0.0.1:{}/ws/node", b.1))).await;
    let nid = node.register_id(fixture("node_register_first"), None).await;
    let (mut s, sid) = open_session(
        &with_token(&format!("ws://127.0.0.1:{}/ws/session", a.1)),
        fixture("session_init_one_way"),
    )
    .await;
    let u = utterance(&sid, 0);
    let trace_id = u["trace_id"].as_str().unwrap().to_string();
    s.send(&u).await;
    let assign = node.recv_type("job_assign").await;
    let mut r = result_for(&assign, text);
    r["node_id"] = json!(nid);
    node.send(&r).await;
    (trace_id, s.recv_type("translation_result").await)
}

/// An OTLP receiver, a redis-server, and two instances exporting to the receiver (`a` with
/// `a_env` set too), both ready.
struct Traced {
    receiver: Receiver,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    redis: RedisServer,
    a: Instance,
    b: Instance,
}

impl Traced {
    async fn start(a_env: &[(&str, &str)]) -> Self {
        let receiver = Receiver::default();
        let otlp = free_port();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve(format!("127.0.0.1:{otlp}").parse().unwrap());
        let server = tokio::spawn(server);
        let redis = RedisServer::start().await;
        let a = spawn_with(&redis.url(), otlp, a_env);
        let b = spawn_with(&redis.url(), otlp, &[]);
        for i in [&a, &b] {
            let url = format!("http://127.0.0.1:{}/readyz", i.1);
            eventually(Duration::from_secs(10), "instance ready", || {
                let url = url.clone();
                async move {
                    (reqwest::get(&url).await.ok()?.status().as_u16() == 200).then_some(())
                }
            })
            .await;
        }
        Self {
            receiver,
            server,
            redis,
            a,
            b,
        }
    }
}

fn spawn_with(redis: &str, otlp: u16, env: &[(&str, &str)]) -> Instance {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .envs(env.iter().copied())
        .env("SWITCHYARD_LISTEN", format!("127.0.0.1:{port}"))
        .env(secret_env().0, secret_env().1)
        .env("SWITCHYARD_REDIS__URL", redis)
        .env("SWITCHYARD_LOG__LEVEL", "warn")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{otlp}"),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn switchyard");
    Instance(child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_utterance_across_two_instances_is_one_trace_with_linked_spans() {
    let Traced {
        receiver,
        server,
        redis,
        a,
        b,
    } = Traced::start(&[]).await;
    let (trace_id, result) = one_utterance(&a, &b, "traced").await;
    assert_eq!(result["text_translated"], "traced");

    let want = [
        "session.utterance",
        "script.submit",
        "dispatch",
        "node.job_result",
        "script.job_result",
        "delivery",
    ];
    let spans: HashMap<String, Got> =
        eventually(Duration::from_secs(10), "all spans exported", || {
            let got = receiver.0.lock().unwrap().clone();
            let trace_id = trace_id.clone();
            async move {
                let mine: HashMap<String, Got> = got
                    .into_iter()
                    .filter(|g| g.trace == trace_id)
                    .map(|g| (g.name.clone(), g))
                    .collect();
                want.iter().all(|w| mine.contains_key(*w)).then_some(mine)
            }
        })
        .await;
    for pair in want.windows(2) {
        let (parent, child) = (&spans[pair[0]], &spans[pair[1]]);
        assert_eq!(
            child.parent, parent.span,
            "{} is a child of {}: {spans:#?}",
            pair[1], pair[0]
        );
    }
    assert_eq!(
        spans["session.utterance"].pid, spans["delivery"].pid,
        "A: session side"
    );
    assert_eq!(
        spans["dispatch"].pid, spans["node.job_result"].pid,
        "B: node side"
    );
    assert_ne!(
        spans["session.utterance"].pid, spans["dispatch"].pid,
        "two instances, one trace"
    );
    for w in want {
        let g = &spans[w];
        println!(
            "{w:<18} trace {} span {} parent {:<16} pid {}",
            g.trace, g.span, g.parent, g.pid
        );
    }
    server.abort();
    common::invariants::check(&mut redis.client().await).await;
}

/// `telemetry.sample_ratio` thins utterance traces too: at 0, nothing of an utterance's trace
/// is exported, by the instance of the session (ratio 0) nor by the node's (ratio 1, which
/// follows the parent's decision carried through Redis), while that second instance still
/// exports its own spans. Before, a client's (or a minted) trace id was always marked
/// sampled, so the ratio never thinned session traffic (observability audit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_ratio_zero_exports_no_utterance_trace() {
    let Traced {
        receiver,
        server,
        redis: _redis,
        a,
        b,
    } = Traced::start(&[("SWITCHYARD_TELEMETRY__SAMPLE_RATIO", "0")]).await;
    let (trace_id, _) = one_utterance(&a, &b, "untraced").await;
    // B's own spans (its node's registration) arrive: the exporter works ...
    eventually(Duration::from_secs(10), "B exports its own spans", || {
        let got = receiver.0.lock().unwrap().clone();
        async move {
            got.iter()
                .any(|g| g.name == "node.node_register")
                .then_some(())
        }
    })
    .await;
    // ... and after two more export periods, nothing of the utterance's trace came.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.0.lock().unwrap().clone();
    let mine: Vec<&str> = got
        .iter()
        .filter(|g| g.trace == trace_id)
        .map(|g| g.name.as_str())
        .collect();
    assert!(mine.is_empty(), "exported at ratio 0: {mine:?}");
    drop((a, b));
    server.abort();
}
