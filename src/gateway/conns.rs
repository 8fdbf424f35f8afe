//! The map of connections that live on this instance: cell → node or session id → the
//! connections bound to that id, each by its unique token.
//!
//! An id has at most one **live** binding (the connection Redis names as its owner, as far as
//! this instance knows) and any number of **pending** ones: a connection binds the id before
//! the script that decides whether it may hold it runs (bind-before-check: whatever the
//! script's commit addresses to the new connection finds it at once), and the outcome either
//! makes its binding the live one ([`Connections::accept`]) or removes it
//! ([`Connections::refuse`]). A pending binding never hides the live one: deliveries name
//! their connection token, and a token finds exactly its own binding. So a refused resume or
//! takeover attempt (wrong resume token, `NODE_ID_CONFLICT`) cannot make the connection that
//! holds the id lose a message.
//!
//! Which accepted binding is live follows Redis's commit order, not the order the replies
//! come back in: each taking script (`register`, `session_resume`) returns the id's
//! **epoch**, which grows with every commit that gives the id to a connection. An outcome
//! older than the live binding's is **superseded** (Redis gave the id away again after it):
//! it never demotes the newer binding.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::{Kind, Outbound};
use crate::cells::Cell;
use crate::store::reply::Delivery;

/// A connection on this instance: its unique token, its writer and its cell.
#[derive(Clone)]
pub struct LocalConn {
    pub token: String,
    pub tx: mpsc::Sender<Outbound>,
    /// The cell the node or session lives in (whose store its cleanup calls).
    pub cell: Arc<Cell>,
    /// Told when an ordered (terminal) message may be missing on this connection: its full
    /// queue refused one ([`Connections::send`]), or its writer skipped a gap. Its handler
    /// then reads the session's result log back (`recover::missing`).
    pub missing: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for LocalConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalConn")
            .field("token", &self.token)
            .field("cell", &self.cell.name())
            .finish()
    }
}

/// One connection bound to an id: live, or pending until its script has decided.
struct Binding {
    conn: LocalConn,
    pending: bool,
    /// The epoch of the commit that gave the id to this connection (live bindings only).
    epoch: u64,
    /// A session's lifetime (its nonce, in the ids of its jobs: `job-<nonce>-<index>`), set
    /// by the commit that made the binding live; None for nodes and while unknown.
    lifetime: Option<Arc<str>>,
}

/// The outcome of [`Connections::accept`].
#[derive(Debug)]
pub enum Accepted {
    /// The connection's binding is the live one; the live bindings of earlier commits are
    /// removed and returned, for the caller to close or let go.
    Live(Vec<LocalConn>),
    /// A later commit already gave the id to another connection of this instance (its
    /// outcome came first), or this connection's binding is gone: nothing changed but the
    /// removal of this connection's binding. Redis no longer names it: it is treated as
    /// replaced.
    Superseded,
}

/// Local connections of one kind: by cell, then by node or session id (ids are unique
/// within a cell, not across cells), then the id's bindings in the order they were made
/// (usually one).
type ByCell = HashMap<String, HashMap<String, Vec<Binding>>>;

/// Local connections by node id and by session id.
#[derive(Default)]
pub struct Connections {
    nodes: Mutex<ByCell>,
    sessions: Mutex<ByCell>,
}

impl Connections {
    fn map(&self, kind: Kind) -> MutexGuard<'_, ByCell> {
        let m = match kind {
            Kind::Node => &self.nodes,
            Kind::Session => &self.sessions,
        };
        // Each call leaves the map consistent before it can panic, so a lock poisoned by a
        // panic elsewhere is still safe to use.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Change the bindings of `id` in `cell` with `f`; an id or cell left without bindings
    /// leaves the map.
    fn edit<R>(
        &self,
        kind: Kind,
        cell: &str,
        id: &str,
        f: impl FnOnce(&mut Vec<Binding>) -> R,
    ) -> Option<R> {
        let mut m = self.map(kind);
        let ids = m.get_mut(cell)?;
        let bindings = ids.get_mut(id)?;
        let r = f(bindings);
        if bindings.is_empty() {
            ids.remove(id);
        }
        if ids.is_empty() {
            m.remove(cell);
        }
        Some(r)
    }

    /// Bind `id` (in `conn`'s cell) to `conn`, pending until [`Connections::accept`] or
    /// [`Connections::refuse`]: the id's live binding (another connection's) stays as it
    /// is. A connection that holds the id already (a registered node registering again)
    /// keeps its binding, live: a refusal then leaves it bound, as Redis still names it.
    /// Bindings of the id whose connection has ended are dropped here (one that ended
    /// without unbinding, e.g. cancelled between its bind and its outcome, lingers no
    /// longer than the next bind of its id).
    ///
    /// Returns the highest epoch of the id's live bindings (0: none), for the script to
    /// commit above: a record that Redis lost (wiped, failed over without it) restarts its
    /// epoch, and would otherwise look older than a binding made before.
    pub fn bind(&self, kind: Kind, id: &str, conn: LocalConn) -> u64 {
        let mut m = self.map(kind);
        let ids = m.entry(conn.cell.name().to_string()).or_default();
        let bindings = ids.entry(id.to_string()).or_default();
        bindings.retain(|b| !b.conn.tx.is_closed() || b.conn.token == conn.token);
        match bindings.iter_mut().find(|b| b.conn.token == conn.token) {
            Some(b) => b.conn = conn,
            None => bindings.push(Binding {
                conn,
                pending: true,
                epoch: 0,
                lifetime: None,
            }),
        }
        live_epoch(bindings).unwrap_or(0)
    }

    /// The script gave `id` to connection `token` with commit `epoch`. Unless a live binding
    /// of a later commit is there already (its outcome overtook this one: this one is
    /// [`Accepted::Superseded`] and its binding removed), the binding becomes the live one
    /// and the live bindings of earlier commits are removed and returned — the one the
    /// script replaced, if it is here, and any other Redis named before. Other pending
    /// bindings stay: their own outcomes decide (one whose commit came before this one's
    /// will find itself superseded).
    /// `lifetime`: a session's nonce, as the committing script knows it (None for nodes).
    pub fn accept(
        &self,
        kind: Kind,
        cell: &str,
        id: &str,
        token: &str,
        epoch: u64,
        lifetime: Option<&str>,
    ) -> Accepted {
        self.edit(kind, cell, id, |bindings| {
            if !bindings.iter().any(|b| b.conn.token == token) {
                // Unbound meanwhile (its connection ended): nothing to make live.
                return Accepted::Superseded;
            }
            let later = bindings
                .iter()
                .any(|b| !b.pending && b.conn.token != token && b.epoch > epoch);
            if later {
                bindings.retain(|b| b.conn.token != token);
                return Accepted::Superseded;
            }
            let (replaced, kept) = std::mem::take(bindings)
                .into_iter()
                .partition(|b| !b.pending && b.conn.token != token);
            *bindings = kept;
            if let Some(me) = bindings.iter_mut().find(|b| b.conn.token == token) {
                me.pending = false;
                me.epoch = epoch;
                me.lifetime = lifetime.filter(|l| !l.is_empty()).map(Arc::from);
            }
            Accepted::Live(replaced.into_iter().map(|b| b.conn).collect())
        })
        .unwrap_or(Accepted::Superseded)
    }

    /// Messages a script addressed to connection `from` of `id`, committed as `epoch` (a
    /// takeover that turned out [`Accepted::Superseded`]), readdressed to the id's live
    /// binding if that is a later commit (Redis names it as the id's connection now).
    /// Otherwise nothing changes: `from` was superseded because its own connection ended
    /// meanwhile, and an earlier live binding is one Redis no longer names (review
    /// finding); the messages are dropped as gone, and the ended connection's cleanup
    /// deals with its jobs. Messages to other ids or connections stay as they are.
    pub fn readdress(
        &self,
        kind: Kind,
        (cell, id): (&str, &str),
        (from, epoch): (&str, u64),
        out: &mut [Delivery],
    ) {
        let live = {
            let m = self.map(kind);
            m.get(cell)
                .and_then(|ids| ids.get(id))
                .and_then(|b| b.iter().find(|b| !b.pending && b.epoch > epoch))
                .map(|b| b.conn.token.clone())
        };
        let Some(live) = live else {
            return;
        };
        for d in out
            .iter_mut()
            .filter(|d| d.k == kind.as_str() && d.id == id && d.conn.as_deref() == Some(from))
        {
            d.conn = Some(live.clone());
        }
    }

    /// The script refused `id` to connection `token` (or failed): its pending binding is
    /// removed. A live binding of `token` (a registered node registering again) stays, and
    /// so does every other connection's.
    pub fn refuse(&self, kind: Kind, cell: &str, id: &str, token: &str) {
        self.edit(kind, cell, id, |bindings| {
            bindings.retain(|b| !(b.pending && b.conn.token == token))
        });
    }

    /// Forget connection `token`'s binding of `id` in `cell`, pending or live; others stay.
    pub fn unbind(&self, kind: Kind, cell: &str, id: &str, token: &str) {
        self.edit(kind, cell, id, |bindings| {
            bindings.retain(|b| b.conn.token != token)
        });
    }

    /// The lifetime (nonce) of session `id`'s live binding here, if known (only sessions
    /// have lifetimes).
    pub fn session_lifetime(&self, cell: &str, id: &str) -> Option<Arc<str>> {
        let m = self.map(Kind::Session);
        find(&m, cell, id, None).and_then(|b| b.lifetime.clone())
    }

    /// The local connection of `id` in `cell`: with `token`, exactly that connection,
    /// pending or live (a script's commit may address a connection before its `accept`);
    /// without, the live binding only — a pending one has not been given the id.
    pub fn get(&self, kind: Kind, cell: &str, id: &str, token: Option<&str>) -> Option<LocalConn> {
        let m = self.map(kind);
        find(&m, cell, id, token).map(|b| b.conn.clone())
    }

    /// Queue `out` on the connection [`Connections::get`] would return, without cloning it
    /// (its token, writer and cell: a delivery is several per job). `None`: no such
    /// connection; `Some(queued)`: whether its queue took the message (not full, not closed).
    pub fn send(
        &self,
        kind: Kind,
        (cell, id): (&str, &str),
        token: Option<&str>,
        out: Outbound,
    ) -> Option<bool> {
        let m = self.map(kind);
        find(&m, cell, id, token).map(|b| match b.conn.tx.try_send(out) {
            Ok(()) => true,
            // A slow reader: its terminal message is in the log, the handler reads it back.
            Err(mpsc::error::TrySendError::Full(Outbound::Ordered(..))) => {
                b.conn.missing.notify_one();
                false
            }
            Err(_) => false,
        })
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

    /// How many bindings of `kind` there are, pending or live.
    pub fn count(&self, kind: Kind) -> usize {
        self.map(kind)
            .values()
            .flat_map(HashMap::values)
            .map(Vec::len)
            .sum()
    }

    /// Every live binding of `kind` with its id (its cell is in the connection).
    pub fn entries(&self, kind: Kind) -> Vec<(String, LocalConn)> {
        self.map(kind)
            .values()
            .flat_map(|ids| {
                ids.iter().flat_map(|(id, bs)| {
                    bs.iter()
                        .filter(|b| !b.pending)
                        .map(|b| (id.clone(), b.conn.clone()))
                })
            })
            .collect()
    }

    /// Every bound connection of `kind`, of every cell, pending or live.
    pub fn all(&self, kind: Kind) -> Vec<LocalConn> {
        self.map(kind)
            .values()
            .flat_map(|ids| ids.values().flatten().map(|b| b.conn.clone()))
            .collect()
    }

    /// Every bound connection of `kind` in `cell`, pending or live.
    pub fn in_cell(&self, kind: Kind, cell: &str) -> Vec<LocalConn> {
        self.map(kind)
            .get(cell)
            .map(|ids| ids.values().flatten().map(|b| b.conn.clone()).collect())
            .unwrap_or_default()
    }
}

/// The binding of `id` in `cell` that [`Connections::get`] names.
fn find<'m>(m: &'m ByCell, cell: &str, id: &str, token: Option<&str>) -> Option<&'m Binding> {
    m.get(cell)?.get(id)?.iter().find(|b| match token {
        Some(t) => b.conn.token == t,
        None => !b.pending,
    })
}

/// The epoch of the id's live binding, if it has one.
fn live_epoch(bindings: &[Binding]) -> Option<u64> {
    bindings
        .iter()
        .filter(|b| !b.pending)
        .map(|b| b.epoch)
        .max()
}

#[cfg(test)]
mod tests;
