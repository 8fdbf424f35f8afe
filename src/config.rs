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
    pub session: SessionConfig,
    pub jobs: JobsConfig,
    pub instance: InstanceConfig,
    pub inbox: InboxConfig,
    pub telemetry: TelemetryConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP endpoint (`http://collector:4317` for gRPC, `http://collector:4318` for HTTP).
    /// Unset: the standard `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` variables apply; if none
    /// is set either, no spans are exported.
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http` (HTTP/protobuf). Unset: `OTEL_EXPORTER_OTLP_PROTOCOL`, else grpc.
    pub otlp_protocol: Option<String>,
    /// Extra headers / gRPC metadata (e.g. an API key); `OTEL_EXPORTER_OTLP_HEADERS` also works.
    pub otlp_headers: std::collections::BTreeMap<String, String>,
    /// Share of traces sampled, decided from the trace id (so every instance agrees on one
    /// utterance's trace); children follow their parent.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceConfig {
    /// Presence TTL: an instance silent this long is dead and its inbox is taken over.
    pub presence_ttl_ms: u64,
    /// How often presence is renewed (and dead peers looked for); well inside the TTL.
    pub beat_interval_ms: u64,
    /// On SIGTERM: how long to keep serving after readiness turns false (load balancers
    /// must see it; nodes finish in-flight results), before closing anything.
    pub drain_delay_ms: u64,
    /// Then: how long to wait at most for queued local writes before closing with 1012.
    pub drain_grace_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboxConfig {
    /// Approximate MAXLEN of each instance's inbox stream.
    pub max_len: u64,
    /// Blocking read timeout of the inbox consumer.
    pub block_ms: u64,
    /// Entries pending (read, not acknowledged) longer than this are claimed again.
    pub claim_idle_ms: u64,
    /// An entry delivered this many times goes to the dead-letter stream.
    pub dead_letter_after: u64,
    /// Approximate MAXLEN of the dead-letter stream.
    pub dead_letter_max: u64,
    /// Entries of a dead instance's inbox re-routed per takeover call.
    pub takeover_batch: u64,
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
    /// Read and write buffer of each socket. Small, because they are allocated per
    /// connection (the library default of 128 KiB each costs 5 GiB for 20k sockets);
    /// larger frames still pass, up to `max_frame_bytes`.
    pub buffer_bytes: usize,
    /// Outbound messages buffered per connection before the connection counts as stuck.
    pub send_queue: usize,
    /// A connection that has not registered / initialised within this time is closed.
    pub hello_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// A session with no activity (audio, heartbeat, utterance) for this long expires.
    pub idle_ttl_ms: u64,
    /// No audio_chunk for this long after audio arrived → timeout cut.
    pub pause_ms: u64,
    /// Buffered audio reaching this duration → max-duration cut (the turn continues).
    pub max_duration_ms: u64,
    /// Buffered audio larger than this → cut.
    pub max_buffer_bytes: u64,
    /// After `tts_started`, the pause clock waits this much longer (playback is not silence;
    /// bounds a client that never sends `tts_play_ended`).
    pub playback_grace_ms: u64,
    /// A result waits at most this long for an unfinished earlier utterance index.
    pub reorder_window_ms: u64,
    /// An `utterance` index may run at most this far ahead of the delivery cursor.
    pub max_index_ahead: u64,
    /// Delivered results stay in the result log this long, for `resume_session_id`.
    pub result_retention_ms: u64,
    /// A session connection waits at most this long for a missing earlier message (results
    /// may arrive by the local path and through the inbox) before writing later ones.
    pub order_gap_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Attempts per utterance (first dispatch included) before it fails.
    pub max_attempts: u32,
    /// How long a job may wait in a pool queue for free capacity.
    pub queue_wait_ms: u64,
    /// Jobs waiting per pool queue at most; beyond it a job fails at once.
    pub queue_max: u32,
    /// Queued jobs examined per pool when capacity frees.
    pub queue_scan: u32,
    /// Deadline for `job_ack` from a node that announced `supports_job_ack`.
    pub ack_timeout_ms: u64,
    /// Deadline for the result of one attempt, from dispatch.
    pub run_timeout_ms: u64,
    /// How long job records (and their audio) are kept.
    pub record_ttl_ms: u64,
    /// Power-of-k-choices: candidates compared per dispatch.
    pub choices: u32,
    /// Pool size up to which every member is considered; larger pools are sampled.
    pub sample: u32,
    /// Prefer the node that served the session's previous utterance when it has room.
    pub session_affinity: bool,
    /// Tenants whose sessions use only their own nodes (never the public pools).
    pub strict_tenants: Vec<String>,
    /// How long a service stays marked unavailable after MODEL_NOT_AVAILABLE.
    pub model_unavailable_ms: u64,
    /// Marks per node per minute at most (a flapping node cannot thrash its state).
    pub model_unavailable_per_minute: u32,
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
            session: SessionConfig::default(),
            jobs: JobsConfig::default(),
            instance: InstanceConfig::default(),
            inbox: InboxConfig::default(),
            telemetry: TelemetryConfig::default(),
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
            buffer_bytes: 8 * 1024,
            send_queue: 1024,
            hello_timeout_ms: 30_000,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_ttl_ms: 300_000,
            pause_ms: 3_000,
            max_duration_ms: 10_000,
            max_buffer_bytes: 500 * 1024,
            playback_grace_ms: 30_000,
            reorder_window_ms: 2_000,
            max_index_ahead: 1_000,
            result_retention_ms: 120_000,
            order_gap_ms: 2_000,
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            queue_wait_ms: 5_000,
            queue_max: 10_000,
            queue_scan: 16,
            ack_timeout_ms: 3_000,
            run_timeout_ms: 30_000,
            record_ttl_ms: 600_000,
            choices: 2,
            sample: 8,
            session_affinity: false,
            strict_tenants: Vec::new(),
            model_unavailable_ms: 60_000,
            model_unavailable_per_minute: 6,
        }
    }
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self {
            presence_ttl_ms: 5_000,
            beat_interval_ms: 1_000,
            drain_delay_ms: 2_000,
            drain_grace_ms: 5_000,
        }
    }
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            max_len: 100_000,
            block_ms: 1_000,
            claim_idle_ms: 5_000,
            dead_letter_after: 5,
            dead_letter_max: 10_000,
            takeover_batch: 1_000,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: None,
            otlp_headers: Default::default(),
            sample_ratio: 1.0,
            service_name: "switchyard".into(),
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

/// Top-level keys an environment variable may set.
const SECTIONS: &[&str] = &[
    "listen",
    "redis",
    "cell",
    "node",
    "sweep",
    "ws",
    "session",
    "jobs",
    "instance",
    "inbox",
    "telemetry",
    "log",
];

impl Config {
    /// Load defaults, then the TOML file (if any), then `SWITCHYARD_*` variables
    /// (`SWITCHYARD_NODE__HEARTBEAT_INTERVAL_MS=5000`), and validate the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
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
        if !self.redis.url.starts_with("redis://") {
            return bad(
                "redis.url",
                "must start with redis:// (TLS is not built in)",
            );
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
        if self.ws.buffer_bytes < 1024 {
            return bad("ws.buffer_bytes", "must be at least 1024");
        }
        if self.ws.send_queue == 0 {
            return bad("ws.send_queue", "must be at least 1");
        }
        let s = &self.session;
        for (field, v) in [
            ("session.idle_ttl_ms", s.idle_ttl_ms),
            ("session.pause_ms", s.pause_ms),
            ("session.max_duration_ms", s.max_duration_ms),
            ("session.max_buffer_bytes", s.max_buffer_bytes),
            ("session.reorder_window_ms", s.reorder_window_ms),
            ("session.max_index_ahead", s.max_index_ahead),
            ("jobs.queue_wait_ms", self.jobs.queue_wait_ms),
            ("jobs.ack_timeout_ms", self.jobs.ack_timeout_ms),
            ("jobs.run_timeout_ms", self.jobs.run_timeout_ms),
            ("jobs.record_ttl_ms", self.jobs.record_ttl_ms),
        ] {
            if v == 0 {
                return bad(field, "must be positive");
            }
        }
        let j = &self.jobs;
        if j.max_attempts == 0 {
            return bad("jobs.max_attempts", "must be at least 1");
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
        if j.record_ttl_ms < u64::from(j.max_attempts) * (j.run_timeout_ms + j.queue_wait_ms) {
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
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail closures return figment::Error
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
    fn every_section_can_be_set_from_the_environment_and_strays_are_ignored() {
        figment::Jail::expect_with(|jail| {
            let vars = [
                ("SWITCHYARD_LISTEN", "127.0.0.1:6000"),
                ("SWITCHYARD_REDIS__POOL_SIZE", "7"),
                ("SWITCHYARD_CELL__NAME", "eu"),
                ("SWITCHYARD_NODE__HEARTBEAT_INTERVAL_MS", "5000"),
                ("SWITCHYARD_SWEEP__BATCH", "9"),
                ("SWITCHYARD_WS__SEND_QUEUE", "11"),
                ("SWITCHYARD_SESSION__PAUSE_MS", "1234"),
                ("SWITCHYARD_JOBS__MAX_ATTEMPTS", "5"),
                ("SWITCHYARD_INSTANCE__PRESENCE_TTL_MS", "9000"),
                ("SWITCHYARD_INBOX__DEAD_LETTER_AFTER", "3"),
                ("SWITCHYARD_TELEMETRY__SAMPLE_RATIO", "0.5"),
                ("SWITCHYARD_LOG__FORMAT", "json"),
                // Kubernetes injects these for a Service named "switchyard".
                ("SWITCHYARD_SERVICE_HOST", "10.0.0.1"),
                ("SWITCHYARD_PORT_5010_TCP", "tcp://10.0.0.1:5010"),
            ];
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            let c = Config::load(None).expect("loads");
            assert_eq!(c.listen, "127.0.0.1:6000");
            assert_eq!(c.redis.pool_size, 7);
            assert_eq!(c.cell.name, "eu");
            assert_eq!(c.node.heartbeat_interval_ms, 5000);
            assert_eq!(c.sweep.batch, 9);
            assert_eq!(c.ws.send_queue, 11);
            assert_eq!(c.session.pause_ms, 1234);
            assert_eq!(c.jobs.max_attempts, 5);
            assert_eq!(c.instance.presence_ttl_ms, 9000);
            assert_eq!(c.inbox.dead_letter_after, 3);
            assert_eq!(c.telemetry.sample_ratio, 0.5);
            assert_eq!(c.log.format, "json");
            Ok(())
        });
    }

    #[test]
    fn a_toml_file_sits_between_defaults_and_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "s.toml",
                "[node]\nheartbeat_interval_ms = 2000\ndefault_capacity = 2\n",
            )?;
            jail.set_env("SWITCHYARD_NODE__DEFAULT_CAPACITY", "3");
            let c = Config::load(Some(std::path::Path::new("s.toml"))).expect("loads");
            assert_eq!(c.node.heartbeat_interval_ms, 2000);
            assert_eq!(c.node.default_capacity, 3, "environment wins over the file");
            assert_eq!(c.liveness_ms(), 6000);
            jail.create_file("bad.toml", "[node]\nheartbeat_intervl_ms = 1\n")?;
            let err = Config::load(Some(std::path::Path::new("bad.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("heartbeat_intervl_ms"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn job_records_must_outlive_every_attempt() {
        let mut c = Config::default();
        c.jobs.max_attempts = 3;
        c.jobs.run_timeout_ms = 30_000;
        c.jobs.queue_wait_ms = 5_000;
        c.jobs.record_ttl_ms = 104_999;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("jobs.record_ttl_ms")
        );
        c.jobs.record_ttl_ms = 105_000;
        c.validate().expect("3 x (30 s + 5 s) fits");
        c.ws.buffer_bytes = 100;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("ws.buffer_bytes")
        );
    }

    #[test]
    fn invalid_value_names_the_field() {
        let mut c = Config::default();
        c.node.heartbeat_interval_ms = 0;
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("node.heartbeat_interval_ms"), "{msg}");
    }
}
