//! The checker: reads the history of a schedule, the database and the mock's journal, and
//! names every broken promise.
//!
//! 1. An acknowledged message is stored, once; no operation's text is stored twice.
//! 2. A reply whose `done` said `stop` (or `length`) is stored complete, with the text its
//!    tab showed.
//! 3. Two generations of one session never overlap at the model. A model request made by a
//!    node counts as ended when that node was killed, paused past its lease or cut off
//!    past its lease (a stopped or unreachable process runs nothing; the model sees its
//!    request open until the connection times out), and when the model saw it end.
//! 4. Every tab's events are gap-free (`seq` one after another from its snapshot) until it
//!    is told to subscribe again, or its connection ends.
//! 5. No tab gets a frame of a session that is not its user's.

use std::collections::{HashMap, HashSet};

use chrono::TimeDelta;
use relay_mock_llm::JournalEntry;
use relay_protocol::{Message, MessageStatus, ServerFrame};
use uuid::Uuid;

use super::clients::SessionInfo;
use super::history::{At, FaultRecord, OpKind, OpRecord, TabEvent, Transcript};

/// The model sees a cancelled request end when it notices its connection closed, which may
/// be a moment after the next request of the session began (on another connection).
const OVERLAP_TOLERANCE: TimeDelta = TimeDelta::milliseconds(150);

/// Everything the checker reads.
pub struct Evidence<'a> {
    pub sessions: &'a [SessionInfo],
    /// Which user each session belongs to.
    pub ops: &'a [OpRecord],
    pub transcripts: &'a [Transcript],
    pub faults: &'a [FaultRecord],
    pub journal: &'a [JournalEntry],
    /// Every stored message (live table), by id.
    pub stored: &'a HashMap<Uuid, Message>,
    /// Node ids, by index (as they appear in the model client's `User-Agent`).
    pub node_ids: &'a [&'static str],
}

/// Every broken promise found, described.
pub fn check(evidence: &Evidence) -> Vec<String> {
    let mut anomalies = Vec::new();
    acknowledged_messages_are_stored_once(evidence, &mut anomalies);
    finished_replies_are_stored_as_shown(evidence, &mut anomalies);
    generations_never_overlap(evidence, &mut anomalies);
    tabs_see_every_event_or_are_told(evidence, &mut anomalies);
    no_frame_reaches_another_user(evidence, &mut anomalies);
    anomalies
}

fn acknowledged_messages_are_stored_once(evidence: &Evidence, anomalies: &mut Vec<String>) {
    let mut by_content: HashMap<&str, usize> = HashMap::new();
    for message in evidence.stored.values() {
        *by_content.entry(message.content.as_str()).or_default() += 1;
    }
    for op in evidence.ops {
        let marker = &evidence.sessions[op.session].marker;
        if let Some(content) = &op.content {
            let copies = by_content.get(content.as_str()).copied().unwrap_or(0);
            if copies > 1 {
                anomalies.push(format!(
                    "{marker}: {:?} {:?} (from {}) is stored {copies} times",
                    op.kind, op.key, op.invoked
                ));
            }
        }
        let Some((acked, at)) = &op.acked else { continue };
        match evidence.stored.get(&acked.id) {
            None => anomalies
                .push(format!("{marker}: {:?} {:?} was acknowledged at {at} but is not stored", op.kind, op.key)),
            Some(stored) if stored.content != acked.content => {
                anomalies.push(format!("{:?} {:?} is stored with other text than acknowledged", op.kind, op.key))
            }
            Some(_) => {}
        }
        if op.kind != OpKind::Regenerate
            && let Some(content) = &op.content
            && acked.content != *content
        {
            anomalies.push(format!("{:?} {:?} was acknowledged with another message's text", op.kind, op.key));
        }
    }
}

/// The text a tab was shown of each reply it saw end `stop` or `length`.
fn finished_replies(transcript: &Transcript) -> Vec<(Uuid, String, At)> {
    let mut texts: HashMap<Uuid, String> = HashMap::new();
    let mut finished = Vec::new();
    for (at, event) in &transcript.events {
        match event {
            TabEvent::Connected(_) | TabEvent::Disconnected => texts.clear(),
            TabEvent::Frame(ServerFrame::Subscribed { generating, .. }) => {
                texts.clear();
                if let Some(generating) = generating {
                    texts.insert(generating.message_id, generating.content.clone());
                }
            }
            TabEvent::Frame(ServerFrame::GenerationStarted { message_id, .. }) => {
                texts.insert(*message_id, String::new());
            }
            TabEvent::Frame(ServerFrame::Delta { message_id, text, .. }) => {
                if let Some(shown) = texts.get_mut(message_id) {
                    shown.push_str(text);
                }
            }
            TabEvent::Frame(ServerFrame::Done { message_id, finish_reason, .. }) => {
                if let Some(shown) = texts.remove(message_id)
                    && matches!(
                        finish_reason,
                        relay_protocol::FinishReason::Stop | relay_protocol::FinishReason::Length
                    )
                {
                    finished.push((*message_id, shown, *at));
                }
            }
            TabEvent::Frame(ServerFrame::Error { id: None, .. }) => texts.clear(),
            _ => {}
        }
    }
    finished
}

fn finished_replies_are_stored_as_shown(evidence: &Evidence, anomalies: &mut Vec<String>) {
    for (t, transcript) in evidence.transcripts.iter().enumerate() {
        for (reply, shown, at) in finished_replies(transcript) {
            match evidence.stored.get(&reply) {
                None => anomalies.push(format!("tab {t}: reply {reply} ended well at {at} but is not stored")),
                Some(stored) if stored.status != MessageStatus::Complete => anomalies
                    .push(format!("tab {t}: reply {reply} ended well at {at} but is stored {:?}", stored.status)),
                Some(stored) if stored.content != shown => anomalies.push(format!(
                    "tab {t}: reply {reply} is stored with other text than the tab showed ({} vs {} bytes)",
                    stored.content.len(),
                    shown.len()
                )),
                Some(_) => {}
            }
        }
    }
}

/// The node index of a model request, from its `User-Agent` (`... (node <id>)`).
fn node_of(entry: &JournalEntry, node_ids: &[&str]) -> Option<usize> {
    let agent = entry.user_agent.as_deref()?;
    let id = agent.rsplit_once("(node ")?.1.trim_end_matches(')');
    node_ids.iter().position(|n| *n == id)
}

/// The stretches of time a model request was live: from its start to its end (as the model
/// saw it), less every stretch its node was stopped (killed, paused or cut off past its
/// lease: it ran nothing then) and a moment after each (the model sees a request the node
/// dropped on waking end a little later).
fn live_spans(entry: &JournalEntry, node: Option<usize>, faults: &[FaultRecord], end_of_run: At) -> Vec<(At, At)> {
    let end = entry.ended_at.unwrap_or(end_of_run);
    let mut spans = vec![(entry.started_at, end)];
    let Some(node) = node else { return spans };
    for fault in faults.iter().filter(|f| f.node == Some(node) && f.kind.stops_the_node()) {
        let (cut_from, cut_to) = (fault.started, fault.ended + OVERLAP_TOLERANCE);
        spans = spans
            .into_iter()
            .flat_map(|(from, to)| {
                let mut pieces = Vec::new();
                if from < cut_from {
                    pieces.push((from, to.min(cut_from)));
                }
                if to > cut_to {
                    pieces.push((from.max(cut_to), to));
                }
                if to <= cut_from || from >= cut_to {
                    pieces = vec![(from, to)];
                }
                pieces
            })
            .filter(|(from, to)| from < to)
            .collect();
    }
    spans
}

fn generations_never_overlap(evidence: &Evidence, anomalies: &mut Vec<String>) {
    let end_of_run = evidence.journal.iter().filter_map(|e| e.ended_at.or(Some(e.started_at))).max();
    let Some(end_of_run) = end_of_run else { return };
    let mut by_session: HashMap<usize, Vec<(At, At, usize)>> = HashMap::new();
    for (i, entry) in evidence.journal.iter().enumerate() {
        let Some(session) =
            evidence.sessions.iter().position(|s| entry.last_user.starts_with(&format!("{} ", s.marker)))
        else {
            continue;
        };
        let node = node_of(entry, evidence.node_ids);
        for (from, to) in live_spans(entry, node, evidence.faults, end_of_run) {
            by_session.entry(session).or_default().push((from, to, i));
        }
    }
    for (session, mut spans) in by_session {
        spans.sort();
        // Each span against the latest-ending span before it.
        let mut reach: Option<(At, usize)> = None;
        for (start, end, i) in spans {
            if let Some((until, j)) = reach
                && j != i
                && start + OVERLAP_TOLERANCE < until
            {
                let (a, b) = (&evidence.journal[j], &evidence.journal[i]);
                anomalies.push(format!(
                    "session {}: two generations overlap by {} ms: {:?} [{} .. {:?}] and {:?} [{} .. {:?}]",
                    evidence.sessions[session].marker,
                    (until.min(end) - start).num_milliseconds(),
                    a.user_agent,
                    a.started_at,
                    a.ended_at,
                    b.user_agent,
                    b.started_at,
                    b.ended_at
                ));
            }
            if reach.is_none_or(|(until, _)| end > until) {
                reach = Some((end, i));
            }
        }
    }
}

fn tabs_see_every_event_or_are_told(evidence: &Evidence, anomalies: &mut Vec<String>) {
    for (t, transcript) in evidence.transcripts.iter().enumerate() {
        let session = evidence.sessions[transcript.session].id;
        // The seq expected next, while the tab follows the session.
        let mut expected: Option<u64> = None;
        for (at, event) in &transcript.events {
            match event {
                TabEvent::Connected(_) | TabEvent::Disconnected | TabEvent::Subscribing(_) => expected = None,
                TabEvent::Frame(ServerFrame::Subscribed { session: s, seq, .. }) if s.id == session => {
                    expected = Some(seq + 1);
                }
                TabEvent::Frame(ServerFrame::Error { id: None, session_id: Some(s), .. }) if *s == session => {
                    expected = None;
                }
                TabEvent::Frame(frame) => {
                    let (Some(seq), Some(want)) = (frame.seq(), expected) else { continue };
                    if seq != want {
                        anomalies.push(format!(
                            "tab {t}: seq {seq} at {at} where {want} was due, and no word to subscribe again: {frame:?}"
                        ));
                        expected = None;
                    } else {
                        expected = Some(seq + 1);
                    }
                }
            }
        }
    }
}

/// The session a frame is about, if any.
fn session_of(frame: &ServerFrame) -> Option<Uuid> {
    match frame {
        ServerFrame::Subscribed { session, .. } => Some(session.id),
        ServerFrame::Ack { message, .. } => Some(message.session_id),
        ServerFrame::Message { session_id, .. }
        | ServerFrame::Superseded { session_id, .. }
        | ServerFrame::GenerationStarted { session_id, .. }
        | ServerFrame::Delta { session_id, .. }
        | ServerFrame::Done { session_id, .. }
        | ServerFrame::Unsubscribed { session_id, .. } => Some(*session_id),
        ServerFrame::SessionCreated { session, .. } | ServerFrame::SessionUpdated { session, .. } => Some(session.id),
        ServerFrame::SessionDeleted { session_id, .. } => Some(*session_id),
        ServerFrame::Error { session_id, .. } => *session_id,
        _ => None,
    }
}

fn no_frame_reaches_another_user(evidence: &Evidence, anomalies: &mut Vec<String>) {
    for (t, transcript) in evidence.transcripts.iter().enumerate() {
        let own: HashSet<Uuid> = evidence.sessions.iter().filter(|s| s.user == transcript.user).map(|s| s.id).collect();
        for (at, event) in &transcript.events {
            if let TabEvent::Frame(frame) = event
                && let Some(session) = session_of(frame)
                && !own.contains(&session)
            {
                anomalies.push(format!(
                    "tab {t} (user {}) got a frame of another user's session at {at}: {frame:?}",
                    transcript.user
                ));
            }
        }
    }
}
