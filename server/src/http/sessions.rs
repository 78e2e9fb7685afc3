//! The REST sessions API: create, list, get with messages, rename, delete.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use relay_protocol::{
    CreateSessionRequest, DeletedResponse, MessagePage, Session, SessionList, SessionWithMessages, UpdateSessionRequest,
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

#[utoipa::path(post, path = "/api/v1/chat/sessions", tag = "chat", security(("bearer" = [])),
    request_body(content = Option<relay_protocol::CreateSessionRequest>, description = "May be empty (title \"New chat\")"),
    responses((status = 201, description = "Session created", body = relay_protocol::Session),
        (status = 400, description = "bad_request: malformed body, or a title over 255 characters", body = relay_protocol::ErrorResponse),
        (status = 401, description = "unauthorized: missing, malformed, forged or expired token", body = relay_protocol::ErrorResponse),
        (status = 403, description = "limit_exceeded: CHAT_MAX_SESSIONS_PER_USER reached", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: chat is not available to the caller", body = relay_protocol::ErrorResponse),
        (status = 413, description = "too_large: body over HTTP_MAX_BODY_BYTES", body = relay_protocol::ErrorResponse)))]
/// `POST /chat/sessions`; the body (`{"title"?}`) may be empty.
pub async fn create(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    OptionalJson(body): OptionalJson<CreateSessionRequest>,
) -> Result<(StatusCode, Json<Session>), AppError> {
    let session = catalog::create(&state, &user, body, None).await?;
    Ok((StatusCode::CREATED, Json(session)))
}

#[utoipa::path(get, path = "/api/v1/chat/sessions", tag = "chat", security(("bearer" = [])),
    params(("page" = Option<u32>, Query, description = "From 1 to 1,000,000, default 1", minimum = 1, maximum = 1000000),
        ("per_page" = Option<u32>, Query, description = "1 to 100, default 20", minimum = 1, maximum = 100)),
    responses((status = 200, description = "One page of sessions, most recently active first", body = relay_protocol::SessionList),
        (status = 400, description = "bad_request: a page or page size out of range, or not a number", body = relay_protocol::ErrorResponse),
        (status = 401, description = "unauthorized: missing, malformed, forged or expired token", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: chat is not available to the caller", body = relay_protocol::ErrorResponse)))]
/// `GET /chat/sessions?page=&per_page=`; a page or page size out of range is `400`.
pub async fn list(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<SessionList>, AppError> {
    Ok(Json(catalog::list(&state, user.id, params.page, params.per_page).await?))
}

#[utoipa::path(get, path = "/api/v1/chat/sessions/{id}", tag = "chat", security(("bearer" = [])), params(("id" = uuid::Uuid, Path, description = "The session")),
    responses((status = 200, description = "The session and its messages, oldest first", body = relay_protocol::SessionWithMessages),
        (status = 401, description = "unauthorized: missing, malformed, forged or expired token", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: no such session, deleted, or not the caller's (or chat is not available to the caller)", body = relay_protocol::ErrorResponse)))]
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

#[utoipa::path(patch, path = "/api/v1/chat/sessions/{id}", tag = "chat", security(("bearer" = [])), params(("id" = uuid::Uuid, Path, description = "The session")),
    request_body = relay_protocol::UpdateSessionRequest,
    responses((status = 200, description = "Renamed", body = relay_protocol::Session),
        (status = 400, description = "bad_request: malformed body, or a blank or too long title", body = relay_protocol::ErrorResponse),
        (status = 401, description = "unauthorized: missing, malformed, forged or expired token", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: no such session, deleted, or not the caller's (or chat is not available to the caller)", body = relay_protocol::ErrorResponse),
        (status = 413, description = "too_large: body over HTTP_MAX_BODY_BYTES", body = relay_protocol::ErrorResponse),
        (status = 503, description = "unavailable: the server is shutting down, or the session's node cannot be reached", body = relay_protocol::ErrorResponse)))]
/// `PATCH /chat/sessions/:id` with `{"title"}`.
pub async fn rename(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    SessionId(id): SessionId,
    ApiJson(body): ApiJson<UpdateSessionRequest>,
) -> Result<Json<Session>, AppError> {
    Ok(Json(catalog::update(&state, &user, id, body, None).await?))
}

#[utoipa::path(delete, path = "/api/v1/chat/sessions/{id}", tag = "chat", security(("bearer" = [])), params(("id" = uuid::Uuid, Path, description = "The session")),
    responses((status = 200, description = "Soft-deleted", body = relay_protocol::DeletedResponse),
        (status = 401, description = "unauthorized: missing, malformed, forged or expired token", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: no such session, deleted, or not the caller's (or chat is not available to the caller)", body = relay_protocol::ErrorResponse),
        (status = 503, description = "unavailable: the server is shutting down, or the session's node cannot be reached", body = relay_protocol::ErrorResponse)))]
/// `DELETE /chat/sessions/:id` (soft delete).
pub async fn delete(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    SessionId(id): SessionId,
) -> Result<Json<DeletedResponse>, AppError> {
    catalog::delete(&state, &user, id, None).await?;
    Ok(Json(DeletedResponse { message: "Session deleted".into() }))
}

/// Query of `GET /chat/sessions/:id/messages`.
#[derive(Deserialize)]
pub struct PageParams {
    /// The page ends just before this message (the newest without it).
    before: Option<uuid::Uuid>,
    /// Messages per page, 1 to [`MAX_PAGE_MESSAGES`] (50 by default).
    limit: Option<u32>,
}

/// The most messages `GET /chat/sessions/:id/messages` answers at once.
const MAX_PAGE_MESSAGES: u32 = 200;

#[utoipa::path(get, path = "/api/v1/chat/sessions/{id}/messages", tag = "chat", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The session"),
        ("before" = Option<uuid::Uuid>, Query, description = "The page ends just before this message"),
        ("limit" = Option<u32>, Query, description = "1 to 200, default 50", minimum = 1, maximum = 200)),
    responses((status = 200, description = "A page of messages, oldest first", body = relay_protocol::MessagePage),
        (status = 400, description = "bad_request: a limit out of range, or a malformed query", body = relay_protocol::ErrorResponse),
        (status = 401, description = "unauthorized: missing, malformed, forged or expired token", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: no such session (or `before` is not one of its messages, or chat is not available to the caller)", body = relay_protocol::ErrorResponse)))]
/// A page of a session's messages, for loading older history on scroll; a limit out of
/// range is `400`.
pub async fn messages(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    SessionId(id): SessionId,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<MessagePage>, AppError> {
    let limit = params.limit.unwrap_or(50);
    if !(1..=MAX_PAGE_MESSAGES).contains(&limit) {
        return Err(AppError::BadRequest(format!("limit must be 1 to {MAX_PAGE_MESSAGES}")));
    }
    state.store.get_owned_session(user.id, id).await?.ok_or(AppError::NotFound)?;
    let (messages, has_more) =
        state.store.messages_before(id, params.before, limit as usize).await?.ok_or(AppError::NotFound)?;
    Ok(Json(MessagePage { messages, has_more }))
}
