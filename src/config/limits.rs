//! `[limits]` — Abuse limits of one instance: inbound frame rate per connection, live
//! connections, how long an HTTP connection may take to send its request and may live,
//! and how many console streams may run.
//!
//! Per tenant (connections on this instance) and per token subject (live sessions in the
//! cell) use the credential's claims. Every refusal is counted in
//! `switchyard_limited_total{kind, detail}`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sustained inbound frames per second per session connection (a web client sends an
    /// `audio_chunk` every 20-100 ms and a heartbeat every 30 s; a closed-loop benchmark
    /// session sends ~60 utterances/s on the 2-core bench machine).
    pub session_frames_per_sec: f64,
    /// Frames a quiet session connection may send at once.
    pub session_frame_burst: u32,
    /// Sustained inbound frames per second per node connection (a node streams
    /// `asr_partial` for each of its concurrent jobs).
    pub node_frames_per_sec: f64,
    /// Frames a quiet node connection may send at once.
    pub node_frame_burst: u32,
    /// Frames over the limit (each dropped and answered `RATE_LIMITED`) before the
    /// connection is closed with 1008; forgiven once the peer pauses long enough for the
    /// bucket to fill up again.
    pub rate_limit_strikes: u32,
    /// Live WebSocket connections (nodes + sessions) per instance; further upgrades get
    /// HTTP 503 so the load balancer or client tries another instance. The scale target is
    /// 10k nodes + 10k sessions per instance (~0.5 GiB).
    pub max_connections: usize,
    /// An HTTP connection must send a complete request head within this time (slow-loris
    /// defence), also between requests on a kept-alive connection.
    pub header_read_timeout_ms: u64,
    /// An accepted TCP connection must have sent its first complete request (for a
    /// WebSocket: the upgrade) within this time, or it is closed — a backstop that also
    /// covers connections that never send a byte.
    pub upgrade_timeout_ms: u64,
    /// Connections still speaking HTTP (not upgraded to a WebSocket) per listener; at the
    /// cap a new connection takes the slot of the oldest idle one (closed), and only when
    /// every slot has a request in flight does the listener wait (new connections wait in
    /// the listen backlog). Upgraded connections count against `max_connections` instead.
    pub max_http_connections: usize,
    /// A plain HTTP connection is closed after this long (the request in progress
    /// finishes first), so kept-alive requests cannot hold it for ever.
    pub http_connection_lifetime_ms: u64,
    /// A plain HTTP connection whose write has waited this long for the peer to read is
    /// closed: a client that stops reading a response (a console stream, a large list)
    /// cannot hold its connection slot for ever. Upgraded WebSockets have their own
    /// (`ws.write_timeout_ms`).
    pub http_write_timeout_ms: u64,
    /// Console live streams (`/api/v1/console/stream`) open at once on this instance;
    /// further ones get HTTP 503.
    pub max_console_streams: usize,
    /// Console live streams of one credential holder (its `sub`, else its token) open at
    /// once on this instance (0: no limit); one more gets HTTP 429.
    pub max_console_streams_per_credential: usize,
    /// Admin API requests (all but the console stream) served at once by this instance;
    /// one more gets HTTP 429: a loop of reads cannot hold the Redis pool that readiness,
    /// recovery and the job path need.
    pub max_admin_requests: usize,
    /// Live WebSocket connections per instance whose credential carries one `tenant`
    /// (0: no limit): one tenant cannot take an instance's every slot. Further upgrades
    /// of that tenant get HTTP 429.
    pub max_connections_per_tenant: usize,
    /// Live sessions (open, not expired; across the cell) opened by one credential
    /// subject (`sub`), e.g. one end user (0: no limit). A `session_init` beyond it gets
    /// `RATE_LIMITED`; resuming an existing session is always allowed.
    pub max_sessions_per_subject: u64,
    /// Live nodes (registered, not offline; across the cell) registered with one fleet
    /// credential, a node token without `sub` (0: no limit). A `node_register` of a node
    /// new to that count beyond it gets `RATE_LIMITED` and the connection is closed.
    /// Tokens with `sub` hold one node id each and are not counted.
    pub max_nodes_per_credential: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            session_frames_per_sec: 200.0,
            session_frame_burst: 400,
            node_frames_per_sec: 1_000.0,
            node_frame_burst: 2_000,
            rate_limit_strikes: 50,
            max_connections: 30_000,
            header_read_timeout_ms: 10_000,
            upgrade_timeout_ms: 15_000,
            max_http_connections: 1_024,
            http_connection_lifetime_ms: 60_000,
            http_write_timeout_ms: 30_000,
            max_console_streams: 32,
            max_console_streams_per_credential: 4,
            max_admin_requests: 16,
            max_connections_per_tenant: 20_000,
            max_sessions_per_subject: 20,
            max_nodes_per_credential: 10_000,
        }
    }
}

impl LimitsConfig {
    /// The first bad field and why, if any.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        for (field, v) in [
            ("limits.session_frames_per_sec", self.session_frames_per_sec),
            ("limits.node_frames_per_sec", self.node_frames_per_sec),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err((field, "must be a positive number"));
            }
        }
        for (field, v) in [
            (
                "limits.session_frame_burst",
                self.session_frame_burst as u64,
            ),
            ("limits.node_frame_burst", self.node_frame_burst as u64),
            ("limits.max_connections", self.max_connections as u64),
            ("limits.header_read_timeout_ms", self.header_read_timeout_ms),
            ("limits.upgrade_timeout_ms", self.upgrade_timeout_ms),
            (
                "limits.max_http_connections",
                self.max_http_connections as u64,
            ),
            (
                "limits.http_connection_lifetime_ms",
                self.http_connection_lifetime_ms,
            ),
            ("limits.http_write_timeout_ms", self.http_write_timeout_ms),
            (
                "limits.max_console_streams",
                self.max_console_streams as u64,
            ),
            ("limits.max_admin_requests", self.max_admin_requests as u64),
        ] {
            if v == 0 {
                return Err((field, "must be at least 1"));
            }
        }
        for (field, v) in [
            ("limits.max_http_connections", self.max_http_connections),
            ("limits.max_console_streams", self.max_console_streams),
            ("limits.max_admin_requests", self.max_admin_requests),
        ] {
            if v > 1_000_000 {
                return Err((field, "must be at most 1000000"));
            }
        }
        if self.upgrade_timeout_ms < self.header_read_timeout_ms {
            return Err((
                "limits.upgrade_timeout_ms",
                "must be at least limits.header_read_timeout_ms",
            ));
        }
        Ok(())
    }
}
