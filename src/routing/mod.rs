//! Delivery of what scripts produce: every message for a connection is addressed to the
//! instance that owns it and to its connection token. Messages for this instance's own
//! sockets come back in the script's reply and are written at once (no Redis hop); the
//! script itself put messages for other instances' sockets into their inbox streams, which
//! [`inbox`] consumes. A message whose socket is gone is dropped, because state keeps it
//! recoverable (results stay in the session's result log, jobs time out and fail over).

pub mod inbox;
pub mod presence;

use std::collections::HashMap;
use std::sync::Mutex;

use crate::cells::Cell;
use crate::gateway::{Kind, Outbound};
use crate::protocol::base64;
use crate::server::App;
use crate::store::{Output, StoreError};

/// Write every delivery of `out` (a script reply of `cell`, all addressed to this instance)
/// and return the reply.
pub fn deliver<T>(app: &App, cell: &Cell, out: Output<T>) -> T {
    deliver_with(app, cell, out, Known::default())
}

/// [`deliver`] the result of a script call: the reply of one that succeeded, and the
/// messages of one whose change is committed on the primary but not known to be
/// replicated (a short `WAIT`, [`StoreError::Unreplicated`]) — the primary is the source
/// of truth until a failover, so they go out all the same, and the error is returned for
/// the caller to answer (`SCHEDULER_DEPENDENCY_DOWN`).
pub fn delivered<T>(
    app: &App,
    cell: &Cell,
    result: Result<Output<T>, StoreError>,
) -> Result<T, StoreError> {
    delivered_with(app, cell, result, Known::default())
}

/// [`delivered`] for a script whose payload the caller holds ([`Known`]).
pub fn delivered_with<T>(
    app: &App,
    cell: &Cell,
    result: Result<Output<T>, StoreError>,
    known: Known,
) -> Result<T, StoreError> {
    match result {
        Ok(out) => Ok(deliver_with(app, cell, out, known)),
        Err(StoreError::Unreplicated(mut u)) => {
            deliver_with(app, cell, std::mem::take(&mut u.output), known);
            Err(StoreError::Unreplicated(u))
        }
        Err(e) => Err(e),
    }
}

/// What the caller of a script sent it and still holds, so the reply need not carry it
/// back (the script marks such a delivery `own` / `town`).
#[derive(Default, Clone, Copy)]
pub struct Known<'a> {
    /// A `submit`'s audio as base64 text (the client's own `audio` of an `utterance`,
    /// canonical because the strict decoder accepted it): a `job_assign` for a node
    /// connected here carries it as it is.
    pub audio: Option<&'a str>,
    /// A `job_result`'s staged body (the translation_result's members and `}`): the
    /// session's message is the script's header followed by it.
    pub body: Option<&'a str>,
}

/// [`deliver`] for the reply of a script whose payload the caller holds ([`Known`]).
pub fn deliver_with<T>(app: &App, cell: &Cell, out: Output<T>, known: Known) -> T {
    let Output {
        reply, out, blobs, ..
    } = out;
    for d in out {
        if d.owner != app.instance_id {
            // Scripts put messages for other instances into their inboxes; never here.
            tracing::error!(owner = %d.owner, "script returned a delivery for another instance");
            continue;
        }
        if d.k == "ui" {
            write_ui_events(app, cell, &d);
            continue;
        }
        let body = if d.town.is_some() {
            known.body
        } else {
            d.t.and_then(|i| blobs.get(i.wrapping_sub(1)))
                .and_then(|b| std::str::from_utf8(b).ok())
        };
        if (d.town.is_some() || d.t.is_some()) && body.is_none() {
            // A bug, not a client's doing: the session resumes it from the result log.
            tracing::error!(session = %d.id, "terminal message without its body: not sent");
            continue;
        }
        let msg = joined(d.msg, body);
        let audio = if d.own.is_some() {
            // The script left the audio out: it is the one the caller sent.
            match known.audio {
                Some(k) => Some(Audio::Base64(k)),
                None => {
                    // A bug, not a client's doing: the job times out and fails over.
                    tracing::error!(job = ?d.job, "job_assign without its audio: not sent");
                    continue;
                }
            }
        } else {
            d.blob
                .and_then(|i| blobs.get(i.wrapping_sub(1)))
                .map(|b| Audio::Raw(b))
        };
        let target = Target {
            kind: &d.k,
            id: &d.id,
            conn: d.conn.as_deref(),
        };
        let trace = Trace {
            tp: d.tp.as_deref(),
            job: d.job.as_deref(),
        };
        write_local(app, cell, &target, msg, audio, d.seq, &trace);
    }
    reply
}

/// The `ui_event`s (status ok) a script named for a session connected here (`k = "ui"`).
fn write_ui_events(app: &App, cell: &Cell, d: &crate::store::Delivery) {
    let target = Target {
        kind: "session",
        id: &d.id,
        conn: d.conn.as_deref(),
    };
    let trace = Trace {
        tp: d.tp.as_deref(),
        job: None,
    };
    let events = d.ev.as_deref().unwrap_or_default().split(',');
    for event in events.filter(|e| !e.is_empty()) {
        let msg = ui_event_json(d, event);
        write_local(app, cell, &target, msg, None, None, &trace);
    }
}

/// `{"type":"ui_event","trace_id":…,"session_id":…,"job_id":…,"utterance_index":…,
/// "event":…,"status":"ok","elapsed_ms":…}`, written into one buffer (strings escaped by
/// serde_json; absent values null).
fn ui_event_json(d: &crate::store::Delivery, event: &str) -> String {
    use std::fmt::Write;
    fn text(out: &mut String, v: Option<&str>) {
        match v {
            // Nothing to escape (ids, trace ids, event names): serde_json would write it
            // quoted as it is, so it is copied without a String of its own.
            Some(s) if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) => {
                out.push('"');
                out.push_str(s);
                out.push('"');
            }
            Some(s) => match serde_json::to_string(s) {
                Ok(j) => out.push_str(&j),
                Err(_) => out.push_str("null"),
            },
            None => out.push_str("null"),
        }
    }
    fn num(out: &mut String, v: Option<u64>) {
        match v {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("null"),
        }
    }
    let mut out = String::with_capacity(256);
    out.push_str(r#"{"type":"ui_event","trace_id":"#);
    text(&mut out, d.tr.as_deref());
    out.push_str(r#","session_id":"#);
    text(&mut out, Some(&d.id));
    out.push_str(r#","job_id":"#);
    text(&mut out, d.job.as_deref());
    out.push_str(r#","utterance_index":"#);
    num(&mut out, d.ix);
    out.push_str(r#","event":"#);
    text(&mut out, Some(event));
    out.push_str(r#","status":"ok","elapsed_ms":"#);
    num(&mut out, d.el);
    out.push('}');
    out
}

/// A terminal message logged in two parts: the script's header, then the node's body.
pub fn joined(mut msg: String, body: Option<&str>) -> String {
    if let Some(b) = body {
        msg.push_str(b);
    }
    msg
}

/// A `job_assign`'s audio: the job's bytes, or their base64 text when it is at hand.
#[derive(Clone, Copy)]
pub enum Audio<'a> {
    Raw(&'a [u8]),
    Base64(&'a str),
}

/// Which connection a message is for.
pub struct Target<'a> {
    pub kind: &'a str,
    pub id: &'a str,
    /// The connection token; only that socket may receive it.
    pub conn: Option<&'a str>,
}

/// The trace context a delivery continues, and the job it concerns.
pub struct Trace<'a> {
    pub tp: Option<&'a str>,
    pub job: Option<&'a str>,
}

/// Write one message to a local connection (from a script reply or the inbox). A
/// `job_assign` (it carries audio) is the `dispatch` span of its utterance's trace, a
/// session's terminal message (it carries a sequence number) the `delivery` span.
pub fn write_local(
    app: &App,
    cell: &Cell,
    to: &Target,
    msg: String,
    audio: Option<Audio>,
    seq: Option<u64>,
    trace: &Trace,
) {
    let Some(kind) = Kind::parse(to.kind) else {
        tracing::error!(kind = to.kind, "delivery to an unknown kind");
        return;
    };
    let seq = seq.filter(|s| *s > 0);
    let span = match (audio.is_some(), seq.is_some()) {
        (true, _) => tracing::info_span!(
            "dispatch",
            node_id = to.id,
            job_id = trace.job.unwrap_or_default()
        ),
        (_, true) => tracing::info_span!("delivery", session_id = to.id),
        _ => tracing::Span::none(),
    };
    // `is_disabled`, not `is_none`: a span the filter turned off still has its metadata, so
    // `is_none` was false for it, and the parent was parsed and built for nothing.
    if !span.is_disabled() {
        crate::telemetry::adopt(&span, trace.tp.and_then(crate::telemetry::parent_from));
        if let (true, Some(job)) = (audio.is_some(), trace.job) {
            app.dispatch_spans.put(job, &span);
        }
    }
    let _entered = span.enter();
    let text = match audio {
        Some(a) => with_audio(&msg, a),
        None => msg,
    };
    let out = match seq {
        Some(s) => Outbound::Ordered(s, text),
        None => Outbound::Text(text),
    };
    let token = to.conn.filter(|c| !c.is_empty());
    let outcome = match app.conns.send(kind, (cell.name(), to.id), token, out) {
        None => "gone",
        Some(true) => "sent",
        Some(false) => "full",
    };
    app.metrics.delivery(kind.as_str(), outcome);
}

/// The trace context of each job's latest `dispatch` span, so the node's `job_result` span
/// continues the same trace as a child of it. Observability only: bounded, and empty when
/// spans are not exported.
#[derive(Default)]
pub struct DispatchSpans(Mutex<HashMap<String, opentelemetry::Context>>);

impl DispatchSpans {
    const MAX: usize = 100_000;

    fn put(&self, job: &str, span: &tracing::Span) {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return;
        }
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= Self::MAX {
            m.clear();
        }
        m.insert(job.to_string(), cx);
    }

    /// The dispatch context of `job`, kept.
    pub fn get(&self, job: &str) -> Option<opentelemetry::Context> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(job)
            .cloned()
    }

    /// The dispatch context of `job`, forgotten once taken.
    pub fn take(&self, job: &str) -> Option<opentelemetry::Context> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(job)
    }
}

/// Add `"audio":"<base64>"` to a JSON object (job_assign keeps its audio out of Lua),
/// encoding straight into the message (one allocation of the final size).
pub fn with_audio(msg: &str, audio: Audio) -> String {
    let body = msg.trim_end();
    let Some(head) = body.strip_suffix('}') else {
        return msg.to_string();
    };
    let sep = if head.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    let len = match audio {
        Audio::Raw(a) => a.len().div_ceil(3) * 4,
        Audio::Base64(t) => t.len(),
    };
    let mut out = String::with_capacity(head.len() + sep.len() + len + 12);
    out.push_str(head);
    out.push_str(sep);
    out.push_str("\"audio\":\"");
    match audio {
        Audio::Raw(a) => base64::encode_into(a, &mut out),
        Audio::Base64(t) => out.push_str(t),
    }
    out.push_str("\"}");
    out
}

#[cfg(test)]
mod tests;
