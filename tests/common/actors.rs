//! Test peers built from lingua frames: a node that answers every `job_assign` by itself
//! (recording what it got and its peak concurrency), and session helpers.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::connect_async_with_config;
use tokio_tungstenite::tungstenite::Message;

use switchyard::server::Running;

use super::{WsClient, fixture};

/// A `job_result` for `assign` from the lingua success fixture, with `text_translated`.
pub fn result_for(assign: &Value, text: &str) -> Value {
    let mut r = fixture("job_result_success");
    for k in [
        "job_id",
        "attempt_id",
        "session_id",
        "utterance_index",
        "trace_id",
    ] {
        r[k] = assign[k].clone();
    }
    r["node_id"] = Value::Null;
    r["text_translated"] = json!(text);
    r
}

/// A node that answers every job after `delay` with text `T<utterance_index>`.
pub struct AutoNode {
    pub id: String,
    pub assigns: Arc<Mutex<Vec<Value>>>,
    pub peak: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl AutoNode {
    pub async fn start(url: &str, mut register: Value, delay: Duration) -> Self {
        let (ws, _) = connect_async_with_config(url, None, true)
            .await
            .expect("node connects");
        let (mut sink, mut stream) = ws.split();
        register["node_id"] = Value::Null;
        sink.send(Message::Text(register.to_string().into()))
            .await
            .expect("send");
        let id = loop {
            match stream.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("json");
                    if v["type"] == "node_register_ack" {
                        break v["node_id"].as_str().expect("id").to_string();
                    }
                }
                other => panic!("no register ack: {other:?}"),
            }
        };
        let assigns = Arc::new(Mutex::new(Vec::new()));
        let peak = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = mpsc::channel::<String>(1024);
        let (a, p, node_id) = (assigns.clone(), peak.clone(), id.clone());
        let task = tokio::spawn(async move {
            let inflight = Arc::new(AtomicUsize::new(0));
            let mut beat = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = beat.tick() => {
                        let mut hb = fixture("node_heartbeat");
                        hb["node_id"] = json!(node_id);
                        if sink.send(Message::Text(hb.to_string().into())).await.is_err() { return }
                    }
                    out = rx.recv() => match out {
                        Some(t) => if sink.send(Message::Text(t.into())).await.is_err() { return },
                        None => return,
                    },
                    msg = stream.next() => {
                        let t = match msg {
                            Some(Ok(Message::Text(t))) => t,
                            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                            _ => return,
                        };
                        let v: Value = serde_json::from_str(t.as_str()).expect("json");
                        if v["type"] != "job_assign" {
                            continue;
                        }
                        let now = inflight.fetch_add(1, Ordering::SeqCst) + 1;
                        p.fetch_max(now, Ordering::SeqCst);
                        a.lock().unwrap().push(v.clone());
                        let (tx, inflight, node_id) = (tx.clone(), inflight.clone(), node_id.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let mut r = result_for(&v, &format!("T{}", v["utterance_index"]));
                            r["node_id"] = json!(node_id);
                            inflight.fetch_sub(1, Ordering::SeqCst);
                            let _ = tx.send(r.to_string()).await;
                        });
                    }
                }
            }
        });
        Self {
            id,
            assigns,
            peak,
            task,
        }
    }

    pub fn jobs(&self) -> usize {
        self.assigns.lock().unwrap().len()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// A node on `inst` registered from the lingua fixture (with `id`, or a minted one).
pub async fn node_on(inst: &Running, id: Option<&str>) -> (WsClient, String) {
    let mut n = WsClient::connect(&super::ws_url(inst, "/ws/node")).await;
    let nid = n.register_id(fixture("node_register_first"), id).await;
    (n, nid)
}

/// A one-way session on `inst` from the lingua fixture.
pub async fn session_on(inst: &Running) -> (WsClient, String) {
    open_session(
        &super::ws_url(inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await
}

/// The `job_result` node `node_id` sends for `assign`, translated as `text`.
pub fn answer(assign: &Value, node_id: &str, text: &str) -> Value {
    let mut r = result_for(assign, text);
    r["node_id"] = json!(node_id);
    r
}

/// [`answer`] carrying `bytes` of TTS audio (as base64, distinct per `text`): a result
/// large enough to be staged and logged apart from its header.
pub fn answer_with_tts(assign: &Value, node_id: &str, text: &str, bytes: usize) -> Value {
    use base64::Engine;
    let audio: Vec<u8> = text.bytes().cycle().take(bytes).collect();
    let mut r = answer(assign, node_id, text);
    r["tts_audio"] = json!(base64::engine::general_purpose::STANDARD.encode(audio));
    r
}

/// A heartbeat round trip on session connection `s`: an instance handles a socket's frames
/// in order, so every frame sent before it has been handled (its script has run).
pub async fn handled(s: &mut WsClient, sid: &str) {
    let mut hb = crate::common::fixture("client_heartbeat");
    hb["session_id"] = json!(sid);
    s.send(&hb).await;
    s.recv_type("server_heartbeat").await;
}

/// The next `job_assign` on node connection `n` (within 5 s).
pub async fn assign(n: &mut WsClient) -> Value {
    next_of(n, "job_assign", Duration::from_secs(5))
        .await
        .expect("job_assign")
}

/// Node `n` answers `a` with the lingua success fixture, `text_asr` = `asr`.
pub async fn answer_asr(n: &mut WsClient, a: &Value, nid: &str, asr: &str) {
    let mut r = result_for(a, &format!("T{}", a["utterance_index"]));
    r["node_id"] = json!(nid);
    r["text_asr"] = json!(asr);
    n.send(&r).await;
}

/// Open a session from a lingua `session_init`; returns the client and the session id.
pub async fn open_session(url: &str, init: Value) -> (WsClient, String) {
    let (s, ack) = open_session_ack(url, init).await;
    let sid = ack["session_id"].as_str().expect("session_id").to_string();
    (s, sid)
}

/// Open a session; returns the client and the whole `session_init_ack` (its
/// `resume_token` is what a resume must present).
pub async fn open_session_ack(url: &str, init: Value) -> (WsClient, Value) {
    let mut s = WsClient::connect(url).await;
    s.send(&init).await;
    let ack = s.recv_type("session_init_ack").await;
    (s, ack)
}

/// The lingua fixture `name` (a session's frame) for session `sid`.
pub fn for_session(name: &str, sid: &str) -> Value {
    let mut f = fixture(name);
    f["session_id"] = json!(sid);
    f
}

/// The lingua `utterance` fixture for `sid` with index `idx`.
pub fn utterance(sid: &str, idx: u64) -> Value {
    let mut u = for_session("utterance", sid);
    u["utterance_index"] = json!(idx);
    u
}

/// Is this a terminal message for an utterance index?
pub fn is_terminal(v: &Value) -> bool {
    matches!(
        v["type"].as_str(),
        Some("translation_result") | Some("missing_result")
    ) || (v["type"] == "error" && v.get("utterance_index").is_some_and(|i| !i.is_null()))
}

/// A terminal message's (utterance index, type or error code); `None` for any other
/// message (what the load scenarios log of each frame).
pub fn terminal_of(v: &Value) -> Option<(u64, String)> {
    if !is_terminal(v) {
        return None;
    }
    let i = v["utterance_index"].as_u64().unwrap_or(u64::MAX);
    let kind = if v["type"] == "error" {
        v["code"].as_str().unwrap_or("error")
    } else {
        v["type"].as_str().unwrap_or("")
    };
    Some((i, kind.to_string()))
}

/// Read until `n` terminal messages arrived (skipping ui_event/asr_partial); panics on
/// timeout. Returns them in arrival order.
pub async fn terminals(s: &mut WsClient, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match s.next(left).await {
            Ok(v) if is_terminal(&v) => out.push(v),
            Ok(_) => {}
            Err(e) => panic!("after {} of {n} terminal messages: {e:?}", out.len()),
        }
    }
    out
}

/// Next message of `kind` on a node connection (skipping others).
pub async fn next_of(ws: &mut WsClient, kind: &str, timeout: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next(left).await {
            Ok(v) if v["type"] == kind => return Some(v),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}
