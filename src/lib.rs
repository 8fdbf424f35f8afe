//! Switchyard: a stateless, Redis-backed scheduler between speech-translation nodes and
//! client sessions. See docs/architecture.md for the module map.

pub mod accept;
pub mod auth;
pub mod capabilities;
pub mod cells;
pub mod config;
pub mod console;
pub mod gateway;
pub mod http;
pub mod limits;
pub mod protocol;
pub mod routing;
pub mod server;
pub mod sim;
pub mod store;
pub mod supervise;
pub mod sweeper;
pub mod telemetry;
