//! `GET /api/v1/chat/search`: search within the caller's conversations.

use axum::Json;
use axum::extract::State;
use relay_protocol::SearchResults;
use serde::Deserialize;

use super::{ApiQuery, ChatUser};
use crate::error::AppError;
use crate::search;
use crate::state::AppState;

/// Query of `GET /chat/search`.
#[derive(Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    page: Option<u32>,
    per_page: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/chat/search", tag = "chat", security(("bearer" = [])),
    params(("q" = String, Query, description = "The words to find (1 to 200 characters after trimming). A message matches when it holds every word; words are compared lower-cased, without accents, and stemmed as English (\"running\" finds \"run\")", min_length = 1, max_length = 200),
        ("page" = Option<u32>, Query, description = "1 to 1,000, default 1; results past the first 1,000 are not returned (a deeper page is empty, `total` still counts them)", minimum = 1, maximum = 1000),
        ("per_page" = Option<u32>, Query, description = "1 to 50, default 20", minimum = 1, maximum = 50)),
    responses((status = 200, description = "One page of the caller's messages that match, best first (BM25); never another user's, a deleted session's, or a superseded message", body = relay_protocol::SearchResults),
        (status = 400, description = "bad_request: q missing, blank or over 200 characters, or a page (1 to 1,000) or page size (1 to 50) out of range", body = relay_protocol::ErrorResponse),
        (status = 401, description = "unauthorized: missing, malformed, forged or expired token", body = relay_protocol::ErrorResponse),
        (status = 404, description = "not_found: chat is not available to the caller", body = relay_protocol::ErrorResponse),
        (status = 429, description = "rate_limited: over CHAT_SEARCHES_PER_MINUTE", body = relay_protocol::ErrorResponse),
        (status = 503, description = "unavailable: CHAT_SEARCH_CONCURRENCY searches were running for 2 s", body = relay_protocol::ErrorResponse)))]
/// `GET /chat/search?q=&page=&per_page=`.
pub async fn search(
    State(state): State<AppState>,
    ChatUser(user): ChatUser,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<SearchResults>, AppError> {
    Ok(Json(search::search(&state, user.id, params.q.as_deref(), params.page, params.per_page).await?))
}
