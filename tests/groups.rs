//! Utterance groups for the lingua web client (issue 12): `group_id` / `part_index` on
//! results with text, the window, `tts_play_ended` keeping a group open, `session_close`
//! closing it, bounded context sent as `context_text`, and groups surviving an instance
//! restart. Real redis-server, real WebSocket clients, lingua fixtures; every scenario ends
//! with the invariant checker.

mod common;

use std::time::Duration;

use common::actors::*;
use common::invariants::{self};
use common::*;
use redis::AsyncCommands;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);

/// The parts of the session's stored group context, cut by `grp_lens` (the grp_part it was
/// written with, the context's bytes, then bytes.chars per part), which must all agree with
/// the record: the part, the total, byte lengths with one separator between parts, and the
/// character count of each part.
async fn context_parts(c: &mut redis::aio::MultiplexedConnection, sid: &str) -> Vec<String> {
    let ctx = session_field(c, sid, "grp_ctx").await;
    let lens = session_field(c, sid, "grp_lens").await;
    let part = session_field(c, sid, "grp_part").await;
    let mut fields = lens.splitn(3, ':');
    let (written, total, list) = (fields.next(), fields.next(), fields.next());
    assert_eq!(
        written,
        Some(part.as_str()),
        "{lens} written with grp_part {part}"
    );
    let total: usize = total.and_then(|t| t.parse().ok()).expect("total");
    assert_eq!(total, ctx.len(), "{lens}");
    let list = list.expect("parts");
    let mut parts = Vec::new();
    let mut at = 0;
    for l in list.split(',') {
        let (b, ch) = l.split_once('.').expect("bytes.chars");
        let (b, ch): (usize, usize) = (b.parse().expect("bytes"), ch.parse().expect("chars"));
        let part = &ctx[at..at + b];
        assert_eq!(part.chars().count(), ch, "characters of {part:?} ({lens})");
        parts.push(part.to_string());
        at += b + 1;
    }
    assert_eq!(at, ctx.len() + 1, "grp_lens {lens} does not cover {ctx:?}");
    parts
}

/// Send utterance `idx`, let the node answer with `asr`, and return the translation_result.
async fn round(
    s: &mut WsClient,
    sid: &str,
    n: &mut WsClient,
    nid: &str,
    idx: u64,
    asr: &str,
) -> Value {
    s.send(&utterance(sid, idx)).await;
    let a = assign(n).await;
    answer_asr(n, &a, nid, asr).await;
    let r = terminals(s, 1, T).await.remove(0);
    assert_eq!(r["utterance_index"], idx);
    r
}

fn group(r: &Value) -> (&str, u64) {
    (
        r["group_id"].as_str().expect("group_id"),
        r["part_index"].as_u64().expect("part_index"),
    )
}

fn tts_play_ended(sid: &str, group_id: &str) -> Value {
    let mut m = for_session("tts_play_ended", sid);
    m["group_id"] = json!(group_id);
    m
}

/// Send tts_play_ended and wait until the script ran (the anchor moved, or a heartbeat
/// round trip when it must not move).
async fn play_ended(s: &mut WsClient, sid: &str, group_id: &str) {
    s.send(&tts_play_ended(sid, group_id)).await;
    handled(s, sid).await;
}

#[tokio::test]
async fn results_with_text_join_one_group_with_consecutive_parts_and_bounded_context() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.session.group_window_ms = 30_000).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    let r0 = round(&mut s, &sid, &mut n, &nid, 0, "我们开始测试").await;
    let gid = format!("g-{sid}-1");
    assert_eq!(group(&r0), (gid.as_str(), 0));
    // The next job carries the group's context for the node.
    s.send(&utterance(&sid, 1)).await;
    let a1 = assign(&mut n).await;
    assert_eq!(a1["context_text"], "User: 我们开始测试\nTarget: T0");
    answer_asr(&mut n, &a1, &nid, "第二句").await;
    let r1 = terminals(&mut s, 1, T).await.remove(0);
    assert_eq!(group(&r1), (gid.as_str(), 1));
    // An empty result settles its index but joins no group and uses no part.
    s.send(&utterance(&sid, 2)).await;
    let a2 = assign(&mut n).await;
    let mut empty = fixture("job_result_empty");
    for k in [
        "job_id",
        "attempt_id",
        "session_id",
        "utterance_index",
        "trace_id",
    ] {
        empty[k] = a2[k].clone();
    }
    empty["node_id"] = json!(nid);
    n.send(&empty).await;
    let r2 = terminals(&mut s, 1, T).await.remove(0);
    assert_eq!(r2["type"], "translation_result");
    assert!(
        r2.get("group_id").is_none() && r2.get("part_index").is_none(),
        "{r2}"
    );
    // A node's own group fields are not passed on: Switchyard decides.
    s.send(&utterance(&sid, 3)).await;
    let a3 = assign(&mut n).await;
    let mut r = result_for(&a3, "T3");
    r["node_id"] = json!(nid);
    r["group_id"] = json!("group_from_node");
    r["part_index"] = json!(99);
    n.send(&r).await;
    let r3 = terminals(&mut s, 1, T).await.remove(0);
    assert_eq!(group(&r3), (gid.as_str(), 2));
    // More parts: the stored context keeps the last 8 parts, then at most 800 characters
    // (three long parts push the short ones out), always with the newest part.
    for i in 4..15u64 {
        let asr = if i >= 12 {
            "长".repeat(300)
        } else {
            format!("句子{i}")
        };
        let r = round(&mut s, &sid, &mut n, &nid, i, &asr).await;
        assert_eq!(group(&r), (gid.as_str(), i - 1), "parts without gaps");
        if i == 11 {
            let parts = context_parts(&mut c, &sid).await;
            assert_eq!(parts.len(), 8, "{parts:?}");
            assert_eq!(parts[0], "User: 句子4\nTarget: T4");
            assert_eq!(parts[7], "User: 句子11\nTarget: T11");
        }
    }
    let ctx = session_field(&mut c, &sid, "grp_ctx").await;
    let parts = context_parts(&mut c, &sid).await;
    assert!(ctx.chars().count() <= 800, "{} chars", ctx.chars().count());
    assert!(parts.len() < 8, "{} parts", parts.len());
    let last = parts.last().expect("a part");
    assert!(last.starts_with("User: 长"), "{ctx}");
    assert!(last.ends_with("Target: T14"), "{ctx}");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_result_after_the_window_starts_a_new_group_and_session_close_closes_it() {
    let redis = RedisServer::start().await;
    // (two rounds must fit in the window on a loaded machine; the sleeps outlast it)
    let inst = start_tweaked(&redis, |c| c.session.group_window_ms = 1_500).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    let r0 = round(&mut s, &sid, &mut n, &nid, 0, "一").await;
    let r1 = round(&mut s, &sid, &mut n, &nid, 1, "二").await;
    assert_eq!(group(&r0), (format!("g-{sid}-1").as_str(), 0));
    assert_eq!(group(&r1), (format!("g-{sid}-1").as_str(), 1));
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    let r2 = round(&mut s, &sid, &mut n, &nid, 2, "三").await;
    assert_eq!(
        group(&r2),
        (format!("g-{sid}-2").as_str(), 0),
        "window passed"
    );
    // No new job gets the old group's context once the window is over.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    s.send(&utterance(&sid, 3)).await;
    let a3 = assign(&mut n).await;
    assert!(a3.get("context_text").is_none(), "{a3}");
    // session_close closes the group: a result still in flight starts a new one.
    let close = for_session("session_close", &sid);
    s.send(&close).await;
    s.recv_type("session_close_ack").await;
    answer_asr(&mut n, &a3, &nid, "四").await;
    let r3 = terminals(&mut s, 1, T).await.remove(0);
    assert_eq!(group(&r3), (format!("g-{sid}-3").as_str(), 0));
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn tts_play_ended_keeps_its_group_open_past_the_window() {
    let redis = RedisServer::start().await;
    // (a round must fit between the end of playback and the end of the window that
    // playback restarted, with room for a loaded machine)
    let inst = start_tweaked(&redis, |c| c.session.group_window_ms = 2_000).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    let r0 = round(&mut s, &sid, &mut n, &nid, 0, "一").await;
    let g1 = format!("g-{sid}-1");
    assert_eq!(group(&r0), (g1.as_str(), 0));
    // Playback ends after 1200 ms; another group id (an old or foreign one) moves nothing.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let anchor = session_field(&mut c, &sid, "grp_anchor").await;
    play_ended(&mut s, &sid, "group_s-9A1B2C3D_1767225601234").await;
    assert_eq!(session_field(&mut c, &sid, "grp_anchor").await, anchor);
    play_ended(&mut s, &sid, &g1).await;
    assert_ne!(session_field(&mut c, &sid, "grp_anchor").await, anchor);
    // 2200 ms after the group started (past the window) but 1000 ms after playback ended.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let r1 = round(&mut s, &sid, &mut n, &nid, 1, "二").await;
    assert_eq!(group(&r1), (g1.as_str(), 1), "kept open by tts_play_ended");
    // Without playback reports the window closes it.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let r2 = round(&mut s, &sid, &mut n, &nid, 2, "三").await;
    assert_eq!(group(&r2), (format!("g-{sid}-2").as_str(), 0));
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn groups_continue_across_an_instance_restart() {
    let redis = RedisServer::start().await;
    let a = start_tweaked(&redis, |c| c.session.group_window_ms = 30_000).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&a, None).await;
    let mut s = WsClient::connect(&ws_url(&a, "/ws/session")).await;
    s.send(&fixture("session_init_one_way")).await;
    let ack = s.recv_type("session_init_ack").await;
    let sid = ack["session_id"].as_str().unwrap().to_string();
    let r0 = round(&mut s, &sid, &mut n, &nid, 0, "一").await;
    let r1 = round(&mut s, &sid, &mut n, &nid, 1, "二").await;
    let g1 = format!("g-{sid}-1");
    assert_eq!(group(&r0), (g1.as_str(), 0));
    assert_eq!(group(&r1), (g1.as_str(), 1));
    // A second instance starts, the first is killed; node and client reconnect to it.
    let b = start_tweaked(&redis, |c| c.session.group_window_ms = 30_000).await;
    a.abort();
    n.drop_connection();
    drop(s);
    let (mut n, _) = node_on(&b, Some(&nid)).await;
    let mut init = fixture("session_init_one_way");
    init["resume_session_id"] = json!(sid);
    init["last_received_index"] = json!(1);
    if let Some(t) = ack.get("resume_token") {
        init["resume_token"] = t.clone();
    }
    let mut s = WsClient::connect(&ws_url(&b, "/ws/session")).await;
    s.send(&init).await;
    assert_eq!(s.recv_type("session_init_ack").await["resumed"], true);
    play_ended(&mut s, &sid, &g1).await;
    let r2 = round(&mut s, &sid, &mut n, &nid, 2, "三").await;
    assert_eq!(group(&r2), (g1.as_str(), 2), "the group lives in Redis");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_context_stored_by_an_earlier_version_is_read_and_converted_by_the_next_result() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    let r0 = round(&mut s, &sid, &mut n, &nid, 0, "一").await;
    let gid = r0["group_id"].as_str().expect("group").to_string();
    // What an earlier version stored: parts separated by the byte 0x1E, no grp_lens.
    let sk = format!("{}session:{sid}", invariants::PREFIX);
    let old = "User: 一\nTarget: T0\u{1e}User: 二\nTarget: T1";
    let _: () = c
        .hset_multiple(&sk, &[("grp_ctx", old), ("grp_part", "2")])
        .await
        .expect("hset");
    let _: () = c.hdel(&sk, "grp_lens").await.expect("hdel");
    // Its next job_assign reads the old form as the text it stands for...
    s.send(&utterance(&sid, 1)).await;
    let a = assign(&mut n).await;
    assert_eq!(
        a["context_text"],
        "User: 一\nTarget: T0\nUser: 二\nTarget: T1"
    );
    // ... and its result stores the new form, with lengths that add up.
    answer_asr(&mut n, &a, &nid, "三").await;
    let r1 = terminals(&mut s, 1, T).await.remove(0);
    assert_eq!(r1["group_id"], gid.as_str());
    let parts = context_parts(&mut c, &sid).await;
    assert_eq!(
        parts,
        [
            "User: 一\nTarget: T0",
            "User: 二\nTarget: T1",
            "User: 三\nTarget: T1"
        ]
    );
    // An earlier version that starts a group writes its first part and leaves grp_lens as
    // it was: lengths that do not describe the context are not used to cut it.
    let _: () = c
        .hset(&sk, "grp_ctx", "User: 四\nTarget: T9")
        .await
        .expect("hset");
    let r2 = round(&mut s, &sid, &mut n, &nid, 2, "五").await;
    assert_eq!(r2["group_id"], gid.as_str());
    let parts = context_parts(&mut c, &sid).await;
    assert_eq!(parts, ["User: 四\nTarget: T9", "User: 五\nTarget: T2"]);
    // The same with a context of exactly the length grp_lens names: the lengths were written
    // with another grp_part, so they are not used to cut it either.
    let len = session_field(&mut c, &sid, "grp_ctx").await.len();
    let part: u64 = session_field(&mut c, &sid, "grp_part")
        .await
        .parse()
        .expect("part");
    let (ctx, next) = ("x".repeat(len), (part + 1).to_string());
    let _: () = c
        .hset_multiple(&sk, &[("grp_ctx", &ctx), ("grp_part", &next)])
        .await
        .expect("hset");
    let r3 = round(&mut s, &sid, &mut n, &nid, 3, "六").await;
    assert_eq!(r3["group_id"], gid.as_str());
    let parts = context_parts(&mut c, &sid).await;
    assert_eq!(parts, ["x".repeat(len), "User: 六\nTarget: T3".to_string()]);
    invariants::check(&mut c).await;
}
