//! Managed-Redis style access: TLS (`rediss://` with a CA file) and an ACL user, against
//! Debian's redis-server started with a certificate made here by `openssl` (a throw-away CA
//! and a server certificate for 127.0.0.1). A node registers and a job flows over it; a wrong
//! password or a missing CA keeps `/readyz` at 503 with the reason. In sentinel mode the
//! sentinels themselves serve TLS only, and are asked over TLS with the same CA.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::actors::*;
use common::topology::{MASTER, Proc, SentinelOpts, Tls, connect_with_ca};
use common::*;
use switchyard::config::{Config, RedisMode};

const T: Duration = Duration::from_secs(10);

/// A CA and a server certificate for 127.0.0.1 in `dir`.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl must be installed")
            .status
            .success();
        assert!(ok, "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=switchyard-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
}

fn cfg(port: u16, dir: &Path, password: &str, ca: bool) -> Config {
    let mut c = test_config(&format!("rediss://127.0.0.1:{port}"));
    c.redis.username = Some("switchyard".into());
    c.redis.password = Some(password.into());
    c.redis.tls_ca_file = ca.then(|| dir.join("ca.crt").display().to_string());
    c
}

async fn readyz(inst: &switchyard::server::Running) -> (u16, serde_json::Value) {
    get_json(&http_url(inst, "/readyz")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_file_and_an_acl_user() {
    let certs = tempfile::tempdir().expect("temp dir");
    make_certs(certs.path());
    let port = free_port();
    let file = |f: &str| certs.path().join(f).display().to_string();
    let (crt, key, ca) = (file("server.crt"), file("server.key"), file("ca.crt"));
    // The default user is off: only `switchyard` with its password gets in.
    let acl = file("users.acl");
    std::fs::write(
        &acl,
        "user default off\nuser switchyard on >s3cret-pass ~* &* +@all\n",
    )
    .expect("acl file");
    let _redis = Proc::server(&[
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &crt,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
        "--aclfile",
        &acl,
    ]);
    let inst = start_with(cfg(port, certs.path(), "s3cret-pass", true)).await;
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, body) = readyz(&inst).await;
        if status == 200 {
            break;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(readyz(&inst).await.0, 200, "ready over TLS: {last}");
    let node = AutoNode::start(
        &ws_url(&inst, "/ws/node"),
        fixture("node_register_first"),
        Duration::from_millis(5),
    )
    .await;
    let (mut s, sid) = open_session(
        &ws_url(&inst, "/ws/session"),
        fixture("session_init_one_way"),
    )
    .await;
    for i in 0..3 {
        s.send(&utterance(&sid, i)).await;
    }
    let got = terminals(&mut s, 3, T).await;
    assert!(
        got.iter().all(|v| v["type"] == "translation_result"),
        "{got:?}"
    );
    node.stop();

    // A wrong password, and TLS without the CA: not ready (asked for longer than the good
    // instance may take to be ready), and the reason names the cause.
    for (password, with_ca, cause) in [
        ("wrong", true, "authentication"),
        ("s3cret-pass", false, "certificate"),
    ] {
        let bad = start_with(cfg(port, certs.path(), password, with_ca)).await;
        let until = std::time::Instant::now() + Duration::from_millis(1500);
        let mut body = serde_json::Value::Null;
        while std::time::Instant::now() < until {
            let (status, b) = readyz(&bad).await;
            assert_eq!(status, 503, "{password} ca={with_ca}: {b}");
            body = b;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let reason = body["reason"].as_str().unwrap_or_default().to_lowercase();
        assert!(
            reason.contains(cause),
            "password {password:?}, CA file {with_ca}: the reason names the {cause}: {body}"
        );
        eprintln!("password {password:?}, CA file {with_ca}: /readyz 503 {body}");
    }
    let url = format!("rediss://switchyard:s3cret-pass@127.0.0.1:{port}");
    let mut c = connect_with_ca(&url, Some(&ca))
        .await
        .expect("TLS connection as the ACL user");
    common::invariants::check(&mut c).await;
}

/// A TLS-only primary with a password, watched by three TLS-only sentinels with a password
/// of their own (`tls-replication yes`: they talk TLS to the primary, too). The instance
/// names the sentinels with `rediss://:<sentinel password>@` URLs and has the primary's
/// password as `redis.password`: each side gets its own credentials. With `tls_ca_file` the
/// sentinels are asked over TLS with that CA, the instance becomes ready on the primary
/// they name and serves a job; without it the sentinels' certificate is not trusted and
/// the instance stays not ready, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_behind_tls_are_asked_with_the_ca_file() {
    const DATA_PASS: &str = "data-pass";
    const SENTINEL_PASS: &str = "sentinel-pass";
    let certs = tempfile::tempdir().expect("temp dir");
    make_certs(certs.path());
    let file = |f: &str| certs.path().join(f).display().to_string();
    let tls = Tls {
        cert: file("server.crt"),
        key: file("server.key"),
        ca: file("ca.crt"),
    };
    let primary = Proc::server_tls(&tls, Some(DATA_PASS), &[]);
    primary.wait_up().await;
    let opts = SentinelOpts {
        tls: Some(&tls),
        password: Some(SENTINEL_PASS),
        primary_password: Some(DATA_PASS),
        ..SentinelOpts::default()
    };
    let sentinels: Vec<Proc> = (0..3)
        .map(|_| Proc::sentinel_with(MASTER, primary.port, &opts))
        .collect();
    for s in &sentinels {
        s.wait_up().await;
        assert!(s.url().starts_with("rediss://"), "{}", s.url());
    }
    let cfg = |ca: bool| {
        let mut c = test_config("redis://unused");
        c.redis.mode = RedisMode::Sentinel;
        c.redis.urls = sentinels.iter().map(Proc::url).collect();
        c.redis.sentinel_master = MASTER.into();
        c.redis.password = Some(DATA_PASS.into());
        c.redis.tls_ca_file = ca.then(|| tls.ca.clone());
        c
    };

    let started = std::time::Instant::now();
    let inst = start_with(cfg(true)).await;
    let mut last = serde_json::Value::Null;
    while started.elapsed() < Duration::from_secs(5) {
        let (status, body) = readyz(&inst).await;
        last = body;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["ready"], true, "ready through TLS sentinels: {last}");
    let primary_addr = format!("127.0.0.1:{}", primary.port);
    assert_eq!(last["redis"], primary_addr.as_str(), "{last}");
    eprintln!(
        "TLS sentinels: ready on {} after {:?}",
        last["redis"],
        started.elapsed()
    );
    let (mut n, nid) = node_on(&inst, None).await;
    let (mut s, sid) = session_on(&inst).await;
    s.send(&utterance(&sid, 0)).await;
    let a = assign(&mut n).await;
    n.send(&answer(&a, &nid, "T0")).await;
    let got = terminals(&mut s, 1, T).await;
    assert_eq!(got[0]["type"], "translation_result", "{got:?}");
    assert_eq!(got[0]["utterance_index"], 0, "{got:?}");
    let mut c = connect_with_ca(&primary.url(), Some(&tls.ca))
        .await
        .expect("TLS connection to the primary");
    common::invariants::check(&mut c).await;

    // Without the CA the sentinels' certificate is not trusted: never ready, and the reason
    // names the sentinel that could not be asked.
    let bad = start_with(cfg(false)).await;
    // Asked for longer than the instance with the CA took to be ready.
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    let mut last = serde_json::Value::Null;
    while std::time::Instant::now() < until {
        let (status, body) = readyz(&bad).await;
        assert_eq!(status, 503, "ready without the CA file: {body}");
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reason = last["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("sentinel 127.0.0.1:") && reason.contains("certificate"),
        "the reason names a sentinel and its certificate: {last}"
    );
    eprintln!("TLS sentinels without the CA file: /readyz 503 {last}");
}
