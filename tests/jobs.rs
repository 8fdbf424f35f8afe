//! Dispatch end to end: a job reaches a node with a reservation (the happy path, ack and
//! started), waits in the queue while every node is busy, never oversells capacity (under
//! load, or when a node lowers it), and follows tenants and language pairs, with real
//! lingua-shaped frames against a real redis-server. What becomes of a dispatched job is in
//! tests/outcomes.rs, sessions and audio cuts in tests/sessions.rs. Every scenario ends with
//! the invariant checker.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::actors::*;
use common::invariants::{self, PREFIX};
use common::jobs::*;
use common::*;
use redis::AsyncCommands;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn happy_path_with_lingua_frames_and_no_ack() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    let u = utterance(&sid, 0);
    s.send(&u).await;
    let a = assign(&mut n).await;
    assert_eq!(a["attempt_id"], 1);
    assert_eq!(a["session_id"], sid.as_str());
    assert_eq!(a["utterance_index"], 0);
    assert_eq!(
        (a["src_lang"].as_str(), a["tgt_lang"].as_str()),
        (Some("zh"), Some("en"))
    );
    assert_eq!(
        a["audio"], u["audio"],
        "the utterance audio reaches the node unchanged"
    );
    assert_eq!(a["audio_format"], "opus");
    assert_eq!(a["sample_rate"], 16000);
    assert_eq!(a["trace_id"], u["trace_id"]);
    assert_eq!(
        a["pipeline"],
        json!({"use_asr": true, "use_nmt": true, "use_tts": true})
    );
    assert_eq!(a["is_manual_cut"], true);
    let jid = a["job_id"].as_str().unwrap().to_string();
    assert_eq!(job(&mut c, &jid).await["state"], "DISPATCHED");
    let reserved: String = c
        .hget(format!("{PREFIX}node:{nid}"), "reserved")
        .await
        .unwrap();
    assert_eq!(reserved, "1");

    n.send(&answer(&a, &nid, "Let's start the test")).await;
    let mut events = Vec::new();
    let mut hints = Vec::new();
    let result = loop {
        let v = s.next(T).await.expect("message");
        if v["type"] == "ui_event" {
            events.push(v["event"].as_str().unwrap().to_string());
            hints.push(v);
        } else if v["type"] == "translation_result" {
            break v;
        }
    };
    assert_eq!(result["utterance_index"], 0);
    assert_eq!(result["job_id"], jid.as_str());
    assert_eq!(result["text_asr"], "我们开始测试");
    assert_eq!(result["text_translated"], "Let's start the test");
    assert_eq!(result["tts_audio"], "b3B1cy1ieXRlcw==");
    assert_eq!(result["service_timings"]["total_ms"], 1700);
    assert_eq!(events, ["DISPATCHED", "ASR_FINAL", "NMT_DONE"]);
    for e in &hints {
        assert_eq!(e["job_id"], jid.as_str());
        assert_eq!(e["session_id"], sid.as_str());
        assert_eq!(e["utterance_index"], 0);
        assert_eq!(e["trace_id"], result["trace_id"]);
        assert_eq!(e["status"], "ok");
        assert!(e["elapsed_ms"].is_u64(), "{e}");
    }
    assert_eq!(job(&mut c, &jid).await["state"], "FINISHED");
    let reserved: String = c
        .hget(format!("{PREFIX}node:{nid}"), "reserved")
        .await
        .unwrap();
    assert_eq!(reserved, "0");
    let audio: bool = c.exists(format!("{PREFIX}job:{jid}:audio")).await.unwrap();
    assert!(!audio, "payload dropped once the job is done");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn ack_and_started_shorten_detection_and_emit_node_accepted() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |f| f["supports_job_ack"] = json!(true)).await;
    let (mut s, sid) = session(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    let a = assign(&mut n).await;
    let jid = a["job_id"].as_str().unwrap().to_string();
    let deadline_before: i64 = job(&mut c, &jid).await["deadline"].parse().unwrap();
    let mut ack = fixture("job_ack");
    ack["job_id"] = a["job_id"].clone();
    ack["node_id"] = json!(nid);
    n.send(&ack).await;
    loop {
        let v = s.next(T).await.expect("ui_event");
        if v["event"] == "NODE_ACCEPTED" {
            break;
        }
    }
    let j = job(&mut c, &jid).await;
    assert_eq!(j["state"], "ACCEPTED");
    assert!(
        j["deadline"].parse::<i64>().unwrap() > deadline_before,
        "ack deadline became the run deadline"
    );
    ack["type"] = json!("job_started");
    n.send(&ack).await;
    eventually(T, "RUNNING", || {
        let mut c = c.clone();
        let jid = jid.clone();
        async move { (job(&mut c, &jid).await["state"] == "RUNNING").then_some(()) }
    })
    .await;
    n.send(&answer(&a, &nid, "ok")).await;
    let r = terminals(&mut s, 1, T).await;
    assert_eq!(r[0]["type"], "translation_result");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn two_sessions_over_three_nodes_of_capacity_two_never_oversell_and_spread_load() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.jobs.queue_wait_ms = 10_000).await;
    let mut c = redis.client().await;
    let mut reg = fixture("node_register_first");
    reg["max_concurrent_jobs"] = json!(2);
    let url = ws_url(&inst, "/ws/node");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(AutoNode::start(&url, reg.clone(), Duration::from_millis(120)).await);
    }
    let (mut s1, sid1) = session(&inst).await;
    let (mut s2, sid2) = session(&inst).await;
    const N: u64 = 15;
    for i in 0..N {
        s1.send(&utterance(&sid1, i)).await;
        s2.send(&utterance(&sid2, i)).await;
    }
    for (s, sid) in [(&mut s1, &sid1), (&mut s2, &sid2)] {
        let got = terminals(s, N as usize, Duration::from_secs(20)).await;
        let idx: Vec<u64> = got
            .iter()
            .map(|v| v["utterance_index"].as_u64().unwrap())
            .collect();
        assert_eq!(
            idx,
            (0..N).collect::<Vec<_>>(),
            "{sid}: in order, each once"
        );
        assert!(
            got.iter().all(|v| v["type"] == "translation_result"),
            "{got:?}"
        );
    }
    for n in &nodes {
        assert!(
            n.peak.load(std::sync::atomic::Ordering::SeqCst) <= 2,
            "node {} over capacity",
            n.id
        );
        assert!(
            n.jobs() >= 4,
            "load spread: node {} got {} of {}",
            n.id,
            n.jobs(),
            2 * N
        );
    }
    assert_eq!(
        nodes.iter().map(AutoNode::jobs).sum::<usize>(),
        2 * N as usize
    );
    invariants::check(&mut c).await;
}

/// With every node idle, the power-of-k-choices takes the first eligible node it looks at,
/// so the order it looks in must be random: a pool smaller than `jobs.sample` comes back from
/// SMEMBERS in the set's order and is shuffled; a larger one is drawn by `SRANDMEMBER -k`,
/// whose draw order is random already (pick.lua). 60 one-at-a-time jobs over 6 idle nodes:
/// each node gets some (a node is left out by chance with p ~ 1e-4); in the set's order one
/// node would take them all.
#[tokio::test]
async fn idle_nodes_share_one_at_a_time_jobs_whether_the_pool_is_read_whole_or_sampled() {
    for sample in [8, 3] {
        let redis = RedisServer::start().await;
        let inst = start_tweaked(&redis, |c| c.jobs.sample = sample).await;
        let mut c = redis.client().await;
        let url = ws_url(&inst, "/ws/node");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let n = AutoNode::start(&url, fixture("node_register_first"), Duration::ZERO).await;
            nodes.push(n);
        }
        let (mut s, sid) = session(&inst).await;
        const N: u64 = 60;
        for i in 0..N {
            s.send(&utterance(&sid, i)).await;
            let got = terminals(&mut s, 1, T).await;
            assert_eq!(got[0]["type"], "translation_result", "{got:?}");
        }
        let counts: Vec<usize> = nodes.iter().map(AutoNode::jobs).collect();
        assert_eq!(counts.iter().sum::<usize>(), N as usize);
        assert!(
            counts.iter().all(|n| *n > 0),
            "sample {sample}: jobs per node {counts:?}: the pool is looked at in a fixed order"
        );
        invariants::check(&mut c).await;
    }
}

#[tokio::test]
async fn a_job_waits_in_the_queue_and_is_served_when_capacity_frees() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |f| f["max_concurrent_jobs"] = json!(1)).await;
    let (mut s, sid) = session(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    s.send(&utterance(&sid, 1)).await;
    let a0 = assign(&mut n).await;
    assert!(
        next_of(&mut n, "job_assign", Duration::from_millis(300))
            .await
            .is_none(),
        "capacity 1"
    );
    let queued: Vec<String> = c
        .lrange(format!("{PREFIX}queue:pub:zh:en"), 0, -1)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(job(&mut c, &queued[0]).await["state"], "QUEUED");
    invariants::check(&mut c).await;
    n.send(&answer(&a0, &nid, "zero")).await;
    let a1 = assign(&mut n).await;
    assert_eq!(a1["utterance_index"], 1);
    n.send(&answer(&a1, &nid, "one")).await;
    let got = terminals(&mut s, 2, T).await;
    assert_eq!(got[1]["text_translated"], "one");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_queued_job_times_out_with_no_available_node() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.jobs.queue_wait_ms = 300).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |f| f["max_concurrent_jobs"] = json!(1)).await;
    let (mut s, sid) = session(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    s.send(&utterance(&sid, 1)).await;
    let a0 = assign(&mut n).await;
    // Index 1 fails after the queue wait; its error is released after the reorder window
    // although index 0 is still running.
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(got[0]["type"], "error");
    assert_eq!(got[0]["code"], "NO_AVAILABLE_NODE");
    assert_eq!(got[0]["utterance_index"], 1);
    n.send(&answer(&a0, &nid, "zero")).await;
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(got[0]["utterance_index"], 0);
    assert_eq!(got[0]["type"], "translation_result");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn two_way_auto_needs_a_node_serving_both_directions() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut one_way, _) = node(&inst, |f| {
        f["supported_language_pairs"] = json!([{"src": "zh", "tgt": "en"}])
    })
    .await;
    let (mut both, _) = node(&inst, |_| {}).await;
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_two_way"),
    )
    .await;
    for i in 0..4 {
        let mut u = utterance(&sid, i);
        u["src_lang"] = json!("auto");
        u["mode"] = json!("two_way_auto");
        u["lang_a"] = json!("zh");
        u["lang_b"] = json!("en");
        s.send(&u).await;
        let a = assign(&mut both).await;
        assert_eq!(a["mode"], "two_way_auto");
    }
    assert!(
        next_of(&mut one_way, "job_assign", Duration::from_millis(200))
            .await
            .is_none()
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_pair_no_node_serves_fails_at_once() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.jobs.queue_wait_ms = 10_000).await;
    let mut c = redis.client().await;
    let (_n, _) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    let mut u = utterance(&sid, 0);
    u["tgt_lang"] = json!("ko");
    let started = std::time::Instant::now();
    s.send(&u).await;
    let e = terminals(&mut s, 1, T).await;
    assert_eq!(e[0]["code"], "NO_AVAILABLE_NODE");
    assert!(
        e[0]["message"].as_str().unwrap().contains("zh→ko"),
        "{}",
        e[0]
    );
    assert!(
        started.elapsed() < Duration::from_millis(3_000),
        "immediate, not after the queue wait (10 s)"
    );
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_node_that_lowers_its_capacity_with_jobs_in_flight_is_never_oversold() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |f| f["max_concurrent_jobs"] = json!(2)).await;
    let (mut s, sid) = session(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    s.send(&utterance(&sid, 1)).await;
    let a0 = assign(&mut n).await;
    let a1 = assign(&mut n).await;
    // It reconnects announcing capacity 1 while both jobs run.
    n.drop_connection();
    let mut n2 = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mut f = fixture("node_register_first");
    f["max_concurrent_jobs"] = json!(1);
    n2.register(f, Some(&nid)).await;
    let h: HashMap<String, String> = c.hgetall(format!("{PREFIX}node:{nid}")).await.unwrap();
    assert_eq!(
        (h["reserved"].as_str(), h["capacity"].as_str()),
        ("2", "2"),
        "capacity waits for in-flight jobs"
    );
    assert_eq!(h["capacity_target"], "1");
    invariants::check(&mut c).await;
    n2.send(&answer(&a0, &nid, "zero")).await;
    n2.send(&answer(&a1, &nid, "one")).await;
    assert_eq!(terminals(&mut s, 2, T).await.len(), 2);
    let h: HashMap<String, String> = c.hgetall(format!("{PREFIX}node:{nid}")).await.unwrap();
    assert_eq!(
        (h["reserved"].as_str(), h["capacity"].as_str()),
        ("0", "1"),
        "then the lower capacity applies"
    );
    invariants::check(&mut c).await;
}

#[path = "jobs/checker.rs"]
mod checker;

#[path = "jobs/tenants.rs"]
mod tenants;
