//! Script replies: `[json, blob...]`, the JSON decoded into the script's typed reply plus
//! its deliveries (`out`), transition counts (`ev`) and latencies (`lat`).

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{Output, StoreError};

pub(super) fn decode_reply<T: DeserializeOwned>(
    script: &'static str,
    json: &[u8],
    blobs: Vec<Vec<u8>>,
) -> Result<Output<T>, StoreError> {
    let bad = |e: serde_json::Error| StoreError::Reply {
        script,
        message: format!("{e}: {}", String::from_utf8_lossy(json)),
    };
    let mut value: serde_json::Value = serde_json::from_slice(json).map_err(bad)?;
    // Move the deliveries and events out (message bodies can be large: no copies).
    let take = |v: &mut serde_json::Value, k: &str| v.as_object_mut().and_then(|m| m.remove(k));
    let out = take(&mut value, "out")
        .map(lua_list)
        .transpose()
        .map_err(bad)?
        .unwrap_or_default();
    let ev = take(&mut value, "ev")
        .map(lua_map)
        .transpose()
        .map_err(bad)?
        .unwrap_or_default();
    let lat = match take(&mut value, "lat") {
        Some(l) => serde_json::from_value(l).map_err(bad)?,
        None => Latencies::default(),
    };
    let reply: T = serde_json::from_value(value).map_err(bad)?;
    Ok(Output {
        reply,
        out,
        blobs,
        events: Events { ev, lat },
    })
}

/// What a script call did, for metrics: transition counts and latencies (ms, Redis clock).
#[derive(Debug, Default)]
pub struct Events {
    /// `submitted`, `dispatched`, `queued`, `failover`, `finished`, `acked`, `started`,
    /// `queue_timeout`, `missing_result`, `failed:<CODE>`, `cut_skipped:empty|too_short`
    /// → count.
    pub ev: std::collections::BTreeMap<String, u64>,
    pub lat: Latencies,
}

#[derive(Debug, Default, Deserialize)]
pub struct Latencies {
    #[serde(default, deserialize_with = "lua_list")]
    pub dispatch: Vec<f64>,
    #[serde(default, deserialize_with = "lua_list")]
    pub e2e: Vec<f64>,
    /// The primary pool of each job of `dispatch`, in the same order.
    #[serde(default, deserialize_with = "lua_list")]
    pub pool: Vec<String>,
}

/// Serde helper: a map that Lua's cjson may have encoded as `[]`... or `{}` when empty.
fn lua_map<'de, D>(d: D) -> Result<std::collections::BTreeMap<String, u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Object(m) => Ok(m
            .into_iter()
            .filter_map(|(k, v)| v.as_u64().map(|n| (k, n)))
            .collect()),
        _ => Ok(Default::default()),
    }
}

/// Serde helper for script replies: Lua's cjson encodes an empty table as `{}`, so a list
/// field may arrive as an empty object.
pub fn lua_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::Deserialize;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(serde::de::Error::custom))
            .collect(),
        serde_json::Value::Object(m) if m.is_empty() => Ok(Vec::new()),
        serde_json::Value::Null => Ok(Vec::new()),
        other => Err(serde::de::Error::custom(format!(
            "expected a list, got {other}"
        ))),
    }
}
