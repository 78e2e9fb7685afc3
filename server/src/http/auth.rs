//! `POST /auth/register`, `POST /auth/login`, `GET /auth/me` and `GET /chat/quota`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use relay_protocol::{AuthResponse, LoginRequest, MeResponse, Quota, RegisterRequest, User, UserRole};

use super::{ApiJson, AppState};
use crate::auth::{self, AuthError, AuthUser};
use crate::error::AppError;
use crate::limits;

/// Creates an account and answers a token for it.
pub async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<AuthResponse>), AppError> {
    auth::validate_username(&body.username)?;
    auth::validate_password(&body.password)?;
    let hash = auth::hash_password(body.password).await?;
    let role = if state.config.is_admin(&body.username) { UserRole::Admin } else { UserRole::User };
    let record = state.store.create_user(&body.username, &hash, role).await?;
    let user = User { id: record.id, username: record.username, role };
    let token = state.tokens.issue(&user)?;
    tracing::info!(user_id = %user.id, username = %user.username, "user registered");
    Ok((StatusCode::CREATED, Json(AuthResponse { token, user })))
}

/// Checks a password and answers a fresh token.
pub async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<AuthResponse>, AppError> {
    let Some(record) = state.store.find_user_by_name(&body.username).await? else {
        auth::burn_password_check(body.password).await;
        return Err(AuthError::WrongCredentials.into());
    };
    if !auth::verify_password(body.password, record.password_hash.clone()).await {
        return Err(AuthError::WrongCredentials.into());
    }
    let role = if record.role == UserRole::Admin || state.config.is_admin(&record.username) {
        UserRole::Admin
    } else {
        UserRole::User
    };
    let user = User { id: record.id, username: record.username, role };
    let token = state.tokens.issue(&user)?;
    Ok(Json(AuthResponse { token, user }))
}

/// The caller and their quota.
pub async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<MeResponse>, AppError> {
    let quota = limits::quota(&state.store, state.config.daily_message_quota, &user).await?;
    Ok(Json(MeResponse { user: user.to_user(), quota }))
}

/// The caller's quota.
pub async fn quota(State(state): State<AppState>, user: AuthUser) -> Result<Json<Quota>, AppError> {
    Ok(Json(limits::quota(&state.store, state.config.daily_message_quota, &user).await?))
}
