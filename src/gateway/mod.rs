//! WebSocket gateway: the `/ws/node` (and later `/ws/session`) handlers and the map of
//! connections that live on this instance.
//!
//! Handlers stay thin: decode a frame, make one store call, route the reply. The map is the
//! only connection state an instance holds; Redis decides who owns what.

pub mod node;
pub mod socket;

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

pub use socket::{Outbound, close};

/// A connection on this instance: its unique token and its writer.
#[derive(Clone)]
pub struct LocalConn {
    pub token: String,
    pub tx: mpsc::Sender<Outbound>,
}

/// Local connections by node id.
#[derive(Default)]
pub struct Connections {
    nodes: Mutex<HashMap<String, LocalConn>>,
}

impl Connections {
    fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<String, LocalConn>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still safe to use.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bind `node_id` to `conn`; returns the connection it replaces, if any.
    pub fn bind_node(&self, node_id: &str, conn: LocalConn) -> Option<LocalConn> {
        let old = self.nodes().insert(node_id.to_string(), conn.clone());
        old.filter(|o| o.token != conn.token)
    }

    /// Forget `node_id` if it is still bound to `token`.
    pub fn unbind_node(&self, node_id: &str, token: &str) {
        let mut nodes = self.nodes();
        if nodes.get(node_id).is_some_and(|c| c.token == token) {
            nodes.remove(node_id);
        }
    }

    /// The local connection of `node_id`, if it is here and (when given) has `token`.
    pub fn node(&self, node_id: &str, token: Option<&str>) -> Option<LocalConn> {
        let nodes = self.nodes();
        nodes
            .get(node_id)
            .filter(|c| token.is_none_or(|t| c.token == t))
            .cloned()
    }

    /// Close the local connection of `node_id` if it has `token`.
    pub fn close_node(&self, node_id: &str, token: &str, code: u16, reason: &str) -> bool {
        match self.node(node_id, Some(token)) {
            Some(c) => c.tx.try_send(Outbound::Close(code, reason.into())).is_ok(),
            None => false,
        }
    }

    pub fn node_count(&self) -> usize {
        self.nodes().len()
    }

    /// Every local node connection (for shutdown).
    pub fn all_nodes(&self) -> Vec<LocalConn> {
        self.nodes().values().cloned().collect()
    }
}
