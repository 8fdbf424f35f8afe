//! The operator console: job and session inspection (`/api/v1/jobs/{id}`,
//! `/api/v1/sessions/{id}`, `/api/v1/sessions/{id}/jobs`), the live dashboard
//! (`/dashboard`, fed by the SSE stream `/api/v1/console/stream`) and the per-second cell
//! statistics behind its sparklines. Mounted on the admin router, so it sits on
//! `admin_listen` when that is set; every `/api/v1` route needs an admin token, the page
//! itself does not (it asks for one).

pub mod cli;
pub mod explain;
pub mod live;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::server::App;
use crate::store::StoreError;

/// The dashboard page: HTML, CSS and JS in one file, nothing fetched from elsewhere.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Admin API routes of the console (the caller adds the admin authentication layer).
pub fn api_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/sessions/{id}", get(session))
        .route("/api/v1/sessions/{id}/jobs", get(session_jobs))
        .route("/api/v1/console/stream", get(live::stream))
        .route("/api/v1/console/snapshot", get(live::snapshot_json))
}

/// The page, served without authentication (it holds no data; it asks for a token).
pub fn page_routes() -> Router<Arc<App>> {
    Router::new().route("/dashboard", get(dashboard))
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        DASHBOARD,
    )
        .into_response()
}

fn bad_id() -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid id"})),
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("no such {what} (or its record expired)")})),
    )
        .into_response()
}

pub(crate) fn unavailable(e: StoreError) -> Response {
    let code = match e {
        StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, Json(json!({"error": e.to_string()}))).into_response()
}

async fn job(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    if !crate::protocol::valid_id(&id) {
        return bad_id();
    }
    match app.store.job_record(&id).await {
        Ok(h) if h.is_empty() => not_found("job"),
        Ok(h) => Json(explain::job_view(h)).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn session(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    if !crate::protocol::valid_id(&id) {
        return bad_id();
    }
    match app.store.session_record(&id).await {
        Ok((h, _, _)) if h.is_empty() => not_found("session"),
        Ok((h, pending, results)) => {
            Json(explain::session_view(h, pending, results)).into_response()
        }
        Err(e) => unavailable(e),
    }
}

async fn session_jobs(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    if !crate::protocol::valid_id(&id) {
        return bad_id();
    }
    match app.store.session_jobs(&id).await {
        Ok(rows) => Json(json!({"session_id": id, "jobs": rows})).into_response(),
        Err(e) => unavailable(e),
    }
}
