//! The admin JSON API over every cell: `/api/v1/nodes`, `/nodes/{id}`, drain/undrain,
//! `/pools`, `/instances`. Lists cover every cell (each item names its `cell`) unless
//! `?cell=NAME` picks one; a lookup by id searches the cells in order and answers the first
//! match (node ids are unique within a cell; `?cell=` picks among equal ids).

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cells::Cell;
use crate::server::App;
use crate::store::StoreError;

/// Most nodes `/api/v1/nodes` returns in one answer (per cell).
const NODE_LIST_LIMIT: usize = 10_000;
/// Most members `/api/v1/pools` lists per pool (its `count` says how many it has): a fleet
/// of nodes in thousands of pools each made a body of megabytes (console audit).
const POOL_MEMBERS_LIMIT: usize = 1_000;

/// `?cell=NAME`: restrict an admin call to one cell.
#[derive(Debug, Default, Deserialize)]
pub struct CellQuery {
    pub cell: Option<String>,
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({"error": message.into()}))).into_response()
}

/// `?cell=` names a cell this deployment does not have: 404.
#[derive(Debug)]
pub struct NoSuchCell(String);

impl IntoResponse for NoSuchCell {
    fn into_response(self) -> Response {
        error(StatusCode::NOT_FOUND, format!("no such cell {:?}", self.0))
    }
}

/// The cells a call covers: the one named by `?cell=`, or all.
pub fn selected_cells(app: &App, q: &CellQuery) -> Result<Vec<Arc<Cell>>, NoSuchCell> {
    match &q.cell {
        Some(name) => match app.cells.get(name) {
            Some(c) => Ok(vec![c.clone()]),
            None => Err(NoSuchCell(name.clone())),
        },
        None => Ok(app.cells.iter().cloned().collect()),
    }
}

/// The one cell a call is about: the one named by `?cell=`, or the default cell.
pub fn one_cell(app: &App, q: &CellQuery) -> Result<Arc<Cell>, NoSuchCell> {
    match &q.cell {
        Some(_) => selected_cells(app, q).map(|mut v| v.remove(0)),
        None => Ok(app.cells.default_cell().clone()),
    }
}

/// `?cell=` of the request. A query that does not parse (`?cell=a&cell=b`) is a 400, not
/// "every cell": a drain meant for one cell must not reach the first match in another.
fn cell_query(parts: &Parts) -> Result<CellQuery, BadQuery> {
    Query::<CellQuery>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .map_err(|e| BadQuery(e.to_string()))
}

/// The query string does not parse: 400.
pub struct BadQuery(String);

impl IntoResponse for BadQuery {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, format!("bad query: {}", self.0))
    }
}

/// Extractor: the cells an admin call covers (`?cell=NAME`, or all); 404 for a cell the
/// deployment does not have.
pub struct Cells(pub Vec<Arc<Cell>>);

impl FromRequestParts<Arc<App>> for Cells {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Response> {
        let q = cell_query(parts).map_err(IntoResponse::into_response)?;
        selected_cells(app, &q)
            .map(Self)
            .map_err(IntoResponse::into_response)
    }
}

/// Extractor: the one cell a call is about (`?cell=NAME`, or the default cell).
pub struct OneCell(pub Arc<Cell>);

impl FromRequestParts<Arc<App>> for OneCell {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Response> {
        let q = cell_query(parts).map_err(IntoResponse::into_response)?;
        one_cell(app, &q)
            .map(Self)
            .map_err(IntoResponse::into_response)
    }
}

pub fn unavailable(e: StoreError) -> Response {
    let code = if e.is_unavailable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    error(code, e.to_string())
}

fn bad_node_id() -> Response {
    error(StatusCode::BAD_REQUEST, "invalid node id")
}

/// A node record as JSON: plain fields, with the JSON-valued ones decoded, and its cell.
fn node_json(cell: &str, mut h: std::collections::HashMap<String, String>) -> Value {
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
    out.insert("cell".into(), Value::from(cell));
    Value::Object(out)
}

pub async fn nodes(Cells(cells): Cells) -> Response {
    let mut all = Vec::new();
    for cell in cells {
        match cell.store.nodes(NODE_LIST_LIMIT).await {
            Ok(list) => all.extend(list.into_iter().map(|h| node_json(cell.name(), h))),
            Err(e) => return unavailable(e),
        }
    }
    Json(Value::Array(all)).into_response()
}

pub async fn node(Path(id): Path<String>, Cells(cells): Cells) -> Response {
    if !crate::protocol::valid_id(&id) {
        return bad_node_id();
    }
    for cell in cells {
        match cell.store.node(&id).await {
            Ok(Some(h)) => return Json(node_json(cell.name(), h)).into_response(),
            Ok(None) => {}
            Err(e) => return unavailable(e),
        }
    }
    error(StatusCode::NOT_FOUND, "no such node")
}

/// `pub:zh:en` → scope public; `tenant:acme:zh:en` → scope acme. `members`: the first
/// POOL_MEMBERS_LIMIT ids (sorted), `count`: all of them.
fn pool_json(cell: &str, name: String, mut members: Vec<String>) -> Value {
    let parts: Vec<&str> = name.split(':').collect();
    let (scope, src, tgt) = match parts.as_slice() {
        ["pub", s, t] => ("public".to_string(), *s, *t),
        ["tenant", tenant, s, t] => (tenant.to_string(), *s, *t),
        _ => (String::new(), "", ""),
    };
    let count = members.len();
    members.truncate(POOL_MEMBERS_LIMIT);
    json!({"cell": cell, "pool": name, "scope": scope, "src": src, "tgt": tgt,
           "count": count, "members": members})
}

pub async fn pools(Cells(cells): Cells) -> Response {
    let mut all = Vec::new();
    for cell in cells {
        match cell.store.pools().await {
            Ok(p) => all.extend(p.into_iter().map(|(n, m)| pool_json(cell.name(), n, m))),
            Err(e) => return unavailable(e),
        }
    }
    Json(Value::Array(all)).into_response()
}

/// Every instance's presence in each cell (an instance is present in every cell it
/// serves; one missing from a cell has lost its presence there).
pub async fn instances(State(app): State<Arc<App>>, Cells(cells): Cells) -> Response {
    let mut all = Vec::new();
    for cell in cells {
        match cell.store.instances().await {
            Ok(list) => all.extend(list.into_iter().map(|(id, (expires, started))| {
                json!({"cell": cell.name(), "instance": id, "presence_expires_at_ms": expires,
                       "started_at_ms": started, "self": id == app.instance_id})
            })),
            Err(e) => return unavailable(e),
        }
    }
    Json(Value::Array(all)).into_response()
}

pub async fn drain(State(app): State<Arc<App>>, Path(id): Path<String>, c: Cells) -> Response {
    set_drain(&app, &id, c, true).await
}

pub async fn undrain(State(app): State<Arc<App>>, Path(id): Path<String>, c: Cells) -> Response {
    set_drain(&app, &id, c, false).await
}

/// Drain (or undrain) the node `id` in the first of `cells` that knows it.
async fn set_drain(app: &App, id: &str, Cells(cells): Cells, drain: bool) -> Response {
    use crate::store::instances::DrainReply;
    if !crate::protocol::valid_id(id) {
        return bad_node_id();
    }
    let mut offline = false;
    for cell in cells {
        let reply = cell.store.node_drain(id, drain).await;
        match crate::routing::delivered(app, &cell, reply) {
            Ok(DrainReply::Ok { state }) => {
                return Json(json!({"node_id": id, "cell": cell.name(), "state": state}))
                    .into_response();
            }
            Ok(DrainReply::Missing) => {}
            Ok(DrainReply::Offline) => offline = true,
            Err(e) => return unavailable(e),
        }
    }
    if offline {
        error(StatusCode::CONFLICT, "node is not connected")
    } else {
        error(StatusCode::NOT_FOUND, "no such node")
    }
}
