//! A roaming node: a lingua-like node that answers each `job_assign` after a delay of its
//! caller's choosing, reconnects (to the URL its caller picks) whenever its connection ends,
//! re-registers with its id and sends the results it finished while away. The scenarios that
//! kill or restart instances under load (chaos, rolling restart) drive their nodes with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::connect_async_with_config;
use tokio_tungstenite::tungstenite::Message;

use super::actors::result_for;
use super::fixture;

/// What a scenario decides for its roaming node, and what it is told.
pub trait Roam: Send + 'static {
    /// The URL (with its credential) of the next connection attempt.
    fn url(&mut self) -> String;
    /// A registration was acknowledged; `again`: not the node's first; `away`: how long it
    /// had no acknowledged registration since its previous connection ended.
    fn registered(&mut self, again: bool, away: Option<Duration>);
    /// The instance answered the registration with an error frame of this code.
    fn refused(&mut self, _code: &str) {}
    /// How long to take over a job.
    fn delay(&mut self, assign: &Value) -> Duration;
}

/// Runs a roaming node of `capacity` until `stop`.
pub async fn roaming_node<R: Roam>(mut roam: R, capacity: u64, stop: Arc<AtomicBool>) {
    let mut node_id: Option<String> = None;
    let (done_tx, mut done_rx) = mpsc::channel::<Value>(256);
    let mut unsent: Vec<Value> = Vec::new();
    let mut lost_at: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let Ok((ws, _)) = connect_async_with_config(roam.url(), None, true).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (mut sink, mut stream) = ws.split();
        let mut reg = fixture("node_register_first");
        reg["node_id"] = node_id.clone().map(Value::from).unwrap_or(Value::Null);
        reg["max_concurrent_jobs"] = json!(capacity);
        if sink
            .send(Message::Text(reg.to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        let id = loop {
            match tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if v["type"] == "node_register_ack" {
                        break v["node_id"].as_str().map(str::to_string);
                    }
                    if let Some(code) = v["code"].as_str() {
                        roam.refused(code);
                    }
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => break None,
            }
        };
        let Some(id) = id else { continue };
        roam.registered(node_id.is_some(), lost_at.take().map(|t| t.elapsed()));
        node_id = Some(id.clone());
        // Results finished while disconnected go out on the new connection.
        for r in std::mem::take(&mut unsent) {
            if sink
                .send(Message::Text(r.to_string().into()))
                .await
                .is_err()
            {
                unsent.push(r);
            }
        }
        let mut beat = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let mut hb = fixture("node_heartbeat");
                    hb["node_id"] = json!(id);
                    if sink.send(Message::Text(hb.to_string().into())).await.is_err() { break }
                    if stop.load(Ordering::Relaxed) { return }
                }
                Some(r) = done_rx.recv() => {
                    if sink.send(Message::Text(r.to_string().into())).await.is_err() {
                        unsent.push(r);
                        break;
                    }
                }
                msg = stream.next() => {
                    let t = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Close(_))) => {
                            finish_close(&mut stream).await;
                            break;
                        }
                        _ => break,
                    };
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if v["type"] == "job_assign" {
                        let (tx, id, ms) = (done_tx.clone(), id.clone(), roam.delay(&v));
                        tokio::spawn(async move {
                            tokio::time::sleep(ms).await;
                            let mut r = result_for(&v, &format!("T{}", v["utterance_index"]));
                            r["node_id"] = json!(id);
                            let _ = tx.send(r).await;
                        });
                    }
                }
            }
        }
        lost_at = Some(Instant::now());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The closing handshake, as WebSocket clients (lingua's, browsers) do it: after the
/// server's close frame, keep reading so the library sends the echo, until the stream ends.
pub async fn finish_close<S>(stream: &mut S)
where
    S: futures_util::Stream + Unpin,
{
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while stream.next().await.is_some() {}
    })
    .await;
}
