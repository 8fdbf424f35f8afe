//! Asking the sentinels (one round): every sentinel at once, each address named checked
//! with `ROLE`, the configuration epochs weighed (see `sentinel.rs` for why), and the
//! round's outcome for `Connector::resolve`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, Value};

use crate::store::StoreError;
use crate::store::clients::{Node, node};
use crate::store::connection::{Connector, config_err};

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
pub(in crate::store) fn is_master(role: &Value) -> bool {
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
pub(super) struct Round {
    pub(super) primary: Result<(Arc<Node>, Option<u64>), StoreError>,
    pub(super) demoted: bool,
    pub(super) silent: bool,
}

/// The node in use, as a round sees it: the epoch it was named with (None: unknown), and
/// whether it did not answer `ROLE` in the previous round that weighed answers behind it.
#[derive(Clone, Copy)]
pub(super) struct InUse<'a> {
    pub(super) node: &'a Arc<Node>,
    pub(super) epoch: Option<u64>,
    pub(super) silent: bool,
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
    /// An answer named the node in use with its epoch or a newer one (or none known).
    vouched: bool,
    /// What `ROLE` on the node in use said this round, if it was asked.
    in_use_role: Option<Result<bool, String>>,
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

impl Connector {
    /// A client and pool for the data node at `addr` (`host:port`).
    fn node_at(&self, addr: &str) -> Result<Node, StoreError> {
        let scheme = if self.cfg.tls() { "rediss" } else { "redis" };
        let info = url_of(scheme, addr)
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
    /// is set aside, and considered only if no other answer names a primary, none still
    /// names the node in use with its epoch or a newer one, and the node in use is none any
    /// more: demoted, or silent in two such rounds in a row (a crash just after the
    /// sentinels were rebuilt with fresh epochs, say; one silent round may be a busy
    /// primary).
    pub(super) async fn find_primary(
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
            vouched: false,
            in_use_role: None,
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
            if let Some(o) = old
                && o.node.addr == addr
            {
                seek.vouched |= epoch.zip(o.epoch).is_none_or(|(e, in_use)| e >= in_use);
            }
            if let Some((_, seen)) = &confirmed {
                let newest = (*seen).max(old.and_then(|o| o.epoch));
                if epoch.zip(newest).is_none_or(|(e, newest)| e <= newest) {
                    continue;
                }
            } else if old.is_some_and(|o| o.behind(&addr, epoch)) {
                behind.push((sentinel, addr, epoch));
                continue;
            }
            let Some(node) = self.check(&mut seek, &sentinel, &addr).await else {
                continue;
            };
            // (Without an epoch no later answer can be told newer: no wait.)
            if confirmed.is_none()
                && epoch.is_some()
                && seek.old.is_some_and(|o| Arc::ptr_eq(o, &node))
            {
                confirmed = Some((node, epoch));
                until = Some(tokio::time::Instant::now() + LATER.min(self.timeout));
                continue;
            }
            return seek.found(node, epoch);
        }
        if let Some((node, epoch)) = confirmed {
            return seek.found(node, epoch);
        }
        // Answers behind the node in use count only if no answer still vouched for it (named
        // it with its epoch or a newer one) and it is no primary any more.
        if let Some(o) = old
            && !behind.is_empty()
            && !seek.vouched
        {
            let role = match seek.in_use_role.take() {
                Some(role) => role,
                None => is_primary(o.node).await.map_err(|e| e.to_string()),
            };
            match role {
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
        let role = is_primary(&node).await;
        if seek.old.is_some_and(|o| o.addr == addr) {
            seek.in_use_role = Some(role.as_ref().map(|r| *r).map_err(ToString::to_string));
        }
        match role {
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
}

/// The URL of the data node at `addr` (`host:port`, as a sentinel names it and as redis-rs
/// prints a node's address): an IPv6 host in brackets, which a URL needs (`fd00::5:6379`
/// did not parse, so a sentinel set announcing IPv6 addresses never gave a primary).
fn url_of(scheme: &str, addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some((host, port)) if host.contains(':') && !host.starts_with('[') => {
            format!("{scheme}://[{host}]:{port}")
        }
        _ => format!("{scheme}://{addr}"),
    }
}

#[cfg(test)]
mod tests {
    use redis::IntoConnectionInfo;

    use super::url_of;

    /// A node's address as a sentinel names it reads back the same from its URL, IPv6 too.
    #[test]
    fn a_sentinels_address_makes_a_url_that_names_it_again() {
        for addr in [
            "10.0.0.5:6379",
            "redis-0.redis:6380",
            "fd00::5:6379",
            "::1:26379",
        ] {
            let info = url_of("redis", addr)
                .as_str()
                .into_connection_info()
                .unwrap_or_else(|e| panic!("{addr}: {e}"));
            assert_eq!(info.addr().to_string(), addr);
        }
    }
}
