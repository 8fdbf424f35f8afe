//! The binary's runtime: `switchyard serve` runs `instance.worker_threads` runtime workers
//! (one by default: no wakeup crosses threads, bench/notes.md "round 8"), counted from the
//! process's threads as the kernel lists them.

mod common;

use common::RedisServer;
use common::children::Instances;

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
