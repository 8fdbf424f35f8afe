//! `job_result` → the session's `translation_result`, in one pass over the node's frame.
//!
//! The frame's members are read once as raw JSON (`serde_json::value::RawValue`, borrowed
//! from the frame): the routing fields are typed, every other member is passed on. A string
//! member without escapes (the TTS audio, the texts) is copied into the message as it came;
//! any other member (numbers, objects, escaped strings) goes through `serde_json::Value` and
//! is written as before, so the message is byte for byte what decoding the whole frame into
//! a `Value` map wrote (keys sorted, compact). A frame this reader refuses is decoded again
//! by serde's derive (`slow::JobResult`), which names the error exactly as it always did.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;
use serde_json::value::RawValue;

use super::node::{JobError, JobResult, ResultBody};
use super::strict::{self, FieldError};

/// The whole frame decoded by serde's derive: the reference for what is accepted and for
/// the error a refused frame gets (with its field path; the struct's name is in some of
/// those messages, hence its own module).
mod slow {
    use serde::Deserialize;
    use serde_json::Value;

    use super::JobError;

    #[derive(Deserialize)]
    pub(super) struct JobResult {
        pub job_id: String,
        pub attempt_id: u32,
        #[serde(default)]
        pub node_id: Option<String>,
        #[serde(default)]
        pub session_id: Option<String>,
        #[serde(default)]
        pub utterance_index: Option<u64>,
        pub success: bool,
        #[serde(default)]
        pub trace_id: Option<String>,
        #[serde(default)]
        pub error: Option<JobError>,
        #[serde(flatten)]
        pub rest: serde_json::Map<String, Value>,
    }
}

/// Decode a `job_result` frame.
pub fn decode(text: &str) -> Result<JobResult, FieldError> {
    if let Some(r) = fast(text) {
        return Ok(r);
    }
    let s: slow::JobResult = strict::from_str(text)?;
    let rest: BTreeMap<Cow<str>, Member> = s
        .rest
        .into_iter()
        .map(|(k, v)| (Cow::Owned(k), Member::Value(v)))
        .collect();
    let body = if s.success { body(rest) } else { None };
    Ok(JobResult {
        job_id: s.job_id,
        attempt_id: s.attempt_id,
        node_id: s.node_id,
        session_id: s.session_id,
        utterance_index: s.utterance_index,
        success: s.success,
        trace_id: s.trace_id,
        error: s.error,
        body: body.unwrap_or_default(),
    })
}

/// A member passed on: a string literal without escapes (quotes included), as it came, or
/// any other value.
enum Member<'a> {
    Plain(&'a str),
    Value(Value),
}

impl Member<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Member::Plain(s) => s.get(1..s.len() - 1),
            Member::Value(v) => v.as_str(),
        }
    }

    fn as_value(&self) -> Option<&Value> {
        match self {
            Member::Plain(_) => None,
            Member::Value(v) => Some(v),
        }
    }
}

/// The frame's members in order, keys unescaped, values as raw JSON.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(16);
                while let Some(Key(k)) = m.next_key()? {
                    out.push((k, m.next_value()?));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A key, borrowed from the frame unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// One typed field: `None` when it does not decode (the slow path then names the error).
fn typed<T: DeserializeOwned>(raw: &RawValue) -> Option<T> {
    serde_json::from_str(raw.get()).ok()
}

/// Set a field once: a second occurrence is an error of the derive (`duplicate field`).
fn once<T>(slot: &mut Option<T>, v: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v?);
    Some(())
}

/// The one-pass reader; `None` for anything it does not accept.
fn fast(text: &str) -> Option<JobResult> {
    let mut de = serde_json::Deserializer::from_str(text);
    let Members(members) = Members::deserialize(&mut de).ok()?;
    de.end().ok()?;
    let (mut job_id, mut attempt_id, mut success) = (None, None, None);
    let (mut node_id, mut session_id, mut utterance_index) = (None, None, None);
    let (mut trace_id, mut error) = (None, None);
    let mut rest = BTreeMap::new();
    for (k, raw) in members {
        match k.as_ref() {
            "job_id" => once(&mut job_id, typed::<String>(raw))?,
            "attempt_id" => once(&mut attempt_id, typed::<u32>(raw))?,
            "success" => once(&mut success, typed::<bool>(raw))?,
            "node_id" => once(&mut node_id, typed::<Option<String>>(raw))?,
            "session_id" => once(&mut session_id, typed::<Option<String>>(raw))?,
            "utterance_index" => once(&mut utterance_index, typed::<Option<u64>>(raw))?,
            "trace_id" => once(&mut trace_id, typed::<Option<String>>(raw))?,
            "error" => once(
                &mut error,
                strict::from_str::<Option<JobError>>(raw.get()).ok(),
            )?,
            _ => {
                let s = raw.get();
                let m = if s.starts_with('"') && !s.contains('\\') {
                    Member::Plain(s)
                } else {
                    Member::Value(typed::<Value>(raw)?)
                };
                // a repeated key: the last one counts (as in a map)
                rest.insert(k, m);
            }
        }
    }
    let success = success?;
    let body = if success {
        body(rest)?
    } else {
        ResultBody::default()
    };
    Some(JobResult {
        job_id: job_id?,
        attempt_id: attempt_id?,
        node_id: node_id.flatten(),
        session_id: session_id.flatten(),
        utterance_index: utterance_index.flatten(),
        success,
        trace_id: trace_id.flatten(),
        error: error.flatten(),
        body,
    })
}

/// Members a node may send that Switchyard decides itself (the script adds session_id,
/// utterance_index, job_id and trace_id from the job record, and the utterance group and
/// network timings); `type` becomes `translation_result`.
const DROPPED: [&str; 10] = [
    "type",
    "session_id",
    "utterance_index",
    "job_id",
    "trace_id",
    "node_id",
    "group_id",
    "part_index",
    "network_timings",
    "scheduler_sent_at_ms",
];

/// The session's `translation_result` from a successful `job_result`'s other members, and
/// the fields the script reads itself. `None` only if the message cannot be written.
fn body(mut m: BTreeMap<Cow<str>, Member>) -> Option<ResultBody> {
    let text = |m: &BTreeMap<Cow<str>, Member>, k: &str| {
        let t = m.get(k).and_then(Member::as_str).unwrap_or_default();
        t.trim().to_string()
    };
    let ms = |m: &BTreeMap<Cow<str>, Member>, k: &str| {
        m.get(k).and_then(Member::as_value).and_then(ms_value)
    };
    let (text_asr, text_translated) = (text(&m, "text_asr"), text(&m, "text_translated"));
    let (node_completed_at_ms, processing_time_ms) =
        (ms(&m, "node_completed_at_ms"), ms(&m, "processing_time_ms"));
    for key in DROPPED {
        m.remove(key);
    }
    m.insert(
        Cow::Borrowed("type"),
        Member::Plain("\"translation_result\""),
    );
    // absent or null (a node may send either): the client always gets the four, as text
    for (key, default) in [
        ("text_asr", "\"\""),
        ("text_translated", "\"\""),
        ("tts_audio", "\"\""),
        ("tts_format", "\"opus\""),
    ] {
        if m.get(key)
            .is_none_or(|v| matches!(v, Member::Value(Value::Null)))
        {
            m.insert(Cow::Borrowed(key), Member::Plain(default));
        }
    }
    if let Some(t) = m
        .get("extra")
        .and_then(Member::as_value)
        .and_then(|e| e.get("service_timings"))
        .cloned()
    {
        m.entry(Cow::Borrowed("service_timings"))
            .or_insert(Member::Value(t));
    }
    let size: usize = m
        .iter()
        .map(|(k, v)| {
            k.len()
                + 4
                + match v {
                    Member::Plain(s) => s.len(),
                    Member::Value(_) => 32,
                }
        })
        .sum();
    let mut out = Vec::with_capacity(size + 2);
    out.push(b'{');
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, k.as_ref()).ok()?;
        out.push(b':');
        match v {
            Member::Plain(s) => out.extend_from_slice(s.as_bytes()),
            Member::Value(v) => serde_json::to_writer(&mut out, v).ok()?,
        }
    }
    out.push(b'}');
    Some(ResultBody {
        message: String::from_utf8(out).ok()?,
        text_asr,
        text_translated,
        node_completed_at_ms,
        processing_time_ms,
    })
}

/// A millisecond figure a node sent (integer or float, never negative). Above 2^53 (no
/// clock or duration is: year 285,000) it is taken as absent: the script computes with
/// it as a Lua number, exact only up to there, and formats whole ms as `%d`, which a
/// larger value would wrap to a negative timing.
fn ms_value(v: &Value) -> Option<u64> {
    const MAX_EXACT: u64 = 1 << 53;
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        .filter(|ms| *ms <= MAX_EXACT)
}

#[cfg(test)]
mod tests;
