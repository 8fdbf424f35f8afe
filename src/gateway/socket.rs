//! One WebSocket, split into a reader (the handler's loop) and a writer task fed by a
//! bounded channel, so any task can send to a connection without holding a lock across I/O.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::{SplitStream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What can be written to a connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    Text(String),
    /// Send a close frame with this code and reason, then stop writing.
    Close(u16, String),
}

/// Close codes Switchyard uses (RFC 6455 §7.4 plus application codes 4000-4999).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const RESTARTING: u16 = 1012;
    /// A newer connection registered the same node id.
    pub const REPLACED: u16 = 4001;
    /// The node missed its liveness deadline and was taken offline.
    pub const LIVENESS: u16 = 4002;
}

/// Split `ws`: returns the sender, the inbound stream and the writer task.
pub fn split(
    ws: WebSocket,
    queue: usize,
) -> (
    mpsc::Sender<Outbound>,
    SplitStream<WebSocket>,
    JoinHandle<()>,
) {
    let (mut sink, stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Outbound>(queue);
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            let res = match out {
                Outbound::Text(t) => sink.send(Message::Text(t.into())).await,
                Outbound::Close(code, reason) => {
                    let frame = CloseFrame {
                        code,
                        reason: reason.into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    break;
                }
            };
            if res.is_err() {
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    });
    (tx, stream, writer)
}

/// Is this read error an oversized frame/message (answered with close 1009)?
pub fn is_too_big(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(tungstenite::Error::Capacity(_)) = e.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}
