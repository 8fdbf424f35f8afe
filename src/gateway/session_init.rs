//! A session's `session_init`: the tenant its credential decides, a new session with its
//! `resume_token` (kept hashed), or the resume of a live one with the token it was given.

use std::sync::Arc;

use super::Outbound;
use super::session::{Opened, SessionConn, new_trace_id};
use super::{Accepted, Kind, close};
use crate::capabilities::{RouteRequest, route};
use crate::protocol::session::{JobSpec, Pipeline, SessionInit};
use crate::protocol::{ErrorCode, bounds, valid_id};
use crate::routing;
use crate::store::StoreError;
use crate::store::instances::ResumeReply;
use crate::store::sessions::{OpenReply, SessionReply};
use serde_json::json;

const KIND: &str = "session";

impl SessionConn {
    pub(super) async fn on_init(&mut self, init: SessionInit) {
        if self.session.is_some() {
            return self.error(
                ErrorCode::InvalidMessage,
                "session already initialised on this connection",
            );
        }
        if let Err(e) = bounds::session_init(&init) {
            self.app.metrics.rejected(KIND, "invalid");
            return self.error(ErrorCode::InvalidMessage, e);
        }
        let tenant = match self.cred.tenant_for(init.tenant_id.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                self.app.metrics.rejected(KIND, "unauthorized");
                return self.error(ErrorCode::Unauthorized, e);
            }
        };
        if let Some(t) = &tenant
            && !valid_id(t)
        {
            return self.error(
                ErrorCode::InvalidMessage,
                "tenant_id must be 1-64 of [A-Za-z0-9_.-]",
            );
        }
        let cell = match self
            .app
            .cells
            .resolve(tenant.as_deref(), self.cred.cell.as_deref())
        {
            Ok(c) => c.clone(),
            Err(e) => {
                self.app.metrics.rejected(KIND, "unauthorized");
                return self.error(ErrorCode::Unauthorized, e.to_string());
            }
        };
        let two_way = init.options.mode.as_deref() == Some("two_way_auto");
        let strict = tenant
            .as_ref()
            .is_some_and(|t| self.app.cfg.jobs.strict_tenants.contains(t));
        let pipeline = Pipeline::default();
        let r = match route(&RouteRequest {
            tenant: tenant.as_deref(),
            strict,
            two_way,
            src: &init.src_lang,
            tgt: &init.tgt_lang,
            lang_a: init.options.lang_a.as_deref(),
            lang_b: init.options.lang_b.as_deref(),
            pipeline,
        }) {
            Ok(r) => r,
            Err(e) => return self.error(ErrorCode::InvalidMessage, e),
        };
        let spec = JobSpec {
            src_lang: &init.src_lang,
            tgt_lang: &init.tgt_lang,
            pipeline,
            audio_format: "opus",
            sample_rate: 16_000,
            options: &init.options,
        };
        let spec = serde_json::to_string(&spec).unwrap_or_else(|_| "{}".into());
        let trace_id = init
            .trace_id
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(new_trace_id);
        let fields: Vec<(&'static str, String)> = vec![
            ("src", init.src_lang.clone()),
            ("tgt", init.tgt_lang.clone()),
            (
                "mode",
                init.options
                    .mode
                    .clone()
                    .unwrap_or_else(|| "one_way".into()),
            ),
            ("tenant", tenant.clone().unwrap_or_default()),
            ("pools", r.pools),
            ("needs", r.needs),
            ("pair", r.pair),
            ("spec", spec),
            ("trace_id", trace_id.clone()),
            ("client_version", init.client_version.clone()),
            ("platform", init.platform.clone()),
        ];
        if let Some(rid) = init.resume_session_id.as_deref().filter(|r| !r.is_empty())
            && valid_id(rid)
        {
            let last = init.last_received_index.unwrap_or(-1);
            let Some(proof) = init.resume_token.as_deref().filter(|t| !t.is_empty()) else {
                self.app.metrics.rejected(KIND, "unauthorized");
                return self.error(
                    ErrorCode::Unauthorized,
                    "resume_session_id needs the resume_token of that session's ack",
                );
            };
            let opened = Opened {
                id: rid.to_string(),
                tenant: tenant.clone(),
                cell: cell.clone(),
            };
            match self.resume(opened, last, proof, &trace_id).await {
                Ok(Resumed::Yes) => return,
                Ok(Resumed::Gone) => {} // expired: a new session, resumed = false
                Ok(Resumed::Refused) => {
                    self.app.metrics.rejected(KIND, "unauthorized");
                    return self.error(
                        ErrorCode::Unauthorized,
                        "resume refused: resume_token or tenant does not match the session",
                    );
                }
                Ok(Resumed::Superseded) => {
                    self.app.metrics.stale(KIND);
                    self.error(
                        ErrorCode::InvalidSession,
                        "session is owned by another connection: a later resume took it",
                    );
                    // Closed, as a superseded node connection is: messages of the session
                    // addressed to this connection meanwhile may wait in its writer's
                    // ordering, which a new session on the same socket would inherit.
                    let reason = "a later resume took the session".into();
                    return self.send(Outbound::Close(close::REPLACED, reason));
                }
                Err(e) => return self.store_error(&e),
            }
        }
        let resume_token = new_resume_token();
        let mut fields = fields;
        fields.push(("resume_hash", resume_hash(&resume_token)));
        let nonce = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let app = self.app.clone();
        for _ in 0..8 {
            let sid = format!("s-{:08X}", rand::random::<u32>());
            // A live session of this instance holds the id: taken, without asking Redis.
            if app
                .conns
                .get(Kind::Session, cell.name(), &sid, None)
                .is_some()
            {
                continue;
            }
            // Bind first (pending): results produced the moment the session exists find
            // this socket.
            let me = self.local(&cell);
            app.conns.bind(Kind::Session, &sid, me);
            let refuse = || {
                app.conns
                    .refuse(Kind::Session, cell.name(), &sid, &self.token)
            };
            match cell
                .store
                .session_open(
                    &sid,
                    true,
                    &self.token,
                    &nonce,
                    self.cred.subject().as_deref(),
                    app.cfg.limits.max_sessions_per_subject,
                    &fields,
                )
                .await
            {
                Ok(out) => match routing::deliver(&app, &cell, out) {
                    OpenReply::Taken => refuse(),
                    OpenReply::Limit { live } => {
                        refuse();
                        app.metrics.limited(KIND, "sessions_per_subject");
                        return self.error(
                            ErrorCode::RateLimited,
                            format!(
                                "this credential's subject has {live} live sessions, the most \
                                 allowed: close one (session_close) or resume it"
                            ),
                        );
                    }
                    OpenReply::Ok => {
                        // A new id: no earlier binding to order against (epoch 0; the
                        // first resume commits epoch 1 or above).
                        app.conns.accept(
                            Kind::Session,
                            cell.name(),
                            &sid,
                            &self.token,
                            0,
                            Some(&nonce),
                        );
                        self.session = Some(Arc::new(Opened {
                            id: sid.clone(),
                            tenant,
                            cell,
                        }));
                        self.trace_id = Some(trace_id.clone());
                        self.send_json(&init_ack(&sid, &trace_id, false, &resume_token));
                        self.send(Outbound::ExpectSeq(1));
                        return;
                    }
                },
                Err(e) => {
                    refuse();
                    if e.may_have_committed() || matches!(e, StoreError::Unreplicated(_)) {
                        // The session exists on the primary (or may: a lost reply; or does:
                        // one that did not decode), but the client is told to open again:
                        // close it, so it does not count against its subject's live
                        // sessions until it expires (fenced by this connection's token;
                        // `missing` if the open never ran).
                        // `missing` (or `stale`) may also mean the open has not run yet: a
                        // stalled Redis runs it after this call, on another connection. So
                        // it is asked again, in the background, for a few seconds.
                        let (app, cell, sid, token) =
                            (app.clone(), cell.clone(), sid.clone(), self.token.clone());
                        tokio::spawn(async move {
                            let until = tokio::time::Instant::now() + CLOSE_LOST_FOR;
                            // (backing off: a few calls, not one every 300 ms per client
                            // while Redis recovers)
                            let mut pause = std::time::Duration::from_millis(300);
                            loop {
                                let closed = cell.store.session_close(&sid, &token).await;
                                match routing::delivered(&app, &cell, closed) {
                                    // (closed on the primary, as the open was)
                                    Ok(SessionReply::Ok { .. })
                                    | Err(StoreError::Unreplicated(_)) => return,
                                    Ok(_) | Err(_) if tokio::time::Instant::now() >= until => {
                                        tracing::warn!(session_id = %sid,
                                            "could not close a session whose open's reply was lost");
                                        return;
                                    }
                                    _ => {}
                                }
                                tokio::time::sleep(pause).await;
                                pause *= 2;
                            }
                        });
                    }
                    return self.store_error(&e);
                }
            }
        }
        self.error(ErrorCode::InternalError, "could not mint a free session id");
    }

    /// Reattach session `s` (in the cell of this connection's tenant) to this connection
    /// if `proof` is its resume token.
    async fn resume(
        &mut self,
        s: Opened,
        last: i64,
        proof: &str,
        trace_id: &str,
    ) -> Result<Resumed, StoreError> {
        let app = self.app.clone();
        let (sid, cell) = (s.id.as_str(), s.cell.clone());
        // Bind first (pending): the results the script resends find this socket. A live
        // session held by another local connection keeps its binding, and receives its
        // results, until the script gives the session to this one (`accept`); anything but
        // a resume removes only this connection's binding (`refuse`).
        // Text messages (asr_partial, ui_event) the binding draws wait until the ack has
        // gone out, or until the resume is refused (resume audit: they came first).
        self.send(Outbound::Hold);
        let floor = app.conns.bind(Kind::Session, sid, self.local(&cell));
        let refuse = || {
            app.conns
                .refuse(Kind::Session, cell.name(), sid, &self.token);
            self.send(Outbound::Unhold);
        };
        let hash = resume_hash(proof);
        let out = match cell
            .store
            .session_resume(sid, &self.token, last, &hash, s.tenant.as_deref(), floor)
            .await
        {
            Ok(out) => out,
            Err(e) => {
                refuse();
                return Err(e);
            }
        };
        let (next_seq, epoch, tenant, nonce) = match &out.reply {
            ResumeReply::Ok {
                next_seq,
                resent,
                tenant,
                epoch,
                replaced_conn,
                nonce,
                ..
            } => {
                tracing::info!(
                    session_id = sid,
                    cell = cell.name(),
                    resent,
                    epoch,
                    replaced_conn = replaced_conn.as_deref().unwrap_or(""),
                    "session resumed"
                );
                (*next_seq, *epoch, tenant.clone(), nonce.clone())
            }
            ResumeReply::Refused => {
                // The live session stays with its connection here, if it is here: it
                // never stopped receiving its results.
                refuse();
                return Ok(Resumed::Refused);
            }
            ResumeReply::Missing | ResumeReply::Gap => {
                refuse();
                return Ok(Resumed::Gone);
            }
        };
        // The session moved to this connection: the local connections it replaces leave
        // the map (they are not closed: their next message is answered as stale). Unless a
        // later resume's outcome came first: the session has moved on from this one too.
        let accepted = app.conns.accept(
            Kind::Session,
            cell.name(),
            sid,
            &self.token,
            epoch,
            Some(&nonce),
        );
        if matches!(accepted, Accepted::Superseded) {
            tracing::info!(session_id = sid, epoch, "resume overtaken by a later one");
            self.send(Outbound::Unhold);
            routing::deliver(&app, &cell, out);
            return Ok(Resumed::Superseded);
        }
        // The session's own tenant, not the resuming credential's: a credential without
        // tenant may resume a tenant's session, whose utterances must keep its pools (and
        // its strictness).
        let tenant = Some(tenant).filter(|t| !t.is_empty());
        self.session = Some(Arc::new(Opened {
            tenant,
            ..s.clone()
        }));
        self.trace_id = Some(trace_id.to_string());
        // the ack, then what was held
        self.send(Outbound::First(
            init_ack(sid, trace_id, true, proof).to_string(),
        ));
        // The client has every index up to `last`: a recovery writes none of them again.
        if let Some(first) = last.checked_add(1).and_then(|n| u64::try_from(n).ok()) {
            self.send(Outbound::FirstIndex(first));
        }
        self.send(Outbound::ExpectSeq(next_seq));
        routing::deliver(&app, &cell, out);
        app.metrics.resumes.inc();
        Ok(Resumed::Yes)
    }
}

/// The outcome of a resume attempt.
enum Resumed {
    Yes,
    /// The session expired (or its results were trimmed): a new one is opened.
    Gone,
    /// Wrong resume token or tenant: nothing changed.
    Refused,
    /// Resumed, but a later resume of the session on this instance (whose outcome arrived
    /// first) took it over already.
    Superseded,
}

/// A session's resume secret: 128 random bits, given out once in its ack.
fn new_resume_token() -> String {
    format!("rt-{:032x}", rand::random::<u128>())
}

/// What Redis keeps of a resume token: its SHA-256 (a leaked Redis dump resumes nothing).
fn resume_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `session_init_ack` with every field the lingua web client reads.
fn init_ack(sid: &str, trace_id: &str, resumed: bool, resume_token: &str) -> serde_json::Value {
    json!({
        "type": "session_init_ack",
        "session_id": sid,
        "message": if resumed { "session resumed" } else { "session created" },
        "trace_id": trace_id,
        "protocol_version": "1.0",
        "use_binary_frame": false,
        "negotiated_codec": "opus",
        "negotiated_audio_format": "opus",
        "negotiated_sample_rate": 16000,
        "negotiated_channel_count": 1,
        "resumed": resumed,
        "resume_token": resume_token,
    })
}

/// How long a connection keeps trying to close a session whose open's reply was lost
/// (the open may run after the first try).
const CLOSE_LOST_FOR: std::time::Duration = std::time::Duration::from_secs(5);
