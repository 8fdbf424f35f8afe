//! `[inbox]` — The per-instance inbox stream (delivery between instances).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboxConfig {
    /// Approximate MAXLEN of each instance's inbox stream.
    pub max_len: u64,
    /// Blocking read timeout of the inbox consumer.
    pub block_ms: u64,
    /// Entries pending (read, not acknowledged) longer than this are claimed again.
    pub claim_idle_ms: u64,
    /// An entry delivered this many times goes to the dead-letter stream.
    pub dead_letter_after: u64,
    /// Approximate MAXLEN of the dead-letter stream.
    pub dead_letter_max: u64,
    /// Entries of a dead instance's inbox re-routed per takeover call.
    pub takeover_batch: u64,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            max_len: 100_000,
            block_ms: 1_000,
            claim_idle_ms: 5_000,
            dead_letter_after: 5,
            dead_letter_max: 10_000,
            takeover_batch: 1_000,
        }
    }
}
