//! The client's state and every change to it, as a reducer: frames from the server and
//! what the user does both become [`Action`]s. Pure logic (no browser APIs), so it is
//! tested natively.

use std::rc::Rc;

use relay_protocol::{
    ErrorBody, ErrorCode, Generating, Message, ModelInfo, ModelList, Quota, ServerFrame, Session, ShareStatus, User,
};
use uuid::Uuid;

/// Where the WebSocket stands, for the status indicator.
#[derive(Clone, Debug, PartialEq)]
pub enum Connection {
    /// Opening or authenticating.
    Connecting,
    /// Authenticated and live.
    Online,
    /// Lost; the next attempt is due at a time (unless the user asks to retry now).
    Offline {
        /// When the next attempt is due (milliseconds since the epoch, as `Date.now()`).
        retry_at_ms: f64,
    },
}

/// A message shown for a while at the bottom of the screen.
#[derive(Clone, Debug, PartialEq)]
pub struct Toast {
    /// Identifies it (to dismiss it).
    pub id: u32,
    /// What to say.
    pub text: String,
    /// What a "Retry" button sends again, when retrying makes sense.
    pub retry: Option<Retry>,
}

/// Something the user can ask again from a toast.
#[derive(Clone, Debug, PartialEq)]
pub enum Retry {
    /// Send this text to this session again.
    Send {
        /// The session.
        session_id: Uuid,
        /// The text.
        content: String,
        /// The idempotency key of the send that failed: sent again with it, a send the
        /// server did store is answered as before instead of stored twice.
        key: String,
    },
    /// Load the session list again.
    LoadSessions,
}

/// Why sending is off, and until when (milliseconds since the epoch; `None`: until a
/// `quota` frame says otherwise).
#[derive(Clone, Debug, PartialEq)]
pub struct Blocked {
    /// The reason, shown beside the disabled composer.
    pub reason: String,
    /// When sending may work again.
    pub until_ms: Option<f64>,
}

/// A send the server has not acknowledged yet, kept so a refusal gives its text back.
#[derive(Clone, Debug, PartialEq)]
pub struct InFlight {
    /// The request id of the `send` frame.
    pub request_id: String,
    /// The session it went to.
    pub session_id: Uuid,
    /// What the user wrote.
    pub content: String,
    /// Its idempotency key (`client_message_id`).
    pub key: String,
}

/// How many unacknowledged sends are remembered (the oldest is forgotten past it).
const MAX_IN_FLIGHT: usize = 16;

/// The open session: its messages and the reply in progress.
#[derive(Clone, Debug, PartialEq)]
pub struct Chat {
    /// The session.
    pub session: Session,
    /// Its messages, oldest first (superseded ones included, marked); shared, so a new
    /// state costs a pointer per message and an unchanged message is seen unchanged by
    /// pointer.
    pub messages: Vec<Rc<Message>>,
    /// The reply being generated, if any.
    pub generating: Option<Generating>,
    /// Whether older messages exist beyond the first one shown.
    pub has_older: bool,
    /// Whether the snapshot arrived (before it, the view shows a spinner).
    pub loaded: bool,
    /// A message to bring into view once it is loaded (a search result's).
    pub focus: Option<Uuid>,
    /// Its share link, if it has a working one (with how many watch it).
    pub share: Option<ShareStatus>,
}

/// The whole client state.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Model {
    /// The logged-in user and their token.
    pub auth: Option<(User, String)>,
    /// A message for the login screen (e.g. why the user was logged out).
    pub notice: Option<String>,
    /// The WebSocket's state.
    pub connection: Option<Connection>,
    /// Which model answers (from `ready`).
    pub model: Option<ModelInfo>,
    /// The models a session may use (loaded after login).
    pub models: Option<ModelList>,
    /// Today's quota.
    pub quota: Option<Quota>,
    /// The user's sessions, most recently active first (shared: a new state does not copy
    /// the list unless it changes).
    pub sessions: Rc<Vec<Session>>,
    /// How many sessions the user has in all.
    pub sessions_total: u64,
    /// How many pages of sessions are loaded.
    pub sessions_pages: u32,
    /// The open session.
    pub chat: Option<Chat>,
    /// Toasts on screen.
    pub toasts: Vec<Toast>,
    /// Why sending is off, if it is.
    pub blocked: Option<Blocked>,
    /// Sends waiting for their `ack`.
    pub in_flight: Vec<InFlight>,
    /// A send the server refused: its text goes back into that session's composer.
    pub returned: Option<InFlight>,
    /// Whether the session list is open over the chat (phone width).
    pub menu_open: bool,
    /// Whether the search box is open over everything.
    pub search_open: bool,
    next_toast: u32,
}

/// Everything that changes the state.
#[derive(Clone, Debug)]
pub enum Action {
    /// A token was obtained (login, register, or read from storage).
    LoggedIn {
        /// Who.
        user: User,
        /// The bearer token.
        token: String,
    },
    /// Logged out, with a reason for the login screen.
    LoggedOut(Option<String>),
    /// The WebSocket changed state.
    Connection(Connection),
    /// A frame from the server.
    Frame(ServerFrame),
    /// Open a session at one of its messages (a search result).
    OpenAt {
        /// The session.
        session: Session,
        /// The message to bring into view.
        message_id: Uuid,
    },
    /// The message to bring into view is in view (or cannot be).
    Focused,
    /// The models a session may use arrived.
    Models(ModelList),
    /// A session's share link is now this (`None`: it has none).
    Share {
        /// The session.
        session_id: Uuid,
        /// The link.
        share: Option<ShareStatus>,
    },
    /// Open or close the search box.
    Search(bool),
    /// A page of sessions arrived over REST.
    SessionsPage {
        /// The page number.
        page: u32,
        /// Its sessions.
        sessions: Vec<Session>,
        /// The user's total.
        total: u64,
    },
    /// The user opened a session (its snapshot follows).
    Open(Session),
    /// The user closed the open session (e.g. a new chat is being made).
    Close,
    /// The session list was opened or closed over the chat (phone width).
    Menu(bool),
    /// Older messages of the open session arrived.
    Older {
        /// The session.
        session_id: Uuid,
        /// The messages, oldest first.
        messages: Vec<Message>,
        /// Whether there are more before them.
        has_more: bool,
    },
    /// Show a toast.
    Toast(String, Option<Retry>),
    /// Dismiss a toast.
    Dismiss(u32),
    /// Sending may work again (a rate limit's wait passed).
    Unblock,
    /// A `send` frame went out; until its `ack`, a refusal gives the text back.
    Sending(InFlight),
    /// The composer took back the refused text.
    TookReturned,
}

impl Model {
    /// Applies an action; a new state (`Rc`) only when something changed.
    pub fn reduce(self: Rc<Self>, action: Action, now_ms: f64) -> Rc<Self> {
        let mut next = (*self).clone();
        next.apply(action, now_ms);
        if next == *self { self } else { Rc::new(next) }
    }

    fn apply(&mut self, action: Action, now_ms: f64) {
        match action {
            Action::LoggedIn { user, token } => {
                *self = Model { auth: Some((user, token)), next_toast: self.next_toast, ..Model::default() };
            }
            Action::LoggedOut(notice) => *self = Model { notice, ..Model::default() },
            Action::Connection(state) => self.connection = Some(state),
            Action::Frame(frame) => self.frame(frame, now_ms),
            Action::SessionsPage { page, sessions, total } => {
                // Merged, never replacing the list: a session that arrived by an event while
                // the page was being read (made in another tab just now) is not in the page,
                // and must stay.
                let list = Rc::make_mut(&mut self.sessions);
                for session in sessions {
                    match list.iter().position(|s| s.id == session.id) {
                        Some(i) if page <= 1 => list[i] = session,
                        Some(_) => {}
                        None => list.push(session),
                    }
                }
                list.sort_by_key(|s| std::cmp::Reverse(s.updated_at));
                self.sessions_total = total.max(list.len() as u64);
                self.sessions_pages = self.sessions_pages.max(page);
            }
            Action::Open(session) => {
                // Choosing a session, even the one open, closes the list over the chat.
                self.menu_open = false;
                if self.chat.as_ref().is_none_or(|c| c.session.id != session.id) {
                    self.chat = Some(Chat {
                        session,
                        messages: Vec::new(),
                        generating: None,
                        has_older: false,
                        loaded: false,
                        focus: None,
                        share: None,
                    });
                }
            }
            Action::Search(open) => self.search_open = open,
            Action::OpenAt { session, message_id } => {
                self.search_open = false;
                self.apply(Action::Open(session), now_ms);
                if let Some(chat) = self.chat.as_mut() {
                    chat.focus = Some(message_id);
                }
            }
            Action::Focused => {
                if let Some(chat) = self.chat.as_mut() {
                    chat.focus = None;
                }
            }
            Action::Models(models) => self.models = Some(models),
            Action::Share { session_id, share } => {
                if let Some(chat) = self.chat_of(session_id) {
                    // A viewer count of an older link can arrive after a newer link was made.
                    let older = match (&chat.share, &share) {
                        (Some(known), Some(new)) => new.id != known.id && new.created_at < known.created_at,
                        _ => false,
                    };
                    if !older {
                        chat.share = share;
                    }
                }
            }
            Action::Close => {
                self.chat = None;
                self.menu_open = false;
            }
            Action::Menu(open) => self.menu_open = open,
            Action::Older { session_id, messages, has_more } => {
                if let Some(chat) = self.chat.as_mut().filter(|c| c.session.id == session_id) {
                    let mut older: Vec<Rc<Message>> = messages
                        .into_iter()
                        .filter(|m| !chat.messages.iter().any(|c| c.id == m.id))
                        .map(Rc::new)
                        .collect();
                    older.append(&mut chat.messages);
                    chat.messages = older;
                    chat.has_older = has_more;
                }
            }
            Action::Toast(text, retry) => self.toast(text, retry),
            Action::Dismiss(id) => self.toasts.retain(|t| t.id != id),
            Action::Unblock => {
                if self.blocked.as_ref().is_some_and(|b| b.until_ms.is_some_and(|u| u <= now_ms)) {
                    self.blocked = None;
                }
            }
            Action::Sending(send) => {
                self.in_flight.push(send);
                let excess = self.in_flight.len().saturating_sub(MAX_IN_FLIGHT);
                self.in_flight.drain(..excess);
            }
            Action::TookReturned => self.returned = None,
        }
    }

    fn toast(&mut self, text: String, retry: Option<Retry>) {
        self.next_toast += 1;
        self.toasts.push(Toast { id: self.next_toast, text, retry });
        let excess = self.toasts.len().saturating_sub(4);
        self.toasts.drain(..excess);
    }

    fn chat_of(&mut self, session_id: Uuid) -> Option<&mut Chat> {
        self.chat.as_mut().filter(|c| c.session.id == session_id)
    }

    fn frame(&mut self, frame: ServerFrame, now_ms: f64) {
        match frame {
            ServerFrame::Ready { user, quota, model, .. } => {
                if let Some((known, _)) = self.auth.as_mut() {
                    *known = user;
                }
                self.model = model;
                self.set_quota(quota);
            }
            ServerFrame::Subscribed { session, messages, generating, has_older, .. } => {
                if let Some(chat) = self.chat_of(session.id) {
                    chat.has_older = has_older;
                    chat.session = session.clone();
                    chat.messages = messages.into_iter().map(Rc::new).collect();
                    chat.generating = generating;
                    chat.loaded = true;
                }
                self.upsert_session(session);
            }
            ServerFrame::Message { session_id, message, .. } => {
                if let Some(chat) = self.chat_of(session_id) {
                    if chat.generating.as_ref().is_some_and(|g| g.message_id == message.id) {
                        chat.generating = None;
                    }
                    match chat.messages.iter_mut().find(|m| m.id == message.id) {
                        Some(known) => *known = Rc::new(message),
                        None => chat.messages.push(Rc::new(message)),
                    }
                }
                self.bump_session(session_id);
            }
            ServerFrame::Superseded { session_id, message_ids, by, .. } => {
                if let Some(chat) = self.chat_of(session_id) {
                    for message in chat.messages.iter_mut().filter(|m| message_ids.contains(&m.id)) {
                        let message = Rc::make_mut(message);
                        message.superseded = true;
                        message.replaced_by = by;
                    }
                }
            }
            ServerFrame::GenerationStarted { session_id, message_id, .. } => {
                if let Some(chat) = self.chat_of(session_id) {
                    chat.generating = Some(Generating { message_id, content: String::new() });
                }
            }
            ServerFrame::Delta { session_id, message_id, text, .. } => {
                if let Some(chat) = self.chat_of(session_id) {
                    match chat.generating.as_mut() {
                        Some(g) if g.message_id == message_id => g.content.push_str(&text),
                        _ => chat.generating = Some(Generating { message_id, content: text }),
                    }
                }
            }
            ServerFrame::Done { session_id, message_id, error, .. } => {
                if let Some(chat) = self.chat_of(session_id)
                    && chat.generating.as_ref().is_some_and(|g| g.message_id == message_id)
                {
                    chat.generating = None;
                }
                if let Some(error) = error {
                    self.toast(format!("The reply failed: {}", error.message), None);
                }
            }
            ServerFrame::SessionCreated { session, .. } | ServerFrame::SessionUpdated { session, .. } => {
                if let Some(chat) = self.chat_of(session.id) {
                    chat.session = session.clone();
                }
                self.upsert_session(session);
            }
            ServerFrame::SessionDeleted { session_id, .. } => {
                let before = self.sessions.len();
                Rc::make_mut(&mut self.sessions).retain(|s| s.id != session_id);
                self.sessions_total = self.sessions_total.saturating_sub((before - self.sessions.len()) as u64);
                if self.chat.as_ref().is_some_and(|c| c.session.id == session_id) {
                    self.chat = None;
                }
            }
            ServerFrame::Sessions { sessions, total, page, .. } => {
                self.apply(Action::SessionsPage { page, sessions, total }, now_ms);
            }
            ServerFrame::Quota { quota } => self.set_quota(quota),
            ServerFrame::Error { error, session_id, id } => self.error(error, session_id, id, now_ms),
            ServerFrame::Ack { id, .. } => self.in_flight.retain(|s| Some(&s.request_id) != id.as_ref()),
            ServerFrame::ShareUpdated { session_id, share } => self.apply(Action::Share { session_id, share }, now_ms),
            ServerFrame::Pong { .. } | ServerFrame::Unsubscribed { .. } => {}
        }
    }

    fn set_quota(&mut self, quota: Quota) {
        let exhausted = quota.remaining == Some(0);
        let resets = quota.resets_at.format("%H:%M UTC").to_string();
        self.quota = Some(quota);
        if exhausted {
            self.blocked =
                Some(Blocked { reason: format!("Daily quota used up; it resets at {resets}."), until_ms: None });
        } else if self.blocked.as_ref().is_some_and(|b| b.until_ms.is_none()) {
            self.blocked = None;
        }
    }

    fn error(&mut self, error: ErrorBody, session_id: Option<Uuid>, id: Option<String>, now_ms: f64) {
        let until_ms = error.retry_after_ms.map(|ms| now_ms + ms as f64);
        // A refused send's text goes back to its composer rather than being lost.
        if let Some(i) = self.in_flight.iter().position(|s| Some(&s.request_id) == id.as_ref()) {
            self.returned = Some(self.in_flight.remove(i));
        }
        match error.code {
            ErrorCode::RateLimited => {
                let wait =
                    error.retry_after_ms.map_or(String::new(), |ms| format!(" in {}s", ms.div_ceil(1000).max(1)));
                self.blocked = Some(Blocked { reason: format!("Sending too fast; try again{wait}."), until_ms });
            }
            ErrorCode::QuotaExceeded => {
                self.blocked = Some(Blocked { reason: "Daily quota used up.".into(), until_ms });
            }
            ErrorCode::StorageFull => {
                self.blocked = Some(Blocked { reason: error.message.clone(), until_ms: None });
            }
            // The session's live state was lost (no request id): the socket resubscribes.
            ErrorCode::Internal | ErrorCode::Unavailable if id.is_none() && session_id.is_some() => {}
            _ => self.toast(error.message, None),
        }
    }

    /// Adds or refreshes a session, keeping the list most recently active first.
    fn upsert_session(&mut self, session: Session) {
        let list = Rc::make_mut(&mut self.sessions);
        match list.iter().position(|s| s.id == session.id) {
            Some(i) => list[i] = session,
            None => {
                list.push(session);
                self.sessions_total += 1;
            }
        }
        list.sort_by_key(|s| std::cmp::Reverse(s.updated_at));
    }

    /// Moves a session to the top when it gets a message.
    fn bump_session(&mut self, session_id: Uuid) {
        if let Some(i) = self.sessions.iter().position(|s| s.id == session_id).filter(|&i| i > 0) {
            let list = Rc::make_mut(&mut self.sessions);
            let session = list.remove(i);
            list.insert(0, session);
        }
    }

    /// Whether sending is possible now.
    pub fn can_send(&self) -> bool {
        self.blocked.is_none() && self.connection == Some(Connection::Online)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use relay_protocol::{MessageStatus, Role, UserRole};

    use super::*;

    fn t() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn session(id: u128) -> Session {
        Session::new(Uuid::from_u128(id), format!("s{id}"), t())
    }

    fn message(id: u128, session: u128, role: Role) -> Message {
        Message {
            id: Uuid::from_u128(id),
            session_id: Uuid::from_u128(session),
            role,
            content: format!("m{id}"),
            token_count: None,
            status: MessageStatus::Complete,
            created_at: t(),
            superseded: false,
            model: None,
            replaced_by: None,
        }
    }

    fn logged_in() -> Rc<Model> {
        let user = User { id: Uuid::from_u128(9), username: "u".into(), role: UserRole::User };
        Rc::new(Model::default()).reduce(Action::LoggedIn { user, token: "t".into() }, 0.0)
    }

    #[test]
    fn a_session_heard_of_while_the_first_page_loads_stays_listed() {
        let m = logged_in().reduce(Action::Frame(ServerFrame::SessionCreated { id: None, session: session(2) }), 0.0);
        let m = m.reduce(Action::SessionsPage { page: 1, sessions: vec![session(1)], total: 1 }, 0.0);
        let mut ids: Vec<u128> = m.sessions.iter().map(|s| s.id.as_u128()).collect();
        ids.sort();
        assert_eq!(ids, [1, 2]);
        assert_eq!(m.sessions_total, 2);
    }

    #[test]
    fn choosing_a_session_closes_the_list_over_the_chat() {
        let m = logged_in().reduce(Action::Open(session(1)), 0.0).reduce(Action::Menu(true), 0.0);
        assert!(m.menu_open);
        let m = m.reduce(Action::Open(session(1)), 0.0);
        assert!(!m.menu_open, "the session already open, chosen again");
        let m = m.reduce(Action::Menu(true), 0.0).reduce(Action::Open(session(2)), 0.0);
        assert!(!m.menu_open, "another session");
        let m = m.reduce(Action::Menu(true), 0.0).reduce(Action::Close, 0.0);
        assert!(!m.menu_open, "a new chat");
    }

    #[test]
    fn a_search_result_opens_its_session_at_the_message_until_it_is_in_view() {
        let found = Uuid::from_u128(77);
        let m = logged_in().reduce(Action::Search(true), 0.0);
        assert!(m.search_open);
        let m = m.reduce(Action::OpenAt { session: session(1), message_id: found }, 0.0);
        assert!(!m.search_open, "opening a result closes the search box");
        let chat = m.chat.as_ref().unwrap();
        assert_eq!((chat.session.id, chat.focus), (session(1).id, Some(found)));
        // Another result in the session already open keeps what is loaded.
        let m = m.reduce(Action::Older { session_id: session(1).id, messages: vec![], has_more: false }, 0.0);
        let m = m.reduce(Action::OpenAt { session: session(1), message_id: Uuid::from_u128(78) }, 0.0);
        assert_eq!(m.chat.as_ref().unwrap().focus, Some(Uuid::from_u128(78)));
        let m = m.reduce(Action::Focused, 0.0);
        assert_eq!(m.chat.as_ref().unwrap().focus, None);
        // Opening a session by hand brings nothing into view.
        let m = m
            .reduce(Action::OpenAt { session: session(1), message_id: found }, 0.0)
            .reduce(Action::Open(session(2)), 0.0);
        assert_eq!(m.chat.as_ref().unwrap().focus, None);
    }

    #[test]
    fn a_reply_streams_then_lands_in_the_history() {
        let mut m = logged_in().reduce(Action::Open(session(1)), 0.0);
        let sid = Uuid::from_u128(1);
        m = m.reduce(
            Action::Frame(ServerFrame::Subscribed {
                id: None,
                session: session(1),
                messages: vec![message(10, 1, Role::User)],
                seq: 3,
                generating: Some(Generating { message_id: Uuid::from_u128(11), content: "Hel".into() }),
                has_older: false,
            }),
            0.0,
        );
        m = m.reduce(
            Action::Frame(ServerFrame::Delta {
                session_id: sid,
                seq: 4,
                message_id: Uuid::from_u128(11),
                text: "lo".into(),
            }),
            0.0,
        );
        assert_eq!(m.chat.as_ref().unwrap().generating.as_ref().unwrap().content, "Hello");
        let mut reply = message(11, 1, Role::Assistant);
        reply.content = "Hello".into();
        m = m.reduce(Action::Frame(ServerFrame::Message { session_id: sid, seq: 5, message: reply }), 0.0);
        let chat = m.chat.as_ref().unwrap();
        assert!(chat.generating.is_none());
        assert_eq!(chat.messages.len(), 2);
        assert_eq!(chat.messages[1].content, "Hello");
    }

    #[test]
    fn other_tabs_keep_the_sidebar_live() {
        let mut m = logged_in().reduce(Action::SessionsPage { page: 1, sessions: vec![session(1)], total: 1 }, 0.0);
        m = m.reduce(Action::Frame(ServerFrame::SessionCreated { id: None, session: session(2) }), 0.0);
        assert_eq!(m.sessions.len(), 2);
        assert_eq!(m.sessions_total, 2);
        let mut renamed = session(1);
        renamed.title = "Renamed".into();
        m = m.reduce(Action::Frame(ServerFrame::SessionUpdated { id: None, session: renamed }), 0.0);
        assert!(m.sessions.iter().any(|s| s.title == "Renamed"));
        m = m.reduce(Action::Open(session(2)), 0.0);
        m = m.reduce(Action::Frame(ServerFrame::SessionDeleted { id: None, session_id: Uuid::from_u128(2) }), 0.0);
        assert_eq!(m.sessions.len(), 1);
        assert!(m.chat.is_none(), "the open session was deleted elsewhere");
    }

    #[test]
    fn limits_block_sending_with_a_reason() {
        let mut m = logged_in().reduce(Action::Connection(Connection::Online), 0.0);
        assert!(m.can_send());
        let error = ErrorBody { code: ErrorCode::RateLimited, message: "slow".into(), retry_after_ms: Some(3000) };
        m = m.reduce(Action::Frame(ServerFrame::Error { id: Some("1".into()), session_id: None, error }), 1000.0);
        assert!(!m.can_send());
        assert_eq!(m.blocked.as_ref().unwrap().until_ms, Some(4000.0));
        m = m.reduce(Action::Unblock, 2000.0);
        assert!(!m.can_send(), "not yet");
        m = m.reduce(Action::Unblock, 4000.0);
        assert!(m.can_send());
        let quota = Quota {
            messages_today: 5,
            limit: Some(5),
            remaining: Some(0),
            resets_at: t(),
            prompt_tokens_today: 0,
            completion_tokens_today: 0,
        };
        m = m.reduce(Action::Frame(ServerFrame::Quota { quota }), 0.0);
        assert!(m.blocked.as_ref().unwrap().reason.contains("quota"));
    }

    #[test]
    fn superseded_messages_are_marked_and_older_ones_prepended() {
        let mut m = logged_in().reduce(Action::Open(session(1)), 0.0);
        let sid = Uuid::from_u128(1);
        m = m.reduce(
            Action::Frame(ServerFrame::Subscribed {
                id: None,
                session: session(1),
                messages: vec![message(10, 1, Role::User), message(11, 1, Role::Assistant)],
                seq: 2,
                generating: None,
                has_older: true,
            }),
            0.0,
        );
        m = m.reduce(
            Action::Frame(ServerFrame::Superseded {
                session_id: sid,
                seq: 3,
                message_ids: vec![Uuid::from_u128(11)],
                by: Some(Uuid::from_u128(12)),
            }),
            0.0,
        );
        assert!(m.chat.as_ref().unwrap().messages[1].superseded);
        assert_eq!(m.chat.as_ref().unwrap().messages[1].replaced_by, Some(Uuid::from_u128(12)));
        assert!(m.chat.as_ref().unwrap().has_older, "as the snapshot says, not guessed from its length");
        m = m.reduce(
            Action::Older {
                session_id: sid,
                messages: vec![message(1, 1, Role::User), message(10, 1, Role::User)],
                has_more: false,
            },
            0.0,
        );
        let ids: Vec<u128> = m.chat.as_ref().unwrap().messages.iter().map(|m| m.id.as_u128()).collect();
        assert_eq!(ids, [1, 10, 11]);
        assert!(!m.chat.as_ref().unwrap().has_older);
        // Logging out forgets everything but the notice.
        m = m.reduce(Action::LoggedOut(Some("expired".into())), 0.0);
        assert!(m.auth.is_none() && m.chat.is_none() && m.notice.as_deref() == Some("expired"));
    }

    #[test]
    fn a_refused_send_gives_its_text_back_and_an_acked_one_is_forgotten() {
        let sid = Uuid::from_u128(1);
        let sending = |id: &str, text: &str| {
            Action::Sending(InFlight { request_id: id.into(), session_id: sid, content: text.into(), key: id.into() })
        };
        let mut m = logged_in().reduce(sending("1", "kept"), 0.0).reduce(sending("2", "refused"), 0.0);
        m = m.reduce(Action::Frame(ServerFrame::Ack { id: Some("1".into()), message: message(5, 1, Role::User) }), 0.0);
        assert_eq!(m.in_flight.len(), 1);
        let error = ErrorBody { code: ErrorCode::RateLimited, message: "slow down".into(), retry_after_ms: Some(2500) };
        m = m.reduce(Action::Frame(ServerFrame::Error { id: Some("2".into()), session_id: Some(sid), error }), 0.0);
        assert!(m.in_flight.is_empty());
        assert_eq!(m.returned.as_ref().map(|r| r.content.as_str()), Some("refused"));
        assert_eq!(m.blocked.as_ref().unwrap().reason, "Sending too fast; try again in 3s.");
        m = m.reduce(Action::TookReturned, 0.0);
        assert!(m.returned.is_none());
        // An error for some other request returns nothing.
        let error = ErrorBody { code: ErrorCode::NotFound, message: "gone".into(), retry_after_ms: None };
        m = m.reduce(Action::Frame(ServerFrame::Error { id: Some("9".into()), session_id: None, error }), 0.0);
        assert!(m.returned.is_none());
        // Only the newest sends are remembered.
        for i in 0..40 {
            m = m.reduce(sending(&i.to_string(), "x"), 0.0);
        }
        assert_eq!(m.in_flight.len(), MAX_IN_FLIGHT);
    }

    #[test]
    fn unchanged_state_is_the_same_rc() {
        let m = logged_in();
        let same = m.clone().reduce(Action::Dismiss(42), 0.0);
        assert!(Rc::ptr_eq(&m, &same));
    }

    #[test]
    fn a_late_count_of_a_replaced_link_is_ignored() {
        let link = |id: u128, secs: i64, viewers: u32| relay_protocol::ShareStatus {
            id: Uuid::from_u128(id),
            created_at: chrono::DateTime::from_timestamp(secs, 0).unwrap(),
            expires_at: None,
            viewers,
        };
        let share = |m: &Rc<Model>| m.chat.as_ref().unwrap().share.clone();
        let sid = Uuid::from_u128(1);
        let m = logged_in().reduce(Action::Open(session(1)), 0.0);
        let m = m.reduce(Action::Share { session_id: sid, share: Some(link(7, 100, 0)) }, 0.0);
        let m = m.reduce(Action::Share { session_id: sid, share: Some(link(8, 200, 0)) }, 0.0);
        assert_eq!(share(&m), Some(link(8, 200, 0)), "a new link");
        let m = m.reduce(Action::Share { session_id: sid, share: Some(link(7, 100, 3)) }, 0.0);
        assert_eq!(share(&m), Some(link(8, 200, 0)), "the old link's late count");
        let m = m.reduce(Action::Share { session_id: sid, share: Some(link(8, 200, 2)) }, 0.0);
        assert_eq!(share(&m).map(|s| s.viewers), Some(2));
        let m = m.reduce(Action::Share { session_id: sid, share: None }, 0.0);
        assert_eq!(share(&m), None, "revoked");
    }
}
