//! Sentinel discovery: which address the sentinels currently name as the primary.
//!
//! Asked at the first connection and again after failures (see `connection.rs`); the
//! sentinels are tried in order, the first answer wins. A sentinel that is down or does not
//! monitor the master is skipped.
//!
//! The sentinel clients are built once by `clients::sentinel_client`: a `rediss://` sentinel
//! is asked over TLS with `redis.tls_ca_file`, as the data nodes are, and with the
//! credentials of its own URL.

use std::time::Duration;

use redis::AsyncConnectionConfig;

use super::StoreError;

/// `SENTINEL get-master-addr-by-name` on each sentinel in turn; the first answer wins.
pub(super) async fn ask_sentinels(
    sentinels: &[redis::Client],
    master: &str,
    timeout: Duration,
) -> Result<(String, u16), StoreError> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut last = String::from("no sentinel configured");
    for client in sentinels {
        let addr = client.get_connection_info().addr();
        let asked = async {
            let mut c = client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query_async::<Option<(String, u16)>>(&mut c)
                .await
        };
        match asked.await {
            Ok(Some(addr)) => return Ok(addr),
            Ok(None) => last = format!("sentinel {addr} does not know {master:?}"),
            Err(e) => last = format!("sentinel {addr}: {e}"),
        }
    }
    Err(StoreError::Unavailable(last))
}
