//! WebSocket gateway: the `/ws/node` and `/ws/session` handlers and the map of connections
//! that live on this instance.
//!
//! Handlers stay thin: decode a frame, make one store call, route the reply. The map is the
//! only connection state an instance holds; Redis decides who owns what.

pub mod node;
mod node_jobs;
mod node_register;
pub mod peer;
pub mod session;
mod session_init;
pub mod socket;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

pub use socket::{Outbound, close};

use crate::cells::Cell;

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

/// A connection on this instance: its unique token, its writer and its cell.
#[derive(Clone)]
pub struct LocalConn {
    pub token: String,
    pub tx: mpsc::Sender<Outbound>,
    /// The cell the node or session lives in (whose store its cleanup calls).
    pub cell: Arc<Cell>,
}

/// Local connections of one kind: by cell, then by node or session id (ids are unique
/// within a cell, not across cells).
type ByCell = HashMap<String, HashMap<String, LocalConn>>;

/// Local connections by node id and by session id.
#[derive(Default)]
pub struct Connections {
    nodes: Mutex<ByCell>,
    sessions: Mutex<ByCell>,
}

impl Connections {
    fn map(&self, kind: Kind) -> std::sync::MutexGuard<'_, ByCell> {
        let m = match kind {
            Kind::Node => &self.nodes,
            Kind::Session => &self.sessions,
        };
        // Single inserts and removes cannot leave the map inconsistent, so a lock poisoned by
        // a panic elsewhere is still safe to use.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bind `id` (in `conn`'s cell) to `conn`; returns the binding it replaces, if any:
    /// another connection, or `conn` itself (the same token) when it binds again. Give it
    /// to [`Connections::restore`] if the call the binding was for fails.
    pub fn bind(&self, kind: Kind, id: &str, conn: LocalConn) -> Option<LocalConn> {
        let mut m = self.map(kind);
        let cell = m.entry(conn.cell.name().to_string()).or_default();
        cell.insert(id.to_string(), conn)
    }

    /// Undo a [`Connections::bind`] of `id` to `token` whose call failed: `id` is bound
    /// again to what `bind` returned (`previous`: nothing, another connection, or this
    /// one, which then stays bound), exactly as before. A binding made since by another
    /// connection is left alone.
    pub fn restore(
        &self,
        kind: Kind,
        cell: &str,
        id: &str,
        token: &str,
        previous: Option<LocalConn>,
    ) {
        let mut m = self.map(kind);
        let Some(ids) = m.get_mut(cell) else { return };
        if ids.get(id).is_none_or(|c| c.token != token) {
            return;
        }
        match previous {
            // A previous connection that closed meanwhile is not put back: its own
            // `unbind` found this binding and left it, and nothing would remove it later.
            Some(p) if !p.tx.is_closed() => {
                ids.insert(id.to_string(), p);
            }
            _ => {
                ids.remove(id);
            }
        }
        if ids.is_empty() {
            m.remove(cell);
        }
    }

    /// Forget `id` in `cell` if it is still bound to `token`.
    pub fn unbind(&self, kind: Kind, cell: &str, id: &str, token: &str) {
        let mut m = self.map(kind);
        let Some(ids) = m.get_mut(cell) else { return };
        if ids.get(id).is_some_and(|c| c.token == token) {
            ids.remove(id);
        }
        if ids.is_empty() {
            m.remove(cell);
        }
    }

    /// The local connection of `id` in `cell`, if it is here and (when given) has `token`.
    pub fn get(&self, kind: Kind, cell: &str, id: &str, token: Option<&str>) -> Option<LocalConn> {
        let m = self.map(kind);
        m.get(cell)?
            .get(id)
            .filter(|c| token.is_none_or(|t| c.token == t))
            .cloned()
    }

    /// Close the local connection of `id` in `cell` if it has `token`.
    pub fn close(
        &self,
        kind: Kind,
        cell: &str,
        id: &str,
        token: &str,
        code: u16,
        reason: &str,
    ) -> bool {
        match self.get(kind, cell, id, Some(token)) {
            Some(c) => c.tx.try_send(Outbound::Close(code, reason.into())).is_ok(),
            None => false,
        }
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.map(kind).values().map(HashMap::len).sum()
    }

    /// Every local connection of `kind` with the id it is bound to (its cell is in it).
    pub fn entries(&self, kind: Kind) -> Vec<(String, LocalConn)> {
        self.map(kind)
            .values()
            .flat_map(|ids| ids.iter().map(|(id, c)| (id.clone(), c.clone())))
            .collect()
    }

    /// Every local connection of `kind`, of every cell.
    pub fn all(&self, kind: Kind) -> Vec<LocalConn> {
        self.map(kind)
            .values()
            .flat_map(|ids| ids.values().cloned())
            .collect()
    }

    /// Every local connection of `kind` in `cell`.
    pub fn in_cell(&self, kind: Kind, cell: &str) -> Vec<LocalConn> {
        self.map(kind)
            .get(cell)
            .map(|ids| ids.values().cloned().collect())
            .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cell() -> Arc<Cell> {
        let metrics = Arc::new(crate::telemetry::metrics::Metrics::new());
        let store = crate::store::Store::new(&crate::config::Config::default(), "i", metrics)
            .expect("store");
        Arc::new(Cell {
            store,
            inbox_alive_at: Default::default(),
        })
    }

    /// A connection whose writer is alive (its receiver is kept for the test's life).
    fn conn(cell: &Arc<Cell>, token: &str) -> LocalConn {
        let (tx, rx) = mpsc::channel(1);
        std::mem::forget(rx);
        LocalConn {
            token: token.into(),
            tx,
            cell: cell.clone(),
        }
    }

    /// A connection whose writer has ended.
    fn closed_conn(cell: &Arc<Cell>, token: &str) -> LocalConn {
        LocalConn {
            token: token.into(),
            tx: mpsc::channel(1).0,
            cell: cell.clone(),
        }
    }

    fn bound(c: &Connections, cell: &Cell, id: &str) -> Option<String> {
        c.get(Kind::Node, cell.name(), id, None).map(|c| c.token)
    }

    /// A failed call puts the binding back exactly as it was before its `bind`.
    #[test]
    fn restore_undoes_a_bind() {
        let (c, cell) = (Connections::default(), cell());
        // Nothing before: nothing after.
        let prev = c.bind(Kind::Node, "n", conn(&cell, "a"));
        assert!(prev.is_none());
        c.restore(Kind::Node, cell.name(), "n", "a", prev);
        assert_eq!(bound(&c, &cell, "n"), None);
        assert_eq!(c.count(Kind::Node), 0);
        // The same connection binding again (a registered node registering again): it
        // stays bound (review finding: it used to be unbound, and its jobs dropped).
        c.bind(Kind::Node, "n", conn(&cell, "a"));
        let prev = c.bind(Kind::Node, "n", conn(&cell, "a"));
        assert_eq!(prev.as_ref().map(|p| p.token.as_str()), Some("a"));
        c.restore(Kind::Node, cell.name(), "n", "a", prev);
        assert_eq!(bound(&c, &cell, "n").as_deref(), Some("a"));
        // Another connection's binding comes back.
        let prev = c.bind(Kind::Node, "n", conn(&cell, "b"));
        c.restore(Kind::Node, cell.name(), "n", "b", prev);
        assert_eq!(bound(&c, &cell, "n").as_deref(), Some("a"));
        // A binding made meanwhile by a third connection is left alone.
        let prev = c.bind(Kind::Node, "n", conn(&cell, "b"));
        c.bind(Kind::Node, "n", conn(&cell, "c"));
        c.restore(Kind::Node, cell.name(), "n", "b", prev);
        assert_eq!(bound(&c, &cell, "n").as_deref(), Some("c"));
        // A previous connection that closed meanwhile is not put back (review finding: it
        // stayed in the map for good, counted and drained as if alive).
        let c = Connections::default();
        c.bind(Kind::Node, "n", closed_conn(&cell, "gone"));
        let prev = c.bind(Kind::Node, "n", conn(&cell, "d"));
        c.restore(Kind::Node, cell.name(), "n", "d", prev);
        assert_eq!(bound(&c, &cell, "n"), None);
        assert_eq!(c.count(Kind::Node), 0);
    }
}
