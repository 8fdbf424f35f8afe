//! `/ws/session`: one client session, from `session_init` to close.
//!
//! The connection keeps only its session id and connection token; languages, cursors and
//! the audio buffer live in Redis, so any instance can cut, dispatch and deliver for it.
//!
//! A script call of the session's own that may release its terminal messages (`submit`,
//! `audio_append`, `session_close`) and whose reply was lost ([`StoreError::Ambiguous`]: it
//! may have committed) or did not decode ([`StoreError::Reply`]: it did;
//! [`StoreError::may_have_committed`]) left what the reply carried in the session's result
//! log only. With `session.on_gap = "skip"` (the default, clients that never resume) the
//! instance reads it back once Redis answers and writes what the connection has not written
//! (`recover`); with `"resume"` the connection closes with 1012 after the error and the
//! client's resume resends it. Without either, a lost last result would never show up as a
//! gap (DESIGN §1.5).

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use serde_json::{Value, json};
use tracing::Instrument;

use super::peer::{self, Handler, Peer};
use super::{Kind, Outbound, close, recover};
use crate::auth::{Credential, Scope};
use crate::capabilities::{RouteRequest, route};
use crate::cells::Cell;
use crate::config::OnGap;
use crate::protocol::session::{JobSpec, SessionInbound, Utterance, stream_ms, unsupported};
use crate::protocol::{DecodeError, ErrorCode, base64, bounds, decode, now_ms};
use crate::routing;
use crate::server::App;
use crate::store::StoreError;
use crate::store::sessions::{NewJob, SessionReply, Touch};

const KIND: &str = "session";

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    peer::upgrade(ws, app, (&headers, &uri), Scope::Session, |peer, cred| {
        SessionConn {
            peer,
            cred,
            session: None,
            trace_id: None,
            chunks: 0,
        }
    })
}

pub(super) struct SessionConn {
    pub(super) peer: Peer,
    /// What the upgrade proved: the tenant of this connection's session, its subject.
    pub(super) cred: Credential,
    /// Set by session_init: the session this connection serves (shared: each message
    /// takes it without copying its strings).
    pub(super) session: Option<Arc<Opened>>,
    /// The session's trace id (client's or minted), parent of spans without their own.
    pub(super) trace_id: Option<String>,
    /// `audio_chunk`s sent to `audio_append` so far: each call carries its number, so a
    /// call the cluster client resends is not appended twice (messages are handled one at
    /// a time, in order).
    pub(super) chunks: u64,
}

/// The session a connection serves: its id, tenant and cell.
#[derive(Clone)]
pub(super) struct Opened {
    pub(super) id: String,
    pub(super) tenant: Option<String>,
    pub(super) cell: Arc<Cell>,
}

impl std::ops::Deref for SessionConn {
    type Target = Peer;
    fn deref(&self) -> &Peer {
        &self.peer
    }
}

impl Handler for SessionConn {
    const KIND: &'static str = KIND;
    const HELLO: &'static str = "session_init expected";

    fn peer(&self) -> &Peer {
        &self.peer
    }

    fn greeted(&self) -> bool {
        self.session.is_some()
    }

    async fn on_text(&mut self, text: &str) {
        self.on_text(text).await
    }

    /// A terminal message the connection's full queue refused
    /// (`switchyard_deliveries_total{detail="full"}`: a slow reader), or one the writer
    /// gave up waiting for: no lost reply starts its recovery, and nothing else would write
    /// it. Read the log back: what was not written is written once, late
    /// (`Outbound::Recovered`).
    fn messages_missing(&mut self) {
        if let Some(s) = &self.session {
            recover::missing(&self.app, &s.id, self.local(&s.cell));
        }
    }

    fn dropped(&self, text: &str) -> Option<Value> {
        crate::protocol::session::utterance_index_of(text).map(|i| json!({"utterance_index": i}))
    }

    async fn finish(&mut self, _orderly: bool) {
        if let Some(s) = &self.session {
            // The session stays in Redis (results keep arriving in its log) until it expires.
            let cell = s.cell.name();
            self.app
                .conns
                .unbind(Kind::Session, cell, &s.id, &self.token);
        }
    }
}

impl SessionConn {
    /// Map a reply about an existing session that is not a success to its error.
    fn session_problem(&self, r: &SessionReply, about: Option<&Value>) -> bool {
        match r {
            SessionReply::Missing => self.error_about(
                ErrorCode::InvalidSession,
                "unknown or expired session",
                about,
            ),
            SessionReply::Stale => self.error_about(
                ErrorCode::InvalidSession,
                "session is owned by another connection",
                about,
            ),
            SessionReply::Closed => {
                self.error_about(ErrorCode::SessionClosed, "session is closed", about)
            }
            SessionReply::Full => {
                self.app.metrics.limited(KIND, "audio_buffer_full");
                self.error_about(
                    ErrorCode::RateLimited,
                    "audio_chunk not kept: the session's audio buffer is full while its utterances \
                 wait session.max_index_ahead past delivery",
                    about,
                )
            }
            _ => return false,
        }
        true
    }

    /// A failed call that may have released this session's messages: answered like any
    /// store error, then, when its reply was lost, what it released is recovered from the
    /// result log (`skip`) or the connection closes so it resumes (`resume`).
    fn delivery_failed(&self, e: &StoreError, about: Option<&Value>) {
        self.store_error_about(e, about);
        if !e.may_have_committed() {
            return;
        }
        match (&self.app.cfg.session.on_gap, &self.session) {
            (OnGap::Resume, _) => {
                self.app.metrics.delivery(KIND, "ambiguous_resume");
                tracing::warn!(error = %e, "session call lost its reply; closing with 1012 so the client resumes");
                self.send(Outbound::Close(
                    close::RESTARTING,
                    close::RESUME_REASON.into(),
                ));
            }
            (OnGap::Skip, Some(s)) => {
                tracing::info!(error = %e, "session call lost its reply; recovering its results from the log");
                recover::session(&self.app, &s.id, self.local(&s.cell));
            }
            (OnGap::Skip, None) => {}
        }
    }

    async fn on_text(&mut self, text: &str) {
        let msg = match decode::<SessionInbound>(text) {
            Ok(m) => m,
            Err(DecodeError::UnknownType(t)) if unsupported(&t) => {
                self.app.metrics.rejected(KIND, "unsupported");
                return self.error(
                    ErrorCode::UnsupportedFeature,
                    format!("{t} is not supported by this scheduler"),
                );
            }
            Err(e) => {
                self.app.metrics.rejected(KIND, "invalid");
                return self.error(ErrorCode::InvalidMessage, e.to_string());
            }
        };
        let span = self.message_span(&msg);
        self.handle(msg).instrument(span).await
    }

    /// A span for one inbound message: `session.<type>`, with the ids operators search by;
    /// its trace id is the client's trace_id when that is a valid W3C trace id.
    fn message_span(&self, msg: &SessionInbound<'_>) -> tracing::Span {
        let (trace_id, index) = match msg {
            SessionInbound::SessionInit(i) => (i.trace_id.as_deref(), None),
            SessionInbound::Utterance(u) => (u.trace_id.as_deref(), Some(u.utterance_index)),
            _ => (None, None),
        };
        let trace_id = trace_id
            .filter(|t| !t.is_empty())
            .or(self.trace_id.as_deref())
            .unwrap_or_default();
        let sid = self
            .session
            .as_ref()
            .map(|s| s.id.as_str())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "ws.message",
            otel.name = %format_args!("session.{}", msg.kind()),
            session_id = sid,
            trace_id = crate::protocol::field_id(trace_id),
            utterance_index = tracing::field::Empty,
        );
        if let Some(i) = index {
            span.record("utterance_index", i);
        }
        // A span no subscriber records (no OTLP export) needs no parent: not built per message
        // (`is_disabled`: a span the filter turned off is not `is_none`, it keeps its metadata).
        if !span.is_disabled() {
            crate::telemetry::adopt(&span, crate::telemetry::parent_from_trace_id(trace_id));
        }
        span
    }

    async fn handle(&mut self, msg: SessionInbound<'_>) {
        if let SessionInbound::SessionInit(init) = msg {
            self.app.metrics.message_in(KIND, "session_init");
            return self.on_init(*init).await;
        }
        // Every refusal of an utterance names it in `details` (not as a terminal message of
        // the index: no job was made, the client may send it again).
        let about = match &msg {
            SessionInbound::Utterance(u) => Some(json!({"utterance_index": u.utterance_index})),
            _ => None,
        };
        let about = about.as_ref();
        let Some(opened) = self.session.clone() else {
            return self.error_about(ErrorCode::InvalidSession, "send session_init first", about);
        };
        let (sid, tenant, cell) = (opened.id.as_str(), opened.tenant.as_deref(), &*opened.cell);
        if msg.session_id().is_some_and(|s| s != sid) {
            self.app.metrics.rejected(KIND, "foreign_session");
            return self.error_about(
                ErrorCode::InvalidSession,
                format!("this connection serves session {sid}"),
                about,
            );
        }
        let app = self.app.clone();
        // Only an audio_append (a cut) releases terminal messages of the calls below.
        let delivers = matches!(msg, SessionInbound::AudioChunk(_));
        let result = match msg {
            SessionInbound::SessionInit(_) => return,
            SessionInbound::AudioChunk(c) => {
                app.metrics.message_in(KIND, "audio_chunk");
                let Ok(bytes) = base64::decode(c.payload.as_bytes()) else {
                    app.metrics.rejected(KIND, "invalid");
                    return self.error(
                        ErrorCode::InvalidMessage,
                        "audio_chunk payload is not base64",
                    );
                };
                let ms = stream_ms(&bytes);
                // (a time past 2^53 ms is none: the script takes whole numbers up to it)
                let client_ts = c.client_timestamp_ms.filter(|t| *t <= 1 << 53);
                self.chunks += 1;
                let seq = self.chunks;
                cell.store
                    .audio_append(sid, &self.token, &bytes, c.is_final, ms, client_ts, seq)
                    .await
            }
            SessionInbound::Utterance(u) => {
                app.metrics.message_in(KIND, "utterance");
                return self.on_utterance(cell, sid, tenant, *u, about).await;
            }
            SessionInbound::ClientHeartbeat(_) => {
                app.metrics.message_in(KIND, "client_heartbeat");
                let r = cell
                    .store
                    .session_touch(sid, &self.token, Touch::Heartbeat)
                    .await;
                if let Ok(out) = &r
                    && matches!(out.reply, SessionReply::Ok { .. })
                {
                    self.send_json(&json!({"type": "server_heartbeat", "session_id": sid, "timestamp": now_ms()}));
                }
                r
            }
            SessionInbound::TtsStarted(_) => {
                app.metrics.message_in(KIND, "tts_started");
                cell.store
                    .session_touch(sid, &self.token, Touch::TtsStarted)
                    .await
            }
            SessionInbound::TtsPlayEnded(m) => {
                app.metrics.message_in(KIND, "tts_play_ended");
                let group_id = m.group_id.as_deref().unwrap_or_default();
                cell.store
                    .session_touch(sid, &self.token, Touch::TtsPlayEnded { group_id })
                    .await
            }
            SessionInbound::SessionClose(_) => {
                app.metrics.message_in(KIND, "session_close");
                let r = cell.store.session_close(sid, &self.token).await;
                match routing::delivered(&app, cell, r) {
                    Ok(reply) => {
                        if !self.session_problem(&reply, None) {
                            self.send_json(
                                &json!({"type": "session_close_ack", "session_id": sid}),
                            );
                        }
                    }
                    Err(e) => self.delivery_failed(&e, None),
                }
                return;
            }
        };
        match routing::delivered(&app, cell, result) {
            Ok(reply) => {
                self.session_problem(&reply, None);
            }
            Err(e) if delivers => self.delivery_failed(&e, None),
            Err(e) => self.store_error(&e),
        }
    }

    /// `about`: the `details` each refusal of it carries (its `utterance_index`).
    async fn on_utterance(
        &mut self,
        cell: &Cell,
        sid: &str,
        tenant: Option<&str>,
        u: Utterance<'_>,
        about: Option<&Value>,
    ) {
        if let Err(e) = bounds::utterance(&u) {
            self.app.metrics.rejected(KIND, "invalid");
            return self.error_about(ErrorCode::InvalidMessage, e, about);
        }
        let Ok(audio) = base64::decode(u.audio.as_bytes()) else {
            self.app.metrics.rejected(KIND, "invalid");
            return self.error_about(
                ErrorCode::InvalidMessage,
                "utterance audio is not base64",
                about,
            );
        };
        let pipeline = u.pipeline.unwrap_or_default();
        let two_way = u.options.mode.as_deref() == Some("two_way_auto");
        let strict =
            tenant.is_some_and(|t| self.app.cfg.jobs.strict_tenants.iter().any(|s| s == t));
        let r = match route(&RouteRequest {
            tenant,
            strict,
            two_way,
            src: &u.src_lang,
            tgt: &u.tgt_lang,
            lang_a: u.options.lang_a.as_deref(),
            lang_b: u.options.lang_b.as_deref(),
            pipeline,
        }) {
            Ok(r) => r,
            Err(e) => return self.error_about(ErrorCode::InvalidMessage, e, about),
        };
        let format = u.audio_format.as_deref().unwrap_or("opus");
        let spec = JobSpec {
            src_lang: &u.src_lang,
            tgt_lang: &u.tgt_lang,
            pipeline,
            audio_format: format,
            sample_rate: u.sample_rate.unwrap_or(16_000),
            options: &u.options,
        }
        .to_sorted_json(u.manual_cut);
        // The message span took the session's trace id when the utterance has none: so does the job.
        let trace_id = u
            .trace_id
            .clone()
            .filter(|t| !t.is_empty())
            .or_else(|| self.trace_id.clone())
            .unwrap_or_else(new_trace_id);
        let job = NewJob {
            index: u.utterance_index,
            spec: &spec,
            audio: &audio,
            pools: &r.pools,
            needs: &r.needs,
            pair: &r.pair,
            trace_id: &trace_id,
        };
        let app = self.app.clone();
        let out = cell.store.submit(sid, &self.token, &job).await;
        // A node connected here gets the client's base64 text as it came.
        let known = routing::Known {
            audio: Some(&u.audio),
            ..Default::default()
        };
        match routing::delivered_with(&app, cell, out, known) {
            Ok(SessionReply::Settled) => self.error_about(
                ErrorCode::InvalidMessage,
                format!(
                    "utterance_index {} already has its outcome",
                    u.utterance_index
                ),
                about,
            ),
            Ok(SessionReply::TooFar) => self.error_about(
                ErrorCode::InvalidMessage,
                format!("utterance_index {} is too far ahead", u.utterance_index),
                about,
            ),
            Ok(other) => {
                self.session_problem(&other, about);
            }
            Err(e) => self.delivery_failed(&e, about),
        }
    }
}

/// A W3C-style trace id (32 lowercase hex) for requests that bring none.
pub(super) fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
