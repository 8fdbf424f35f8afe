//! The binary's command line: `switchyard check-config` prints the effective configuration
//! and exits non-zero naming the bad field; environment and TOML layering as an operator
//! uses them.

use std::process::Command;

fn check_config(envs: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.arg("check-config")
        .args(args)
        .env_remove("SWITCHYARD_CONFIG");
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

#[test]
fn check_config_rejects_an_invalid_value_naming_the_field() {
    let (code, _, err) = check_config(&[("SWITCHYARD_JOBS__MAX_ATTEMPTS", "0")], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("jobs.max_attempts"), "{err}");
    let (code, _, err) = check_config(&[("SWITCHYARD_REDIS__URL", "rediss://x:6379")], &[]);
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
