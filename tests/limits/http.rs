//! Plain HTTP connections: slow request headers and connections that never send a byte are
//! closed, HTTP/2 prior knowledge is refused, idle keep-alive connections at the listener's cap
//! make way (WebSockets are never cut), a kept-alive connection is closed after its lifetime
//! unless a request is in flight, and a storm of upgrades over the cap waits.

use super::*;

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
    // The 100 slow ones and the silent one: HTTP/1's header-read timeout runs from the
    // accept, so it closes a connection that never sends a byte before the first-request
    // deadline does.
    assert!(text.contains(r#"detail="header_timeout"} 101"#), "{text}");
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

/// An HTTP/2 request with prior knowledge: the preface, an empty SETTINGS frame, and one
/// HEADERS frame (stream 1, END_STREAM | END_HEADERS) for `GET /healthz`, HPACK-encoded
/// from the static table and plain literals.
fn h2_get_healthz() -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    block.push(0x44); // :path, literal with incremental indexing (static name 4)
    block.push(8);
    block.extend_from_slice(b"/healthz");
    block.push(0x41); // :authority (static name 1)
    block.push(9);
    block.extend_from_slice(b"localhost");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 0x04, 0, 0, 0, 0, 0]); // SETTINGS, empty
    let len = block.len() as u8;
    out.extend_from_slice(&[0, 0, len, 0x01, 0x05, 0, 0, 0, 1]); // HEADERS, stream 1
    out.extend_from_slice(&block);
    out
}

/// Review finding: HTTP/2 with prior knowledge had no idle timeout, and its first request
/// (any: `GET /healthz`) escaped the first-request deadline, so an unauthenticated client
/// could hold any number of idle connections that no limit counts. The instance serves
/// HTTP/1 only: such a connection is refused at once. An HTTP/1.1 keep-alive connection
/// stays bounded by the header-read timeout after its request.
#[tokio::test]
async fn http2_prior_knowledge_is_refused_and_idle_keep_alive_is_closed() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.limits.header_read_timeout_ms = 300;
        c.limits.upgrade_timeout_ms = 600;
    })
    .await;
    let mut h2 = TcpStream::connect(inst.addr).await.expect("connect");
    h2.write_all(&h2_get_healthz()).await.expect("write");
    assert!(
        closed_within(&mut h2, Duration::from_secs(3)).await,
        "an HTTP/2 connection is still open past every deadline"
    );

    // HTTP/1.1: a request (here a refused upgrade), then nothing: closed between requests.
    let mut h1 = TcpStream::connect(inst.addr).await.expect("connect");
    h1.write_all(b"GET /ws/session HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 12];
    h1.read_exact(&mut head).await.expect("a response");
    assert_eq!(&head, b"HTTP/1.1 401", "{}", String::from_utf8_lossy(&head));
    assert!(
        closed_within(&mut h1, Duration::from_secs(3)).await,
        "an idle HTTP/1.1 keep-alive connection is still open"
    );
}

/// Send `GET /healthz` on `tcp` and read its response; `None` if none came within
/// `within` or the connection closed.
async fn healthz(tcp: &mut TcpStream, within: Duration) -> Option<String> {
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    while !(got.ends_with(b"\r\n\r\nok")) {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// `GET /healthz` on a new connection, kept open: an idle kept-alive connection once served.
async fn idle_connection(
    inst: &switchyard::server::Running,
    within: Duration,
) -> Option<TcpStream> {
    let mut tcp = TcpStream::connect(inst.addr).await.expect("connect");
    healthz(&mut tcp, within).await.map(|_| tcp)
}

/// Review finding: idle kept-alive HTTP connections held every `limits.max_http_connections`
/// slot and the listener stopped accepting, so a client keeping connections open (about 70
/// a second against the defaults) delayed every new connection — WebSocket upgrades of
/// nodes and sessions included — up to `upgrade_timeout_ms`. Now the oldest idle connection
/// makes way. Upgraded WebSockets never count and are never closed by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_connections_at_the_cap_make_way_and_websockets_are_never_cut() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.limits.max_http_connections = 2).await;
    let t = Duration::from_secs(3);
    // Upgraded before the flood, greeted after it: it must still be there.
    let mut early = WsClient::connect(&ws_url(&inst, "/ws/session")).await;
    let mut a = idle_connection(&inst, t)
        .await
        .expect("first connection served");
    let _b = idle_connection(&inst, t)
        .await
        .expect("second connection served");
    // (waiting would last the header timeout, 10 s by default)
    let c = idle_connection(&inst, Duration::from_secs(3)).await;
    assert!(
        c.is_some(),
        "a third HTTP connection waited while two idle ones held the cap"
    );
    assert!(
        closed_within(&mut a, t).await,
        "the oldest idle connection made way"
    );
    // A client holding idle connections as fast as it can: each one is served, and a
    // WebSocket upgrade in the middle of it is not kept waiting.
    let mut held = Vec::new();
    for i in 0..40 {
        let conn = idle_connection(&inst, t).await;
        held.push(conn.unwrap_or_else(|| panic!("idle connection {i} not served")));
        if i == 20 {
            let started = std::time::Instant::now();
            let (mut s, _) = open_session(
                &ws_url(&inst, "/ws/session"),
                fixture("session_init_one_way"),
            )
            .await;
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "a session waited {:?} for its upgrade",
                started.elapsed()
            );
            s.send(&fixture("session_init_one_way")).await;
            assert!(
                next_of(&mut s, "error", t).await.is_some(),
                "the session's socket is alive amid the flood"
            );
        }
    }
    early.send(&fixture("session_init_one_way")).await;
    early.recv_type("session_init_ack").await;
    let text = metrics_text(&inst).await;
    assert!(
        text.contains(r#"switchyard_limited_total{kind="http",detail="idle_closed"} "#),
        "{text}"
    );
}

/// An upgraded WebSocket is no HTTP connection any more: `http_connection_lifetime_ms`
/// does not cut it (the lifetime's timer belongs to the HTTP connection, which ended at the
/// upgrade).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_outlives_the_http_connection_lifetime() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.limits.http_connection_lifetime_ms = 300;
        c.limits.max_http_connections = 1;
    })
    .await;
    let mut ws = WsClient::connect(&ws_url(&inst, "/ws/session")).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // Meanwhile the one HTTP slot was taken and given up again.
    let mut idle = idle_connection(&inst, Duration::from_secs(3))
        .await
        .expect("served");
    assert!(closed_within(&mut idle, Duration::from_secs(3)).await);
    ws.send(&fixture("session_init_one_way")).await;
    ws.recv_type("session_init_ack").await;
}

/// The other side of making way: a connection with a request in flight (here a console
/// stream) is never closed for a new one, and when every slot has a request in flight the
/// listener waits (the new connection is served once a slot frees).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_with_a_request_in_flight_keep_their_slot() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.limits.max_http_connections = 2).await;
    let t = Duration::from_secs(3);
    let stream = async || {
        let mut tcp = TcpStream::connect(inst.addr).await.expect("connect");
        let read = token(&[Scope::AdminRead], None, None);
        let req =
            format!("GET /api/v1/console/stream?access_token={read} HTTP/1.1\r\nHost: x\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.expect("write");
        let mut head = [0u8; 12];
        tokio::time::timeout(t, tcp.read_exact(&mut head))
            .await
            .expect("stream answered")
            .expect("response");
        assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
        tcp
    };
    let mut s1 = stream().await;
    let mut idle = idle_connection(&inst, t).await.expect("served");
    // Full: the idle one makes way, the stream keeps running.
    let _c = idle_connection(&inst, t)
        .await
        .expect("served by closing the idle one");
    assert!(closed_within(&mut idle, t).await, "the idle one closed");
    assert!(
        !closed_within(&mut s1, Duration::from_millis(500)).await,
        "a connection with a request in flight was closed to make way"
    );
    drop(_c);
    // Both slots busy: a new connection waits for one.
    let mut s2 = stream().await;
    let mut waiting = TcpStream::connect(inst.addr)
        .await
        .expect("connect (backlog)");
    assert!(
        healthz(&mut waiting, Duration::from_millis(1_000))
            .await
            .is_none(),
        "served while every slot had a request in flight"
    );
    assert!(!closed_within(&mut s2, Duration::from_millis(200)).await);
    drop(s1);
    let mut head = [0u8; 12];
    tokio::time::timeout(t, waiting.read_exact(&mut head))
        .await
        .expect("served once a slot freed")
        .expect("response");
    assert_eq!(&head, b"HTTP/1.1 200");
    let text = metrics_text(&inst).await;
    assert!(
        text.contains(r#"switchyard_limited_total{kind="http",detail="connections"} "#),
        "{text}"
    );
}

/// Review finding: a client sending `GET /healthz` before each header-read timeout kept
/// its connection for ever. `limits.http_connection_lifetime_ms` closes it after the
/// request in progress.
#[tokio::test]
async fn a_kept_alive_http_connection_is_closed_after_its_lifetime() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.limits.http_connection_lifetime_ms = 1_000).await;
    let mut tcp = TcpStream::connect(inst.addr).await.expect("connect");
    let started = std::time::Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(5) {
        if healthz(&mut tcp, Duration::from_secs(2)).await.is_none() {
            break;
        }
        served += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lived = started.elapsed();
    assert!(
        served >= 2 && lived < Duration::from_secs(3),
        "kept alive {lived:?} ({served} requests) past a 1 s lifetime"
    );
}

/// Review finding: a connection that had not sent its first request yet counted as idle, so
/// at the cap a storm of reconnecting sessions closed each other's connections before
/// their upgrade requests were read (and one between its `101` and the hand-over lost its
/// WebSocket after being told it had it). New connections now have a second for their
/// first request, and an upgrade holds its slot until the hand-over: every one of a storm
/// far over the cap gets its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_upgrades_over_the_http_cap_waits_instead_of_being_cut() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| c.limits.max_http_connections = 2).await;
    let url = ws_url(&inst, "/ws/session");
    let storm = (0..48).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.ok()?;
            ws.send(Message::Text(
                fixture("session_init_one_way").to_string().into(),
            ))
            .await
            .ok()?;
            let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .ok()??
                .ok()?;
            Some(reply.into_text().ok()?.contains("session_init_ack"))
        })
    });
    let mut acked = 0;
    for h in storm.collect::<Vec<_>>() {
        if h.await.expect("task") == Some(true) {
            acked += 1;
        }
    }
    assert_eq!(acked, 48, "every upgrade of the storm got its session");
}
