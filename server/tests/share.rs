//! Live share links over real HTTP, SSE and WebSocket: a link made by the owner opens the
//! session to anyone holding it, read-only and live (a viewer watches a reply being
//! written), until it is revoked, replaced, expires or its session is deleted; then open
//! streams end at once and the token opens nothing. Viewers are capped per link and per
//! address; only the owner manages a link; a viewer never sees account fields.

mod common;

use std::time::Duration;

use common::flow;
use common::sse::{SseMessage, SseReader};
use common::{TestServer, WAIT, error_of};
use relay_protocol::{ErrorCode, ServerFrame, ShareCreated, ShareStatus, SharedSession};
use serde_json::json;
use uuid::Uuid;

async fn share(server: &TestServer, token: &str, session: Uuid, body: serde_json::Value) -> reqwest::Response {
    server
        .http
        .post(server.url(&format!("/api/v1/chat/sessions/{session}/share")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn created(server: &TestServer, token: &str, session: Uuid) -> ShareCreated {
    let r = share(server, token, session, json!({})).await;
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 201, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A refusal's status and code; a stream opened instead of refused fails the test (its
/// body would never end).
async fn refused(response: reqwest::Response) -> (u16, ErrorCode) {
    assert_ne!(response.status(), 200, "a stream was opened");
    tokio::time::timeout(WAIT, error_of(response)).await.expect("an error body")
}

async fn revoke(server: &TestServer, token: &str, session: Uuid) -> reqwest::Response {
    let url = server.url(&format!("/api/v1/chat/sessions/{session}/share"));
    server.http.delete(url).bearer_auth(token).send().await.unwrap()
}

/// Opens a viewer's stream (no login) and reads its snapshot.
async fn watch(server: &TestServer, share_token: &str) -> (SseReader, SseMessage) {
    let r = server.http.get(server.url(&format!("/api/v1/shared/{share_token}/events"))).send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let mut reader = SseReader::new(r);
    let snapshot = reader.next_within(WAIT).await.expect("a snapshot");
    assert_eq!(snapshot.event, "snapshot");
    (reader, snapshot)
}

/// The owner's next `share_updated` frame for the session.
async fn share_update(ws: &mut common::Ws, session: Uuid) -> Option<ShareStatus> {
    let frames =
        ws.recv_until(|f| matches!(f, ServerFrame::ShareUpdated { session_id, .. } if *session_id == session)).await;
    match frames.last() {
        Some(ServerFrame::ShareUpdated { share, .. }) => share.clone(),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn anyone_with_the_link_reads_and_watches_live_until_it_is_revoked() {
    let server = TestServer::start().await;
    let (token, user_id) = server.register("ivy").await;
    let session = server.create_session(&token).await;
    server.send_rest(&token, session.id, "What is a fjord? [[mock echo]]").await;
    let mut owner = server.ws(&token).await;

    let link = created(&server, &token, session.id).await;
    assert_eq!(link.token.len(), 43, "256 random bits");
    assert_eq!(link.url, format!("http://{}/s/{}", server.addr, link.token));
    assert_eq!(link.expires_at, None);
    assert_eq!(share_update(&mut owner, session.id).await.map(|s| s.viewers), Some(0));

    // The page: no login, the conversation, no account fields, private headers.
    let r = server.http.get(server.url(&format!("/api/v1/shared/{}", link.token))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-robots-tag"], "noindex, nofollow");
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body = r.text().await.unwrap();
    assert!(!body.contains(&user_id.to_string()) && !body.contains("ivy"), "no owner: {body}");
    let page: SharedSession = serde_json::from_str(&body).unwrap();
    assert_eq!(page.session.id, session.id);
    assert_eq!(page.messages.len(), 2);
    assert!(page.messages[0].content.starts_with("What is a fjord?"));

    // A replaced reply is history for the owner's tabs, never shown to viewers.
    let r =
        server.http.post(server.url(&format!("/api/v1/chat/sessions/{}/regenerate", session.id))).bearer_auth(&token);
    let again: relay_protocol::SendMessageResponse = r.send().await.unwrap().json().await.unwrap();
    let replaced = page.messages[1].id;

    // Live: a viewer's stream starts with the snapshot, the owner sees one viewer, and a
    // reply the owner asks for arrives piece by piece, numbered like the tab's.
    let (mut viewer, snapshot) = watch(&server, &link.token).await;
    let snapshot = snapshot.json();
    assert_eq!(snapshot["type"], "subscribed");
    assert!(snapshot.get("id").is_none(), "no request id");
    let ids: Vec<&str> = snapshot["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [page.messages[0].id.to_string(), again.assistant_message.id.to_string()], "not {replaced}");
    assert!(!snapshot.to_string().contains(&user_id.to_string()));
    assert_eq!(share_update(&mut owner, session.id).await.map(|s| s.viewers), Some(1));
    let seq0 = snapshot["seq"].as_u64().unwrap();
    flow::subscribe(&mut owner, session.id).await;
    flow::send(&mut owner, session.id, "s1", "Tell me more [[mock tokens=20 tps=100 delay_ms=0]]").await;
    let events = viewer.until("done").await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names[..2], ["message", "generation_started"], "{names:?}");
    assert!(names.iter().filter(|n| **n == "delta").count() >= 5, "pieces as they are written: {names:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e.id.as_ref().unwrap().parse().unwrap()).collect();
    assert_eq!(seqs, (seq0 + 1..=seq0 + events.len() as u64).collect::<Vec<_>>(), "ids are the seqs, gap-free");
    assert_eq!(events.last().unwrap().json()["finish_reason"], "stop");
    let stored = &events[events.len() - 2];
    assert_eq!((stored.event.as_str(), stored.json()["message"]["role"].as_str()), ("message", Some("assistant")));

    // The owner's status read shows the viewer; another user cannot read or revoke it.
    let (code, status) = server.get(&token, &format!("/api/v1/chat/sessions/{}/share", session.id)).await;
    assert_eq!((code, status["share"]["viewers"].as_u64()), (200, Some(1)));
    let (other, _) = server.register("jon").await;
    let (code, _) = server.get(&other, &format!("/api/v1/chat/sessions/{}/share", session.id)).await;
    assert_eq!(code, 404, "another user's session");
    assert_eq!(error_of(revoke(&server, &other, session.id).await).await, (404, ErrorCode::NotFound));
    assert_eq!(error_of(share(&server, &other, session.id, json!({})).await).await, (404, ErrorCode::NotFound));

    // Revoked: the open stream ends at once, saying why; the token opens nothing.
    let r = revoke(&server, &token, session.id).await;
    assert_eq!(r.status(), 204);
    let ended = viewer.next_within(Duration::from_secs(2)).await.expect("an ended event");
    assert_eq!((ended.event.as_str(), ended.json()), ("ended", json!({"reason": "revoked"})));
    assert!(viewer.next_within(Duration::from_secs(2)).await.is_none(), "the stream ends");
    assert_eq!(share_update(&mut owner, session.id).await, None);
    let (code, body) = server.get(&token, &format!("/api/v1/chat/sessions/{}/share", session.id)).await;
    assert_eq!((code, body), (200, json!({"share": null})), "revoked");
    for path in [format!("/api/v1/shared/{}", link.token), format!("/api/v1/shared/{}/events", link.token)] {
        let r = server.http.get(server.url(&path)).send().await.unwrap();
        assert_eq!(r.headers()["x-robots-tag"], "noindex, nofollow");
        assert_eq!(refused(r).await, (404, ErrorCode::NotFound), "{path}");
    }
    assert_eq!(revoke(&server, &token, session.id).await.status(), 204, "revoking again changes nothing");
}

#[tokio::test]
async fn a_new_link_or_a_deleted_session_ends_the_old_links_streams() {
    let server = TestServer::start().await;
    let (token, _) = server.register("kai").await;
    let session = server.create_session(&token).await;
    server.send_rest(&token, session.id, "hello").await;

    let first = created(&server, &token, session.id).await;
    let (mut old_viewer, _) = watch(&server, &first.token).await;
    let second = created(&server, &token, session.id).await;
    assert_ne!(first.token, second.token);
    assert_ne!(first.share.id, second.share.id);
    let ended = old_viewer.next_within(Duration::from_secs(2)).await.unwrap();
    assert_eq!(ended.json(), json!({"reason": "revoked"}), "replaced");
    let r = server.http.get(server.url(&format!("/api/v1/shared/{}", first.token))).send().await.unwrap();
    assert_eq!(r.status(), 404, "the old token");

    let (mut viewer, _) = watch(&server, &second.token).await;
    let r = server.http.delete(server.url(&format!("/api/v1/chat/sessions/{}", session.id))).bearer_auth(&token).send();
    assert_eq!(r.await.unwrap().status(), 200);
    let ended = viewer.next_within(Duration::from_secs(2)).await.unwrap();
    assert_eq!((ended.event.as_str(), ended.json()), ("ended", json!({"reason": "revoked"})));
    let r = server.http.get(server.url(&format!("/api/v1/shared/{}", second.token))).send().await.unwrap();
    assert_eq!(r.status(), 404, "a deleted session's link");
}

#[tokio::test]
async fn a_link_expires_and_its_streams_end_then() {
    let server = TestServer::start().await;
    let (token, user_id) = server.register("lea").await;
    let session = server.create_session(&token).await;
    for (body, what) in [
        (json!({"expires_in_secs": 59}), "under a minute"),
        (json!({"expires_in_secs": 31_536_001u64}), "over a year"),
        (json!({"expires_in_secs": -1}), "negative"),
        (json!({"expires": 60}), "an unknown field"),
    ] {
        assert_eq!(
            error_of(share(&server, &token, session.id, body).await).await,
            (400, ErrorCode::BadRequest),
            "{what}"
        );
    }
    let link: ShareCreated =
        share(&server, &token, session.id, json!({"expires_in_secs": 3600})).await.json().await.unwrap();
    let expires = link.expires_at.expect("an expiry");
    let in_an_hour = chrono::Utc::now() + chrono::TimeDelta::seconds(3600);
    assert!((in_an_hour - expires).num_seconds().abs() <= 5, "{expires}");

    // The same link stored to expire in a moment (the shortest a request may ask is a
    // minute): the open stream ends when it does, and the token then opens nothing.
    let soon = relay_server::store::ShareRecord {
        expires_at: Some(chrono::Utc::now() + chrono::TimeDelta::milliseconds(1500)),
        ..server.state().store.share_of(user_id, session.id).await.unwrap().unwrap()
    };
    server.state().store.put_share(&soon, &relay_server::share::token_hash(&link.token)).await.unwrap().unwrap();
    let (mut viewer, _) = watch(&server, &link.token).await;
    let ended = viewer.next_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!((ended.event.as_str(), ended.json()), ("ended", json!({"reason": "expired"})));
    let r = server.http.get(server.url(&format!("/api/v1/shared/{}", link.token))).send().await.unwrap();
    assert_eq!(r.status(), 404, "expired");
    let (code, body) = server.get(&token, &format!("/api/v1/chat/sessions/{}/share", session.id)).await;
    assert_eq!((code, body), (200, json!({"share": null})), "an expired link is no link");
}

#[tokio::test]
async fn viewers_are_capped_per_link_and_per_address_and_reads_are_rate_limited() {
    let server = TestServer::with(&[("CHAT_SHARE_MAX_VIEWERS", "2"), ("CHAT_SHARE_READS_PER_MINUTE", "8")]).await;
    let (token, _) = server.register("max").await;
    let session = server.create_session(&token).await;
    let link = created(&server, &token, session.id).await;
    let (first, _) = watch(&server, &link.token).await;
    let (_second, _) = watch(&server, &link.token).await;
    let events = server.url(&format!("/api/v1/shared/{}/events", link.token));
    let r = server.http.get(&events).send().await.unwrap();
    assert_eq!(refused(r).await, (403, ErrorCode::LimitExceeded), "a third viewer");
    drop(first);
    common::eventually("the place given back", || async {
        let (_, status) = server.get(&token, &format!("/api/v1/chat/sessions/{}/share", session.id)).await;
        status["share"]["viewers"] == 1
    })
    .await;
    let (_third, _) = watch(&server, &link.token).await;
    // Reads so far: 4 stream opens. Then page reads until the minute's allowance is spent.
    let page = server.url(&format!("/api/v1/shared/{}", link.token));
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(server.http.get(&page).send().await.unwrap().status().as_u16());
    }
    assert_eq!(codes, [200, 200, 200, 200, 429, 429], "8 reads a minute from one address");
    let bad = server.http.get(server.url("/api/v1/shared/not-a-token")).send().await.unwrap();
    assert_eq!(bad.status(), 429, "counted before the token is looked at");

    let server = TestServer::with(&[("CHAT_SHARE_STREAMS_PER_ADDRESS", "1")]).await;
    let (token, _) = server.register("ned").await;
    let session = server.create_session(&token).await;
    let link = created(&server, &token, session.id).await;
    let (_held, _) = watch(&server, &link.token).await;
    let r = server.http.get(server.url(&format!("/api/v1/shared/{}/events", link.token))).send().await.unwrap();
    assert_eq!(refused(r).await, (403, ErrorCode::LimitExceeded), "a second stream from one address");
}
