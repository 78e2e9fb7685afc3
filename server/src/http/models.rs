//! `GET /api/v1/models` (the models a session may use) and ratings of replies
//! (`POST /api/v1/chat/sessions/{id}/messages/{message_id}/feedback`).

use axum::Json;
use axum::extract::State;
use relay_protocol::{Feedback, FeedbackRequest, MessageStatus, ModelList, Role};

use super::{ApiJson, ChatUser, SessionMessageIds};
use crate::error::AppError;
use crate::state::AppState;

#[utoipa::path(get, path = "/api/v1/models", tag = "chat", security(("bearer" = [])),
    responses((status = 200, description = "The models a session may use, the default first", body = relay_protocol::ModelList),
        (status = 401, description = "unauthorized", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: chat is not available to the caller", body = relay_protocol::ErrorResponse)))]
/// `GET /models`.
pub async fn list(State(state): State<AppState>, ChatUser(_): ChatUser) -> Json<ModelList> {
    Json(state.models.list())
}

#[utoipa::path(post, path = "/api/v1/chat/sessions/{id}/messages/{message_id}/feedback", tag = "chat", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The session"), ("message_id" = uuid::Uuid, Path, description = "A reply of the session")),
    request_body = relay_protocol::FeedbackRequest,
    responses((status = 200, description = "Stored (a new rating replaces the caller's earlier one), with the reply's model", body = relay_protocol::Feedback),
        (status = 400, description = "bad_request: a rating other than 1 or -1", body = relay_protocol::ErrorResponse),
        (status = 401, description = "unauthorized", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: no such session of the caller's, or no reply of the model with this id in it", body = relay_protocol::ErrorResponse),
        (status = 409, description = "conflict: the reply is still being written", body = relay_protocol::ErrorResponse)))]
/// `POST /chat/sessions/{id}/messages/{message_id}/feedback`.
pub async fn feedback(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    SessionMessageIds(session_id, message_id): SessionMessageIds,
    ApiJson(body): ApiJson<FeedbackRequest>,
) -> Result<Json<Feedback>, AppError> {
    if !matches!(body.rating, 1 | -1) {
        return Err(AppError::BadRequest(format!("rating is {}; it must be 1 or -1", body.rating)));
    }
    state.store.get_owned_session(user.id, session_id).await?.ok_or(AppError::NotFound)?;
    let reply = state.store.get_message(session_id, message_id).await?.ok_or(AppError::NotFound)?;
    // Only the model's replies are rated: a user message is no reply to rate.
    if reply.role != Role::Assistant {
        return Err(AppError::NotFound);
    }
    if reply.status == MessageStatus::Generating {
        return Err(AppError::Conflict("the reply is still being written; rate it once it ends".into()));
    }
    // Replies stored before models were named came from the default model.
    let model = reply.model.clone().unwrap_or_else(|| state.models.default_model().name.clone());
    state.store.put_feedback(user.id, &reply, &model, body.rating).await?;
    let rating = if body.rating > 0 { "up" } else { "down" };
    state.metrics.model_feedback.with_label_values(&[model.as_str(), state.models.arm_label(user.id), rating]).inc();
    Ok(Json(Feedback { message_id, rating: body.rating, model }))
}
