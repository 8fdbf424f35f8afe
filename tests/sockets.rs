//! The sockets are set up for small, sparse messages: TCP_NODELAY on every socket the
//! instance accepts and on its Redis connections (issue 14, item 2).
//!
//! Without it, a small frame written while an earlier one is still unacknowledged waits in
//! the kernel for the peer's delayed ACK (Nagle's algorithm): ~40 ms on Linux, which is
//! what one session with one instant node measured end to end. This test does not time
//! anything: it reads the option from the sockets themselves (`/proc/self/fd` of this test
//! process, which runs the instance in-process), so it cannot pass by luck.

mod common;

use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;

use common::*;

/// Every connected TCP socket of this process: (local, peer, TCP_NODELAY set).
fn tcp_sockets() -> Vec<(SocketAddr, SocketAddr, bool)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Ok(entry) = entry else { continue };
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor stays owned by whoever opened it: ManuallyDrop never
        // closes it, and only getsockname/getpeername/getsockopt are called on it.
        let s = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        if let (Ok(l), Ok(p), Ok(nodelay)) = (s.local_addr(), s.peer_addr(), s.nodelay()) {
            out.push((l, p, nodelay));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_sockets_and_redis_connections_have_tcp_nodelay() {
    let redis = RedisServer::start().await;
    let inst = start_instance(&redis).await;
    let mut node = WsClient::connect(&ws_url(&inst, "/ws/node")).await;
    node.register_id(fixture("node_register_first"), None).await;
    let mut session = WsClient::connect(&ws_url(&inst, "/ws/session")).await;
    session.send(&fixture("session_init_one_way")).await;
    session.recv_type("session_init_ack").await;

    let sockets = tcp_sockets();
    let accepted: Vec<_> = sockets.iter().filter(|(l, ..)| *l == inst.addr).collect();
    assert_eq!(
        accepted.len(),
        2,
        "the node's and the session's: {sockets:?}"
    );
    for (l, p, nodelay) in &accepted {
        assert!(
            nodelay,
            "accepted socket {l} <- {p}: TCP_NODELAY is not set"
        );
    }
    let to_redis: Vec<_> = sockets
        .iter()
        .filter(|(_, p, _)| p.port() == redis.port)
        .collect();
    assert!(!to_redis.is_empty(), "no Redis connection: {sockets:?}");
    for (l, p, nodelay) in &to_redis {
        assert!(
            nodelay,
            "Redis connection {l} -> {p}: TCP_NODELAY is not set"
        );
    }
    // The test clients too, so no test measures a client-side stall.
    let clients: Vec<_> = sockets.iter().filter(|(_, p, _)| *p == inst.addr).collect();
    assert_eq!(clients.len(), 2, "{sockets:?}");
    for (l, p, nodelay) in &clients {
        assert!(nodelay, "test client {l} -> {p}: TCP_NODELAY is not set");
    }
}

/// Is the instance's end of the TCP connection from `client` (a local address of this
/// process) still an open descriptor? The instance runs in-process, so its sockets are
/// among this process' descriptors.
fn server_side_open(server: SocketAddr, client: SocketAddr) -> bool {
    tcp_sockets()
        .iter()
        .any(|(l, p, _)| *l == server && *p == client)
}

/// A node connection whose socket has a tiny receive buffer and that reads nothing after
/// its `node_register_ack`: the instance's writes to it block once the kernel buffers are
/// full. Returns the WebSocket (kept open, never read) and its local address.
async fn node_that_stops_reading(
    inst: &switchyard::server::Running,
) -> (
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    SocketAddr,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = sock.connect(inst.addr).await.expect("connect");
    let local = tcp.local_addr().expect("local addr");
    let (mut ws, _) = tokio_tungstenite::client_async(ws_url(inst, "/ws/node"), tcp)
        .await
        .expect("upgrade");
    let mut reg = fixture("node_register_first");
    reg["node_id"] = serde_json::Value::Null;
    reg["max_concurrent_jobs"] = serde_json::json!(32);
    ws.send(Message::Text(reg.to_string().into()))
        .await
        .expect("send");
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("node_register_ack") => break,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no node_register_ack: {other:?}"),
        }
    }
    (ws, local)
}

/// A session sends `n` utterances of 1 MiB of audio each: `n` job_assigns of ~1.4 MB for
/// the one node there is.
async fn flood_the_node(inst: &switchyard::server::Running, n: u64) -> WsClient {
    use base64::Engine;
    let mut s = WsClient::connect(&ws_url(inst, "/ws/session")).await;
    s.send(&fixture("session_init_one_way")).await;
    let ack = s.recv_type("session_init_ack").await;
    let sid = ack["session_id"].as_str().expect("sid").to_string();
    let audio: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let audio = base64::engine::general_purpose::STANDARD.encode(audio);
    for i in 0..n {
        let mut u = fixture("utterance");
        u["session_id"] = serde_json::json!(sid);
        u["utterance_index"] = serde_json::json!(i);
        u["audio"] = serde_json::json!(audio);
        s.send(&u).await;
    }
    s
}

/// Poll until the instance's end of `client`'s connection is closed (or `within` passes).
async fn server_side_closed_within(
    inst: &switchyard::server::Running,
    client: SocketAddr,
    within: std::time::Duration,
) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if !server_side_open(inst.addr, client) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    !server_side_open(inst.addr, client)
}

/// The size of one flooded job_assign: its 1 MiB of audio in base64 (and a little JSON).
const JOB_ASSIGN_BYTES: u64 = 1024 * 1024 * 4 / 3;

/// The most a TCP socket's send buffer may hold here (`net.ipv4.tcp_wmem` max).
fn tcp_wmem_max() -> u64 {
    let v = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").expect("tcp_wmem");
    v.split_whitespace()
        .nth(2)
        .and_then(|m| m.parse().ok())
        .expect("tcp_wmem max")
}

/// The `reserved` count of the one node in Redis (0 when there is none).
async fn reserved(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let index = format!("{}nodes:index", invariants::PREFIX);
    let ids: Vec<String> = redis::AsyncCommands::zrange(c, index, 0, -1)
        .await
        .expect("zrange");
    let Some(id) = ids.first() else {
        return 0;
    };
    node_hash(c, id)
        .await
        .get("reserved")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Review finding: when a connection's read side ended while its writer was blocked on a
/// peer that stopped reading (zero window), the writer task was detached after 2 s and
/// kept the socket open for ever, no longer counted by any limit. Now it is aborted and
/// the socket closed. The write timeout is off here, so only that abort can close it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_writer_is_aborted_when_the_read_side_ends() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.ws.max_frame_bytes = 4 * 1024 * 1024;
        c.ws.ping_interval_ms = 200;
        c.ws.idle_timeout_ms = 6_000;
        c.ws.write_timeout_ms = 0;
    })
    .await;
    let (ws, local) = node_that_stops_reading(&inst).await;
    assert!(server_side_open(inst.addr, local));
    let _session = flood_the_node(&inst, 10).await;
    // The writer is blocked: more job_assigns were handed to it, while the connection was
    // up, than the kernel can hold (the instance's send buffer at its largest, the node's
    // 4 KiB receive buffer and slack). The idle timeout leaves the flood time for that.
    let must_queue = tcp_wmem_max() + 256 * 1024;
    let need = must_queue / JOB_ASSIGN_BYTES + 1;
    assert!(
        need <= 10,
        "10 job_assigns cannot fill {must_queue} B of buffers"
    );
    let mut c = redis.client().await;
    eventually(
        std::time::Duration::from_secs(5),
        "the node's writer handed more than the kernel buffers hold",
        || {
            let mut c = c.clone();
            async move {
                let r = reserved(&mut c).await;
                (r >= need && server_side_open(inst.addr, local)).then_some(())
            }
        },
    )
    .await;
    // The node is silent: its read side ends after the idle timeout (6 s), then the
    // writer gets 2 s to finish before it is aborted.
    assert!(
        server_side_closed_within(&inst, local, std::time::Duration::from_secs(15)).await,
        "the instance still holds the socket of a connection whose read side ended"
    );
    let text = metrics_text(&inst).await;
    assert!(
        text.contains(r#"switchyard_connections{kind="node"} 0"#),
        "{text}"
    );
    drop(ws);
    invariants::check(&mut c).await;
}

/// A peer that never reads while its read side stays up (no idle timeout here): a write
/// blocked for `ws.write_timeout_ms` ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_closed_after_the_write_timeout() {
    let redis = RedisServer::start().await;
    let inst = start_tweaked(&redis, |c| {
        c.ws.max_frame_bytes = 4 * 1024 * 1024;
        c.ws.ping_interval_ms = 0;
        c.ws.idle_timeout_ms = 0;
        c.ws.write_timeout_ms = 500;
    })
    .await;
    let (ws, local) = node_that_stops_reading(&inst).await;
    let _session = flood_the_node(&inst, 10).await;
    assert!(
        server_side_closed_within(&inst, local, std::time::Duration::from_secs(10)).await,
        "a peer that reads nothing keeps its connection"
    );
    let text = metrics_text(&inst).await;
    assert!(
        text.contains(r#"switchyard_limited_total{kind="node",detail="write_timeout"} 1"#),
        "{text}"
    );
    drop(ws);
    invariants::check(&mut redis.client().await).await;
}
