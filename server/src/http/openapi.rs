//! `GET /api/v1/openapi.json`: the REST API as an OpenAPI document, generated from the
//! handlers' annotations and the protocol crate's types, so it cannot drift from the code.
//! The WebSocket protocol (`GET /api/v1/ws`) is listed as a path; its frames are described
//! in `docs/PROTOCOL.md`.

use axum::Json;
use axum::extract::State;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::config::Config;
use crate::state::AppState;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "relay-chat", description = "REST API of relay-chat; the wire contract is docs/PROTOCOL.md."),
    paths(
        super::auth::register,
        super::auth::login,
        super::auth::me,
        super::auth::quota,
        super::sessions::create,
        super::sessions::list,
        super::sessions::get,
        super::sessions::rename,
        super::sessions::delete,
        super::messages::send,
        super::sessions::messages,
        super::messages::regenerate,
        super::messages::edit,
        super::search::search,
        super::export::session,
        super::export::everything,
        super::models::list,
        super::models::feedback,
        super::prompts::list,
        super::prompts::create,
        super::prompts::update,
        super::prompts::delete,
        super::share::create,
        super::share::status,
        super::share::revoke,
        super::share::read,
        super::share::events,
        super::admin::usage,
        websocket,
        openapi,
        super::healthz,
        super::readyz,
        super::metrics,
    ),
    components(schemas(relay_protocol::SseEvent, relay_protocol::ErrorCode, relay_protocol::ShareEnded)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// Adds the bearer-token scheme every protected path names.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// The WebSocket endpoint, documented here (its handler is the upgrade in `ws`).
#[utoipa::path(get, path = "/api/v1/ws", tag = "chat",
    description = "Upgrades to the WebSocket protocol of docs/PROTOCOL.md (RFC 6455): authenticate with the Authorization header or a first `auth` frame.",
    params(("Connection" = String, Header, description = "Includes `upgrade`", pattern = "[Uu][Pp][Gg][Rr][Aa][Dd][Ee]"),
        ("Upgrade" = String, Header, description = "`websocket`", pattern = "^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$"),
        ("Sec-WebSocket-Version" = String, Header, description = "`13`", pattern = "^13$"),
        ("Sec-WebSocket-Key" = String, Header, description = "16 random bytes in base64", pattern = "^[A-Za-z0-9+/]{22}==$")),
    responses((status = 101, description = "Switching protocols"),
        (status = 400, description = "bad_request: not a WebSocket upgrade request", body = relay_protocol::ErrorResponse),
        (status = 401, description = "unauthorized: a bad token in the header", body = relay_protocol::ErrorResponse),
        (status = 403, description = "forbidden (origin) or limit_exceeded (connections per user)", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: chat is not available to the caller", body = relay_protocol::ErrorResponse)))]
#[allow(dead_code)]
fn websocket() {}

/// Serves the document, with the limits this server is configured with.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", content_type = "application/json")))]
pub async fn openapi(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(document(&state.config))
}

/// The document as this server answers it: the generated one, with configured limits in
/// place of their defaults (a message's `maxLength` is `CHAT_MAX_MESSAGE_LENGTH`).
pub fn document(config: &Config) -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document always encodes");
    for schema in ["SendMessageRequest", "EditMessageRequest"] {
        let pointer = format!("/components/schemas/{schema}/properties/content/maxLength");
        if let Some(max) = doc.pointer_mut(&pointer) {
            *max = serde_json::json!(config.max_message_length);
        }
    }
    // A session's model is one of those this server offers (`null`: as if absent).
    let mut names: Vec<serde_json::Value> = config.models.iter().map(|m| serde_json::json!(m.name)).collect();
    names.push(serde_json::Value::Null);
    for schema in ["CreateSessionRequest", "UpdateSessionRequest"] {
        let pointer = format!("/components/schemas/{schema}/properties/model");
        if let Some(model) = doc.pointer_mut(&pointer) {
            model["enum"] = serde_json::json!(names);
        }
    }
    // A rating is 1 or -1, nothing between.
    if let Some(rating) = doc.pointer_mut("/components/schemas/FeedbackRequest/properties/rating") {
        *rating =
            serde_json::json!({"type": "integer", "enum": [1, -1], "description": "1 (thumbs up) or -1 (thumbs down)"});
    }
    doc
}
