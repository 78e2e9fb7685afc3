//! Which browser pages may use the API: CORS for the REST API, and the origin check of the
//! WebSocket upgrade.

use axum::http::header;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Cross-origin access for host applications calling the REST API from a browser. Tokens
/// travel in the `Authorization` header, never in cookies, so credentials stay off.
pub(super) fn cors(origins: &[String]) -> CorsLayer {
    use axum::http::Method;
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
        .expose_headers([
            header::RETRY_AFTER,
            header::HeaderName::from_static("x-request-id"),
            header::HeaderName::from_static("x-ratelimit-limit"),
            header::HeaderName::from_static("x-ratelimit-remaining"),
            header::HeaderName::from_static("x-ratelimit-reset"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// Whether a browser page at `origin` may use the API: its own origin (the built-in
/// client), or one listed in `CORS_ALLOWED_ORIGINS` (`*` allows any). A request without an
/// `Origin` header does not come from a browser page and is allowed.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else { return true };
    if allowed.is_empty() || allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    // Same origin: the page was served by this server, under the name it was reached by.
    let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    host.is_some_and(|host| host.eq_ignore_ascii_case(authority))
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn origins() {
        let allowed = vec!["https://app.example.com".to_string()];
        assert!(origin_allowed(&allowed, None, Some("chat.example.com")));
        assert!(origin_allowed(&allowed, Some("https://app.example.com"), Some("chat.example.com")));
        assert!(origin_allowed(&allowed, Some("https://chat.example.com"), Some("chat.example.com")));
        assert!(!origin_allowed(&allowed, Some("https://evil.example"), Some("chat.example.com")));
        assert!(origin_allowed(&[], Some("https://evil.example"), Some("chat.example.com")));
        assert!(origin_allowed(&["*".into()], Some("https://evil.example"), None));
    }

    /// Behind a proxy that passes the `Host` the browser used (nginx's `$http_host`), the
    /// port is part of it: the client's own page on a non-default port is same-origin.
    #[test]
    fn the_host_with_its_port_is_the_servers_own_origin() {
        let allowed = vec!["https://app.example.com".to_string()];
        assert!(origin_allowed(&allowed, Some("http://localhost:8080"), Some("localhost:8080")));
        assert!(origin_allowed(&allowed, Some("http://LOCALHOST:8080"), Some("localhost:8080")));
        assert!(!origin_allowed(&allowed, Some("http://localhost:8080"), Some("localhost")), "the port matters");
        assert!(!origin_allowed(&allowed, Some("http://localhost:9090"), Some("localhost:8080")));
    }
}
