//! Job messages from a node: `job_ack` / `job_started`, `job_result`, `asr_partial`.
//! Each is one fenced script call (the job's current attempt, on the node it was given to,
//! from that node's current connection); anything stale is counted, answered with an
//! `error`, and changes nothing.
//!
//! A `job_result` whose reply was lost ([`crate::store::StoreError::Ambiguous`]) may have
//! committed (one whose reply did not decode, [`crate::store::StoreError::Reply`], has),
//! and its reply carried the `translation_result` for a session on this instance. With `session.on_gap = "skip"` (clients that never resume) the instance puts
//! it back from the session's result log once Redis answers (`recover`): the session is
//! the one the node's message names (a lingua node echoes the `session_id` of its
//! `job_assign`), else the one the job record names. With `"resume"`, a session named and
//! connected here is closed with 1012, unless the job id is of another lifetime of that
//! session id (`store::jobs::of_lifetime`), and its resume resends the result from the log (a
//! node that names no session, or another's — the worst it can do is make a session
//! resume — leaves it to the session writer's gap check when a later result follows, and
//! to the client's own resume when none does).

use std::sync::Arc;

use super::node::NodeConn;
use super::recover;
use super::{Kind, Outbound, close};
use crate::cells::Cell;
use crate::config::OnGap;
use crate::protocol::bounds::{failure_code, failure_message, partial_text};
use crate::protocol::node::{AsrPartial, JobAck, JobResult};
use crate::protocol::{ErrorCode, valid_id};
use crate::routing;
use crate::store::jobs::{Attempt, FencedReply, Finished, Outcome, of_lifetime, result_body};

const KIND: &str = "node";

impl NodeConn {
    /// The registered node id and its cell for a message about `job_id`, or an error to the
    /// node: job messages need a registration, and a job id as the scheduler makes them
    /// (`valid_id`). It becomes part of Redis keys (`job:<id>`, the staged body's key): a
    /// made-up one such as `<id>:audio` would name a key of another type.
    fn node_id(&self, job_id: &str) -> Option<(String, Arc<Cell>)> {
        if !valid_id(job_id) {
            self.app.metrics.rejected(KIND, "invalid");
            self.error(
                ErrorCode::InvalidMessage,
                "job_id must be 1-64 of [A-Za-z0-9_.-] (the id of its job_assign)",
            );
            return None;
        }
        let id = self.reg.as_ref().map(|r| r.node_id.clone());
        match (id, &self.cell) {
            (Some(id), Some(cell)) => Some((id, cell.clone())),
            _ => {
                self.error(ErrorCode::InvalidMessage, "register first (node_register)");
                None
            }
        }
    }

    /// A fenced-off message: counted, reported to the node, nothing changed.
    fn stale(&self, what: &str, job_id: &str, reason: &str) {
        self.app.metrics.stale(KIND);
        if let Some(held) = self.error_log.take() {
            tracing::info!(
                job_id,
                reason,
                what,
                held_back = held,
                "stale message rejected"
            );
        }
        self.error(
            ErrorCode::InvalidMessage,
            format!("{what} for {job_id} rejected: {reason}"),
        );
    }

    pub(super) async fn on_ack(&mut self, a: JobAck, started: bool) {
        let Some((node_id, cell)) = self.node_id(&a.job_id) else {
            return;
        };
        let attempt = Attempt {
            job_id: &a.job_id,
            attempt_id: a.attempt_id,
            node_id: &node_id,
            conn: &self.token,
        };
        let r = cell.store.job_ack(&attempt, started).await;
        match routing::delivered(&self.app, &cell, r) {
            Ok(FencedReply::Stale { reason }) => self.stale(
                if started { "job_started" } else { "job_ack" },
                &a.job_id,
                &reason,
            ),
            Ok(FencedReply::Ok { .. }) => {}
            Err(e) => self.store_error(&e),
        }
    }

    pub(super) async fn on_result(&mut self, r: JobResult) {
        let Some((node_id, cell)) = self.node_id(&r.job_id) else {
            return;
        };
        let outcome = match (&r.success, &r.error) {
            (true, _) => {
                let b = &r.body;
                Outcome::Ok(Finished {
                    message: &b.message,
                    text_asr: &b.text_asr,
                    text_translated: &b.text_translated,
                    node_completed_at_ms: b.node_completed_at_ms,
                    processing_time_ms: b.processing_time_ms,
                })
            }
            (false, Some(e)) if e.code == "MODEL_NOT_AVAILABLE" => Outcome::ModelNotAvailable {
                service: self.service_type(e.details.as_ref()),
                message: failure_message(&e.message),
            },
            (false, e) => Outcome::Error {
                code: failure_code(e.as_ref().map(|e| e.code.as_str())),
                message: failure_message(
                    e.as_ref()
                        .map(|e| e.message.as_str())
                        .unwrap_or("the node reported a failure"),
                ),
            },
        };
        let attempt = Attempt {
            job_id: &r.job_id,
            attempt_id: r.attempt_id,
            node_id: &node_id,
            conn: &self.token,
        };
        // A staged body is not sent back: the session's message is joined here.
        let known = routing::Known {
            body: Some(result_body(&r.body.message)),
            ..Default::default()
        };
        let out = cell.store.job_result(&attempt, &outcome).await;
        match routing::delivered_with(&self.app, &cell, out, known) {
            Ok(FencedReply::Stale { reason }) => self.stale("job_result", &r.job_id, &reason),
            Ok(FencedReply::Ok { .. }) => {}
            Err(e) => {
                self.store_error(&e);
                if e.may_have_committed() {
                    let named = r.session_id.as_deref();
                    match self.app.cfg.session.on_gap {
                        OnGap::Resume => self.resume_named_session(&cell, named, &r.job_id),
                        OnGap::Skip => recover::job_session(&self.app, &cell, &r.job_id, named),
                    }
                }
            }
        }
    }

    /// Close the session `sid` (named by the node's lost `job_result`) with 1012 if it is
    /// connected here, so that its resume resends what the lost reply carried. Not when
    /// the job is of another lifetime of that session id: the script delivers it no result
    /// (`job_session`), and the session has nothing to resume for.
    fn resume_named_session(&self, cell: &Cell, sid: Option<&str>, job_id: &str) {
        let Some(sid) = sid.filter(|s| !s.is_empty()) else {
            return;
        };
        let lifetime = self.app.conns.session_lifetime(cell.name(), sid);
        if lifetime.is_some_and(|n| !of_lifetime(job_id, &n)) {
            self.app
                .metrics
                .delivery("session", "ambiguous_other_lifetime");
            return;
        }
        if let Some(c) = self.app.conns.get(Kind::Session, cell.name(), sid, None) {
            self.app.metrics.delivery("session", "ambiguous_resume");
            tracing::warn!(
                session_id = sid,
                "job_result lost its reply; closing the session with 1012 so it resumes"
            );
            let close = Outbound::Close(close::RESTARTING, close::RESUME_REASON.into());
            let _ = c.tx.try_send(close);
        }
    }

    /// The service type a MODEL_NOT_AVAILABLE names: from the node's installed_services
    /// (service_id → type), else guessed from the id; one of [`SERVICE_TYPES`], or none.
    /// Bounded: the script marks `down:<type>` on the node record, and a node's own
    /// strings must not grow it (DESIGN §1.7).
    fn service_type(&self, details: Option<&serde_json::Value>) -> Option<&'static str> {
        let id = details
            .and_then(|d| d.get("service_id"))
            .and_then(|v| v.as_str())
            .unwrap_or("nmt");
        let installed = self
            .reg
            .as_ref()
            .map(|r| r.register.installed_services.as_slice())
            .unwrap_or_default();
        let named = installed
            .iter()
            .find(|s| s.get("service_id").and_then(|v| v.as_str()) == Some(id))
            .and_then(|s| s.get("type").and_then(|v| v.as_str()));
        named
            .and_then(|t| {
                SERVICE_TYPES
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(t))
                    .copied()
            })
            .or_else(|| guess_service_type(id))
    }

    pub(super) async fn on_partial(&mut self, p: AsrPartial) {
        let Some((node_id, cell)) = self.node_id(&p.job_id) else {
            return;
        };
        let out = cell
            .store
            .job_partial(
                &p.job_id,
                &node_id,
                &self.token,
                partial_text(&p.text),
                p.is_final,
            )
            .await;
        match routing::delivered(&self.app, &cell, out) {
            // best-effort: no error reply for partials
            Ok(FencedReply::Stale { .. }) => self.app.metrics.stale(KIND),
            Ok(FencedReply::Ok { .. }) => {}
            Err(e) => self.store_error(&e),
        }
    }
}

/// The service types a node's `down:<type>` marks may name.
const SERVICE_TYPES: [&str; 7] = [
    "asr",
    "nmt",
    "tts",
    "semantic",
    "tone",
    "phonetic",
    "punctuation",
];

/// The service type a MODEL_NOT_AVAILABLE `service_id` names, when the node's
/// installed_services do not say: a type in the id, else a well-known model's name.
fn guess_service_type(id: &str) -> Option<&'static str> {
    let lower = id.to_ascii_lowercase();
    if let Some(t) = SERVICE_TYPES.iter().find(|t| lower.contains(**t)) {
        return Some(t);
    }
    match () {
        _ if lower.contains("whisper") => Some("asr"),
        _ if lower.contains("piper") || lower.contains("vits") => Some("tts"),
        _ if lower.contains("m2m") || lower.contains("nllb") || lower.contains("marian") => {
            Some("nmt")
        }
        _ => None,
    }
}
