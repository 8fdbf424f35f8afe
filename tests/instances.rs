//! Several instances on one Redis: owner routing without a window, delivery through inbox
//! streams, takeover of a crashed instance's inbox, node reconnects that keep their jobs,
//! session resume, drain, and Redis going away under load. In-process instances; `abort`
//! behaves like kill -9 (no cleanup, sockets dropped). Every scenario ends with the
//! invariant checker.

mod common;

use std::time::Duration;

use common::actors::*;
use common::invariants::{self, PREFIX};
use common::*;
use redis::AsyncCommands;
use serde_json::json;
use switchyard::config::Config;
use switchyard::server::Running;

const T: Duration = Duration::from_secs(5);

/// The node endpoint of the instance whose readyz URL is `url`.
fn ws_url_of(readyz: &str) -> String {
    with_token(
        &readyz
            .replace("http://", "ws://")
            .replace("/readyz", "/ws/node"),
    )
}

async fn metric(inst: &Running, name: &str) -> f64 {
    sample(&metrics_text(inst).await, name).unwrap_or(0.0)
}

#[tokio::test]
async fn instances_list_themselves_and_a_crashed_one_disappears() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let b = start_instance(&redis).await;
    let mut c = redis.client().await;
    let ids = || async {
        // Each instance is listed once per cell it serves (three on the cluster run).
        let (_, v) = get_json(&http_url(&a, "/api/v1/instances?cell=main")).await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i["instance"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let b_id = b.app.instance_id.clone();
    eventually(T, "both listed", || async {
        (ids().await.len() == 2).then_some(())
    })
    .await;
    b.abort();
    eventually(T, "crashed instance gone", || {
        let b_id = b_id.clone();
        async move { (!ids().await.contains(&b_id)).then_some(()) }
    })
    .await;
    eventually(T, "the dead inbox taken over and deleted", || {
        let mut c = c.clone();
        let b_id = b_id.clone();
        async move {
            (!c.exists::<_, bool>(format!("{PREFIX}inbox:{b_id}"))
                .await
                .ok()?)
            .then_some(())
        }
    })
    .await;
    // One takeover per cell (the dead instance's inbox of each).
    let cells = a.app.cells.len() as f64;
    eventually(T, "a takeover in every cell", || async {
        (metric(&a, "switchyard_takeovers_total").await == cells).then_some(())
    })
    .await;
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_session_and_a_node_on_different_instances_talk_through_the_inboxes() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let b = start_instance(&redis).await;
    let mut c = redis.client().await;
    // The node registers on B and is routable at once: no window after connecting.
    let (mut n, nid) = node_on(&b, None).await;
    let (mut s, sid) = session_on(&a).await;
    for i in 0..5 {
        s.send(&utterance(&sid, i)).await;
        let j = next_of(&mut n, "job_assign", T)
            .await
            .expect("job_assign via B's inbox");
        n.send(&answer(&j, &nid, &format!("r{i}"))).await;
    }
    let got = terminals(&mut s, 5, T).await;
    let idx: Vec<u64> = got
        .iter()
        .map(|v| v["utterance_index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1, 2, 3, 4]);
    assert!(
        metric(&b, "switchyard_inbox_messages_total").await >= 5.0,
        "job_assign went through B's inbox"
    );
    assert!(
        metric(&a, "switchyard_inbox_messages_total").await >= 5.0,
        "results went through A's inbox"
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn messages_waiting_in_a_crashed_instance_inbox_reach_the_reconnected_node() {
    let redis = RedisServer::start().await;
    // B's presence must outlive the session open and the submit after B's abort (once it
    // expires, A takes B's inbox over and the job_assign is no longer put there).
    let presence = |c: &mut Config| c.instance.presence_ttl_ms = 2_000;
    let a = start_tweaked(&redis, presence).await;
    let b = start_tweaked(&redis, presence).await;
    let mut c = redis.client().await;
    let (n_old, nid) = node_on(&b, None).await;
    b.abort(); // kill -9: the node record still says ready, owned by B
    drop(n_old);
    let (mut s, sid) = session_on(&a).await;
    s.send(&utterance(&sid, 0)).await;
    // The job_assign went to B's inbox (B's presence has not expired yet).
    eventually(T, "job_assign waiting in B's inbox", || {
        let mut c = c.clone();
        async move {
            let keys: Vec<String> = c.keys(format!("{PREFIX}inbox:*")).await.ok()?;
            for k in keys {
                let n: u64 = c.xlen(&k).await.ok()?;
                if n > 0 {
                    return Some(());
                }
            }
            None
        }
    })
    .await;
    // The node reconnects through A at once (its credential is bound to its id, so it need
    // not wait for B's presence to expire); B's inbox is taken over and re-addressed to it.
    let mut n = WsClient::connect(&node_url_as(&a, &nid)).await;
    n.register_id(fixture("node_register_first"), Some(&nid))
        .await;
    let j = next_of(&mut n, "job_assign", T)
        .await
        .expect("re-routed job_assign");
    assert_eq!(j["utterance_index"], 0);
    n.send(&answer(&j, &nid, "rescued")).await;
    assert_eq!(
        terminals(&mut s, 1, T).await[0]["text_translated"],
        "rescued"
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_node_that_reconnects_elsewhere_keeps_its_jobs_and_its_result_is_accepted() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let b = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n1, nid) = node_on(&a, None).await;
    let (mut s, sid) = session_on(&a).await;
    s.send(&utterance(&sid, 0)).await;
    let j = next_of(&mut n1, "job_assign", T).await.unwrap();
    n1.drop_connection();
    let (mut n2, _) = node_on(&b, Some(&nid)).await;
    let reserved: String = c
        .hget(format!("{PREFIX}node:{nid}"), "reserved")
        .await
        .unwrap();
    assert_eq!(reserved, "1", "the in-flight job survived the reconnect");
    n2.send(&answer(&j, &nid, "from the new socket")).await;
    assert_eq!(
        terminals(&mut s, 1, T).await[0]["text_translated"],
        "from the new socket"
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_session_resumes_on_another_instance_and_gets_every_result_after_its_last() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let b = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&b, None).await;
    let (mut s, ack) =
        open_session_ack(&ws_url(&a, "/ws/session"), fixture("session_init_one_way")).await;
    let sid = ack["session_id"].as_str().unwrap().to_string();
    let resume_token = ack["resume_token"].as_str().unwrap().to_string();
    let mut jobs = Vec::new();
    for i in 0..4 {
        s.send(&utterance(&sid, i)).await;
        jobs.push(next_of(&mut n, "job_assign", T).await.unwrap());
    }
    for j in &jobs[..2] {
        n.send(&answer(j, &nid, "early")).await;
    }
    assert_eq!(terminals(&mut s, 2, T).await.len(), 2);
    a.abort(); // the session's instance dies; results 2 and 3 arrive while it is away
    drop(s);
    for j in &jobs[2..] {
        n.send(&answer(j, &nid, "late")).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut init = fixture("session_init_one_way");
    init["resume_session_id"] = json!(sid);
    init["resume_token"] = json!(resume_token);
    init["last_received_index"] = json!(1);
    let mut s2 = WsClient::connect(&ws_url(&b, "/ws/session")).await;
    s2.send(&init).await;
    let ack = s2.recv_type("session_init_ack").await;
    assert_eq!(ack["resumed"], true);
    assert_eq!(ack["session_id"], sid.as_str());
    let got = terminals(&mut s2, 2, T).await;
    let idx: Vec<u64> = got
        .iter()
        .map(|v| v["utterance_index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![2, 3]);
    s2.expect_silence(Duration::from_millis(300)).await;
    // The resumed session goes on working.
    s2.send(&utterance(&sid, 4)).await;
    let j = next_of(&mut n, "job_assign", T).await.unwrap();
    n.send(&answer(&j, &nid, "after resume")).await;
    assert_eq!(terminals(&mut s2, 1, T).await[0]["utterance_index"], 4);
    // An expired or unknown session cannot be resumed: a fresh one, resumed = false.
    init["resume_session_id"] = json!("s-00000000");
    let mut s3 = WsClient::connect(&ws_url(&b, "/ws/session")).await;
    s3.send(&init).await;
    let ack = s3.recv_type("session_init_ack").await;
    assert_eq!(ack["resumed"], false);
    assert_ne!(ack["session_id"], "s-00000000");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn sigterm_drains_nodes_then_closes_with_1012_and_readiness_goes_false() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, _) = node_on(&a, None).await;
    let (mut s, _) = session_on(&a).await;
    let url = http_url(&a, "/readyz");
    let a_id = a.app.instance_id.clone();
    let stopping = tokio::spawn(a.shutdown());
    let ctl = next_of(&mut n, "node_control", T)
        .await
        .expect("node_control");
    assert_eq!(ctl["command"], "drain");
    let (status, _) = get_json(&url).await;
    assert_eq!(status, 503, "not ready while draining");
    let refused = tokio_tungstenite::connect_async(ws_url_of(&url)).await;
    assert!(refused.is_err(), "no new connections while draining");
    assert_eq!(n.expect_close().await, Some(1012));
    assert_eq!(s.expect_close().await, Some(1012));
    stopping.await.unwrap();
    let presence: bool = c.exists(format!("{PREFIX}instance:{a_id}")).await.unwrap();
    assert!(
        !presence,
        "a drained instance gives up its presence at once"
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn an_operator_drain_stops_new_jobs_but_lets_running_ones_finish() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.jobs.queue_wait_ms = 400;
        // Index 1's error waits for index 0's result across a 300 ms probe: more than the
        // tests' 400 ms reorder window on a loaded machine.
        c.session.reorder_window_ms = 5_000;
    })
    .await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    let j0 = next_of(&mut n, "job_assign", T).await.unwrap();
    let client = reqwest::Client::new();
    let r = client
        .post(http_url(&inst, &format!("/api/v1/nodes/{nid}/drain")))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        next_of(&mut n, "node_control", T).await.unwrap()["command"],
        "drain"
    );
    s.send(&utterance(&sid, 1)).await;
    assert!(
        next_of(&mut n, "job_assign", Duration::from_millis(300))
            .await
            .is_none(),
        "no new jobs"
    );
    n.send(&answer(&j0, &nid, "finished while draining")).await;
    let got = terminals(&mut s, 2, T).await;
    assert_eq!(got[0]["text_translated"], "finished while draining");
    assert_eq!(got[1]["code"], "NO_AVAILABLE_NODE");
    // A drain survives the node's reconnect (it is the operator's decision, not the socket's).
    n.drop_connection();
    let (mut n, _) = node_on(&inst, Some(&nid)).await;
    let h: String = c
        .hget(format!("{PREFIX}node:{nid}"), "state")
        .await
        .unwrap();
    assert_eq!(h, "draining");
    let r = client
        .post(http_url(&inst, &format!("/api/v1/nodes/{nid}/undrain")))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    s.send(&utterance(&sid, 2)).await;
    assert!(
        next_of(&mut n, "job_assign", T).await.is_some(),
        "ready again"
    );
    let r = client
        .post(http_url(&inst, "/api/v1/nodes/node-NOPE/drain"))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    n.close().await; // offline now: draining it is a conflict
    eventually(T, "node offline", || {
        let mut c = c.clone();
        let key = format!("{PREFIX}node:{nid}");
        async move { (c.hget::<_, _, String>(key, "state").await.ok()? == "offline").then_some(()) }
    })
    .await;
    let r = client
        .post(http_url(&inst, &format!("/api/v1/nodes/{nid}/drain")))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn redis_away_for_five_seconds_under_load_then_everything_resumes_by_itself() {
    if single_only("redis_away_for_five_seconds_under_load_then_everything_resumes_by_itself") {
        return;
    }
    let mut redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let url = ws_url(&inst, "/ws/node");
    let node = AutoNode::start(
        &url,
        fixture("node_register_first"),
        Duration::from_millis(20),
    )
    .await;
    let (mut s, sid) = session_on(&inst).await;
    for i in 0..5 {
        s.send(&utterance(&sid, i)).await;
    }
    assert_eq!(terminals(&mut s, 5, T).await.len(), 5);

    redis.stop();
    s.send(&utterance(&sid, 5)).await;
    let e = s.recv_type("error").await;
    assert_eq!(e["code"], "SCHEDULER_DEPENDENCY_DOWN", "{e}");
    // which utterance to send again once Redis is back
    assert_eq!(e["details"]["utterance_index"], 5, "{e}");
    let (status, _) = get_json(&http_url(&inst, "/readyz")).await;
    assert_eq!(status, 503);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        reqwest::get(http_url(&inst, "/healthz"))
            .await
            .unwrap()
            .status()
            .is_success(),
        "no crash"
    );

    redis.restart().await; // empty: scripts, groups, nodes and sessions are gone
    let back = std::time::Instant::now();
    eventually(
        Duration::from_secs(2),
        "ready within 2 s of Redis returning",
        || async { (get_json(&http_url(&inst, "/readyz")).await.0 == 200).then_some(()) },
    )
    .await;
    // Nodes heal with their next heartbeat; a new session works end to end.
    let (mut s2, sid2) = session_on(&inst).await;
    let mut done = false;
    // (a result, not a ui_event: DISPATCHED is sent at dispatch, before the node's answer)
    'send: for i in 0..40 {
        s2.send(&utterance(&sid2, i)).await;
        let wait = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(v) = s2
            .next(wait.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            if v["type"] == "translation_result" {
                done = true;
                break 'send;
            }
        }
    }
    assert!(done, "work flows again: a result came back");
    assert!(
        back.elapsed() < Duration::from_secs(4),
        "{:?}",
        back.elapsed()
    );
    let mut c = redis.client().await;
    let nid = node.id.clone();
    // The node healed with a heartbeat (its record is back) before it goes away: a stop
    // before that would leave nothing to mark disconnected.
    eventually(T, "node record back after the restart", || {
        let mut c = c.clone();
        let key = format!("{PREFIX}node:{nid}");
        async move { (c.hget::<_, _, String>(key, "state").await.ok()? == "ready").then_some(()) }
    })
    .await;
    node.stop();
    // Check a quiet system: wait until the stopped node's disconnect has been recorded.
    eventually(T, "node disconnected", || {
        let mut c = c.clone();
        let key = format!("{PREFIX}node:{nid}");
        async move { (c.hget::<_, _, String>(key, "state").await.ok()? == "disconnected").then_some(()) }
    })
    .await;
    invariants::check(&mut c).await;
}

#[path = "instances/ambiguous.rs"]
mod ambiguous;
#[path = "instances/ambiguous_node.rs"]
mod ambiguous_node;
#[path = "instances/ambiguous_skip.rs"]
mod ambiguous_skip;
#[path = "instances/drain_stalled.rs"]
mod drain_stalled;
#[path = "instances/inbox_pending.rs"]
mod inbox_pending;
#[path = "instances/inbox_stream.rs"]
mod inbox_stream;
#[path = "instances/lapse.rs"]
mod lapse;
