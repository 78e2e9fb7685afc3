//! Regenerate and edit: the last reply answered again, a user message (the last or an
//! earlier one) rewritten and answered. Through the session actor like any send, live in every tab, kept in the store
//! (the replaced messages marked superseded, not deleted), left out of the model's context.
//! And the history read back in pages, as a client scrolling up reads it.

mod common;

use common::flow::*;
use common::{TestServer, assert_contiguous, error_of, reply_text};
use relay_mock_llm as mock;
use relay_protocol::{ErrorCode, FinishReason, MessagePage, Role, SendMessageResponse, ServerFrame};
use serde_json::json;
use uuid::Uuid;

/// The model's context of the last request, as (role, content) pairs.
fn last_context(server: &TestServer) -> Vec<(String, String)> {
    let request = server.mock.stats().last_request.expect("the model got a request");
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().to_string(), m["content"].as_str().unwrap().to_string()))
        .collect()
}

fn superseded_ids(frames: &[ServerFrame]) -> Vec<Uuid> {
    superseded_by(frames).0
}

/// The messages the `superseded` event names, and the message it says replaced them.
fn superseded_by(frames: &[ServerFrame]) -> (Vec<Uuid>, Option<Uuid>) {
    frames
        .iter()
        .find_map(|f| match f {
            ServerFrame::Superseded { message_ids, by, .. } => Some((message_ids.clone(), *by)),
            _ => None,
        })
        .expect("a superseded event")
}

/// Regenerate in one tab: both tabs see the old reply superseded and the new one stream, in
/// one gap-free event sequence; the store keeps both, the model saw the question without
/// the old answer.
#[tokio::test]
async fn regenerate_replaces_the_last_reply_in_every_tab() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "regen").await;
    let mut a = server.ws(&token).await;
    let mut b = server.ws(&token).await;
    subscribe(&mut a, sid).await;
    let (seq_b, _) = subscribe(&mut b, sid).await;
    send(&mut a, sid, "q", &format!("the question {}", directive(5, 1000))).await;
    let first = until_dones(&mut a, sid, 1).await;
    let old_reply = started_reply(&first);
    let first_b = until_dones(&mut b, sid, 1).await;

    a.send(json!({"type": "regenerate", "id": "again", "session_id": sid})).await;
    let frames_a = until_dones(&mut a, sid, 1).await;
    let frames_b = until_dones(&mut b, sid, 1).await;
    assert!(
        frames_a.iter().any(
            |f| matches!(f, ServerFrame::Ack { id: Some(i), message } if i == "again" && message.role == Role::User)
        )
    );
    for frames in [&frames_a, &frames_b] {
        let new_reply = started_reply(frames);
        assert_eq!(superseded_by(frames), (vec![old_reply], Some(new_reply)), "replaced by the new reply");
        assert_ne!(new_reply, old_reply);
        assert_eq!(done_of(frames, new_reply), FinishReason::Stop);
    }
    assert_contiguous(&[first_b, frames_b.clone()].concat(), sid, seq_b);
    let new_reply = started_reply(&frames_a);
    assert_eq!(reply_text(&frames_b, new_reply), mock::reply_text(5, None));

    let context = last_context(&server);
    assert_eq!(context.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(), ["system", "user"]);

    let messages = stored(&server, &token, sid).await.messages;
    let summary: Vec<(Uuid, bool, Option<Uuid>)> =
        messages.iter().map(|m| (m.id, m.superseded, m.replaced_by)).collect();
    assert_eq!(summary[1..], [(old_reply, true, Some(new_reply)), (new_reply, false, None)]);
    // A late tab's snapshot says the same.
    let mut late = server.ws(&token).await;
    late.send(json!({"type": "subscribe", "id": "late", "session_id": sid})).await;
    let frames = late.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. })).await;
    let Some(ServerFrame::Subscribed { messages: snapshot, .. }) = frames.last() else { unreachable!() };
    assert_eq!(snapshot, &messages);
}

/// Edit the last user message: it and its reply are superseded, the new text is stored and
/// answered; the model's context has the earlier exchange and the new text only.
#[tokio::test]
async fn edit_rewrites_the_last_message_and_answers_it() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "editor").await;
    let mut ws = server.ws(&token).await;
    subscribe(&mut ws, sid).await;
    send(&mut ws, sid, "1", &format!("first {}", directive(3, 1000))).await;
    until_dones(&mut ws, sid, 1).await;
    send(&mut ws, sid, "2", &format!("secnod {}", directive(3, 1000))).await;
    let frames = until_dones(&mut ws, sid, 1).await;
    let (typo, typo_reply) = (
        frames
            .iter()
            .find_map(|f| match f {
                ServerFrame::Ack { message, .. } => Some(message.id),
                _ => None,
            })
            .unwrap(),
        started_reply(&frames),
    );

    // Only a user message can be edited.
    let first_reply = stored(&server, &token, sid).await.messages[1].clone();
    assert_eq!(first_reply.role, Role::Assistant);
    ws.send(json!({"type": "edit", "id": "old", "session_id": sid, "message_id": first_reply.id, "content": "x"}))
        .await;
    let frames = ws.recv_until(|f| matches!(f, ServerFrame::Error { id: Some(i), .. } if i == "old")).await;
    assert_error(frames.last().unwrap(), ErrorCode::BadRequest, Some("old"), Some(sid));
    ws.send(json!({"type": "edit", "id": "ghost", "session_id": sid, "message_id": Uuid::new_v4(), "content": "x"}))
        .await;
    let frames = ws.recv_until(|f| matches!(f, ServerFrame::Error { id: Some(i), .. } if i == "ghost")).await;
    assert_error(frames.last().unwrap(), ErrorCode::NotFound, Some("ghost"), Some(sid));

    let content = format!("second {}", directive(4, 1000));
    ws.send(json!({"type": "edit", "id": "fix", "session_id": sid, "message_id": typo, "content": content})).await;
    let frames = until_dones(&mut ws, sid, 1).await;
    assert_eq!(superseded_ids(&frames), vec![typo, typo_reply]);
    let new_reply = started_reply(&frames);
    assert_eq!(reply_text(&frames, new_reply), mock::reply_text(4, None));

    let context = last_context(&server);
    let roles: Vec<&str> = context.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert!(context[3].1.starts_with("second"));
    let messages = stored(&server, &token, sid).await.messages;
    assert_eq!(messages.len(), 6, "nothing deleted");
    assert_eq!(messages.iter().filter(|m| m.superseded).map(|m| m.id).collect::<Vec<_>>(), [typo, typo_reply]);
    assert_eq!(messages.last().unwrap().id, new_reply);

    // A replaced message cannot be edited again.
    ws.send(json!({"type": "edit", "id": "twice", "session_id": sid, "message_id": typo, "content": "x"})).await;
    let frames = ws.recv_until(|f| matches!(f, ServerFrame::Error { id: Some(i), .. } if i == "twice")).await;
    assert_error(frames.last().unwrap(), ErrorCode::BadRequest, Some("twice"), Some(sid));
}

/// Edit an earlier user message: it and every live message after it are superseded, in
/// order, and the conversation goes on from the new text: the model sees only what came
/// before the edited message (nothing, for the first) and the new text. Nothing is deleted;
/// a late tab's snapshot shows the replaced messages superseded. The REST form does the
/// same.
#[tokio::test]
async fn edit_of_an_earlier_message_replaces_everything_after_it() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "rewriter").await;
    let mut ws = server.ws(&token).await;
    subscribe(&mut ws, sid).await;
    for (i, text) in ["first", "second", "third"].iter().enumerate() {
        send(&mut ws, sid, &i.to_string(), &format!("{text} {}", directive(2, 1000))).await;
        until_dones(&mut ws, sid, 1).await;
    }
    let before = stored(&server, &token, sid).await.messages;
    assert_eq!(before.len(), 6);
    let old: Vec<Uuid> = before.iter().map(|m| m.id).collect();

    let content = format!("rewritten {}", directive(3, 1000));
    ws.send(json!({"type": "edit", "id": "redo", "session_id": sid, "message_id": old[0], "content": content})).await;
    let answer = ws
        .recv_until(
            |f| matches!(f, ServerFrame::Ack { id: Some(i), .. } | ServerFrame::Error { id: Some(i), .. } if i == "redo"),
        )
        .await;
    let Some(ServerFrame::Ack { message: new_message, .. }) = answer.last().cloned() else {
        panic!("the edit was refused: {:?}", answer.last())
    };
    let frames = [answer, until_dones(&mut ws, sid, 1).await].concat();
    assert_eq!(
        superseded_by(&frames),
        (old.clone(), Some(new_message.id)),
        "the edited message and all five after it, in order"
    );
    assert!(new_message.content.starts_with("rewritten") && !old.contains(&new_message.id));
    let new_reply = started_reply(&frames);
    assert_eq!(reply_text(&frames, new_reply), mock::reply_text(3, None));

    let context = last_context(&server);
    let roles: Vec<&str> = context.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roles, ["system", "user"], "nothing before or after the edited message: {context:?}");
    assert!(context[1].1.starts_with("rewritten"));

    let messages = stored(&server, &token, sid).await.messages;
    assert_eq!(messages.len(), 8, "nothing deleted");
    // Each replaced message names the edit's new message: the conversation it replaced is
    // one version of it.
    let summary: Vec<(Uuid, bool, Option<Uuid>)> =
        messages.iter().map(|m| (m.id, m.superseded, m.replaced_by)).collect();
    let mut want: Vec<(Uuid, bool, Option<Uuid>)> = old.iter().map(|id| (*id, true, Some(new_message.id))).collect();
    want.extend([(new_message.id, false, None), (new_reply, false, None)]);
    assert_eq!(summary, want);
    // A late tab's snapshot says the same.
    let mut late = server.ws(&token).await;
    late.send(json!({"type": "subscribe", "id": "late", "session_id": sid})).await;
    let frames = late.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. })).await;
    let Some(ServerFrame::Subscribed { messages: snapshot, .. }) = frames.last() else { unreachable!() };
    assert_eq!(snapshot, &messages);

    // Over REST: one more exchange, then the edited message is edited again.
    let post = |path: String, body: serde_json::Value| {
        server.http.post(server.url(&path)).bearer_auth(&token).json(&body).send()
    };
    let sent = post(format!("/api/v1/chat/sessions/{sid}/messages"), json!({"content": "fourth [[mock tokens=2]]"}))
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let edit = format!("/api/v1/chat/sessions/{sid}/messages/{}/edit", new_message.id);
    let edited = post(edit, json!({"content": "again [[mock tokens=2]]"})).await.unwrap();
    assert_eq!(edited.status(), 200);
    let edited: SendMessageResponse = edited.json().await.unwrap();
    assert!(edited.user_message.content.starts_with("again"));
    let context = last_context(&server);
    assert_eq!(context.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(), ["system", "user"]);
    let messages = stored(&server, &token, sid).await.messages;
    assert_eq!(messages.len(), 12, "nothing deleted");
    let live: Vec<Uuid> = messages.iter().filter(|m| !m.superseded).map(|m| m.id).collect();
    assert_eq!(live, [edited.user_message.id, edited.assistant_message.id]);
    // The second edit's version is the first edit's conversation; the first version keeps
    // naming the first edit.
    let replaced_by: Vec<Option<Uuid>> = messages[..10].iter().map(|m| m.replaced_by).collect();
    let mut want = vec![Some(new_message.id); 6];
    want.extend([Some(edited.user_message.id); 4]);
    assert_eq!(replaced_by, want);
}

/// Only the messages the session holds in memory (its last 200) can be edited: an older
/// one is `bad_request`, saying so, while one in the window still can be.
#[tokio::test]
async fn editing_a_message_older_than_the_window_is_refused() {
    let server = TestServer::with(&[("CHAT_DAILY_MESSAGE_QUOTA", "1000")]).await;
    let (token, _, sid) = user_with_session(&server, "archivist").await;
    let post = |path: String, body: serde_json::Value| {
        server.http.post(server.url(&path)).bearer_auth(&token).json(&body).send()
    };
    let mut sent = Vec::new();
    // 101 exchanges: 202 messages, the first exchange older than the 200 held in memory.
    for i in 0..101 {
        sent.push(server.send_rest(&token, sid, &format!("question {i} [[mock tokens=1]]")).await);
    }
    let edit = |id: Uuid| format!("/api/v1/chat/sessions/{sid}/messages/{id}/edit");
    let too_old = post(edit(sent[0].user_message.id), json!({"content": "x"})).await.unwrap();
    assert_eq!(too_old.status(), 400);
    let body: relay_protocol::ErrorResponse = too_old.json().await.unwrap();
    assert_eq!(body.error.code, ErrorCode::BadRequest);
    assert!(body.error.message.contains("too old"), "{}", body.error.message);

    let edited = post(edit(sent[1].user_message.id), json!({"content": "y [[mock tokens=1]]"})).await.unwrap();
    assert_eq!(edited.status(), 200);
    let messages = stored(&server, &token, sid).await.messages;
    assert_eq!(messages.len(), 204, "nothing deleted");
    assert_eq!(messages.iter().filter(|m| m.superseded).count(), 200, "the edited message and all after it");
    assert!(!messages[0].superseded && !messages[1].superseded, "the exchange before it stays");
}

/// One edit supersedes at most 32 replies' worth of text (`CHAT_MAX_REPLY_BYTES` each, or
/// 4 bytes per character of `CHAT_MAX_MESSAGE_LENGTH` if that is more): marking them
/// rewrites them in the edit's transaction, which must fit the database. An edit further
/// back is `bad_request`, saying so, and changes nothing; a later one works.
#[tokio::test]
async fn an_edit_that_would_supersede_too_much_text_is_refused() {
    let limits = [("CHAT_MAX_REPLY_BYTES", "1000"), ("CHAT_MAX_MESSAGE_LENGTH", "200")];
    let server = TestServer::with(&[limits[0], limits[1], ("CHAT_DAILY_MESSAGE_QUOTA", "1000")]).await;
    let (token, _, sid) = user_with_session(&server, "reviser").await;
    let post = |path: String, body: serde_json::Value| {
        server.http.post(server.url(&path)).bearer_auth(&token).json(&body).send()
    };
    // 40 exchanges whose replies are cut at 1,000 bytes: over 32,000 bytes in all.
    let mut sent = Vec::new();
    for i in 0..40 {
        sent.push(server.send_rest(&token, sid, &format!("question {i} [[mock tokens=400 delay_ms=0]]")).await);
    }
    let edit = |id: Uuid| format!("/api/v1/chat/sessions/{sid}/messages/{id}/edit");
    let too_far = post(edit(sent[0].user_message.id), json!({"content": "x"})).await.unwrap();
    assert_eq!(too_far.status(), 400);
    let body: relay_protocol::ErrorResponse = too_far.json().await.unwrap();
    assert_eq!(body.error.code, ErrorCode::BadRequest);
    assert!(body.error.message.contains("edit a later message"), "{}", body.error.message);
    let messages = stored(&server, &token, sid).await.messages;
    assert_eq!(messages.len(), 80);
    assert!(messages.iter().all(|m| !m.superseded), "the refused edit changed nothing");

    let edited = post(edit(sent[30].user_message.id), json!({"content": "y [[mock tokens=1]]"})).await.unwrap();
    assert_eq!(edited.status(), 200);
    let messages = stored(&server, &token, sid).await.messages;
    assert_eq!(messages.iter().filter(|m| m.superseded).count(), 20, "the edited exchange and the 9 after it");
}

/// While a reply runs, regenerate and edit are `busy`; an empty session has nothing to
/// regenerate.
#[tokio::test]
async fn regenerate_and_edit_need_a_settled_conversation() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "impatient").await;
    let mut ws = server.ws(&token).await;
    ws.send(json!({"type": "regenerate", "id": "empty", "session_id": sid})).await;
    let frames = ws.recv_until(|f| matches!(f, ServerFrame::Error { id: Some(i), .. } if i == "empty")).await;
    assert_error(frames.last().unwrap(), ErrorCode::BadRequest, Some("empty"), Some(sid));

    send(&mut ws, sid, "long", &format!("long {}", directive(2000, 50))).await;
    until_deltas(&mut ws, sid, 1).await;
    ws.send(json!({"type": "regenerate", "id": "now", "session_id": sid})).await;
    let frames = ws.recv_until(|f| matches!(f, ServerFrame::Error { id: Some(i), .. } if i == "now")).await;
    assert_error(frames.last().unwrap(), ErrorCode::Busy, Some("now"), Some(sid));
    ws.send(json!({"type": "stop", "session_id": sid})).await;
    until_dones(&mut ws, sid, 1).await;
}

/// The REST forms answer like a send: the message answered and the new reply.
#[tokio::test]
async fn regenerate_and_edit_over_rest() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "restful").await;
    let post = |path: String, body: serde_json::Value| {
        server.http.post(server.url(&path)).bearer_auth(&token).json(&body).send()
    };
    let sent: SendMessageResponse =
        post(format!("/api/v1/chat/sessions/{sid}/messages"), json!({"content": "hello [[mock tokens=2]]"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let again = post(format!("/api/v1/chat/sessions/{sid}/regenerate"), json!({})).await.unwrap();
    assert_eq!(again.status(), 200);
    let again: SendMessageResponse = again.json().await.unwrap();
    assert_eq!(again.user_message.id, sent.user_message.id);
    assert_ne!(again.assistant_message.id, sent.assistant_message.id);

    let edit = format!("/api/v1/chat/sessions/{sid}/messages/{}/edit", sent.user_message.id);
    let edited: SendMessageResponse =
        post(edit.clone(), json!({"content": "hello again [[mock tokens=2]]"})).await.unwrap().json().await.unwrap();
    assert!(edited.user_message.content.starts_with("hello again"));
    let messages = stored(&server, &token, sid).await.messages;
    assert_eq!(messages.iter().filter(|m| !m.superseded).count(), 2);
    assert_eq!(messages.len(), 5);

    let empty = post(edit, json!({"content": "   "})).await.unwrap();
    assert_eq!(error_of(empty).await, (400, ErrorCode::InvalidContent));
    let other = post(format!("/api/v1/chat/sessions/{}/regenerate", Uuid::new_v4()), json!({})).await.unwrap();
    assert_eq!(error_of(other).await, (404, ErrorCode::NotFound));
}

/// `GET .../messages` pages back through a session from the newest message, oldest first
/// in each page, without gaps or repeats, and refuses ids that are not the session's.
#[tokio::test]
async fn history_reads_back_in_pages() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "pager").await;
    for i in 0..5 {
        let sent = server
            .http
            .post(server.url(&format!("/api/v1/chat/sessions/{sid}/messages")))
            .bearer_auth(&token)
            .json(&json!({"content": format!("question {i} [[mock tokens=1]]")}))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 200);
    }
    let all = stored(&server, &token, sid).await.messages;
    assert_eq!(all.len(), 10);

    let page = |query: String| {
        let (server, token) = (&server, &token);
        async move {
            let response = server
                .http
                .get(server.url(&format!("/api/v1/chat/sessions/{sid}/messages{query}")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json::<MessagePage>().await.unwrap()
        }
    };
    // The newest page, then older ones, until there are no more.
    let mut read = Vec::new();
    let mut next = page("?limit=4".into()).await;
    loop {
        assert!(next.messages.len() <= 4);
        let mut older = next.messages.clone();
        older.extend(read);
        read = older;
        if !next.has_more {
            break;
        }
        next = page(format!("?limit=4&before={}", read[0].id)).await;
    }
    assert_eq!(read.iter().map(|m| m.id).collect::<Vec<_>>(), all.iter().map(|m| m.id).collect::<Vec<_>>());
    // Without a limit: the default page holds all ten.
    let whole = page(String::new()).await;
    assert_eq!((whole.messages.len(), whole.has_more), (10, false));

    let get = |path: String, token: String| server.http.get(server.url(&path)).bearer_auth(token).send();
    let unknown = get(format!("/api/v1/chat/sessions/{sid}/messages?before={}", Uuid::new_v4()), token.clone());
    assert_eq!(error_of(unknown.await.unwrap()).await, (404, ErrorCode::NotFound));
    let (other, _) = server.register("snoop").await;
    let foreign = get(format!("/api/v1/chat/sessions/{sid}/messages"), other);
    assert_eq!(error_of(foreign.await.unwrap()).await, (404, ErrorCode::NotFound));
}

/// The snapshot says whether the session has messages before those it holds: not for a
/// short session, yes once the session outgrows a snapshot (100 messages), whether the
/// actor that answers has run all along or just loaded the session.
#[tokio::test]
async fn a_snapshot_says_whether_older_messages_exist() {
    let server = TestServer::with(&[("CHAT_SESSION_IDLE_SECS", "1"), ("CHAT_RATE_LIMIT_PER_MINUTE", "0")]).await;
    let (token, _, sid) = user_with_session(&server, "long-talker").await;
    let snapshot_says = || async {
        let mut ws = server.ws(&token).await;
        ws.send(json!({"type": "subscribe", "id": "s", "session_id": sid})).await;
        let frames = ws.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. })).await;
        match frames.last() {
            Some(ServerFrame::Subscribed { messages, has_older, .. }) => (messages.len(), *has_older),
            other => panic!("{other:?}"),
        }
    };
    let send = |i: usize| {
        server
            .http
            .post(server.url(&format!("/api/v1/chat/sessions/{sid}/messages")))
            .bearer_auth(&token)
            .json(&json!({"content": format!("question {i} [[mock tokens=1]]")}))
            .send()
    };
    for i in 0..3 {
        assert_eq!(send(i).await.unwrap().status(), 200);
    }
    assert_eq!(snapshot_says().await, (6, false), "six messages, nothing older");
    for i in 3..51 {
        assert_eq!(send(i).await.unwrap().status(), 200);
    }
    assert_eq!(snapshot_says().await, (100, true), "102 messages: two are older");
    // Once the actor has gone idle and is started again, from the store.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(snapshot_says().await, (100, true));
}
