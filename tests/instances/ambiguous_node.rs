//! A `node_register` whose reply never arrives (Redis busy past `redis.timeout_ms`): the
//! registration commits after its call timed out, and must not leave a node that Redis
//! holds ready, in its pools and owned by a connection no socket is bound to.

use super::ambiguous::busy;
use super::*;

/// Audit finding: the failed call only removed the pending binding. Redis then held the node
/// ready and in its pools, owned by this instance: jobs went to it and reached no socket
/// until its liveness ran out (45 s by default), and its own reconnect was refused as a
/// takeover of a live id. Now a registration that may have committed is taken offline,
/// fenced by the connection's token, as an unconfirmed `session_open` is closed.
#[tokio::test]
async fn a_registration_whose_reply_was_lost_leaves_no_ghost_node() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.node.liveness_ms = Some(60_000)).await;
    let mut c = redis.client().await;
    let id = "node-GHOST001";
    let mut n = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mut f = fixture("node_register_first");
    f["node_id"] = json!(id);
    let free = busy(&redis, 1500).await;
    n.send(&f).await;
    let err = n.recv_type("error").await;
    assert_eq!(err["code"], "SCHEDULER_DEPENDENCY_DOWN", "{err}");
    tokio::time::sleep_until(free).await;
    eventually(T, "the unconfirmed registration is taken offline", || {
        let mut c = c.clone();
        async move { (node_hash(&mut c, id).await.get("state")? == "offline").then_some(()) }
    })
    .await;
    let pools: Vec<String> = c
        .smembers(format!("{PREFIX}node:{id}:pools"))
        .await
        .unwrap();
    assert!(pools.is_empty(), "still in {pools:?}");
    // The node registers again on the same socket and gets its id back at once.
    let ack = n.register(fixture("node_register_first"), Some(id)).await;
    assert_eq!(ack["node_id"], id, "{ack}");
    invariants::check(&mut c).await;
}
