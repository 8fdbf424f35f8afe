//! The session writer's reassembly of terminal messages: by the session's sequence number
//! (`out_seq`), once each by utterance index, and with what a lost reply carried put back
//! from the result log ([`Order::recover`]).
//!
//! Every terminal message (`translation_result`, `error`, `missing_result`) names its
//! utterance index, and an index has exactly one (the result log's entry): the writer
//! remembers the indices it wrote, so a message it gets twice — from the log after a lost
//! reply, and by its own path (an inbox entry still on its way) — is written once.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

/// Sequence reassembly for ordered messages (public for the fuzz targets in fuzz/).
#[derive(Default)]
pub struct Order {
    pub(super) expected: Option<u64>,
    pub(super) held: BTreeMap<u64, String>,
    pub(super) gap_since: Option<Instant>,
    /// Numbers skipped over after a gap timed out: if one arrives late it is still written
    /// (once, out of order) rather than lost.
    skipped: BTreeSet<u64>,
    /// Utterance indices of the terminal messages written.
    written: Written,
    /// The lowest utterance index this connection writes from the log: a resumed one's
    /// client has every index up to its `last_received_index` already.
    first_index: u64,
}

/// Skipped sequence numbers remembered, so a late one is still written once.
pub(super) const SKIPPED_KEPT: usize = 1024;

/// Runs of utterance indices written remembered (the highest): a session's results are
/// mostly written in index order, so this is usually one run.
const RUNS_KEPT: usize = 256;

/// Utterance indices written, as disjoint runs `start → end` (exclusive); at most
/// [`RUNS_KEPT`], the lowest forgotten first.
#[derive(Default)]
struct Written(BTreeMap<u64, u64>);

impl Written {
    /// Remember `i`; false if it was written already.
    fn insert(&mut self, i: u64) -> bool {
        let before = self.0.range(..=i).next_back().map(|(&s, &e)| (s, e));
        if before.is_some_and(|(_, e)| i < e) {
            return false;
        }
        let Some(mut end) = i.checked_add(1) else {
            return true; // u64::MAX: never a real index, not remembered
        };
        let mut start = i;
        if let Some((s, e)) = before
            && e == i
        {
            start = s;
        }
        if let Some(e) = self.0.remove(&end) {
            end = e;
        }
        self.0.insert(start, end);
        while self.0.len() > RUNS_KEPT {
            self.0.pop_first();
        }
        true
    }
}

pub use crate::protocol::index_of;

impl Order {
    /// Messages ready to write, in order.
    pub fn push(&mut self, seq: u64, text: String) -> Vec<String> {
        match self.expected {
            Some(_) if self.skipped.remove(&seq) => {
                // late, never written (unless its index came from the log meanwhile)
                return self.fresh(&text).then_some(text).into_iter().collect();
            }
            // A number already passed: normally a message written already (a resend after
            // resume). But a Redis that lost its last commits (a failover without WAIT, an
            // AOF fsynced every second) numbers new messages again from an older `out_seq`:
            // one naming an index this connection has not written (and its client has not
            // got: at or above a resume's first index) is written now, out of order,
            // rather than dropped unseen.
            Some(e) if seq < e => {
                let new =
                    index_of(&text).is_some_and(|i| i >= self.first_index) && self.fresh(&text);
                return new.then_some(text).into_iter().collect();
            }
            _ => {
                self.held.insert(seq, text);
            }
        }
        self.ready()
    }

    /// The next sequence number this connection writes: older held ones are dropped.
    pub fn expect(&mut self, next: u64) -> Vec<String> {
        self.expected = Some(next);
        self.held = self.held.split_off(&next);
        self.ready()
    }

    /// The lowest utterance index [`Order::recover`] writes (a resume's
    /// `last_received_index` + 1).
    pub fn first_index(&mut self, index: u64) {
        self.first_index = index;
    }

    /// The gap lasted too long: continue from the lowest held message (`on_gap = "skip"`).
    pub fn skip(&mut self) -> Vec<String> {
        if let (Some(e), Some((&first, _))) = (self.expected, self.held.iter().next()) {
            self.remember_skipped(e, first, &BTreeMap::new());
            self.expected = Some(first);
        }
        self.ready()
    }

    /// What a reply that was lost carried, read back from the result log: `logged` are
    /// the delivered results of the indices read (index, message), `upto` the session's
    /// `out_seq` read with them — every message numbered up to it is committed, and logged.
    /// Those not written yet are written now, in index order, with the held messages
    /// numbered up to `upto`; the writer then expects `upto + 1`, so what follows is not
    /// held for a gap the log filled. A number up to `upto` that never came is remembered
    /// as skipped: if it is still on its way (an inbox entry) it is written late, once.
    pub fn recover(&mut self, upto: u64, logged: Vec<(u64, String)>) -> Vec<String> {
        let first = self.first_index;
        let mut batch: Vec<(u64, String)> =
            logged.into_iter().filter(|(i, _)| *i >= first).collect();
        if let (Some(e), Some(next)) = (self.expected, upto.checked_add(1))
            && next > e
        {
            let later = self.held.split_off(&next);
            let covered = std::mem::replace(&mut self.held, later);
            self.remember_skipped(e, next, &covered);
            for (_, t) in covered {
                batch.push((index_of(&t).unwrap_or(u64::MAX), t));
            }
            self.expected = Some(next);
        }
        // stable: a message of the log and its copy held here stay together, written once
        batch.sort_by_key(|(i, _)| *i);
        let mut out: Vec<String> = batch
            .into_iter()
            .filter_map(|(_, t)| self.fresh(&t).then_some(t))
            .collect();
        out.extend(self.ready());
        out
    }

    /// Messages held back, and skipped numbers remembered (for the fuzz invariants).
    pub fn sizes(&self) -> (usize, usize) {
        (self.held.len(), self.skipped.len())
    }

    /// Remember the numbers `from..to` not in `held` as skipped. Only the last
    /// SKIPPED_KEPT numbers are remembered, so only those are inserted: a gap of billions
    /// must not loop for ever.
    fn remember_skipped(&mut self, from: u64, to: u64, held: &BTreeMap<u64, String>) {
        let lo = to.saturating_sub(SKIPPED_KEPT as u64).max(from);
        self.skipped
            .extend((lo..to).filter(|n| !held.contains_key(n)));
        while self.skipped.len() > SKIPPED_KEPT {
            self.skipped.pop_first();
        }
    }

    /// Is `text` to be written: not a terminal message of an index written already? An
    /// index it names is remembered as written.
    fn fresh(&mut self, text: &str) -> bool {
        let Some(i) = index_of(text) else {
            return true;
        };
        self.written.insert(i)
    }

    fn ready(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(mut e) = self.expected {
            while let Some(t) = self.held.remove(&e) {
                if self.fresh(&t) {
                    out.push(t);
                }
                // fuzz finding: `e += 1` overflowed after writing number u64::MAX
                let Some(next) = e.checked_add(1) else { break };
                e = next;
            }
            self.expected = Some(e);
        }
        // The gap clock runs only once the expected number is known (before ExpectSeq,
        // messages are simply held).
        self.gap_since = if self.held.is_empty() || self.expected.is_none() {
            None
        } else {
            self.gap_since.or_else(|| Some(Instant::now()))
        };
        out
    }
}
