//! Node ↔ scheduler messages (PROTOCOL.md "Node ↔ scheduler").

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::strict::{FieldError, from_str};
use super::{Inbound, null_default};

/// Every message type a node may send; anything else is `INVALID_MESSAGE`.
pub const NODE_TYPES: &[&str] = &[
    "node_register",
    "node_heartbeat",
    "node_error",
    "job_ack",
    "job_started",
    "job_result",
    "asr_partial",
];

#[derive(Debug)]
pub enum NodeInbound {
    NodeRegister(Box<NodeRegister>),
    NodeHeartbeat(Box<NodeHeartbeat>),
    NodeError(NodeError),
    JobAck(JobAck),
    JobStarted(JobAck),
    JobResult(Box<JobResult>),
    AsrPartial(AsrPartial),
}

impl Inbound<'_> for NodeInbound {
    const TYPES: &'static [&'static str] = NODE_TYPES;

    fn from_kind(kind: &str, text: &str) -> Result<Self, FieldError> {
        Ok(match kind {
            "node_register" => Self::NodeRegister(from_str(text)?),
            "node_heartbeat" => Self::NodeHeartbeat(from_str(text)?),
            "node_error" => Self::NodeError(from_str(text)?),
            "job_ack" => Self::JobAck(from_str(text)?),
            "job_started" => Self::JobStarted(from_str(text)?),
            "job_result" => Self::JobResult(Box::new(super::result::decode(text)?)),
            "asr_partial" => Self::AsrPartial(from_str(text)?),
            other => {
                return Err(FieldError {
                    path: "type".into(),
                    reason: format!("unknown message type {other:?}"),
                });
            }
        })
    }
}

impl NodeInbound {
    /// The message type, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeInbound::NodeRegister(_) => "node_register",
            NodeInbound::NodeHeartbeat(_) => "node_heartbeat",
            NodeInbound::NodeError(_) => "node_error",
            NodeInbound::JobAck(_) => "job_ack",
            NodeInbound::JobStarted(_) => "job_started",
            NodeInbound::JobResult(_) => "job_result",
            NodeInbound::AsrPartial(_) => "asr_partial",
        }
    }
}

/// `job_ack` and `job_started` (optional; lingua nodes send neither).
#[derive(Debug, Clone, Deserialize)]
pub struct JobAck {
    pub job_id: String,
    pub attempt_id: u32,
    #[serde(default)]
    pub node_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JobError {
    #[serde(default, deserialize_with = "null_default")]
    pub code: String,
    #[serde(default, deserialize_with = "null_default")]
    pub message: String,
    #[serde(default)]
    pub details: Option<Value>,
}

/// `job_result`: required fields are typed; the other members make the session's
/// `translation_result` (`body`, see [`super::result`]).
#[derive(Debug, Clone)]
pub struct JobResult {
    pub job_id: String,
    pub attempt_id: u32,
    pub node_id: Option<String>,
    pub session_id: Option<String>,
    pub utterance_index: Option<u64>,
    pub success: bool,
    pub trace_id: Option<String>,
    pub error: Option<JobError>,
    /// What a success passes on (empty for a failure).
    pub body: ResultBody,
}

/// A successful `job_result` as the `job_result` script takes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultBody {
    /// The session's `translation_result`: every member the node sent beyond the routing
    /// ones (texts, tts, extra, timings, quality), `type` set, `text_asr`,
    /// `text_translated`, `tts_audio` and `tts_format` defaulted, `service_timings` from
    /// `extra` when absent. The script adds session_id, utterance_index, job_id, trace_id,
    /// the utterance group and the network timings (a node's are dropped).
    pub message: String,
    /// `text_asr`, trimmed ("" when absent or not a string).
    pub text_asr: String,
    pub text_translated: String,
    /// `node_completed_at_ms` / `processing_time_ms`: integer or float, never negative.
    pub node_completed_at_ms: Option<u64>,
    pub processing_time_ms: Option<u64>,
}

/// `asr_partial` from a node (forwarded best-effort).
#[derive(Debug, Clone, Deserialize)]
pub struct AsrPartial {
    pub job_id: String,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub text: String,
    #[serde(default, deserialize_with = "null_default")]
    pub is_final: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct CapabilityByType {
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_default")]
    pub ready: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct LanguageCapabilities {
    #[serde(default, deserialize_with = "null_default")]
    pub asr_languages: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub semantic_languages: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub tts_languages: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct LangPair {
    pub src: String,
    pub tgt: String,
}

/// `node_register`. Fields Switchyard does not use are kept as raw JSON for operators.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeRegister {
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub version: String,
    #[serde(default, deserialize_with = "null_default")]
    pub platform: String,
    #[serde(default)]
    pub hardware: Option<Value>,
    #[serde(default, deserialize_with = "null_default")]
    pub installed_models: Vec<Value>,
    #[serde(default, deserialize_with = "null_default")]
    pub installed_services: Vec<Value>,
    #[serde(default, deserialize_with = "null_default")]
    pub capability_by_type: Vec<CapabilityByType>,
    #[serde(default)]
    pub accept_public_jobs: Option<bool>,
    #[serde(default)]
    pub capability_schema_version: Option<String>,
    #[serde(default)]
    pub language_capabilities: Option<LanguageCapabilities>,
    /// Switchyard extension: capacity (default from config).
    #[serde(default)]
    pub max_concurrent_jobs: Option<u32>,
    /// Switchyard extension: the node serves only this tenant.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Switchyard extension: explicit pairs, overriding the product rule.
    #[serde(default)]
    pub supported_language_pairs: Option<Vec<LangPair>>,
    /// Switchyard extension: the node sends `job_ack`.
    #[serde(default)]
    pub supports_job_ack: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResourceUsage {
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    #[serde(default)]
    pub mem_percent: Option<f64>,
    #[serde(default)]
    pub gpu_percent: Option<f64>,
    #[serde(default)]
    pub gpu_mem_percent: Option<f64>,
    #[serde(default)]
    pub running_jobs: Option<u32>,
    #[serde(default)]
    pub gpu_queue_length: Option<u32>,
}

/// `node_heartbeat`: liveness, load, and (optionally) changed capabilities.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeHeartbeat {
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<u64>,
    #[serde(default, deserialize_with = "null_default")]
    pub resource_usage: ResourceUsage,
    #[serde(default)]
    pub installed_services: Option<Vec<Value>>,
    #[serde(default)]
    pub capability_by_type: Option<Vec<CapabilityByType>>,
    #[serde(default)]
    pub installed_models: Option<Vec<Value>>,
    #[serde(default)]
    pub language_capabilities: Option<LanguageCapabilities>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeError {
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub code: String,
    #[serde(default, deserialize_with = "null_default")]
    pub message: String,
    #[serde(default)]
    pub details: Option<Value>,
}

/// `node_register_ack`.
#[derive(Debug, Serialize)]
pub struct NodeRegisterAck<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub node_id: &'a str,
    pub message: String,
    pub status: &'a str,
}

/// `node_control` (e.g. `{"command":"drain"}` before a graceful shutdown).
#[derive(Debug, Serialize)]
pub struct NodeControl<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub command: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}
