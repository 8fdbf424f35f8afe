//! Inbox entries the consumer will not handle (again): copied to the cell's `deadletter`
//! stream for operators, acknowledged and deleted, counted (`switchyard_dead_lettered_total`)
//! and logged with their entry id. Three ways there:
//! - a malformed entry ([`super::handle`]: its `env` does not decode, names no known kind, or
//!   its body key cannot be read as a body) goes at once: reading it again changes nothing;
//! - an entry of this consumer's own pending list already delivered `dead_letter_after`
//!   times, and written more than `claim_idle_ms` ago, is not read again at a reconnect
//!   ([`drop_worn`]): reading it first at every reconnect would loop for ever if its
//!   handling always fails. Both bounds, because a delivery is counted even when what failed
//!   was Redis or the connection, not the entry (a read reply lost, a body read that timed
//!   out): a burst of reconnects alone must not dead-letter a healthy, recent entry. One
//!   that old is seconds late for a real-time session, whose writer has given its gap up
//!   already (`session.order_gap_ms`);
//! - an entry pending longer than `claim_idle_ms` and delivered that often ([`reclaim`]).
//!
//! An entry written to its socket whose XACK failed (remembered in [`Written`]) is only
//! acknowledged: it was delivered.

use redis::{RedisResult, Value};

use super::{Entry, Fields, GROUP, Written, handle, parse_entries};
use crate::cells::Cell;
use crate::server::App;
use crate::store::Conn;

/// Copy entry `id` (its `fields`; none for an entry no longer in the stream) to the
/// dead-letter stream with `reason`, and acknowledge and delete it, in one transaction.
pub(super) async fn dead_letter(
    app: &App,
    cell: &Cell,
    conn: &mut Conn,
    inbox: &str,
    (id, fields): (&str, &Fields),
    reason: &str,
) -> RedisResult<()> {
    let mut p = redis::pipe();
    p.atomic();
    if !fields.is_empty() {
        p.cmd("XADD")
            .arg(cell.store.keys.dead_letters())
            .arg("MAXLEN")
            .arg("~")
            .arg(app.cfg.inbox.dead_letter_max)
            .arg("*")
            .arg("from")
            .arg(inbox)
            .arg("entry")
            .arg(id)
            .arg("reason")
            .arg(reason);
        for (k, v) in fields {
            p.arg(k).arg(v.as_slice());
        }
        p.ignore();
    }
    p.cmd("XACK").arg(inbox).arg(GROUP).arg(id).ignore();
    p.cmd("XDEL").arg(inbox).arg(id).ignore();
    match p.query_async::<()>(conn).await {
        Ok(()) => {
            tracing::error!(cell = cell.name(), entry = %id, reason, "inbox entry moved to the dead-letter stream");
        }
        // Redis full (maxmemory, noeviction) refuses the copy, and with it the transaction:
        // retried at every reconnect, one such entry would hold up every entry after it.
        // Acknowledging needs no memory: the entry goes, logged, without its copy.
        Err(e) if e.to_string().contains("OOM") => {
            ack(conn, inbox, id).await?;
            tracing::error!(
                cell = cell.name(), entry = %id, reason, error = %e,
                "inbox entry dropped: the dead-letter stream refused its copy"
            );
        }
        Err(e) => return Err(e),
    }
    app.metrics.dead_lettered.inc();
    Ok(())
}

/// Acknowledge and delete entry `id` (written to its socket already).
async fn ack(conn: &mut Conn, inbox: &str, id: &str) -> RedisResult<()> {
    redis::pipe()
        .cmd("XACK")
        .arg(inbox)
        .arg(GROUP)
        .arg(id)
        .ignore()
        .cmd("XDEL")
        .arg(inbox)
        .arg(id)
        .ignore()
        .query_async(conn)
        .await
}

/// Move entry `id`, delivered `deliveries` times, to the dead-letter stream (or only
/// acknowledge it, if it was written to its socket). `fields`: read here when not given.
async fn retire(
    app: &App,
    cell: &Cell,
    conn: &mut Conn,
    inbox: &str,
    (id, deliveries): (&str, u64),
    fields: Option<Fields>,
    written: &mut Written,
) -> RedisResult<()> {
    if written.contains(id) {
        ack(conn, inbox, id).await?;
        written.acked(&[id]);
        return Ok(());
    }
    let fields = match fields {
        Some(f) => f,
        None => {
            let range: Value = redis::cmd("XRANGE")
                .arg(inbox)
                .arg(id)
                .arg(id)
                .query_async(conn)
                .await?;
            as_entries(range)
                .into_iter()
                .next()
                .map(|(_, f)| f)
                .unwrap_or_default()
        }
    };
    let reason = format!("delivered {deliveries} times without an acknowledgement");
    dead_letter(app, cell, conn, inbox, (id, &fields), &reason).await
}

/// The entries of an XRANGE or XCLAIM reply (a bare list of entries).
fn as_entries(reply: Value) -> Vec<Entry> {
    match reply {
        Value::Array(_) => parse_entries(Value::Array(vec![Value::Array(vec![Value::Nil, reply])])),
        _ => Vec::new(),
    }
}

/// Dead-letter the entries of this consumer's pending list after `after` (`"0"`: from the
/// first) that were delivered `dead_letter_after` times already and written over
/// `claim_idle_ms` ago (by Redis' clock: an entry id starts with the ms it was added at),
/// looking at the page of entries the next history read (COUNT 256) returns, until that
/// page has none.
pub(super) async fn drop_worn(
    app: &App,
    cell: &Cell,
    conn: &mut Conn,
    inbox: &str,
    after: &str,
    written: &mut Written,
) -> RedisResult<()> {
    let start = if after == "0" {
        "-".to_string()
    } else {
        format!("({after}")
    };
    loop {
        let page: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(inbox)
            .arg(GROUP)
            .arg(&start)
            .arg("+")
            .arg(256)
            .arg(&app.instance_id)
            .query_async(conn)
            .await?;
        let mut worn: Vec<(String, u64)> = page
            .into_iter()
            .filter(|(_, _, _, n)| *n >= app.cfg.inbox.dead_letter_after)
            .map(|(id, _, _, n)| (id, n))
            .collect();
        if worn.is_empty() {
            return Ok(());
        }
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
        let old_before =
            (secs.saturating_mul(1000) + micros / 1000).saturating_sub(app.cfg.inbox.claim_idle_ms);
        worn.retain(|(id, _)| added_ms(id).is_some_and(|ms| ms < old_before));
        if worn.is_empty() {
            return Ok(());
        }
        for (id, n) in &worn {
            retire(app, cell, conn, inbox, (id, *n), None, written).await?;
        }
    }
}

/// Entries read but never acknowledged (a crash mid-write, a bug): claim them again, or
/// move them to the dead-letter stream after `dead_letter_after` deliveries.
pub(super) async fn reclaim(
    app: &App,
    cell: &Cell,
    conn: &mut Conn,
    inbox: &str,
    written: &mut Written,
) -> RedisResult<()> {
    let idle = app.cfg.inbox.claim_idle_ms;
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(inbox)
        .arg(GROUP)
        .arg("IDLE")
        .arg(idle)
        .arg("-")
        .arg("+")
        .arg(100)
        .query_async(conn)
        .await?;
    for (id, _consumer, _idle, deliveries) in pending {
        let claimed: Value = redis::cmd("XCLAIM")
            .arg(inbox)
            .arg(GROUP)
            .arg(&app.instance_id)
            .arg(idle)
            .arg(&id)
            .query_async(conn)
            .await?;
        let entries = as_entries(claimed);
        if deliveries < app.cfg.inbox.dead_letter_after {
            handle(app, cell, conn, inbox, entries, written).await?;
        } else {
            let fields = entries
                .into_iter()
                .next()
                .map(|(_, f)| f)
                .unwrap_or_default();
            retire(
                app,
                cell,
                conn,
                inbox,
                (&id, deliveries),
                Some(fields),
                written,
            )
            .await?;
        }
    }
    Ok(())
}

/// The ms an entry was added at: the first part of its id (`<ms>-<seq>`).
fn added_ms(id: &str) -> Option<u64> {
    id.split_once('-').and_then(|(ms, _)| ms.parse().ok())
}
