//! A connection's writes, watched: since when a write has waited for the peer to read.
//! The connection's task closes a plain HTTP connection whose write has waited longer than
//! `limits.http_write_timeout_ms`: a client that stopped reading a response held its slot
//! (and, for a console stream, the connection) for as long as it kept the socket open.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The TCP stream, telling its [`Stall`] whether its last write waited.
pub struct Watched {
    io: TcpStream,
    stall: Stall,
}

/// Since when the connection's current write has waited (ms after `epoch`, plus one; 0:
/// no write is waiting).
#[derive(Clone)]
pub struct Stall {
    since: Arc<AtomicU64>,
    epoch: Instant,
}

impl Watched {
    pub fn new(io: TcpStream) -> (Self, Stall) {
        let stall = Stall {
            since: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        };
        (
            Self {
                io,
                stall: stall.clone(),
            },
            stall,
        )
    }

    fn note<T>(&self, r: &Poll<io::Result<T>>) {
        let since = &self.stall.since;
        match r {
            Poll::Pending => {
                if since.load(Ordering::Relaxed) == 0 {
                    let now = self.stall.epoch.elapsed().as_millis() as u64 + 1;
                    since.store(now, Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => since.store(0, Ordering::Relaxed),
        }
    }
}

impl Stall {
    /// How long the connection's current write has waited, if one is waiting.
    pub fn waiting(&self) -> Option<Duration> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(t - 1)),
            ),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
