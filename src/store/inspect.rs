//! Read-only views for operators (`/api/v1/jobs`, `/api/v1/sessions`, the dashboard, and
//! `switchyard inspect`): plain reads of what the scripts wrote, never a change of
//! scheduling state. The one write, [`Store::stats_add`], adds this instance's last second
//! of counters to the cell's per-second statistics key (observability, not state).

use std::collections::HashMap;

use super::{Store, StoreError};

/// Results of a session the inspection shows at most (the newest).
pub const SESSION_RESULTS: usize = 10;
/// Jobs of a session the listing shows at most (the newest indices).
pub const SESSION_JOBS: usize = 100;
/// How long a per-second statistics key lives (the dashboard shows the last minute).
pub const STATS_TTL_MS: u64 = 120_000;

/// One job of a session, as the listing shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobRow {
    pub index: u64,
    pub job_id: String,
    pub state: Option<String>,
    pub node: Option<String>,
    pub attempt: Option<String>,
    pub failure: Option<String>,
    pub created_at: Option<String>,
    pub finished_at: Option<String>,
}

fn read_err(e: redis::RedisError) -> StoreError {
    StoreError::from_redis("read", e)
}

impl Store {
    /// A job record (`job:<id>`), empty when it does not exist (or has expired). An ended
    /// job's record keeps no `id` field (its key names it): it is added here.
    pub async fn job_record(&self, id: &str) -> Result<HashMap<String, String>, StoreError> {
        let mut conn = self.conn().await?;
        let mut h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.job(id))
            .query_async(&mut conn)
            .await
            .map_err(read_err)?;
        if !h.is_empty() {
            h.entry("id".into()).or_insert_with(|| id.to_string());
        }
        Ok(h)
    }

    /// A session record, its pending indices (at most 100) and its newest results
    /// (index → the stored message JSON), at most [`SESSION_RESULTS`].
    #[allow(clippy::type_complexity)]
    pub async fn session_record(
        &self,
        id: &str,
    ) -> Result<(HashMap<String, String>, Vec<String>, Vec<(u64, String)>), StoreError> {
        let mut conn = self.conn().await?;
        let sk = self.keys.session(id);
        let (h, pending, indices): (HashMap<String, String>, Vec<String>, Vec<String>) =
            redis::pipe()
                .cmd("HGETALL")
                .arg(&sk)
                .cmd("ZRANGE")
                .arg(format!("{sk}:pending"))
                .arg(0)
                .arg(99)
                .cmd("HKEYS")
                .arg(format!("{sk}:results"))
                .query_async(&mut conn)
                .await
                .map_err(read_err)?;
        let mut idx: Vec<u64> = indices.iter().filter_map(|i| i.parse().ok()).collect();
        idx.sort_unstable();
        let newest: Vec<u64> = idx
            .iter()
            .rev()
            .take(SESSION_RESULTS)
            .rev()
            .copied()
            .collect();
        let results = if newest.is_empty() {
            Vec::new()
        } else {
            let msgs: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(format!("{sk}:results"))
                .arg(&newest)
                .query_async(&mut conn)
                .await
                .map_err(read_err)?;
            let mut results: Vec<(u64, String)> = newest
                .into_iter()
                .zip(msgs)
                .filter_map(|(i, m)| m.map(|m| (i, m)))
                .collect();
            // (a body gone: the header closed, for the operator to see what is left)
            for i in self.join_bodies(&mut conn, id, &mut results).await? {
                if let Some((_, m)) = results.iter_mut().find(|(n, _)| *n == i) {
                    m.push('}');
                }
            }
            results
        };
        Ok((h, pending, results))
    }

    /// The session's jobs (newest [`SESSION_JOBS`] indices) with their state.
    pub async fn session_jobs(&self, id: &str) -> Result<Vec<JobRow>, StoreError> {
        let mut conn = self.conn().await?;
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{}:jobs", self.keys.session(id)))
            .query_async(&mut conn)
            .await
            .map_err(read_err)?;
        let mut list: Vec<(u64, String)> = all
            .into_iter()
            .filter_map(|(i, j)| i.parse().ok().map(|i| (i, j)))
            .collect();
        list.sort_unstable();
        let list: Vec<(u64, String)> = list.into_iter().rev().take(SESSION_JOBS).rev().collect();
        if list.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (_, j) in &list {
            pipe.cmd("HMGET").arg(self.keys.job(j)).arg(&[
                "state",
                "node",
                "attempt",
                "failure",
                "created_at",
                "finished_at",
            ]);
        }
        type Fields = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Fields> = pipe.query_async(&mut conn).await.map_err(read_err)?;
        Ok(list
            .into_iter()
            .zip(rows)
            .map(|((index, job_id), r)| JobRow {
                index,
                job_id,
                state: r.0,
                node: r.1.filter(|n| !n.is_empty()),
                attempt: r.2,
                failure: r.3,
                created_at: r.4,
                finished_at: r.5,
            })
            .collect())
    }

    /// The cell's most recent failures, newest first: `"<ms> <job id> <code> <message>"`.
    /// Read as bytes, each entry made text lossily: one entry that is not UTF-8 (a message
    /// an older script cut inside a character) must not take the whole list down.
    pub async fn recent_failures(&self, n: usize) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn().await?;
        let raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(self.keys.failures())
            .arg(0)
            .arg(n.saturating_sub(1))
            .query_async(&mut conn)
            .await
            .map_err(read_err)?;
        Ok(raw
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e).into_owned())
            .collect())
    }

    /// For each pool: queue depth and since when its oldest job waits (ms, if any).
    pub async fn queue_heads(
        &self,
        pools: &[String],
    ) -> Result<Vec<(u64, Option<u64>)>, StoreError> {
        if pools.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        for p in pools {
            pipe.cmd("LLEN").arg(self.keys.queue(p));
            pipe.cmd("LINDEX").arg(self.keys.queue(p)).arg(0);
        }
        let raw: Vec<redis::Value> = pipe.query_async(&mut conn).await.map_err(read_err)?;
        let mut out = Vec::with_capacity(pools.len());
        let mut heads = Vec::new();
        for pair in raw.chunks(2) {
            let len = pair
                .first()
                .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
                .unwrap_or(0);
            let head = pair
                .get(1)
                .and_then(|v| redis::from_redis_value_ref::<Option<String>>(v).ok())
                .flatten();
            out.push((len, None));
            heads.push(head);
        }
        let mut pipe = redis::pipe();
        let mut asked = Vec::new();
        for (i, h) in heads.iter().enumerate() {
            if let Some(j) = h {
                pipe.cmd("HGET").arg(self.keys.job(j)).arg("queued_at");
                asked.push(i);
            }
        }
        if !asked.is_empty() {
            let at: Vec<Option<u64>> = pipe.query_async(&mut conn).await.map_err(read_err)?;
            for (i, t) in asked.into_iter().zip(at) {
                if let Some(slot) = out.get_mut(i) {
                    slot.1 = t;
                }
            }
        }
        Ok(out)
    }

    /// Add one second of this instance's counters to the cell's `stats:<second>` hash:
    /// `done`, `failed`, `e2e_ms` (sum of end-to-end latencies) and `i:<instance>` =
    /// `"<connections> <version>"`. One round trip per instance per second.
    pub async fn stats_add(
        &self,
        second: u64,
        done: u64,
        failed: u64,
        e2e_ms: u64,
        connections: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let k = self.keys.stats(second);
        let _: () = redis::pipe()
            .atomic()
            .cmd("HINCRBY")
            .arg(&k)
            .arg("done")
            .arg(done)
            .ignore()
            .cmd("HINCRBY")
            .arg(&k)
            .arg("failed")
            .arg(failed)
            .ignore()
            .cmd("HINCRBY")
            .arg(&k)
            .arg("e2e_ms")
            .arg(e2e_ms)
            .ignore()
            .cmd("HSET")
            .arg(&k)
            .arg(format!("i:{}", self.instance))
            .arg(format!("{connections} {}", env!("CARGO_PKG_VERSION")))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&k)
            .arg(STATS_TTL_MS)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(read_err)?;
        Ok(())
    }

    /// The cell's `stats:<second>` hashes for `from..=to` (empty maps for missing seconds).
    pub async fn stats_read(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<HashMap<String, String>>, StoreError> {
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        for s in from..=to {
            pipe.cmd("HGETALL").arg(self.keys.stats(s));
        }
        pipe.query_async(&mut conn).await.map_err(read_err)
    }
}
