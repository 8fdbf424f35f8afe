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
