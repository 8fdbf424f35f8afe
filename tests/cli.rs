//! The binary's command line: `switchyard check-config` prints the effective configuration
//! and exits non-zero naming the bad field; environment and TOML layering as an operator
//! uses them; `switchyard token` mints credentials the instance accepts.

use std::process::Command;

const SECRET: &str = "cli-test-secret-0123456789abcdef0123456789";

/// `switchyard check-config` with a key configured (the one thing defaults lack).
fn check_config(envs: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let secrets = format!("[\"{SECRET}\"]");
    let mut all = vec![("SWITCHYARD_AUTH__HS256_SECRETS", secrets.as_str())];
    all.extend_from_slice(envs);
    run(&all, &[&["check-config"], args].concat())
}

fn run(envs: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(args)
        .env_remove("SWITCHYARD_CONFIG")
        .env_remove("SWITCHYARD_AUTH__HS256_SECRETS")
        .env_remove("SWITCHYARD_AUTH__MODE");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run switchyard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_the_effective_configuration_with_derived_liveness() {
    let (code, out, _) = check_config(&[("SWITCHYARD_NODE__HEARTBEAT_INTERVAL_MS", "5000")], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("heartbeat_interval_ms = 5000"), "{out}");
    assert!(
        out.contains("node liveness = 15000 ms"),
        "derived 3 x heartbeat: {out}"
    );
    assert!(
        out.contains("[jobs]") && out.contains("[telemetry]"),
        "{out}"
    );
}

/// `[[cells]]` from a file come back from `check-config` as `[[cells]]`, and the printed
/// configuration reads back as the same configuration; two defaults are refused.
#[test]
fn cells_round_trip_through_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cells.toml");
    let cells = "[[cells]]\nname = \"eu-1\"\ndefault = true\n\n[[cells]]\nname = \"us-1\"\ntenants = [\"acme\"]\n";
    std::fs::write(&file, cells).unwrap();
    let (code, out, err) = check_config(&[], &["--config", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("[[cells]]").count(), 2, "{out}");
    assert!(
        out.contains("name = \"us-1\"") && out.contains("tenants = [\"acme\"]"),
        "{out}"
    );
    let printed = dir.path().join("printed.toml");
    let body: String = out
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(
        &printed,
        body.replace("\"<redacted>\"", "\"0123456789abcdef0123456789abcdef\""),
    )
    .unwrap();
    let (code, again, err) = check_config(&[], &["--config", printed.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(again.matches("[[cells]]").count(), 2, "{again}");
    let settings = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        settings(&again),
        settings(&out),
        "reads back as the same configuration"
    );
    std::fs::write(&file, cells.replace("tenants", "default = true\ntenants")).unwrap();
    let (code, _, err) = check_config(&[], &["--config", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("cells.default"), "{err}");
}

/// Passwords inside Redis URLs are secrets too: `check-config` never prints them.
#[test]
fn check_config_redacts_passwords_in_redis_urls() {
    let (code, out, err) = check_config(
        &[
            ("SWITCHYARD_REDIS__MODE", "sentinel"),
            ("SWITCHYARD_REDIS__SENTINEL_MASTER", "mymaster"),
            (
                "SWITCHYARD_REDIS__URLS",
                r#"["redis://:s3cret-pw@sentinel-0:26379","redis://sentinel-1:26379"]"#,
            ),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("s3cret-pw"), "{out}");
    assert!(
        out.contains("redis://:<redacted>@sentinel-0:26379"),
        "{out}"
    );
    assert!(out.contains("redis://sentinel-1:26379"), "{out}");
    // nor when the URL is refused: a `#` or `/` in a password fails the URL's parse, and
    // the error named the whole URL (topology audit)
    for url in [
        "redis://:s3cret#pw@redis-0:6379",
        "http://:s3cret-pw@redis-0:6379",
    ] {
        let list = format!(r#"["{url}"]"#);
        let (code, out, err) = check_config(
            &[
                ("SWITCHYARD_REDIS__MODE", "cluster"),
                ("SWITCHYARD_REDIS__URLS", list.as_str()),
            ],
            &[],
        );
        assert_ne!(code, 0, "{url}: {out}");
        assert!(err.contains("redis.urls"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}

#[test]
fn check_config_rejects_an_invalid_value_naming_the_field() {
    let (code, _, err) = check_config(&[("SWITCHYARD_JOBS__MAX_ATTEMPTS", "0")], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("jobs.max_attempts"), "{err}");
    let (code, _, err) = check_config(&[("SWITCHYARD_REDIS__URL", "http://x:6379")], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("redis.url"), "{err}");
}

#[test]
fn a_toml_file_given_by_flag_or_variable_is_read_and_typos_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[session]\npause_ms = 4321\n").unwrap();
    let (code, out, _) = check_config(&[], &["--config", good.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("pause_ms = 4321"), "{out}");
    let (code, out, _) = check_config(&[("SWITCHYARD_CONFIG", good.to_str().unwrap())], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("pause_ms = 4321"), "{out}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[session]\npause_msec = 1\n").unwrap();
    let (code, _, err) = check_config(&[], &["--config", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("pause_msec"), "{err}");
}

#[test]
fn secure_by_default_a_start_without_any_key_is_refused() {
    let (code, _, err) = run(&[], &["check-config"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("auth.mode"), "{err}");
    let (code, _, err) = run(&[], &["serve"]);
    assert_eq!(code, 2, "serve refuses to start open by accident: {err}");
    let (code, out, _) = run(&[("SWITCHYARD_AUTH__MODE", "open")], &["check-config"]);
    assert_eq!(code, 0);
    assert!(out.contains("mode = \"open\""), "{out}");
}

/// A key file that cannot be used stops `check-config` as it stops `serve`, with exit code 2
/// naming it: a configuration the check passes is one `serve` starts with.
#[test]
fn an_unusable_key_file_fails_check_config_as_it_fails_serve() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_key = dir.path().join("not-a-key.pem");
    std::fs::write(&not_a_key, "hello\n").unwrap();
    let not_a_key = format!("[\"{}\"]", not_a_key.display());
    let cases = [
        (
            "SWITCHYARD_AUTH__JWKS_FILE",
            "/nonexistent/jwks.json",
            "auth.jwks_file",
        ),
        (
            "SWITCHYARD_AUTH__PUBLIC_KEY_FILES",
            "[\"/nonexistent/k.pem\"]",
            "auth.public_key_files",
        ),
        (
            "SWITCHYARD_AUTH__PUBLIC_KEY_FILES",
            not_a_key.as_str(),
            "auth.public_key_files",
        ),
    ];
    for (var, value, field) in cases {
        for command in ["check-config", "serve"] {
            let (code, _, err) = run(&[(var, value)], &[command]);
            assert_eq!(code, 2, "{command} with {var}={value}: {err}");
            assert!(err.contains(field), "{command}: {err}");
        }
    }
}

/// A liveness a killed instance's nodes cannot come back within is valid, but warned of;
/// the defaults give no warning.
#[test]
fn check_config_warns_of_a_liveness_nodes_cannot_come_back_within() {
    let (code, out, err) = check_config(
        &[
            ("SWITCHYARD_NODE__HEARTBEAT_INTERVAL_MS", "1000"),
            ("SWITCHYARD_INSTANCE__PRESENCE_TTL_MS", "5000"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("# warning: node.liveness_ms (3000) is not above"),
        "{out}"
    );
    let (code, out, err) = check_config(&[], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("# warning"), "{out}");
}

/// Audit finding: a large result's body expired before its log entry when the cursor
/// could wait on an earlier job longer than the body's TTL: warned of.
#[test]
fn check_config_warns_of_result_bodies_that_may_expire_before_their_log_entry() {
    let (code, out, err) = check_config(
        &[
            ("SWITCHYARD_SESSION__IDLE_TTL_MS", "20000"),
            ("SWITCHYARD_SESSION__RESULT_RETENTION_MS", "10000"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("# warning: session.idle_ttl_ms + 2 × session.result_retention_ms (40000)"),
        "{out}"
    );
}

/// Audit note: public keys are usually an identity provider's, and without `auth.audience`
/// a token it issued to another service passes wherever its scope names match: warned of.
#[test]
fn check_config_warns_of_provider_keys_without_an_audience() {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/jwks.json");
    let (code, out, err) = check_config(&[("SWITCHYARD_AUTH__JWKS_FILE", keys)], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("# warning: auth.audience is unset"), "{out}");
    let (code, out, err) = check_config(
        &[
            ("SWITCHYARD_AUTH__JWKS_FILE", keys),
            ("SWITCHYARD_AUTH__AUDIENCE", "switchyard"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("# warning"), "{out}");
}

/// Topology audit: in cluster mode, `WAIT` holds every call to its primary (one cluster
/// connection each), and a single seed given by IP leaves later connections nowhere to
/// start once that node is down. Both valid, both warned of.
#[test]
fn check_config_warns_of_cluster_settings_that_stall_or_strand_connections() {
    let (code, out, err) = check_config(
        &[
            ("SWITCHYARD_REDIS__MODE", "cluster"),
            ("SWITCHYARD_REDIS__URLS", r#"["redis://10.0.0.5:6379"]"#),
            ("SWITCHYARD_REDIS__WAIT_REPLICAS", "1"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("# warning: redis.wait_replicas (1) in cluster mode"),
        "{out}"
    );
    assert!(
        out.contains("# warning: redis.urls names one cluster node by its IP"),
        "{out}"
    );
    for w in out.lines().filter(|l| l.starts_with("# warning: redis.")) {
        assert!(!w.contains("  "), "a gap in the sentence: {w}");
    }
    let (code, out, err) = check_config(
        &[
            ("SWITCHYARD_REDIS__MODE", "cluster"),
            (
                "SWITCHYARD_REDIS__URLS",
                r#"["redis://redis-cluster:6379"]"#,
            ),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("# warning"), "{out}");
}

#[test]
fn check_config_never_prints_a_secret() {
    let (code, out, _) = check_config(&[], &[]);
    assert_eq!(code, 0);
    assert!(!out.contains(SECRET), "{out}");
    assert!(out.contains("<redacted>"), "{out}");
}

#[test]
fn token_mints_a_jwt_with_the_asked_claims() {
    let secrets = format!("[\"{SECRET}\"]");
    let env = [("SWITCHYARD_AUTH__HS256_SECRETS", secrets.as_str())];
    let (code, out, err) = run(
        &env,
        &[
            "token", "--scope", "node", "--sub", "node-1", "--tenant", "acme", "--ttl", "2h",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_required_spec_claims(&["exp"]);
    let t = jsonwebtoken::decode::<serde_json::Value>(
        out.trim(),
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &v,
    )
    .expect("a valid HS256 token");
    assert_eq!(t.claims["scope"], serde_json::json!(["node"]));
    assert_eq!(t.claims["sub"], "node-1");
    assert_eq!(t.claims["tenant"], "acme");
    let ttl = t.claims["exp"].as_u64().unwrap() - t.claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 7200);
    let (code, _, err) = run(&env, &["token", "--scope", "root"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown scope"), "{err}");
    let (code, _, err) = run(&[], &["token", "--scope", "node"]);
    assert_ne!(code, 0, "no secret, no token: {err}");
}

/// OTLP headers often carry an exporter's API key: their names are shown, not their values;
/// a password in the endpoint's URL is redacted too.
#[test]
fn check_config_shows_the_otlp_header_names_and_never_their_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchyard.toml");
    std::fs::write(
        &file,
        "[telemetry.otlp_headers]\nx-api-key = \"topsecret-otlp\"\nx-scope-orgid = \"speech\"\n",
    )
    .unwrap();
    let (code, out, err) = check_config(
        &[(
            "SWITCHYARD_TELEMETRY__OTLP_ENDPOINT",
            "http://otel:topsecret-url@collector.example:4318",
        )],
        &["--config", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("otlp_endpoint = \"http://otel:<redacted>@collector.example:4318\""),
        "{out}"
    );
    assert!(!out.contains("topsecret-url"), "{out}");
    assert!(out.contains("x-api-key = \"<redacted>\""), "{out}");
    assert!(out.contains("x-scope-orgid = \"<redacted>\""), "{out}");
    assert!(!out.contains("topsecret-otlp"), "{out}");
}

#[test]
fn check_config_shows_the_redis_topology_and_never_the_redis_password() {
    let (code, out, err) = check_config(
        &[
            ("SWITCHYARD_REDIS__MODE", "sentinel"),
            ("SWITCHYARD_REDIS__URLS", r#"["redis://10.0.0.1:26379"]"#),
            ("SWITCHYARD_REDIS__SENTINEL_MASTER", "switchyard"),
            ("SWITCHYARD_REDIS__PASSWORD", "topsecret-redis"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("mode = \"sentinel\""), "{out}");
    assert!(out.contains("sentinel_master = \"switchyard\""), "{out}");
    assert!(out.contains("password = \"<redacted>\""), "{out}");
    assert!(!out.contains("topsecret-redis"), "{out}");
}

/// What `serve` refused only when it started (or never, and broke at run time) is refused
/// by `check-config` too, exit 2 naming the field (configuration audit).
#[test]
fn check_config_refuses_what_would_break_the_instance() {
    for (var, value, field) in [
        (
            "SWITCHYARD_SESSION__IDLE_TTL_MS",
            "18446744073709551615",
            "session.idle_ttl_ms",
        ),
        ("SWITCHYARD_REDIS__URL", "redis://redis:6379/x", "redis.url"),
        ("SWITCHYARD_LOG__LEVEL", "warning", "log.level"),
        (
            "SWITCHYARD_WS__HELLO_TIMEOUT_MS",
            "0",
            "ws.hello_timeout_ms",
        ),
    ] {
        let (code, _, err) = check_config(&[(var, value)], &[]);
        assert_eq!(code, 2, "{var}={value}: {err}");
        assert!(err.contains(field), "{var}={value}: {err}");
    }
}
