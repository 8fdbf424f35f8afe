//! `[node]` — Nodes: heartbeat, liveness and capacity.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Interval at which nodes heartbeat (the lingua node uses a fixed 15 s).
    pub heartbeat_interval_ms: u64,
    /// A node without a heartbeat for this long is taken offline. Default: 3 × heartbeat.
    pub liveness_ms: Option<u64>,
    /// A node whose socket dropped (no close frame) keeps its id and in-flight jobs this
    /// long, out of every pool, so a quick reconnect loses nothing; then it goes offline.
    pub disconnect_grace_ms: u64,
    /// How long the record of an offline node is kept for operators before it expires.
    pub offline_retention_ms: u64,
    /// Capacity of a node that does not announce `max_concurrent_jobs`.
    pub default_capacity: u32,
    /// Upper bound accepted for `max_concurrent_jobs`.
    pub max_capacity: u32,
    /// A fleet credential reconnecting a node that a connection still holds waits up to
    /// this long for that connection's cleanup (a dropped socket seen a moment later)
    /// before it is refused with `NODE_ID_CONFLICT`.
    pub takeover_wait_ms: u64,
    /// A connection's capability change (languages, services) within this long of its
    /// previous one waits until it has passed: each change recomputes the node's pools in
    /// Redis. `0`: no pacing.
    pub capability_change_interval_ms: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 15_000,
            liveness_ms: None,
            disconnect_grace_ms: 5_000,
            offline_retention_ms: 300_000,
            default_capacity: 4,
            max_capacity: 256,
            takeover_wait_ms: 1_000,
            capability_change_interval_ms: 5_000,
        }
    }
}
