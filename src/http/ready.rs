//! `/readyz`'s checks of Redis, single-flight.
//!
//! `/readyz` needs no token (Kubernetes probes it on `listen`), and each check costs every
//! cell a pooled connection and three commands (`ROLE`, `FUNCTION LIST`, `INFO memory`;
//! `Store::check_ready`). Checked once per request, a client looping over many kept-alive
//! connections held the pool (32 connections) that admin reads, recovery and the shared
//! connections' re-creation draw on. So at most one check is in flight per instance: a
//! request that arrives while one runs shares its answer, one that arrives after it
//! completed starts the next (a completed check never answers a later request, so an answer
//! is never older than the check that was running when the request came). The check runs
//! in a task of its own: a requester that goes away does not abort it for the others.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::server::App;

/// What one check found, per cell in `[[cells]]` order: usable, or why not.
pub type CellsReport = Vec<(String, Result<(), String>)>;

/// The report; `None` while the check runs.
type Outcome = Option<CellsReport>;

/// The check in flight, or the last one.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<watch::Receiver<Outcome>>>,
}

impl Readiness {
    /// Each cell usable or why not: from the check in flight when this call came, else from
    /// one it starts.
    pub async fn cells(&self, app: &Arc<App>) -> CellsReport {
        let mut rx = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            match &*last {
                // (in flight: no answer yet, and its task still holds the sender)
                Some(rx) if rx.borrow().is_none() && rx.has_changed().is_ok() => rx.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    let app = app.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(Some(check(&app).await));
                    });
                    *last = Some(rx.clone());
                    rx
                }
            }
        };
        let unanswered = |why: &str| {
            app.cells
                .iter()
                .map(|c| (c.name().to_string(), Err(why.to_string())))
                .collect()
        };
        match rx.wait_for(Option::is_some).await {
            Ok(outcome) => outcome
                .clone()
                .unwrap_or_else(|| unanswered("the readiness check gave no answer")),
            Err(_) => unanswered("the readiness check ended without an answer"),
        }
    }
}

/// One check of every cell, all at once: a cell whose Redis hangs costs the probe one
/// `redis.timeout_ms`, not one per cell behind it.
async fn check(app: &App) -> CellsReport {
    let checks = app.cells.iter().map(|cell| async move {
        let usable = cell.store.check_ready().await.map_err(|e| e.to_string());
        (cell.name().to_string(), usable)
    });
    futures_util::future::join_all(checks).await
}
