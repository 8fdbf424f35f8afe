//! `[cell]` — The scheduling cell: key prefix and hash tag of every key.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CellConfig {
    /// Key prefix of this deployment.
    pub prefix: String,
    /// Name of the scheduling cell; all keys share the hash tag `{prefix:name}`.
    pub name: String,
}

impl Default for CellConfig {
    fn default() -> Self {
        Self {
            prefix: "switchyard".into(),
            name: "main".into(),
        }
    }
}
