//! A 3-primary 3-replica Redis Cluster ([`Cluster`]) and what the tests ask it: slots, the
//! primary serving one, the slot map, the node on a port.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Proc, connect, link_up, until};

/// A Redis Cluster of three primaries with one replica each (node timeout 1 s for the tests
/// that fail a primary over, 30 s for those that never mean to: `start_steady`).
pub struct Cluster {
    pub nodes: Vec<Proc>,
}

impl Cluster {
    pub async fn start() -> Self {
        Self::start_with_node_timeout(1_000).await
    }

    /// The same for the tests that never fail a primary over on purpose (the scenario suites
    /// run on a cluster, `SWITCHYARD_TEST_TOPOLOGY`; chaos; slot migrations): a primary is
    /// failed over only after 30 s without an answer. With 1 s, a primary stalled by a
    /// loaded machine (or a long script) could be failed over under a test, which then read
    /// a demoted node.
    pub async fn start_steady() -> Self {
        Self::start_with_node_timeout(30_000).await
    }

    async fn start_with_node_timeout(ms: u64) -> Self {
        let timeout = ms.to_string();
        let nodes: Vec<Proc> = (0..6)
            .map(|_| {
                Proc::server(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &timeout,
                    // A replica fails over however long ago it heard from its primary (a
                    // freshly created cluster has not pinged yet).
                    "--cluster-replica-validity-factor",
                    "0",
                    "--repl-diskless-sync-delay",
                    "0",
                    "--appendonly",
                    "no",
                ])
            })
            .collect();
        for n in &nodes {
            n.wait_up().await;
        }
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(Proc::addr))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = Self { nodes };
        for n in &c.nodes {
            let conn = n.client().await;
            until(Duration::from_secs(15), "cluster_state:ok", || {
                let mut conn = conn.clone();
                async move {
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    info.contains("cluster_state:ok")
                }
            })
            .await;
        }
        // Every replica holds its primary's data (initial sync done) before the tests
        // write: a replica promoted mid-sync would start empty.
        for n in &c.nodes {
            let conn = n.client().await;
            let role: Vec<redis::Value> = redis::cmd("ROLE")
                .query_async(&mut conn.clone())
                .await
                .expect("role");
            if redis::from_redis_value_ref::<String>(&role[0])
                .ok()
                .as_deref()
                == Some("slave")
            {
                until(Duration::from_secs(15), "replica in sync", || {
                    let mut conn = conn.clone();
                    async move { link_up(&mut conn).await }
                })
                .await;
            }
        }
        c
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().take(3).map(Proc::url).collect()
    }

    /// Slot of `key` (CLUSTER KEYSLOT).
    pub async fn slot(&self, key: &str) -> u16 {
        let mut c = self.nodes[0].client().await;
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut c)
            .await
            .expect("keyslot")
    }

    /// Port of the primary serving `slot`, as any live node's CLUSTER SHARDS reports it.
    pub async fn primary_of(&self, slot: u16) -> Option<u16> {
        for n in &self.nodes {
            let Ok(mut c) = connect(&n.url()).await else {
                continue;
            };
            let Ok(slots) = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Vec<Vec<redis::Value>>>(&mut c)
                .await
            else {
                continue;
            };
            for range in slots {
                let lo: u16 = redis::from_redis_value_ref(&range[0]).ok()?;
                let hi: u16 = redis::from_redis_value_ref(&range[1]).ok()?;
                if (lo..=hi).contains(&slot)
                    && let redis::Value::Array(m) = &range[2]
                {
                    return redis::from_redis_value_ref::<u16>(&m[1]).ok();
                }
            }
        }
        None
    }

    /// Each primary's slot ranges, by primary port (from CLUSTER SLOTS).
    pub async fn slot_map(&self) -> std::collections::BTreeMap<u16, Vec<(u16, u16)>> {
        let mut c = self.nodes[0].client().await;
        let slots: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut c)
            .await
            .expect("cluster slots");
        let mut map = std::collections::BTreeMap::<u16, Vec<(u16, u16)>>::new();
        for range in slots {
            let lo: u16 = redis::from_redis_value_ref(&range[0]).expect("lo");
            let hi: u16 = redis::from_redis_value_ref(&range[1]).expect("hi");
            let redis::Value::Array(m) = &range[2] else {
                panic!("primary entry")
            };
            let port: u16 = redis::from_redis_value_ref(&m[1]).expect("port");
            map.entry(port).or_default().push((lo, hi));
        }
        map
    }

    /// The node process listening on `port`.
    pub fn node(&mut self, port: u16) -> &mut Proc {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("node of port")
    }
}
