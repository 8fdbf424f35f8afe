//! The HTTP accept loop: every TCP connection of the instance starts here.
//!
//! Written out (rather than `axum::serve`) for what axum does not expose: a header-read
//! timeout (`limits.header_read_timeout_ms`, slow-loris defence, also between kept-alive
//! requests) and a deadline for the first request (`limits.upgrade_timeout_ms`, which also
//! closes connections that never send a byte). Accepted sockets get `TCP_NODELAY` (small
//! WebSocket frames must not wait for Nagle). Stopping (the `stop` watch) ends accepting
//! and asks open HTTP connections to finish; upgraded WebSockets are no longer HTTP and
//! are closed by their own tasks.
//!
//! Plain HTTP connections are bounded in number and in age, because the header-read
//! timeout restarts with every request: a client sending `GET /healthz` every 9 s would
//! otherwise hold its connection (a file descriptor) for ever, and any number of them.
//! Each listener holds at most `limits.max_http_connections` connections that are still
//! HTTP (`slots`). When they are all taken, the **oldest idle** one (no request in
//! flight: before its first request or between kept-alive requests) is closed to make way
//! for the new connection (`limited{kind="http", detail="idle_closed"}`), so idle
//! connections — an attacker's included — cannot keep new ones, WebSocket upgrades of
//! nodes and sessions included, out. Only when every slot has a request in flight does
//! the loop stop accepting until one ends or goes idle (counted once in
//! `limited{kind="http", detail="connections"}`): new connections wait in the listen
//! backlog, and no descriptor is spent beyond the cap. A connection leaves the count when
//! it closes or is upgraded: an upgraded WebSocket counts against `limits.max_connections`
//! instead and is never closed by these bounds. After `limits.http_connection_lifetime_ms`
//! a connection still speaking HTTP is asked to close like at shutdown: the request in
//! progress finishes (a console stream included), then it closes. A connection whose write
//! has waited `limits.http_write_timeout_ms` for the peer to read is closed at once
//! (`limited{kind="http", detail="write_timeout"}`, `stall.rs`): a client that stops
//! reading a response cannot hold its slot, busy with a request, for ever.
//!
//! HTTP/1.1 only. Nodes, web clients and probes speak HTTP/1.1 (WebSockets by `Upgrade`),
//! and HTTP/2 has no idle bound in hyper: a connection that had made one request (a
//! `/healthz`) escaped the first-request deadline and could stay open idle for ever,
//! counted by no limit. An HTTP/2 preface now fails to parse as HTTP/1 and the connection
//! is closed at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::LimitsConfig;
use crate::telemetry::metrics::Metrics;

mod slots;
mod stall;
use slots::{MakeWay, Slot, Slots};

/// How often a connection's task looks whether its write has waited too long.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Serve `router` on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &LimitsConfig,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    let first_request = Duration::from_millis(limits.upgrade_timeout_ms);
    let lifetime = Duration::from_millis(limits.http_connection_lifetime_ms);
    let write_timeout = Duration::from_millis(limits.http_write_timeout_ms);
    // One slot per connection still speaking HTTP on this listener.
    let slots = Slots::new(limits.max_http_connections);
    // Every connection task holds a sender: the receiver sees the end of the last one.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let mut accepting = stop.clone();
    'accept: loop {
        // A connection first: nothing is closed to make way for one that is not there.
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            _ = stopped(&mut accepting) => break 'accept,
        };
        // Then a slot for it: a free one, else the oldest idle connection's once it has
        // closed, else (every slot busy with a request) the first that ends or goes idle —
        // meanwhile this connection waits accepted and the next ones in the backlog.
        let mut waited = false;
        let served = Arc::new(AtomicBool::new(false));
        let slot = loop {
            let changed = slots.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(slot) = slots.try_take(&served) {
                break slot;
            }
            // (a new connection yet to send its first request may be closed once it has had
            // its time: look again then)
            let mut again = None;
            match slots.make_way() {
                MakeWay::Evicted => metrics.limited("http", "idle_closed"),
                MakeWay::Closing => {}
                MakeWay::AllBusy(fresh) => {
                    again = fresh;
                    if !waited {
                        waited = true;
                        metrics.limited("http", "connections");
                    }
                }
            }
            let look_again = async {
                match again {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = changed => {}
                _ = look_again => {}
                _ = stopped(&mut accepting) => break 'accept,
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let inner = TowerToHyperService::new(router.clone());
        let flag = served.clone();
        let (slots_of, busy_of) = slot.parts();
        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            flag.store(true, Ordering::Relaxed);
            // In flight until its response body is done (a console stream: its end).
            let busy = Slot::busy(&slots_of, &busy_of);
            let call = inner.call(req);
            let upgrading = busy_of.clone();
            async move {
                let res = call.await?;
                if res.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                    // Busy until the connection hands itself over to the WebSocket (its
                    // task then ends, and the slot with it): closed between the 101 and the
                    // hand-over, the upgrade would fail after the client was told it worked.
                    upgrading.fetch_add(1, Ordering::AcqRel);
                }
                Ok::<_, std::convert::Infallible>(res.map(|body| {
                    axum::body::Body::new(body.map_frame(move |f| {
                        let _in_flight = &busy;
                        f
                    }))
                }))
            }
        });
        let (tcp, stall) = stall::Watched::new(tcp);
        let conn = http
            .serve_connection(TokioIo::new(tcp), svc)
            .with_upgrades();
        let (metrics, mut stop, open) = (metrics.clone(), stop.clone(), open.clone());
        tokio::spawn(async move {
            // `open` and the slot (moved in) go when the connection ends or is upgraded (the
            // future then resolves): an upgraded WebSocket holds no slot and no timer here.
            let _open = open;
            tokio::pin!(conn);
            let deadline = tokio::time::sleep(first_request);
            tokio::pin!(deadline);
            let aged = tokio::time::sleep(lifetime);
            tokio::pin!(aged);
            let mut watch = tokio::time::interval(STALL_CHECK.min(write_timeout));
            let (mut deadline_passed, mut stopping) = (false, false);
            let evict = slot.evict.clone();
            let result = loop {
                tokio::select! {
                    r = conn.as_mut() => break r,
                    _ = evict.notified() => {
                        if slot.idle() {
                            return; // dropping the connection closes the socket
                        }
                        // A request came in meanwhile: it finishes, then the connection closes.
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = &mut deadline, if !deadline_passed => {
                        if !served.load(Ordering::Relaxed) {
                            metrics.limited("http", "upgrade_timeout");
                            return; // dropping the connection closes the socket
                        }
                        deadline_passed = true;
                    }
                    _ = stopped(&mut stop), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = &mut aged, if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = watch.tick() => {
                        if stall.waiting().is_some_and(|w| w >= write_timeout) {
                            metrics.limited("http", "write_timeout");
                            return; // dropping the connection closes the socket
                        }
                    }
                }
            };
            if let Err(e) = result {
                if e.is_timeout() {
                    metrics.limited("http", "header_timeout");
                }
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(open);
    // Open HTTP exchanges (a scrape, an admin call) get a moment to finish.
    if tokio::time::timeout(Duration::from_secs(5), all_closed.recv())
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
