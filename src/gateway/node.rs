//! `/ws/node`: one lingua node's connection, from `node_register` to close.
//!
//! The connection keeps in memory only what it needs to speak for its node: the node id,
//! its unique connection token (the fencing epoch every script checks) and the last
//! registration, so that a heartbeat answered "missing" (record expired, Redis wiped) can
//! re-register at once — the heal-within-one-heartbeat promise of DESIGN §1.6.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use tracing::Instrument;

use super::node_caps::Paced;
use super::peer::{self, Handler, Peer};
use super::{Kind, Outbound};
use crate::auth::{Credential, Scope};
use crate::capabilities::Capabilities;
use crate::cells::Cell;
use crate::protocol::node::{NodeHeartbeat, NodeInbound, NodeRegister};
use crate::protocol::{ErrorCode, decode};
use crate::routing;
use crate::server::App;
use crate::store::Output;
use crate::store::nodes::{HeartbeatReply, OfflineReply};

const KIND: &str = "node";

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    peer::upgrade(ws, app, (&headers, &uri), Scope::Node, |peer, cred| {
        NodeConn {
            peer,
            cred,
            cell: None,
            reg: None,
            done: false,
            caps_pace: Default::default(),
            error_log: crate::telemetry::budget::LogBudget::new(
                10,
                std::time::Duration::from_secs(60),
            ),
        }
    })
}

/// The outcome of a registration attempt.
pub(super) enum Registration {
    /// Registered as `node_id`, in `state`. `assign`: what the script sent this node at
    /// once (queued jobs it was offered), to be written after the `node_register_ack` — a
    /// lingua node refuses jobs until it has its ack.
    Done(Admitted),
    /// A live connection holds the id and this credential may not take it.
    Conflict,
    /// The id's record is another tenant's (or public, or the reverse) and this credential
    /// cannot prove it is that node.
    Foreign,
    /// The credential's fleet holds the most live nodes allowed (this many).
    Limit(u64),
    /// Registered, but a later registration of the id (another connection of this
    /// instance, whose outcome arrived first) took it over already: replaced.
    Superseded,
}

/// A registration that went through.
pub(super) struct Admitted {
    pub(super) node_id: String,
    pub(super) state: String,
    pub(super) assign: Output<()>,
}

/// What this connection has registered.
pub(super) struct Registered {
    pub(super) node_id: String,
    pub(super) caps: Capabilities,
    pub(super) register: Box<NodeRegister>,
}

pub(super) struct NodeConn {
    pub(super) peer: Peer,
    /// What the upgrade proved: which node id this connection may hold, its tenant.
    pub(super) cred: Credential,
    /// The cell the node lives in (from its tenant), fixed by its first registration.
    pub(super) cell: Option<Arc<Cell>>,
    pub(super) reg: Option<Registered>,
    /// Set when the connection must end (replaced, fenced off).
    pub(super) done: bool,
    /// How often its heartbeats may change its capabilities.
    pub(super) caps_pace: super::node_caps::CapsPace,
    /// Its `node_error` log lines: 10 a minute, the rest counted (the metric has them all).
    pub(super) error_log: crate::telemetry::budget::LogBudget,
}

impl std::ops::Deref for NodeConn {
    type Target = Peer;
    fn deref(&self) -> &Peer {
        &self.peer
    }
}

impl Handler for NodeConn {
    const KIND: &'static str = KIND;
    const HELLO: &'static str = "node_register expected";

    fn peer(&self) -> &Peer {
        &self.peer
    }

    fn greeted(&self) -> bool {
        self.reg.is_some()
    }

    fn done(&self) -> bool {
        self.done
    }

    async fn on_text(&mut self, text: &str) {
        self.on_text(text).await
    }

    async fn finish(&mut self, orderly: bool) {
        self.finish(orderly).await
    }
}

impl NodeConn {
    async fn on_text(&mut self, text: &str) {
        let msg = match decode::<NodeInbound>(text) {
            Ok(m) => m,
            Err(e) => {
                self.app.metrics.rejected(KIND, "invalid");
                self.error(ErrorCode::InvalidMessage, e.to_string());
                return;
            }
        };
        let span = self.message_span(&msg);
        self.handle(msg).instrument(span).await
    }

    /// A span for one inbound message: `node.<type>`. A job message continues its
    /// utterance's trace: as a child of the job's dispatch span when this instance wrote
    /// it, else under the job's trace_id.
    fn message_span(&self, msg: &NodeInbound) -> tracing::Span {
        let node = self
            .reg
            .as_ref()
            .map(|r| r.node_id.as_str())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "ws.message",
            otel.name = %format_args!("node.{}", msg.kind()),
            node_id = node,
            job_id = tracing::field::Empty,
            attempt_id = tracing::field::Empty,
            utterance_index = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let (job, trace, finished) = match msg {
            NodeInbound::JobResult(r) => {
                span.record("attempt_id", r.attempt_id);
                if let Some(i) = r.utterance_index {
                    span.record("utterance_index", i);
                }
                (Some(r.job_id.as_str()), r.trace_id.as_deref(), true)
            }
            NodeInbound::JobAck(a) | NodeInbound::JobStarted(a) => {
                span.record("attempt_id", a.attempt_id);
                (Some(a.job_id.as_str()), None, false)
            }
            NodeInbound::AsrPartial(p) => (Some(p.job_id.as_str()), None, false),
            _ => (None, None, false),
        };
        if let Some(job) = job {
            span.record("job_id", crate::protocol::field_id(job));
            let dispatched = if finished {
                self.app.dispatch_spans.take(job)
            } else {
                self.app.dispatch_spans.get(job)
            };
            if let Some(t) = trace {
                span.record("trace_id", crate::protocol::field_id(t));
            }
            // A span no subscriber records (no OTLP export) needs no parent built for it.
            if !span.is_disabled() {
                let parent =
                    dispatched.or_else(|| trace.and_then(crate::telemetry::parent_from_trace_id));
                crate::telemetry::adopt(&span, parent);
            }
        }
        span
    }

    async fn handle(&mut self, msg: NodeInbound) {
        // Once a drain has released this instance's nodes, a heartbeat or registration
        // would put the node back in its pools on a connection about to close.
        if self.app.nodes_released()
            && matches!(
                msg,
                NodeInbound::NodeRegister(_) | NodeInbound::NodeHeartbeat(_)
            )
        {
            return; // it registers again on another instance
        }
        match msg {
            NodeInbound::NodeRegister(r) => {
                self.app.metrics.message_in(KIND, "node_register");
                self.on_register(r).await
            }
            NodeInbound::NodeHeartbeat(h) => {
                self.app.metrics.message_in(KIND, "node_heartbeat");
                self.on_heartbeat(*h).await
            }
            NodeInbound::NodeError(e) => {
                self.app.metrics.message_in(KIND, "node_error");
                let code = if e.code.is_empty() {
                    "UNKNOWN".to_string()
                } else {
                    e.code.clone()
                };
                let node = self.reg.as_ref().map(|r| r.node_id.as_str()).unwrap_or("-");
                // Bounded and escaped: a node's words must not flood the log or forge lines.
                let (logged_code, message) =
                    crate::protocol::bounds::node_error_text(&code, &e.message);
                if let Some(held) = self.error_log.take() {
                    tracing::warn!(node_id = node, code = %logged_code.escape_debug(),
                        node_message = %message.escape_debug(), held_back = held, "node_error");
                }
                let detail = crate::telemetry::metrics::Detail {
                    detail: crate::telemetry::metrics::known_code(&code)
                        .to_string()
                        .into(),
                };
                self.app.metrics.node_errors.get_or_create(&detail).inc();
            }
            NodeInbound::JobAck(a) => {
                self.app.metrics.message_in(KIND, "job_ack");
                self.on_ack(a, false).await
            }
            NodeInbound::JobStarted(a) => {
                self.app.metrics.message_in(KIND, "job_started");
                self.on_ack(a, true).await
            }
            NodeInbound::JobResult(r) => {
                self.app.metrics.message_in(KIND, "job_result");
                self.on_result(*r).await
            }
            NodeInbound::AsrPartial(p) => {
                self.app.metrics.message_in(KIND, "asr_partial");
                self.on_partial(p).await
            }
        }
    }

    async fn on_heartbeat(&mut self, mut h: NodeHeartbeat) {
        let Some(reg) = &self.reg else {
            return self.error(
                ErrorCode::InvalidMessage,
                "node_heartbeat before node_register",
            );
        };
        if let Some(id) = &h.node_id
            && id != &reg.node_id
        {
            self.app.metrics.rejected(KIND, "foreign_node_id");
            return self.error(
                ErrorCode::NodeIdConflict,
                format!("heartbeat for {id} on the connection of {}", reg.node_id),
            );
        }
        // New installed_services are kept (and stored at the next registration) only within
        // the description's bound; the rest of the heartbeat counts either way (refusing it
        // would take a node offline for its description).
        let services = match h.installed_services.take() {
            Some(s) if s != reg.register.installed_services => {
                let mut described = reg.register.clone();
                described.installed_services = s;
                let extra = super::node_register::register_fields(
                    &described,
                    self.app.cfg.node.default_capacity,
                );
                match super::node_register::within_description(&extra) {
                    Ok(()) => Some(described.installed_services),
                    Err(e) => {
                        self.app.metrics.rejected(KIND, "description");
                        self.error(
                            ErrorCode::InvalidMessage,
                            format!("installed_services not kept: {e}"),
                        );
                        None
                    }
                }
            }
            _ => None,
        };
        // Capabilities that fail validation are not applied, and said so; the rest of the
        // heartbeat counts (refusing it would take a live node offline for a service type
        // it cannot state), as with installed_services above.
        let stated = h.language_capabilities.is_some() || h.capability_by_type.is_some();
        let (wanted, stated) = match reg.caps.merged(
            h.language_capabilities.as_ref(),
            h.capability_by_type.as_deref(),
        ) {
            Ok(c) => (c, stated),
            Err(e) => {
                self.app.metrics.rejected(KIND, "capabilities");
                self.error(
                    ErrorCode::InvalidCapabilitySchema,
                    format!("capabilities not changed: {e}"),
                );
                (reg.caps.clone(), false)
            }
        };
        let every = self.app.cfg.node.capability_change_interval_ms;
        let now = std::time::Instant::now();
        let before = self.caps_pace.changed_at();
        let caps = match self.caps_pace.pace(&reg.caps, wanted, stated, every, now) {
            Paced::Apply(c) => c,
            Paced::Held(c) => {
                self.app.metrics.limited(KIND, "capability_change");
                c
            }
        };
        let Some(cell) = self.cell.clone() else {
            return;
        };
        let node_id = reg.node_id.clone();
        let app = self.app.clone();
        let load = load_fields(&h);
        let reply = cell
            .store
            .heartbeat(&node_id, &self.token, &caps, &load, self.cred.fleet())
            .await;
        match routing::delivered(&app, &cell, reply) {
            Ok(HeartbeatReply::Ok { .. }) => {
                if let Some(reg) = &mut self.reg {
                    reg.caps = caps;
                    if let Some(services) = services {
                        reg.register.installed_services = services;
                    }
                }
            }
            Ok(HeartbeatReply::Missing) => {
                // The record is gone (expired or Redis wiped): register again from what this
                // connection knows, keeping the id.
                tracing::info!(node_id = %node_id, "node record missing; re-registering");
                let Some(mut register) = self.reg.as_ref().map(|r| r.register.clone()) else {
                    return;
                };
                if let Some(services) = services {
                    register.installed_services = services;
                }
                if let Some(l) = h.language_capabilities.clone() {
                    register.language_capabilities = Some(l);
                }
                if let Some(s) = h.capability_by_type.clone() {
                    register.capability_by_type = s;
                }
                let extra = super::node_register::register_fields(
                    &register,
                    self.app.cfg.node.default_capacity,
                );
                let outcome = self.register(Some(node_id.clone()), &caps, &extra).await;
                if let Some(Admitted { assign, .. }) = self.accepted(outcome) {
                    self.send(Outbound::Unhold);
                    routing::deliver(&self.app, &cell, assign);
                    self.reg = Some(Registered {
                        node_id,
                        caps,
                        register,
                    })
                }
            }
            // The record went offline meanwhile (a silent spell) and its fleet credential's
            // places were taken: it stays offline, and the connection is closed.
            Ok(HeartbeatReply::Limit { live }) => {
                tracing::warn!(node_id = %node_id, live, "offline node not revived: its fleet credential is full");
                self.refuse(super::node_refusal::Refusal::Limit(live));
            }
            Ok(HeartbeatReply::Stale { .. }) => {
                // The record belongs to the newer connection: `finish` runs no cleanup
                // script for this one (`reg` is gone), so it leaves the local map here.
                app.conns
                    .unbind(Kind::Node, cell.name(), &node_id, &self.token);
                self.superseded();
            }
            Err(e) => {
                self.caps_pace.not_applied(caps, now, before);
                self.store_error(&e)
            }
        }
    }

    /// The socket ended: an orderly close takes the node offline now; a drop after grace.
    async fn finish(&mut self, orderly: bool) {
        let Some(reg) = self.reg.take() else { return };
        let Some(cell) = self.cell.clone() else {
            return;
        };
        let app = &self.app;
        app.conns
            .unbind(Kind::Node, cell.name(), &reg.node_id, &self.token);
        let (grace, reason) = if orderly {
            (0, "closed")
        } else {
            (app.cfg.node.disconnect_grace_ms, "disconnected")
        };
        let out = cell
            .store
            .node_offline(&reg.node_id, &self.token, grace, reason)
            .await;
        match routing::delivered(app, &cell, out) {
            Ok(OfflineReply::Stale) => {
                tracing::debug!(node_id = %reg.node_id, "close of a replaced connection ignored")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(node_id = %reg.node_id, error = %e, "node_offline failed; liveness will expire")
            }
        }
    }
}

/// Load signals a heartbeat carries (only those present).
fn load_fields(h: &NodeHeartbeat) -> Vec<(&'static str, String)> {
    let u = &h.resource_usage;
    let mut out = Vec::new();
    let mut put = |k: &'static str, v: Option<String>| {
        if let Some(v) = v {
            out.push((k, v));
        }
    };
    put("cpu", u.cpu_percent.map(|v| format!("{v:.1}")));
    put("mem", u.mem_percent.map(|v| format!("{v:.1}")));
    put("gpu", u.gpu_percent.map(|v| format!("{v:.1}")));
    put("gpu_mem", u.gpu_mem_percent.map(|v| format!("{v:.1}")));
    put("running_jobs", u.running_jobs.map(|v| v.to_string()));
    put("gpu_queue", u.gpu_queue_length.map(|v| v.to_string()));
    out
}
