//! The binary's runtime: `switchyard serve` runs `instance.worker_threads` runtime workers
//! (one by default: no wakeup crosses threads, bench/notes.md "round 8"), counted from the
//! process's threads as the kernel lists them; what it logs of a node's own words.

mod common;

use common::children::Instances;
use common::{RedisServer, WsClient, fixture, with_token};
use serde_json::json;

/// Threads of `pid` that are tokio runtime workers (named "tokio-rt-worker" by the
/// runtime). Its blocking pool's threads share the name; none runs here (no
/// `spawn_blocking`, and the Redis address is an IP literal: no name lookup).
fn runtime_workers(pid: u32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count()
}

#[tokio::test]
async fn serve_runs_as_many_runtime_workers_as_configured() {
    let redis = RedisServer::start().await;
    for (setting, workers) in [(None, 1), (Some("3"), 3)] {
        let dir = tempfile::tempdir().unwrap();
        let mut env = vec![("SWITCHYARD_LOG__LEVEL", "warn")];
        if let Some(n) = setting {
            env.push(("SWITCHYARD_INSTANCE__WORKER_THREADS", n));
        }
        let mut inst = Instances::new(1, redis.url(), dir.path(), env);
        inst.spawn(0);
        inst.wait_ready(0).await;
        let pid = inst.pid(0).expect("running");
        assert_eq!(
            runtime_workers(pid),
            workers,
            "worker_threads = {setting:?}"
        );
        inst.terminate(0);
    }
}

/// One instance as a child process writing a text log, on its own redis-server.
struct TextLogged {
    _redis: RedisServer,
    dir: tempfile::TempDir,
    inst: Instances,
}

impl TextLogged {
    async fn start() -> Self {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let env = vec![("SWITCHYARD_LOG__FORMAT", "text")];
        let mut inst = Instances::new(1, redis.url(), dir.path(), env);
        inst.spawn(0);
        inst.wait_ready(0).await;
        Self {
            _redis: redis,
            dir,
            inst,
        }
    }

    /// A node connection (not registered yet).
    async fn node(&self) -> WsClient {
        let url = with_token(&format!("ws://127.0.0.1:{}/ws/node", self.inst.ports[0]));
        WsClient::connect(&url).await
    }

    /// The instance's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("instance-0-1.log")).expect("log")
    }
}

impl Drop for TextLogged {
    fn drop(&mut self) {
        self.inst.terminate(0);
    }
}

/// Audit finding: a `node_error`'s code and message were logged whole and as they came: a
/// node (or anyone with a node token, registered or not) could write megabytes a frame, and
/// with the text log format forge log lines with newlines. Now each is cut (64 bytes, 1 KB)
/// and escaped.
#[tokio::test]
async fn a_node_error_is_logged_bounded_and_on_one_line() {
    let t = TextLogged::start().await;
    let mut n = t.node().await;
    let forged = "\nFORGED ERROR switchyard: all sessions lost\n";
    n.send(
        &json!({"type": "node_error", "code": format!("C{}", "X".repeat(60_000)),
        "message": format!("{forged}{}", "m".repeat(200_000))}),
    )
    .await;
    n.register_id(fixture("node_register_first"), None).await; // (the error was handled)
    let log = t.log();
    let line = log
        .lines()
        .find(|l| l.contains("node_error"))
        .unwrap_or_else(|| panic!("no node_error logged:\n{log}"));
    assert!(line.len() < 4096, "{} bytes logged", line.len());
    assert!(line.contains("FORGED"), "{line}");
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a node forged a log line:\n{log}"
    );
}

/// A node's `trace_id` and `job_id` become span fields before the frame is validated, and
/// every log line inside the span carries them: a stale `job_result` with a 200 KB
/// `trace_id` logged a 200 KB line (and, with OTLP on, exported a span as large).
/// Now an invalid id is recorded as `<invalid>` (observability audit).
#[tokio::test]
async fn a_peers_oversized_ids_do_not_reach_span_fields_or_log_lines() {
    let t = TextLogged::start().await;
    let mut n = t.node().await;
    let nid = n.register_id(fixture("node_register_first"), None).await;
    let mut r = fixture("job_result_success");
    r["node_id"] = json!(nid);
    r["job_id"] = json!("job-unknown-0");
    r["trace_id"] = json!("t".repeat(200_000));
    n.send(&r).await;
    let e = n.recv_type("error").await; // (stale: rejected, logged)
    assert_eq!(e["code"], "INVALID_MESSAGE", "{e}");
    let log = t.log();
    let line = log
        .lines()
        .find(|l| l.contains("stale message rejected"))
        .unwrap_or_else(|| panic!("no stale message logged:\n{log}"));
    assert!(line.len() < 4096, "{} bytes logged", line.len());
    assert!(line.contains("<invalid>"), "{line}");
}

/// One node repeating `node_error` at its frame rate wrote one warn line per frame (up to
/// ~1 MB/s per node at the default 1,000 frames/s). Now a connection writes 10 a minute,
/// and the next one let through says how many were held back; the metric counts them all
/// (observability audit).
#[tokio::test]
async fn a_node_repeating_node_error_does_not_flood_the_log() {
    let t = TextLogged::start().await;
    let mut n = t.node().await;
    n.register_id(fixture("node_register_first"), None).await;
    for _ in 0..300 {
        n.send(&json!({"type": "node_error", "code": "NO_GPU_AVAILABLE", "message": "oom"}))
            .await;
    }
    let url = format!("http://127.0.0.1:{}/metrics", t.inst.ports[0]);
    common::eventually(
        std::time::Duration::from_secs(5),
        "every node_error counted",
        || {
            let url = url.clone();
            async move {
                let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
                text.contains(r#"switchyard_node_errors_total{detail="NO_GPU_AVAILABLE"} 300"#)
                    .then_some(())
            }
        },
    )
    .await;
    let log = t.log();
    let lines = log.lines().filter(|l| l.contains("node_error")).count();
    assert_eq!(lines, 10, "{log}");
}
