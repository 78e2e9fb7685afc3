//! `POST /auth/register`, `POST /auth/login`, `GET /auth/me` and `GET /chat/quota`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use relay_protocol::{AuthResponse, LoginRequest, MeResponse, Quota, RegisterRequest, User, UserRole};

use std::time::Duration;

use super::{ApiJson, ChatUser, ClientAddr};
use crate::auth::{self, AuthError, AuthUser};
use crate::error::AppError;
use crate::limits::{self, Rate};
use crate::state::AppState;
use crate::store::StoreError;

#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = relay_protocol::RegisterRequest,
    responses((status = 201, description = "Account created", body = relay_protocol::AuthResponse),
        (status = 400, description = "bad_request: malformed body, or a username or password that breaks the rules", body = relay_protocol::ErrorResponse),
        (status = 409, description = "conflict: the username is not available (taken, or reserved for an admin by CHAT_ADMIN_USERS)", body = relay_protocol::ErrorResponse),
        (status = 413, description = "too_large: body over HTTP_MAX_BODY_BYTES", body = relay_protocol::ErrorResponse),
        (status = 429, description = "rate_limited: too many registrations from this address", body = relay_protocol::ErrorResponse),
        (status = 503, description = "unavailable: too many password checks waiting", body = relay_protocol::ErrorResponse)))]
/// Creates an account and answers a token for it; at most
/// `AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR` from one client address. A name listed in
/// `CHAT_ADMIN_USERS` is the operator's to create (`relay-server create-admin`): whoever
/// registered it first would be an admin. It is refused exactly like a taken name, after
/// the same hash, so the answer tells nothing more than "not available".
pub async fn register(
    State(state): State<AppState>,
    addr: ClientAddr,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<AuthResponse>), AppError> {
    auth::validate_username(&body.username)?;
    auth::validate_password(&body.password)?;
    let rate = Rate { limit: state.config.registrations_per_address_per_hour, period: Duration::from_secs(3600) };
    let decision = state.limiter.rate(&format!("register:ip:{}", addr.limit_key()), rate).await;
    if !decision.allowed {
        state.metrics.limit_refused("registrations_per_address");
        return Err(AppError::TooManyAttempts { retry_after_ms: decision.retry_after.as_millis().max(1) as u64 });
    }
    let hash = state.passwords.hash(body.password).await.map_err(|e| counted(&state, e))?;
    let role = state.tokens.account_role(&body.username);
    if role == UserRole::Admin {
        tracing::info!(username = %body.username, "registration of a name reserved by CHAT_ADMIN_USERS refused");
        return Err(AuthError::UsernameUnavailable.into());
    }
    let record = state.store.create_user(&body.username, &hash, role).await.map_err(|e| match e {
        StoreError::Conflict => AppError::from(AuthError::UsernameUnavailable),
        other => other.into(),
    })?;
    let user = User { id: record.id, username: record.username, role };
    let token = state.tokens.issue(&user)?;
    tracing::info!(user_id = %user.id, username = %user.username, "user registered");
    Ok((StatusCode::CREATED, Json(AuthResponse { token, user })))
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = relay_protocol::LoginRequest,
    responses((status = 200, description = "Logged in", body = relay_protocol::AuthResponse),
        (status = 400, description = "bad_request: malformed body", body = relay_protocol::ErrorResponse),
        (status = 401, description = "unauthorized: wrong username or password (a username no account can have is answered the same)", body = relay_protocol::ErrorResponse),
        (status = 413, description = "too_large: body over HTTP_MAX_BODY_BYTES", body = relay_protocol::ErrorResponse),
        (status = 429, description = "rate_limited: too many failed logins for this name or address", body = relay_protocol::ErrorResponse),
        (status = 503, description = "unavailable: too many password checks waiting", body = relay_protocol::ErrorResponse)))]
/// Checks a password and answers a fresh token. The role comes from `CHAT_ADMIN_USERS`
/// as it is now, not from what was stored at registration.
///
/// Failed logins are limited per username and per client address, and each attempt takes
/// its place in both counts *before* its password is checked, in one atomic step per
/// count: attempts racing each other each see their own count, so a burst gets no more
/// guesses than the limit. A place is given back when the attempt is refused or turns out
/// not to be a wrong guess (a success, an overloaded hasher). A name that breaks the naming
/// rule cannot be an account: it is answered like a wrong password at once, and never
/// becomes a limiter key (which an attacker could otherwise make as long as a body).
pub async fn login(
    State(state): State<AppState>,
    addr: ClientAddr,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<AuthResponse>, AppError> {
    if auth::validate_username(&body.username).is_err() {
        return Err(AuthError::WrongCredentials.into());
    }
    let failures = [
        (format!("login-fail:user:{}", body.username.to_lowercase()), state.config.login_failures_per_username),
        (format!("login-fail:ip:{}", addr.limit_key()), state.config.login_failures_per_address),
    ];
    let limiter = &state.limiter;
    for (taken, (key, max)) in failures.iter().enumerate() {
        let (count, ends_in) = limiter.hit_window(key, state.config.login_window).await;
        if count > *max {
            for (key, _) in &failures[..=taken] {
                limiter.give_back_window(key).await;
            }
            state.metrics.limit_refused("login_failures");
            return Err(AppError::TooManyAttempts { retry_after_ms: ends_in.as_millis().max(1) as u64 });
        }
    }
    let outcome = check_password(&state, body).await;
    if !matches!(outcome, Err(AppError::Auth(AuthError::WrongCredentials))) {
        for (key, _) in &failures {
            limiter.give_back_window(key).await;
        }
    }
    outcome
}

/// The password check behind [`login`].
async fn check_password(state: &AppState, body: LoginRequest) -> Result<Json<AuthResponse>, AppError> {
    if auth::validate_password(&body.password).is_err() {
        // No stored password breaks the rules, so this cannot match: answer without hashing.
        return Err(AuthError::WrongCredentials.into());
    }
    let Some(record) = state.store.find_user_by_name(&body.username).await? else {
        state.passwords.burn(body.password).await.map_err(|e| counted(state, e))?;
        return Err(AuthError::WrongCredentials.into());
    };
    if !state.passwords.verify(body.password, record.password_hash.clone()).await.map_err(|e| counted(state, e))? {
        return Err(AuthError::WrongCredentials.into());
    }
    let role = state.tokens.account_role(&record.username);
    let user = User { id: record.id, username: record.username, role };
    let token = state.tokens.issue(&user)?;
    Ok(Json(AuthResponse { token, user }))
}

/// Counts a password check refused because too many were waiting.
fn counted(state: &AppState, error: AuthError) -> AuthError {
    if matches!(error, AuthError::Overloaded) {
        state.metrics.limit_refused("password_queue");
    }
    error
}

#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, description = "The caller and their quota", body = relay_protocol::MeResponse),
        (status = 401, description = "unauthorized: missing, malformed, forged or expired token", body = relay_protocol::ErrorResponse)))]
/// The caller and their quota.
pub async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<MeResponse>, AppError> {
    let quota = limits::quota(&state.store, state.config.daily_message_quota, &user).await?;
    Ok(Json(MeResponse { user: user.to_user(), quota }))
}

#[utoipa::path(get, path = "/api/v1/chat/quota", tag = "chat", security(("bearer" = [])),
    responses((status = 200, description = "The caller's quota today", body = relay_protocol::Quota),
        (status = 401, description = "unauthorized: missing, malformed, forged or expired token", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: chat is not available to the caller", body = relay_protocol::ErrorResponse)))]
/// The caller's quota (a chat route: `404` for whoever does not have chat).
pub async fn quota(State(state): State<AppState>, ChatUser(user): ChatUser) -> Result<Json<Quota>, AppError> {
    Ok(Json(limits::quota(&state.store, state.config.daily_message_quota, &user).await?))
}
