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
    let (status, body) = get_json(&http_url(&a, "/readyz")).await;
    assert_eq!(status, 503, "not ready without its inbox: {body}");
    assert_eq!(body["reason"], "inbox consumer not running", "{body}");

    // The listing repaired: the next beat lists the instance and creates its stream, the
    // consumer its group, and the instance becomes ready.
    let _: () = c.del(format!("{PREFIX}instances")).await.unwrap();
    ready(&a).await;
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&inbox)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(groups.len(), 1, "the consumer group on the beat's stream");
    invariants::check(&mut c).await;
}
