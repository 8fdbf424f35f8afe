//! Audio a cut could not take (no free index within `session.max_index_ahead` of the
//! delivery cursor) is held: cut again after the pause once an index frees, bounded by the index
//! window and twice the buffer bound, and still cut when the session closes.

use super::*;

/// A cut that finds no free index: an instance whose cuts try 3 indices
/// (`max_index_ahead` 2, no minimum length, size cuts past 4,000 bytes), a node, and a
/// session whose indices 0..2 hold jobs (pre-cut `utterance`s), with their `job_assign`s.
struct Held {
    inst: switchyard::server::Running,
    c: redis::aio::MultiplexedConnection,
    n: WsClient,
    nid: String,
    s: WsClient,
    sid: String,
    jobs: Vec<serde_json::Value>,
}

async fn indices_0_to_2_taken(redis: &RedisServer) -> Held {
    let inst = start_tweaked(redis, |c| {
        c.session.max_index_ahead = 2;
        c.session.min_cut_ms = 0;
        c.session.max_buffer_bytes = 4_000;
    })
    .await;
    let c = redis.client().await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    let mut jobs = Vec::new();
    for i in 0..3 {
        s.send(&utterance(&sid, i)).await;
        jobs.push(assign(&mut n).await);
    }
    Held {
        inst,
        c,
        n,
        nid,
        s,
        sid,
        jobs,
    }
}

/// Answer `jobs` (node `nid`, in that order) and expect the session's terminal messages for
/// the indices `want`, in that order.
async fn answered_in_order(
    n: &mut WsClient,
    nid: &str,
    s: &mut WsClient,
    jobs: &[serde_json::Value],
    want: &[u64],
) -> Vec<serde_json::Value> {
    for j in jobs {
        n.send(&answer(j, nid, "t")).await;
    }
    let got = terminals(s, want.len(), T).await;
    let idx: Vec<u64> = got
        .iter()
        .map(|v| v["utterance_index"].as_u64().unwrap_or(u64::MAX))
        .collect();
    assert_eq!(idx, want, "{got:?}");
    got
}

/// A cut that finds no free utterance index keeps the audio (the client used the indices
/// with `utterance`s; a cut takes none more than `session.max_index_ahead` past the
/// delivery cursor). The kept audio must still be cut later without the client sending
/// anything more: the pause clock is armed again, and once an index is in range the pause
/// cut takes the next free one. It is still the client's
/// manual cut (`is_manual_cut`, padding 280), not a pause cut: the session remembers the
/// held cut's reason (`held_cut`) until the cut happens.
#[tokio::test]
async fn audio_kept_by_a_cut_without_a_free_index_is_cut_again_after_the_pause() {
    let redis = RedisServer::start().await;
    let Held {
        inst: _inst,
        mut c,
        mut n,
        nid,
        mut s,
        sid,
        mut jobs,
    } = indices_0_to_2_taken(&redis).await;
    // Indices 0..2 have jobs: the manual cut tries them (1 + max_index_ahead) and keeps the
    // audio.
    let ch = for_session("audio_chunk", &sid);
    s.send(&ch).await;
    let fin = for_session("audio_chunk_final_empty", &sid);
    s.send(&fin).await;
    eventually(T, "the manual cut tried indices 0..2", || {
        let mut c = c.clone();
        let sid = sid.clone();
        async move { (session_field(&mut c, &sid, "next_index").await == "3").then_some(()) }
    })
    .await;
    assert_ne!(
        session_field(&mut c, &sid, "buf_bytes").await,
        "0",
        "audio kept"
    );
    // Index 3 is past max_index_ahead of the cursor (0): no pause cut takes it yet.
    n.expect_silence(Duration::from_millis(700)).await;
    // Once index 0 is delivered (cursor 1), with no further chunk the pause cut (300 ms)
    // takes the kept audio as index 3, for the reason it was cut.
    n.send(&answer(&jobs[0], &nid, "t")).await;
    let a = next_of(&mut n, "job_assign", T)
        .await
        .expect("the kept audio is cut again after the pause");
    assert_eq!(a["utterance_index"], 3, "{a}");
    assert_eq!(a["is_manual_cut"], true, "the client's is_final: {a}");
    assert_eq!(a["padding_ms"], 280, "{a}");
    assert!(a.get("is_timeout_triggered").is_none(), "{a}");
    assert_eq!(session_field(&mut c, &sid, "held_cut").await, "", "cleared");
    jobs.push(a);
    answered_in_order(&mut n, &nid, &mut s, &jobs[1..], &[0, 1, 2, 3]).await;
    invariants::check(&mut c).await;
}

/// Audit finding: a streamed cut took any unused index, however far past the delivery
/// cursor (`max_index_ahead` bounded only a client's own indices), so the gap scan of a
/// forced release was not bounded while the cursor waited on a slow job; and a buffer whose
/// cut found no free index took every chunk after it. Now a cut takes an index at most
/// `max_index_ahead` past the cursor, and a held buffer takes no more than twice
/// `max_buffer_bytes`: further chunks are refused (`RATE_LIMITED`), nothing written.
#[tokio::test]
async fn a_held_buffer_stays_within_the_index_and_size_bounds() {
    let redis = RedisServer::start().await;
    let Held {
        inst,
        mut c,
        mut n,
        nid,
        mut s,
        sid,
        jobs,
    } = indices_0_to_2_taken(&redis).await;
    let ch = for_session("audio_chunk", &sid);
    // 620 bytes a chunk: the 7th passes 4,000 (a size cut, held: indices 0..2 are taken,
    // 3 is past the cursor + 2); the 13th would pass 8,000 and is refused.
    for _ in 0..12 {
        s.send(&ch).await;
    }
    // The client's last chunk, refused: its is_final still makes the held audio a manual cut.
    let mut last = ch.clone();
    last["is_final"] = json!(true);
    s.send(&last).await;
    let e = s.recv_type("error").await;
    assert_eq!(e["code"], "RATE_LIMITED", "{e}");
    assert_eq!(session_field(&mut c, &sid, "buf_bytes").await, "7440");
    assert_eq!(session_field(&mut c, &sid, "next_index").await, "3");
    assert_eq!(session_field(&mut c, &sid, "held_cut").await, "manual");
    n.expect_silence(Duration::from_millis(500)).await;
    let m = metrics_text(&inst).await;
    assert!(
        m.contains(r#"switchyard_limited_total{kind="session",detail="audio_buffer_full"} 1"#),
        "{m}"
    );
    // Index 0 delivered: the held audio is cut as index 3, the next as 4.
    n.send(&answer(&jobs[0], &nid, "t")).await;
    let a = next_of(&mut n, "job_assign", T)
        .await
        .expect("the held audio is cut once an index is in bounds");
    assert_eq!(a["utterance_index"], 3, "{a}");
    assert_eq!(a["is_manual_cut"], true, "{a}");
    let rest = [jobs[1].clone(), jobs[2].clone(), a];
    answered_in_order(&mut n, &nid, &mut s, &rest, &[0, 1, 2, 3]).await;
    // Nothing held: one chunk over twice the bound is taken (and cut), not refused.
    let mut big = ch.clone();
    big["payload"] = json!(B64.encode(vec![1u8; 9_000]));
    s.send(&big).await;
    let a = next_of(&mut n, "job_assign", T)
        .await
        .expect("a large chunk on an empty buffer is cut");
    assert_eq!(a["utterance_index"], 4, "{a}");
    n.send(&answer(&a, &nid, "t")).await;
    terminals(&mut s, 1, T).await;
    invariants::check(&mut c).await;
}

/// The final cut of a `session_close` that finds no free utterance index keeps the audio as
/// above; the session is closed (it takes no more audio), but its pause clock stays armed,
/// so the sweep still cuts the held audio as the closing cut (`is_manual_cut`) once an
/// index is free, and the closed session receives its result.
#[tokio::test]
async fn audio_held_by_a_closing_cut_without_a_free_index_is_still_cut() {
    let redis = RedisServer::start().await;
    let Held {
        inst: _inst,
        mut c,
        mut n,
        nid,
        mut s,
        sid,
        mut jobs,
    } = indices_0_to_2_taken(&redis).await;
    let ch = for_session("audio_chunk", &sid);
    s.send(&ch).await;
    let close = for_session("session_close", &sid);
    s.send(&close).await;
    s.recv_type("session_close_ack").await;
    assert_eq!(session_field(&mut c, &sid, "state").await, "closed");
    assert_eq!(session_field(&mut c, &sid, "next_index").await, "3");
    assert_ne!(
        session_field(&mut c, &sid, "buf_bytes").await,
        "0",
        "audio kept"
    );
    // A closed session still refuses audio.
    s.send(&ch).await;
    assert_eq!(s.recv_type("error").await["code"], "SESSION_CLOSED");
    // Once index 0 is delivered (cursor 1), index 3 is within max_index_ahead.
    n.send(&answer(&jobs[0], &nid, "t")).await;
    let a = next_of(&mut n, "job_assign", T)
        .await
        .expect("the audio held at session_close is cut after the pause");
    assert_eq!(a["utterance_index"], 3, "{a}");
    assert_eq!(a["is_manual_cut"], true, "the closing cut: {a}");
    assert_eq!(a["padding_ms"], 280, "{a}");
    assert_eq!(session_field(&mut c, &sid, "state").await, "closed");
    assert_eq!(session_field(&mut c, &sid, "held_cut").await, "", "cleared");
    assert_eq!(session_field(&mut c, &sid, "buf_bytes").await, "0");
    let due: Option<f64> = c.zscore(format!("{PREFIX}due:audio"), &sid).await.unwrap();
    assert_eq!(due, None, "the pause clock stopped with the cut");
    jobs.push(a);
    let got = answered_in_order(&mut n, &nid, &mut s, &jobs[1..], &[0, 1, 2, 3]).await;
    assert!(
        got.iter().all(|v| v["type"] == "translation_result"),
        "{got:?}"
    );
    invariants::check(&mut c).await;
}
