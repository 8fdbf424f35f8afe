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
    /// The instance pings every connection this often (0: never), so a socket whose peer
    /// vanished without a close (network loss) is found...
    pub ping_interval_ms: u64,
    /// ...and closed once nothing (no frame, no pong) came for this long (0: never). A
    /// node's id is then free for its reconnect with a fleet credential.
    pub idle_timeout_ms: u64,
    /// A write to the socket (one message, the flush after a burst, a ping, a close) that
    /// has not completed after this long ends the connection (0: never): a peer that
    /// stopped reading (zero TCP window) holds neither a socket nor a writer for ever.
    pub write_timeout_ms: u64,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 4 * 1024 * 1024,
            buffer_bytes: 8 * 1024,
            send_queue: 1024,
            hello_timeout_ms: 30_000,
            ping_interval_ms: 5_000,
            idle_timeout_ms: 15_000,
            write_timeout_ms: 10_000,
        }
    }
}

impl WsConfig {
    /// The first bad field and why, if any.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.max_frame_bytes < 1024 {
            return Err(("ws.max_frame_bytes", "must be at least 1024"));
        }
        if self.buffer_bytes < 1024 {
            return Err(("ws.buffer_bytes", "must be at least 1024"));
        }
        if self.hello_timeout_ms == 0 {
            return Err((
                "ws.hello_timeout_ms",
                "must be positive (0 would refuse every peer whose first frame is not there yet)",
            ));
        }
        if self.idle_timeout_ms > 0 && self.ping_interval_ms == 0 {
            return Err((
                "ws.idle_timeout_ms",
                "needs ws.ping_interval_ms (the idle clock is read at each ping): set both, or 0 for both",
            ));
        }
        if self.ping_interval_ms > 0
            && self.idle_timeout_ms > 0
            && self.idle_timeout_ms <= self.ping_interval_ms
        {
            return Err((
                "ws.idle_timeout_ms",
                "must exceed ws.ping_interval_ms (a pong needs a ping first)",
            ));
        }
        if self.send_queue == 0 {
            return Err(("ws.send_queue", "must be at least 1"));
        }
        Ok(())
    }
}
