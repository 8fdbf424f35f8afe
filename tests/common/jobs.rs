//! The job-path scenarios' peers and readers, shared by tests/jobs.rs, tests/outcomes.rs and
//! tests/sessions.rs: a node registered from the lingua fixture, a one-way session, a job's
//! record.

use std::collections::HashMap;

use redis::AsyncCommands;
use serde_json::Value;

use super::invariants::PREFIX;
use super::{WsClient, fixture, tenant_ws_url, ws_url};

/// A one-way session on `inst` from the lingua fixture; returns the client and the session id.
#[allow(unused_imports)] // only the job-path test binaries use this name
pub use super::actors::session_on as session;

/// A node on `inst` registered from the lingua `node_register_first` fixture after `tweak`;
/// returns the client and the node id the instance minted. A `tenant_id` the tweak sets is
/// backed by a credential of that tenant (a frame cannot name a tenant its credential lacks).
pub async fn node(
    inst: &switchyard::server::Running,
    tweak: impl FnOnce(&mut Value),
) -> (WsClient, String) {
    let mut f = fixture("node_register_first");
    tweak(&mut f);
    let url = match f["tenant_id"].as_str() {
        Some(t) => tenant_ws_url(inst, "/ws/node", t),
        None => ws_url(inst, "/ws/node"),
    };
    let mut n = WsClient::connect(&url).await;
    let id = n.register_id(f, None).await;
    (n, id)
}

/// The record of job `id` (empty when there is none).
pub async fn job(c: &mut redis::aio::MultiplexedConnection, id: &str) -> HashMap<String, String> {
    c.hgetall(format!("{PREFIX}job:{id}")).await.unwrap()
}
