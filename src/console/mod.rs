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
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::http::admin::Cells;
use crate::server::App;

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
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // not framed by another site (clickjacking a drain button)
            (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
            (header::X_FRAME_OPTIONS, "DENY"),
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

pub(crate) use crate::http::admin::unavailable;

/// Add the cell a record was found in to its JSON view.
fn in_cell(mut v: serde_json::Value, cell: &str) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("cell".into(), cell.into());
    }
    v
}

/// A job by id, from the first cell that has it (or the one `?cell=` names).
async fn job(Path(id): Path<String>, Cells(cells): Cells) -> Response {
    if !crate::protocol::valid_id(&id) {
        return bad_id();
    }
    for cell in cells {
        match cell.store.job_record(&id).await {
            Ok(h) if h.is_empty() => {}
            Ok(h) => return Json(in_cell(explain::job_view(h), cell.name())).into_response(),
            Err(e) => return unavailable(e),
        }
    }
    not_found("job")
}

/// A session by id, from the first cell that has it (or the one `?cell=` names).
async fn session(Path(id): Path<String>, Cells(cells): Cells) -> Response {
    if !crate::protocol::valid_id(&id) {
        return bad_id();
    }
    for cell in cells {
        match cell.store.session_record(&id).await {
            Ok((h, _, _)) if h.is_empty() => {}
            Ok((h, pending, results)) => {
                let v = explain::session_view(h, pending, results);
                return Json(in_cell(v, cell.name())).into_response();
            }
            Err(e) => return unavailable(e),
        }
    }
    not_found("session")
}

/// A session's jobs, from the first cell that has any (or the one `?cell=` names); with
/// none in any cell, `"cell": null` (no cell is claimed for a session nobody found).
async fn session_jobs(Path(id): Path<String>, Cells(cells): Cells) -> Response {
    if !crate::protocol::valid_id(&id) {
        return bad_id();
    }
    for cell in cells {
        match cell.store.session_jobs(&id).await {
            Ok(rows) if rows.is_empty() => {}
            Ok(rows) => {
                return Json(json!({"session_id": id, "cell": cell.name(), "jobs": rows}))
                    .into_response();
            }
            Err(e) => return unavailable(e),
        }
    }
    Json(json!({"session_id": id, "cell": null, "jobs": []})).into_response()
}
