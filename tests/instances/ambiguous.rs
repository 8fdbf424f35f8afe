//! Replies that never arrive: a script that committed though its caller timed out (Redis
//! busy past `redis.timeout_ms`). What its reply carried for a session here is not lost
//! for good: with `session.on_gap = "resume"` the session closes with 1012 (at the gap a
//! later result reveals, or at once when the failed call was its own or names it) and its
//! resume resends it from the result log, in order; the default `"skip"` is in
//! ambiguous_skip.rs (the instance reads the log back itself).

use super::*;
use common::ws::Ended;

/// Redis busy for `ms` (a script that spins, from a connection of its own): calls sent
/// meanwhile wait, the instance's 1 s reply timeout passes and it drops the connection,
/// then Redis runs them all the same (the call is read before the connection's end).
/// `CLIENT PAUSE ... WRITE` does not do: a paused client that disconnects never runs its
/// command, so nothing would be lost.
/// Returns when Redis is free again (this client's own reads would time out before).
pub(super) async fn busy(redis: &RedisServer, ms: u64) -> tokio::time::Instant {
    crate::common::spin(redis.client().await, ms).await
}

/// A session on `inst` with its resume token.
async fn session_with_token(inst: &Running) -> (WsClient, String, String) {
    let (s, ack) = open_session_ack(
        &ws_url(inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    let sid = ack["session_id"].as_str().unwrap().to_string();
    let token = ack["resume_token"].as_str().unwrap().to_string();
    (s, sid, token)
}

/// Resume `sid` on `inst` after `last` (-1: nothing received).
async fn resume(inst: &Running, sid: &str, token: &str, last: i64) -> WsClient {
    let mut init = fixture("session_init_one_way");
    init["resume_session_id"] = json!(sid);
    init["resume_token"] = json!(token);
    init["last_received_index"] = json!(last);
    let mut s = WsClient::connect(&ws_url(inst, "/ws/session")).await;
    s.send(&init).await;
    let ack = s.recv_type("session_init_ack").await;
    assert_eq!(ack["resumed"], true, "{ack}");
    s
}

/// The translation_results `s` gets until its connection ends (or `d` passes), and the
/// close code (None: still open after `d`).
async fn results_until_close(s: &mut WsClient, d: Duration) -> (Vec<u64>, Option<u16>) {
    let deadline = tokio::time::Instant::now() + d;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match s.next(left).await {
            Ok(v) if v["type"] == "translation_result" => {
                got.push(v["utterance_index"].as_u64().unwrap());
            }
            Ok(_) => {}
            Err(Ended::Closed(code)) => return (got, code),
            Err(Ended::Timeout) => return (got, None),
        }
    }
}

/// Submit `idx` and answer it while Redis is busy: the node's `job_result` times out on the
/// instance (the node is told SCHEDULER_DEPENDENCY_DOWN) and commits after it.
pub(super) async fn lost_result(
    redis: &RedisServer,
    c: &mut redis::aio::MultiplexedConnection,
    (s, sid): (&mut WsClient, &str),
    (n, nid): (&mut WsClient, &str),
    idx: u64,
    name_session: bool,
) {
    s.send(&utterance(sid, idx)).await;
    let job = next_of(n, "job_assign", T).await.expect("job_assign");
    let mut r = answer(&job, nid, "lost reply");
    if !name_session {
        r.as_object_mut().unwrap().remove("session_id");
    }
    let free = busy(redis, 1500).await;
    n.send(&r).await;
    let err = next_of(n, "error", T).await.expect("the node is told");
    assert_eq!(err["code"], "SCHEDULER_DEPENDENCY_DOWN", "{err}");
    tokio::time::sleep_until(free).await;
    let want = (idx + 1).to_string();
    eventually(
        T,
        "the timed-out job_result committed after the pause",
        || {
            let (mut c, want) = (c.clone(), want.clone());
            async move { (session_field(&mut c, sid, "next_deliver").await == want).then_some(()) }
        },
    )
    .await;
}

/// An instance whose session connections close with 1012 on a gap (`session.on_gap =
/// resume`), so that their clients resume.
async fn resuming(redis: &RedisServer) -> Running {
    start_tweaked(redis, |c| {
        c.session.on_gap = switchyard::config::OnGap::Resume
    })
    .await
}

/// Review finding: a `job_result` that committed after its call timed out lost the
/// translation_result its reply carried for a session on the same instance; the session's
/// writer held the next result for `order_gap_ms`, then skipped the gap: the client got
/// index 1 only, and index 0 never. Now the writer closes with 1012 and the resume brings
/// 0 and 1, in order. (The node here does not echo `session_id`, so only the gap shows.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_whose_reply_was_lost_comes_with_the_resume_after_a_1012() {
    // (one redis-server kept busy or its client killed: the topologies have several)
    if single_only("a_result_whose_reply_was_lost_comes_with_the_resume_after_a_1012") {
        return;
    }
    let redis = RedisServer::start().await;
    let a = resuming(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&a, None).await;
    let (mut s, sid, token) = session_with_token(&a).await;
    lost_result(&redis, &mut c, (&mut s, &sid), (&mut n, &nid), 0, false).await;
    s.send(&utterance(&sid, 1)).await;
    let job = next_of(&mut n, "job_assign", T)
        .await
        .expect("job_assign 1");
    n.send(&answer(&job, &nid, "one")).await;
    let (got, code) = results_until_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(
        (got.as_slice(), code),
        (&[][..], Some(1012)),
        "index 0 was lost: the connection must close for a resume, writing nothing after the gap"
    );
    let mut s2 = resume(&a, &sid, &token, -1).await;
    let idx: Vec<u64> = terminals(&mut s2, 2, T)
        .await
        .iter()
        .map(|v| v["utterance_index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1]);
    s2.expect_silence(Duration::from_millis(300)).await;
    let gaps = "switchyard_deliveries_total{kind=\"session\",detail=\"gap_resume\"}";
    assert_eq!(metric(&a, gaps).await, 1.0);
    invariants::check(&mut c).await;
}

/// The trailing case: the lost result is the last one, so no later result reveals a gap.
/// The node names the session in its `job_result` (lingua nodes echo it): the session here
/// is closed with 1012 as soon as the call fails, and its resume brings the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_last_result_closes_the_session_it_names_so_it_resumes() {
    // (one redis-server kept busy or its client killed: the topologies have several)
    if single_only("a_lost_last_result_closes_the_session_it_names_so_it_resumes") {
        return;
    }
    let redis = RedisServer::start().await;
    let a = resuming(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&a, None).await;
    let (mut s, sid, token) = session_with_token(&a).await;
    lost_result(&redis, &mut c, (&mut s, &sid), (&mut n, &nid), 0, true).await;
    let (got, code) = results_until_close(&mut s, Duration::from_secs(3)).await;
    assert_eq!((got.as_slice(), code), (&[][..], Some(1012)));
    let mut s2 = resume(&a, &sid, &token, -1).await;
    let got = terminals(&mut s2, 1, T).await;
    assert_eq!(got[0]["utterance_index"], 0);
    assert_eq!(got[0]["text_translated"], "lost reply");
    s2.expect_silence(Duration::from_millis(300)).await;
    invariants::check(&mut c).await;
}

/// A lost `job_result` closes the session it names only when the job is of that session's
/// lifetime. A session id may be minted again after its keys expired, and a job of the
/// earlier lifetime may outlive them; its result never reaches the new session (the script
/// checks the nonce in the job id), so the new one has nothing to resume for. Here the node
/// names session A for a job of session B (another lifetime, as such a job would): A stays
/// open and is counted `ambiguous_other_lifetime`. After A resumes (the lifetime comes from
/// the resume script), a lost result of A's own job still closes it with 1012.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_result_of_another_lifetime_does_not_close_the_session_it_names() {
    // (one redis-server kept busy or its client killed: the topologies have several)
    if single_only("a_lost_result_of_another_lifetime_does_not_close_the_session_it_names") {
        return;
    }
    let redis = RedisServer::start().await;
    let a = resuming(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&a, None).await;
    let (mut sa, sid_a, token_a) = session_with_token(&a).await;
    let (mut sb, sid_b, _) = session_with_token(&a).await;
    sb.send(&utterance(&sid_b, 0)).await;
    let job = next_of(&mut n, "job_assign", T).await.expect("job_assign");
    let mut r = answer(&job, &nid, "of B");
    r["session_id"] = json!(sid_a);
    let free = busy(&redis, 1500).await;
    n.send(&r).await;
    let err = next_of(&mut n, "error", T).await.expect("the node is told");
    assert_eq!(err["code"], "SCHEDULER_DEPENDENCY_DOWN", "{err}");
    tokio::time::sleep_until(free).await;
    eventually(T, "B's job_result committed after the pause", || {
        let (mut c, sid) = (c.clone(), sid_b.clone());
        async move { (session_field(&mut c, &sid, "next_deliver").await == "1").then_some(()) }
    })
    .await;
    match sa.next(Duration::from_millis(500)).await {
        Err(Ended::Timeout) => {}
        other => panic!("session A must stay open and silent: {other:?}"),
    }
    let other = "switchyard_deliveries_total{kind=\"session\",detail=\"ambiguous_other_lifetime\"}";
    let resumed = "switchyard_deliveries_total{kind=\"session\",detail=\"ambiguous_resume\"}";
    assert_eq!(metric(&a, other).await, 1.0);
    assert_eq!(metric(&a, resumed).await, 0.0);
    // A moves to a new connection: its lifetime is the resume's, and its own lost result
    // closes it.
    drop(sa);
    let mut sa2 = resume(&a, &sid_a, &token_a, -1).await;
    lost_result(&redis, &mut c, (&mut sa2, &sid_a), (&mut n, &nid), 0, true).await;
    let (got, code) = results_until_close(&mut sa2, Duration::from_secs(3)).await;
    assert_eq!((got.as_slice(), code), (&[][..], Some(1012)));
    assert_eq!(metric(&a, resumed).await, 1.0);
    invariants::check(&mut c).await;
}

/// A session's own call (here a `submit`) that times out may have committed, and released
/// its messages with the lost reply: the client is told SCHEDULER_DEPENDENCY_DOWN and the
/// connection closes with 1012 so that it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_call_that_lost_its_reply_closes_the_session_so_it_resumes() {
    // (one redis-server kept busy or its client killed: the topologies have several)
    if single_only("a_session_call_that_lost_its_reply_closes_the_session_so_it_resumes") {
        return;
    }
    let redis = RedisServer::start().await;
    let a = resuming(&redis).await;
    let mut c = redis.client().await;
    let (mut s, sid, token) = session_with_token(&a).await;
    let free = busy(&redis, 1500).await;
    s.send(&utterance(&sid, 0)).await;
    let err = next_of(&mut s, "error", T)
        .await
        .expect("the client is told");
    assert_eq!(err["code"], "SCHEDULER_DEPENDENCY_DOWN", "{err}");
    assert_eq!(s.expect_close().await, Some(1012));
    let ambiguous = "switchyard_deliveries_total{kind=\"session\",detail=\"ambiguous_resume\"}";
    assert_eq!(metric(&a, ambiguous).await, 1.0);
    tokio::time::sleep_until(free).await;
    // The submit ran after all: no node serves the pair, so index 0 failed at once, and
    // that error went with the lost reply. The resume brings it.
    eventually(T, "the timed-out submit committed", || {
        let mut c = c.clone();
        let sid = sid.clone();
        async move { (session_field(&mut c, &sid, "next_deliver").await == "1").then_some(()) }
    })
    .await;
    let mut s2 = resume(&a, &sid, &token, -1).await;
    let got = terminals(&mut s2, 1, T).await;
    assert_eq!(got[0]["utterance_index"], 0, "{got:?}");
    assert_eq!(got[0]["code"], "NO_AVAILABLE_NODE", "{got:?}");
    s2.expect_silence(Duration::from_millis(300)).await;
    invariants::check(&mut c).await;
}

/// The messages of type `kind` `s` gets within `d`.
pub(super) async fn all_of(s: &mut WsClient, kind: &str, d: Duration) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + d;
    let mut got = Vec::new();
    while let Ok(v) = s
        .next(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        if v["type"] == kind {
            got.push(v);
        }
    }
    got
}

/// Open defect of the last session: a `node_offline` (likewise a `sweep` or `heartbeat`)
/// whose reply was lost carried the terminal message of a session connected here: the job
/// its node took with it failed, the `error` was logged, and never sent. With
/// `session.on_gap = "skip"` (the default) nothing later reveals it: the client waited for
/// index 0 for ever. Now those scripts put a local session's terminal messages into the
/// instance's own inbox, committed with the change: the reply may be lost, the message is
/// not, and it comes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_error_of_a_lost_node_offline_reply_still_reaches_its_session() {
    // (one redis-server kept busy: the topologies have several)
    if single_only("a_terminal_error_of_a_lost_node_offline_reply_still_reaches_its_session") {
        return;
    }
    let redis = RedisServer::start().await;
    let a = start_tweaked(&redis, |c| c.jobs.max_attempts = 1).await;
    let mut c = redis.client().await;
    let (mut n, _nid) = node_on(&a, None).await;
    let (mut s, sid) = session_on(&a).await;
    s.send(&utterance(&sid, 0)).await;
    let job = next_of(&mut n, "job_assign", T).await.expect("job_assign");
    let job_key = format!("{PREFIX}job:{}", job["job_id"].as_str().unwrap());
    let free = busy(&redis, 1500).await;
    // An orderly close: node_offline (grace 0) fails its job over, with no attempt left.
    n.close().await;
    tokio::time::sleep_until(free).await;
    // The reply was lost: the call ended unavailable (timed out while Redis was busy) ...
    let lost =
        r#"switchyard_script_calls_total{cell="main",script="node_offline",outcome="unavailable"}"#;
    eventually(T, "node_offline's call timed out", || async {
        (metric(&a, lost).await >= 1.0).then_some(())
    })
    .await;
    // ... and yet it committed: the job failed over at the node's going offline (not timed
    // out by a sweep later).
    let job_after: std::collections::HashMap<String, String> =
        eventually(T, "the timed-out node_offline committed", || {
            let mut c = c.clone();
            let job_key = job_key.clone();
            async move {
                let h: std::collections::HashMap<String, String> =
                    c.hgetall(&job_key).await.ok()?;
                (h.get("state").map(String::as_str) == Some("FAILED")).then_some(h)
            }
        })
        .await;
    assert!(
        job_after
            .get("failure_message")
            .is_some_and(|m| m.contains("went offline")),
        "failed by node_offline: {job_after:?}"
    );
    failed_and_told_once(&mut c, &mut s, &job_key, "node_offline").await;
}

/// After a stalled background `script` whose reply was lost: once it committed (the job
/// `job_key` FAILED), `s` gets index 0's terminal error exactly once; then the invariants.
pub(super) async fn failed_and_told_once(
    c: &mut redis::aio::MultiplexedConnection,
    s: &mut WsClient,
    job_key: &str,
    script: &str,
) {
    eventually(T, &format!("the timed-out {script} committed"), || {
        let mut c = c.clone();
        async move {
            let state: Option<String> = c.hget(job_key, "state").await.ok()?;
            (state.as_deref() == Some("FAILED")).then_some(())
        }
    })
    .await;
    let got = all_of(s, "error", Duration::from_secs(3)).await;
    assert_eq!(
        got.iter()
            .map(|e| e["utterance_index"].clone())
            .collect::<Vec<_>>(),
        [json!(0)],
        "index 0's terminal error, once: {got:?}"
    );
    invariants::check(c).await;
}
