//! The Redis underneath: the instance runs on the topology under test, survives Redis
//! restarting under a connected node and `FUNCTION FLUSH`, and leaves a previous version's
//! script library loaded beside its own.

use std::time::Duration;

use super::{ZH_EN_POOLS, eventually_in_pool, pools_of, set};
use crate::common;
use crate::common::invariants;
use crate::common::*;

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
    crate::common::invariants::check(&mut redis.client().await).await;
}

/// Audit finding: `/readyz` needs no token, and each request checked every cell (a pooled
/// connection, `ROLE`, `FUNCTION LIST`, `INFO memory`): a client looping over many
/// connections held the pool that admin reads and recovery draw on. Now requests share the
/// check in flight. Redis is paused while 200 probes arrive, so the first check is still
/// in flight when the last probe comes: they share a few checks (before: 200 `ROLE`s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readiness_probes_share_one_check_at_a_time() {
    if single_only("counts the commands of one redis-server") {
        return;
    }
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.redis.timeout_ms = 5_000).await;
    let mut c = redis.client().await;
    ready(&inst).await;
    let before = command_calls(&mut c, "role").await;
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "1500", "ALL"])
        .query_async(&mut c)
        .await
        .expect("client pause");
    let http = reqwest::Client::new();
    let url = http_url(&inst, "/readyz");
    let probes = (0..200).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move { http.get(&url).send().await.expect("probe").status() })
    });
    for probe in futures_util::future::join_all(probes).await {
        assert_eq!(probe.expect("probe task").as_u16(), 200);
    }
    let checks = command_calls(&mut c, "role").await - before;
    assert!(
        (1..=10).contains(&checks),
        "{checks} readiness checks for 200 concurrent probes"
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

/// A capability change whose heartbeat failed (Redis down) does not count against
/// `node.capability_change_interval_ms`: the node's next heartbeat, restating it as lingua
/// nodes do, applies it at once. Before, the failed change started the interval, and the
/// restated one was held for it (here a minute).
#[tokio::test]
async fn a_capability_change_whose_heartbeat_failed_is_applied_by_the_next_one() {
    if single_only("a_capability_change_whose_heartbeat_failed_is_applied_by_the_next_one") {
        return;
    }
    let mut redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.node.capability_change_interval_ms = 60_000).await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;
    redis.stop();
    node.heartbeat(&id, Some(&["ja", "en"])).await;
    let err = node.recv_type("error").await;
    assert_eq!(err["code"], "SCHEDULER_DEPENDENCY_DOWN");
    redis.restart().await; // empty: the heartbeat finds no record and registers again
    let c = redis.client().await;
    let mut cc = c.clone();
    let mut applied = false;
    for _ in 0..30 {
        node.heartbeat(&id, Some(&["ja", "en"])).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if pools_of(&mut cc, &id).await.contains("pub:ja:en") {
            applied = true;
            break;
        }
    }
    assert!(
        applied,
        "the restated change is applied, not held for the interval"
    );
    eventually_in_pool(&c, &id, "pub:ja:en", "the node serves ja-en").await;
    invariants::check(&mut cc).await;
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

/// Review finding: after a `FUNCTION FLUSH` every call in flight found the library missing
/// and loaded it itself: a compile of the ~120 KB library in Redis per call, a stall under
/// load. One reload runs at a time, and calls that failed before it just retry.
#[tokio::test]
async fn calls_that_find_the_library_missing_load_it_once() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut nodes = Vec::new();
    for _ in 0..24 {
        let mut n = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
        let id = n.register_id(fixture("node_register_first"), None).await;
        nodes.push((n, id));
    }
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut c)
        .await
        .unwrap();
    // Every node's heartbeat at once: the calls are in flight together.
    for (n, id) in nodes.iter_mut() {
        n.heartbeat(id, Some(&["ja", "en"])).await;
    }
    for (_, id) in &nodes {
        eventually_in_pool(
            &c,
            id,
            "pub:ja:en",
            "heartbeat applied after FUNCTION FLUSH",
        )
        .await;
    }
    let loads = command_calls(&mut c, "function|load").await;
    assert!(
        (1..=2).contains(&loads),
        "{loads} FUNCTION LOADs for 24 calls that found the library missing"
    );
    invariants::check(&mut c).await;
}

/// Review finding: a node registered on a connection sends `node_register` again on it
/// while Redis does not answer (writes paused past `redis.timeout_ms`). The failed call
/// unbound the connection from the local map, although Redis still names it as the node's
/// connection: heartbeats kept answering ok, and every job_assign for the node was dropped
/// as `gone` until the socket closed. A failed call now leaves the binding as it was.
#[tokio::test]
async fn a_failed_re_register_keeps_the_connection_bound_to_its_node() {
    use crate::common::actors::{answer, next_of, session_on, terminals, utterance};
    if single_only("a_failed_re_register_keeps_the_connection_bound_to_its_node") {
        return;
    }
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.redis.timeout_ms = 300;
        // The pause outlasts the tests' short presence TTL; nothing here is about it.
        c.instance.presence_ttl_ms = 5_000;
    })
    .await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;
    let (mut s, sid) = session_on(&inst).await;

    let pause = Duration::from_millis(1_500);
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(pause.as_millis() as u64)
        .arg("WRITE")
        .query_async(&mut c)
        .await
        .expect("client pause");
    let paused = tokio::time::Instant::now();
    let mut again = fixture("node_register_first");
    again["node_id"] = serde_json::json!(id);
    node.send(&again).await;
    let err = node.recv_type("error").await;
    assert_eq!(err["code"], "SCHEDULER_DEPENDENCY_DOWN", "{err}");
    tokio::time::sleep_until(paused + pause + Duration::from_millis(200)).await;

    // The only node there is: the job is dispatched to it, through this connection.
    s.send(&utterance(&sid, 0)).await;
    let a = next_of(&mut node, "job_assign", Duration::from_secs(5))
        .await
        .expect("the node still receives its jobs after a failed re-register");
    node.send(&answer(&a, &id, "still bound")).await;
    let got = terminals(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0]["text_translated"], "still bound", "{got:?}");
    invariants::check(&mut c).await;
}

/// A Redis restart breaks every shared connection at once (the instance keeps up to four
/// for its script calls, each drawn in turn). The first call that finds its socket gone
/// replaces them all: one call fails after Redis returns, not one per shared connection.
#[tokio::test]
async fn after_a_redis_restart_one_call_finds_the_broken_connections_not_each() {
    if single_only("after_a_redis_restart_one_call_finds_the_broken_connections_not_each") {
        return;
    }
    let mut redis = RedisServer::start().await;
    // No background script call in between (beat, sweep) to find a broken one first.
    let inst = start_tweaked(&redis, |c| {
        c.instance.beat_interval_ms = 30_000;
        c.instance.presence_ttl_ms = 120_000;
        c.sweep.interval_ms = 30_000;
    })
    .await;
    let url = ws_url(&inst, "/ws/session");
    let open = async || {
        let mut s = WsClient::connect(&url).await;
        s.send(&fixture("session_init_one_way")).await;
        let reply = s.next(Duration::from_secs(5)).await.expect("an answer");
        reply["type"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_default()
    };
    // Every shared connection made and used.
    for _ in 0..8 {
        assert_eq!(open().await, "session_init_ack");
    }
    redis.restart().await; // empty, on the same port: every socket to it is gone
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(open().await);
    }
    let failed = answers.iter().filter(|a| *a != "session_init_ack").count();
    assert!(
        failed <= 1 && answers[1..].iter().all(|a| a == "session_init_ack"),
        "one call finds the broken connections, the rest run on new ones: {answers:?}"
    );
    let mut c = redis.client().await;
    invariants::check(&mut c).await;
}

/// The Redis ACL docs/operations.md gives an instance's user ("Scripts and ACLs") is enough:
/// readiness, nodes, sessions, jobs, the admin reads and `/metrics` work, and Redis logs no
/// command refused (`ACL LOG`). Audit finding: the list there lacked `ROLE` (readiness stayed
/// 503), `SET` (staging), `WAIT`, the inbox's stream commands and `MULTI`/`EXEC` (dead
/// letters, recovery, inspection), and deadpool's `UNWATCH`.
#[tokio::test]
async fn the_documented_acl_is_enough_for_an_instance() {
    if single_only("sets an ACL user on one redis-server") {
        return;
    }
    const RULES: &str = "~{switchyard:*}* resetchannels -@all +@read +@write +@stream \
        +@scripting -@dangerous +role +info +wait +time +ping +hello +client|setname \
        +multi +exec +discard +unwatch";
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("operations.md");
    let rules = RULES.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        docs.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .contains(&rules),
        "docs/operations.md gives another ACL than {rules}"
    );
    let redis = RedisServer::start().await;
    let mut c = redis.client().await;
    acl_user(&mut c, RULES).await;
    let url = format!(
        "redis://switchyard:acl-test-password@127.0.0.1:{}",
        redis.port
    );
    let inst = start_with(test_config(&url)).await;
    ready(&inst).await;
    let (mut n, nid) = crate::common::actors::node_on(&inst, None).await;
    let (mut s, sid) = crate::common::actors::session_on(&inst).await;
    for i in 0..3 {
        s.send(&crate::common::actors::utterance(&sid, i)).await;
        let a = n.recv_type("job_assign").await;
        n.send(&crate::common::actors::answer(&a, &nid, "t")).await;
    }
    let got = crate::common::actors::terminals(&mut s, 3, Duration::from_secs(5)).await;
    assert!(
        got.iter().all(|v| v["type"] == "translation_result"),
        "{got:?}"
    );
    let paths = [
        "/api/v1/nodes",
        "/api/v1/pools",
        "/api/v1/instances",
        "/metrics",
    ];
    admin_reads_ok(&inst, &paths).await;
    let refused: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut c)
        .await
        .expect("acl log");
    assert!(refused.is_empty(), "commands refused: {refused:?}");
    invariants::check(&mut c).await;
}
