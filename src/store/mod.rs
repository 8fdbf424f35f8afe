//! The Redis side of Switchyard: connection pool, script calls, typed operations.
//!
//! Every state change is one Lua script (DESIGN §1.2); this module turns each script into
//! one typed Rust function (`nodes.rs` for the node side) and keeps the plumbing in one
//! place: the deadpool-redis pool, EVALSHA with transparent reload after NOSCRIPT, JSON
//! replies decoded into enums, per-script metrics, and one error for "Redis is away"
//! ([`StoreError::Unavailable`], which clients see as `SCHEDULER_DEPENDENCY_DOWN`).

pub mod instances;
pub mod jobs;
pub mod keys;
pub mod nodes;
pub mod scripts;
pub mod sessions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_redis::{Pool, Runtime};
use redis::{AsyncConnectionConfig, IntoConnectionInfo, Value};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::config::Config;
use crate::telemetry::metrics::{Metrics, ScriptLabels, ScriptName};
pub use keys::Keys;
pub use scripts::{Script, Scripts};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached (refused, timed out, pool exhausted). Transient.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error (a script bug or a misconfigured server).
    #[error("redis error in {script}: {message}")]
    Redis {
        script: &'static str,
        message: String,
    },
    /// A script reply that does not decode: a mismatch between Lua and Rust.
    #[error("unexpected reply from {script}: {message}")]
    Reply {
        script: &'static str,
        message: String,
    },
}

impl StoreError {
    fn from_redis(script: &'static str, e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
        {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Redis {
                script,
                message: e.to_string(),
            }
        }
    }
}

/// Shared handle to the cell's Redis state.
pub struct Store {
    pool: Pool,
    /// For dedicated connections (the inbox consumer's blocking reads).
    client: redis::Client,
    pub keys: Keys,
    scripts: Scripts,
    metrics: Arc<Metrics>,
    /// This instance's id: owner of the connections it registers (ARGV[2] of every script).
    instance: String,
    /// The configuration every script unpacks as CFG (ARGV[3]), built once.
    script_cfg: Vec<u8>,
    /// Script calls go through a few long-lived multiplexed connections (taken once from
    /// the pool; each pipelines concurrent callers) instead of a pool checkout per call,
    /// which costs deadpool-redis' UNWATCH+PING round trip every time. Dropped and taken
    /// again after a connection error.
    shared: Vec<std::sync::RwLock<Option<redis::aio::MultiplexedConnection>>>,
    next_shared: std::sync::atomic::AtomicUsize,
}

/// A message a script produced for a connection (node or session).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Delivery {
    /// `node` or `session`.
    pub k: String,
    pub id: String,
    /// Instance that owns the target's connection.
    pub owner: String,
    /// The target's connection token; only that socket may receive it.
    pub conn: Option<String>,
    /// The message JSON (for `job_assign` without its `audio`), taken from the reply's
    /// blob `m` by [`decode_reply`].
    #[serde(default)]
    pub msg: String,
    /// 1-based index into the reply's blobs: the message JSON (a separate bulk string, so
    /// it is neither escaped by the script nor unescaped here).
    #[serde(default, deserialize_with = "lua_num")]
    pub m: Option<usize>,
    /// 1-based index into the reply's blobs: the job audio to add as base64 `audio`.
    #[serde(default, deserialize_with = "lua_num")]
    pub blob: Option<usize>,
    /// Order of a session's terminal messages (the session's out_seq).
    #[serde(default, deserialize_with = "lua_num")]
    pub seq: Option<u64>,
    /// W3C traceparent the delivery span continues.
    pub tp: Option<String>,
    /// The job the message concerns (job_assign), for tracing.
    pub job: Option<String>,
}

/// A script's typed reply plus what it asks to deliver.
#[derive(Debug)]
pub struct Output<T> {
    pub reply: T,
    pub out: Vec<Delivery>,
    pub blobs: Vec<Vec<u8>>,
    /// Transitions and latencies, already recorded in the metrics by [`Store::run`].
    pub events: Events,
}

/// Arguments of one script call, starting with the shared context (ARGV[1..4]).
pub struct Args(Vec<Vec<u8>>);

impl Args {
    pub fn s(mut self, v: impl ToString) -> Self {
        self.0.push(v.to_string().into_bytes());
        self
    }

    pub fn b(mut self, v: &[u8]) -> Self {
        self.0.push(v.to_vec());
        self
    }

    /// `k1, v1, k2, v2, ...` for a variable-length field list.
    pub fn fields(mut self, f: &[(&'static str, String)]) -> Self {
        for (k, v) in f {
            self.0.push(k.as_bytes().to_vec());
            self.0.push(v.clone().into_bytes());
        }
        self
    }

    pub fn all<I: IntoIterator<Item = String>>(mut self, items: I) -> Self {
        self.0.extend(items.into_iter().map(String::into_bytes));
        self
    }

    /// The raw arguments (tests call scripts with arguments the typed calls never send).
    pub fn into_inner(self) -> Vec<Vec<u8>> {
        self.0
    }
}

/// The names of the numbers scripts read as CFG, in the order [`script_config`] packs them
/// and `lua/includes/ctx.lua` (`CFG_NAMES`) unpacks them.
pub(crate) const CFG_NAMES: [&str; 28] = [
    "liveness",
    "node_retention",
    "batch",
    "max_attempts",
    "queue_wait",
    "queue_max",
    "scan",
    "ack_timeout",
    "run_timeout",
    "job_ttl",
    "choices",
    "sample",
    "affinity",
    "mna_ms",
    "mna_per_min",
    "session_ttl",
    "pause",
    "max_duration",
    "max_bytes",
    "playback_grace",
    "reorder",
    "max_ahead",
    "retention",
    "group_window",
    "min_cut",
    "presence_ttl",
    "inbox_max",
    "takeover_batch",
];

/// The timings and limits scripts read as CFG (see lua/includes/ctx.lua): the numbers of
/// [`CFG_NAMES`] in that order, each a little-endian f64 (a Lua number), which a script
/// unpacks with one `struct.unpack` (decoding the same as JSON cost ~20 µs of Redis CPU
/// per call; issue 14).
fn script_config(cfg: &Config) -> Vec<u8> {
    let j = &cfg.jobs;
    let s = &cfg.session;
    let values: [(&str, f64); 28] = [
        ("liveness", cfg.liveness_ms() as f64),
        ("node_retention", cfg.node.offline_retention_ms as f64),
        ("batch", cfg.sweep.batch as f64),
        ("max_attempts", j.max_attempts as f64),
        ("queue_wait", j.queue_wait_ms as f64),
        ("queue_max", j.queue_max as f64),
        ("scan", j.queue_scan as f64),
        ("ack_timeout", j.ack_timeout_ms as f64),
        ("run_timeout", j.run_timeout_ms as f64),
        ("job_ttl", j.record_ttl_ms as f64),
        ("choices", j.choices as f64),
        ("sample", j.sample as f64),
        ("affinity", f64::from(u8::from(j.session_affinity))),
        ("mna_ms", j.model_unavailable_ms as f64),
        ("mna_per_min", j.model_unavailable_per_minute as f64),
        ("session_ttl", s.idle_ttl_ms as f64),
        ("pause", s.pause_ms as f64),
        ("max_duration", s.max_duration_ms as f64),
        ("max_bytes", s.max_buffer_bytes as f64),
        ("playback_grace", s.playback_grace_ms as f64),
        ("reorder", s.reorder_window_ms as f64),
        ("max_ahead", s.max_index_ahead as f64),
        ("retention", s.result_retention_ms as f64),
        ("group_window", s.group_window_ms as f64),
        ("min_cut", s.min_cut_ms as f64),
        ("presence_ttl", cfg.instance.presence_ttl_ms as f64),
        ("inbox_max", cfg.inbox.max_len as f64),
        ("takeover_batch", cfg.inbox.takeover_batch as f64),
    ];
    debug_assert!(values.iter().map(|v| v.0).eq(CFG_NAMES.iter().copied()));
    values.iter().flat_map(|(_, v)| v.to_le_bytes()).collect()
}

impl Store {
    /// Build the pool (no connection is made yet; Redis may come up later).
    pub fn new(cfg: &Config, instance: &str, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let info =
            cfg.redis
                .url
                .as_str()
                .into_connection_info()
                .map_err(|e| StoreError::Redis {
                    script: "config",
                    message: format!("redis.url: {e}"),
                })?;
        // Debian's Redis 7.0 does not know CLIENT SETINFO; skip it so every new connection
        // does not count an error in INFO errorstats.
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        // Script calls are small writes on a multiplexed connection: send each at once
        // instead of holding it behind an unacknowledged one (Nagle; see server.rs).
        let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let info = info.set_redis_settings(settings).set_tcp_settings(tcp);
        let timeout = Duration::from_millis(cfg.redis.timeout_ms);
        let conn_cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let client = redis::Client::open(info.clone()).map_err(|e| StoreError::Redis {
            script: "config",
            message: e.to_string(),
        })?;
        let manager = deadpool_redis::Manager::new_with_config(info, conn_cfg).map_err(|e| {
            StoreError::Redis {
                script: "config",
                message: e.to_string(),
            }
        })?;
        let pool = Pool::builder(manager)
            .max_size(cfg.redis.pool_size)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Redis {
                script: "config",
                message: e.to_string(),
            })?;
        Ok(Self {
            pool,
            client,
            keys: Keys::new(&cfg.cell_tag()),
            scripts: Scripts::new(),
            metrics,
            instance: instance.to_string(),
            script_cfg: script_config(cfg),
            shared: (0..cfg.redis.pool_size.clamp(1, 4))
                .map(|_| Default::default())
                .collect(),
            next_shared: Default::default(),
        })
    }

    /// Arguments starting with the shared context: prefix, instance, config, seed.
    pub fn args(&self) -> Args {
        Args(vec![
            self.keys.prefix().as_bytes().to_vec(),
            self.instance.as_bytes().to_vec(),
            self.script_cfg.clone(),
            rand::random::<u32>().to_string().into_bytes(),
        ])
    }

    /// A connection of its own (not pooled) for blocking reads, with a response timeout
    /// longer than the block time.
    pub async fn dedicated_connection(
        &self,
        timeout: Duration,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }

    /// Pending inbox entries of `instance` and the length of the dead-letter stream.
    pub async fn inbox_stats(&self, instance: &str) -> Result<(u64, u64), StoreError> {
        let mut conn = self.conn().await?;
        let (pending, dead): (Value, u64) = redis::pipe()
            .cmd("XPENDING")
            .arg(self.keys.inbox(instance))
            .arg("g")
            .cmd("XLEN")
            .arg(self.keys.dead_letters())
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError::from_redis("read", e))?;
        let pending = match pending {
            Value::Array(v) => v
                .first()
                .and_then(|c| redis::from_redis_value_ref::<u64>(c).ok())
                .unwrap_or(0),
            _ => 0,
        };
        Ok((pending, dead))
    }

    /// A shared multiplexed connection for script calls (see [`Store::shared`]).
    async fn script_conn(&self) -> Result<(usize, redis::aio::MultiplexedConnection), StoreError> {
        use std::sync::atomic::Ordering;
        let i = self.next_shared.fetch_add(1, Ordering::Relaxed) % self.shared.len();
        let slot = &self.shared[i];
        if let Some(c) = slot.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok((i, c));
        }
        let fresh = deadpool_redis::Connection::take(self.conn().await?);
        *slot.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
        Ok((i, fresh))
    }

    /// Forget a shared connection that failed; the next call takes a new one.
    fn drop_shared(&self, i: usize) {
        if let Some(slot) = self.shared.get(i) {
            *slot.write().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// A pooled connection, or `Unavailable`.
    pub async fn conn(&self) -> Result<deadpool_redis::Connection, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Run one script: its reply is `[json, blob...]`; the JSON decodes into `T` and its
    /// `out` list into deliveries.
    pub(crate) async fn run<T: DeserializeOwned>(
        &self,
        script: Script,
        keys: &[String],
        mut args: Args,
    ) -> Result<Output<T>, StoreError> {
        let name = script.name();
        let span = tracing::info_span!(
            "script",
            otel.name = %format_args!("script.{name}"),
            script = name,
            outcome = tracing::field::Empty,
        );
        // The script carries this span's context into job records and deliveries.
        let tp = crate::telemetry::traceparent(&span);
        if let Some(seed) = args.0.get_mut(3) {
            seed.extend_from_slice(format!(" {tp}").as_bytes());
        }
        let started = Instant::now();
        let result = async {
            let (slot, mut conn) = self.script_conn().await?;
            let mut inv = self.scripts.get(script).prepare_invoke();
            for k in keys {
                inv.key(k);
            }
            for a in &args.0 {
                inv.arg(a.as_slice());
            }
            let mut parts: Vec<Vec<u8>> = match inv.invoke_async(&mut conn).await {
                Ok(p) => p,
                Err(e) => {
                    let e = StoreError::from_redis(name, e);
                    if matches!(e, StoreError::Unavailable(_)) {
                        self.drop_shared(slot);
                    }
                    return Err(e);
                }
            };
            if parts.is_empty() {
                return Err(StoreError::Reply {
                    script: name,
                    message: "empty reply".into(),
                });
            }
            let blobs = parts.split_off(1);
            decode_reply(name, &parts[0], blobs)
        }
        .instrument(span.clone())
        .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(StoreError::Unavailable(_)) => "unavailable",
            Err(_) => "error",
        };
        span.record("outcome", outcome);
        let m = &self.metrics;
        m.script_calls
            .get_or_create(&ScriptLabels {
                script: name.into(),
                outcome: outcome.into(),
            })
            .inc();
        m.script_seconds
            .get_or_create(&ScriptName {
                script: name.into(),
            })
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(out) => m.record_events(&out.events),
            Err(e) => tracing::warn!(script = name, error = %e, "script call failed"),
        }
        result
    }

    /// SCRIPT LOAD every script (start-up and readiness); a no-op when already loaded.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        for (s, script) in self.scripts.iter() {
            script
                .prepare_invoke()
                .load_async(&mut conn)
                .await
                .map_err(|e| StoreError::from_redis(s.name(), e))?;
        }
        Ok(())
    }

    /// Ready = Redis answers and every script is loaded (loading them if a restart lost them).
    pub async fn check_ready(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("EXISTS");
        for (_, s) in self.scripts.iter() {
            cmd.arg(s.get_hash());
        }
        let loaded: Vec<bool> = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError::from_redis("ready", e))?;
        if loaded.iter().all(|l| *l) {
            Ok(())
        } else {
            self.load_scripts().await
        }
    }
}

fn decode_reply<T: DeserializeOwned>(
    script: &'static str,
    json: &[u8],
    mut blobs: Vec<Vec<u8>>,
) -> Result<Output<T>, StoreError> {
    let bad = |e: serde_json::Error| StoreError::Reply {
        script,
        message: format!("{e}: {}", String::from_utf8_lossy(json)),
    };
    let mut value: serde_json::Value = serde_json::from_slice(json).map_err(bad)?;
    // Move the deliveries and events out (message bodies can be large: no copies).
    let take = |v: &mut serde_json::Value, k: &str| v.as_object_mut().and_then(|m| m.remove(k));
    let mut out: Vec<Delivery> = take(&mut value, "out")
        .map(lua_list)
        .transpose()
        .map_err(bad)?
        .unwrap_or_default();
    for d in &mut out {
        if let Some(i) = d.m.take() {
            let body = blobs.get_mut(i.wrapping_sub(1)).map(std::mem::take);
            d.msg = body
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| StoreError::Reply {
                    script,
                    message: format!("delivery body {i} missing or not UTF-8"),
                })?;
        }
    }
    let ev = take(&mut value, "ev")
        .map(lua_map)
        .transpose()
        .map_err(bad)?
        .unwrap_or_default();
    let lat = match take(&mut value, "lat") {
        Some(l) => serde_json::from_value(l).map_err(bad)?,
        None => Latencies::default(),
    };
    let reply: T = serde_json::from_value(value).map_err(bad)?;
    Ok(Output {
        reply,
        out,
        blobs,
        events: Events { ev, lat },
    })
}

/// What a script call did, for metrics: transition counts and latencies (ms, Redis clock).
#[derive(Debug, Default)]
pub struct Events {
    /// `submitted`, `dispatched`, `queued`, `failover`, `finished`, `acked`, `started`,
    /// `queue_timeout`, `missing_result`, `failed:<CODE>`, `cut_skipped:empty|too_short`
    /// → count.
    pub ev: std::collections::BTreeMap<String, u64>,
    pub lat: Latencies,
}

#[derive(Debug, Default, Deserialize)]
pub struct Latencies {
    #[serde(default, deserialize_with = "lua_nums")]
    pub dispatch: Vec<f64>,
    #[serde(default, deserialize_with = "lua_nums")]
    pub e2e: Vec<f64>,
}

/// Serde helper: a map that Lua's cjson may have encoded as `[]`... or `{}` when empty.
fn lua_map<'de, D>(d: D) -> Result<std::collections::BTreeMap<String, u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Object(m) => Ok(m
            .into_iter()
            .filter_map(|(k, v)| num_value::<u64>(&v).map(|n| (k, n)))
            .collect()),
        _ => Ok(Default::default()),
    }
}

/// A number a script sent as a JSON number or as a decimal string (ctx.lua `finish` sends
/// the deliveries' numbers as strings: cheaper to format in Lua).
fn num_value<T: std::str::FromStr + DeserializeOwned>(v: &serde_json::Value) -> Option<T> {
    match v {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(_) => serde_json::from_value(v.clone()).ok(),
        _ => None,
    }
}

/// Serde helper: an optional number, as a JSON number or a decimal string.
fn lua_num<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr + DeserializeOwned,
{
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        v => num_value(&v)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("expected a number, got {v}"))),
    }
}

/// Serde helper: a list of numbers (JSON numbers or decimal strings; `{}` when empty).
fn lua_nums<'de, D>(d: D) -> Result<Vec<f64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let items: Vec<serde_json::Value> = lua_list(d)?;
    items
        .iter()
        .map(|v| {
            num_value(v)
                .ok_or_else(|| serde::de::Error::custom(format!("expected a number, got {v}")))
        })
        .collect()
}

/// Serde helper for script replies: Lua's cjson encodes an empty table as `{}`, so a list
/// field may arrive as an empty object.
pub(crate) fn lua_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::Deserialize;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(serde::de::Error::custom))
            .collect(),
        serde_json::Value::Object(m) if m.is_empty() => Ok(Vec::new()),
        serde_json::Value::Null => Ok(Vec::new()),
        other => Err(serde::de::Error::custom(format!(
            "expected a list, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_unpacks_the_config_in_the_order_rust_packs_it() {
        let ctx = include_str!("../../lua/includes/ctx.lua");
        let start = ctx
            .find("local CFG_NAMES = {")
            .expect("CFG_NAMES in ctx.lua");
        let list = &ctx[start..];
        let list = &list[list.find('{').unwrap_or(0) + 1..list.find('}').unwrap_or(0)];
        let names: Vec<&str> = list
            .split(',')
            .map(|n| n.trim().trim_matches('\''))
            .filter(|n| !n.is_empty())
            .collect();
        assert_eq!(names, CFG_NAMES);
        let packed = script_config(&Config::default());
        assert_eq!(packed.len(), 8 * CFG_NAMES.len());
    }

    #[test]
    fn replies_carry_bodies_as_blobs_and_numbers_as_strings() {
        let json = br#"{"status":"ok","out":[{"k":"node","id":"n","owner":"i","m":"2","blob":"1","seq":"3"}],"ev":{"dispatched":"2"},"lat":{"dispatch":["4"],"e2e":{}}}"#;
        let blobs = vec![b"audio".to_vec(), br#"{"type":"job_assign"}"#.to_vec()];
        let out = decode_reply::<serde_json::Value>("t", json, blobs).expect("decodes");
        let d = &out.out[0];
        assert_eq!(d.msg, r#"{"type":"job_assign"}"#);
        assert_eq!((d.blob, d.seq), (Some(1), Some(3)));
        assert_eq!(out.blobs[0], b"audio");
        assert_eq!(out.events.ev.get("dispatched"), Some(&2));
        assert_eq!(out.events.lat.dispatch, vec![4.0]);
    }
}
