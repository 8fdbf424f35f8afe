//! The periodic `sweep`: every instance calls the script every `sweep.interval_ms`; the
//! script hands each due deadline to exactly one caller (atomic removal), so there is no
//! leader and a dead instance's deadlines are handled by the living. One loop per cell.

use std::sync::Arc;
use std::time::Duration;

use crate::cells::Cell;
use crate::gateway::{Kind, close};
use crate::server::App;
use crate::store::StoreError;

pub async fn run(app: Arc<App>, cell: Arc<Cell>) {
    let mut tick = tokio::time::interval(Duration::from_millis(app.cfg.sweep.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = app.shutdown_signal();
    let mut down_logged = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        loop {
            match sweep_once(&app, &cell).await {
                Ok(more) => {
                    down_logged = false;
                    if !more {
                        break;
                    }
                }
                Err(e) if e.is_unavailable() => {
                    if !down_logged {
                        tracing::warn!(cell = cell.name(), error = %e, "sweep paused: redis unavailable");
                        down_logged = true;
                    }
                    break;
                }
                Err(e) => {
                    tracing::error!(cell = cell.name(), error = %e, "sweep failed");
                    break;
                }
            }
        }
    }
}

/// One sweep call; returns whether more is due right away.
async fn sweep_once(app: &App, cell: &Cell) -> Result<bool, StoreError> {
    // A sweep whose WAIT fell short still sends what it did (failovers' job_assigns,
    // released results): the change is made on the primary.
    // (a sweep does not wait for replicas: no `Unreplicated` to route here)
    let reply = crate::routing::deliver(app, cell, cell.store.sweep().await?);
    for n in &reply.offline {
        tracing::info!(node_id = %n.node_id, "node offline: liveness expired");
        // A silent node whose socket is still open here: close it so it reconnects.
        if n.owner.as_deref() == Some(app.instance_id.as_str())
            && let Some(conn) = &n.conn
        {
            app.conns.close(
                Kind::Node,
                cell.name(),
                &n.node_id,
                conn,
                close::LIVENESS,
                "liveness expired",
            );
        }
    }
    if reply.jobs > 0 || reply.cuts > 0 || reply.released > 0 {
        tracing::debug!(
            jobs = reply.jobs,
            cuts = reply.cuts,
            released = reply.released,
            "sweep"
        );
    }
    Ok(reply.more)
}
