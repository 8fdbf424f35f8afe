//! Abuse limits that are pure decisions, testable without a socket or Redis.
//!
//! [`FrameBucket`] is the per-connection inbound frame limit (DESIGN §8 "every connection is
//! bounded"): a token bucket (`rate` frames per second, up to `burst` at once). A frame that
//! finds the bucket empty is dropped unprocessed and counted as a strike; strikes reset when
//! the bucket is full again (the peer went quiet long enough), so a peer that keeps sending
//! over the limit reaches `max_strikes` and is closed, while one that bursts now and then is
//! only slowed down. Limits that need credentials (per tenant, per token subject) belong
//! here too, next to this one.

use std::time::Instant;

/// What to do with one inbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: process it.
    Allow,
    /// Over the limit: drop it and answer `RATE_LIMITED`.
    Limited,
    /// Over the limit `max_strikes` times without a pause: close the connection (1008).
    Close,
}

/// Token bucket for the frames of one connection.
#[derive(Debug, Clone)]
pub struct FrameBucket {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens held: the burst a quiet peer may send at once.
    burst: f64,
    /// Over-limit frames tolerated (each answered `RATE_LIMITED`) before the close.
    max_strikes: u32,
    tokens: f64,
    strikes: u32,
    last: Instant,
}

impl FrameBucket {
    /// A full bucket. `rate` and `burst` are clamped to at least one frame.
    pub fn new(rate: f64, burst: u32, max_strikes: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: if rate.is_finite() {
                rate.max(1e-3)
            } else {
                1e-3
            },
            burst,
            max_strikes,
            tokens: burst,
            strikes: 0,
            last: now,
        }
    }

    /// Take a token for one frame arriving at `now`.
    pub fn take(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= self.burst {
            self.strikes = 0;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        self.strikes = self.strikes.saturating_add(1);
        if self.strikes > self.max_strikes {
            Verdict::Close
        } else {
            Verdict::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(t: Instant, n: u64) -> Instant {
        t + Duration::from_millis(n)
    }

    #[test]
    fn a_burst_passes_then_frames_are_limited_then_closed() {
        let t = Instant::now();
        let mut b = FrameBucket::new(10.0, 5, 3, t);
        for _ in 0..5 {
            assert_eq!(b.take(t), Verdict::Allow);
        }
        assert_eq!(b.take(t), Verdict::Limited);
        assert_eq!(b.take(t), Verdict::Limited);
        assert_eq!(b.take(t), Verdict::Limited);
        assert_eq!(b.take(t), Verdict::Close, "the fourth strike closes");
    }

    #[test]
    fn tokens_refill_at_the_rate() {
        let t = Instant::now();
        let mut b = FrameBucket::new(10.0, 2, 100, t);
        assert_eq!(b.take(t), Verdict::Allow);
        assert_eq!(b.take(t), Verdict::Allow);
        assert_eq!(b.take(t), Verdict::Limited);
        assert_eq!(b.take(ms(t, 50)), Verdict::Limited, "half a token");
        assert_eq!(b.take(ms(t, 100)), Verdict::Allow, "one token after 100 ms");
        // a steady 10/s never hits the limit
        for i in 1..100 {
            assert_eq!(b.take(ms(t, 100 + i * 100)), Verdict::Allow);
        }
    }

    #[test]
    fn strikes_reset_once_the_peer_pauses() {
        let t = Instant::now();
        let mut b = FrameBucket::new(10.0, 2, 2, t);
        b.take(t);
        b.take(t);
        assert_eq!(b.take(t), Verdict::Limited);
        assert_eq!(b.take(t), Verdict::Limited);
        // 200 ms refill the bucket of 2: strikes forgiven
        let later = ms(t, 200);
        assert_eq!(b.take(later), Verdict::Allow);
        assert_eq!(b.take(later), Verdict::Allow);
        assert_eq!(b.take(later), Verdict::Limited);
        assert_eq!(b.take(later), Verdict::Limited);
        assert_eq!(b.take(later), Verdict::Close);
    }

    #[test]
    fn a_steady_peer_just_over_the_rate_is_closed_eventually() {
        let t = Instant::now();
        let mut b = FrameBucket::new(10.0, 5, 10, t);
        let mut closed_at = None;
        for i in 0..1000u64 {
            // 12.5 frames per second against a limit of 10
            if b.take(ms(t, i * 80)) == Verdict::Close {
                closed_at = Some(i);
                break;
            }
        }
        assert!(closed_at.is_some(), "never closed");
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let t = Instant::now();
        let mut b = FrameBucket::new(1.0, 1, 5, ms(t, 1000));
        assert_eq!(b.take(ms(t, 1000)), Verdict::Allow);
        assert_eq!(b.take(t), Verdict::Limited);
    }
}

/// What one key holds at once on this instance: connections per tenant
/// (`limits.max_connections_per_tenant`, a slot taken at the upgrade and given back when
/// the connection ends), console streams per credential holder
/// (`limits.max_console_streams_per_credential`).
#[derive(Debug, Default)]
pub struct KeyedSlots(std::sync::Mutex<std::collections::HashMap<String, usize>>);

/// One slot of a key (a tenant's connection, a holder's stream); given back on drop.
#[derive(Debug)]
pub struct KeyedSlot {
    slots: std::sync::Arc<KeyedSlots>,
    key: String,
}

impl KeyedSlots {
    /// A slot for `key` (a tenant, a holder) if it holds fewer than `max` (0: no limit).
    pub fn acquire(self: &std::sync::Arc<Self>, key: &str, max: usize) -> Option<KeyedSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.to_string()).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(KeyedSlot {
            slots: self.clone(),
            key: key.to_string(),
        })
    }

    /// Slots `key` holds now.
    pub fn held(&self, key: &str) -> usize {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(key).copied().unwrap_or(0)
    }
}

impl Drop for KeyedSlot {
    fn drop(&mut self) {
        let mut m = self.slots.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key); // the map holds only keys with slots
            }
        }
    }
}

#[cfg(test)]
mod tenant_tests {
    use super::*;

    #[test]
    fn tenant_slots_are_bounded_and_given_back() {
        let slots = std::sync::Arc::new(KeyedSlots::default());
        let a = slots.acquire("acme", 2).expect("1st");
        let _b = slots.acquire("acme", 2).expect("2nd");
        assert!(slots.acquire("acme", 2).is_none(), "3rd refused");
        assert!(
            slots.acquire("globex", 2).is_some(),
            "other tenants unaffected"
        );
        drop(a);
        assert_eq!(slots.held("acme"), 1);
        assert!(slots.acquire("acme", 2).is_some());
        assert!(slots.acquire("acme", 0).is_some(), "0 = no limit");
    }
}
