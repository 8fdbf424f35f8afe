//! The script-call metrics of one cell (`script_calls` per script and outcome,
//! `script_seconds` per script), kept as handles once looked up.

use std::sync::OnceLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::scripts::Script;
use crate::telemetry::metrics::{Metrics, ScriptLabels, ScriptName};

/// The outcomes of a script call, the `outcome` label of `script_calls` (indices into
/// [`ScriptSeries::calls`]).
pub(super) const OUTCOMES: [&str; 3] = ["ok", "unavailable", "error"];

/// One cell's series of `script_calls` (per script and outcome) and `script_seconds` (per
/// script), each looked up in its family on the first call that needs it and kept: a call
/// then adds to the handle instead of building owned label sets (five small allocations)
/// for `Family::get_or_create`. The series are created at the same moment as before (a
/// series appears on `/metrics` when it is first counted).
pub(super) struct ScriptSeries {
    calls: Vec<[OnceLock<Counter>; OUTCOMES.len()]>,
    seconds: Vec<OnceLock<Histogram>>,
}

impl ScriptSeries {
    pub(super) fn new() -> Self {
        let n = Script::ALL.len();
        Self {
            calls: (0..n).map(|_| Default::default()).collect(),
            seconds: (0..n).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Count one call of `script` in cell `cell` with outcome `OUTCOMES[outcome]`, which
    /// took `secs`.
    pub(super) fn record(
        &self,
        m: &Metrics,
        cell: &str,
        script: Script,
        outcome: usize,
        secs: f64,
    ) {
        let i = script as usize; // `ALL` follows the declaration order
        let name = script.name();
        if let Some(c) = self.calls.get(i).and_then(|c| c.get(outcome)) {
            c.get_or_init(|| {
                m.script_calls
                    .get_or_create(&ScriptLabels {
                        cell: cell.to_string(),
                        script: name.into(),
                        outcome: OUTCOMES[outcome].into(),
                    })
                    .clone()
            })
            .inc();
        }
        if let Some(h) = self.seconds.get(i) {
            h.get_or_init(|| {
                m.script_seconds
                    .get_or_create(&ScriptName {
                        cell: cell.to_string(),
                        script: name.into(),
                    })
                    .clone()
            })
            .observe(secs);
        }
    }
}
