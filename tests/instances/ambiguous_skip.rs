//! Lost replies of the background scripts the last session left untested: a `sweep` that
//! failed a job at its deadline puts the session's terminal error into the instance's own
//! inbox (committed with the change), so the session gets it though the reply is lost; a
//! `heartbeat` releases no terminal message, and the `job_assign` its lost reply carried
//! fails over at the job's deadline.

use super::ambiguous::{all_of, busy};
use super::*;
use common::ws::Ended;

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
    tokio::time::sleep(Duration::from_millis(600)).await;
    let deadline: u64 = c.hget(&job_key, "deadline").await.unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let now = secs * 1000 + micros / 1000;
    assert!(
        deadline > now + 100 && deadline < now + 1300,
        "the deadline {deadline} must fall inside the stall (now {now})"
    );
    let free = busy(&redis, 1500).await;
    tokio::time::sleep_until(free).await;
    eventually(T, "the timed-out sweep committed", || {
        let (mut c, k) = (c.clone(), job_key.clone());
        async move {
            let state: Option<String> = c.hget(&k, "state").await.ok()?;
            (state.as_deref() == Some("FAILED")).then_some(())
        }
    })
    .await;
    let got = all_of(&mut s, "error", Duration::from_secs(3)).await;
    assert_eq!(
        got.iter()
            .map(|e| e["utterance_index"].clone())
            .collect::<Vec<_>>(),
        [json!(0)],
        "index 0's terminal error, once: {got:?}"
    );
    invariants::check(&mut c).await;
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
