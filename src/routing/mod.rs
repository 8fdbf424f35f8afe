//! Delivery of what scripts produce: every message for a connection is addressed to the
//! instance that owns it and to its connection token. Messages for this instance's own
//! sockets come back in the script's reply and are written at once (no Redis hop); the
//! script itself put messages for other instances' sockets into their inbox streams, which
//! [`inbox`] consumes. A message whose socket is gone is dropped, because state keeps it
//! recoverable (results stay in the session's result log, jobs time out and fail over).

pub mod inbox;
pub mod presence;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::gateway::{Kind, Outbound};
use crate::server::App;
use crate::store::Output;

/// Write every delivery of `out` (all addressed to this instance) and return the reply.
pub fn deliver<T>(app: &App, out: Output<T>) -> T {
    let Output { reply, out, blobs } = out;
    for d in out {
        if d.owner != app.instance_id {
            // Scripts put messages for other instances into their inboxes; never here.
            tracing::error!(owner = %d.owner, "script returned a delivery for another instance");
            continue;
        }
        let audio = d
            .blob
            .and_then(|i| blobs.get(i.wrapping_sub(1)))
            .map(Vec::as_slice);
        write_local(app, &d.k, &d.id, d.conn.as_deref(), d.msg, audio, d.seq);
    }
    reply
}

/// Write one message to a local connection (from a script reply or the inbox).
pub fn write_local(
    app: &App,
    kind: &str,
    id: &str,
    conn: Option<&str>,
    msg: String,
    audio: Option<&[u8]>,
    seq: Option<u64>,
) {
    let Some(kind) = Kind::parse(kind) else {
        tracing::error!(kind, "delivery to an unknown kind");
        return;
    };
    let Some(c) = app.conns.get(kind, id, conn.filter(|c| !c.is_empty())) else {
        app.metrics.delivery(kind.as_str(), "gone");
        return;
    };
    let text = match audio {
        Some(a) => with_audio(&msg, a),
        None => msg,
    };
    let out = match seq.filter(|s| *s > 0) {
        Some(s) => Outbound::Ordered(s, text),
        None => Outbound::Text(text),
    };
    let outcome = if c.tx.try_send(out).is_ok() {
        "sent"
    } else {
        "full"
    };
    app.metrics.delivery(kind.as_str(), outcome);
}

/// Add `"audio":"<base64>"` to a JSON object (job_assign keeps its audio out of Lua).
pub fn with_audio(msg: &str, audio: &[u8]) -> String {
    let body = msg.trim_end();
    let Some(head) = body.strip_suffix('}') else {
        return msg.to_string();
    };
    let sep = if head.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    format!("{head}{sep}\"audio\":\"{}\"}}", B64.encode(audio))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_is_spliced_into_the_object() {
        let out = with_audio(r#"{"type":"job_assign","job_id":"j"}"#, b"abc");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["audio"], "YWJj");
        assert_eq!(v["job_id"], "j");
        let v: serde_json::Value = serde_json::from_str(&with_audio("{}", b"")).unwrap();
        assert_eq!(v["audio"], "");
    }
}
