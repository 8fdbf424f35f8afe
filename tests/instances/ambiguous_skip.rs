//! Lost replies with `session.on_gap = "skip"` (the default, for clients that never
//! resume): what a script committed for a session here though its reply never came (Redis
//! busy past `redis.timeout_ms`) still reaches the client, once, in order, on the same
//! connection. A node's `job_result` and a session's own call: the instance reads it back
//! from the session's result log once Redis answers (`gateway::recover`). `sweep` (and
//! `node_offline`, in ambiguous.rs): the script put it into the instance's own inbox. A
//! `heartbeat` releases no terminal message: the `job_assign` its lost reply carried fails
//! over at the job's deadline.

use super::ambiguous::{busy, failed_and_told_once, lost_result};
use super::*;
use common::ws::Ended;
use switchyard::config::OnGap;

const RECOVERED: &str =
    "switchyard_deliveries_total{kind=\"session\",detail=\"ambiguous_recovered\"}";

/// The terminal messages `s` gets within `d`, as (utterance index, type or error code),
/// and the close code if the connection ended (None: still open).
async fn terminals_within(s: &mut WsClient, d: Duration) -> (Vec<(u64, String)>, Option<u16>) {
    let deadline = tokio::time::Instant::now() + d;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match s.next(left).await {
            Ok(v) if is_terminal(&v) => {
                let what = match v["type"].as_str() {
                    Some("error") => v["code"].as_str().unwrap_or("error"),
                    t => t.unwrap_or("?"),
                };
                got.push((v["utterance_index"].as_u64().unwrap(), what.to_string()));
            }
            Ok(_) => {}
            Err(Ended::Closed(code)) => return (got, code),
            Err(Ended::Timeout) => return (got, None),
        }
    }
}

/// Review finding (open defect of the last session): with `skip`, a `job_result` whose
/// reply was lost after it committed took the session's `translation_result` with it: the
/// writer skipped the gap after `order_gap_ms` and the client never got index 0; a lost
/// last result (index 2, nothing after it) was not even a gap. Now the instance reads the
/// log back once Redis answers: 0, 1, 2, each once, in order, on the same connection.
/// Index 0's node names no session (its job record does), index 2's names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_mode_recovers_results_whose_job_result_reply_was_lost() {
    // (one redis-server kept busy: the topologies have several)
    if single_only("skip_mode_recovers_results_whose_job_result_reply_was_lost") {
        return;
    }
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    assert_eq!(a.app.cfg.session.on_gap, OnGap::Skip, "the default");
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&a, None).await;
    let (mut s, sid) = session_on(&a).await;
    lost_result(&redis, &mut c, (&mut s, &sid), (&mut n, &nid), 0, false).await;
    s.send(&utterance(&sid, 1)).await;
    let job = next_of(&mut n, "job_assign", T)
        .await
        .expect("job_assign 1");
    n.send(&answer(&job, &nid, "one")).await;
    lost_result(&redis, &mut c, (&mut s, &sid), (&mut n, &nid), 2, true).await;
    let (got, code) = terminals_within(&mut s, Duration::from_secs(4)).await;
    let idx: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        (idx.as_slice(), code),
        (&[0, 1, 2][..], None),
        "every result once, in order, the connection open: {got:?}"
    );
    assert!(
        got.iter().all(|(_, t)| t == "translation_result"),
        "{got:?}"
    );
    assert!(metric(&a, RECOVERED).await >= 1.0);
    invariants::check(&mut c).await;
}

/// Review finding: with `skip`, a session's own `submit` whose reply was lost after it
/// committed (no node serves the pair: index 0 failed at once, NO_AVAILABLE_NODE) took
/// that terminal error with it: the client was told SCHEDULER_DEPENDENCY_DOWN and then got
/// index 1's error only, after the gap was skipped. Now the instance reads index 0's error
/// back from the log: 0 then 1, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_mode_recovers_the_terminal_error_a_lost_submit_reply_carried() {
    // (one redis-server kept busy: the topologies have several)
    if single_only("skip_mode_recovers_the_terminal_error_a_lost_submit_reply_carried") {
        return;
    }
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut s, sid) = session_on(&a).await;
    let free = busy(&redis, 1500).await;
    s.send(&utterance(&sid, 0)).await;
    let err = next_of(&mut s, "error", T)
        .await
        .expect("the client is told");
    assert_eq!(err["code"], "SCHEDULER_DEPENDENCY_DOWN", "{err}");
    tokio::time::sleep_until(free).await;
    eventually(T, "the timed-out submit committed", || {
        let (mut c, sid) = (c.clone(), sid.clone());
        async move { (session_field(&mut c, &sid, "next_deliver").await == "1").then_some(()) }
    })
    .await;
    s.send(&utterance(&sid, 1)).await;
    let (got, code) = terminals_within(&mut s, Duration::from_secs(4)).await;
    let want =
        [(0, "NO_AVAILABLE_NODE"), (1, "NO_AVAILABLE_NODE")].map(|(i, t)| (i, t.to_string()));
    assert_eq!(
        (got.as_slice(), code),
        (&want[..], None),
        "once each, in order"
    );
    assert!(metric(&a, RECOVERED).await >= 1.0);
    invariants::check(&mut c).await;
}

/// The last session left this case untested: a `sweep` that failed a job at its deadline
/// (no ack, no attempt left) and whose reply was lost carried the session's terminal
/// error. The sweep puts a local session's terminal messages into the instance's own inbox,
/// committed with the change: the session gets it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_error_of_a_lost_sweep_reply_still_reaches_its_session() {
    // (one redis-server kept busy: the topologies have several)
    if single_only("a_terminal_error_of_a_lost_sweep_reply_still_reaches_its_session") {
        return;
    }
    let redis = RedisServer::start().await;
    let a = start_tweaked(&redis, |c| {
        c.jobs.max_attempts = 1;
        c.jobs.run_timeout_ms = 1_200;
    })
    .await;
    let mut c = redis.client().await;
    let (mut n, _nid) = node_on(&a, None).await;
    let (mut s, sid) = session_on(&a).await;
    s.send(&utterance(&sid, 0)).await;
    let job = next_of(&mut n, "job_assign", T).await.expect("job_assign");
    let job_key = format!("{PREFIX}job:{}", job["job_id"].as_str().unwrap());
    // The node never answers: the job's deadline (run_timeout_ms, 1.2 s after its dispatch)
    // falls inside the stall, so the sweep that fails it is one sent meanwhile, whose reply
    // is lost.
    // (the stall starts ~700 ms before the deadline, timed by Redis' clock)
    let deadline: u64 = c.hget(&job_key, "deadline").await.unwrap();
    let left = deadline.saturating_sub(redis_now(&mut c).await);
    tokio::time::sleep(Duration::from_millis(left.saturating_sub(700))).await;
    let now = redis_now(&mut c).await;
    assert!(
        deadline > now + 100 && deadline < now + 1300,
        "the deadline {deadline} must fall inside the stall (now {now})"
    );
    let free = busy(&redis, 1500).await;
    tokio::time::sleep_until(free).await;
    failed_and_told_once(&mut c, &mut s, &job_key, "sweep").await;
}

/// The last session left this case untested: a `heartbeat` whose reply was lost. It
/// releases no terminal message (it only offers the node's room to queued jobs); what its
/// reply carries is a `job_assign` for a node here, and that is lost with it. The job is
/// not lost: it fails over at its deadline, to a node that answers, and the session gets
/// its result, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_assign_of_a_lost_heartbeat_reply_fails_over_and_the_session_gets_its_result() {
    // (one redis-server kept busy: the topologies have several)
    if single_only(
        "a_job_assign_of_a_lost_heartbeat_reply_fails_over_and_the_session_gets_its_result",
    ) {
        return;
    }
    let redis = RedisServer::start().await;
    // The queued job must outlive the stall (1.5 s) in its queue.
    let a = start_tweaked(&redis, |c| c.jobs.queue_wait_ms = 5_000).await;
    let mut c = redis.client().await;
    let mut one = fixture("node_register_first");
    one["max_concurrent_jobs"] = json!(1);
    let mut n1 = WsClient::connect(&ws_url(&a, "/ws/node")).await;
    let nid1 = n1.register_id(one, None).await;
    let (mut n2, nid2) = node_on(&a, None).await;
    // n2 serves ja only for now: index 1 waits in the zh→en queue while n1 is busy.
    n2.heartbeat(&nid2, Some(&["ja"])).await;
    eventually(T, "n2 out of the zh pools", || {
        let (mut c, id) = (c.clone(), nid2.clone());
        async move {
            let capsig: Option<String> =
                c.hget(format!("{PREFIX}node:{id}"), "capsig").await.ok()?;
            capsig.filter(|s| !s.contains("zh")).map(|_| ())
        }
    })
    .await;
    let (mut s, sid) = session_on(&a).await;
    s.send(&utterance(&sid, 0)).await;
    let job0 = next_of(&mut n1, "job_assign", T)
        .await
        .expect("job_assign 0");
    s.send(&utterance(&sid, 1)).await;
    let jobs_key = format!("{PREFIX}session:{sid}:jobs");
    let job1 = eventually(T, "index 1 queued", || {
        let (mut c, k) = (c.clone(), jobs_key.clone());
        async move {
            let id: String = c.hget(&k, 1).await.ok()?;
            let state: String = c.hget(format!("{PREFIX}job:{id}"), "state").await.ok()?;
            (state == "QUEUED").then_some(id)
        }
    })
    .await;
    // n2 takes up zh→en while Redis is busy: the heartbeat assigns index 1 to it, and its
    // reply (n2's job_assign) is lost.
    let free = busy(&redis, 1500).await;
    n2.heartbeat(&nid2, Some(&["zh", "en"])).await;
    tokio::time::sleep_until(free).await;
    let job1_key = format!("{PREFIX}job:{job1}");
    eventually(
        T,
        "the timed-out heartbeat committed the assignment",
        || {
            let (mut c, k, n) = (c.clone(), job1_key.clone(), nid2.clone());
            async move {
                let node: String = c.hget(&k, "node").await.ok()?;
                (node == n).then_some(())
            }
        },
    )
    .await;
    n1.send(&answer(&job0, &nid1, "zero")).await;
    assert!(
        next_of(&mut n2, "job_assign", Duration::from_millis(500))
            .await
            .is_none(),
        "n2's job_assign went with the lost reply"
    );
    // At its deadline (run_timeout_ms) the attempt fails over to n1, which answers.
    let again = next_of(&mut n1, "job_assign", Duration::from_secs(6))
        .await
        .expect("index 1 fails over to n1");
    assert_eq!(again["job_id"], json!(job1));
    n1.send(&answer(&again, &nid1, "one")).await;
    let (got, code) = terminals_within(&mut s, Duration::from_secs(2)).await;
    let want =
        [(0, "translation_result"), (1, "translation_result")].map(|(i, t)| (i, t.to_string()));
    assert_eq!(
        (got.as_slice(), code),
        (&want[..], None),
        "once each, in order"
    );
    invariants::check(&mut c).await;
}

/// What a recovery reads (on every topology: one transaction on the session's slot): the
/// delivered results near the cursor, a large one joined with its body, and `out_seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_tail_holds_the_delivered_results_and_out_seq() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&a, None).await;
    let (mut s, sid) = session_on(&a).await;
    for idx in 0..2 {
        s.send(&utterance(&sid, idx)).await;
        let job = next_of(&mut n, "job_assign", T).await.expect("job_assign");
        // index 1 carries TTS audio: logged in two parts (its body in a key of its own)
        let r = match idx {
            0 => answer(&job, &nid, "zero"),
            _ => answer_with_tts(&job, &nid, "one", 8 * 1024),
        };
        n.send(&r).await;
    }
    let sent = terminals(&mut s, 2, T).await;
    let raw: String = c
        .hget(format!("{PREFIX}session:{sid}:results"), 1)
        .await
        .unwrap();
    assert!(raw.starts_with('+'), "index 1 is logged in two parts");
    assert!(
        sent[1]["tts_audio"]
            .as_str()
            .is_some_and(|a| a.len() > 8 * 1024)
    );
    let store = &a.app.cells.get("main").expect("cell main").store;
    let bound: String = c
        .hget(format!("{PREFIX}session:{sid}"), "conn")
        .await
        .unwrap();
    let below = switchyard::store::log_tail::BELOW_CURSOR;
    // (resume audit: a connection the session moved away from reads nothing of its log)
    assert!(
        store
            .result_log_tail(&sid, "i-other/1", below)
            .await
            .expect("read")
            .is_none(),
        "read by a connection the session is not bound to"
    );
    let tail = store
        .result_log_tail(&sid, &bound, below)
        .await
        .expect("read")
        .expect("the session exists");
    assert_eq!(tail.out_seq, 2);
    let idx: Vec<u64> = tail.results.iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, [0, 1]);
    for ((_, logged), sent) in tail.results.iter().zip(&sent) {
        let logged: serde_json::Value = serde_json::from_str(logged).expect("JSON");
        assert_eq!(logged["text_translated"], sent["text_translated"]);
        assert_eq!(logged["tts_audio"], sent["tts_audio"]);
    }
    // (review finding: a body gone left its index out of the read, so a recovery skipped
    // it for good; it now reads as the error a delivery sends in its place)
    let _: () = c
        .del(format!("{PREFIX}session:{sid}:body:1"))
        .await
        .unwrap();
    let tail = store
        .result_log_tail(&sid, &bound, below)
        .await
        .expect("read")
        .expect("the session exists");
    let read: Vec<(u64, serde_json::Value)> = tail
        .results
        .iter()
        .map(|(i, m)| (*i, serde_json::from_str(m).expect("JSON")))
        .collect();
    assert_eq!(read.len(), 2, "{read:?}");
    assert_eq!((read[1].0, &read[1].1["type"]), (1, &json!("error")));
    assert_eq!(read[1].1["utterance_index"], 1);
    // (the log entry as a script's delivery leaves it: the error in its place)
    let _: () = c
        .hset(
            format!("{PREFIX}session:{sid}:results"),
            1,
            &tail.results[1].1,
        )
        .await
        .unwrap();
    assert!(
        store
            .result_log_tail("s-NOSUCH00", &bound, below)
            .await
            .expect("read")
            .is_none()
    );
    invariants::check(&mut c).await;
}

/// Bounded: a recovery retries its read while Redis does not answer, for
/// `session.recover_for_ms` (3 s here), then gives up, counted and logged; the session's
/// connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_gives_up_when_redis_stays_away_and_counts_it() {
    // (one redis-server stopped: the topologies have several)
    if single_only("a_recovery_gives_up_when_redis_stays_away_and_counts_it") {
        return;
    }
    let mut redis = RedisServer::start().await;
    // The client reads nothing while it waits: no pong, so no idle close meanwhile (a
    // recovery stops, uncounted, when its connection ends).
    let a = start_tweaked(&redis, |c| {
        c.ws.idle_timeout_ms = 120_000;
        c.session.recover_for_ms = 3_000;
    })
    .await;
    let (mut s, sid) = session_on(&a).await;
    let _free = busy(&redis, 1500).await;
    s.send(&utterance(&sid, 0)).await;
    let err = next_of(&mut s, "error", T)
        .await
        .expect("the client is told");
    assert_eq!(err["code"], "SCHEDULER_DEPENDENCY_DOWN", "{err}");
    redis.stop();
    let unrecovered =
        "switchyard_deliveries_total{kind=\"session\",detail=\"ambiguous_unrecovered\"}";
    eventually(Duration::from_secs(10), "the recovery gave up", || async {
        (metric(&a, unrecovered).await == 1.0).then_some(())
    })
    .await;
    assert_eq!(metric(&a, RECOVERED).await, 0.0);
    s.send(&json!({"type": "client_heartbeat", "session_id": sid}))
        .await;
    let e = next_of(&mut s, "error", T)
        .await
        .expect("still open, answered");
    assert_eq!(e["code"], "SCHEDULER_DEPENDENCY_DOWN", "{e}");
    redis.restart().await;
    let mut c = redis.client().await;
    invariants::check(&mut c).await;
}

/// Review finding: the read back covered 32 indices around the cursor the lost call left,
/// but one call can move the cursor much further. Index 0's job is slow, 1..40 are
/// answered and released ahead of it (the reorder window's end); then index 0's
/// `job_result` loses its reply, and its commit moves the cursor from 0 to 41. The read
/// now reaches down to the most recently settled indices: the client gets 0, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_result_far_below_the_cursor_it_moved_is_recovered() {
    if single_only("a_lost_result_far_below_the_cursor_it_moved_is_recovered") {
        return;
    }
    const AHEAD: u64 = 40;
    let redis = RedisServer::start().await;
    // (index 0's job, and its node, which sends no heartbeat, must outlive the scenario)
    let a = start_tweaked(&redis, |c| {
        c.node.liveness_ms = Some(60_000);
        c.jobs.run_timeout_ms = 20_000;
        c.jobs.ack_timeout_ms = 20_000;
        c.jobs.record_ttl_ms = 600_000;
    })
    .await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&a, None).await;
    let (mut s, sid) = session_on(&a).await;
    s.send(&utterance(&sid, 0)).await;
    let slow = next_of(&mut n, "job_assign", T)
        .await
        .expect("job_assign 0");
    for i in 1..=AHEAD {
        s.send(&utterance(&sid, i)).await;
        let job = next_of(&mut n, "job_assign", T).await.expect("job_assign");
        n.send(&answer(&job, &nid, "ahead")).await;
    }
    let (ahead, _) = terminals_within(&mut s, Duration::from_secs(3)).await;
    assert_eq!(
        ahead.len() as u64,
        AHEAD,
        "1..40 delivered ahead: {ahead:?}"
    );
    let free = busy(&redis, 1500).await;
    n.send(&answer(&slow, &nid, "slow")).await;
    let err = next_of(&mut n, "error", T).await.expect("the node is told");
    assert_eq!(err["code"], "SCHEDULER_DEPENDENCY_DOWN", "{err}");
    tokio::time::sleep_until(free).await;
    let (got, code) = terminals_within(&mut s, Duration::from_secs(3)).await;
    assert_eq!(
        (got, code),
        (vec![(0, "translation_result".to_string())], None),
        "index 0 once, the connection open"
    );
    assert_eq!(session_field(&mut c, &sid, "next_deliver").await, "41");
    invariants::check(&mut c).await;
}
