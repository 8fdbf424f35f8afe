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

/// What a check found: every cell usable, or why not; `None` while it runs.
type Outcome = Option<Result<(), String>>;

/// The check in flight, or the last one.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<watch::Receiver<Outcome>>>,
}

impl Readiness {
    /// Every cell usable (an instance serves them all), or why not: from the check in flight
    /// when this call came, else from one it starts.
    pub async fn cells(&self, app: &Arc<App>) -> Result<(), String> {
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
        match rx.wait_for(Option::is_some).await {
            Ok(outcome) => outcome
                .clone()
                .unwrap_or_else(|| Err("the readiness check gave no answer".into())),
            Err(_) => Err("the readiness check ended without an answer".into()),
        }
    }
}

/// One check of every cell, in turn; the first that is not usable says why.
async fn check(app: &App) -> Result<(), String> {
    for cell in app.cells.iter() {
        if let Err(e) = cell.store.check_ready().await {
            return Err(format!("cell {}: {e}", cell.name()));
        }
    }
    Ok(())
}
