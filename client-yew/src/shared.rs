//! The state of a share link's read-only page (`/s/<token>`): the conversation as the
//! link's SSE stream tells it (a snapshot, then the session's events), and whether the
//! page is live, reconnecting, or the link has ended. Changed only by [`Shared::reduce`],
//! so it is tested natively like [`crate::state::Model`].

use std::rc::Rc;

use relay_protocol::{Generating, Message, ServerFrame, Session, ShareEnd, SharedSession};

/// Where the page stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    /// Waiting for the first snapshot.
    Connecting,
    /// Following the session.
    Live,
    /// The stream dropped; the browser opens it again.
    Reconnecting,
    /// Shown as it was when read, not live (too many viewers, or the stream is refused).
    Static,
    /// The link ended (or never worked).
    Ended(Option<ShareEnd>),
    /// The server refuses to show it now (too many requests from this address).
    Refused,
}

/// The page's state.
#[derive(Clone, Debug, PartialEq)]
pub struct Shared {
    /// The session, once known.
    pub session: Option<Session>,
    /// Its messages, oldest first, replaced ones left out.
    pub messages: Vec<Rc<Message>>,
    /// The reply being written.
    pub generating: Option<Generating>,
    /// Where the page stands.
    pub live: Live,
    /// The last event number applied (a late duplicate is ignored).
    pub seq: u64,
}

impl Default for Shared {
    fn default() -> Self {
        Shared { session: None, messages: Vec::new(), generating: None, live: Live::Connecting, seq: 0 }
    }
}

/// What changes the page.
#[derive(Clone, Debug)]
pub enum SharedAction {
    /// A frame from the stream (`snapshot` and the session's events).
    Frame(ServerFrame),
    /// The stream ended with `ended`.
    Ended(ShareEnd),
    /// The stream dropped (the browser retries).
    Dropped,
    /// The stream was refused; the page read over REST instead (`None`: the link is gone).
    Read(Option<SharedSession>),
    /// The stream and the REST read were both refused (not for a link that is gone).
    Refused,
}

impl Shared {
    /// Applies an action.
    pub fn reduce(mut self, action: SharedAction) -> Shared {
        if matches!(self.live, Live::Ended(_)) {
            return self;
        }
        match action {
            SharedAction::Frame(frame) => self.frame(frame),
            SharedAction::Ended(reason) => {
                self.generating = None;
                self.live = Live::Ended(Some(reason));
            }
            SharedAction::Dropped => {
                if self.live == Live::Live {
                    self.live = Live::Reconnecting;
                }
            }
            SharedAction::Read(Some(page)) => {
                if self.live != Live::Live {
                    self.session = Some(page.session);
                    self.messages = page.messages.into_iter().map(Rc::new).collect();
                    // A reply that was streaming is shown as stored; no more pieces come.
                    self.generating = None;
                    self.live = Live::Static;
                }
            }
            SharedAction::Read(None) => self.live = Live::Ended(None),
            SharedAction::Refused => {
                if self.live != Live::Static {
                    self.live = Live::Refused;
                }
            }
        }
        self
    }

    fn frame(&mut self, frame: ServerFrame) {
        if let ServerFrame::Subscribed { session, messages, seq, generating, .. } = frame {
            self.session = Some(session);
            self.messages = messages.into_iter().filter(|m| !m.superseded).map(Rc::new).collect();
            self.generating = generating;
            self.seq = seq;
            self.live = Live::Live;
            return;
        }
        match frame.seq() {
            Some(seq) if seq <= self.seq => return,
            Some(seq) => self.seq = seq,
            None => return,
        }
        match frame {
            ServerFrame::Message { message, .. } => {
                if self.generating.as_ref().is_some_and(|g| g.message_id == message.id) {
                    self.generating = None;
                }
                match self.messages.iter_mut().find(|m| m.id == message.id) {
                    Some(known) => *known = Rc::new(message),
                    None => self.messages.push(Rc::new(message)),
                }
            }
            ServerFrame::Superseded { message_ids, .. } => self.messages.retain(|m| !message_ids.contains(&m.id)),
            ServerFrame::GenerationStarted { message_id, .. } => {
                self.generating = Some(Generating { message_id, content: String::new() });
            }
            ServerFrame::Delta { message_id, text, .. } => match self.generating.as_mut() {
                Some(g) if g.message_id == message_id => g.content.push_str(&text),
                _ => self.generating = Some(Generating { message_id, content: text }),
            },
            ServerFrame::Done { message_id, .. }
                if self.generating.as_ref().is_some_and(|g| g.message_id == message_id) =>
            {
                self.generating = None;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use relay_protocol::{MessageStatus, Role};
    use uuid::Uuid;

    use super::*;

    fn session() -> Session {
        Session::new(Uuid::nil(), "Fjords".into(), Default::default())
    }

    fn message(id: u128, role: Role, content: &str, superseded: bool) -> Message {
        Message {
            id: Uuid::from_u128(id),
            session_id: Uuid::nil(),
            role,
            content: content.into(),
            token_count: None,
            status: MessageStatus::Complete,
            created_at: Default::default(),
            superseded,
            model: None,
            replaced_by: None,
        }
    }

    fn snapshot(seq: u64) -> ServerFrame {
        ServerFrame::Subscribed {
            id: None,
            session: session(),
            messages: vec![message(1, Role::User, "q", false), message(2, Role::Assistant, "old", true)],
            seq,
            generating: None,
            has_older: false,
        }
    }

    #[test]
    fn a_reply_streams_in_and_an_end_stops_everything() {
        let sid = Uuid::nil();
        let reply = Uuid::from_u128(3);
        let s = Shared::default().reduce(SharedAction::Frame(snapshot(5)));
        assert_eq!((s.live, s.messages.len()), (Live::Live, 1), "replaced messages are left out");
        let s = s
            .reduce(SharedAction::Frame(ServerFrame::GenerationStarted { session_id: sid, seq: 6, message_id: reply }))
            .reduce(SharedAction::Frame(ServerFrame::Delta {
                session_id: sid,
                seq: 7,
                message_id: reply,
                text: "Fj".into(),
            }))
            .reduce(SharedAction::Frame(ServerFrame::Delta {
                session_id: sid,
                seq: 7,
                message_id: reply,
                text: "Fj".into(),
            }))
            .reduce(SharedAction::Frame(ServerFrame::Delta {
                session_id: sid,
                seq: 8,
                message_id: reply,
                text: "ord".into(),
            }));
        assert_eq!(s.generating.as_ref().map(|g| g.content.as_str()), Some("Fjord"), "a repeated seq is ignored");
        let s = s.reduce(SharedAction::Frame(ServerFrame::Message {
            session_id: sid,
            seq: 9,
            message: message(3, Role::Assistant, "Fjord", false),
        }));
        assert_eq!((s.generating.is_none(), s.messages.len()), (true, 2));
        let s = s.reduce(SharedAction::Dropped);
        assert_eq!(s.live, Live::Reconnecting);
        let s = s.reduce(SharedAction::Frame(snapshot(9)));
        assert_eq!(s.live, Live::Live);
        let s = s.reduce(SharedAction::Ended(ShareEnd::Revoked));
        assert_eq!(s.live, Live::Ended(Some(ShareEnd::Revoked)));
        let s = s.reduce(SharedAction::Frame(snapshot(10)));
        assert_eq!(s.live, Live::Ended(Some(ShareEnd::Revoked)), "nothing after the end");
    }

    #[test]
    fn a_refused_stream_shows_the_page_read_over_rest() {
        let page =
            SharedSession { session: session(), messages: vec![message(1, Role::User, "q", false)], expires_at: None };
        let s = Shared::default().reduce(SharedAction::Read(Some(page)));
        assert_eq!((s.live, s.messages.len()), (Live::Static, 1));
        assert_eq!(Shared::default().reduce(SharedAction::Read(None)).live, Live::Ended(None));
        assert_eq!(Shared::default().reduce(SharedAction::Refused).live, Live::Refused);
    }
}
