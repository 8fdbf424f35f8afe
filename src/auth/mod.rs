//! Who may do what: JWT credentials (RFC 7519) on every WebSocket upgrade and admin call.
//!
//! A credential is carried as `Authorization: Bearer <jwt>` or `?access_token=<jwt>` (so an
//! unchanged lingua node or web client only adds a query parameter to its URL). Claims:
//! `exp` (required), `scope` (`node`, `session`, `admin:read`, `admin:write`; a string, a
//! space-separated string or a list), optional `sub` (the node id a node token may hold;
//! the subject whose sessions are counted), optional `tenant` (the tenant; a frame cannot
//! claim another), optional `cell` (places a peer without tenant in that cell; see
//! `cells`). Verification keys come from `[auth]` ([`keys`]); minting, for
//! `switchyard token` and the development setup, is [`mint`].
//!
//! The rules themselves — which scope an endpoint needs, which node a credential may hold,
//! which tenant a frame may name — are the methods of [`Credential`], so "who may do what"
//! is this one file.

pub mod keys;
pub mod mint;

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

pub use keys::Verifier;

/// A token's fingerprint: the first 12 bytes of the SHA-256 of its signed part (header and
/// claims, without the signature), in hex. Two instances compute the same one for the same
/// token; it names the token in Redis keys (`fleet:<fingerprint>:nodes`) and logs without
/// carrying the token itself. The signature is left out because one set of claims can have
/// more than one valid signature (an ECDSA signature (r, s) also verifies as (r, n - s)):
/// with it, one ES256 token would count as two credentials.
pub fn fingerprint(token: &str) -> String {
    use sha2::Digest;
    let signed = token.rsplit_once('.').map_or(token, |(signed, _)| signed);
    let digest = sha2::Sha256::digest(signed.as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// What a credential allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Register and serve as a node (`/ws/node`).
    Node,
    /// Open and resume sessions (`/ws/session`).
    Session,
    /// `GET /api/v1/*`.
    AdminRead,
    /// `POST /api/v1/*` (drain, undrain); implies nothing else.
    AdminWrite,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::Node,
        Scope::Session,
        Scope::AdminRead,
        Scope::AdminWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Node => "node",
            Scope::Session => "session",
            Scope::AdminRead => "admin:read",
            Scope::AdminWrite => "admin:write",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// The verified identity behind one connection or request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    scopes: Vec<Scope>,
    /// `sub`: for a node token, the one node id it may hold (and take over when live).
    pub sub: Option<String>,
    /// `tenant`: the tenant of everything this credential does.
    pub tenant: Option<String>,
    /// `cell`: the cell of a peer without tenant (a public fleet of one region).
    pub cell: Option<String>,
    /// `auth.mode = "open"`: nobody was checked; everything is allowed as before auth.
    pub open: bool,
    /// `exp` (Unix seconds): when the credential stops being valid. What outlives one
    /// request (the console's live stream) ends then. `None` in open mode.
    pub expires_at: Option<u64>,
    /// The token's fingerprint ([`fingerprint`]): who holds a credential without `sub`,
    /// for the limits counted per credential. `None` in open mode.
    pub fingerprint: Option<String>,
}

impl Credential {
    /// The credential everyone has in `open` mode.
    pub fn open() -> Self {
        Self {
            scopes: Scope::ALL.to_vec(),
            sub: None,
            tenant: None,
            cell: None,
            open: true,
            expires_at: None,
            fingerprint: None,
        }
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// May this credential take `node_id` away from a live connection? Only a connection
    /// that proves it is that node (`sub` = node id), or anyone in open mode. A fleet
    /// token (no `sub`) may register new nodes and reconnect nodes nobody holds. Either
    /// way only within the tenant of the id's record (`register.lua` refuses the rest as
    /// `foreign`): `sub` names an id in its own tenant.
    pub fn may_replace_node(&self, node_id: &str) -> bool {
        self.open || self.sub.as_deref() == Some(node_id)
    }

    /// The node id this credential must register as, if it is bound to one.
    pub fn bound_node(&self) -> Option<&str> {
        if self.open { None } else { self.sub.as_deref() }
    }

    /// The fleet credential a node registered with this one counts against
    /// (`limits.max_nodes_per_credential`): its fingerprint, for a token without `sub`. A
    /// token with `sub` holds one node id only, and open mode counts nobody.
    pub fn fleet(&self) -> Option<&str> {
        if self.open || self.sub.is_some() {
            None
        } else {
            self.fingerprint.as_deref()
        }
    }

    /// The subject `limits.max_sessions_per_subject` counts the sessions of: `sub`, within
    /// the credential's tenant (`<tenant>/<sub>`: tenants may name their users alike, and
    /// neither part holds a `/`); None without `sub`.
    pub fn subject(&self) -> Option<String> {
        let sub = self.sub.as_deref()?;
        Some(match &self.tenant {
            Some(t) => format!("{t}/{sub}"),
            None => sub.to_string(),
        })
    }

    /// Who the credential is, for what is limited per holder (console streams):
    /// `sub:<sub>`, else `token:<fingerprint>` (two name spaces: a `sub` cannot be another
    /// token's fingerprint); `None` in open mode.
    pub fn holder(&self) -> Option<String> {
        if self.open {
            return None;
        }
        match (&self.sub, &self.fingerprint) {
            (Some(sub), _) => Some(format!("sub:{sub}")),
            (None, Some(fp)) => Some(format!("token:{fp}")),
            (None, None) => None,
        }
    }

    /// The tenant a frame's `tenant_id` resolves to: the credential's tenant; a frame may
    /// repeat it, never name another (`Err` says why). A credential without tenant is
    /// public: its frames cannot name one (a fleet token would otherwise serve, and a
    /// session token bill, any tenant it names, strict tenants included). Only `open` mode,
    /// where nobody is checked, takes the frame's word.
    pub fn tenant_for(&self, claimed: Option<&str>) -> Result<Option<String>, String> {
        let claimed = claimed.filter(|t| !t.is_empty());
        match (&self.tenant, claimed) {
            (Some(mine), Some(t)) if mine != t => Err(format!(
                "tenant_id {t:?} contradicts the credential's tenant {mine:?}"
            )),
            (Some(mine), _) => Ok(Some(mine.clone())),
            (None, Some(t)) if !self.open => Err(format!(
                "tenant_id {t:?} needs a credential of that tenant (this one has no tenant claim)"
            )),
            (None, t) => Ok(t.map(str::to_string)),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credential: send Authorization: Bearer <jwt> or ?access_token=<jwt>")]
    Missing,
    #[error("invalid credential: {0}")]
    Invalid(String),
    #[error("credential lacks scope {0}")]
    Forbidden(&'static str),
    /// An admin credential with a `tenant` or `cell` claim: the admin API is
    /// deployment-wide and does not narrow to either.
    #[error(
        "admin credentials are deployment-wide: a token with a tenant or cell claim is refused"
    )]
    Narrow,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = match self {
            AuthError::Forbidden(_) | AuthError::Narrow => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        let body = axum::Json(serde_json::json!({
            "error": if status == StatusCode::FORBIDDEN { "forbidden" } else { "unauthorized" },
            "message": self.to_string(),
        }));
        let mut resp = (status, body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"switchyard\""),
            );
        }
        resp
    }
}

/// How an instance checks credentials: open, or against the configured keys.
pub enum Auth {
    Open,
    Required(Box<Verifier>),
}

impl Auth {
    /// Build from `[auth]`; fails naming the key file that cannot be used.
    pub fn from_config(cfg: &crate::config::AuthConfig) -> Result<Self, String> {
        if cfg.is_open() {
            return Ok(Auth::Open);
        }
        Ok(Auth::Required(Box::new(Verifier::from_config(cfg)?)))
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Auth::Open)
    }

    /// The credential of a request that needs `scope`: from its `Authorization` header or
    /// its `access_token` query parameter.
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        scope: Scope,
    ) -> Result<Credential, AuthError> {
        let verifier = match self {
            Auth::Open => return Ok(Credential::open()),
            Auth::Required(v) => v,
        };
        let token = bearer(headers, uri).ok_or(AuthError::Missing)?;
        let cred = verifier.verify(&token)?;
        if !cred.has(scope) {
            return Err(AuthError::Forbidden(scope.as_str()));
        }
        Ok(cred)
    }
}

/// The token of a request: `Authorization: Bearer <t>` first, else `?access_token=<t>`.
fn bearer(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?.trim();
        let (kind, token) = v.split_once(' ')?;
        return kind
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
            .filter(|t| !t.is_empty());
    }
    let query = axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri).ok()?;
    query
        .0
        .get("access_token")
        .filter(|t| !t.is_empty())
        .cloned()
}

/// The claims Switchyard reads (`exp` is checked by the verifier).
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    scope: ScopeClaim,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    cell: Option<String>,
}

/// `scope`: `"node"`, `"node session"` (OAuth style) or `["node", "session"]`.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Claims {
    /// Check the claims' shapes and turn them into a credential. Unknown scopes are
    /// ignored (a token may carry scopes of other services).
    fn credential(self) -> Result<Credential, AuthError> {
        let names: Vec<String> = match self.scope {
            ScopeClaim::None => Vec::new(),
            ScopeClaim::One(s) => s.split_whitespace().map(str::to_string).collect(),
            ScopeClaim::Many(v) => v,
        };
        let mut scopes: Vec<Scope> = names.iter().filter_map(|s| Scope::parse(s)).collect();
        scopes.dedup();
        if scopes.is_empty() {
            return Err(AuthError::Invalid(
                "no scope this service knows (node, session, admin:read, admin:write)".into(),
            ));
        }
        for (name, v) in [
            ("sub", &self.sub),
            ("tenant", &self.tenant),
            ("cell", &self.cell),
        ] {
            if let Some(v) = v
                && !crate::protocol::valid_id(v)
            {
                return Err(AuthError::Invalid(format!(
                    "claim {name} must be 1-64 of [A-Za-z0-9_.-]"
                )));
            }
        }
        Ok(Credential {
            scopes,
            sub: self.sub,
            tenant: self.tenant,
            cell: self.cell,
            open: false,
            expires_at: self.exp,
            fingerprint: None,
        })
    }
}

#[cfg(test)]
mod tests;
