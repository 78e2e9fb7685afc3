//! The writer of a connection: drains its outbound queue into the socket in batches, pings,
//! and closes it with the right code.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures::SinkExt;
use futures::stream::SplitSink;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::fanout::{Inbox, Outbound};

use super::{CLOSE_FLUSH, CLOSE_TOO_SLOW, CloseRequest};

/// Most frames written before one flush ([`write_batch`]).
const WRITE_BATCH: usize = 64;

/// What a connection's writer works with: the socket's sending half, the outbound queue,
/// and the signals that end it.
pub(super) struct WriterArgs {
    pub(super) sink: SplitSink<WebSocket, WsMessage>,
    pub(super) inbox: Inbox,
    pub(super) overflowed: CancellationToken,
    pub(super) close_rx: oneshot::Receiver<CloseRequest>,
    pub(super) last_seen: Arc<AtomicU64>,
    pub(super) epoch: Instant,
    pub(super) ping_interval: Duration,
    pub(super) ping_timeout: Duration,
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    pub(super) _gone: tokio_util::sync::DropGuard,
}

/// Drains the outbound queue into the socket until the connection ends, then closes it
/// with the right code.
pub(super) async fn write_loop(mut args: WriterArgs) {
    let mut ping = tokio::time::interval(args.ping_interval);
    ping.reset();
    let (code, reason, drain) = loop {
        tokio::select! {
            biased;
            _ = args.overflowed.cancelled() => break (CLOSE_TOO_SLOW, "client reads too slowly", false),
            request = &mut args.close_rx => match request {
                Ok(Some((code, reason))) => break (code, reason, true),
                _ => return,
            },
            out = args.inbox.recv() => {
                let Some(out) = out else { return };
                tokio::select! {
                    biased;
                    _ = args.overflowed.cancelled() => break (CLOSE_TOO_SLOW, "client reads too slowly", false),
                    sent = write_batch(&mut args.sink, &mut args.inbox, out) => if sent.is_err() { return },
                    // A peer that takes no bytes for this long is gone (or as good as gone):
                    // without this, a writer stuck here would never run its ping check.
                    _ = tokio::time::sleep(args.ping_timeout) => {
                        tracing::debug!("a frame could not be written within the ping timeout");
                        return;
                    }
                }
            }
            _ = ping.tick() => {
                let silent_ms = (args.epoch.elapsed().as_millis() as u64).saturating_sub(args.last_seen.load(Ordering::Relaxed));
                if Duration::from_millis(silent_ms) > args.ping_timeout {
                    tracing::debug!("no pong within the timeout");
                    return;
                }
                // A peer that stopped reading can block the send; that counts as silence too.
                let ping = tokio::time::timeout(args.ping_timeout, args.sink.send(WsMessage::Ping(Default::default())));
                if !matches!(ping.await, Ok(Ok(()))) {
                    return;
                }
            }
        }
    };
    if code == CLOSE_TOO_SLOW {
        tracing::warn!("closing a connection that reads too slowly");
        args.metrics.ws_slow_closed.inc();
    }
    args.metrics.ws_closed(code);
    let _ = tokio::time::timeout(CLOSE_FLUSH, async {
        if drain {
            // Frames already queued (such as `done` on shutdown) go out before the close.
            while let Some(out) = args.inbox.try_recv() {
                if args.sink.send(WsMessage::Text(out.text)).await.is_err() {
                    return;
                }
            }
        }
        let _ = close(&mut args.sink, code, reason).await;
    })
    .await;
}

/// Writes `first` and the frames queued behind it (up to [`WRITE_BATCH`]), then flushes
/// once: a busy connection gets many frames per system call, an idle one its frame at once.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    inbox: &mut Inbox,
    first: Outbound,
) -> Result<(), axum::Error> {
    sink.feed(WsMessage::Text(first.text)).await?;
    for _ in 1..WRITE_BATCH {
        let Some(out) = inbox.try_recv() else { break };
        sink.feed(WsMessage::Text(out.text)).await?;
    }
    sink.flush().await
}

pub(super) async fn close(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    code: u16,
    reason: &'static str,
) -> Result<(), axum::Error> {
    sink.send(WsMessage::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))).await
}
