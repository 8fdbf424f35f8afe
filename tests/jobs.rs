//! The job path end to end: sessions, audio cuts, dispatch with reservation, fencing,
//! failover and ordered delivery, with real lingua-shaped frames against a real
//! redis-server. Every scenario ends with the invariant checker.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::actors::*;
use common::invariants::{self, PREFIX};
use common::*;
use redis::AsyncCommands;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);

async fn node(
    inst: &switchyard::server::Running,
    tweak: impl FnOnce(&mut Value),
) -> (WsClient, String) {
    let mut n = WsClient::connect(&ws_url(inst, "/ws/node")).await;
    let mut f = fixture("node_register_first");
    tweak(&mut f);
    let id = n.register_id(f, None).await;
    (n, id)
}

async fn session(inst: &switchyard::server::Running) -> (WsClient, String) {
    open_session(
        &ws_url(inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await
}

/// Two idle nodes and a session; the utterance `u` builds for the session id is sent.
/// Returns the node that got its `job_assign` (with its id), the other node (with its id),
/// the session and the assign.
async fn first_of_two_nodes(
    inst: &switchyard::server::Running,
    u: impl FnOnce(&str) -> Value,
) -> ((WsClient, String), (WsClient, String), WsClient, Value) {
    let mut a = node(inst, |_| {}).await;
    let mut b = node(inst, |_| {}).await;
    let (mut s, sid) = session(inst).await;
    s.send(&u(&sid)).await;
    let (a_first, assigned) = tokio::select! {
        v = assign(&mut a.0) => (true, v),
        v = assign(&mut b.0) => (false, v),
    };
    let (first, second) = if a_first { (a, b) } else { (b, a) };
    (first, second, s, assigned)
}

/// The node's MODEL_NOT_AVAILABLE answer to `assign`.
fn model_not_available(assign: &Value, node_id: &str) -> Value {
    let mut mna = fixture("job_result_model_not_available");
    for k in ["job_id", "attempt_id", "session_id", "utterance_index"] {
        mna[k] = assign[k].clone();
    }
    mna["node_id"] = json!(node_id);
    mna
}

async fn job(c: &mut redis::aio::MultiplexedConnection, id: &str) -> HashMap<String, String> {
    c.hgetall(format!("{PREFIX}job:{id}")).await.unwrap()
}

#[tokio::test]
async fn happy_path_with_lingua_frames_and_no_ack() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    let u = utterance(&sid, 0);
    s.send(&u).await;
    let a = assign(&mut n).await;
    assert_eq!(a["attempt_id"], 1);
    assert_eq!(a["session_id"], sid.as_str());
    assert_eq!(a["utterance_index"], 0);
    assert_eq!(
        (a["src_lang"].as_str(), a["tgt_lang"].as_str()),
        (Some("zh"), Some("en"))
    );
    assert_eq!(
        a["audio"], u["audio"],
        "the utterance audio reaches the node unchanged"
    );
    assert_eq!(a["audio_format"], "opus");
    assert_eq!(a["sample_rate"], 16000);
    assert_eq!(a["trace_id"], u["trace_id"]);
    assert_eq!(
        a["pipeline"],
        json!({"use_asr": true, "use_nmt": true, "use_tts": true})
    );
    assert_eq!(a["is_manual_cut"], true);
    let jid = a["job_id"].as_str().unwrap().to_string();
    assert_eq!(job(&mut c, &jid).await["state"], "DISPATCHED");
    let reserved: String = c
        .hget(format!("{PREFIX}node:{nid}"), "reserved")
        .await
        .unwrap();
    assert_eq!(reserved, "1");

    n.send(&answer(&a, &nid, "Let's start the test")).await;
    let mut events = Vec::new();
    let result = loop {
        let v = s.next(T).await.expect("message");
        if v["type"] == "ui_event" {
            events.push(v["event"].as_str().unwrap().to_string());
        } else if v["type"] == "translation_result" {
            break v;
        }
    };
    assert_eq!(result["utterance_index"], 0);
    assert_eq!(result["job_id"], jid.as_str());
    assert_eq!(result["text_asr"], "我们开始测试");
    assert_eq!(result["text_translated"], "Let's start the test");
    assert_eq!(result["tts_audio"], "b3B1cy1ieXRlcw==");
    assert_eq!(result["service_timings"]["total_ms"], 1700);
    assert!(events.contains(&"DISPATCHED".to_string()), "{events:?}");
    assert_eq!(job(&mut c, &jid).await["state"], "FINISHED");
    let reserved: String = c
        .hget(format!("{PREFIX}node:{nid}"), "reserved")
        .await
        .unwrap();
    assert_eq!(reserved, "0");
    let audio: bool = c.exists(format!("{PREFIX}job:{jid}:audio")).await.unwrap();
    assert!(!audio, "payload dropped once the job is done");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn ack_and_started_shorten_detection_and_emit_node_accepted() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |f| f["supports_job_ack"] = json!(true)).await;
    let (mut s, sid) = session(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    let a = assign(&mut n).await;
    let jid = a["job_id"].as_str().unwrap().to_string();
    let deadline_before: i64 = job(&mut c, &jid).await["deadline"].parse().unwrap();
    let mut ack = fixture("job_ack");
    ack["job_id"] = a["job_id"].clone();
    ack["node_id"] = json!(nid);
    n.send(&ack).await;
    loop {
        let v = s.next(T).await.expect("ui_event");
        if v["event"] == "NODE_ACCEPTED" {
            break;
        }
    }
    let j = job(&mut c, &jid).await;
    assert_eq!(j["state"], "ACCEPTED");
    assert!(
        j["deadline"].parse::<i64>().unwrap() > deadline_before,
        "ack deadline became the run deadline"
    );
    ack["type"] = json!("job_started");
    n.send(&ack).await;
    eventually(T, "RUNNING", || {
        let mut c = c.clone();
        let jid = jid.clone();
        async move { (job(&mut c, &jid).await["state"] == "RUNNING").then_some(()) }
    })
    .await;
    n.send(&answer(&a, &nid, "ok")).await;
    let r = terminals(&mut s, 1, T).await;
    assert_eq!(r[0]["type"], "translation_result");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn streamed_audio_is_cut_on_is_final_and_an_empty_cut_makes_no_job() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    let mut expected = Vec::new();
    for seq in 0..3 {
        let mut ch = fixture("audio_chunk");
        ch["session_id"] = json!(sid);
        ch["seq"] = json!(seq);
        expected.extend(B64.decode(ch["payload"].as_str().unwrap()).unwrap());
        s.send(&ch).await;
    }
    let mut fin = fixture("audio_chunk_final_empty");
    fin["session_id"] = json!(sid);
    s.send(&fin).await;
    let a = assign(&mut n).await;
    assert_eq!(
        B64.decode(a["audio"].as_str().unwrap()).unwrap(),
        expected,
        "payloads concatenated"
    );
    assert_eq!(a["utterance_index"], 0);
    assert_eq!(a["padding_ms"], 280);
    assert_eq!(a["is_manual_cut"], true);
    assert!(a["turn_id"].as_str().is_some_and(|t| t.starts_with(&sid)));
    // An is_final with nothing buffered creates no job and uses no index.
    s.send(&fin).await;
    assert!(
        next_of(&mut n, "job_assign", Duration::from_millis(400))
            .await
            .is_none()
    );
    n.send(&answer(&a, &nid, "one")).await;
    let r = terminals(&mut s, 1, T).await;
    assert_eq!(r[0]["utterance_index"], 0);
    let next: String = c
        .hget(format!("{PREFIX}session:{sid}"), "next_index")
        .await
        .unwrap();
    assert_eq!(next, "1");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn two_sessions_over_three_nodes_of_capacity_two_never_oversell_and_spread_load() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.jobs.queue_wait_ms = 10_000).await;
    let mut c = redis.client().await;
    let mut reg = fixture("node_register_first");
    reg["max_concurrent_jobs"] = json!(2);
    let url = ws_url(&inst, "/ws/node");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(AutoNode::start(&url, reg.clone(), Duration::from_millis(120)).await);
    }
    let (mut s1, sid1) = session(&inst).await;
    let (mut s2, sid2) = session(&inst).await;
    const N: u64 = 15;
    for i in 0..N {
        s1.send(&utterance(&sid1, i)).await;
        s2.send(&utterance(&sid2, i)).await;
    }
    for (s, sid) in [(&mut s1, &sid1), (&mut s2, &sid2)] {
        let got = terminals(s, N as usize, Duration::from_secs(20)).await;
        let idx: Vec<u64> = got
            .iter()
            .map(|v| v["utterance_index"].as_u64().unwrap())
            .collect();
        assert_eq!(
            idx,
            (0..N).collect::<Vec<_>>(),
            "{sid}: in order, each once"
        );
        assert!(
            got.iter().all(|v| v["type"] == "translation_result"),
            "{got:?}"
        );
    }
    for n in &nodes {
        assert!(
            n.peak.load(std::sync::atomic::Ordering::SeqCst) <= 2,
            "node {} over capacity",
            n.id
        );
        assert!(
            n.jobs() >= 4,
            "load spread: node {} got {} of {}",
            n.id,
            n.jobs(),
            2 * N
        );
    }
    assert_eq!(
        nodes.iter().map(AutoNode::jobs).sum::<usize>(),
        2 * N as usize
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_job_waits_in_the_queue_and_is_served_when_capacity_frees() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |f| f["max_concurrent_jobs"] = json!(1)).await;
    let (mut s, sid) = session(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    s.send(&utterance(&sid, 1)).await;
    let a0 = assign(&mut n).await;
    assert!(
        next_of(&mut n, "job_assign", Duration::from_millis(300))
            .await
            .is_none(),
        "capacity 1"
    );
    let queued: Vec<String> = c
        .lrange(format!("{PREFIX}queue:pub:zh:en"), 0, -1)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(job(&mut c, &queued[0]).await["state"], "QUEUED");
    invariants::check(&mut c).await;
    n.send(&answer(&a0, &nid, "zero")).await;
    let a1 = assign(&mut n).await;
    assert_eq!(a1["utterance_index"], 1);
    n.send(&answer(&a1, &nid, "one")).await;
    let got = terminals(&mut s, 2, T).await;
    assert_eq!(got[1]["text_translated"], "one");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_queued_job_times_out_with_no_available_node() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.jobs.queue_wait_ms = 300).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |f| f["max_concurrent_jobs"] = json!(1)).await;
    let (mut s, sid) = session(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    s.send(&utterance(&sid, 1)).await;
    let a0 = assign(&mut n).await;
    // Index 1 fails after the queue wait; its error is released after the reorder window
    // although index 0 is still running.
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(got[0]["type"], "error");
    assert_eq!(got[0]["code"], "NO_AVAILABLE_NODE");
    assert_eq!(got[0]["utterance_index"], 1);
    n.send(&answer(&a0, &nid, "zero")).await;
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(got[0]["utterance_index"], 0);
    assert_eq!(got[0]["type"], "translation_result");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_timed_out_attempt_fails_over_to_another_node_and_its_late_result_is_rejected() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.jobs.run_timeout_ms = 400).await;
    let mut c = redis.client().await;
    let (mut a, aid) = node(&inst, |_| {}).await;
    let (mut b, bid) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    // Whichever node got attempt 1 stays silent.
    let (first, first_id, second, second_id, a1) = tokio::select! {
        v = assign(&mut a) => (&mut a, aid.clone(), &mut b, bid.clone(), v),
        v = assign(&mut b) => (&mut b, bid.clone(), &mut a, aid.clone(), v),
    };
    assert_eq!(a1["attempt_id"], 1);
    let cancel = next_of(first, "job_cancel", T)
        .await
        .expect("job_cancel to the old node");
    assert_eq!(cancel["job_id"], a1["job_id"]);
    let a2 = assign(second).await;
    assert_eq!(a2["job_id"], a1["job_id"]);
    assert_eq!(a2["attempt_id"], 2);
    // The late result of attempt 1 is fenced off.
    first.send(&answer(&a1, &first_id, "late")).await;
    let err = next_of(first, "error", T).await.expect("stale error");
    assert!(
        err["message"].as_str().unwrap().contains("rejected"),
        "{err}"
    );
    second.send(&answer(&a2, &second_id, "fresh")).await;
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(got[0]["text_translated"], "fresh");
    s.expect_silence(Duration::from_millis(300)).await;
    let j = job(&mut c, a1["job_id"].as_str().unwrap()).await;
    assert_eq!(j["tried"], first_id);
    assert_eq!(j["failovers"], "1");
    let m = metrics_text(&inst).await;
    assert!(
        m.contains("switchyard_stale_messages_total{kind=\"node\"} 1"),
        "{m}"
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn attempts_run_out_after_max_attempts_with_job_timeout() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.jobs.run_timeout_ms = 300;
        c.jobs.max_attempts = 2;
    })
    .await;
    let mut c = redis.client().await;
    let (_a, _) = node(&inst, |_| {}).await;
    let (_b, _) = node(&inst, |_| {}).await;
    let (_c3, _) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(got[0]["type"], "error");
    assert_eq!(got[0]["code"], "JOB_TIMEOUT");
    let jid = got[0]["job_id"].as_str().unwrap();
    assert_eq!(job(&mut c, jid).await["attempt"], "2");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn model_not_available_marks_the_service_and_reroutes_at_once() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let ((mut first, first_id), (mut second, second_id), mut s, a1) =
        first_of_two_nodes(&inst, |sid| utterance(sid, 0)).await;
    let sid = a1["session_id"].as_str().expect("session id").to_string();
    let started = std::time::Instant::now();
    first.send(&model_not_available(&a1, &first_id)).await;
    let a2 = assign(&mut second).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "re-dispatched at once, not by timeout"
    );
    assert_eq!(a2["attempt_id"], 2);
    let down: Option<String> = c
        .hget(format!("{PREFIX}node:{first_id}"), "down:nmt")
        .await
        .unwrap();
    assert!(down.is_some(), "nmt marked unavailable on {first_id}");
    second.send(&answer(&a2, &second_id, "rerouted")).await;
    assert_eq!(
        terminals(&mut s, 1, T).await[0]["text_translated"],
        "rerouted"
    );
    // The next utterance avoids the node whose nmt is down.
    s.send(&utterance(&sid, 1)).await;
    let a3 = assign(&mut second).await;
    assert_eq!(a3["utterance_index"], 1);
    assert!(
        next_of(&mut first, "job_assign", Duration::from_millis(200))
            .await
            .is_none()
    );
    invariants::check(&mut c).await;
}

/// The local node gets the client's own base64 text (the instance passes it on instead of
/// encoding the bytes again); the failover node gets the stored bytes encoded. Both must be
/// the very text the client sent, for ~8 KB of arbitrary bytes.
#[tokio::test]
async fn job_assign_audio_is_the_clients_base64_on_dispatch_and_on_failover() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let bytes: Vec<u8> = (0..8_191u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let text = B64.encode(&bytes);
    let ((mut first, first_id), (mut second, _), _s, a1) = first_of_two_nodes(&inst, |sid| {
        let mut u = utterance(sid, 0);
        u["audio"] = json!(text);
        u
    })
    .await;
    assert_eq!(a1["audio"], text.as_str(), "dispatch: the client's text");
    first.send(&model_not_available(&a1, &first_id)).await;
    let a2 = assign(&mut second).await;
    assert_eq!(a2["attempt_id"], 2);
    assert_eq!(
        a2["audio"],
        text.as_str(),
        "failover: the stored bytes, encoded"
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn processing_error_fails_the_utterance_with_the_node_message() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    let a = assign(&mut n).await;
    let mut e = fixture("job_result_processing_error");
    for k in ["job_id", "attempt_id", "session_id", "utterance_index"] {
        e[k] = a[k].clone();
    }
    e["node_id"] = json!(nid);
    n.send(&e).await;
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(got[0]["code"], "PROCESSING_ERROR");
    assert_eq!(got[0]["message"], "DUPLICATE_UTTERANCE_INDEX: s-9A1B2C3D/4");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_node_that_disconnects_mid_job_has_its_job_failed_over() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut a, _) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    let a1 = assign(&mut a).await;
    let (mut b, bid) = node(&inst, |_| {}).await;
    a.drop_connection(); // no close frame: offline after the 400 ms grace
    let a2 = assign(&mut b).await;
    assert_eq!(a2["job_id"], a1["job_id"]);
    assert_eq!(a2["attempt_id"], 2);
    b.send(&answer(&a2, &bid, "after failover")).await;
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(got[0]["text_translated"], "after failover");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_resent_utterance_creates_no_second_job() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    s.send(&utterance(&sid, 0)).await;
    let a = assign(&mut n).await;
    assert!(
        next_of(&mut n, "job_assign", Duration::from_millis(300))
            .await
            .is_none()
    );
    n.send(&answer(&a, &nid, "once")).await;
    terminals(&mut s, 1, T).await;
    s.send(&utterance(&sid, 0)).await; // after the outcome too: still the same job
    s.expect_silence(Duration::from_millis(300)).await;
    assert!(
        next_of(&mut n, "job_assign", Duration::from_millis(100))
            .await
            .is_none()
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn results_finishing_out_of_order_are_delivered_in_order() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    let mut assigns = BTreeMap::new();
    for i in 0..3 {
        s.send(&utterance(&sid, i)).await;
        let a = assign(&mut n).await;
        assigns.insert(a["utterance_index"].as_u64().unwrap(), a);
    }
    for i in [2, 1, 0] {
        n.send(&answer(&assigns[&i], &nid, &format!("r{i}"))).await;
    }
    let got = terminals(&mut s, 3, T).await;
    let idx: Vec<u64> = got
        .iter()
        .map(|v| v["utterance_index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1, 2]);
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_slow_earlier_job_holds_later_results_only_for_the_reorder_window() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await; // reorder window 400 ms
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    let a0 = assign(&mut n).await;
    s.send(&utterance(&sid, 1)).await;
    let a1 = assign(&mut n).await;
    let started = std::time::Instant::now();
    n.send(&answer(&a1, &nid, "one")).await;
    let got = terminals(&mut s, 1, T).await;
    let waited = started.elapsed();
    assert_eq!(got[0]["utterance_index"], 1);
    assert_eq!(got[0]["text_translated"], "one");
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    n.send(&answer(&a0, &nid, "zero")).await;
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(
        got[0]["utterance_index"], 0,
        "the late index still gets its one result"
    );
    assert_eq!(got[0]["text_translated"], "zero");
    s.expect_silence(Duration::from_millis(600)).await;
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_skipped_index_gets_missing_result_after_the_window() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    for i in [0, 2] {
        s.send(&utterance(&sid, i)).await;
        let a = assign(&mut n).await;
        n.send(&answer(&a, &nid, "x")).await;
    }
    let got = terminals(&mut s, 3, T).await;
    let kinds: Vec<(u64, &str)> = got
        .iter()
        .map(|v| {
            (
                v["utterance_index"].as_u64().unwrap(),
                v["type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (0, "translation_result"),
            (1, "missing_result"),
            (2, "translation_result")
        ]
    );
    assert_eq!(got[1]["reason"], "gap_timeout");
    s.expect_silence(Duration::from_millis(600)).await;
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn max_duration_cuts_keep_the_turn_on_one_node() {
    let redis = RedisServer::start().await;
    // ~600 Opus bytes ≈ 200 ms: every fixture chunk (≈ 600 bytes) forces a max-duration cut.
    // (The 30-byte manual cut below is a turn marker, not speech: no minimum cut length.)
    let inst = start_tweaked(&redis, |c| {
        c.session.max_duration_ms = 200;
        c.session.min_cut_ms = 0;
    })
    .await;
    let mut c = redis.client().await;
    let (mut a, _) = node(&inst, |_| {}).await;
    let (mut b, _) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    let mut ch = fixture("audio_chunk");
    ch["session_id"] = json!(sid);
    s.send(&ch).await;
    let (first, other, j1) = tokio::select! {
        v = assign(&mut a) => (&mut a, &mut b, v),
        v = assign(&mut b) => (&mut b, &mut a, v),
    };
    assert_eq!(j1["is_max_duration_triggered"], true);
    let turn = j1["turn_id"].clone();
    // The first node is now busier than the other; only turn affinity sends it the next one.
    s.send(&ch).await;
    let j2 = assign(first).await;
    assert_eq!(j2["turn_id"], turn);
    let mut fin = fixture("audio_chunk_final_empty");
    fin["session_id"] = json!(sid);
    fin["payload"] = json!(B64.encode([1u8; 30]));
    s.send(&fin).await;
    let j3 = assign(first).await;
    assert_eq!(j3["turn_id"], turn, "the manual cut ends the same turn");
    assert!(
        next_of(other, "job_assign", Duration::from_millis(200))
            .await
            .is_none()
    );
    // The next turn is a new one.
    s.send(&fin).await;
    let j4 = tokio::select! { v = assign(first) => v, v = assign(other) => v };
    assert_ne!(j4["turn_id"], turn);
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_pause_cut_fires_after_the_receiving_instance_is_gone() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let b = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, _) = node(&b, |_| {}).await;
    let (mut s, sid) = session(&a).await;
    let mut ch = fixture("audio_chunk");
    ch["session_id"] = json!(sid);
    s.send(&ch).await;
    s.send(&ch).await;
    // Wait until both chunks are in Redis, then the receiving instance dies.
    eventually(T, "chunks buffered", || {
        let mut c = c.clone();
        let sid = sid.clone();
        async move {
            let b: String = c
                .hget(format!("{PREFIX}session:{sid}"), "buf_bytes")
                .await
                .ok()?;
            (b.parse::<u64>().ok()? > 1000).then_some(())
        }
    })
    .await;
    a.abort();
    let j = assign(&mut n).await;
    assert_eq!(j["is_timeout_triggered"], true);
    assert_eq!(j["padding_ms"], 220);
    assert_eq!(j["session_id"], sid.as_str());
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn tenant_sessions_prefer_their_nodes_and_strict_tenants_never_leave_them() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.jobs.strict_tenants = vec!["strictco".into()]).await;
    let mut c = redis.client().await;
    let cap1 = |t: Option<&str>| {
        let t = t.map(str::to_string);
        move |f: &mut Value| {
            f["max_concurrent_jobs"] = json!(1);
            if let Some(t) = &t {
                f["tenant_id"] = json!(t);
            }
        }
    };
    let (mut acme, _) = node(&inst, cap1(Some("acme"))).await;
    let (mut strict, _) = node(&inst, cap1(Some("strictco"))).await;
    let (mut public, _) = node(&inst, cap1(None)).await;
    let url = ws_url(&inst, "/ws/session");
    let mut init = fixture("session_init_one_way");
    init["tenant_id"] = json!("acme");
    let (mut s1, sid1) = open_session(&url, init.clone()).await;
    s1.send(&utterance(&sid1, 0)).await;
    assert_eq!(
        assign(&mut acme).await["session_id"],
        sid1.as_str(),
        "tenant pool first"
    );
    s1.send(&utterance(&sid1, 1)).await;
    assert_eq!(
        assign(&mut public).await["session_id"],
        sid1.as_str(),
        "non-strict: public when full"
    );
    init["tenant_id"] = json!("strictco");
    let (mut s2, sid2) = open_session(&url, init).await;
    s2.send(&utterance(&sid2, 0)).await;
    assert_eq!(assign(&mut strict).await["session_id"], sid2.as_str());
    s2.send(&utterance(&sid2, 1)).await;
    assert!(
        next_of(&mut public, "job_assign", Duration::from_millis(300))
            .await
            .is_none(),
        "strict stays home"
    );
    // A session without tenant never reaches tenant nodes.
    let (mut s3, sid3) = open_session(&url, fixture("session_init_one_way")).await;
    s3.send(&utterance(&sid3, 0)).await;
    let e = terminals(&mut s3, 1, T).await;
    assert_eq!(
        e[0]["code"], "NO_AVAILABLE_NODE",
        "public node is busy, tenant nodes are not public"
    );
    assert!(
        next_of(&mut acme, "job_assign", Duration::from_millis(100))
            .await
            .is_none()
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn two_way_auto_needs_a_node_serving_both_directions() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut one_way, _) = node(&inst, |f| {
        f["supported_language_pairs"] = json!([{"src": "zh", "tgt": "en"}])
    })
    .await;
    let (mut both, _) = node(&inst, |_| {}).await;
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_two_way"),
    )
    .await;
    for i in 0..4 {
        let mut u = utterance(&sid, i);
        u["src_lang"] = json!("auto");
        u["mode"] = json!("two_way_auto");
        u["lang_a"] = json!("zh");
        u["lang_b"] = json!("en");
        s.send(&u).await;
        let a = assign(&mut both).await;
        assert_eq!(a["mode"], "two_way_auto");
    }
    assert!(
        next_of(&mut one_way, "job_assign", Duration::from_millis(200))
            .await
            .is_none()
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_pair_no_node_serves_fails_at_once() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (_n, _) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    let mut u = utterance(&sid, 0);
    u["tgt_lang"] = json!("ko");
    let started = std::time::Instant::now();
    s.send(&u).await;
    let e = terminals(&mut s, 1, T).await;
    assert_eq!(e[0]["code"], "NO_AVAILABLE_NODE");
    assert!(
        e[0]["message"].as_str().unwrap().contains("zh→ko"),
        "{}",
        e[0]
    );
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "immediate, not after the queue wait"
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn session_messages_are_validated_and_answered() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let mut s = WsClient::connect(&ws_url(&inst, "/ws/session")).await;
    s.send(&utterance("s-00000000", 0)).await;
    assert_eq!(s.recv_type("error").await["code"], "INVALID_SESSION");
    s.send(&json!({"type": "session_init", "platform": "web"}))
        .await;
    assert_eq!(s.recv_type("error").await["code"], "INVALID_MESSAGE");
    s.send(&fixture("session_init_one_way")).await;
    let ack = s.recv_type("session_init_ack").await;
    for (k, v) in [
        ("protocol_version", json!("1.0")),
        ("use_binary_frame", json!(false)),
        ("negotiated_codec", json!("opus")),
        ("negotiated_audio_format", json!("opus")),
        ("negotiated_sample_rate", json!(16000)),
        ("negotiated_channel_count", json!(1)),
    ] {
        assert_eq!(ack[k], v, "{k}");
    }
    let sid = ack["session_id"].as_str().unwrap().to_string();
    assert!(sid.starts_with("s-") && sid.len() == 10);
    s.send(&json!({"type": "room_join", "room_code": "1234"}))
        .await;
    assert_eq!(s.recv_type("error").await["code"], "UNSUPPORTED_FEATURE");
    s.send(&json!({"type": "webrtc_offer"})).await;
    assert_eq!(s.recv_type("error").await["code"], "UNSUPPORTED_FEATURE");
    let mut bad = utterance(&sid, 0);
    bad["audio"] = json!("***not base64***");
    s.send(&bad).await;
    assert_eq!(s.recv_type("error").await["code"], "INVALID_MESSAGE");
    s.send(&utterance("s-FFFFFFFF", 0)).await;
    assert_eq!(s.recv_type("error").await["code"], "INVALID_SESSION");
    let mut hb = fixture("client_heartbeat");
    hb["session_id"] = json!(sid);
    s.send(&hb).await;
    assert_eq!(
        s.recv_type("server_heartbeat").await["session_id"],
        sid.as_str()
    );
    let mut tts = fixture("tts_play_ended");
    tts["session_id"] = json!(sid);
    s.send(&tts).await;
    s.expect_silence(Duration::from_millis(200)).await;
    // Nothing above created a job.
    assert!(
        next_of(&mut n, "job_assign", Duration::from_millis(100))
            .await
            .is_none()
    );
    // session_close flushes the buffer into a last job, then acks.
    let mut ch = fixture("audio_chunk");
    ch["session_id"] = json!(sid);
    s.send(&ch).await;
    let mut close = fixture("session_close");
    close["session_id"] = json!(sid);
    s.send(&close).await;
    s.recv_type("session_close_ack").await;
    let a = assign(&mut n).await;
    assert_eq!(a["is_manual_cut"], true);
    s.send(&ch).await;
    assert_eq!(s.recv_type("error").await["code"], "SESSION_CLOSED");
    n.send(&answer(&a, &nid, "bye")).await;
    assert_eq!(terminals(&mut s, 1, T).await[0]["text_translated"], "bye");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_node_that_lowers_its_capacity_with_jobs_in_flight_is_never_oversold() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |f| f["max_concurrent_jobs"] = json!(2)).await;
    let (mut s, sid) = session(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    s.send(&utterance(&sid, 1)).await;
    let a0 = assign(&mut n).await;
    let a1 = assign(&mut n).await;
    // It reconnects announcing capacity 1 while both jobs run.
    n.drop_connection();
    let mut n2 = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mut f = fixture("node_register_first");
    f["max_concurrent_jobs"] = json!(1);
    n2.register(f, Some(&nid)).await;
    let h: HashMap<String, String> = c.hgetall(format!("{PREFIX}node:{nid}")).await.unwrap();
    assert_eq!(
        (h["reserved"].as_str(), h["capacity"].as_str()),
        ("2", "2"),
        "capacity waits for in-flight jobs"
    );
    assert_eq!(h["capacity_target"], "1");
    invariants::check(&mut c).await;
    n2.send(&answer(&a0, &nid, "zero")).await;
    n2.send(&answer(&a1, &nid, "one")).await;
    assert_eq!(terminals(&mut s, 2, T).await.len(), 2);
    let h: HashMap<String, String> = c.hgetall(format!("{PREFIX}node:{nid}")).await.unwrap();
    assert_eq!(
        (h["reserved"].as_str(), h["capacity"].as_str()),
        ("0", "1"),
        "then the lower capacity applies"
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn an_active_session_keeps_living_past_its_idle_ttl() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.session.idle_ttl_ms = 1_600;
        c.session.result_retention_ms = 1_000;
    })
    .await;
    let mut c = redis.client().await;
    let (mut s, sid) = session(&inst).await;
    let mut hb = fixture("client_heartbeat");
    hb["session_id"] = json!(sid);
    // Activity every 100 ms for three idle TTLs: the session must stay.
    for _ in 0..48 {
        s.send(&hb).await;
        s.recv_type("server_heartbeat").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ttl: i64 = c.pttl(format!("{PREFIX}session:{sid}")).await.unwrap();
    assert!(ttl > 1_000, "TTL refreshed by activity: {ttl}");
    invariants::check(&mut c).await;
}

/// Delivered results leave the log (with their idempotency entries) once older than
/// `session.result_retention_ms`; the in-order path trims at most every eighth of it
/// (the session's `trim_at`), so a result stays at most 9/8 of the retention.
#[tokio::test]
async fn delivered_results_leave_the_log_after_the_retention() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.session.result_retention_ms = 800).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    let sk = format!("{PREFIX}session:{sid}");
    let mut result = async |idx: u64| {
        s.send(&utterance(&sid, idx)).await;
        let a = assign(&mut n).await;
        n.send(&answer(&a, &nid, "text")).await;
        terminals(&mut s, 1, T).await;
    };
    let logged = |c: &mut redis::aio::MultiplexedConnection, key: String| {
        let mut c = c.clone();
        async move {
            let mut k: Vec<String> = c.hkeys(key).await.expect("hkeys");
            k.sort();
            k
        }
    };
    let trim_at = |c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        let sk = sk.clone();
        async move {
            let t: Option<u64> = c.hget(sk, "trim_at").await.expect("hget");
            t.expect("trim_at set by the in-order path")
        }
    };
    result(0).await;
    assert_eq!(logged(&mut c, format!("{sk}:results")).await, ["0"]);
    let first = trim_at(&mut c).await;
    // Past 9/8 of the retention: the next result trims index 0.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    result(1).await;
    let trimmed_at = std::time::Instant::now();
    assert_eq!(logged(&mut c, format!("{sk}:results")).await, ["1"]);
    assert_eq!(logged(&mut c, format!("{sk}:jobs")).await, ["1"]);
    let second = trim_at(&mut c).await;
    assert!(
        second >= first + 1_000,
        "trimmed again: {first} -> {second}"
    );
    // Within an eighth of the retention (100 ms) of that trim, a result does not trim.
    result(2).await;
    let third = trim_at(&mut c).await;
    assert!(
        third == second || trimmed_at.elapsed() >= Duration::from_millis(100),
        "no trim within retention / 8: {second} -> {third}"
    );
    assert_eq!(logged(&mut c, format!("{sk}:results")).await, ["1", "2"]);
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_queued_tenant_job_is_served_by_a_public_node_that_frees_first() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut tenant, _) = node(&inst, |f| {
        f["max_concurrent_jobs"] = json!(1);
        f["tenant_id"] = json!("acme");
    })
    .await;
    let (mut public, pid) = node(&inst, |f| f["max_concurrent_jobs"] = json!(1)).await;
    let mut init = fixture("session_init_one_way");
    init["tenant_id"] = json!("acme");
    let (mut s, sid) = open_session(&ws_url(&inst, "/ws/session"), init).await;
    s.send(&utterance(&sid, 0)).await;
    assert_eq!(
        assign(&mut tenant).await["utterance_index"],
        0,
        "tenant pool first"
    );
    s.send(&utterance(&sid, 1)).await;
    let p1 = assign(&mut public).await;
    // Both busy: index 2 waits in the queues of both candidate pools.
    s.send(&utterance(&sid, 2)).await;
    eventually(T, "queued in both pools", || {
        let mut c = c.clone();
        async move {
            let t: u64 = c
                .llen(format!("{PREFIX}queue:tenant:acme:zh:en"))
                .await
                .ok()?;
            let p: u64 = c.llen(format!("{PREFIX}queue:pub:zh:en")).await.ok()?;
            (t == 1 && p == 1).then_some(())
        }
    })
    .await;
    invariants::check(&mut c).await;
    public.send(&answer(&p1, &pid, "one")).await;
    let p2 = assign(&mut public).await;
    assert_eq!(
        p2["utterance_index"], 2,
        "the public node that freed first takes it"
    );
    let q: u64 = c
        .llen(format!("{PREFIX}queue:tenant:acme:zh:en"))
        .await
        .unwrap();
    assert_eq!(q, 0, "and it left every queue");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn losing_the_node_with_no_attempts_left_fails_with_node_unavailable() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.jobs.max_attempts = 1).await;
    let mut c = redis.client().await;
    let (mut n, _) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    assign(&mut n).await;
    n.close().await; // orderly: offline at once, its job failed over — no attempt left
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(got[0]["code"], "NODE_UNAVAILABLE");
    assert_eq!(got[0]["utterance_index"], 0);
    invariants::check(&mut c).await;
}
