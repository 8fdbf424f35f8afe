//! Abuse limits and strict input against a real redis-server (issue 9 rows 6, 7): frame
//! rate (RATE_LIMITED, then 1008), connections per instance (503), slow request headers
//! (closed), invalid UTF-8 (1007), and wrong-typed fields (INVALID_MESSAGE naming the
//! field, nothing stored).

mod common;

use std::time::Duration;

use common::invariants::PREFIX;
use common::*;
use futures_util::{SinkExt, StreamExt};
use redis::AsyncCommands;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

fn heartbeat() -> serde_json::Value {
    json!({"type": "client_heartbeat", "session_id": "s-none"})
}

#[tokio::test]
async fn frames_over_the_rate_get_rate_limited_then_close_1008() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.limits.session_frames_per_sec = 5.0;
        c.limits.session_frame_burst = 5;
        c.limits.rate_limit_strikes = 10;
    })
    .await;
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

/// Whether the server closed `tcp` (EOF or reset) within `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // e.g. a 408 before the close
        }
    }
}

#[tokio::test]
async fn slow_request_headers_are_closed_within_the_timeout() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.limits.header_read_timeout_ms = 500;
        c.limits.upgrade_timeout_ms = 1_000;
    })
    .await;
    let mut conns = Vec::new();
    for i in 0..100 {
        let mut tcp = TcpStream::connect(inst.addr).await.expect("connect");
        // Half send a partial request line, half a request line and one header.
        let partial: &[u8] = if i % 2 == 0 {
            b"GET /ws/session HT"
        } else {
            b"GET /ws/session HTTP/1.1\r\nHost: x\r\n"
        };
        tcp.write_all(partial).await.expect("write");
        conns.push(tcp);
    }
    let silent = TcpStream::connect(inst.addr).await.expect("connect");
    conns.push(silent);
    let started = std::time::Instant::now();
    for tcp in conns.iter_mut() {
        let left = Duration::from_millis(3_000).saturating_sub(started.elapsed());
        assert!(
            closed_within(tcp, left).await,
            "a slow connection is still open"
        );
    }
    // A complete request on a fresh connection is still served.
    let (status, _) = get_json(&http_url(&inst, "/healthz")).await;
    assert_eq!(status, 200);
    let text = metrics_text(&inst).await;
    assert!(text.contains(r#"detail="header_timeout"} 100"#), "{text}");
}

#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.limits.header_read_timeout_ms = 300;
        c.limits.upgrade_timeout_ms = 600;
    })
    .await;
    let mut tcp = TcpStream::connect(inst.addr).await.expect("connect");
    assert!(closed_within(&mut tcp, Duration::from_secs(3)).await);
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

type Conn = redis::aio::MultiplexedConnection;

async fn node_keys(c: &mut Conn) -> Vec<String> {
    c.keys(format!("{PREFIX}node:*")).await.expect("keys")
}

/// The next `error` must be INVALID_MESSAGE and name `field`.
async fn expect_invalid(ws: &mut WsClient, field: &str) {
    let e = ws.recv_type("error").await;
    assert_eq!(e["code"], "INVALID_MESSAGE", "{e}");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("`{field}`")),
        "{field} not named: {msg}"
    );
}

#[tokio::test]
async fn register_with_array_language_capabilities_is_refused_and_stores_nothing() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let mut frame = fixture("node_register_first");
    frame["node_id"] = json!("node-strict01");
    frame["language_capabilities"] = json!([["zh", "en"], ["zh", "en"], ["zh", "en"]]);
    node.send(&frame).await;
    expect_invalid(&mut node, "language_capabilities").await;
    node.expect_silence(Duration::from_millis(300)).await;
    assert!(node_keys(&mut c).await.is_empty(), "a node was stored");
    // The same frame with the object shape registers.
    frame["language_capabilities"] =
        fixture("node_register_first")["language_capabilities"].clone();
    let id = node.register_id(frame, Some("node-strict01")).await;
    assert_eq!(id, "node-strict01");
}

#[tokio::test]
async fn heartbeat_with_array_resource_usage_is_refused_and_changes_nothing() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    let id = node.register_id(fixture("node_register_first"), None).await;
    node.heartbeat(&id, None).await;
    let key = format!("{PREFIX}node:{id}");
    eventually(Duration::from_secs(5), "cpu from the heartbeat", || {
        let (mut c, key) = (c.clone(), key.clone());
        async move {
            let cpu: Option<String> = c.hget(&key, "cpu").await.ok()?;
            (cpu.as_deref() == Some("23.5")).then_some(())
        }
    })
    .await;
    let before: std::collections::HashMap<String, String> = c.hgetall(&key).await.expect("hash");
    let mut hb = fixture("node_heartbeat");
    hb["node_id"] = json!(id);
    hb["resource_usage"] = json!([91.5, 12.0]);
    node.send(&hb).await;
    expect_invalid(&mut node, "resource_usage").await;
    // string for a number, one level down
    hb["resource_usage"] = json!({"cpu_percent": "91.5"});
    node.send(&hb).await;
    expect_invalid(&mut node, "resource_usage.cpu_percent").await;
    let after: std::collections::HashMap<String, String> = c.hgetall(&key).await.expect("hash");
    for field in ["cpu", "mem", "gpu", "gpu_mem", "caps_sig", "pools"] {
        assert_eq!(before.get(field), after.get(field), "{field} changed");
    }
    // unknown fields and nulls stay accepted
    hb["resource_usage"] = json!({"cpu_percent": 50.0, "brand_new": [1, 2]});
    hb["installed_models"] = json!(null);
    hb["something_else"] = json!({"x": [1]});
    node.send(&hb).await;
    eventually(
        Duration::from_secs(5),
        "cpu from the tolerant heartbeat",
        || {
            let (mut c, key) = (c.clone(), key.clone());
            async move {
                let cpu: Option<String> = c.hget(&key, "cpu").await.ok()?;
                (cpu.as_deref() == Some("50.0")).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn session_init_with_a_wrong_typed_field_is_refused_and_opens_nothing() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let mut s = WsClient::connect(&ws_url(&inst, "/ws/session")).await;
    let mut init = fixture("session_init_two_way");
    init["src_lang"] = json!(["zh"]);
    s.send(&init).await;
    expect_invalid(&mut s, "src_lang").await;
    let mut init = fixture("session_init_two_way");
    init["auto_langs"] = json!({"zh": true});
    s.send(&init).await;
    expect_invalid(&mut s, "auto_langs").await;
    let sessions: Vec<String> = c.keys(format!("{PREFIX}session:*")).await.expect("keys");
    assert!(sessions.is_empty(), "{sessions:?}");
}

/// Call `script` with the instance's context arguments followed by `rest`.
async fn call_raw(
    inst: &switchyard::server::Running,
    c: &mut Conn,
    script: switchyard::store::scripts::Script,
    keys: &[String],
    rest: &[&[u8]],
) -> Result<redis::Value, redis::RedisError> {
    let scripts = switchyard::store::scripts::Scripts::new();
    let mut inv = scripts.get(script).prepare_invoke();
    for k in keys {
        inv.key(k);
    }
    for a in inst.app.store.args().into_inner() {
        inv.arg(a);
    }
    for a in rest {
        inv.arg(*a);
    }
    inv.invoke_async(c).await
}

#[tokio::test]
async fn scripts_refuse_non_numeric_arguments_before_writing_anything() {
    use switchyard::store::scripts::Script;
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut c = redis.client().await;
    let store = &inst.app.store;
    let (sk, ak) = (
        store.keys.session("s-lua"),
        store.keys.session_audio("s-lua"),
    );

    // A field count that is not a number: no session record.
    let e = call_raw(
        &inst,
        &mut c,
        Script::SessionOpen,
        std::slice::from_ref(&sk),
        &[b"s-lua", b"1", b"conn-1", b"nonce", b"two", b"a", b"b"],
    )
    .await
    .expect_err("refused");
    assert!(e.to_string().contains("bad argument ARGV[9]"), "{e}");
    let exists: bool = c.exists(&sk).await.expect("exists");
    assert!(!exists, "session written despite the bad argument");
    // A count beyond the arguments given is refused too.
    let e = call_raw(
        &inst,
        &mut c,
        Script::SessionOpen,
        std::slice::from_ref(&sk),
        &[b"s-lua", b"1", b"conn-1", b"nonce", b"5", b"a", b"b"],
    )
    .await
    .expect_err("refused");
    assert!(e.to_string().contains("field pairs"), "{e}");

    // With a real session, an audio chunk whose duration is "NaN" appends nothing.
    call_raw(
        &inst,
        &mut c,
        Script::SessionOpen,
        std::slice::from_ref(&sk),
        &[b"s-lua", b"1", b"conn-1", b"nonce", b"0"],
    )
    .await
    .expect("session opens");
    let due = store.keys.due("audio");
    for bad in [&b"NaN"[..], b"inf", b"", b"-5", b"1.5"] {
        let e = call_raw(
            &inst,
            &mut c,
            Script::AudioAppend,
            &[sk.clone(), ak.clone(), due.clone()],
            &[b"s-lua", b"conn-1", b"opus-bytes", b"0", bad],
        )
        .await
        .expect_err("refused");
        assert!(e.to_string().contains("duration ms"), "{e}");
    }
    let exists: bool = c.exists(&ak).await.expect("exists");
    assert!(!exists, "audio appended despite the bad duration");
    let buf: Option<String> = c.hget(&sk, "buf_bytes").await.expect("hget");
    assert_eq!(buf.as_deref(), Some("0"));
}
