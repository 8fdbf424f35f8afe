//! A primary + replicas watched by three sentinels ([`SentinelSet`]) under the master name
//! [`MASTER`].

use std::time::Duration;

use super::{Proc, SentinelOpts, connect, link_up, until};

/// Primary + replicas, three sentinels monitoring them as `sy`.
pub struct SentinelSet {
    pub primary: Proc,
    pub replicas: Vec<Proc>,
    pub sentinels: Vec<Proc>,
}

pub const MASTER: &str = "sy";

impl SentinelSet {
    /// `replicas` replicas; `extra` applies to every data node (e.g. `--appendonly yes`).
    /// Waits until the sentinels know each other, as a failover needs.
    pub async fn start(replicas: usize, extra: &[&str]) -> Self {
        let set = Self::start_unelected(replicas, extra).await;
        set.wait_for_quorum(replicas).await;
        set
    }

    /// The same, without waiting for the sentinels to discover each other (seconds of
    /// hello messages): enough for scenarios that never fail over, where instances only
    /// ask a sentinel for the primary.
    pub async fn start_unelected(replicas: usize, extra: &[&str]) -> Self {
        Self::start_with(replicas, extra, &SentinelOpts::default()).await
    }

    /// The same for the tests that never fail over on purpose (the scenario suites run on
    /// Sentinel, `SWITCHYARD_TEST_TOPOLOGY`; chaos): the sentinels wait 30 s before they
    /// call the primary down. With 1 s, a primary stalled by a loaded machine (or a long
    /// script) could be failed over under a test, which then read a demoted node.
    pub async fn start_steady(replicas: usize, extra: &[&str]) -> Self {
        let opts = SentinelOpts {
            down_after_ms: Some(30_000),
            ..SentinelOpts::default()
        };
        Self::start_with(replicas, extra, &opts).await
    }

    async fn start_with(replicas: usize, extra: &[&str], opts: &SentinelOpts<'_>) -> Self {
        let primary = Proc::server(extra);
        primary.wait_up().await;
        let p = primary.port.to_string();
        let mut args = vec!["--replicaof", "127.0.0.1", &p];
        args.extend_from_slice(extra);
        let replicas: Vec<Proc> = (0..replicas).map(|_| Proc::server(&args)).collect();
        for r in &replicas {
            r.wait_up().await;
            let c = r.client().await;
            until(Duration::from_secs(10), "replica link up", || {
                let mut c = c.clone();
                async move { link_up(&mut c).await }
            })
            .await;
        }
        let sentinels: Vec<Proc> = (0..3)
            .map(|_| Proc::sentinel_with(MASTER, primary.port, opts))
            .collect();
        for s in &sentinels {
            s.wait_up().await;
        }
        Self {
            primary,
            replicas,
            sentinels,
        }
    }

    /// Every sentinel knows the `n` replicas and both other sentinels (a failover needs a
    /// quorum and a leader election).
    async fn wait_for_quorum(&self, n: usize) {
        for s in &self.sentinels {
            let c = s.client().await;
            until(
                Duration::from_secs(15),
                "sentinels discover each other",
                || {
                    let mut c = c.clone();
                    async move {
                        let peers: Vec<redis::Value> = redis::cmd("SENTINEL")
                            .arg("sentinels")
                            .arg(MASTER)
                            .query_async(&mut c)
                            .await
                            .unwrap_or_default();
                        let known: Vec<redis::Value> = redis::cmd("SENTINEL")
                            .arg("replicas")
                            .arg(MASTER)
                            .query_async(&mut c)
                            .await
                            .unwrap_or_default();
                        peers.len() == 2 && known.len() == n
                    }
                },
            )
            .await;
        }
    }

    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(Proc::url).collect()
    }

    /// The primary's address as the first sentinel that answers reports it.
    pub async fn primary_addr(&self) -> Option<String> {
        for s in &self.sentinels {
            if let Some(addr) = named_primary(s).await {
                return Some(addr);
            }
        }
        None
    }
}

/// What the sentinel `s` names as [`MASTER`]'s address (`get-master-addr-by-name`); None
/// when it does not answer or knows none.
pub async fn named_primary(s: &Proc) -> Option<String> {
    let mut c = connect(&s.url()).await.ok()?;
    let (h, p) = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(MASTER)
        .query_async::<Option<(String, u16)>>(&mut c)
        .await
        .ok()??;
    Some(format!("{h}:{p}"))
}
