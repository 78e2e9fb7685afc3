//! The REST calls the client makes, with the protocol crate's types for every body.

use gloo_net::http::{Request, RequestBuilder, Response};
use relay_protocol::{
    AuthResponse, CreateSessionRequest, DeletedResponse, ErrorResponse, LoginRequest, MessagePage, RegisterRequest,
    SearchResults, Session, SessionList, SessionWithMessages, UpdateSessionRequest,
};
use relay_protocol::{
    CreatePromptRequest, CreateShareRequest, Feedback, FeedbackRequest, ModelList, Prompt, PromptList, SessionShare,
    ShareCreated, ShareStatus, SharedSession,
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// A failed call: the server's error, or a network failure.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// The HTTP status (0 when the server was not reached).
    pub status: u16,
    /// The protocol error code, when the server answered one.
    pub code: Option<relay_protocol::ErrorCode>,
    /// What to tell the user.
    pub message: String,
}

impl ApiError {
    fn network(e: impl std::fmt::Display) -> ApiError {
        ApiError { status: 0, code: None, message: format!("cannot reach the server ({e})") }
    }
}

async fn answer<T: DeserializeOwned>(response: Result<Response, gloo_net::Error>) -> Result<T, ApiError> {
    let response = response.map_err(ApiError::network)?;
    if response.ok() {
        return response.json().await.map_err(ApiError::network);
    }
    let status = response.status();
    match response.json::<ErrorResponse>().await {
        Ok(body) => Err(ApiError { status, code: Some(body.error.code), message: body.error.message }),
        Err(_) => Err(ApiError { status, code: None, message: format!("the server answered {status}") }),
    }
}

/// The answer to a delete: done, also when it was gone already (`404`).
async fn gone(response: Result<Response, gloo_net::Error>) -> Result<(), ApiError> {
    let response = response.map_err(ApiError::network)?;
    if response.ok() || response.status() == 404 {
        return Ok(());
    }
    Err(answer::<serde_json::Value>(Ok(response)).await.err().unwrap_or_else(|| ApiError::network("?")))
}

fn authed(builder: RequestBuilder, token: &str) -> RequestBuilder {
    builder.header("Authorization", &format!("Bearer {token}"))
}

/// Logs in.
pub async fn login(username: &str, password: &str) -> Result<AuthResponse, ApiError> {
    let body = LoginRequest { username: username.into(), password: password.into() };
    let request = Request::post("/api/v1/auth/login").json(&body).map_err(ApiError::network)?;
    answer(request.send().await).await
}

/// Creates an account.
pub async fn register(username: &str, password: &str) -> Result<AuthResponse, ApiError> {
    let body = RegisterRequest { username: username.into(), password: password.into() };
    let request = Request::post("/api/v1/auth/register").json(&body).map_err(ApiError::network)?;
    answer(request.send().await).await
}

/// One page of the user's sessions, most recently active first.
pub async fn sessions(token: &str, page: u32) -> Result<SessionList, ApiError> {
    let url = format!("/api/v1/chat/sessions?page={page}&per_page=30");
    answer(authed(Request::get(&url), token).send().await).await
}

/// One of the user's sessions, with its latest messages (`404` for an unknown session or
/// another user's).
pub async fn session(token: &str, id: Uuid) -> Result<SessionWithMessages, ApiError> {
    answer(authed(Request::get(&format!("/api/v1/chat/sessions/{id}")), token).send().await).await
}

/// Creates a session.
pub async fn create_session(token: &str) -> Result<Session, ApiError> {
    let request = authed(Request::post("/api/v1/chat/sessions"), token)
        .json(&CreateSessionRequest::default())
        .map_err(ApiError::network)?;
    answer(request.send().await).await
}

/// Renames a session.
pub async fn rename_session(token: &str, id: Uuid, title: &str) -> Result<Session, ApiError> {
    let request = authed(Request::patch(&format!("/api/v1/chat/sessions/{id}")), token)
        .json(&UpdateSessionRequest { title: Some(title.into()), ..Default::default() })
        .map_err(ApiError::network)?;
    answer(request.send().await).await
}

/// Deletes a session.
pub async fn delete_session(token: &str, id: Uuid) -> Result<DeletedResponse, ApiError> {
    answer(authed(Request::delete(&format!("/api/v1/chat/sessions/{id}")), token).send().await).await
}

/// Messages older than `before`, oldest first.
pub async fn older_messages(token: &str, session: Uuid, before: Uuid) -> Result<MessagePage, ApiError> {
    let url = format!("/api/v1/chat/sessions/{session}/messages?before={before}&limit=50");
    answer(authed(Request::get(&url), token).send().await).await
}

/// One page of the user's messages that hold every word of `query`, best first.
pub async fn search(token: &str, query: &str, page: u32) -> Result<SearchResults, ApiError> {
    let q = String::from(js_sys::encode_uri_component(query));
    let url = format!("/api/v1/chat/search?q={q}&page={page}&per_page=20");
    answer(authed(Request::get(&url), token).send().await).await
}

/// A session exported as a file (`md`, `txt` or `json`): its name, as the server suggests
/// it, and its text.
pub async fn export(token: &str, session: Uuid, format: &str) -> Result<(String, String), ApiError> {
    let url = format!("/api/v1/chat/sessions/{session}/export?format={format}");
    let response = authed(Request::get(&url), token).send().await.map_err(ApiError::network)?;
    if !response.ok() {
        return Err(answer::<serde_json::Value>(Ok(response)).await.err().unwrap_or_else(|| ApiError::network("?")));
    }
    let name = response
        .headers()
        .get("content-disposition")
        .and_then(|d| d.split("filename=\"").nth(1).map(|n| n.trim_end_matches('"').to_string()))
        .unwrap_or_else(|| format!("chat.{format}"));
    Ok((name, response.text().await.map_err(ApiError::network)?))
}

/// Makes a new share link for a session (an earlier one stops working).
pub async fn create_share(token: &str, session: Uuid, expires_in_secs: Option<u64>) -> Result<ShareCreated, ApiError> {
    let request = authed(Request::post(&format!("/api/v1/chat/sessions/{session}/share")), token)
        .json(&CreateShareRequest { expires_in_secs })
        .map_err(ApiError::network)?;
    answer(request.send().await).await
}

/// A session's working share link, if it has one.
pub async fn share_status(token: &str, session: Uuid) -> Result<Option<ShareStatus>, ApiError> {
    let url = format!("/api/v1/chat/sessions/{session}/share");
    let answered: SessionShare = answer(authed(Request::get(&url), token).send().await).await?;
    Ok(answered.share)
}

/// Revokes a session's share link.
pub async fn revoke_share(token: &str, session: Uuid) -> Result<(), ApiError> {
    let url = format!("/api/v1/chat/sessions/{session}/share");
    gone(authed(Request::delete(&url), token).send().await).await
}

/// What a share link shows (no login).
pub async fn shared(share_token: &str) -> Result<SharedSession, ApiError> {
    let token = String::from(js_sys::encode_uri_component(share_token));
    answer(Request::get(&format!("/api/v1/shared/{token}")).send().await).await
}

/// The models a session may use.
pub async fn models(token: &str) -> Result<ModelList, ApiError> {
    answer(authed(Request::get("/api/v1/models"), token).send().await).await
}

/// Changes a session's model or system prompt.
pub async fn update_session(token: &str, id: Uuid, change: &UpdateSessionRequest) -> Result<Session, ApiError> {
    let request = authed(Request::patch(&format!("/api/v1/chat/sessions/{id}")), token)
        .json(change)
        .map_err(ApiError::network)?;
    answer(request.send().await).await
}

/// Rates a reply: 1 good, -1 bad.
pub async fn rate(token: &str, session: Uuid, message: Uuid, rating: i8) -> Result<Feedback, ApiError> {
    let url = format!("/api/v1/chat/sessions/{session}/messages/{message}/feedback");
    let request = authed(Request::post(&url), token).json(&FeedbackRequest { rating }).map_err(ApiError::network)?;
    answer(request.send().await).await
}

/// The user's saved prompts, by title.
pub async fn prompts(token: &str) -> Result<Vec<Prompt>, ApiError> {
    let list: PromptList = answer(authed(Request::get("/api/v1/prompts"), token).send().await).await?;
    Ok(list.prompts)
}

/// Saves a prompt.
pub async fn create_prompt(token: &str, title: &str, content: &str) -> Result<Prompt, ApiError> {
    let body = CreatePromptRequest { title: title.into(), content: content.into() };
    let request = authed(Request::post("/api/v1/prompts"), token).json(&body).map_err(ApiError::network)?;
    answer(request.send().await).await
}

/// Deletes a saved prompt.
pub async fn delete_prompt(token: &str, id: Uuid) -> Result<(), ApiError> {
    gone(authed(Request::delete(&format!("/api/v1/prompts/{id}")), token).send().await).await
}
