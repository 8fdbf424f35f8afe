//! `[auth]` — who may connect: credential mode, verification keys, token lifetimes.
//!
//! Secure by default: `mode = "required"` and no key configured is a configuration error,
//! not an open door. `mode = "open"` is for development only and says so loudly.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `required`: every WebSocket upgrade and admin call carries a valid JWT.
    /// `open`: nobody is checked (development only; logged, shown in `/readyz` and a metric).
    pub mode: String,
    /// HS256 shared secrets. Every one verifies; the first one signs (`switchyard token`).
    /// Rotation: put the new secret first, keep the old one until its tokens expired.
    pub hs256_secrets: Vec<String>,
    /// PEM files of public keys (RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA).
    pub public_key_files: Vec<String>,
    /// A JWKS file (`{"keys":[...]}`): a token whose header names a `kid` is checked
    /// against that key only (a `kid` no key has: against the keys without one).
    pub jwks_file: Option<String>,
    /// Clock skew tolerated on `exp` / `nbf`, seconds.
    pub leeway_s: u64,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// Lifetime of tokens minted by `switchyard token` unless `--ttl` says otherwise.
    pub default_ttl_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: "required".into(),
            hs256_secrets: Vec::new(),
            public_key_files: Vec::new(),
            jwks_file: None,
            leeway_s: 30,
            issuer: None,
            audience: None,
            default_ttl_s: 3600,
        }
    }
}

impl AuthConfig {
    /// `mode = "open"`: nobody is checked.
    pub fn is_open(&self) -> bool {
        self.mode == "open"
    }

    /// At least one verification key is configured.
    pub fn has_keys(&self) -> bool {
        !self.hs256_secrets.is_empty()
            || !self.public_key_files.is_empty()
            || self.jwks_file.is_some()
    }
}
