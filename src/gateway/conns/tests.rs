//! Unit tests of `src/gateway/conns.rs`: pending and live bindings of one id.

use super::*;

fn cell() -> Arc<Cell> {
    let metrics = Arc::new(crate::telemetry::metrics::Metrics::new());
    let store =
        crate::store::Store::new(&crate::config::Config::default(), "i", metrics).expect("store");
    Arc::new(Cell::new(store))
}

/// A connection whose writer is alive (its receiver is kept for the test's life).
fn conn(cell: &Arc<Cell>, token: &str) -> LocalConn {
    let (tx, rx) = mpsc::channel(1);
    std::mem::forget(rx);
    LocalConn {
        token: token.into(),
        tx,
        cell: cell.clone(),
        missing: Default::default(),
    }
}

/// A connection whose writer has ended.
fn closed_conn(cell: &Arc<Cell>, token: &str) -> LocalConn {
    LocalConn {
        token: token.into(),
        tx: mpsc::channel(1).0,
        cell: cell.clone(),
        missing: Default::default(),
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

/// Accept `token`'s binding of node `id` with commit `epoch`: the tokens it replaced, or
/// `None` when it was superseded.
fn accept(c: &Connections, cell: &Cell, id: &str, token: &str, epoch: u64) -> Option<Vec<String>> {
    match c.accept(Kind::Node, cell.name(), id, token, epoch, None) {
        Accepted::Live(r) => Some(r.into_iter().map(|c| c.token).collect()),
        Accepted::Superseded => None,
    }
}

/// Bound and accepted (with epoch 1): the live binding of `id`.
fn live_bound(c: &Connections, cell: &Arc<Cell>, id: &str, token: &str) {
    c.bind(Kind::Node, id, conn(cell, token));
    assert_eq!(accept(c, cell, id, token, 1), Some(vec![]));
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
    let replaced = accept(&c, &cell, "n", "b", 2);
    assert_eq!(
        replaced,
        Some(vec!["a".into()]),
        "the replaced connection, to close"
    );
    assert_eq!(live(&c, &cell, "n").as_deref(), Some("b"));
    assert!(!finds(&c, &cell, "n", "a"));
    assert_eq!(c.count(Kind::Node), 1);
    // The replaced connection's own unbind (when it ends) changes nothing.
    c.unbind(Kind::Node, cell.name(), "n", "a");
    assert_eq!(live(&c, &cell, "n").as_deref(), Some("b"));
    // Another attempt still pending when one is accepted keeps waiting for its own script.
    c.bind(Kind::Node, "n", conn(&cell, "c"));
    c.bind(Kind::Node, "n", conn(&cell, "d"));
    assert_eq!(accept(&c, &cell, "n", "d", 3), Some(vec!["b".into()]));
    assert!(finds(&c, &cell, "n", "c"));
    c.refuse(Kind::Node, cell.name(), "n", "c");
    assert_eq!(c.count(Kind::Node), 1);
    assert_eq!(live(&c, &cell, "n").as_deref(), Some("d"));
    // Accepting a connection that is bound already replaces nobody.
    c.bind(Kind::Node, "n", conn(&cell, "d"));
    assert_eq!(accept(&c, &cell, "n", "d", 4), Some(vec![]));
    assert_eq!(c.count(Kind::Node), 1);
    // A connection unbound before its outcome is not bound again by it.
    c.bind(Kind::Node, "m", conn(&cell, "e"));
    c.unbind(Kind::Node, cell.name(), "m", "e");
    assert_eq!(
        accept(&c, &cell, "m", "e", 1),
        None,
        "superseded: not bound"
    );
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
    accept(&c, &cell, "n", "gone", 1);
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
    assert!(matches!(
        c.accept(Kind::Session, cell.name(), "x", "s", 1, None),
        Accepted::Live(r) if r.is_empty()
    ));
    assert_eq!(live(&c, &cell, "x").as_deref(), Some("a"));
    assert_eq!(c.count(Kind::Session), 1);
    assert!(c.get(Kind::Node, "other-cell", "x", None).is_none());
}

/// The defect of the first two-state map: two accepted takeovers whose outcomes arrive in
/// the opposite order to their commits. The later commit's binding stays live whatever
/// the order; the earlier one is superseded and never demotes it.
#[test]
fn outcomes_out_of_commit_order_leave_the_latest_commit_live() {
    let (c, cell) = (Connections::default(), cell());
    live_bound(&c, &cell, "n", "a");
    assert_eq!(
        c.bind(Kind::Node, "n", conn(&cell, "b")),
        1,
        "the floor: a's epoch"
    );
    assert_eq!(c.bind(Kind::Node, "n", conn(&cell, "c")), 1);
    // Redis committed b (epoch 2) then c (epoch 3); c's outcome arrives first.
    assert_eq!(accept(&c, &cell, "n", "c", 3), Some(vec!["a".into()]));
    assert!(finds(&c, &cell, "n", "b"), "b's own outcome decides b");
    assert_eq!(accept(&c, &cell, "n", "b", 2), None, "b is superseded");
    assert_eq!(live(&c, &cell, "n").as_deref(), Some("c"));
    assert!(!finds(&c, &cell, "n", "b"));
    assert_eq!(c.count(Kind::Node), 1);
    // The floor a bind reports is the live binding's epoch.
    assert_eq!(c.bind(Kind::Node, "n", conn(&cell, "d")), 3);
    // In commit order the later one replaces the earlier as before.
    assert_eq!(accept(&c, &cell, "n", "d", 4), Some(vec!["c".into()]));
    // A live connection registering again keeps its binding with its newer epoch.
    assert_eq!(c.bind(Kind::Node, "n", conn(&cell, "d")), 4);
    assert_eq!(accept(&c, &cell, "n", "d", 5), Some(vec![]));
    assert_eq!(c.bind(Kind::Node, "n", conn(&cell, "e")), 5);
}

/// A delivery of a `job_assign` to connection `token` of node `id`.
fn assign_to(id: &str, token: &str) -> Delivery {
    Delivery {
        k: "node".into(),
        id: id.into(),
        owner: "i".into(),
        conn: Some(token.into()),
        msg: "{\"type\":\"job_assign\"}".into(),
        m: None,
        blob: None,
        own: None,
        t: None,
        town: None,
        ev: None,
        tr: None,
        ix: None,
        el: None,
        seq: None,
        tp: None,
        job: None,
    }
}

/// An overtaken takeover's messages go to the later commit's live binding; one superseded
/// because its own connection ended meanwhile leaves them where they were (review finding:
/// they went to the earlier live binding, which Redis no longer names).
#[test]
fn readdressing_goes_to_a_later_commit_only() {
    let cell = cell();
    let c = Connections::default();
    c.bind(Kind::Node, "n", conn(&cell, "a"));
    assert!(matches!(
        c.accept(Kind::Node, cell.name(), "n", "a", 5, None),
        Accepted::Live(_)
    ));
    // B commits epoch 6, then its connection ends before its outcome arrives.
    c.bind(Kind::Node, "n", conn(&cell, "b"));
    c.unbind(Kind::Node, cell.name(), "n", "b");
    assert!(matches!(
        c.accept(Kind::Node, cell.name(), "n", "b", 6, None),
        Accepted::Superseded
    ));
    let mut out = [assign_to("n", "b")];
    c.readdress(Kind::Node, (cell.name(), "n"), ("b", 6), &mut out);
    assert_eq!(
        out[0].conn.as_deref(),
        Some("b"),
        "not to A, an earlier commit"
    );
    // C commits epoch 8 and is accepted first; D (epoch 7) is overtaken.
    c.bind(Kind::Node, "n", conn(&cell, "d"));
    c.bind(Kind::Node, "n", conn(&cell, "c"));
    assert!(matches!(
        c.accept(Kind::Node, cell.name(), "n", "c", 8, None),
        Accepted::Live(_)
    ));
    assert!(matches!(
        c.accept(Kind::Node, cell.name(), "n", "d", 7, None),
        Accepted::Superseded
    ));
    let mut out = [assign_to("n", "d"), assign_to("m", "d")];
    c.readdress(Kind::Node, (cell.name(), "n"), ("d", 7), &mut out);
    assert_eq!(out[0].conn.as_deref(), Some("c"), "to C, the later commit");
    assert_eq!(
        out[1].conn.as_deref(),
        Some("d"),
        "another id's message stays"
    );
}
