//! Logs and metrics. Logging goes through `tracing` (text or JSON); metrics are Prometheus
//! families served on `/metrics`.

pub mod metrics;

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Install the global subscriber: `RUST_LOG` wins over `log.level`; `log.format` picks text
/// or JSON lines. Safe to call twice (tests start several instances in one process).
pub fn init_logging(cfg: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(cfg.level.clone()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let _ = if cfg.format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
