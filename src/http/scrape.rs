//! `/metrics`: the cell-wide gauges read from Redis, refreshed at most once per
//! `telemetry.metrics_refresh_ms` however many scrapes arrive.
//!
//! `/metrics` needs no token (it shares `listen` unless `admin_listen` is set), and reading
//! a cell costs Redis work that grows with the fleet (one `HGET` per node, one `SMEMBERS`
//! and `HMGET`s per pool, the queue heads). So the readings are single-flight: one scrape
//! at a time refreshes; scrapes that arrive meanwhile wait for it and encode its result;
//! a refresh that completed within the minimum age is reused. Whatever the scrape rate,
//! each cell's Redis sees at most one refresh per interval per instance.
//!
//! The new readings are gathered first (no gauge is touched while Redis is awaited), then
//! the scrape-time families are cleared and set under one write lock that encoding takes
//! for reading, so a concurrent scrape never encodes a half-cleared registry.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::cells::Cell;
use crate::server::App;
use crate::telemetry::metrics::{CellLabels, PoolLabels, StateLabels};

/// The refresh state of one instance's scrape-time gauges.
pub struct Scrape {
    /// When the last refresh completed and what it read; held across a refresh (single
    /// flight).
    refreshed: tokio::sync::Mutex<Last>,
    /// Write: replacing the gauges. Read: encoding them.
    gauges: RwLock<()>,
    min_age: Duration,
}

/// The last refresh: when it completed, and each cell's reading.
#[derive(Default)]
struct Last {
    at: Option<Instant>,
    readings: Vec<Reading>,
}

/// What one cell's Redis said; `None` where it did not answer.
#[derive(Clone)]
struct Reading {
    cell: String,
    states: Option<BTreeMap<String, i64>>,
    inbox: Option<(u64, u64)>,
    /// `used_memory`, `maxmemory`.
    memory: Option<(u64, u64)>,
    /// (pool, members, queue depth)
    pools: Option<Vec<(String, usize, u64)>>,
    capacity: Option<BTreeMap<String, (i64, i64)>>,
}

impl Scrape {
    pub fn new(min_age_ms: u64) -> Self {
        Self {
            refreshed: tokio::sync::Mutex::new(Last::default()),
            gauges: RwLock::new(()),
            min_age: Duration::from_millis(min_age_ms),
        }
    }

    /// The OpenMetrics text of every family, the scrape-time gauges no older than the
    /// minimum age (or fresh from the refresh this call waited for).
    pub async fn encode(&self, app: &App) -> String {
        self.refresh(app).await;
        let _read = self.gauges.read().unwrap_or_else(|p| p.into_inner());
        app.metrics.encode()
    }

    /// Refresh unless a refresh completed within the minimum age before this call (one
    /// still running when it arrived counts: the call waits for it).
    async fn refresh(&self, app: &App) {
        let arrived = Instant::now();
        let mut last = self.refreshed.lock().await;
        if last.at.is_some_and(|t| t + self.min_age >= arrived) {
            return;
        }
        let mut readings = Vec::new();
        for cell in app.cells.iter() {
            let mut r = read(app, cell).await;
            // What Redis did not answer keeps its previous value.
            if let Some(prev) = last.readings.iter().find(|p| p.cell == r.cell) {
                r.states = r.states.or_else(|| prev.states.clone());
                r.inbox = r.inbox.or(prev.inbox);
                r.memory = r.memory.or(prev.memory);
                r.pools = r.pools.or_else(|| prev.pools.clone());
                r.capacity = r.capacity.or_else(|| prev.capacity.clone());
            }
            readings.push(r);
        }
        self.replace(app, &readings);
        *last = Last {
            at: Some(Instant::now()),
            readings,
        };
    }

    /// Swap the scrape-time families to `readings` under the write lock.
    fn replace(&self, app: &App, readings: &[Reading]) {
        let m = &app.metrics;
        let _write = self.gauges.write().unwrap_or_else(|p| p.into_inner());
        m.pools.refresh_waits();
        m.pools.clear_capacity();
        m.pool_nodes.clear();
        m.queue_depth.clear();
        for r in readings {
            for (state, n) in r.states.iter().flatten() {
                let (cell, state) = (r.cell.clone(), state.clone());
                m.nodes.get_or_create(&StateLabels { cell, state }).set(*n);
            }
            if let Some((pending, dead)) = r.inbox {
                let l = CellLabels {
                    cell: r.cell.clone(),
                };
                m.inbox_pending.get_or_create(&l).set(pending as i64);
                m.dead_letters.get_or_create(&l).set(dead as i64);
            }
            if let Some((used, max)) = r.memory {
                let l = CellLabels {
                    cell: r.cell.clone(),
                };
                m.redis_memory_used.get_or_create(&l).set(used as i64);
                m.redis_memory_max.get_or_create(&l).set(max as i64);
            }
            if let Some(capacity) = &r.capacity {
                m.pools.set_capacity(&r.cell, capacity);
            }
            for (pool, members, depth) in r.pools.iter().flatten() {
                let l = PoolLabels {
                    cell: r.cell.clone(),
                    pool: pool.clone(),
                };
                m.queue_depth.get_or_create(&l).set(*depth as i64);
                m.pool_nodes.get_or_create(&l).set(*members as i64);
            }
        }
    }
}

/// One cell's gauges read from Redis (cell-wide truth, the same on every instance); what
/// Redis did not answer is `None` (it keeps its previous value; the local families still
/// export).
async fn read(app: &App, cell: &Cell) -> Reading {
    let store = &cell.store;
    let mut r = Reading {
        cell: cell.name().to_string(),
        states: store.node_states().await.ok(),
        inbox: store.inbox_stats(&app.instance_id).await.ok(),
        memory: store.memory().await.ok().flatten().map(|m| (m.used, m.max)),
        pools: None,
        capacity: None,
    };
    let Ok(pools) = store.pools().await else {
        return r;
    };
    r.capacity = store.pool_capacity(&pools).await.ok();
    let names: Vec<String> = pools.keys().cloned().collect();
    // unread: the previous reading stands (no depth 0 an autoscaler would act on)
    let Ok(heads) = store.queue_heads(&names).await else {
        return r;
    };
    r.pools = Some(
        pools
            .into_iter()
            .enumerate()
            .map(|(i, (pool, members))| {
                let depth = heads.get(i).map_or(0, |h| h.0);
                (pool, members.len(), depth)
            })
            .collect(),
    );
    cap_pools(&mut r);
    r
}

/// Pools a cell exports series of its own for; the rest are summed under `pool="other"`.
/// A node may be in 4,160 pools named by languages of its choosing: without a bound one
/// node made ~20,000 series on every instance, all replaced at each capability change.
pub const MAX_POOL_SERIES: usize = 1_000;

/// Keep the busiest [`MAX_POOL_SERIES`] − 1 pools of `r` (deepest queue, then most
/// members, then by name) and sum the others into `other` (queue depth, members, and
/// reserved / capacity).
fn cap_pools(r: &mut Reading) {
    let Some(pools) = r.pools.as_mut() else {
        return;
    };
    if pools.len() <= MAX_POOL_SERIES {
        return;
    }
    pools.sort_by(|a, b| b.2.cmp(&a.2).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0)));
    let rest = pools.split_off(MAX_POOL_SERIES - 1);
    let (members, depth) = rest.iter().fold((0, 0), |(m, d): (usize, u64), p| {
        (m.saturating_add(p.1), d.saturating_add(p.2))
    });
    let kept: std::collections::BTreeSet<String> = pools.iter().map(|p| p.0.clone()).collect();
    pools.push((OTHER.into(), members, depth));
    if let Some(capacity) = r.capacity.as_mut() {
        let mut other: (i64, i64) = (0, 0);
        capacity.retain(|pool, (reserved, cap)| {
            let keep = kept.contains(pool);
            if !keep {
                other = (
                    other.0.saturating_add(*reserved),
                    other.1.saturating_add(*cap),
                );
            }
            keep
        });
        capacity.insert(OTHER.into(), other);
    }
}

/// The `pool` label of the pools past [`MAX_POOL_SERIES`] (no pool name lacks a `:`).
const OTHER: &str = "other";
