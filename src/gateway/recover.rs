//! A lost reply's messages put back for a session connected here (`session.on_gap =
//! "skip"`, for clients that never resume); and, whatever `on_gap`, the terminal messages a
//! slow reader's full send queue refused, or its writer gave up waiting for
//! ([`missing`]: nothing else would ever write them; the read reaches [`SPAN`] indices
//! below the cursor).
//!
//! A script call whose reply was lost ([`crate::store::StoreError::Ambiguous`]: a Redis
//! stall past `redis.timeout_ms`), or came and did not decode
//! ([`crate::store::StoreError::Reply`]), may have committed, and released terminal
//! messages for a session on this instance — a node's `job_result`, the session's own
//! `submit`, `audio_append` or `session_close` — that only its reply carried. They are in
//! the session's result log. Once Redis answers again, a task reads the delivered results
//! near the session's cursor and its `out_seq` ([`crate::store::Store::result_log_tail`])
//! and hands them to the connection's writer ([`Outbound::Recovered`]), which writes those
//! it has not written, once each, in index order, and stops waiting for the numbers they
//! filled. A second read a moment later catches a call Redis ran only just after the first
//! (both waited in Redis's buffers while it stalled). Bounded: `session.recover_for_ms` of
//! retries, the indices from [`crate::store::log_tail::BELOW_CURSOR`] below the cursor (or
//! the lowest of the [`crate::store::log_tail::RECENT`] most recently settled, if lower) to
//! [`crate::store::log_tail::FROM_CURSOR`] above it, at most
//! [`crate::store::log_tail::SPAN`] a read (a wider range is cut from below, counted as
//! `ambiguous_unrecovered` and logged); one task per connection at a time (another lost
//! reply meanwhile asks it for one more round; each attempt is bounded by the same
//! deadline, so a connection that cannot be made does not hold it). If Redis stays away it
//! gives up, counted (`ambiguous_unrecovered`) and logged; a recovery that read the log
//! counts `ambiguous_recovered`. It stops, uncounted, when the connection ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::{Kind, LocalConn, Outbound};
use crate::cells::Cell;
use crate::server::App;
use crate::store::log_tail::{BELOW_CURSOR, LogTail, SPAN};

/// Pause between two reads that failed.
const RETRY_EVERY: Duration = Duration::from_millis(250);
/// Pause before the second read of a round.
const SETTLE: Duration = Duration::from_millis(300);

const KIND: &str = "session";

/// The connections of this instance (by token) with a recovery running → the reach below
/// the cursor of another round asked meanwhile, if one was (`App::recoveries`).
#[derive(Default)]
pub struct Recoveries(Mutex<HashMap<String, Option<u64>>>);

impl Recoveries {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Option<u64>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long a recovery retries while Redis does not answer (`session.recover_for_ms`).
fn retry_for(app: &App) -> Duration {
    Duration::from_millis(app.cfg.session.recover_for_ms)
}

/// Recover what a lost reply carried for session `sid`, connected here as `conn`.
pub(super) fn session(app: &Arc<App>, sid: &str, conn: LocalConn) {
    start(app, sid, conn, BELOW_CURSOR);
}

/// Ordered messages may be missing on the connection: its full send queue refused them (a
/// slow reader), or its writer skipped a gap (`on_gap = "skip"`). They may be many, not one
/// lost reply's, so the read reaches [`SPAN`] indices below the cursor.
pub(super) fn missing(app: &Arc<App>, sid: &str, conn: LocalConn) {
    start(app, sid, conn, SPAN);
}

/// A recovery reaching `below` indices below the cursor, or one more round of the one
/// running (the wider reach of the two).
fn start(app: &Arc<App>, sid: &str, conn: LocalConn, below: u64) {
    let key = conn.token.clone();
    {
        let mut r = app.recoveries.lock();
        if let Some(again) = r.get_mut(&key) {
            *again = Some(again.unwrap_or(0).max(below));
            return;
        }
        r.insert(key.clone(), None);
    }
    let (app, sid) = (app.clone(), sid.to_string());
    tokio::spawn(async move {
        let mut entry = Entry(app.clone(), Some(key));
        let mut below = below;
        loop {
            round(&app, &sid, &conn, below).await;
            // Another round if asked meanwhile, else leave the map: one decision under the
            // lock, so a lost reply that comes meanwhile is either served or starts a task.
            let mut r = app.recoveries.lock();
            let key = entry.1.as_deref().unwrap_or_default();
            match r.get_mut(key) {
                Some(again) if again.is_some() && !conn.tx.is_closed() => {
                    below = again.take().unwrap_or(BELOW_CURSOR);
                }
                _ => {
                    r.remove(key);
                    entry.1 = None;
                    return;
                }
            }
        }
    });
}

/// A connection's place in [`Recoveries`] while its task runs: left by the task, or here
/// if the task ends otherwise (a panic).
struct Entry(Arc<App>, Option<String>);

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(key) = self.1.take() {
            self.0.recoveries.lock().remove(&key);
        }
    }
}

/// A node's `job_result` for `job_id` lost its reply: recover for its session if that is
/// connected here. `named`: the session the node's message named (a lingua node echoes its
/// `job_assign`'s), else the job record says, once Redis answers.
pub(super) fn job_session(app: &Arc<App>, cell: &Arc<Cell>, job_id: &str, named: Option<&str>) {
    let here = |sid: &str| app.conns.get(Kind::Session, cell.name(), sid, None);
    if let Some(sid) = named.filter(|s| !s.is_empty()) {
        if let Some(conn) = here(sid) {
            session(app, sid, conn);
        }
        return;
    }
    let (app, cell, job_id) = (app.clone(), cell.clone(), job_id.to_string());
    tokio::spawn(async move {
        let deadline = Instant::now() + retry_for(&app);
        let sid = loop {
            match tokio::time::timeout_at(deadline, cell.store.job_session(&job_id)).await {
                Ok(Ok(sid)) => break sid,
                Err(_) => {
                    gave_up(&app, &job_id, "timed out");
                    return;
                }
                Ok(Err(e)) if Instant::now() >= deadline => {
                    gave_up(&app, &job_id, &e.to_string());
                    return;
                }
                Ok(Err(_)) => tokio::time::sleep(RETRY_EVERY).await,
            }
        };
        let Some(sid) = sid else { return };
        if let Some(conn) = app.conns.get(Kind::Session, cell.name(), &sid, None) {
            session(&app, &sid, conn);
        }
    });
}

/// One round: a read (`below` indices below the cursor) once Redis answers, handed to the
/// writer, then one more a moment later.
async fn round(app: &App, sid: &str, conn: &LocalConn, below: u64) {
    for n in 0..2 {
        if n > 0 {
            tokio::time::sleep(SETTLE).await;
        }
        let Some(tail) = read(app, sid, conn, below).await else {
            return;
        };
        if n == 0 {
            app.metrics.delivery(KIND, "ambiguous_recovered");
            tracing::info!(
                session_id = sid,
                out_seq = tail.out_seq,
                results = tail.results.len(),
                "lost reply: the session's results read back from its log"
            );
        }
        if tail.cut {
            app.metrics.delivery(KIND, "ambiguous_unrecovered");
            tracing::warn!(
                session_id = sid,
                span = crate::store::log_tail::SPAN,
                "lost reply: the results to read back span more indices than a read takes; \
                 the lowest are not recovered (they stay in the log)"
            );
        }
        let out = Outbound::Recovered(tail.out_seq, tail.results);
        if conn.tx.send(out).await.is_err() {
            return; // the connection ended
        }
    }
}

/// The log's tail, retried until Redis answers or `session.recover_for_ms` passed; `None`: given up,
/// the session is gone, or its connection ended.
async fn read(app: &App, sid: &str, conn: &LocalConn, below: u64) -> Option<LogTail> {
    let deadline = Instant::now() + retry_for(app);
    loop {
        if conn.tx.is_closed() {
            return None;
        }
        // (an attempt is bounded too: a connection that cannot be made may take long)
        let attempt = tokio::time::timeout_at(
            deadline,
            conn.cell.store.result_log_tail(sid, &conn.token, below),
        );
        match attempt.await {
            Ok(Ok(tail)) => return tail,
            Err(_) => {
                gave_up(app, sid, "timed out");
                return None;
            }
            Ok(Err(e)) if Instant::now() >= deadline => {
                gave_up(app, sid, &e.to_string());
                return None;
            }
            Ok(Err(_)) => tokio::time::sleep(RETRY_EVERY).await,
        }
    }
}

fn gave_up(app: &App, what: &str, error: &str) {
    app.metrics.delivery(KIND, "ambiguous_unrecovered");
    tracing::warn!(
        what,
        error,
        "lost reply: Redis did not answer in time, its session messages are not recovered"
    );
}
