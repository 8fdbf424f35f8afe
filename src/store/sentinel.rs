//! Sentinel mode: which node is the primary, and following it when it moves.
//!
//! [`Connector`] asks the sentinels at the first connection, after failures
//! ([`Connector::failed`]) and once a second while everything works ([`Connector::poll`]);
//! when they name another primary the pool and the shared connections are replaced.
//!
//! The sentinels are asked all at once, and the first answer that names a primary wins
//! (unless it is behind the one the node in use was named by: below). A
//! sentinel that is down, hangs or does not monitor the master is skipped: it costs no
//! wait while another answers (the primary's pod often carries a sentinel, so one is down
//! exactly when asking matters).
//!
//! A sentinel can name a node that is no primary (a stale sentinel; the seconds of a
//! failover or switch-over before the sentinels reconfigure): writes there fail with
//! `READONLY`, or worse, go to an old primary about to be demoted and are lost. So every
//! address named is checked with `ROLE` before a connection to it is handed out; one that
//! is not a primary is passed over for the next sentinel's answer, and when it is the
//! primary in use (demoted behind the sentinels' back) it is dropped: calls are refused
//! (`Unavailable`) until the sentinels name a primary.
//!
//! `ROLE` alone cannot tell an old primary in its last seconds from the new one: in a
//! switch-over both answer as primaries until Sentinel demotes the old one. The sentinels'
//! configuration epoch can (a failover raises it): an answer naming another node with an
//! older epoch than the answer that confirmed the node in use is behind, and is not
//! followed while the node in use is still a primary (`Connector::find_primary`).
//!
//! The sentinel clients are built once by `clients::sentinel_client`: a `rediss://` sentinel
//! is asked over TLS with `redis.tls_ca_file`, as the data nodes are, and with the
//! credentials of its own URL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, Value};

use super::StoreError;
use super::clients::{Node, node};
use super::connection::{Connector, Kind, config_err, read, write};

/// How often the sentinels may be asked again after failures.
const RESOLVE_EVERY: Duration = Duration::from_millis(200);

/// How often the sentinels are asked while everything works (see [`Connector::poll`]).
const POLL_EVERY: Duration = Duration::from_secs(1);

/// How long the other sentinels' answers are awaited once one has confirmed the node in
/// use (at most `redis.timeout_ms`): one that has seen a later failover may follow.
const LATER: Duration = Duration::from_millis(100);

/// One sentinel's answer: its address, and the `host:port` it names with the configuration
/// epoch of that naming (None: it does not know the master; an epoch of None: unknown).
type Answer = (String, redis::RedisResult<Option<(String, Option<u64>)>>);

/// Ask every sentinel at once; answers as they come. The address comes from
/// `get-master-addr-by-name`, which names the promoted replica as soon as the failover's
/// leader has it confirmed, and the epoch from `SENTINEL MASTER` (whose own address field
/// names the old primary until the failover ends), asked first in the same pipeline: the
/// epoch read is never newer than the address. A sentinel that refuses `SENTINEL MASTER`
/// (an ACL that grants only `get-master-addr-by-name`) gives no epoch.
fn ask_sentinels<'a>(
    sentinels: &'a [redis::Client],
    master: &'a str,
    timeout: Duration,
) -> futures_util::stream::FuturesUnordered<impl Future<Output = Answer> + 'a> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    sentinels
        .iter()
        .map(move |client| {
            let cfg = cfg.clone();
            async move {
                let addr = client.get_connection_info().addr().to_string();
                let answer = async {
                    let mut c = client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?;
                    let mut ask = redis::pipe();
                    ask.ignore_errors();
                    ask.cmd("SENTINEL").arg("MASTER").arg(master);
                    ask.cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(master);
                    let mut replies = ask
                        .query_async::<Vec<redis::RedisResult<Value>>>(&mut c)
                        .await?
                        .into_iter();
                    let (Some(fields), Some(named)) = (replies.next(), replies.next()) else {
                        return Err(redis::RedisError::from((
                            redis::ErrorKind::Parse,
                            "sentinel pipeline: two replies expected",
                        )));
                    };
                    let Some((host, port)) =
                        redis::from_redis_value::<Option<(String, u16)>>(named?)?
                    else {
                        return Ok(None);
                    };
                    Ok(Some((format!("{host}:{port}"), epoch(fields))))
                };
                (addr, answer.await)
            }
        })
        .collect()
}

/// The `config-epoch` of a `SENTINEL MASTER` reply; None when it failed or has none.
fn epoch(reply: redis::RedisResult<Value>) -> Option<u64> {
    let fields: HashMap<String, String> = redis::from_redis_value(reply.ok()?).ok()?;
    fields.get("config-epoch")?.parse().ok()
}

/// A `ROLE` reply that says primary (its first element is `master`).
pub(super) fn is_master(role: &Value) -> bool {
    let role = match role {
        Value::Array(v) => v
            .first()
            .and_then(|r| redis::from_redis_value_ref::<String>(r).ok()),
        _ => None,
    };
    role.as_deref() == Some("master")
}

/// `ROLE` on a pooled connection of `node`: is it a primary?
async fn is_primary(node: &Node) -> Result<bool, StoreError> {
    let mut c = node
        .pool
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let role: Value = redis::cmd("ROLE")
        .query_async(&mut c)
        .await
        .map_err(|e| StoreError::from_redis("role", e))?;
    Ok(is_master(&role))
}

/// What one round of asking found: the primary and the epoch it was named with, or why
/// none; whether the node in use answered `ROLE` as something other than a primary, and
/// whether it did not answer when answers behind it were weighed.
struct Round {
    primary: Result<(Arc<Node>, Option<u64>), StoreError>,
    demoted: bool,
    silent: bool,
}

/// The node in use, as a round sees it: the epoch it was named with (None: unknown), and
/// whether it did not answer `ROLE` in the previous round that weighed answers behind it.
#[derive(Clone, Copy)]
struct InUse<'a> {
    node: &'a Arc<Node>,
    epoch: Option<u64>,
    silent: bool,
}

impl InUse<'_> {
    /// Does an answer naming `addr` with `epoch` come from a sentinel behind the failover
    /// that named the node in use (another node, an older epoch)?
    fn behind(&self, addr: &str, epoch: Option<u64>) -> bool {
        self.node.addr != addr && epoch.zip(self.epoch).is_some_and(|(e, in_use)| e < in_use)
    }
}

/// A round in progress: the node in use, the addresses checked, what it learnt.
struct Seek<'a> {
    old: Option<&'a Arc<Node>>,
    checked: Vec<String>,
    demoted: bool,
    silent: bool,
    last: String,
}

impl Seek<'_> {
    fn found(self, node: Arc<Node>, epoch: Option<u64>) -> Round {
        Round {
            primary: Ok((node, epoch)),
            demoted: self.demoted,
            silent: self.silent,
        }
    }
}

/// What the last round left (behind `Kind::Sentinel`'s lock, which serialises rounds).
#[derive(Default)]
pub(super) struct Resolving {
    /// When it ended, and why it found no primary.
    last: Option<(Instant, Option<String>)>,
    /// The configuration epoch of the answer that last confirmed the node in use.
    epoch: Option<u64>,
    /// The node in use did not answer `ROLE` when the last round weighed answers behind it.
    silent: bool,
}

impl Connector {
    /// The primary's node for single and sentinel modes (resolving it when needed).
    pub(super) async fn node(&self) -> Result<Arc<Node>, StoreError> {
        match &self.kind {
            Kind::Single(_) | Kind::Cluster { .. } => Err(config_err("not a node topology".into())),
            Kind::Sentinel { current, .. } => match read(current) {
                Some(n) => Ok(n),
                None => {
                    self.resolve(true, RESOLVE_EVERY).await?;
                    read(current).ok_or_else(|| {
                        StoreError::Unavailable("no primary known to the sentinels".into())
                    })
                }
            },
        }
    }

    /// A call failed with `Unavailable` (a `READONLY` reply among them): in sentinel mode,
    /// ask the sentinels whether the primary moved (at most once per 200 ms), and switch to
    /// the new one if it did, or drop the one in use if it is no primary any more.
    pub async fn failed(&self) {
        if let Kind::Sentinel { .. } = self.kind
            && let Err(e) = self.resolve(false, RESOLVE_EVERY).await
        {
            tracing::debug!(error = %e, "sentinel re-resolution failed");
        }
    }

    /// Sentinel mode: ask the sentinels again if the last answer is older than
    /// `POLL_EVERY`. A planned switch-over (`SENTINEL FAILOVER`) leaves the old primary up
    /// and writable until Sentinel reconfigures it (up to its 10 s INFO period), so errors
    /// alone would notice it late; the presence loop calls this on every beat.
    pub async fn poll(&self) {
        if let Kind::Sentinel { .. } = self.kind
            && let Err(e) = self.resolve(false, POLL_EVERY).await
        {
            tracing::debug!(error = %e, "sentinel poll failed");
        }
    }

    /// A client and pool for the data node at `addr` (`host:port`).
    fn node_at(&self, addr: &str) -> Result<Node, StoreError> {
        let scheme = if self.cfg.tls() { "rediss" } else { "redis" };
        let info = format!("{scheme}://{addr}")
            .as_str()
            .into_connection_info()
            .map_err(|e| config_err(e.to_string()))?;
        node(&self.cfg, info)
    }

    /// Ask every sentinel; check each address named (once) with `ROLE`, in the order the
    /// answers come, until one is a primary. `old`: the node in use (checked on its own
    /// pool). When that one is the node in use, the answers still coming get a moment
    /// (`LATER`) to name another primary with a newer epoch: a sentinel behind a
    /// switch-over names the old primary (the node in use) with the old epoch, and answering
    /// first it would keep the instance there, writing what the demotion loses.
    ///
    /// An answer that names another node with an older epoch than the node in use comes
    /// from a sentinel behind the failover that named it (in a switch-over, for the seconds
    /// before the sentinels reconfigure; the old primary still answers `ROLE` as one):
    /// following it would send writes to a primary about to be demoted, and lose them. It
    /// is set aside, and considered only if no other answer names a primary and the node in
    /// use is none any more: demoted, or silent in two such rounds in a row (a crash just
    /// after the sentinels were rebuilt with fresh epochs, say; one silent round may be a
    /// busy primary).
    async fn find_primary(
        &self,
        sentinels: &[redis::Client],
        master: &str,
        old: Option<InUse<'_>>,
    ) -> Round {
        let mut asked = ask_sentinels(sentinels, master, self.timeout);
        let mut seek = Seek {
            old: old.map(|o| o.node),
            checked: Vec::new(),
            demoted: false,
            silent: false,
            last: String::from("no sentinel configured"),
        };
        let mut behind = Vec::new();
        // The node in use, once an answer confirmed it, with that answer's epoch; then the
        // answers still coming are awaited until `until` for a newer failover.
        let mut confirmed: Option<(Arc<Node>, Option<u64>)> = None;
        let mut until = None;
        loop {
            let next = match until {
                None => asked.next().await,
                Some(t) => tokio::time::timeout_at(t, asked.next())
                    .await
                    .ok()
                    .flatten(),
            };
            let Some((sentinel, answer)) = next else {
                break;
            };
            let (addr, epoch) = match answer {
                Ok(Some(named)) => named,
                Ok(None) => {
                    seek.last = format!("sentinel {sentinel} does not know {master:?}");
                    continue;
                }
                Err(e) => {
                    seek.last = format!("sentinel {sentinel}: {e}");
                    continue;
                }
            };
            if let Some((_, seen)) = &confirmed {
                if epoch.zip(*seen).is_none_or(|(e, seen)| e <= seen) {
                    continue;
                }
            } else if old.is_some_and(|o| o.behind(&addr, epoch)) {
                behind.push((sentinel, addr, epoch));
                continue;
            }
            let Some(node) = self.check(&mut seek, &sentinel, &addr).await else {
                continue;
            };
            if confirmed.is_none() && seek.old.is_some_and(|o| Arc::ptr_eq(o, &node)) {
                confirmed = Some((node, epoch));
                until = Some(tokio::time::Instant::now() + LATER.min(self.timeout));
                continue;
            }
            return seek.found(node, epoch);
        }
        if let Some((node, epoch)) = confirmed {
            return seek.found(node, epoch);
        }
        if let Some(o) = old
            && !behind.is_empty()
        {
            match is_primary(o.node).await {
                Ok(true) => {
                    tracing::warn!(node = %o.node.addr, master = %master, behind = ?behind,
                        "sentinels behind the failover the node in use was named by name another primary; staying");
                    return seek.found(o.node.clone(), o.epoch);
                }
                Ok(false) => seek.demoted = true,
                Err(e) => {
                    seek.silent = true;
                    seek.last = format!("the node in use, {}: {e}", o.node.addr);
                    if !o.silent {
                        return Round {
                            primary: Err(StoreError::Unavailable(seek.last)),
                            demoted: false,
                            silent: true,
                        };
                    }
                }
            }
            for (sentinel, addr, epoch) in behind {
                if let Some(node) = self.check(&mut seek, &sentinel, &addr).await {
                    return seek.found(node, epoch);
                }
            }
        }
        Round {
            primary: Err(StoreError::Unavailable(seek.last)),
            demoted: seek.demoted,
            silent: seek.silent,
        }
    }

    /// Check `addr`, named by `sentinel`, once per round: its node if it is a primary.
    async fn check(&self, seek: &mut Seek<'_>, sentinel: &str, addr: &str) -> Option<Arc<Node>> {
        if seek.checked.iter().any(|a| a == addr) {
            return None;
        }
        seek.checked.push(addr.to_string());
        let node = match seek.old {
            Some(o) if o.addr == addr => o.clone(),
            _ => match self.node_at(addr) {
                Ok(n) => Arc::new(n),
                Err(e) => {
                    seek.last = format!("sentinel {sentinel} names {addr}: {e}");
                    return None;
                }
            },
        };
        match is_primary(&node).await {
            Ok(true) => Some(node),
            Ok(false) => {
                seek.demoted |= seek.old.is_some_and(|o| o.addr == addr);
                seek.last = format!("sentinel {sentinel} names {addr}, which is not a primary");
                None
            }
            Err(e) => {
                seek.last = format!("sentinel {sentinel} names {addr}: {e}");
                None
            }
        }
    }

    /// Ask the sentinels for the primary; replace the pool when it changed, drop it when
    /// the node in use is no primary any more. `force`: there is no primary in use.
    async fn resolve(&self, force: bool, gap: Duration) -> Result<(), StoreError> {
        let Kind::Sentinel {
            sentinels,
            master,
            current,
            resolving,
        } = &self.kind
        else {
            return Ok(());
        };
        let mut resolved = resolving.lock().await;
        if force && read(current).is_some() {
            return Ok(()); // another caller resolved it while we waited for the lock
        }
        if let Some((at, error)) = &resolved.last
            && at.elapsed() < gap
        {
            // Also with no primary in use (a node that was dropped, none named): every call
            // would ask again, one after another. It gets the last round's answer.
            return match error {
                Some(e) if force => Err(StoreError::Unavailable(e.clone())),
                _ => Ok(()),
            };
        }
        // Stamped when the answer is in, not before asking: the calls that failed meanwhile
        // and queued on the lock then find a fresh answer and return, instead of each
        // asking again (each waiting up to `timeout` for a sentinel that does not answer).
        let old = read(current);
        let in_use = old.as_ref().map(|node| InUse {
            node,
            epoch: resolved.epoch,
            silent: resolved.silent,
        });
        let round = self.find_primary(sentinels, master, in_use).await;
        resolved.silent = round.silent;
        let error = match &round.primary {
            Ok(_) => None,
            Err(StoreError::Unavailable(m)) => Some(m.clone()),
            Err(e) => Some(e.to_string()),
        };
        resolved.last = Some((Instant::now(), error));
        let (fresh, epoch) = match round.primary {
            Ok(n) => n,
            Err(e) => {
                if round.demoted
                    && let Some(o) = &old
                {
                    tracing::warn!(node = %o.addr, master = %master, error = %e,
                        "the primary in use is no primary any more; no connections until the sentinels name one");
                    write(current, None);
                    for slot in &self.shared {
                        write(slot, None);
                    }
                }
                return Err(e);
            }
        };
        if old.as_ref().is_some_and(|n| Arc::ptr_eq(n, &fresh)) {
            // The answer that confirmed it (not the highest ever seen: sentinels rebuilt
            // start again from 0, and their next failover must not look behind).
            resolved.epoch = epoch.or(resolved.epoch);
            return Ok(());
        }
        resolved.epoch = epoch;
        match &old {
            Some(o) => tracing::warn!(from = %o.addr, to = %fresh.addr, master = %master,
                "the sentinels name a new primary; following the failover"),
            None => {
                tracing::info!(primary = %fresh.addr, master = %master, "primary found through the sentinels")
            }
        }
        write(current, Some(fresh));
        for slot in &self.shared {
            write(slot, None);
        }
        Ok(())
    }
}
