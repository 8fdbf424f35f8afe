//! `[sweep]` — The periodic `sweep` script.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepConfig {
    /// Period of the `sweep` script on every instance.
    pub interval_ms: u64,
    /// Most due deadlines one sweep call handles (bounds the script's run time).
    pub batch: u32,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            interval_ms: 200,
            batch: 200,
        }
    }
}
