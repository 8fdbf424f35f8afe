//! A real `redis-server` child process on a free loopback port, in its own temp dir — or,
//! with `SWITCHYARD_TEST_TOPOLOGY=sentinel|cluster`, a primary + replica watched by three
//! sentinels, or a 3-primary 3-replica Redis Cluster, so the same scenario suites run on
//! every topology (`make test` runs the node, job and multi-instance suites on all three).
//! Then [`RedisServer::url`] is the node holding the cell (for the scenario's direct
//! reads) and [`super::test_config`] points instances at the sentinels or cluster seeds.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use switchyard::config::{CellSpec, RedisConfig, RedisMode};

use super::topology::{Cluster, MASTER, SentinelSet};

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The sentinel set or cluster behind `port` (topology mode).
    topo: Option<Topo>,
}

enum Topo {
    Sentinel(#[allow(dead_code)] SentinelSet),
    Cluster(#[allow(dead_code)] Cluster),
}

/// The topology the scenario suites run on (`SWITCHYARD_TEST_TOPOLOGY`, default `single`).
pub fn topology() -> String {
    std::env::var("SWITCHYARD_TEST_TOPOLOGY").unwrap_or_else(|_| "single".into())
}

/// A scenario that stops or restarts Redis itself runs on a single server only: returns
/// true (skip) in topology mode, saying so.
pub fn single_only(what: &str) -> bool {
    let t = topology();
    if t != "single" {
        eprintln!(
            "skipped on {t}: {what} (single redis-server only; failover is covered by topologies.rs and chaos.rs)"
        );
        return true;
    }
    false
}

/// What an instance needs to use the topology behind a URL: its `[redis]`, and on a
/// cluster three `[[cells]]` (the scenario's `main`, the default, and two more on the other
/// primaries, idle, so every scenario runs with the per-cell loops of three cells).
type Topology = (RedisConfig, Vec<CellSpec>);

/// The [`Topology`] of each topology-mode URL handed out by [`RedisServer::url`].
fn registry() -> &'static Mutex<HashMap<String, Topology>> {
    static R: OnceLock<Mutex<HashMap<String, Topology>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The [`Topology`] behind `url` (None: a plain redis-server).
pub fn redis_config_for(url: &str) -> Option<Topology> {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(url)
        .cloned()
}

/// A free loopback port (for child processes and helpers the tests start), never handed
/// out twice in this process. From 10000-14999: below the kernel's ephemeral range
/// (32768-60999 here), where `bind(0)` would pick one and an outgoing connection could take
/// it before the child binds it, and below `cluster_port`'s 15000-31999 (its nodes and their
/// buses). `bind(0)` once gave two parallel tests the same port: the second redis-server
/// could not bind it, and the second test talked to the first one's server.
pub fn free_port() -> u16 {
    unique_port(10_000..15_000, |_| true)
}

/// A port of `range` that is free on 127.0.0.1, for which `also` holds, and that this
/// process has not handed out before.
pub fn unique_port(range: std::ops::Range<u16>, also: impl Fn(u16) -> bool) -> u16 {
    use rand::RngExt;
    use std::collections::HashSet;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let p = rand::rng().random_range(range.clone());
        if !given.contains(&p) && free(p) && also(p) {
            given.insert(p);
            return p;
        }
    }
    panic!("no free port in {range:?}");
}

impl RedisServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = Self {
            port: free_port(),
            dir,
            child: None,
            topo: None,
        };
        match topology().as_str() {
            "sentinel" => {
                let set = SentinelSet::start_steady(1, &["--repl-diskless-sync-delay", "0"]).await;
                s.port = set.primary.port;
                s.register(RedisMode::Sentinel, set.sentinel_urls(), Vec::new());
                s.topo = Some(Topo::Sentinel(set));
            }
            "cluster" => {
                let cluster = Cluster::start_steady().await;
                let slot = switchyard::config::cell::slot("{switchyard:main}");
                s.port = cluster.primary_of(slot).await.expect("primary of the cell");
                let cells = three_cells(&cluster.slot_map().await, slot);
                s.register(RedisMode::Cluster, cluster.urls(), cells);
                s.topo = Some(Topo::Cluster(cluster));
            }
            _ => s.spawn().await,
        }
        s
    }

    fn register(&self, mode: RedisMode, urls: Vec<String>, cells: Vec<CellSpec>) {
        let cfg = RedisConfig {
            mode,
            urls,
            sentinel_master: MASTER.into(),
            ..RedisConfig::default()
        };
        registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.url(), (cfg, cells));
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make test installs it)");
        let pid = child.id();
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(mut c) = self.try_client().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                // the server that answers is the one this test started, not another's
                let info: String = redis::cmd("INFO")
                    .arg("server")
                    .query_async(&mut c)
                    .await
                    .expect("INFO server");
                let answering = info
                    .lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .and_then(|p| p.trim().parse::<u32>().ok());
                assert_eq!(
                    answering,
                    Some(pid),
                    "port {} is served by another redis-server than this test's",
                    self.port
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn try_client(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let info = redis::IntoConnectionInfo::into_connection_info(self.url().as_str())?;
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let client = redis::Client::open(info.set_redis_settings(settings).set_tcp_settings(tcp))?;
        client
            .get_multiplexed_async_connection_with_config(&super::assertion_connection())
            .await
    }

    /// A connection for assertions.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        self.try_client().await.expect("connect to test redis")
    }

    /// Kill the server (state is lost: no persistence). Single server only.
    pub fn stop(&mut self) {
        assert!(self.topo.is_none(), "stop() needs a single redis-server");
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

/// `main` (the default cell, whose slot is `main_slot`) and one cell on each other primary.
fn three_cells(
    map: &std::collections::BTreeMap<u16, Vec<(u16, u16)>>,
    main_slot: u16,
) -> Vec<CellSpec> {
    let others: Vec<Vec<(u16, u16)>> = map
        .values()
        .filter(|r| !r.iter().any(|(lo, hi)| (*lo..=*hi).contains(&main_slot)))
        .cloned()
        .collect();
    let mut cells = vec![CellSpec {
        name: "main".into(),
        tenants: Vec::new(),
        default: true,
    }];
    let names = switchyard::config::cell::spread_names("switchyard", "idle", others.len(), &others);
    cells.extend(names.into_iter().map(|name| CellSpec {
        name,
        tenants: Vec::new(),
        default: false,
    }));
    cells
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
