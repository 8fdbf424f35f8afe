//! Node registration, heartbeats, pools and liveness against a real redis-server, with real
//! WebSocket clients sending lingua-shaped frames. Every scenario ends with the invariant
//! checker. The scenarios are grouped by seam in `tests/nodes/`: registration and identity,
//! pools, liveness, frames, and the Redis underneath; the pool helpers they share are here.

mod common;
#[path = "nodes/frames.rs"]
mod frames;
#[path = "nodes/job_frames.rs"]
mod job_frames;
#[path = "nodes/liveness.rs"]
mod liveness;
#[path = "nodes/pools.rs"]
mod pools;
#[path = "nodes/redis_backend.rs"]
mod redis_backend;
#[path = "nodes/redis_memory.rs"]
mod redis_memory;
#[path = "nodes/registration.rs"]
mod registration;
#[path = "nodes/services.rs"]
mod services;

use std::collections::BTreeSet;
use std::time::Duration;

use common::invariants::PREFIX;
use common::*;
use redis::AsyncCommands;

type Conn = redis::aio::MultiplexedConnection;

async fn pools_of(c: &mut Conn, node: &str) -> BTreeSet<String> {
    c.smembers(format!("{PREFIX}node:{node}:pools"))
        .await
        .expect("smembers")
}

async fn pool_members(c: &mut Conn, pool: &str) -> BTreeSet<String> {
    c.smembers(format!("{PREFIX}pool:{pool}"))
        .await
        .expect("smembers")
}

/// Waits (2 s at most) until the node's pools include `pool`: its heartbeat was applied.
async fn eventually_in_pool(c: &Conn, node: &str, pool: &str, what: &str) {
    eventually(Duration::from_secs(2), what, || {
        let mut c = c.clone();
        let node = node.to_string();
        async move { pools_of(&mut c, &node).await.contains(pool).then_some(()) }
    })
    .await;
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const ZH_EN_POOLS: &[&str] = &[
    "pub:zh:zh",
    "pub:zh:en",
    "pub:en:zh",
    "pub:en:en",
    "pub:auto:zh",
    "pub:auto:en",
];
