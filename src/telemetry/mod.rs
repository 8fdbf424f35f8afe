//! Logs, traces and metrics.
//!
//! Logging goes through `tracing` (text or JSON lines). The same spans are exported with
//! OTLP (gRPC or HTTP/protobuf, batch exporter, flushed on shutdown) when an endpoint is
//! configured. W3C `traceparent` strings carry a span's context through Redis (script
//! arguments, job records, inbox envelopes), so the spans of one utterance on several
//! instances form one trace; [`traceparent`] and [`parent_from`] convert both ways.

pub mod budget;
mod labels;
pub mod metrics;
pub mod pools;
mod record;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::Config;

/// `telemetry.sample_ratio`, for the synthetic parents of client trace ids (the SDK's
/// parent-based sampler follows their flag, so the ratio must be applied here too).
static SAMPLE_RATIO: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes what is buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flush buffered spans and stop the exporter.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("switchyard: flushing spans failed: {e}");
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty())
}

/// Install the global subscriber: `RUST_LOG` wins over `log.level`; `log.format` picks
/// text or JSON; an OTLP layer when an endpoint is configured (config or the standard
/// `OTEL_EXPORTER_OTLP_*` variables). Call inside the Tokio runtime (gRPC needs it).
/// Safe to call twice (tests start several instances in one process).
pub fn init(cfg: &Config) -> Telemetry {
    let filter = || {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(cfg.log.level.clone()))
    };
    let fmt = if cfg.log.format == "json" {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_filter(filter())
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_target(true)
            .with_filter(filter())
            .boxed()
    };
    let _ = SAMPLE_RATIO.set(cfg.telemetry.sample_ratio);
    let provider = match build_provider(cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("switchyard: OTLP export disabled: {e}");
            None
        }
    };
    let otel = provider.as_ref().map(|p| {
        let tracer = p.tracer("switchyard");
        // Only our own spans are exported, at info and above, whatever the log level.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("switchyard", tracing::Level::INFO),
            )
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry { provider }
}

fn build_provider(cfg: &Config) -> Result<Option<SdkTracerProvider>, String> {
    let t = &cfg.telemetry;
    let configured = t.otlp_endpoint.is_some()
        || env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
        || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    if !configured {
        return Ok(None);
    }
    let protocol = t.otlp_protocol.clone().unwrap_or_else(|| {
        let env = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_default();
        if env.starts_with("http") {
            "http".into()
        } else {
            "grpc".into()
        }
    });
    let exporter = if protocol == "http" {
        // HTTP/protobuf whatever OTEL_EXPORTER_OTLP_PROTOCOL says (http/json is not built in).
        let mut b = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
        if let Some(e) = &t.otlp_endpoint {
            b = b.with_endpoint(format!("{}/v1/traces", e.trim_end_matches('/')));
        }
        if !t.otlp_headers.is_empty() {
            b = b.with_headers(t.otlp_headers.clone().into_iter().collect());
        }
        b.build().map_err(|e| e.to_string())?
    } else {
        let mut b = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(opentelemetry_otlp::Protocol::Grpc);
        if let Some(e) = &t.otlp_endpoint {
            b = b.with_endpoint(e.clone());
        }
        if !t.otlp_headers.is_empty() {
            let mut md = tonic::metadata::MetadataMap::new();
            for (k, v) in &t.otlp_headers {
                if let (Ok(k), Ok(v)) = (k.parse::<tonic::metadata::MetadataKey<_>>(), v.parse()) {
                    md.insert(k, v);
                }
            }
            b = b.with_metadata(md);
        }
        b.build().map_err(|e| e.to_string())?
    };
    let resource = Resource::builder()
        .with_service_name(t.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attribute(KeyValue::new("process.pid", i64::from(std::process::id())))
        .build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(t.sample_ratio)));
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build(),
    ))
}

/// The W3C `traceparent` of a span, or "" when it has no valid context (not exported).
pub fn traceparent(span: &tracing::Span) -> String {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return String::new();
    }
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// A remote parent context from a `traceparent` string.
pub fn parent_from(tp: &str) -> Option<Context> {
    let mut parts = tp.split('-');
    let (Some("00"), Some(t), Some(s), Some(f)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let trace = TraceId::from_hex(t)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span = SpanId::from_hex(s).ok().filter(|s| *s != SpanId::INVALID)?;
    let flags = TraceFlags::new(u8::from_str_radix(f, 16).ok()?);
    let sc = SpanContext::new(trace, span, flags, true, TraceState::default());
    Some(Context::new().with_remote_span_context(sc))
}

/// A remote parent that makes a new span's trace id the client's 32-hex `trace_id` (the
/// lingua clients send one), so an operator finds the utterance by the id the client logs.
/// Marked sampled by `telemetry.sample_ratio` decided on the trace id itself (`sampled`):
/// every span of the trace, on every instance, gets the same answer.
pub fn parent_from_trace_id(trace_id: &str) -> Option<Context> {
    if trace_id.len() != 32 {
        return None;
    }
    let trace = TraceId::from_hex(trace_id)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span = SpanId::from_bytes(rand::random::<u64>().max(1).to_be_bytes());
    let flags = if sampled(trace) {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let sc = SpanContext::new(trace, span, flags, true, TraceState::default());
    Some(Context::new().with_remote_span_context(sc))
}

/// Is trace `t` within `telemetry.sample_ratio`? As OpenTelemetry's trace-id ratio sampler
/// decides: the id's low 63 bits below ratio × 2^63 (a session's minted id and a client's
/// alike, so the ratio thins utterance traces too).
fn sampled(t: TraceId) -> bool {
    let ratio = SAMPLE_RATIO.get().copied().unwrap_or(1.0);
    if ratio >= 1.0 {
        return true;
    }
    let b = t.to_bytes();
    let low = u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]) >> 1;
    (low as f64) < ratio * (1u64 << 63) as f64
}

/// Attach `parent` (when there is one) to `span`.
pub fn adopt(span: &tracing::Span, parent: Option<Context>) {
    if let Some(cx) = parent {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let cx =
            parent_from("00-5b0c2f7e9a1d4c3b8e6f0a2b4c6d8e0f-00f067aa0ba902b7-01").expect("valid");
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "5b0c2f7e9a1d4c3b8e6f0a2b4c6d8e0f"
        );
        assert!(sc.is_sampled());
        assert!(parent_from("garbage").is_none());
        assert!(parent_from("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(parent_from_trace_id("5b0c2f7e9a1d4c3b8e6f0a2b4c6d8e0f").is_some());
        assert!(parent_from_trace_id("not-hex").is_none());
    }
}

#[cfg(test)]
mod record_tests {
    /// Observability audit: `body_missing` (a logged result whose body was gone) landed in
    /// `switchyard_jobs_total`, whose events are job transitions; it is a delivery outcome.
    #[test]
    fn a_missing_body_is_a_delivery_outcome_not_a_job_event() {
        let m = super::metrics::Metrics::new();
        let mut e = crate::store::Events::default();
        e.ev.insert("body_missing".into(), 2);
        e.ev.insert("finished".into(), 1);
        m.record_events("main", &e);
        let text = m.encode();
        assert!(
            text.contains(r#"switchyard_deliveries_total{kind="session",detail="body_missing"} 2"#),
            "{text}"
        );
        assert!(!text.contains(r#"event="body_missing""#), "{text}");
        assert!(text.contains(r#"event="finished""#), "{text}");
    }
}
