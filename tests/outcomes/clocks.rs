//! Records a clock or a hand edit left in a state the scripts do not expect: a result still
//! reaches its session, with the ui_events, when the time since its job's creation is
//! negative; and from the result log when that time does not fit the script's reply, or
//! when the script fails part-way on a field it cannot read.

use super::*;

/// Rewrite the dispatched job's `created_at` (as a clock that moved would, or a hand edit),
/// then have its node answer "hello".
async fn answer_after_created_at(
    c: &mut redis::aio::MultiplexedConnection,
    n: &mut WsClient,
    nid: &str,
    assign: &Value,
    created_at: &str,
) {
    let jid = assign["job_id"].as_str().expect("job_id");
    let _: () = c
        .hset(format!("{PREFIX}job:{jid}"), "created_at", created_at)
        .await
        .expect("hset");
    n.send(&answer(assign, nid, "hello")).await;
}

/// A Redis clock that went back (a failover to a replica whose clock is behind the old
/// master's) leaves records that say a job was created after "now". Its result and the
/// ui_events that come with it still reach the session: the time since creation they carry
/// is 0, not a negative number the instance would fail to read in the script's reply.
#[tokio::test]
async fn a_job_created_after_now_by_the_clock_still_gets_its_result_and_ui_events() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let ((mut n, nid), (mut s, _), a) = first_job(&inst).await;
    let jid = a["job_id"].as_str().expect("job_id").to_string();
    let created: i64 = job(&mut c, &jid).await["created_at"]
        .parse()
        .expect("created_at");
    answer_after_created_at(&mut c, &mut n, &nid, &a, &(created + 60_000).to_string()).await;
    let mut events = Vec::new();
    let result = loop {
        let v = s.next(T).await.expect("the result and its ui_events");
        match v["type"].as_str() {
            Some("ui_event") if v["event"] != "DISPATCHED" => {
                events.push((v["event"].clone(), v["elapsed_ms"].clone()))
            }
            Some("translation_result") => break v,
            _ => {}
        }
    };
    assert_eq!(result["job_id"], json!(jid));
    assert_eq!(
        events,
        [
            (json!("ASR_FINAL"), json!(0)),
            (json!("NMT_DONE"), json!(0))
        ]
    );
    // The latency the reply carries for the metrics is not negative either: the end-to-end
    // histogram's sum does not go back.
    let inst = &inst;
    let e2e_sum = eventually(
        T,
        "the result's end-to-end latency recorded",
        || async move {
            let m = metrics_text(inst).await;
            let count = sample(&m, "switchyard_e2e_latency_seconds_count")?;
            (count >= 1.0).then(|| sample(&m, "switchyard_e2e_latency_seconds_sum"))?
        },
    )
    .await;
    assert!(e2e_sum >= 0.0, "end-to-end latency sum {e2e_sum}");
    invariants::check(&mut c).await;
}

/// A reply that does not decode (a mismatch between a script and the instance, or a record
/// edited by hand) comes from a script that ran and committed: the result it carried is
/// recovered from the session's result log, as for a reply lost on the way. Here the job's
/// `created_at` is made so far in the past that its age does not fit the reply's field.
#[tokio::test]
async fn a_job_result_whose_reply_does_not_decode_still_reaches_its_session() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let ((mut n, nid), (mut s, _), a) = first_job(&inst).await;
    let jid = a["job_id"].as_str().expect("job_id").to_string();
    answer_after_created_at(&mut c, &mut n, &nid, &a, "-100000000000000000000").await;
    let m = recovered(&mut s, &inst, &jid).await;
    let calls = r#"switchyard_script_calls_total{cell="main",script="job_result",outcome="error"}"#;
    assert_eq!(
        sample(&m, calls),
        Some(1.0),
        "the reply did not decode: {m}"
    );
    invariants::check(&mut c).await;
}

/// A script that fails part-way (a Lua runtime error: here a session record edited by hand
/// so that the in-order path cannot read its `trim_at`) keeps the writes it made before
/// (Redis does not roll a script back): the result is logged, its delivery lost with the
/// reply. The instance took such an error for "the script did not run"; it now reads the
/// result back from the log, as for a lost reply (Lua error-after-write audit).
#[tokio::test]
async fn a_job_result_that_fails_part_way_still_reaches_its_session() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let ((mut n, nid), (mut s, sid), a) = first_job(&inst).await;
    let jid = a["job_id"].as_str().expect("job_id").to_string();
    let sk = format!("{PREFIX}session:{sid}");
    let _: () = c.hset(&sk, "trim_at", "soon").await.unwrap();
    n.send(&answer(&a, &nid, "hello")).await;
    recovered(&mut s, &inst, &jid).await;
    // What the failed call left is what the hand edit cost: index 0 logged at the cursor,
    // which the call would have moved past.
    let _: () = c.hdel(&sk, "trim_at").await.unwrap();
    assert_eq!(
        invariants::violations(&mut c).await,
        [format!(
            "[{PREFIX}] session {sid} has a result logged at its cursor 0"
        )]
    );
}

/// The job's result "hello", read back from the session's result log once (counted as
/// `ambiguous_recovered`); the instance's metrics then.
async fn recovered(s: &mut WsClient, inst: &switchyard::server::Running, jid: &str) -> String {
    let result = loop {
        let v = s.next(T).await.expect("the result, recovered");
        if v["type"] == "translation_result" {
            break v;
        }
    };
    assert_eq!(result["job_id"], json!(jid));
    assert_eq!(result["text_translated"], "hello");
    let m = metrics_text(inst).await;
    let recovered = r#"switchyard_deliveries_total{kind="session",detail="ambiguous_recovered"}"#;
    assert_eq!(sample(&m, recovered), Some(1.0), "{m}");
    m
}
