//! The REST sessions API: create, list, get with messages, rename, delete.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use relay_protocol::{
    CreateSessionRequest, DeletedResponse, Session, SessionList, SessionWithMessages, UpdateSessionRequest,
};
use serde::Deserialize;

use super::{ApiJson, ApiQuery, ChatUser, OptionalJson, SessionId};
use crate::catalog;
use crate::error::AppError;
use crate::state::AppState;

/// How many messages `GET /chat/sessions/:id` returns at most (the most recent).
const MAX_MESSAGES_RETURNED: usize = 1000;

/// Query of `GET /chat/sessions`.
#[derive(Deserialize)]
pub struct ListParams {
    page: Option<u32>,
    per_page: Option<u32>,
}

/// `POST /chat/sessions`; the body (`{"title"?}`) may be empty.
pub async fn create(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    OptionalJson(body): OptionalJson<CreateSessionRequest>,
) -> Result<(StatusCode, Json<Session>), AppError> {
    let session = catalog::create(&state, &user, body.title.as_deref(), None).await?;
    Ok((StatusCode::CREATED, Json(session)))
}

/// `GET /chat/sessions?page=&per_page=`.
pub async fn list(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<SessionList>, AppError> {
    Ok(Json(catalog::list(&state, user.id, params.page, params.per_page).await?))
}

/// `GET /chat/sessions/:id`: the session and its messages, oldest first.
pub async fn get(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    SessionId(id): SessionId,
) -> Result<Json<SessionWithMessages>, AppError> {
    let session = state.store.get_owned_session(user.id, id).await?.ok_or(AppError::NotFound)?;
    let messages = state.store.recent_messages(id, MAX_MESSAGES_RETURNED).await?;
    Ok(Json(SessionWithMessages { session, messages }))
}

/// `PATCH /chat/sessions/:id` with `{"title"}`.
pub async fn rename(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    SessionId(id): SessionId,
    ApiJson(body): ApiJson<UpdateSessionRequest>,
) -> Result<Json<Session>, AppError> {
    Ok(Json(catalog::rename(&state, &user, id, &body.title, None).await?))
}

/// `DELETE /chat/sessions/:id` (soft delete).
pub async fn delete(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    SessionId(id): SessionId,
) -> Result<Json<DeletedResponse>, AppError> {
    catalog::delete(&state, &user, id, None).await?;
    Ok(Json(DeletedResponse { message: "Session deleted".into() }))
}
