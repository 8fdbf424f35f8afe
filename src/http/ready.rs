//! `/readyz`'s checks of Redis, single-flight.
//!
//! `/readyz` needs no token (Kubernetes probes it on `listen`), and each check costs every
//! cell a pooled connection and three commands (`ROLE`, `FUNCTION LIST`, `INFO memory`;
//! `Store::check_ready`). Checked once per request, a client looping over many kept-alive
//! connections held the pool (32 connections) that admin reads, recovery and the shared
//! connections' re-creation draw on. So one check runs at a time; requests that arrive
//! meanwhile wait for it, and a request takes the last result if it was completed no
//! earlier than `REUSE` before the request arrived. An answer is never older than that:
//! the readiness a probe sees still changes within a tenth of a second of Redis'.

use std::time::{Duration, Instant};

use crate::server::App;

/// How old a completed check may be and still answer a request that arrives after it.
const REUSE: Duration = Duration::from_millis(100);

/// The last check of the cells and when it completed (held across a check: single flight).
#[derive(Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    /// Every cell usable (an instance serves them all), or why not: from a check completed
    /// at most `REUSE` before this call, or from the one this call runs or waits for.
    pub async fn cells(&self, app: &App) -> Result<(), String> {
        let arrived = Instant::now();
        let mut last = self.last.lock().await;
        if let Some((at, outcome)) = &*last
            && *at + REUSE >= arrived
        {
            return outcome.clone();
        }
        let mut outcome = Ok(());
        for cell in app.cells.iter() {
            if let Err(e) = cell.store.check_ready().await {
                outcome = Err(format!("cell {}: {e}", cell.name()));
                break;
            }
        }
        *last = Some((Instant::now(), outcome.clone()));
        outcome
    }
}
