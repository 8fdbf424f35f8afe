//! One Switchyard instance: shared state, start-up, and shutdown.
//!
//! [`start`] binds the listener, loads the scripts (if Redis is there; otherwise readiness
//! stays false until it is), spawns the sweeper, the presence beat and the inbox consumer
//! of every cell, and serves HTTP + WebSocket until [`Running::shutdown`] (graceful drain) or
//! [`Running::abort`] (a crash, for tests).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cells::Cells;
use crate::config::Config;
use crate::gateway::{Connections, Kind, Outbound};
use crate::telemetry::metrics::Metrics;

/// One of a cell's background loops, as [`crate::supervise`] starts it.
type Loop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// State shared by every handler and task of an instance.
pub struct App {
    pub cfg: Config,
    /// How credentials are checked (see `auth` for who may do what).
    pub auth: crate::auth::Auth,
    /// Unique per process start (pod names repeat; this never does).
    pub instance_id: String,
    /// When this instance started, ms since the epoch (`/api/v1/instances`).
    pub started_ms: u64,
    /// The cells this instance serves (each with its store); `cells` says which peer
    /// lives where.
    pub cells: Cells,
    pub metrics: Arc<Metrics>,
    /// The scrape-time gauges of `/metrics` and their single-flight refresh.
    pub scrape: crate::http::scrape::Scrape,
    /// `/readyz`'s checks of the cells, single-flight.
    pub ready: crate::http::ready::Readiness,
    /// The console's live streams: their limit and shared snapshots.
    pub console: crate::console::live::Streams,
    /// Admin API requests in flight (`limits.max_admin_requests`; http::admin_auth).
    pub admin_slots: Arc<tokio::sync::Semaphore>,
    pub conns: Connections,
    /// Set on SIGTERM: readiness false, nodes told to drain, new connections refused.
    pub draining: AtomicBool,
    /// Set when a drain has taken this instance's nodes out of their pools, just before
    /// their sockets close: their heartbeats must not put them back.
    nodes_released: AtomicBool,
    /// Set by [`Running::abort`]: connections end without any cleanup, like `kill -9`.
    pub crashed: AtomicBool,
    /// Connection tasks still running (shutdown waits for their cleanup scripts).
    pub live_conns: AtomicUsize,
    /// Live connections per tenant on this instance (`limits.max_connections_per_tenant`).
    pub tenant_conns: Arc<crate::limits::KeyedSlots>,
    /// Trace context of dispatched jobs (observability only).
    pub dispatch_spans: crate::routing::DispatchSpans,
    /// Sessions here whose messages a lost reply took are being read back
    /// (`gateway::recover`, `session.on_gap = "skip"`).
    pub recoveries: crate::gateway::Recoveries,
    conn_seq: AtomicU64,
    /// Flips to true when every connection must close (after the drain grace).
    shutdown: watch::Sender<bool>,
    /// Flips to true when the listener must stop accepting.
    stop_accepting: watch::Sender<bool>,
}

impl App {
    /// Fails naming what cannot be used: a key file of `[auth]`, the Redis URL.
    pub fn new(cfg: Config) -> Result<Arc<Self>, String> {
        let auth = crate::auth::Auth::from_config(&cfg.auth)?;
        let metrics = Arc::new(Metrics::new());
        if auth.is_open() {
            metrics.auth_open.set(1);
        }
        let instance_id = format!("i-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let cells = Cells::new(&cfg, &instance_id, metrics.clone()).map_err(|e| e.to_string())?;
        let scrape = crate::http::scrape::Scrape::new(cfg.telemetry.metrics_refresh_ms);
        let console = crate::console::live::Streams::new(
            cfg.limits.max_console_streams,
            cfg.limits.max_console_streams_per_credential,
        );
        let admin_slots = Arc::new(tokio::sync::Semaphore::new(cfg.limits.max_admin_requests));
        Ok(Arc::new(Self {
            cfg,
            auth,
            instance_id,
            started_ms: crate::protocol::now_ms(),
            cells,
            metrics,
            scrape,
            ready: Default::default(),
            console,
            admin_slots,
            conns: Connections::default(),
            draining: AtomicBool::new(false),
            nodes_released: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
            live_conns: AtomicUsize::new(0),
            tenant_conns: Default::default(),
            dispatch_spans: Default::default(),
            recoveries: Default::default(),
            conn_seq: AtomicU64::new(0),
            shutdown: watch::channel(false).0,
            stop_accepting: watch::channel(false).0,
        }))
    }

    /// Count a connection task until the guard drops; `None` when `limits.max_connections`
    /// are live already (the slot is reserved before the upgrade, so concurrent upgrades
    /// cannot overshoot).
    pub fn conn_guard(self: &Arc<Self>) -> Option<ConnGuard> {
        let before = self.live_conns.fetch_add(1, Ordering::Relaxed);
        let guard = ConnGuard(self.clone());
        (before < self.cfg.limits.max_connections).then_some(guard)
    }

    /// A token no other connection, on any instance, ever had: the connection epoch.
    pub fn next_conn_token(&self) -> String {
        format!(
            "{}/{}",
            self.instance_id,
            self.conn_seq.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// Changes to `true` when connections must close.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn has_crashed(&self) -> bool {
        self.crashed.load(Ordering::Relaxed)
    }

    pub fn nodes_released(&self) -> bool {
        self.nodes_released.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || *self.shutdown.borrow()
    }

    /// The cell's inbox consumer read within the last few block periods.
    pub fn inbox_alive(&self, cell: &crate::cells::Cell) -> bool {
        cell.inbox_alive(3 * self.cfg.inbox.block_ms + self.cfg.redis.timeout_ms)
    }

    /// How a connection of `kind` treats a missing earlier message (only sessions get
    /// ordered messages): `session.order_gap_ms`, `session.on_gap`, and its counter
    /// (`switchyard_deliveries_total{detail="gap_resume"|"gap_skipped"}`).
    pub fn gap(&self, kind: &'static str) -> crate::gateway::socket::Gap {
        use crate::config::OnGap;
        let on_gap = self.cfg.session.on_gap;
        let detail = match on_gap {
            OnGap::Resume => "gap_resume",
            OnGap::Skip => "gap_skipped",
        };
        crate::gateway::socket::Gap {
            wait: Duration::from_millis(self.cfg.session.order_gap_ms),
            on_gap,
            counter: self.metrics.delivery_counter(kind, detail),
            missing: Default::default(),
        }
    }
}

/// Keeps [`App::live_conns`] counted while a connection task runs.
pub struct ConnGuard(Arc<App>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.live_conns.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A started instance.
pub struct Running {
    pub addr: SocketAddr,
    /// The admin API's own address, when `admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Graceful drain: readiness false, `node_control drain` to every local node, no new
    /// WebSocket connections; keep serving `drain_delay_ms`, wait up to `drain_grace_ms`
    /// for queued writes to leave, then close every socket with 1012 so clients reconnect
    /// elsewhere.
    pub async fn shutdown(self) {
        let app = &self.app;
        // Readiness turns false and upgrades are refused at once; HTTP keeps answering
        // (so probes see 503, not a refused connection) until the sockets are closed.
        app.draining.store(true, Ordering::Relaxed);
        let drain =
            r#"{"type":"node_control","command":"drain","reason":"scheduler shutting down"}"#;
        for c in app.conns.all(Kind::Node) {
            let _ = c.tx.try_send(Outbound::Text(drain.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(app.cfg.instance.drain_delay_ms)).await;
        let grace =
            tokio::time::Instant::now() + Duration::from_millis(app.cfg.instance.drain_grace_ms);
        release_nodes(app, grace).await;
        // Assignments made before the release are in the sockets' queues or this inbox
        // (whose consumer still runs): let them reach the nodes before the close.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while tokio::time::Instant::now() < grace {
            let busy = [Kind::Node, Kind::Session]
                .iter()
                .flat_map(|k| app.conns.all(*k))
                .any(|c| c.tx.capacity() < c.tx.max_capacity());
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = app.shutdown.send(true);
        let _ = app.stop_accepting.send(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while app.live_conns.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        // Hand the inboxes over now rather than after the presence TTL.
        for cell in app.cells.iter() {
            if let Err(e) = cell
                .store
                .instance_beat(&app.instance_id, 0, true, None)
                .await
            {
                tracing::warn!(cell = cell.name(), error = %e, "could not give up presence; it expires by itself");
            }
        }
    }

    /// Stop every task at once without any cleanup, as `kill -9` would (for tests): no
    /// script runs for the connections, sockets are dropped without a close frame.
    pub fn abort(self) {
        self.app.crashed.store(true, Ordering::Relaxed);
        let _ = self.app.stop_accepting.send(true);
        let _ = self.app.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Before a drain closes the node sockets: every local node leaves its pools
/// (`disconnected`, keeping its jobs, as for a dropped socket), so no job is assigned to a
/// connection about to close. Results it sends until it has seen the close are still
/// accepted (the connection token is unchanged); it re-registers on another instance.
/// Up to 32 calls at once, and no longer than `by` (the drain's grace): one call per node
/// in turn, with Redis slow or away, took past the pod's termination grace period.
async fn release_nodes(app: &App, by: tokio::time::Instant) {
    use futures_util::StreamExt;
    app.nodes_released.store(true, Ordering::Relaxed);
    let grace = app.cfg.node.disconnect_grace_ms;
    let releases = futures_util::stream::iter(app.conns.entries(Kind::Node))
        .map(|(node_id, c)| async move {
            let out = c
                .cell
                .store
                .node_offline(&node_id, &c.token, grace, "disconnected")
                .await;
            if let Err(e) = out.map(|o| crate::routing::deliver(app, &c.cell, o)) {
                tracing::warn!(%node_id, error = %e, "could not take a node out of its pools before the drain close");
            }
        })
        .buffer_unordered(32)
        .for_each(|()| async {});
    if tokio::time::timeout_at(by, releases).await.is_err() {
        tracing::warn!(
            "not every node left its pools within instance.drain_grace_ms; the others are taken \
             out when their sockets close"
        );
    }
}

/// Bind and serve. Redis being down is not fatal: the instance starts unready.
pub async fn start(cfg: Config) -> std::io::Result<Running> {
    cfg.validate()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let app = App::new(cfg).map_err(std::io::Error::other)?;
    let listener = TcpListener::bind(&app.cfg.listen).await?;
    let addr = listener.local_addr()?;
    for cell in app.cells.iter() {
        if let Err(e) = cell.store.load_scripts().await {
            tracing::warn!(cell = cell.name(), error = %e, "scripts not loaded yet; will retry when Redis answers");
            continue;
        }
        // (readiness checks it again on every probe: this says why at once, in the log)
        use crate::store::memory::Eviction;
        let name = cell.name();
        match cell.store.eviction().await {
            Ok(Eviction::Refused(why)) => tracing::error!(cell = name, "not ready: {why}"),
            Ok(Eviction::Accepted(policy)) => tracing::warn!(
                cell = name,
                policy,
                "Redis may evict keys (redis.allow_eviction)"
            ),
            Ok(Eviction::Unchecked) => tracing::warn!(
                cell = name,
                "INFO memory refused (an ACL user needs +info): Redis eviction is not checked"
            ),
            Ok(Eviction::Safe) | Err(_) => {}
        }
    }
    let router = crate::http::router(app.clone());
    let admin = match &app.cfg.admin_listen {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
    let mut tasks = Vec::new();
    if let Some(listener) = admin {
        let router = crate::http::admin_router(app.clone());
        let stop = app.stop_accepting.subscribe();
        let (limits, metrics) = (app.cfg.limits.clone(), app.metrics.clone());
        tasks.push(tokio::spawn(async move {
            crate::accept::serve(listener, router, &limits, metrics, stop).await;
        }));
    }
    let stop = app.stop_accepting.subscribe();
    let (limits, metrics) = (app.cfg.limits.clone(), app.metrics.clone());
    let server = tokio::spawn(async move {
        crate::accept::serve(listener, router, &limits, metrics, stop).await;
    });
    tasks.push(server);
    // Each cell's loops, restarted if one ends before shutdown (a panic: `supervise`); what
    // the inbox consumer and the beat must remember across a restart is kept here.
    for cell in app.cells.iter() {
        let watch = |task: &'static str, make: Box<dyn Fn() -> Loop + Send>| {
            let (metrics, name) = (app.metrics.clone(), cell.name().to_string());
            crate::supervise::spawn(metrics, name, task, app.shutdown_signal(), make)
        };
        let (a, c) = (app.clone(), cell.clone());
        tasks.push(watch(
            "sweeper",
            Box::new(move || Box::pin(crate::sweeper::run(a.clone(), c.clone()))),
        ));
        let (a, c, kept) = (app.clone(), cell.clone(), Arc::default());
        tasks.push(watch(
            "presence",
            Box::new(move || {
                Box::pin(crate::routing::presence::run(
                    a.clone(),
                    c.clone(),
                    Arc::clone(&kept),
                ))
            }),
        ));
        let (a, c, kept) = (app.clone(), cell.clone(), Arc::default());
        tasks.push(watch(
            "inbox",
            Box::new(move || {
                Box::pin(crate::routing::inbox::run(
                    a.clone(),
                    c.clone(),
                    Arc::clone(&kept),
                ))
            }),
        ));
        let (a, c) = (app.clone(), cell.clone());
        tasks.push(watch(
            "stats",
            Box::new(move || Box::pin(crate::console::live::run_stats(a.clone(), c.clone()))),
        ));
    }
    if app.auth.is_open() {
        tracing::warn!(
            "AUTH IS OPEN (auth.mode = \"open\"): anyone who reaches {addr} can register nodes, \
             open sessions and drain nodes. Development only; set auth.mode = \"required\"."
        );
    }
    for a in app.cfg.advice() {
        tracing::warn!("configuration: {a}");
    }
    tracing::info!(instance = %app.instance_id, %addr, "switchyard listening");
    Ok(Running {
        addr,
        admin_addr,
        app,
        tasks,
    })
}

/// Run until SIGINT/SIGTERM, then drain and shut down.
pub async fn run(cfg: Config) -> std::io::Result<()> {
    let running = start(cfg).await?;
    wait_for_signal().await;
    tracing::info!("draining");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
