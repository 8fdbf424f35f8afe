//! The chaos node: a lingua-like node that answers each job after 30-150 ms, reconnects to
//! the next instance when its connection dies, re-registers with its id and sends the
//! results it finished while disconnected.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::RngExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::connect_async_with_config;
use tokio_tungstenite::tungstenite::Message;

use super::{Counts, pick};
use crate::common::actors::result_for;
use crate::common::*;

/// A lingua-like node that answers after 30-150 ms and survives instance deaths.
pub(super) async fn chaos_node(
    k: usize,
    tenant: Option<String>,
    urls: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let mut turn = k;
    let mut node_id: Option<String> = None;
    let (done_tx, mut done_rx) = mpsc::channel::<Value>(256);
    let mut unsent: Vec<Value> = Vec::new();
    let mut lost_at: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let Ok((ws, _)) = connect_async_with_config(
            pick(&urls, &mut turn, "/ws/node", tenant.as_deref()),
            None,
            true,
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (mut sink, mut stream) = ws.split();
        let mut reg = fixture("node_register_first");
        reg["node_id"] = node_id.clone().map(Value::from).unwrap_or(Value::Null);
        reg["max_concurrent_jobs"] = json!(4);
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
                    if v["code"] == "NODE_ID_CONFLICT" {
                        counts.node_conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => break None,
            }
        };
        let Some(id) = id else { continue };
        if node_id.is_some() {
            counts.node_reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(t) = lost_at.take() {
            let ms = t.elapsed().as_millis() as u64;
            counts.reconnect_ms.lock().unwrap().push(ms);
        }
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
                        _ => break,
                    };
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if v["type"] == "job_assign" {
                        let (tx, id) = (done_tx.clone(), id.clone());
                        tokio::spawn(async move {
                            let ms = rand::rng().random_range(30..150);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
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
