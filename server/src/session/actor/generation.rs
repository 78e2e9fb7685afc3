//! Generating replies: one at a time, in send order, streamed from the model by a task
//! of its own, checkpointed, and stored with its outcome.

use std::collections::HashSet;
use std::time::Instant;

use chrono::{DateTime, Utc};
use ractor::ActorRef;
use relay_protocol::{ErrorBody, ErrorCode, FinishReason, Message, MessageStatus, Role, ServerFrame, Usage};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::*;
use crate::auth::AuthUser;
use crate::llm::{ContextMessage, LlmEvent, UpstreamFinish};
use crate::session::text::cut_to;
use crate::store::{Save, StoreError, Tokens};

/// Model text already waiting when a token is handled joins its delta, up to about this
/// many bytes: under load, fewer and larger frames for every watcher, never a delay.
const MERGED_DELTA_BYTES: usize = 16 * 1024;

/// A send waiting for its reply.
pub(super) struct Queued {
    pub(super) user: AuthUser,
    pub(super) user_message: Message,
    pub(super) reply_id: Uuid,
    /// The reply's place in the conversation (its `created_at`).
    pub(super) reply_at: DateTime<Utc>,
    pub(super) origin: Receiver,
    pub(super) request_id: Option<String>,
    /// The model request, already under way when this send was next in line as it came.
    pub(super) prepared: Option<Prepared>,
}

/// A model request started for a reply: its generation number and the task streaming it.
pub(super) struct Prepared {
    pub(super) generation: u64,
    pub(super) task: JoinHandle<()>,
    pub(super) started: Instant,
}

/// The reply being generated.
pub(super) struct Running {
    pub(super) generation: u64,
    pub(super) user: AuthUser,
    pub(super) reply_id: Uuid,
    pub(super) created_at: DateTime<Utc>,
    pub(super) content: String,
    pub(super) usage: Option<Usage>,
    pub(super) finish: Option<UpstreamFinish>,
    pub(super) task: JoinHandle<()>,
    pub(super) started: Instant,
    /// The model writing it.
    pub(super) model: String,
    pub(super) last_checkpoint: Instant,
    pub(super) checkpointed_len: usize,
}

impl SessionState {
    // ---- generating ------------------------------------------------------------------------

    /// Starts the next queued reply if none is running.
    pub(super) fn start_next(&mut self, myself: &ActorRef<SessionMsg>) {
        if self.current.is_some() || self.ending.is_some() {
            return;
        }
        let Some(next) = self.queue.pop_front() else { return };
        let Prepared { generation, task, started } = match next.prepared {
            Some(prepared) => prepared,
            None => self.spawn_generation(&next.user_message, &[], myself),
        };
        let (session_id, reply_id) = (self.session.id, next.reply_id);
        self.deps.metrics.generations_active.inc();
        self.current = Some(Running {
            generation,
            user: next.user,
            reply_id,
            created_at: next.reply_at,
            content: String::new(),
            usage: None,
            finish: None,
            task,
            started,
            model: self.model_name(),
            last_checkpoint: Instant::now(),
            checkpointed_len: 0,
        });
        self.emit(|seq| ServerFrame::GenerationStarted { session_id, seq, message_id: reply_id });
    }

    /// Asks the model to answer `answering`: a task streams the reply's events to this
    /// actor, tagged with a new generation number (events of any other are ignored).
    pub(super) fn spawn_generation(
        &mut self,
        answering: &Message,
        leaving_out: &[Uuid],
        myself: &ActorRef<SessionMsg>,
    ) -> Prepared {
        let context = self.context_for(answering, leaving_out);
        self.next_generation += 1;
        let generation = self.next_generation;
        let llm = self.deps.models.for_session(self.session.model.as_deref()).client.clone();
        let actor = myself.clone();
        let session_id = self.session.id;
        let task = tokio::spawn(async move {
            let result = async {
                let mut stream = llm.stream(&context).await?;
                while let Some(event) = stream.next().await {
                    let mut event = event?;
                    if let LlmEvent::Delta(text) = &mut event {
                        stream.append_ready_text(text, MERGED_DELTA_BYTES);
                    }
                    let event = GenerationEvent::Llm(event);
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
        Prepared { generation, task, started: Instant::now() }
    }

    /// The model's context for a reply: the system prompt, then the newest messages that
    /// fit the token budget whole (at most `CHAT_MAX_CONTEXT_MESSAGES` in all), oldest
    /// first (without replies that failed, other sends still waiting, and the messages
    /// `leaving_out`: those an edit replaces, not yet marked while it is being stored),
    /// ending with the message being answered.
    pub(super) fn context_for(&self, answering: &Message, leaving_out: &[Uuid]) -> Vec<ContextMessage> {
        let settings = &self.deps.settings;
        let waiting: HashSet<Uuid> = self.queue.iter().map(|q| q.user_message.id).collect();
        let earlier: Vec<&Message> = self
            .history
            .iter()
            .filter(|m| {
                m.id != answering.id
                    && !waiting.contains(&m.id)
                    && m.role != Role::System
                    && !m.superseded
                    && !leaving_out.contains(&m.id)
                    && counts_as_context(m)
            })
            .collect();
        let newest = &earlier[earlier.len().saturating_sub(settings.max_context_messages.saturating_sub(1))..];
        let system_prompt = self.system_prompt().to_owned();
        let fixed = budget::message_cost(&system_prompt).saturating_add(budget::message_cost(&answering.content));
        let keep = budget::fitting(self.context_tokens(), fixed, newest.iter().map(|m| m.content.as_str()));
        let mut context = Vec::with_capacity(keep + 2);
        context.push(ContextMessage { role: Role::System, content: system_prompt });
        context.extend(newest[newest.len() - keep..].iter().map(|m| ContextMessage::from(*m)));
        context.push(ContextMessage::from(answering));
        context
    }

    /// The system prompt of this session: its own, else the server's.
    pub(super) fn system_prompt(&self) -> &str {
        self.session.system_prompt.as_deref().unwrap_or(&self.deps.settings.system_prompt)
    }

    /// Tokens this session's prompt may take: its model's budget.
    pub(super) fn context_tokens(&self) -> u32 {
        self.deps.models.for_session(self.session.model.as_deref()).context_tokens
    }

    /// The model that answers in this session now.
    pub(super) fn model_name(&self) -> String {
        self.deps.models.for_session(self.session.model.as_deref()).name.clone()
    }

    pub(super) async fn on_generation_event(&mut self, event: GenerationEvent) {
        match event {
            GenerationEvent::Llm(LlmEvent::Delta(text)) => self.on_delta(text).await,
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

    /// Appends model text; a reply that reaches `max_reply_bytes` is cut there and ends
    /// with `length`, whatever the provider would have sent.
    pub(super) async fn on_delta(&mut self, mut text: String) {
        let max = self.deps.settings.max_reply_bytes;
        let Some(running) = self.current.as_mut() else { return };
        // Deltas are never empty, so empty content means this is the first text.
        if running.content.is_empty() {
            let seconds = running.started.elapsed().as_secs_f64();
            self.deps.metrics.time_to_first_token.observe(seconds);
            let arm = self.deps.models.arm_label(running.user.id);
            self.deps
                .metrics
                .model_time_to_first_token
                .with_label_values(&[running.model.as_str(), arm])
                .observe(seconds);
        }
        let room = max.saturating_sub(running.content.len());
        let full = text.len() >= room;
        if full {
            cut_to(&mut text, room);
        }
        running.content.push_str(&text);
        let (session_id, message_id) = (self.session.id, running.reply_id);
        if !text.is_empty() {
            self.emit(|seq| ServerFrame::Delta { session_id, seq, message_id, text });
        }
        if full {
            tracing::warn!(%session_id, max, "reply reached the size limit; cutting it");
            self.finish_running(FinishReason::Length, None).await;
        } else {
            self.checkpoint_if_due();
        }
    }

    /// Saves the reply in progress if the last save is older than the checkpoint interval.
    pub(super) fn checkpoint_if_due(&mut self) {
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
            status: MessageStatus::Generating,
            created_at: running.created_at,
            superseded: false,
            model: Some(running.model.clone()),
            replaced_by: None,
        };
        self.deps.writes.checkpoint(self.fence, message);
    }

    /// Cancels the running reply: the upstream request is dropped at once (the task is
    /// aborted, which drops the HTTP response), then the partial reply is stored.
    pub(super) async fn cancel_running(&mut self) {
        if self.current.is_some() {
            self.finish_running(FinishReason::Cancelled, None).await;
        }
    }

    /// Nobody watched for the grace period: cancel the reply and drop the waiting sends.
    pub(super) async fn abandon(&mut self) {
        if self.current.is_some() || !self.queue.is_empty() {
            tracing::info!(session_id = %self.session.id, dropped = self.queue.len(), "nobody watching; cancelling the reply");
            self.deps.metrics.generations_abandoned.inc();
        }
        self.drop_queue(&ErrorBody::new(ErrorCode::Unavailable, "nobody was watching the session"));
        self.cancel_running().await;
    }

    /// Stores the running reply with its outcome and tells every receiver.
    pub(super) async fn finish_running(&mut self, reason: FinishReason, error: Option<ErrorBody>) {
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
            superseded: false,
            model: Some(running.model.clone()),
            replaced_by: None,
        };
        let metrics = &self.deps.metrics;
        let arm = self.deps.models.arm_label(running.user.id);
        metrics.generation_ended(reason, &running.model, arm);
        metrics.reply_duration.observe(running.started.elapsed().as_secs_f64());
        if let Some(error) = &error {
            metrics.error(error.code);
        }
        if let Some(usage) = running.usage {
            metrics.tokens.with_label_values(&["prompt"]).inc_by(u64::from(usage.prompt_tokens));
            metrics.tokens.with_label_values(&["completion"]).inc_by(u64::from(usage.completion_tokens));
            let by_model = |kind| metrics.model_tokens.with_label_values(&[running.model.as_str(), arm, kind]);
            by_model("prompt").inc_by(u64::from(usage.prompt_tokens));
            by_model("completion").inc_by(u64::from(usage.completion_tokens));
        }
        let now = Utc::now();
        let tokens = running.usage.map(|usage| Tokens {
            user_id: running.user.id,
            day: now.date_naive(),
            prompt: usage.prompt_tokens,
            completion: usage.completion_tokens,
        });
        self.session.updated_at = self.session.updated_at.max(now);
        // `done` says what is stored: a reply that cannot be stored in time is not shown as
        // finished well. It ends `error`, and its stored version says so too (the write
        // that timed out stays queued; the `error` version queued after it lands last).
        let save = Save::of(message.clone()).counted().with_tokens(tokens);
        let (reason, error, message) = match self.deps.writes.save(self.fence, save).await {
            Ok(_) => (reason, error, message),
            Err(StoreError::Fenced) => {
                // Another actor runs the session now: nothing more is said or written here.
                self.lost = true;
                return;
            }
            Err(StoreError::TooLarge) => {
                // Sent again whole, it would be refused again: what is kept is its start, as
                // much as a batch takes, counted as the reply.
                tracing::error!(session_id = %self.session.id, message_id = %message.id, "the reply is too large to store whole; it is kept cut short, as error");
                self.deps.metrics.error(ErrorCode::Internal);
                let mut content = message.content;
                cut_to(&mut content, crate::store::MAX_BATCH_TEXT_BYTES);
                let failed = Message { status: MessageStatus::Error, content, ..message };
                self.deps.writes.save_soon(self.fence, Save::of(failed.clone()).counted().with_tokens(tokens));
                let body = ErrorBody::new(
                    ErrorCode::Internal,
                    "the reply is too large for the database to store whole; its start is kept, as failed",
                );
                (FinishReason::Error, Some(body), failed)
            }
            Err(e) => {
                tracing::error!(session_id = %self.session.id, message_id = %message.id, error = %e, "could not store the reply in time; it ends as error");
                self.deps.metrics.error(ErrorCode::Unavailable);
                let failed = Message { status: MessageStatus::Error, ..message };
                self.deps.writes.save_soon(self.fence, Save::of(failed.clone()));
                let body =
                    ErrorBody::new(ErrorCode::Unavailable, "the reply could not be stored; it is kept as failed");
                (FinishReason::Error, Some(body), failed)
            }
        };
        tracing::info!(
            session_id = %self.session.id, user_id = %running.user.id, message_id = %message.id,
            finish_reason = ?reason, tokens = ?message.token_count, "reply ended"
        );
        let (session_id, message_id) = (self.session.id, message.id);
        self.publish_message(message);
        let usage = running.usage;
        self.emit(|seq| ServerFrame::Done { session_id, seq, message_id, finish_reason: reason, usage, error });
    }
}

/// Whether a stored message belongs in a model's context: failed and empty replies do not.
fn counts_as_context(message: &Message) -> bool {
    message.status != MessageStatus::Error && !message.content.is_empty()
}
