//! `GET /api/v1/admin/usage?day=&user_id=`: the usage ledger of one day, for admins. To
//! anyone else (no token, a bad one, a user's) the endpoint does not exist (`404`), like
//! `/metrics`: the token is checked before the query, so only an admin learns that a
//! query is malformed.

use axum::Json;
use axum::extract::State;
use chrono::{NaiveDate, Utc};
use relay_protocol::{ModelUsage, UsageReport, UserRole};
use serde::Deserialize;
use uuid::Uuid;

use super::ApiQuery;
use crate::auth::AuthUser;
use crate::error::AppError;
use crate::state::AppState;

/// Query of `GET /admin/usage`.
#[derive(Deserialize)]
pub struct UsageParams {
    /// The day, `YYYY-MM-DD` (UTC); today when absent.
    day: Option<NaiveDate>,
    /// One user only.
    user_id: Option<Uuid>,
}

#[utoipa::path(get, path = "/api/v1/admin/usage", tag = "admin",
    description = "For an admin's `Authorization: Bearer` token. To anyone else the endpoint does not exist: 404, token or not (so no bearer security is declared: a missing token is not a 401 here).",
    params(("day" = Option<String>, Query, description = "The day, YYYY-MM-DD (UTC); today by default"),
        ("user_id" = Option<uuid::Uuid>, Query, description = "One user only")),
    responses((status = 200, description = "Every user's messages and tokens that day, and every model's replies (by how they ended), tokens and ratings, with its arm of the model experiment", body = relay_protocol::UsageReport),
        (status = 400, description = "bad_request: not a day or not a user id (told to admins only)", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: not an admin's token (or none): to anyone else the endpoint does not exist", body = relay_protocol::ErrorResponse)))]
/// Every user's (or one user's) messages and tokens on a day, the most tokens first.
pub async fn usage(
    State(state): State<AppState>,
    user: Result<AuthUser, AppError>,
    params: Result<ApiQuery<UsageParams>, AppError>,
) -> Result<Json<UsageReport>, AppError> {
    if !user.is_ok_and(|user| user.role == UserRole::Admin) {
        return Err(AppError::NoRoute);
    }
    let ApiQuery(params) = params?;
    let day = params.day.unwrap_or_else(|| Utc::now().date_naive());
    let users = state.store.usage_report(day, params.user_id).await?;
    let default = &state.models.default_model().name;
    let mut models: Vec<ModelUsage> = Vec::new();
    for d in state.store.model_days(day).await? {
        // Replies stored before models were named came from the default model.
        let model = d.model.unwrap_or_else(|| default.clone());
        let row = match models.iter().position(|m| m.model == model) {
            Some(i) => &mut models[i],
            None => {
                models.push(ModelUsage {
                    arm: state.models.arm_of(&model).to_owned(),
                    model,
                    replies: 0,
                    complete: 0,
                    cancelled: 0,
                    failed: 0,
                    completion_tokens: 0,
                    thumbs_up: 0,
                    thumbs_down: 0,
                });
                models.last_mut().expect("just pushed")
            }
        };
        row.replies += d.complete + d.cancelled + d.failed;
        row.complete += d.complete;
        row.cancelled += d.cancelled;
        row.failed += d.failed;
        row.completion_tokens += d.completion_tokens;
        row.thumbs_up += d.thumbs.0;
        row.thumbs_down += d.thumbs.1;
    }
    Ok(Json(UsageReport { day, users, models }))
}
