//! Prometheus scrapes a live instance (Debian's `prometheus`, installed by `make test`)
//! every second; after a known workload the series must arrive through the Prometheus HTTP
//! API with the right values. `scrape`: `/metrics` under many concurrent scrapers (one Redis
//! refresh shared, never a half-cleared series).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::actors::{open_session, result_for, terminals, utterance};
use common::*;
use serde_json::{Value, json};

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of `q` summed over its series: with `SWITCHYARD_TEST_TOPOLOGY=cluster` the
/// instance serves three cells, and every cell has its own `switchyard_nodes` series (the
/// workload's nodes are all in one of them).
async fn query(port: u16, q: &str) -> Option<f64> {
    let q = format!("sum({q})");
    let enc: String = q
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query={enc}");
    let v: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test]
async fn prometheus_scrapes_the_transition_counters_and_gauges() {
    let redis = RedisServer::start().await;
    // The test node does not heartbeat: keep it alive for the whole scrape window.
    let inst = start_tweaked(&redis, |c| c.node.liveness_ms = Some(120_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: ['{}']\n",
            inst.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let _prom = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus must be installed (make test installs it)"),
    );

    // A known workload: 3 utterances answered, 1 for a pair no node serves.
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let nid = node.register_id(fixture("node_register_first"), None).await;
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    for i in 0..3 {
        s.send(&utterance(&sid, i)).await;
        let a = node.recv_type("job_assign").await;
        let mut r = result_for(&a, "ok");
        r["node_id"] = json!(nid);
        node.send(&r).await;
    }
    let mut u = utterance(&sid, 3);
    u["tgt_lang"] = json!("ko");
    s.send(&u).await;
    assert_eq!(terminals(&mut s, 4, Duration::from_secs(5)).await.len(), 4);

    let expect = [
        (r#"switchyard_jobs_total{event="submitted"}"#, 4.0),
        (r#"switchyard_jobs_total{event="dispatched"}"#, 3.0),
        (r#"switchyard_jobs_total{event="finished"}"#, 3.0),
        (
            r#"switchyard_jobs_failed_total{reason="NO_AVAILABLE_NODE"}"#,
            1.0,
        ),
        (r#"switchyard_e2e_latency_seconds_count"#, 3.0),
        (r#"switchyard_dispatch_latency_seconds_count"#, 3.0),
        (r#"switchyard_nodes{state="ready"}"#, 1.0),
        (r#"switchyard_pool_nodes{pool="pub:zh:en"}"#, 1.0),
        (r#"switchyard_connections{kind="session"}"#, 1.0),
        (r#"switchyard_connections{kind="node"}"#, 1.0),
        (
            r#"switchyard_script_calls_total{script="submit",outcome="ok"}"#,
            4.0,
        ),
        (
            r#"switchyard_script_calls_total{script="job_result",outcome="ok"}"#,
            3.0,
        ),
        (r#"switchyard_dead_letters"#, 0.0),
        (r#"switchyard_queue_depth{pool="pub:zh:en"}"#, 0.0),
    ];
    for (q, want) in expect {
        let got = eventually(Duration::from_secs(20), q, || async move {
            query(port, q).await.filter(|v| (*v - want).abs() < 1e-9)
        })
        .await;
        assert_eq!(got, want, "{q}");
    }
    common::invariants::check(&mut redis.client().await).await;
}

#[path = "prometheus/scrape.rs"]
mod scrape;
