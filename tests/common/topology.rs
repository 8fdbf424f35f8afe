//! Redis topologies for the tests, from Debian's redis-server and redis-sentinel on free
//! loopback ports in temp dirs: a primary + replica watched by three sentinels, and a
//! 3-primary 3-replica Redis Cluster. Every process is killed when its owner drops. A
//! process may serve TLS only ([`Tls`]) and require a password; [`Proc::url`] and
//! [`Proc::client`] then reach it over TLS with the CA and the password.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::free_port;

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
             sentinel down-after-milliseconds {master} 1000\n\
             sentinel failover-timeout {master} 4000\n\
             sentinel parallel-syncs {master} 1\n",
            dir = dir.path().display()
        );
        if let Some(p) = opts.password {
            text += &format!("requirepass {p}\n");
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

/// A connection to `url` without CLIENT SETINFO (Redis 7.0).
pub async fn connect(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    connect_with_ca(url, None).await
}

/// The same; a `rediss://` `url` verified against the PEM file `ca` when given.
pub async fn connect_with_ca(
    url: &str,
    ca: Option<&str>,
) -> redis::RedisResult<MultiplexedConnection> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    let info = info.set_redis_settings(settings);
    let client = match ca {
        Some(ca) => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(ca)?),
            };
            redis::Client::build_with_tls(info, certs)?
        }
        None => redis::Client::open(info)?,
    };
    client.get_multiplexed_async_connection().await
}

/// A port free on loopback whose cluster bus port (+10000) is free too, both below the
/// ephemeral range (so neither collides with client sockets nor exceeds 65535). A port is
/// handed out once per test process: two clusters started at the same moment by parallel
/// tests could otherwise both find it free before either server bound it (seen once: the
/// second `--cluster create` met a node of the other cluster, "not empty").
fn cluster_port() -> u16 {
    use rand::RngExt;
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let p = rand::rng().random_range(15_000..22_000);
        if !given.contains(&p) && free(p) && free(p + 10_000) {
            given.insert(p);
            return p;
        }
    }
    panic!("no free cluster port pair");
}

/// Poll `f` every 20 ms until it is true; panics after `timeout`.
pub async fn until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Primary + replicas, three sentinels monitoring them as `sy`.
pub struct SentinelSet {
    pub primary: Proc,
    pub replicas: Vec<Proc>,
    pub sentinels: Vec<Proc>,
}

pub const MASTER: &str = "sy";

/// `INFO replication` of a node says its link to the primary is up.
pub async fn link_up(c: &mut MultiplexedConnection) -> bool {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(c)
        .await
        .unwrap_or_default();
    info.contains("master_link_status:up")
}

impl SentinelSet {
    /// `replicas` replicas; `extra` applies to every data node (e.g. `--appendonly yes`).
    /// Waits until the sentinels know each other, as a failover needs.
    pub async fn start(replicas: usize, extra: &[&str]) -> Self {
        let set = Self::start_unelected(replicas, extra).await;
        set.wait_for_quorum(replicas).await;
        set
    }

    /// The same, without waiting for the sentinels to discover each other (seconds of
    /// hello messages): enough for scenarios that never fail over, where instances only
    /// ask a sentinel for the primary.
    pub async fn start_unelected(replicas: usize, extra: &[&str]) -> Self {
        let primary = Proc::server(extra);
        primary.wait_up().await;
        let p = primary.port.to_string();
        let mut args = vec!["--replicaof", "127.0.0.1", &p];
        args.extend_from_slice(extra);
        let replicas: Vec<Proc> = (0..replicas).map(|_| Proc::server(&args)).collect();
        for r in &replicas {
            r.wait_up().await;
            let c = r.client().await;
            until(Duration::from_secs(10), "replica link up", || {
                let mut c = c.clone();
                async move { link_up(&mut c).await }
            })
            .await;
        }
        let sentinels: Vec<Proc> = (0..3)
            .map(|_| Proc::sentinel(MASTER, primary.port))
            .collect();
        for s in &sentinels {
            s.wait_up().await;
        }
        Self {
            primary,
            replicas,
            sentinels,
        }
    }

    /// Every sentinel knows the `n` replicas and both other sentinels (a failover needs a
    /// quorum and a leader election).
    async fn wait_for_quorum(&self, n: usize) {
        for s in &self.sentinels {
            let c = s.client().await;
            until(
                Duration::from_secs(15),
                "sentinels discover each other",
                || {
                    let mut c = c.clone();
                    async move {
                        let peers: Vec<redis::Value> = redis::cmd("SENTINEL")
                            .arg("sentinels")
                            .arg(MASTER)
                            .query_async(&mut c)
                            .await
                            .unwrap_or_default();
                        let known: Vec<redis::Value> = redis::cmd("SENTINEL")
                            .arg("replicas")
                            .arg(MASTER)
                            .query_async(&mut c)
                            .await
                            .unwrap_or_default();
                        peers.len() == 2 && known.len() == n
                    }
                },
            )
            .await;
        }
    }

    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(Proc::url).collect()
    }

    /// The primary's address as the first sentinel that answers reports it.
    pub async fn primary_addr(&self) -> Option<String> {
        for s in &self.sentinels {
            if let Ok(mut c) = connect(&s.url()).await
                && let Ok(Some((h, p))) = redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(MASTER)
                    .query_async::<Option<(String, u16)>>(&mut c)
                    .await
            {
                return Some(format!("{h}:{p}"));
            }
        }
        None
    }
}

/// A Redis Cluster of three primaries with one replica each (node timeout 1 s).
pub struct Cluster {
    pub nodes: Vec<Proc>,
}

impl Cluster {
    pub async fn start() -> Self {
        let nodes: Vec<Proc> = (0..6)
            .map(|_| {
                Proc::server(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    // A replica fails over however long ago it heard from its primary (a
                    // freshly created cluster has not pinged yet).
                    "--cluster-replica-validity-factor",
                    "0",
                    "--repl-diskless-sync-delay",
                    "0",
                    "--appendonly",
                    "no",
                ])
            })
            .collect();
        for n in &nodes {
            n.wait_up().await;
        }
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(Proc::addr))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = Self { nodes };
        for n in &c.nodes {
            let conn = n.client().await;
            until(Duration::from_secs(15), "cluster_state:ok", || {
                let mut conn = conn.clone();
                async move {
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    info.contains("cluster_state:ok")
                }
            })
            .await;
        }
        // Every replica holds its primary's data (initial sync done) before the tests
        // write: a replica promoted mid-sync would start empty.
        for n in &c.nodes {
            let conn = n.client().await;
            let role: Vec<redis::Value> = redis::cmd("ROLE")
                .query_async(&mut conn.clone())
                .await
                .expect("role");
            if redis::from_redis_value_ref::<String>(&role[0])
                .ok()
                .as_deref()
                == Some("slave")
            {
                until(Duration::from_secs(15), "replica in sync", || {
                    let mut conn = conn.clone();
                    async move { link_up(&mut conn).await }
                })
                .await;
            }
        }
        c
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().take(3).map(Proc::url).collect()
    }

    /// Slot of `key` (CLUSTER KEYSLOT).
    pub async fn slot(&self, key: &str) -> u16 {
        let mut c = self.nodes[0].client().await;
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut c)
            .await
            .expect("keyslot")
    }

    /// Port of the primary serving `slot`, as any live node's CLUSTER SHARDS reports it.
    pub async fn primary_of(&self, slot: u16) -> Option<u16> {
        for n in &self.nodes {
            let Ok(mut c) = connect(&n.url()).await else {
                continue;
            };
            let Ok(slots) = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Vec<Vec<redis::Value>>>(&mut c)
                .await
            else {
                continue;
            };
            for range in slots {
                let lo: u16 = redis::from_redis_value_ref(&range[0]).ok()?;
                let hi: u16 = redis::from_redis_value_ref(&range[1]).ok()?;
                if (lo..=hi).contains(&slot)
                    && let redis::Value::Array(m) = &range[2]
                {
                    return redis::from_redis_value_ref::<u16>(&m[1]).ok();
                }
            }
        }
        None
    }

    /// Each primary's slot ranges, by primary port (from CLUSTER SLOTS).
    pub async fn slot_map(&self) -> std::collections::BTreeMap<u16, Vec<(u16, u16)>> {
        let mut c = self.nodes[0].client().await;
        let slots: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut c)
            .await
            .expect("cluster slots");
        let mut map = std::collections::BTreeMap::<u16, Vec<(u16, u16)>>::new();
        for range in slots {
            let lo: u16 = redis::from_redis_value_ref(&range[0]).expect("lo");
            let hi: u16 = redis::from_redis_value_ref(&range[1]).expect("hi");
            let redis::Value::Array(m) = &range[2] else {
                panic!("primary entry")
            };
            let port: u16 = redis::from_redis_value_ref(&m[1]).expect("port");
            map.entry(port).or_default().push((lo, hi));
        }
        map
    }

    /// The node process listening on `port`.
    pub fn node(&mut self, port: u16) -> &mut Proc {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("node of port")
    }
}
