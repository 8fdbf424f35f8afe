//! Readiness, loading the scripts' library and the optional `WAIT` for replicas: the calls
//! that must reach the node holding the cell (in cluster mode, the primary of its slot).

use std::time::Instant;

use redis::Value;

use super::{Conn, Store, StoreError};

impl Store {
    /// `FUNCTION LOAD REPLACE` the scripts' library (start-up, readiness, and when a call
    /// finds it missing) on the node holding the cell (in cluster mode, the primary of the
    /// cell's slot; its replicas get it by replication).
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let cell = self.keys.instances();
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg("REPLACE").arg(self.scripts.library());
        self.connector
            .on_cell(&mut conn, &cmd, &cell)
            .await
            .map_err(|e| StoreError::from_redis("function load", e))?;
        Ok(())
    }

    /// Load the library again for a call that found it missing at `failed_at`. Every call
    /// in flight finds it missing at once (a `FUNCTION FLUSH`, a restart without
    /// persistence); each loading the ~120 KB library would cost Redis a compile per call.
    /// One reload runs at a time, and a call that failed before the last reload finished
    /// just retries.
    pub(super) async fn reload_scripts(
        &self,
        failed_at: Instant,
        script: &'static str,
    ) -> Result<(), StoreError> {
        let mut last = self.reloaded.lock().await;
        if last.is_some_and(|t| t >= failed_at) {
            return Ok(());
        }
        tracing::warn!(script, "functions library missing in Redis: loading it");
        let loaded = self.load_scripts().await;
        // Stamped whatever the outcome: the calls queued behind a load that failed (Redis
        // away, or the pool exhausted by those very calls, which hold their connections)
        // retry their call or fail, rather than each attempting a load in turn.
        *last = Some(Instant::now());
        loaded
    }

    /// Ready = the node holding the cell is a primary that answers, does not evict keys
    /// (unless `redis.allow_eviction`; memory.rs), and every script is loaded there (loading
    /// them if a restart lost them). A demoted primary (it answers, but as a replica) is not
    /// ready: writes would fail with READONLY.
    pub async fn check_ready(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let cell = self.keys.instances();
        let ready = async {
            let role = self
                .connector
                .on_cell(&mut conn, &redis::cmd("ROLE"), &cell)
                .await?;
            if !super::sentinel::is_master(&role) {
                return Ok(None);
            }
            let mut cmd = redis::cmd("FUNCTION");
            cmd.arg("LIST")
                .arg("LIBRARYNAME")
                .arg(self.scripts.library_name());
            let listed = self.connector.on_cell(&mut conn, &cmd, &cell).await?;
            // LIBRARYNAME takes a glob pattern; the name has no special characters: exact.
            Ok(Some(matches!(listed, Value::Array(v) if !v.is_empty())))
        };
        let loaded = match ready.await {
            Ok(Some(true)) => Ok(()),
            Ok(Some(false)) => self.load_scripts().await,
            Ok(None) => {
                self.connector.failed().await;
                Err(StoreError::Unavailable(format!(
                    "{} is not a primary",
                    self.connector.describe()
                )))
            }
            Err(e) => {
                let e = StoreError::from_redis("ready", e);
                if matches!(e, StoreError::Unavailable(_)) {
                    self.connector.failed().await;
                }
                Err(e)
            }
        };
        loaded?;
        match self.eviction_on(&mut conn).await? {
            super::memory::Eviction::Refused(why) => Err(StoreError::Misconfigured(why)),
            // (Unchecked: INFO refused to this ACL user; the start logged it)
            _ => Ok(()),
        }
    }

    /// `WAIT redis.wait_replicas redis.wait_timeout_ms` after a state change. Fewer replicas
    /// by the timeout (or a failed `WAIT`) is an error, which the call turns into
    /// `StoreError::Unreplicated`: the change is made on the primary but not known to be
    /// replicated, so it is not acknowledged (the client retries; submissions are
    /// idempotent), while the script's messages are still delivered. Counted in
    /// `redis_wait_short`.
    pub(super) async fn wait_replicas(&self, conn: &mut Conn) -> Result<(), StoreError> {
        let (n, timeout) = self.wait;
        let started = Instant::now();
        let cell = self.keys.instances();
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(n).arg(timeout);
        let acked = self.connector.on_cell(conn, &cmd, &cell).await;
        let acked =
            acked.and_then(|v| redis::from_redis_value::<u32>(v).map_err(redis::RedisError::from));
        self.metrics
            .redis_wait_seconds
            .observe(started.elapsed().as_secs_f64());
        match acked {
            Ok(a) if a >= n => Ok(()),
            Ok(a) => {
                self.metrics.redis_wait_short.inc();
                Err(StoreError::Unavailable(format!(
                    "WAIT: {a} of {n} replicas acknowledged within {timeout} ms"
                )))
            }
            Err(e) => {
                self.metrics.redis_wait_short.inc();
                Err(StoreError::from_redis("wait", e))
            }
        }
    }
}
