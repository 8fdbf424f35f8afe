//! Loading and validation of the configuration.

use super::*;

/// The defaults plus the one thing they lack: a verification key.
fn keyed() -> Config {
    let mut c = Config::default();
    c.auth.hs256_secrets = vec!["0123456789abcdef0123456789abcdef".into()];
    c
}

#[test]
fn defaults_are_secure_and_need_only_a_key() {
    let mut c = Config::default();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("auth.mode"), "no key, no open door: {err}");
    c.auth.hs256_secrets = vec!["short".into()];
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("auth.hs256_secrets"), "{err}");
    c.auth.hs256_secrets.clear();
    c.auth.mode = "open".into();
    c.validate().expect("open mode needs no key");
    c.auth.mode = "opne".into();
    assert!(c.validate().unwrap_err().to_string().contains("auth.mode"));
    let c = keyed();
    c.validate().expect("defaults with a key are valid");
    assert_eq!(c.liveness_ms(), 45_000);
    assert_eq!(c.cell_tag(), "{switchyard:main}");
}

#[test]
fn every_section_can_be_set_from_the_environment_and_strays_are_ignored() {
    figment::Jail::expect_with(|jail| {
        let vars = [
            ("SWITCHYARD_LISTEN", "127.0.0.1:6000"),
            ("SWITCHYARD_REDIS__POOL_SIZE", "7"),
            ("SWITCHYARD_CELL__NAME", "eu"),
            ("SWITCHYARD_NODE__HEARTBEAT_INTERVAL_MS", "5000"),
            ("SWITCHYARD_SWEEP__BATCH", "9"),
            ("SWITCHYARD_WS__SEND_QUEUE", "11"),
            ("SWITCHYARD_SESSION__PAUSE_MS", "1234"),
            ("SWITCHYARD_JOBS__MAX_ATTEMPTS", "5"),
            ("SWITCHYARD_INSTANCE__PRESENCE_TTL_MS", "9000"),
            ("SWITCHYARD_INBOX__DEAD_LETTER_AFTER", "3"),
            ("SWITCHYARD_TELEMETRY__SAMPLE_RATIO", "0.5"),
            ("SWITCHYARD_LOG__FORMAT", "json"),
            (
                "SWITCHYARD_AUTH__HS256_SECRETS",
                "[\"new-secret-0123456789abcdef01234567\", \"old-secret-0123456789abcdef01234567\"]",
            ),
            ("SWITCHYARD_ADMIN_LISTEN", "127.0.0.1:6001"),
            // Kubernetes injects these for a Service named "switchyard".
            ("SWITCHYARD_SERVICE_HOST", "10.0.0.1"),
            ("SWITCHYARD_PORT_5010_TCP", "tcp://10.0.0.1:5010"),
        ];
        for (k, v) in vars {
            jail.set_env(k, v);
        }
        let c = Config::load(None).expect("loads");
        assert_eq!(c.listen, "127.0.0.1:6000");
        assert_eq!(c.redis.pool_size, 7);
        assert_eq!(c.cell.name, "eu");
        assert_eq!(c.node.heartbeat_interval_ms, 5000);
        assert_eq!(c.sweep.batch, 9);
        assert_eq!(c.ws.send_queue, 11);
        assert_eq!(c.session.pause_ms, 1234);
        assert_eq!(c.jobs.max_attempts, 5);
        assert_eq!(c.instance.presence_ttl_ms, 9000);
        assert_eq!(c.inbox.dead_letter_after, 3);
        assert_eq!(c.telemetry.sample_ratio, 0.5);
        assert_eq!(c.log.format, "json");
        assert_eq!(c.auth.hs256_secrets.len(), 2, "a list, for rotation");
        assert_eq!(c.admin_listen.as_deref(), Some("127.0.0.1:6001"));
        Ok(())
    });
}

#[test]
fn a_toml_file_sits_between_defaults_and_environment() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "s.toml",
            "[auth]\nmode = \"open\"\n[node]\nheartbeat_interval_ms = 2000\ndefault_capacity = 2\n",
        )?;
        jail.set_env("SWITCHYARD_NODE__DEFAULT_CAPACITY", "3");
        let c = Config::load(Some(std::path::Path::new("s.toml"))).expect("loads");
        assert_eq!(c.node.heartbeat_interval_ms, 2000);
        assert_eq!(c.node.default_capacity, 3, "environment wins over the file");
        assert_eq!(c.liveness_ms(), 6000);
        jail.create_file("bad.toml", "[node]\nheartbeat_intervl_ms = 1\n")?;
        let err = Config::load(Some(std::path::Path::new("bad.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("heartbeat_intervl_ms"), "{err}");
        Ok(())
    });
}

#[test]
fn job_records_must_outlive_every_attempt() {
    let mut c = keyed();
    c.jobs.max_attempts = 3;
    c.jobs.run_timeout_ms = 30_000;
    c.jobs.queue_wait_ms = 5_000;
    c.jobs.record_ttl_ms = 104_999;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("jobs.record_ttl_ms")
    );
    c.jobs.record_ttl_ms = 105_000;
    c.validate().expect("3 x (30 s + 5 s) fits");
    // (audit finding: unbounded, ~2,000 attempts made end_job's one HSET pass Lua's limit
    // of values after it had deleted the record)
    c.jobs.max_attempts = 17;
    c.jobs.record_ttl_ms = 17 * 35_000;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("jobs.max_attempts"), "{e}");
    c.jobs.max_attempts = 16;
    c.jobs.record_ttl_ms = 16 * 35_000;
    c.validate().expect("16 attempts");
    c.jobs.max_attempts = 3;
    c.ws.buffer_bytes = 100;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("ws.buffer_bytes")
    );
}

/// With `on_gap = "resume"`, no wait at all would close a session at every overtaking.
#[test]
fn a_zero_order_gap_needs_the_skip_mode() {
    let mut c = keyed();
    c.session.order_gap_ms = 0;
    c.session.on_gap = crate::config::OnGap::Resume;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("session.order_gap_ms"), "{e}");
    c.session.on_gap = crate::config::OnGap::Skip;
    c.validate().expect("0 with skip");
}

#[test]
fn invalid_value_names_the_field() {
    let mut c = keyed();
    c.node.heartbeat_interval_ms = 0;
    let msg = c.validate().unwrap_err().to_string();
    assert!(msg.contains("node.heartbeat_interval_ms"), "{msg}");
}

#[test]
fn worker_threads_default_to_one_and_are_bounded() {
    let mut c = keyed();
    assert_eq!(c.instance.worker_threads, 1);
    c.instance.worker_threads = 0; // one per CPU
    c.validate().expect("0 is valid");
    c.instance.worker_threads = 1025;
    let msg = c.validate().unwrap_err().to_string();
    assert!(msg.contains("instance.worker_threads"), "{msg}");
}

#[test]
fn limits_come_from_the_environment_and_bad_ones_name_their_field() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("SWITCHYARD_AUTH__MODE", "open");
        jail.set_env("SWITCHYARD_LIMITS__MAX_CONNECTIONS", "5");
        jail.set_env("SWITCHYARD_LIMITS__SESSION_FRAMES_PER_SEC", "2.5");
        let c = Config::load(None).expect("loads");
        assert_eq!(c.limits.max_connections, 5);
        assert_eq!(c.limits.session_frames_per_sec, 2.5);
        Ok(())
    });
    let bad = |f: fn(&mut LimitsConfig), field: &str| {
        let mut c = keyed();
        f(&mut c.limits);
        let e = c.validate().expect_err(field).to_string();
        assert!(e.contains(field), "{e}");
    };
    bad(
        |l| l.session_frames_per_sec = 0.0,
        "limits.session_frames_per_sec",
    );
    bad(
        |l| l.node_frames_per_sec = f64::NAN,
        "limits.node_frames_per_sec",
    );
    bad(|l| l.node_frame_burst = 0, "limits.node_frame_burst");
    bad(|l| l.max_connections = 0, "limits.max_connections");
    bad(
        |l| l.header_read_timeout_ms = 0,
        "limits.header_read_timeout_ms",
    );
    bad(
        |l| l.upgrade_timeout_ms = l.header_read_timeout_ms - 1,
        "limits.upgrade_timeout_ms",
    );
}

#[test]
fn redis_topologies_validate_and_come_from_the_environment() {
    let field = |c: &Config| match c.validate() {
        Err(ConfigError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    };
    let mut c = keyed();
    c.redis.url = "rediss://redis.example:6380".into();
    c.validate().expect("TLS is accepted");
    c.redis.mode = RedisMode::Sentinel;
    c.redis.urls = vec!["redis://10.0.0.1:26379".into()];
    assert_eq!(field(&c), "redis.sentinel_master");
    c.redis.sentinel_master = "sy".into();
    c.validate().expect("sentinel with a master name");
    c.redis.urls.push("rediss://10.0.0.2:26379".into());
    assert_eq!(field(&c), "redis.urls", "mixed schemes");
    c.redis.mode = RedisMode::Single;
    c.redis.urls = vec!["redis://a:1".into(), "redis://b:1".into()];
    assert_eq!(field(&c), "redis.urls", "single takes one address");
    c.redis.mode = RedisMode::Cluster;
    c.redis.urls.clear();
    assert_eq!(field(&c), "redis.urls", "cluster needs seeds");
    c.redis.urls = vec!["redis://a:1".into()];
    c.redis.tls_ca_file = Some("/nonexistent/ca.pem".into());
    assert_eq!(field(&c), "redis.tls_ca_file", "a CA without rediss://");
    c.redis.tls_ca_file = None;
    c.redis.wait_replicas = 1;
    c.redis.wait_timeout_ms = 0;
    assert_eq!(field(&c), "redis.wait_timeout_ms");

    figment::Jail::expect_with(|jail| {
        jail.set_env("SWITCHYARD_AUTH__MODE", "open");
        jail.set_env("SWITCHYARD_REDIS__MODE", "cluster");
        jail.set_env(
            "SWITCHYARD_REDIS__URLS",
            r#"["redis://a:7000","redis://b:7000"]"#,
        );
        jail.set_env("SWITCHYARD_REDIS__USERNAME", "switchyard");
        jail.set_env("SWITCHYARD_REDIS__PASSWORD", "pw");
        jail.set_env("SWITCHYARD_REDIS__WAIT_REPLICAS", "1");
        let c = Config::load(None).expect("valid");
        assert_eq!(c.redis.mode, RedisMode::Cluster);
        assert_eq!(c.redis.seeds().len(), 2);
        assert_eq!(c.redis.username.as_deref(), Some("switchyard"));
        assert_eq!(c.redis.password.as_deref(), Some("pw"));
        assert_eq!(c.redis.wait_replicas, 1);
        jail.set_env("SWITCHYARD_REDIS__MODE", "sentinal");
        assert!(Config::load(None).is_err(), "an unknown mode is refused");
        Ok(())
    });
}

/// Values that passed validation and then broke the instance (configuration audit), each
/// refused naming its field.
#[test]
fn values_that_break_the_instance_at_run_time_are_refused() {
    let bad = |f: &dyn Fn(&mut Config), field: &str| {
        let mut c = keyed();
        f(&mut c);
        match c.validate() {
            Err(ConfigError::Invalid { field: got, reason }) => {
                assert_eq!(got, field, "{reason}")
            }
            other => panic!("{field}: expected invalid, got {other:?}"),
        }
    };
    // "never" as u64::MAX: PEXPIRE refused it, the staged body's TTL wrapped
    bad(&|c| c.session.idle_ttl_ms = u64::MAX, "session.idle_ttl_ms");
    bad(&|c| c.auth.leeway_s = u64::MAX, "auth.leeway_s");
    bad(&|c| c.ws.send_queue = 1 << 61, "ws.send_queue");
    bad(&|c| c.ws.hello_timeout_ms = 0, "ws.hello_timeout_ms");
    // the idle clock is read at each ping: without pings it never ran
    bad(&|c| c.ws.ping_interval_ms = 0, "ws.idle_timeout_ms");
    bad(
        &|c| c.session.max_index_ahead = 10_001,
        "session.max_index_ahead",
    );
    bad(&|c| c.log.level = "warning".into(), "log.level");
    bad(
        &|c| {
            c.listen = "127.0.0.1:5010".into();
            c.admin_listen = Some("0.0.0.0:5010".into());
        },
        "admin_listen",
    );
    bad(
        &|c| c.redis.url = "redis://redis:6379/x".into(),
        "redis.url",
    );
    bad(
        &|c| {
            c.redis.url = "rediss://redis:6380".into();
            c.redis.tls_ca_file = Some(std::env::temp_dir().display().to_string());
        },
        "redis.tls_ca_file",
    );
    // an ack deadline longer than the run deadline outlived the record
    bad(
        &|c| {
            c.jobs.ack_timeout_ms = c.jobs.record_ttl_ms;
            c.jobs.max_attempts = 1;
        },
        "jobs.record_ttl_ms",
    );

    let ok = |f: &dyn Fn(&mut Config)| {
        let mut c = keyed();
        f(&mut c);
        c.validate().expect("valid");
    };
    ok(&|c| c.log.level = "info,switchyard=debug,tower=warn".into());
    ok(&|c| {
        c.ws.ping_interval_ms = 0;
        c.ws.idle_timeout_ms = 0;
    });
    ok(&|c| {
        c.listen = "127.0.0.1:0".into();
        c.admin_listen = Some("127.0.0.1:0".into());
    });
    ok(&|c| {
        c.listen = "127.0.0.1:5010".into();
        c.admin_listen = Some("127.0.0.1:9010".into());
    });
    ok(&|c| c.session.max_index_ahead = 10_000);
}
