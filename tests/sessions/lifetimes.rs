//! A session id minted again after its session expired: the jobs of the earlier session
//! that outlived it never reach the new one.

use std::collections::HashMap;

use switchyard::store::jobs::{Attempt, FencedReply, Finished, Outcome};
use switchyard::store::nodes::NodeClaim;
use switchyard::store::sessions::NewJob;

use super::*;
use common::cell::{RESULT, caps, one_way, session_fields};

/// Session ids are random (32 bits) and `session_open` refuses a minted id only while a key
/// of an earlier session of that id lingers. A job can outlive them all (an idle TTL
/// shorter than a job's life, keys evicted under `maxmemory`): its result, error, partial
/// text, ui_events and utterance-group text went to whoever held the id next. Job ids carry
/// the session's nonce (`job-<nonce>-<index>`); every script now asks whether the session
/// under the id is the job's before it writes to it or sends it anything.
#[tokio::test]
async fn the_jobs_of_an_earlier_session_never_reach_a_new_one_with_its_id() {
    let redis = RedisServer::start().await;
    let cfg = test_config(&redis.url());
    let mut inst = common::model::Instance::new(&cfg, "i-reuse".into());
    let mut c = redis.client().await;
    let (node_tok, old_tok, new_tok) = (inst.token(), inst.token(), inst.token());
    let store = &inst.store;
    let nid = "n-reuse";
    let extra = [("capacity", "3".to_string()), ("supports_ack", "1".into())];
    store
        .register(
            nid,
            NodeClaim::Replace,
            &node_tok,
            &caps(0),
            &extra,
            0,
            None,
        )
        .await
        .expect("register");
    let sid = "s-0000000f";
    let (route, spec) = one_way("en", "zh");
    let fields = session_fields(("en", "zh"));
    let open = |tok: String, nonce: &'static str| {
        let fields = &fields;
        async move {
            store
                .session_open(sid, false, &tok, nonce, None, 0, fields)
                .await
                .expect("session_open")
                .reply
        }
    };
    let submit = |tok: String, index: u64| {
        let (route, spec) = (&route, &spec);
        async move {
            let job = NewJob {
                index,
                spec,
                audio: b"pcm",
                pools: &route.pools,
                needs: &route.needs,
                pair: &route.pair,
                trace_id: "t",
            };
            store.submit(sid, &tok, &job).await.expect("submit")
        }
    };
    assert_eq!(open(old_tok.clone(), "old1").await, OpenReply::Ok);
    // Three run; the fourth waits in the queue (the node's capacity is 3).
    for index in 0..4 {
        submit(old_tok.clone(), index).await;
    }
    // Every key of the earlier session expires while its jobs run and wait.
    for k in ["", ":jobs", ":results", ":pending", ":audio", ":rtime"] {
        let _: () = c
            .del(format!("{PREFIX}session:{sid}{k}"))
            .await
            .expect("del");
    }
    assert_eq!(open(new_tok.clone(), "new2").await, OpenReply::Ok);

    let attempt = |job_id| Attempt {
        job_id,
        attempt_id: 1,
        node_id: nid,
        conn: &node_tok,
    };
    let ok = |asr| {
        Outcome::Ok(Finished {
            message: RESULT,
            text_asr: asr,
            text_translated: "b",
            node_completed_at_ms: None,
            processing_time_ms: None,
        })
    };
    let error = Outcome::Error {
        code: "PROCESSING_ERROR",
        message: "boom",
    };
    let mut told = Vec::new();
    let mut tell = |what: &str, out: &[switchyard::store::Delivery]| {
        told.extend(
            out.iter()
                .filter(|d| d.k != "node")
                .map(|d| format!("{what}: {} to {} {}", d.k, d.id, d.msg)),
        );
    };
    let fenced_ok = |r: &FencedReply| matches!(r, FencedReply::Ok { .. });
    let o = store
        .job_ack(&attempt("job-old1-2"), false)
        .await
        .expect("ack");
    assert!(fenced_ok(&o.reply), "the ack ran: {:?}", o.reply);
    tell("ack", &o.out);
    let o = store
        .job_partial("job-old1-2", nid, &node_tok, "the old words", false)
        .await
        .expect("partial");
    assert!(fenced_ok(&o.reply), "the partial ran: {:?}", o.reply);
    tell("partial", &o.out);
    let o = store
        .job_result(&attempt("job-old1-0"), &ok("the old words"))
        .await;
    tell("result", &o.expect("result").out);
    let o = store.job_result(&attempt("job-old1-1"), &error).await;
    tell("error", &o.expect("error").out);
    assert_eq!(
        told,
        Vec::<String>::new(),
        "the new session got the old jobs' messages"
    );
    let log: HashMap<String, String> = c
        .hgetall(format!("{PREFIX}session:{sid}:results"))
        .await
        .expect("hgetall");
    assert!(
        log.is_empty(),
        "the old jobs settled in the new session's log: {log:?}"
    );
    let group: Option<String> = c
        .hget(format!("{PREFIX}session:{sid}"), "grp_ctx")
        .await
        .expect("hget");
    assert_eq!(group, None, "the old result joined the new session's group");
    // The old jobs still ended, and gave their slots back.
    for (job, state) in [("job-old1-0", "FINISHED"), ("job-old1-1", "FAILED")] {
        let s: Option<String> = c
            .hget(format!("{PREFIX}job:{job}"), "state")
            .await
            .expect("hget");
        assert_eq!(s.as_deref(), Some(state), "{job}");
    }
    let reserved: Option<String> = c
        .hget(format!("{PREFIX}node:{nid}"), "reserved")
        .await
        .expect("hget");
    assert_eq!(
        reserved.as_deref(),
        Some("2"),
        "job-old1-2 still runs, and the queued job-old1-3 took the slot job-old1-0 freed"
    );
    // That later dispatch (offer, not the session's submit) wrote nothing to the new
    // session either; its DISPATCHED ui_event is among the result's deliveries above.
    let s: Option<String> = c
        .hget(format!("{PREFIX}job:job-old1-3"), "state")
        .await
        .expect("hget");
    assert_eq!(s.as_deref(), Some("DISPATCHED"));
    let last: Option<String> = c
        .hget(format!("{PREFIX}session:{sid}"), "last_node")
        .await
        .expect("hget");
    assert_eq!(
        last.as_deref().unwrap_or_default(),
        "",
        "the old job's dispatch set the new session's last_node"
    );

    // The new session's own job is served as ever.
    let o = submit(new_tok.clone(), 0).await;
    assert!(
        o.out.iter().any(|d| d.k == "ui" && d.id == sid),
        "its DISPATCHED ui_event: {:?}",
        o.out
    );
    let o = store
        .job_result(&attempt("job-new2-0"), &ok("new words"))
        .await
        .expect("result");
    let result = o.out.iter().find(|d| d.k == "session" && d.id == sid);
    assert!(
        result.is_some_and(|d| d.msg.contains("\"job_id\":\"job-new2-0\"")),
        "its result: {:?}",
        o.out
    );
    let group: Option<String> = c
        .hget(format!("{PREFIX}session:{sid}"), "grp_ctx")
        .await
        .expect("hget");
    assert_eq!(group.as_deref(), Some("User: new words\nTarget: b"));
    invariants::check(&mut c).await;
}
