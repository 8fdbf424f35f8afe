//! Chaos: 3 instances as child processes (the built binary) on one Redis, 20 nodes and 50
//! sessions spread over them round-robin, continuous utterances, and `kill -9` of a random
//! instance every few seconds (restarted on the same port). Nodes reconnect elsewhere and
//! re-register with their id; sessions resume with `resume_session_id` and resend what has
//! no outcome yet (idempotent). At the end every utterance index of every session must
//! have exactly one terminal message, in order, and Redis must satisfy the invariants.
//! Bounded: sessions stream for ~12 s while 4 kills happen; 60 s at most in all. Run on one
//! Redis, on a Sentinel-managed primary + replica and on a 3-primary 3-replica Redis Cluster
//! with three cells (a third of the nodes and sessions in each, by tenant).

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::actors::{is_terminal, result_for};
use common::invariants::{self, PREFIX};
use common::*;
use futures_util::{SinkExt, StreamExt};
use rand::RngExt;
use serde_json::{Value, json};
use switchyard::config::CellSpec;
use tokio::sync::mpsc;
use tokio_tungstenite::connect_async_with_config;
use tokio_tungstenite::tungstenite::Message;

const INSTANCES: usize = 3;
const NODES: usize = 20;
const SESSIONS: usize = 50;
const UTTERANCES: u64 = 40;
const KILL_EVERY: Duration = Duration::from_secs(3);
const KILLS: usize = 4;

#[derive(Default)]
struct Counts {
    kills: AtomicU64,
    /// Registrations refused because the old connection still looked live
    /// (NODE_ID_CONFLICT: a fleet token cannot take over a live node).
    node_conflicts: AtomicU64,
    /// ms from a node's connection ending to its next acknowledged registration.
    reconnect_ms: std::sync::Mutex<Vec<u64>>,
    node_reconnects: AtomicU64,
    resumes: AtomicU64,
    resends: AtomicU64,
}

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

/// One cell under test: the tenant whose peers live in it (None: the default cell), its key
/// prefix and a plain connection URL to the node holding it (for the final checks).
struct CellUnderTest {
    tenant: Option<String>,
    prefix: String,
    direct: String,
}

/// The test's round-robin "load balancer": the next instance URL for a (re)connect, with a
/// credential of `tenant`.
fn pick(urls: &[String], turn: &mut usize, path: &str, tenant: Option<&str>) -> String {
    *turn += 1;
    let scope = if path == "/ws/node" {
        Scope::Node
    } else {
        Scope::Session
    };
    with_given_token(
        &format!("{}{path}", urls[*turn % urls.len()]),
        &token(&[scope], None, tenant),
    )
}

/// A lingua-like node that answers after 30-150 ms and survives instance deaths.
async fn chaos_node(
    k: usize,
    tenant: Option<String>,
    urls: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let mut turn = k;
    let mut node_id: Option<String> = None;
    let (done_tx, mut done_rx) = mpsc::channel::<Value>(256);
    let mut unsent: Vec<Value> = Vec::new();
    let mut lost_at: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let Ok((ws, _)) = connect_async_with_config(
            pick(&urls, &mut turn, "/ws/node", tenant.as_deref()),
            None,
            true,
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (mut sink, mut stream) = ws.split();
        let mut reg = fixture("node_register_first");
        reg["node_id"] = node_id.clone().map(Value::from).unwrap_or(Value::Null);
        reg["max_concurrent_jobs"] = json!(4);
        if sink
            .send(Message::Text(reg.to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        let id = loop {
            match tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if v["type"] == "node_register_ack" {
                        break v["node_id"].as_str().map(str::to_string);
                    }
                    if v["code"] == "NODE_ID_CONFLICT" {
                        counts.node_conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => break None,
            }
        };
        let Some(id) = id else { continue };
        if node_id.is_some() {
            counts.node_reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(t) = lost_at.take() {
            let ms = t.elapsed().as_millis() as u64;
            counts.reconnect_ms.lock().unwrap().push(ms);
        }
        node_id = Some(id.clone());
        // Results finished while disconnected go out on the new connection.
        for r in std::mem::take(&mut unsent) {
            if sink
                .send(Message::Text(r.to_string().into()))
                .await
                .is_err()
            {
                unsent.push(r);
            }
        }
        let mut beat = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let mut hb = fixture("node_heartbeat");
                    hb["node_id"] = json!(id);
                    if sink.send(Message::Text(hb.to_string().into())).await.is_err() { break }
                    if stop.load(Ordering::Relaxed) { return }
                }
                Some(r) = done_rx.recv() => {
                    if sink.send(Message::Text(r.to_string().into())).await.is_err() {
                        unsent.push(r);
                        break;
                    }
                }
                msg = stream.next() => {
                    let t = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        _ => break,
                    };
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if v["type"] == "job_assign" {
                        let (tx, id) = (done_tx.clone(), id.clone());
                        tokio::spawn(async move {
                            let ms = rand::rng().random_range(30..150);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            let mut r = result_for(&v, &format!("T{}", v["utterance_index"]));
                            r["node_id"] = json!(id);
                            let _ = tx.send(r).await;
                        });
                    }
                }
            }
        }
        lost_at = Some(Instant::now());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one session saw.
#[derive(Default, Debug)]
struct SessionLog {
    /// Terminal messages in arrival order: (index, type or error code).
    terminals: Vec<(u64, String)>,
    resumed_false: u64,
}

/// A web-client-like session: sends UTTERANCES utterances every 200-400 ms, resumes after any
/// disconnect and resends every index without an outcome.
async fn chaos_session(
    k: usize,
    tenant: Option<String>,
    urls: Arc<Vec<String>>,
    counts: Arc<Counts>,
    deadline: Instant,
) -> SessionLog {
    let mut turn = k;
    let mut log = SessionLog::default();
    let period_ms = rand::rng().random_range(200..400);
    let offset_ms = rand::rng().random_range(0..300);
    tokio::time::sleep(Duration::from_millis(offset_ms)).await;
    let mut sid: Option<String> = None;
    let mut resume_token = Value::Null;
    let mut got: BTreeMap<u64, usize> = BTreeMap::new();
    let mut sent: u64 = 0;
    while Instant::now() < deadline && (got.len() as u64) < UTTERANCES {
        let Ok((ws, _)) = connect_async_with_config(
            pick(&urls, &mut turn, "/ws/session", tenant.as_deref()),
            None,
            true,
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (mut sink, mut stream) = ws.split();
        let mut init = fixture("session_init_one_way");
        if let Some(s) = &sid {
            init["resume_session_id"] = json!(s);
            init["resume_token"] = resume_token.clone();
            let contiguous = (0..).take_while(|i| got.contains_key(i)).count() as i64;
            init["last_received_index"] = json!(contiguous - 1);
        }
        if sink
            .send(Message::Text(init.to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        let ack = loop {
            match tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if v["type"] == "session_init_ack" {
                        break Some(v);
                    }
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => break None,
            }
        };
        let Some(ack) = ack else { continue };
        resume_token = ack["resume_token"].clone();
        let this = ack["session_id"].as_str().unwrap_or_default().to_string();
        if let Some(s) = &sid {
            if ack["resumed"] == true && &this == s {
                counts.resumes.fetch_add(1, Ordering::Relaxed);
            } else {
                log.resumed_false += 1;
                return log;
            }
        }
        sid = Some(this.clone());
        // Resend everything sent without an outcome (the submit is idempotent).
        let mut broken = false;
        for i in (0..sent).filter(|i| !got.contains_key(i)) {
            counts.resends.fetch_add(1, Ordering::Relaxed);
            let mut u = fixture("utterance");
            u["session_id"] = json!(this);
            u["utterance_index"] = json!(i);
            if sink
                .send(Message::Text(u.to_string().into()))
                .await
                .is_err()
            {
                broken = true;
                break;
            }
        }
        // Jittered per session, so instance kills land at every phase of a session's
        // cycle — in particular while an utterance is in flight.
        let mut tick = tokio::time::interval(Duration::from_millis(period_ms));
        while !broken && (got.len() as u64) < UTTERANCES && Instant::now() < deadline {
            tokio::select! {
                _ = tick.tick(), if sent < UTTERANCES => {
                    let mut u = fixture("utterance");
                    u["session_id"] = json!(this);
                    u["utterance_index"] = json!(sent);
                    sent += 1;
                    if sink.send(Message::Text(u.to_string().into())).await.is_err() { broken = true }
                }
                msg = tokio::time::timeout(Duration::from_secs(1), stream.next()) => {
                    match msg {
                        Err(_) => continue,
                        Ok(Some(Ok(Message::Text(t)))) => {
                            let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                            if is_terminal(&v) {
                                let i = v["utterance_index"].as_u64().unwrap_or(u64::MAX);
                                let kind = if v["type"] == "error" { v["code"].as_str().unwrap_or("error") } else { v["type"].as_str().unwrap_or("") };
                                log.terminals.push((i, kind.to_string()));
                                *got.entry(i).or_default() += 1;
                            }
                        }
                        Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                        _ => broken = true,
                    }
                }
            }
        }
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_under_load_loses_and_duplicates_nothing() {
    let redis = RedisServer::start().await;
    chaos(
        vec![("SWITCHYARD_REDIS__URL", redis.url())],
        vec![main_cell(redis.url())],
    )
    .await;
}

/// The default cell `main`, without tenant.
fn main_cell(direct: String) -> CellUnderTest {
    CellUnderTest {
        tenant: None,
        prefix: PREFIX.into(),
        direct,
    }
}

/// The same on a 3-primary 3-replica Redis Cluster with three cells, one per primary (names
/// by slot spread): `main` for tenant-less peers and one more for each of two tenants. The
/// instances find each cell's slot through the cluster; the checks read the primary that
/// holds each cell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_under_load_on_a_redis_cluster() {
    let cluster = common::topology::Cluster::start().await;
    let seeds = serde_json::to_string(&cluster.urls()).unwrap();
    let main_slot = cluster.slot(&format!("{PREFIX}x")).await;
    let others: Vec<Vec<(u16, u16)>> = cluster
        .slot_map()
        .await
        .into_values()
        .filter(|r| !r.iter().any(|(lo, hi)| (*lo..=*hi).contains(&main_slot)))
        .collect();
    let names = switchyard::config::cell::spread_names("switchyard", "cell", 2, &others);
    let mut specs = vec![CellSpec {
        name: "main".into(),
        tenants: Vec::new(),
        default: true,
    }];
    let mut cells = vec![main_cell(String::new())];
    for (i, name) in names.iter().enumerate() {
        let tenant = format!("t{i}");
        specs.push(CellSpec {
            name: name.clone(),
            tenants: vec![tenant.clone()],
            default: false,
        });
        cells.push(CellUnderTest {
            tenant: Some(tenant),
            prefix: format!("{{switchyard:{name}}}:"),
            direct: String::new(),
        });
    }
    let mut primaries = std::collections::BTreeSet::new();
    for c in &mut cells {
        let slot = cluster.slot(&format!("{}x", c.prefix)).await;
        let port = cluster.primary_of(slot).await.expect("slot owner");
        primaries.insert(port);
        c.direct = format!("redis://127.0.0.1:{port}");
    }
    assert_eq!(primaries.len(), 3, "one cell per primary");
    let cells_env: Vec<String> = specs
        .iter()
        .map(|c| {
            format!(
                "{{name=\"{}\",default={},tenants={:?}}}",
                c.name, c.default, c.tenants
            )
        })
        .collect();
    let env = vec![
        ("SWITCHYARD_REDIS__MODE", "cluster".to_string()),
        ("SWITCHYARD_REDIS__URLS", seeds),
        ("SWITCHYARD_CELLS", format!("[{}]", cells_env.join(","))),
    ];
    chaos(env, cells).await;
}

/// The same on a primary + replica managed by three sentinels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_under_load_on_sentinel() {
    let set = common::topology::SentinelSet::start(1, &[]).await;
    let env = vec![
        ("SWITCHYARD_REDIS__MODE", "sentinel".to_string()),
        (
            "SWITCHYARD_REDIS__URLS",
            serde_json::to_string(&set.sentinel_urls()).unwrap(),
        ),
        (
            "SWITCHYARD_REDIS__SENTINEL_MASTER",
            common::topology::MASTER.to_string(),
        ),
    ];
    chaos(env, vec![main_cell(set.primary.url())]).await;
}

/// Run the chaos scenario with instances configured by `redis_env`, nodes and sessions
/// spread round-robin over `cells` (by their tenant); the final checks read each cell.
async fn chaos(redis_env: Vec<(&'static str, String)>, cells: Vec<CellUnderTest>) {
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
    let nodes: Vec<_> = (0..NODES)
        .map(|k| {
            let tenant = cells[k % cells.len()].tenant.clone();
            tokio::spawn(chaos_node(
                k,
                tenant,
                urls.clone(),
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
                k,
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
    assert!(counts.kills.load(Ordering::Relaxed) >= KILLS as u64);

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
