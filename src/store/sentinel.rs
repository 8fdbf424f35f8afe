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

mod ask;

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::StoreError;
use super::clients::Node;
use super::connection::{Connector, Kind, config_err, read, write};
use ask::InUse;
pub(super) use ask::is_master;

/// How often the sentinels may be asked again after failures.
const RESOLVE_EVERY: Duration = Duration::from_millis(200);

/// How often the sentinels are asked while everything works (see [`Connector::poll`]).
const POLL_EVERY: Duration = Duration::from_secs(1);

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
        resolved.silent = false;
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
