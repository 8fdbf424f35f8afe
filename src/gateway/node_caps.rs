//! How often one node connection may change its capabilities: each change makes the
//! heartbeat script recompute the node's pools (up to 4,160: ~20 ms of Redis, during which
//! the cell's every call waits). A change within `node.capability_change_interval_ms` of
//! the previous one is deferred, not lost: the connection keeps it and applies it with a
//! later heartbeat once the interval has passed, unless the node has announced other
//! capabilities meanwhile (resource audit: one connection flapping its languages took Redis'
//! PING p50 from 0.14 to 24 ms). A `node_register` sent again on a registered connection
//! recomputes them all too: it is refused within the interval.

use std::time::{Duration, Instant};

use crate::capabilities::Capabilities;

/// The pacing state of one node connection.
#[derive(Default)]
pub(super) struct CapsPace {
    /// When the last change was let through (`None`: none yet; the first is never held).
    changed_at: Option<Instant>,
    /// A change held back, applied by a later heartbeat.
    deferred: Option<Capabilities>,
    /// When the connection last registered: a `node_register` sent again recomputes every
    /// pool too, so it is paced with the changes.
    registered_at: Option<Instant>,
}

/// What a heartbeat should apply.
pub(super) enum Paced {
    /// These capabilities (the current ones, or a change let through now).
    Apply(Capabilities),
    /// The current ones: the change the heartbeat asked for waits for the interval.
    Held(Capabilities),
}

impl CapsPace {
    /// The capabilities a heartbeat applies, given the node's `current` ones, what the
    /// heartbeat makes of them (`wanted`) and whether it stated any capability itself
    /// (`stated`: a heartbeat without capability fields brings a held change back).
    pub(super) fn pace(
        &mut self,
        current: &Capabilities,
        wanted: Capabilities,
        stated: bool,
        every_ms: u64,
        now: Instant,
    ) -> Paced {
        let wanted = match self.deferred.take() {
            Some(held) if !stated => held,
            _ => wanted,
        };
        if wanted == *current {
            return Paced::Apply(wanted);
        }
        let every = Duration::from_millis(every_ms);
        if every_ms > 0 && self.changed_at.is_some_and(|t| now < t + every) {
            self.deferred = Some(wanted);
            return Paced::Held(current.clone());
        }
        self.changed_at = Some(now);
        Paced::Apply(wanted)
    }

    /// The heartbeat that was to apply `caps` (a change let through by [`Self::pace`] at
    /// `now`) failed before its script ran or without an answer: the change does not count
    /// against the interval, and it is kept for the next heartbeat, which applies it at once
    /// (unless the node states other capabilities meanwhile).
    pub(super) fn not_applied(
        &mut self,
        caps: Capabilities,
        now: Instant,
        before: Option<Instant>,
    ) {
        if self.changed_at == Some(now) {
            self.changed_at = before;
            self.deferred = Some(caps);
        }
    }

    /// When the last change was let through, to give back to [`Self::not_applied`].
    pub(super) fn changed_at(&self) -> Option<Instant> {
        self.changed_at
    }

    /// May the connection register again now? Not within `every_ms` of its last
    /// registration or capability change (a registration restates every capability).
    pub(super) fn may_register_again(&self, every_ms: u64, now: Instant) -> bool {
        let last = self.changed_at.max(self.registered_at);
        every_ms == 0 || last.is_none_or(|t| now >= t + Duration::from_millis(every_ms))
    }

    /// The connection registered (first or again): what it states now replaces a held change,
    /// and a registration again counts as a change (a heartbeat changing the capabilities
    /// right after it waits for the interval; the first registration starts no interval).
    pub(super) fn registered(&mut self, now: Instant) {
        if self.registered_at.is_some() {
            self.changed_at = Some(now);
        }
        self.registered_at = Some(now);
        self.deferred = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(langs: &[&str]) -> Capabilities {
        let mut c = Capabilities::default();
        c.langs.asr_languages = langs.iter().map(|s| s.to_string()).collect();
        c
    }

    #[test]
    fn a_change_within_the_interval_waits_and_comes_back_with_a_later_heartbeat() {
        let mut p = CapsPace::default();
        let t0 = Instant::now();
        let (a, b, c) = (caps(&["en"]), caps(&["en", "zh"]), caps(&["ja"]));
        let ms = Duration::from_millis;
        // the first change goes through at once
        assert!(matches!(p.pace(&a, b.clone(), true, 1000, t0), Paced::Apply(x) if x == b));
        // a second one within the interval is held: the current ones stay
        assert!(matches!(p.pace(&b, c.clone(), true, 1000, t0 + ms(10)), Paced::Held(x) if x == b));
        // a heartbeat without capabilities, still within the interval: still held
        assert!(
            matches!(p.pace(&b, b.clone(), false, 1000, t0 + ms(500)), Paced::Held(x) if x == b)
        );
        // after the interval a heartbeat without capabilities applies the held change
        assert!(
            matches!(p.pace(&b, b.clone(), false, 1000, t0 + ms(1001)), Paced::Apply(x) if x == c)
        );
        // a node that states its capabilities again drops a held change
        assert!(matches!(
            p.pace(&c, a.clone(), true, 1000, t0 + ms(1002)),
            Paced::Held(_)
        ));
        assert!(
            matches!(p.pace(&c, c.clone(), true, 1000, t0 + ms(1003)), Paced::Apply(x) if x == c)
        );
        assert!(p.deferred.is_none());
        // registering again: not within the interval of the last change or registration
        assert!(!p.may_register_again(1000, t0 + ms(1500)));
        assert!(p.may_register_again(1000, t0 + ms(2002)));
        p.registered(t0 + ms(2002));
        assert!(!p.may_register_again(1000, t0 + ms(2500)));
        assert!(p.may_register_again(0, t0 + ms(2500)));
        // a registration again (not the first) counts as a change for the heartbeats
        p.registered(t0 + ms(3100));
        assert!(matches!(
            p.pace(&c, a.clone(), true, 1000, t0 + ms(3500)),
            Paced::Held(_)
        ));
        let mut first = CapsPace::default();
        first.registered(t0);
        assert!(matches!(
            first.pace(&c, a.clone(), true, 1000, t0),
            Paced::Apply(_)
        ));
        // 0: no pacing
        let mut q = CapsPace::default();
        for i in 0..5 {
            let w = if i % 2 == 0 { b.clone() } else { a.clone() };
            assert!(matches!(q.pace(&a, w.clone(), true, 0, t0), Paced::Apply(x) if x == w));
        }
    }

    #[test]
    fn a_change_whose_heartbeat_failed_does_not_count_and_is_applied_next() {
        let mut p = CapsPace::default();
        let t0 = Instant::now();
        let (en, ja, zh) = (caps(&["en"]), caps(&["ja"]), caps(&["zh"]));
        assert!(matches!(p.pace(&en, ja.clone(), true, 5_000, t0), Paced::Apply(c) if c == ja));
        let t1 = t0 + Duration::from_secs(6);
        let before = p.changed_at();
        assert!(matches!(p.pace(&ja, zh.clone(), true, 5_000, t1), Paced::Apply(c) if c == zh));
        p.not_applied(zh.clone(), t1, before); // Redis did not answer
        // a heartbeat without capabilities right after brings it back, not held
        let t2 = t1 + Duration::from_millis(100);
        assert!(matches!(p.pace(&ja, ja.clone(), false, 5_000, t2), Paced::Apply(c) if c == zh));
    }
}
