//! Delivery of what scripts produce: every message for a connection is addressed to the
//! instance that owns it and to its connection token. Messages for this instance's own
//! sockets are written at once (no Redis hop); a message whose socket is gone is dropped,
//! because state keeps it recoverable (results stay in the session's result log, jobs time
//! out and fail over).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::gateway::{Kind, Outbound};
use crate::server::App;
use crate::store::{Delivery, Output};

/// Write every delivery of `out` that targets a connection on this instance.
pub fn deliver<T>(app: &App, out: Output<T>) -> T {
    let Output { reply, out, blobs } = out;
    for d in out {
        deliver_one(app, d, &blobs);
    }
    reply
}

fn deliver_one(app: &App, d: Delivery, blobs: &[Vec<u8>]) {
    let Some(kind) = Kind::parse(&d.k) else {
        tracing::error!(kind = %d.k, "delivery to an unknown kind");
        return;
    };
    if d.owner != app.instance_id {
        // Owned elsewhere: cross-instance delivery goes through the owner's inbox stream.
        app.metrics.delivery(kind.as_str(), "remote");
        return;
    }
    let Some(conn) = app.conns.get(kind, &d.id, d.conn.as_deref()) else {
        app.metrics.delivery(kind.as_str(), "gone");
        return;
    };
    let text = match d.blob {
        Some(i) => with_audio(
            &d.msg,
            blobs
                .get(i.wrapping_sub(1))
                .map(Vec::as_slice)
                .unwrap_or_default(),
        ),
        None => d.msg,
    };
    let outcome = if conn.tx.try_send(Outbound::Text(text)).is_ok() {
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
