//! Script replies: `[json, blob...]`, the JSON decoded into the script's typed reply plus
//! its deliveries (`out`), transition counts (`ev`) and latencies (`lat`).

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{Delivery, Output, StoreError};

pub(super) fn decode_reply<T: DeserializeOwned>(
    script: &'static str,
    json: &[u8],
    mut blobs: Vec<Vec<u8>>,
) -> Result<Output<T>, StoreError> {
    let bad = |e: serde_json::Error| StoreError::Reply {
        script,
        message: format!("{e}: {}", String::from_utf8_lossy(json)),
    };
    let mut value: serde_json::Value = serde_json::from_slice(json).map_err(bad)?;
    // Move the deliveries and events out (message bodies can be large: no copies).
    let take = |v: &mut serde_json::Value, k: &str| v.as_object_mut().and_then(|m| m.remove(k));
    let mut out: Vec<Delivery> = take(&mut value, "out")
        .map(lua_list)
        .transpose()
        .map_err(bad)?
        .unwrap_or_default();
    // Message bodies travel as their own bulk strings (no JSON escaping in Lua).
    for d in &mut out {
        if let Some(i) = d.m.take() {
            let body = blobs.get_mut(i.wrapping_sub(1)).map(std::mem::take);
            d.msg = body
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| StoreError::Reply {
                    script,
                    message: format!("delivery body {i} missing or not UTF-8"),
                })?;
        }
    }
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
    #[serde(default, deserialize_with = "lua_nums")]
    pub dispatch: Vec<f64>,
    #[serde(default, deserialize_with = "lua_nums")]
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
            .filter_map(|(k, v)| num_value::<u64>(&v).map(|n| (k, n)))
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

/// A number a script sent as a JSON number or as a decimal string (ctx.lua `finish` sends
/// the deliveries' numbers as strings: cheaper to format in Lua).
fn num_value<T: std::str::FromStr + DeserializeOwned>(v: &serde_json::Value) -> Option<T> {
    match v {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(_) => serde_json::from_value(v.clone()).ok(),
        _ => None,
    }
}

/// Serde helper: an optional number, as a JSON number or a decimal string.
pub(super) fn lua_num<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr + DeserializeOwned,
{
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        v => num_value(&v)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("expected a number, got {v}"))),
    }
}

/// Serde helper: a list of numbers (JSON numbers or decimal strings; `{}` when empty).
fn lua_nums<'de, D>(d: D) -> Result<Vec<f64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let items: Vec<serde_json::Value> = lua_list(d)?;
    items
        .iter()
        .map(|v| {
            num_value(v)
                .ok_or_else(|| serde::de::Error::custom(format!("expected a number, got {v}")))
        })
        .collect()
}
