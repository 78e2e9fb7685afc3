//! The order of a session's events, and when to reconnect. Every session event carries
//! `seq`, one more than the last; a client that sees any other number missed something and
//! subscribes again (the snapshot replaces what was missed). Pure logic, tested natively.

use std::collections::HashMap;

use relay_protocol::ServerFrame;
use uuid::Uuid;

/// What to do with a frame after checking its place in its session's events.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// In order (or not a session event): apply it.
    Apply,
    /// Something was missed: drop the frame and subscribe to the session again.
    Resubscribe(Uuid),
}

/// The last `seq` seen of each subscribed session.
#[derive(Debug, Default)]
pub struct Sequences {
    last: HashMap<Uuid, u64>,
}

impl Sequences {
    /// Forgets a session (unsubscribed, or about to be subscribed again).
    pub fn forget(&mut self, session_id: Uuid) {
        self.last.remove(&session_id);
    }

    /// Checks a frame against the session's last `seq`.
    pub fn observe(&mut self, frame: &ServerFrame) -> Verdict {
        let session_id = match frame {
            ServerFrame::Subscribed { session, seq, .. } => {
                self.last.insert(session.id, *seq);
                return Verdict::Apply;
            }
            ServerFrame::Message { session_id, .. }
            | ServerFrame::Superseded { session_id, .. }
            | ServerFrame::GenerationStarted { session_id, .. }
            | ServerFrame::Delta { session_id, .. }
            | ServerFrame::Done { session_id, .. } => *session_id,
            _ => return Verdict::Apply,
        };
        let Some(seq) = frame.seq() else { return Verdict::Apply };
        match self.last.get(&session_id).copied() {
            Some(last) if seq == last + 1 => {
                self.last.insert(session_id, seq);
                Verdict::Apply
            }
            Some(_) => {
                self.last.remove(&session_id);
                Verdict::Resubscribe(session_id)
            }
            // Not subscribed here (yet): nothing to compare with.
            None => Verdict::Apply,
        }
    }
}

/// Milliseconds before reconnect attempt `attempt` (0 first): doubling from half a second
/// up to thirty, times a factor between one half and one taken from `random` (in `[0, 1)`),
/// so the tabs of a restarted server do not all come back at once.
pub fn backoff_ms(attempt: u32, random: f64) -> u32 {
    let ceiling = 500f64 * 2f64.powi(attempt.min(6) as i32);
    (ceiling.min(30_000.0) * (0.5 + random.clamp(0.0, 1.0) / 2.0)) as u32
}

#[cfg(test)]
mod tests {
    use relay_protocol::Session;

    use super::*;

    fn session(id: Uuid) -> Session {
        let t = chrono::DateTime::UNIX_EPOCH;
        Session::new(id, "t".into(), t)
    }

    fn delta(session_id: Uuid, seq: u64) -> ServerFrame {
        ServerFrame::Delta { session_id, seq, message_id: Uuid::nil(), text: "x".into() }
    }

    fn subscribed(id: Uuid, seq: u64) -> ServerFrame {
        ServerFrame::Subscribed {
            id: None,
            session: session(id),
            messages: vec![],
            seq,
            generating: None,
            has_older: false,
        }
    }

    #[test]
    fn events_in_order_apply_and_a_gap_resubscribes() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut seqs = Sequences::default();
        assert_eq!(seqs.observe(&subscribed(a, 10)), Verdict::Apply);
        assert_eq!(seqs.observe(&delta(a, 11)), Verdict::Apply);
        assert_eq!(seqs.observe(&delta(a, 12)), Verdict::Apply);
        // Another session's numbering is its own; an unknown one is not checked.
        assert_eq!(seqs.observe(&delta(b, 99)), Verdict::Apply);
        // 13 was lost.
        assert_eq!(seqs.observe(&delta(a, 14)), Verdict::Resubscribe(a));
        // Until the new snapshot, nothing more to compare with; then checked again.
        assert_eq!(seqs.observe(&delta(a, 15)), Verdict::Apply);
        assert_eq!(seqs.observe(&subscribed(a, 20)), Verdict::Apply);
        assert_eq!(seqs.observe(&delta(a, 20)), Verdict::Resubscribe(a), "a repeat is not in order either");
        seqs.observe(&subscribed(a, 30));
        seqs.forget(a);
        assert_eq!(seqs.observe(&delta(a, 40)), Verdict::Apply);
        // Frames that are not session events pass.
        assert_eq!(seqs.observe(&ServerFrame::Pong { id: None }), Verdict::Apply);
    }

    #[test]
    fn backoff_doubles_to_a_ceiling_with_jitter() {
        assert_eq!(backoff_ms(0, 0.0), 250);
        assert_eq!(backoff_ms(0, 0.999_999), 499);
        assert_eq!(backoff_ms(1, 0.0), 500);
        assert_eq!(backoff_ms(5, 0.0), 8_000);
        assert_eq!(backoff_ms(6, 1.0), 30_000);
        assert_eq!(backoff_ms(60, 1.0), 30_000, "bounded however long it has been down");
        assert!(backoff_ms(3, 0.3) >= 2_000 && backoff_ms(3, 0.3) < 4_000);
    }
}
