//! Frames on the node socket: malformed, unknown and oversized frames get errors and change
//! nothing; full lingua frames with unknown fields are accepted.

use std::time::Duration;

use serde_json::json;

use crate::common::invariants;
use crate::common::*;

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
    // (a type that would write pool names into the node's capability signature)
    let bad_service = {
        let mut f = fixture("node_register_first");
        f["capability_by_type"] = json!([{"type": "x|y|pub:zh:en pub:en:zh", "ready": true}]);
        f
    };
    // (descriptive fields of 20 KB, kept on the node's record)
    let bloated = {
        let mut f = fixture("node_register_first");
        f["hardware"] = json!({"gpu": "x".repeat(20 * 1024)});
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
        (bad_service.to_string(), "INVALID_CAPABILITY_SCHEMA"),
        (bloated.to_string(), "INVALID_MESSAGE"),
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
    // (test grace 400 ms)
    eventually(Duration::from_secs(5), "offline after the grace", || {
        let (mut c, id) = (c.clone(), id.clone());
        async move { (node_hash(&mut c, &id).await["state"] == "offline").then_some(()) }
    })
    .await;
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
    // (applied when its script has run: waited for, not assumed within the 300 ms)
    let h = eventually(Duration::from_secs(5), "the heartbeat applied", || {
        let (mut c, id) = (c.clone(), id.clone());
        async move {
            let h = node_hash(&mut c, &id).await;
            (h.get("cpu").map(String::as_str) == Some("77.2")).then_some(h)
        }
    })
    .await;
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

/// DESIGN §8 "hello timeouts" (audit finding: untested): a socket that does not say what it
/// is within `ws.hello_timeout_ms` — `node_register` on `/ws/node`, `session_init` on
/// `/ws/session` — is closed with 1008 and leaves nothing behind; one that says it in time
/// stays open.
#[tokio::test]
async fn a_peer_that_never_says_hello_is_closed_with_1008() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.ws.hello_timeout_ms = 300).await;
    let mut c = redis.client().await;
    for path in ["/ws/node", "/ws/session"] {
        let at = std::time::Instant::now();
        let mut silent = WsClient::connect(&ws_url(&inst, path)).await;
        assert_eq!(silent.expect_close().await, Some(1008), "{path}");
        assert!(
            at.elapsed() >= Duration::from_millis(300),
            "{path}: closed after {:?}, before the hello timeout",
            at.elapsed()
        );
    }
    assert!(node_keys(&mut c).await.is_empty(), "nothing registered");
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    node.register_id(fixture("node_register_first"), None).await;
    node.expect_silence(Duration::from_millis(600)).await;
    invariants::check(&mut c).await;
}

/// A peer that sends nothing at all — not even the pongs to the instance's pings — for
/// `ws.idle_timeout_ms` is closed with 4003, counted as `idle` (audit finding: untested).
#[tokio::test]
async fn a_silent_peer_is_closed_as_idle() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.ws.ping_interval_ms = 100;
        c.ws.idle_timeout_ms = 300;
    })
    .await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    node.register_id(fixture("node_register_first"), None).await;
    // Not reading: the pings wait unanswered in the socket.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // The close frame is there, but reading it makes the client answer the queued pings
    // on a socket the instance has closed: the read may end in that error first.
    let code = node.expect_close().await;
    assert!(matches!(code, Some(4003) | None), "{code:?}");
    let m = metrics_text(&inst).await;
    assert!(
        m.contains(r#"switchyard_messages_rejected_total{kind="node",detail="idle"} 1"#),
        "{m}"
    );
    invariants::check(&mut c).await;
}

/// Audit finding: a `node_register`'s descriptive fields are held to 16 KB together, but a
/// heartbeat's `installed_services` replaced the connection's copy unchecked, and a
/// re-registration (the record found missing: expired, or Redis wiped) stored that copy.
/// Now such services are not kept (`INVALID_MESSAGE` says so), while the rest of the
/// heartbeat counts (refusing it would take the node offline for its description): the
/// record re-created later holds the registration's services.
#[tokio::test]
async fn a_heartbeat_cannot_grow_the_node_description_past_its_bound() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;
    let registered = node_hash(&mut c, &id).await["installed_services"].clone();
    let beat_before = node_hash(&mut c, &id).await["last_hb"].clone();
    let mut hb = fixture("node_heartbeat");
    hb["node_id"] = json!(id);
    hb["installed_services"] = json!(vec!["x".repeat(1024); 20]);
    node.send(&hb).await;
    let e = node.recv_type("error").await;
    assert_eq!(e["code"], "INVALID_MESSAGE", "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("installed_services not kept")),
        "{e}"
    );
    eventually(Duration::from_secs(5), "the heartbeat counted", || {
        let (mut c, id, before) = (c.clone(), id.clone(), beat_before.clone());
        async move { (node_hash(&mut c, &id).await["last_hb"] != before).then_some(()) }
    })
    .await;
    // The record disappears; the next heartbeat registers the node again from what the
    // connection holds.
    let _: () = redis::AsyncCommands::del(&mut c, format!("{}node:{id}", invariants::PREFIX))
        .await
        .expect("del");
    let mut hb = fixture("node_heartbeat");
    hb["node_id"] = json!(id);
    node.send(&hb).await;
    let services = eventually(Duration::from_secs(5), "registered again", || {
        let (mut c, id) = (c.clone(), id.clone());
        async move {
            let h = node_hash(&mut c, &id).await;
            h.get("installed_services").cloned()
        }
    })
    .await;
    assert_eq!(services, registered);
    invariants::check(&mut c).await;
}

/// A heartbeat whose capabilities fail validation (a service type with a space) changes no
/// capability, says so, and still counts: refusing it whole took a live node offline after
/// the liveness, its jobs failed over (protocol audit).
#[tokio::test]
async fn a_heartbeat_with_invalid_capabilities_still_keeps_the_node_alive() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;
    let before = node_hash(&mut c, &id).await;
    let mut hb = fixture("node_heartbeat");
    hb["node_id"] = json!(id);
    hb["capability_by_type"] = json!([{"type": "asr", "ready": true},
        {"type": "speaker diarization", "ready": true}]);
    node.send(&hb).await;
    let e = node.recv_type("error").await;
    assert_eq!(e["code"], "INVALID_CAPABILITY_SCHEMA", "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("capabilities not changed")),
        "{e}"
    );
    let after = eventually(Duration::from_secs(5), "the heartbeat counted", || {
        let (mut c, id, beat) = (c.clone(), id.clone(), before["last_hb"].clone());
        async move {
            let h = node_hash(&mut c, &id).await;
            (h["last_hb"] != beat).then_some(h)
        }
    })
    .await;
    assert_eq!(after["capsig"], before["capsig"], "capabilities unchanged");
    assert_eq!(after["state"], "ready");
    invariants::check(&mut c).await;
}
