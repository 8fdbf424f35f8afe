//! Redis topologies behind one interface: a single server, a Sentinel-managed primary, or a
//! Redis Cluster (`[redis] mode`).
//!
//! The rest of the store sees [`Conn`], one connection type that speaks to whichever kind
//! is configured, and [`Connector`], which hands them out:
//! - **single**: a deadpool pool on one address (as before).
//! - **sentinel**: the same pool, built on the primary the sentinels name. After a
//!   connection error or a `READONLY` reply ([`Connector::failed`]) the sentinels are asked
//!   again; when they name another primary the pool and the shared connections are replaced,
//!   so the instance follows a failover by itself (`sentinel.rs`).
//! - **cluster**: one `cluster-async` connection (multiplexed per node; it refreshes the slot
//!   map itself). Every script touches keys of one hash tag only, so no call is ever
//!   `CROSSSLOT`; `FCALL` goes to the node owning the tag's slot and a missing library there
//!   is loaded on the spot. The client retries nothing itself (`clients::cluster_client`):
//!   it would also send again a call whose reply was lost, and the second run's answer
//!   ("stale", "duplicate") would hide that the first may have committed, and the messages
//!   its reply carried. A command Redis refused without running it (`MOVED`, `TRYAGAIN`,
//!   `CLUSTERDOWN`, a refused connection, ...) is sent again (`conn.rs`, `cluster_retry!`); a
//!   timeout or a dropped connection never is: it stays [`StoreError::Ambiguous`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_redis::Pool;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, ConnectionInfo, IntoConnectionInfo, Value};

use super::StoreError;
use super::clients::{Node, cluster_client, node, sentinel_client};
pub use super::conn::Conn;
use crate::config::{RedisConfig, RedisMode};

pub(super) enum Kind {
    Single(Box<Node>),
    Sentinel {
        /// One client per sentinel (TLS and credentials as `clients::sentinel_client`).
        sentinels: Vec<redis::Client>,
        master: String,
        current: RwLock<Option<Arc<Node>>>,
        /// Serialises re-resolution; what the last round left (see `sentinel.rs`).
        resolving: tokio::sync::Mutex<super::sentinel::Resolving>,
    },
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        /// Kept across errors: it reconnects to nodes and refreshes the slot map itself.
        current: RwLock<Option<ClusterConnection>>,
        connecting: tokio::sync::Mutex<()>,
    },
}

/// Which connection a call used: its shared slot (`usize::MAX`: a connection of the call's
/// own, or the cluster's) and the generation it was taken in (each shared connection taken
/// gets the next one), and the last generation taken when the call got it (`seen`): a
/// failure forgets only connections that existed when the call began, never a fresher
/// one taken meanwhile.
#[derive(Clone, Copy, Debug)]
pub struct Lease {
    slot: usize,
    generation: u64,
    seen: u64,
}

/// Hands out connections for the configured topology.
pub struct Connector {
    pub(super) kind: Kind,
    pub(super) cfg: RedisConfig,
    pub(super) timeout: Duration,
    /// Long-lived multiplexed connections for script calls (single, sentinel); see
    /// [`Connector::shared`].
    pub(super) shared: Vec<RwLock<Option<(u64, MultiplexedConnection)>>>,
    next_shared: AtomicUsize,
    /// The generation of the last shared connection taken.
    generation: AtomicU64,
}

/// A poisoned lock only means another thread panicked while holding it; the value is fine.
pub(super) fn read<T: Clone>(l: &RwLock<Option<T>>) -> Option<T> {
    l.read().unwrap_or_else(|p| p.into_inner()).clone()
}

pub(super) fn write<T>(l: &RwLock<Option<T>>, v: Option<T>) {
    *l.write().unwrap_or_else(|p| p.into_inner()) = v;
}

pub(super) fn config_err(message: String) -> StoreError {
    StoreError::Redis {
        script: "config",
        message,
    }
}

impl Connector {
    pub fn new(cfg: &RedisConfig) -> Result<Self, StoreError> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let seeds: Vec<ConnectionInfo> = cfg
            .seeds()
            .iter()
            .map(|u| {
                u.as_str()
                    .into_connection_info()
                    .map_err(|e| config_err(format!("redis url {u}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let kind = match cfg.mode {
            RedisMode::Single => {
                let seed = seeds
                    .into_iter()
                    .next()
                    .ok_or_else(|| config_err("no redis address".into()))?;
                Kind::Single(Box::new(node(cfg, seed)?))
            }
            RedisMode::Sentinel => Kind::Sentinel {
                sentinels: seeds
                    .into_iter()
                    .map(|s| sentinel_client(cfg, s))
                    .collect::<Result<_, _>>()?,
                master: cfg.sentinel_master.clone(),
                current: RwLock::new(None),
                resolving: Default::default(),
            },
            RedisMode::Cluster => Kind::Cluster {
                connecting: tokio::sync::Mutex::new(()),
                client: Box::new(cluster_client(cfg, seeds, timeout)?),
                current: RwLock::new(None),
            },
        };
        Ok(Self {
            kind,
            cfg: cfg.clone(),
            timeout,
            shared: (0..cfg.pool_size.clamp(1, 4))
                .map(|_| Default::default())
                .collect(),
            next_shared: Default::default(),
            generation: Default::default(),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster { .. })
    }

    /// The data node in use (`host:port`), or `cluster`.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Single(n) => n.addr.clone(),
            Kind::Sentinel { current, .. } => {
                read(current).map_or_else(|| "unresolved".into(), |n| n.addr.clone())
            }
            Kind::Cluster { .. } => "cluster".into(),
        }
    }

    async fn cluster(&self) -> Result<ClusterConnection, StoreError> {
        let Kind::Cluster {
            client,
            current,
            connecting,
        } = &self.kind
        else {
            return Err(config_err("not a cluster".into()));
        };
        if let Some(c) = read(current) {
            return Ok(c);
        }
        // One caller connects (slot map discovery touches every node); the others wait.
        let _one = connecting.lock().await;
        if let Some(c) = read(current) {
            return Ok(c);
        }
        let c = client
            .get_async_connection()
            .await
            .map_err(|e| StoreError::from_redis("connect", e))?;
        write(current, Some(c.clone()));
        Ok(c)
    }

    /// A pooled connection (reads, readiness, `SCRIPT LOAD`), or `Unavailable`.
    pub async fn conn(&self) -> Result<Conn, StoreError> {
        let pool_get = |p: &Pool| {
            let p = p.clone();
            async move {
                p.get()
                    .await
                    .map(Conn::Pooled)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))
            }
        };
        match &self.kind {
            Kind::Single(n) => pool_get(&n.pool).await,
            Kind::Sentinel { .. } => pool_get(&self.node().await?.pool).await,
            Kind::Cluster { .. } => self.cluster().await.map(Conn::Cluster),
        }
    }

    /// A shared multiplexed connection for script calls: taken once from the pool (each
    /// pipelines concurrent callers) instead of a pool checkout per call, which costs
    /// deadpool-redis' UNWATCH+PING round trip every time. [`Connector::drop_shared`]
    /// forgets one after a connection error. In cluster mode, the cluster connection.
    ///
    /// Taking a connection (pool checkout, cluster connect) is boxed: those futures are
    /// kilobytes, and every script call's future would carry them inline.
    ///
    /// `own`: a pooled connection of the call's own instead (not in cluster mode), with
    /// no shared slot: for a call that will block it in `WAIT`.
    pub async fn shared(&self, own: bool) -> Result<(Lease, Conn), StoreError> {
        let seen = self.generation.load(Ordering::Relaxed);
        let own_lease = Lease {
            slot: usize::MAX,
            generation: 0,
            seen,
        };
        if own && !self.is_cluster() {
            return Box::pin(self.conn()).await.map(|c| (own_lease, c));
        }
        if self.is_cluster() {
            return Ok((own_lease, Conn::Cluster(Box::pin(self.cluster()).await?)));
        }
        let i = self.next_shared.fetch_add(1, Ordering::Relaxed) % self.shared.len();
        if let Some((generation, c)) = read(&self.shared[i]) {
            let lease = Lease {
                slot: i,
                generation,
                seen,
            };
            return Ok((lease, Conn::Multiplexed(c)));
        }
        // Twice at most: a sentinel switch may land while the pool checks out.
        for _ in 0..2 {
            let (pooled, node) = Box::pin(self.checkout()).await?;
            let mut held = self.shared[i].write().unwrap_or_else(|p| p.into_inner());
            // Checked under the slot's lock: `resolve` names the new primary before it
            // clears the slots, so a connection to the old one is never installed after.
            if !self.in_use(node.as_ref()) {
                continue;
            }
            let fresh = deadpool_redis::Connection::take(pooled);
            let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
            *held = Some((generation, fresh.clone()));
            let lease = Lease {
                slot: i,
                generation,
                seen: generation,
            };
            return Ok((lease, Conn::Multiplexed(fresh)));
        }
        Err(StoreError::Unavailable(
            "the primary moved twice while connecting".into(),
        ))
    }

    /// A pooled connection for a shared slot, and in sentinel mode the node it is to.
    async fn checkout(
        &self,
    ) -> Result<(deadpool_redis::Connection, Option<Arc<Node>>), StoreError> {
        match &self.kind {
            Kind::Sentinel { .. } => {
                let node = self.node().await?;
                let c = node
                    .pool
                    .get()
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Ok((c, Some(node)))
            }
            _ => match self.conn().await? {
                Conn::Pooled(c) => Ok((c, None)),
                _ => Err(config_err("pool returned a non-pooled connection".into())),
            },
        }
    }

    /// Is `node` (a checkout's, sentinel mode) still the primary in use? Always outside
    /// sentinel mode.
    fn in_use(&self, node: Option<&Arc<Node>>) -> bool {
        match (&self.kind, node) {
            (Kind::Sentinel { current, .. }, Some(node)) => {
                read(current).is_some_and(|n| Arc::ptr_eq(&n, node))
            }
            _ => true,
        }
    }

    /// Forget the shared connection that failed (`lease`); the next call on its slot takes
    /// a new one. `all`: its socket is gone, and so are those of every shared connection
    /// that existed when the call got it (the same node: Redis restarted, or the path to it
    /// broke), which are forgotten too; calls in flight on them finish or fail on their
    /// own. A connection taken since is kept: it may be one a call took once Redis was back.
    pub fn drop_shared(&self, lease: Lease, all: bool) {
        // The cluster connection recovers by itself (reconnect, slot refresh).
        if matches!(self.kind, Kind::Cluster { .. }) {
            return;
        }
        for (i, slot) in self.shared.iter().enumerate() {
            let mut held = slot.write().unwrap_or_else(|p| p.into_inner());
            let forget = match &*held {
                Some((generation, _)) if i == lease.slot => *generation == lease.generation,
                Some((generation, _)) => all && *generation <= lease.seen,
                None => false,
            };
            if forget {
                *held = None;
            }
        }
    }

    /// A connection of its own (not pooled) for blocking reads, with a response timeout
    /// longer than the block time. In cluster mode a cluster connection of its own: its
    /// blocking `XREADGROUP` goes to the node that holds the stream's slot, and follows the
    /// slot when it moves.
    pub async fn dedicated(&self, timeout: Duration) -> Result<Conn, StoreError> {
        let connect = Duration::from_secs(2).min(self.timeout * 2);
        match &self.kind {
            Kind::Cluster { .. } => {
                let seeds = self
                    .cfg
                    .seeds()
                    .iter()
                    .map(|u| u.as_str().into_connection_info())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| config_err(e.to_string()))?;
                let client = cluster_client(&self.cfg, seeds, timeout)?;
                client
                    .get_async_connection()
                    .await
                    .map(Conn::Cluster)
                    .map_err(|e| StoreError::from_redis("connect", e))
            }
            Kind::Single(_) | Kind::Sentinel { .. } => {
                let client = match &self.kind {
                    Kind::Single(n) => n.client.clone(),
                    _ => self.node().await?.client.clone(),
                };
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(timeout));
                client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await
                    .map(Conn::Multiplexed)
                    .map_err(|e| StoreError::from_redis("connect", e))
            }
        }
    }

    /// Run `cmd` on the node that holds `key`'s slot: in cluster mode commands without keys
    /// (`ROLE`, `SCRIPT`, `WAIT`) are routed there explicitly, elsewhere there is one node.
    pub async fn on_cell(
        &self,
        conn: &mut Conn,
        cmd: &Cmd,
        key: &str,
    ) -> redis::RedisResult<Value> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        match conn {
            Conn::Cluster(c) => {
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                c.route_command(
                    cmd.clone(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await
            }
            other => cmd.query_async(other).await,
        }
    }
}
