//! `/readyz`'s checks of Redis, single-flight.
//!
//! `/readyz` needs no token (Kubernetes probes it on `listen`), and each check costs every
//! cell a pooled connection and three commands (`ROLE`, `FUNCTION LIST`, `INFO memory`;
//! `Store::check_ready`). Checked once per request, a client looping over many kept-alive
//! connections held the pool (32 connections) that admin reads, recovery and the shared
//! connections' re-creation draw on. So one check runs at a time, and requests share it: a
//! request is answered by the first check that started after it arrived (the one it runs,
//! or the one another request ran meanwhile). An answer is never older than its request: a
//! flood of probes costs each cell one check in flight, back to back, and holds one
//! pooled connection.

use std::time::Instant;

use crate::server::App;

/// The last check of the cells: when it started, and what it found (held across a check:
/// single flight).
#[derive(Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    /// Every cell usable (an instance serves them all), or why not, from a check that
    /// started after this call.
    pub async fn cells(&self, app: &App) -> Result<(), String> {
        let arrived = Instant::now();
        let mut last = self.last.lock().await;
        if let Some((started, outcome)) = &*last
            && *started >= arrived
        {
            return outcome.clone();
        }
        let started = Instant::now();
        let mut outcome = Ok(());
        for cell in app.cells.iter() {
            if let Err(e) = cell.store.check_ready().await {
                outcome = Err(format!("cell {}: {e}", cell.name()));
                break;
            }
        }
        *last = Some((started, outcome.clone()));
        outcome
    }
}
