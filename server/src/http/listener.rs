//! The sockets under the HTTP server, defended against clients that hold them: a request
//! header must arrive within `HTTP_HEADER_TIMEOUT_SECS` of its first byte (slowloris), a
//! connection with no request in progress is closed after `HTTP_IDLE_TIMEOUT_SECS`, and
//! one client address may hold at most `HTTP_MAX_CONNECTIONS_PER_ADDRESS` sockets (an
//! IPv6 client counted by its /64, a trusted proxy not at all: it carries many clients).
//!
//! [`GuardedListener`] refuses sockets over the cap at accept (closing them unanswered)
//! and wraps the others in [`GuardedIo`], which knows what its connection is doing from
//! [`Activity`]: bytes arriving while idle start a request header, the [`track_requests`]
//! middleware marks a request in progress until its response body is sent (or dropped),
//! and a `101 Switching Protocols` answer hands the socket to a WebSocket for good (it has
//! its own pings and timeouts). While a deadline applies and passes, a read fails and
//! hyper closes the connection.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use bytes::Bytes;
use dashmap::DashMap;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;

/// The socket limits (from `HTTP_HEADER_TIMEOUT_SECS`, `HTTP_IDLE_TIMEOUT_SECS`,
/// `HTTP_MAX_CONNECTIONS_PER_ADDRESS` and `TRUSTED_PROXIES`).
#[derive(Clone, Debug)]
pub struct SocketLimits {
    /// From a request's first byte to the end of its header.
    pub header_timeout: Duration,
    /// How long a connection may sit with no request in progress.
    pub idle_timeout: Duration,
    /// Sockets one client address may hold open (`None`: no cap).
    pub max_per_address: Option<usize>,
    /// Proxies, whose sockets are not capped.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// A TCP listener that caps sockets per client address and guards each against being
/// held idle or trickled.
pub struct GuardedListener {
    listener: TcpListener,
    limits: Arc<SocketLimits>,
    open: Arc<DashMap<IpAddr, usize>>,
    metrics: Arc<Metrics>,
}

impl GuardedListener {
    /// Wraps a bound listener.
    pub fn new(listener: TcpListener, limits: SocketLimits, metrics: Arc<Metrics>) -> GuardedListener {
        GuardedListener { listener, limits: Arc::new(limits), open: Arc::default(), metrics }
    }

    /// A place for one more socket from `ip`, or `None` when its address holds the most.
    fn take_place(&self, ip: IpAddr) -> Option<Option<Place>> {
        let ip = ip.to_canonical();
        let Some(max) = self.limits.max_per_address else { return Some(None) };
        if self.limits.trusted_proxies.iter().any(|net| net.contains(&ip)) {
            return Some(None);
        }
        let group = crate::limits::address_group(ip);
        let mut count = self.open.entry(group).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Some(Place { open: self.open.clone(), group }))
    }
}

impl Listener for GuardedListener {
    type Io = GuardedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (GuardedIo, SocketAddr) {
        loop {
            let (tcp, addr) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // As axum's own listener: a client that went away is nothing; anything
                    // else (out of file descriptors) is worth a pause before trying again.
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) {
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            };
            let Some(place) = self.take_place(addr.ip()) else {
                // Closed unanswered: whoever holds this many sockets is not owed a reply.
                self.metrics.limit_refused("connections_per_address");
                tracing::debug!(peer = %addr.ip(), "socket refused: too many open from this address");
                drop(tcp);
                continue;
            };
            // Frames are small and each is worth sending at once: without this, Nagle's
            // algorithm holds a delta back until the client acknowledges the one before.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
            let activity = Arc::new(Activity::new(&self.limits));
            return (GuardedIo::new(tcp, activity, place, self.metrics.clone()), addr);
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// One socket's place in its address's count, given back when the socket closes (which,
/// for a WebSocket, is when the upgraded connection ends).
struct Place {
    open: Arc<DashMap<IpAddr, usize>>,
    group: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.remove_if_mut(&self.group, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

/// What a connection is doing, as far as its timeouts care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No request in progress, none begun, since then.
    Idle(Instant),
    /// A request header has begun arriving, at that time.
    Header(Instant),
    /// This many requests are in progress (their answers not yet sent).
    Busy(usize),
    /// A WebSocket has the socket now; it keeps its own time.
    Upgraded,
}

/// Why a connection was closed.
#[derive(Clone, Copy, Debug)]
enum Expiry {
    Header,
    Idle,
}

impl Expiry {
    fn as_str(self) -> &'static str {
        match self {
            Expiry::Header => "header_timeout",
            Expiry::Idle => "idle_timeout",
        }
    }
}

/// What one connection is doing, shared by its socket and the requests it carries.
pub struct Activity {
    phase: Mutex<Phase>,
    /// The connection's reader, woken when a deadline starts to apply (a request ended).
    reader: AtomicWaker,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Activity {
    fn new(limits: &SocketLimits) -> Activity {
        Activity {
            phase: Mutex::new(Phase::Idle(Instant::now())),
            reader: AtomicWaker::new(),
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes arrived: while idle, they begin a request header.
    fn bytes_read(&self) {
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Header(Instant::now());
        }
    }

    /// A request's header was read: no deadline while it is in progress.
    fn request_started(&self) {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Upgraded => Phase::Upgraded,
            Phase::Idle(_) | Phase::Header(_) => Phase::Busy(1),
        };
    }

    /// A request's answer was sent (or given up): the last one makes the connection idle.
    fn request_finished(&self) {
        let mut phase = self.phase();
        if let Phase::Busy(n) = *phase {
            *phase = if n > 1 { Phase::Busy(n - 1) } else { Phase::Idle(Instant::now()) };
        }
        drop(phase);
        // The reader may be waiting with no deadline set; it must set the idle one now.
        self.reader.wake();
    }

    /// The socket belongs to a WebSocket from now on.
    fn upgraded(&self) {
        *self.phase() = Phase::Upgraded;
    }

    /// The deadline that applies now, if any, and what passing it means.
    fn deadline(&self) -> Option<(Instant, Expiry)> {
        match *self.phase() {
            Phase::Idle(since) => Some((since + self.idle_timeout, Expiry::Idle)),
            Phase::Header(since) => Some((since + self.header_timeout, Expiry::Header)),
            Phase::Busy(_) | Phase::Upgraded => None,
        }
    }
}

/// A client socket that fails its reads once a deadline of its [`Activity`] passes.
pub struct GuardedIo {
    tcp: TcpStream,
    activity: Arc<Activity>,
    timer: Pin<Box<Sleep>>,
    metrics: Arc<Metrics>,
    _place: Option<Place>,
}

impl GuardedIo {
    fn new(tcp: TcpStream, activity: Arc<Activity>, place: Option<Place>, metrics: Arc<Metrics>) -> GuardedIo {
        let timer = Box::pin(tokio::time::sleep(Duration::ZERO));
        GuardedIo { tcp, activity, timer, metrics, _place: place }
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.activity.reader.register(cx.waker());
                let Some((deadline, expiry)) = this.activity.deadline() else { return Poll::Pending };
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.metrics.http_connections_closed.with_label_values(&[expiry.as_str()]).inc();
                tracing::debug!(reason = expiry.as_str(), "connection closed");
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, expiry.as_str())))
            }
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// Who is at the other end of a connection: its address, and what the connection is
/// doing (for [`track_requests`]). Handlers read it as `ConnectInfo<Peer>`.
#[derive(Clone)]
pub struct Peer {
    /// The peer's address.
    pub addr: SocketAddr,
    activity: Arc<Activity>,
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, GuardedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Peer {
        Peer { addr: *stream.remote_addr(), activity: stream.io().activity.clone() }
    }
}

/// Marks a request in progress on its connection until its response body has been sent
/// (or dropped), so no idle deadline cuts a slow answer or a long SSE stream; a `101`
/// answer gives the socket to a WebSocket, which no deadline here applies to.
pub async fn track_requests(request: Request, next: axum::middleware::Next) -> Response {
    let Some(activity) = request.extensions().get::<ConnectInfo<Peer>>().map(|c| c.0.activity.clone()) else {
        return next.run(request).await;
    };
    activity.request_started();
    let guard = InProgress(activity);
    let response = next.run(request).await;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        guard.0.upgraded();
        return response;
    }
    response.map(|body| Body::new(TrackedBody { body, _guard: guard }))
}

/// A request in progress, finished when dropped (with its response body, or with the
/// handler if the client went away first).
struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that holds its request in progress until it is done with.
struct TrackedBody {
    body: Body,
    _guard: InProgress,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        http_body::Body::poll_frame(Pin::new(&mut self.get_mut().body), cx)
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity() -> Activity {
        Activity::new(&SocketLimits {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_per_address: None,
            trusted_proxies: Vec::new(),
        })
    }

    #[tokio::test]
    async fn deadlines_follow_what_the_connection_does() {
        let a = activity();
        assert!(matches!(a.deadline(), Some((_, Expiry::Idle))), "a new connection is idle");
        a.bytes_read();
        let (header_deadline, expiry) = a.deadline().unwrap();
        assert!(matches!(expiry, Expiry::Header) && header_deadline <= Instant::now() + Duration::from_secs(5));
        a.bytes_read();
        assert_eq!(a.deadline().unwrap().0, header_deadline, "more bytes do not push the header deadline");
        a.request_started();
        a.request_started();
        assert!(a.deadline().is_none(), "no deadline while requests are in progress");
        a.request_finished();
        assert!(a.deadline().is_none(), "one still is");
        a.request_finished();
        assert!(matches!(a.deadline(), Some((_, Expiry::Idle))));
        a.request_started();
        a.upgraded();
        a.request_finished();
        assert!(a.deadline().is_none(), "a WebSocket keeps its own time");
    }
}
