//! A session's messages as the user reads them: the live conversation, where each message
//! that replaced others (a regenerated reply, an edited question) carries the versions it
//! replaced, to browse as `‹ 1/2 ›`.
//!
//! Superseded messages are stored in order, just before the message that replaced them,
//! and each names it (`replaced_by`): every message one edit replaced (the question and
//! the rest of the conversation after it) names the edit's new question, so that earlier
//! conversation is one version, followed from its question to its end. A reply's versions
//! are the replies each regenerate replaced. Messages replaced before servers recorded
//! `replaced_by` are grouped by role instead: each older question with the last reply it had.

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
    // A message replaced by one never stored (a regenerate whose reply was lost) is
    // grouped as if nothing named what replaced it.
    let ids: std::collections::HashSet<uuid::Uuid> = messages.iter().map(|m| m.id).collect();
    let mut slots = Vec::new();
    let mut replaced: Vec<Rc<Message>> = Vec::new();
    for message in messages {
        if message.superseded {
            replaced.push(message.clone());
            continue;
        }
        let (named, unnamed): (Vec<_>, Vec<_>) =
            replaced.drain(..).partition(|m| m.replaced_by.is_some_and(|by| ids.contains(&by)));
        let mut versions = versions_of(&unnamed, message.role);
        versions.extend(replaced_chain(&named, message));
        versions.push(vec![message.clone()]);
        slots.push(Slot { versions });
    }
    slots
}

/// The versions `message` replaced, oldest first, followed back through what each replaced:
/// the messages that name it as their replacement, when the first of them has its role,
/// are the version before it, and so on. Replaced messages off the chain (a reply
/// regenerated inside an older version) are left out.
fn replaced_chain(replaced: &[Rc<Message>], message: &Message) -> Vec<Vec<Rc<Message>>> {
    let mut versions = Vec::new();
    let mut by = message.id;
    loop {
        let version: Vec<Rc<Message>> = replaced.iter().filter(|m| m.replaced_by == Some(by)).cloned().collect();
        match version.first() {
            Some(head) if head.role == message.role && versions.len() < replaced.len() => {
                by = head.id;
                versions.push(version);
            }
            _ => break,
        }
    }
    versions.reverse();
    versions
}

/// Messages replaced before `replaced_by` was recorded, as versions of a live message of
/// `role`: each version starts at a
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
            replaced_by: None,
        })
    }

    /// A message replaced by message `by`.
    fn r(id: u128, role: Role, by: u128) -> Rc<Message> {
        let mut message = (*m(id, role, true)).clone();
        message.replaced_by = Some(Uuid::from_u128(by));
        Rc::new(message)
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

    #[test]
    fn an_earlier_question_edited_keeps_the_rest_of_that_conversation_as_one_version() {
        // q1 a1, then q2 a2; q1 edited to q5: q1 a1 q2 a2 are one version of q5.
        let messages = [
            r(1, Role::User, 5),
            r(2, Role::Assistant, 5),
            r(3, Role::User, 5),
            r(4, Role::Assistant, 5),
            m(5, Role::User, false),
            m(6, Role::Assistant, false),
        ];
        let slots = slots(&messages);
        assert_eq!(slots.len(), 2);
        assert_eq!(ids(&slots[0]), [vec![1, 2, 3, 4], vec![5]]);
        assert_eq!(ids(&slots[1]), [[6]]);
    }

    #[test]
    fn successive_edits_are_followed_back_one_version_each() {
        // q1 a1 edited to q3 (a3), then q3 edited to q5; a3 had been regenerated from a2'.
        let messages = [
            r(1, Role::User, 3),
            r(2, Role::Assistant, 3),
            r(7, Role::Assistant, 4),
            r(3, Role::User, 5),
            r(4, Role::Assistant, 5),
            m(5, Role::User, false),
            m(6, Role::Assistant, false),
        ];
        let slots = slots(&messages);
        assert_eq!(
            ids(&slots[0]),
            [vec![1, 2], vec![3, 4], vec![5]],
            "the reply regenerated inside a version is left out"
        );
    }

    #[test]
    fn regenerated_replies_are_followed_back_by_what_replaced_them() {
        let messages =
            [m(1, Role::User, false), r(2, Role::Assistant, 3), r(3, Role::Assistant, 4), m(4, Role::Assistant, false)];
        assert_eq!(ids(&slots(&messages)[1]), [vec![2], vec![3], vec![4]]);
    }

    #[test]
    fn a_loop_in_what_replaced_what_ends() {
        // Ids are unique in a real session; a loop can only come from broken data.
        let messages = [r(1, Role::User, 3), r(3, Role::User, 1), m(3, Role::User, false)];
        assert!(slots(&messages)[0].versions.len() <= 3);
    }

    #[test]
    fn a_reply_replaced_by_one_never_stored_still_shows() {
        // A regenerate whose reply was lost (the server stopped first): the old reply names
        // a message that does not exist, and is a version of the next reply like before.
        let messages = [m(1, Role::User, false), r(2, Role::Assistant, 9), m(3, Role::Assistant, false)];
        assert_eq!(ids(&slots(&messages)[1]), [vec![2], vec![3]]);
    }
}
