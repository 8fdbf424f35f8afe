//! Unit tests of `src/gateway/conns.rs`: pending and live bindings of one id.

use super::*;

fn cell() -> Arc<Cell> {
    let metrics = Arc::new(crate::telemetry::metrics::Metrics::new());
    let store =
        crate::store::Store::new(&crate::config::Config::default(), "i", metrics).expect("store");
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

/// The live binding of node `id` (what a delivery without a token finds).
fn live(c: &Connections, cell: &Cell, id: &str) -> Option<String> {
    c.get(Kind::Node, cell.name(), id, None).map(|c| c.token)
}

/// Does a delivery addressed to connection `token` of node `id` find it?
fn finds(c: &Connections, cell: &Cell, id: &str, token: &str) -> bool {
    c.get(Kind::Node, cell.name(), id, Some(token))
        .is_some_and(|c| c.token == token)
}

/// Bound and accepted: the live binding of `id`.
fn live_bound(c: &Connections, cell: &Arc<Cell>, id: &str, token: &str) {
    c.bind(Kind::Node, id, conn(cell, token));
    assert!(c.accept(Kind::Node, cell.name(), id, token).is_empty());
}

/// The bug this map's shape fixes: while another connection's bind of the id awaits its
/// script, deliveries to the connection that holds it still find it.
#[test]
fn a_pending_binding_does_not_hide_the_live_one() {
    let (c, cell) = (Connections::default(), cell());
    live_bound(&c, &cell, "n", "a");
    c.bind(Kind::Node, "n", conn(&cell, "b"));
    assert!(finds(&c, &cell, "n", "a"), "the live connection is found");
    assert!(
        finds(&c, &cell, "n", "b"),
        "the pending one too, by its token"
    );
    assert!(!finds(&c, &cell, "n", "x"));
    assert_eq!(
        live(&c, &cell, "n").as_deref(),
        Some("a"),
        "untokened: the live one"
    );
    assert_eq!(c.count(Kind::Node), 2);
    let entries: Vec<String> = c
        .entries(Kind::Node)
        .into_iter()
        .map(|e| e.1.token)
        .collect();
    assert_eq!(entries, ["a"], "entries are live bindings");
    assert_eq!(c.in_cell(Kind::Node, cell.name()).len(), 2);
    // A pending binding alone is no live one.
    c.bind(Kind::Node, "m", conn(&cell, "p"));
    assert_eq!(live(&c, &cell, "m"), None);
    assert!(finds(&c, &cell, "m", "p"));
}

#[test]
fn a_refused_bind_leaves_exactly_the_old_one() {
    let (c, cell) = (Connections::default(), cell());
    // Nothing before: nothing after.
    c.bind(Kind::Node, "n", conn(&cell, "a"));
    c.refuse(Kind::Node, cell.name(), "n", "a");
    assert_eq!(c.count(Kind::Node), 0);
    assert!(c.all(Kind::Node).is_empty());
    // Another connection's refused bind leaves the live one alone.
    live_bound(&c, &cell, "n", "a");
    c.bind(Kind::Node, "n", conn(&cell, "b"));
    c.refuse(Kind::Node, cell.name(), "n", "b");
    assert_eq!(live(&c, &cell, "n").as_deref(), Some("a"));
    assert!(!finds(&c, &cell, "n", "b"));
    assert_eq!(c.count(Kind::Node), 1);
    // The same connection binding again (a registered node registering again) and refused
    // (or failing): it stays bound, as Redis still names it.
    c.bind(Kind::Node, "n", conn(&cell, "a"));
    assert_eq!(c.count(Kind::Node), 1);
    c.refuse(Kind::Node, cell.name(), "n", "a");
    assert_eq!(live(&c, &cell, "n").as_deref(), Some("a"));
    // Interleaved attempts: each refusal removes only its own binding.
    c.bind(Kind::Node, "n", conn(&cell, "b"));
    c.bind(Kind::Node, "n", conn(&cell, "c"));
    c.refuse(Kind::Node, cell.name(), "n", "b");
    assert!(finds(&c, &cell, "n", "c"));
    c.refuse(Kind::Node, cell.name(), "n", "c");
    assert_eq!(c.count(Kind::Node), 1);
    assert_eq!(live(&c, &cell, "n").as_deref(), Some("a"));
}

#[test]
fn an_accepted_bind_leaves_only_the_new_one() {
    let (c, cell) = (Connections::default(), cell());
    live_bound(&c, &cell, "n", "a");
    c.bind(Kind::Node, "n", conn(&cell, "b"));
    let replaced: Vec<String> = c
        .accept(Kind::Node, cell.name(), "n", "b")
        .into_iter()
        .map(|c| c.token)
        .collect();
    assert_eq!(replaced, ["a"], "the replaced connection, to close");
    assert_eq!(live(&c, &cell, "n").as_deref(), Some("b"));
    assert!(!finds(&c, &cell, "n", "a"));
    assert_eq!(c.count(Kind::Node), 1);
    // The replaced connection's own unbind (when it ends) changes nothing.
    c.unbind(Kind::Node, cell.name(), "n", "a");
    assert_eq!(live(&c, &cell, "n").as_deref(), Some("b"));
    // Another attempt still pending when one is accepted keeps waiting for its own script.
    c.bind(Kind::Node, "n", conn(&cell, "c"));
    c.bind(Kind::Node, "n", conn(&cell, "d"));
    let replaced = c.accept(Kind::Node, cell.name(), "n", "d");
    assert_eq!(replaced.len(), 1);
    assert!(finds(&c, &cell, "n", "c"));
    c.refuse(Kind::Node, cell.name(), "n", "c");
    assert_eq!(c.count(Kind::Node), 1);
    assert_eq!(live(&c, &cell, "n").as_deref(), Some("d"));
    // Accepting a connection that is bound already replaces nobody.
    c.bind(Kind::Node, "n", conn(&cell, "d"));
    assert!(c.accept(Kind::Node, cell.name(), "n", "d").is_empty());
    assert_eq!(c.count(Kind::Node), 1);
    // A connection unbound before its outcome is not bound again by it.
    c.bind(Kind::Node, "m", conn(&cell, "e"));
    c.unbind(Kind::Node, cell.name(), "m", "e");
    assert!(c.accept(Kind::Node, cell.name(), "m", "e").is_empty());
    assert_eq!(c.count(Kind::Node), 1);
}

/// A binding whose connection has ended never lingers (review finding of the one-slot
/// map: a previous connection that closed meanwhile was put back and stayed for good).
#[test]
fn a_closed_connection_does_not_linger() {
    let (c, cell) = (Connections::default(), cell());
    // The live connection ended without its unbind reaching the map (its task cancelled):
    // the next bind of its id drops it.
    c.bind(Kind::Node, "n", closed_conn(&cell, "gone"));
    c.accept(Kind::Node, cell.name(), "n", "gone");
    c.bind(Kind::Node, "n", conn(&cell, "d"));
    c.refuse(Kind::Node, cell.name(), "n", "d");
    assert_eq!(live(&c, &cell, "n"), None);
    assert_eq!(c.count(Kind::Node), 0);
    // The live connection unbinds while another's bind is pending: refused, nothing stays.
    live_bound(&c, &cell, "n", "a");
    c.bind(Kind::Node, "n", conn(&cell, "b"));
    c.unbind(Kind::Node, cell.name(), "n", "a");
    c.refuse(Kind::Node, cell.name(), "n", "b");
    assert_eq!(c.count(Kind::Node), 0);
}

/// Sessions and nodes, and cells, are separate maps: the same id in each is another binding.
#[test]
fn kinds_and_cells_are_apart() {
    let (c, cell) = (Connections::default(), cell());
    live_bound(&c, &cell, "x", "a");
    c.bind(Kind::Session, "x", conn(&cell, "s"));
    assert!(c.accept(Kind::Session, cell.name(), "x", "s").is_empty());
    assert_eq!(live(&c, &cell, "x").as_deref(), Some("a"));
    assert_eq!(c.count(Kind::Session), 1);
    assert!(c.get(Kind::Node, "other-cell", "x", None).is_none());
}
