//! Load and observation helpers for the failover and durability tests: writers opening
//! sessions in a loop (every acknowledged session id with its time), and `/readyz` polled
//! in the background.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard::server::Running;

use super::{WsClient, fixture, http_url, ws_url};

/// One session open: the session id once `session_init_ack` arrived, else `None`.
pub async fn open_once(url: &str) -> Option<String> {
    let mut s = WsClient::connect(url).await;
    s.send(&fixture("session_init_one_way")).await;
    loop {
        match s.next(Duration::from_secs(2)).await {
            Ok(v) if v["type"] == "session_init_ack" => {
                return v["session_id"].as_str().map(str::to_string);
            }
            Ok(v) if v["type"] == "error" => return None,
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// Writers opening sessions in a loop: (ack time, session id) of every acknowledged one.
pub struct Load {
    pub acked: Arc<Mutex<Vec<(Instant, String)>>>,
    pub failed: Arc<Mutex<u64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(inst: &Running, writers: usize) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(0));
        let url = ws_url(inst, "/ws/session");
        let tasks = (0..writers)
            .map(|_| {
                let (acked, failed, url) = (acked.clone(), failed.clone(), url.clone());
                tokio::spawn(async move {
                    loop {
                        match open_once(&url).await {
                            Some(sid) => acked.lock().unwrap().push((Instant::now(), sid)),
                            None => {
                                *failed.lock().unwrap() += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            acked,
            failed,
            tasks,
        }
    }

    pub fn stop(self) -> (Vec<(Instant, String)>, u64) {
        for t in &self.tasks {
            t.abort();
        }
        let a = self.acked.lock().unwrap().clone();
        let f = *self.failed.lock().unwrap();
        (a, f)
    }
}

/// What `/readyz` answered: (request start, ready?, answer received).
pub type Seen = Arc<Mutex<Vec<(Instant, bool, Instant)>>>;

/// `/readyz` polled every 25 ms: (request start, ready?, answer received).
pub fn watch_readyz(inst: &Running) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s, url) = (seen.clone(), http_url(inst, "/readyz"));
    let task = tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            let at = Instant::now();
            let ok = http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            s.lock().unwrap().push((at, ok, Instant::now()));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    (seen, task)
}

/// Wait until `/readyz` said ready after `since` (5 s at most); how long after `since`.
pub async fn ready_after(ready: &Seen, since: Instant) -> Option<Duration> {
    for _ in 0..250 {
        let seen = ready
            .lock()
            .unwrap()
            .iter()
            .find(|(at, ok, _)| *ok && *at > since)
            .map(|(at, _, _)| at.duration_since(since));
        if seen.is_some() {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
