//! Prometheus metric families of one instance (OpenMetrics text on `/metrics`).
//!
//! Counters and histograms are updated where things happen; the cluster-wide gauges (nodes
//! by state, pool sizes) are read from Redis when `/metrics` is scraped, so every instance
//! reports the same truth without keeping state of its own. This file declares and
//! registers the families; the methods that record what happened are in `record.rs`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use super::labels::*;

/// Every metric family; cheap to clone handles out of.
pub struct Metrics {
    pub registry: Registry,
    /// Jobs finished / failed and their end-to-end ms since the console's last per-second
    /// write to Redis (`console::live::run_stats`: the cell-wide sparklines).
    pub tally: crate::console::live::Tallies,
    /// Script calls by script and outcome (`ok`, `error`, `unavailable`).
    pub script_calls: Family<ScriptLabels, Counter>,
    /// Script latency as seen by the instance (round trip included).
    pub script_seconds: Family<ScriptName, Histogram>,
    /// WebSocket connections open on this instance, by kind (`node`, `session`).
    pub connections: Family<KindLabels, Gauge>,
    /// Inbound frames by connection kind and message type.
    pub messages_in: Family<MessageLabels, Counter>,
    /// Inbound frames refused (invalid, unknown type, oversized, binary) by kind and reason.
    pub messages_rejected: Family<MessageLabels, Counter>,
    /// Frames, connections and streams refused by a `[limits]` setting, by kind (`node`,
    /// `session`, `http`, `console`) and limit (`detail`: `rate`, `rate_close`,
    /// `connections`, `header_timeout`, `upgrade_timeout`, `streams`).
    pub limited: Family<MessageLabels, Counter>,
    /// Node messages fenced off as stale (old connection or attempt), by connection kind.
    pub stale_messages: Family<KindLabels, Counter>,
    /// `node_error` reports by code.
    pub node_errors: Family<Detail, Counter>,
    /// Messages scripts produced for connections, by target kind and outcome
    /// (`sent`, `gone` = socket no longer here, `full` = send queue full).
    pub deliveries: Family<MessageLabels, Counter>,
    /// Inbox entries written to local sockets.
    pub inbox_messages: Counter,
    /// Inbox entries moved to the dead-letter stream.
    pub dead_lettered: Counter,
    /// Dead instances whose inbox this instance took over.
    pub takeovers: Counter,
    /// Sessions resumed on this instance after a reconnect.
    pub resumes: Counter,
    /// Times this instance found its presence had lapsed and closed its connections.
    pub presence_lapses: Counter,
    /// Background tasks (sweeper, presence, inbox, stats) restarted after ending before
    /// shutdown (a panic), by cell and task (`crate::supervise`).
    pub task_restarts: Family<TaskLabels, Counter>,
    /// Time spent in `WAIT` after state changes (`redis.wait_replicas`).
    pub redis_wait_seconds: Histogram,
    /// `WAIT`s that returned fewer replicas than `redis.wait_replicas` (timeout or error).
    pub redis_wait_short: Counter,
    /// Entries of this instance's inbox read but not acknowledged (at scrape time).
    pub inbox_pending: Family<CellLabels, Gauge>,
    /// Length of each cell's dead-letter stream (at scrape time).
    pub dead_letters: Family<CellLabels, Gauge>,
    /// The cell's Redis: `used_memory` and `maxmemory` (0: no limit), at scrape time.
    pub redis_memory_used: Family<CellLabels, Gauge>,
    pub redis_memory_max: Family<CellLabels, Gauge>,
    /// Job transitions made by this instance's script calls, by event (submitted,
    /// dispatched, queued, acked, started, finished, failover, queue_timeout).
    pub jobs: Family<EventLabels, Counter>,
    /// Utterances failed, by reason (the error code the session received).
    pub jobs_failed: Family<ReasonLabels, Counter>,
    /// Indices that got `missing_result` (no job at all after the reorder window).
    pub missing_results: Counter,
    /// Audio cuts that made no job, by reason: `empty` (nothing buffered) or `too_short`
    /// (estimated audio below `session.min_cut_ms`: a click, not speech).
    pub cuts_skipped: Family<ReasonLabels, Counter>,
    /// Job creation → dispatch to a node (queue wait included), Redis clock.
    pub dispatch_latency: Histogram,
    /// Job creation → result accepted, Redis clock.
    pub e2e_latency: Histogram,
    /// Jobs waiting per pool queue (read from Redis at scrape time).
    pub queue_depth: Family<PoolLabels, Gauge>,
    /// Nodes in the cell by state (read from Redis at scrape time).
    pub nodes: Family<StateLabels, Gauge>,
    /// Members of each pool (read from Redis at scrape time).
    pub pool_nodes: Family<PoolLabels, Gauge>,
    /// Requests refused for their credential, by endpoint kind (`node`, `session`,
    /// `admin`) and reason (`missing`, `invalid`, `forbidden`).
    pub auth_refused: Family<MessageLabels, Counter>,
    /// 1 while `auth.mode = "open"`: nobody is checked (alert on it in production).
    pub auth_open: Gauge,
    /// Per-pool capacity signals for autoscalers (saturation, queue wait, refusals).
    pub pools: super::pools::PoolSignals,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchyard");
        let script_calls = Family::<ScriptLabels, Counter>::default();
        registry.register(
            "script_calls",
            "Lua script calls by outcome",
            script_calls.clone(),
        );
        let script_seconds = Family::<ScriptName, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        registry.register(
            "script_duration_seconds",
            "Lua script latency",
            script_seconds.clone(),
        );
        let connections = Family::<KindLabels, Gauge>::default();
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        let messages_in = Family::<MessageLabels, Counter>::default();
        registry.register("messages_in", "Inbound frames by type", messages_in.clone());
        let messages_rejected = Family::<MessageLabels, Counter>::default();
        registry.register(
            "messages_rejected",
            "Inbound frames refused",
            messages_rejected.clone(),
        );
        let limited = Family::<MessageLabels, Counter>::default();
        registry.register(
            "limited",
            "Frames and connections refused by a limit, by kind and limit",
            limited.clone(),
        );
        let stale_messages = Family::<KindLabels, Counter>::default();
        registry.register(
            "stale_messages",
            "Messages fenced off as stale (old connection or attempt)",
            stale_messages.clone(),
        );
        let node_errors = Family::<Detail, Counter>::default();
        registry.register(
            "node_errors",
            "node_error reports by code",
            node_errors.clone(),
        );
        let deliveries = Family::<MessageLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Messages delivered to connections",
            deliveries.clone(),
        );
        let inbox_messages = Counter::default();
        registry.register(
            "inbox_messages",
            "Inbox entries delivered",
            inbox_messages.clone(),
        );
        let dead_lettered = Counter::default();
        registry.register(
            "dead_lettered",
            "Inbox entries dead-lettered",
            dead_lettered.clone(),
        );
        let takeovers = Counter::default();
        registry.register("takeovers", "Dead instances taken over", takeovers.clone());
        let presence_lapses = Counter::default();
        registry.register(
            "presence_lapses",
            "Presence lapsed while running",
            presence_lapses.clone(),
        );
        let task_restarts = Family::<TaskLabels, Counter>::default();
        registry.register(
            "task_restarts",
            "Background tasks restarted after ending before shutdown (a panic)",
            task_restarts.clone(),
        );
        let redis_wait_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "redis_wait_seconds",
            "WAIT for replicas after a state change",
            redis_wait_seconds.clone(),
        );
        let redis_wait_short = Counter::default();
        registry.register(
            "redis_wait_short",
            "WAITs that returned fewer replicas than wanted",
            redis_wait_short.clone(),
        );
        let resumes = Counter::default();
        registry.register("session_resumes", "Sessions resumed", resumes.clone());
        let inbox_pending = Family::<CellLabels, Gauge>::default();
        registry.register(
            "inbox_pending",
            "Inbox entries pending",
            inbox_pending.clone(),
        );
        let dead_letters = Family::<CellLabels, Gauge>::default();
        registry.register(
            "dead_letters",
            "Entries in the dead-letter stream",
            dead_letters.clone(),
        );
        let redis_memory_used = Family::<CellLabels, Gauge>::default();
        registry.register(
            "redis_memory_used_bytes",
            "The cell's Redis used_memory (INFO memory)",
            redis_memory_used.clone(),
        );
        let redis_memory_max = Family::<CellLabels, Gauge>::default();
        registry.register(
            "redis_memory_max_bytes",
            "The cell's Redis maxmemory (0: no limit); at it every state change is refused",
            redis_memory_max.clone(),
        );
        let jobs = Family::<EventLabels, Counter>::default();
        registry.register("jobs", "Job transitions by event", jobs.clone());
        let jobs_failed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "jobs_failed",
            "Utterances failed by reason",
            jobs_failed.clone(),
        );
        let missing_results = Counter::default();
        registry.register(
            "missing_results",
            "missing_result messages sent",
            missing_results.clone(),
        );
        let cuts_skipped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "cuts_skipped",
            "Audio cuts that made no job (empty, too_short)",
            cuts_skipped.clone(),
        );
        let latency = || Histogram::new(exponential_buckets(0.000_25, 2.0, 18));
        let dispatch_latency = latency();
        registry.register(
            "dispatch_latency_seconds",
            "Job creation to dispatch",
            dispatch_latency.clone(),
        );
        let e2e_latency = latency();
        registry.register(
            "e2e_latency_seconds",
            "Job creation to accepted result",
            e2e_latency.clone(),
        );
        let queue_depth = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Jobs waiting per pool queue",
            queue_depth.clone(),
        );
        let nodes = Family::<StateLabels, Gauge>::default();
        registry.register("nodes", "Nodes in the cell by state", nodes.clone());
        let pool_nodes = Family::<PoolLabels, Gauge>::default();
        registry.register("pool_nodes", "Members per pool", pool_nodes.clone());
        let auth_refused = Family::<MessageLabels, Counter>::default();
        registry.register(
            "auth_refused",
            "Requests refused for their credential, by endpoint kind and reason",
            auth_refused.clone(),
        );
        let auth_open = Gauge::default();
        registry.register(
            "auth_open",
            "1 when auth.mode is open: no credential is checked",
            auth_open.clone(),
        );
        let pools = super::pools::PoolSignals::register(&mut registry);
        Self {
            registry,
            tally: Default::default(),
            script_calls,
            script_seconds,
            connections,
            messages_in,
            messages_rejected,
            limited,
            stale_messages,
            node_errors,
            deliveries,
            inbox_messages,
            dead_lettered,
            takeovers,
            resumes,
            presence_lapses,
            task_restarts,
            redis_wait_seconds,
            redis_wait_short,
            inbox_pending,
            dead_letters,
            redis_memory_used,
            redis_memory_max,
            jobs,
            jobs_failed,
            missing_results,
            cuts_skipped,
            dispatch_latency,
            e2e_latency,
            queue_depth,
            nodes,
            pool_nodes,
            auth_refused,
            auth_open,
            pools,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
