//! Delivering server frames to many receivers: each frame is encoded once and the same
//! bytes are handed to every connection or request that receives it.
//!
//! Every receiver has a bounded queue, bounded twice: in frames and in bytes. A receiver
//! that falls behind either bound is marked overflowed (its owner closes it, a WebSocket
//! with 4429); senders never wait for a slow reader, so one client cannot slow a session
//! down or pin unbounded memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use axum::extract::ws::Utf8Bytes;
use relay_protocol::ServerFrame;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A frame ready to send: the typed frame (for SSE and REST readers) and its JSON text
/// (for WebSocket writers), shared by every receiver.
#[derive(Clone, Debug)]
pub struct Outbound {
    /// The frame.
    pub frame: Arc<ServerFrame>,
    /// The frame encoded as JSON, once.
    pub text: Utf8Bytes,
}

impl Outbound {
    /// Encodes a frame.
    pub fn new(frame: ServerFrame) -> Outbound {
        let text = serde_json::to_string(&frame).expect("server frames always encode");
        Outbound { frame: Arc::new(frame), text: Utf8Bytes::from(text) }
    }

    /// A frame another node encoded: its bytes are kept as they came (every receiver here
    /// gets those same bytes) and decoded once for the typed readers.
    pub fn decode(text: &[u8]) -> Result<Outbound, serde_json::Error> {
        let frame: ServerFrame = serde_json::from_slice(text)?;
        let text = String::from_utf8(text.to_vec()).map_err(|e| serde::de::Error::custom(e.to_string()))?;
        Ok(Outbound { frame: Arc::new(frame), text: Utf8Bytes::from(text) })
    }
}

/// Identifies one receiver: a WebSocket connection or one REST/SSE request.
pub type ReceiverId = u64;

/// Hands out receiver ids, unique for the life of the process.
pub fn next_receiver_id() -> ReceiverId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What kind of receiver it is; decides what the session actor sends it beyond events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReceiverKind {
    /// A WebSocket connection: gets snapshots, acks and every event.
    Connection,
    /// A REST or SSE request waiting for one reply: gets events only.
    Request,
}

/// How much a receiver's queue may hold before the receiver counts as too slow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueBounds {
    /// Frames.
    pub frames: usize,
    /// Bytes of encoded frames: a frame is refused once more than this is queued ahead
    /// of it, so a receiver pins at most this plus one frame (a frame is never split, and
    /// the largest, a whole reply in its `message` event, must fit: see the config check).
    pub bytes: usize,
}

/// The sending end of a receiver: a bounded outbound queue here, or a receiver on another
/// node of a cluster, reached through it.
#[derive(Clone, Debug)]
pub struct Receiver {
    /// Who it is (unique on the node it lives on).
    pub id: ReceiverId,
    /// What kind it is.
    pub kind: ReceiverKind,
    sink: Sink,
}

#[derive(Clone, Debug)]
enum Sink {
    Local(LocalSink),
    Remote(Arc<dyn RemoteSink>),
}

#[derive(Clone, Debug)]
struct LocalSink {
    tx: mpsc::Sender<Outbound>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    overflowed: CancellationToken,
}

/// How frames reach receivers on another node (the cluster implements it): the node
/// there queues them for its own receiver, which is bounded like any other.
pub trait RemoteSink: Send + Sync + std::fmt::Debug {
    /// Sends a frame to receiver `receiver` on that node.
    fn deliver(&self, receiver: ReceiverId, out: &Outbound);
    /// The node process (instance) the receiver lives in.
    fn instance(&self) -> &Arc<str>;
}

/// The receiving end of a receiver's queue; taking a frame gives its bytes back.
pub struct Inbox {
    rx: mpsc::Receiver<Outbound>,
    queued_bytes: Arc<AtomicUsize>,
}

/// Outcome of a delivery attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queued.
    Queued,
    /// The receiver is gone (its queue was closed).
    Gone,
    /// The receiver reads too slowly; it has been told to close and must be dropped.
    Overflowed,
}

impl Receiver {
    /// Creates a receiver whose queue holds up to `bounds`; the returned token is
    /// cancelled if the queue ever overflows, and the owner must then close.
    pub fn channel(kind: ReceiverKind, bounds: QueueBounds) -> (Receiver, Inbox, CancellationToken) {
        let (tx, rx) = mpsc::channel(bounds.frames.max(1));
        let overflowed = CancellationToken::new();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let sink = LocalSink {
            tx,
            queued_bytes: queued_bytes.clone(),
            max_bytes: bounds.bytes,
            overflowed: overflowed.clone(),
        };
        let receiver = Receiver { id: next_receiver_id(), kind, sink: Sink::Local(sink) };
        (receiver, Inbox { rx, queued_bytes }, overflowed)
    }

    /// A receiver that lives on another node: frames delivered here travel there.
    pub fn remote(id: ReceiverId, kind: ReceiverKind, sink: Arc<dyn RemoteSink>) -> Receiver {
        Receiver { id, kind, sink: Sink::Remote(sink) }
    }

    /// The node instance a remote receiver lives in (`None` for a receiver of this node).
    pub fn remote_instance(&self) -> Option<&Arc<str>> {
        match &self.sink {
            Sink::Local(_) => None,
            Sink::Remote(sink) => Some(sink.instance()),
        }
    }

    /// Queues a frame without waiting: a full queue never slows the sender down, it
    /// marks the receiver as too slow instead.
    pub fn deliver(&self, out: &Outbound) -> Delivery {
        match &self.sink {
            Sink::Local(sink) => sink.deliver(out),
            Sink::Remote(sink) => {
                sink.deliver(self.id, out);
                Delivery::Queued
            }
        }
    }

    /// Whether the receiving end has gone away or overflowed (a remote receiver's node
    /// says so itself, by unsubscribing or by leaving the cluster).
    pub fn is_closed(&self) -> bool {
        match &self.sink {
            Sink::Local(sink) => sink.tx.is_closed() || sink.overflowed.is_cancelled(),
            Sink::Remote(_) => false,
        }
    }
}

impl LocalSink {
    fn deliver(&self, out: &Outbound) -> Delivery {
        if self.overflowed.is_cancelled() {
            return Delivery::Overflowed;
        }
        let len = out.text.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.overflowed.cancel();
            return Delivery::Overflowed;
        }
        match self.tx.try_send(out.clone()) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                Delivery::Gone
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                self.overflowed.cancel();
                Delivery::Overflowed
            }
        }
    }
}

impl Inbox {
    /// The next frame, or `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Outbound> {
        let out = self.rx.recv().await?;
        self.queued_bytes.fetch_sub(out.text.len(), Ordering::AcqRel);
        Some(out)
    }

    /// The next frame if one is queued now.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let out = self.rx.try_recv().ok()?;
        self.queued_bytes.fetch_sub(out.text.len(), Ordering::AcqRel);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text_len: usize) -> Outbound {
        Outbound::new(ServerFrame::Pong { id: Some("x".repeat(text_len)) })
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_frames() {
        let (rx_bytes, mut inbox, overflowed) =
            Receiver::channel(ReceiverKind::Connection, QueueBounds { frames: 100, bytes: 1000 });
        // A frame larger than the bound passes into a queue holding less than the bound,
        // and nothing passes after it until it is read.
        assert_eq!(rx_bytes.deliver(&frame(500)), Delivery::Queued);
        assert_eq!(rx_bytes.deliver(&frame(5000)), Delivery::Queued);
        assert_eq!(rx_bytes.deliver(&frame(10)), Delivery::Overflowed);
        assert!(overflowed.is_cancelled() && rx_bytes.is_closed());
        assert!(inbox.recv().await.is_some());

        let (rx, mut inbox, overflowed) =
            Receiver::channel(ReceiverKind::Connection, QueueBounds { frames: 100, bytes: 1000 });
        let len = frame(200).text.len();
        // Frames pass while at most 1000 bytes are queued ahead of them.
        let fits = 1000 / len + 1;
        for _ in 0..fits {
            assert_eq!(rx.deliver(&frame(200)), Delivery::Queued);
        }
        // Reading gives the bytes back.
        for _ in 0..fits {
            inbox.recv().await.unwrap();
        }
        assert!(inbox.try_recv().is_none());
        for _ in 0..fits {
            assert_eq!(rx.deliver(&frame(200)), Delivery::Queued);
        }
        assert_eq!(rx.deliver(&frame(200)), Delivery::Overflowed);
        assert!(overflowed.is_cancelled());

        let (rx, _inbox, _) = Receiver::channel(ReceiverKind::Connection, QueueBounds { frames: 2, bytes: 1 << 20 });
        assert_eq!(rx.deliver(&frame(1)), Delivery::Queued);
        assert_eq!(rx.deliver(&frame(1)), Delivery::Queued);
        assert_eq!(rx.deliver(&frame(1)), Delivery::Overflowed);
    }
}
