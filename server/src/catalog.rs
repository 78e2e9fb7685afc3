//! A user's sessions as a list: create, page through, rename, delete. Shared by the REST
//! handlers and the WebSocket frames, and announced to all of the user's connections.
//!
//! Renames and deletes go through the session's actor (see [`crate::session`]), so they
//! take their place among the session's sends; creating checks the per-user session cap.

use relay_protocol::{
    CreateSessionRequest, MAX_SYSTEM_PROMPT_CHARS, ServerFrame, Session, SessionList, UpdateSessionRequest, check_page,
    total_pages,
};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::cluster::ClusterError;
use crate::error::AppError;
use crate::fanout::ReceiverId;
use crate::session::DEFAULT_TITLE;
use crate::state::AppState;
use crate::store::SessionChange;

/// Longest session title, in characters.
pub const MAX_TITLE_CHARS: usize = 255;

/// The connection that asked, and its request id, so its copy of the announcement echoes it.
pub type Origin = Option<(ReceiverId, Option<String>)>;

/// A title as given, trimmed; the default when absent or blank. At most
/// [`MAX_TITLE_CHARS`] as given (before trimming, as the OpenAPI document's `maxLength`
/// counts them).
fn clean_title(title: Option<&str>, default: Option<&str>) -> Result<String, AppError> {
    if title.is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS) {
        return Err(AppError::BadRequest(format!("title is longer than {MAX_TITLE_CHARS} characters")));
    }
    let title = title.map(str::trim).filter(|t| !t.is_empty());
    let title = match (title, default) {
        (Some(t), _) => t,
        (None, Some(d)) => d,
        (None, None) => return Err(AppError::BadRequest("title must not be empty".into())),
    };
    Ok(title.to_string())
}

/// A system prompt as given: trimmed, `None` when blank; at most
/// [`MAX_SYSTEM_PROMPT_CHARS`], and small enough to leave the model's context room for
/// messages (at most half of the model's budget).
fn clean_system_prompt(state: &AppState, prompt: Option<&str>, model: &str) -> Result<Option<String>, AppError> {
    // Counted as given, before trimming, as the OpenAPI document's `maxLength` counts.
    let chars = prompt.map_or(0, |p| p.chars().count());
    let Some(prompt) = prompt.map(str::trim).filter(|p| !p.is_empty()) else { return Ok(None) };
    if chars > MAX_SYSTEM_PROMPT_CHARS {
        return Err(AppError::BadRequest(format!(
            "system_prompt is {chars} characters; the limit is {MAX_SYSTEM_PROMPT_CHARS}"
        )));
    }
    let budget = state.models.for_session(Some(model)).context_tokens;
    let cost = crate::session::budget::message_cost(prompt);
    if cost > budget / 2 {
        return Err(AppError::BadRequest(format!(
            "system_prompt is about {cost} tokens; it may take at most half of the model's context ({})",
            budget / 2
        )));
    }
    Ok(Some(prompt.to_owned()))
}

/// A model as asked for: one on offer, else `bad_request` naming them.
fn offered_model(state: &AppState, model: &str) -> Result<String, AppError> {
    match state.models.find(model) {
        Some(m) => Ok(m.name.clone()),
        None => {
            let offered: Vec<String> = state.models.list().models.into_iter().map(|m| m.name).collect();
            Err(AppError::BadRequest(format!("model {model:?} is not offered; GET /api/v1/models lists {offered:?}")))
        }
    }
}

/// Creates a session ("New chat" without a title) and announces `session_created`; a user
/// who already has `CHAT_MAX_SESSIONS_PER_USER` sessions gets `limit_exceeded`. Without a
/// model named, the session gets the default model, or the variant for the users a model
/// experiment assigns to it.
pub async fn create(
    state: &AppState,
    user: &AuthUser,
    request: CreateSessionRequest,
    origin: Origin,
) -> Result<Session, AppError> {
    let title = clean_title(request.title.as_deref(), Some(DEFAULT_TITLE))?;
    let model = match request.model.as_deref() {
        Some(model) => offered_model(state, model)?,
        None => state.models.for_new_session(user.id).name.clone(),
    };
    let system_prompt = clean_system_prompt(state, request.system_prompt.as_deref(), &model)?;
    let max = state.config.max_sessions_per_user;
    let session = {
        let _serialised = state.user_locks.lock(user.id).await;
        // Other nodes create sessions too: the cap's count and the write it guards hold the
        // user's cluster-wide lock (without Redis answering, the node's lock alone; while
        // another node holds it, the create waits, then is refused rather than racing it).
        let hold = 2 * state.config.database_timeout;
        let cluster_lock = match &state.cluster {
            Some(cluster) => match cluster.lock_user(user.id, "sessions", hold).await {
                Ok(lock) => Some(lock),
                Err(ClusterError::Timeout) => {
                    return Err(AppError::Unavailable {
                        reason: "another session is being created; retry",
                        retry_after_ms: 500,
                    });
                }
                Err(e) => {
                    tracing::warn!(user_id = %user.id, error = %e, "no cluster lock for the sessions cap; checking on this node only");
                    None
                }
            },
            None => None,
        };
        let created = async {
            if state.store.count_sessions(user.id).await? >= max {
                state.metrics.limit_refused("sessions_per_user");
                return Err(AppError::LimitExceeded(format!(
                    "you have {max} sessions, the most allowed; delete some to create more"
                )));
            }
            Ok(state.store.create_session(user.id, &title, system_prompt, Some(model)).await?)
        }
        .await;
        if let Some(lock) = cluster_lock {
            lock.release().await;
        }
        created?
    };
    state.hub.publish(user.id, origin, |id| ServerFrame::SessionCreated { id, session: session.clone() });
    Ok(session)
}

/// One page of the user's sessions, most recently active first; a page or page size out
/// of range is `bad_request`.
pub async fn list(
    state: &AppState,
    user_id: Uuid,
    page: Option<u32>,
    per_page: Option<u32>,
) -> Result<SessionList, AppError> {
    let (page, per_page) = check_page(page, per_page).map_err(AppError::BadRequest)?;
    let (sessions, total) = state.store.list_sessions(user_id, page, per_page).await?;
    Ok(SessionList { sessions, total, page, per_page, total_pages: total_pages(total, per_page) })
}

/// Renames a session of the user and announces `session_updated`.
pub async fn rename(
    state: &AppState,
    user: &AuthUser,
    session_id: Uuid,
    title: &str,
    origin: Origin,
) -> Result<Session, AppError> {
    let request = UpdateSessionRequest { title: Some(title.to_owned()), ..UpdateSessionRequest::default() };
    update(state, user, session_id, request, origin).await
}

/// Changes a session's title, system prompt or model (at least one), and announces
/// `session_updated`; the next reply uses the change.
pub async fn update(
    state: &AppState,
    user: &AuthUser,
    session_id: Uuid,
    request: UpdateSessionRequest,
    origin: Origin,
) -> Result<Session, AppError> {
    if request.title.is_none() && request.system_prompt.is_none() && request.model.is_none() {
        // Nothing to change: the session as it is.
        return state.store.get_owned_session(user.id, session_id).await?.ok_or(AppError::NotFound);
    }
    let title = request.title.as_deref().map(|t| clean_title(Some(t), None)).transpose()?;
    let model = request.model.as_deref().map(|m| offered_model(state, m)).transpose()?;
    let mut system_prompt = None;
    if request.system_prompt.is_some() || model.is_some() {
        // The instructions must fit the model that will read them: the new prompt the
        // session's model (or the new one), the kept prompt a new model.
        let current = state.store.get_owned_session(user.id, session_id).await?.ok_or(AppError::NotFound)?;
        let for_model =
            model.clone().unwrap_or_else(|| state.models.for_session(current.model.as_deref()).name.clone());
        let kept = current.system_prompt;
        match &request.system_prompt {
            Some(prompt) => system_prompt = Some(clean_system_prompt(state, prompt.as_deref(), &for_model)?),
            None => {
                clean_system_prompt(state, kept.as_deref(), &for_model)?;
            }
        }
    }
    let change = SessionChange { title, system_prompt, model };
    let session = state.sessions.update(user, session_id, change).await?;
    state.hub.publish(user.id, origin, |id| ServerFrame::SessionUpdated { id, session: session.clone() });
    Ok(session)
}

/// Soft-deletes a session of the user: its running reply is cancelled (watchers get
/// `done` with `cancelled`), queued sends are answered `not_found`, then
/// `session_deleted` is announced.
pub async fn delete(state: &AppState, user: &AuthUser, session_id: Uuid, origin: Origin) -> Result<(), AppError> {
    state.sessions.delete(user, session_id).await?;
    state.hub.publish(user.id, origin, |id| ServerFrame::SessionDeleted { id, session_id });
    Ok(())
}
