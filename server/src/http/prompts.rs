//! A user's saved prompts: `GET/POST /api/v1/prompts`, `PATCH/DELETE /api/v1/prompts/{id}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use relay_protocol::{
    CreatePromptRequest, MAX_PROMPT_CONTENT_CHARS, MAX_PROMPT_TITLE_CHARS, MAX_PROMPTS_PER_USER, Prompt, PromptList,
    UpdatePromptRequest,
};

use super::extract::PromptId;
use super::{ApiJson, ChatUser};
use crate::error::AppError;
use crate::state::AppState;

/// A title or text as given: trimmed (a text keeps its inner lines), not blank, not too long.
fn checked(what: &str, value: &str, max: usize) -> Result<String, AppError> {
    let chars = value.chars().count();
    if chars > max {
        return Err(AppError::BadRequest(format!("{what} is {chars} characters; the limit is {max}")));
    }
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(AppError::BadRequest(format!("{what} must not be empty")));
    }
    Ok(trimmed.to_owned())
}

#[utoipa::path(get, path = "/api/v1/prompts", tag = "prompts", security(("bearer" = [])),
    responses((status = 200, description = "The caller's saved prompts, by title", body = relay_protocol::PromptList),
        (status = 401, description = "unauthorized", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: chat is not available to the caller", body = relay_protocol::ErrorResponse)))]
/// `GET /prompts`.
pub async fn list(State(state): State<AppState>, ChatUser(user): ChatUser) -> Result<Json<PromptList>, AppError> {
    Ok(Json(PromptList { prompts: state.store.prompts(user.id).await? }))
}

#[utoipa::path(post, path = "/api/v1/prompts", tag = "prompts", security(("bearer" = [])),
    request_body = relay_protocol::CreatePromptRequest,
    responses((status = 201, description = "Saved", body = relay_protocol::Prompt),
        (status = 400, description = "bad_request: a blank or too long title (100) or text (4,000), or an unknown field", body = relay_protocol::ErrorResponse),
        (status = 401, description = "unauthorized", body = relay_protocol::ErrorResponse),
        (status = 403, description = "limit_exceeded: the caller has 200 prompts", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: chat is not available to the caller", body = relay_protocol::ErrorResponse)))]
/// `POST /prompts`.
pub async fn create(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    ApiJson(body): ApiJson<CreatePromptRequest>,
) -> Result<(StatusCode, Json<Prompt>), AppError> {
    let title = checked("title", &body.title, MAX_PROMPT_TITLE_CHARS)?;
    let content = checked("content", &body.content, MAX_PROMPT_CONTENT_CHARS)?;
    let _serialised = state.user_locks.lock(user.id).await;
    if state.store.count_prompts(user.id).await? >= MAX_PROMPTS_PER_USER as u64 {
        return Err(AppError::LimitExceeded(format!(
            "you have {MAX_PROMPTS_PER_USER} prompts, the most allowed; delete some to save more"
        )));
    }
    Ok((StatusCode::CREATED, Json(state.store.create_prompt(user.id, &title, &content).await?)))
}

#[utoipa::path(patch, path = "/api/v1/prompts/{id}", tag = "prompts", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The prompt")),
    request_body = relay_protocol::UpdatePromptRequest,
    responses((status = 200, description = "Changed", body = relay_protocol::Prompt),
        (status = 400, description = "bad_request: a blank or too long title or text, or an unknown field (an empty body changes nothing and answers the prompt)", body = relay_protocol::ErrorResponse),
        (status = 401, description = "unauthorized", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: no such prompt of the caller's", body = relay_protocol::ErrorResponse)))]
/// `PATCH /prompts/{id}`.
pub async fn update(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    PromptId(id): PromptId,
    ApiJson(body): ApiJson<UpdatePromptRequest>,
) -> Result<Json<Prompt>, AppError> {
    let title = body.title.as_deref().map(|t| checked("title", t, MAX_PROMPT_TITLE_CHARS)).transpose()?;
    let content = body.content.as_deref().map(|c| checked("content", c, MAX_PROMPT_CONTENT_CHARS)).transpose()?;
    let prompt = state.store.update_prompt(user.id, id, title.as_deref(), content.as_deref()).await?;
    Ok(Json(prompt.ok_or(AppError::NotFound)?))
}

#[utoipa::path(delete, path = "/api/v1/prompts/{id}", tag = "prompts", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The prompt")),
    responses((status = 204, description = "Deleted"),
        (status = 401, description = "unauthorized", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: no such prompt of the caller's", body = relay_protocol::ErrorResponse)))]
/// `DELETE /prompts/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    PromptId(id): PromptId,
) -> Result<StatusCode, AppError> {
    if state.store.delete_prompt(user.id, id).await? { Ok(StatusCode::NO_CONTENT) } else { Err(AppError::NotFound) }
}
