//! The HTTP accept loop: every TCP connection of the instance starts here.
//!
//! Written out (rather than `axum::serve`) for what axum does not expose: a header-read
//! timeout (`limits.header_read_timeout_ms`, slow-loris defence, also between kept-alive
//! requests) and a deadline for the first request (`limits.upgrade_timeout_ms`, which also
//! closes connections that never send a byte). Accepted sockets get `TCP_NODELAY` (small
//! WebSocket frames must not wait for Nagle). Stopping (the `stop` watch) ends accepting
//! and asks open HTTP connections to finish; upgraded WebSockets are no longer HTTP and
//! are closed by their own tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::LimitsConfig;
use crate::telemetry::metrics::Metrics;

/// Serve `router` on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &LimitsConfig,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    // CONNECT protocol: WebSockets over HTTP/2 (RFC 8441), as axum::serve does.
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol();
    let first_request = Duration::from_millis(limits.upgrade_timeout_ms);
    let graceful = GracefulShutdown::new();
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let served = Arc::new(AtomicBool::new(false));
        let inner = TowerToHyperService::new(router.clone());
        let flag = served.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            flag.store(true, Ordering::Relaxed);
            inner.call(req)
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let result = match tokio::time::timeout(first_request, &mut conn).await {
                Ok(r) => r,
                Err(_) if !served.load(Ordering::Relaxed) => {
                    metrics.limited("http", "upgrade_timeout");
                    return; // dropping the connection closes the socket
                }
                Err(_) => conn.await,
            };
            if let Err(e) = result {
                if e.downcast_ref::<hyper::Error>()
                    .is_some_and(|e| e.is_timeout())
                {
                    metrics.limited("http", "header_timeout");
                }
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Open HTTP exchanges (a scrape, an admin call) get a moment to finish.
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("HTTP connections still open at shutdown");
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Per-connection errors (reset before accept) are nothing; anything else (out of file
/// descriptors) is logged and waited out rather than spinning.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
