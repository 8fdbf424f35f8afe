//! The Redis underneath runs out of memory: an instance is not ready on a Redis that would
//! evict keys, and a full Redis refuses a state change whole (the client hears
//! `SCHEDULER_DEPENDENCY_DOWN`) and serves it once there is room again.

use std::time::Duration;

use crate::common::actors::{answer, assign, node_on, session_on, terminals, utterance};
use crate::common::invariants::{self, PREFIX};
use crate::common::*;

async fn config_set(c: &mut super::Conn, name: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(c)
        .await
        .expect("config set");
}

/// A number `INFO <section>` reports, read on a connection of its own.
async fn info_field(redis: &RedisServer, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut redis.client().await)
        .await
        .expect("info");
    let prefix = format!("{field}:");
    let value = info.lines().find_map(|l| l.strip_prefix(&prefix));
    value.and_then(|v| v.trim().parse().ok()).expect(field)
}

async fn readyz(inst: &switchyard::server::Running) -> (u16, serde_json::Value) {
    get_json(&http_url(inst, "/readyz")).await
}

/// `/readyz` of an instance that may have just started: its inbox consumer marks itself
/// alive on its first read, and readiness waits for that (up to 5 s here). The last answer.
async fn readyz_once_started(inst: &switchyard::server::Running) -> (u16, serde_json::Value) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (status, body) = readyz(inst).await;
        let starting = body["reason"] == "cell main: inbox consumer not running";
        if !starting || std::time::Instant::now() > until {
            return (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An evicting policy would drop one half of a pair the invariants tie together (a
/// reservation and the set that holds it, a logged result and its body) once Redis is full.
#[tokio::test]
async fn an_evicting_redis_keeps_the_instance_unready_until_its_policy_is_noeviction() {
    if single_only("an_evicting_redis_keeps_the_instance_unready") {
        return;
    }
    let redis = RedisServer::start().await;
    let mut c = redis.client().await;
    config_set(&mut c, "maxmemory", "1gb").await;
    config_set(&mut c, "maxmemory-policy", "allkeys-lru").await;
    let inst = start_instance(&redis).await;
    let (status, body) = readyz(&inst).await;
    assert_eq!(status, 503, "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("maxmemory-policy is allkeys-lru") && reason.contains("noeviction"),
        "{body}"
    );
    let accepting = start_tweaked(&redis, |c| c.redis.allow_eviction = true).await;
    let (status, body) = readyz_once_started(&accepting).await;
    assert_eq!(status, 200, "redis.allow_eviction: {body}");
    // An ACL user without INFO cannot check: ready (the start logs it), not stuck unready.
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "noinfo",
            "on",
            ">secret-pw",
            "~*",
            "&*",
            "+@all",
            "-info",
        ])
        .query_async(&mut c)
        .await
        .expect("acl setuser");
    let unchecked = start_tweaked(&redis, |c| {
        c.redis.username = Some("noinfo".into());
        c.redis.password = Some("secret-pw".into());
    })
    .await;
    let (status, body) = readyz_once_started(&unchecked).await;
    assert_eq!(status, 200, "INFO refused: not checked: {body}");

    config_set(&mut c, "maxmemory-policy", "volatile-ttl").await;
    assert_eq!(
        readyz(&inst).await.0,
        503,
        "volatile-*: nearly every key has a TTL"
    );
    config_set(&mut c, "maxmemory-policy", "noeviction").await;
    let (status, body) = readyz(&inst).await;
    assert_eq!(status, 200, "{body}");
    config_set(&mut c, "maxmemory", "0").await;
    config_set(&mut c, "maxmemory-policy", "allkeys-lru").await;
    let (status, body) = readyz(&inst).await;
    assert_eq!(status, 200, "no maxmemory: Redis never evicts: {body}");

    let text = metrics_text(&inst).await;
    let gauge = |name: &str| sample(&text, &format!("switchyard_{name}{{cell=\"main\"}}"));
    assert!(
        gauge("redis_memory_used_bytes").is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert_eq!(gauge("redis_memory_max_bytes"), Some(0.0), "{text}");
    invariants::check(&mut c).await;
}

/// Under `noeviction` a full Redis refuses a script call before it runs: the utterance is
/// refused whole (no job, no reservation), and the same utterance sent again once there is
/// room is served once.
#[tokio::test]
async fn a_full_redis_refuses_an_utterance_whole_and_serves_it_once_there_is_room() {
    if single_only("a_full_redis_refuses_an_utterance_whole") {
        return;
    }
    let redis = RedisServer::start().await;
    let mut c = redis.client().await;
    let inst = start_instance(&redis).await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    // Full: maxmemory below what Redis uses already.
    let used = info_field(&redis, "memory", "used_memory").await;
    config_set(&mut c, "maxmemory", &(used / 2).to_string()).await;

    let connections = || info_field(&redis, "stats", "total_connections_received");
    let before = connections().await;
    for _ in 0..10 {
        s.send(&utterance(&sid, 0)).await;
        let err = s.recv_type("error").await;
        assert_eq!(err["code"], "SCHEDULER_DEPENDENCY_DOWN", "{err}");
    }
    // A refused call leaves its healthy connection in place: no reconnect per refusal
    // (one is the test's own INFO connection; before this, 7 were opened).
    let opened = connections().await - before;
    assert!(
        opened <= 2,
        "{opened} connections opened for 10 refused calls"
    );
    let jobs: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}job:*"))
        .query_async(&mut c)
        .await
        .expect("keys");
    assert_eq!(jobs, Vec::<String>::new(), "a refused utterance made a job");
    let reserved = node_hash(&mut c, &nid).await.get("reserved").cloned();
    assert_eq!(reserved.as_deref(), Some("0"), "nothing reserved");
    let text = metrics_text(&inst).await;
    assert!(
        text.contains(
            "switchyard_script_calls_total{cell=\"main\",script=\"submit\",outcome=\"unavailable\"}"
        ),
        "counted as Redis unavailable (the SwitchyardRedisUnavailable alert): {text}"
    );

    config_set(&mut c, "maxmemory", "0").await;
    s.send(&utterance(&sid, 0)).await;
    let a = assign(&mut n).await;
    n.send(&answer(&a, &nid, "room again")).await;
    let got = terminals(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!(got[0]["type"], "translation_result", "{:?}", got);
    assert_eq!(got[0]["utterance_index"], 0);
    invariants::check(&mut c).await;
}
