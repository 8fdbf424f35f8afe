//! The Redis side of Switchyard: connection pool, script calls, typed operations.
//!
//! Every state change is one Lua script (DESIGN §1.2); this module turns each script into
//! one typed Rust function (`nodes.rs` for the node side) and keeps the plumbing in one
//! place: the deadpool-redis pool, EVALSHA with transparent reload after NOSCRIPT, JSON
//! replies decoded into enums, per-script metrics, and one error for "Redis is away"
//! ([`StoreError::Unavailable`], which clients see as `SCHEDULER_DEPENDENCY_DOWN`).

pub mod keys;
pub mod nodes;
pub mod scripts;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_redis::{Pool, Runtime};
use redis::{AsyncConnectionConfig, IntoConnectionInfo};
use serde::de::DeserializeOwned;

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
    pub keys: Keys,
    scripts: Scripts,
    metrics: Arc<Metrics>,
}

impl Store {
    /// Build the pool (no connection is made yet; Redis may come up later).
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
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
        let info = info.set_redis_settings(settings);
        let timeout = Duration::from_millis(cfg.redis.timeout_ms);
        let conn_cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
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
            keys: Keys::new(&cfg.cell_tag()),
            scripts: Scripts::new(),
            metrics,
        })
    }

    /// A pooled connection, or `Unavailable`.
    pub async fn conn(&self) -> Result<deadpool_redis::Connection, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Run one script and decode its JSON reply.
    pub(crate) async fn run<T: DeserializeOwned>(
        &self,
        script: Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        let name = script.name();
        let started = Instant::now();
        let result = async {
            let mut conn = self.conn().await?;
            let mut inv = self.scripts.get(script).prepare_invoke();
            for k in keys {
                inv.key(k);
            }
            for a in args {
                inv.arg(a);
            }
            let raw: String = inv
                .invoke_async(&mut conn)
                .await
                .map_err(|e| StoreError::from_redis(name, e))?;
            serde_json::from_str(&raw).map_err(|e| StoreError::Reply {
                script: name,
                message: format!("{e}: {raw}"),
            })
        }
        .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(StoreError::Unavailable(_)) => "unavailable",
            Err(_) => "error",
        };
        self.metrics
            .script_calls
            .get_or_create(&ScriptLabels {
                script: name.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.metrics
            .script_seconds
            .get_or_create(&ScriptName {
                script: name.into(),
            })
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::warn!(script = name, error = %e, "script call failed");
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
