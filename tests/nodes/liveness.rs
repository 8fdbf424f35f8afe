//! Liveness: a silent node is taken offline after `node.liveness_ms`, a dropped socket after
//! the disconnect grace, an orderly close at once; every key it leaves is bounded.

use std::collections::BTreeSet;
use std::time::Duration;

use redis::AsyncCommands;

use super::pools_of;
use crate::common::invariants::{self, PREFIX};
use crate::common::*;

#[tokio::test]
async fn a_silent_node_leaves_every_pool_after_liveness_and_every_key_is_bounded() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.node.liveness_ms = Some(900)).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let started = std::time::Instant::now();
    let id = node.register_id(fixture("node_register_first"), None).await;
    // liveness 900 ms + sweep 50 ms: the node is offline and its socket closed.
    assert_eq!(node.expect_close().await, Some(4002));
    let took = started.elapsed();
    assert!(took < Duration::from_millis(3000), "{took:?}");
    let h = node_hash(&mut c, &id).await;
    assert_eq!(h["state"], "offline");
    assert_eq!(h["offline_reason"], "liveness_expired");
    // Not before its liveness, on the clock the scripts use.
    let at = |f: &str| {
        h[f].parse::<u64>()
            .unwrap_or_else(|_| panic!("{f} in {h:?}"))
    };
    assert!(
        at("offline_at") >= at("registered_at") + 900,
        "offline {} ms after registering",
        at("offline_at") - at("registered_at")
    );
    assert!(pools_of(&mut c, &id).await.is_empty());
    let index: BTreeSet<String> = c.smembers(format!("{PREFIX}pools")).await.unwrap();
    assert!(index.is_empty());
    let ttl: i64 = c.pttl(format!("{PREFIX}node:{id}")).await.unwrap();
    assert!(
        ttl > 0 && ttl <= 5_000,
        "offline record expires after retention: {ttl}"
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_dropped_socket_keeps_the_node_for_the_grace_then_takes_it_offline() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut a = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = a.register_id(fixture("node_register_first"), None).await;
    a.drop_connection();
    eventually(Duration::from_secs(2), "disconnected", || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            (node_hash(&mut c, &id)
                .await
                .get("state")
                .map(String::as_str)
                == Some("disconnected"))
            .then_some(())
        }
    })
    .await;
    assert!(
        pools_of(&mut c, &id).await.is_empty(),
        "no new work while disconnected"
    );
    invariants::check(&mut c).await;
    eventually(Duration::from_secs(3), "offline after grace", || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            (node_hash(&mut c, &id)
                .await
                .get("state")
                .map(String::as_str)
                == Some("offline"))
            .then_some(())
        }
    })
    .await;
    // An orderly close goes offline at once.
    let mut b = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id2 = b.register_id(fixture("node_register_first"), None).await;
    b.close().await;
    // (at once: well inside the grace it would otherwise wait, and `closed` below tells the
    // two apart; the window only allows for a loaded machine)
    eventually(Duration::from_secs(2), "offline at once", || {
        let mut c = c.clone();
        let id2 = id2.clone();
        async move {
            (node_hash(&mut c, &id2)
                .await
                .get("offline_reason")
                .map(String::as_str)
                == Some("closed"))
            .then_some(())
        }
    })
    .await;
    invariants::check(&mut c).await;
}

/// Audit finding: one sweep call took up to `sweep.batch` (200) expired nodes offline, each
/// out of every pool (up to 4,160) with its jobs: after an outage longer than the liveness
/// every node is due at once, and Redis answers nobody while such a call runs. A call now
/// stops once the pools it left and jobs it handled reach 4,096; the nodes left are due at
/// the next call (`more`), which the sweeper makes at once.
#[tokio::test]
async fn one_sweep_call_takes_nodes_offline_within_a_budget_of_pools() {
    let redis = RedisServer::start().await;
    // (the instance's own sweeper runs once at its start, then not within the test: the
    // nodes' liveness runs out after that first sweep)
    let inst = start_tweaked(&redis, |c| c.sweep.interval_ms = 3_600_000).await;
    let mut c = redis.client().await;
    let expires = redis_now(&mut c).await + 2_000;
    // Three ready nodes of a vanished instance, each in 3,000 pools, their liveness running out.
    for i in 0..3 {
        let id = format!("node-BUDGET0{i}");
        let nk = format!("{PREFIX}node:{id}");
        let mut p = redis::pipe();
        p.hset_multiple(
            &nk,
            &[
                ("id", id.as_str()),
                ("state", "ready"),
                ("owner", "i-gone"),
                ("conn", "i-gone/1"),
            ],
        )
        .ignore();
        for j in 0..3_000 {
            let pool = format!("pub:l{j}:en");
            p.sadd(format!("{nk}:pools"), &pool).ignore();
            p.sadd(format!("{PREFIX}pool:{pool}"), &id).ignore();
            p.sadd(format!("{PREFIX}pools"), &pool).ignore();
        }
        p.zadd(format!("{PREFIX}nodes:live"), &id, expires).ignore();
        let () = p.query_async(&mut c).await.expect("seed");
    }
    while redis_now(&mut c).await <= expires {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = &inst.app.cells.default_cell().store;
    let first = store.sweep().await.expect("sweep").reply;
    assert_eq!(first.offline.len(), 2, "{first:?}");
    assert!(first.more, "{first:?}");
    let live: u64 = c.zcard(format!("{PREFIX}nodes:live")).await.unwrap();
    assert_eq!(live, 1, "the third node waits for the next call");
    let second = store.sweep().await.expect("sweep").reply;
    assert_eq!(second.offline.len(), 1, "{second:?}");
    assert!(!second.more, "{second:?}");
    let pools: u64 = c.scard(format!("{PREFIX}pools")).await.unwrap();
    assert_eq!(pools, 0, "every pool left");
    invariants::check(&mut c).await;
}
