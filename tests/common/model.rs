//! A simulated cell for the property test: several `Store`s (one per simulated instance)
//! on one real redis-server, and the clients' side of every connection (nodes and
//! sessions), fed with exactly what the scripts deliver — the deliveries a script returns
//! to its calling instance, and the entries other instances' scripts put in its inbox.
//!
//! The client side checks what only a client can see (DESIGN §1.5): one terminal message
//! per utterance index, terminal messages in `out_seq` order per connection, and in index
//! order unless the reorder window passed. Redis-side invariants are in `invariants.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Deserialize;
use switchyard::config::Config;
use switchyard::store::{Output, Store};
use switchyard::telemetry::metrics::Metrics;

/// One simulated instance: its id changes when it is "restarted" after a crash.
pub struct Instance {
    pub id: String,
    pub store: Store,
    /// Connection tokens minted so far (tokens are `<instance>/<n>`, unique for ever).
    seq: u64,
}

impl Instance {
    pub fn new(cfg: &Config, id: String) -> Self {
        let store = Store::new(cfg, &id, Arc::new(Metrics::new())).expect("store");
        Self { id, store, seq: 0 }
    }

    pub fn token(&mut self) -> String {
        self.seq += 1;
        format!("{}/{}", self.id, self.seq)
    }
}

/// A node client: which connection it has now and the attempts it was assigned.
#[derive(Default, Debug)]
pub struct NodeClient {
    /// (instance slot, connection token) while connected.
    pub conn: Option<(usize, String)>,
    /// Every (job id, attempt id) it was ever given and has not answered yet.
    pub work: Vec<(String, u32)>,
    /// Its last known connection token (a reconnect does not forget in-flight work).
    pub last_token: Option<String>,
    /// What it registered with last (capability variant, capacity), to reconnect alike.
    pub caps: u8,
    pub capacity: u8,
}

/// A session client: what it received, so far.
#[derive(Default, Debug)]
pub struct SessionClient {
    pub id: String,
    pub conn: Option<(usize, String)>,
    /// (source, target) language.
    pub langs: (&'static str, &'static str),
    /// Terminal messages received per utterance index.
    pub got: BTreeMap<u64, u32>,
    /// The connection writer's next `out_seq` (1 on open; a resume sets it), and the
    /// terminal messages it holds until the numbers before them arrive (by seq: index, type).
    pub seq: u64,
    pub held: BTreeMap<u64, (u64, String)>,
    /// Next utterance index the client will send.
    pub next_index: u64,
    /// Index → model step at which it was first submitted, and the wall-clock moment.
    /// The scripts' reorder window runs on Redis `TIME`, which moves with real time while the
    /// model works (each step's invariant check reads Redis), so an index submitted more than
    /// a window ago may have been skipped even without an `advance` step.
    pub submitted: BTreeMap<u64, (u64, std::time::Instant)>,
    /// Its session expired and its id was minted again for another client (`Cell::reopen`):
    /// gone for good, never picked again.
    pub retired: bool,
    /// Its session's nonce: its jobs are `job-<nonce>-<index>`.
    pub nonce: String,
    /// Indices whose `submit` made or found a job (`created` / `duplicate`): each must end
    /// in a terminal message, so at every step it is settled or has a live job with a
    /// deadline (`Clients::check_accounted`).
    pub accepted: BTreeSet<u64>,
    /// Terminal messages written after a later index's, their reorder window having passed
    /// (coverage: the fixed replays check they reach what they were kept for).
    pub late: u64,
    /// It has streamed audio: the scripts' cuts (a chunk's, the sweep's pause cut, the
    /// close's) give its utterances their indices, which it learns from the terminal
    /// messages and from Redis (`Cell::learn_cuts`) rather than choosing them.
    pub streams: bool,
    /// The last chunk number used on the current connection (0: none yet; a new connection
    /// numbers from 1), and whether that chunk cut.
    pub chunk: u64,
    pub chunk_cut: bool,
    /// Indices it first heard of in a terminal message (a cut this step made, whose outcome
    /// came at once): confirmed at the step's check against the session's `:jobs` hash
    /// (`Cell::learn_cuts`), so a message for an index never cut is still caught.
    pub unconfirmed: BTreeSet<u64>,
    /// Indices above the `last_received_index` of its last resume that it had already got:
    /// the resume resends them (docs/protocol.md: the contiguous prefix), and the client
    /// drops that one copy by its index.
    pub resent_ok: BTreeSet<u64>,
}

impl SessionClient {
    /// An index a cut gave one of its utterances, cut during step `step` (which started at
    /// `started`, no later than the cut: the reorder window is never counted short).
    pub fn cut_index(&mut self, idx: u64, step: u64, started: std::time::Instant) {
        self.accepted.insert(idx);
        self.submitted.entry(idx).or_insert((step, started));
    }

    /// The writer writes one terminal message to the socket: the client's checks.
    fn write(
        &mut self,
        idx: u64,
        ty: &str,
        at: (u64, std::time::Instant),
        window: u64,
        bad: &mut Vec<String>,
    ) {
        let (step, started) = at;
        if self.resent_ok.remove(&idx) {
            return; // a resume's resend of what the client had: dropped by its index
        }
        // (a gap's missing_result is for an index never sent; a result or error is not)
        if ty != "missing_result" && !self.submitted.contains_key(&idx) {
            if self.streams {
                // a cut this step made (a sweep's, say), whose outcome came at once
                self.cut_index(idx, step, started);
                self.unconfirmed.insert(idx);
            } else {
                bad.push(format!(
                    "{}: {ty} for index {idx}, which this client never sent",
                    self.id
                ));
            }
        }
        let id = &self.id;
        let count = self.got.entry(idx).or_default();
        *count += 1;
        if *count > 1 {
            bad.push(format!(
                "{id}: second terminal message for index {idx} ({ty})"
            ));
        }
        if let Some(j) = self.got.range(idx + 1..).next().map(|(i, _)| *i) {
            // Out of order only for an index whose window passed while it was unfinished.
            let real = std::time::Duration::from_millis(super::cell::WINDOW);
            let late_ok = self
                .submitted
                .get(&idx)
                .is_some_and(|(at, when)| *at < window || when.elapsed() >= real);
            if !late_ok {
                bad.push(format!(
                    "{id}: index {idx} ({ty}) after {j} inside the reorder window (step {step})"
                ));
            }
            self.late += 1;
        }
    }
}

/// The envelope of an inbox entry (lua/includes/deliver.lua).
#[derive(Deserialize)]
struct Envelope {
    k: String,
    id: String,
    conn: String,
    msg: String,
    seq: u64,
}

/// The clients' view of the cell, and what they saw go wrong.
#[derive(Default)]
pub struct Clients {
    pub nodes: BTreeMap<String, NodeClient>,
    pub sessions: Vec<SessionClient>,
    /// Model step counter, when the step started, and the last step at which the reorder
    /// window surely passed.
    pub step: u64,
    pub step_started: Option<std::time::Instant>,
    pub last_window: u64,
    /// Inbox entries a takeover re-routed / dropped (coverage, for PROPTEST_VERBOSE).
    pub rerouted: u64,
    pub dropped: u64,
    /// Inbox entries of a split result whose body was gone (the session's keys expired), read
    /// and dropped as the consumer drops them.
    pub bodiless: u64,
    /// Registrations and heartbeat revivals refused because the node's fleet credential
    /// held its most live nodes (coverage; `cell::fleet`).
    pub fleet_refused: u64,
    /// Streamed audio (coverage): cuts by reason (a chunk's or the close's, as answered;
    /// `learned` for those the clients heard of only from Redis, the sweep's pause cuts),
    /// and chunks refused for a full buffer.
    pub cuts: BTreeMap<String, u64>,
    pub full: u64,
    pub violations: Vec<String>,
}

impl Clients {
    /// Take the deliveries a script returned to instance `slot`.
    pub fn take<T>(&mut self, slot: usize, out: &Output<T>) {
        self.take_with(slot, out, None);
    }

    /// A job_assign (not the caller's own audio) carries its utterance's audio: what
    /// cell.rs submits, large (staged) for odd indices, or the chunks a cut took (whole
    /// chunks of `cell::CHUNK_BYTES`).
    fn check_audio(&mut self, msg: &str, audio: Option<&[u8]>) {
        let v: serde_json::Value = serde_json::from_str(msg).expect("job_assign JSON");
        let large = v["utterance_index"].as_u64().is_some_and(|i| i % 2 == 1);
        let chunk = super::cell::CHUNK_BYTES;
        let ok = match audio {
            Some(a) if a.first() == Some(&super::cell::CHUNK_BYTE) => {
                a.len() % chunk == 0 && a.iter().all(|b| *b == super::cell::CHUNK_BYTE)
            }
            Some(a) if large => {
                a.len() == switchyard::store::STAGE_MIN_BYTES && a.iter().all(|b| *b == 7)
            }
            Some(a) => a == b"pcm",
            None => false,
        };
        if !ok {
            self.violations.push(format!(
                "job_assign with the wrong audio ({:?} bytes): {msg}",
                audio.map(<[u8]>::len)
            ));
        }
    }

    /// [`Clients::take`] for the reply of a call whose staged body (a large result's) the
    /// caller holds: a terminal message marked `town` is the header plus that body, one
    /// with `t` the header plus that blob (as routing::deliver_with joins them).
    pub fn take_with<T>(&mut self, slot: usize, out: &Output<T>, body: Option<&str>) {
        for d in &out.out {
            if d.k == "ui" {
                continue; // UI hints the gateway builds (routing::write_ui_events)
            }
            let tail = match (d.town, d.t) {
                (Some(_), _) => match body {
                    Some(b) => Some(b.to_string()),
                    None => {
                        self.violations
                            .push(format!("own body marked on a call with none: {}", d.msg));
                        continue;
                    }
                },
                (None, Some(i)) => out
                    .blobs
                    .get(i.wrapping_sub(1))
                    .map(|b| String::from_utf8_lossy(b).into_owned()),
                (None, None) => None,
            };
            let msg = format!("{}{}", d.msg, tail.unwrap_or_default());
            // A job_assign's audio comes as a blob, or (`own`) is the caller's own copy.
            if d.k == "node" && d.msg.contains(r#""job_assign""#) && d.own.is_none() {
                let audio = d.blob.and_then(|i| out.blobs.get(i.wrapping_sub(1)));
                self.check_audio(&d.msg, audio.map(Vec::as_slice));
            }
            self.deliver(slot, d.k.as_str(), &d.id, d.conn.as_deref(), &msg, d.seq);
        }
    }

    /// Write one message to the client that holds connection `conn` through `slot`, as the
    /// gateway does (a message for another connection is dropped).
    /// Whether session `id` is bound to connection `conn` of instance `slot`.
    fn session_bound(&self, slot: usize, id: &str, conn: &str) -> bool {
        self.sessions.iter().any(|s| {
            s.id == id
                && s.conn
                    .as_ref()
                    .is_some_and(|(sl, t)| *sl == slot && t == conn)
        })
    }

    fn deliver(
        &mut self,
        slot: usize,
        kind: &str,
        id: &str,
        conn: Option<&str>,
        msg: &str,
        seq: Option<u64>,
    ) {
        let v: serde_json::Value = serde_json::from_str(msg).expect("message JSON");
        let here = |c: &Option<(usize, String)>| {
            c.as_ref()
                .is_some_and(|(s, t)| *s == slot && Some(t.as_str()) == conn)
        };
        if kind == "node" {
            let Some(n) = self.nodes.get_mut(id).filter(|n| here(&n.conn)) else {
                return;
            };
            if v["type"] == "job_assign" {
                let job = v["job_id"].as_str().expect("job_id").to_string();
                let attempt = v["attempt_id"].as_u64().expect("attempt_id") as u32;
                n.work.push((job, attempt));
            }
            return;
        }
        let at = (
            self.step,
            self.step_started.unwrap_or_else(std::time::Instant::now),
        );
        let window = self.last_window;
        let Some(s) = self
            .sessions
            .iter_mut()
            .find(|s| s.id == id && here(&s.conn))
        else {
            return;
        };
        let ty = v["type"].as_str().unwrap_or_default();
        if !matches!(ty, "translation_result" | "error" | "missing_result") {
            return;
        }
        let idx = v["utterance_index"].as_u64().expect("utterance_index");
        // Its own job's outcome, never another session's under the same id and index.
        if let Some(job) = v["job_id"].as_str()
            && job != format!("job-{}-{idx}", s.nonce)
        {
            let m = format!("{id}: {ty} {idx} of {job}, not this session's job");
            return self.violations.push(m);
        }
        // The gateway's ordered writer (src/gateway/socket.rs): numbers below the next one
        // were written already (a resend after resume) and are dropped; later ones wait.
        let Some(q) = seq else {
            let m = format!("{id}: terminal {ty} {idx} without seq");
            return self.violations.push(m);
        };
        if q < s.seq {
            return;
        }
        if s.held.insert(q, (idx, ty.to_string())).is_some() {
            let m = format!("{id}: out_seq {q} delivered twice");
            return self.violations.push(m);
        }
        let mut bad = Vec::new();
        while let Some((idx, ty)) = s.held.remove(&s.seq) {
            s.seq += 1;
            s.write(idx, &ty, at, window, &mut bad);
        }
        self.violations.extend(bad);
    }

    /// Read (and delete) every entry of these instances' inboxes (slot, instance id), as
    /// their consumers do.
    pub async fn drain_inboxes(
        &mut self,
        c: &mut redis::aio::MultiplexedConnection,
        live: &[(usize, String)],
    ) {
        for (slot, inst) in live.iter().cloned() {
            let key = format!("{}inbox:{inst}", super::invariants::PREFIX);
            let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query_async(c)
                .await
                .expect("xrange");
            for e in r.ids {
                let raw = e.map.get("env").expect("env field");
                let bytes: Vec<u8> = redis::from_redis_value_ref(raw).expect("env bytes");
                let env: Envelope = rmp_serde::from_slice(&bytes).expect("envelope");
                let seq = (env.seq > 0).then_some(env.seq);
                if env.k == "node" && env.msg.contains(r#""job_assign""#) {
                    let audio: Option<Vec<u8>> = e
                        .map
                        .get("audio")
                        .map(|a| redis::from_redis_value_ref(a).expect("audio bytes"));
                    self.check_audio(&env.msg, audio.as_deref());
                }
                // A result logged in two parts names its body's key: read it, as the
                // consumer does. A body that is gone (the session's keys expired: Reopen)
                // drops the entry, as the consumer does — never for a connection still
                // bound to the session.
                let tail: Option<Vec<u8>> = match e.map.get("tail_key") {
                    Some(k) => {
                        let k: Vec<u8> = redis::from_redis_value_ref(k).expect("tail_key");
                        redis::cmd("GET")
                            .arg(&k)
                            .query_async(c)
                            .await
                            .expect("get body")
                    }
                    None => Some(Vec::new()),
                };
                match tail {
                    Some(tail) => {
                        let msg = format!("{}{}", env.msg, String::from_utf8_lossy(&tail));
                        self.deliver(slot, &env.k, &env.id, Some(&env.conn), &msg, seq);
                    }
                    None => {
                        assert!(
                            !self.session_bound(slot, &env.id, &env.conn),
                            "the body of a result for {}'s live connection is gone",
                            env.id
                        );
                        self.bodiless += 1;
                    }
                }
                let _: u64 = redis::cmd("XDEL")
                    .arg(&key)
                    .arg(&e.id)
                    .query_async(c)
                    .await
                    .expect("xdel");
            }
        }
    }

    /// Indices a session holds as settled-but-undelivered longer than the window allows,
    /// right after a sweep that started at `swept_at` (Redis ms).
    pub async fn check_window(
        &mut self,
        c: &mut redis::aio::MultiplexedConnection,
        swept_at: u64,
        window: u64,
    ) {
        let p = super::invariants::PREFIX;
        for s in &self.sessions {
            let held: Vec<u64> = redis::cmd("ZRANGE")
                .arg(format!("{p}session:{}:pending", s.id))
                .arg(0)
                .arg(-1)
                .query_async(c)
                .await
                .expect("zrange");
            for idx in held {
                let at: Option<f64> = redis::cmd("ZSCORE")
                    .arg(format!("{p}session:{}:rtime", s.id))
                    .arg(idx)
                    .query_async(c)
                    .await
                    .expect("zscore");
                if at.is_some_and(|t| (t as u64) + window < swept_at) {
                    self.violations.push(format!(
                        "{}: index {idx} held past the reorder window after a sweep",
                        s.id
                    ));
                }
            }
        }
    }

    /// Liveness (a review found the model checked duplicates and order, never loss): every
    /// index a live session's `submit` accepted is settled (below the cursor or in the
    /// result log) or has a job that is still active with a deadline in `due:jobs`, which a
    /// sweep will act on. A script that dropped a job on the floor fails here, at the step
    /// that dropped it.
    pub async fn check_accounted(&mut self, c: &mut redis::aio::MultiplexedConnection) {
        let p = super::invariants::PREFIX;
        for s in self.sessions.iter().filter(|s| !s.retired) {
            let sk = format!("{p}session:{}", s.id);
            let cursor: Option<u64> = redis::cmd("HGET")
                .arg(&sk)
                .arg("next_deliver")
                .query_async(c)
                .await
                .expect("hget");
            let Some(cursor) = cursor else {
                continue; // (the session is gone: nothing more can reach it)
            };
            for &idx in s.accepted.range(cursor..) {
                let settled: bool = redis::cmd("HEXISTS")
                    .arg(format!("{sk}:results"))
                    .arg(idx)
                    .query_async(c)
                    .await
                    .expect("hexists");
                if settled {
                    continue;
                }
                let jid: Option<String> = redis::cmd("HGET")
                    .arg(format!("{sk}:jobs"))
                    .arg(idx)
                    .query_async(c)
                    .await
                    .expect("hget");
                let Some(jid) = jid else {
                    self.violations.push(format!(
                        "{}: index {idx} accepted, has no job and no outcome",
                        s.id
                    ));
                    continue;
                };
                let state: Option<String> = redis::cmd("HGET")
                    .arg(format!("{p}job:{jid}"))
                    .arg("state")
                    .query_async(c)
                    .await
                    .expect("hget");
                let due: Option<f64> = redis::cmd("ZSCORE")
                    .arg(format!("{p}due:jobs"))
                    .arg(&jid)
                    .query_async(c)
                    .await
                    .expect("zscore");
                let active = matches!(
                    state.as_deref(),
                    Some("QUEUED" | "DISPATCHED" | "ACCEPTED" | "RUNNING")
                );
                if !active || due.is_none() {
                    self.violations.push(format!(
                        "{}: index {idx} ({jid}) is lost: no outcome, job {state:?}, deadline {due:?}",
                        s.id
                    ));
                }
            }
        }
    }

    /// The session's clients' indices received, for messages.
    pub fn summary(&self) -> String {
        let s: Vec<String> = self
            .sessions
            .iter()
            .map(|s| format!("{}: {:?}", s.id, s.got.keys().collect::<BTreeSet<_>>()))
            .collect();
        s.join("; ")
    }
}
