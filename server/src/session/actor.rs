//! The session actor: the single owner of one chat session's live state.
//!
//! Everything that changes a session at run time is a message to its actor, handled one
//! at a time, so ordering questions have one answer: the order of the mailbox. The model
//! stream runs in a task of its own (so `stop` is handled while a reply streams) and feeds
//! its events back as messages; the actor numbers them (`seq`), encodes each once, and
//! hands the same bytes to every receiver.
//!
//! Policies decided here:
//! - `stop` cancels the running reply only; sends queued behind it are still answered, in
//!   order (each was asked for explicitly).
//! - When nobody has watched for the grace period, the running reply is cancelled and the
//!   queued sends are dropped (their user messages stay stored, unanswered): nobody is
//!   there to read them, and nobody should pay for them.
//! - A reply in progress is checkpointed with status `cancelled`, so a crash leaves an
//!   honest partial; the final save replaces it.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Instant;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use relay_protocol::{ErrorBody, FinishReason, Generating, Message, MessageStatus, Role, ServerFrame, Session, Usage};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{SendAccepted, SessionDeps, SessionError, SessionRegistry};
use crate::auth::AuthUser;
use crate::error::AppError;
use crate::fanout::{Delivery, Outbound, Receiver, ReceiverId, ReceiverKind};
use crate::limits;
use crate::llm::{ContextMessage, LlmError, LlmEvent, UpstreamFinish};
use crate::store::SessionRecord;

/// How many recent messages the actor keeps in memory (context and snapshots).
pub(super) const HISTORY_CAP: usize = 200;
/// How many recent messages a `subscribed` snapshot carries.
const SNAPSHOT_MESSAGES: usize = 100;
/// The title a session has until its first message names it.
pub const DEFAULT_TITLE: &str = "New chat";
/// Longest title derived from a first message, in characters.
const DERIVED_TITLE_CHARS: usize = 60;

/// Messages a session actor handles.
pub enum SessionMsg {
    /// Add a receiver; a connection gets a `subscribed` snapshot.
    Subscribe {
        /// Who asks (must own the session).
        user_id: Uuid,
        /// The receiver to add.
        receiver: Receiver,
        /// Echoed in `subscribed`.
        request_id: Option<String>,
        /// Answer.
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    /// Remove a receiver.
    Unsubscribe {
        /// The receiver to remove.
        receiver: ReceiverId,
        /// When set, this receiver gets an `unsubscribed` frame echoing the request id.
        notify: Option<(Receiver, Option<String>)>,
    },
    /// Store a user message and queue its reply.
    Send {
        /// Who sends (must own the session).
        user: AuthUser,
        /// The message text.
        content: String,
        /// The sending connection or request; subscribed if it is not yet.
        origin: Receiver,
        /// Echoed in `ack`.
        request_id: Option<String>,
        /// Answer.
        reply: oneshot::Sender<Result<SendAccepted, SessionError>>,
    },
    /// Cancel the running reply.
    Stop {
        /// Who asks (must own the session).
        user_id: Uuid,
        /// Answer.
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    /// The session was renamed.
    Renamed(Session),
    /// The session was deleted: cancel everything and stop.
    Deleted {
        /// Answered once the running reply is stored.
        reply: oneshot::Sender<()>,
    },
    /// The server is shutting down: store the running reply as it stands and stop.
    Shutdown {
        /// Answered once the running reply is stored.
        reply: oneshot::Sender<()>,
    },
    /// An event of generation `generation` (ignored if that generation is over).
    Generation {
        /// Which generation it belongs to.
        generation: u64,
        /// The event.
        event: GenerationEvent,
    },
    /// The grace period armed as `epoch` ran out.
    GraceExpired {
        /// Which arming it was.
        epoch: u64,
    },
    /// The idle period armed as `epoch` ran out.
    IdleExpired {
        /// Which arming it was.
        epoch: u64,
    },
}

/// What the generation task reports.
pub enum GenerationEvent {
    /// A decoded model event.
    Llm(LlmEvent),
    /// The model stream ended, whole or broken.
    Ended(Result<(), LlmError>),
}

/// The actor (stateless; its state is [`SessionState`]).
pub struct SessionActor;

/// What an actor starts from.
pub struct SessionArgs {
    /// The session and its owner.
    pub record: SessionRecord,
    /// Its recent messages, oldest first.
    pub history: Vec<Message>,
    /// Shared dependencies.
    pub deps: Arc<SessionDeps>,
    /// The registry, told when the actor stops.
    pub registry: Weak<SessionRegistry>,
}

struct Queued {
    user: AuthUser,
    user_message: Message,
    reply_id: Uuid,
}

struct Running {
    generation: u64,
    user: AuthUser,
    reply_id: Uuid,
    created_at: DateTime<Utc>,
    content: String,
    usage: Option<Usage>,
    finish: Option<UpstreamFinish>,
    task: JoinHandle<()>,
    started: Instant,
    last_checkpoint: Instant,
    checkpointed_len: usize,
}

/// A session's live state, owned by its actor alone.
pub struct SessionState {
    session: Session,
    owner: Uuid,
    deps: Arc<SessionDeps>,
    registry: Weak<SessionRegistry>,
    history: VecDeque<Message>,
    queue: VecDeque<Queued>,
    current: Option<Running>,
    seq: u64,
    receivers: Vec<Receiver>,
    next_generation: u64,
    epoch: u64,
    grace_armed: Option<u64>,
    idle_armed: Option<u64>,
    stopping: bool,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        tracing::debug!(session_id = %args.record.session.id, "session actor started");
        args.deps.metrics.session_actors.inc();
        Ok(SessionState {
            session: args.record.session,
            owner: args.record.user_id,
            deps: args.deps,
            registry: args.registry,
            history: args.history.into(),
            queue: VecDeque::new(),
            current: None,
            seq: 0,
            receivers: Vec::new(),
            next_generation: 0,
            epoch: 0,
            grace_armed: None,
            idle_armed: None,
            stopping: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.deps.metrics.session_actors.dec();
        if let Some(running) = state.current.take() {
            // Only reached if the actor stops without its own shutdown path; never leave a
            // model stream running behind a dead actor.
            running.task.abort();
            state.deps.metrics.generations_active.dec();
        }
        Ok(())
    }

    async fn post_start(
        &self,
        myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.reconcile(&myself).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        // Errors are answered to whoever asked; an actor that returned one would stop.
        match msg {
            SessionMsg::Subscribe { user_id, receiver, request_id, reply } => {
                let _ = reply.send(state.subscribe(user_id, receiver, request_id));
            }
            SessionMsg::Unsubscribe { receiver, notify } => state.unsubscribe(receiver, notify),
            SessionMsg::Send { user, content, origin, request_id, reply } => {
                let result = state.send(user, content, origin, request_id).await;
                let _ = reply.send(result);
                state.start_next(&myself);
            }
            SessionMsg::Stop { user_id, reply } => {
                if user_id != state.owner {
                    let _ = reply.send(Err(SessionError::NotFound));
                } else {
                    state.cancel_running().await;
                    let _ = reply.send(Ok(()));
                    state.start_next(&myself);
                }
            }
            SessionMsg::Renamed(session) => state.session = session,
            SessionMsg::Deleted { reply } | SessionMsg::Shutdown { reply } => {
                state.stopping = true;
                state.queue.clear();
                state.cancel_running().await;
                state.stop(&myself);
                let _ = reply.send(());
                return Ok(());
            }
            SessionMsg::Generation { generation, event } => {
                if state.current.as_ref().is_some_and(|r| r.generation == generation) {
                    state.on_generation_event(event).await;
                    state.start_next(&myself);
                }
            }
            SessionMsg::GraceExpired { epoch } => {
                if state.grace_armed == Some(epoch) && state.receivers.is_empty() {
                    state.grace_armed = None;
                    state.abandon().await;
                }
            }
            SessionMsg::IdleExpired { epoch } => {
                if state.idle_armed == Some(epoch) && state.is_idle() {
                    tracing::debug!(session_id = %state.session.id, "session actor idle; stopping");
                    state.stop(&myself);
                    return Ok(());
                }
            }
        }
        state.reconcile(&myself).await;
        Ok(())
    }
}

impl SessionState {
    fn subscribe(&mut self, user_id: Uuid, receiver: Receiver, request_id: Option<String>) -> Result<(), SessionError> {
        if user_id != self.owner {
            return Err(SessionError::NotFound);
        }
        self.receivers.retain(|r| r.id != receiver.id);
        if receiver.kind == ReceiverKind::Connection {
            let snapshot = Outbound::new(self.snapshot(request_id));
            if receiver.deliver(&snapshot) != Delivery::Queued {
                return Ok(());
            }
        }
        self.receivers.push(receiver);
        Ok(())
    }

    fn snapshot(&self, request_id: Option<String>) -> ServerFrame {
        let skip = self.history.len().saturating_sub(SNAPSHOT_MESSAGES);
        ServerFrame::Subscribed {
            id: request_id,
            session: self.session.clone(),
            messages: self.history.iter().skip(skip).cloned().collect(),
            seq: self.seq,
            generating: self
                .current
                .as_ref()
                .map(|r| Generating { message_id: r.reply_id, content: r.content.clone() }),
        }
    }

    fn unsubscribe(&mut self, receiver: ReceiverId, notify: Option<(Receiver, Option<String>)>) {
        self.receivers.retain(|r| r.id != receiver);
        // Answered here, behind every event already queued, even if the receiver had been
        // dropped for another reason meanwhile.
        if let Some((receiver, id)) = notify {
            receiver.deliver(&Outbound::new(ServerFrame::Unsubscribed { id, session_id: self.session.id }));
        }
    }

    async fn send(
        &mut self,
        user: AuthUser,
        content: String,
        origin: Receiver,
        request_id: Option<String>,
    ) -> Result<SendAccepted, SessionError> {
        if user.id != self.owner {
            return Err(SessionError::NotFound);
        }
        validate_content(&content, self.deps.settings.max_message_length)?;
        if self.queue.len() >= self.deps.settings.max_queued_sends {
            return Err(SessionError::Busy);
        }
        let store = &self.deps.store;
        let first_user_message = !self.history.iter().any(|m| m.role == Role::User);
        let message = Message {
            id: Uuid::new_v4(),
            session_id: self.session.id,
            role: Role::User,
            token_count: Some(estimate_tokens(&content)),
            content,
            status: MessageStatus::Complete,
            created_at: Utc::now(),
        };
        store.save_message(&message).await?;
        self.deps.metrics.user_messages.inc();
        if let Err(e) = store.touch_session(self.session.id, message.created_at).await {
            tracing::warn!(session_id = %self.session.id, error = %e, "could not update session time");
        }
        self.session.updated_at = message.created_at;
        if first_user_message && self.session.title == DEFAULT_TITLE {
            self.retitle_from(&message.content).await;
        }
        self.report_usage(&user).await;

        if !self.receivers.iter().any(|r| r.id == origin.id) {
            self.subscribe(user.id, origin.clone(), None)?;
        }
        if origin.kind == ReceiverKind::Connection {
            origin.deliver(&Outbound::new(ServerFrame::Ack { id: request_id, message: message.clone() }));
        }
        self.remember(message.clone());
        let session_id = self.session.id;
        let broadcast = message.clone();
        self.emit(|seq| ServerFrame::Message { session_id, seq, message: broadcast });
        let reply_id = Uuid::new_v4();
        self.queue.push_back(Queued { user, user_message: message.clone(), reply_id });
        Ok(SendAccepted { user_message: message, reply_id })
    }

    /// Names a "New chat" after its first message and tells the user's tabs.
    async fn retitle_from(&mut self, content: &str) {
        let title = derive_title(content);
        match self.deps.store.rename_session(self.owner, self.session.id, &title).await {
            Ok(Some(session)) => {
                self.session = session.clone();
                self.deps
                    .hub
                    .publish(self.owner, None, |id| ServerFrame::SessionUpdated { id, session: session.clone() });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(session_id = %self.session.id, error = %e, "could not set the session title"),
        }
    }

    /// Counts the message against the user's day and tells their tabs the new quota.
    async fn report_usage(&self, user: &AuthUser) {
        match self.deps.store.record_message_usage(user.id, Utc::now().date_naive()).await {
            Ok(count) => {
                let quota = limits::quota_from(count, self.deps.settings.daily_quota, user.role);
                self.deps.hub.publish(user.id, None, |_| ServerFrame::Quota { quota: quota.clone() });
            }
            Err(e) => tracing::warn!(user_id = %user.id, error = %e, "could not record usage"),
        }
    }

    fn remember(&mut self, message: Message) {
        if let Some(existing) = self.history.iter_mut().find(|m| m.id == message.id) {
            *existing = message;
            return;
        }
        self.history.push_back(message);
        while self.history.len() > HISTORY_CAP {
            self.history.pop_front();
        }
    }

    /// Numbers a session event, encodes it once, and queues it for every receiver.
    fn emit(&mut self, make: impl FnOnce(u64) -> ServerFrame) {
        self.seq += 1;
        let out = Outbound::new(make(self.seq));
        let session_id = self.session.id;
        self.receivers.retain(|r| match r.deliver(&out) {
            Delivery::Queued => true,
            Delivery::Gone => false,
            Delivery::Overflowed => {
                tracing::warn!(%session_id, receiver = r.id, "receiver too slow; dropping it");
                false
            }
        });
    }

    /// Starts the next queued reply if none is running.
    fn start_next(&mut self, myself: &ActorRef<SessionMsg>) {
        if self.current.is_some() || self.stopping {
            return;
        }
        let Some(next) = self.queue.pop_front() else { return };
        let context = self.context_for(&next.user_message);
        self.next_generation += 1;
        let generation = self.next_generation;
        let llm = self.deps.llm.clone();
        let actor = myself.clone();
        let session_id = self.session.id;
        let task = tokio::spawn(async move {
            let result = async {
                let mut stream = llm.stream(&context).await?;
                while let Some(event) = stream.next().await {
                    let event = GenerationEvent::Llm(event?);
                    if actor.send_message(SessionMsg::Generation { generation, event }).is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = &result {
                tracing::warn!(%session_id, error = %e, "reply failed");
            }
            let _ = actor.send_message(SessionMsg::Generation { generation, event: GenerationEvent::Ended(result) });
        });
        let reply_id = next.reply_id;
        self.deps.metrics.generations_active.inc();
        self.current = Some(Running {
            generation,
            user: next.user,
            reply_id,
            created_at: Utc::now(),
            content: String::new(),
            usage: None,
            finish: None,
            task,
            started: Instant::now(),
            last_checkpoint: Instant::now(),
            checkpointed_len: 0,
        });
        self.emit(|seq| ServerFrame::GenerationStarted { session_id, seq, message_id: reply_id });
    }

    /// The model's context for a reply: the system prompt, then recent messages oldest
    /// first (without replies that failed and without other sends still waiting), ending
    /// with the message being answered.
    fn context_for(&self, answering: &Message) -> Vec<ContextMessage> {
        let settings = &self.deps.settings;
        let waiting: HashSet<Uuid> = self.queue.iter().map(|q| q.user_message.id).collect();
        let earlier: Vec<&Message> = self
            .history
            .iter()
            .filter(|m| {
                m.id != answering.id && !waiting.contains(&m.id) && m.role != Role::System && counts_as_context(m)
            })
            .collect();
        let keep = settings.max_context_messages.saturating_sub(1);
        let mut context = Vec::with_capacity(keep + 2);
        context.push(ContextMessage { role: Role::System, content: settings.system_prompt.clone() });
        context.extend(earlier[earlier.len().saturating_sub(keep)..].iter().map(|m| ContextMessage::from(*m)));
        context.push(ContextMessage::from(answering));
        context
    }

    async fn on_generation_event(&mut self, event: GenerationEvent) {
        match event {
            GenerationEvent::Llm(LlmEvent::Delta(text)) => {
                let Some(running) = self.current.as_mut() else { return };
                // Deltas are never empty, so empty content means this is the first text.
                if running.content.is_empty() {
                    self.deps.metrics.time_to_first_token.observe(running.started.elapsed().as_secs_f64());
                }
                running.content.push_str(&text);
                let (session_id, message_id) = (self.session.id, running.reply_id);
                self.emit(|seq| ServerFrame::Delta { session_id, seq, message_id, text });
                self.checkpoint_if_due().await;
            }
            GenerationEvent::Llm(LlmEvent::Finish(finish)) => {
                if let Some(running) = self.current.as_mut() {
                    running.finish = Some(finish);
                }
            }
            GenerationEvent::Llm(LlmEvent::Usage(usage)) => {
                if let Some(running) = self.current.as_mut() {
                    running.usage = Some(usage);
                }
            }
            GenerationEvent::Ended(Ok(())) => {
                let reason = match self.current.as_ref().and_then(|r| r.finish) {
                    Some(UpstreamFinish::Length) => FinishReason::Length,
                    _ => FinishReason::Stop,
                };
                self.finish_running(reason, None).await;
            }
            GenerationEvent::Ended(Err(e)) => {
                let body = AppError::Llm(e).to_body();
                self.finish_running(FinishReason::Error, Some(body)).await;
            }
        }
    }

    /// Saves the reply in progress if the last save is older than the checkpoint interval.
    async fn checkpoint_if_due(&mut self) {
        let interval = self.deps.settings.checkpoint_interval;
        let Some(running) = self.current.as_mut() else { return };
        if running.last_checkpoint.elapsed() < interval || running.content.len() == running.checkpointed_len {
            return;
        }
        running.last_checkpoint = Instant::now();
        running.checkpointed_len = running.content.len();
        let message = Message {
            id: running.reply_id,
            session_id: self.session.id,
            role: Role::Assistant,
            content: running.content.clone(),
            token_count: None,
            status: MessageStatus::Cancelled,
            created_at: running.created_at,
        };
        if let Err(e) = self.deps.store.save_message(&message).await {
            tracing::warn!(session_id = %self.session.id, error = %e, "checkpoint failed");
        }
    }

    /// Cancels the running reply: the upstream request is dropped at once (the task is
    /// aborted, which drops the HTTP response), then the partial reply is stored.
    async fn cancel_running(&mut self) {
        if let Some(running) = self.current.as_ref() {
            running.task.abort();
            self.finish_running(FinishReason::Cancelled, None).await;
        }
    }

    /// Nobody watched for the grace period: cancel the reply and drop the waiting sends.
    async fn abandon(&mut self) {
        if self.current.is_some() || !self.queue.is_empty() {
            tracing::info!(session_id = %self.session.id, dropped = self.queue.len(), "nobody watching; cancelling the reply");
            self.deps.metrics.generations_abandoned.inc();
        }
        self.queue.clear();
        self.cancel_running().await;
    }

    /// Stores the running reply with its outcome and tells every receiver.
    async fn finish_running(&mut self, reason: FinishReason, error: Option<ErrorBody>) {
        let Some(running) = self.current.take() else { return };
        running.task.abort();
        let status = match reason {
            FinishReason::Stop | FinishReason::Length => MessageStatus::Complete,
            FinishReason::Cancelled => MessageStatus::Cancelled,
            FinishReason::Error => MessageStatus::Error,
        };
        let token_count = running
            .usage
            .map(|u| u.completion_tokens)
            .or_else(|| (!running.content.is_empty()).then(|| estimate_tokens(&running.content)));
        let message = Message {
            id: running.reply_id,
            session_id: self.session.id,
            role: Role::Assistant,
            content: running.content,
            token_count,
            status,
            created_at: running.created_at,
        };
        let metrics = &self.deps.metrics;
        metrics.generation_ended(reason);
        if let Some(usage) = running.usage {
            metrics.tokens.with_label_values(&["prompt"]).inc_by(u64::from(usage.prompt_tokens));
            metrics.tokens.with_label_values(&["completion"]).inc_by(u64::from(usage.completion_tokens));
        }
        let store = &self.deps.store;
        if let Err(e) = store.save_message(&message).await {
            tracing::error!(session_id = %self.session.id, error = %e, "could not store the reply");
        }
        let now = Utc::now();
        if store.touch_session(self.session.id, now).await.is_ok() {
            self.session.updated_at = now;
        }
        if let Some(usage) = running.usage
            && let Err(e) = store.record_token_usage(running.user.id, now.date_naive(), usage.total_tokens).await
        {
            tracing::warn!(user_id = %running.user.id, error = %e, "could not record token usage");
        }
        tracing::info!(
            session_id = %self.session.id, user_id = %running.user.id, message_id = %message.id,
            finish_reason = ?reason, tokens = ?message.token_count, "reply ended"
        );
        self.remember(message.clone());
        let session_id = self.session.id;
        let message_id = message.id;
        self.emit(|seq| ServerFrame::Message { session_id, seq, message });
        let usage = running.usage;
        self.emit(|seq| ServerFrame::Done { session_id, seq, message_id, finish_reason: reason, usage, error });
    }

    fn is_idle(&self) -> bool {
        self.receivers.is_empty() && self.current.is_none() && self.queue.is_empty()
    }

    /// Brings the timers in line with the state after every message: nobody watching a
    /// running reply arms the grace period (or cancels at once when it is zero); nothing
    /// going on arms the idle stop; anyone watching disarms both.
    async fn reconcile(&mut self, myself: &ActorRef<SessionMsg>) {
        self.receivers.retain(|r| !r.is_closed());
        if !self.receivers.is_empty() {
            self.grace_armed = None;
            self.idle_armed = None;
            return;
        }
        let deps = self.deps.clone();
        let settings = &deps.settings;
        if self.current.is_some() || !self.queue.is_empty() {
            self.idle_armed = None;
            if settings.cancel_grace.is_zero() {
                self.abandon().await;
            } else if self.grace_armed.is_none() {
                self.epoch += 1;
                let epoch = self.epoch;
                self.grace_armed = Some(epoch);
                myself.send_after(settings.cancel_grace, move || SessionMsg::GraceExpired { epoch });
                return;
            } else {
                return;
            }
        }
        if self.is_idle() && self.idle_armed.is_none() {
            self.epoch += 1;
            let epoch = self.epoch;
            self.idle_armed = Some(epoch);
            myself.send_after(settings.idle_timeout, move || SessionMsg::IdleExpired { epoch });
        }
    }

    fn stop(&mut self, myself: &ActorRef<SessionMsg>) {
        if let Some(registry) = self.registry.upgrade() {
            registry.forget(self.session.id, myself);
        }
        myself.stop(None);
    }
}

/// Checks a user message: not blank, and at most `max_chars` characters.
pub fn validate_content(content: &str, max_chars: usize) -> Result<(), SessionError> {
    if content.trim().is_empty() {
        return Err(SessionError::InvalidContent("message content is empty".into()));
    }
    let chars = content.chars().count();
    if chars > max_chars {
        return Err(SessionError::InvalidContent(format!("message is {chars} characters; the limit is {max_chars}")));
    }
    Ok(())
}

/// Whether a stored message belongs in a model's context: failed and empty replies do not.
fn counts_as_context(message: &Message) -> bool {
    message.status != MessageStatus::Error && !message.content.is_empty()
}

/// A session title from a first message: its first non-blank line, trimmed to 60 characters.
pub fn derive_title(content: &str) -> String {
    let line = content.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or(DEFAULT_TITLE);
    let mut title: String = line.chars().take(DERIVED_TITLE_CHARS).collect();
    if line.chars().count() > DERIVED_TITLE_CHARS {
        title = title.trim_end().to_string();
    }
    title
}

/// A rough token count (about four characters a token) where the provider gave none.
pub fn estimate_tokens(text: &str) -> u32 {
    (text.chars().count().div_ceil(4)).max(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_come_from_the_first_line() {
        assert_eq!(derive_title("\n  What is Rust?  \nmore"), "What is Rust?");
        assert_eq!(derive_title(&"x".repeat(100)).chars().count(), 60);
    }

    #[test]
    fn content_rules() {
        assert!(validate_content("   ", 10).is_err());
        assert!(validate_content("é".repeat(10).as_str(), 10).is_ok());
        assert!(validate_content("é".repeat(11).as_str(), 10).is_err());
    }
}
