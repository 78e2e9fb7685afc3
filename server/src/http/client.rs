//! The browser client, served at `/`: the files `cargo xtask client` builds into
//! `client-yew/dist` (or `RELAY_CLIENT_DIR`), with their gzip and brotli copies for browsers
//! that accept them, correct MIME types, content-hashed files cached for a year and
//! `index.html` revalidated every time; any other path that is not the API is a client
//! route and gets `index.html`. Without a built client, `/` says how to build one.

use std::path::Path;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use tower_http::services::{ServeDir, ServeFile};

use crate::state::AppState;

/// Cache for files whose name carries their content hash (`app-3f2a9c01b4d7.wasm`).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Everything else (`index.html`): always ask the server, so a new build is seen at once.
const REVALIDATE: &str = "no-cache";

/// What the page may load and run: its own files, its WebSocket, and nothing inline; no
/// framing (which only a header can forbid, hence a header and not just the page's meta).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The client's routes: the built files, or the page that says how to build them.
pub fn routes(dir: &Path) -> Router<AppState> {
    if !dir.join("index.html").is_file() {
        tracing::warn!(dir = %dir.display(), "no browser client built; `/` explains how to build it (cargo xtask client)");
        return Router::new().fallback(not_built).layer(axum::middleware::map_response(security_headers));
    }
    let files = ServeDir::new(dir)
        .precompressed_br()
        .precompressed_gzip()
        .fallback(ServeFile::new(dir.join("index.html")).precompressed_br().precompressed_gzip());
    Router::new()
        .fallback_service(files)
        .layer(axum::middleware::map_response(cache_headers))
        .layer(axum::middleware::map_response(share_page_headers))
        .layer(axum::middleware::map_response(security_headers))
}

/// Headers every client response carries: the content policy, no MIME sniffing, no
/// framing, no referrer.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// A share link's page (`/s/<token>`) is not for search engines, and is not kept by caches
/// (its address holds the token).
async fn share_page_headers(request_path: axum::extract::OriginalUri, mut response: Response) -> Response {
    if request_path.path().starts_with("/s/") {
        let headers = response.headers_mut();
        headers.insert("x-robots-tag", HeaderValue::from_static("noindex, nofollow"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Sets `Cache-Control` by file name: hashed assets forever, the rest revalidated.
async fn cache_headers(request_path: axum::extract::OriginalUri, mut response: Response) -> Response {
    let name = request_path.path().rsplit('/').next().unwrap_or_default();
    let policy = if is_hashed(name) && response.status().is_success() { IMMUTABLE } else { REVALIDATE };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(policy));
    response
}

/// Whether a file name carries a content hash: `name-<12 hex digits>.ext`.
fn is_hashed(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or_default();
    stem.rsplit_once('-').is_some_and(|(_, hash)| hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn not_built(_request: Request) -> Response {
    let page = "<!doctype html><meta charset=utf-8><title>relay-chat</title>\
        <h1>relay-chat is running</h1>\
        <p>The browser client is not built. Build it with <code>cargo xtask client</code> \
        (or start with <code>cargo xtask run</code>, which builds it when missing), then reload.</p>\
        <p>The API is at <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a>.</p>";
    ([(header::CACHE_CONTROL, REVALIDATE)], Html(page)).into_response()
}

#[cfg(test)]
mod tests {
    use super::is_hashed;

    #[test]
    fn hashed_names() {
        assert!(is_hashed("app-3f2a9c01b4d7.wasm"));
        assert!(is_hashed("style-0123456789ab.css"));
        assert!(!is_hashed("index.html"));
        assert!(!is_hashed("app-xyz.js"));
    }
}
