//! [`Conn`]: one connection type for whichever Redis topology is configured (a pooled or
//! multiplexed connection to one server, or a cluster connection), and the one retry a
//! cluster command gets: sent again only when Redis refused it without running it (a
//! redirect, a slot without a primary, a refused connection; `cluster_retry!`). A timeout or
//! a dropped connection is never retried: the call may have committed, and a script's
//! second run would answer for the first ([`super::StoreError::Ambiguous`]).

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisFuture, Value};

/// A connection to the configured Redis, whatever its topology.
pub enum Conn {
    /// Checked out of the pool (returned on drop).
    Pooled(deadpool_redis::Connection),
    /// A multiplexed connection of its own (shared script connections, blocking reads).
    Multiplexed(MultiplexedConnection),
    /// A cluster connection: routes each command to the node owning its keys' slot.
    Cluster(ClusterConnection),
}

/// Tries of a cluster command that Redis refused without running it, and the wait before
/// each (the client refreshes its slot map after a `MOVED` meanwhile).
const CLUSTER_RETRIES: [u64; 2] = [50, 200];

/// `$send` (a cluster command, awaited) evaluated again (at most [`CLUSTER_RETRIES`]) while
/// Redis answers that it did not run it: a redirect, a slot without a primary, a primary
/// that is loading or demoted, a connection that could not be made. Never after a timeout
/// or a dropped connection: the command may have run (a script's second run would answer
/// for the first).
macro_rules! cluster_retry {
    ($send:expr) => {{
        let mut waits = CLUSTER_RETRIES.iter();
        loop {
            match $send {
                Err(e) if never_ran(&e) => match waits.next() {
                    Some(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
                    None => break Err(e),
                },
                r => break r,
            }
        }
    }};
}

/// Redis refused the command before running it (or it was never sent).
fn never_ran(e: &redis::RedisError) -> bool {
    e.is_connection_refusal()
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || matches!(
            e.code(),
            Some("MOVED" | "TRYAGAIN" | "CLUSTERDOWN" | "LOADING" | "MASTERDOWN" | "READONLY")
        )
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Pooled(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => {
                Box::pin(async move { cluster_retry!(c.req_packed_command(cmd).await) })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Pooled(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => Box::pin(async move {
                cluster_retry!(c.req_packed_commands(pipeline, offset, count).await)
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Pooled(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
