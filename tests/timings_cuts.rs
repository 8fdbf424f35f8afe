//! What else the lingua web client needs on a `translation_result` and from cuts (issue 12):
//! `network_timings` + `scheduler_sent_at_ms` (present, plausible, clamped, restamped when a
//! result was held), and no jobs for clicks (tiny cuts use no index and are counted). Real
//! redis-server, real WebSocket clients, lingua fixtures; every scenario ends with the
//! invariant checker.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::actors::*;
use common::invariants::{self, PREFIX};
use common::*;
use redis::AsyncCommands;
use serde_json::{Value, json};
use switchyard::server::Running;

const T: Duration = Duration::from_secs(5);

/// A streamed phrase of `chunks` fixture chunks stamped `client_ts`, then an empty is_final.
async fn phrase(s: &mut WsClient, sid: &str, chunks: usize, client_ts: Option<u64>) {
    for _ in 0..chunks {
        let mut ch = for_session("audio_chunk", sid);
        if let Some(t) = client_ts {
            ch["client_timestamp_ms"] = json!(t);
        }
        s.send(&ch).await;
    }
    let fin = for_session("audio_chunk_final_empty", sid);
    s.send(&fin).await;
}

fn now_ms() -> u64 {
    switchyard::protocol::now_ms()
}

fn timing(r: &Value, k: &str) -> u64 {
    r["network_timings"][k]
        .as_u64()
        .unwrap_or_else(|| panic!("network_timings.{k} in {r}"))
}

#[tokio::test]
async fn results_carry_plausible_network_timings() {
    let redis = RedisServer::start().await;
    // A reorder window that outlasts any stall between the two results below: index 2 is
    // held until index 1's result comes, not released by the window first.
    let inst = start_tweaked(&redis, |c| c.session.reorder_window_ms = 3_000).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    // The client's clock says its chunks left 40 ms before they arrive.
    let before = now_ms();
    phrase(&mut s, &sid, 3, Some(before - 40)).await;
    let a = assign(&mut n).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut r = result_for(&a, "one");
    r["node_id"] = json!(nid);
    r["processing_time_ms"] = json!(50);
    r["node_completed_at_ms"] = json!(now_ms());
    n.send(&r).await;
    let got = terminals(&mut s, 1, T).await.remove(0);
    let after = now_ms();
    let sent = got["scheduler_sent_at_ms"]
        .as_u64()
        .expect("scheduler_sent_at_ms");
    assert!(
        (before..=after).contains(&sent),
        "{before} <= {sent} <= {after}"
    );
    let web = timing(&got, "web_to_scheduler_ms");
    assert!((40..2_000).contains(&web), "web_to_scheduler_ms {web}");
    for k in [
        "scheduler_to_node_ms",
        "node_to_scheduler_ms",
        "scheduler_to_web_ms",
    ] {
        assert!(timing(&got, k) < 1_000, "{k} in {got}");
    }
    // Without node_completed_at_ms the round trip's overhead is split; a client clock ahead
    // of the scheduler's clamps to 0; a result held for an earlier index shows the hold.
    phrase(&mut s, &sid, 2, Some(now_ms() + 60_000)).await;
    let a1 = assign(&mut n).await;
    phrase(&mut s, &sid, 2, None).await;
    let a2 = assign(&mut n).await;
    let mut r2 = result_for(&a2, "three");
    r2["node_id"] = json!(nid);
    r2["processing_time_ms"] = json!(1);
    n.send(&r2).await;
    // The hold is timed from when index 2 is held, not from when its result was sent.
    eventually(T, "index 2 held for index 1", || {
        let mut c = c.clone();
        let key = format!("{PREFIX}session:{sid}:pending");
        async move {
            let held: Vec<u64> = redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut c)
                .await
                .ok()?;
            held.contains(&2).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut r1 = result_for(&a1, "two");
    r1["node_id"] = json!(nid);
    n.send(&r1).await; // processing_time_ms 1712 (fixture) > the round trip: 0 each way
    let got = terminals(&mut s, 2, T).await;
    assert_eq!(
        timing(&got[0], "web_to_scheduler_ms"),
        0,
        "clock skew clamps"
    );
    assert_eq!(timing(&got[0], "scheduler_to_node_ms"), 0);
    assert_eq!(timing(&got[0], "node_to_scheduler_ms"), 0);
    assert!(
        got[1]["network_timings"]
            .get("web_to_scheduler_ms")
            .is_none(),
        "no client time"
    );
    assert!(
        timing(&got[1], "scheduler_to_web_ms") >= 150,
        "held for index 1: {}",
        got[1]
    );
    let sent = |v: &Value| {
        v["scheduler_sent_at_ms"]
            .as_u64()
            .expect("scheduler_sent_at_ms")
    };
    assert!(sent(&got[1]) >= sent(&got[0]));
    invariants::check(&mut c).await;
}

/// `n` Opus packets of `len` bytes, framed as the lingua client does (2-byte LE length).
fn packets(n: usize, len: u16) -> String {
    let mut out = Vec::new();
    for i in 0..n {
        out.extend_from_slice(&len.to_le_bytes());
        out.extend(std::iter::repeat_n(i as u8, len as usize));
    }
    B64.encode(out)
}

async fn skipped(inst: &Running) -> f64 {
    let name = "switchyard_cuts_skipped_total{cell=\"main\",reason=\"too_short\"}";
    metrics_text(inst)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A short quiet word is speech: one ~250 ms chunk of 12 small Opus packets (300 bytes)
/// and the end of the phrase make a job. By size (60 bytes a 20 ms frame) it was 100 ms,
/// under `session.min_cut_ms`, and vanished without a result (protocol audit); the
/// duration is now 20 ms a packet of the chunk's length-prefixed packet stream.
#[tokio::test]
async fn a_short_quiet_word_is_not_taken_for_a_click() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, _) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    let mut ch = for_session("audio_chunk", &sid);
    ch["payload"] = json!(packets(12, 23));
    s.send(&ch).await;
    let fin = for_session("audio_chunk_final_empty", &sid);
    s.send(&fin).await;
    let a = assign(&mut n).await;
    assert_eq!(a["utterance_index"], 0);
    assert_eq!(skipped(&inst).await, 0.0);
    invariants::check(&mut c).await;
}

/// A `client_timestamp_ms` past 2^53 (a `u64` the instance reads, but no time) is taken as
/// none: the chunk is buffered and cut as any other. The script, which takes whole numbers
/// up to 2^53 there, refused the chunk, and the client got INTERNAL_ERROR (review).
#[tokio::test]
async fn a_client_timestamp_past_2_53_is_taken_as_none() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, _) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    phrase(&mut s, &sid, 3, Some(u64::MAX)).await;
    let a = assign(&mut n).await;
    assert_eq!(a["utterance_index"], 0);
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn clicks_between_phrases_make_no_job_and_use_no_index() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    phrase(&mut s, &sid, 3, None).await;
    let a0 = assign(&mut n).await;
    assert_eq!(a0["utterance_index"], 0);
    // The client's silence detector: ~130-byte chunks (two Opus packets, ≈ 43 ms), each
    // followed by an empty is_final; then one that is left to the pause cut.
    let tiny = packets(2, 63);
    assert_eq!(B64.decode(&tiny).unwrap().len(), 130);
    for _ in 0..5 {
        let mut ch = for_session("audio_chunk", &sid);
        ch["payload"] = json!(tiny);
        s.send(&ch).await;
        let fin = for_session("audio_chunk_final_empty", &sid);
        s.send(&fin).await;
    }
    let mut ch = for_session("audio_chunk", &sid);
    ch["payload"] = json!(tiny);
    s.send(&ch).await;
    eventually(T, "six cuts skipped as too short", || async {
        (skipped(&inst).await == 6.0).then_some(())
    })
    .await;
    assert!(
        next_of(&mut n, "job_assign", Duration::from_millis(200))
            .await
            .is_none()
    );
    assert_eq!(session_field(&mut c, &sid, "next_index").await, "1");
    assert_eq!(session_field(&mut c, &sid, "buf_bytes").await, "0");
    // The next phrase gets the next index: no gap, so no missing_result.
    phrase(&mut s, &sid, 3, None).await;
    let a1 = assign(&mut n).await;
    assert_eq!(a1["utterance_index"], 1);
    answer_asr(&mut n, &a1, &nid, "二").await;
    answer_asr(&mut n, &a0, &nid, "一").await;
    let got = terminals(&mut s, 2, T).await;
    let kinds: Vec<(&str, u64)> = got
        .iter()
        .map(|v| {
            (
                v["type"].as_str().unwrap(),
                v["utterance_index"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![("translation_result", 0), ("translation_result", 1)]
    );
    // Nothing else terminal follows (no missing_result for a skipped index).
    while let Ok(v) = s.next(Duration::from_millis(600)).await {
        assert!(!is_terminal(&v), "{v}");
    }
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn min_cut_ms_zero_turns_the_rule_off() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.session.min_cut_ms = 0).await;
    let mut c = redis.client().await;
    let (mut n, _) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    let mut ch = for_session("audio_chunk", &sid);
    ch["payload"] = json!(packets(2, 63));
    s.send(&ch).await;
    let fin = for_session("audio_chunk_final_empty", &sid);
    s.send(&fin).await;
    assert_eq!(assign(&mut n).await["utterance_index"], 0);
    assert_eq!(skipped(&inst).await, 0.0);
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_short_tail_of_a_long_turn_still_ends_it_on_its_node() {
    let redis = RedisServer::start().await;
    // Every fixture chunk (620 bytes ≈ 206 ms) makes a max-duration cut: the turn continues.
    let inst = start_tweaked(&redis, |c| c.session.max_duration_ms = 200).await;
    let mut c = redis.client().await;
    let (mut n, _) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    let mut ch = for_session("audio_chunk", &sid);
    s.send(&ch).await;
    let j0 = assign(&mut n).await;
    assert_eq!(j0["is_max_duration_triggered"], true);
    // A 43 ms rest of the same speech, then is_final: the turn's last job, not a click.
    ch["payload"] = json!(packets(2, 63));
    s.send(&ch).await;
    let fin = for_session("audio_chunk_final_empty", &sid);
    s.send(&fin).await;
    let j1 = assign(&mut n).await;
    assert_eq!(j1["utterance_index"], 1);
    assert_eq!(j1["turn_id"], j0["turn_id"]);
    assert_eq!(j1["is_manual_cut"], true);
    // The same bytes after the turn ended are a click.
    s.send(&ch).await;
    s.send(&fin).await;
    eventually(T, "click skipped", || async {
        (skipped(&inst).await == 1.0).then_some(())
    })
    .await;
    assert!(
        next_of(&mut n, "job_assign", Duration::from_millis(200))
            .await
            .is_none()
    );
    assert_eq!(session_field(&mut c, &sid, "next_index").await, "2");
    invariants::check(&mut c).await;
}

/// The parts of one turn go to one node even when the first part is still queued as the
/// second is cut: the second waits behind it and follows it to its node. Before, the second
/// part had no turn node (the session's was set only at the first part's dispatch), and the
/// first node to free up took it (protocol audit).
#[tokio::test]
async fn a_turns_later_part_follows_its_queued_first_part_to_its_node() {
    let redis = RedisServer::start().await;
    // Every fixture chunk makes a max-duration cut: the turn continues.
    let inst = start_tweaked(&redis, |c| {
        c.session.max_duration_ms = 200;
        c.jobs.queue_wait_ms = 5_000;
        c.jobs.record_ttl_ms = 60_000;
    })
    .await;
    let mut c = redis.client().await;
    let one = || {
        let mut reg = fixture("node_register_first");
        reg["max_concurrent_jobs"] = json!(1);
        reg
    };
    let url = ws_url(&inst, "/ws/node");
    let mut a = WsClient::connect(&url).await;
    let aid = a.register_id(one(), None).await;
    let mut b = WsClient::connect(&url).await;
    let bid = b.register_id(one(), None).await;
    // Both busy with another session's utterances.
    let (mut busy, busy_sid) = session_on(&inst).await;
    busy.send(&utterance(&busy_sid, 0)).await;
    busy.send(&utterance(&busy_sid, 1)).await;
    let (ja, jb) = (assign(&mut a).await, assign(&mut b).await);
    // Two parts of one turn, both queued.
    let (mut s, sid) = session_on(&inst).await;
    let ch = for_session("audio_chunk", &sid);
    s.send(&ch).await;
    s.send(&ch).await;
    handled(&mut s, &sid).await;
    // The second part's explanation names the part it waits behind, not a bare queue.
    let job_of = |i: &'static str| {
        let (sid, mut c) = (sid.clone(), c.clone());
        async move {
            let key = format!("{PREFIX}session:{sid}:jobs");
            let jid: Option<String> = c.hget(key, i).await.ok()?;
            jid
        }
    };
    let (first, second) = (
        eventually(T, "first part's job", || job_of("0")).await,
        eventually(T, "second part's job", || job_of("1")).await,
    );
    let (_, view) = get_json(&http_url(&inst, &format!("/api/v1/jobs/{second}"))).await;
    let route = &view["attempts"][0]["route"];
    assert_eq!(route[0]["pool"], "turn_wait", "{view}");
    assert_eq!(route[0]["after"], first.as_str(), "{view}");
    assert!(
        route[1]["pool"].as_str().unwrap().starts_with("queued@"),
        "{view}"
    );
    // A frees up: the first part goes to A (now full); then B frees up.
    a.send(&answer(&ja, &aid, "x")).await;
    let p0 = assign(&mut a).await;
    assert_eq!(p0["utterance_index"], 0);
    b.send(&answer(&jb, &bid, "y")).await;
    let on_b = next_of(&mut b, "job_assign", Duration::from_millis(500)).await;
    assert!(on_b.is_none(), "the turn's second part went to B: {on_b:?}");
    // A answers the first part: the second follows it there.
    a.send(&answer(&p0, &aid, "z")).await;
    let p1 = assign(&mut a).await;
    assert_eq!(p1["utterance_index"], 1);
    assert_eq!(p1["turn_id"], p0["turn_id"]);
    invariants::check(&mut c).await;
}
