//! Who creates an instance's inbox stream: its presence beat, with its listing in
//! `instances`. The inbox consumer never creates it (no `MKSTREAM`): an instance that dies
//! before it is listed leaves no stream that nobody would take over (no TTL, for ever).

use super::*;

#[tokio::test]
async fn an_instance_that_is_never_listed_leaves_no_inbox_stream() {
    let redis = RedisServer::start().await;
    let mut c = redis.client().await;
    // The listing is not a sorted set: every beat fails at its ZADD (before the stream).
    let _: () = c.set(format!("{PREFIX}instances"), "x").await.unwrap();
    let a = start_instance(&redis).await;
    let inbox = format!("{PREFIX}inbox:{}", a.app.instance_id);
    // Ten beat intervals: the consumer has tried (and waited for a beat) several times.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let exists: bool = c.exists(&inbox).await.unwrap();
    assert!(
        !exists,
        "{inbox} created while the instance was never listed"
    );
    // Main is degraded; with it alone the instance is not ready (the cluster topology runs
    // idle cells beside main, and the instance is ready for them).
    let (status, body) = get_json(&http_url(&a, "/readyz")).await;
    let alone = a.app.cells.len() == 1;
    assert_eq!(status, if alone { 503 } else { 200 }, "{body}");
    let reason = "cell main: inbox consumer not running";
    let main = serde_json::json!([{"cell": "main", "reason": reason}]);
    assert_eq!(body["degraded"], main, "{body}");
    if alone {
        assert_eq!(body["reason"], reason, "{body}");
    }

    // The listing repaired: the next beat lists the instance and creates its stream, the
    // consumer its group, and the instance becomes ready, with nothing degraded.
    let _: () = c.del(format!("{PREFIX}instances")).await.unwrap();
    let url = http_url(&a, "/readyz");
    eventually(
        Duration::from_secs(5),
        "ready, nothing degraded",
        || async {
            let (status, body) = get_json(&url).await;
            (status == 200 && body["degraded"] == serde_json::json!([])).then_some(())
        },
    )
    .await;
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&inbox)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(groups.len(), 1, "the consumer group on the beat's stream");
    invariants::check(&mut c).await;
}

/// A stream found without the group (here deleted, then made again by a delivery's XADD,
/// as eviction and a delivery could; or a group destroyed by hand) holds entries for this
/// instance that nobody read: the consumer creates its group from the stream's start, so
/// they reach their connections. From `$` they were skipped: lost.
#[tokio::test]
async fn entries_in_a_stream_that_lost_its_group_are_delivered() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut s, sid) = session_on(&a).await;
    let conn = session_field(&mut c, &sid, "conn").await;
    let inbox = format!("{PREFIX}inbox:{}", a.app.instance_id);
    let probe = json!({"type": "probe", "session_id": sid}).to_string();
    let env = session_envelope(&sid, &conn, &probe, 0);
    let () = redis::pipe()
        .atomic()
        .del(&inbox)
        .ignore()
        .cmd("XADD")
        .arg(&inbox)
        .arg("*")
        .arg("env")
        .arg(env)
        .ignore()
        .query_async(&mut c)
        .await
        .unwrap();
    let got = next_of(&mut s, "probe", Duration::from_secs(3)).await;
    assert!(
        got.is_some(),
        "the entry in the stream without its group was skipped"
    );
    eventually(T, "the entry acknowledged and deleted", || {
        let (mut c, inbox) = (c.clone(), inbox.clone());
        async move {
            let len: u64 = redis::cmd("XLEN")
                .arg(&inbox)
                .query_async(&mut c)
                .await
                .ok()?;
            (len == 0).then_some(())
        }
    })
    .await;
    invariants::check(&mut c).await;
}
