//! The conversation as the actor keeps it: stored messages in memory, and the bookkeeping
//! each new message brings (title, usage).

use chrono::Utc;
use relay_protocol::{Message, Role, ServerFrame};

use super::*;
use crate::auth::AuthUser;
use crate::limits;
use crate::session::text::{DEFAULT_TITLE, derive_title};

impl SessionState {
    /// Names a "New chat" after its first message and tells the user's tabs. The store
    /// renames only while the title is still the default, so a rename that raced this one
    /// (from another node, say) is never overwritten; that write runs behind the send.
    pub(super) fn name_after_first_message(&mut self, message: &Message) {
        let first = !self.history.iter().any(|m| m.role == Role::User);
        if !first || self.session.title != DEFAULT_TITLE {
            return;
        }
        let title = derive_title(&message.content);
        self.session.title = title.clone();
        let session = self.session.clone();
        self.deps.hub.publish(self.owner, None, |id| ServerFrame::SessionUpdated { id, session: session.clone() });
        self.deps.writes.retitle_soon(self.fence, DEFAULT_TITLE, &title);
    }

    /// Counts the message against the user's day; once that is written, the user's tabs
    /// get the new quota.
    pub(super) fn count_usage(&self, user: &AuthUser) {
        let (hub, daily_quota, role, user_id) =
            (self.deps.hub.clone(), self.deps.settings.daily_quota, user.role, user.id);
        let then = Box::new(move |used| {
            let quota = limits::quota_from(used, daily_quota, role);
            hub.publish(user_id, None, |_| ServerFrame::Quota { quota: quota.clone() });
        });
        self.deps.writes.count_message_soon(user.id, Utc::now().date_naive(), then);
    }

    /// Keeps a stored message in memory and tells every watcher.
    pub(super) fn publish_message(&mut self, message: Message) {
        self.remember(message.clone());
        let session_id = self.session.id;
        self.emit(|seq| ServerFrame::Message { session_id, seq, message });
    }

    /// The text of the messages `ids` held in memory.
    pub(super) fn text_of(&self, ids: &[Uuid]) -> usize {
        self.history.iter().filter(|m| ids.contains(&m.id)).map(|m| m.content.len()).sum()
    }

    /// Keeps a stored message in memory, in `created_at` order; a newer version of a
    /// message replaces the old one.
    pub(super) fn remember(&mut self, message: Message) {
        if let Some(existing) = self.history.iter_mut().rev().find(|m| m.id == message.id) {
            *existing = message;
            return;
        }
        let at = self.history.iter().rposition(|m| m.created_at <= message.created_at).map_or(0, |i| i + 1);
        self.history.insert(at, message);
        while self.history.len() > HISTORY_CAP {
            self.history.pop_front();
            self.history_complete = false;
        }
    }
}
