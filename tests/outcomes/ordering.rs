//! Ordered delivery of a session's terminal messages: results finishing out of order, the
//! reorder window that holds later results behind a slow earlier one, missing_result for an
//! index given up on (and refused when it arrives late), and the result log's retention.

use super::*;

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

/// (utterance_index, type) of each terminal message.
fn kinds(got: &[Value]) -> Vec<(u64, &str)> {
    got.iter()
        .map(|v| {
            (
                v["utterance_index"].as_u64().unwrap(),
                v["type"].as_str().unwrap(),
            )
        })
        .collect()
}

/// An instance whose jobs and nodes outlive the reorder window (400 ms) however long a
/// loaded machine stalls: once, under make test on Sentinel, an index held back for the
/// window got its terminal message first, as if its job had failed (the suite's run timeout
/// is 3 s).
async fn start_patient(redis: &RedisServer) -> switchyard::server::Running {
    start_tweaked(redis, |c| {
        c.jobs.ack_timeout_ms = 10_000;
        c.jobs.run_timeout_ms = 10_000;
        c.node.liveness_ms = Some(20_000);
    })
    .await
}

#[tokio::test]
async fn a_slow_earlier_job_holds_later_results_only_for_the_reorder_window() {
    let redis = RedisServer::start().await;
    let inst = start_patient(&redis).await;
    let mut c = redis.client().await;
    let ((mut n, nid), (mut s, sid), a0) = first_job(&inst).await;
    s.send(&utterance(&sid, 1)).await;
    let a1 = assign(&mut n).await;
    let started = std::time::Instant::now();
    n.send(&answer(&a1, &nid, "one")).await;
    let got = terminals(&mut s, 1, T).await;
    let waited = started.elapsed();
    assert_eq!(got[0]["utterance_index"], 1);
    assert_eq!(got[0]["text_translated"], "one");
    // (the upper bound is loose: a busy machine stretches the release, never shortens it)
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_millis(3_000),
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
    assert_eq!(
        kinds(&got),
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

/// An index the reorder window gave up on has its terminal message (missing_result) without
/// ever having had a job. Sent late, while an earlier index still holds the cursor, it is
/// refused as settled: no job, no second terminal message.
#[tokio::test]
async fn an_index_given_up_as_missing_is_settled_when_it_arrives_late() {
    let redis = RedisServer::start().await;
    let inst = start_patient(&redis).await;
    let mut c = redis.client().await;
    let ((mut n, nid), (mut s, sid), a0) = first_job(&inst).await;
    s.send(&utterance(&sid, 2)).await;
    let a2 = assign(&mut n).await;
    n.send(&answer(&a2, &nid, "two")).await;
    let got = terminals(&mut s, 2, T).await;
    assert_eq!(
        kinds(&got),
        vec![(1, "missing_result"), (2, "translation_result")]
    );
    s.send(&utterance(&sid, 1)).await;
    let err = next_of(&mut s, "error", T)
        .await
        .expect("an error for the settled index");
    assert_eq!(err["code"], "INVALID_MESSAGE", "{err}");
    assert!(
        next_of(&mut n, "job_assign", Duration::from_millis(300))
            .await
            .is_none(),
        "a job was made for an index that has its outcome"
    );
    n.send(&answer(&a0, &nid, "zero")).await;
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(got[0]["utterance_index"], 0);
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
    // Result 0 carries TTS audio: its body, logged apart, leaves with it.
    let mut result = async |idx: u64| {
        s.send(&utterance(&sid, idx)).await;
        let a = assign(&mut n).await;
        n.send(&answer_with_tts(
            &a,
            &nid,
            "text",
            if idx == 0 { 8192 } else { 0 },
        ))
        .await;
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
    let body: bool = c.exists(format!("{sk}:body:0")).await.expect("exists");
    assert!(body, "a large result's body is logged apart");
    let first = trim_at(&mut c).await;
    // Past 9/8 of the retention: the next result trims index 0.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    result(1).await;
    assert_eq!(logged(&mut c, format!("{sk}:results")).await, ["1"]);
    assert_eq!(logged(&mut c, format!("{sk}:jobs")).await, ["1"]);
    let body: bool = c.exists(format!("{sk}:body:0")).await.expect("exists");
    assert!(!body, "its body left the log with it");
    let second = trim_at(&mut c).await;
    assert!(
        second >= first + 1_000,
        "trimmed again: {first} -> {second}"
    );
    // Within an eighth of the retention (100 ms) of that trim, a result does not trim: when
    // Redis's clock, read after the result, is still before `second`, the result's script
    // ran before it too, and trim_at must be as it was.
    result(2).await;
    let third = trim_at(&mut c).await;
    let after = redis_now(&mut c).await;
    if after < second {
        assert_eq!(third, second, "a trim within retention / 8 of the last");
    } else {
        eprintln!("result 2 came after trim_at ({after} >= {second}): no window to check");
    }
    assert_eq!(logged(&mut c, format!("{sk}:results")).await, ["1", "2"]);
    invariants::check(&mut c).await;
}

/// A log holding more results past the retention than one trim takes (a client that
/// skips `max_index_ahead` indices at a time logs a missing_result for each) keeps being
/// trimmed call after call, a page of 1,024 each, until none is left. A trim took 256 and
/// then waited an eighth of the retention: a session logging faster than that grew its
/// log without bound, its TTL renewed by the same activity (Redis key audit).
#[tokio::test]
async fn a_log_longer_than_one_trim_keeps_being_trimmed() {
    const OLD: u64 = 3_000;
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.session.max_index_ahead = 10_000).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    let sk = format!("{PREFIX}session:{sid}");
    // indices 0..3000, delivered an hour ago (the retention is two minutes)
    let hour_ago = redis_now(&mut c).await - 3_600_000;
    let mut p = redis::pipe();
    for i in 0..OLD {
        let msg = json!({"type": "missing_result", "session_id": sid, "utterance_index": i,
                         "reason": "gap_timeout"});
        p.hset(format!("{sk}:results"), i, msg.to_string()).ignore();
        p.zadd(format!("{sk}:rtime"), i, hour_ago).ignore();
    }
    p.hset(&sk, "next_deliver", OLD).ignore();
    for k in [":results", ":rtime"] {
        p.pexpire(format!("{sk}{k}"), 600_000).ignore();
    }
    let () = p.query_async(&mut c).await.unwrap();
    let logged = async |c: &mut redis::aio::MultiplexedConnection| -> u64 {
        c.hlen(format!("{sk}:results")).await.unwrap()
    };
    let mut left = Vec::new();
    for i in OLD..OLD + 3 {
        s.send(&utterance(&sid, i)).await;
        let a = assign(&mut n).await;
        n.send(&answer(&a, &nid, "t")).await;
        let got = terminals(&mut s, 1, T).await;
        assert_eq!(got[0]["utterance_index"], i);
        left.push(logged(&mut c).await);
    }
    // each result trims a page, and the next trims again: 3,000 old ones gone in three
    assert_eq!(left, [OLD + 1 - 1_024, OLD + 2 - 2_048, 3], "{left:?}");
    invariants::check(&mut c).await;
}
