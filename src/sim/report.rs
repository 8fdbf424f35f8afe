//! The end-of-run summary: what every node and session reported, folded into counts,
//! throughput and latency percentiles, printed as a table or as one JSON object.
//!
//! The JSON field names are the interface of bench/run.sh; change them together.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::node::NodeReport;
use super::session::SessionReport;

/// Latency percentiles in milliseconds (nearest rank).
#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(mut us: Vec<u32>) -> Self {
        if us.is_empty() {
            return Self::default();
        }
        us.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * us.len() as f64).ceil() as usize).clamp(1, us.len());
            f64::from(us[rank - 1]) / 1000.0
        };
        Self {
            count: us.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub nodes_requested: usize,
    pub nodes_registered: usize,
    pub sessions_requested: usize,
    pub sessions_opened: usize,
    /// The first few connect / handshake failures (after retries).
    pub setup_errors: Vec<String>,
    /// Handshakes that failed once and were tried again.
    pub setup_retries: u64,
    pub utterances_sent: u64,
    /// `translation_result`s (first per index).
    pub results: u64,
    pub missing_results: u64,
    /// Terminal `error`s by code.
    pub errors_by_code: BTreeMap<String, u64>,
    /// `error`s that named no utterance (not terminal), by code.
    pub other_errors_by_code: BTreeMap<String, u64>,
    pub lost: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    /// Terminal messages for indices the session never sent.
    pub unexpected: u64,
    pub job_assigns: u64,
    /// `job_assign`s with attempt > 1 (failovers).
    pub failover_assigns: u64,
    /// Jobs the nodes left unanswered on purpose (--no-result-rate).
    pub silent_jobs: u64,
    pub job_cancels: u64,
    /// `error` frames nodes received (e.g. fenced late results).
    pub node_errors_received: u64,
    /// `job_assign`s that found a node at its announced capacity (must be 0).
    pub oversold: u64,
    pub node_heartbeats: u64,
    pub nodes_dropped: usize,
    pub sessions_dropped: usize,
    /// Wall time of the whole run, connection set-up included.
    pub elapsed_s: f64,
    /// First utterance sent → last terminal message received.
    pub busy_s: f64,
    /// Terminal messages per second over `busy_s`.
    pub terminals_per_s: f64,
    /// `translation_result`s per second over `busy_s`.
    pub results_per_s: f64,
    /// Session sends utterance → node receives `job_assign` (first attempts).
    pub dispatch: Percentiles,
    /// Session sends utterance → session receives its terminal message.
    pub end_to_end: Percentiles,
}

impl Summary {
    pub fn build(
        nodes: Vec<NodeReport>,
        sessions: Vec<SessionReport>,
        elapsed: Duration,
        busy: Duration,
    ) -> Self {
        let mut s = Summary {
            nodes_requested: nodes.len(),
            sessions_requested: sessions.len(),
            elapsed_s: elapsed.as_secs_f64(),
            busy_s: busy.as_secs_f64(),
            ..Summary::default()
        };
        let mut dispatch = Vec::new();
        for n in nodes {
            s.nodes_registered += usize::from(n.registered);
            s.nodes_dropped += usize::from(n.dropped);
            s.setup_retries += n.setup_retries;
            if let Some(e) = n.setup_error
                && s.setup_errors.len() < 5
            {
                s.setup_errors.push(format!("node: {e}"));
            }
            s.job_assigns += n.assigns;
            s.failover_assigns += n.retries;
            s.silent_jobs += n.silent;
            s.job_cancels += n.cancels;
            s.node_errors_received += n.errors_received;
            s.oversold += n.oversold;
            s.node_heartbeats += n.heartbeats;
            dispatch.extend(n.dispatch_us);
        }
        let mut e2e = Vec::new();
        for r in sessions {
            s.sessions_opened += usize::from(r.opened);
            s.sessions_dropped += usize::from(r.dropped);
            s.setup_retries += r.setup_retries;
            if let Some(e) = r.setup_error
                && s.setup_errors.len() < 5
            {
                s.setup_errors.push(format!("session: {e}"));
            }
            s.utterances_sent += r.sent;
            s.results += r.results;
            s.missing_results += r.missing;
            s.lost += r.lost;
            s.duplicates += r.duplicates;
            s.order_violations += r.order_violations;
            s.unexpected += r.unexpected;
            for (k, v) in r.errors {
                *s.errors_by_code.entry(k).or_default() += v;
            }
            for (k, v) in r.other_errors {
                *s.other_errors_by_code.entry(k).or_default() += v;
            }
            e2e.extend(r.e2e_us);
        }
        let terminals = s.results + s.missing_results + s.errors_by_code.values().sum::<u64>();
        if s.busy_s > 0.0 {
            s.terminals_per_s = terminals as f64 / s.busy_s;
            s.results_per_s = s.results as f64 / s.busy_s;
        }
        s.dispatch = Percentiles::of(dispatch);
        s.end_to_end = Percentiles::of(e2e);
        s
    }

    /// Nothing lost, duplicated, reordered or unexpected.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.order_violations == 0 && self.unexpected == 0
    }

    /// Every node registered and every session opened.
    pub fn set_up(&self) -> bool {
        self.nodes_registered == self.nodes_requested
            && self.sessions_opened == self.sessions_requested
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<28} {v}");
        };
        row(
            "nodes registered",
            format!("{} / {}", self.nodes_registered, self.nodes_requested),
        );
        row(
            "sessions opened",
            format!("{} / {}", self.sessions_opened, self.sessions_requested),
        );
        row("handshake retries", self.setup_retries.to_string());
        row("utterances sent", self.utterances_sent.to_string());
        row("results", self.results.to_string());
        row("missing_result", self.missing_results.to_string());
        row("errors by code", codes(&self.errors_by_code));
        row("other errors", codes(&self.other_errors_by_code));
        row("lost", self.lost.to_string());
        row("duplicates", self.duplicates.to_string());
        row("order violations", self.order_violations.to_string());
        row("unexpected indices", self.unexpected.to_string());
        row(
            "job_assign (failovers)",
            format!("{} ({})", self.job_assigns, self.failover_assigns),
        );
        row(
            "silent jobs / cancels",
            format!("{} / {}", self.silent_jobs, self.job_cancels),
        );
        row("oversold", self.oversold.to_string());
        row(
            "dropped nodes / sessions",
            format!("{} / {}", self.nodes_dropped, self.sessions_dropped),
        );
        row(
            "throughput",
            format!(
                "{:.1} results/s, {:.1} terminals/s over {:.1} s",
                self.results_per_s, self.terminals_per_s, self.busy_s
            ),
        );
        row("dispatch latency", latency(&self.dispatch));
        row("end-to-end latency", latency(&self.end_to_end));
        for e in &self.setup_errors {
            row("set-up error", e.clone());
        }
        let verdict = if self.passed() {
            "PASS: every utterance has exactly one terminal message, in order"
        } else {
            "FAIL: utterances lost, duplicated or reordered"
        };
        format!(
            "switchyard sim summary ({:.1} s)\n{t}{verdict}\n",
            self.elapsed_s
        )
    }
}

fn codes(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn latency(p: &Percentiles) -> String {
    if p.count == 0 {
        return "-".into();
    }
    format!(
        "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n={})",
        p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms, p.count
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let p = Percentiles::of((1..=100).map(|ms| ms * 1000).collect());
        assert_eq!(
            (p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(Percentiles::of(vec![]).count, 0);
    }

    #[test]
    fn a_lost_utterance_fails_the_run() {
        let lost = SessionReport {
            opened: true,
            sent: 2,
            results: 1,
            lost: 1,
            ..SessionReport::default()
        };
        let s = Summary::build(vec![], vec![lost], Duration::from_secs(1), Duration::ZERO);
        assert!(!s.passed());
        assert!(s.table().contains("FAIL"));
    }
}
