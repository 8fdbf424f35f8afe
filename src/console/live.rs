//! What the dashboard shows, live: one snapshot of the cell (instances, pools, nodes,
//! throughput and latency of the last minute, recent failures) built from Redis reads,
//! pushed every second over SSE (`/api/v1/console/stream`; `?access_token=` because a
//! browser's EventSource cannot set headers). The sparklines come from `stats:<second>`
//! keys every instance adds its own last second to ([`run_stats`]): one round trip per
//! instance per second, whatever the load, and nothing on the job path.
//!
//! A stream lasts no longer than its credential (it ends at the token's `exp`), at most
//! `limits.max_console_streams` run per instance (`limits.max_console_streams_per_credential`
//! of one credential holder), and the streams of one cell share one
//! snapshot per second ([`Streams`]), so open dashboards cost Redis the same however many.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Credential;
use crate::cells::Cell;
use crate::http::admin::OneCell;
use crate::limits::{KeyedSlot, KeyedSlots};
use crate::server::App;
use crate::store::StoreError;

/// Seconds of history the sparklines show.
const SERIES_S: u64 = 60;
/// Failures listed at most.
const FAILURES: usize = 20;
/// Nodes listed at most (live ones first: `Store::nodes`).
const NODES: usize = 500;
/// Members a pool lists at most (`members_total` counts them all).
const MEMBERS: usize = 100;

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
            _ = stop.wait_for(|s| *s) => return,
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
    // every member's load, not only the listed nodes'
    let capacity = store.pool_capacity(&pools).await?;
    let sec = now / 1000;
    let stats = store.stats_read(sec - SERIES_S, sec - 1).await?;
    let latest = store.stats_read(sec - 2, sec - 1).await?;
    let instances = store.instances().await?;
    let failures = store.recent_failures(FAILURES).await?;

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
            let (r, c) = capacity.get(&name).copied().unwrap_or((0, 0));
            let listed: Vec<&String> = members.iter().take(MEMBERS).collect();
            json!({"pool": name, "members": listed, "members_total": members.len(),
                   "reserved": r, "capacity": c,
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
    // the streams' shared snapshot (at most SHARED_AGE old): polling it costs Redis no more
    // than a stream does
    match app.console.snapshot(&app, &cell).await {
        Ok(text) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": e}))).into_response(),
    }
}

/// The console's live streams on this instance: how many may run
/// (`limits.max_console_streams`), and the snapshot of each cell they share.
pub struct Streams {
    slots: Arc<Semaphore>,
    max: usize,
    /// Streams per credential holder (`limits.max_console_streams_per_credential`): one
    /// token cannot take every slot of the instance.
    per_holder: Arc<KeyedSlots>,
    max_per_holder: usize,
    shared: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Shared>>>>,
}

/// A cell's last snapshot for the streams: when it was taken, its JSON text or the error.
type Shared = Option<(Instant, Result<String, String>)>;

/// Streams reuse a cell's snapshot younger than this (they tick every second).
const SHARED_AGE: Duration = Duration::from_millis(900);

impl Streams {
    pub fn new(max: usize, max_per_holder: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            per_holder: Default::default(),
            max_per_holder,
            shared: Default::default(),
        }
    }

    /// `cell`'s snapshot, taken by one stream and shared by all: however many streams
    /// run, a cell's Redis sees about one snapshot per second from this instance.
    async fn snapshot(&self, app: &App, cell: &Cell) -> Result<String, String> {
        let slot = {
            let mut m = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(cell.name().to_string()).or_default().clone()
        };
        let mut shared = slot.lock().await;
        if let Some((at, v)) = &*shared
            && at.elapsed() < SHARED_AGE
        {
            return v.clone();
        }
        let v = snapshot(app, cell)
            .await
            .map(|v| v.to_string())
            .map_err(|e| e.to_string());
        *shared = Some((Instant::now(), v.clone()));
        v
    }
}

/// One open stream: a task that owns the stream's slots and sends its events, so that it
/// ends (and frees them) at the credential's `exp` whether or not the client reads. Inside
/// the response body, as it was, it ran only when the server polled the body, which it
/// does only while it can write: a client that stopped reading kept its slots, and every
/// holder's, for ever (console audit).
struct Live {
    app: Arc<App>,
    cell: Arc<Cell>,
    tick: tokio::time::Interval,
    /// The credential's `exp`, as an instant: the stream ends there.
    until: Option<tokio::time::Instant>,
    _slot: (OwnedSemaphorePermit, Option<KeyedSlot>),
}

impl Live {
    /// A snapshot every second into `tx` (one waits there at most), until the credential
    /// expires (an `expired` event, if there is room for it), the instance drains or the
    /// client goes (`tx` closed).
    async fn run(mut self, tx: tokio::sync::mpsc::Sender<Event>) {
        let until = self.until;
        let expired = async move {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        let expired_event = || {
            Event::default().event("expired").data(
                json!({"error": "credential expired: reconnect with a new token"}).to_string(),
            )
        };
        loop {
            tokio::select! {
                biased; // expiry first: no snapshot goes out on an expired credential
                _ = &mut expired => {
                    let _ = tx.try_send(expired_event());
                    return;
                }
                _ = tx.closed() => return,
                _ = self.tick.tick() => {}
            }
            if self.app.is_draining() {
                return;
            }
            let ev = match self.app.console.snapshot(&self.app, &self.cell).await {
                Ok(text) => Event::default().data(text),
                Err(e) => Event::default()
                    .event("error")
                    .data(json!({"error": e}).to_string()),
            };
            tokio::select! {
                biased;
                _ = &mut expired => {
                    let _ = tx.try_send(expired_event());
                    return;
                }
                sent = tx.send(ev) => if sent.is_err() {
                    return;
                }
            }
        }
    }
}

/// `GET /api/v1/console/stream[?cell=NAME]`: a snapshot of the cell every second as SSE
/// `data:` (shared by every stream of the cell on this instance); an `error` event while
/// Redis is away. At the credential's `exp` it sends an `expired` event and ends (a token
/// is checked once, at connect: the stream must not outlive it); it also ends when the
/// instance drains. At most `limits.max_console_streams` run at once, and at most
/// `limits.max_console_streams_per_credential` of one credential holder (its `sub`, else
/// its token); beyond, HTTP 503 or 429.
pub async fn stream(
    State(app): State<Arc<App>>,
    Extension(cred): Extension<Credential>,
    OneCell(cell): OneCell,
) -> Response {
    let mine = match cred.holder() {
        Some(h) => match app
            .console
            .per_holder
            .acquire(&h, app.console.max_per_holder)
        {
            Some(s) => Some(s),
            None => {
                app.metrics.limited("console", "streams_per_credential");
                let message = format!(
                    "this credential holds {} console streams on this instance, the most \
                     allowed (limits.max_console_streams_per_credential); close one first",
                    app.console.max_per_holder
                );
                let body = json!({"error": "too many console streams for this credential",
                    "message": message});
                return (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            }
        },
        None => None, // open mode: nobody to tell apart
    };
    let Ok(slot) = app.console.slots.clone().try_acquire_owned() else {
        app.metrics.limited("console", "streams");
        let message = format!(
            "this instance serves at most {} console streams at once \
             (limits.max_console_streams); close one or try again later",
            app.console.max
        );
        let body = json!({"error": "too many console streams", "message": message});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    };
    let until = cred.expires_at.map(|exp| {
        let left = (exp.saturating_mul(1000)).saturating_sub(crate::protocol::now_ms());
        tokio::time::Instant::now() + Duration::from_millis(left)
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let live = Live {
        app,
        cell,
        tick,
        until,
        _slot: (slot, mine),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(live.run(tx));
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        Some((Ok::<_, Infallible>(ev), rx))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
