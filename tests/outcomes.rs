//! What becomes of a dispatched job and how its outcome reaches the session: fencing of a
//! stale attempt, failover (timeout, disconnect, MODEL_NOT_AVAILABLE, node loss), attempts
//! running out, a node's error, then ordered delivery (reorder window, missing_result), resend
//! idempotency and the result log's retention, with real lingua-shaped frames against a real
//! redis-server. Every scenario ends with the invariant checker.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::actors::*;
use common::invariants::{self, PREFIX};
use common::jobs::*;
use common::*;
use redis::AsyncCommands;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);

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

/// A node and a session on `inst`, the session's utterance 0 sent and its `job_assign` read
/// on the node: ((node, node id), (session, session id), the assign).
async fn first_job(
    inst: &switchyard::server::Running,
) -> ((WsClient, String), (WsClient, String), Value) {
    let (mut n, nid) = node(inst, |_| {}).await;
    let (mut s, sid) = session(inst).await;
    s.send(&utterance(&sid, 0)).await;
    let a = assign(&mut n).await;
    ((n, nid), (s, sid), a)
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

#[tokio::test]
async fn a_timed_out_attempt_fails_over_to_another_node_and_its_late_result_is_rejected() {
    let redis = RedisServer::start().await;
    // Attempt 2 has the same timeout, and the test makes a round trip before answering it.
    let inst = start_tweaked(&redis, |c| c.jobs.run_timeout_ms = 1_500).await;
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

/// One sweep finds two jobs due, in this order: an attempt on the only node (capacity 1)
/// past its run deadline, and the job queued behind it past its later wait deadline. The
/// first one's failover frees the node and `offer()` hands it the queued job with a fresh
/// deadline; the same sweep must not then time that fresh attempt out (a `job_assign` and
/// a `job_cancel` in one reply, the node in its `tried` list, `JOB_TIMEOUT` after 0 ms).
/// Driven through the scripts (tests/common/cell.rs) so that both deadlines fall in one
/// sweep: run_timeout_ms 300, queue_wait_ms 250.
#[tokio::test]
async fn a_job_the_sweep_just_dispatched_is_not_timed_out_by_the_same_sweep() {
    use common::cell::Cell;
    let redis = RedisServer::start().await;
    let mut c = redis.client().await;
    let mut cell = Cell::new(&redis).await.expect("cell");
    cell.register(0, 0, 0, 1)
        .await
        .expect("n0: en→zh, capacity 1");
    cell.open(0, 0).await.expect("s0: en→zh");
    cell.submit(0, false, false)
        .await
        .expect("u0 on n0, due in 300 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
    cell.submit(0, false, false)
        .await
        .expect("u1 queued, due in 250 ms: after u0");
    cell.advance(400, 0).await.expect("one sweep with both due");
    let jobs: BTreeMap<String, String> =
        c.hgetall(format!("{PREFIX}session:s0:jobs")).await.unwrap();
    let u0 = job(&mut c, &jobs["0"]).await;
    assert_eq!(u0["state"], "FAILED", "{u0:?}");
    assert_eq!(u0["failure"], "JOB_TIMEOUT", "{u0:?}");
    let u1 = job(&mut c, &jobs["1"]).await;
    assert_eq!(
        u1["state"], "DISPATCHED",
        "u1 was timed out by the sweep that dispatched it: {u1:?}"
    );
    assert_eq!((u1["node"].as_str(), u1["attempt"].as_str()), ("n0", "1"));
    assert_eq!(u1.get("tried"), None, "{u1:?}");
    let bad = cell.check().await;
    assert!(bad.is_empty(), "{bad:#?}");
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
        started.elapsed() < Duration::from_millis(2_000),
        "re-dispatched at once, not by timeout (3 s)"
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
    // The next utterances avoid the node whose nmt is down: three, unanswered, all on
    // `second` as its load grows (one alone would reach it half the time by chance).
    for i in 1..=3 {
        s.send(&utterance(&sid, i)).await;
        let a = assign(&mut second).await;
        assert_eq!(a["utterance_index"], i);
    }
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
    let ((mut n, nid), (mut s, _), a) = first_job(&inst).await;
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

/// While no member of a pool can serve (a service marked down fleet-wide), a job no longer
/// reads every member to find that out: the answer is remembered for a second (or until the
/// earliest down-mark ends), so each job reads at most pick's bounded look. A node that
/// registers is served at once: the remembered answer is forgotten (scripts audit: 300
/// members cost ~565 node reads per job, every job, for the whole outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_no_node_can_serve_is_not_read_whole_by_every_job() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (_n, nid) = node_on(&inst, None).await;
    let nk = format!("{PREFIX}node:{nid}");
    let later = switchyard::protocol::now_ms() + 60_000;
    let _: () = c.hset(&nk, "down:nmt", later).await.unwrap();
    // 300 more members that cannot serve (no services), in every pool of the node
    let pools: Vec<String> = c.smembers(format!("{nk}:pools")).await.unwrap();
    let fakes: Vec<String> = (0..300).map(|i| format!("fake-{i}")).collect();
    let mut pipe = redis::pipe();
    for f in &fakes {
        pipe.hset_multiple(
            format!("{PREFIX}node:{f}"),
            &[
                ("state", "ready"),
                ("capacity", "1"),
                ("deadline", &later.to_string()),
            ],
        )
        .ignore();
        for p in &pools {
            pipe.sadd(format!("{PREFIX}pool:{p}"), f).ignore();
        }
    }
    let _: () = pipe.query_async(&mut c).await.unwrap();
    let (mut s, sid) = session_on(&inst).await;
    let refused = async |s: &mut WsClient, i: u64| {
        s.send(&utterance(&sid, i)).await;
        let e = s.recv_type("error").await;
        assert_eq!(e["code"], "NO_AVAILABLE_NODE", "{e}");
    };
    refused(&mut s, 0).await;
    let before = command_calls(&mut c, "hmget").await;
    for i in 1..=10 {
        refused(&mut s, i).await;
    }
    let per_job = (command_calls(&mut c, "hmget").await - before) / 10;
    // pick's sample of 8 (and the session's read); its wide look (256) and servable's
    // whole read (301) are not made while the answer is known
    assert!(per_job < 20, "{per_job} HMGETs per job");
    // (the members that were never nodes go: pick's bounded look could miss the new one)
    let mut pipe = redis::pipe();
    for f in &fakes {
        pipe.del(format!("{PREFIX}node:{f}")).ignore();
        for p in &pools {
            pipe.srem(format!("{PREFIX}pool:{p}"), f).ignore();
        }
    }
    let _: () = pipe.query_async(&mut c).await.unwrap();
    // A node that can serve registers (room for one job): the remembered answer (written
    // again by a refusal just now, so it has not run out by time) is gone, so a job that
    // finds the node full waits for it instead of failing.
    refused(&mut s, 11).await;
    let unservable = format!("{PREFIX}unservable");
    assert!(
        c.exists::<_, bool>(&unservable).await.unwrap(),
        "the answer is kept"
    );
    let mut m = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mut reg = fixture("node_register_first");
    reg["max_concurrent_jobs"] = json!(1);
    let mid = m.register_id(reg, None).await;
    assert!(
        !c.exists::<_, bool>(&unservable).await.unwrap(),
        "the registration forgot it"
    );
    s.send(&utterance(&sid, 12)).await;
    let a = assign(&mut m).await;
    assert_eq!(a["utterance_index"], 12);
    s.send(&utterance(&sid, 13)).await;
    m.send(&answer(&a, &mid, "t")).await;
    let b = assign(&mut m).await;
    assert_eq!(b["utterance_index"], 13, "queued for the node, not failed");
    invariants::check(&mut c).await;
}

#[path = "outcomes/clocks.rs"]
mod clocks;
#[path = "outcomes/ordering.rs"]
mod ordering;

/// The remembered answers live a second from the first one, whatever comes after: renewed
/// by every write, a client sending each utterance with a made-up language pair (each
/// refused at once, so its index settles and the next one may come) kept the hash alive
/// for ever, one field more a pair (robustness audit).
#[tokio::test]
async fn answers_for_made_up_pairs_do_not_keep_the_unservable_hash_alive() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (_n, _) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    let unservable = format!("{PREFIX}unservable");
    let mut refused = async |i: u64| {
        let mut u = utterance(&sid, i);
        u["src_lang"] = json!(format!("q{i}"));
        s.send(&u).await;
        let e = s.recv_type("error").await;
        assert_eq!(e["code"], "NO_AVAILABLE_NODE", "{e}");
    };
    refused(0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    refused(1).await;
    let fields: u64 = c.hlen(&unservable).await.unwrap();
    let ttl: i64 = c.pttl(&unservable).await.unwrap();
    assert_eq!(fields, 2, "both answers are remembered");
    // (renewed, it would have ~1,000 ms left)
    assert!(
        (0..=750).contains(&ttl),
        "the second answer renewed the hash: {ttl} ms left"
    );
    invariants::check(&mut c).await;
}
