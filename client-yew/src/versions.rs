//! A session's messages as the user reads them: the live conversation, where each message
//! that replaced others (a regenerated reply, an edited question) carries the versions it
//! replaced, to browse as `‹ 1/2 ›`.
//!
//! Superseded messages are stored in order, just before the message that replaced them.
//! A reply's versions are the superseded replies before it; an edited question's versions
//! are the superseded questions before it, each with the replies it had.

use std::rc::Rc;

use relay_protocol::{Message, Role};

/// One place in the conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    /// The versions, oldest first; the last is the live one. Each version is a message and,
    /// for a question's older versions, the replies it had.
    pub versions: Vec<Vec<Rc<Message>>>,
}

impl Slot {
    /// The live message.
    pub fn live(&self) -> &Rc<Message> {
        &self.versions[self.versions.len() - 1][0]
    }
}

/// The conversation's slots, in order. Superseded messages with no live message of their
/// role after them (history cut by paging) are shown as versions of nothing: left out.
pub fn slots(messages: &[Rc<Message>]) -> Vec<Slot> {
    let mut slots = Vec::new();
    let mut replaced: Vec<Rc<Message>> = Vec::new();
    for message in messages {
        if message.superseded {
            replaced.push(message.clone());
            continue;
        }
        let mut versions = versions_of(&replaced, message.role);
        replaced.clear();
        versions.push(vec![message.clone()]);
        slots.push(Slot { versions });
    }
    slots
}

/// Replaced messages as versions of a live message of `role`: each version starts at a
/// message of that role (what came before the first such message is left out); an older
/// question comes with the last reply it had.
fn versions_of(replaced: &[Rc<Message>], role: Role) -> Vec<Vec<Rc<Message>>> {
    let mut versions: Vec<Vec<Rc<Message>>> = Vec::new();
    for message in replaced {
        if message.role == role {
            versions.push(vec![message.clone()]);
        } else if role == Role::User
            && let Some(version) = versions.last_mut()
        {
            // A question had one live reply at a time: the last one (the earlier ones were
            // regenerated away before the question was edited).
            version.truncate(1);
            version.push(message.clone());
        }
    }
    versions
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use relay_protocol::MessageStatus;
    use uuid::Uuid;

    use super::*;

    fn m(id: u128, role: Role, superseded: bool) -> Rc<Message> {
        Rc::new(Message {
            id: Uuid::from_u128(id),
            session_id: Uuid::nil(),
            role,
            content: format!("m{id}"),
            token_count: None,
            status: MessageStatus::Complete,
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
            superseded,
            model: None,
        })
    }

    fn ids(slot: &Slot) -> Vec<Vec<u128>> {
        slot.versions.iter().map(|v| v.iter().map(|m| m.id.as_u128()).collect()).collect()
    }

    #[test]
    fn regenerated_replies_are_versions_of_the_live_reply() {
        let messages = [
            m(1, Role::User, false),
            m(2, Role::Assistant, true),
            m(3, Role::Assistant, true),
            m(4, Role::Assistant, false),
        ];
        let slots = slots(&messages);
        assert_eq!(slots.len(), 2);
        assert_eq!(ids(&slots[0]), [[1]]);
        assert_eq!(ids(&slots[1]), [vec![2], vec![3], vec![4]]);
        assert_eq!(slots[1].live().id.as_u128(), 4);
    }

    #[test]
    fn an_edited_question_keeps_its_old_text_with_the_old_reply() {
        let messages = [
            m(1, Role::User, true),
            m(2, Role::Assistant, true),
            m(3, Role::User, false),
            m(4, Role::Assistant, false),
        ];
        let slots = slots(&messages);
        assert_eq!(ids(&slots[0]), [vec![1, 2], vec![3]]);
        assert_eq!(ids(&slots[1]), [[4]]);
    }

    #[test]
    fn an_old_question_shows_with_the_reply_it_had_last() {
        let messages = [
            m(1, Role::User, true),
            m(2, Role::Assistant, true),
            m(3, Role::Assistant, true),
            m(4, Role::User, false),
            m(5, Role::Assistant, false),
        ];
        assert_eq!(ids(&slots(&messages)[0]), [vec![1, 3], vec![4]]);
    }

    #[test]
    fn replaced_messages_cut_off_by_paging_are_left_out() {
        let messages = [m(2, Role::Assistant, true), m(3, Role::User, false)];
        assert_eq!(ids(&slots(&messages)[0]), [[3]]);
    }
}
