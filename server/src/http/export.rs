//! Downloads: `GET /chat/sessions/:id/export?format=md|txt|json` and `GET /me/export`.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiQuery, ChatUser, SessionId};
use crate::auth::AuthUser;
use crate::error::AppError;
use crate::export::{self, Format};
use crate::state::AppState;

/// Query of `GET /chat/sessions/:id/export`.
#[derive(Deserialize)]
pub struct ExportParams {
    format: Option<String>,
}

/// A file to save, not a page to show.
fn attachment(body: String, content_type: &'static str, file_name: &str) -> Response {
    let disposition = format!("attachment; filename=\"{file_name}\"");
    ([(header::CONTENT_TYPE, content_type.to_string()), (header::CONTENT_DISPOSITION, disposition)], body)
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/chat/sessions/{id}/export", tag = "chat", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The session"),
        ("format" = Option<String>, Query, description = "`md` (default), `txt` or `json`", pattern = "^(md|txt|json)$")),
    responses((status = 200, description = "The session as a file to save (`Content-Disposition: attachment`): title, dates, model and every message; in `json` (a SessionExport) the replaced ones too, marked `superseded`",
            content((String = "text/markdown"), (String = "text/plain"), (relay_protocol::SessionExport = "application/json"))),
        (status = 400, description = "bad_request: a format other than md, txt or json", body = relay_protocol::ErrorResponse),
        (status = 401, description = "unauthorized: missing, malformed, forged or expired token", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: no such session, deleted, or not the caller's (or chat is not available to the caller)", body = relay_protocol::ErrorResponse)))]
/// `GET /chat/sessions/:id/export?format=`.
pub async fn session(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    SessionId(id): SessionId,
    ApiQuery(params): ApiQuery<ExportParams>,
) -> Result<Response, AppError> {
    let format = Format::parse(params.format.as_deref())?;
    let export = export::session(&state, &user, id).await?;
    Ok(attachment(export::render(&export, format), format.content_type(), &export::file_name(&export, format)))
}

#[utoipa::path(get, path = "/api/v1/me/export", tag = "auth", security(("bearer" = [])),
    responses((status = 200, description = "Everything the server holds of the caller, as a JSON file to save: the account, every session not yet purged (deleted ones marked) with all its messages, and usage by day", body = relay_protocol::UserExport),
        (status = 401, description = "unauthorized: missing, malformed, forged or expired token", body = relay_protocol::ErrorResponse)))]
/// `GET /me/export`.
pub async fn everything(State(state): State<AppState>, user: AuthUser) -> Result<Response, AppError> {
    let export = export::everything(&state, &user).await?;
    let body = serde_json::to_string_pretty(&export).expect("an export always encodes");
    let name = format!("relay-chat-{}-{}.json", user.username, export.exported_at.format("%Y-%m-%d"));
    Ok(attachment(body, "application/json", &name))
}
