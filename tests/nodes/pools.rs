//! Pool membership: capability changes move a node between pools (and out of all of them),
//! tenant and private nodes, and pools seen by a later instance and rebuilt after FLUSHALL.

use std::collections::BTreeSet;
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::json;

use super::{ZH_EN_POOLS, pool_members, pools_of, set};
use crate::common::actors::{answer, open_session, terminals, utterance};
use crate::common::invariants::{self, PREFIX};
use crate::common::*;

/// The public pools of a node serving ja and en in every direction.
fn ja_en_pools() -> BTreeSet<String> {
    set(&[
        "pub:ja:ja",
        "pub:ja:en",
        "pub:en:ja",
        "pub:en:en",
        "pub:auto:ja",
        "pub:auto:en",
    ])
}

#[tokio::test]
async fn capability_change_moves_the_node_and_empty_languages_leave_every_pool() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;

    node.heartbeat(&id, Some(&["ja", "en"])).await;
    let want = ja_en_pools();
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
    let mut t = WsClient::connect(&tenant_ws_url(&inst, "/ws/node", "acme")).await;
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
    // DESIGN §6 "Redis wiped": new jobs work at once (a new session; the old ones are gone).
    let (mut s, sid) =
        open_session(&ws_url(&a, "/ws/session"), fixture("session_init_one_way")).await;
    s.send(&utterance(&sid, 0)).await;
    let (on_first, job) = tokio::select! {
        v = node.recv_type("job_assign") => (true, v),
        v = late.recv_type("job_assign") => (false, v),
    };
    let (ws, nid) = if on_first {
        (&mut node, &id)
    } else {
        (&mut late, &late_id)
    };
    ws.send(&answer(&job, nid, "after the wipe")).await;
    let got = terminals(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0]["text_translated"], "after the wipe", "{got:?}");
    invariants::check(&mut c).await;
}

/// A node in more pools than one Lua `unpack` can pass to a Redis command (about 8,000):
/// the gateway refuses a node in more than 4,160 pools, but a registration's script must not
/// fail after its writes if one gets there (an older instance's limit let 96 × 96
/// through). Written through the store, past the gateway's check: 9,312 pools. `offer()` looks for queued jobs in chunks of
/// queues, and hands the new node the job waiting for a busy one.
#[tokio::test]
async fn a_node_in_more_pools_than_lua_can_unpack_registers_and_is_offered_queued_jobs() {
    use switchyard::capabilities::Capabilities;
    use switchyard::protocol::node::{CapabilityByType, LanguageCapabilities};
    use switchyard::store::nodes::NodeClaim;
    let redis = RedisServer::start().await;
    // No deadline may pass while 9,312 pools are written and checked.
    let inst = start_tweaked(&redis, |c| {
        c.jobs.run_timeout_ms = 30_000;
        c.jobs.queue_wait_ms = 10_000;
        c.jobs.record_ttl_ms = 120_000;
        c.node.liveness_ms = Some(60_000);
    })
    .await;
    let mut c = redis.client().await;
    // A busy zh→en node (capacity 1): the second utterance waits in queue:pub:zh:en.
    let mut busy = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mut f = fixture("node_register_first");
    f["max_concurrent_jobs"] = json!(1);
    busy.register_id(f, None).await;
    let (mut s, sid) = crate::common::actors::session_on(&inst).await;
    for i in 0..2 {
        let u = utterance(&sid, i);
        s.send(&u).await;
    }
    let jobs_key = format!("{PREFIX}session:{sid}:jobs");
    let queued = eventually(Duration::from_secs(5), "utterance 1 queued", || {
        let (mut c, jobs_key) = (c.clone(), jobs_key.clone());
        async move {
            let jid: String = c.hget(&jobs_key, "1").await.ok()?;
            let state: String = c.hget(format!("{PREFIX}job:{jid}"), "state").await.ok()?;
            (state == "QUEUED").then_some(jid)
        }
    })
    .await;

    let mut asr = vec!["zh".to_string()];
    let mut sem = vec!["en".to_string()];
    for i in 0..95 {
        asr.push(format!("a{i:02}"));
        sem.push(format!("s{i:02}"));
    }
    let services = ["asr", "nmt", "tts"].map(|k| CapabilityByType {
        kind: k.into(),
        ready: true,
    });
    let caps = Capabilities {
        langs: LanguageCapabilities {
            asr_languages: asr,
            tts_languages: sem.clone(),
            semantic_languages: sem,
        },
        pairs: None,
        services: services.to_vec(),
        tenant: None,
        accept_public: true,
    };
    assert_eq!(caps.pools().len(), 96 * 96 + 96);
    let store = &inst.app.cells.default_cell().store;
    let extra = [("capacity", "4".into()), ("supports_ack", "0".into())];
    let out = store
        .register(
            "node-wide0002",
            NodeClaim::Replace,
            "conn-wide",
            &caps,
            &extra,
            0,
            None,
        )
        .await
        .expect("the register script runs to its end");
    assert!(
        out.out.iter().any(|d| d.id == "node-wide0002"),
        "the queued job's job_assign for the new node"
    );
    let job: std::collections::HashMap<String, String> =
        c.hgetall(format!("{PREFIX}job:{queued}")).await.unwrap();
    assert_eq!(job["state"], "DISPATCHED", "{job:?}");
    assert_eq!(job["node"], "node-wide0002", "{job:?}");
    invariants::check(&mut c).await;
}

/// A connection changes its capabilities at most once per
/// `node.capability_change_interval_ms`: each change recomputes the node's pools in Redis
/// (resource audit: one connection flapping its languages stalled Redis for the cell). A
/// change within the interval waits, counted `limited{kind="node",detail="capability_change"}`,
/// and a later heartbeat without capabilities applies it once the interval has passed.
#[tokio::test]
async fn capability_changes_are_paced_and_a_held_one_comes_with_a_later_heartbeat() {
    let redis = RedisServer::start().await;
    // (an interval long enough that the flapping below stays inside it on a loaded machine)
    let inst = start_tweaked(&redis, |c| c.node.capability_change_interval_ms = 3_000).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;
    let pools = |c: &redis::aio::MultiplexedConnection, id: &str| {
        let (mut c, id) = (c.clone(), id.to_string());
        async move { pools_of(&mut c, &id).await }
    };
    let ja = ja_en_pools();
    node.heartbeat(&id, Some(&["ja", "en"])).await;
    eventually(Duration::from_secs(3), "the first change at once", || {
        let p = pools(&c, &id);
        let ja = ja.clone();
        async move { (p.await == ja).then_some(()) }
    })
    .await;
    let applied = tokio::time::Instant::now(); // (the change was applied before this)
    // flapping: every further change within the interval is held
    for i in 0..6 {
        let langs: &[&str] = if i % 2 == 0 {
            &["ko", "en"]
        } else {
            &["ja", "en"]
        };
        node.heartbeat(&id, Some(langs)).await;
    }
    node.heartbeat(&id, Some(&["ko", "en"])).await;
    // Each held change is counted (a heartbeat restating the current ones changes nothing):
    // four of the seven, once all seven were handled.
    let limited = r#"switchyard_limited_total{kind="node",detail="capability_change"}"#;
    // (a held change is counted before its heartbeat's script runs: once four are seen,
    // give the rest time to be handled, then the count must still be four)
    eventually(Duration::from_secs(2), "the held changes counted", || {
        let inst = &inst;
        async move { (sample(&metrics_text(inst).await, limited)? >= 4.0).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = sample(&metrics_text(&inst).await, limited);
    assert_eq!(held, Some(4.0), "each held change counted once");
    assert_eq!(pools(&c, &id).await, ja, "held within the interval");
    assert!(
        applied.elapsed() < Duration::from_millis(2_500),
        "checked within the interval"
    );
    // after the interval, a heartbeat without capabilities brings the last one
    tokio::time::sleep_until(applied + Duration::from_millis(3_100)).await;
    let mut bare = fixture("node_heartbeat");
    bare["node_id"] = json!(id);
    if let Some(o) = bare.as_object_mut() {
        o.remove("language_capabilities");
        o.remove("capability_by_type");
    }
    node.send(&bare).await;
    eventually(Duration::from_secs(3), "the held change applied", || {
        let p = pools(&c, &id);
        async move { p.await.contains("pub:ko:en").then_some(()) }
    })
    .await;
    invariants::check(&mut c).await;
}

/// Resource audit: a `node_register` sent again on a registered connection recomputed every
/// pool of the node, unpaced (capability changes by heartbeat were). Within
/// `node.capability_change_interval_ms` of the last registration or change it is refused
/// with `RATE_LIMITED` and nothing changes; after it, it goes through.
#[tokio::test]
async fn a_node_register_sent_again_within_the_interval_is_refused_and_changes_nothing() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.node.capability_change_interval_ms = 1_000).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;
    let before = pools_of(&mut c, &id).await;
    let mut again = fixture("node_register_first");
    again["language_capabilities"] = json!({"asr_languages": ["ja", "en"], "semantic_languages": ["ja", "en"], "tts_languages": ["ja", "en"]});
    again["node_id"] = json!(id);
    node.send(&again).await;
    let err = node.recv_type("error").await;
    assert_eq!(err["code"], "RATE_LIMITED", "{err}");
    assert_eq!(pools_of(&mut c, &id).await, before, "nothing changed");
    let limited = r#"switchyard_limited_total{kind="node",detail="register_again"}"#;
    assert_eq!(sample(&metrics_text(&inst).await, limited), Some(1.0));
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    node.send(&again).await;
    node.recv_type("node_register_ack").await;
    assert_eq!(pools_of(&mut c, &id).await, ja_en_pools());
    invariants::check(&mut c).await;
}

/// `/api/v1/pools` lists at most 1,000 members of a pool, its `count` all of them: nodes
/// in thousands of pools each made a body of megabytes (console audit).
#[tokio::test]
async fn the_pool_list_names_at_most_a_thousand_members_of_a_pool() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (_node, id) = crate::common::actors::node_on(&inst, None).await;
    let pool = format!("{PREFIX}pool:pub:zh:en");
    let fakes: Vec<String> = (0..1_500).map(|i| format!("fake-{i:04}")).collect();
    let _: () = c.sadd(&pool, &fakes).await.unwrap();
    let (status, pools) = get_json(&http_url(&inst, "/api/v1/pools")).await;
    assert_eq!(status, 200, "{pools}");
    let p = (pools.as_array().unwrap().iter())
        .find(|p| p["pool"] == "pub:zh:en")
        .expect("the pool");
    assert_eq!(p["count"], 1_501);
    assert_eq!(p["members"].as_array().map(Vec::len), Some(1_000));
    assert_eq!(p["members"][0], "fake-0000", "sorted");
    // (the members that were never nodes go; the node is still there)
    let _: () = c.srem(&pool, &fakes).await.unwrap();
    assert_eq!(pool_members(&mut c, "pub:zh:en").await, set(&[&id]));
    invariants::check(&mut c).await;
}
