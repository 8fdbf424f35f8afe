//! One Switchyard instance: shared state, start-up, and shutdown.
//!
//! [`start`] binds the listener, loads the scripts (if Redis is there; otherwise readiness
//! stays false until it is), spawns the sweeper and serves HTTP + WebSocket until
//! [`Running::shutdown`] or a signal. Tests start instances in-process with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::gateway::Connections;
use crate::store::{Store, StoreError};
use crate::telemetry::metrics::Metrics;

/// State shared by every handler and task of an instance.
pub struct App {
    pub cfg: Config,
    /// Unique per process start (pod names repeat; this never does).
    pub instance_id: String,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub conns: Connections,
    conn_seq: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl App {
    pub fn new(cfg: Config) -> Result<Arc<Self>, StoreError> {
        let metrics = Arc::new(Metrics::new());
        let instance_id = format!("i-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let store = Store::new(&cfg, &instance_id, metrics.clone())?;
        let (shutdown, _) = watch::channel(false);
        Ok(Arc::new(Self {
            cfg,
            instance_id,
            store,
            metrics,
            conns: Connections::default(),
            conn_seq: AtomicU64::new(0),
            shutdown,
        }))
    }

    /// A token no other connection, on any instance, ever had: the connection epoch.
    pub fn next_conn_token(&self) -> String {
        format!(
            "{}/{}",
            self.instance_id,
            self.conn_seq.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// Resolves (changes to `true`) when the instance shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// A started instance.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stop accepting, close every socket with 1012 and wait for the tasks.
    pub async fn shutdown(self) {
        let _ = self.app.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
    }

    /// Stop every task at once without any cleanup (a crash, for tests).
    pub fn abort(self) {
        let _ = self.app.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Bind and serve. Redis being down is not fatal: the instance starts unready.
pub async fn start(cfg: Config) -> std::io::Result<Running> {
    let app = App::new(cfg).map_err(|e| std::io::Error::other(e.to_string()))?;
    let listener = TcpListener::bind(&app.cfg.listen).await?;
    let addr = listener.local_addr()?;
    if let Err(e) = app.store.load_scripts().await {
        tracing::warn!(error = %e, "scripts not loaded yet; will retry when Redis answers");
    }
    let router = crate::http::router(app.clone());
    let mut stop = app.shutdown_signal();
    let server = tokio::spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "server stopped");
        }
    });
    let sweeper = tokio::spawn(crate::sweeper::run(app.clone()));
    tracing::info!(instance = %app.instance_id, %addr, "switchyard listening");
    Ok(Running {
        addr,
        app,
        tasks: vec![server, sweeper],
    })
}

/// Run until SIGINT/SIGTERM, then shut down.
pub async fn run(cfg: Config) -> std::io::Result<()> {
    let running = start(cfg).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
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
