//! Exports over real HTTP: one session as Markdown, text or JSON (a file to save, with
//! title, dates, model and every message; replaced ones only in JSON), and everything of a
//! user as JSON. Only the owner's, and bad formats refused.

mod common;

use common::{TestServer, error_of};
use relay_protocol::{ErrorCode, SendMessageResponse, SessionExport, UserExport};
use uuid::Uuid;

async fn export(server: &TestServer, token: &str, path: &str) -> reqwest::Response {
    server.http.get(server.url(path)).bearer_auth(token).send().await.unwrap()
}

#[tokio::test]
async fn a_session_downloads_as_markdown_text_and_json() {
    let server = TestServer::start().await;
    let (token, _) = server.register("fay").await;
    let session = server.create_session(&token).await;
    let first = server.send_rest(&token, session.id, "Plan a day in Lyon [[mock echo]]").await;
    let again = server
        .http
        .post(server.url(&format!("/api/v1/chat/sessions/{}/regenerate", session.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let again: SendMessageResponse = again.json().await.unwrap();
    let path = format!("/api/v1/chat/sessions/{}/export", session.id);

    let r = export(&server, &token, &path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/markdown; charset=utf-8");
    let disposition = r.headers()["content-disposition"].to_str().unwrap().to_string();
    assert!(disposition.starts_with("attachment; filename=\"plan-a-day-in-lyon-mock-echo-"), "{disposition}");
    assert!(disposition.ends_with(".md\""), "{disposition}");
    let md = r.text().await.unwrap();
    assert!(md.starts_with("# Plan a day in Lyon [[mock echo]]\n\n- Created: "), "{md}");
    assert!(md.contains("- Model: Llama-4-Maverick-17B-128E-Instruct\n"), "{md}");
    assert!(md.contains("```text\nPlan a day in Lyon [[mock echo]]\n```"), "{md}");
    assert!(md.contains(&again.assistant_message.content), "the live reply");
    assert_eq!(md.matches("## Assistant").count(), 1, "the replaced reply only in json: {md}");

    let r = export(&server, &token, &format!("{path}?format=txt")).await;
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    let txt = r.text().await.unwrap();
    assert!(txt.contains("] You:\nPlan a day in Lyon [[mock echo]]\n"), "{txt}");

    let r = export(&server, &token, &format!("{path}?format=json")).await;
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers()["content-disposition"].to_str().unwrap().ends_with(".json\""));
    let json: SessionExport = r.json().await.unwrap();
    assert_eq!(json.session.id, session.id);
    let ids: Vec<(Uuid, bool)> = json.messages.iter().map(|m| (m.id, m.superseded)).collect();
    assert_eq!(
        ids,
        [(first.user_message.id, false), (first.assistant_message.id, true), (again.assistant_message.id, false)]
    );

    let r = export(&server, &token, &format!("{path}?format=pdf")).await;
    assert_eq!(error_of(r).await, (400, ErrorCode::BadRequest));
    let (other, _) = server.register("gus").await;
    let r = export(&server, &other, &path).await;
    assert_eq!(error_of(r).await, (404, ErrorCode::NotFound), "another user's session");
    let r = server.http.get(server.url(&path)).send().await.unwrap();
    assert_eq!(error_of(r).await, (401, ErrorCode::Unauthorized));
}

#[tokio::test]
async fn everything_of_a_user_downloads_as_json() {
    let server = TestServer::start().await;
    let (token, user_id) = server.register("hal").await;
    let kept = server.create_session(&token).await;
    server.send_rest(&token, kept.id, "keep this").await;
    let deleted = server.create_session(&token).await;
    server.send_rest(&token, deleted.id, "delete this").await;
    let r = server
        .http
        .delete(server.url(&format!("/api/v1/chat/sessions/{}", deleted.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (other, _) = server.register("ida").await;
    let theirs = server.create_session(&other).await;
    server.send_rest(&other, theirs.id, "not hal's").await;

    let r = export(&server, &token, "/api/v1/me/export").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-disposition"].to_str().unwrap().starts_with("attachment; filename=\"relay-chat-hal-"));
    let body = r.text().await.unwrap();
    assert!(!body.contains("password") && !body.contains("argon2"), "no password hash");
    let all: UserExport = serde_json::from_str(&body).unwrap();
    assert_eq!((all.user.id, all.user.username.as_str()), (user_id, "hal"));
    let sessions: Vec<(Uuid, bool, usize)> =
        all.sessions.iter().map(|s| (s.session.id, s.deleted_at.is_some(), s.messages.len())).collect();
    assert_eq!(sessions, [(kept.id, false, 2), (deleted.id, true, 2)]);
    assert!(!body.contains("not hal's"));
    assert_eq!(all.usage.len(), 1);
    assert_eq!(all.usage[0].messages, 2);
    assert!(all.usage[0].completion_tokens > 0);
}
