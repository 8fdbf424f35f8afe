//! WebSocket gateway: the `/ws/node` and `/ws/session` handlers and the map of connections
//! that live on this instance.
//!
//! Handlers stay thin: decode a frame, make one store call, route the reply. The map
//! (`conns.rs`) is the only connection state an instance holds; Redis decides who owns what.

mod conns;
pub mod node;
mod node_caps;
mod node_jobs;
mod node_refusal;
mod node_register;
pub mod peer;
mod recover;
pub use recover::Recoveries;
pub mod session;
mod session_init;
pub mod socket;

pub use conns::{Accepted, Connections, LocalConn};
pub use node_register::settle_takeover;
pub use socket::{Outbound, close};

/// The two kinds of peers, as scripts name them in deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Node,
    Session,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "node" => Some(Kind::Node),
            "session" => Some(Kind::Session),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Session => "session",
        }
    }
}

/// The answer to a WebSocket upgrade while the instance drains: go elsewhere.
pub fn draining() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "draining: connect to another instance",
    )
        .into_response()
}

/// The answer to a WebSocket upgrade when `limits.max_connections` are live: go elsewhere.
pub fn full() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "connection limit reached: connect to another instance",
    )
        .into_response()
}

/// The answer to an upgrade whose tenant holds its most connections on this instance.
pub fn tenant_full() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "connection limit of this tenant reached on this instance",
    )
        .into_response()
}
