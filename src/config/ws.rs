//! `[ws]` — WebSocket framing and per-connection buffers.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Largest accepted frame; a larger one closes the connection with code 1009.
    pub max_frame_bytes: usize,
    /// Read and write buffer of each socket. Small, because they are allocated per
    /// connection (the library default of 128 KiB each costs 5 GiB for 20k sockets);
    /// larger frames still pass, up to `max_frame_bytes`.
    pub buffer_bytes: usize,
    /// Outbound messages buffered per connection before the connection counts as stuck.
    pub send_queue: usize,
    /// A connection that has not registered / initialised within this time is closed.
    pub hello_timeout_ms: u64,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 4 * 1024 * 1024,
            buffer_bytes: 8 * 1024,
            send_queue: 1024,
            hello_timeout_ms: 30_000,
        }
    }
}
