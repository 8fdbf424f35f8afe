//! What the dashboard shows, live: one snapshot of the cell (instances, pools, nodes,
//! throughput and latency of the last minute, recent failures) built from Redis reads,
//! pushed every second over SSE (`/api/v1/console/stream`; `?access_token=` because a
//! browser's EventSource cannot set headers). The sparklines come from `stats:<second>`
//! keys every instance adds its own last second to ([`run_stats`]): one round trip per
//! instance per second, whatever the load, and nothing on the job path.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::cells::Cell;
use crate::http::admin::OneCell;
use crate::server::App;
use crate::store::StoreError;

/// Seconds of history the sparklines show.
const SERIES_S: u64 = 60;
/// Failures listed at most.
const FAILURES: usize = 20;
/// Nodes listed at most.
const NODES: usize = 500;

/// This instance's counters of one cell since the last [`run_stats`] tick (fed by the
/// script events in `Metrics::record_events`).
#[derive(Debug, Default)]
pub struct Tally {
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub e2e_ms: AtomicU64,
}

/// One [`Tally`] per cell.
#[derive(Debug, Default)]
pub struct Tallies(std::sync::Mutex<std::collections::HashMap<String, Arc<Tally>>>);

impl Tallies {
    pub fn of(&self, cell: &str) -> Arc<Tally> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(cell.to_string()).or_default().clone()
    }
}

/// Every second: add this instance's counters of the past second in `cell` to the cell's
/// `stats:<second>`.
pub async fn run_stats(app: Arc<App>, cell: Arc<Cell>) {
    let t = app.metrics.tally.of(cell.name());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = app.shutdown_signal();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (done, failed, e2e) = (
            t.done.swap(0, Ordering::Relaxed),
            t.failed.swap(0, Ordering::Relaxed),
            t.e2e_ms.swap(0, Ordering::Relaxed),
        );
        let conns = app.live_conns.load(Ordering::Relaxed) as u64;
        let second = crate::protocol::now_ms() / 1000;
        if let Err(e) = cell.store.stats_add(second, done, failed, e2e, conns).await {
            // Lost counts only thin a sparkline; put them back for the next try.
            t.done.fetch_add(done, Ordering::Relaxed);
            t.failed.fetch_add(failed, Ordering::Relaxed);
            t.e2e_ms.fetch_add(e2e, Ordering::Relaxed);
            tracing::debug!(error = %e, "console statistics not written");
        }
    }
}

fn num(h: &std::collections::HashMap<String, String>, k: &str) -> u64 {
    h.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// One picture of a cell, as the dashboard draws it.
pub async fn snapshot(app: &App, cell: &Cell) -> Result<Value, StoreError> {
    let store = &cell.store;
    let now = crate::protocol::now_ms();
    let nodes = store.nodes(NODES).await?;
    let pools = store.pools().await?;
    let names: Vec<String> = pools.keys().cloned().collect();
    let heads = store.queue_heads(&names).await?;
    let sec = now / 1000;
    let stats = store.stats_read(sec - SERIES_S, sec - 1).await?;
    let latest = store.stats_read(sec - 2, sec - 1).await?;
    let instances = store.instances().await?;
    let failures = store.recent_failures(FAILURES).await?;

    let mut load = std::collections::HashMap::new();
    let node_list: Vec<Value> = nodes
        .iter()
        .map(|h| {
            let id = h.get("id").cloned().unwrap_or_default();
            let down: Vec<String> = h
                .iter()
                .filter_map(|(k, v)| {
                    let svc = k.strip_prefix("down:")?;
                    (v.parse::<u64>().ok()? > now).then(|| svc.to_string())
                })
                .collect();
            load.insert(id.clone(), (num(h, "reserved"), num(h, "capacity")));
            let get = |k: &str| h.get(k).cloned().unwrap_or_default();
            json!({"id": id, "state": get("state"), "reserved": num(h, "reserved"),
                   "capacity": num(h, "capacity"), "version": get("version"),
                   "cpu": get("cpu"), "gpu": get("gpu"), "running_jobs": get("running_jobs"),
                   "owner": get("owner"), "tenant": get("tenant"), "services": get("services"),
                   "down": down, "last_hb": num(h, "last_hb")})
        })
        .collect();
    let pool_list: Vec<Value> = pools
        .into_iter()
        .zip(heads)
        .map(|((name, members), (depth, oldest))| {
            let (r, c) = members.iter().fold((0, 0), |(r, c), m| {
                let (mr, mc) = load.get(m).copied().unwrap_or((0, 0));
                (r + mr, c + mc)
            });
            json!({"pool": name, "members": members, "reserved": r, "capacity": c,
                   "queue": depth, "oldest_wait_ms": oldest.map(|t| now.saturating_sub(t))})
        })
        .collect();
    // Each instance's connections and version, from the newest second that has them.
    let mut conns = std::collections::HashMap::new();
    for h in &latest {
        for (k, v) in h {
            if let Some(i) = k.strip_prefix("i:") {
                conns.insert(i.to_string(), v.clone());
            }
        }
    }
    let inst_list: Vec<Value> = instances
        .into_iter()
        .map(|(id, (expires, started))| {
            let info = conns.get(&id).cloned().unwrap_or_default();
            let (c, v) = info.split_once(' ').unwrap_or(("", ""));
            json!({"instance": id, "self": id == app.instance_id, "started_at_ms": started,
                   "presence_expires_at_ms": expires, "connections": c.parse::<u64>().ok(),
                   "version": v})
        })
        .collect();
    let done: Vec<u64> = stats.iter().map(|h| num(h, "done")).collect();
    let failed: Vec<u64> = stats.iter().map(|h| num(h, "failed")).collect();
    let e2e: Vec<Option<u64>> = stats
        .iter()
        .map(|h| {
            let d = num(h, "done");
            (d > 0).then(|| num(h, "e2e_ms") / d)
        })
        .collect();
    let fail_list: Vec<Value> = failures
        .iter()
        .map(|f| {
            let mut it = f.splitn(4, ' ');
            let at: Option<u64> = it.next().and_then(|t| t.parse().ok());
            json!({"at_ms": at, "job_id": it.next(), "code": it.next(), "message": it.next()})
        })
        .collect();
    Ok(
        json!({"at_ms": now, "instance": app.instance_id, "cell": cell.name(),
              "cells": app.cells.iter().map(|c| c.name()).collect::<Vec<_>>(),
              "instances": inst_list,
              "pools": pool_list, "nodes": node_list, "failures": fail_list,
              "series": {"done_per_s": done, "failed_per_s": failed, "e2e_ms_avg": e2e}}),
    )
}

/// `GET /api/v1/console/snapshot[?cell=NAME]`: one snapshot of a cell (the default cell
/// unless named), what the stream sends every second.
pub async fn snapshot_json(State(app): State<Arc<App>>, OneCell(cell): OneCell) -> Response {
    match snapshot(&app, &cell).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => super::unavailable(e),
    }
}

/// `GET /api/v1/console/stream[?cell=NAME]`: a snapshot of the cell every second as SSE
/// `data:`; an `error` event while Redis is away. Ends when the instance drains.
pub async fn stream(State(app): State<Arc<App>>, OneCell(cell): OneCell) -> Response {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (app, cell, tick);
    let events = futures_util::stream::unfold(state, |(app, cell, mut tick)| async move {
        tick.tick().await;
        if app.is_draining() {
            return None;
        }
        let ev = match snapshot(&app, &cell).await {
            Ok(v) => Event::default().data(v.to_string()),
            Err(e) => Event::default()
                .event("error")
                .data(json!({"error": e.to_string()}).to_string()),
        };
        Some((Ok::<_, Infallible>(ev), (app, cell, tick)))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
