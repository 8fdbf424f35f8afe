//! The chaos run: the instances as child processes of the built binary (killed with `-9` and
//! restarted on the same port), the nodes and sessions spread over them, the kills, and the
//! final checks of every session's terminals and of every cell's state.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::RngExt;

use super::node::chaos_node;
use super::session::chaos_session;
use super::{
    CellUnderTest, Counts, INSTANCES, KILL_EVERY, KILLS, NODES, NodeSpread, SESSIONS, UTTERANCES,
};
use crate::common;
use crate::common::invariants;
use crate::common::*;

struct Instances {
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    /// `SWITCHYARD_REDIS__*` variables: the topology the instances use.
    redis_env: Vec<(&'static str, String)>,
    dir: std::path::PathBuf,
}

impl Instances {
    fn spawn(&mut self, i: usize) {
        let log =
            std::fs::File::create(self.dir.join(format!("instance-{i}.log"))).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .env("SWITCHYARD_LISTEN", format!("127.0.0.1:{}", self.ports[i]))
            .env(secret_env().0, secret_env().1)
            .envs(self.redis_env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("SWITCHYARD_LOG__LEVEL", "warn")
            // Liveness (3 x 500 ms) is no longer than the presence TTL plus a heartbeat, on
            // purpose: some nodes of a killed instance are taken offline before they may take
            // their id back (docs/configuration.md, `liveness_ms`), so their jobs fail over.
            .env("SWITCHYARD_NODE__HEARTBEAT_INTERVAL_MS", "500")
            .env("SWITCHYARD_NODE__DISCONNECT_GRACE_MS", "1500")
            .env("SWITCHYARD_SWEEP__INTERVAL_MS", "50")
            .env("SWITCHYARD_INSTANCE__PRESENCE_TTL_MS", "1000")
            .env("SWITCHYARD_INSTANCE__BEAT_INTERVAL_MS", "200")
            .env("SWITCHYARD_JOBS__RUN_TIMEOUT_MS", "3000")
            .env("SWITCHYARD_JOBS__QUEUE_WAIT_MS", "15000")
            .env("SWITCHYARD_JOBS__MAX_ATTEMPTS", "6")
            .env("SWITCHYARD_JOBS__RECORD_TTL_MS", "120000")
            .env("SWITCHYARD_SESSION__REORDER_WINDOW_MS", "30000")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn switchyard");
        self.children[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// Run the chaos scenario with instances configured by `redis_env`, nodes and sessions
/// spread round-robin over `cells` (by their tenant); the final checks read each cell.
pub(super) async fn chaos(redis_env: Vec<(&'static str, String)>, cells: Vec<CellUnderTest>) {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..INSTANCES).map(|_| free_port()).collect();
    let mut inst = Instances {
        ports: ports.clone(),
        children: (0..INSTANCES).map(|_| None).collect(),
        redis_env,
        dir: dir.path().to_path_buf(),
    };
    for i in 0..INSTANCES {
        inst.spawn(i);
    }
    let urls: Arc<Vec<String>> = Arc::new(
        ports
            .iter()
            .map(|p| format!("ws://127.0.0.1:{p}"))
            .collect(),
    );
    for p in &ports {
        let url = format!("http://127.0.0.1:{p}/readyz");
        eventually(Duration::from_secs(10), "instance ready", || {
            let url = url.clone();
            async move { (reqwest::get(&url).await.ok()?.status().as_u16() == 200).then_some(()) }
        })
        .await;
    }
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let spread = Arc::new(NodeSpread::default());
    let nodes: Vec<_> = (0..NODES)
        .map(|k| {
            let cell = k % cells.len();
            tokio::spawn(chaos_node(
                (cells[cell].tenant.clone(), cell),
                urls.clone(),
                spread.clone(),
                stop.clone(),
                counts.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|k| {
            let tenant = cells[k % cells.len()].tenant.clone();
            tokio::spawn(chaos_session(
                tenant,
                urls.clone(),
                counts.clone(),
                deadline,
            ))
        })
        .collect();

    let started = Instant::now();
    for _ in 0..KILLS {
        let jitter = rand::rng().random_range(0..1000);
        tokio::time::sleep(KILL_EVERY + Duration::from_millis(jitter)).await;
        let victim = rand::rng().random_range(0..INSTANCES);
        inst.kill(victim);
        counts.kills.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        inst.spawn(victim);
    }

    let mut logs = Vec::new();
    for s in sessions {
        logs.push(s.await.expect("session task"));
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for n in nodes {
        let _ = tokio::time::timeout(Duration::from_secs(3), n).await;
    }

    let mut conns = Vec::new();
    for cell in &cells {
        let c = common::topology::connect(&cell.direct)
            .await
            .expect("connect to the cell's node");
        conns.push((cell.prefix.as_str(), c));
    }
    let mut failovers = 0u64;
    for (prefix, c) in &mut conns {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}job:*"))
            .query_async(c)
            .await
            .unwrap();
        assert!(!keys.is_empty(), "cell {prefix} ran jobs");
        for k in keys.iter().filter(|k| !k.ends_with(":audio")) {
            let f: Option<u64> = redis::cmd("HGET")
                .arg(k)
                .arg("failovers")
                .query_async(c)
                .await
                .unwrap();
            failovers += f.unwrap_or(0);
        }
    }
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut problems = Vec::new();
    for (k, log) in logs.iter().enumerate() {
        let idx: Vec<u64> = log.terminals.iter().map(|t| t.0).collect();
        if idx != (0..UTTERANCES).collect::<Vec<_>>() {
            problems.push(format!("session {k}: terminals by index {idx:?}"));
        }
        if log.resumed_false > 0 {
            problems.push(format!("session {k}: resume refused"));
        }
        for (_, kind) in &log.terminals {
            *by_kind.entry(kind.clone()).or_default() += 1;
        }
    }
    let mut delays = counts.reconnect_ms.lock().unwrap().clone();
    delays.sort_unstable();
    let pct = |p: usize| {
        delays
            .get(delays.len().saturating_sub(1) * p / 100)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "chaos (auth required, fleet node token): node reconnect delay p50 {} ms, p90 {} ms, max {} ms \
         over {} reconnects; takeovers refused while the old connection looked live: {}",
        pct(50),
        pct(90),
        pct(100),
        delays.len(),
        counts.node_conflicts.load(Ordering::Relaxed)
    );
    println!(
        "chaos: {} sessions x {UTTERANCES} utterances = {}, kills {}, failovers {failovers}, session resumes {}, \
         resent utterances {}, node reconnects {}, terminals {by_kind:?}, {:.1} s",
        SESSIONS,
        SESSIONS as u64 * UTTERANCES,
        counts.kills.load(Ordering::Relaxed),
        counts.resumes.load(Ordering::Relaxed),
        counts.resends.load(Ordering::Relaxed),
        counts.node_reconnects.load(Ordering::Relaxed),
        elapsed.as_secs_f64()
    );
    assert!(
        problems.is_empty(),
        "{} sessions wrong:\n{}",
        problems.len(),
        problems.join("\n")
    );
    // The kills hit: sessions resumed and nodes reconnected (the kill count alone is the
    // loop's own). And "loses nothing" means results, not errors in their place: a job may
    // run out of attempts only if the kills hit it on every node it tried, which a run of
    // this length makes rare (2,000 of 2,000 in the runs seen).
    assert!(
        counts.resumes.load(Ordering::Relaxed) > 0,
        "no session resumed"
    );
    assert!(
        counts.node_reconnects.load(Ordering::Relaxed) > 0,
        "no node reconnected"
    );
    let total = SESSIONS as u64 * UTTERANCES;
    let results = by_kind.get("translation_result").copied().unwrap_or(0);
    assert!(
        results >= total - total / 100,
        "{results} of {total} utterances got their result: {by_kind:?}"
    );

    // Let the last disconnects settle, then the state of every cell must be clean.
    let settle = Instant::now();
    for (prefix, c) in &mut conns {
        loop {
            let live: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(format!("{prefix}nodes:live"))
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(c)
                .await
                .unwrap();
            if live.is_empty() || settle.elapsed() > Duration::from_secs(8) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for i in 0..INSTANCES {
        inst.kill(i);
    }
    for (_, c) in &mut conns {
        invariants::check(c).await;
    }
}
