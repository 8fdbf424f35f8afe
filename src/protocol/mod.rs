//! The wire types of PROTOCOL.md: what lingua nodes and web clients send and expect.
//!
//! Decoding is a tolerant reader: unknown fields are ignored, optional fields may be absent
//! or `null`, unknown service types are kept as strings. A frame that cannot be decoded
//! becomes a [`DecodeError`] that the gateway answers with `error`/`INVALID_MESSAGE`;
//! nothing else happens for it.

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

/// The messages one kind of peer sends, decoded by their `type`.
pub trait Inbound: Sized {
    /// Every `type` this peer may send.
    const TYPES: &'static [&'static str];
    /// Decode `text`, whose `type` is `kind` (one of [`Inbound::TYPES`]), strictly.
    fn from_kind(kind: &str, text: &str) -> Result<Self, strict::FieldError>;
}

/// Decode a frame, telling "not a message", "unknown type" and "bad field" apart. Each
/// type's struct is read directly (not through a serde-tagged enum, which buffers the frame
/// and loses both the strictness and the field path).
pub fn decode<T: Inbound>(text: &str) -> Result<T, DecodeError> {
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
