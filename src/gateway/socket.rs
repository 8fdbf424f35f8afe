//! One WebSocket, split into a reader (the handler's loop) and a writer task fed by a
//! bounded channel, so any task can send to a connection without holding a lock across I/O.
//!
//! The writer also restores the order of a session's terminal messages: they carry the
//! session's sequence number and may arrive by two paths (a local script's reply, or
//! another instance's script through the inbox stream), so a later one can overtake an
//! earlier one by a few milliseconds. The writer holds it back until the gap fills, or
//! `order_gap` passes. Then the missing message is taken for lost (a script whose reply
//! never came though it committed, an inbox entry trimmed away): with
//! `session.on_gap = "resume"` the writer closes the connection with 1012 without writing
//! what it holds, so the client resumes and gets every result after its last one from the
//! session's result log, in order; with `"skip"` (the default) it writes what follows
//! without it (a skipped message that still arrives is written late rather than lost, and
//! what a reply the instance knows it lost carried comes back from the result log:
//! `Outbound::Recovered`, `gateway::recover`). The gap clock runs only once the
//! connection's first expected number is known (`ExpectSeq`, sent with the session's ack):
//! messages that come before it are held without a clock.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::{SplitSink, SplitStream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use crate::config::OnGap;
pub use order::Order;

mod order;

/// What can be written to a connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    Text(String),
    /// A terminal message with its session sequence number.
    Ordered(u64, String),
    /// The next sequence number this connection will write (set when a session binds).
    ExpectSeq(u64),
    /// The lowest utterance index a recovery writes (a resume's `last_received_index` + 1).
    FirstIndex(u64),
    /// What a lost reply carried, read back from the session's result log: the session's
    /// `out_seq` when read, and the delivered results read (index, message) — see
    /// [`Order::recover`].
    Recovered(u64, Vec<(u64, String)>),
    /// Send a close frame with this code and reason, then stop writing.
    Close(u16, String),
    /// A WebSocket ping: the peer's pong proves the socket is alive.
    Ping,
    /// Hold back text messages until [`Outbound::First`] or [`Outbound::Unhold`]: a node
    /// connection is bound before its `register` script runs, and nothing (a job offered
    /// the moment the script has run) may reach the node before its `node_register_ack`.
    Hold,
    /// Write this message, then what was held back, and stop holding.
    First(String),
    /// Write what was held back and stop holding (the registration did not complete).
    Unhold,
}

/// Close codes Switchyard uses (RFC 6455 §7.4 plus application codes 4000-4999).
pub mod close {
    /// A text frame that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const RESTARTING: u16 = 1012;
    /// A newer connection registered the same node id.
    pub const REPLACED: u16 = 4001;
    /// The node missed its liveness deadline and was taken offline.
    pub const LIVENESS: u16 = 4002;
    /// Nothing (no frame, no pong) came for `ws.idle_timeout_ms`: the peer is gone.
    pub const IDLE: u16 = 4003;
    /// Reason of the 1012 close of a session whose results may be missing (see
    /// [`super::OnGap`]): its resume resends them.
    pub const RESUME_REASON: &str = "results missing; resume";
}

/// How a writer treats a gap in its ordered messages.
#[derive(Clone)]
pub struct Gap {
    /// How long a missing message is waited for (`session.order_gap_ms`).
    pub wait: Duration,
    /// What then (`session.on_gap`).
    pub on_gap: OnGap,
    /// Counts each gap given up on.
    pub counter: Counter,
    /// Told each time a gap is skipped (`on_gap = "skip"`), and by `Connections::send` when
    /// the full queue refuses an ordered message (`LocalConn::missing`, the same one): the
    /// connection's handler then reads the missing messages back from the result log
    /// (`Handler::messages_missing`); no lost reply starts that recovery.
    pub missing: Arc<Notify>,
}

/// Split `ws`: returns the sender, the inbound stream and the writer task. A socket write
/// that has not completed after `write_timeout` (None: no bound) ends the writer with
/// [`WriterEnd::WriteTimeout`].
pub fn split(
    ws: WebSocket,
    queue: usize,
    gap: Gap,
    write_timeout: Option<Duration>,
) -> (
    mpsc::Sender<Outbound>,
    SplitStream<WebSocket>,
    JoinHandle<WriterEnd>,
) {
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::channel::<Outbound>(queue);
    let writer = tokio::spawn(write_loop(sink, rx, gap, write_timeout));
    (tx, stream, writer)
}

/// Why a connection's writer task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterEnd {
    /// A close frame was sent, or every sender is gone.
    Done,
    /// The socket failed.
    Failed,
    /// A write did not complete within the write timeout: the peer stopped reading.
    WriteTimeout,
}

/// What the writer does after a batch of messages is written.
enum After {
    /// Wait for the next message.
    Next,
    Ping,
    Close(CloseFrame),
    /// The channel is closed: stop.
    Stop,
}

/// Most messages written with one flush: a burst (the `ui_event`s and the
/// `translation_result` of one script reply) goes out in one socket write.
const BATCH: usize = 64;

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    gap: Gap,
    write_timeout: Option<Duration>,
) -> WriterEnd {
    let mut order = Order::default();
    // Text messages held back while a registration is in progress (see Outbound::Hold).
    let mut held: Option<Vec<String>> = None;
    let end = loop {
        let gap_deadline = order.gap_since.map(|t| t + gap.wait);
        let next = tokio::select! {
            m = rx.recv() => m,
            _ = async { tokio::time::sleep_until(gap_deadline.unwrap_or_else(Instant::now)).await },
                if gap_deadline.is_some() => {
                gap.counter.inc();
                if gap.on_gap == OnGap::Skip {
                    tracing::warn!(held = order.held.len(), "session message gap skipped");
                    gap.missing.notify_one();
                    if let Err(end) = write_all(&mut sink, order.skip(), write_timeout).await {
                        break end;
                    }
                    continue;
                }
                // What is held is not written: the client's resume starts after the last
                // index it got, and the missing one comes first.
                tracing::warn!(
                    held = order.held.len(),
                    expected = order.expected,
                    "session message missing; closing with 1012 so the client resumes"
                );
                let frame = CloseFrame {
                    code: close::RESTARTING,
                    reason: close::RESUME_REASON.into(),
                };
                let close = sink.send(Message::Close(Some(frame)));
                match bounded(write_timeout, close).await {
                    Err(WriterEnd::WriteTimeout) => break WriterEnd::WriteTimeout,
                    _ => break WriterEnd::Done,
                }
            }
        };
        // Take what is already queued too (up to BATCH messages), so a burst is written
        // with one flush, one socket write, instead of one per message.
        let mut ready = Vec::new();
        let mut after = take(next, &mut order, &mut held, &mut ready);
        let mut taken = 1;
        while matches!(after, After::Next) && taken < BATCH {
            let Ok(m) = rx.try_recv() else { break };
            after = take(Some(m), &mut order, &mut held, &mut ready);
            taken += 1;
        }
        if let Err(end) = write_all(&mut sink, ready, write_timeout).await {
            break end;
        }
        match after {
            After::Next => {}
            After::Ping => {
                let ping = sink.send(Message::Ping(Default::default()));
                if let Err(end) = bounded(write_timeout, ping).await {
                    break end;
                }
            }
            After::Close(frame) => {
                let close = sink.send(Message::Close(Some(frame)));
                match bounded(write_timeout, close).await {
                    Err(WriterEnd::WriteTimeout) => break WriterEnd::WriteTimeout,
                    _ => break WriterEnd::Done,
                }
            }
            After::Stop => break WriterEnd::Done,
        }
    };
    // A peer that stopped reading would block the closing handshake too: drop the socket.
    if end != WriterEnd::WriteTimeout {
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    }
    end
}

/// `write`, given at most `limit`: a failed write is [`WriterEnd::Failed`], one still
/// pending after `limit` [`WriterEnd::WriteTimeout`].
async fn bounded<E>(
    limit: Option<Duration>,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), WriterEnd> {
    let done = match limit {
        Some(d) => match tokio::time::timeout(d, write).await {
            Ok(r) => r,
            Err(_) => return Err(WriterEnd::WriteTimeout),
        },
        None => write.await,
    };
    done.map_err(|_| WriterEnd::Failed)
}

/// One queued message: the texts it makes ready to write are appended to `ready`.
fn take(
    next: Option<Outbound>,
    order: &mut Order,
    held: &mut Option<Vec<String>>,
    ready: &mut Vec<String>,
) -> After {
    match next {
        None => return After::Stop,
        Some(Outbound::Text(t)) => match held.as_mut() {
            Some(h) => h.push(t),
            None => ready.push(t),
        },
        Some(Outbound::Hold) => {
            held.get_or_insert_with(Vec::new);
        }
        Some(Outbound::First(t)) => {
            ready.push(t);
            ready.extend(held.take().unwrap_or_default());
        }
        Some(Outbound::Unhold) => ready.extend(held.take().unwrap_or_default()),
        Some(Outbound::Ordered(seq, t)) => ready.extend(order.push(seq, t)),
        Some(Outbound::ExpectSeq(n)) => ready.extend(order.expect(n)),
        Some(Outbound::FirstIndex(i)) => order.first_index(i),
        Some(Outbound::Recovered(upto, logged)) => ready.extend(order.recover(upto, logged)),
        Some(Outbound::Ping) => return After::Ping,
        Some(Outbound::Close(code, reason)) => {
            return After::Close(CloseFrame {
                code,
                reason: reason.into(),
            });
        }
    }
    After::Next
}

/// Write `texts` with one flush at the end (buffered frames, one socket write for a burst).
/// Each message and the flush get `limit` on their own: a long burst to a slow but reading
/// peer is not cut off, a peer that stopped reading is.
async fn write_all(
    sink: &mut SplitSink<WebSocket, Message>,
    texts: Vec<String>,
    limit: Option<Duration>,
) -> Result<(), WriterEnd> {
    if texts.is_empty() {
        return Ok(());
    }
    for t in texts {
        bounded(limit, sink.feed(Message::Text(t.into()))).await?;
    }
    bounded(limit, sink.flush()).await
}

/// Is this read error an oversized frame/message (answered with close 1009)?
pub fn is_too_big(err: &axum::Error) -> bool {
    read_error(err).is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

/// Is this read error a text frame that is not UTF-8 (answered with close 1007)?
pub fn is_bad_utf8(err: &axum::Error) -> bool {
    read_error(err).is_some_and(|e| matches!(e, tungstenite::Error::Utf8(_)))
}

/// The tungstenite error under axum's wrapper, if there is one.
fn read_error(err: &axum::Error) -> Option<&tungstenite::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(t) = e.downcast_ref::<tungstenite::Error>() {
            return Some(t);
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests;
