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
//! `claim_idle_ms`; one delivered `dead_letter_after` times moves to the dead-letter stream,
//! and so does an own pending entry at a reconnect, and a malformed entry at once (`dead`):
//! an entry whose handling fails every time does not come first at every reconnect for ever.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisResult, Value};
use serde::Deserialize;

use crate::cells::Cell;
use crate::server::App;
use crate::store::Conn;

mod dead;
mod group;
mod written;
use group::ensure_group;
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

/// What the consumer remembers across a restart of its loop (`crate::supervise`): the
/// entries it wrote to their sockets but could not acknowledge.
#[derive(Default)]
pub struct Memory(tokio::sync::Mutex<Written>);

pub async fn run(app: Arc<App>, cell: Arc<Cell>, memory: Arc<Memory>) {
    let mut stop = app.shutdown_signal();
    // Held for the loop's life; a panic's unwinding releases it, with what it holds.
    let mut written = memory.0.lock().await;
    loop {
        let result = tokio::select! {
            r = consume(&app, &cell, &mut written) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Err(e) = result {
            tracing::warn!(cell = cell.name(), error = %e, "inbox consumer reconnecting");
            // The primary may have moved (sentinel failover): look before reconnecting.
            cell.store.connection_failed().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.wait_for(|s| *s) => return,
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
    // The node this connection reads (the primary the sentinels name once it is made): the
    // consumer moves with the others at its next read once they name another. A switch-over
    // leaves the old primary writable for seconds, and the other instances, following it,
    // write this inbox on the new one. (Read after connecting: before, it may still say
    // "unresolved", and the first read would reconnect for nothing.)
    let node = cell.store.redis_node();
    let inbox = cell.store.keys.inbox(&app.instance_id);
    ensure_group(app, cell, &mut conn, &inbox).await?;
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
                ensure_group(app, cell, &mut conn, &inbox).await?;
                continue;
            }
            r => r?,
        };
        cell.mark_inbox_alive();
        let entries = parse_entries(reply);
        handle(app, cell, &mut conn, &inbox, entries, written).await?;
        if last_claim.elapsed() >= Duration::from_millis(app.cfg.inbox.claim_idle_ms) {
            last_claim = Instant::now();
            dead::reclaim(app, cell, &mut conn, &inbox, written).await?;
        }
        let now = cell.store.redis_node();
        if now != node {
            return Err(format!("the primary moved from {node} to {now}").into());
        }
    }
}

/// Handle this consumer's own pending entries (read earlier, never acknowledged: a read
/// reply lost with its connection), oldest first, until none is left after the last one.
/// Those delivered `dead_letter_after` times already, and added over `claim_idle_ms` ago,
/// are dead-lettered instead of read again: an entry whose handling fails every time would
/// otherwise come first at every reconnect, for ever, and hold up every entry after it.
async fn own_pending(
    app: &App,
    cell: &Cell,
    conn: &mut Conn,
    inbox: &str,
    written: &mut Written,
) -> RedisResult<()> {
    let mut after = "0".to_string();
    loop {
        dead::drop_worn(app, cell, conn, inbox, &after, written).await?;
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

/// An entry's fields (names read lossily as UTF-8: an odd name makes no entry unreadable).
type Fields = HashMap<String, Vec<u8>>;

/// `(id, fields)` of every entry in an XREADGROUP / XCLAIM / XRANGE reply.
type Entry = (String, Fields);

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
                let fields: Fields = match fields {
                    Value::Nil => HashMap::new(),
                    f => redis::from_redis_value::<HashMap<Vec<u8>, Vec<u8>>>(f)
                        .ok()?
                        .into_iter()
                        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
                        .collect(),
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
/// A malformed entry is dead-lettered at once (see [`message`]); the others are written.
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
        let (env, msg) = match message(fields, &tails) {
            Ok(Some(m)) => m,
            // Trimmed or expired (an entry older than the result retention): the session
            // can still resume what its log holds.
            Ok(None) => {
                tracing::error!(entry = %id, "inbox entry whose body is gone dropped");
                continue;
            }
            Err(reason) => {
                dead::dead_letter(app, cell, conn, inbox, (id, fields), &reason).await?;
                continue;
            }
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

/// The envelope of an entry and the message text to write (its body appended): `Ok(None)`
/// when its body is gone, `Err(reason)` when it is malformed: its `env` does not decode or
/// names no known kind, or its body key holds no text. Reading it again would not help.
fn message(fields: &Fields, tails: &Tails) -> Result<Option<(Envelope, String)>, String> {
    let mut env = fields
        .get("env")
        .and_then(|b| rmp_serde::from_slice::<Envelope>(b).ok())
        .ok_or("env missing or not a decodable envelope")?;
    if crate::gateway::Kind::parse(&env.k).is_none() {
        return Err(format!("unknown kind {:?}", env.k));
    }
    let msg = std::mem::take(&mut env.msg);
    let msg = match fields.get("tail_key").map(|k| tails.get(k.as_slice())) {
        None => msg,
        // The log outlived the body (evicted, or held past its TTL): the index still gets a
        // terminal message, so its number is no gap the connection waits on.
        Some(None) => match crate::protocol::index_of(&msg)
            .map(|i| crate::protocol::expired_result(&env.id, i))
        {
            Some(m) => m,
            None => return Ok(None),
        },
        Some(Some(Body::Text(t))) => match std::str::from_utf8(t) {
            Ok(t) => super::joined(msg, Some(t)),
            Err(_) => return Err("body is not UTF-8 text".into()),
        },
        Some(Some(Body::Bad(why))) => return Err(why.clone()),
    };
    Ok(Some((env, msg)))
}

/// A body an entry names: its bytes, or why its key cannot be read as a body.
enum Body {
    Text(Vec<u8>),
    Bad(String),
}

/// Bodies by key (a key that does not exist is absent).
type Tails<'a> = HashMap<&'a [u8], Body>;

/// The bodies the entries name (`tail_key`), read in one pipeline. A key's own error (a
/// key of another type, one the ACL user may not read) is that entry's; any other error
/// (Redis busy, loading, a lost connection) fails the batch, to be read again.
async fn bodies<'a>(conn: &mut Conn, entries: &'a [Entry]) -> RedisResult<Tails<'a>> {
    let keys: Vec<&[u8]> = entries
        .iter()
        .filter_map(|(_, f)| f.get("tail_key").map(Vec::as_slice))
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let mut p = redis::pipe();
    p.ignore_errors();
    for k in &keys {
        p.cmd("GET").arg(*k);
    }
    let got: Vec<Value> = p.query_async(conn).await?;
    let mut tails = HashMap::new();
    for (k, v) in keys.into_iter().zip(got) {
        let body = match v {
            Value::Nil => continue,
            Value::BulkString(b) => Body::Text(b),
            Value::ServerError(e) if matches!(e.code(), "WRONGTYPE" | "NOPERM") => Body::Bad(
                format!("body key: {} {}", e.code(), e.details().unwrap_or("")),
            ),
            Value::ServerError(e) => return Err(e.into()),
            other => Body::Bad(format!("body key: unexpected reply {other:?}")),
        };
        tails.insert(k, body);
    }
    Ok(tails)
}
