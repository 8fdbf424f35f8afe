//! The inbox consumer: messages that other instances' scripts produced for this instance's
//! connections arrive in `{tag}:inbox:<instance>` (XADDed atomically with the state change);
//! one consumer per cell, each on its own connection (in a cluster, to the cell's node).
//!
//! A dedicated Redis connection (never the shared pool) blocks in XREADGROUP; each entry is
//! written to its local socket, then XACKed and XDELed. A result logged in two parts names
//! its body's key (`tail_key`): the bodies of a batch are read in one pipeline first.
//!
//! On any Redis error the loop reconnects, re-creates the consumer group if Redis lost it,
//! and first reads this consumer's own pending entries (`XREADGROUP ... 0`, until none is
//! left): entries whose read reply was lost (a timeout, a dropped connection) are delivered
//! at the reconnect, not `claim_idle_ms` later when the session's writer has long given up
//! on them. Only then does it read new entries (`>`). Entries written to their socket whose
//! XACK failed are remembered (by entry id, the last [`WRITTEN_KEPT`], across reconnects) and
//! only acknowledged when read again: a node does not get the same `job_assign` twice.
//! Entries left pending by anything else (a crash mid-write) are claimed again after
//! `claim_idle_ms`; one delivered `dead_letter_after` times moves to the dead-letter stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisResult, Value};
use serde::Deserialize;

use crate::cells::Cell;
use crate::server::App;
use crate::store::Conn;

mod written;
pub use written::WRITTEN_KEPT;
use written::Written;

const GROUP: &str = "g";

/// The msgpack envelope `deliver()` in lua/includes/deliver.lua packs.
#[derive(Debug, Deserialize)]
struct Envelope {
    k: String,
    id: String,
    #[serde(default)]
    conn: String,
    msg: String,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    tp: Option<String>,
    #[serde(default)]
    job: Option<String>,
}

pub async fn run(app: Arc<App>, cell: Arc<Cell>) {
    let mut stop = app.shutdown_signal();
    let mut written = Written::default();
    loop {
        let result = tokio::select! {
            r = consume(&app, &cell, &mut written) => r,
            _ = stop.changed() => return,
        };
        if let Err(e) = result {
            tracing::warn!(cell = cell.name(), error = %e, "inbox consumer reconnecting");
            // The primary may have moved (sentinel failover): look before reconnecting.
            cell.store.connection_failed().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Why the consumer loop stopped: a Redis error or no connection.
type ConsumeError = Box<dyn std::error::Error + Send + Sync>;

async fn consume(app: &App, cell: &Cell, written: &mut Written) -> Result<(), ConsumeError> {
    let block = app.cfg.inbox.block_ms;
    let mut conn = cell
        .store
        .dedicated_connection(Duration::from_millis(block + app.cfg.redis.timeout_ms))
        .await?;
    let inbox = cell.store.keys.inbox(&app.instance_id);
    ensure_group(&mut conn, &inbox).await?;
    own_pending(app, cell, &mut conn, &inbox, written).await?;
    cell.mark_inbox_alive();
    let mut last_claim = Instant::now();
    loop {
        let reply: RedisResult<Value> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&app.instance_id)
            .arg("COUNT")
            .arg(256)
            .arg("BLOCK")
            .arg(block)
            .arg("STREAMS")
            .arg(&inbox)
            .arg(">")
            .query_async(&mut conn)
            .await;
        let reply = match reply {
            // Redis lost the group (restart, manual XGROUP DESTROY): create it again.
            Err(e) if e.code() == Some("NOGROUP") => {
                ensure_group(&mut conn, &inbox).await?;
                continue;
            }
            r => r?,
        };
        cell.mark_inbox_alive();
        let entries = parse_entries(reply);
        handle(app, cell, &mut conn, &inbox, entries, written).await?;
        if last_claim.elapsed() >= Duration::from_millis(app.cfg.inbox.claim_idle_ms) {
            last_claim = Instant::now();
            reclaim(app, cell, &mut conn, &inbox, written).await?;
        }
    }
}

/// Handle this consumer's own pending entries (read earlier, never acknowledged: a read
/// reply lost with its connection), oldest first, until none is left after the last one.
async fn own_pending(
    app: &App,
    cell: &Cell,
    conn: &mut Conn,
    inbox: &str,
    written: &mut Written,
) -> RedisResult<()> {
    let mut after = "0".to_string();
    loop {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&app.instance_id)
            .arg("COUNT")
            .arg(256)
            .arg("STREAMS")
            .arg(inbox)
            .arg(&after)
            .query_async(conn)
            .await?;
        let entries = parse_entries(reply);
        let Some((last, _)) = entries.last() else {
            return Ok(());
        };
        after = last.clone();
        tracing::info!(
            cell = cell.name(),
            entries = entries.len(),
            "inbox entries pending since a lost read delivered"
        );
        handle(app, cell, conn, inbox, entries, written).await?;
    }
}

/// Create the consumer group (and the stream) if Redis does not have it.
async fn ensure_group(conn: &mut Conn, inbox: &str) -> RedisResult<()> {
    let r: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(inbox)
        .arg(GROUP)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match r {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

/// `(id, fields)` of every entry in an XREADGROUP / XCLAIM / XRANGE reply.
type Entry = (String, HashMap<String, Vec<u8>>);

fn parse_entries(reply: Value) -> Vec<Entry> {
    fn entries_of(v: Value) -> Vec<Entry> {
        let Value::Array(items) = v else {
            return Vec::new();
        };
        items
            .into_iter()
            .filter_map(|e| {
                let Value::Array(mut parts) = e else {
                    return None;
                };
                if parts.len() != 2 {
                    return None;
                }
                let fields = parts.pop()?;
                let id: String = redis::from_redis_value(parts.pop()?).ok()?;
                // A pending entry deleted from the stream reads as nil: kept, to be acked.
                let fields: HashMap<String, Vec<u8>> = match fields {
                    Value::Nil => HashMap::new(),
                    f => redis::from_redis_value(f).ok()?,
                };
                Some((id, fields))
            })
            .collect()
    }
    match reply {
        // XREADGROUP: [[stream, [entries]]] (RESP2) or a map (RESP3)
        Value::Array(streams) => streams
            .into_iter()
            .flat_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => {
                    kv.pop().map(entries_of).unwrap_or_default()
                }
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(m) => m.into_iter().flat_map(|(_, v)| entries_of(v)).collect(),
        _ => Vec::new(),
    }
}

/// Write each entry to its socket (unless it was written already), then XACK + XDEL them.
async fn handle(
    app: &App,
    cell: &Cell,
    conn: &mut Conn,
    inbox: &str,
    entries: Vec<Entry>,
    written: &mut Written,
) -> RedisResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let tails = bodies(conn, &entries).await?;
    for (id, fields) in &entries {
        if fields.is_empty() || written.contains(id) {
            continue; // deleted from the stream, or written before its XACK failed
        }
        let env = fields
            .get("env")
            .and_then(|b| rmp_serde::from_slice::<Envelope>(b).ok());
        let Some(env) = env else {
            tracing::error!(entry = %id, "undecodable inbox entry dropped");
            continue;
        };
        let audio = fields.get("audio").map(|a| super::Audio::Raw(a));
        let to = super::Target {
            kind: &env.k,
            id: &env.id,
            conn: Some(env.conn.as_str()),
        };
        let trace = super::Trace {
            tp: env.tp.as_deref(),
            job: env.job.as_deref().filter(|j| !j.is_empty()),
        };
        let msg = match fields.get("tail_key") {
            None => env.msg,
            Some(k) => match tails.get(k.as_slice()).map(|b| std::str::from_utf8(b)) {
                Some(Ok(t)) => super::joined(env.msg, Some(t)),
                // Trimmed or expired (an entry older than the result retention), or not
                // text: the session can still resume what its log holds.
                _ => {
                    tracing::error!(entry = %id, "inbox entry whose body is gone dropped");
                    continue;
                }
            },
        };
        super::write_local(app, cell, &to, msg, audio, Some(env.seq), &trace);
        written.insert(id);
        app.metrics.inbox_messages.inc();
    }
    let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
    let acked = redis::pipe()
        .cmd("XACK")
        .arg(inbox)
        .arg(GROUP)
        .arg(&ids)
        .ignore()
        .cmd("XDEL")
        .arg(inbox)
        .arg(&ids)
        .ignore()
        .query_async::<()>(conn)
        .await;
    if acked.is_ok() {
        written.acked(&ids);
    }
    acked
}

/// The bodies the entries name (`tail_key`), read in one pipeline: key → bytes.
async fn bodies<'a>(
    conn: &mut Conn,
    entries: &'a [Entry],
) -> RedisResult<HashMap<&'a [u8], Vec<u8>>> {
    let keys: Vec<&[u8]> = entries
        .iter()
        .filter_map(|(_, f)| f.get("tail_key").map(Vec::as_slice))
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let mut p = redis::pipe();
    for k in &keys {
        p.cmd("GET").arg(*k);
    }
    let got: Vec<Option<Vec<u8>>> = p.query_async(conn).await?;
    Ok(keys
        .into_iter()
        .zip(got)
        .filter_map(|(k, b)| b.map(|b| (k, b)))
        .collect())
}

/// Entries read but never acknowledged (a crash mid-write, a bug): claim them again, or
/// move them to the dead-letter stream after `dead_letter_after` deliveries.
async fn reclaim(
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
    let dead_letters = cell.store.keys.dead_letters();
    for (id, _consumer, _idle, deliveries) in pending {
        let claimed: Value = redis::cmd("XCLAIM")
            .arg(inbox)
            .arg(GROUP)
            .arg(&app.instance_id)
            .arg(idle)
            .arg(&id)
            .query_async(conn)
            .await?;
        let entries = match claimed {
            Value::Array(_) => {
                parse_entries(Value::Array(vec![Value::Array(vec![Value::Nil, claimed])]))
            }
            _ => Vec::new(),
        };
        if deliveries >= app.cfg.inbox.dead_letter_after {
            for (_, fields) in &entries {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&dead_letters)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(app.cfg.inbox.dead_letter_max)
                    .arg("*");
                cmd.arg("from").arg(inbox).arg("entry").arg(&id);
                for (k, v) in fields {
                    cmd.arg(k).arg(v.as_slice());
                }
                cmd.query_async::<()>(conn).await?;
            }
            redis::pipe()
                .cmd("XACK")
                .arg(inbox)
                .arg(GROUP)
                .arg(&id)
                .ignore()
                .cmd("XDEL")
                .arg(inbox)
                .arg(&id)
                .ignore()
                .query_async::<()>(conn)
                .await?;
            app.metrics.dead_lettered.inc();
            tracing::error!(entry = %id, deliveries, "inbox entry moved to the dead-letter stream");
        } else {
            handle(app, cell, conn, inbox, entries, written).await?;
        }
    }
    Ok(())
}
