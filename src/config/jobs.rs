//! `[jobs]` — Jobs: attempts, queues, deadlines and node choice.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Attempts per utterance (first dispatch included) before it fails.
    pub max_attempts: u32,
    /// How long a job may wait in a pool queue for free capacity.
    pub queue_wait_ms: u64,
    /// Jobs waiting per pool queue at most; beyond it a job fails at once.
    pub queue_max: u32,
    /// Queued jobs examined per pool when capacity frees.
    pub queue_scan: u32,
    /// Deadline for `job_ack` from a node that announced `supports_job_ack`.
    pub ack_timeout_ms: u64,
    /// Deadline for the result of one attempt, from dispatch.
    pub run_timeout_ms: u64,
    /// How long job records (and their audio) are kept.
    pub record_ttl_ms: u64,
    /// Power-of-k-choices: candidates compared per dispatch.
    pub choices: u32,
    /// Pool size up to which every member is considered; larger pools are sampled.
    pub sample: u32,
    /// Prefer the node that served the session's previous utterance when it has room.
    pub session_affinity: bool,
    /// Tenants whose sessions use only their own nodes (never the public pools).
    pub strict_tenants: Vec<String>,
    /// How long a service stays marked unavailable after MODEL_NOT_AVAILABLE.
    pub model_unavailable_ms: u64,
    /// Marks per node per minute at most (a flapping node cannot thrash its state).
    pub model_unavailable_per_minute: u32,
    /// Record each dispatch's routing explanation (`route:<attempt>`) and each attempt's
    /// end (`end:<attempt>`) on the job record (docs/operations.md "Debugging a slow or
    /// failed utterance"). Costs about a microsecond of Redis time per job
    /// (docs/benchmarks.md); off only to measure that.
    pub explain: bool,
    /// An utterance's audio or a result body of at least this many bytes is staged in a key
    /// its script renames, instead of passing through Lua as an argument (docs/jobs.md);
    /// 0 stages nothing (the first step of an upgrade from a version that cannot read a
    /// result logged in two parts, docs/operations.md).
    pub stage_min_bytes: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            queue_wait_ms: 5_000,
            queue_max: 10_000,
            queue_scan: 16,
            ack_timeout_ms: 3_000,
            run_timeout_ms: 30_000,
            record_ttl_ms: 600_000,
            choices: 2,
            sample: 8,
            session_affinity: false,
            strict_tenants: Vec::new(),
            model_unavailable_ms: 60_000,
            model_unavailable_per_minute: 6,
            explain: true,
            stage_min_bytes: crate::store::STAGE_MIN_BYTES,
        }
    }
}

impl JobsConfig {
    /// The longest a job lives unfinished: every attempt may run out its deadline (the ack
    /// deadline of a node that acks, or the run deadline) and wait in the queue again before
    /// the next (ms).
    pub fn longest_job_ms(&self) -> u64 {
        let attempt = self.run_timeout_ms.max(self.ack_timeout_ms);
        u64::from(self.max_attempts).saturating_mul(attempt.saturating_add(self.queue_wait_ms))
    }
}
