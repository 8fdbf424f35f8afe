//! `switchyard cell-names`: cell names whose hash tags spread evenly over the primaries of
//! the configured Redis Cluster, read from its live slot map (`CLUSTER SLOTS`), printed as
//! `[[cells]]` entries to paste into the configuration. Names picked by hand land where
//! CRC16 puts them — often several on one primary and none on another.

use crate::config::{Config, RedisMode, cell::spread_names};

/// Each primary's slot ranges, from the first seed in `redis.urls` that answers.
pub async fn primaries(cfg: &Config) -> Result<Vec<Vec<(u16, u16)>>, String> {
    if cfg.redis.mode != RedisMode::Cluster {
        return Err("redis.mode must be \"cluster\" (cells on one server share its core)".into());
    }
    let mut last = String::from("no redis.urls configured");
    for url in &cfg.redis.urls {
        match slot_map(cfg, url).await {
            Ok(m) => return Ok(m),
            Err(e) => last = format!("{}: {e}", crate::config::show::redact_url(url)),
        }
    }
    Err(last)
}

async fn slot_map(cfg: &Config, url: &str) -> Result<Vec<Vec<(u16, u16)>>, String> {
    let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| e.to_string())?;
    // built as the instance builds its clients: `redis.username` / `redis.password`, and TLS
    // verified against `redis.tls_ca_file` (it was not: a private CA's cluster was refused)
    let info = crate::store::clients::with_credentials(&cfg.redis, info);
    let client = crate::store::clients::client(&cfg.redis, info).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let slots: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let mut by_primary: std::collections::BTreeMap<String, Vec<(u16, u16)>> = Default::default();
    for range in slots {
        let num = |i: usize| {
            range
                .get(i)
                .and_then(|v| redis::from_redis_value_ref::<u16>(v).ok())
        };
        let primary = match range.get(2) {
            Some(redis::Value::Array(m)) => m
                .iter()
                .take(2)
                .filter_map(|v| redis::from_redis_value_ref::<String>(v).ok())
                .collect::<Vec<_>>()
                .join(":"),
            _ => continue,
        };
        if let (Some(lo), Some(hi)) = (num(0), num(1)) {
            by_primary.entry(primary).or_default().push((lo, hi));
        }
    }
    if by_primary.is_empty() {
        return Err("CLUSTER SLOTS returned no slot ranges".into());
    }
    Ok(by_primary.into_values().collect())
}

/// `count` names `<base>-<n>` spread over the cluster's primaries, as `[[cells]]` TOML
/// (the first is the default).
pub async fn cells_toml(cfg: &Config, base: &str, count: usize) -> Result<String, String> {
    let primaries = primaries(cfg).await?;
    let names = spread_names(&cfg.cell.prefix, base, count, &primaries);
    let mut out = format!(
        "# {count} cells over {} primaries (tags {{{}:<name>}}, spread by slot)\n",
        primaries.len(),
        cfg.cell.prefix
    );
    for (i, n) in names.iter().enumerate() {
        out.push_str(&format!(
            "\n[[cells]]\nname = \"{n}\"\ntenants = []\ndefault = {}\n",
            i == 0
        ));
    }
    Ok(out)
}
