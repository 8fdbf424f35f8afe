//! The simulated cell the property test drives: three instances (one `Store` each, with
//! its own instance id) on one real redis-server, and the clients of `model.rs`. Each
//! method is one thing that can happen, done the way the gateway does it (one typed store
//! call, then the deliveries go to whoever holds the connection); `check` gathers every
//! invariant violation after a step.

use std::time::Duration;

use switchyard::capabilities::{Capabilities, Route, RouteRequest, route};
use switchyard::config::Config;
use switchyard::protocol::node::{CapabilityByType, LanguageCapabilities};
use switchyard::store::STAGE_MIN_BYTES;
use switchyard::store::StoreError;
use switchyard::store::instances::DrainReply;
use switchyard::store::instances::ResumeReply;
use switchyard::store::jobs::FencedReply;
use switchyard::store::jobs::{Attempt, Finished, Outcome, result_body};
use switchyard::store::nodes::{HeartbeatReply, NodeClaim, RegisterReply};
use switchyard::store::sessions::{NewJob, SessionReply};

use super::invariants::{self, PREFIX};
use super::model::{Clients, Instance, NodeClient, SessionClient};
use super::{RedisServer, test_config};

mod audio;

pub const NODES: [&str; 3] = ["n0", "n1", "n2"];
pub const INSTANCES: usize = 3;
pub const MAX_SESSIONS: usize = 3;
/// Reorder window of the simulated cell (ms).
pub const WINDOW: u64 = 150;
/// Streamed audio comes in chunks of this many bytes (a long chunk is four of them), every
/// byte `CHUNK_BYTE`, so a job's audio shows it is whole chunks (`model::check_audio`).
pub const CHUNK_BYTES: usize = 300;
pub const CHUNK_BYTE: u8 = 5;

type R = Result<(), StoreError>;

/// How a node answers an attempt.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Ok,
    /// A success with TTS audio: its body is staged and logged apart from its header.
    Large,
    ModelNotAvailable,
    Error,
}

/// Timings small enough that timeouts, queue expiry, the reorder window and liveness all
/// happen within a few `advance` steps.
pub fn cell_config(url: &str) -> Config {
    let mut cfg = test_config(url);
    cfg.session.reorder_window_ms = WINDOW;
    cfg.jobs.run_timeout_ms = 300;
    cfg.jobs.ack_timeout_ms = 150;
    cfg.jobs.queue_wait_ms = 250;
    // Small enough that a queue fills with two sessions' work: a dispatch (a failover's
    // too) then fails for a full queue, which must explain itself (`unexplained_failures`).
    cfg.jobs.queue_max = 2;
    cfg.jobs.model_unavailable_ms = 500;
    // Streamed audio ([`Cell::chunk`]): a pause cut within an `advance` or two, size and
    // duration cuts within a few chunks, a short chunk alone too short to be speech, and
    // few enough indices ahead of the delivery cursor that a cut finds none free (a held
    // cut, then a full buffer) while one job waits.
    cfg.session.pause_ms = 200;
    cfg.session.max_buffer_bytes = 2_000;
    cfg.session.max_duration_ms = 1_500;
    cfg.session.min_cut_ms = 150;
    cfg.session.max_index_ahead = 4;
    cfg.node.liveness_ms = Some(800);
    // Three nodes, two fleet credentials of two places each ([`fleet`]): a count fills.
    cfg.limits.max_nodes_per_credential = FLEET_NODES;
    // Presence lapses only in `crash` (the model deletes it), never by accident.
    cfg.instance.presence_ttl_ms = 60_000;
    cfg
}

/// Capability variants: en→zh only; both directions; zh→en only; nothing.
/// The fleet credential the nodes of instance slot `s` register with: two fleets counted
/// (at most [`FLEET_NODES`] live nodes each, so three nodes can fill one), and on slot 2
/// `fleet-b` again, through an instance that counts nothing ([`slot_config`]: the cell in
/// the middle of turning the limit on). A node that reconnects through another slot moves
/// between counts, or out of them and back.
pub fn fleet(s: usize) -> Option<&'static str> {
    [Some("fleet-a"), Some("fleet-b"), Some("fleet-b")][s % 3]
}
pub const FLEET_NODES: u64 = 2;

/// The configuration of instance slot `s`: `cfg`, but slot 2 counts no fleet credential
/// (`limits.max_nodes_per_credential` 0, an instance not yet restarted with the limit), so
/// the scripts' limit-0 paths run beside the counting ones.
pub fn slot_config(cfg: &Config, s: usize) -> Config {
    let mut c = cfg.clone();
    if s == 2 {
        c.limits.max_nodes_per_credential = 0;
    }
    c
}

pub fn caps(variant: u8) -> Capabilities {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (asr, sem) = match variant % 4 {
        0 => (v(&["en"]), v(&["zh"])),
        1 => (v(&["en", "zh"]), v(&["en", "zh"])),
        2 => (v(&["zh"]), v(&["en"])),
        _ => (vec![], vec![]),
    };
    let services = ["asr", "nmt", "tts"].map(|k| CapabilityByType {
        kind: k.into(),
        ready: true,
    });
    let langs = LanguageCapabilities {
        asr_languages: asr,
        tts_languages: sem.clone(),
        semantic_languages: sem,
    };
    Capabilities {
        langs,
        pairs: None,
        services: services.to_vec(),
        tenant: None,
        accept_public: true,
    }
}

pub fn one_way(src: &str, tgt: &str) -> (Route, String) {
    let (lang_a, lang_b, strict, two_way) = (None, None, false, false);
    let req = RouteRequest {
        tenant: None,
        strict,
        two_way,
        src,
        tgt,
        lang_a,
        lang_b,
        pipeline: Default::default(),
    };
    let spec = serde_json::json!({"src_lang": src, "tgt_lang": tgt, "audio_format": "opus",
        "sample_rate": 16000});
    (route(&req).expect("valid route"), spec.to_string())
}

/// What `session_open` records of a one-way session from `langs.0` to `langs.1`, as the
/// gateway's session_init would (route, job_assign template, resume proof).
pub fn session_fields(langs: (&str, &str)) -> [(&'static str, String); 10] {
    let (r, spec) = one_way(langs.0, langs.1);
    [
        ("src", langs.0.to_string()),
        ("tgt", langs.1.into()),
        ("mode", "one_way".into()),
        ("tenant", String::new()),
        ("pools", r.pools),
        ("needs", r.needs),
        ("pair", r.pair),
        ("spec", spec),
        ("trace_id", "t".into()),
        ("resume_hash", RESUME_HASH.into()),
    ]
}

/// The resume proof every simulated session holds (the gateway stores SHA-256 of a token).
const RESUME_HASH: &str = "proof";
pub const RESULT: &str = r#"{"type":"translation_result","text_asr":"a","text_translated":"b","tts_audio":"","tts_format":"opus"}"#;

/// RESULT with TTS audio past the staging threshold.
fn large_result() -> String {
    RESULT.replace(
        r#""tts_audio":"""#,
        &format!(
            r#""tts_audio":"{}""#,
            "QUJD".repeat(STAGE_MIN_BYTES / 4 + 1)
        ),
    )
}

/// Instances by slot (a crashed slot restarts under a new id) and the clients' view.
pub struct Cell {
    pub inst: Vec<Instance>,
    pub clients: Clients,
    /// Slots whose inbox consumer is stalled (until the next `advance`): their inbox
    /// fills up, and a crash then leaves entries for the takeover to re-route.
    stalled: Vec<bool>,
    cfg: Config,
    generation: u32,
    redis: redis::aio::MultiplexedConnection,
}

impl Cell {
    /// An empty cell (FLUSHALL) with every instance present.
    pub async fn new(server: &RedisServer) -> Result<Self, StoreError> {
        Self::with(server, |_| {}).await
    }

    /// [`Cell::new`] with `tweak` applied to [`cell_config`].
    pub async fn with(
        server: &RedisServer,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<Self, StoreError> {
        let mut redis = server.client().await;
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut redis)
            .await
            .expect("flushall");
        let mut cfg = cell_config(&server.url());
        tweak(&mut cfg);
        let inst = (0..INSTANCES)
            .map(|s| Instance::new(&slot_config(&cfg, s), format!("i{s}g0")))
            .collect();
        let clients = Clients::default();
        let mut cell = Self {
            inst,
            clients,
            stalled: vec![false; INSTANCES],
            cfg,
            generation: 0,
            redis,
        };
        cell.beat_all().await?;
        Ok(cell)
    }

    /// Instances whose consumer reads their inbox now: (slot, id).
    fn consuming(&self) -> Vec<(usize, String)> {
        let on = |(s, i): (usize, &Instance)| (!self.stalled[s]).then(|| (s, i.id.clone()));
        self.inst.iter().enumerate().filter_map(on).collect()
    }

    /// Instance `via`'s inbox consumer stalls until the next `advance`.
    pub async fn stall(&mut self, via: u8) -> R {
        self.stalled[via as usize % INSTANCES] = true;
        Ok(())
    }

    /// Every violation after a step: Redis invariants, then what the clients saw (after
    /// they read the inboxes, as the instances' consumers do).
    pub async fn check(&mut self) -> Vec<String> {
        let live = self.consuming();
        self.clients.drain_inboxes(&mut self.redis, &live).await;
        self.learn_cuts().await;
        let mut bad = invariants::violations(&mut self.redis).await;
        let max_attempts = self.cfg.jobs.max_attempts;
        bad.extend(invariants::unexplained_failures(&mut self.redis, max_attempts).await);
        self.clients.check_accounted(&mut self.redis).await;
        self.check_buffers().await;
        bad.append(&mut self.clients.violations);
        bad
    }

    async fn beat_all(&mut self) -> R {
        for slot in 0..self.inst.len() {
            loop {
                let i = &self.inst[slot];
                let out = i.store.instance_beat(&i.id, 1, false).await?;
                self.clients.take(slot, &out);
                self.clients.rerouted += out.reply.rerouted;
                self.clients.dropped += out.reply.dropped;
                if !out.reply.more {
                    break;
                }
            }
        }
        Ok(())
    }

    fn node(&mut self, node: u8) -> (&'static str, &mut NodeClient) {
        let nid = NODES[node as usize % NODES.len()];
        (nid, self.clients.nodes.entry(nid.into()).or_default())
    }

    /// The `pick`-th session client still in play (modulo their number).
    fn session(&self, pick: u8) -> Option<usize> {
        let live: Vec<usize> = (self.clients.sessions.iter().enumerate())
            .filter(|(_, s)| !s.retired)
            .map(|(k, _)| k)
            .collect();
        (!live.is_empty()).then(|| live[pick as usize % live.len()])
    }

    /// A node (re)connects through `via` with a new connection token, and the fleet
    /// credential of that instance's nodes ([`fleet`]). Refused for its credential's count
    /// (`Limit`), nothing changed: the node keeps its earlier connection, if any.
    pub async fn register(&mut self, node: u8, via: u8, c: u8, capacity: u8) -> R {
        let s = via as usize % INSTANCES;
        let token = self.inst[s].token();
        let (nid, n) = self.node(node);
        let before = (n.conn.clone(), n.last_token.clone(), n.caps, n.capacity);
        n.conn = Some((s, token.clone()));
        n.last_token = Some(token.clone());
        (n.caps, n.capacity) = (c, capacity);
        if self.register_call(s, nid, &token, c, capacity).await? {
            let n = self.node(node).1;
            (n.conn, n.last_token, n.caps, n.capacity) = before;
        }
        Ok(())
    }

    /// `register` of node `nid` through slot `s` on connection `token`, with the slot's
    /// fleet credential; the deliveries taken. Whether it was refused for the credential's
    /// count (`Limit`: nothing changed).
    async fn register_call(
        &mut self,
        s: usize,
        nid: &str,
        token: &str,
        c: u8,
        capacity: u8,
    ) -> Result<bool, StoreError> {
        let extra = [
            ("capacity", capacity.to_string()),
            ("supports_ack", "0".into()),
        ];
        let store = &self.inst[s].store;
        let out = store
            .register(
                nid,
                NodeClaim::Replace,
                token,
                &caps(c),
                &extra,
                0,
                fleet(s),
            )
            .await?;
        self.clients.take(s, &out);
        let refused = match out.reply {
            RegisterReply::Limit { live } => {
                self.refused(s, live);
                true
            }
            _ => false,
        };
        Ok(refused)
    }

    /// A refusal for a full count, on slot `s`, which said the credential holds `live`
    /// nodes: only a counting instance refuses, and only at its limit.
    fn refused(&mut self, s: usize, live: u64) {
        self.clients.fleet_refused += 1;
        let limit = slot_config(&self.cfg, s).limits.max_nodes_per_credential;
        if limit == 0 || live < limit {
            self.clients.violations.push(format!(
                "slot {s} (limit {limit}) refused a node for a full count of {live}"
            ));
        }
    }

    /// A heartbeat on the node's connection, announcing capabilities `c`.
    pub async fn heartbeat(&mut self, node: u8, c: u8) -> R {
        let (nid, n) = self.node(node);
        let Some((s, token)) = n.conn.clone() else {
            return Ok(());
        };
        let out = self.inst[s]
            .store
            .heartbeat(nid, &token, &caps(c), &[], fleet(s))
            .await?;
        self.clients.take(s, &out);
        match out.reply {
            // The gateway registers again on the same connection.
            HeartbeatReply::Missing => {
                // refused for its credential's count: the gateway closes the connection
                if self.register_call(s, nid, &token, c, 1).await? {
                    self.node(node).1.conn = None;
                }
            }
            HeartbeatReply::Stale { .. } => self.node(node).1.conn = None,
            // An offline record not revived (its credential's count is full): the gateway
            // closes the connection, whose close changes nothing more.
            HeartbeatReply::Limit { live } => {
                self.refused(s, live);
                self.node(node).1.conn = None;
            }
            HeartbeatReply::Ok { .. } => {}
        }
        Ok(())
    }

    /// The node's socket closes: `node_offline` with or without a grace.
    pub async fn disconnect(&mut self, node: u8, grace: bool) -> R {
        let (nid, n) = self.node(node);
        let Some((s, token)) = n.conn.take() else {
            return Ok(());
        };
        let grace = if grace { 200 } else { 0 };
        let out = self.inst[s]
            .store
            .node_offline(nid, &token, grace, "closed")
            .await?;
        self.clients.take(s, &out);
        Ok(())
    }

    /// The node answers one attempt it was given; a disconnected node answers on its last
    /// connection (which must be refused as stale).
    pub async fn result(&mut self, node: u8, pick: u8, answer: Answer) -> R {
        let (nid, n) = self.node(node);
        if n.work.is_empty() {
            return Ok(());
        }
        let (job, attempt_id) = n.work.remove(pick as usize % n.work.len());
        let (s, token) = match (&n.conn, &n.last_token) {
            (Some((s, t)), _) => (*s, t.clone()),
            (None, Some(t)) => (0, t.clone()),
            (None, None) => return Ok(()),
        };
        let a = Attempt {
            job_id: &job,
            attempt_id,
            node_id: nid,
            conn: &token,
        };
        let large = large_result();
        let message = match answer {
            Answer::Large => large.as_str(),
            _ => RESULT,
        };
        let outcome = match answer {
            Answer::Ok | Answer::Large => Outcome::Ok(Finished {
                message,
                text_asr: "a",
                text_translated: "b",
                node_completed_at_ms: None,
                processing_time_ms: None,
            }),
            Answer::ModelNotAvailable => Outcome::ModelNotAvailable {
                service: Some("nmt"),
                message: "not_loaded",
            },
            Answer::Error => Outcome::Error {
                code: "PROCESSING_ERROR",
                message: "boom",
            },
        };
        let out = self.inst[s].store.job_result(&a, &outcome).await?;
        self.clients.take_with(s, &out, Some(result_body(message)));
        Ok(())
    }

    /// A new session through `via`: en→zh (pair 0) or zh→en.
    pub async fn open(&mut self, via: u8, pair: u8) -> R {
        if self.clients.sessions.len() >= MAX_SESSIONS {
            return Ok(());
        }
        let sid = format!("s{}", self.clients.sessions.len());
        let langs = if pair == 0 {
            ("en", "zh")
        } else {
            ("zh", "en")
        };
        self.open_as(via, &sid, &sid, langs).await
    }

    /// Every key of a session expires while jobs of it still run (an idle TTL shorter than
    /// a job's life; its reorder and pause clocks fired long before), and its random id is
    /// minted again, through `via`: a new session with another nonce, and a new client. The
    /// old client is gone for good; the new one must get only its own messages, exactly
    /// one terminal message per index (the scripts' `job_session`).
    pub async fn reopen(&mut self, session: u8, via: u8) -> R {
        let Some(k) = self.session(session) else {
            return Ok(());
        };
        let old = &mut self.clients.sessions[k];
        old.retired = true;
        old.conn = None;
        let (sid, langs) = (old.id.clone(), old.langs);
        let sk = format!("{PREFIX}session:{sid}");
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{sk}:body:*"))
            .query_async(&mut self.redis)
            .await
            .expect("keys");
        keys.extend(
            ["", ":jobs", ":results", ":pending", ":audio", ":rtime"].map(|k| format!("{sk}{k}")),
        );
        let _: () = redis::pipe()
            .cmd("DEL")
            .arg(&keys)
            .ignore()
            .cmd("ZREM")
            .arg(format!("{PREFIX}due:reorder"))
            .arg(&sid)
            .ignore()
            .cmd("ZREM")
            .arg(format!("{PREFIX}due:audio"))
            .arg(&sid)
            .ignore()
            .query_async(&mut self.redis)
            .await
            .expect("expire the session");
        let nonce = format!("{sid}r{}", self.clients.step);
        self.open_as(via, &sid, &nonce, langs).await
    }

    /// Open session `sid` (nonce `nonce`) through `via` for a new client.
    async fn open_as(
        &mut self,
        via: u8,
        sid: &str,
        nonce: &str,
        langs: (&'static str, &'static str),
    ) -> R {
        let s = via as usize % INSTANCES;
        let token = self.inst[s].token();
        let fields = session_fields(langs);
        let store = &self.inst[s].store;
        let out = store
            .session_open(sid, false, &token, nonce, None, 0, &fields)
            .await?;
        self.clients.sessions.push(SessionClient {
            id: sid.to_string(),
            nonce: nonce.to_string(),
            conn: Some((s, token)),
            seq: 1,
            langs,
            ..Default::default()
        });
        self.clients.take(s, &out);
        Ok(())
    }

    /// The session sends its next utterance; `skip` leaves a gap, `again` repeats the last.
    pub async fn submit(&mut self, session: u8, skip: bool, again: bool) -> R {
        let Some(k) = self.session(session) else {
            return Ok(());
        };
        let step = self.clients.step;
        let c = &mut self.clients.sessions[k];
        let Some((s, token)) = c.conn.clone() else {
            return Ok(());
        };
        let index = match again && c.next_index > 0 {
            true => c.next_index - 1,
            false => c.next_index + u64::from(skip),
        };
        c.next_index = c.next_index.max(index + 1);
        c.submitted
            .entry(index)
            .or_insert((step, std::time::Instant::now()));
        let (r, spec) = one_way(c.langs.0, c.langs.1);
        let large_audio = vec![7u8; STAGE_MIN_BYTES];
        let job = NewJob {
            index,
            spec: &spec,
            // odd indices past the staging threshold: staged, renamed, read back on demand
            audio: if index % 2 == 1 { &large_audio } else { b"pcm" },
            pools: &r.pools,
            needs: &r.needs,
            pair: &r.pair,
            trace_id: "t",
        };
        let sid = c.id.clone();
        let out = self.inst[s].store.submit(&sid, &token, &job).await?;
        if matches!(
            out.reply,
            SessionReply::Created { .. } | SessionReply::Duplicate { .. }
        ) {
            self.clients.sessions[k].accepted.insert(index);
        }
        // The caller holds the audio: a job_assign for its own node does not carry it back.
        for d in out.out.iter().filter(|d| d.k == "node") {
            if d.own.is_none() || d.blob.is_some() {
                self.clients.violations.push(format!(
                    "submit's job_assign: own {:?}, blob {:?}",
                    d.own, d.blob
                ));
            }
        }
        self.clients.take(s, &out);
        Ok(())
    }

    /// An operator drains (`on`) or undrains a node through instance `via`.
    pub async fn drain(&mut self, node: u8, on: bool, via: u8) -> R {
        let nid = NODES[node as usize % NODES.len()];
        let s = via as usize % INSTANCES;
        let out = self.inst[s].store.node_drain(nid, on).await?;
        if let DrainReply::Ok { state } = &out.reply {
            let want = if on { "draining" } else { "ready" };
            if state != want {
                let m = format!("{nid}: drain {on} left it {state}");
                self.clients.violations.push(m);
            }
        }
        self.clients.take(s, &out);
        Ok(())
    }

    /// The node reports progress on one attempt it holds, which it keeps: `job_ack`
    /// (`kind` 0), `job_started` (1) or an `asr_partial` (2); on its last connection when
    /// it has none (refused as stale).
    pub async fn progress(&mut self, node: u8, pick: u8, kind: u8) -> R {
        let (nid, n) = self.node(node);
        if n.work.is_empty() {
            return Ok(());
        }
        let (job, attempt_id) = n.work[pick as usize % n.work.len()].clone();
        let (s, token) = match (&n.conn, &n.last_token) {
            (Some((s, t)), _) => (*s, t.clone()),
            (None, Some(t)) => (0, t.clone()),
            (None, None) => return Ok(()),
        };
        let store = &self.inst[s].store;
        let out = match kind % 3 {
            2 => {
                store
                    .job_partial(&job, nid, &token, "partial", false)
                    .await?
            }
            k => {
                let a = Attempt {
                    job_id: &job,
                    attempt_id,
                    node_id: nid,
                    conn: &token,
                };
                store.job_ack(&a, k == 1).await?
            }
        };
        if let FencedReply::Ok { state: Some(st) } = &out.reply
            && !matches!(st.as_str(), "ACCEPTED" | "RUNNING" | "DISPATCHED")
        {
            let m = format!("{nid}: progress on {job} left it {st}");
            self.clients.violations.push(m);
        }
        self.clients.take(s, &out);
        Ok(())
    }

    /// The session's socket drops (no script runs: the record stays for resume).
    pub async fn drop_session(&mut self, session: u8) -> R {
        if let Some(k) = self.session(session) {
            self.clients.sessions[k].conn = None;
        }
        Ok(())
    }

    /// The session resumes through `via` with the last index it received.
    pub async fn resume(&mut self, session: u8, via: u8) -> R {
        let Some(k) = self.session(session) else {
            return Ok(());
        };
        let s = via as usize % INSTANCES;
        let token = self.inst[s].token();
        let c = &self.clients.sessions[k];
        // the contiguous prefix it holds (docs/protocol.md): after a reorder window released
        // later indices first, the highest one received would lose the earlier one
        let last = (0..).take_while(|i| c.got.contains_key(i)).count() as i64 - 1;
        let sid = c.id.clone();
        let out = self.inst[s]
            .store
            .session_resume(&sid, &token, last, RESUME_HASH, None, 0)
            .await?;
        let c = &mut self.clients.sessions[k];
        c.conn = None;
        if let ResumeReply::Ok { next_seq, .. } = out.reply {
            c.conn = Some((s, token));
            c.seq = next_seq;
            c.held.clear();
            (c.chunk, c.chunk_cut) = (0, false);
            c.resent_ok = c
                .got
                .range(((last + 1) as u64)..)
                .map(|(i, _)| *i)
                .collect();
        }
        self.clients.take(s, &out);
        Ok(())
    }

    /// `ms` pass, then `via` sweeps until nothing more is due; nothing settled may then be
    /// held longer than the reorder window.
    pub async fn advance(&mut self, ms: u16, via: u8) -> R {
        tokio::time::sleep(Duration::from_millis(ms.into())).await;
        let s = via as usize % INSTANCES;
        let swept_at = super::redis_now(&mut self.redis).await;
        if u64::from(ms) >= WINDOW {
            self.clients.last_window = self.clients.step;
        }
        loop {
            let out = self.inst[s].store.sweep().await?;
            self.clients.take(s, &out);
            if !out.reply.more {
                break;
            }
        }
        self.stalled.fill(false);
        let live = self.consuming();
        self.clients.drain_inboxes(&mut self.redis, &live).await;
        self.clients
            .check_window(&mut self.redis, swept_at, WINDOW)
            .await;
        Ok(())
    }

    /// Instance `via` dies: its presence lapses (deleted here rather than waited for), it
    /// restarts under a new id, and the others take its inbox over at their next beat.
    /// The connections it held are gone. A stalled instance is the one that dies when there
    /// is one (a hung process gets killed), so its inbox has entries to take over.
    pub async fn crash(&mut self, via: u8) -> R {
        let s = match self.stalled.iter().position(|s| *s) {
            Some(stalled) => stalled,
            None => via as usize % INSTANCES,
        };
        let dead = self.inst[s].id.clone();
        let _: () = redis::pipe()
            .del(format!("{PREFIX}instance:{dead}"))
            .zadd(format!("{PREFIX}instances"), &dead, 0)
            .query_async(&mut self.redis)
            .await
            .expect("lapse presence");
        self.generation += 1;
        let cfg = slot_config(&self.cfg, s);
        self.inst[s] = Instance::new(&cfg, format!("i{s}g{}", self.generation));
        self.stalled[s] = false;
        for c in &mut self.clients.sessions {
            c.conn.take_if(|(cs, _)| *cs == s);
        }
        // Its nodes reconnect elsewhere at once, before a peer takes its inbox over: the
        // takeover then re-routes their pending job messages to the new connections.
        let orphans: Vec<(u8, u8, u8)> = (0..NODES.len() as u8)
            .filter_map(|i| {
                let n = self.clients.nodes.get(NODES[i as usize])?;
                let on_dead = n.conn.as_ref().is_some_and(|(cs, _)| *cs == s);
                on_dead.then_some((i, n.caps, n.capacity))
            })
            .collect();
        for (i, caps, capacity) in orphans {
            self.register(i, (s as u8 + 1) % INSTANCES as u8, caps, capacity)
                .await?;
        }
        self.beat_all().await
    }
}
