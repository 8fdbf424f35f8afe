//! Inbox reads whose reply was lost (a timeout, a dropped connection): the entries sit in
//! this consumer's pending list, and are delivered when it reconnects, not
//! `inbox.claim_idle_ms` later. An entry that cannot be handled (malformed, or delivered
//! `inbox.dead_letter_after` times) is dead-lettered there, and the entries after it arrive.

use super::*;

/// An instance whose inbox entries are claimed again only after 30 s (what these tests
/// watch is the reconnect's read of its own pending entries), with a session on it.
struct Scene {
    /// Kept alive by binding it (a destructuring `..` would drop it at once).
    _redis: RedisServer,
    a: Running,
    c: redis::aio::MultiplexedConnection,
    s: WsClient,
    sid: String,
    /// The instance id (the inbox consumer's name) and its inbox key.
    id: String,
    inbox: String,
    /// The session's connection token.
    conn: String,
}

async fn scene(tweak: impl FnOnce(&mut switchyard::config::Config)) -> Scene {
    let redis = RedisServer::start().await;
    let a = start_tweaked(&redis, |c| {
        c.inbox.claim_idle_ms = 30_000;
        tweak(c);
    })
    .await;
    let mut c = redis.client().await;
    let (s, sid) = session_on(&a).await;
    let id = a.app.instance_id.clone();
    let inbox = format!("{PREFIX}inbox:{id}");
    let conn = session_field(&mut c, &sid, "conn").await;
    Scene {
        _redis: redis,
        a,
        c,
        s,
        sid,
        id,
        inbox,
        conn,
    }
}

impl Scene {
    /// An inbox `env` for the session: a message of type `kind`.
    fn probe(&self, kind: &str) -> Vec<u8> {
        env_of(&self.sid, &self.conn, kind)
    }

    /// [`pending_entries`] in this scene's inbox, under its consumer's name.
    async fn pend(&mut self, entries: &[Vec<(&str, Vec<u8>)>], how: (usize, u64)) -> Vec<String> {
        pending_entries(&mut self.c, &self.inbox, &self.id, entries, how).await
    }

    /// Reconnect the consumer (its connection killed): the types the session then gets.
    async fn reconnect(&mut self) -> Vec<String> {
        kill_consumer(&mut self.c).await;
        types_within(&mut self.s, Duration::from_millis(1500)).await
    }

    /// Nothing left pending; the dead-letter stream holds `dead` (entry ids), and
    /// `counted` entries were counted as dead-lettered; the invariants hold.
    async fn settled(&mut self, dead: &[String], counted: f64) {
        assert_eq!(
            pending(&mut self.c, &self.inbox).await,
            0,
            "all acknowledged"
        );
        assert_eq!(dead_letters(&mut self.c).await, dead, "dead-lettered");
        assert_eq!(
            metric(&self.a, "switchyard_dead_lettered_total").await,
            counted
        );
        invariants::check(&mut self.c).await;
    }
}

/// The id of the client blocked in the inbox consumer's XREADGROUP.
async fn consumer_client(c: &mut redis::aio::MultiplexedConnection) -> String {
    eventually(T, "the inbox consumer blocked in XREADGROUP", || async {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut c.clone())
            .await
            .unwrap();
        list.lines()
            .find(|l| l.contains("cmd=xreadgroup") && l.contains(" flags=b "))
            .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(str::to_string)
    })
    .await
}

/// How many entries of `inbox` are pending (read, not acknowledged).
async fn pending(c: &mut redis::aio::MultiplexedConnection, inbox: &str) -> i64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(inbox)
        .arg("g")
        .query_async(c)
        .await
        .unwrap();
    match v {
        redis::Value::Array(v) => redis::from_redis_value_ref(&v[0]).unwrap(),
        other => panic!("XPENDING: {other:?}"),
    }
}

/// Review finding: an inbox entry read by the consumer whose XREADGROUP reply was lost
/// stayed in its pending list until `inbox.claim_idle_ms` (reclaim), long after the
/// session's writer gave up on it. Now the consumer reads its own pending entries first on
/// every (re)connect: the entry arrives right after the reconnect, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_entry_whose_read_reply_was_lost_comes_at_the_reconnect_once() {
    // (one redis-server kept busy or its client killed: the topologies have several)
    if single_only("an_inbox_entry_whose_read_reply_was_lost_comes_at_the_reconnect_once") {
        return;
    }
    let redis = RedisServer::start().await;
    let a = start_tweaked(&redis, |c| c.inbox.claim_idle_ms = 30_000).await;
    let mut c = redis.client().await;
    let (mut s, sid) = session_on(&a).await;
    let id = a.app.instance_id.clone();
    let inbox = format!("{PREFIX}inbox:{id}");
    let conn = session_field(&mut c, &sid, "conn").await;
    let probe = json!({"type": "inbox_probe", "session_id": sid}).to_string();
    let env = session_envelope(&sid, &conn, &probe, 0);
    // The consumer past its start-up read of its own pending entries (which would deliver
    // the entry below at once), blocked on new ones.
    consumer_client(&mut c).await;
    // As if the consumer had read the entry and its reply were lost: the entry is added and
    // read by the instance's consumer name in one transaction (the blocked consumer, served
    // after EXEC, finds nothing new).
    let _: redis::Value = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(&inbox)
        .arg("*")
        .arg("env")
        .arg(env)
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg(&id)
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&inbox)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(pending(&mut c, &inbox).await, 1);
    s.expect_silence(Duration::from_millis(300)).await;
    let client = consumer_client(&mut c).await;
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&client)
        .query_async(&mut c)
        .await
        .unwrap();
    let probe = next_of(&mut s, "inbox_probe", Duration::from_millis(1500)).await;
    assert!(
        probe.is_some(),
        "the pending entry was not delivered within 1.5 s of the reconnect"
    );
    s.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(pending(&mut c, &inbox).await, 0, "acknowledged");
    invariants::check(&mut c).await;
}

/// The `env` field of an inbox entry for session `sid` (connection `conn`): a message of
/// type `kind`, as `deliver()` packs it.
fn env_of(sid: &str, conn: &str, kind: &str) -> Vec<u8> {
    let msg = json!({"type": kind, "session_id": sid}).to_string();
    session_envelope(sid, conn, &msg, 0)
}

/// Add `entries` (each a list of fields) to `inbox` and read them as consumer `id` in one
/// transaction, as if the consumer had read them and lost the reply; then read them
/// `rereads` times more from the consumer's history (each read counts as a delivery, as a
/// reconnect's does). `age_ms` > 0: the entries were added that long ago (their ids say so;
/// the stream must hold no newer entry). Returns the entry ids.
async fn pending_entries(
    c: &mut redis::aio::MultiplexedConnection,
    inbox: &str,
    id: &str,
    entries: &[Vec<(&str, Vec<u8>)>],
    (rereads, age_ms): (usize, u64),
) -> Vec<String> {
    // The consumer past its start-up read of its own pending entries (which would take
    // these, read under its name), blocked on new ones.
    consumer_client(c).await;
    let added = redis_now(c).await - age_ms;
    let mut p = redis::pipe();
    p.atomic();
    for (i, fields) in entries.iter().enumerate() {
        let entry = if age_ms > 0 {
            format!("{added}-{i}")
        } else {
            "*".to_string()
        };
        p.cmd("XADD").arg(inbox).arg(entry);
        for (k, v) in fields {
            p.arg(*k).arg(v.as_slice());
        }
    }
    p.cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg(id)
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg(inbox)
        .arg(">")
        .ignore();
    let ids: Vec<String> = p.query_async(c).await.unwrap();
    for _ in 0..rereads {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg(id)
            .arg("STREAMS")
            .arg(inbox)
            .arg("0")
            .query_async(c)
            .await
            .unwrap();
    }
    assert!(pending(c, inbox).await >= entries.len() as i64);
    ids
}

/// Kill the inbox consumer's connection: it reconnects and reads its pending entries.
async fn kill_consumer(c: &mut redis::aio::MultiplexedConnection) {
    let client = consumer_client(c).await;
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&client)
        .query_async(c)
        .await
        .unwrap();
}

/// The `entry` field of every entry in the dead-letter stream.
async fn dead_letters(c: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let v: Vec<(String, std::collections::HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(format!("{PREFIX}deadletter"))
        .arg("-")
        .arg("+")
        .query_async(c)
        .await
        .unwrap();
    v.into_iter()
        .map(|(_, f)| String::from_utf8_lossy(&f["entry"]).into_owned())
        .collect()
}

/// The types of the messages `s` gets within `d`.
async fn types_within(s: &mut WsClient, d: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + d;
    let mut out = Vec::new();
    while let Ok(v) = s
        .next(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        out.push(v["type"].as_str().unwrap_or_default().to_string());
    }
    out
}

/// Open defect of the last session: an inbox entry that cannot be handled was read again
/// first at every reconnect, for ever. One whose `tail_key` names a key of the wrong type
/// failed the batch's body read (WRONGTYPE) every time: the consumer reconnected in a loop
/// and delivered nothing more; one whose `env` does not decode was dropped without a
/// dead-letter copy or count. Both are malformed: dead-lettered at once (copied to
/// `deadletter`, acknowledged, counted), and the entry after them is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pending_inbox_entries_are_dead_lettered_and_the_next_arrives() {
    if single_only("malformed_pending_inbox_entries_are_dead_lettered_and_the_next_arrives") {
        return;
    }
    let mut sc = scene(|_| {}).await;
    // A key of the wrong type for a body (a hash): its GET fails with WRONGTYPE.
    let not_a_body = format!("{PREFIX}session:{}:body:7", sc.sid);
    let _: () = sc.c.hset(&not_a_body, "x", "y").await.unwrap();
    let entries = [
        vec![("env", b"\xc1 not msgpack".to_vec())],
        vec![
            ("env", sc.probe("poison_probe")),
            ("tail_key", not_a_body.clone().into_bytes()),
        ],
        vec![("env", sc.probe("inbox_probe"))],
    ];
    let ids = sc.pend(&entries, (0, 0)).await;
    sc.s.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(
        sc.reconnect().await,
        ["inbox_probe"],
        "the entry after the malformed ones arrives, they do not"
    );
    let _: () = sc.c.del(&not_a_body).await.unwrap();
    sc.settled(&ids[..2], 2.0).await;
}

/// Review finding: with Redis full (maxmemory, noeviction) the dead-letter copy (XADD) was
/// refused and the transaction with it, so a malformed entry was read first at every
/// reconnect and held up every entry after it. Acknowledging needs no memory: the entry is
/// dropped (logged, counted) without its copy, and the next one arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_entry_does_not_hold_up_the_inbox_when_redis_is_full() {
    if single_only("a_malformed_entry_does_not_hold_up_the_inbox_when_redis_is_full") {
        return;
    }
    let mut sc = scene(|_| {}).await;
    let entries = [
        vec![("env", b"\xc1 not msgpack".to_vec())],
        vec![("env", sc.probe("inbox_probe"))],
    ];
    sc.pend(&entries, (0, 0)).await;
    sc.s.expect_silence(Duration::from_millis(300)).await;
    let maxmemory = async |c: &mut redis::aio::MultiplexedConnection, bytes: u64| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(bytes)
            .query_async(c)
            .await
            .unwrap();
    };
    maxmemory(&mut sc.c, 1).await;
    let got = sc.reconnect().await;
    maxmemory(&mut sc.c, 0).await;
    assert_eq!(
        got,
        ["inbox_probe"],
        "the entry after the malformed one arrives"
    );
    // (no room for a copy: counted, not copied)
    sc.settled(&[], 1.0).await;
}

/// An entry whose handling failed `inbox.dead_letter_after` times (each failure a reconnect
/// that reads it again) and older than `claim_idle_ms` is not handled once more at the next
/// reconnect: it is dead-lettered, and the entries after it are delivered. A recent one read
/// as often is still handled: a delivery is counted whatever failed (review finding: a burst
/// of reconnects, a Redis stall, dead-lettered healthy entries, terminal messages among them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_inbox_entry_read_dead_letter_after_times_is_dead_lettered() {
    if single_only("a_pending_inbox_entry_read_dead_letter_after_times_is_dead_lettered") {
        return;
    }
    let mut sc = scene(|c| c.inbox.dead_letter_after = 3).await;
    // Both read once (the lost read) and twice more: 3 deliveries each.
    let entries = [
        vec![("env", sc.probe("worn_probe"))],
        vec![("env", sc.probe("worn_probe"))],
    ];
    let worn = sc.pend(&entries, (2, 60_000)).await;
    // One read as often but recent, and one read once: both are handled.
    let recent = [vec![("env", sc.probe("recent_probe"))]];
    sc.pend(&recent, (2, 0)).await;
    let fresh = [vec![("env", sc.probe("inbox_probe"))]];
    sc.pend(&fresh, (0, 0)).await;
    sc.s.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(
        sc.reconnect().await,
        ["recent_probe", "inbox_probe"],
        "the old worn entries are not handled again, the recent one is"
    );
    sc.settled(&worn, 2.0).await;
}
