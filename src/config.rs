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

/// The effective configuration of one instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP + WebSocket server binds (`/ws/node`, `/ws/session`, `/healthz`, ...).
    pub listen: String,
    pub redis: RedisConfig,
    pub cell: CellConfig,
    pub node: NodeConfig,
    pub sweep: SweepConfig,
    pub ws: WsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` of the Redis that holds all scheduling state.
    pub url: String,
    /// Connections in the shared command pool (blocking readers get their own).
    pub pool_size: usize,
    /// How long a command waits for a pooled connection or a new connection before it fails
    /// with `SCHEDULER_DEPENDENCY_DOWN`; keeps clients answered quickly while Redis is away.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CellConfig {
    /// Key prefix of this deployment.
    pub prefix: String,
    /// Name of the scheduling cell; all keys share the hash tag `{prefix:name}`.
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Interval at which nodes heartbeat (the lingua node uses a fixed 15 s).
    pub heartbeat_interval_ms: u64,
    /// A node without a heartbeat for this long is taken offline. Default: 3 × heartbeat.
    pub liveness_ms: Option<u64>,
    /// A node whose socket dropped (no close frame) keeps its id and in-flight jobs this
    /// long, out of every pool, so a quick reconnect loses nothing; then it goes offline.
    pub disconnect_grace_ms: u64,
    /// How long the record of an offline node is kept for operators before it expires.
    pub offline_retention_ms: u64,
    /// Capacity of a node that does not announce `max_concurrent_jobs`.
    pub default_capacity: u32,
    /// Upper bound accepted for `max_concurrent_jobs`.
    pub max_capacity: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepConfig {
    /// Period of the `sweep` script on every instance.
    pub interval_ms: u64,
    /// Most due deadlines one sweep call handles (bounds the script's run time).
    pub batch: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Largest accepted frame; a larger one closes the connection with code 1009.
    pub max_frame_bytes: usize,
    /// Outbound messages buffered per connection before the connection counts as stuck.
    pub send_queue: usize,
    /// A connection that has not registered / initialised within this time is closed.
    pub hello_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// Default filter when `RUST_LOG` is not set.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5010".into(),
            redis: RedisConfig::default(),
            cell: CellConfig::default(),
            node: NodeConfig::default(),
            sweep: SweepConfig::default(),
            ws: WsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            pool_size: 32,
            timeout_ms: 1000,
        }
    }
}

impl Default for CellConfig {
    fn default() -> Self {
        Self {
            prefix: "switchyard".into(),
            name: "main".into(),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 15_000,
            liveness_ms: None,
            disconnect_grace_ms: 5_000,
            offline_retention_ms: 300_000,
            default_capacity: 4,
            max_capacity: 256,
        }
    }
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            interval_ms: 200,
            batch: 200,
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 4 * 1024 * 1024,
            send_queue: 1024,
            hello_timeout_ms: 30_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// A configuration that cannot be used; the message names the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Config {
    /// Load defaults, then the TOML file (if any), then `SWITCHYARD_*` variables
    /// (`SWITCHYARD_NODE__HEARTBEAT_INTERVAL_MS=5000`), and validate the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig.merge(Env::prefixed("SWITCHYARD_").split("__").ignore(&["config"]));
        let cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Node liveness: the configured value, or 3 × the heartbeat interval.
    pub fn liveness_ms(&self) -> u64 {
        self.node
            .liveness_ms
            .unwrap_or(3 * self.node.heartbeat_interval_ms)
    }

    /// The hash tag every key of this cell carries, e.g. `{switchyard:main}`.
    pub fn cell_tag(&self) -> String {
        format!("{{{}:{}}}", self.cell.prefix, self.cell.name)
    }

    /// Check every value; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(field: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                field,
                reason: reason.into(),
            })
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "listen",
                format!("{:?} is not an ip:port address", self.listen),
            );
        }
        if !self.redis.url.starts_with("redis://") && !self.redis.url.starts_with("rediss://") {
            return bad("redis.url", "must start with redis:// or rediss://");
        }
        if self.redis.pool_size == 0 {
            return bad("redis.pool_size", "must be at least 1");
        }
        if self.redis.timeout_ms == 0 {
            return bad("redis.timeout_ms", "must be positive");
        }
        for (field, v) in [
            ("cell.prefix", &self.cell.prefix),
            ("cell.name", &self.cell.name),
        ] {
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return bad(field, "must be non-empty and use only [A-Za-z0-9._-]");
            }
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
        if self.ws.max_frame_bytes < 1024 {
            return bad("ws.max_frame_bytes", "must be at least 1024");
        }
        if self.ws.send_queue == 0 {
            return bad("ws.send_queue", "must be at least 1");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad("log.format", "must be \"text\" or \"json\"");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_liveness_is_derived() {
        let c = Config::default();
        c.validate().expect("defaults valid");
        assert_eq!(c.liveness_ms(), 45_000);
        assert_eq!(c.cell_tag(), "{switchyard:main}");
    }

    #[test]
    fn invalid_value_names_the_field() {
        let mut c = Config::default();
        c.node.heartbeat_interval_ms = 0;
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("node.heartbeat_interval_ms"), "{msg}");
    }
}
