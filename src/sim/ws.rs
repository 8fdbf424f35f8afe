//! The sim's WebSocket client: connect with small buffers and Nagle off, send and read JSON.
//!
//! One place for how simulated peers talk, so nodes and sessions stay about behaviour.
//! Buffers are small because a scale run holds tens of thousands of connections in one
//! process; Nagle is off because the sim measures latency.

use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub type Sink = SplitSink<Stream, Message>;
pub type Source = SplitStream<Stream>;

/// Connect to `url` within `timeout`.
pub async fn connect(url: &str, timeout: Duration) -> Result<(Sink, Source), String> {
    let cfg = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20));
    match tokio::time::timeout(timeout, connect_async_with_config(url, Some(cfg), true)).await {
        Err(_) => Err(format!("{url}: connect timed out")),
        Ok(Err(e)) => Err(format!("{url}: {e}")),
        Ok(Ok((ws, _))) => Ok(ws.split()),
    }
}

/// Handshakes tried per peer: a real client retries a refused or failed handshake, and a
/// connect storm of a scale run sees a few.
const HANDSHAKE_ATTEMPTS: u32 = 3;

/// Run the handshake `f` until it succeeds, at most [`HANDSHAKE_ATTEMPTS`] times, 0.5 s then
/// 1 s apart. Returns its last result and how many retries it took.
pub async fn with_retries<T, F, Fut>(mut f: F) -> (Result<T, String>, u64)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut retries = 0;
    loop {
        match f().await {
            Ok(t) => return (Ok(t), retries),
            Err(e) if retries + 1 >= u64::from(HANDSHAKE_ATTEMPTS) => return (Err(e), retries),
            Err(_) => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(500 * retries)).await;
            }
        }
    }
}

/// Send one JSON frame.
pub async fn send(sink: &mut Sink, v: &Value) -> Result<(), String> {
    sink.send(Message::Text(v.to_string().into()))
        .await
        .map_err(|e| e.to_string())
}

/// What the next read brought.
pub enum Incoming<T = Value> {
    /// A JSON text frame, decoded as `T` (unparseable text becomes `T::default()`).
    Json(T),
    /// Ping, pong, binary: nothing for the sim.
    Other,
    /// The connection ended (close frame, error or end of stream).
    Closed,
}

/// Classify one item of the read half, decoding a text frame as `T` (a typed `T` skips the
/// fields it does not name without copying them: job audio is most of the bytes).
pub fn classify<T: DeserializeOwned + Default>(
    item: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Incoming<T> {
    match item {
        Some(Ok(Message::Text(t))) => {
            Incoming::Json(serde_json::from_str(t.as_str()).unwrap_or_default())
        }
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Incoming::Closed,
        Some(Ok(_)) => Incoming::Other,
    }
}

/// Read until a frame of type `kind` arrives, within `timeout`.
pub async fn expect(rx: &mut Source, kind: &str, timeout: Duration) -> Result<Value, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let item = match tokio::time::timeout_at(deadline, rx.next()).await {
            Err(_) => return Err(format!("no {kind} within {timeout:?}")),
            Ok(item) => item,
        };
        match classify::<Value>(item) {
            Incoming::Json(v) if v["type"] == kind => return Ok(v),
            Incoming::Json(v) if v["type"] == "error" => {
                return Err(format!("error instead of {kind}: {v}"));
            }
            Incoming::Closed => return Err(format!("closed before {kind}")),
            _ => {}
        }
    }
}
