//! Script replies: `[msgpack, blob...]`, the MessagePack map `{r, out, ev, lat}` decoded
//! into the script's typed reply (`r`) plus its deliveries (`out`), transition counts (`ev`)
//! and latencies (`lat`) (lua/includes/ctx.lua `finish`).
//!
//! Decoded straight from the reply bytes into typed structs in one pass (no value tree: two
//! replies per job on the hot path, and a tree allocates every key and string). MessagePack,
//! not JSON: Redis' Lua packs it in C without escaping, and reading it back scans no string
//! for escapes (issue 14, round 12: the JSON reply was 12–16 % of the instance's instructions
//! per job).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::StoreError;

/// A message a script produced for a connection (node or session).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Delivery {
    /// `node` or `session`.
    pub k: String,
    pub id: String,
    /// Instance that owns the target's connection.
    pub owner: String,
    /// The target's connection token; only that socket may receive it.
    pub conn: Option<String>,
    /// The message JSON (for `job_assign` without its `audio`), taken from the reply's
    /// blob `m` by `decode_reply`.
    #[serde(default)]
    pub msg: String,
    /// 1-based index into the reply's blobs: the message JSON (a separate bulk string, so
    /// it is neither escaped by the script nor unescaped here).
    #[serde(default, deserialize_with = "lua_num")]
    pub m: Option<usize>,
    /// 1-based index into the reply's blobs: the job audio to add as base64 `audio`.
    #[serde(default, deserialize_with = "lua_num")]
    pub blob: Option<usize>,
    /// Set (`1`) on a `job_assign` whose audio the caller sent in this call (`submit`): the
    /// reply carries no blob for it, the caller adds its own copy.
    #[serde(default, deserialize_with = "lua_num")]
    pub own: Option<u8>,
    /// 1-based index into the reply's blobs: the body to append to the message (a large
    /// translation_result logged in two parts, docs/jobs.md "Result log").
    #[serde(default, deserialize_with = "lua_num")]
    pub t: Option<usize>,
    /// Set (`1`) on a terminal message whose body the caller staged in this call
    /// (`job_result`): the reply carries no blob for it, the caller appends its own copy.
    #[serde(default, deserialize_with = "lua_num")]
    pub town: Option<u8>,
    /// `k = "ui"`: the `ui_event`s (status ok) to write to session `id`, as `E1,E2`; the
    /// instance builds them from `job`, `tr` (trace id), `ix` (utterance index) and `el`
    /// (elapsed ms) instead of the script (lua/includes/deliver.lua `ui_events_ok`).
    pub ev: Option<String>,
    pub tr: Option<String>,
    #[serde(default, deserialize_with = "lua_num")]
    pub ix: Option<u64>,
    #[serde(default, deserialize_with = "lua_num")]
    pub el: Option<u64>,
    /// Order of a session's terminal messages (the session's out_seq).
    #[serde(default, deserialize_with = "lua_num")]
    pub seq: Option<u64>,
    /// W3C traceparent the delivery span continues.
    pub tp: Option<String>,
    /// The job the message concerns (job_assign), for tracing.
    pub job: Option<String>,
}

/// A script's typed reply plus what it asks to deliver.
#[derive(Debug, Default)]
pub struct Output<T> {
    pub reply: T,
    pub out: Vec<Delivery>,
    pub blobs: Vec<Vec<u8>>,
    /// Transitions and latencies, already recorded in the metrics by `Store::run`.
    pub events: Events,
}

impl<T> Output<T> {
    /// The script's own reply, and what it asks to deliver on its own.
    pub fn split(self) -> (T, Output<()>) {
        let Output {
            reply,
            out,
            blobs,
            events,
        } = self;
        (
            reply,
            Output {
                reply: (),
                out,
                blobs,
                events,
            },
        )
    }
}

/// A reply in one pass: the script's own reply `r` into `T`, `out`, `ev` and `lat`
/// directly (no key buffered).
#[derive(Deserialize)]
struct Reply<T> {
    r: T,
    #[serde(default, deserialize_with = "lua_list")]
    out: Vec<Delivery>,
    #[serde(default, deserialize_with = "lua_map")]
    ev: BTreeMap<String, u64>,
    #[serde(default)]
    lat: Option<Latencies>,
}

pub(super) fn decode_reply<T: DeserializeOwned>(
    script: &'static str,
    packed: &[u8],
    mut blobs: Vec<Vec<u8>>,
) -> Result<Output<T>, StoreError> {
    let bad = |e: rmp_serde::decode::Error| StoreError::Reply {
        script,
        message: format!("{e}: {} bytes, {}", packed.len(), hex_head(packed)),
    };
    let Reply {
        r: reply,
        mut out,
        ev,
        lat,
    } = rmp_serde::from_slice::<Reply<T>>(packed).map_err(bad)?;
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
    Ok(Output {
        reply,
        out,
        blobs,
        events: Events {
            ev,
            lat: lat.unwrap_or_default(),
        },
    })
}

/// The first 64 bytes of a reply that did not decode, in hex (MessagePack is binary: as
/// text it would garble the log line).
fn hex_head(packed: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(129);
    for b in packed.iter().take(64) {
        let _ = write!(out, "{b:02x}");
    }
    if packed.len() > 64 {
        out.push('…');
    }
    out
}

/// What a script call did, for metrics: transition counts and latencies (ms, Redis clock).
#[derive(Debug, Default)]
pub struct Events {
    /// `submitted`, `dispatched`, `queued`, `failover`, `finished`, `acked`, `started`,
    /// `queue_timeout`, `missing_result`, `failed:<CODE>`, `cut_skipped:empty|too_short`,
    /// `body_missing` (a delivery, not a transition)
    /// → count.
    pub ev: BTreeMap<String, u64>,
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

/// Serde helper: a map of counts, which arrives as an empty list when it is empty (cmsgpack
/// cannot tell an empty map from an empty list); entries that are not counts (non-negative
/// integers or decimal strings) are skipped, and anything but a map holds none. Read in one pass: no buffered `Content`, no
/// value tree per entry (two replies per job). A key given twice keeps its last
/// value, as a map does.
fn lua_map<'de, D>(d: D) -> Result<BTreeMap<String, u64>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Counts;
    impl<'de> Visitor<'de> for Counts {
        type Value = BTreeMap<String, u64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of counts")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = m.next_key::<String>()? {
                match m.next_value::<Count>()?.0 {
                    Some(n) => out.insert(k, n),
                    None => out.remove(&k),
                };
            }
            Ok(out)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
            while s.next_element::<IgnoredAny>()?.is_some() {}
            Ok(BTreeMap::new())
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
    }
    d.deserialize_any(Counts)
}

/// One value of [`lua_map`]: a count (`serde_json::Value::as_u64`, or a decimal string), or
/// `None` for anything else (skipped whole).
struct Count(Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_u64<E>(self, n: u64) -> Result<Count, E> {
                Ok(Count(Some(n)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Count, E> {
                Ok(Count(u64::try_from(n).ok()))
            }
            fn visit_str<E>(self, s: &str) -> Result<Count, E> {
                Ok(Count(s.parse().ok()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_unit<E>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Count, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Count(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Count, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Count(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Serde helper for script replies: a list field takes an empty map, or `nil`, as empty
/// (cmsgpack packs an empty Lua table as a list, but nothing else should fail on it).
pub fn lua_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    struct V<T>(PhantomData<T>);
    impl<'de, T: DeserializeOwned> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(s.size_hint().unwrap_or(0).min(64));
            while let Some(item) = s.next_element::<T>()? {
                out.push(item);
            }
            Ok(out)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            match m.next_key::<IgnoredAny>()? {
                None => Ok(Vec::new()),
                Some(_) => Err(de::Error::custom("expected a list, got an object")),
            }
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(V(PhantomData))
}

/// A number a script sent as a number or as a decimal string (a script may pass on a
/// record's field as read, e.g. a delivery's `ix`); `None` for `nil`.
struct Num<T>(Option<T>);

impl<'de, T: std::str::FromStr + DeserializeOwned> Deserialize<'de> for Num<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::IntoDeserializer;
        struct V<T>(PhantomData<T>);
        impl<'de, T: std::str::FromStr + DeserializeOwned> Visitor<'de> for V<T> {
            type Value = Num<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or a decimal string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                s.parse()
                    .map(|n| Num(Some(n)))
                    .map_err(|_| E::custom(format!("expected a number, got {s:?}")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                T::deserialize(n.into_deserializer()).map(|n| Num(Some(n)))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                T::deserialize(n.into_deserializer()).map(|n| Num(Some(n)))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                T::deserialize(n.into_deserializer()).map(|n| Num(Some(n)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Num(None))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Num(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Serde helper: an optional number, as a number or a decimal string.
pub(super) fn lua_num<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr + DeserializeOwned,
{
    Num::deserialize(d).map(|n| n.0)
}

/// Serde helper: a list of numbers (numbers or decimal strings; possibly a map when empty).
fn lua_nums<'de, D>(d: D) -> Result<Vec<f64>, D::Error>
where
    D: Deserializer<'de>,
{
    let items: Vec<Num<f64>> = lua_list(d)?;
    items
        .into_iter()
        .map(|n| {
            n.0.ok_or_else(|| de::Error::custom("expected a number, got null"))
        })
        .collect()
}

#[cfg(test)]
mod tests;

/// A reply as `finish` packs it, from its JSON text (unit tests).
#[cfg(test)]
pub(super) fn packed(json: &str) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_str(json).expect("JSON");
    rmp_serde::to_vec(&v).expect("packs")
}
