//! Frames on the session socket (DESIGN §6 "malformed / oversized / unknown frames"; the node
//! socket's are in tests/nodes/frames.rs): errors that change nothing, 1009 for a frame over
//! the limit, and the session still there for its resume.

use std::collections::HashMap;

use super::*;

#[tokio::test]
async fn malformed_binary_and_oversized_session_frames_change_nothing() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    // Before session_init: refused, naming the utterance.
    let mut early = WsClient::connect(&ws_url(&inst, "/ws/session")).await;
    early.send(&utterance("s-00000001", 2)).await;
    let e = early.recv_type("error").await;
    assert_eq!(e["code"], "INVALID_SESSION", "{e}");
    assert_eq!(e["details"], json!({"utterance_index": 2}), "{e}");
    let (mut s, sid) = session(&inst).await;
    let key = format!("{PREFIX}session:{sid}");
    let before: HashMap<String, String> = c.hgetall(&key).await.unwrap();
    for frame in [
        "not json",
        "[1,2]",
        r#"{"type":"utterance","session_id":7}"#,
    ] {
        s.send_text(frame).await;
        let e = s.recv_type("error").await;
        assert_eq!(e["code"], "INVALID_MESSAGE", "{frame}: {e}");
    }
    s.send_binary(vec![1, 2, 3]).await;
    assert_eq!(s.recv_type("error").await["code"], "INVALID_MESSAGE");
    let after: HashMap<String, String> = c.hgetall(&key).await.unwrap();
    assert_eq!(after, before, "nothing changed");

    // Over the frame limit (the tests' 64 KiB): 1009, and the session stays for its resume.
    s.send_text(&"x".repeat(70 * 1024)).await;
    assert_eq!(s.expect_close().await, Some(1009));
    let m = metrics_text(&inst).await;
    assert!(
        m.contains(r#"switchyard_messages_rejected_total{kind="session",detail="oversized"} 1"#),
        "{m}"
    );
    let state: Option<String> = c.hget(&key, "state").await.unwrap();
    assert_eq!(state.as_deref(), Some("open"));
    invariants::check(&mut c).await;
}

/// Audit finding: a session's free-form fields were kept unbounded, and a `session_init`'s
/// are copied into every job it cuts (its `trace_id` stays on each finished job's record
/// for `jobs.record_ttl_ms`): one frame of megabytes, then many small ones, filled Redis.
/// A field over its bound is refused, naming it, and nothing is written; so is a resume
/// that names no possible session or index.
#[tokio::test]
async fn oversized_free_form_fields_are_refused_and_nothing_is_kept() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let url = ws_url(&inst, "/ws/session");
    let mut s = WsClient::connect(&url).await;
    let long = "x".repeat(40 * 1024);
    // (`src_lang` / `tgt_lang` in two-way mode, which routes by `lang_a` / `lang_b`: kept
    // with the session and copied into every job, unchecked before the third audit)
    let two_way = |field: &str, value: &serde_json::Value| {
        let mut init = fixture("session_init_two_way");
        init[field] = value.clone();
        init
    };
    let cases = [
        ("trace_id", json!(long)),
        ("client_version", json!(long)),
        ("features", json!({"k": long})),
        ("auto_langs", json!(vec!["zh"; 17])),
        // (kept with the session and copied into every job, though only `two_way_auto`
        // routes by them: unchecked before the second audit)
        ("lang_a", json!(long)),
        ("lang_b", json!("en:pub")),
        // (a resume that names no possible session or index: it opened a new session)
        ("resume_session_id", json!("s-0000:0001")),
        ("last_received_index", json!(-2)),
    ];
    let one_way = cases.iter().map(|(f, v)| {
        let mut init = fixture("session_init_one_way");
        init[*f] = v.clone();
        (*f, init)
    });
    let two_way = [
        ("src_lang", two_way("src_lang", &json!(long))),
        ("tgt_lang", two_way("tgt_lang", &json!("en:pub"))),
    ];
    for (field, init) in one_way.chain(two_way) {
        s.send(&init).await;
        let e = s.recv_type("error").await;
        assert_eq!(e["code"], "INVALID_MESSAGE", "{field}: {e}");
        assert!(
            e["message"].as_str().unwrap_or("").starts_with(field),
            "{e}"
        );
    }
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}session:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(keys.is_empty(), "no session was opened: {keys:?}");
    // An utterance's own trace id: refused naming the utterance, no job made.
    let (mut s, sid) = session(&inst).await;
    for (field, value) in [
        ("trace_id", json!(long)),
        ("audio_format", json!(long)),
        ("lang_a", json!(long)),
        ("src_lang", json!(long)),
    ] {
        let mut u = utterance(&sid, 0);
        u[field] = value;
        s.send(&u).await;
        let e = s.recv_type("error").await;
        assert_eq!(e["code"], "INVALID_MESSAGE", "{field}: {e}");
        assert_eq!(e["details"], json!({"utterance_index": 0}), "{e}");
        assert!(
            e["message"].as_str().unwrap_or("").starts_with(field),
            "{e}"
        );
    }
    let jobs: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}job:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(jobs.is_empty(), "{jobs:?}");
    invariants::check(&mut c).await;
}
