//! Building connections: credentials (`redis.username` / `redis.password` for the data
//! nodes), TLS (`rediss://` with `redis.tls_ca_file`, for data nodes and sentinels alike),
//! the deadpool pool of one node, sentinel clients, and cluster clients.

use std::time::Duration;

use deadpool_redis::{Pool, Runtime};
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo};

use super::StoreError;
use super::connection::config_err;
use crate::config::RedisConfig;

/// One data node reached directly: its pool and a client for dedicated connections.
pub(super) struct Node {
    pub addr: String,
    pub pool: Pool,
    pub client: redis::Client,
}

/// Debian's Redis 7.0 does not know CLIENT SETINFO; skip it so every new connection does
/// not count an error in INFO errorstats. And send each small script call at once instead
/// of holding it behind an unacknowledged one (TCP_NODELAY; issue 14's 40 ms stall).
pub(super) fn skip_lib_name(info: ConnectionInfo) -> ConnectionInfo {
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
    info.set_redis_settings(settings).set_tcp_settings(tcp)
}

/// `redis.username` / `redis.password` override what the URL carries.
pub(crate) fn with_credentials(cfg: &RedisConfig, info: ConnectionInfo) -> ConnectionInfo {
    let mut settings = info.redis_settings().clone();
    if let Some(u) = &cfg.username {
        settings = settings.set_username(u);
    }
    if let Some(p) = &cfg.password {
        settings = settings.set_password(p);
    }
    skip_lib_name(info.set_redis_settings(settings))
}

/// The CA of `redis.tls_ca_file`, for `rediss://` connections.
pub(super) fn certificates(
    cfg: &RedisConfig,
) -> Result<Option<redis::TlsCertificates>, StoreError> {
    let Some(path) = &cfg.tls_ca_file else {
        return Ok(None);
    };
    let pem =
        std::fs::read(path).map_err(|e| config_err(format!("redis.tls_ca_file {path}: {e}")))?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// Install the process-wide rustls crypto provider once (TLS connections need one).
pub(super) fn tls_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A client for one address. A `rediss://` address is reached over TLS (the rustls provider
/// installed) and verified against `redis.tls_ca_file` when it is set, else the system trust
/// store. The credentials are whatever `info` carries. The one place that decides how a
/// client is built for an address: data nodes ([`node`]) and sentinels
/// ([`sentinel_client`]) both come through here.
pub(crate) fn client(cfg: &RedisConfig, info: ConnectionInfo) -> Result<redis::Client, StoreError> {
    let addr = info.addr().to_string();
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    if tls {
        tls_provider();
    }
    match certificates(cfg)? {
        Some(certs) if tls => redis::Client::build_with_tls(info, certs),
        _ => redis::Client::open(info),
    }
    .map_err(|e| config_err(format!("redis client for {addr}: {e}")))
}

/// A client for one sentinel of `urls`: the TLS settings of the data nodes (`rediss://`
/// with `redis.tls_ca_file`), but only the credentials of its own URL
/// (`rediss://[user:password@]host:port`). `redis.username` / `redis.password` belong to
/// the data nodes; a sentinel usually has no password or one of its own, and one without a
/// password refuses an `AUTH`.
pub(super) fn sentinel_client(
    cfg: &RedisConfig,
    info: ConnectionInfo,
) -> Result<redis::Client, StoreError> {
    client(cfg, skip_lib_name(info))
}

/// The pool and client of one data node.
pub(super) fn node(cfg: &RedisConfig, info: ConnectionInfo) -> Result<Node, StoreError> {
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let info = with_credentials(cfg, info);
    let addr = info.addr().to_string();
    let client = client(cfg, info)?;
    let conn_cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let manager =
        deadpool_redis::Manager::new_with_config(client.get_connection_info().clone(), conn_cfg)
            .map_err(|e| config_err(e.to_string()))?;
    let pool = Pool::builder(manager)
        .max_size(cfg.pool_size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| config_err(e.to_string()))?;
    Ok(Node { addr, pool, client })
}

/// A cluster client on `seeds` with the given response timeout.
pub(super) fn cluster_client(
    cfg: &RedisConfig,
    seeds: Vec<ConnectionInfo>,
    response: Duration,
) -> Result<redis::cluster::ClusterClient, StoreError> {
    let seeds: Vec<ConnectionInfo> = seeds
        .into_iter()
        .map(|s| with_credentials(cfg, s))
        .collect();
    let mut b = redis::cluster::ClusterClientBuilder::new(seeds)
        .connection_timeout(Duration::from_millis(cfg.timeout_ms))
        .response_timeout(response)
        // No retry by the client: it would send again a call whose reply was lost (a
        // timeout), and the second run's answer would hide the first's commit and its
        // messages. What Redis refused without running is retried by `Conn`
        // (connection.rs `cluster_retry!`).
        .retries(0);
    if cfg.tls() {
        tls_provider();
    }
    if let Some(certs) = certificates(cfg)? {
        b = b.certs(certs);
    }
    b.build().map_err(|e| config_err(e.to_string()))
}
