//! The wire types of PROTOCOL.md: what lingua nodes and web clients send and expect.
//!
//! Decoding is a tolerant reader: unknown fields are ignored, optional fields may be absent
//! or `null`, unknown service types are kept as strings. A frame that cannot be decoded
//! becomes a [`DecodeError`] that the gateway answers with `error`/`INVALID_MESSAGE`;
//! nothing else happens for it.

pub mod base64;
pub mod bounds;
pub mod node;
pub mod result;
pub mod session;
pub mod strict;

use serde::{Deserialize, Deserializer, Serialize};

/// Error codes of PROTOCOL.md "Error codes" that the Rust side sends (the scripts send
/// their own: NO_AVAILABLE_NODE, JOB_TIMEOUT, NODE_UNAVAILABLE, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidMessage,
    InternalError,
    InvalidSession,
    SessionClosed,
    NodeIdConflict,
    InvalidCapabilitySchema,
    UnsupportedFeature,
    SchedulerDependencyDown,
    /// A credential is missing, invalid, or does not allow what the frame asks.
    Unauthorized,
    /// A frame over the connection's rate limit, dropped unprocessed.
    RateLimited,
}

/// `{"type":"error","code":...,"message":...}`, sent to nodes and sessions alike.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorMessage {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorMessage {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            kind: "error",
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"INTERNAL_ERROR","message":"encode failed"}"#.into()
        })
    }
}

/// Why a text frame was refused before it reached any handler.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not a JSON object with a string \"type\": {0}")]
    NotAMessage(String),
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("malformed {kind}: {reason}")]
    Malformed { kind: String, reason: String },
}

/// Just the `type` of a frame, read first so unknown types and bad fields get distinct errors.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
}

/// The messages one kind of peer sends, decoded by their `type`; a message may borrow
/// from the frame's text `'a` (an utterance's audio does).
pub trait Inbound<'a>: Sized {
    /// Every `type` this peer may send.
    const TYPES: &'static [&'static str];
    /// Decode `text`, whose `type` is `kind` (one of [`Inbound::TYPES`]), strictly.
    fn from_kind(kind: &str, text: &'a str) -> Result<Self, strict::FieldError>;
}

/// Decode a frame, telling "not a message", "unknown type" and "bad field" apart. Each
/// type's struct is read directly (not through a serde-tagged enum, which buffers the frame
/// and loses both the strictness and the field path).
///
/// The `type` is first looked up by `top_level_type`, which only scans (an utterance is
/// ~11 KB of base64 that the envelope's decoding read once more before the typed decoding
/// read it again); the frame is then decoded once, as that type. A frame that is not
/// decoded that way (no plain `type` found, or the typed decoding refuses it) goes the
/// long way, envelope first, which tells the errors apart as before.
pub fn decode<'a, T: Inbound<'a>>(text: &'a str) -> Result<T, DecodeError> {
    if let Some(kind) = top_level_type(text).and_then(|k| T::TYPES.iter().find(|t| **t == k))
        && let Ok(m) = T::from_kind(kind, text)
    {
        return Ok(m);
    }
    envelope_first(text)
}

/// The long way: the envelope, then the type's struct (what `decode` always did, and its
/// reference in the tests).
fn envelope_first<'a, T: Inbound<'a>>(text: &'a str) -> Result<T, DecodeError> {
    let env: Envelope =
        strict::from_str(text).map_err(|e| DecodeError::NotAMessage(e.to_string()))?;
    if !T::TYPES.contains(&env.kind.as_str()) {
        return Err(DecodeError::UnknownType(env.kind));
    }
    T::from_kind(&env.kind, text).map_err(|e| DecodeError::Malformed {
        kind: env.kind,
        reason: e.to_string(),
    })
}

/// The value of the one top-level `"type"` member of a JSON object, found without decoding
/// anything; `None` when there is no such member, more than one, an escape in it or in any
/// key, or the text is not an object. Only a hint: what it finds is what decoding the
/// envelope finds for any text the typed decoding then accepts (that decoding checks the
/// whole frame is JSON), and a `None` sends the frame the long way.
fn top_level_type(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return None;
    }
    let mut found = None;
    loop {
        let key = plain_string(b, i)?;
        i = skip_ws(b, i + key.len() + 2);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        if key == b"type" {
            if found.is_some() {
                return None;
            }
            let v = plain_string(b, i)?;
            found = Some(text.get(i + 1..i + 1 + v.len())?);
            i += v.len() + 2;
        } else {
            i = skip_value(b, i)?;
        }
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return found,
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The contents of the string starting at `b[i]` (a `"`) if it has no escape.
fn plain_string(b: &[u8], i: usize) -> Option<&[u8]> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let rest = b.get(i + 1..)?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"').then(|| &rest[..end])
}

/// The index after the string starting at `b[i]` (a `"`), escapes included.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b[i] == b'"' {
            return Some(i + 1);
        }
        i += 2; // the backslash and the character it escapes
    }
}

/// The index after the JSON value starting at `b[i]` (assumed well-formed: the typed
/// decoding checks that).
fn skip_value(b: &[u8], mut i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match *b.get(i)? {
                    b'"' => {
                        i = skip_string(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            while !matches!(
                b.get(i),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                i += 1;
            }
            Some(i)
        }
    }
}

/// Serde helper: `null` (or absence, with `#[serde(default)]`) becomes `T::default()`.
pub fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Current time in milliseconds since the epoch (the protocol's timestamp unit).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A language code as the protocol uses them (`zh`, `en`, `pt-BR`): 1–16 of `[A-Za-z0-9_-]`.
pub fn valid_lang(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 16
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An identifier that becomes part of a Redis key (node id, tenant id): 1–64 of `[A-Za-z0-9_.-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The utterance index a terminal message names: its first `"utterance_index":` member.
/// Scripts write it before anything a node sent (the header of a `translation_result`), and
/// a quote inside a JSON string is escaped, so the first match is the message's own.
pub fn index_of(text: &str) -> Option<u64> {
    const KEY: &str = "\"utterance_index\":";
    let at = text.find(KEY)? + KEY.len();
    let rest = text.get(at..)?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}

/// The terminal message of a logged result whose body (its TTS audio, kept apart from the
/// log) is gone: an `error` naming index `idx` of session `sid`, sent in its place so the
/// index still gets one terminal message (deliver.lua's `body_gone` writes the same).
pub fn expired_result(sid: &str, idx: u64) -> String {
    serde_json::json!({"type": "error", "code": "INTERNAL_ERROR", "session_id": sid,
        "message": "the result of this utterance expired before it could be delivered",
        "utterance_index": idx, "details": {"utterance_index": idx}})
    .to_string()
}

/// `v` as a span or log field: itself when it is a valid id ([`valid_id`]), else a
/// placeholder. Spans are made before a frame's fields are validated, and a peer's 4 MiB
/// `trace_id` must not become a span attribute (exported, kept in the batch queue) or the
/// context of every log line written inside it.
/// (An empty `v` stays empty: no id.)
pub fn field_id(v: &str) -> &str {
    if v.is_empty() || valid_id(v) {
        v
    } else {
        "<invalid>"
    }
}

#[cfg(test)]
mod tests;
