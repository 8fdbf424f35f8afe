//! Redis topologies for the tests, from Debian's redis-server and redis-sentinel on free
//! loopback ports in temp dirs: a primary + replica watched by three sentinels, and a
//! 3-primary 3-replica Redis Cluster. Every process is killed when its owner drops. A
//! process may serve TLS only ([`Tls`]) and require a password; [`Proc::url`] and
//! [`Proc::client`] then reach it over TLS with the CA and the password.
//!
//! The processes are in `topology/process.rs`, the Sentinel set in `sentinel.rs`, the
//! cluster in `cluster.rs`; the connection and polling helpers they share are here.

mod cluster;
mod process;
mod sentinel;

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

pub use cluster::Cluster;
#[allow(unused_imports)] // only the TLS tests start processes with `Tls` and `SentinelOpts`
pub use process::{Proc, SentinelOpts, Tls};
#[allow(unused_imports)] // only the sentinel epoch tests ask one sentinel by itself
pub use sentinel::named_primary;
pub use sentinel::{MASTER, SentinelSet};

/// A connection to `url` without CLIENT SETINFO (Redis 7.0).
pub async fn connect(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    connect_with_ca(url, None).await
}

/// The same; a `rediss://` `url` verified against the PEM file `ca` when given.
pub async fn connect_with_ca(
    url: &str,
    ca: Option<&str>,
) -> redis::RedisResult<MultiplexedConnection> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    let info = info.set_redis_settings(settings);
    let client = match ca {
        Some(ca) => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(ca)?),
            };
            redis::Client::build_with_tls(info, certs)?
        }
        None => redis::Client::open(info)?,
    };
    client
        .get_multiplexed_async_connection_with_config(&super::assertion_connection())
        .await
}

/// Poll `f` every 20 ms until it is true; panics after `timeout`.
pub async fn until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `INFO replication` of a node says its link to the primary is up.
pub async fn link_up(c: &mut MultiplexedConnection) -> bool {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(c)
        .await
        .unwrap_or_default();
    info.contains("master_link_status:up")
}
