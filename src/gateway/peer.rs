//! What every connection shares: its writer, its unique token, the answers it gives, and
//! the loop that reads frames until the socket, the peer or the instance ends it. Node and
//! session connections differ only in their [`Handler`]; adding a third kind of peer is
//! writing one more.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{LocalConn, Outbound, close, socket};
use crate::auth::{Credential, Scope};
use crate::cells::Cell;
use crate::limits::{FrameBucket, KeyedSlot, Verdict};
use crate::protocol::{ErrorCode, ErrorMessage};
use crate::server::{App, ConnGuard};
use crate::store::StoreError;

/// One connection's writer and identity.
pub struct Peer {
    pub app: Arc<App>,
    pub tx: mpsc::Sender<Outbound>,
    /// Unique per socket, ever: the fencing epoch scripts compare.
    pub token: String,
    /// See [`LocalConn::missing`]: the connection's loop calls [`Handler::messages_missing`].
    pub missing: Arc<tokio::sync::Notify>,
}

impl Peer {
    pub fn send(&self, out: Outbound) {
        // A full queue means the peer stopped reading; its liveness will expire.
        let _ = self.tx.try_send(out);
    }

    pub fn send_json<T: serde::Serialize>(&self, msg: &T) {
        match serde_json::to_string(msg) {
            Ok(t) => self.send(Outbound::Text(t)),
            Err(e) => tracing::error!(error = %e, "encode failed"),
        }
    }

    pub fn error(&self, code: ErrorCode, message: impl Into<String>) {
        self.error_about(code, message, None);
    }

    /// An `error` with `details` naming what it is about (e.g. the `utterance_index` of a
    /// refused utterance, which is not a terminal message of that index: none was made).
    pub fn error_about(
        &self,
        code: ErrorCode,
        message: impl Into<String>,
        details: Option<&serde_json::Value>,
    ) {
        let mut e = ErrorMessage::new(code, message);
        e.details = details.cloned();
        self.send(Outbound::Text(e.to_json()));
    }

    /// Redis away, or a change its replicas did not confirm → `SCHEDULER_DEPENDENCY_DOWN`;
    /// anything else → `INTERNAL_ERROR`.
    pub fn store_error(&self, e: &StoreError) {
        self.store_error_about(e, None);
    }

    /// [`Peer::store_error`] with `details` ([`Peer::error_about`]).
    pub fn store_error_about(&self, e: &StoreError, details: Option<&serde_json::Value>) {
        let (code, message) = match e {
            StoreError::Unavailable(_) | StoreError::Ambiguous(_) => (
                ErrorCode::SchedulerDependencyDown,
                "scheduler state store unreachable",
            ),
            // Made on the primary (and its messages sent), but not known to be replicated:
            // a failover now could lose it.
            StoreError::Unreplicated(_) => (
                ErrorCode::SchedulerDependencyDown,
                "scheduler state store did not confirm the change on its replicas",
            ),
            _ => (ErrorCode::InternalError, "internal error"),
        };
        self.error_about(code, message, details);
    }

    /// This connection as an entry of the local connection map, in `cell`.
    pub fn local(&self, cell: &Arc<Cell>) -> LocalConn {
        LocalConn {
            token: self.token.clone(),
            tx: self.tx.clone(),
            cell: cell.clone(),
            missing: self.missing.clone(),
        }
    }
}

/// The protocol side of a connection.
pub trait Handler: Send {
    /// `node` or `session`: metric label.
    const KIND: &'static str;
    /// Close reason when the first message (register / init) does not come in time.
    const HELLO: &'static str;

    fn peer(&self) -> &Peer;
    /// The peer has introduced itself (registered / initialised).
    fn greeted(&self) -> bool;
    /// The handler ended the connection itself (replaced, fenced off).
    fn done(&self) -> bool {
        false
    }
    fn on_text(&mut self, text: &str) -> impl Future<Output = ()> + Send;
    /// What a text frame dropped unread (over the frame rate) is about, as the `details`
    /// of its `RATE_LIMITED`: a session's utterance names its `utterance_index`, so the
    /// client knows which one to send again. A peek, never a validation: None by default.
    fn dropped(&self, _text: &str) -> Option<serde_json::Value> {
        None
    }
    /// An ordered message may be missing: the writer gave up waiting for it and went on
    /// (`session.on_gap = "skip"`), or the connection's full queue refused it: nothing by
    /// default.
    fn messages_missing(&mut self) {}
    /// The socket ended (`orderly`: the peer sent a close frame): run cleanup scripts.
    fn finish(&mut self, orderly: bool) -> impl Future<Output = ()> + Send;
}

/// Accept the upgrade of a connection that needs `scope`: refused with 401/403 (counted
/// by kind and reason) before anything is registered when the credential does not allow
/// it, 503 while draining or when the instance is full, 429 when the credential's tenant
/// holds its most connections here. The handler gets the credential.
pub fn upgrade<H, F>(
    ws: WebSocketUpgrade,
    app: Arc<App>,
    request: (&HeaderMap, &Uri),
    scope: Scope,
    make: F,
) -> Response
where
    H: Handler + 'static,
    F: FnOnce(Peer, Credential) -> H + Send + 'static,
{
    let cred = match app.auth.authorize(request.0, request.1, scope) {
        Ok(c) => c,
        Err(e) => {
            use axum::response::IntoResponse;
            app.metrics.auth_refused(H::KIND, &e);
            tracing::debug!(kind = H::KIND, reason = %e, "upgrade refused");
            return e.into_response();
        }
    };
    if app.is_draining() {
        return super::draining();
    }
    let Some(live) = app.conn_guard() else {
        app.metrics.limited(H::KIND, "connections");
        return super::full();
    };
    let slot = match cred.tenant.as_deref() {
        Some(t) => match app
            .tenant_conns
            .acquire(t, app.cfg.limits.max_connections_per_tenant)
        {
            Some(s) => Some(s),
            None => {
                app.metrics.limited(H::KIND, "tenant_connections");
                return super::tenant_full();
            }
        },
        None => None,
    };
    let (max, buf) = (app.cfg.ws.max_frame_bytes, app.cfg.ws.buffer_bytes);
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(buf)
        .write_buffer_size(buf)
        .on_upgrade(move |socket| drive(app, (live, slot), socket, |p| make(p, cred)))
}

/// The inbound frame limit of a connection of this kind (`[limits]`).
fn frame_bucket(app: &App, kind: &str) -> FrameBucket {
    let l = &app.cfg.limits;
    let (rate, burst) = match kind {
        "node" => (l.node_frames_per_sec, l.node_frame_burst),
        _ => (l.session_frames_per_sec, l.session_frame_burst),
    };
    FrameBucket::new(rate, burst, l.rate_limit_strikes, std::time::Instant::now())
}

/// How long a connection closed by a drain keeps reading while it waits for the peer's
/// close echo (a peer that never echoes is not waited for longer).
const CLOSE_ECHO_WAIT: Duration = Duration::from_secs(1);

/// Read frames until the socket closes, the handler is done, the hello times out or the
/// instance shuts down (1012) — or crashes (`abort`: no cleanup at all, like kill -9).
async fn drive<H: Handler, F: FnOnce(Peer) -> H>(
    app: Arc<App>,
    _live: (ConnGuard, Option<KeyedSlot>),
    ws: WebSocket,
    make: F,
) {
    let mut bucket = frame_bucket(&app, H::KIND);
    // (counted down when this task ends, however it ends: a handler that panicked left the
    // gauge one too high for good)
    let gauge = Counted::up(app.metrics.connection_gauge(H::KIND));
    let write_timeout = Some(app.cfg.ws.write_timeout_ms)
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
    let gap = app.gap(H::KIND);
    let missing = gap.missing.clone();
    let (tx, mut stream, mut writer) = socket::split(ws, app.cfg.ws.send_queue, gap, write_timeout);
    let mut writer_done = false;
    let mut shutdown = app.shutdown_signal();
    let mut h = make(Peer {
        app: app.clone(),
        tx,
        token: app.next_conn_token(),
        missing: missing.clone(),
    });
    let hello = tokio::time::Instant::now() + Duration::from_millis(app.cfg.ws.hello_timeout_ms);
    let mut orderly = false;
    // Pings find a peer that vanished without a close; anything it sends proves it lives.
    let (ping_every, idle) = (app.cfg.ws.ping_interval_ms, app.cfg.ws.idle_timeout_ms);
    let period = Duration::from_millis(ping_every.max(1));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    // Pings sent and not answered yet (at most 2 counted): a pong answering one is exempt
    // from the frame rate; an unsolicited one is a frame like any other (a pong flood ran
    // an instance's one thread at 100 % unlimited; resource audit).
    let mut pings_owed: u8 = 0;
    // Set when a drain closed the socket with 1012: until the peer's echo (or this
    // deadline) frames it had already sent — a node's `job_result` — are still handled.
    let mut closing: Option<tokio::time::Instant> = None;
    while !h.done() {
        let next = tokio::select! {
            n = stream.next() => n,
            _ = async { tokio::time::sleep_until(closing.unwrap_or_else(tokio::time::Instant::now)).await },
                if closing.is_some() => break,
            _ = ping.tick(), if ping_every > 0 && closing.is_none() => {
                if idle > 0 && last_heard.elapsed() > Duration::from_millis(idle) {
                    app.metrics.rejected(H::KIND, "idle");
                    h.peer().send(Outbound::Close(close::IDLE, "no traffic".into()));
                    break;
                }
                h.peer().send(Outbound::Ping);
                pings_owed = (pings_owed + 1).min(2);
                continue;
            }
            // The writer ends after sending a close (from any task: replaced, liveness,
            // presence lapse) or when the socket fails: stop reading too, without
            // waiting for the peer's echo. Not an orderly end of the peer.
            end = &mut writer, if !writer_done => {
                writer_done = true;
                if matches!(end, Ok(socket::WriterEnd::WriteTimeout)) {
                    // The peer stopped reading: nothing more can reach it.
                    app.metrics.limited(H::KIND, "write_timeout");
                    tracing::info!(kind = H::KIND, "socket write timed out; connection closed");
                }
                if closing.is_some() {
                    continue;
                }
                break;
            }
            _ = missing.notified() => {
                h.messages_missing();
                continue;
            }
            _ = tokio::time::sleep_until(hello), if !h.greeted() => {
                h.peer().send(Outbound::Close(close::POLICY, H::HELLO.into()));
                break;
            }
            _ = shutdown.changed(), if closing.is_none() => {
                if app.has_crashed() {
                    writer.abort();
                    drop(gauge);
                    return;
                }
                h.peer().send(Outbound::Close(close::RESTARTING, "scheduler restarting".into()));
                // A graceful drain finishes what is in flight: a result the node wrote
                // before it saw our close would otherwise be lost (the job would wait for
                // its run timeout). The peer's close echo ends the loop as usual.
                closing = Some(tokio::time::Instant::now() + CLOSE_ECHO_WAIT);
                continue;
            }
        };
        last_heard = tokio::time::Instant::now();
        let answer = matches!(&next, Some(Ok(Message::Pong(_)))) && pings_owed > 0;
        if answer {
            pings_owed -= 1;
        }
        if let Some(Ok(m)) = &next
            && !matches!(m, Message::Close(_))
            && !answer
        {
            match bucket.take(std::time::Instant::now()) {
                Verdict::Allow => {}
                Verdict::Limited => {
                    app.metrics.limited(H::KIND, "rate");
                    let about = match m {
                        Message::Text(t) => h.dropped(t.as_str()),
                        _ => None,
                    };
                    h.peer().error_about(
                        ErrorCode::RateLimited,
                        "too many frames: this one was dropped; slow down",
                        about.as_ref(),
                    );
                    continue;
                }
                Verdict::Close => {
                    app.metrics.limited(H::KIND, "rate_close");
                    h.peer()
                        .send(Outbound::Close(close::POLICY, "rate limit exceeded".into()));
                    break;
                }
            }
        }
        match next {
            None => break,
            Some(Err(e)) => {
                if socket::is_too_big(&e) {
                    app.metrics.rejected(H::KIND, "oversized");
                    h.peer()
                        .send(Outbound::Close(close::TOO_BIG, "frame too large".into()));
                } else if socket::is_bad_utf8(&e) {
                    app.metrics.rejected(H::KIND, "invalid_utf8");
                    h.peer().send(Outbound::Close(
                        close::INVALID_PAYLOAD,
                        "text frame is not UTF-8".into(),
                    ));
                }
                break;
            }
            Some(Ok(Message::Text(text))) => h.on_text(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                app.metrics.rejected(H::KIND, "binary");
                h.peer().error(
                    ErrorCode::InvalidMessage,
                    "binary frames are not used; send JSON text",
                );
            }
            Some(Ok(Message::Close(frame))) => {
                // The peer closing on its own is orderly; its echo of a close we sent
                // (restart, replaced, liveness, policy, too big) is not: it will reconnect.
                let ours = [
                    close::IDLE,
                    close::RESTARTING,
                    close::REPLACED,
                    close::LIVENESS,
                    close::POLICY,
                    close::TOO_BIG,
                    close::INVALID_PAYLOAD,
                ];
                orderly = !frame.is_some_and(|f| ours.contains(&f.code));
                break;
            }
            Some(Ok(_)) => {} // ping/pong: answered by the library
        }
    }
    h.finish(orderly).await;
    drop(h);
    if !writer_done
        && tokio::time::timeout(WRITER_WAIT, &mut writer)
            .await
            .is_err()
    {
        // Still blocked on a socket the peer stopped reading (zero window): dropped, the
        // task would hold the socket for ever, counted by no limit. Aborting it drops
        // its half of the socket; the read half goes below.
        tracing::debug!(
            kind = H::KIND,
            "writer still busy after the read side ended: aborted"
        );
        writer.abort();
        let _ = writer.await;
    }
    // Both halves gone: the socket is closed before the connection's slots are released.
    drop(stream);
    drop(gauge);
}

/// A gauge counted up for as long as this value lives.
struct Counted(prometheus_client::metrics::gauge::Gauge);

impl Counted {
    fn up(g: prometheus_client::metrics::gauge::Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How long a connection whose read side ended waits for its writer to send what is
/// queued (and a close frame) before the writer is aborted and the socket closed.
const WRITER_WAIT: Duration = Duration::from_secs(2);
