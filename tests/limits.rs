//! Abuse limits against a real redis-server (issue 9 row 6; docs/security.md "Limits"):
//! frame rate (RATE_LIMITED, then 1008), connections per instance (503), slow request
//! headers and silent connections (closed), plain HTTP connections (capped per listener,
//! closed after their lifetime), invalid UTF-8 (1007). Wrong-typed fields are in
//! tests/shapes.rs.

mod common;

use std::time::Duration;

use common::actors::{next_of, open_session};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

fn heartbeat() -> serde_json::Value {
    json!({"type": "client_heartbeat", "session_id": "s-none"})
}

/// An instance whose sessions may send 5 frames a second (burst 5), closed after 10 drops.
async fn slow_rate(redis: &RedisServer) -> switchyard::server::Running {
    start_tweaked(redis, |c| {
        c.limits.session_frames_per_sec = 5.0;
        c.limits.session_frame_burst = 5;
        c.limits.rate_limit_strikes = 10;
    })
    .await
}

#[tokio::test]
async fn frames_over_the_rate_get_rate_limited_then_close_1008() {
    let redis = RedisServer::start().await;
    let inst = slow_rate(&redis).await;
    let mut s = WsClient::connect(&ws_url(&inst, "/ws/session")).await;
    for _ in 0..40 {
        s.send(&heartbeat()).await;
    }
    let (mut limited, mut other) = (0, 0);
    let code = loop {
        match s.next(Duration::from_secs(5)).await {
            Ok(v) if v["code"] == "RATE_LIMITED" => limited += 1,
            Ok(_) => other += 1,
            Err(common::ws::Ended::Closed(code)) => break code,
            Err(e) => panic!("no close: {e:?}"),
        }
    };
    assert_eq!(code, Some(1008));
    assert_eq!(
        limited, 10,
        "one RATE_LIMITED per dropped frame up to the strikes"
    );
    assert_eq!(
        other, 5,
        "the burst was processed (each got its own answer)"
    );
    let text = metrics_text(&inst).await;
    assert!(
        text.contains(r#"switchyard_limited_total{kind="session",detail="rate"} 10"#),
        "{text}"
    );
    assert!(
        text.contains(r#"switchyard_limited_total{kind="session",detail="rate_close"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_dropped_utterance_names_its_index_in_the_rate_limited_error() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.limits.session_frames_per_sec = 0.1;
        c.limits.session_frame_burst = 4;
        c.limits.rate_limit_strikes = 50;
    })
    .await;
    let url = ws_url(&inst, "/ws/session");
    let (mut s, sid) = open_session(&url, fixture("session_init_one_way")).await;
    // No node serves the pair: an utterance that is read ends at once in its terminal
    // NO_AVAILABLE_NODE; one dropped unread gets RATE_LIMITED naming it in `details`.
    for idx in 0..8 {
        s.send(&common::actors::utterance(&sid, idx)).await;
    }
    s.send(&heartbeat()).await;
    let (mut read, mut dropped) = (Vec::new(), Vec::new());
    let mut unnamed = 0;
    while read.len() + dropped.len() + unnamed < 9 {
        let v = s.next(Duration::from_secs(5)).await.expect("an answer");
        if v["code"] == "RATE_LIMITED" {
            assert!(v.get("utterance_index").is_none(), "not a terminal: {v}");
            match v["details"]["utterance_index"].as_u64() {
                Some(i) => dropped.push(i),
                None => unnamed += 1,
            }
        } else if v["type"] == "error" && v["code"] == "NO_AVAILABLE_NODE" {
            read.push(v["utterance_index"].as_u64().expect("terminal index"));
        }
    }
    // session_init took one of the 4 tokens: 3 utterances read, the 5 after them dropped,
    // and the heartbeat too, which names nothing.
    assert_eq!(read, vec![0, 1, 2]);
    assert_eq!(dropped, vec![3, 4, 5, 6, 7]);
    assert_eq!(unnamed, 1, "the dropped heartbeat");
    invariants::check(&mut redis.client().await).await;
}

#[tokio::test]
async fn the_issues_flood_of_20000_frames_is_cut_off_with_the_default_limits() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&inst, "/ws/session"))
        .await
        .expect("connect");
    let frame = heartbeat().to_string();
    let mut sent = 0;
    for _ in 0..20_000 {
        if ws.feed(Message::Text(frame.clone().into())).await.is_err() {
            break; // closed under us: the point
        }
        sent += 1;
    }
    let _ = ws.flush().await;
    let (mut answered, mut limited) = (0, 0);
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Err(_) => panic!("not closed"),
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.as_str().contains("RATE_LIMITED") {
                    limited += 1;
                } else {
                    answered += 1;
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(None) | Ok(Some(Err(_))) => break None,
        }
    };
    assert_eq!(code, Some(1008), "sent {sent}");
    assert_eq!(limited, 50, "rate_limit_strikes answers before the close");
    assert!(
        (400..2_000).contains(&answered),
        "the burst and a little refill were processed, not {answered} of {sent}"
    );
}

/// Only a pong that answers one of the instance's pings is exempt from the frame rate:
/// unsolicited pongs count like any frame (a pong flood ran an instance's one runtime
/// thread at 100 %, never limited; resource audit).
#[tokio::test]
async fn unsolicited_pongs_count_against_the_frame_rate() {
    let redis = RedisServer::start().await;
    let inst = slow_rate(&redis).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&inst, "/ws/session"))
        .await
        .expect("connect");
    for _ in 0..40 {
        ws.send(Message::Pong(Default::default()))
            .await
            .expect("send pong");
    }
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close after a pong flood: {other:?}"),
        }
    };
    assert_eq!(code, Some(1008));
    let text = metrics_text(&inst).await;
    assert!(
        text.contains(r#"switchyard_limited_total{kind="session",detail="rate_close"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_peer_within_the_rate_is_never_limited() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.limits.session_frames_per_sec = 50.0;
        c.limits.session_frame_burst = 5;
    })
    .await;
    let mut s = WsClient::connect(&ws_url(&inst, "/ws/session")).await;
    for _ in 0..20 {
        s.send(&heartbeat()).await;
        let v = s.next(Duration::from_secs(5)).await.expect("answer");
        assert_ne!(v["code"], "RATE_LIMITED", "{v}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test]
async fn upgrades_beyond_max_connections_get_503() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.limits.max_connections = 2).await;
    let a = WsClient::connect(&ws_url(&inst, "/ws/session")).await;
    let _b = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    // (the close of `a` below may take a few tries to free its slot: each is counted)
    let refused = tokio_tungstenite::connect_async(ws_url(&inst, "/ws/session")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503)
        }
        other => panic!(
            "third upgrade not refused with 503: {:?}",
            other.map(|_| ())
        ),
    }
    // HTTP still answers while full, and a slot frees when a connection ends.
    let (status, _) = get_json(&http_url(&inst, "/healthz")).await;
    assert_eq!(status, 200);
    a.close().await;
    eventually(Duration::from_secs(5), "a slot to free up", || async {
        tokio_tungstenite::connect_async(ws_url(&inst, "/ws/session"))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let text = metrics_text(&inst).await;
    assert!(
        text.contains(r#"switchyard_limited_total{kind="session",detail="connections"} "#),
        "{text}"
    );
}

#[tokio::test]
async fn invalid_utf8_text_frame_closes_1007() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&inst, "/ws/session"))
        .await
        .expect("connect");
    let bad = Frame::message(
        vec![b'{', 0xC3, 0x28, 0xFF, b'}'],
        OpCode::Data(Data::Text),
        true,
    );
    ws.send(Message::Frame(bad)).await.expect("send raw frame");
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Err(_) => panic!("no close"),
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(None) | Ok(Some(Err(_))) => break None,
        }
    };
    assert_eq!(code, Some(1007));
}

#[path = "limits/http.rs"]
mod http;
