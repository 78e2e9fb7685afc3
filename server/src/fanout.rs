//! Delivering server frames to many receivers: each frame is encoded once and the same
//! bytes are handed to every connection or request that receives it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

/// Identifies one receiver: a WebSocket connection or one REST/SSE request.
pub type ReceiverId = u64;

/// Hands out receiver ids, unique for the life of the process.
pub fn next_receiver_id() -> ReceiverId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What kind of receiver it is; decides what the session actor sends it beyond events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiverKind {
    /// A WebSocket connection: gets snapshots, acks and every event.
    Connection,
    /// A REST or SSE request waiting for one reply: gets events only.
    Request,
}

/// The sending end of a receiver's bounded outbound queue.
#[derive(Clone, Debug)]
pub struct Receiver {
    /// Who it is.
    pub id: ReceiverId,
    /// What kind it is.
    pub kind: ReceiverKind,
    tx: mpsc::Sender<Outbound>,
    overflowed: CancellationToken,
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
    /// Creates a receiver with a queue of `capacity` frames; the returned token is
    /// cancelled if the queue ever overflows, and the owner must then close.
    pub fn channel(kind: ReceiverKind, capacity: usize) -> (Receiver, mpsc::Receiver<Outbound>, CancellationToken) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let overflowed = CancellationToken::new();
        let receiver = Receiver { id: next_receiver_id(), kind, tx, overflowed: overflowed.clone() };
        (receiver, rx, overflowed)
    }

    /// Queues a frame without waiting: a full queue never slows the sender down, it
    /// marks the receiver as too slow instead.
    pub fn deliver(&self, out: &Outbound) -> Delivery {
        match self.tx.try_send(out.clone()) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Gone,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed.cancel();
                Delivery::Overflowed
            }
        }
    }

    /// Whether the receiving end has gone away.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.overflowed.is_cancelled()
    }
}
