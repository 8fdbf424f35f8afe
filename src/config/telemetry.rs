//! `[telemetry]` — Trace export (OTLP) and sampling.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP endpoint (`http://collector:4317` for gRPC, `http://collector:4318` for HTTP).
    /// Unset: the standard `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` variables apply; if none
    /// is set either, no spans are exported.
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http` (HTTP/protobuf). Unset: `OTEL_EXPORTER_OTLP_PROTOCOL`, else grpc.
    pub otlp_protocol: Option<String>,
    /// Extra headers / gRPC metadata (e.g. an API key); `OTEL_EXPORTER_OTLP_HEADERS` also works.
    pub otlp_headers: std::collections::BTreeMap<String, String>,
    /// Share of traces sampled, decided from the trace id (so every instance agrees on one
    /// utterance's trace); children follow their parent.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// `/metrics` reads the cell-wide gauges (nodes by state, pool sizes and capacity,
    /// queue depths, inbox) from Redis at most once per this interval, however many
    /// scrapes arrive: concurrent scrapes share one refresh. `0`: every scrape refreshes,
    /// but concurrent scrapes still share the refresh in flight.
    pub metrics_refresh_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: None,
            otlp_headers: Default::default(),
            sample_ratio: 1.0,
            service_name: "switchyard".into(),
            metrics_refresh_ms: 1_000,
        }
    }
}
