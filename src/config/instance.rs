//! `[instance]` — This instance: presence, graceful drain and its runtime's threads.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceConfig {
    /// Presence TTL: an instance silent this long is dead and its inbox is taken over.
    pub presence_ttl_ms: u64,
    /// How often presence is renewed (and dead peers looked for); well inside the TTL.
    pub beat_interval_ms: u64,
    /// On SIGTERM: how long to keep serving after readiness turns false (load balancers
    /// must see it; nodes finish in-flight results), before closing anything.
    pub drain_delay_ms: u64,
    /// Then: how long to wait at most for queued local writes before closing with 1012.
    pub drain_grace_ms: u64,
    /// Threads of the async runtime that serve sockets and script calls (0 = one per CPU).
    /// One is the cheapest per job: no wakeup crosses threads (bench/notes.md, round 8);
    /// an instance scales out, not up.
    pub worker_threads: usize,
    /// Which cells must be usable for `/readyz` to answer 200 (`any_cell` or `every_cell`).
    pub ready_when: ReadyWhen,
}

/// `instance.ready_when`: what readiness asks of an instance that serves several cells. A
/// cell is usable when its Redis answers as a primary with the library loaded, and its
/// inbox consumer reads. With one cell both are the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyWhen {
    /// Ready while at least one cell is usable; `/readyz` names the others under
    /// `degraded` (peers of a cell whose Redis is down get `SCHEDULER_DEPENDENCY_DOWN`).
    /// Every instance serves every cell, so a cell that is down is down on all of them:
    /// failing readiness would take every instance out of the load balancer and every other
    /// cell down with it.
    #[default]
    AnyCell,
    /// Ready only while every cell is usable: an instance that cannot reach one cell leaves
    /// the load balancer (for deployments where one pod, not the cell, is the likely fault).
    EveryCell,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self {
            presence_ttl_ms: 5_000,
            beat_interval_ms: 1_000,
            drain_delay_ms: 2_000,
            drain_grace_ms: 5_000,
            worker_threads: 1,
            ready_when: ReadyWhen::AnyCell,
        }
    }
}
