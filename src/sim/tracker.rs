//! State shared by every simulated peer of one run: when each utterance was sent, and the
//! live counters behind the progress line.
//!
//! The sim owns both ends of every job, so dispatch latency (session sends → node receives
//! `job_assign`) is measured by correlating `(session_id, utterance_index)` here: the
//! session records the send instant before writing, the node looks it up on arrival.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SHARDS: usize = 32;

/// Send instants by session id, then utterance index (sharded to keep locks short).
pub struct SentTimes {
    shards: Vec<Mutex<HashMap<String, HashMap<u64, Instant>>>>,
    hasher: RandomState,
}

impl Default for SentTimes {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl SentTimes {
    fn shard(&self, sid: &str) -> &Mutex<HashMap<String, HashMap<u64, Instant>>> {
        &self.shards[self.hasher.hash_one(sid) as usize % SHARDS]
    }

    /// Record that `sid` sends utterance `idx` now.
    pub fn sent(&self, sid: &str, idx: u64, at: Instant) {
        if let Ok(mut m) = self.shard(sid).lock() {
            m.entry(sid.to_string()).or_default().insert(idx, at);
        }
    }

    /// When `sid` sent `idx`, if it is still outstanding.
    pub fn get(&self, sid: &str, idx: u64) -> Option<Instant> {
        let m = self.shard(sid).lock().ok()?;
        m.get(sid)?.get(&idx).copied()
    }

    /// Forget `idx` of `sid` (it has its terminal message).
    pub fn settled(&self, sid: &str, idx: u64) {
        if let Ok(mut m) = self.shard(sid).lock()
            && let Some(s) = m.get_mut(sid)
        {
            s.remove(&idx);
            if s.is_empty() {
                m.remove(sid);
            }
        }
    }
}

/// Counters read by the progress line while the run goes on.
#[derive(Default)]
pub struct Live {
    pub nodes_ready: AtomicU64,
    /// Nodes and sessions whose connect or handshake failed.
    pub setup_failed: AtomicU64,
    pub sessions_open: AtomicU64,
    pub sent: AtomicU64,
    pub terminals: AtomicU64,
    pub results: AtomicU64,
    pub errors: AtomicU64,
    pub assigns: AtomicU64,
    /// Microseconds from the run's start to the first send and to the last terminal message
    /// (bounds of the throughput window).
    pub first_send_us: AtomicU64,
    pub last_terminal_us: AtomicU64,
}

impl Live {
    pub fn new() -> Self {
        Self {
            first_send_us: AtomicU64::new(u64::MAX),
            ..Self::default()
        }
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Wall-clock milliseconds since the epoch (the protocol's `timestamp` fields).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Everything a peer needs from the run: its clock origin, the send map, the counters.
pub struct Shared {
    pub start: Instant,
    pub sent: SentTimes,
    pub live: Live,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            sent: SentTimes::default(),
            live: Live::new(),
        }
    }

    fn since_start_us(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_micros() as u64
    }

    /// Count a send and remember it for dispatch latency.
    pub fn on_send(&self, sid: &str, idx: u64, at: Instant) {
        self.sent.sent(sid, idx, at);
        Live::inc(&self.live.sent);
        self.live
            .first_send_us
            .fetch_min(self.since_start_us(at), Ordering::Relaxed);
    }

    /// Count a terminal message.
    pub fn on_terminal(&self, sid: &str, idx: u64, at: Instant) {
        self.sent.settled(sid, idx);
        Live::inc(&self.live.terminals);
        self.live
            .last_terminal_us
            .fetch_max(self.since_start_us(at), Ordering::Relaxed);
    }

    /// The throughput window: first send → last terminal message.
    pub fn busy_window(&self) -> Duration {
        let a = Live::get(&self.live.first_send_us);
        let b = Live::get(&self.live.last_terminal_us);
        if a == u64::MAX || b <= a {
            Duration::ZERO
        } else {
            Duration::from_micros(b - a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_times_are_found_until_settled() {
        let s = Shared::new();
        let t = Instant::now();
        s.on_send("s-1", 3, t);
        assert_eq!(s.sent.get("s-1", 3), Some(t));
        assert_eq!(s.sent.get("s-1", 4), None);
        s.on_terminal("s-1", 3, t + Duration::from_millis(5));
        assert_eq!(s.sent.get("s-1", 3), None);
        assert!(s.busy_window() >= Duration::from_millis(5));
    }
}
