//! Minting HS256 tokens from the first configured secret: `switchyard token` and the
//! development setup of `make run` (which prints ready-made tokens). A minted token carries
//! the configured `issuer` and `audience`, which verification then requires.

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

use super::Scope;

/// What a minted token says.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub scopes: Vec<Scope>,
    pub sub: Option<String>,
    pub tenant: Option<String>,
    /// The `cell` claim (a tenant-less peer's cell).
    pub cell: Option<String>,
    pub ttl_s: u64,
}

#[derive(Serialize)]
struct Claims<'a> {
    exp: u64,
    iat: u64,
    scope: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cell: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Sign `spec` with the first HS256 secret of `auth`, with its `issuer` and `audience` as
/// `iss` and `aud`: with either configured, verification requires it, and a token without
/// would be refused by the very deployment that minted it.
pub fn sign(auth: &crate::config::AuthConfig, spec: &TokenSpec) -> Result<String, String> {
    let secret =
        (auth.hs256_secrets.first()).ok_or("no auth.hs256_secrets configured to sign with")?;
    encode(
        secret,
        spec,
        auth.issuer.as_deref(),
        auth.audience.as_deref(),
    )
}

/// Sign `spec` with `secret` (HS256), without `iss` or `aud`.
pub fn hs256(secret: &str, spec: &TokenSpec) -> Result<String, String> {
    encode(secret, spec, None, None)
}

fn encode(
    secret: &str,
    spec: &TokenSpec,
    iss: Option<&str>,
    aud: Option<&str>,
) -> Result<String, String> {
    let now = crate::protocol::now_ms() / 1000;
    let claims = Claims {
        exp: now + spec.ttl_s,
        iat: now,
        scope: spec.scopes.iter().map(|s| s.as_str()).collect(),
        sub: spec.sub.as_deref(),
        tenant: spec.tenant.as_deref(),
        cell: spec.cell.as_deref(),
        iss,
        aud,
    };
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

/// Parse `1h`, `30m`, `45s`, `2d` or plain seconds.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad duration unit in {s:?} (use s, m, h or d)")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("duration {s:?} must be positive"))
}

/// The development setup (`switchyard serve --dev`, used by `make run` and `make demo`):
/// when no key is configured, a random secret for this run.
pub fn dev_secret() -> String {
    format!(
        "dev-{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
}

/// What `serve --dev` prints, given the configuration it runs with: the development banner
/// when the keys are development keys (`open` mode, or only HS256 secrets, each with the
/// `dev-` prefix that `make run` and [`dev_secret`] use); an error otherwise. `--dev` on a
/// configuration with real keys (a mistaken flag in a production entrypoint) must not write
/// the production secret and day-long admin tokens to stdout and the log pipeline, nor
/// tokens that a real key beside a development secret would make valid there.
pub fn dev_setup_banner(auth: &crate::config::AuthConfig, listen: &str) -> Result<String, String> {
    if auth.is_open() {
        return Ok("SWITCHYARD DEVELOPMENT SETUP: auth.mode = open, no tokens needed".into());
    }
    let dev_only = auth.public_key_files.is_empty()
        && auth.jwks_file.is_none()
        && auth.hs256_secrets.iter().all(|s| s.starts_with("dev-"));
    match auth.hs256_secrets.first() {
        Some(secret) if dev_only => dev_banner(auth, secret, listen),
        _ => Err(
            "--dev prints its credentials, so it runs only with development keys: \
                  HS256 secrets all starting with \"dev-\" and no public key or JWKS (or no \
                  key: one is made for the run), or auth.mode = \"open\"; this \
                  configuration has other keys. Drop --dev."
                .into(),
        ),
    }
}

/// The banner `serve --dev` prints: the secret and ready-made tokens (24 h), so a newcomer
/// can connect a lingua node and a web client at once.
fn dev_banner(
    auth: &crate::config::AuthConfig,
    secret: &str,
    listen: &str,
) -> Result<String, String> {
    let token = |scopes: &[Scope]| {
        sign(
            auth,
            &TokenSpec {
                scopes: scopes.to_vec(),
                sub: None,
                tenant: None,
                cell: None,
                ttl_s: 86_400,
            },
        )
    };
    let node = token(&[Scope::Node])?;
    let session = token(&[Scope::Session])?;
    let admin = token(&[Scope::AdminRead, Scope::AdminWrite])?;
    let line = "=".repeat(78);
    Ok(format!(
        "{line}
  SWITCHYARD DEVELOPMENT SETUP -- credentials printed below; not for production
  HS256 secret : {secret}
  node token   : {node}
    lingua node scheduler URL: ws://{listen}/ws/node?access_token={node}
  session token: {session}
    web client scheduler URL:  ws://{listen}/ws/session?access_token={session}
  admin token  : {admin}
    curl -H 'Authorization: Bearer {admin}' http://{listen}/api/v1/nodes
  more tokens  : SWITCHYARD_AUTH__HS256_SECRETS='[\"{secret}\"]' switchyard token --scope node --sub NODE_ID
  tokens expire in 24 h
{line}"
    ))
}
