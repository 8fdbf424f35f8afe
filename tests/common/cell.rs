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
mod nodes;
mod sessions;

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
                let out = i.store.instance_beat(&i.id, 1, false, None).await?;
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
