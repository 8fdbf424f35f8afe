//! The label sets of the metric families in [`super::metrics`], and the helpers that make
//! label values (static message labels; peer-chosen codes folded into a bounded set).

use std::borrow::Cow;

use prometheus_client::encoding::EncodeLabelSet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScriptLabels {
    pub cell: String,
    pub script: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScriptName {
    pub cell: String,
    pub script: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Connection kind and detail (message type, outcome, reason); the values are static
/// strings borrowed, so counting a frame or a delivery allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub kind: Cow<'static, str>,
    #[prometheus(flatten)]
    pub detail: Detail,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Detail {
    pub detail: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub cell: String,
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub cell: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CellLabels {
    pub cell: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub cell: String,
    pub task: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub cell: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub cell: String,
    pub pool: String,
}

pub(super) fn msg(kind: &'static str, detail: &'static str) -> MessageLabels {
    MessageLabels {
        kind: Cow::Borrowed(kind),
        detail: Detail {
            detail: Cow::Borrowed(detail),
        },
    }
}

/// A label value from a code a peer chose: the PROTOCOL.md codes as they are, anything
/// else `OTHER`, so a misbehaving node cannot grow the registry without bound.
pub fn known_code(code: &str) -> &str {
    const CODES: &[&str] = &[
        "INVALID_MESSAGE",
        "INTERNAL_ERROR",
        "INVALID_SESSION",
        "SESSION_CLOSED",
        "NODE_UNAVAILABLE",
        "NODE_OVERLOADED",
        "MODEL_NOT_AVAILABLE",
        "MODEL_LOAD_FAILED",
        "UNSUPPORTED_FEATURE",
        "INVALID_PAIRING_CODE",
        "NO_AVAILABLE_NODE",
        "WS_DISCONNECTED",
        "NMT_TIMEOUT",
        "TTS_TIMEOUT",
        "JOB_TIMEOUT",
        "MODEL_VERIFY_FAILED",
        "MODEL_CORRUPTED",
        "NO_GPU_AVAILABLE",
        "NODE_ID_CONFLICT",
        "INVALID_CAPABILITY_SCHEMA",
        "SCHEDULER_DEPENDENCY_DOWN",
        "PROCESSING_ERROR",
        "UNAUTHORIZED",
        "RATE_LIMITED",
    ];
    if CODES.contains(&code) { code } else { "OTHER" }
}
