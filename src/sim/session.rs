//! A simulated client session: `session_init`, then utterances (pre-cut `utterance`
//! messages, or streamed `audio_chunk`s ending with `is_final`), open or closed loop, and
//! the bookkeeping of every terminal message in a [`Ledger`].
//!
//! One task per session reads and writes its socket in one `select!` loop, so terminal
//! messages are read promptly even while it sends (the scheduler drops messages for a
//! client that stops reading).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::args::{Mode, Range};
use super::audio::AudioBank;
use super::ledger::{Ledger, Terminal, Verdict};
use super::tracker::{Live, Shared, now_ms};
use super::ws::{self, Incoming, Sink, Source};

/// How every session of the run behaves.
pub struct SessionSpec {
    pub mode: Mode,
    pub two_way: bool,
    pub langs: Vec<String>,
    pub utterances: u64,
    pub interval: Duration,
    pub window: Option<u64>,
    pub duration: Duration,
    pub grace: Duration,
    pub chunk_ms: u64,
    pub utterance_ms: Range,
    pub realtime: bool,
    pub reorder_window: Duration,
    pub client_heartbeat: Duration,
    pub audio: AudioBank,
}

/// What one session saw.
#[derive(Default, Debug)]
pub struct SessionReport {
    pub opened: bool,
    pub setup_error: Option<String>,
    /// Handshakes that failed and were tried again.
    pub setup_retries: u64,
    /// The scheduler closed the connection before the session was done.
    pub dropped: bool,
    pub sent: u64,
    pub results: u64,
    pub missing: u64,
    pub errors: BTreeMap<String, u64>,
    /// `error` frames that name no utterance (not terminal), by code.
    pub other_errors: BTreeMap<String, u64>,
    pub duplicates: u64,
    pub order_violations: u64,
    pub unexpected: u64,
    pub lost: u64,
    /// End-to-end latency of every first terminal message, µs.
    pub e2e_us: Vec<u32>,
}

/// The fields of a scheduler → session frame the session uses (the rest is skipped).
#[derive(Deserialize, Default)]
#[serde(default)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    /// Present (not null) on terminal messages, and on an `error` that is terminal.
    utterance_index: Option<u64>,
    code: Option<String>,
}

/// The utterance being streamed: its index-to-be and the chunks still to send.
struct Streaming {
    chunks_left: u64,
    next_at: Instant,
}

struct Session<'a> {
    spec: &'a SessionSpec,
    shared: &'a Shared,
    sid: String,
    /// The two languages of this session: (src, tgt), or (lang_a, lang_b) when two-way.
    langs: (String, String),
    ledger: Ledger,
    report: SessionReport,
    first_at: Instant,
    streaming: Option<Streaming>,
    seq: u64,
}

/// Two different languages of the run, at random.
fn pick_pair(langs: &[String]) -> (String, String) {
    let a = rand::random_range(0..langs.len());
    let mut b = rand::random_range(0..langs.len() - 1);
    if b >= a {
        b += 1;
    }
    (langs[a].clone(), langs[b].clone())
}

impl SessionSpec {
    fn init_frame(&self, (a, b): &(String, String)) -> Value {
        let mut v = json!({"type": "session_init", "client_version": "switchyard-sim",
            "platform": "web", "features": {}});
        self.lang_fields(&mut v, a, b);
        v
    }

    /// `src_lang`/`tgt_lang` (and the two-way fields) as the web client sends them.
    fn lang_fields(&self, v: &mut Value, a: &str, b: &str) {
        if self.two_way {
            v["src_lang"] = json!("auto");
            v["tgt_lang"] = json!(b);
            v["mode"] = json!("two_way_auto");
            v["lang_a"] = json!(a);
            v["lang_b"] = json!(b);
            v["auto_langs"] = json!([a, b]);
        } else {
            v["src_lang"] = json!(a);
            v["tgt_lang"] = json!(b);
            v["mode"] = json!("one_way");
        }
    }
}

/// Connect and send `session_init`; the sockets and the session id.
async fn open(
    url: &str,
    spec: &SessionSpec,
    langs: &(String, String),
) -> Result<(Sink, Source, String), String> {
    let handshake = Duration::from_secs(30);
    let (mut sink, mut source) = ws::connect(url, handshake).await?;
    ws::send(&mut sink, &spec.init_frame(langs)).await?;
    let ack = ws::expect(&mut source, "session_init_ack", handshake).await?;
    match ack["session_id"].as_str() {
        Some(sid) if !sid.is_empty() => Ok((sink, source, sid.to_string())),
        _ => Err(format!("session_init_ack without session_id: {ack}")),
    }
}

/// Open a session and run it to its end; the report says what it saw.
pub async fn run(
    url: String,
    spec: Arc<SessionSpec>,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> SessionReport {
    let langs = pick_pair(&spec.langs);
    let permit = gate.acquire().await;
    let (opened, retries) = ws::with_retries(|| open(&url, &spec, &langs)).await;
    drop(permit);
    let (mut sink, mut source, sid) = match opened {
        Ok(o) => o,
        Err(e) => {
            Live::inc(&shared.live.setup_failed);
            return SessionReport {
                setup_error: Some(e),
                setup_retries: retries,
                ..SessionReport::default()
            };
        }
    };
    Live::inc(&shared.live.sessions_open);
    let now = Instant::now();
    let phase = spec.interval.mul_f64(rand::random::<f64>());
    let mut s = Session {
        spec: &spec,
        shared: &shared,
        sid,
        langs,
        ledger: Ledger::new(spec.reorder_window),
        report: SessionReport {
            opened: true,
            setup_retries: retries,
            ..SessionReport::default()
        },
        first_at: now + phase,
        streaming: None,
        seq: 0,
    };
    let send_end = now + spec.duration;
    let mut grace_end: Option<Instant> = None;
    let mut beat_at = now + spec.client_heartbeat;
    loop {
        let now = Instant::now();
        let idle = spec.utterances == 0;
        let sending =
            s.streaming.is_some() || (!idle && s.ledger.sent() < spec.utterances && now < send_end);
        if !sending && !idle && grace_end.is_none() {
            grace_end = Some(now + spec.grace);
        }
        // Idle sessions hold their connection until the end of the run; the others stop
        // once nothing is outstanding or the grace period is over.
        let phase_end = if idle {
            send_end
        } else {
            grace_end.unwrap_or(send_end)
        };
        let settled = !idle && s.ledger.outstanding() == 0;
        if !sending && (settled || now >= phase_end) {
            break;
        }
        let send_at = if sending { s.next_send_at() } else { None };
        tokio::select! {
            biased;
            item = source.next() => match ws::classify::<Frame>(item) {
                Incoming::Json(f) => s.on_message(f),
                Incoming::Other => {}
                Incoming::Closed => {
                    s.report.dropped = true;
                    break;
                }
            },
            _ = tokio::time::sleep_until(send_at.unwrap_or(phase_end)), if send_at.is_some() => {
                if let Err(e) = s.send_next(&mut sink).await {
                    tracing::debug!(error = %e, "session send failed");
                    s.report.dropped = true;
                    break;
                }
            }
            _ = tokio::time::sleep_until(beat_at) => {
                beat_at += spec.client_heartbeat;
                let hb = json!({"type": "client_heartbeat", "session_id": s.sid, "timestamp": now_ms()});
                if ws::send(&mut sink, &hb).await.is_err() {
                    s.report.dropped = true;
                    break;
                }
            }
            _ = tokio::time::sleep_until(phase_end) => {}
            _ = stop.changed() => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
    s.finish()
}

impl Session<'_> {
    /// When the next frame may go: the current stream's next chunk, else the open-loop
    /// schedule, unless the closed-loop window is full.
    fn next_send_at(&self) -> Option<Instant> {
        if let Some(st) = &self.streaming {
            return Some(st.next_at);
        }
        if let Some(w) = self.spec.window
            && self.ledger.outstanding() >= w
        {
            return None;
        }
        let k = u32::try_from(self.ledger.sent()).unwrap_or(u32::MAX);
        Some(self.first_at + self.spec.interval * k)
    }

    /// Send one frame: a whole `utterance`, or the next `audio_chunk` of the stream.
    async fn send_next(&mut self, sink: &mut Sink) -> Result<(), String> {
        match self.spec.mode {
            Mode::Utterance => {
                let at = std::time::Instant::now();
                let idx = self.ledger.send(at);
                self.shared.on_send(&self.sid, idx, at);
                let (_, audio) = self.spec.audio.utterance();
                let mut u = json!({"type": "utterance", "session_id": self.sid,
                    "utterance_index": idx, "manual_cut": true, "audio": audio,
                    "audio_format": "opus", "sample_rate": 16000});
                let (a, b) = self.langs.clone();
                self.spec.lang_fields(&mut u, &a, &b);
                ws::send(sink, &u).await
            }
            Mode::Stream => {
                let st = self.streaming.get_or_insert_with(|| Streaming {
                    chunks_left: self.spec.utterance_ms.pick().div_ceil(self.spec.chunk_ms),
                    next_at: Instant::now(),
                });
                st.chunks_left = st.chunks_left.saturating_sub(1);
                let last = st.chunks_left == 0;
                st.next_at = if self.spec.realtime {
                    st.next_at + Duration::from_millis(self.spec.chunk_ms)
                } else {
                    Instant::now()
                };
                if last {
                    self.streaming = None;
                    let at = std::time::Instant::now();
                    let idx = self.ledger.send(at);
                    self.shared.on_send(&self.sid, idx, at);
                }
                self.seq += 1;
                let c = json!({"type": "audio_chunk", "session_id": self.sid, "seq": self.seq,
                    "is_final": last, "payload": self.spec.audio.chunk(),
                    "client_timestamp_ms": now_ms()});
                ws::send(sink, &c).await
            }
        }
    }

    fn on_message(&mut self, f: Frame) {
        let kind = match f.kind.as_str() {
            "translation_result" => Terminal::Result,
            "missing_result" => Terminal::Missing,
            "error" => {
                let code = f.code.unwrap_or_else(|| "UNKNOWN".into());
                if f.utterance_index.is_none() {
                    *self.report.other_errors.entry(code).or_default() += 1;
                    return;
                }
                Terminal::Error(code)
            }
            _ => return, // ui_event, asr_partial, server_heartbeat
        };
        let Some(idx) = f.utterance_index else {
            self.ledger.unexpected += 1;
            return;
        };
        let is_error = matches!(kind, Terminal::Error(_));
        let is_result = kind == Terminal::Result;
        let now = std::time::Instant::now();
        match self.ledger.terminal(idx, kind, now) {
            Verdict::Fresh { latency, .. } | Verdict::OutOfOrder { latency } => {
                self.report
                    .e2e_us
                    .push(latency.as_micros().min(u32::MAX as u128) as u32);
                self.shared.on_terminal(&self.sid, idx, now);
                if is_result {
                    Live::inc(&self.shared.live.results);
                }
                if is_error {
                    Live::inc(&self.shared.live.errors);
                }
            }
            Verdict::Duplicate | Verdict::Unexpected => {}
        }
    }

    fn finish(self) -> SessionReport {
        let l = self.ledger;
        SessionReport {
            sent: l.sent(),
            results: l.results,
            missing: l.missing,
            duplicates: l.duplicates,
            order_violations: l.order_violations,
            unexpected: l.unexpected,
            lost: l.lost(),
            errors: l.errors.clone(),
            ..self.report
        }
    }
}
