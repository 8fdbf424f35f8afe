//! Node registration, heartbeats, pools and liveness against a real redis-server, with real
//! WebSocket clients sending lingua-shaped frames. Every scenario ends with the invariant
//! checker.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::invariants::{self, PREFIX};
use common::*;
use redis::AsyncCommands;
use serde_json::json;

type Conn = redis::aio::MultiplexedConnection;

async fn pools_of(c: &mut Conn, node: &str) -> BTreeSet<String> {
    c.smembers(format!("{PREFIX}node:{node}:pools"))
        .await
        .expect("smembers")
}

async fn pool_members(c: &mut Conn, pool: &str) -> BTreeSet<String> {
    c.smembers(format!("{PREFIX}pool:{pool}"))
        .await
        .expect("smembers")
}

/// Waits (2 s at most) until the node's pools include `pool`: its heartbeat was applied.
async fn eventually_in_pool(c: &Conn, node: &str, pool: &str, what: &str) {
    eventually(Duration::from_secs(2), what, || {
        let mut c = c.clone();
        let node = node.to_string();
        async move { pools_of(&mut c, &node).await.contains(pool).then_some(()) }
    })
    .await;
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const ZH_EN_POOLS: &[&str] = &[
    "pub:zh:zh",
    "pub:zh:en",
    "pub:en:zh",
    "pub:en:en",
    "pub:auto:zh",
    "pub:auto:en",
];

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

/// `make test` runs this suite on every topology: the instance really uses the one under test.
#[tokio::test]
async fn the_instance_runs_on_the_topology_under_test() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let ready = eventually(Duration::from_secs(10), "ready", || async {
        let (status, ready) = get_json(&http_url(&inst, "/readyz")).await;
        (status == 200).then_some(ready)
    })
    .await;
    let want = match common::redis_server::topology().as_str() {
        "cluster" => "cluster".to_string(),
        _ => format!("127.0.0.1:{}", redis.port),
    };
    assert_eq!(ready["redis"], want.as_str(), "{ready}");
    let mode = format!("{:?}", inst.app.cfg.redis.mode).to_lowercase();
    assert_eq!(mode, common::redis_server::topology());
    // On the cluster the instance serves three cells, one per primary.
    let cells = ready["cells"].as_array().map_or(0, Vec::len);
    assert_eq!(cells, if mode == "cluster" { 3 } else { 1 }, "{ready}");
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
    assert_eq!(node_hash(&mut c, "node-3FA2B9C1").await["epoch"], "1");
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
    assert_eq!(h["epoch"], "2");
    assert_eq!(pools_of(&mut c, "node-3FA2B9C1").await, set(ZH_EN_POOLS));
    invariants::check(&mut c).await;
}

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

#[tokio::test]
async fn a_silent_node_leaves_every_pool_after_liveness_and_every_key_is_bounded() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.node.liveness_ms = Some(900)).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;
    let started = std::time::Instant::now();
    // liveness 900 ms + sweep 50 ms: the node is offline and its socket closed.
    assert_eq!(node.expect_close().await, Some(4002));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(850) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    let h = node_hash(&mut c, &id).await;
    assert_eq!(h["state"], "offline");
    assert_eq!(h["offline_reason"], "liveness_expired");
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
    eventually(Duration::from_millis(300), "offline at once", || {
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

#[tokio::test]
async fn malformed_unknown_and_oversized_frames_get_errors_and_change_nothing() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;
    let before = node_hash(&mut c, &id).await;

    let bad_register = json!({"type": "node_register", "node_id": 42});
    let bad_caps = json!({"type": "node_register", "capability_by_type": "asr"});
    let bad_lang = {
        let mut f = fixture("node_register_first");
        f["language_capabilities"]["asr_languages"] = json!(["zh", "x:y"]);
        f
    };
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "INVALID_MESSAGE"),
        ("[1,2,3]".into(), "INVALID_MESSAGE"),
        (json!({"no_type": 1}).to_string(), "INVALID_MESSAGE"),
        (
            json!({"type": "room_create"}).to_string(),
            "INVALID_MESSAGE",
        ),
        (bad_register.to_string(), "INVALID_MESSAGE"),
        (bad_caps.to_string(), "INVALID_MESSAGE"),
        (bad_lang.to_string(), "INVALID_CAPABILITY_SCHEMA"),
    ];
    for (frame, code) in &cases {
        node.send_text(frame).await;
        let err = node.recv_type("error").await;
        assert_eq!(err["code"], *code, "frame {frame}: {err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    node.send_binary(vec![1, 2, 3]).await;
    assert_eq!(node.recv_type("error").await["code"], "INVALID_MESSAGE");
    let after = node_hash(&mut c, &id).await;
    assert_eq!(after, before, "nothing changed");

    // Oversized (test limit 64 KiB): closed with 1009; the node goes offline after grace.
    node.send_text(&"x".repeat(70 * 1024)).await;
    assert_eq!(node.expect_close().await, Some(1009));
    let m = metrics_text(&inst).await;
    assert!(m.contains("detail=\"oversized\""), "{m}");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn full_lingua_frames_with_unknown_fields_are_accepted() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mut f = fixture("node_register_first");
    f["some_future_field"] = json!({"nested": [1, 2]});
    f["capability_by_type"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "phonetic", "ready": false, "reason": "x", "ready_impl_ids": ["a"]}));
    f["capability_by_type"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "brand_new_service", "ready": true}));
    f["hardware"] = json!(null);
    f["installed_models"] = json!(null);
    let id = node.register_id(f, None).await;
    assert!(node_hash(&mut c, &id).await["services"].contains("brand_new_service"));
    let mut hb = fixture("node_heartbeat");
    hb["node_id"] = json!(id);
    hb["unknown"] = json!(true);
    hb["resource_usage"]["cpu_percent"] = json!(77.25);
    hb["asr_metrics"] = json!({"x": 1});
    hb["processing_metrics"] = json!(null);
    node.send(&hb).await;
    node.send(&json!({"type": "node_error", "node_id": id, "code": "GPU_OOM", "message": "oom", "details": {"x": 1}})).await;
    node.expect_silence(Duration::from_millis(300)).await;
    let h = node_hash(&mut c, &id).await;
    assert_eq!(h["cpu"], "77.2");
    assert_eq!(h["gpu_queue"], "0");
    assert_eq!(
        h["services"], "asr,nmt,semantic,tts",
        "the heartbeat's services replace them"
    );
    let m = metrics_text(&inst).await;
    assert!(
        m.contains("switchyard_node_errors_total{detail=\"OTHER\"} 1"),
        "{m}"
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn redis_stopped_and_restarted_under_a_connected_node_heals_by_itself() {
    if single_only("redis_stopped_and_restarted_under_a_connected_node_heals_by_itself") {
        return;
    }
    let mut redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;
    let (status, _) = get_json(&http_url(&inst, "/readyz")).await;
    assert_eq!(status, 200);

    redis.stop();
    node.heartbeat(&id, None).await;
    let err = node.recv_type("error").await;
    assert_eq!(err["code"], "SCHEDULER_DEPENDENCY_DOWN");
    let (status, body) = get_json(&http_url(&inst, "/readyz")).await;
    assert_eq!(status, 503, "{body}");
    let health = reqwest::get(http_url(&inst, "/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200, "the process stays up");

    redis.restart().await; // empty: scripts and state are gone
    let mut c = redis.client().await;
    let mut healed = false;
    for _ in 0..20 {
        node.heartbeat(&id, None).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if pools_of(&mut c, &id).await == set(ZH_EN_POOLS) {
            healed = true;
            break;
        }
    }
    assert!(
        healed,
        "one heartbeat after Redis returns rebuilds the node and its pools"
    );
    let (status, _) = get_json(&http_url(&inst, "/readyz")).await;
    assert_eq!(status, 200, "scripts reloaded");
    invariants::check(&mut c).await;
}

/// A rolling upgrade: instances of the previous version keep calling their library while
/// this version's instances load theirs beside it. Loading ours must leave theirs in place
/// (each version's library has its own name; `FUNCTION LOAD REPLACE` replaces only ours).
#[tokio::test]
async fn a_previous_versions_library_stays_loaded_beside_this_one() {
    let redis = RedisServer::start().await;
    let mut c = redis.client().await;
    let scripts = switchyard::store::scripts::Scripts::new();
    let ours = scripts.library_name();
    let version = ours.trim_start_matches("switchyard_").to_string();
    let theirs = scripts.library().replace(&format!("_{version}"), "_0ld000");
    assert_ne!(
        theirs,
        scripts.library(),
        "the version is in the library's text"
    );
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(&theirs)
        .query_async(&mut c)
        .await
        .expect("the previous version loads");
    let inst = start_instance(&redis).await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;
    node.heartbeat(&id, Some(&["ja", "en"])).await;
    eventually_in_pool(&c, &id, "pub:ja:en", "heartbeat applied").await;
    let libs: redis::Value = redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut c)
        .await
        .expect("function list");
    let listed = format!("{libs:?}");
    assert!(listed.contains(&ours), "ours loaded: {listed}");
    assert!(
        listed.contains("switchyard_0ld000"),
        "theirs kept: {listed}"
    );
    // Theirs still runs: a call with no arguments reaches the script (which refuses them),
    // not "Function not found".
    let err = redis::cmd("FCALL")
        .arg("session_touch_0ld000")
        .arg(0)
        .query_async::<redis::Value>(&mut c)
        .await
        .expect_err("no arguments");
    assert!(
        !switchyard::store::scripts::function_missing(&err),
        "the previous version's function is callable: {err}"
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn function_flush_is_survived_transparently() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    node.heartbeat(&id, Some(&["ja", "en"])).await;
    eventually_in_pool(
        &c,
        &id,
        "pub:ja:en",
        "heartbeat applied after FUNCTION FLUSH",
    )
    .await;
    node.expect_silence(Duration::from_millis(100)).await;
    invariants::check(&mut c).await;
}
