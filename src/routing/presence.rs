//! Instance presence: renew this instance's TTL'd presence key every `beat_interval`, and
//! take over the inbox of any instance whose presence expired (`instance_beat.lua`); one
//! loop per cell (an instance is present, and may be taken over, in each cell it serves).

use std::sync::Arc;
use std::time::Duration;

use crate::cells::Cell;
use crate::server::App;

/// What the beat remembers across a restart of its loop (`crate::supervise`): the lapse it
/// closed its connections for and has yet to acknowledge.
#[derive(Default)]
pub struct Memory(tokio::sync::Mutex<Option<String>>);

pub async fn run(app: Arc<App>, cell: Arc<Cell>, memory: Arc<Memory>) {
    let mut tick = tokio::time::interval(Duration::from_millis(app.cfg.instance.beat_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = app.shutdown_signal();
    // The lapse this instance closed its connections for, told to the next beat, which
    // then forgets it (kept until a beat's reply says it did: a lost reply forgets nothing).
    // (held for the loop's life; a panic's unwinding releases it, with what it holds)
    let mut ack = memory.0.lock().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // A planned sentinel switch-over raises no error: look for it on every beat.
        cell.store.poll_topology().await;
        // Several dead inboxes, or a long one, are taken over in consecutive calls.
        for _ in 0..16 {
            // (a beat does not wait for replicas: no `Unreplicated` to route here)
            match cell
                .store
                .instance_beat(&app.instance_id, app.started_ms, false, ack.as_deref())
                .await
            {
                Ok(out) => {
                    cell.beat_done();
                    let r = crate::routing::deliver(&app, &cell, out);
                    *ack = None;
                    if r.lapsed {
                        reconnect_cell(&app, &cell);
                        *ack = r.tomb;
                    }
                    if let Some(dead) = &r.took_over {
                        tracing::warn!(cell = cell.name(), dead = %dead, rerouted = r.rerouted, dropped = r.dropped, "took over a dead instance's inbox");
                        app.metrics.takeovers.inc();
                    }
                    if !r.more && r.took_over.is_none() {
                        break;
                    }
                }
                Err(e) if e.is_unavailable() => break,
                Err(e) => {
                    tracing::error!(cell = cell.name(), error = %e, "instance beat failed");
                    break;
                }
            }
        }
    }
}

/// Our presence in `cell` lapsed while we were alive, and it cost messages: a peer took
/// (part of) our inbox there over, or a peer's script dropped a message for one of our
/// connections of that cell (either left the tombstone the beat found). Close each of them
/// with 1012: sessions resume (the result log resends what they missed) and nodes
/// re-register.
fn reconnect_cell(app: &App, cell: &Cell) {
    use crate::gateway::{Kind, Outbound, close};
    tracing::error!(
        cell = cell.name(),
        "presence lapsed while running; closing the cell's connections so they resume"
    );
    app.metrics.presence_lapses.inc();
    for kind in [Kind::Node, Kind::Session] {
        for c in app.conns.in_cell(kind, cell.name()) {
            let _ = c.tx.try_send(Outbound::Close(
                close::RESTARTING,
                "scheduler presence lapsed; reconnect".into(),
            ));
        }
    }
}
