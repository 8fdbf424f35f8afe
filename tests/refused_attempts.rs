//! Refused attempts on a live id do not cost its holder a message (DESIGN §8, the local
//! connection map of §2): a resume with a wrong resume token, or a fleet credential trying to
//! take a live node's id, binds the id to the attempting connection on this instance before
//! the script refuses it. That pending binding must never hide the connection that holds the
//! id — every result of a live session and every `job_assign` of a live node still reaches
//! it while other clients hammer the same instance with refused attempts. Real
//! redis-server, real WebSocket clients, the invariant checker after every scenario.
//! `reordered.rs`: accepted takeovers whose outcomes arrive out of commit order.

mod common;
#[path = "refused_attempts/reordered.rs"]
mod reordered;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::actors::*;
use common::invariants::{self, PREFIX};
use common::*;
use redis::AsyncCommands;
use serde_json::{Value, json};
use switchyard::server::Running;

const T: Duration = Duration::from_secs(5);
/// Utterances the live peer sends while the attempts run.
const UTTERANCES: u64 = 60;
/// Clients making refused attempts at once.
const THIEVES: usize = 6;

/// Attempts running in the background until stopped; counts the refusals they saw.
struct Attempts {
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Attempts {
    /// `THIEVES` tasks each running `attempt` in a loop (it returns the error code it got).
    fn start<F, Fut>(attempt: F) -> Self
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Option<String>> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicUsize::new(0));
        let tasks = (0..THIEVES)
            .map(|_| {
                let (stop, refused, attempt) = (stop.clone(), refused.clone(), attempt.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if attempt().await.is_some() {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            refused,
            tasks,
        }
    }

    /// Stop the attempts; returns how many were refused.
    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("attempt task");
        }
        self.refused.load(Ordering::Relaxed)
    }
}

/// No delivery to a `kind` connection of this instance found its socket gone.
async fn none_gone(inst: &Running, kind: &str) {
    let m = metrics_text(inst).await;
    let gone = format!(r#"switchyard_deliveries_total{{kind="{kind}",detail="gone"}}"#);
    let lost: Vec<&str> = m.lines().filter(|l| l.starts_with(&gone)).collect();
    assert!(lost.is_empty(), "deliveries lost: {lost:?}");
    assert!(
        m.contains(&format!(
            r#"switchyard_deliveries_total{{kind="{kind}",detail="sent"}}"#
        )),
        "deliveries are counted: {m}"
    );
}

/// The session sends utterance after utterance and the node answers each; every result
/// reaches the session, in order, with its own text.
async fn every_result_arrives(s: &mut WsClient, sid: &str, n: &mut WsClient, nid: &str) {
    for i in 0..UTTERANCES {
        s.send(&utterance(sid, i)).await;
        let a = next_of(n, "job_assign", T)
            .await
            .unwrap_or_else(|| panic!("job_assign of utterance {i}"));
        assert_eq!(a["utterance_index"], i);
        n.send(&answer(&a, nid, &format!("result {i}"))).await;
        let r = terminals(s, 1, T).await;
        assert_eq!(r[0]["type"], "translation_result", "{}", r[0]);
        assert_eq!(r[0]["utterance_index"], i);
        assert_eq!(r[0]["text_translated"], format!("result {i}"));
    }
}

/// The `error` code a connection got for `frame`, if it got one.
async fn refusal(url: &str, frame: &Value) -> Option<String> {
    let mut ws = WsClient::connect(url).await;
    ws.send(frame).await;
    next_of(&mut ws, "error", T)
        .await
        .and_then(|e| e["code"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_session_keeps_every_result_while_refused_resumes_of_its_id_run() {
    let redis = RedisServer::start().await;
    // The attempts send a frame as fast as the instance answers.
    let inst = start_tweaked(&redis, |c| {
        c.limits.session_frames_per_sec = 1e6;
        c.limits.session_frame_burst = 1_000_000;
    })
    .await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, ack) = open_session_ack(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    let sid = ack["session_id"].as_str().expect("session_id").to_string();
    let conn: String = c
        .hget(format!("{PREFIX}session:{sid}"), "conn")
        .await
        .unwrap();

    // Each attempt: one connection, session_init after session_init with the session's id
    // and a wrong token (a refused init leaves the connection open for another).
    let url = ws_url(&inst, "/ws/session");
    let mut init = fixture("session_init_one_way");
    init["resume_session_id"] = json!(sid);
    init["resume_token"] = json!("rt-00000000000000000000000000000000");
    let attempts = Attempts::start(move || {
        let (url, init) = (url.clone(), init.clone());
        async move {
            let mut thief = WsClient::connect(&url).await;
            let mut refused = None;
            for _ in 0..50 {
                thief.send(&init).await;
                let code = next_of(&mut thief, "error", T).await?;
                assert_eq!(code["code"], "UNAUTHORIZED", "{code}");
                refused = Some("UNAUTHORIZED".to_string());
            }
            refused
        }
    });
    every_result_arrives(&mut s, &sid, &mut n, &nid).await;
    let refused = attempts.stop().await;
    assert!(refused > 0, "the attempts ran");
    println!("{refused} connections of refused resumes during {UTTERANCES} results");

    let after: String = c
        .hget(format!("{PREFIX}session:{sid}"), "conn")
        .await
        .unwrap();
    assert_eq!(after, conn, "the session stays with its connection");
    none_gone(&inst, "session").await;
    invariants::check(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_node_keeps_every_job_assign_while_refused_takeovers_of_its_id_run() {
    let redis = RedisServer::start().await;
    // Refused at once: each attempt is one round trip with its binding pending.
    let inst = start_tweaked(&redis, |c| c.node.takeover_wait_ms = 0).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    let conn: String = c.hget(format!("{PREFIX}node:{nid}"), "conn").await.unwrap();

    // Each attempt: a fleet credential (no `sub`) registering the live node's id, refused
    // with NODE_ID_CONFLICT and closed.
    let url = ws_url(&inst, "/ws/node");
    let mut register = fixture("node_register_reconnect");
    register["node_id"] = json!(nid);
    let attempts = Attempts::start(move || {
        let (url, register) = (url.clone(), register.clone());
        async move {
            let code = refusal(&url, &register).await?;
            assert_eq!(code, "NODE_ID_CONFLICT");
            Some(code)
        }
    });
    every_result_arrives(&mut s, &sid, &mut n, &nid).await;
    let refused = attempts.stop().await;
    assert!(refused > 0, "the attempts ran");
    println!("{refused} refused takeovers during {UTTERANCES} job_assigns");

    let after: String = c.hget(format!("{PREFIX}node:{nid}"), "conn").await.unwrap();
    assert_eq!(after, conn, "the node stays with its connection");
    none_gone(&inst, "node").await;
    invariants::check(&mut c).await;
}

/// A takeover wait longer than 32 tries of 100 ms (3.2 s) is waited out, then refused with
/// NODE_ID_CONFLICT: the retries were bounded by a count too, and after 3.2 s the
/// registration failed with INTERNAL_ERROR instead (configuration audit).
#[tokio::test]
async fn a_takeover_wait_past_32_tries_is_waited_out_then_refused_as_a_conflict() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.node.takeover_wait_ms = 4_000).await;
    let mut c = redis.client().await;
    let (_n, nid) = node_on(&inst, None).await;
    let mut register = fixture("node_register_reconnect");
    register["node_id"] = json!(nid);
    let mut ws = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let started = std::time::Instant::now();
    ws.send(&register).await;
    let e = next_of(&mut ws, "error", Duration::from_secs(10))
        .await
        .expect("an error");
    let waited = started.elapsed();
    assert_eq!(e["code"], "NODE_ID_CONFLICT", "{e} after {waited:?}");
    assert!(
        waited >= Duration::from_millis(3_900),
        "refused after {waited:?}"
    );
    invariants::check(&mut c).await;
}
