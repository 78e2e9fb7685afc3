//! The HTTP surface: routes, the health and metrics endpoints, and the layers every
//! request passes (request ids, tracing, CORS, body limit, JSON errors).

mod admin;
mod auth;
mod client;
mod export;
mod extract;
pub mod listener;
mod messages;
mod models;
mod openapi;
pub(crate) mod origin;
mod prompts;
mod search;
mod sessions;
mod share;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use extract::{ApiJson, ApiQuery, ChatUser, ClientAddr, OptionalJson, SessionId, SessionMessageIds};

use crate::auth::{AuthError, bearer_token};
use crate::error::AppError;
use crate::state::AppState;

/// Builds the router with every route of PROTOCOL.md.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let api = Router::new()
        .route("/auth/register", post(auth::register))
        .route("/auth/login", post(auth::login))
        .route("/auth/me", get(auth::me))
        .route("/me/export", get(export::everything))
        .route("/chat/sessions", post(sessions::create).get(sessions::list))
        .route("/chat/sessions/{id}", get(sessions::get).patch(sessions::rename).delete(sessions::delete))
        .route("/chat/sessions/{id}/messages", post(messages::send).get(sessions::messages))
        .route("/chat/sessions/{id}/export", get(export::session))
        .route("/chat/sessions/{id}/share", post(share::create).get(share::status).delete(share::revoke))
        .route("/shared/{token}", get(share::read))
        .route("/shared/{token}/events", get(share::events))
        .route("/chat/sessions/{id}/regenerate", post(messages::regenerate))
        .route("/chat/sessions/{id}/messages/{message_id}/edit", post(messages::edit))
        .route("/chat/sessions/{id}/messages/{message_id}/feedback", post(models::feedback))
        .route("/chat/search", get(search::search))
        .route("/models", get(models::list))
        .route("/prompts", get(prompts::list).post(prompts::create))
        .route("/prompts/{id}", axum::routing::patch(prompts::update).delete(prompts::delete))
        .route("/chat/quota", get(auth::quota))
        .route("/admin/usage", get(admin::usage))
        .route("/openapi.json", get(openapi::openapi))
        .route("/ws", get(crate::ws::upgrade))
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .fallback(|| async { AppError::NoRoute });
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .nest("/api/v1", api)
        .merge(client::routes(&state.config.client_dir))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_responses))
        .layer(origin::cors(&state.config.cors_allowed_origins))
        .layer({
            let node_id = state.config.node_id.clone();
            TraceLayer::new_for_http().make_span_with(move |request: &Request| {
                let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                // The URI is logged without its query: tokens never travel there, but nothing else should either.
                let path = loggable_path(request.uri().path());
                tracing::info_span!("http", node_id = %node_id, method = %request.method(), path = %path, request_id, user_id = tracing::field::Empty)
            })
        })
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        // Outermost, so every answer (errors of the layers above too) ends its request.
        .layer(axum::middleware::from_fn(listener::track_requests))
        .with_state(state)
}

/// A request path as logs may show it: a share link's token (in `/api/v1/shared/<token>`
/// and the client's `/s/<token>`) is a secret, so it is replaced by `<token>`.
fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    for prefix in ["/api/v1/shared/", "/s/"] {
        if let Some(rest) = path.strip_prefix(prefix) {
            let tail = rest.find('/').map_or("", |i| &rest[i..]);
            return format!("{prefix}<token>{tail}").into();
        }
    }
    path.into()
}

/// Counts every response by status class, and error responses by protocol code.
async fn count_responses(State(state): State<AppState>, request: Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    state.metrics.http_response(response.status().as_u16());
    if let Some(code) = response.extensions().get::<relay_protocol::ErrorCode>() {
        state.metrics.error(*code);
    }
    response
}

/// Gives every error response the protocol's JSON body, whoever produced it (axum's own
/// rejections, the body limit, an upgrade without WebSocket headers, ...).
async fn json_errors(request: Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::TooLarge,
        StatusCode::NOT_FOUND => AppError::NoRoute,
        StatusCode::METHOD_NOT_ALLOWED => AppError::MethodNotAllowed,
        StatusCode::UNAUTHORIZED => AppError::Auth(AuthError::MissingToken),
        s if s.is_client_error() => AppError::BadRequest(if text.is_empty() { s.to_string() } else { text }),
        s => AppError::Internal(format!("{s}: {text}")),
    };
    error.into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    description = "Prometheus text format, for `Authorization: Bearer <METRICS_TOKEN>` or an admin's token. To anyone else the endpoint does not exist: 404, token or not (so no bearer security is declared: a missing token is not a 401 here).",
    responses((status = 200, description = "Prometheus text format (METRICS_TOKEN or an admin's token)", content_type = "text/plain"),
        (status = 404, description = "not_found: neither (no token, a bad one, or not an admin's): to anyone else the endpoint does not exist", body = relay_protocol::ErrorResponse)))]
/// `GET /metrics`: Prometheus text format, for the `METRICS_TOKEN` bearer or an admin's JWT.
/// Anyone else (no token, a bad one, a user's) gets `404`, as for a path that does not exist.
async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Result<Response, AppError> {
    let token = bearer_token(headers.get(header::AUTHORIZATION)).ok_or(AppError::NoRoute)?;
    let scraper = state.config.metrics_token.as_deref().is_some_and(|expected| constant_time_eq(expected, token));
    if !scraper && !state.tokens.verify(token).is_ok_and(|user| user.role == relay_protocol::UserRole::Admin) {
        return Err(AppError::NoRoute);
    }
    state.metrics.active_users.set(state.hub.users() as i64);
    state.sessions.observe();
    if let Some(cluster) = &state.cluster {
        cluster.observe();
    }
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(Body::from(state.metrics.render()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is up")))]
/// `GET /healthz`: the process is up.
async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "The database answers (and, in a cluster, Redis); says which node answered and where limits are kept"), (status = 503, description = "The database (or, in a cluster, Redis) does not answer")))]
/// `GET /readyz`: ready when the database answers and, in a cluster, the node is connected
/// to Redis: subscribed, and its last heartbeat (which renews its leases) got through. It
/// cannot claim or reach sessions without it. Says which node answered
/// (`node_id`), where limits are kept (`redis`: `up`, `down` (limits kept in process
/// meanwhile) or `disabled`) and, in a cluster, its state (`cluster`: `up` or `down`, and
/// `nodes`, the live node processes).
async fn readyz(State(state): State<AppState>) -> Response {
    let redis = state.limiter.redis_status().as_str();
    let database = state.store.ping().await;
    if let Err(e) = &database {
        tracing::warn!(error = %e, "not ready: database unreachable");
    }
    let mut body = serde_json::json!({
        "status": "ready",
        "node_id": state.config.node_id,
        "database": if database.is_ok() { "up" } else { "down" },
        "redis": redis,
    });
    let mut ready = database.is_ok();
    if let Some(cluster) = &state.cluster {
        let up = cluster.is_healthy();
        ready &= up;
        body["cluster"] = serde_json::json!(if up { "up" } else { "down" });
        body["nodes"] = serde_json::json!(cluster.live_instances());
        if !up {
            body["redis"] = serde_json::json!("down");
        }
    }
    if ready {
        Json(body).into_response()
    } else {
        body["status"] = serde_json::json!("unavailable");
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn share_tokens_stay_out_of_logs() {
        use super::loggable_path;
        assert_eq!(loggable_path("/api/v1/shared/abc123/events"), "/api/v1/shared/<token>/events");
        assert_eq!(loggable_path("/api/v1/shared/abc123"), "/api/v1/shared/<token>");
        assert_eq!(loggable_path("/s/abc123"), "/s/<token>");
        assert_eq!(loggable_path("/api/v1/chat/sessions"), "/api/v1/chat/sessions");
    }
}
