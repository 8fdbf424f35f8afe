//! Configuration: built-in defaults < TOML file < `SWITCHYARD_*` environment variables.
//!
//! Every timing and limit of the scheduler lives here, so an operator can read the whole
//! behaviour of an instance from `switchyard check-config`. Durations are integer
//! milliseconds (`*_ms`) so environment overrides stay unambiguous. Derived defaults
//! (node liveness = 3 × heartbeat) are resolved by [`Config::liveness_ms`] and friends,
//! never stored twice.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

mod advice;
mod auth;
mod bounds;
pub mod cell;
mod inbox;
mod instance;
mod jobs;
mod limits;
mod log;
mod node;
mod redis;
mod session;
pub(crate) mod show;
mod sweep;
mod telemetry;
mod ws;

pub use auth::AuthConfig;
pub use cell::{CellConfig, CellSpec};
pub use inbox::InboxConfig;
pub use instance::{InstanceConfig, ReadyWhen};
pub use jobs::JobsConfig;
pub use limits::LimitsConfig;
pub use log::LogConfig;
pub use node::NodeConfig;
pub use redis::{RedisConfig, RedisMode};
pub use session::{OnGap, SessionConfig};
pub use sweep::SweepConfig;
pub use telemetry::TelemetryConfig;
pub use ws::WsConfig;

/// The most dispatches of one utterance `jobs.max_attempts` allows.
pub const MAX_ATTEMPTS: u32 = 16;
/// The most `session.max_index_ahead` may be: a forced release of the reorder window and a
/// cut scan up to this many indices in one script call.
pub const MAX_INDEX_AHEAD: u64 = 10_000;

/// The effective configuration of one instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP + WebSocket server binds (`/ws/node`, `/ws/session`, `/healthz`, ...).
    pub listen: String,
    /// Optional second address for the admin API (`/api/v1/*`) and `/metrics`, so they
    /// need not be reachable where the WebSocket endpoints are. Unset: served on `listen`.
    pub admin_listen: Option<String>,
    pub auth: AuthConfig,
    pub redis: RedisConfig,
    pub cell: CellConfig,
    /// Several cells (`[[cells]]`); empty = the one cell `[cell].name`.
    pub cells: Vec<CellSpec>,
    pub node: NodeConfig,
    pub sweep: SweepConfig,
    pub ws: WsConfig,
    pub session: SessionConfig,
    pub jobs: JobsConfig,
    pub instance: InstanceConfig,
    pub inbox: InboxConfig,
    pub telemetry: TelemetryConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5010".into(),
            admin_listen: None,
            auth: AuthConfig::default(),
            redis: RedisConfig::default(),
            cell: CellConfig::default(),
            cells: Vec::new(),
            node: NodeConfig::default(),
            sweep: SweepConfig::default(),
            ws: WsConfig::default(),
            session: SessionConfig::default(),
            jobs: JobsConfig::default(),
            instance: InstanceConfig::default(),
            inbox: InboxConfig::default(),
            telemetry: TelemetryConfig::default(),
            log: LogConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// A configuration that cannot be used; the message names the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// Top-level keys an environment variable may set.
const SECTIONS: &[&str] = &[
    "listen",
    "admin_listen",
    "auth",
    "redis",
    "cell",
    "cells",
    "node",
    "sweep",
    "ws",
    "session",
    "jobs",
    "instance",
    "inbox",
    "telemetry",
    "log",
    "limits",
];

impl Config {
    /// Load defaults, then the TOML file (if any), then `SWITCHYARD_*` variables
    /// (`SWITCHYARD_NODE__HEARTBEAT_INTERVAL_MS=5000`), and validate the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(file, |_| {})
    }

    /// [`Config::load`], with `tweak` applied before validation (the development setup
    /// adds a generated secret when none is configured).
    pub fn load_with(
        file: Option<&Path>,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            fig = fig.merge(Toml::file_exact(path));
        }
        // Only variables naming a known section: Kubernetes injects SWITCHYARD_SERVICE_HOST
        // and friends for a Service called "switchyard", which must not stop the start.
        let env = Env::prefixed("SWITCHYARD_").split("__").filter(|k| {
            let top = k
                .as_str()
                .split('.')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            SECTIONS.contains(&top.as_str())
        });
        fig = fig.merge(env);
        let mut cfg: Config = fig.extract().map_err(Box::new)?;
        tweak(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Node liveness: the configured value, or 3 × the heartbeat interval.
    pub fn liveness_ms(&self) -> u64 {
        self.node
            .liveness_ms
            .unwrap_or(3 * self.node.heartbeat_interval_ms)
    }

    /// The hash tag every key of the default cell carries, e.g. `{switchyard:main}`.
    pub fn cell_tag(&self) -> String {
        let default = self.cells.iter().find(|c| c.default);
        self.tag_of(default.map_or(&self.cell.name, |c| &c.name))
    }

    /// The hash tag of cell `name`: `{prefix:name}`.
    pub fn tag_of(&self, name: &str) -> String {
        format!("{{{}:{}}}", self.cell.prefix, name)
    }

    /// The cells this instance serves (validated: one default, disjoint tenants).
    pub fn cell_list(&self) -> Vec<CellSpec> {
        cell::cells(&self.cell, &self.cells).unwrap_or_default()
    }

    /// Check every value; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_sections()?;
        bounds::check(self).map_err(|(field, reason)| ConfigError::Invalid { field, reason })
    }

    fn validate_sections(&self) -> Result<(), ConfigError> {
        fn bad(field: impl Into<String>, reason: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                field: field.into(),
                reason: reason.into(),
            })
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "listen",
                format!("{:?} is not an ip:port address", self.listen),
            );
        }
        if let Some(a) = &self.admin_listen
            && a.parse::<std::net::SocketAddr>().is_err()
        {
            return bad("admin_listen", format!("{a:?} is not an ip:port address"));
        }
        match self.auth.mode.as_str() {
            "open" => {}
            "required" if self.auth.has_keys() => {}
            "required" => {
                return bad(
                    "auth.mode",
                    "\"required\" (the default) needs a key: set auth.hs256_secrets, \
                     auth.public_key_files or auth.jwks_file (or auth.mode = \"open\" for development)",
                );
            }
            _ => return bad("auth.mode", "must be \"required\" or \"open\""),
        }
        if self.auth.hs256_secrets.iter().any(|s| s.len() < 32) {
            return bad(
                "auth.hs256_secrets",
                "each secret must be at least 32 bytes (RFC 7518 §3.2: at least the hash size)",
            );
        }
        if let Err((field, reason)) = self.redis.validate() {
            return bad(field, reason);
        }
        if let Err((field, reason)) = cell::cells(&self.cell, &self.cells) {
            return bad(field, reason);
        }
        if self.node.heartbeat_interval_ms == 0 {
            return bad("node.heartbeat_interval_ms", "must be positive");
        }
        if self.liveness_ms() < self.node.heartbeat_interval_ms {
            return bad(
                "node.liveness_ms",
                "must be at least node.heartbeat_interval_ms",
            );
        }
        if self.node.default_capacity == 0 || self.node.default_capacity > self.node.max_capacity {
            return bad(
                "node.default_capacity",
                "must be between 1 and node.max_capacity",
            );
        }
        if self.sweep.interval_ms == 0 {
            return bad("sweep.interval_ms", "must be positive");
        }
        if self.sweep.batch == 0 {
            return bad("sweep.batch", "must be at least 1");
        }
        if let Err((field, reason)) = self.ws.check() {
            return bad(field, reason);
        }
        let s = &self.session;
        if s.order_gap_ms == 0 && s.on_gap == session::OnGap::Resume {
            // Messages of the two paths (script reply, inbox) overtake each other all the
            // time: with no wait at all, every overtaking would close the session.
            return bad(
                "session.order_gap_ms",
                "must be positive with session.on_gap = \"resume\" (0 only with \"skip\")",
            );
        }
        for (field, v) in [
            ("session.idle_ttl_ms", s.idle_ttl_ms),
            ("session.pause_ms", s.pause_ms),
            ("session.max_duration_ms", s.max_duration_ms),
            ("session.max_buffer_bytes", s.max_buffer_bytes),
            ("session.reorder_window_ms", s.reorder_window_ms),
            ("session.max_index_ahead", s.max_index_ahead),
            ("session.group_window_ms", s.group_window_ms),
            ("jobs.queue_wait_ms", self.jobs.queue_wait_ms),
            ("jobs.ack_timeout_ms", self.jobs.ack_timeout_ms),
            ("jobs.run_timeout_ms", self.jobs.run_timeout_ms),
            ("jobs.record_ttl_ms", self.jobs.record_ttl_ms),
        ] {
            if v == 0 {
                return bad(field, "must be positive");
            }
        }
        // (a forced release and a cut scan this many indices in one script call)
        if s.max_index_ahead > MAX_INDEX_AHEAD {
            return bad("session.max_index_ahead", "must be at most 10000");
        }
        let j = &self.jobs;
        // (each attempt adds its routing explanation to the record the scripts rewrite in
        // one HSET: bounded, so it stays far below what one Lua call can pass)
        if j.max_attempts == 0 || j.max_attempts > MAX_ATTEMPTS {
            return bad("jobs.max_attempts", "must be 1 to 16");
        }
        for (field, v) in [
            ("jobs.choices", j.choices),
            ("jobs.sample", j.sample),
            ("jobs.queue_scan", j.queue_scan),
            ("jobs.queue_max", j.queue_max),
        ] {
            if v == 0 {
                return bad(field, "must be at least 1");
            }
        }
        // every attempt may run out its deadline and queue again before the next
        if j.record_ttl_ms < j.longest_job_ms() {
            return bad(
                "jobs.record_ttl_ms",
                "must outlast every attempt and the queue wait",
            );
        }
        if j.strict_tenants
            .iter()
            .any(|t| !crate::protocol::valid_id(t))
        {
            return bad("jobs.strict_tenants", "tenant ids use only [A-Za-z0-9_.-]");
        }
        let i = &self.instance;
        if i.beat_interval_ms == 0 || i.presence_ttl_ms < 2 * i.beat_interval_ms {
            return bad(
                "instance.presence_ttl_ms",
                "must be at least 2 × instance.beat_interval_ms",
            );
        }
        if i.worker_threads > 1024 {
            return bad(
                "instance.worker_threads",
                "must be at most 1024 (0 = one per CPU)",
            );
        }
        let b = &self.inbox;
        if b.block_ms == 0 || b.block_ms >= self.redis.timeout_ms * 10 {
            return bad(
                "inbox.block_ms",
                "must be positive and below 10 × redis.timeout_ms",
            );
        }
        if b.max_len == 0 || b.dead_letter_after == 0 || b.takeover_batch == 0 {
            return bad(
                "inbox.max_len",
                "inbox.max_len, dead_letter_after, takeover_batch must be at least 1",
            );
        }
        if self.session.result_retention_ms > self.session.idle_ttl_ms {
            return bad(
                "session.result_retention_ms",
                "must not exceed session.idle_ttl_ms",
            );
        }
        let t = &self.telemetry;
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            return bad("telemetry.sample_ratio", "must be between 0 and 1");
        }
        if t.metrics_refresh_ms > 60_000 {
            return bad("telemetry.metrics_refresh_ms", "must be at most 60000");
        }
        if let Some(e) = &t.otlp_endpoint
            && !e.starts_with("http://")
        {
            return bad(
                "telemetry.otlp_endpoint",
                "must be an http:// URL (no TLS built in: use a local collector)",
            );
        }
        if let Some(p) = &t.otlp_protocol
            && !matches!(p.as_str(), "grpc" | "http")
        {
            return bad("telemetry.otlp_protocol", "must be \"grpc\" or \"http\"");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad("log.format", "must be \"text\" or \"json\"");
        }
        if let Err((field, reason)) = self.limits.check() {
            return bad(field, reason);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail closures return figment::Error
mod tests;
