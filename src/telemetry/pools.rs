//! Per-pool capacity signals for a fleet autoscaler (docs/operations.md, "Autoscaling
//! signals"): saturation of the pool's ready nodes, queue wait percentiles over a sliding
//! window, and jobs refused for lack of capacity.
//!
//! Saturation is cell-wide truth read from Redis at scrape time (every instance reports the
//! same value). Queue waits are what this instance's script calls dispatched: each instance
//! reports its own window, so dashboards and autoscalers aggregate with `max()`. Nothing
//! here adds work to a script beyond naming the pool of each dispatched job.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::metrics::PoolLabels;

/// How far back the queue wait percentiles look.
pub const WAIT_WINDOW: Duration = Duration::from_secs(60);
/// Most samples kept per pool within the window (the oldest are dropped first).
const WAIT_SAMPLES: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuantileLabels {
    pub cell: String,
    pub pool: String,
    pub quantile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub cell: String,
    pub pool: String,
    /// `queue_full` (the pool's queue held `jobs.queue_max`) or `queue_timeout` (no room
    /// within `jobs.queue_wait_ms`).
    pub reason: String,
}

/// (cell, pool): where a queue-wait sample belongs.
type CellPool = (String, String);

/// The pool families and the queue-wait window behind them.
pub struct PoolSignals {
    /// Reserved / capacity over the pool's ready nodes (1 when it has no ready capacity).
    pub saturation: Family<PoolLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Capacity (job slots) of the pool's ready nodes.
    pub capacity: Family<PoolLabels, Gauge>,
    /// Slots reserved on the pool's ready nodes.
    pub reserved: Family<PoolLabels, Gauge>,
    /// Job creation → dispatch, p50 and p95 over [`WAIT_WINDOW`], by primary pool.
    pub queue_wait: Family<QuantileLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Jobs failed with NO_AVAILABLE_NODE because the pool had no room.
    pub refused: Family<RefusedLabels, Counter>,
    /// Dispatch waits by (cell, pool).
    waits: Mutex<HashMap<CellPool, VecDeque<(Instant, f64)>>>,
}

impl PoolSignals {
    pub fn register(registry: &mut Registry) -> Self {
        let s = Self {
            saturation: Family::default(),
            capacity: Family::default(),
            reserved: Family::default(),
            queue_wait: Family::default(),
            refused: Family::default(),
            waits: Mutex::new(HashMap::new()),
        };
        registry.register(
            "pool_saturation",
            "Reserved / capacity of the pool's ready nodes (read from Redis at scrape time)",
            s.saturation.clone(),
        );
        registry.register(
            "pool_capacity",
            "Job slots of the pool's ready nodes (read from Redis at scrape time)",
            s.capacity.clone(),
        );
        registry.register(
            "pool_reserved",
            "Reserved job slots of the pool's ready nodes (read from Redis at scrape time)",
            s.reserved.clone(),
        );
        registry.register(
            "pool_queue_wait_seconds",
            "Job creation to dispatch by primary pool, quantiles over the last 60 s (this instance)",
            s.queue_wait.clone(),
        );
        registry.register(
            "pool_jobs_refused",
            "Jobs refused for lack of capacity, by pool and reason",
            s.refused.clone(),
        );
        s
    }

    /// A job of `pool` in `cell` was dispatched `ms` after its creation.
    pub fn waited(&self, cell: &str, pool: &str, ms: f64) {
        if pool.is_empty() {
            return;
        }
        let mut w = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        let q = w.entry((cell.to_string(), pool.to_string())).or_default();
        if q.len() >= WAIT_SAMPLES {
            q.pop_front();
        }
        q.push_back((Instant::now(), ms / 1000.0));
    }

    /// `refused:<reason>:<pool>` from a script's events.
    pub fn refused(&self, cell: &str, rest: &str, n: u64) {
        if let Some((reason, pool)) = rest.split_once(':') {
            self.refused
                .get_or_create(&RefusedLabels {
                    cell: cell.to_string(),
                    pool: pool.to_string(),
                    reason: reason.to_string(),
                })
                .inc_by(n);
        }
    }

    /// Refresh the queue-wait gauges (at scrape time): drop samples older than the window,
    /// and pools with none left.
    pub fn refresh_waits(&self) {
        let cutoff = Instant::now().checked_sub(WAIT_WINDOW);
        let mut w = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        self.queue_wait.clear();
        w.retain(|(cell, pool), q| {
            while q.front().is_some_and(|(t, _)| Some(*t) < cutoff) {
                q.pop_front();
            }
            if q.is_empty() {
                return false;
            }
            let mut v: Vec<f64> = q.iter().map(|(_, s)| *s).collect();
            v.sort_by(f64::total_cmp);
            for (label, p) in [("0.5", 0.5), ("0.95", 0.95)] {
                self.queue_wait
                    .get_or_create(&QuantileLabels {
                        cell: cell.clone(),
                        pool: pool.clone(),
                        quantile: label.into(),
                    })
                    .set(quantile(&v, p));
            }
            true
        });
    }

    /// Forget every cell's capacity gauges (at scrape time, before [`Self::set_capacity`]
    /// for each cell), so pools that emptied disappear.
    pub fn clear_capacity(&self) {
        self.saturation.clear();
        self.capacity.clear();
        self.reserved.clear();
    }

    /// Set `cell`'s capacity gauges from `(reserved, capacity)` per pool of ready nodes.
    pub fn set_capacity(&self, cell: &str, pools: &BTreeMap<String, (i64, i64)>) {
        for (pool, (reserved, capacity)) in pools {
            let l = PoolLabels {
                cell: cell.to_string(),
                pool: pool.clone(),
            };
            let sat = if *capacity > 0 {
                *reserved as f64 / *capacity as f64
            } else {
                1.0
            };
            self.saturation.get_or_create(&l).set(sat);
            self.capacity.get_or_create(&l).set(*capacity);
            self.reserved.get_or_create(&l).set(*reserved);
        }
    }
}

/// The `p` quantile (nearest rank) of sorted `v`; 0 for none.
fn quantile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((v.len() as f64) * p).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.95), 95.0);
        assert_eq!(quantile(&[3.0], 0.95), 3.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn saturation_is_reserved_over_ready_capacity_and_full_without_capacity() {
        let mut r = Registry::default();
        let s = PoolSignals::register(&mut r);
        let pools = BTreeMap::from([
            ("pub:zh:en".to_string(), (3, 8)),
            ("pub:en:zh".to_string(), (0, 0)),
        ]);
        s.set_capacity("main", &pools);
        let get = |p: &str| {
            s.saturation
                .get_or_create(&PoolLabels {
                    cell: "main".into(),
                    pool: p.into(),
                })
                .get()
        };
        assert_eq!(get("pub:zh:en"), 0.375);
        assert_eq!(get("pub:en:zh"), 1.0);
        s.waited("main", "pub:zh:en", 100.0);
        s.waited("main", "pub:zh:en", 300.0);
        s.refresh_waits();
        let p95 = s
            .queue_wait
            .get_or_create(&QuantileLabels {
                cell: "main".into(),
                pool: "pub:zh:en".into(),
                quantile: "0.95".into(),
            })
            .get();
        assert_eq!(p95, 0.3);
    }
}
