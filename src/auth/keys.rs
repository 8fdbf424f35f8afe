//! Verification keys from `[auth]`: HS256 secrets (a list, for rotation), public keys in
//! PEM files (RS256, ES256, EdDSA) and a JWKS file. Each key accepts only its own
//! algorithm, so a token cannot pick a weaker one (no `none`, no HS256 signed with a
//! public key).

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{AuthError, Claims, Credential};
use crate::config::AuthConfig;

/// One key and the algorithm it verifies.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    /// Where it came from, for logs (never the secret).
    origin: String,
}

/// Checks tokens against every configured key.
pub struct Verifier {
    keys: Vec<Key>,
    leeway_s: u64,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Verifier {
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, s) in cfg.hs256_secrets.iter().enumerate() {
            keys.push(Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(s.as_bytes()),
                origin: format!("auth.hs256_secrets[{i}]"),
            });
        }
        for path in &cfg.public_key_files {
            let pem =
                std::fs::read(path).map_err(|e| format!("auth.public_key_files: {path}: {e}"))?;
            keys.push(pem_key(&pem).map_err(|e| format!("auth.public_key_files: {path}: {e}"))?);
            if let Some(k) = keys.last_mut() {
                k.origin = path.clone();
            }
        }
        if let Some(path) = &cfg.jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("auth.jwks_file: {path}: {e}"))?;
            let set: JwkSet =
                serde_json::from_str(&text).map_err(|e| format!("auth.jwks_file: {path}: {e}"))?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| format!("auth.jwks_file: {path}: {e}"))?;
                let alg = match jwk.common.key_algorithm {
                    Some(a) => a.to_string().parse::<Algorithm>().ok(),
                    None => family_default(&key),
                }
                .ok_or_else(|| format!("auth.jwks_file: {path}: unsupported key algorithm"))?;
                keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                    origin: format!("{path}#{}", jwk.common.key_id.as_deref().unwrap_or("?")),
                });
            }
        }
        if keys.is_empty() {
            return Err("auth.mode = \"required\" but no key is configured".into());
        }
        Ok(Self {
            keys,
            leeway_s: cfg.leeway_s,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
        })
    }

    /// The credential in `token`, if a configured key signed it and it has not expired.
    pub fn verify(&self, token: &str) -> Result<Credential, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed token: {e}")))?;
        // A token without `kid` is checked by every key of its algorithm. A `kid` some key
        // has selects that key alone; one no key has leaves it to the keys without a `kid`
        // (HS256 secrets, PEM files): a key with another `kid` never checks it.
        let has = |want: &str| self.keys.iter().any(|k| k.kid.as_deref() == Some(want));
        let candidates = self.keys.iter().filter(|k| {
            k.alg == header.alg
                && match header.kid.as_deref() {
                    None => true,
                    Some(want) if has(want) => k.kid.as_deref() == Some(want),
                    Some(_) => k.kid.is_none(),
                }
        });
        let mut last = AuthError::Invalid(format!("no key for algorithm {:?}", header.alg));
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &self.validation(k.alg)) {
                Ok(data) => {
                    let mut cred = data.claims.credential()?;
                    cred.fingerprint = Some(super::fingerprint(token));
                    return Ok(cred);
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    let reason = match e.kind() {
                        ErrorKind::ExpiredSignature => "expired".to_string(),
                        ErrorKind::InvalidSignature => "bad signature".to_string(),
                        ErrorKind::MissingRequiredClaim(c) => format!("missing claim {c}"),
                        _ => e.to_string(),
                    };
                    tracing::debug!(key = %k.origin, %reason, "token refused by key");
                    last = AuthError::Invalid(reason);
                }
            }
        }
        Err(last)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway_s;
        // A configured issuer or audience is required, not only checked when present: a
        // token the identity provider issued without them (for another client) is refused.
        let mut required = vec!["exp"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        // `nbf` (not before), when present, is checked with the same leeway as `exp`.
        v.validate_nbf = true;
        v.validate_aud = self.audience.is_some();
        if let Some(a) = &self.audience {
            v.set_audience(&[a]);
        }
        if let Some(i) = &self.issuer {
            v.set_issuer(&[i]);
        }
        v
    }
}

/// A PEM public key: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA).
fn pem_key(pem: &[u8]) -> Result<Key, String> {
    type Parse = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let tries: [(Algorithm, Parse); 3] = [
        (Algorithm::RS256, DecodingKey::from_rsa_pem),
        (Algorithm::ES256, DecodingKey::from_ec_pem),
        (Algorithm::EdDSA, DecodingKey::from_ed_pem),
    ];
    for (alg, parse) in tries {
        if let Ok(key) = parse(pem) {
            return Ok(Key {
                kid: None,
                alg,
                key,
                origin: String::new(),
            });
        }
    }
    Err("not an RSA, EC P-256 or Ed25519 public key in PEM".into())
}

/// The algorithm of a JWK that does not name one.
fn family_default(key: &DecodingKey) -> Option<Algorithm> {
    use jsonwebtoken::AlgorithmFamily;
    match key.family() {
        AlgorithmFamily::Rsa => Some(Algorithm::RS256),
        AlgorithmFamily::Ec => Some(Algorithm::ES256),
        AlgorithmFamily::Ed => Some(Algorithm::EdDSA),
        AlgorithmFamily::Hmac => Some(Algorithm::HS256),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}
