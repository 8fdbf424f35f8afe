//! The chaos session: a web-client-like session that streams utterances, resumes with
//! `resume_session_id` after any disconnect and resends every index without an outcome, and
//! the log of terminal messages it saw (reading on for a second after the last outcome, so
//! that a late duplicate is seen).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::RngExt;
use serde_json::{Value, json};
use tokio_tungstenite::connect_async_with_config;
use tokio_tungstenite::tungstenite::Message;

use super::{Counts, UTTERANCES, pick};
use crate::common::actors::{terminal_of, utterance};
use crate::common::*;

/// What one session saw.
#[derive(Default, Debug)]
pub(super) struct SessionLog {
    /// Terminal messages in arrival order: (index, type or error code).
    pub(super) terminals: Vec<(u64, String)>,
    pub(super) resumed_false: u64,
}

/// A web-client-like session: sends UTTERANCES utterances every 200-400 ms, resumes after any
/// disconnect and resends every index without an outcome.
pub(super) async fn chaos_session(
    tenant: Option<String>,
    urls: Arc<Vec<String>>,
    counts: Arc<Counts>,
    deadline: Instant,
) -> SessionLog {
    let mut log = SessionLog::default();
    let period_ms = rand::rng().random_range(200..400);
    let offset_ms = rand::rng().random_range(0..300);
    tokio::time::sleep(Duration::from_millis(offset_ms)).await;
    let mut sid: Option<String> = None;
    let mut resume_token = Value::Null;
    let mut got: BTreeMap<u64, usize> = BTreeMap::new();
    let mut sent: u64 = 0;
    while Instant::now() < deadline && (got.len() as u64) < UTTERANCES {
        let Ok((ws, _)) =
            connect_async_with_config(pick(&urls, "/ws/session", tenant.as_deref()), None, true)
                .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (mut sink, mut stream) = ws.split();
        let mut init = fixture("session_init_one_way");
        if let Some(s) = &sid {
            init["resume_session_id"] = json!(s);
            init["resume_token"] = resume_token.clone();
            let contiguous = (0..).take_while(|i| got.contains_key(i)).count() as i64;
            init["last_received_index"] = json!(contiguous - 1);
        }
        if sink
            .send(Message::Text(init.to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        let ack = loop {
            match tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if v["type"] == "session_init_ack" {
                        break Some(v);
                    }
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => break None,
            }
        };
        let Some(ack) = ack else { continue };
        resume_token = ack["resume_token"].clone();
        let this = ack["session_id"].as_str().unwrap_or_default().to_string();
        if let Some(s) = &sid {
            if ack["resumed"] == true && &this == s {
                counts.resumes.fetch_add(1, Ordering::Relaxed);
            } else {
                log.resumed_false += 1;
                return log;
            }
        }
        sid = Some(this.clone());
        // Resend everything sent without an outcome (the submit is idempotent).
        let mut broken = false;
        for i in (0..sent).filter(|i| !got.contains_key(i)) {
            counts.resends.fetch_add(1, Ordering::Relaxed);
            let u = utterance(&this, i);
            if sink
                .send(Message::Text(u.to_string().into()))
                .await
                .is_err()
            {
                broken = true;
                break;
            }
        }
        // Jittered per session, so instance kills land at every phase of a session's
        // cycle — in particular while an utterance is in flight.
        let mut tick = tokio::time::interval(Duration::from_millis(period_ms));
        while !broken && (got.len() as u64) < UTTERANCES && Instant::now() < deadline {
            tokio::select! {
                _ = tick.tick(), if sent < UTTERANCES => {
                    let u = utterance(&this, sent);
                    sent += 1;
                    if sink.send(Message::Text(u.to_string().into())).await.is_err() { broken = true }
                }
                msg = tokio::time::timeout(Duration::from_secs(1), stream.next()) => {
                    match msg {
                        Err(_) => continue,
                        Ok(Some(Ok(Message::Text(t)))) => log.saw(t.as_str(), &mut got),
                        Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                        _ => broken = true,
                    }
                }
            }
        }
        // Every index has its outcome: read on for a while, so that a second terminal
        // message for an index after the last new one is seen (and fails the scenario)
        // instead of dying with the socket.
        if !broken && got.len() as u64 >= UTTERANCES {
            let until = tokio::time::Instant::now() + LINGER;
            while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, stream.next()).await {
                if let Message::Text(t) = m {
                    log.saw(t.as_str(), &mut got);
                }
            }
        }
    }
    log
}

/// How long a session that has every outcome keeps reading its socket.
const LINGER: Duration = Duration::from_secs(1);

impl SessionLog {
    /// A text frame arrived: a terminal message is logged, and counted by index in `got`.
    fn saw(&mut self, text: &str, got: &mut BTreeMap<u64, usize>) {
        let v: Value = serde_json::from_str(text).unwrap_or_default();
        if let Some((i, kind)) = terminal_of(&v) {
            self.terminals.push((i, kind));
            *got.entry(i).or_default() += 1;
        }
    }
}
