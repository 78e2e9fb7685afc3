//! Extractors that answer bad input with protocol errors: the caller from the bearer
//! token, JSON bodies, query strings and session ids in the path.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::auth::{AuthError, AuthUser, bearer_token};
use crate::error::AppError;
use crate::state::AppState;

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token =
            bearer_token(parts.headers.get(axum::http::header::AUTHORIZATION)).ok_or(AuthError::MissingToken)?;
        let user = state.tokens.verify(token)?;
        tracing::Span::current().record("user_id", tracing::field::display(user.id));
        Ok(user)
    }
}

/// A caller who has chat: authenticated, and within `FEATURE_CHAT_ENABLED` and
/// `FEATURE_CHAT_ROLLOUT_PERCENT`. Everyone else gets `404`, so to them chat does not exist.
pub struct ChatUser(pub AuthUser);

impl FromRequestParts<AppState> for ChatUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if !state.config.rollout.any() {
            return Err(AppError::ChatDisabled);
        }
        let user = AuthUser::from_request_parts(parts, state).await?;
        if !state.config.rollout.allows(user.id, user.role == relay_protocol::UserRole::Admin) {
            return Err(AppError::ChatDisabled);
        }
        Ok(ChatUser(user))
    }
}

/// The client's address: the peer's, or, when the peer is one of `TRUSTED_PROXIES`, the
/// last address in `X-Forwarded-For` that is not a trusted proxy (earlier entries can be
/// written by anyone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// The client as per-address limits count it (an IPv6 client by its /64).
    pub fn limit_key(&self) -> String {
        crate::limits::address_key(self.0)
    }
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<super::listener::Peer>>()
            .map(|c| c.0.addr.ip().to_canonical())
            .ok_or_else(|| AppError::Internal("no peer address".into()))?;
        let forwarded = parts.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
        Ok(ClientAddr(client_addr(peer, forwarded, &state.config.trusted_proxies)))
    }
}

/// Walks `X-Forwarded-For` from the right while the hop is a trusted proxy; the first hop
/// that is not one is the client. An entry that does not parse stops the walk (fail
/// closed): whoever wrote it may have written everything left of it too, so the last
/// trusted hop seen counts as the client instead.
fn client_addr<'a>(peer: IpAddr, forwarded: impl Iterator<Item = &'a str>, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let entries: Vec<&str> = forwarded.flat_map(|v| v.split(',')).collect();
    let mut last_trusted = peer;
    for entry in entries.into_iter().rev() {
        match parse_hop(entry) {
            Some(ip) if is_trusted(&ip) => last_trusted = ip,
            Some(ip) => return ip,
            None => return last_trusted,
        }
    }
    last_trusted
}

/// One `X-Forwarded-For` entry: an address, or an address with a port (`1.2.3.4:80`,
/// `[2001:db8::1]:80`) as some proxies write it.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))?;
    Some(ip.to_canonical())
}

/// A JSON body whose rejections are protocol errors: `too_large` over the body limit,
/// `bad_request` for anything malformed, a body that is not a JSON object included.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<serde_json::Value>::from_request(req, state).await {
            Ok(Json(value)) => from_object(value).map(ApiJson),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// Reads a body that must be a JSON object. serde would also read a struct from an array
/// of its fields (`["alice", "password"]`), which no body of the API is.
fn from_object<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, AppError> {
    if !value.is_object() {
        return Err(AppError::BadRequest("the body must be a JSON object".into()));
    }
    serde_json::from_value(value).map_err(|e| AppError::BadRequest(format!("invalid JSON body: {e}")))
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::TooLarge
    } else {
        AppError::BadRequest(rejection.body_text())
    }
}

/// An optional JSON body: an empty body, or JSON `null`, is `T::default()`; the size limit
/// and malformed JSON answer like [`ApiJson`].
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(req, state).await.map_err(|rejection: BytesRejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::TooLarge
            } else {
                AppError::BadRequest(rejection.body_text())
            }
        })?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Null) => Ok(OptionalJson(T::default())),
            Ok(value) => from_object(value).map(OptionalJson),
            Err(e) => Err(AppError::BadRequest(format!("invalid JSON body: {e}"))),
        }
    }
}

/// Query parameters whose rejections are `bad_request`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| AppError::BadRequest(e.body_text()))
    }
}

/// A session id and a message id from the path; anything that is not a UUID is not found.
pub struct SessionMessageIds(pub Uuid, pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for SessionMessageIds {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((session, message)) =
            Path::<(String, String)>::from_request_parts(parts, state).await.map_err(|_| AppError::NotFound)?;
        match (Uuid::parse_str(&session), Uuid::parse_str(&message)) {
            (Ok(session), Ok(message)) => Ok(SessionMessageIds(session, message)),
            _ => Err(AppError::NotFound),
        }
    }
}

/// A session id from the path; anything that is not a UUID is simply not found.
pub struct SessionId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for SessionId {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await.map_err(|_| AppError::NotFound)?;
        Uuid::parse_str(&raw).map(SessionId).map_err(|_| AppError::NotFound)
    }
}

/// A saved prompt's id from the path; anything that is not a UUID is simply not found.
pub struct PromptId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PromptId {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        SessionId::from_request_parts(parts, state).await.map(|SessionId(id)| PromptId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_counts_only_behind_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A direct client cannot claim another address.
        assert_eq!(client_addr(ip("203.0.113.9"), ["1.2.3.4"].into_iter(), &trusted), ip("203.0.113.9"));
        // Behind a trusted proxy, the last untrusted hop is the client; what it claimed
        // before that is ignored.
        assert_eq!(client_addr(ip("10.0.0.2"), ["1.2.3.4, 198.51.100.7"].into_iter(), &trusted), ip("198.51.100.7"));
        assert_eq!(client_addr(ip("10.0.0.2"), ["198.51.100.7", "10.0.0.3"].into_iter(), &trusted), ip("198.51.100.7"));
        assert_eq!(client_addr(ip("10.0.0.2"), std::iter::empty(), &trusted), ip("10.0.0.2"));
    }

    /// An entry that does not parse stops the walk: what lies left of it was written by
    /// whoever sent it, so the last trusted hop counts instead (fail closed).
    #[test]
    fn an_unparsable_forwarded_entry_stops_the_walk() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let walk = |peer: &str, header: &str| client_addr(ip(peer), [header].into_iter(), &trusted);
        assert_eq!(walk("10.0.0.2", "198.51.100.7, garbage"), ip("10.0.0.2"), "the peer, the last trusted hop");
        assert_eq!(walk("10.0.0.2", "198.51.100.7, garbage, 10.0.0.3"), ip("10.0.0.3"), "the last trusted hop");
        assert_eq!(walk("10.0.0.2", "198.51.100.7, unknown, 10.0.0.3"), ip("10.0.0.3"));
        assert_eq!(walk("10.0.0.2", "198.51.100.7,, 10.0.0.3"), ip("10.0.0.3"), "an empty entry too");
        assert_eq!(walk("10.0.0.2", "garbage, 198.51.100.7"), ip("198.51.100.7"), "the walk stops before it");
        // Address forms a proxy may write with a port still name the address.
        assert_eq!(walk("10.0.0.2", "198.51.100.7:4711"), ip("198.51.100.7"));
        assert_eq!(walk("10.0.0.2", "[2001:db8::7]:4711"), ip("2001:db8::7"));
        assert_eq!(walk("10.0.0.2", " 2001:db8::7 "), ip("2001:db8::7"));
    }
}
