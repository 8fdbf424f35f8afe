//! One redis-server or redis-sentinel child process ([`Proc`]), plain or serving TLS only
//! ([`Tls`]) and behind passwords ([`SentinelOpts`]), and the free port pairs a cluster node
//! needs.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::super::{free_port, unique_port};
use super::connect_with_ca;

/// One redis-server (or sentinel) child process.
pub struct Proc {
    /// The port it serves on (its TLS port when it serves TLS only).
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The redis-server arguments, to start it again (empty for a sentinel).
    args: Vec<String>,
    /// The CA file to trust when it serves TLS only (`rediss://`).
    ca: Option<String>,
    /// The password it requires (`requirepass`), if any.
    password: Option<String>,
}

/// The PEM files of a process that serves TLS only: its certificate and key, and the CA
/// it trusts (for the servers it connects to). Clients need no certificate
/// (`tls-auth-clients no`).
pub struct Tls {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

impl Tls {
    /// The configuration lines (`port 0`, `tls-port` ...); as arguments with `--` prefixed.
    fn lines(&self, port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("port", "0".into()),
            ("tls-port", port.to_string()),
            ("tls-cert-file", self.cert.clone()),
            ("tls-key-file", self.key.clone()),
            ("tls-ca-cert-file", self.ca.clone()),
            ("tls-auth-clients", "no".into()),
            // Replication and Sentinel's links to the data nodes over TLS, too.
            ("tls-replication", "yes".into()),
        ]
    }
}

/// How a sentinel is started (see [`Proc::sentinel_with`]); the default is plain TCP and
/// no passwords, as [`Proc::sentinel`].
#[derive(Default)]
pub struct SentinelOpts<'a> {
    /// Serve TLS only and talk TLS to the primary (`tls-replication yes`).
    pub tls: Option<&'a Tls>,
    /// The sentinel's own `requirepass`.
    pub password: Option<&'a str>,
    /// The primary's password (`sentinel auth-pass`).
    pub primary_password: Option<&'a str>,
    /// The ACL user it authenticates as on the data nodes (`sentinel auth-user`).
    pub primary_user: Option<&'a str>,
    /// `down-after-milliseconds` (None: 1 s, failovers within seconds for the tests that
    /// make them).
    pub down_after_ms: Option<u64>,
}

impl Proc {
    /// `redis-server` on a free port with `args` (plus port, bind, dir, no RDB saves).
    pub fn server(args: &[&str]) -> Self {
        // A cluster node also listens on its port + 10000 (the cluster bus).
        let port = if args.contains(&"--cluster-enabled") {
            cluster_port()
        } else {
            free_port()
        };
        let mut p = Self {
            port,
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            args: args.iter().map(|a| a.to_string()).collect(),
            ca: None,
            password: None,
        };
        p.spawn();
        p
    }

    /// `redis-server` serving TLS only on a free port, requiring `password` if given, with
    /// `args`.
    pub fn server_tls(tls: &Tls, password: Option<&str>, args: &[&str]) -> Self {
        let port = free_port();
        let mut all: Vec<String> = tls
            .lines(port)
            .into_iter()
            .flat_map(|(k, v)| [format!("--{k}"), v])
            .collect();
        if let Some(p) = password {
            all.extend(["--requirepass".into(), p.into()]);
        }
        all.extend(args.iter().map(|a| a.to_string()));
        let mut p = Self {
            port,
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            args: all,
            ca: Some(tls.ca.clone()),
            password: password.map(Into::into),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make test-deps)");
        self.child = Some(child);
    }

    /// Start a killed server again on the same port and directory (its AOF, if any, is
    /// loaded) and wait until it answers.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_up().await;
    }

    /// `redis-sentinel` watching `master` at `primary_port` (quorum 2, down after 1 s).
    pub fn sentinel(master: &str, primary_port: u16) -> Self {
        Self::sentinel_with(master, primary_port, &SentinelOpts::default())
    }

    /// The same, served over TLS only and/or behind passwords as `opts` says.
    pub fn sentinel_with(master: &str, primary_port: u16, opts: &SentinelOpts) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        let mut text = match opts.tls {
            Some(tls) => tls
                .lines(port)
                .into_iter()
                .map(|(k, v)| format!("{k} {v}\n"))
                .collect(),
            None => format!("port {port}\n"),
        };
        text += &format!(
            "bind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {master} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {master} {down_after}\n\
             sentinel failover-timeout {master} 4000\n\
             sentinel parallel-syncs {master} 1\n",
            dir = dir.path().display(),
            down_after = opts.down_after_ms.unwrap_or(1_000),
        );
        if let Some(p) = opts.password {
            text += &format!("requirepass {p}\n");
        }
        if let Some(u) = opts.primary_user {
            text += &format!("sentinel auth-user {master} {u}\n");
        }
        if let Some(p) = opts.primary_password {
            text += &format!("sentinel auth-pass {master} {p}\n");
        }
        std::fs::write(&conf, text).expect("write sentinel.conf");
        let child = Command::new("redis-sentinel")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-sentinel must be installed (make test-deps)");
        Self {
            port,
            child: Some(child),
            dir,
            args: Vec::new(),
            ca: opts.tls.map(|t| t.ca.clone()),
            password: opts.password.map(Into::into),
        }
    }

    /// `redis://127.0.0.1:port`, or `rediss://` when it serves TLS only, with `:password@`
    /// when it requires one.
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        let auth = self
            .password
            .as_ref()
            .map_or_else(String::new, |p| format!(":{p}@"));
        format!("{scheme}://{auth}127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Send `signal` (`STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(c.id().to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -{signal}");
        }
    }

    /// SIGKILL (no shutdown, no final fsync) and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn client(&self) -> MultiplexedConnection {
        connect_with_ca(&self.url(), self.ca.as_deref())
            .await
            .expect("connect")
    }

    /// Wait until the process answers PING.
    pub async fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(mut c) = connect_with_ca(&self.url(), self.ca.as_deref()).await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis on port {} did not start", self.port);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A port free on loopback whose cluster bus port (+10000) is free too, both below the
/// ephemeral range (so neither collides with client sockets nor exceeds 65535). A port is
/// handed out once per test process: two clusters started at the same moment by parallel
/// tests could otherwise both find it free before either server bound it (seen once: the
/// second `--cluster create` met a node of the other cluster, "not empty").
fn cluster_port() -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    unique_port(15_000..22_000, |p| free(p + 10_000))
}
