//! A drain while Redis does not answer (its primary evicted, a failover under way): the
//! instance still ends within its drain grace and the time its other steps are bounded by,
//! whatever the number of nodes, so Kubernetes does not kill it before the 1012 closes.

use super::*;

/// Audit finding: before the sockets close, every local node leaves its pools with one
/// `node_offline` call per node, in turn and without a deadline: with Redis stalled each
/// waited for its timeout (0.5 s here): 30 nodes took 15 s, past any grace period. They
/// now run 32 at a time, and no longer than `instance.drain_grace_ms`.
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
        .arg(&["PAUSE", "8000", "ALL"])
        .query_async(&mut p)
        .await
        .expect("client pause");
    let at = std::time::Instant::now();
    a.shutdown().await;
    let took = at.elapsed();
    for (n, _) in &mut nodes {
        assert_eq!(n.expect_close().await, Some(1012));
    }
    assert!(took < Duration::from_secs(8), "the drain took {took:?}");
}
