//! HTTP surface: health, readiness, Prometheus metrics, the admin JSON API ([`admin`]),
//! and the two WebSocket endpoints.

pub mod admin;
pub mod ready;
pub mod scrape;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::config::ReadyWhen;

use crate::server::App;

/// What `listen` serves: probes and the WebSocket endpoints, plus the admin API and
/// `/metrics` unless `admin_listen` puts them on their own address.
pub fn router(app: Arc<App>) -> Router {
    let public = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/ws/node", get(crate::gateway::node::upgrade))
        .route("/ws/session", get(crate::gateway::session::upgrade))
        .with_state(app.clone());
    if app.cfg.admin_listen.is_some() {
        public
    } else {
        public.merge(admin_router(app))
    }
}

/// The admin API (`admin:read` for GET, `admin:write` for POST) and `/metrics`; on
/// `admin_listen` when set. The probes are served here too, for a sidecar's convenience.
pub fn admin_router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/api/v1/nodes", get(admin::nodes))
        .route("/api/v1/nodes/{id}", get(admin::node))
        .route("/api/v1/nodes/{id}/drain", post(admin::drain))
        .route("/api/v1/nodes/{id}/undrain", post(admin::undrain))
        .route("/api/v1/pools", get(admin::pools))
        .route("/api/v1/instances", get(admin::instances))
        .merge(crate::console::api_routes())
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            admin_auth,
        ));
    let mut r = Router::new()
        .route("/metrics", get(metrics))
        .merge(api)
        .merge(crate::console::page_routes());
    if app.cfg.admin_listen.is_some() {
        r = r
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz));
    }
    r.with_state(app)
}

/// Admin calls need a bearer token: `admin:read` to look, `admin:write` to change. The
/// credential goes into the request's extensions (the console stream ends at its `exp`).
async fn admin_auth(
    State(app): State<Arc<App>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use crate::auth::Scope;
    use axum::http::Method;
    // (HEAD is a GET without its body: a read)
    let scope = if matches!(*req.method(), Method::GET | Method::HEAD) {
        Scope::AdminRead
    } else {
        Scope::AdminWrite
    };
    match app.auth.authorize(req.headers(), req.uri(), scope) {
        // The admin API is deployment-wide: it does not filter by tenant or cell. A token
        // that carries either claim was meant to be narrower than that, so it is refused
        // rather than silently given everything.
        Ok(cred) if !cred.open && (cred.tenant.is_some() || cred.cell.is_some()) => {
            let e = crate::auth::AuthError::Narrow;
            app.metrics.auth_refused("admin", &e);
            e.into_response()
        }
        Ok(cred) => {
            if scope == Scope::AdminWrite {
                tracing::info!(
                    by = cred.sub.as_deref().unwrap_or("-"),
                    path = %req.uri().path(),
                    "admin change"
                );
            }
            req.extensions_mut().insert(cred);
            // A bounded number at once, but the console stream (its own limits): each
            // request holds a pooled Redis connection while it reads.
            let _slot = match req.uri().path() {
                "/api/v1/console/stream" => None,
                _ => match app.admin_slots.clone().try_acquire_owned() {
                    Ok(slot) => Some(slot),
                    Err(_) => {
                        app.metrics.limited("admin", "requests");
                        return busy(app.cfg.limits.max_admin_requests);
                    }
                },
            };
            let mut res = next.run(req).await;
            let h = res.headers_mut();
            // transcripts and records: never cached, never sniffed as something else
            h.entry(header::CACHE_CONTROL)
                .or_insert(header::HeaderValue::from_static("no-store"));
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                header::HeaderValue::from_static("nosniff"),
            );
            res
        }
        Err(e) => {
            app.metrics.auth_refused("admin", &e);
            e.into_response()
        }
    }
}

/// HTTP 429: `limits.max_admin_requests` are in flight.
fn busy(max: usize) -> Response {
    let message = format!(
        "this instance serves at most {max} admin requests at once \
         (limits.max_admin_requests); try again shortly"
    );
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, "1")],
        Json(json!({"error": "too many admin requests", "message": message})),
    )
        .into_response()
}

/// Ready unless draining, and while the cells `instance.ready_when` asks for are usable
/// (Redis a primary with the library, inbox consumer reading). Cells that are not are named
/// under `degraded` of a 200, or give the 503's `reason`.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let not_ready = |reason: String, degraded: &[Value]| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason, "degraded": degraded})),
        )
            .into_response()
    };
    if app.is_draining() {
        return not_ready("draining".into(), &[]);
    }
    let mut degraded = Vec::new();
    let mut first_reason = None;
    for (name, usable) in app.ready.cells(&app).await {
        let reason = match usable {
            Err(e) => format!("cell {name}: {e}"),
            Ok(()) if app.cells.get(&name).is_some_and(|c| app.inbox_alive(c)) => continue,
            Ok(()) => format!("cell {name}: inbox consumer not running"),
        };
        degraded.push(json!({"cell": name, "reason": reason}));
        first_reason.get_or_insert(reason);
    }
    let usable = app.cells.len() - degraded.len();
    let ready = match app.cfg.instance.ready_when {
        ReadyWhen::EveryCell => degraded.is_empty(),
        ReadyWhen::AnyCell => usable > 0,
    };
    if !ready && let Some(reason) = first_reason {
        return not_ready(reason, &degraded);
    }
    let cells: Vec<_> = app.cells.iter().map(|c| c.name()).collect();
    Json(json!({"ready": true, "instance": app.instance_id,
        "redis": app.cells.default_cell().store.redis_node(), "cells": cells,
        "degraded": degraded,
        "auth": if app.auth.is_open() { "open" } else { "required" }}))
    .into_response()
}

/// `/metrics`: the scrape-time gauges come from at most one Redis refresh per
/// `telemetry.metrics_refresh_ms` ([`scrape`]).
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.scrape.encode(&app).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
