//! The tab's one WebSocket: authenticated by its first `auth` frame, reconnected with
//! backoff and jitter when it drops, and resubscribed to the open session so a reply in
//! progress reappears whole and continues. Events of the open session are checked for
//! gaps in `seq`; a gap resubscribes (the snapshot replaces what was missed) instead of
//! showing a broken reply.
//!
//! Pieces of a reply (`delta` frames) reach the state at most once per animation frame,
//! joined: a reply streaming at a thousand tokens a second is drawn sixty times a second,
//! not a thousand. Any other frame first lets the pieces waiting before it through, so the
//! order of events is kept.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};
use gloo_net::websocket::futures::WebSocket;
use gloo_net::websocket::{Message, WebSocketError};
use relay_protocol::{ClientFrame, ServerFrame};
use uuid::Uuid;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use yew::Callback;

use crate::sequence::{Sequences, Verdict, backoff_ms};
use crate::state::{Action, Connection};

/// Close codes the server uses (see docs/PROTOCOL.md).
const CLOSE_UNAUTHORIZED: u16 = 4401;
const CLOSE_CHAT_DISABLED: u16 = 4404;
const CLOSE_TOO_MANY_CONNECTIONS: u16 = 4409;
/// The server closed the connection because this tab read too slowly (its queue filled).
const CLOSE_TOO_SLOW: u16 = 4429;

/// The connection of this tab; cheap to clone.
#[derive(Clone)]
pub struct Socket {
    inner: Rc<Inner>,
}

struct Inner {
    token: String,
    dispatch: Callback<Action>,
    outbox: RefCell<Option<mpsc::UnboundedSender<String>>>,
    /// The session this tab shows, resubscribed after every reconnect.
    watching: Cell<Option<Uuid>>,
    /// The last `seq` seen per session, to notice gaps.
    seqs: RefCell<Sequences>,
    stopped: Cell<bool>,
    next_id: Cell<u64>,
    /// Ends the wait before the next attempt (the user asked to retry now).
    wake: RefCell<Option<oneshot::Sender<()>>>,
    /// Pieces of a reply waiting for the next animation frame, joined into one `delta`.
    pending: RefCell<Option<ServerFrame>>,
    /// The animation frame and the timer scheduled to flush the pending pieces, if any:
    /// whichever comes first cancels the other, so a piece is rendered once.
    flush_scheduled: Cell<Option<(i32, i32)>>,
    /// Lets the pending pieces through; called by the next animation frame, and by a timer
    /// for a hidden tab (which draws no frames). Made once per login; left to the garbage
    /// collector (a callback still scheduled may run after the connection is gone).
    flusher: RefCell<Option<js_sys::Function>>,
}

impl PartialEq for Socket {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Socket {
    /// Opens the connection (and keeps it open until [`Socket::stop`]).
    pub fn start(token: String, dispatch: Callback<Action>) -> Socket {
        let socket = Socket {
            inner: Rc::new(Inner {
                token,
                dispatch,
                outbox: RefCell::new(None),
                watching: Cell::new(None),
                seqs: RefCell::new(Sequences::default()),
                stopped: Cell::new(false),
                next_id: Cell::new(0),
                wake: RefCell::new(None),
                pending: RefCell::new(None),
                flush_scheduled: Cell::new(None),
                flusher: RefCell::new(None),
            }),
        };
        // The flusher holds the connection weakly: the connection owns it.
        let weak = Rc::downgrade(&socket.inner);
        let flusher = Closure::<dyn FnMut()>::new(move || {
            if let Some(inner) = weak.upgrade() {
                Socket { inner }.flush();
            }
        });
        *socket.inner.flusher.borrow_mut() = Some(flusher.into_js_value().unchecked_into());
        let running = socket.clone();
        wasm_bindgen_futures::spawn_local(async move { running.run().await });
        socket
    }

    /// Closes for good (logout): the connection is closed at once, and no frame that
    /// arrives after this reaches the state.
    pub fn stop(&self) {
        self.inner.stopped.set(true);
        self.inner.outbox.borrow_mut().take();
        self.inner.pending.borrow_mut().take();
    }

    /// Connects now instead of at the end of the wait before the next attempt.
    pub fn retry_now(&self) {
        if let Some(wake) = self.inner.wake.borrow_mut().take() {
            let _ = wake.send(());
        }
    }

    /// A fresh request id.
    pub fn request_id(&self) -> String {
        let id = self.inner.next_id.get() + 1;
        self.inner.next_id.set(id);
        format!("r{id}")
    }

    /// A fresh idempotency key for a send, edit or regenerate (`client_message_id`): 128
    /// random bits, so a request repeated after a lost answer is recognised as a repeat.
    pub fn new_key() -> String {
        let mut bytes = [0u8; 16];
        let filled = web_sys::window()
            .and_then(|w| w.crypto().ok())
            .is_some_and(|crypto| crypto.get_random_values_with_u8_array(&mut bytes).is_ok());
        if !filled {
            for byte in &mut bytes {
                *byte = (js_sys::Math::random() * 256.0) as u8;
            }
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Sends a frame if connected; returns false when it could not be sent now.
    pub fn send(&self, frame: &ClientFrame) -> bool {
        let Ok(text) = serde_json::to_string(frame) else { return false };
        match self.inner.outbox.borrow().as_ref() {
            Some(outbox) => outbox.unbounded_send(text).is_ok(),
            None => false,
        }
    }

    /// Shows `session` in this tab: unsubscribes the one shown before, subscribes this one.
    pub fn watch(&self, session: Option<Uuid>) {
        let before = self.inner.watching.replace(session);
        if before == session {
            return;
        }
        if let Some(old) = before {
            self.inner.seqs.borrow_mut().forget(old);
            self.send(&ClientFrame::Unsubscribe { id: None, session_id: old });
        }
        if let Some(new) = session {
            self.subscribe(new);
        }
    }

    fn subscribe(&self, session_id: Uuid) {
        self.inner.seqs.borrow_mut().forget(session_id);
        self.send(&ClientFrame::Subscribe { id: Some(self.request_id()), session_id });
    }

    /// Connects, reads until the connection drops, waits, again; until stopped.
    async fn run(&self) {
        let mut attempt: u32 = 0;
        while !self.inner.stopped.get() {
            self.inner.dispatch.emit(Action::Connection(Connection::Connecting));
            let mut closed_with = None;
            if let Ok(ws) = WebSocket::open(&url()) {
                let (mut sink, mut stream) = ws.split();
                let (outbox, mut queued) = mpsc::unbounded::<String>();
                // The first frame authenticates; nothing else goes out before it.
                let auth = ClientFrame::Auth { token: self.inner.token.clone() };
                let _ = outbox.unbounded_send(serde_json::to_string(&auth).unwrap_or_default());
                *self.inner.outbox.borrow_mut() = Some(outbox);
                wasm_bindgen_futures::spawn_local(async move {
                    while let Some(text) = queued.next().await {
                        if sink.send(Message::Text(text)).await.is_err() {
                            break;
                        }
                    }
                    // The outbox is gone: the connection ended, or the user logged out and
                    // the server must let it go now, not at its next frame.
                    let _ = sink.close().await;
                });
                while let Some(next) = stream.next().await {
                    // After a logout nothing that arrives is the next user's business.
                    if self.inner.stopped.get() {
                        break;
                    }
                    match next {
                        Ok(Message::Text(text)) => match serde_json::from_str::<ServerFrame>(&text) {
                            Ok(frame) => {
                                if matches!(frame, ServerFrame::Ready { .. }) {
                                    attempt = 0;
                                    self.inner.dispatch.emit(Action::Connection(Connection::Online));
                                    if let Some(session) = self.inner.watching.get() {
                                        self.subscribe(session);
                                    }
                                }
                                self.receive(frame);
                            }
                            Err(e) => web_sys::console::warn_1(&format!("unreadable frame: {e}").into()),
                        },
                        Ok(Message::Bytes(_)) => {}
                        Err(WebSocketError::ConnectionClose(event)) => {
                            closed_with = Some(event.code);
                            break;
                        }
                        Err(_) => break,
                    }
                    if self.inner.stopped.get() {
                        break;
                    }
                }
                self.inner.outbox.borrow_mut().take();
            }
            if self.inner.stopped.get() {
                return;
            }
            match closed_with {
                Some(CLOSE_UNAUTHORIZED) => {
                    self.stop();
                    self.inner
                        .dispatch
                        .emit(Action::LoggedOut(Some("Your session expired; please log in again.".into())));
                    return;
                }
                Some(CLOSE_CHAT_DISABLED) => {
                    self.stop();
                    self.inner.dispatch.emit(Action::Toast("Chat is not available for your account.".into(), None));
                    return;
                }
                Some(CLOSE_TOO_SLOW) => {
                    self.inner.dispatch.emit(Action::Toast(
                        "The connection fell behind (this tab read too slowly) and was closed; reconnecting.".into(),
                        None,
                    ));
                    // Not at once: whatever slowed the tab down may still be going on.
                    attempt = attempt.max(3);
                }
                Some(CLOSE_TOO_MANY_CONNECTIONS) => {
                    self.inner.dispatch.emit(Action::Toast("Too many open tabs; close one to reconnect.".into(), None));
                    attempt = attempt.max(5);
                }
                _ => {}
            }
            let wait = backoff(attempt);
            attempt += 1;
            let retry_at_ms = js_sys::Date::now() + f64::from(wait);
            self.inner.dispatch.emit(Action::Connection(Connection::Offline { retry_at_ms }));
            let (wake, woken) = oneshot::channel();
            *self.inner.wake.borrow_mut() = Some(wake);
            futures::future::select(gloo_timers::future::TimeoutFuture::new(wait), woken).await;
            self.inner.wake.borrow_mut().take();
        }
    }

    /// Passes a frame on, unless it reveals a gap in its session's events: then the session
    /// is subscribed again and its snapshot replaces what was missed.
    fn receive(&self, frame: ServerFrame) {
        // The session's live state was lost on the server: start again from its store.
        if let ServerFrame::Error { id: None, session_id: Some(session_id), .. } = &frame
            && self.inner.watching.get() == Some(*session_id)
        {
            self.subscribe(*session_id);
        }
        let verdict = self.inner.seqs.borrow_mut().observe(&frame);
        match verdict {
            Verdict::Apply => self.apply(frame),
            Verdict::Resubscribe(session_id) => {
                self.flush();
                self.subscribe(session_id);
            }
        }
    }

    /// Hands a frame to the state: a piece of a reply joins the pieces waiting for the next
    /// animation frame; anything else goes at once, after them.
    fn apply(&self, frame: ServerFrame) {
        let ServerFrame::Delta { session_id, seq, message_id, text } = frame else {
            self.flush();
            self.inner.dispatch.emit(Action::Frame(frame));
            return;
        };
        let joined = match self.inner.pending.borrow_mut().as_mut() {
            Some(ServerFrame::Delta { session_id: s, seq: last, message_id: m, text: waiting })
                if *s == session_id && *m == message_id =>
            {
                waiting.push_str(&text);
                *last = seq;
                true
            }
            _ => false,
        };
        if !joined {
            self.flush();
            *self.inner.pending.borrow_mut() = Some(ServerFrame::Delta { session_id, seq, message_id, text });
            self.schedule_flush();
        }
    }

    /// Lets the waiting pieces through now.
    fn flush(&self) {
        if let (Some((frame, timer)), Some(window)) = (self.inner.flush_scheduled.take(), web_sys::window()) {
            let _ = window.cancel_animation_frame(frame);
            window.clear_timeout_with_handle(timer);
        }
        let pending = self.inner.pending.borrow_mut().take();
        if let Some(frame) = pending {
            self.inner.dispatch.emit(Action::Frame(frame));
        }
    }

    /// Lets the waiting pieces through at the next animation frame, or after a tenth of a
    /// second in a tab that draws none (hidden).
    fn schedule_flush(&self) {
        if self.inner.flush_scheduled.get().is_some() {
            return;
        }
        let (Some(window), Some(flusher)) = (web_sys::window(), self.inner.flusher.borrow().clone()) else {
            return self.flush();
        };
        let frame = window.request_animation_frame(&flusher);
        let timer = window.set_timeout_with_callback_and_timeout_and_arguments_0(&flusher, 100);
        match (frame, timer) {
            (Ok(frame), Ok(timer)) => self.inner.flush_scheduled.set(Some((frame, timer))),
            _ => self.flush(),
        }
    }
}

/// The WebSocket URL of the server that served this page.
fn url() -> String {
    let location = web_sys::window().map(|w| w.location());
    let host = location.as_ref().and_then(|l| l.host().ok()).unwrap_or_default();
    let secure = location.and_then(|l| l.protocol().ok()).is_some_and(|p| p == "https:");
    format!("{}://{host}/api/v1/ws", if secure { "wss" } else { "ws" })
}

/// Milliseconds before the next reconnect attempt.
fn backoff(attempt: u32) -> u32 {
    backoff_ms(attempt, js_sys::Math::random())
}
