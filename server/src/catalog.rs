//! A user's sessions as a list: create, page through, rename, delete. Shared by the REST
//! handlers and the WebSocket frames, and announced to all of the user's connections.

use relay_protocol::{ServerFrame, Session, SessionList, clamp_page, total_pages};
use uuid::Uuid;

use crate::app::AppState;
use crate::error::AppError;
use crate::fanout::ReceiverId;
use crate::session::DEFAULT_TITLE;

/// Longest session title, in characters.
pub const MAX_TITLE_CHARS: usize = 255;

/// The connection that asked, and its request id, so its copy of the announcement echoes it.
pub type Origin = Option<(ReceiverId, Option<String>)>;

fn clean_title(title: Option<&str>, default: Option<&str>) -> Result<String, AppError> {
    let title = title.map(str::trim).filter(|t| !t.is_empty());
    let title = match (title, default) {
        (Some(t), _) => t,
        (None, Some(d)) => d,
        (None, None) => return Err(AppError::BadRequest("title must not be empty".into())),
    };
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(AppError::BadRequest(format!("title is longer than {MAX_TITLE_CHARS} characters")));
    }
    Ok(title.to_string())
}

/// Creates a session ("New chat" without a title) and announces `session_created`.
pub async fn create(state: &AppState, user_id: Uuid, title: Option<&str>, origin: Origin) -> Result<Session, AppError> {
    let title = clean_title(title, Some(DEFAULT_TITLE))?;
    let session = state.store.create_session(user_id, &title).await?;
    state.hub.publish(user_id, origin, |id| ServerFrame::SessionCreated { id, session: session.clone() });
    Ok(session)
}

/// One page of the user's sessions, most recently active first.
pub async fn list(
    state: &AppState,
    user_id: Uuid,
    page: Option<u32>,
    per_page: Option<u32>,
) -> Result<SessionList, AppError> {
    let (page, per_page) = clamp_page(page, per_page);
    let (sessions, total) = state.store.list_sessions(user_id, page, per_page).await?;
    Ok(SessionList { sessions, total, page, per_page, total_pages: total_pages(total, per_page) })
}

/// Renames a session of the user and announces `session_updated`.
pub async fn rename(
    state: &AppState,
    user_id: Uuid,
    session_id: Uuid,
    title: &str,
    origin: Origin,
) -> Result<Session, AppError> {
    let title = clean_title(Some(title), None)?;
    let session = state.store.rename_session(user_id, session_id, &title).await?.ok_or(AppError::NotFound)?;
    state.sessions.renamed(&session);
    state.hub.publish(user_id, origin, |id| ServerFrame::SessionUpdated { id, session: session.clone() });
    Ok(session)
}

/// Soft-deletes a session of the user: its running reply is cancelled (watchers get
/// `done` with `cancelled`), then `session_deleted` is announced.
pub async fn delete(state: &AppState, user_id: Uuid, session_id: Uuid, origin: Origin) -> Result<(), AppError> {
    if !state.store.soft_delete_session(user_id, session_id).await? {
        return Err(AppError::NotFound);
    }
    state.sessions.deleted(session_id).await;
    state.hub.publish(user_id, origin, |id| ServerFrame::SessionDeleted { id, session_id });
    Ok(())
}
