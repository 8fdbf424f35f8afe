//! `[redis]` — Where scheduling state lives: the Redis connection pool.

use serde::{Deserialize, Serialize};

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

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            pool_size: 32,
            timeout_ms: 1000,
        }
    }
}
