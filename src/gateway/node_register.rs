//! A node's `node_register`: which id it may hold (its credential's `sub`, a fleet token's
//! reconnect rule, a minted id) and the `register` script call with the local binding around
//! it. The answer to a refused one is in `node_refusal.rs`.

use super::node::{Admitted, NodeConn, Registered, Registration};
use std::sync::Arc;

use super::{Accepted, Kind, LocalConn, Outbound, close};
use crate::capabilities::Capabilities;
use crate::cells::Cell;
use crate::protocol::node::{NodeRegister, NodeRegisterAck};
use crate::protocol::{ErrorCode, valid_id};
use crate::routing;
use crate::server::App;
use crate::store::nodes::{NodeClaim, OfflineReply, RegisterReply};
use crate::store::{Output, StoreError};

const KIND: &str = "node";

impl NodeConn {
    pub(super) async fn on_register(&mut self, mut r: Box<NodeRegister>) {
        let mut offered = r.node_id.clone().filter(|id| !id.is_empty());
        if let Some(id) = &offered
            && !valid_id(id)
        {
            return self.error(
                ErrorCode::InvalidMessage,
                "node_id must be 1-64 of [A-Za-z0-9_.-]",
            );
        }
        if let Some(bound) = self.cred.bound_node() {
            if offered.as_deref().is_some_and(|id| id != bound) {
                self.app.metrics.rejected(KIND, "unauthorized");
                return self.error(
                    ErrorCode::Unauthorized,
                    format!("this credential may register only node {bound}"),
                );
            }
            offered = Some(bound.to_string());
        }
        match self.cred.tenant_for(r.tenant_id.as_deref()) {
            Ok(t) => r.tenant_id = t,
            Err(e) => {
                self.app.metrics.rejected(KIND, "unauthorized");
                return self.error(ErrorCode::Unauthorized, e);
            }
        }
        let cell = match self
            .app
            .cells
            .resolve(r.tenant_id.as_deref(), self.cred.cell.as_deref())
        {
            Ok(c) => c.clone(),
            Err(e) => {
                self.app.metrics.rejected(KIND, "unauthorized");
                return self.error(ErrorCode::Unauthorized, e.to_string());
            }
        };
        if let Some(cur) = &self.cell
            && cur.name() != cell.name()
        {
            return self.error(
                ErrorCode::InvalidMessage,
                format!(
                    "this connection's node lives in cell {}; a tenant of cell {} needs a new connection",
                    cur.name(),
                    cell.name()
                ),
            );
        }
        let current = self.reg.as_ref().map(|r| r.node_id.clone());
        if let (Some(cur), Some(id)) = (&current, &offered)
            && cur != id
        {
            return self.error(
                ErrorCode::NodeIdConflict,
                format!("this connection is registered as {cur}; open a new one for {id}"),
            );
        }
        let caps = match Capabilities::from_register(&r) {
            Ok(c) => c,
            Err(e) => return self.error(ErrorCode::InvalidCapabilitySchema, e.to_string()),
        };
        let cfg = &self.app.cfg.node;
        let capacity = r.max_concurrent_jobs.unwrap_or(cfg.default_capacity);
        if capacity == 0 || capacity > cfg.max_capacity {
            return self.error(
                ErrorCode::InvalidCapabilitySchema,
                format!("max_concurrent_jobs must be 1..={}", cfg.max_capacity),
            );
        }
        // (stored on the node's record and shown by the API: bounded like a session's
        // free-form fields, protocol::bounds)
        let extra = register_fields(&r, capacity);
        if let Err(e) = within_description(&extra) {
            return self.error(ErrorCode::InvalidMessage, e);
        }
        // (a registration recomputes every pool of the node, like a capability change)
        let every = self.app.cfg.node.capability_change_interval_ms;
        let now = std::time::Instant::now();
        if current.is_some() && !self.caps_pace.may_register_again(every, now) {
            self.app.metrics.limited(KIND, "register_again");
            return self.error(
                ErrorCode::RateLimited,
                format!(
                    "node_register again within node.capability_change_interval_ms ({every} ms) \
                     of this connection's last registration or capability change; nothing changed"
                ),
            );
        }
        let id = current.or(offered);
        // The connection's cell is pinned by its first registration that succeeds, not by
        // a refused one: a corrected register (another tenant, in another cell) may follow.
        let pinned = self.cell.is_some();
        self.cell = Some(cell.clone());
        let outcome = self.register(id, &caps, &extra).await;
        if !pinned && !matches!(outcome, Ok(Registration::Done(_))) {
            self.cell = None;
        }
        if let Some(Admitted {
            node_id,
            state,
            assign,
        }) = self.accepted(outcome)
        {
            let pools = caps.pools().len();
            let message = if pools == 0 {
                "registered; serves no language pair (check language_capabilities)".into()
            } else {
                format!("registered in {pools} pools")
            };
            let status = if state == "draining" {
                "draining"
            } else {
                "ready"
            };
            let ack = serde_json::to_string(&NodeRegisterAck {
                kind: "node_register_ack",
                node_id: &node_id,
                message,
                status,
            });
            match ack {
                Ok(t) => self.send(Outbound::First(t)),
                Err(e) => {
                    tracing::error!(error = %e, "encode failed");
                    self.send(Outbound::Unhold);
                }
            }
            routing::deliver(&self.app, &cell, assign);
            self.caps_pace.registered(now);
            self.reg = Some(Registered {
                node_id,
                caps,
                register: r,
            });
        }
    }

    /// Run `register` (minting an id when none is given) with the node's descriptive
    /// fields `extra` ([`register_fields`]) and bind the local connection.
    pub(super) async fn register(
        &mut self,
        id: Option<String>,
        caps: &Capabilities,
        extra: &[(&'static str, String)],
    ) -> Result<Registration, StoreError> {
        let app = self.app.clone();
        let Some(cell) = self.cell.clone() else {
            return Err(StoreError::Reply {
                script: "register",
                message: "no cell chosen before registering".into(),
            });
        };
        let fleet = self.cred.fleet();
        let patience = tokio::time::Instant::now()
            + std::time::Duration::from_millis(app.cfg.node.takeover_wait_ms);
        // Tries: minted ids taken (at most 32), and a held id's conflicts (until `patience`).
        let mut minted = 0;
        loop {
            let (node_id, claim) = match &id {
                Some(id) if self.cred.may_replace_node(id) => (id.clone(), NodeClaim::Replace),
                Some(id) => (id.clone(), NodeClaim::Reconnect),
                None => (mint_node_id(), NodeClaim::Mint),
            };
            // Bind first: anything addressed to this connection the moment the script has
            // run (queued jobs, another instance's submit through the inbox) finds it —
            // held back by the writer until the ack has gone out. The binding is pending:
            // a live connection holding the id keeps receiving its jobs until the script
            // gives the id to this one (`accept`); a refusal removes only this binding (a
            // registered node registering again stays bound, as Redis still names it).
            self.send(Outbound::Hold);
            let floor = app.conns.bind(Kind::Node, &node_id, self.local(&cell));
            let refuse = |app: &App| {
                app.conns
                    .refuse(Kind::Node, cell.name(), &node_id, &self.token)
            };
            let out = match cell
                .store
                .register(&node_id, claim, &self.token, caps, extra, floor, fleet)
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    refuse(&app);
                    if self.reg.as_ref().is_none_or(|r| r.node_id != node_id)
                        && (e.may_have_committed() || matches!(e, StoreError::Unreplicated(_)))
                    {
                        self.unregister_lost(&cell, &node_id).await;
                    }
                    return Err(e);
                }
            };
            let (reply, assign) = out.split();
            match reply {
                RegisterReply::Taken => {
                    routing::deliver(&app, &cell, assign);
                    refuse(&app);
                    minted += 1;
                    if minted >= 32 {
                        return Err(StoreError::Reply {
                            script: "register",
                            message: "could not mint a free node id".into(),
                        });
                    }
                }
                RegisterReply::Foreign => {
                    routing::deliver(&app, &cell, assign);
                    refuse(&app);
                    tracing::warn!(node_id = %node_id, "node id of another tenant refused");
                    return Ok(Registration::Foreign);
                }
                RegisterReply::Limit { live } => {
                    routing::deliver(&app, &cell, assign);
                    refuse(&app);
                    tracing::warn!(node_id = %node_id, live, fleet = ?fleet,
                        "node refused: its fleet credential has the most live nodes allowed");
                    return Ok(Registration::Limit(live));
                }
                RegisterReply::Conflict { owner } => {
                    routing::deliver(&app, &cell, assign);
                    refuse(&app);
                    // A dropped socket's cleanup may be a moment behind its reconnect.
                    if tokio::time::Instant::now() < patience {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                    tracing::warn!(node_id = %node_id, holder = %owner, "node takeover refused");
                    return Ok(Registration::Conflict);
                }
                RegisterReply::Ok {
                    state,
                    replaced_conn,
                    epoch,
                    ..
                } => {
                    // The connections of this instance it replaces (if any) are closed —
                    // unless a later registration's outcome came first: then this one is
                    // the replaced connection.
                    let Some((replaced, assign)) =
                        settle_takeover(&app, &cell, &node_id, &self.token, epoch, assign)
                    else {
                        return Ok(Registration::Superseded);
                    };
                    for old in replaced {
                        let reason = "replaced by a newer connection".into();
                        let _ = old.tx.try_send(Outbound::Close(close::REPLACED, reason));
                    }
                    if let Some(tok) = replaced_conn {
                        tracing::info!(node_id = %node_id, old_conn = %tok, "node connection replaced");
                    }
                    return Ok(Registration::Done(Admitted {
                        node_id,
                        state,
                        assign,
                    }));
                }
            }
        }
    }

    /// A registration of `node_id` that may have committed though its reply was lost (or
    /// was not replicated): Redis may hold the node ready, in its pools, owned by this
    /// connection, which is not bound to it; it would draw jobs that reach no socket until
    /// its liveness ran out, and hold its id against the node's reconnect. Taken offline
    /// (its jobs failed over), as a `session_open` in that case is closed; fenced by this
    /// connection's token (`stale` when another took the id). The registration and this
    /// call may both wait in Redis while it stalls, and run in either order: `missing` is
    /// asked again a moment later, as a lost reply's recovery reads twice. Inline, so no
    /// later registration of this connection (the same token) can come first; for at
    /// most `UNREGISTER_FOR` (Redis away longer: the node's liveness takes it offline).
    async fn unregister_lost(&self, cell: &Arc<Cell>, node_id: &str) {
        let until = tokio::time::Instant::now() + UNREGISTER_FOR;
        // (backing off: a few calls over the wait, not one every 300 ms while Redis recovers)
        let mut pause = std::time::Duration::from_millis(300);
        loop {
            let out = cell
                .store
                .node_offline(node_id, &self.token, 0, "register_unconfirmed")
                .await;
            let done = match routing::delivered(&self.app, cell, out) {
                // No record, or one another connection owns: the registration may still be
                // on its way (a stalled Redis runs it after this call, on another
                // connection), so it is asked again until UNREGISTER_FOR has passed
                // (fenced by this connection's token: it never touches another's).
                Ok(OfflineReply::Missing | OfflineReply::Stale) => false,
                // (taken offline on the primary, as the registration was)
                Ok(_) | Err(StoreError::Unreplicated(_)) => true,
                Err(e) if tokio::time::Instant::now() >= until => {
                    tracing::warn!(node_id = %node_id, error = %e,
                        "could not take offline a node whose registration's reply was lost; liveness will expire");
                    true
                }
                Err(_) => false,
            };
            if done || tokio::time::Instant::now() >= until {
                return;
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
}

/// How long a connection waits for Redis to take offline a registration whose reply was
/// lost (`NodeConn::unregister_lost`).
const UNREGISTER_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// The outcome of a registration of `node_id` by connection `token` that Redis committed
/// as `epoch`, with the messages its script produced (`assign`: queued jobs handed to the
/// node). Live: the connections it replaced here (to close) and `assign`, to deliver once
/// the ack is out. Overtaken by a later registration whose outcome came first (`None`):
/// what the script addressed to this connection goes to the live one instead, the node's
/// connection in Redis now — those jobs are the node's, DISPATCHED to it, and no later
/// registration hands them out again (review finding: they waited for their deadline).
pub fn settle_takeover(
    app: &App,
    cell: &Arc<Cell>,
    node_id: &str,
    token: &str,
    epoch: u64,
    mut assign: Output<()>,
) -> Option<(Vec<LocalConn>, Output<()>)> {
    match app
        .conns
        .accept(Kind::Node, cell.name(), node_id, token, epoch, None)
    {
        Accepted::Live(replaced) => Some((replaced, assign)),
        Accepted::Superseded => {
            tracing::info!(node_id = %node_id, epoch, "registration overtaken by a later one");
            app.conns.readdress(
                Kind::Node,
                (cell.name(), node_id),
                (token, epoch),
                &mut assign.out,
            );
            routing::deliver(app, cell, assign);
            None
        }
    }
}

/// `node-` + 8 uppercase hex digits (PROTOCOL.md).
fn mint_node_id() -> String {
    format!("node-{:08X}", rand::random::<u32>())
}

/// The descriptive fields of a registration together, as stored (bytes): a node describes
/// itself in a few hundred.
const MAX_DESCRIPTION: usize = 16 * 1024;

/// `extra` (`register_fields`) within [`MAX_DESCRIPTION`], or why not. A heartbeat's
/// `installed_services` replace the registration's and are stored at its next
/// registration (a record found missing): they are held to it too.
pub(super) fn within_description(extra: &[(&'static str, String)]) -> Result<(), String> {
    let described: usize = extra.iter().map(|(_, v)| v.len()).sum();
    if described > MAX_DESCRIPTION {
        return Err(format!(
            "version, platform, hardware, installed_services and capability_schema_version \
             together must be at most {MAX_DESCRIPTION} bytes ({described})"
        ));
    }
    Ok(())
}

/// Descriptive node-hash fields from a registration.
pub(super) fn register_fields(
    r: &NodeRegister,
    default_capacity: u32,
) -> Vec<(&'static str, String)> {
    let json = |v: &serde_json::Value| serde_json::to_string(v).unwrap_or_default();
    vec![
        (
            "capacity",
            r.max_concurrent_jobs
                .unwrap_or(default_capacity)
                .to_string(),
        ),
        ("version", r.version.clone()),
        ("platform", r.platform.clone()),
        (
            "hardware",
            r.hardware.as_ref().map(json).unwrap_or_default(),
        ),
        (
            "installed_services",
            json(&serde_json::Value::from(r.installed_services.clone())),
        ),
        ("installed_models", r.installed_models.len().to_string()),
        (
            "schema",
            r.capability_schema_version.clone().unwrap_or_default(),
        ),
        (
            "supports_ack",
            if r.supports_job_ack.unwrap_or(false) {
                "1"
            } else {
                "0"
            }
            .into(),
        ),
    ]
}
