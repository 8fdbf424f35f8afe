//! HTTP surface: health, readiness, Prometheus metrics, the admin JSON API, and the two
//! WebSocket endpoints.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::server::App;
use crate::store::StoreError;
use crate::telemetry::metrics::{PoolLabels, StateLabels};

/// Most nodes `/api/v1/nodes` returns in one answer.
const NODE_LIST_LIMIT: usize = 10_000;

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
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{id}", get(node))
        .route("/api/v1/nodes/{id}/drain", post(drain))
        .route("/api/v1/nodes/{id}/undrain", post(undrain))
        .route("/api/v1/pools", get(pools))
        .route("/api/v1/instances", get(instances))
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

/// Admin calls need a bearer token: `admin:read` to look, `admin:write` to change.
async fn admin_auth(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use crate::auth::Scope;
    let scope = if req.method() == axum::http::Method::GET {
        Scope::AdminRead
    } else {
        Scope::AdminWrite
    };
    match app.auth.authorize(req.headers(), req.uri(), scope) {
        Ok(cred) => {
            if scope == Scope::AdminWrite {
                tracing::info!(
                    by = cred.sub.as_deref().unwrap_or("-"),
                    path = %req.uri().path(),
                    "admin change"
                );
            }
            next.run(req).await
        }
        Err(e) => {
            app.metrics.auth_refused("admin", &e);
            e.into_response()
        }
    }
}

fn unavailable(e: StoreError) -> Response {
    let code = match e {
        StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, Json(json!({"error": e.to_string()}))).into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason})),
        )
            .into_response()
    };
    if app.is_draining() {
        return not_ready("draining".into());
    }
    match app.store.check_ready().await {
        Ok(()) if !app.inbox_alive() => not_ready("inbox consumer not running".into()),
        Ok(()) => Json(json!({"ready": true, "instance": app.instance_id,
            "redis": app.store.redis_node(),
            "auth": if app.auth.is_open() { "open" } else { "required" }}))
        .into_response(),
        Err(e) => not_ready(e.to_string()),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    // Cluster-wide gauges come from Redis; if it is away, the local families still export.
    if let Ok(states) = app.store.node_states().await {
        for (state, n) in states {
            app.metrics
                .nodes
                .get_or_create(&StateLabels { state })
                .set(n);
        }
    }
    if let Ok((pending, dead)) = app.store.inbox_stats(&app.instance_id).await {
        app.metrics.inbox_pending.set(pending as i64);
        app.metrics.dead_letters.set(dead as i64);
    }
    app.metrics.pools.refresh_waits();
    if let Ok(pools) = app.store.pools().await {
        if let Ok(capacity) = app.store.pool_capacity(&pools).await {
            app.metrics.pools.set_capacity(&capacity);
        }
        let names: Vec<String> = pools.keys().cloned().collect();
        let heads = app.store.queue_heads(&names).await.unwrap_or_default();
        app.metrics.pool_nodes.clear();
        app.metrics.queue_depth.clear();
        for (i, (pool, members)) in pools.into_iter().enumerate() {
            let depth = heads.get(i).map_or(0, |h| h.0) as i64;
            app.metrics
                .queue_depth
                .get_or_create(&PoolLabels { pool: pool.clone() })
                .set(depth);
            app.metrics
                .pool_nodes
                .get_or_create(&PoolLabels { pool })
                .set(members.len() as i64);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

/// A node record as JSON: plain fields, with the JSON-valued ones decoded.
fn node_json(mut h: std::collections::HashMap<String, String>) -> Value {
    let mut out = serde_json::Map::new();
    for key in ["hardware", "installed_services"] {
        if let Some(raw) = h.remove(key) {
            out.insert(
                key.into(),
                serde_json::from_str(&raw).unwrap_or(Value::Null),
            );
        }
    }
    for (k, v) in h {
        out.insert(k, Value::String(v));
    }
    Value::Object(out)
}

async fn nodes(State(app): State<Arc<App>>) -> Response {
    match app.store.nodes(NODE_LIST_LIMIT).await {
        Ok(list) => Json(Value::Array(list.into_iter().map(node_json).collect())).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn node(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    if !crate::protocol::valid_id(&id) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid node id"})),
        )
            .into_response();
    }
    match app.store.node(&id).await {
        Ok(Some(h)) => Json(node_json(h)).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such node"})),
        )
            .into_response(),
        Err(e) => unavailable(e),
    }
}

/// `pub:zh:en` → scope public; `tenant:acme:zh:en` → scope acme.
fn pool_json(name: String, members: Vec<String>) -> Value {
    let parts: Vec<&str> = name.split(':').collect();
    let (scope, src, tgt) = match parts.as_slice() {
        ["pub", s, t] => ("public".to_string(), *s, *t),
        ["tenant", tenant, s, t] => (tenant.to_string(), *s, *t),
        _ => (String::new(), "", ""),
    };
    json!({"pool": name, "scope": scope, "src": src, "tgt": tgt, "count": members.len(), "members": members})
}

async fn pools(State(app): State<Arc<App>>) -> Response {
    match app.store.pools().await {
        Ok(p) => Json(Value::Array(
            p.into_iter().map(|(n, m)| pool_json(n, m)).collect(),
        ))
        .into_response(),
        Err(e) => unavailable(e),
    }
}

async fn instances(State(app): State<Arc<App>>) -> Response {
    match app.store.instances().await {
        Ok(list) => {
            let v: Vec<Value> = list
                .into_iter()
                .map(|(id, (expires, started))| {
                    json!({"instance": id, "presence_expires_at_ms": expires, "started_at_ms": started,
                           "self": id == app.instance_id})
                })
                .collect();
            Json(Value::Array(v)).into_response()
        }
        Err(e) => unavailable(e),
    }
}

async fn drain(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    set_drain(&app, &id, true).await
}

async fn undrain(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    set_drain(&app, &id, false).await
}

async fn set_drain(app: &App, id: &str, drain: bool) -> Response {
    use crate::store::instances::DrainReply;
    if !crate::protocol::valid_id(id) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid node id"})),
        )
            .into_response();
    }
    match app
        .store
        .node_drain(id, drain)
        .await
        .map(|o| crate::routing::deliver(app, o))
    {
        Ok(DrainReply::Ok { state }) => {
            Json(json!({"node_id": id, "state": state})).into_response()
        }
        Ok(DrainReply::Missing) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such node"})),
        )
            .into_response(),
        Ok(DrainReply::Offline) => (
            StatusCode::CONFLICT,
            Json(json!({"error": "node is not connected"})),
        )
            .into_response(),
        Err(e) => unavailable(e),
    }
}
