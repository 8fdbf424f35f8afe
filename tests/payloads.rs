//! Large payloads never pass through the scripts as arguments (Redis' Lua hashes every
//! byte of each string it creates): the instance stages an utterance's audio and a result
//! that carries TTS audio in keys the scripts rename. This checks that they still arrive
//! whole on every path. Audio reaches a node connected to the submitting instance (the
//! instance's own copy), one on another instance (read back for its inbox), and one that
//! frees up later (from the queue). A result reaches its session at once, in order after an
//! earlier one, through another instance's inbox, and again on resume. A staged payload the
//! script refuses leaves nothing behind. With `jobs.stage_min_bytes = 0` (the first step of
//! an upgrade) nothing is staged and the log keeps one part. Every scenario ends with the
//! invariant checker.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::actors::*;
use common::invariants::{self, PREFIX};
use common::*;
use redis::AsyncCommands;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);
/// 24 KB of audio: 32 KB of base64, well past the staging threshold.
const TTS: usize = 24 * 1024;

/// `got` is the node's `sent` result, whole: its audio and texts, with the session's ids.
fn whole(got: &Value, sent: &Value, sid: &str) {
    assert_eq!(got["type"], "translation_result");
    assert_eq!(
        got["tts_audio"], sent["tts_audio"],
        "the audio arrives whole"
    );
    assert_eq!(got["text_translated"], sent["text_translated"]);
    assert_eq!(got["session_id"], sid);
    assert_eq!(got["utterance_index"], sent["utterance_index"]);
    assert!(got["network_timings"].is_object() && got["scheduler_sent_at_ms"].is_u64());
}

async fn keys(c: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut k: Vec<String> = c.keys(format!("{PREFIX}{pattern}")).await.expect("keys");
    k.sort();
    k
}

/// Utterance `1` of session `sid` staged by hand under connection `conn`'s key, as a
/// `submit` pipeline holds it for an instant; the key.
async fn stage_audio(
    inst: &switchyard::server::Running,
    c: &mut redis::aio::MultiplexedConnection,
    conn: &str,
    sid: &str,
    audio: &str,
) -> String {
    let keys = &inst.app.cells.default_cell().store.keys;
    let staged = keys.staged_audio(conn, sid, 1);
    let _: () = c.set_ex(&staged, audio, 60).await.expect("set");
    staged
}

/// `staged` still holds `audio` and is the only staged key left (then it is deleted).
async fn only_staged(c: &mut redis::aio::MultiplexedConnection, staged: &str, audio: &str) {
    let kept: Option<String> = c.get(staged).await.expect("get");
    assert_eq!(kept.as_deref(), Some(audio));
    assert_eq!(keys(c, "stage:*").await, vec![staged.to_string()]);
    let _: () = c.del(staged).await.expect("del");
}

#[tokio::test]
async fn tts_results_arrive_whole_at_once_in_order_through_the_inbox_and_on_resume() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let b = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&a, None).await;

    // Node and session on one instance; results 2 and 1 wait for 0. Result 0 goes out at
    // once with the body the instance holds; 1 and 2 are released from the log after it.
    let (mut s, sid) = session_on(&a).await;
    let mut sent = BTreeMap::new();
    let mut assigns = Vec::new();
    for i in 0..3 {
        s.send(&utterance(&sid, i)).await;
        assigns.push(assign(&mut n).await);
    }
    for i in [2, 1, 0] {
        let r = answer_with_tts(&assigns[i], &nid, &format!("r{i}"), TTS);
        n.send(&r).await;
        sent.insert(i as u64, r);
    }
    let got = terminals(&mut s, 3, T).await;
    for (i, g) in got.iter().enumerate() {
        whole(g, &sent[&(i as u64)], &sid);
    }
    let bodies = keys(&mut c, &format!("session:{sid}:body:*")).await;
    assert_eq!(bodies.len(), 3, "each result's body is logged: {bodies:?}");
    for k in &bodies {
        let ttl: i64 = c.pttl(k).await.expect("pttl");
        assert!(ttl > 0, "{k} expires by itself");
    }

    // A session on the other instance: its results travel through b's inbox.
    let (mut s2, ack) =
        open_session_ack(&ws_url(&b, "/ws/session"), fixture("session_init_one_way")).await;
    let sid2 = ack["session_id"].as_str().expect("session_id").to_string();
    let resume_token = ack["resume_token"]
        .as_str()
        .expect("resume_token")
        .to_string();
    s2.send(&utterance(&sid2, 0)).await;
    let a2 = assign(&mut n).await;
    let r2 = answer_with_tts(&a2, &nid, "inbox", TTS);
    n.send(&r2).await;
    // The UI hints come first: ASR_FINAL and NMT_DONE built by the script for another
    // instance's session (for a session here the instance builds them: tests/jobs.rs).
    let mut events = Vec::new();
    let got = loop {
        let v = s2.next(T).await.expect("message");
        if v["type"] == "ui_event" {
            assert_eq!(v["job_id"], a2["job_id"]);
            events.push(v["event"].as_str().expect("event").to_string());
        } else {
            break v;
        }
    };
    assert_eq!(events, ["DISPATCHED", "ASR_FINAL", "NMT_DONE"]);
    whole(&got, &r2, &sid2);

    // The same result again is stale: its staged body is deleted, nothing else changes.
    n.send(&r2).await;
    // (the node hears it was rejected after the script ran)
    next_of(&mut n, "error", T)
        .await
        .expect("stale result rejected");
    assert!(
        keys(&mut c, "stage:*").await.is_empty(),
        "no staged body left"
    );
    s2.expect_silence(Duration::from_millis(200)).await;

    // Resumed on instance a from the start: the logged result is sent again, whole.
    drop(s2);
    let mut init = fixture("session_init_one_way");
    init["resume_session_id"] = json!(sid2);
    init["resume_token"] = json!(resume_token);
    init["last_received_index"] = json!(-1);
    let mut s3 = WsClient::connect(&ws_url(&a, "/ws/session")).await;
    s3.send(&init).await;
    assert_eq!(s3.recv_type("session_init_ack").await["resumed"], true);
    whole(&terminals(&mut s3, 1, T).await[0], &r2, &sid2);
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn large_utterance_audio_reaches_nodes_whole_here_through_the_inbox_and_from_the_queue() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let b = start_instance(&redis).await;
    let mut c = redis.client().await;
    let audio = |i: u64| B64.encode(vec![i as u8 + 1; 12 * 1024]);
    let (mut s, sid) = session_on(&a).await;
    let send = async |s: &mut WsClient, i: u64| {
        let mut u = utterance(&sid, i);
        u["audio"] = json!(audio(i));
        s.send(&u).await;
    };

    // A node on the other instance, capacity 1: the first job reaches it through b's inbox,
    // the second waits in the queue and is offered when the first finishes.
    let mut on_b = WsClient::connect(&ws_url(&b, "/ws/node")).await;
    let mut f = fixture("node_register_first");
    f["max_concurrent_jobs"] = json!(1);
    let nb = on_b.register_id(f, None).await;
    send(&mut s, 0).await;
    let a0 = assign(&mut on_b).await;
    assert_eq!(a0["audio"], audio(0), "through the inbox");
    send(&mut s, 1).await;
    assert!(
        next_of(&mut on_b, "job_assign", Duration::from_millis(300))
            .await
            .is_none(),
        "capacity 1: queued"
    );
    on_b.send(&answer(&a0, &nb, "zero")).await;
    let a1 = assign(&mut on_b).await;
    assert_eq!(a1["audio"], audio(1), "from the queue");
    on_b.send(&answer(&a1, &nb, "one")).await;
    assert_eq!(terminals(&mut s, 2, T).await.len(), 2);
    drop(on_b);

    // A node on the submitting instance: the instance's own copy of the client's text.
    let (mut on_a, _) = node_on(&a, None).await;
    send(&mut s, 2).await;
    assert_eq!(assign(&mut on_a).await["audio"], audio(2), "here");

    // Resent: the staged copy is deleted, no second job.
    send(&mut s, 2).await;
    handled(&mut s, &sid).await; // (the resend's script has run)
    assert!(
        keys(&mut c, "stage:*").await.is_empty(),
        "no staged audio left"
    );
    assert!(
        next_of(&mut on_a, "job_assign", Duration::from_millis(100))
            .await
            .is_none()
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn with_staging_off_large_payloads_pass_through_the_scripts_and_the_log_keeps_one_part() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.jobs.stage_min_bytes = 0).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    let audio = B64.encode(vec![9u8; 12 * 1024]);
    let mut u = utterance(&sid, 0);
    u["audio"] = json!(audio);
    s.send(&u).await;
    let a = assign(&mut n).await;
    assert_eq!(a["audio"], audio.as_str());
    let r = answer_with_tts(&a, &nid, "whole", TTS);
    n.send(&r).await;
    whole(&terminals(&mut s, 1, T).await[0], &r, &sid);
    let logged: String = c
        .hget(format!("{PREFIX}session:{sid}:results"), 0)
        .await
        .expect("hget");
    assert!(
        logged.starts_with('{') && logged.len() > TTS,
        "logged whole"
    );
    assert!(
        keys(&mut c, &format!("session:{sid}:body:*"))
            .await
            .is_empty()
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_session_that_only_keeps_alive_sheds_old_results_with_their_bodies() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.session.result_retention_ms = 800;
        c.session.idle_ttl_ms = 2_000; // TTLs refreshed (and the log trimmed) every 250 ms
    })
    .await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    let sk = format!("{PREFIX}session:{sid}");
    s.send(&utterance(&sid, 0)).await;
    let a = assign(&mut n).await;
    n.send(&answer_with_tts(&a, &nid, "old", TTS)).await;
    terminals(&mut s, 1, T).await;
    let body: bool = c.exists(format!("{sk}:body:0")).await.expect("exists");
    assert!(body);
    // No more results: only heartbeats keep the session alive, past the retention.
    let hb = for_session("client_heartbeat", &sid);
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.send(&hb).await;
    }
    let logged: Vec<String> = c.hkeys(format!("{sk}:results")).await.expect("hkeys");
    assert!(logged.is_empty(), "trimmed by a refresh: {logged:?}");
    let body: bool = c.exists(format!("{sk}:body:0")).await.expect("exists");
    assert!(!body, "the body left with its entry");
    let alive: bool = c.exists(&sk).await.expect("exists");
    assert!(alive, "the session itself lives on");
    invariants::check(&mut c).await;
}

/// Review finding: a result body was staged under `stage:<job>:<attempt>`, a name made of
/// ids the node sends, in the namespace of a session's staged audio
/// (`stage:<sid>:<index>`), and before the script checks who may act. A node naming a
/// session id as its job id overwrote that session's audio staged for `submit` (and its
/// refused call then deleted it). Each kind now has its own prefix, and a result's key
/// carries the connection's token. Here the session's staged audio is put in place by
/// hand, as `submit`'s pipeline holds it for an instant.
#[tokio::test]
async fn a_nodes_result_cannot_touch_a_sessions_staged_audio() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (_s, sid) = session_on(&inst).await;
    let staged = stage_audio(
        &inst,
        &mut c,
        "i-0123456789ab/1",
        &sid,
        "the session's audio",
    )
    .await;
    let fake = json!({"job_id": sid, "attempt_id": 1, "session_id": sid,
        "utterance_index": 1, "trace_id": "00000000000000000000000000000001"});
    n.send(&answer_with_tts(&fake, &nid, "forged", TTS)).await;
    let err = n.recv_type("error").await;
    assert_eq!(err["code"], "INVALID_MESSAGE", "{err}");
    // (and the forged result's own staged body did not outlive its refused call)
    only_staged(&mut c, &staged, "the session's audio").await;
    invariants::check(&mut c).await;
}

/// Audit finding: an utterance's audio was staged under `stage:audio:<sid>:<index>`, before
/// the script checks the connection, and a session connection a resume replaced stays open
/// (its next frame is answered as stale). Its utterance of an index the live connection
/// was submitting overwrote that connection's staged audio, and its refused call deleted
/// it: the live submit then failed (`INTERNAL_ERROR`). The key now carries the connection's
/// token. Here the live connection's staged audio is put in place by hand, as its
/// `submit` pipeline holds it for an instant.
#[tokio::test]
async fn a_replaced_session_connection_cannot_touch_the_live_ones_staged_audio() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let url = ws_url(&inst, "/ws/session");
    let (mut old, ack) = open_session_ack(&url, fixture("session_init_one_way")).await;
    let sid = ack["session_id"].as_str().expect("session_id").to_string();
    let mut init = fixture("session_init_one_way");
    init["resume_session_id"] = json!(sid);
    init["resume_token"] = ack["resume_token"].clone();
    init["last_received_index"] = json!(-1);
    let (_live, _) = open_session_ack(&url, init).await;
    let conn = session_field(&mut c, &sid, "conn").await;
    let staged = stage_audio(&inst, &mut c, &conn, &sid, "the live connection's audio").await;
    let mut u = utterance(&sid, 1);
    u["audio"] = json!(B64.encode(vec![7u8; 8 * 1024])); // (staged: over 2,048 bytes)
    old.send(&u).await;
    let err = old.recv_type("error").await;
    assert_eq!(err["code"], "INVALID_SESSION", "{err}");
    // (and the replaced connection's own staged audio did not outlive its refused call)
    only_staged(&mut c, &staged, "the live connection's audio").await;
    invariants::check(&mut c).await;
}

/// Audit finding: a terminal message the session connection's full send queue refused
/// (`switchyard_deliveries_total{detail="full"}`: a client reading slower than its results
/// come) was lost for good with the default `session.on_gap = "skip"`: the writer skipped
/// its number after `order_gap_ms`, and no lost reply started a recovery. Now a skipped gap
/// makes the connection read the result log back, and what the writer did not write is
/// written once, late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_a_full_send_queue_refused_still_reach_a_slow_reader_once() {
    const N: u64 = 200;
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.ws.send_queue = 4;
        c.session.order_gap_ms = 500;
    })
    .await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    // The session does not read while N results of ~54 KB (11 MB) come: the sockets'
    // buffers fill, the writer waits on its socket, its queue (4) fills, and what comes
    // next is refused.
    let node = tokio::spawn(async move {
        for _ in 0..N {
            let a = n.recv_type("job_assign").await;
            n.send(&answer_with_tts(&a, &nid, "slow reader", 40 * 1024))
                .await;
        }
        n
    });
    for i in 0..N {
        s.send(&utterance(&sid, i)).await;
    }
    let _n = node.await.expect("node");
    let full = r#"switchyard_deliveries_total{kind="session",detail="full"}"#;
    eventually(T, "the session's queue refused messages", || {
        let inst = &inst;
        async move { (sample(&metrics_text(inst).await, full)? > 0.0).then_some(()) }
    })
    .await;
    let mut got = BTreeMap::new();
    while (got.len() as u64) < N {
        match s.next(Duration::from_secs(10)).await {
            Ok(v) if v["type"] == "translation_result" => {
                let i = v["utterance_index"].as_u64().expect("index");
                *got.entry(i).or_insert(0) += 1;
            }
            Ok(_) => {}
            Err(e) => panic!("{} of {N} results, then {e:?}", got.len()),
        }
    }
    s.expect_silence(Duration::from_millis(1_500)).await;
    assert!(got.values().all(|&k| k == 1), "duplicates: {got:?}");
    let mut c = redis.client().await;
    invariants::check(&mut c).await;
}

/// A logged result whose body (its TTS audio) is gone when it is delivered (evicted, or
/// kept past its TTL) was dropped after taking its number: the connection then held every
/// later result for the gap (`order_gap_ms`, here made long), and the client never heard
/// of that index. Now the index gets an `error` in its place, at once (resume audit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_whose_body_is_gone_is_replaced_by_an_error_not_a_gap() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.session.reorder_window_ms = 3_000;
        c.session.order_gap_ms = 10_000;
    })
    .await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    s.send(&utterance(&sid, 1)).await;
    let (a0, a1) = (assign(&mut n).await, assign(&mut n).await);
    let (a0, a1) = if a0["utterance_index"] == 0 {
        (a0, a1)
    } else {
        (a1, a0)
    };
    // index 1 first (held for index 0), with a body logged apart; the body then goes
    n.send(&answer_with_tts(&a1, &nid, "one", 8_000)).await;
    let body = format!("{PREFIX}session:{sid}:body:1");
    eventually(T, "index 1 logged with its body", || {
        let (mut c, body) = (c.clone(), body.clone());
        async move { c.exists::<_, bool>(&body).await.ok()?.then_some(()) }
    })
    .await;
    let _: () = c.del(&body).await.unwrap();
    n.send(&answer(&a0, &nid, "zero")).await;
    s.send(&utterance(&sid, 2)).await;
    let a2 = assign(&mut n).await;
    n.send(&answer(&a2, &nid, "two")).await;
    let got = terminals(&mut s, 3, Duration::from_secs(3)).await;
    let seen: Vec<(u64, &str)> = got
        .iter()
        .map(|v| {
            (
                v["utterance_index"].as_u64().unwrap_or(u64::MAX),
                v["type"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (0, "translation_result"),
            (1, "error"),
            (2, "translation_result")
        ],
        "{got:?}"
    );
    invariants::check(&mut c).await;
}
