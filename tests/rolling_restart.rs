//! Rolling restart under load, as `kubectl rollout restart` does it: 3 instances as child
//! processes (the built binary, auth required) on one Redis; nodes and sessions spread over
//! them and reconnecting as lingua clients do (nodes re-register with their id and send the
//! results they finished while away; sessions resume with `resume_session_id`,
//! `resume_token` and `last_received_index`, and resend what has no outcome yet). One
//! instance at a time gets SIGTERM; the next only after its replacement, started on the same
//! port, answers `/readyz`. A graceful drain is not a crash: every session must see every
//! utterance's result exactly once, in order, and no error at all. Prints how long each
//! client was away. Bounded: ~15 s of load, 60 s at most.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::actors::{terminal_of, utterance};
use common::children::Instances;
use common::invariants;
use common::roaming::{Roam, finish_close, roaming_node};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

const INSTANCES: usize = 3;
const NODES: usize = 9;
const SESSIONS: usize = 30;
const UTTERANCES: u64 = 40;

/// How long each client was away: ms from its socket ending to the next acknowledged
/// registration / session resume.
#[derive(Default)]
struct Away {
    nodes: Mutex<BTreeMap<usize, Vec<u64>>>,
    sessions: Mutex<BTreeMap<usize, Vec<u64>>>,
}

/// The Service: client `k` goes to instance `k % 3` when it is up, else the next one (a
/// draining instance refuses upgrades with 503, a stopped one refuses connections). Keeps
/// the clients spread over the instances whatever the restart order.
fn pick(urls: &[String], k: usize, attempt: &mut usize, path: &str) -> String {
    let url = &urls[(k + *attempt) % urls.len()];
    *attempt += 1;
    with_token(&format!("{url}{path}"))
}

/// A lingua-like node answering after 30-150 ms (by utterance index); re-registers with its
/// id after any close and sends the results it finished while away.
struct Node {
    k: usize,
    attempt: usize,
    urls: Arc<Vec<String>>,
    away: Arc<Away>,
}

impl Roam for Node {
    fn url(&mut self) -> String {
        pick(&self.urls, self.k, &mut self.attempt, "/ws/node")
    }

    fn registered(&mut self, _again: bool, away: Option<Duration>) {
        self.attempt = 0;
        if let Some(t) = away {
            let ms = t.as_millis() as u64;
            self.away
                .nodes
                .lock()
                .unwrap()
                .entry(self.k)
                .or_default()
                .push(ms);
        }
    }

    fn delay(&mut self, assign: &Value) -> Duration {
        Duration::from_millis(30 + (assign["utterance_index"].as_u64().unwrap_or(0) * 37) % 120)
    }
}

/// What one session saw.
#[derive(Default, Debug)]
struct SessionLog {
    /// Terminal messages in arrival order: (index, type or error code).
    terminals: Vec<(u64, String)>,
    /// Every `error` frame (terminal or not) and refused resume.
    errors: Vec<String>,
}

/// A web-client-like session: an utterance every 250-400 ms; after any close it resumes and
/// resends every index without an outcome (the submit is idempotent).
async fn session(
    k: usize,
    urls: Arc<Vec<String>>,
    away: Arc<Away>,
    deadline: Instant,
) -> SessionLog {
    let mut attempt = 0;
    let mut log = SessionLog::default();
    let period = Duration::from_millis(250 + (k as u64 * 13) % 150);
    tokio::time::sleep(Duration::from_millis((k as u64 * 29) % 300)).await;
    let (mut sid, mut resume_token) = (None::<String>, Value::Null);
    let mut got: BTreeMap<u64, usize> = BTreeMap::new();
    let mut sent: u64 = 0;
    let mut lost_at: Option<Instant> = None;
    while Instant::now() < deadline && (got.len() as u64) < UTTERANCES {
        let Ok((ws, _)) = connect_async(pick(&urls, k, &mut attempt, "/ws/session")).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
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
                    if v["type"] == "error" {
                        log.errors.push(format!("on init: {v}"));
                    }
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => break None,
            }
        };
        let Some(ack) = ack else { continue };
        attempt = 0;
        resume_token = ack["resume_token"].clone();
        let this = ack["session_id"].as_str().unwrap_or_default().to_string();
        if let Some(s) = &sid
            && !(ack["resumed"] == true && &this == s)
        {
            log.errors.push(format!("resume refused: {ack}"));
            return log;
        }
        if let Some(t) = lost_at.take() {
            let ms = t.elapsed().as_millis() as u64;
            away.sessions.lock().unwrap().entry(k).or_default().push(ms);
        }
        sid = Some(this.clone());
        let mut broken = false;
        for i in (0..sent).filter(|i| !got.contains_key(i)) {
            let u = utterance(&this, i);
            if sink
                .send(Message::Text(u.to_string().into()))
                .await
                .is_err()
            {
                broken = true;
                break;
            }
        }
        let mut tick = tokio::time::interval(period);
        while !broken && (got.len() as u64) < UTTERANCES && Instant::now() < deadline {
            tokio::select! {
                _ = tick.tick(), if sent < UTTERANCES => {
                    let u = utterance(&this, sent);
                    sent += 1;
                    if sink.send(Message::Text(u.to_string().into())).await.is_err() { broken = true }
                }
                msg = tokio::time::timeout(Duration::from_secs(1), stream.next()) => {
                    match msg {
                        Err(_) => continue,
                        Ok(Some(Ok(Message::Text(t)))) => log.saw(t.as_str(), &mut got),
                        Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                        Ok(Some(Ok(Message::Close(_)))) => {
                            finish_close(&mut stream).await;
                            broken = true;
                        }
                        _ => broken = true,
                    }
                }
            }
        }
        // Every outcome in: read on a moment, so that a terminal message arriving after the
        // last new one (a duplicate) is seen, and fails the scenario, instead of dying with
        // the socket.
        if !broken && got.len() as u64 >= UTTERANCES {
            let until = tokio::time::Instant::now() + Duration::from_secs(1);
            while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, stream.next()).await {
                if let Message::Text(t) = m {
                    log.saw(t.as_str(), &mut got);
                }
            }
        }
        lost_at = Some(Instant::now());
    }
    log
}

impl SessionLog {
    /// A text frame arrived: an error is logged, a terminal message logged and counted by
    /// index in `got`.
    fn saw(&mut self, text: &str, got: &mut BTreeMap<u64, usize>) {
        let v: Value = serde_json::from_str(text).unwrap_or_default();
        if v["type"] == "error" {
            self.errors.push(v.to_string());
        }
        if let Some((i, kind)) = terminal_of(&v) {
            self.terminals.push((i, kind));
            *got.entry(i).or_default() += 1;
        }
    }
}

fn summary(per_client: &BTreeMap<usize, Vec<u64>>) -> String {
    let mut all: Vec<u64> = per_client.values().flatten().copied().collect();
    all.sort_unstable();
    let pct = |p: usize| {
        all.get(all.len().saturating_sub(1) * p / 100)
            .copied()
            .unwrap_or(0)
    };
    format!(
        "{} reconnects, away p50 {} ms, p90 {} ms, max {} ms",
        all.len(),
        pct(50),
        pct(90),
        pct(100)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut inst = Instances::new(
        INSTANCES,
        redis.url(),
        dir.path(),
        vec![
            ("SWITCHYARD_LOG__LEVEL", "warn"),
            ("SWITCHYARD_NODE__HEARTBEAT_INTERVAL_MS", "500"),
            ("SWITCHYARD_SWEEP__INTERVAL_MS", "50"),
            ("SWITCHYARD_INSTANCE__PRESENCE_TTL_MS", "1000"),
            ("SWITCHYARD_INSTANCE__BEAT_INTERVAL_MS", "200"),
            ("SWITCHYARD_INSTANCE__DRAIN_DELAY_MS", "1000"),
            ("SWITCHYARD_INSTANCE__DRAIN_GRACE_MS", "2000"),
        ],
    );
    let ports = inst.ports.clone();

    for i in 0..INSTANCES {
        inst.spawn(i);
    }
    for i in 0..INSTANCES {
        inst.wait_ready(i).await;
    }
    let urls: Arc<Vec<String>> = Arc::new(
        ports
            .iter()
            .map(|p| format!("ws://127.0.0.1:{p}"))
            .collect(),
    );
    let away = Arc::new(Away::default());
    let stop = Arc::new(AtomicBool::new(false));
    let nodes: Vec<_> = (0..NODES)
        .map(|k| {
            let node = Node {
                k,
                attempt: 0,
                urls: urls.clone(),
                away: away.clone(),
            };
            tokio::spawn(roaming_node(node, 8, stop.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deadline = Instant::now() + Duration::from_secs(45);
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|k| tokio::spawn(session(k, urls.clone(), away.clone(), deadline)))
        .collect();

    // kubectl rollout restart: one at a time, the next once the replacement is ready.
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut drains = Vec::new();
    for i in 0..INSTANCES {
        drains.push(tokio::task::block_in_place(|| inst.terminate(i)));
        inst.spawn(i);
        inst.wait_ready(i).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rollout = started.elapsed();

    let mut logs = Vec::new();
    for s in sessions {
        logs.push(s.await.expect("session task"));
    }
    stop.store(true, Ordering::Relaxed);
    for n in nodes {
        let _ = tokio::time::timeout(Duration::from_secs(3), n).await;
    }

    let mut problems = Vec::new();
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for (k, log) in logs.iter().enumerate() {
        let idx: Vec<u64> = log.terminals.iter().map(|t| t.0).collect();
        if idx != (0..UTTERANCES).collect::<Vec<_>>() {
            problems.push(format!("session {k}: terminals by index {idx:?}"));
        }
        for e in &log.errors {
            problems.push(format!("session {k}: error {e}"));
        }
        for (_, kind) in &log.terminals {
            *by_kind.entry(kind.clone()).or_default() += 1;
        }
    }
    let (nodes_away, sessions_away) = (
        away.nodes.lock().unwrap().clone(),
        away.sessions.lock().unwrap().clone(),
    );
    println!(
        "rolling restart: {INSTANCES} instances restarted in {:.1} s (drains took {:?}); \
         {SESSIONS} sessions x {UTTERANCES} utterances; terminals {by_kind:?}",
        rollout.as_secs_f64(),
        drains
    );
    println!("  nodes:    {}", summary(&nodes_away));
    println!("  sessions: {}", summary(&sessions_away));
    println!("  away per node (ms): {nodes_away:?}");
    println!("  away per session (ms): {sessions_away:?}");
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(
        by_kind.get("translation_result"),
        Some(&(SESSIONS as u64 * UTTERANCES))
    );
    assert!(
        !sessions_away.is_empty(),
        "no session was moved by the restart"
    );

    for i in 0..INSTANCES {
        tokio::task::block_in_place(|| inst.terminate(i));
    }
    let mut c = redis.client().await;
    invariants::check(&mut c).await;
}
