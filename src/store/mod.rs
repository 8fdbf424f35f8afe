//! The Redis side of Switchyard: connection pool, script calls, typed operations.
//!
//! Every state change is one Lua script (DESIGN §1.2); this module turns each script into
//! one typed Rust function (`nodes.rs` for the node side) and keeps the plumbing in one
//! place: the deadpool-redis pool, FCALL with transparent reload of a missing library, JSON
//! replies decoded into enums, per-script metrics, and the errors for "Redis is away"
//! ([`StoreError::Unavailable`]: the script did not run; [`StoreError::Ambiguous`]: it was
//! sent and no reply came, so it may have run; clients see both as
//! `SCHEDULER_DEPENDENCY_DOWN`).
//! Which Redis answers (one server, a Sentinel-managed primary, a Cluster) is the business
//! of `connection.rs` (and `sentinel.rs`, `clients.rs`) alone: the rest of the code sees one
//! `Store` whatever the topology.

mod args;
pub(crate) mod clients;
mod conn;
pub mod connection;
mod error;
mod health;
pub mod inspect;
pub mod instances;
pub mod jobs;
pub mod keys;
pub mod log_tail;
pub mod memory;
pub mod nodes;
pub mod reply;
pub mod scripts;
mod sentinel;
mod series;
pub mod sessions;
mod stage;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::config::Config;
use crate::telemetry::metrics::Metrics;
use args::script_config;
pub use args::{Arg, Args};
pub use connection::Conn;
use connection::Connector;
pub use error::{StoreError, Unreplicated};
pub use keys::Keys;
use reply::decode_reply;
pub use reply::{Delivery, Events, Latencies, Output, lua_list};
pub use scripts::{Script, Scripts};
use series::{OUTCOMES, ScriptSeries};
pub use stage::STAGE_MIN_BYTES;
use stage::{Staged, Staging};

/// Handle to one cell's Redis state (several cells share the connections).
pub struct Store {
    /// Connections for the configured topology (single, sentinel, cluster).
    connector: Arc<Connector>,
    pub keys: Keys,
    /// The cell's name: the `cell` label of script metrics and spans.
    cell: String,
    scripts: Arc<Scripts>,
    metrics: Arc<Metrics>,
    /// This instance's id: owner of the connections it registers (ARGV[2] of every script).
    instance: String,
    /// The configuration every script unpacks as CFG (ARGV[3]), built once.
    script_cfg: Vec<u8>,
    /// `redis.wait_replicas` and `redis.wait_timeout_ms` (0 = no WAIT).
    wait: (u32, u64),
    /// Which payloads go around the scripts, and their TTLs.
    staging: Staging,
    /// This cell's script-call series, kept once looked up.
    series: Arc<ScriptSeries>,
    /// When this cell's library was last loaded after a call found it missing: one reload
    /// at a time, and none for calls that failed before it (see `reload_scripts`).
    reloaded: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// `redis.allow_eviction`: ready even when Redis may evict keys (memory.rs).
    allow_eviction: bool,
    /// Its "script call failed" log lines: 10 a second (an outage fails every call).
    failure_log: crate::telemetry::budget::LogBudget,
}

/// A store's budget of "script call failed" lines.
fn failure_log() -> crate::telemetry::budget::LogBudget {
    crate::telemetry::budget::LogBudget::new(10, std::time::Duration::from_secs(1))
}

impl Store {
    /// The store of the default cell; builds the connector (no connection is made yet;
    /// Redis may come up later). [`Store::for_cell`] gives the other cells.
    pub fn new(cfg: &Config, instance: &str, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let default = cfg.cell_list().into_iter().find(|c| c.default);
        let name = default.map_or_else(|| cfg.cell.name.clone(), |c| c.name);
        Ok(Self {
            connector: Arc::new(Connector::new(&cfg.redis)?),
            keys: Keys::new(&cfg.tag_of(&name)),
            cell: name,
            scripts: Arc::new(Scripts::new()),
            metrics,
            instance: instance.to_string(),
            script_cfg: script_config(cfg),
            wait: (cfg.redis.wait_replicas, cfg.redis.wait_timeout_ms),
            staging: Staging::new(cfg),
            series: Arc::new(ScriptSeries::new()),
            reloaded: Default::default(),
            allow_eviction: cfg.redis.allow_eviction,
            failure_log: failure_log(),
        })
    }

    /// The store of cell `name` (tag `{prefix:name}`) over the same connections.
    pub fn for_cell(&self, cfg: &Config, name: &str) -> Self {
        Self {
            connector: self.connector.clone(),
            keys: Keys::new(&cfg.tag_of(name)),
            cell: name.to_string(),
            scripts: self.scripts.clone(),
            metrics: self.metrics.clone(),
            instance: self.instance.clone(),
            script_cfg: self.script_cfg.clone(),
            wait: self.wait,
            staging: self.staging,
            series: Arc::new(ScriptSeries::new()),
            reloaded: Default::default(),
            allow_eviction: self.allow_eviction,
            failure_log: failure_log(),
        }
    }

    /// The cell's name.
    pub fn cell(&self) -> &str {
        &self.cell
    }

    /// Arguments starting with the shared context: prefix, instance, config, seed.
    pub fn args(&self) -> Args<'_> {
        Args(vec![
            Cow::Borrowed(self.keys.prefix().as_bytes()),
            Cow::Borrowed(self.instance.as_bytes()),
            Cow::Borrowed(&self.script_cfg),
            Cow::Owned(rand::random::<u32>().to_string().into_bytes()),
        ])
    }

    /// A connection of its own (not pooled) for blocking reads, with a response timeout
    /// longer than the block time (in cluster mode it reaches the node of the key's slot).
    pub async fn dedicated_connection(&self, timeout: Duration) -> Result<Conn, StoreError> {
        self.connector.dedicated(timeout).await
    }

    /// A call failed for want of Redis: let the connector look for a new primary (sentinel).
    pub async fn connection_failed(&self) {
        self.connector.failed().await;
    }

    /// Sentinel mode: ask the sentinels whether the primary moved (at most once a second).
    pub async fn poll_topology(&self) {
        self.connector.poll().await;
    }

    /// The data node in use (`host:port`; `cluster` in cluster mode), for `/readyz`.
    pub fn redis_node(&self) -> String {
        self.connector.describe()
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

    /// A pooled connection (a cluster connection in cluster mode), or `Unavailable`.
    pub async fn conn(&self) -> Result<Conn, StoreError> {
        let r = self.connector.conn().await;
        if r.is_err() {
            self.connector.failed().await;
        }
        r
    }

    /// Run one script: its reply is `[msgpack, blob...]`; its `r` decodes into `T` and its
    /// `out` list into deliveries (reply.rs).
    pub(crate) async fn run<T: DeserializeOwned>(
        &self,
        script: Script,
        keys: &[String],
        args: Args<'_>,
    ) -> Result<Output<T>, StoreError> {
        self.run_staged(script, keys, args, None).await
    }

    /// [`Store::run`], first `SET`ting `stage` (key, value, TTL: [`Staged`]) in the same
    /// pipeline (one round trip): a payload the script moves with `RENAME` instead of
    /// receiving it as an argument. The key expires by itself if the script never runs.
    pub(crate) async fn run_staged<T: DeserializeOwned>(
        &self,
        script: Script,
        keys: &[String],
        mut args: Args<'_>,
        stage: Option<Staged<'_>>,
    ) -> Result<Output<T>, StoreError> {
        let name = script.name();
        let span = tracing::info_span!(
            "script",
            otel.name = %format_args!("script.{name}"),
            script = name,
            cell = %self.cell,
            outcome = tracing::field::Empty,
        );
        // The script carries this span's context into job records and deliveries.
        let tp = crate::telemetry::traceparent(&span);
        if let Some(seed) = args.0.get_mut(3) {
            let seed = seed.to_mut();
            seed.reserve(1 + tp.len());
            seed.push(b' ');
            seed.extend_from_slice(tp.as_bytes());
        }
        let started = Instant::now();
        let result = async {
            // The rare paths (connecting, sentinel re-resolution, loading the library,
            // WAIT) are boxed: their futures are kilobytes, and inline they made this
            // call's future ~8 KB, copied each time a caller's future moved it.
            // A call that WAITs for replicas takes a pooled connection of its own: Redis
            // reads nothing more from a client blocked in WAIT, so on a shared connection
            // every call queued behind it (beats, sweeps) would wait up to wait_timeout_ms.
            let own = self.wait.0 > 0 && script.waits_for_replicas();
            let (lease, mut conn) = match self.connector.shared(own).await {
                Ok(c) => c,
                Err(e) => {
                    Box::pin(self.connector.failed()).await;
                    return Err(e);
                }
            };
            let cmd = self
                .scripts
                .fcall(script, keys, args.0.iter().map(AsRef::as_ref));
            // The call alone, or after the staged payload's SET in one pipeline.
            let call = match stage {
                None => Ok(cmd),
                Some(Staged { key, value, ttl_ms }) => {
                    // Sized once: grown argument by argument, the payload's kilobytes were
                    // reallocated on the way.
                    let mut set = redis::Cmd::with_capacity(5, 32 + key.len() + value.len());
                    set.arg("SET").arg(key).arg(value).arg("PX").arg(ttl_ms);
                    let mut p = redis::Pipeline::with_capacity(2);
                    p.add_command(set).ignore().add_command(cmd);
                    Err(p)
                }
            };
            let call = async |conn: &mut Conn| match &call {
                Ok(cmd) => cmd.query_async::<Vec<Vec<u8>>>(conn).await,
                Err(p) => p.query_async::<(Vec<Vec<u8>>,)>(conn).await.map(|(r,)| r),
            };
            let mut reply = call(&mut conn).await;
            if let Err(e) = &reply
                && scripts::function_missing(e)
            {
                // The library is gone (restart without persistence, FUNCTION FLUSH): load
                // it where the cell lives (once for all the calls that found it missing)
                // and try once more.
                Box::pin(self.reload_scripts(std::time::Instant::now(), name)).await?;
                reply = call(&mut conn).await;
            }
            let mut parts: Vec<Vec<u8>> = match reply {
                Ok(p) => p,
                // Still missing after the reload, on a cluster: the call ran on a node that
                // does not serve the cell, an importing node it was sent on to (`ASK`) in a
                // slot move. Unavailable until the move ends (not the cell's own node: no
                // reconnect). Elsewhere it stays an internal error.
                Err(e) if scripts::function_missing(&e) && self.connector.is_cluster() => {
                    return Err(StoreError::Unavailable(e.to_string()));
                }
                Err(e) => {
                    // A full Redis (-OOM, memory.rs) refused the call on a healthy connection:
                    // unavailable for the caller, but no reason to reconnect (every refused
                    // call would open a connection to a Redis already in trouble).
                    let full = e.code() == Some("OOM");
                    // The socket itself is gone (reset, EOF, a driver that ended): Redis
                    // restarted or the path to it broke, and every shared connection that
                    // existed when this call got its own went with it. Replacing them now
                    // spares each its own failed call.
                    let gone = e.is_connection_dropped();
                    let e = StoreError::from_call(name, e);
                    if !full && matches!(e, StoreError::Unavailable(_) | StoreError::Ambiguous(_)) {
                        self.connector.drop_shared(lease, gone);
                        Box::pin(self.connector.failed()).await;
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
            let out = decode_reply(name, &parts[0], blobs)?;
            if self.wait.0 > 0
                && script.waits_for_replicas()
                && let Err(e) = Box::pin(self.wait_replicas(&mut conn)).await
            {
                // Committed on the primary all the same: its messages go with the error.
                let (_, output) = out.split();
                let message = e.to_string();
                return Err(StoreError::Unreplicated(Box::new(Unreplicated {
                    message,
                    output,
                })));
            }
            Ok(out)
        }
        .instrument(span.clone())
        .await;
        let outcome = match &result {
            Ok(_) => 0,
            Err(e) if e.is_unavailable() => 1,
            Err(_) => 2,
        };
        span.record("outcome", OUTCOMES[outcome]);
        let m = &self.metrics;
        let secs = started.elapsed().as_secs_f64();
        self.series.record(m, &self.cell, script, outcome, secs);
        match &result {
            Ok(out) => m.record_events(&self.cell, &out.events),
            Err(StoreError::Unreplicated(u)) => {
                // The transitions happened (on the primary), and their messages go out.
                m.record_events(&self.cell, &u.output.events);
                tracing::warn!(script = name, error = %u.message, "script change not known to be replicated");
            }
            // (an outage fails every call: 10 lines a second per cell, the rest counted)
            Err(e) => {
                if let Some(held) = self.failure_log.take() {
                    tracing::warn!(script = name, error = %e, held_back = held, "script call failed");
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests;
