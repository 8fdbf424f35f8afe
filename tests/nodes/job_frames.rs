//! What a node says about a job is bounded before it reaches Redis or a session: a job id
//! that is not one the scheduler made, a failure code that would pose as the scheduler's, a
//! failure message of any length, timings beyond what the script counts exactly (audit
//! findings).

use std::time::Duration;

use serde_json::json;

use crate::common::actors::{
    answer, answer_with_tts, assign, next_of, open_session, terminals, utterance,
};
use crate::common::invariants;
use crate::common::jobs::node;
use crate::common::*;

const T: Duration = Duration::from_secs(5);

/// An instance, a node and a session whose utterance 0 the node was given: the instance,
/// the node (with its id), the session and the `job_assign`.
async fn assigned(
    redis: &RedisServer,
) -> (
    switchyard::server::Running,
    (WsClient, String),
    WsClient,
    serde_json::Value,
) {
    let inst = start_instance(redis).await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    s.send(&utterance(&sid, 0)).await;
    let a = assign(&mut n).await;
    (inst, (n, nid), s, a)
}

/// A `job_id` such as `<id>:audio` named another key of the job (a string, not a hash):
/// the script failed on it after the instance had staged the result's body, and nothing
/// removed that body. Now the id is refused before anything is written.
#[tokio::test]
async fn a_made_up_job_id_is_refused_and_stages_nothing() {
    let redis = RedisServer::start().await;
    let (_inst, (mut n, nid), mut s, a) = assigned(&redis).await;
    let mut c = redis.client().await;
    let jid = a["job_id"].as_str().expect("job_id").to_string();
    for bad in [format!("{jid}:audio"), "x".repeat(65), String::new()] {
        let mut r = answer_with_tts(&a, &nid, "big", 8192);
        r["job_id"] = json!(bad);
        n.send(&r).await;
        let e = next_of(&mut n, "error", T).await.expect("error");
        assert_eq!(e["code"], "INVALID_MESSAGE", "{e}");
        assert!(
            e["message"].as_str().unwrap_or("").contains("job_id"),
            "{e}"
        );
    }
    let staged: Vec<String> = redis::cmd("KEYS")
        .arg("*stage:*")
        .query_async(&mut c)
        .await
        .expect("KEYS");
    assert!(staged.is_empty(), "staged bodies left behind: {staged:?}");
    // the job is untouched: its real result still finishes it
    n.send(&answer(&a, &nid, "real")).await;
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(got[0]["type"], "translation_result", "{got:?}");
    invariants::check(&mut c).await;
}

/// A node's failure code that is the scheduler's own (`SESSION_CLOSED` would tell the client
/// its session is closed) or not a code at all ends the job as `PROCESSING_ERROR`; its message
/// is kept to 1 KB, and the dashboard's list of recent failures (cut to 160 bytes) is cut at a
/// character, so the console still reads it.
#[tokio::test]
async fn a_nodes_failure_cannot_pose_as_the_scheduler_and_is_bounded() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    // 159 ASCII bytes, then a 2-byte character across the list's 160-byte cut
    let message = format!("{}é{}", "a".repeat(159), "b".repeat(3000));
    for (idx, code) in [(0, "SESSION_CLOSED"), (1, "not a code")] {
        s.send(&utterance(&sid, idx)).await;
        let a = assign(&mut n).await;
        let mut e = fixture("job_result_processing_error");
        for k in ["job_id", "attempt_id", "session_id", "utterance_index"] {
            e[k] = a[k].clone();
        }
        e["node_id"] = json!(nid);
        e["error"] = json!({"code": code, "message": message});
        n.send(&e).await;
        let got = terminals(&mut s, 1, T).await;
        assert_eq!(got[0]["code"], "PROCESSING_ERROR", "{code}");
        let m = got[0]["message"].as_str().expect("message");
        assert_eq!(m.len(), 1024, "cut to 1 KB");
        assert!(m.starts_with(&message[..161]), "the node's words: {m}");
    }
    let (status, snap) = get_json(&http_url(&inst, "/api/v1/console/snapshot")).await;
    assert_eq!(status, 200, "{snap}");
    let failures = snap["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 2, "{snap}");
    for f in failures {
        assert_eq!(f["code"], "PROCESSING_ERROR", "{f}");
        assert_eq!(
            f["message"],
            "a".repeat(159),
            "cut before the character: {f}"
        );
    }
    invariants::check(&mut c).await;
}

/// Timings beyond 2^53 ms were formatted by the script as negative numbers; they are now
/// taken as absent, and no timing the session gets is negative.
#[tokio::test]
async fn timings_beyond_what_the_script_counts_are_ignored() {
    let redis = RedisServer::start().await;
    let (_inst, (mut n, nid), mut s, a) = assigned(&redis).await;
    let mut c = redis.client().await;
    let mut r = answer(&a, &nid, "t");
    r["node_completed_at_ms"] = json!(1e300);
    r["processing_time_ms"] = json!(5);
    n.send(&r).await;
    let got = terminals(&mut s, 1, T).await;
    let timings = got[0]["network_timings"]
        .as_object()
        .expect("network_timings");
    // without the node's clock, the overhead is split between the two hops
    for k in [
        "scheduler_to_node_ms",
        "node_to_scheduler_ms",
        "scheduler_to_web_ms",
    ] {
        let v = &timings[k];
        assert!(
            v.as_i64().is_some_and(|v| (0..5_000).contains(&v)),
            "{k}: {v}"
        );
    }
    invariants::check(&mut c).await;
}

/// An `asr_partial`'s text reaches the session cut to 4 KB at a character: a node sending
/// megabyte partials as fast as it can grew an instance by a gigabyte for one slow session
/// (resource audit: the socket queue counts messages, not bytes).
#[tokio::test]
async fn a_partial_text_reaches_the_session_cut_at_4_kb() {
    let redis = RedisServer::start().await;
    let (_inst, (mut n, nid), mut s, a) = assigned(&redis).await;
    let mut c = redis.client().await;
    // 3-byte characters: 4096 is not a boundary, the cut lands on 4095
    let text = "語".repeat(3000);
    n.send(
        &json!({"type": "asr_partial", "job_id": a["job_id"], "node_id": nid,
        "text": text, "is_final": false}),
    )
    .await;
    let Some(p) = next_of(&mut s, "asr_partial", T).await else {
        panic!("no asr_partial; the node got {:?}", n.next(T).await);
    };
    let got = p["text"].as_str().expect("text");
    assert_eq!(got.len(), 4095, "cut at a character under 4 KB");
    assert!(text.starts_with(got));
    n.send(&answer(&a, &nid, "done")).await;
    assert_eq!(terminals(&mut s, 1, T).await.len(), 1);
    invariants::check(&mut c).await;
}
