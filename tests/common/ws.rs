//! A real WebSocket client (tokio-tungstenite) speaking PROTOCOL.md JSON.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a read ended when no message arrived.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(Option<u16>),
    Timeout,
}

impl WsClient {
    pub async fn connect(url: &str) -> Self {
        // disable_nagle: a test client sends its frames at once, like the lingua clients.
        let (ws, _) = connect_async_with_config(url, None, true)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Self { ws }
    }

    pub async fn send(&mut self, v: &Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws
            .send(Message::Text(t.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.ws.send(Message::Binary(b.into())).await.expect("send");
    }

    /// Next JSON message within `timeout`, or how the stream ended.
    pub async fn next(&mut self, timeout: Duration) -> Result<Value, Ended> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(Ended::Timeout),
                Ok(None) | Ok(Some(Err(_))) => return Err(Ended::Closed(None)),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    return Ok(serde_json::from_str(t.as_str()).expect("server sends JSON"));
                }
                Message::Close(f) => return Err(Ended::Closed(f.map(|f| u16::from(f.code)))),
                _ => continue,
            }
        }
    }

    /// Next message, which must have `type` = `kind` (others are skipped).
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Ok(v) if v["type"] == kind => return v,
                Ok(_) => continue,
                Err(e) => panic!("waiting for {kind}: {e:?}"),
            }
        }
    }

    /// The connection must close; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next(Duration::from_secs(5)).await {
                Ok(_) => continue,
                Err(Ended::Closed(code)) => return code,
                Err(Ended::Timeout) => panic!("connection did not close"),
            }
        }
    }

    /// No message arrives within `d`, and the connection stays open (a check of silence
    /// must not pass because the server closed or crashed the socket).
    pub async fn expect_silence(&mut self, d: Duration) {
        match self.next(d).await {
            Ok(v) => panic!("unexpected message {v}"),
            Err(Ended::Closed(code)) => panic!("the connection closed ({code:?}) instead"),
            Err(Ended::Timeout) => {}
        }
    }

    /// Orderly close (sends a close frame).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Drop the TCP connection without a close frame (a crash or network loss).
    pub fn drop_connection(self) {
        drop(self);
    }

    /// Register a node from a lingua frame, with `node_id` replaced; returns the ack.
    pub async fn register(&mut self, mut frame: Value, node_id: Option<&str>) -> Value {
        frame["node_id"] = node_id.map(Value::from).unwrap_or(Value::Null);
        self.send(&frame).await;
        self.recv_type("node_register_ack").await
    }

    /// Register and return the node id the scheduler confirmed.
    pub async fn register_id(&mut self, frame: Value, node_id: Option<&str>) -> String {
        let ack = self.register(frame, node_id).await;
        ack["node_id"]
            .as_str()
            .expect("node_register_ack carries node_id")
            .to_string()
    }

    /// Send a heartbeat from the lingua fixture for `node_id`, with optional language override.
    pub async fn heartbeat(&mut self, node_id: &str, langs: Option<&[&str]>) {
        let mut hb = super::fixture("node_heartbeat");
        hb["node_id"] = json!(node_id);
        if let Some(l) = langs {
            hb["language_capabilities"] =
                json!({"asr_languages": l, "semantic_languages": l, "tts_languages": l});
        }
        self.send(&hb).await;
    }
}
