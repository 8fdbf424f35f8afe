//! The session side of the job path: session messages validated and answered, audio cut into
//! utterances (on is_final, at the maximum duration keeping the turn on one node, by the pause
//! after the receiving instance is gone) and the idle TTL of an active session, with real
//! lingua-shaped frames against a real redis-server. Every scenario ends with the invariant
//! checker.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::actors::*;
use common::invariants::{self, PREFIX};
use common::jobs::*;
use common::*;
use redis::AsyncCommands;
use serde_json::json;
use switchyard::store::sessions::{OpenReply, SessionReply};

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn streamed_audio_is_cut_on_is_final_and_an_empty_cut_makes_no_job() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    let mut expected = Vec::new();
    for seq in 0..3 {
        let mut ch = for_session("audio_chunk", &sid);
        ch["seq"] = json!(seq);
        expected.extend(B64.decode(ch["payload"].as_str().unwrap()).unwrap());
        s.send(&ch).await;
    }
    let fin = for_session("audio_chunk_final_empty", &sid);
    s.send(&fin).await;
    let a = assign(&mut n).await;
    assert_eq!(
        B64.decode(a["audio"].as_str().unwrap()).unwrap(),
        expected,
        "payloads concatenated"
    );
    assert_eq!(a["utterance_index"], 0);
    assert_eq!(a["padding_ms"], 280);
    assert_eq!(a["is_manual_cut"], true);
    assert!(a["turn_id"].as_str().is_some_and(|t| t.starts_with(&sid)));
    // An is_final with nothing buffered creates no job and uses no index.
    s.send(&fin).await;
    assert!(
        next_of(&mut n, "job_assign", Duration::from_millis(400))
            .await
            .is_none()
    );
    n.send(&answer(&a, &nid, "one")).await;
    let r = terminals(&mut s, 1, T).await;
    assert_eq!(r[0]["utterance_index"], 0);
    let next: String = c
        .hget(format!("{PREFIX}session:{sid}"), "next_index")
        .await
        .unwrap();
    assert_eq!(next, "1");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn max_duration_cuts_keep_the_turn_on_one_node() {
    let redis = RedisServer::start().await;
    // ~600 Opus bytes ≈ 200 ms: every fixture chunk (≈ 600 bytes) forces a max-duration cut.
    // (The 30-byte manual cut below is a turn marker, not speech: no minimum cut length.)
    let inst = start_tweaked(&redis, |c| {
        c.session.max_duration_ms = 200;
        c.session.min_cut_ms = 0;
    })
    .await;
    let mut c = redis.client().await;
    let (mut a, _) = node(&inst, |_| {}).await;
    let (mut b, _) = node(&inst, |_| {}).await;
    let (mut s, sid) = session(&inst).await;
    let ch = for_session("audio_chunk", &sid);
    s.send(&ch).await;
    let (first, other, j1) = tokio::select! {
        v = assign(&mut a) => (&mut a, &mut b, v),
        v = assign(&mut b) => (&mut b, &mut a, v),
    };
    assert_eq!(j1["is_max_duration_triggered"], true);
    let turn = j1["turn_id"].clone();
    // The first node is now busier than the other; only turn affinity sends it the next one.
    s.send(&ch).await;
    let j2 = assign(first).await;
    assert_eq!(j2["turn_id"], turn);
    let mut fin = for_session("audio_chunk_final_empty", &sid);
    fin["payload"] = json!(B64.encode([1u8; 30]));
    s.send(&fin).await;
    let j3 = assign(first).await;
    assert_eq!(j3["turn_id"], turn, "the manual cut ends the same turn");
    assert!(
        next_of(other, "job_assign", Duration::from_millis(200))
            .await
            .is_none()
    );
    // The next turn is a new one.
    s.send(&fin).await;
    let j4 = tokio::select! { v = assign(first) => v, v = assign(other) => v };
    assert_ne!(j4["turn_id"], turn);
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn a_pause_cut_fires_after_the_receiving_instance_is_gone() {
    let redis = RedisServer::start().await;
    let a = start_instance(&redis).await;
    let b = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, _) = node(&b, |_| {}).await;
    let (mut s, sid) = session(&a).await;
    let ch = for_session("audio_chunk", &sid);
    s.send(&ch).await;
    s.send(&ch).await;
    // Wait until both chunks are in Redis, then the receiving instance dies.
    eventually(T, "chunks buffered", || {
        let mut c = c.clone();
        let sid = sid.clone();
        async move {
            let b: String = c
                .hget(format!("{PREFIX}session:{sid}"), "buf_bytes")
                .await
                .ok()?;
            (b.parse::<u64>().ok()? > 1000).then_some(())
        }
    })
    .await;
    a.abort();
    let j = assign(&mut n).await;
    assert_eq!(j["is_timeout_triggered"], true);
    assert_eq!(j["padding_ms"], 220);
    assert_eq!(j["session_id"], sid.as_str());
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn session_messages_are_validated_and_answered() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let (mut n, nid) = node(&inst, |_| {}).await;
    let mut s = WsClient::connect(&ws_url(&inst, "/ws/session")).await;
    s.send(&utterance("s-00000000", 0)).await;
    assert_eq!(s.recv_type("error").await["code"], "INVALID_SESSION");
    s.send(&json!({"type": "session_init", "platform": "web"}))
        .await;
    assert_eq!(s.recv_type("error").await["code"], "INVALID_MESSAGE");
    s.send(&fixture("session_init_one_way")).await;
    let ack = s.recv_type("session_init_ack").await;
    for (k, v) in [
        ("protocol_version", json!("1.0")),
        ("use_binary_frame", json!(false)),
        ("negotiated_codec", json!("opus")),
        ("negotiated_audio_format", json!("opus")),
        ("negotiated_sample_rate", json!(16000)),
        ("negotiated_channel_count", json!(1)),
    ] {
        assert_eq!(ack[k], v, "{k}");
    }
    let sid = ack["session_id"].as_str().unwrap().to_string();
    assert!(sid.starts_with("s-") && sid.len() == 10);
    s.send(&json!({"type": "room_join", "room_code": "1234"}))
        .await;
    assert_eq!(s.recv_type("error").await["code"], "UNSUPPORTED_FEATURE");
    s.send(&json!({"type": "webrtc_offer"})).await;
    assert_eq!(s.recv_type("error").await["code"], "UNSUPPORTED_FEATURE");
    let invalid = r#"switchyard_messages_rejected_total{kind="session",detail="invalid"}"#;
    let before = sample(&metrics_text(&inst).await, invalid).unwrap_or(0.0);
    let mut bad = utterance(&sid, 3);
    bad["audio"] = json!("***not base64***");
    s.send(&bad).await;
    // A refusal names the utterance in details, never as a terminal message of its index.
    let e = s.recv_type("error").await;
    assert_eq!(e["code"], "INVALID_MESSAGE", "{e}");
    assert_eq!(e["details"], json!({"utterance_index": 3}), "{e}");
    assert!(!is_terminal(&e), "{e}");
    // (counted as refused, as every invalid frame is: observability audit)
    let m = metrics_text(&inst).await;
    assert_eq!(sample(&m, invalid), Some(before + 1.0), "{m}");
    s.send(&utterance("s-FFFFFFFF", 4)).await;
    let e = s.recv_type("error").await;
    assert_eq!(e["code"], "INVALID_SESSION", "{e}");
    assert_eq!(e["details"]["utterance_index"], 4, "{e}");
    let hb = for_session("client_heartbeat", &sid);
    s.send(&hb).await;
    assert_eq!(
        s.recv_type("server_heartbeat").await["session_id"],
        sid.as_str()
    );
    let tts = for_session("tts_play_ended", &sid);
    s.send(&tts).await;
    s.expect_silence(Duration::from_millis(200)).await;
    // Nothing above created a job.
    assert!(
        next_of(&mut n, "job_assign", Duration::from_millis(100))
            .await
            .is_none()
    );
    // session_close flushes the buffer into a last job, then acks.
    let ch = for_session("audio_chunk", &sid);
    s.send(&ch).await;
    let close = for_session("session_close", &sid);
    s.send(&close).await;
    s.recv_type("session_close_ack").await;
    let a = assign(&mut n).await;
    assert_eq!(a["is_manual_cut"], true);
    s.send(&ch).await;
    assert_eq!(s.recv_type("error").await["code"], "SESSION_CLOSED");
    n.send(&answer(&a, &nid, "bye")).await;
    assert_eq!(terminals(&mut s, 1, T).await[0]["text_translated"], "bye");
    invariants::check(&mut c).await;
}

#[tokio::test]
async fn an_active_session_keeps_living_past_its_idle_ttl() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.session.idle_ttl_ms = 1_600;
        c.session.result_retention_ms = 1_000;
    })
    .await;
    let mut c = redis.client().await;
    let (mut s, sid) = session(&inst).await;
    let hb = for_session("client_heartbeat", &sid);
    // Activity every 100 ms for three idle TTLs: the session must stay.
    for _ in 0..48 {
        s.send(&hb).await;
        s.recv_type("server_heartbeat").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ttl: i64 = c.pttl(format!("{PREFIX}session:{sid}")).await.unwrap();
    assert!(ttl > 1_000, "TTL refreshed by activity: {ttl}");
    invariants::check(&mut c).await;
}

/// A minted session id is refused while any key of an earlier session of that id lingers:
/// a session's job index, result log and audio buffer get their own TTLs and can outlive its
/// record, and a new session that found them would take its first utterance for a resend.
#[tokio::test]
async fn a_minted_session_id_is_refused_while_keys_of_an_earlier_session_linger() {
    let redis = RedisServer::start().await;
    let cfg = test_config(&redis.url());
    let inst = common::model::Instance::new(&cfg, "i-mint".into());
    let mut c = redis.client().await;
    let store = &inst.store;
    let open = |sid: &'static str| async move {
        let out = store
            .session_open(sid, true, "i-mint/1", "n0", None, 0, &[])
            .await
            .expect("session_open");
        out.reply
    };
    for (sid, key) in [
        ("s-00000001", "jobs"),
        ("s-00000002", "results"),
        ("s-00000003", "pending"),
        ("s-00000004", "audio"),
        ("s-00000005", "rtime"),
    ] {
        let lingering = format!("{PREFIX}session:{sid}:{key}");
        let _: () = c.set_ex(&lingering, "old", 60).await.unwrap();
        assert_eq!(open(sid).await, OpenReply::Taken, "{key} lingers");
        let created: bool = c.exists(format!("{PREFIX}session:{sid}")).await.unwrap();
        assert!(!created, "a refused id writes nothing ({key})");
        let _: () = c.del(&lingering).await.unwrap();
    }
    assert_eq!(open("s-00000006").await, OpenReply::Ok, "a free id opens");
    assert_eq!(
        open("s-00000006").await,
        OpenReply::Taken,
        "its record holds it"
    );
    invariants::check(&mut c).await;
}

/// Review finding (docs/scaling.md): on a cluster the redis client resends a command whose
/// connection reset after it was sent, so an `audio_append` that had run ran again and its
/// chunk was buffered twice. A connection now numbers its chunks and the script skips one
/// it has appended already; a skipped repeat of a chunk that cut answers "reply lost"
/// (what that cut released went with the first reply).
#[tokio::test]
async fn an_audio_chunk_sent_twice_is_buffered_once() {
    let redis = RedisServer::start().await;
    let cfg = test_config(&redis.url());
    let mut inst = common::model::Instance::new(&cfg, "i-resend".into());
    let token = inst.token();
    let store = &inst.store;
    let mut c = redis.client().await;
    let sid = "s-0000000d";
    let open = store
        .session_open(sid, false, &token, "n0", None, 0, &[])
        .await
        .expect("session_open");
    assert_eq!(open.reply, OpenReply::Ok);
    let audio = format!("{PREFIX}session:{sid}:audio");
    let chunk = b"0123456789";
    let append =
        |seq: u64, is_final: bool| store.audio_append(sid, &token, chunk, is_final, 20, None, seq);
    let first = append(1, false).await.expect("audio_append");
    assert!(
        matches!(first.reply, SessionReply::Ok { cut: None, .. }),
        "{:?}",
        first.reply
    );
    // The same call again, as the cluster client resends it.
    let again = append(1, false).await.expect("audio_append again");
    let buffered: usize = c.strlen(&audio).await.unwrap();
    assert_eq!(
        buffered,
        chunk.len(),
        "a chunk sent twice was buffered twice"
    );
    let bytes: u64 = c
        .hget(format!("{PREFIX}session:{sid}"), "buf_bytes")
        .await
        .unwrap();
    assert_eq!(bytes, chunk.len() as u64);
    assert_eq!(again.reply, SessionReply::Repeat { cut: false });
    append(2, false).await.expect("the next chunk");
    let buffered: usize = c.strlen(&audio).await.unwrap();
    assert_eq!(buffered, 2 * chunk.len(), "the next chunk is appended");
    // A final chunk cuts (40 ms: too short for a job, session.min_cut_ms); its repeat
    // changes nothing and says its first reply was lost.
    let cut = append(3, true).await.expect("final chunk");
    assert!(
        matches!(cut.reply, SessionReply::Ok { cut: Some(_), .. }),
        "{:?}",
        cut.reply
    );
    match append(3, true).await {
        Err(e) => assert!(e.is_ambiguous(), "{e}"),
        Ok(o) => panic!("a repeated cut answered {:?}", o.reply),
    }
    let skipped: u64 = c
        .hget(format!("{PREFIX}session:{sid}"), "buf_bytes")
        .await
        .unwrap();
    assert_eq!(skipped, 0);
    // Another connection of the session (a resume) numbers its chunks from 1 again.
    let other = inst.token();
    let _: () = c
        .hset(format!("{PREFIX}session:{sid}"), "conn", &other)
        .await
        .unwrap();
    inst.store
        .audio_append(sid, &other, chunk, false, 20, None, 1)
        .await
        .expect("audio_append");
    let buffered: usize = c.strlen(&audio).await.unwrap();
    assert_eq!(
        buffered,
        chunk.len(),
        "a new connection's first chunk is appended"
    );
    invariants::check(&mut c).await;
}

#[path = "sessions/advance_bound.rs"]
mod advance_bound;
#[path = "sessions/frames.rs"]
mod frames;
#[path = "sessions/gaps.rs"]
mod gaps;
#[path = "sessions/lifetimes.rs"]
mod lifetimes;
#[path = "sessions/playback.rs"]
mod playback;

#[path = "sessions/held_cuts.rs"]
mod held_cuts;
#[path = "sessions/turns.rs"]
mod turns;
