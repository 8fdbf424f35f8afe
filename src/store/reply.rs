//! Script replies: `[json, blob...]`, the JSON decoded into the script's typed reply plus
//! its deliveries (`out`), transition counts (`ev`) and latencies (`lat`).
//!
//! Decoded straight from the reply bytes into typed structs in one pass (no
//! `serde_json::Value` tree: two replies per job on the hot path, and a tree allocates every
//! key and string).

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
    /// blob `m` by [`decode_reply`].
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
    /// Transitions and latencies, already recorded in the metrics by [`Store::run`].
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

/// A reply in one pass: `out`, `ev` and `lat` decoded directly, the rest (a few status
/// fields, buffered by serde's `flatten`) into the script's own reply `T`.
#[derive(Deserialize)]
struct Reply<T> {
    #[serde(flatten)]
    reply: T,
    #[serde(default, deserialize_with = "lua_list")]
    out: Vec<Delivery>,
    #[serde(default, deserialize_with = "lua_map")]
    ev: BTreeMap<String, u64>,
    #[serde(default)]
    lat: Option<Latencies>,
}

pub(super) fn decode_reply<T: DeserializeOwned>(
    script: &'static str,
    json: &[u8],
    mut blobs: Vec<Vec<u8>>,
) -> Result<Output<T>, StoreError> {
    let bad = |e: serde_json::Error| StoreError::Reply {
        script,
        message: format!("{e}: {}", String::from_utf8_lossy(json)),
    };
    let Reply {
        reply,
        mut out,
        ev,
        lat,
    } = serde_json::from_slice::<Reply<T>>(json).map_err(bad)?;
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

/// What a script call did, for metrics: transition counts and latencies (ms, Redis clock).
#[derive(Debug, Default)]
pub struct Events {
    /// `submitted`, `dispatched`, `queued`, `failover`, `finished`, `acked`, `started`,
    /// `queue_timeout`, `missing_result`, `failed:<CODE>`, `cut_skipped:empty|too_short`
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

/// Serde helper: a map of counts that Lua's cjson may have encoded as `[]` or `{}` when
/// empty; entries that are not counts (numbers or decimal strings) are skipped. `ev` holds
/// a handful of entries, so their values may go through `serde_json::Value`.
fn lua_map<'de, D>(d: D) -> Result<BTreeMap<String, u64>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Counts {
        Map(BTreeMap<String, serde_json::Value>),
        Other(IgnoredAny),
    }
    let count = |v: serde_json::Value| v.as_u64().or_else(|| v.as_str()?.parse().ok());
    Ok(match Counts::deserialize(d)? {
        Counts::Map(m) => m
            .into_iter()
            .filter_map(|(k, v)| count(v).map(|n| (k, n)))
            .collect(),
        Counts::Other(_) => BTreeMap::new(),
    })
}

/// Serde helper for script replies: Lua's cjson encodes an empty table as `{}`, so a list
/// field may arrive as an empty object (or `null`).
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

/// A number a script sent as a JSON number or as a decimal string (ctx.lua `finish` sends
/// the deliveries' numbers as strings: cheaper to format in Lua); `None` for `null`.
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

/// Serde helper: an optional number, as a JSON number or a decimal string.
pub(super) fn lua_num<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr + DeserializeOwned,
{
    Num::deserialize(d).map(|n| n.0)
}

/// Serde helper: a list of numbers (JSON numbers or decimal strings; `{}` when empty).
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
mod tests {
    use super::*;
    use crate::store::sessions::SessionReply;

    #[test]
    fn a_tagged_reply_decodes_beside_out_ev_and_lat_in_one_pass() {
        let json = br#"{"out":{},"status":"created","job_id":"j","dispatch":"queued","ev":{"submitted":1,"odd":"x","neg":-1,"list":[1]},"lat":{"dispatch":{},"pool":["p"]}}"#;
        let o = decode_reply::<SessionReply>("t", json, Vec::new()).expect("decodes");
        let created = SessionReply::Created {
            job_id: "j".into(),
            dispatch: "queued".into(),
        };
        assert_eq!(o.reply, created);
        assert!(o.out.is_empty(), "cjson's {{}} is an empty list");
        assert_eq!(
            o.events.ev.len(),
            1,
            "only counts are kept: {:?}",
            o.events.ev
        );
        assert_eq!(o.events.lat.pool, vec!["p".to_string()]);
        let o = decode_reply::<SessionReply>("t", br#"{"status":"too_far"}"#, Vec::new());
        assert_eq!(o.expect("decodes").reply, SessionReply::TooFar);
        let bad = decode_reply::<SessionReply>(
            "t",
            br#"{"status":"ok","out":[{"k":"node"}]}"#,
            Vec::new(),
        );
        assert!(bad.is_err(), "a delivery without its fields is an error");
        let bad =
            decode_reply::<SessionReply>("t", br#"{"status":"ok","out":{"a":1}}"#, Vec::new());
        assert!(bad.is_err(), "a non-empty object is not a list");
    }
}
