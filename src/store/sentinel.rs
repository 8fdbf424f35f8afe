//! Sentinel discovery: which address the sentinels currently name as the primary.
//!
//! Asked at the first connection and again after failures (see `connection.rs`); the
//! sentinels are asked all at once, the first answer wins. A sentinel that is down, hangs
//! or does not monitor the master is skipped: it costs no wait while another answers (the
//! primary's pod often carries a sentinel, so one is down exactly when asking matters).
//!
//! The sentinel clients are built once by `clients::sentinel_client`: a `rediss://` sentinel
//! is asked over TLS with `redis.tls_ca_file`, as the data nodes are, and with the
//! credentials of its own URL.

use std::time::Duration;

use redis::AsyncConnectionConfig;

use super::StoreError;

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
