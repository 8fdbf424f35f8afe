//! Sentinel mode: which node is the primary, and following it when it moves.
//!
//! [`Connector`] asks the sentinels at the first connection, after failures
//! ([`Connector::failed`]) and once a second while everything works ([`Connector::poll`]);
//! when they name another primary the pool and the shared connections are replaced.
//!
//! The sentinels are asked all at once, the first answer wins. A sentinel that is down,
//! hangs or does not monitor the master is skipped: it costs no wait while another answers
//! (the primary's pod often carries a sentinel, so one is down exactly when asking matters).
//!
//! The sentinel clients are built once by `clients::sentinel_client`: a `rediss://` sentinel
//! is asked over TLS with `redis.tls_ca_file`, as the data nodes are, and with the
//! credentials of its own URL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{AsyncConnectionConfig, IntoConnectionInfo};

use super::StoreError;
use super::clients::{Node, node};
use super::connection::{Connector, Kind, config_err, read, write};

/// How often the sentinels may be asked again after failures.
const RESOLVE_EVERY: Duration = Duration::from_millis(200);

/// How often the sentinels are asked while everything works (see [`Connector::poll`]).
const POLL_EVERY: Duration = Duration::from_secs(1);

/// `SENTINEL get-master-addr-by-name` on every sentinel at once; the first answer wins.
pub(super) async fn ask_sentinels(
    sentinels: &[redis::Client],
    master: &str,
    timeout: Duration,
) -> Result<(String, u16), StoreError> {
    use futures_util::StreamExt;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut asked: futures_util::stream::FuturesUnordered<_> = sentinels
        .iter()
        .map(|client| {
            let cfg = cfg.clone();
            async move {
                let addr = client.get_connection_info().addr().to_string();
                let answer = async {
                    let mut c = client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?;
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(master)
                        .query_async::<Option<(String, u16)>>(&mut c)
                        .await
                };
                (addr, answer.await)
            }
        })
        .collect();
    let mut last = String::from("no sentinel configured");
    while let Some((addr, answer)) = asked.next().await {
        match answer {
            Ok(Some(primary)) => return Ok(primary),
            Ok(None) => last = format!("sentinel {addr} does not know {master:?}"),
            Err(e) => last = format!("sentinel {addr}: {e}"),
        }
    }
    Err(StoreError::Unavailable(last))
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
    /// A call failed with `Unavailable`: in sentinel mode, ask the sentinels whether the
    /// primary moved (at most once per 200 ms), and switch to the new one if it did.
    pub async fn failed(&self) {
        if let Kind::Sentinel { .. } = self.kind
            && let Err(e) = self.resolve(false, RESOLVE_EVERY).await
        {
            tracing::debug!(error = %e, "sentinel re-resolution failed");
        }
    }

    /// Ask the sentinels for the primary's address; replace the pool when it changed.
    /// Sentinel mode: ask the sentinels again if the last answer is older than
    /// [`POLL_EVERY`]. A planned switch-over (`SENTINEL FAILOVER`) leaves the old primary up
    /// and writable until Sentinel reconfigures it (up to its 10 s INFO period), so errors
    /// alone would notice it late; the presence loop calls this on every beat.
    pub async fn poll(&self) {
        if let Kind::Sentinel { .. } = self.kind
            && let Err(e) = self.resolve(false, POLL_EVERY).await
        {
            tracing::debug!(error = %e, "sentinel poll failed");
        }
    }

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
        let mut last = resolving.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < gap) {
            return Ok(());
        }
        if force && read(current).is_some() {
            return Ok(()); // another caller resolved it while we waited for the lock
        }
        // Stamped when the answer is in, not before asking: the calls that failed meanwhile
        // and queued on the lock then find a fresh answer and return, instead of each
        // asking again (each waiting up to `timeout` for a sentinel that does not answer).
        let asked = ask_sentinels(sentinels, master, self.timeout).await;
        *last = Some(Instant::now());
        let (host, port) = asked?;
        let addr = format!("{host}:{port}");
        let old = read(current);
        if old.as_ref().is_some_and(|n| n.addr == addr) {
            return Ok(());
        }
        let scheme = if self.cfg.tls() { "rediss" } else { "redis" };
        let info = format!("{scheme}://{addr}")
            .as_str()
            .into_connection_info()
            .map_err(|e| config_err(e.to_string()))?;
        let fresh = Arc::new(node(&self.cfg, info)?);
        match &old {
            Some(o) => tracing::warn!(from = %o.addr, to = %addr, master = %master,
                "the sentinels name a new primary; following the failover"),
            None => {
                tracing::info!(primary = %addr, master = %master, "primary found through the sentinels")
            }
        }
        write(current, Some(fresh));
        for slot in &self.shared {
            write(slot, None);
        }
        Ok(())
    }
}
