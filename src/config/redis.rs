//! `[redis]` — Where scheduling state lives: the topology (one server, a Sentinel-managed
//! primary, or a Redis Cluster), credentials, TLS and the connection pool.

use serde::{Deserialize, Serialize};

/// How the Redis that holds the scheduling state is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server at `url` (or the first of `urls`).
    Single,
    /// A primary found through the sentinels listed in `urls`, followed across failovers.
    Sentinel,
    /// A Redis Cluster; `urls` are seed nodes, the slot map is discovered.
    Cluster,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `single`, `sentinel` or `cluster`.
    pub mode: RedisMode,
    /// `redis://host:port/db` of the Redis that holds all scheduling state (`single`).
    pub url: String,
    /// Seed addresses: the server (`single`, instead of `url`), the sentinels (`sentinel`)
    /// or some cluster nodes (`cluster`).
    pub urls: Vec<String>,
    /// The master name the sentinels monitor (`sentinel` mode).
    pub sentinel_master: String,
    /// ACL user for the data nodes (overrides a user in the URLs).
    pub username: Option<String>,
    /// Password for the data nodes (overrides one in the URLs). Never printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// PEM file of the CA that signed the servers' certificates (`rediss://` URLs).
    pub tls_ca_file: Option<String>,
    /// After each state-changing script, `WAIT` for this many replicas to acknowledge it
    /// (0 = off: asynchronous replication).
    pub wait_replicas: u32,
    /// Longest `WAIT` (ms); on timeout the call still succeeds and is counted.
    pub wait_timeout_ms: u64,
    /// Connections in the shared command pool (blocking readers get their own).
    pub pool_size: usize,
    /// How long a command waits for a pooled connection or a new connection before it fails
    /// with `SCHEDULER_DEPENDENCY_DOWN`; keeps clients answered quickly while Redis is away.
    pub timeout_ms: u64,
    /// Ready even when Redis may evict keys (a `maxmemory-policy` other than `noeviction`
    /// with `maxmemory` set): the operator accepts state lost under memory pressure.
    pub allow_eviction: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            mode: RedisMode::Single,
            url: "redis://127.0.0.1:6379".into(),
            urls: Vec::new(),
            sentinel_master: String::new(),
            username: None,
            password: None,
            tls_ca_file: None,
            wait_replicas: 0,
            wait_timeout_ms: 100,
            pool_size: 32,
            timeout_ms: 1000,
            allow_eviction: false,
        }
    }
}

impl RedisConfig {
    /// The seed addresses of the configured mode: `urls`, or `url` alone in `single` mode
    /// when `urls` is empty.
    pub fn seeds(&self) -> Vec<String> {
        if self.urls.is_empty() && self.mode == RedisMode::Single {
            vec![self.url.clone()]
        } else {
            self.urls.clone()
        }
    }

    /// Whether any seed uses TLS.
    pub fn tls(&self) -> bool {
        self.seeds().iter().any(|u| u.starts_with("rediss://"))
    }

    /// Check the section; the error names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let field = if self.urls.is_empty() {
            "redis.url"
        } else {
            "redis.urls"
        };
        let seeds = self.seeds();
        if seeds.is_empty() {
            return Err((
                "redis.urls",
                format!("{:?} mode needs at least one address", self.mode),
            ));
        }
        for u in &seeds {
            // (named with its password redacted: the message goes to stderr and the logs)
            let shown = super::show::redact_url(u);
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return Err((
                    field,
                    format!("{shown:?} must start with redis:// or rediss://"),
                ));
            }
            // as the connector will read it at start (a database that is no number, a bad
            // port): refused here, so check-config finds it too
            if let Err(e) = ::redis::IntoConnectionInfo::into_connection_info(u.as_str()) {
                return Err((field, format!("{shown:?}: {e}")));
            }
        }
        let tls = seeds.iter().filter(|u| u.starts_with("rediss://")).count();
        if tls != 0 && tls != seeds.len() {
            return Err((field, "mixes redis:// and rediss:// addresses".into()));
        }
        match self.mode {
            RedisMode::Single if seeds.len() > 1 => {
                return Err(("redis.urls", "single mode takes one address".into()));
            }
            RedisMode::Sentinel if self.sentinel_master.is_empty() => {
                return Err((
                    "redis.sentinel_master",
                    "sentinel mode needs the monitored master's name".into(),
                ));
            }
            _ => {}
        }
        if let Some(ca) = &self.tls_ca_file {
            if tls == 0 {
                return Err((
                    "redis.tls_ca_file",
                    "set, but no address uses rediss://".into(),
                ));
            }
            // read as the connector reads it at start: a directory, a file this user may
            // not read, or one with no certificate fails here rather than there
            match std::fs::read(ca) {
                Err(e) => return Err(("redis.tls_ca_file", format!("{ca}: {e}"))),
                Ok(pem) if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => {
                    return Err((
                        "redis.tls_ca_file",
                        format!("{ca}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"),
                    ));
                }
                Ok(_) => {}
            }
        }
        if self.pool_size == 0 {
            return Err(("redis.pool_size", "must be at least 1".into()));
        }
        if self.timeout_ms == 0 {
            return Err(("redis.timeout_ms", "must be positive".into()));
        }
        if self.wait_replicas > 0 && self.wait_timeout_ms == 0 {
            return Err((
                "redis.wait_timeout_ms",
                "must be positive when wait_replicas is set (0 would block forever)".into(),
            ));
        }
        Ok(())
    }
}
