//! A user's sessions as a list: create, page through, rename, delete. Shared by the REST
//! handlers and the WebSocket frames, and announced to all of the user's connections.
//!
//! Renames and deletes go through the session's actor (see [`crate::session`]), so they
//! take their place among the session's sends; creating checks the per-user session cap.

use relay_protocol::{ServerFrame, Session, SessionList, check_page, total_pages};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::cluster::ClusterError;
use crate::error::AppError;
use crate::fanout::ReceiverId;
use crate::session::DEFAULT_TITLE;
use crate::state::AppState;

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

/// Creates a session ("New chat" without a title) and announces `session_created`; a user
/// who already has `CHAT_MAX_SESSIONS_PER_USER` sessions gets `limit_exceeded`.
pub async fn create(
    state: &AppState,
    user: &AuthUser,
    title: Option<&str>,
    origin: Origin,
) -> Result<Session, AppError> {
    let title = clean_title(title, Some(DEFAULT_TITLE))?;
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
            Ok(state.store.create_session(user.id, &title).await?)
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
    let title = clean_title(Some(title), None)?;
    let session = state.sessions.rename(user, session_id, &title).await?;
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
