//! A drain while Redis does not answer (its primary evicted, a failover under way): the
//! sockets are still closed with 1012 within the drain's delay and grace, whatever the number
//! of nodes, so clients move on and Kubernetes does not kill the pod before.

use super::*;

/// Audit finding: before the sockets close, every local node leaves its pools with one
/// `node_offline` call per node, in turn and without a deadline: with Redis stalled each
/// waited for its timeout (0.5 s here), so 30 nodes held the 1012 closes back ~15 s (or
/// until Redis came back), past any grace period. They now run 32 at a time, and no longer
/// than `instance.drain_grace_ms` (1 s here): the closes come after drain_delay_ms (0.3 s)
/// + that grace, with Redis still paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_with_redis_stalled_is_not_held_up_node_by_node() {
    let redis = RedisServer::start().await;
    let a = start_tweaked(&redis, |c| c.instance.drain_grace_ms = 1_000).await;
    let mut nodes = Vec::new();
    for _ in 0..30 {
        nodes.push(node_on(&a, None).await);
    }
    let mut p = redis.client().await;
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "10000", "ALL"])
        .query_async(&mut p)
        .await
        .expect("client pause");
    let at = std::time::Instant::now();
    let stopping = tokio::spawn(a.shutdown());
    for (n, _) in &mut nodes {
        assert_eq!(n.expect_close().await, Some(1012));
    }
    let closed = at.elapsed();
    assert!(
        closed < Duration::from_secs(6),
        "the sockets were closed {closed:?} after SIGTERM, Redis paused for 10 s"
    );
    stopping.await.expect("shutdown");
    // (CLIENT UNPAUSE would wait behind the pause too: the pause runs out instead, then
    // whatever the drain's stalled calls did is checked)
    tokio::time::sleep_until((at + Duration::from_millis(10_200)).into()).await;
    crate::common::invariants::check(&mut redis.client().await).await;
}
