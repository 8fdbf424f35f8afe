//! What the gateway, routing and store tell the metrics: each method records one thing that
//! happened (a refused credential, a frame, a script call's transitions, a delivery), and
//! `encode` renders the registry for `/metrics`. The families themselves are declared and
//! registered in [`super::metrics`].

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::Ordering::Relaxed;

use super::labels::*;
use super::metrics::Metrics;

impl Metrics {
    pub fn auth_refused(&self, kind: &'static str, e: &crate::auth::AuthError) {
        let reason = match e {
            crate::auth::AuthError::Missing => "missing",
            crate::auth::AuthError::Invalid(_) => "invalid",
            crate::auth::AuthError::Forbidden(_) | crate::auth::AuthError::Narrow => "forbidden",
        };
        self.auth_refused.get_or_create(&msg(kind, reason)).inc();
    }

    pub fn message_in(&self, kind: &'static str, detail: &'static str) {
        self.messages_in.get_or_create(&msg(kind, detail)).inc();
    }

    pub fn rejected(&self, kind: &'static str, detail: &'static str) {
        self.messages_rejected
            .get_or_create(&msg(kind, detail))
            .inc();
    }

    /// A background task is supervised: its restart counter exists, at 0.
    pub fn task_supervised(&self, cell: &str, task: &'static str) {
        let labels = TaskLabels {
            cell: cell.to_string(),
            task,
        };
        let _ = self.task_restarts.get_or_create(&labels);
    }

    /// A background task ended before shutdown and is started again (`crate::supervise`).
    pub fn task_restarted(&self, cell: &str, task: &'static str) {
        let labels = TaskLabels {
            cell: cell.to_string(),
            task,
        };
        self.task_restarts.get_or_create(&labels).inc();
    }

    /// A frame or connection refused by a `[limits]` setting.
    pub fn limited(&self, kind: &'static str, limit: &'static str) {
        self.limited.get_or_create(&msg(kind, limit)).inc();
    }

    /// Count what a script call did (see lua/includes/ctx.lua `count`).
    pub fn record_events(&self, cell: &str, e: &crate::store::Events) {
        for (name, n) in &e.ev {
            match name.split_once(':') {
                Some(("refused", rest)) => self.pools.refused(cell, rest, *n),
                Some(("failed", reason)) => {
                    self.jobs_failed
                        .get_or_create(&ReasonLabels {
                            cell: cell.to_string(),
                            reason: known_code(reason).to_string(),
                        })
                        .inc_by(*n);
                }
                Some(("cut_skipped", reason)) => {
                    let reason = if reason == "too_short" {
                        reason
                    } else {
                        "empty"
                    };
                    self.cuts_skipped
                        .get_or_create(&ReasonLabels {
                            cell: cell.to_string(),
                            reason: reason.to_string(),
                        })
                        .inc_by(*n);
                }
                _ if name == "missing_result" => {
                    self.missing_results.inc_by(*n);
                }
                // (not a job transition: a logged result whose body was gone, not sent)
                _ if name == "body_missing" => {
                    self.delivery_counter("session", "body_missing").inc_by(*n);
                }
                _ => {
                    self.jobs
                        .get_or_create(&EventLabels {
                            cell: cell.to_string(),
                            event: name.clone(),
                        })
                        .inc_by(*n);
                }
            }
        }
        for (i, ms) in e.lat.dispatch.iter().enumerate() {
            self.dispatch_latency.observe(ms / 1000.0);
            if let Some(pool) = e.lat.pool.get(i) {
                self.pools.waited(cell, pool, *ms);
            }
        }
        let tally = self.tally.of(cell);
        for ms in &e.lat.e2e {
            self.e2e_latency.observe(ms / 1000.0);
            tally.e2e_ms.fetch_add(*ms as u64, Relaxed);
        }
        tally
            .done
            .fetch_add(e.ev.get("finished").copied().unwrap_or(0), Relaxed);
        let failed: u64 =
            e.ev.iter()
                .filter(|(k, _)| k.starts_with("failed:"))
                .fold(0, |a, (_, n)| a.saturating_add(*n));
        tally.failed.fetch_add(failed, Relaxed);
    }

    pub fn delivery(&self, kind: &'static str, outcome: &'static str) {
        self.delivery_counter(kind, outcome).inc();
    }

    /// The `switchyard_deliveries_total` series of `kind` and `outcome`, kept by a
    /// connection's writer (`gap_resume`, `gap_skipped`).
    pub fn delivery_counter(&self, kind: &'static str, outcome: &'static str) -> Counter {
        self.deliveries.get_or_create(&msg(kind, outcome)).clone()
    }

    pub fn stale(&self, kind: &str) {
        self.stale_messages
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    pub fn connection_gauge(&self, kind: &str) -> Gauge {
        self.connections
            .get_or_create(&KindLabels { kind: kind.into() })
            .clone()
    }

    /// OpenMetrics text of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
