//! One session's record of what it sent and which terminal messages came back: the judge of
//! "exactly one terminal message per utterance, in order" (DESIGN §1.5), kept free of I/O so
//! its rules are unit-tested.
//!
//! Ordering rule. The scheduler releases results in `utterance_index` order, except that a
//! result held back by an unfinished earlier index goes out once a reorder window expires.
//! That window starts after something was held while the delivery cursor sat on some
//! undelivered index *k*, and results stay held throughout; the client sent *k* before that
//! start and receives *k* only after it. So when index *j* arrives while an earlier index is
//! still missing, and no index *k* < *j* was both sent at least one window ago and still
//! undelivered one window ago, no window can have expired: that is an order violation. The
//! check never blames a legal overtaking; it can only miss a few illegal ones.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What kind of terminal message arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Terminal {
    Result,
    Missing,
    /// An `error` naming the index, with its code.
    Error(String),
}

/// The verdict on one terminal message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// First terminal for a sent index (in order, or legally overtaking); its e2e latency.
    Fresh { latency: Duration, overtook: bool },
    /// Overtook an earlier index although no reorder window could have expired.
    OutOfOrder { latency: Duration },
    /// A second terminal for an index.
    Duplicate,
    /// An index this session never sent.
    Unexpected,
}

#[derive(Clone, Copy)]
struct Utt {
    sent: Instant,
    done: Option<Instant>,
}

/// Sends and terminals of one session, plus the counts the summary needs.
pub struct Ledger {
    utts: Vec<Utt>,
    /// Lowest index without a terminal message.
    low: usize,
    delivered: u64,
    window: Duration,
    pub results: u64,
    pub missing: u64,
    pub errors: BTreeMap<String, u64>,
    pub duplicates: u64,
    pub order_violations: u64,
    pub unexpected: u64,
}

impl Ledger {
    pub fn new(reorder_window: Duration) -> Self {
        Self {
            utts: Vec::new(),
            low: 0,
            delivered: 0,
            window: reorder_window,
            results: 0,
            missing: 0,
            errors: BTreeMap::new(),
            duplicates: 0,
            order_violations: 0,
            unexpected: 0,
        }
    }

    /// Record the next index as sent at `at`; returns that index.
    pub fn send(&mut self, at: Instant) -> u64 {
        self.utts.push(Utt {
            sent: at,
            done: None,
        });
        self.utts.len() as u64 - 1
    }

    pub fn sent(&self) -> u64 {
        self.utts.len() as u64
    }

    /// Sent indices still waiting for their terminal message.
    pub fn outstanding(&self) -> u64 {
        self.sent() - self.delivered
    }

    /// Judge a terminal message for `idx` received at `now`, and count it.
    pub fn terminal(&mut self, idx: u64, kind: Terminal, now: Instant) -> Verdict {
        let Some(u) = usize::try_from(idx)
            .ok()
            .and_then(|i| self.utts.get(i).copied())
        else {
            self.unexpected += 1;
            return Verdict::Unexpected;
        };
        if u.done.is_some() {
            self.duplicates += 1;
            return Verdict::Duplicate;
        }
        let i = idx as usize;
        let overtook = i > self.low;
        let legal = !overtook || self.window_may_have_expired(i, now);
        self.utts[i].done = Some(now);
        self.delivered += 1;
        while self.low < self.utts.len() && self.utts[self.low].done.is_some() {
            self.low += 1;
        }
        match kind {
            Terminal::Result => self.results += 1,
            Terminal::Missing => self.missing += 1,
            Terminal::Error(code) => *self.errors.entry(code).or_default() += 1,
        }
        let latency = now.saturating_duration_since(u.sent);
        if legal {
            Verdict::Fresh { latency, overtook }
        } else {
            self.order_violations += 1;
            Verdict::OutOfOrder { latency }
        }
    }

    /// Some index below `j` was sent at least a window ago and still undelivered then.
    fn window_may_have_expired(&self, j: usize, now: Instant) -> bool {
        let Some(t) = now.checked_sub(self.window) else {
            return false;
        };
        self.utts[..j]
            .iter()
            .rev()
            .any(|u| u.sent <= t && u.done.is_none_or(|d| d > t))
    }

    /// Sent indices that never got a terminal message (at the end of the run: lost).
    pub fn lost(&self) -> u64 {
        self.outstanding()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn in_order_results_are_fresh_and_duplicates_and_strangers_are_counted() {
        let t0 = Instant::now();
        let mut l = Ledger::new(ms(2000));
        assert_eq!(l.send(t0), 0);
        assert_eq!(l.send(t0), 1);
        assert!(matches!(
            l.terminal(0, Terminal::Result, t0 + ms(10)),
            Verdict::Fresh {
                overtook: false,
                ..
            }
        ));
        assert_eq!(
            l.terminal(0, Terminal::Result, t0 + ms(11)),
            Verdict::Duplicate
        );
        assert_eq!(
            l.terminal(7, Terminal::Result, t0 + ms(12)),
            Verdict::Unexpected
        );
        let err = Terminal::Error("JOB_TIMEOUT".into());
        assert!(matches!(
            l.terminal(1, err, t0 + ms(13)),
            Verdict::Fresh { .. }
        ));
        assert_eq!(l.errors.get("JOB_TIMEOUT"), Some(&1));
        assert_eq!(
            (l.results, l.duplicates, l.unexpected, l.lost()),
            (1, 1, 1, 0)
        );
    }

    #[test]
    fn overtaking_is_legal_only_after_a_reorder_window() {
        let t0 = Instant::now();
        let mut l = Ledger::new(ms(2000));
        l.send(t0);
        l.send(t0 + ms(5));
        l.send(t0 + ms(6));
        // Index 1 arrives while 0 is missing, well within the window: a violation.
        assert!(matches!(
            l.terminal(1, Terminal::Result, t0 + ms(100)),
            Verdict::OutOfOrder { .. }
        ));
        // Index 2 arrives after 0 has been outstanding for more than a window: legal.
        assert!(matches!(
            l.terminal(2, Terminal::Result, t0 + ms(2500)),
            Verdict::Fresh { overtook: true, .. }
        ));
        assert_eq!(l.order_violations, 1);
        assert_eq!(l.lost(), 1);
        l.terminal(0, Terminal::Error("JOB_TIMEOUT".into()), t0 + ms(9000));
        assert_eq!(l.lost(), 0);
    }
}
