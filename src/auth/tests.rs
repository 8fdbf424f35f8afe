//! Credential checks without a server: keys, scopes, claims, rotation.

use axum::http::{HeaderMap, HeaderValue, Uri, header};

use super::mint::{TokenSpec, hs256, parse_ttl};
use super::*;
use crate::config::AuthConfig;

const OLD: &str = "old-secret-0123456789abcdef0123456789";
const NEW: &str = "new-secret-0123456789abcdef0123456789";

fn auth(secrets: &[&str]) -> Auth {
    let cfg = AuthConfig {
        hs256_secrets: secrets.iter().map(|s| s.to_string()).collect(),
        ..AuthConfig::default()
    };
    Auth::from_config(&cfg).expect("keys load")
}

fn spec(scopes: &[Scope], sub: Option<&str>, tenant: Option<&str>) -> TokenSpec {
    TokenSpec {
        scopes: scopes.to_vec(),
        sub: sub.map(str::to_string),
        tenant: tenant.map(str::to_string),
        cell: None,
        ttl_s: 60,
    }
}

fn query(token: &str) -> Uri {
    format!("/ws/node?x=1&access_token={token}")
        .parse()
        .unwrap()
}

#[test]
fn bearer_header_or_query_parameter() {
    let a = auth(&[NEW]);
    let t = hs256(NEW, &spec(&[Scope::Node], Some("n1"), Some("acme"))).unwrap();
    let c = a
        .authorize(&HeaderMap::new(), &query(&t), Scope::Node)
        .unwrap();
    assert_eq!(c.sub.as_deref(), Some("n1"));
    assert_eq!(c.tenant.as_deref(), Some("acme"));
    let now = crate::protocol::now_ms() / 1000;
    let exp = c.expires_at.expect("exp carried");
    assert!((now + 59..=now + 61).contains(&exp), "exp {exp}, now {now}");
    assert_eq!(Credential::open().expires_at, None);
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    assert!(
        a.authorize(&h, &"/ws/node".parse().unwrap(), Scope::Node)
            .is_ok()
    );
    assert_eq!(
        a.authorize(&HeaderMap::new(), &"/ws/node".parse().unwrap(), Scope::Node),
        Err(AuthError::Missing)
    );
}

#[test]
fn wrong_scope_is_forbidden_not_unauthorized() {
    let a = auth(&[NEW]);
    let t = hs256(NEW, &spec(&[Scope::AdminRead], None, None)).unwrap();
    assert_eq!(
        a.authorize(&HeaderMap::new(), &query(&t), Scope::AdminWrite),
        Err(AuthError::Forbidden("admin:write"))
    );
    assert!(
        a.authorize(&HeaderMap::new(), &query(&t), Scope::AdminRead)
            .is_ok()
    );
}

#[test]
fn secrets_rotate_without_downtime() {
    let old_token = hs256(OLD, &spec(&[Scope::Session], None, None)).unwrap();
    let new_token = hs256(NEW, &spec(&[Scope::Session], None, None)).unwrap();
    let both = auth(&[NEW, OLD]);
    for t in [&old_token, &new_token] {
        assert!(
            both.authorize(&HeaderMap::new(), &query(t), Scope::Session)
                .is_ok()
        );
    }
    let only_new = auth(&[NEW]);
    assert!(matches!(
        only_new.authorize(&HeaderMap::new(), &query(&old_token), Scope::Session),
        Err(AuthError::Invalid(_))
    ));
}

#[test]
fn expired_forged_and_scopeless_tokens_are_refused() {
    let a = auth(&[NEW]);
    let now = crate::protocol::now_ms() / 1000;
    let enc = |claims: serde_json::Value, secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let cases = [
        (
            enc(serde_json::json!({"exp": now - 3600, "scope": "node"}), NEW),
            "expired",
        ),
        (
            enc(serde_json::json!({"scope": "node"}), NEW),
            "missing claim exp",
        ),
        (
            enc(serde_json::json!({"exp": now + 60, "scope": "node"}), OLD),
            "bad signature",
        ),
        (
            enc(serde_json::json!({"exp": now + 60, "scope": "root"}), NEW),
            "no scope",
        ),
        (
            enc(
                serde_json::json!({"exp": now + 60, "scope": "node", "sub": "a b"}),
                NEW,
            ),
            "claim sub",
        ),
        ("not.a.jwt".to_string(), "malformed"),
    ];
    for (t, why) in cases {
        match a.authorize(&HeaderMap::new(), &query(&t), Scope::Node) {
            Err(AuthError::Invalid(m)) => assert!(m.contains(why), "{why}: {m}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    // A space-separated scope string and a list both work.
    let t = enc(
        serde_json::json!({"exp": now + 60, "scope": "session node"}),
        NEW,
    );
    assert!(
        a.authorize(&HeaderMap::new(), &query(&t), Scope::Node)
            .is_ok()
    );
}

/// An HS256 secret with `auth.issuer` "idp" and `auth.audience` "switchyard".
fn with_issuer_and_audience() -> (AuthConfig, Auth) {
    let cfg = AuthConfig {
        hs256_secrets: vec![NEW.to_string()],
        issuer: Some("idp".into()),
        audience: Some("switchyard".into()),
        ..AuthConfig::default()
    };
    let a = Auth::from_config(&cfg).expect("keys load");
    (cfg, a)
}

/// Review finding: a configured issuer and audience were only checked when a token carried
/// them (jsonwebtoken checks `iss`/`aud` only when present), so a token the identity
/// provider issued for another client without them passed; and `nbf` was never checked.
#[test]
fn a_configured_issuer_and_audience_are_required_and_nbf_is_checked() {
    let (_, a) = with_issuer_and_audience();
    let now = crate::protocol::now_ms() / 1000;
    let enc = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(NEW.as_bytes()),
        )
        .unwrap()
    };
    let base = serde_json::json!({"exp": now + 60, "scope": "node"});
    let with = |extra: serde_json::Value| {
        let mut c = base.clone();
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        enc(c)
    };
    let refused = [
        (with(serde_json::json!({})), "no iss, no aud"),
        (with(serde_json::json!({"iss": "idp"})), "no aud"),
        (with(serde_json::json!({"aud": "switchyard"})), "no iss"),
        (
            with(serde_json::json!({"iss": "other", "aud": "switchyard"})),
            "wrong iss",
        ),
        (
            with(serde_json::json!({"iss": "idp", "aud": "billing"})),
            "wrong aud",
        ),
        (
            with(serde_json::json!({"iss": 5, "aud": 123})),
            "iss and aud not strings",
        ),
        (
            with(serde_json::json!({"iss": "idp", "aud": "switchyard", "nbf": now + 3600})),
            "not valid before an hour from now",
        ),
    ];
    for (t, why) in refused {
        let r = a.authorize(&HeaderMap::new(), &query(&t), Scope::Node);
        assert!(
            matches!(r, Err(AuthError::Invalid(_))),
            "{why}: accepted ({r:?})"
        );
    }
    let ok = with(serde_json::json!({"iss": "idp", "aud": "switchyard", "nbf": now - 10}));
    assert!(
        a.authorize(&HeaderMap::new(), &query(&ok), Scope::Node)
            .is_ok()
    );
}

/// Security audit: `switchyard token` and the development banner signed no `iss` or
/// `aud`, so with `auth.issuer` / `auth.audience` set (as advised beside provider keys) the
/// deployment refused every token it minted itself.
#[test]
fn a_minted_token_carries_the_configured_issuer_and_audience() {
    let (cfg, a) = with_issuer_and_audience();
    let t = super::mint::sign(&cfg, &spec(&[Scope::Node], None, None)).expect("signed");
    let r = a.authorize(&HeaderMap::new(), &query(&t), Scope::Node);
    assert!(r.is_ok(), "{r:?}");
    // without them configured, none is written (and none is required)
    let plain = AuthConfig {
        hs256_secrets: vec![NEW.to_string()],
        ..AuthConfig::default()
    };
    let t = super::mint::sign(&plain, &spec(&[Scope::Node], None, None)).expect("signed");
    let claims = t.split('.').nth(1).expect("claims");
    use base64::Engine;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .expect("base64");
    let claims: serde_json::Value = serde_json::from_slice(&claims).expect("json");
    assert!(
        claims.get("iss").is_none() && claims.get("aud").is_none(),
        "{claims}"
    );
    assert!(super::mint::sign(&AuthConfig::default(), &spec(&[], None, None)).is_err());
}

/// Security audit: a token naming a `kid` was also tried against every key without one (an
/// HS256 secret would accept a token claiming to be the JWKS key's). The key it names checks
/// it alone; a `kid` no key has is left to the keys without one; no `kid`, to every key.
#[test]
fn a_kid_selects_its_key_alone() {
    let cfg = AuthConfig {
        hs256_secrets: vec![NEW.to_string()],
        jwks_file: Some(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/jwks.json").into(),
        ),
        ..AuthConfig::default()
    };
    let a = Auth::from_config(&cfg).expect("keys load");
    let now = crate::protocol::now_ms() / 1000;
    let claims = serde_json::json!({"exp": now + 60, "scope": "node"});
    let hs = |kid: Option<&str>| {
        let h = jsonwebtoken::Header {
            kid: kid.map(str::to_string),
            ..Default::default()
        };
        let key = jsonwebtoken::EncodingKey::from_secret(NEW.as_bytes());
        jsonwebtoken::encode(&h, &claims, &key).expect("signed")
    };
    let ok = |t: &str| {
        a.authorize(&HeaderMap::new(), &query(t), Scope::Node)
            .is_ok()
    };
    assert!(
        !ok(&hs(Some("ec-2026"))),
        "the secret checked a token naming the JWKS key"
    );
    assert!(ok(&hs(None)));
    assert!(ok(&hs(Some("rotated-away"))));
    // the JWKS key itself, by its kid
    let pem = include_bytes!("../../tests/fixtures/keys/ec256.key");
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some("ec-2026".into());
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem).expect("ec key");
    let es = jsonwebtoken::encode(&h, &claims, &key).expect("signed");
    assert!(ok(&es));
}

#[test]
fn node_binding_and_tenant_rules() {
    let fleet = Credential {
        scopes: vec![Scope::Node],
        sub: None,
        tenant: Some("acme".into()),
        cell: None,
        open: false,
        expires_at: None,
        fingerprint: Some("f1".into()),
    };
    assert!(
        !fleet.may_replace_node("n1"),
        "a fleet token cannot take a live node"
    );
    assert_eq!(fleet.tenant_for(None).unwrap().as_deref(), Some("acme"));
    assert_eq!(
        fleet.tenant_for(Some("acme")).unwrap().as_deref(),
        Some("acme")
    );
    assert!(fleet.tenant_for(Some("other")).is_err());
    let bound = Credential {
        sub: Some("n1".into()),
        tenant: None,
        ..fleet.clone()
    };
    assert!(bound.may_replace_node("n1") && !bound.may_replace_node("n2"));
    assert_eq!(bound.bound_node(), Some("n1"));
    // A credential without tenant cannot name one; open mode takes the frame's word.
    assert!(bound.tenant_for(Some("t")).is_err());
    assert_eq!(bound.tenant_for(None).unwrap(), None);
    assert_eq!(
        Credential::open().tenant_for(Some("t")).unwrap().as_deref(),
        Some("t")
    );
    assert!(Credential::open().may_replace_node("anything"));
    // Only a fleet token's nodes are counted per credential, under its fingerprint.
    assert_eq!(fleet.fleet(), Some("f1"));
    assert_eq!(bound.fleet(), None);
    assert_eq!(Credential::open().fleet(), None);
    assert_eq!(
        (fleet.holder(), bound.holder(), Credential::open().holder()),
        (Some("token:f1".into()), Some("sub:n1".into()), None)
    );
}

#[test]
fn a_verified_token_carries_its_fingerprint() {
    let a = auth(&[NEW]);
    let token = hs256(NEW, &spec(&[Scope::Node], None, None)).unwrap();
    let c = a
        .authorize(&HeaderMap::new(), &query(&token), Scope::Node)
        .unwrap();
    assert_eq!(c.fingerprint.as_deref(), Some(fingerprint(&token).as_str()));
    assert_eq!(fingerprint(&token).len(), 24);
    // the claims make the credential, not the signature (ECDSA signatures are malleable)
    assert_eq!(fingerprint(&token), fingerprint(&format!("{token}x")));
    let (signed, sig) = token.rsplit_once('.').unwrap();
    assert_ne!(
        fingerprint(&token),
        fingerprint(&format!("{signed}x.{sig}"))
    );
}

/// Review finding: `serve --dev` printed the first configured secret whatever it was, so a
/// mistaken `--dev` on a production configuration wrote the real secret and day-long admin
/// tokens to the logs; with only public keys it claimed `auth.mode = open`.
#[test]
fn the_dev_banner_prints_development_keys_only() {
    let with = |secrets: &[&str], mode: &str| AuthConfig {
        hs256_secrets: secrets.iter().map(|s| s.to_string()).collect(),
        mode: mode.into(),
        ..AuthConfig::default()
    };
    let dev = super::mint::dev_secret();
    let b = super::mint::dev_setup_banner(&with(&[&dev], "required"), "127.0.0.1:5010")
        .expect("a development secret");
    assert!(b.contains(&dev) && b.contains("admin token"), "{b}");
    assert!(super::mint::dev_setup_banner(&with(&[NEW], "required"), "x").is_err());
    assert!(super::mint::dev_setup_banner(&with(&[], "required"), "x").is_err());
    // a development secret beside real keys (security audit: only the first was looked at)
    assert!(super::mint::dev_setup_banner(&with(&[&dev, NEW], "required"), "x").is_err());
    let mut beside_jwks = with(&[&dev], "required");
    beside_jwks.jwks_file = Some("/etc/switchyard/jwks.json".into());
    assert!(super::mint::dev_setup_banner(&beside_jwks, "x").is_err());
    let mut beside_pem = with(&[&dev], "required");
    beside_pem.public_key_files = vec!["/etc/switchyard/idp.pem".into()];
    assert!(super::mint::dev_setup_banner(&beside_pem, "x").is_err());
    let open = super::mint::dev_setup_banner(&with(&[], "open"), "x").expect("open mode");
    assert!(open.contains("auth.mode = open"), "{open}");
}

#[test]
fn ttl_parsing() {
    assert_eq!(parse_ttl("1h"), Ok(3600));
    assert_eq!(parse_ttl("90"), Ok(90));
    assert_eq!(parse_ttl("2d"), Ok(172_800));
    assert!(parse_ttl("0s").is_err() && parse_ttl("1w").is_err() && parse_ttl("h").is_err());
}
