//! Registration and identity: a minted or offered node id, the pools a first registration
//! joins, a reconnect keeping id and pools, and the fencing of a stale connection or of a
//! heartbeat for another node's id.

use std::collections::BTreeSet;
use std::time::Duration;

use redis::AsyncCommands;

use super::{ZH_EN_POOLS, pool_members, pools_of, set};
use crate::common::invariants::{self, PREFIX};
use crate::common::*;

#[tokio::test]
async fn register_with_null_id_mints_one_and_joins_exactly_the_zh_en_pools() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let ack = node.register(fixture("node_register_first"), None).await;
    let id = ack["node_id"].as_str().expect("node_id").to_string();
    assert!(id.starts_with("node-") && id.len() == 13, "{id}");
    assert!(
        id[5..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()),
        "{id}"
    );
    assert_eq!(ack["status"], "ready");

    let mut c = redis.client().await;
    assert_eq!(pools_of(&mut c, &id).await, set(ZH_EN_POOLS));
    for p in ZH_EN_POOLS {
        assert_eq!(pool_members(&mut c, p).await, set(&[&id]), "{p}");
    }
    let h = node_hash(&mut c, &id).await;
    assert_eq!(h["owner"], inst.app.instance_id);
    assert_eq!(h["state"], "ready");
    assert_eq!(h["capacity"], "4");
    assert_eq!(h["services"], "asr,nmt,semantic,tts");
    let ttl: i64 = c.pttl(format!("{PREFIX}node:{id}")).await.unwrap();
    assert!(ttl > 0, "node record has a TTL");

    let (status, pools) = get_json(&http_url(&inst, "/api/v1/pools")).await;
    assert_eq!(status, 200);
    let names: BTreeSet<String> = pools
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pool"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, set(ZH_EN_POOLS));
    let (status, n) = get_json(&http_url(&inst, &format!("/api/v1/nodes/{id}"))).await;
    assert_eq!(status, 200);
    assert_eq!(n["hardware"]["gpus"][0]["name"], "NVIDIA RTX 4070");
    let (status, list) = get_json(&http_url(&inst, "/api/v1/nodes")).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    let (status, _) = get_json(&http_url(&inst, "/api/v1/nodes/node-UNKNOWN")).await;
    assert_eq!(status, 404);
    let m = metrics_text(&inst).await;
    for line in [
        "switchyard_connections{kind=\"node\"} 1",
        "switchyard_nodes{cell=\"main\",state=\"ready\"} 1",
        "switchyard_pool_nodes{cell=\"main\",pool=\"pub:zh:en\"} 1",
        "switchyard_script_calls_total{cell=\"main\",script=\"register\",outcome=\"ok\"} 1",
    ] {
        assert!(m.contains(line), "{line} in {m}");
    }
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn offered_id_is_kept_and_a_reconnect_keeps_id_and_pools() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut a = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let ack = a
        .register(fixture("node_register_reconnect"), Some("node-3FA2B9C1"))
        .await;
    assert_eq!(ack["node_id"], "node-3FA2B9C1");
    let epoch = |h: &std::collections::HashMap<String, String>| -> u64 {
        h["epoch"].parse().expect("epoch is a whole number")
    };
    let first = epoch(&node_hash(&mut c, "node-3FA2B9C1").await);
    a.drop_connection();

    let mut b = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let ack = b
        .register(fixture("node_register_reconnect"), Some("node-3FA2B9C1"))
        .await;
    assert_eq!(ack["node_id"], "node-3FA2B9C1");
    // The old socket's cleanup (grace close) must not undo the new registration.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let h = node_hash(&mut c, "node-3FA2B9C1").await;
    assert_eq!(h["state"], "ready");
    assert!(
        epoch(&h) > first,
        "a registration's epoch grows: {first} then {h:?}"
    );
    assert_eq!(pools_of(&mut c, "node-3FA2B9C1").await, set(ZH_EN_POOLS));
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_stale_connection_cannot_heartbeat_or_close_away_a_newer_registration() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let b = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut old = WsClient::connect(&ws_url(&a, "/ws/node")).await;
    old.register(fixture("node_register_reconnect"), Some("node-3FA2B9C1"))
        .await;
    // The node reconnects through another instance while its old socket still looks open;
    // its credential proves it is that node (sub = node id), so it may take it over.
    let mut new = WsClient::connect(&node_url_as(&b, "node-3FA2B9C1")).await;
    new.register(fixture("node_register_reconnect"), Some("node-3FA2B9C1"))
        .await;
    let before = node_hash(&mut c, "node-3FA2B9C1").await;
    assert_eq!(before["owner"], b.app.instance_id);

    // The old connection's heartbeat is fenced off: error, close, nothing changed.
    old.heartbeat("node-3FA2B9C1", Some(&["ja"])).await;
    let err = old.recv_type("error").await;
    assert_eq!(err["code"], "NODE_ID_CONFLICT");
    assert_eq!(old.expect_close().await, Some(4001));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = node_hash(&mut c, "node-3FA2B9C1").await;
    assert_eq!(after["conn"], before["conn"]);
    assert_eq!(after["state"], "ready");
    assert_eq!(pools_of(&mut c, "node-3FA2B9C1").await, set(ZH_EN_POOLS));
    let m = metrics_text(&a).await;
    assert!(
        m.contains("switchyard_stale_messages_total{kind=\"node\"} 1"),
        "{m}"
    );

    // Same instance: the older local socket is closed at once when replaced.
    let mut newest = WsClient::connect(&node_url_as(&b, "node-3FA2B9C1")).await;
    newest
        .register(fixture("node_register_reconnect"), Some("node-3FA2B9C1"))
        .await;
    assert_eq!(new.expect_close().await, Some(4001));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(node_hash(&mut c, "node-3FA2B9C1").await["state"], "ready");
    assert_eq!(pools_of(&mut c, "node-3FA2B9C1").await, set(ZH_EN_POOLS));
    invariants::check(&mut c).await;
}

/// Review finding: the heartbeat answered `stale` forgot the connection's registration
/// before its socket closed, so the close cleanup never unbound it: a dead entry stayed in
/// the old instance's connection map for good.
#[tokio::test]
async fn a_connection_fenced_off_by_its_heartbeat_leaves_the_local_map() {
    use switchyard::gateway::Kind;
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let b = start_instance(&redis).await;
    let mut old = WsClient::connect(&ws_url(&a, "/ws/node")).await;
    old.register(fixture("node_register_reconnect"), Some("node-3FA2B9C1"))
        .await;
    assert_eq!(a.app.conns.count(Kind::Node), 1);
    let mut new = WsClient::connect(&node_url_as(&b, "node-3FA2B9C1")).await;
    new.register(fixture("node_register_reconnect"), Some("node-3FA2B9C1"))
        .await;
    old.heartbeat("node-3FA2B9C1", None).await;
    assert_eq!(old.recv_type("error").await["code"], "NODE_ID_CONFLICT");
    assert_eq!(old.expect_close().await, Some(4001));
    eventually(
        Duration::from_secs(3),
        "instance a forgets the replaced connection",
        || async { (a.app.conns.count(Kind::Node) == 0).then_some(()) },
    )
    .await;
    assert_eq!(b.app.conns.count(Kind::Node), 1);
    let mut c = redis.client().await;
    assert_eq!(
        node_hash(&mut c, "node-3FA2B9C1").await["owner"],
        b.app.instance_id
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_heartbeat_for_another_node_id_is_refused_and_changes_nothing() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut a = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id_a = a.register_id(fixture("node_register_first"), None).await;
    let mut b = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id_b = b.register_id(fixture("node_register_first"), None).await;
    let before = node_hash(&mut c, &id_b).await;
    a.heartbeat(&id_b, Some(&["ja"])).await;
    assert_eq!(a.recv_type("error").await["code"], "NODE_ID_CONFLICT");
    assert_eq!(node_hash(&mut c, &id_b).await, before);
    assert_eq!(pools_of(&mut c, &id_b).await, set(ZH_EN_POOLS));
    // A heartbeat before registering is refused too.
    let mut fresh = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    fresh.heartbeat(&id_a, None).await;
    assert_eq!(fresh.recv_type("error").await["code"], "INVALID_MESSAGE");
    invariants::check(&mut c).await;
}
