//! A simulated lingua node: registers, heartbeats, and answers every `job_assign` with a
//! `job_result` shaped like the lingua node's (tests/fixtures/lingua/job_result_*.json).
//!
//! Behaviour per job is drawn at random from the run's flags: success after a processing
//! delay, `PROCESSING_ERROR`, `MODEL_NOT_AVAILABLE`, or no answer at all (the scheduler's
//! deadline and failover must end such a job). The node also measures dispatch latency
//! (session send → `job_assign` here) and checks that it is never given more jobs than the
//! capacity it announced.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};

use super::args::Range;
use super::tracker::{Live, Shared, now_ms};
use super::ws::{self, Incoming};

/// How every node of the run behaves.
pub struct NodeSpec {
    pub langs: Vec<String>,
    pub capacity: u32,
    pub delay: Range,
    pub fail_rate: f64,
    pub mna_rate: f64,
    pub no_result_rate: f64,
    pub heartbeat: Duration,
    /// The base64 `tts_audio` of every successful result.
    pub tts_audio: String,
}

/// The `tts_audio` of `--tts-bytes N` (0: the 10-byte placeholder "opus-bytes").
pub fn tts_audio(bytes: usize) -> String {
    if bytes == 0 {
        return "b3B1cy1ieXRlcw==".into();
    }
    let raw: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    crate::protocol::base64::encode(&raw)
}

/// What one node saw.
#[derive(Default, Debug)]
pub struct NodeReport {
    pub registered: bool,
    pub setup_error: Option<String>,
    /// Handshakes that failed and were tried again.
    pub setup_retries: u64,
    /// The scheduler closed the connection before the run ended.
    pub dropped: bool,
    pub assigns: u64,
    /// Assigns with `attempt_id` > 1 (failovers that reached this node).
    pub retries: u64,
    pub answered_ok: u64,
    pub answered_error: u64,
    pub answered_mna: u64,
    pub silent: u64,
    pub cancels: u64,
    /// `error` frames from the scheduler (e.g. a fenced result).
    pub errors_received: u64,
    /// Assigns that found the node already at its announced capacity.
    pub oversold: u64,
    pub peak: u64,
    pub heartbeats: u64,
    /// Dispatch latencies of first attempts, µs.
    pub dispatch_us: Vec<u32>,
}

/// The fields of a scheduler → node frame the node uses; everything else (the job's audio
/// above all) is skipped by the decoder without being copied.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    job_id: String,
    attempt_id: Option<u64>,
    session_id: String,
    utterance_index: Option<u64>,
    trace_id: Option<String>,
}

/// The outcome drawn for one job.
enum Answer {
    Ok,
    Error,
    ModelNotAvailable,
    Silent,
}

impl NodeSpec {
    fn draw(&self) -> Answer {
        let r: f64 = rand::random();
        if r < self.no_result_rate {
            Answer::Silent
        } else if r < self.no_result_rate + self.fail_rate {
            Answer::Error
        } else if r < self.no_result_rate + self.fail_rate + self.mna_rate {
            Answer::ModelNotAvailable
        } else {
            Answer::Ok
        }
    }

    fn register_frame(&self) -> Value {
        let services = json!([
            {"service_id": "faster-whisper-vad", "type": "asr", "device": "gpu", "status": "running"},
            {"service_id": "nmt-m2m100", "type": "nmt", "device": "gpu", "status": "running"},
            {"service_id": "piper-tts", "type": "tts", "device": "cpu", "status": "running"},
        ]);
        json!({
            "type": "node_register",
            "node_id": null,
            "version": "2.0.0",
            "capability_schema_version": "2.0",
            "platform": "linux",
            "hardware": {"cpu_cores": 16, "memory_gb": 64,
                         "gpus": [{"name": "sim-gpu", "memory_gb": 24}]},
            "installed_models": [],
            "installed_services": services,
            "capability_by_type": capabilities(),
            "features_supported": {},
            "advanced_features": [],
            "accept_public_jobs": true,
            "language_capabilities": self.languages(),
            "max_concurrent_jobs": self.capacity,
        })
    }

    fn languages(&self) -> Value {
        json!({"asr_languages": self.langs, "semantic_languages": self.langs,
               "tts_languages": self.langs, "semantic_core_ready": true})
    }

    fn heartbeat_frame(&self, node_id: &str, running: usize) -> Value {
        json!({
            "type": "node_heartbeat",
            "node_id": node_id,
            "timestamp": now_ms(),
            "resource_usage": {"cpu_percent": 20.0, "gpu_percent": 30.0, "gpu_mem_percent": 50.0,
                               "mem_percent": 40.0, "running_jobs": running, "gpu_queue_length": 0},
            "installed_services": [],
            "capability_by_type": capabilities(),
            "language_capabilities": self.languages(),
        })
    }
}

fn capabilities() -> Value {
    json!([{"type": "asr", "ready": true}, {"type": "nmt", "ready": true},
           {"type": "tts", "ready": true}, {"type": "semantic", "ready": true}])
}

/// The `job_result` for `assign`, echoing its ids (as the lingua node does).
fn result_for(assign: &Frame, node_id: &str, answer: &Answer, took_ms: u64, tts: &str) -> Value {
    let mut r = json!({"type": "job_result", "node_id": node_id, "processing_time_ms": took_ms,
        "job_id": assign.job_id, "attempt_id": assign.attempt_id, "session_id": assign.session_id,
        "utterance_index": assign.utterance_index, "trace_id": assign.trace_id});
    match answer {
        Answer::Ok | Answer::Silent => {
            r["success"] = json!(true);
            r["text_asr"] = json!("我们开始测试");
            let idx = assign.utterance_index.unwrap_or_default();
            r["text_translated"] = json!(format!("T{idx}"));
            r["tts_audio"] = json!(tts);
            r["tts_format"] = json!("opus");
            r["extra"] = json!({"service_timings": {"asr_ms": took_ms / 2, "nmt_ms": took_ms / 4,
                                 "tts_ms": took_ms / 4, "total_ms": took_ms}});
        }
        Answer::Error => {
            r["success"] = json!(false);
            r["error"] = json!({"code": "PROCESSING_ERROR", "message": "simulated failure"});
        }
        Answer::ModelNotAvailable => {
            r["success"] = json!(false);
            r["error"] = json!({"code": "MODEL_NOT_AVAILABLE",
                "message": "Service nmt-m2m100@1.0 is not available: not_loaded",
                "details": {"service_id": "nmt-m2m100", "service_version": "1.0",
                            "reason": "not_loaded"}});
        }
    }
    r
}

/// Connect and register; the sockets and the node id the scheduler gave.
async fn register(url: &str, spec: &NodeSpec) -> Result<(ws::Sink, ws::Source, String), String> {
    let handshake = Duration::from_secs(30);
    let (mut sink, mut source) = ws::connect(url, handshake).await?;
    ws::send(&mut sink, &spec.register_frame()).await?;
    let ack = ws::expect(&mut source, "node_register_ack", handshake).await?;
    match ack["node_id"].as_str() {
        Some(id) if !id.is_empty() => Ok((sink, source, id.to_string())),
        _ => Err(format!("node_register_ack without node_id: {ack}")),
    }
}

/// Run one node until `stop` turns true (or the scheduler drops it).
pub async fn run(
    url: String,
    spec: Arc<NodeSpec>,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> NodeReport {
    let mut rep = NodeReport::default();
    let permit = gate.acquire().await;
    let (hello, retries) = ws::with_retries(|| register(&url, &spec)).await;
    rep.setup_retries = retries;
    let (mut sink, mut source, node_id) = match hello {
        Ok(h) => h,
        Err(e) => {
            rep.setup_error = Some(e);
            Live::inc(&shared.live.setup_failed);
            return rep;
        }
    };
    drop(permit);
    rep.registered = true;
    Live::inc(&shared.live.nodes_ready);

    let (tx, mut rx) = mpsc::channel::<(String, Value)>(spec.capacity as usize * 4 + 64);
    let mut active: HashSet<String> = HashSet::new();
    let mut beat = tokio::time::interval(spec.heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = beat.tick() => {
                rep.heartbeats += 1;
                if ws::send(&mut sink, &spec.heartbeat_frame(&node_id, active.len())).await.is_err() {
                    rep.dropped = true;
                    break;
                }
            }
            Some((job_id, result)) = rx.recv() => {
                active.remove(&job_id);
                if ws::send(&mut sink, &result).await.is_err() {
                    rep.dropped = true;
                    break;
                }
            }
            item = source.next() => match ws::classify::<Frame>(item) {
                Incoming::Closed => {
                    rep.dropped = !*stop.borrow();
                    break;
                }
                Incoming::Other => {}
                Incoming::Json(f) => match f.kind.as_str() {
                    "job_assign" => {
                        let now = Instant::now();
                        if let Some((r, delay)) = on_assign(&f, now, &node_id, &spec, &shared, &mut active, &mut rep) {
                            if delay == 0 {
                                active.remove(&f.job_id);
                                if ws::send(&mut sink, &r).await.is_err() {
                                    rep.dropped = true;
                                    break;
                                }
                            } else {
                                let (tx, job_id) = (tx.clone(), f.job_id);
                                tokio::spawn(async move {
                                    tokio::time::sleep(Duration::from_millis(delay)).await;
                                    let _ = tx.send((job_id, r)).await;
                                });
                            }
                        }
                    }
                    "job_cancel" => {
                        rep.cancels += 1;
                        active.remove(&f.job_id);
                    }
                    "error" => rep.errors_received += 1,
                    _ => {}
                },
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
    rep
}

/// Account for a `job_assign`; the result to send and after how many ms, or `None` for a
/// silent job.
fn on_assign(
    v: &Frame,
    now: Instant,
    node_id: &str,
    spec: &NodeSpec,
    shared: &Shared,
    active: &mut HashSet<String>,
    rep: &mut NodeReport,
) -> Option<(Value, u64)> {
    rep.assigns += 1;
    Live::inc(&shared.live.assigns);
    if v.attempt_id == Some(1) {
        if let Some(sent) = v
            .utterance_index
            .and_then(|i| shared.sent.get(&v.session_id, i))
        {
            let us = now.saturating_duration_since(sent).as_micros();
            rep.dispatch_us.push(us.min(u32::MAX as u128) as u32);
        }
    } else {
        rep.retries += 1;
    }
    if active.len() >= spec.capacity as usize {
        rep.oversold += 1;
    }
    active.insert(v.job_id.clone());
    rep.peak = rep.peak.max(active.len() as u64);
    let answer = spec.draw();
    match answer {
        Answer::Silent => {
            rep.silent += 1;
            return None;
        }
        Answer::Ok => rep.answered_ok += 1,
        Answer::Error => rep.answered_error += 1,
        Answer::ModelNotAvailable => rep.answered_mna += 1,
    }
    let delay = spec.delay.pick();
    Some((
        result_for(v, node_id, &answer, delay, &spec.tts_audio),
        delay,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tts_audio_is_the_placeholder_or_n_bytes_of_base64() {
        let decode = |s: &str| crate::protocol::base64::decode(s.as_bytes()).expect("base64");
        assert_eq!(decode(&tts_audio(0)), b"opus-bytes");
        assert_eq!(decode(&tts_audio(32768)).len(), 32768);
    }
}
