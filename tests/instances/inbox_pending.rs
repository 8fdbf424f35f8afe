//! Inbox reads whose reply was lost (a timeout, a dropped connection): the entries sit in
//! this consumer's pending list, and are delivered when it reconnects, not
//! `inbox.claim_idle_ms` later.

use super::*;

/// The id of the client blocked in the inbox consumer's XREADGROUP.
async fn consumer_client(c: &mut redis::aio::MultiplexedConnection) -> String {
    eventually(T, "the inbox consumer blocked in XREADGROUP", || async {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut c.clone())
            .await
            .unwrap();
        list.lines()
            .find(|l| l.contains("cmd=xreadgroup"))
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
    let env = json!({
        "k": "session",
        "id": sid,
        "conn": session_field(&mut c, &sid, "conn").await,
        "msg": json!({"type": "inbox_probe", "session_id": sid}).to_string(),
        "seq": 0,
    });
    let env = rmp_serde::to_vec_named(&env).unwrap();
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
