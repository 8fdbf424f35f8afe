//! The answer to a `node_register` that did not go through: a takeover of a held id
//! (`NODE_ID_CONFLICT`), another tenant's id (`UNAUTHORIZED`), a fleet credential at its
//! node limit (`RATE_LIMITED`), a registration superseded by a later one; each ends the
//! connection.

use super::node::{Admitted, NodeConn, Registration};
use super::{Outbound, close};
use crate::protocol::ErrorCode;
use crate::store::StoreError;

const KIND: &str = "node";

impl NodeConn {
    /// A registration's outcome if it went through; a refusal (the held writer released,
    /// then the answer and a close) or the store's error is answered here.
    pub(super) fn accepted(
        &mut self,
        outcome: Result<Registration, StoreError>,
    ) -> Option<Admitted> {
        let refusal = match outcome {
            Ok(Registration::Done(a)) => return Some(a),
            Ok(Registration::Conflict) => Refusal::Held,
            Ok(Registration::Foreign) => Refusal::Foreign,
            Ok(Registration::Limit(live)) => Refusal::Limit(live),
            Ok(Registration::Superseded) => {
                self.send(Outbound::Unhold);
                self.superseded();
                return None;
            }
            Err(e) => {
                self.send(Outbound::Unhold);
                self.store_error(&e);
                return None;
            }
        };
        self.send(Outbound::Unhold);
        self.refuse(refusal);
        None
    }

    /// The node id is not this credential's to take, or the credential may register no
    /// further node: the answer, then close 1008.
    pub(super) fn refuse(&mut self, why: Refusal) {
        let (detail, code, message, reason) = match why {
            // so a genuine node whose old connection is only half-open reconnects (and wins
            // once that connection is found dead)
            Refusal::Held => (
                "node_id_conflict",
                ErrorCode::NodeIdConflict,
                "a live connection holds this node id; only a credential whose sub is the \
                 node id may take it over"
                    .to_string(),
                "node id held by a live connection",
            ),
            // a fleet credential proves a tenant, not a node: it may not inherit another
            // tenant's node and its jobs (nothing says whose the id is)
            Refusal::Foreign => (
                "foreign_tenant",
                ErrorCode::Unauthorized,
                "this node id is registered to another tenant; only a credential whose sub is \
                 the node id may take it (or register another id)"
                    .to_string(),
                "node id of another tenant",
            ),
            Refusal::Limit(live) => (
                "nodes_per_credential",
                ErrorCode::RateLimited,
                format!(
                    "this fleet credential has {live} live nodes, the most allowed \
                     (limits.max_nodes_per_credential): take one offline, or register with \
                     a credential whose sub is the node id"
                ),
                "too many nodes for this credential",
            ),
        };
        if matches!(why, Refusal::Limit(_)) {
            self.app.metrics.limited(KIND, detail);
        } else {
            self.app.metrics.rejected(KIND, detail);
        }
        self.error(code, message);
        self.send(Outbound::Close(close::POLICY, reason.into()));
        self.done = true;
    }

    /// Another connection owns the node id now: a later registration of the id on this
    /// instance took it over before this one's outcome arrived (its binding is gone
    /// already), or a heartbeat found the record taken. `NODE_ID_CONFLICT`, then close 4001.
    pub(super) fn superseded(&mut self) {
        self.app.metrics.stale(KIND);
        self.error(
            ErrorCode::NodeIdConflict,
            "another connection owns this node id now",
        );
        self.send(Outbound::Close(
            close::REPLACED,
            "replaced by a newer connection".into(),
        ));
        self.reg = None;
        self.done = true;
    }
}

/// Why a registration may not take its node id, or may not be counted.
pub(super) enum Refusal {
    /// A live connection holds it (a fleet credential).
    Held,
    /// Its record is another tenant's, or public and the reverse (a fleet credential).
    Foreign,
    /// The fleet credential holds this many live nodes, the most allowed.
    Limit(u64),
}
