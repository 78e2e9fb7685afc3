//! The client side of one server: REST calls (register, sessions) and WebSocket
//! connections that send and receive typed frames.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt, stream};
use relay_protocol::{
    AuthResponse, ClientFrame, CreateSessionRequest, ErrorCode, ErrorResponse, RegisterRequest, ServerFrame, Session,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::{Errors, Target};

/// How long connecting, upgrading and waiting for `ready` may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Registrations in flight at once (the server hashes passwords on a few threads).
const REGISTER_CONCURRENCY: usize = 8;
/// Read and write buffer of each client WebSocket.
const CLIENT_BUFFER: usize = 4 * 1024;
/// Every load-test user's password.
const PASSWORD: &str = "relay-loadtest-password";

/// What went wrong with a request or a connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TCP connection failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The server answered an HTTP error (a REST call, or a refused upgrade).
    #[error("HTTP {status} {code:?}")]
    Http {
        /// The status.
        status: u16,
        /// The protocol error code of the body, if it had one.
        code: Option<ErrorCode>,
    },
    /// The server answered an `error` frame.
    #[error("error frame {0}")]
    Frame(ErrorCode),
    /// The server closed the connection, with this close code if it gave one.
    #[error("closed by the server ({0:?})")]
    Closed(Option<u16>),
    /// Nothing came in time.
    #[error("timed out")]
    Timeout,
    /// A frame that makes no sense here.
    #[error("unexpected: {0}")]
    Unexpected(String),
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    Ws(#[from] tungstenite::Error),
    /// An HTTP request failed.
    #[error("http: {0}")]
    Request(#[from] reqwest::Error),
}

impl Error {
    /// The key errors are counted under in [`Errors`].
    pub fn key(&self) -> String {
        match self {
            Error::Connect(_) => "connect".into(),
            Error::Http { status, code: Some(code) } => format!("http_{status}_{code}"),
            Error::Http { status, code: None } => format!("http_{status}"),
            Error::Frame(code) => code.to_string(),
            Error::Closed(Some(code)) => format!("close_{code}"),
            Error::Closed(None) => "closed".into(),
            Error::Timeout => "timeout".into(),
            Error::Unexpected(_) => "unexpected".into(),
            Error::Ws(e) => format!("websocket_{}", ws_cause(e)),
            Error::Request(_) => "request".into(),
        }
    }

    /// A refused upgrade, with the protocol code of its body.
    fn from_handshake(e: tungstenite::Error) -> Error {
        match e {
            tungstenite::Error::Http(response) => {
                let code = response
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<ErrorResponse>(b).ok())
                    .map(|r| r.error.code);
                Error::Http { status: response.status().as_u16(), code }
            }
            tungstenite::Error::Io(e) => Error::Connect(e),
            e => Error::Ws(e),
        }
    }
}

/// One server: its addresses, an HTTP client, and the source addresses sockets rotate over.
#[derive(Debug)]
pub struct Endpoint {
    http: reqwest::Client,
    base: String,
    ws_url: String,
    addr: SocketAddr,
    source_ips: u8,
    next_source: AtomicUsize,
}

impl Endpoint {
    /// Resolves the target's server (`http://host:port`; TLS is not supported).
    pub async fn new(target: &Target) -> anyhow::Result<Arc<Endpoint>> {
        let base = target.server.trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base)?;
        anyhow::ensure!(url.scheme() == "http", "--server must be an http:// URL, got {base}");
        let host = url.host_str().ok_or_else(|| anyhow::anyhow!("no host in {base}"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{host} does not resolve"))?;
        let source_ips = if addr.ip().is_loopback() && addr.is_ipv4() { target.source_ips.max(1) } else { 1 };
        if source_ips < target.source_ips {
            eprintln!("--source-ips applies to a 127.x server only; using the default source address");
        }
        Ok(Arc::new(Endpoint {
            http: reqwest::Client::builder().tcp_nodelay(true).build()?,
            ws_url: format!("ws{}/api/v1/ws", &base["http".len()..]),
            base,
            addr,
            source_ips,
            next_source: AtomicUsize::new(0),
        }))
    }

    /// `base` + `path`.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Registers a new user with a random name, retrying while the server asks to wait
    /// (`429`, `503`).
    pub async fn register(&self) -> Result<AuthResponse, Error> {
        let body = RegisterRequest {
            username: format!("lt_{}", &uuid::Uuid::new_v4().simple().to_string()[..20]),
            password: PASSWORD.into(),
        };
        let mut attempt = 0;
        loop {
            let response = self.http.post(self.url("/api/v1/auth/register")).json(&body).send().await?;
            let status = response.status().as_u16();
            if status == 201 {
                return Ok(response.json().await?);
            }
            let retry = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .map_or(Duration::from_millis(200), Duration::from_secs);
            let error = http_error(status, response).await;
            attempt += 1;
            if !matches!(status, 429 | 503) || attempt >= 20 {
                return Err(error);
            }
            tokio::time::sleep(retry.min(Duration::from_secs(5))).await;
        }
    }

    /// Registers `n` users, a few at a time; returns their tokens and the failures.
    pub async fn register_many(&self, n: usize) -> (Vec<String>, Errors) {
        let results: Vec<_> =
            stream::iter(0..n).map(|_| self.register()).buffer_unordered(REGISTER_CONCURRENCY).collect().await;
        let mut errors = Errors::default();
        let tokens = results
            .into_iter()
            .filter_map(|r| r.map_err(|e| errors.add(format!("register_{}", e.key()))).ok())
            .map(|a| a.token)
            .collect();
        (tokens, errors)
    }

    /// Creates a session over REST.
    pub async fn create_session(&self, token: &str) -> Result<Session, Error> {
        let response = self
            .http
            .post(self.url("/api/v1/chat/sessions"))
            .bearer_auth(token)
            .json(&CreateSessionRequest { title: Some("relay-loadtest".into()), ..Default::default() })
            .send()
            .await?;
        match response.status().as_u16() {
            201 => Ok(response.json().await?),
            status => Err(http_error(status, response).await),
        }
    }

    /// Opens a WebSocket authenticated by header and waits for `ready`; returns the
    /// connection and the time from the TCP connect to `ready`.
    pub async fn connect(&self, token: &str) -> Result<(Conn, Duration), Error> {
        let started = Instant::now();
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, self.open(token)).await.map_err(|_| Error::Timeout)??;
        Ok((conn, started.elapsed()))
    }

    async fn open(&self, token: &str) -> Result<Conn, Error> {
        let socket = if self.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
        let socket = socket.map_err(Error::Connect)?;
        if self.source_ips > 1 {
            let n = self.next_source.fetch_add(1, Ordering::Relaxed) % usize::from(self.source_ips);
            socket.bind((Ipv4Addr::new(127, 0, 0, 1 + n as u8), 0).into()).map_err(Error::Connect)?;
        }
        let tcp = socket.connect(self.addr).await.map_err(Error::Connect)?;
        tcp.set_nodelay(true).map_err(Error::Connect)?;
        let mut request = self.ws_url.as_str().into_client_request()?;
        let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| Error::Unexpected(e.to_string()))?;
        request.headers_mut().insert("authorization", bearer);
        // Small buffers, like the server's: 128 KiB each (the default) would make the load
        // generator, not the server, the memory limit of an idle-connection run.
        let config = WebSocketConfig::default().read_buffer_size(CLIENT_BUFFER).write_buffer_size(CLIENT_BUFFER);
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
            .await
            .map_err(Error::from_handshake)?;
        let mut conn = Conn { ws };
        match conn.recv().await? {
            ServerFrame::Ready { .. } => Ok(conn),
            other => Err(Error::Unexpected(format!("expected ready, got {other:?}"))),
        }
    }
}

/// The error of a REST response: its status and, if the body says, its code.
async fn http_error(status: u16, response: reqwest::Response) -> Error {
    let code = response.json::<ErrorResponse>().await.ok().map(|r| r.error.code);
    Error::Http { status, code }
}

/// One authenticated WebSocket connection.
#[derive(Debug)]
pub struct Conn {
    ws: WebSocketStream<TcpStream>,
}

impl Conn {
    /// Sends one frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), Error> {
        let text = serde_json::to_string(frame).map_err(|e| Error::Unexpected(e.to_string()))?;
        Ok(self.ws.send(Message::text(text)).await?)
    }

    /// Receives the next frame, answering pings on the way; a close is [`Error::Closed`].
    /// Cancel-safe (usable in `select!`).
    pub async fn recv(&mut self) -> Result<ServerFrame, Error> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).map_err(|e| Error::Unexpected(format!("{e}: {text}")));
                }
                Some(Ok(Message::Close(frame))) => return Err(Error::Closed(frame.map(|f| u16::from(f.code)))),
                Some(Ok(_)) => {}
                Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) | None => {
                    return Err(Error::Closed(None));
                }
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// [`Conn::recv`] within `limit`.
    pub async fn recv_timeout(&mut self, limit: Duration) -> Result<ServerFrame, Error> {
        tokio::time::timeout(limit, self.recv()).await.map_err(|_| Error::Timeout)?
    }

    /// Subscribes to a session and waits for its snapshot.
    pub async fn subscribe(&mut self, session_id: uuid::Uuid) -> Result<(), Error> {
        self.send(&ClientFrame::Subscribe { id: Some("subscribe".into()), session_id }).await?;
        loop {
            match self.recv_timeout(CONNECT_TIMEOUT).await? {
                ServerFrame::Subscribed { id: Some(id), .. } if id == "subscribe" => return Ok(()),
                ServerFrame::Error { id: Some(id), error, .. } if id == "subscribe" => {
                    return Err(Error::Frame(error.code));
                }
                _ => {}
            }
        }
    }

    /// Closes the connection (without waiting long for the server's answer).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

/// What a WebSocket failure was, in a word or two: an I/O error's kind (`connectionreset`,
/// `brokenpipe`, …), a protocol violation, a message over the size limit, …
fn ws_cause(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) => format!("io_{:?}", io.kind()).to_lowercase(),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed".into(),
        tungstenite::Error::Protocol(p) => {
            let debug = format!("{p:?}");
            format!("protocol_{}", debug.split(['(', ' ', '{']).next().unwrap_or_default().to_lowercase())
        }
        tungstenite::Error::Capacity(_) => "capacity".into(),
        tungstenite::Error::WriteBufferFull(_) => "write_buffer_full".into(),
        tungstenite::Error::Utf8(_) => "utf8".into(),
        _ => "other".into(),
    }
}
