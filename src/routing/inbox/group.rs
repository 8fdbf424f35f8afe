//! The inbox consumer group, created on the stream the presence beat creates (never by
//! the consumer itself: see [`ensure_group`]).

use std::time::{Duration, Instant};

use redis::{RedisResult, Value};

use super::GROUP;
use crate::cells::Cell;
use crate::server::App;
use crate::store::Conn;

/// How often the consumer looks for its inbox stream while it is missing (see
/// [`ensure_group`]).
const STREAM_POLL: Duration = Duration::from_millis(100);

/// Create the consumer group if Redis does not have it. The stream itself is created only
/// where this instance is listed: by its presence beat (instance_beat.lua, with the
/// listing) or by a script binding a connection to it (deliver.lua `present()`, the same
/// writes, e.g. after Redis lost its data). A stream the consumer created before the first
/// beat (`MKSTREAM`) would belong to nobody if the instance died then: unlisted, so never
/// taken over, and without a TTL. So while the stream is missing, the consumer tries again
/// after the next successful beat, or every [`STREAM_POLL`] (for `present()`), for at most
/// two beat intervals; then the error goes to the reconnect loop.
pub(super) async fn ensure_group(
    app: &App,
    cell: &Cell,
    conn: &mut Conn,
    inbox: &str,
) -> RedisResult<()> {
    let mut beats = cell.beats();
    let wait = Duration::from_millis(app.cfg.instance.beat_interval_ms.saturating_mul(2));
    let give_up = Instant::now() + wait;
    loop {
        beats.borrow_and_update();
        // From the stream's start, not `$`: a stream this call finds without the group (a
        // group destroyed by hand, or a stream evicted or deleted and then made again by a
        // delivery's XADD) holds only entries for this instance that nobody read; the
        // written-entry memory keeps one written already from being written twice.
        let r: RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(inbox)
            .arg(GROUP)
            .arg("0")
            .query_async(conn)
            .await;
        match r {
            Err(e) if e.to_string().contains("requires the key to exist") => {
                if Instant::now() >= give_up {
                    return Err(e);
                }
                // (a beat after borrow_and_update above created it: changed() is ready)
                let _ = tokio::time::timeout(STREAM_POLL, beats.changed()).await;
                continue;
            }
            // Redis full (maxmemory, noeviction) refuses the command even when the group is
            // there: look instead, so the consumer still drains its inbox, which needs no
            // memory.
            Err(e) if e.to_string().contains("OOM") => {
                let groups: RedisResult<Vec<std::collections::HashMap<String, Value>>> =
                    redis::cmd("XINFO")
                        .arg("GROUPS")
                        .arg(inbox)
                        .query_async(conn)
                        .await;
                let name = Value::BulkString(GROUP.as_bytes().to_vec());
                // (no stream, or no answer: the OOM refusal is the error to report)
                return if groups.is_ok_and(|g| g.iter().any(|g| g.get("name") == Some(&name))) {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            Err(e) if e.code() != Some("BUSYGROUP") => return Err(e),
            _ => return Ok(()),
        }
    }
}
