//! The result log read back after a lost reply: a script that committed though its reply
//! never came (a Redis stall past `redis.timeout_ms`) took the terminal messages it
//! released for a session here with it. They are in the session's result log
//! (`session:<sid>:results`): this plain read (no script, no change) returns the delivered
//! results near the session's cursor, down to the most recently settled indices, and the
//! session's `out_seq`, in one transaction, for the session's writer to put back what it
//! has not written (`gateway::recover`).

use super::{Store, StoreError};

/// Indices below the session's cursor (`next_deliver`) read back at least.
pub const BELOW_CURSOR: u64 = 32;
/// Indices from the cursor on read back (results the reorder window's end delivered ahead
/// of an unfinished one).
pub const FROM_CURSOR: u64 = 32;
/// The most recently settled indices (`session:<sid>:rtime`) the read reaches down to: the
/// lost call's own index is among them, however far below the cursor the call moved it
/// (a slow index whose later ones were released ahead of it).
pub const RECENT: isize = 64;
/// The most indices one read spans: a wider range is cut from below and reported
/// (`LogTail::cut`).
pub const SPAN: u64 = 256;

/// What [`Store::result_log_tail`] read.
#[derive(Debug, Default)]
pub struct LogTail {
    /// The session's `out_seq` in the same transaction: every terminal message numbered up
    /// to it is committed, and logged.
    pub out_seq: u64,
    /// The delivered results of the indices read (logged, not pending), (index, message)
    /// in index order; a result logged in two parts comes joined.
    pub results: Vec<(u64, String)>,
    /// The range was wider than [`SPAN`]: indices below it were not read.
    pub cut: bool,
}

fn read_err(e: redis::RedisError) -> StoreError {
    StoreError::from_redis("read", e)
}

impl Store {
    /// The delivered results of session `sid` from `below` indices below its cursor (at
    /// least [`BELOW_CURSOR`]; or the lowest of its [`RECENT`] most recently settled, if
    /// lower) to [`FROM_CURSOR`] indices after it, at most [`SPAN`], with its `out_seq`;
    /// `None` when the session is gone, or no longer bound to connection `conn` (a resume
    /// moved it elsewhere: what settles after that is the new connection's).
    pub async fn result_log_tail(
        &self,
        sid: &str,
        conn_token: &str,
        below: u64,
    ) -> Result<Option<LogTail>, StoreError> {
        let mut conn = self.conn().await?;
        let sk = self.keys.session(sid);
        // The cursor and the most recently settled indices in one round trip: they only
        // decide which indices the transaction below reads.
        let (cursor, recent): (Option<u64>, Vec<u64>) = redis::pipe()
            .cmd("HGET")
            .arg(&sk)
            .arg("next_deliver")
            .cmd("ZREVRANGE")
            .arg(self.keys.session_rtime(sid))
            .arg(0)
            .arg(RECENT - 1)
            .query_async(&mut conn)
            .await
            .map_err(read_err)?;
        let Some(cursor) = cursor else {
            return Ok(None);
        };
        let hi = cursor.saturating_add(FROM_CURSOR);
        let want = recent
            .iter()
            .copied()
            .min()
            .unwrap_or(cursor)
            .min(cursor.saturating_sub(below.max(BELOW_CURSOR)));
        let lo = want.max(hi.saturating_sub(SPAN));
        let idx: Vec<u64> = (lo..hi).collect();
        // The cursor moves on, the log only grows near it: the window read first is good,
        // and `out_seq` is read with the entries (what it numbers is in them).
        type Read = (Option<String>, Option<u64>, Vec<Option<String>>, Vec<u64>);
        let (bound, out_seq, msgs, pending): Read = redis::pipe()
            .atomic()
            .cmd("HGET")
            .arg(&sk)
            .arg("conn")
            .cmd("HGET")
            .arg(&sk)
            .arg("out_seq")
            .cmd("HMGET")
            .arg(self.keys.session_results(sid))
            .arg(&idx)
            .cmd("ZRANGEBYSCORE")
            .arg(self.keys.session_pending(sid))
            .arg(lo)
            .arg(idx.last().copied().unwrap_or(lo))
            .query_async(&mut conn)
            .await
            .map_err(read_err)?;
        if bound.as_deref() != Some(conn_token) {
            return Ok(None);
        }
        let mut results: Vec<(u64, String)> = idx
            .into_iter()
            .zip(msgs)
            .filter(|(i, _)| !pending.contains(i))
            .filter_map(|(i, m)| m.map(|m| (i, m)))
            .collect();
        // (never a message cut after its header: the log outlived its body; its index gets
        // the error a delivery sends in its place, not nothing)
        let gone = self.join_bodies(&mut conn, sid, &mut results).await?;
        for (i, m) in results.iter_mut().filter(|(i, _)| gone.contains(i)) {
            *m = crate::protocol::expired_result(sid, *i);
        }
        Ok(Some(LogTail {
            out_seq: out_seq.unwrap_or(0),
            results,
            cut: lo > want,
        }))
    }

    /// A large result is logged as "+" and its header, its body in a key of its own
    /// (renamed there when it settled, never changed after): each such entry of `results`
    /// gets its body joined. Returns the indices whose body is gone (their header is left
    /// without the "+").
    pub(super) async fn join_bodies(
        &self,
        conn: &mut super::Conn,
        sid: &str,
        results: &mut [(u64, String)],
    ) -> Result<Vec<u64>, StoreError> {
        let split: Vec<usize> = (0..results.len())
            .filter(|&n| results[n].1.starts_with('+'))
            .collect();
        if split.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for &n in &split {
            p.cmd("GET").arg(self.keys.session_body(sid, results[n].0));
        }
        let bodies: Vec<Option<String>> = p.query_async(conn).await.map_err(read_err)?;
        let mut gone = Vec::new();
        for (&n, body) in split.iter().zip(bodies) {
            let header = results[n].1.split_off(1);
            results[n].1 = header;
            match body {
                Some(b) => results[n].1.push_str(&b),
                None => gone.push(results[n].0),
            }
        }
        Ok(gone)
    }

    /// The session of job `job_id` (its record's `session`), `None` once the record is gone.
    pub async fn job_session(&self, job_id: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("HGET")
            .arg(self.keys.job(job_id))
            .arg("session")
            .query_async(&mut conn)
            .await
            .map_err(read_err)
    }
}
