//! Pool membership: capability changes move a node between pools (and out of all of them),
//! tenant and private nodes, and pools seen by a later instance and rebuilt after FLUSHALL.

use std::collections::BTreeSet;
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::json;

use super::{ZH_EN_POOLS, pool_members, pools_of, set};
use crate::common::invariants::{self, PREFIX};
use crate::common::*;

#[tokio::test]
async fn capability_change_moves_the_node_and_empty_languages_leave_every_pool() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;

    node.heartbeat(&id, Some(&["ja", "en"])).await;
    let want = set(&[
        "pub:ja:ja",
        "pub:ja:en",
        "pub:en:ja",
        "pub:en:en",
        "pub:auto:ja",
        "pub:auto:en",
    ]);
    eventually(Duration::from_secs(3), "pools follow ja/en", || {
        let mut c = c.clone();
        let (id, want) = (id.clone(), want.clone());
        async move { (pools_of(&mut c, &id).await == want).then_some(()) }
    })
    .await;
    assert!(
        pool_members(&mut c, "pub:zh:en").await.is_empty(),
        "left zh pools"
    );
    let index: BTreeSet<String> = c.smembers(format!("{PREFIX}pools")).await.unwrap();
    assert_eq!(index, want, "empty pools leave the index");

    node.heartbeat(&id, Some(&[])).await;
    eventually(Duration::from_secs(3), "no pools", || {
        let mut c = c.clone();
        let id = id.clone();
        async move { pools_of(&mut c, &id).await.is_empty().then_some(()) }
    })
    .await;
    let index: BTreeSet<String> = c.smembers(format!("{PREFIX}pools")).await.unwrap();
    assert!(index.is_empty(), "{index:?}");
    assert_eq!(
        node_hash(&mut c, &id).await["state"],
        "ready",
        "still registered"
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn tenant_nodes_join_tenant_pools_and_private_nodes_join_none() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut t = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mut f = fixture("node_register_first");
    f["tenant_id"] = json!("acme");
    f["supported_language_pairs"] = json!([{"src": "zh", "tgt": "en"}]);
    f["max_concurrent_jobs"] = json!(2);
    let id = t.register_id(f, None).await;
    assert_eq!(pools_of(&mut c, &id).await, set(&["tenant:acme:zh:en"]));
    assert_eq!(node_hash(&mut c, &id).await["capacity"], "2");

    let mut p = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mut f = fixture("node_register_first");
    f["accept_public_jobs"] = json!(false);
    let ack = p.register(f, None).await;
    let pid = ack["node_id"].as_str().unwrap();
    assert!(pools_of(&mut c, pid).await.is_empty());
    assert!(
        ack["message"]
            .as_str()
            .unwrap()
            .contains("no language pair")
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn nodes_connected_before_a_second_instance_starts_and_after_flushall_are_pooled() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&a, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;

    // An instance that starts after the node registered sees the pools at once.
    let b = start_instance(&redis).await;
    let (_, pools) = get_json(&http_url(&b, "/api/v1/pools")).await;
    assert_eq!(pools.as_array().unwrap().len(), ZH_EN_POOLS.len());
    // A node connecting to the new instance is pooled at once too (no start-up wait).
    let mut late = WsClient::connect(&ws_url(&b, "/ws/node")).await;
    let late_id = late.register_id(fixture("node_register_first"), None).await;
    assert_eq!(
        pool_members(&mut c, "pub:zh:en").await,
        set(&[&id, &late_id])
    );

    // Redis wiped: the next heartbeat of each node rebuilds its record and pools.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    node.heartbeat(&id, None).await;
    late.heartbeat(&late_id, None).await;
    eventually(
        Duration::from_secs(3),
        "pools rebuilt after FLUSHALL",
        || {
            let mut c = c.clone();
            let want = set(&[&id, &late_id]);
            async move { (pool_members(&mut c, "pub:zh:en").await == want).then_some(()) }
        },
    )
    .await;
    assert_eq!(node_hash(&mut c, &id).await["owner"], a.app.instance_id);
    assert_eq!(
        node_hash(&mut c, &late_id).await["owner"],
        b.app.instance_id
    );
    invariants::check(&mut c).await;
}
