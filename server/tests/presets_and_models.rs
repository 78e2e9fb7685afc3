//! Prompt presets, a session's own system prompt, and model choice with an A/B experiment,
//! over real HTTP: what is stored, what the model receives, what the session and its
//! replies name, what `/api/v1/admin/usage` and `/metrics` compare, and every limit.

mod common;

use common::{TestServer, error_of};
use relay_protocol::{ErrorCode, Prompt, PromptList, Session};
use serde_json::{Value, json};

async fn call(
    server: &TestServer,
    method: reqwest::Method,
    token: &str,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = server.http.request(method, server.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

/// The system prompt and model of the model's last request.
fn last_asked(server: &TestServer) -> (String, String) {
    let request = server.mock.stats().last_request.expect("the model was asked");
    (request["messages"][0]["content"].as_str().unwrap().to_owned(), request["model"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn saved_prompts_are_the_users_own_and_bounded() {
    use reqwest::Method;
    let server = TestServer::start().await;
    let (token, _) = server.register("pia").await;
    let r = call(
        &server,
        Method::POST,
        &token,
        "/api/v1/prompts",
        Some(json!({"title": " Translate ", "content": "Translate to French:\n"})),
    )
    .await;
    assert_eq!(r.status(), 201);
    let translate: Prompt = r.json().await.unwrap();
    assert_eq!((translate.title.as_str(), translate.content.as_str()), ("Translate", "Translate to French:"));
    let r = call(
        &server,
        Method::POST,
        &token,
        "/api/v1/prompts",
        Some(json!({"title": "explain", "content": "Explain simply"})),
    )
    .await;
    let explain: Prompt = r.json().await.unwrap();
    let list: PromptList = call(&server, Method::GET, &token, "/api/v1/prompts", None).await.json().await.unwrap();
    let titles: Vec<&str> = list.prompts.iter().map(|p| p.title.as_str()).collect();
    assert_eq!(titles, ["explain", "Translate"], "by title, case aside");

    let path = format!("/api/v1/prompts/{}", explain.id);
    let r = call(&server, Method::PATCH, &token, &path, Some(json!({"content": "Explain like I am five"}))).await;
    let changed: Prompt = r.json().await.unwrap();
    assert_eq!((changed.title.as_str(), changed.content.as_str()), ("explain", "Explain like I am five"));

    let (other, _) = server.register("quin").await;
    let r = call(&server, Method::PATCH, &other, &path, Some(json!({"title": "mine"}))).await;
    assert_eq!(error_of(r).await, (404, ErrorCode::NotFound), "another user's prompt");
    assert_eq!(error_of(call(&server, Method::DELETE, &other, &path, None).await).await, (404, ErrorCode::NotFound));
    let theirs: PromptList = call(&server, Method::GET, &other, "/api/v1/prompts", None).await.json().await.unwrap();
    assert!(theirs.prompts.is_empty());

    for (body, what) in [
        (json!({"title": "  ", "content": "x"}), "a blank title"),
        (json!({"title": "t", "content": "x".repeat(4001)}), "a long text"),
        (json!({"title": "t".repeat(101), "content": "x"}), "a long title"),
        (json!({"title": "t", "content": "x", "extra": 1}), "an unknown field"),
    ] {
        let r = call(&server, Method::POST, &token, "/api/v1/prompts", Some(body)).await;
        assert_eq!(error_of(r).await, (400, ErrorCode::BadRequest), "{what}");
    }
    let r = call(&server, Method::PATCH, &token, &path, Some(json!({}))).await;
    assert_eq!(r.json::<Prompt>().await.unwrap(), changed, "nothing to change: the prompt as it is");
    assert_eq!(call(&server, Method::DELETE, &token, &path, None).await.status(), 204);
    let list: PromptList = call(&server, Method::GET, &token, "/api/v1/prompts", None).await.json().await.unwrap();
    assert_eq!(list.prompts.iter().map(|p| p.id).collect::<Vec<_>>(), [translate.id]);

    // At most MAX_PROMPTS_PER_USER each: the next is refused until one is deleted.
    let save = |n: usize| {
        call(&server, Method::POST, &token, "/api/v1/prompts", Some(json!({"title": format!("p{n}"), "content": "x"})))
    };
    let mut last = None;
    for n in 1..relay_protocol::MAX_PROMPTS_PER_USER {
        let r = save(n).await;
        assert_eq!(r.status(), 201, "prompt {n}");
        last = Some(r.json::<Prompt>().await.unwrap());
    }
    let refused = save(0).await;
    assert_eq!(error_of(refused).await, (403, ErrorCode::LimitExceeded), "one more than the limit");
    let other_user =
        call(&server, Method::POST, &other, "/api/v1/prompts", Some(json!({"title": "t", "content": "x"}))).await;
    assert_eq!(other_user.status(), 201, "the limit is each user's own");
    let path = format!("/api/v1/prompts/{}", last.unwrap().id);
    assert_eq!(call(&server, Method::DELETE, &token, &path, None).await.status(), 204);
    assert_eq!(save(0).await.status(), 201, "room again after a delete");
}

#[tokio::test]
async fn a_sessions_own_system_prompt_replaces_the_servers() {
    use reqwest::Method;
    let server = TestServer::with(&[("CHAT_SYSTEM_PROMPT", "Server prompt.")]).await;
    let (token, _) = server.register("ros").await;
    let r = call(
        &server,
        Method::POST,
        &token,
        "/api/v1/chat/sessions",
        Some(json!({"system_prompt": "  Answer in haiku.  "})),
    )
    .await;
    assert_eq!(r.status(), 201);
    let session: Session = r.json().await.unwrap();
    assert_eq!(session.system_prompt.as_deref(), Some("Answer in haiku."));
    server.send_rest(&token, session.id, "hi [[mock tokens=2]]").await;
    assert_eq!(last_asked(&server).0, "Answer in haiku.");

    let path = format!("/api/v1/chat/sessions/{}", session.id);
    let r = call(&server, Method::PATCH, &token, &path, Some(json!({"system_prompt": "Answer in French."}))).await;
    let changed: Session = r.json().await.unwrap();
    assert_eq!(
        (changed.title.as_str(), changed.system_prompt.as_deref()),
        ("hi [[mock tokens=2]]", Some("Answer in French."))
    );
    server.send_rest(&token, session.id, "again [[mock tokens=2]]").await;
    assert_eq!(last_asked(&server).0, "Answer in French.", "the next reply uses the change");
    let (_, stored) = server.get(&token, &path).await;
    assert_eq!(stored["session"]["system_prompt"], "Answer in French.");

    // A share link shows the conversation, not its owner's instructions.
    let share = call(&server, Method::POST, &token, &format!("{path}/share"), None).await;
    let share: Value = share.json().await.unwrap();
    let page = server.http.get(server.url(&format!("/api/v1/shared/{}", share["token"].as_str().unwrap()))).send();
    let page = page.await.unwrap().text().await.unwrap();
    assert!(!page.contains("Answer in French"), "{page}");

    let r = call(&server, Method::PATCH, &token, &path, Some(json!({}))).await;
    let same = r.json::<Session>().await.unwrap();
    assert_eq!(same.system_prompt.as_deref(), Some("Answer in French."), "nothing to change: the session as it is");
    let r = call(&server, Method::PATCH, &token, &path, Some(json!({"system_prompt": null}))).await;
    assert_eq!(r.json::<Session>().await.unwrap().system_prompt, None);
    server.send_rest(&token, session.id, "third [[mock tokens=2]]").await;
    assert_eq!(last_asked(&server).0, "Server prompt.", "back to the server's");

    let r = call(&server, Method::PATCH, &token, &path, Some(json!({"system_prompt": "x".repeat(4001)}))).await;
    assert_eq!(error_of(r).await, (400, ErrorCode::BadRequest), "over 4,000 characters");
    let r =
        call(&server, Method::POST, &token, "/api/v1/chat/sessions", Some(json!({"system_prompt": "x".repeat(4001)})))
            .await;
    assert_eq!(error_of(r).await, (400, ErrorCode::BadRequest));
}

const MODELS: &str = r#"[{"name": "alpha", "label": "Alpha"}, {"name": "beta", "label": "Beta 2"}]"#;

#[tokio::test]
async fn sessions_choose_among_the_configured_models() {
    use reqwest::Method;
    let server = TestServer::with(&[("CHAT_MODELS", MODELS)]).await;
    let (token, _) = server.register("sam").await;
    let (_, list) = server.get(&token, "/api/v1/models").await;
    assert_eq!(
        list,
        json!({"models": [{"name": "alpha", "label": "Alpha"}, {"name": "beta", "label": "Beta 2"}], "default": "alpha"})
    );
    let plain = server.create_session(&token).await;
    assert_eq!(plain.model.as_deref(), Some("alpha"), "the default");
    let r = call(&server, Method::POST, &token, "/api/v1/chat/sessions", Some(json!({"model": "beta"}))).await;
    let session: Session = r.json().await.unwrap();
    assert_eq!(session.model.as_deref(), Some("beta"));
    let sent = server.send_rest(&token, session.id, "hello [[mock tokens=2]]").await;
    assert_eq!(last_asked(&server).1, "beta", "the provider is asked for the session's model");
    assert_eq!(sent.assistant_message.model.as_deref(), Some("beta"));
    let path = format!("/api/v1/chat/sessions/{}", session.id);
    let (_, stored) = server.get(&token, &path).await;
    assert_eq!(stored["messages"][1]["model"], "beta", "the stored reply names it");
    assert_eq!(stored["messages"][0].get("model"), None, "a user message has none");

    let r = call(&server, Method::PATCH, &token, &path, Some(json!({"model": "alpha"}))).await;
    assert_eq!(r.json::<Session>().await.unwrap().model.as_deref(), Some("alpha"));
    let sent = server.send_rest(&token, session.id, "again [[mock tokens=2]]").await;
    assert_eq!((last_asked(&server).1.as_str(), sent.assistant_message.model.as_deref()), ("alpha", Some("alpha")));
    let r = call(&server, Method::PATCH, &token, &path, Some(json!({"model": "gamma"}))).await;
    assert_eq!(error_of(r).await, (400, ErrorCode::BadRequest), "a model not offered");
    let r = call(&server, Method::POST, &token, "/api/v1/chat/sessions", Some(json!({"model": "gamma"}))).await;
    assert_eq!(error_of(r).await, (400, ErrorCode::BadRequest));
}

#[tokio::test]
async fn instructions_must_fit_the_model_that_reads_them() {
    use reqwest::Method;
    // "tiny" leaves its prompt 300 tokens: instructions may take at most half.
    let models = r#"[{"name": "big"}, {"name": "tiny", "context_tokens": 2348}]"#;
    let server = TestServer::with(&[("CHAT_MODELS", models)]).await;
    let (token, _) = server.register("tia").await;
    let long = "lorem ".repeat(200); // about 334 tokens: fits "big", not half of "tiny"
    let r = call(&server, Method::POST, &token, "/api/v1/chat/sessions", Some(json!({"system_prompt": long}))).await;
    let session: Session = r.json().await.unwrap();
    let path = format!("/api/v1/chat/sessions/{}", session.id);
    let r = call(&server, Method::PATCH, &token, &path, Some(json!({"model": "tiny"}))).await;
    assert_eq!(error_of(r).await, (400, ErrorCode::BadRequest), "the kept instructions do not fit the new model");
    let r =
        call(&server, Method::PATCH, &token, &path, Some(json!({"model": "tiny", "system_prompt": "Be brief."}))).await;
    assert_eq!(r.json::<Session>().await.unwrap().model.as_deref(), Some("tiny"));
    let r = call(&server, Method::PATCH, &token, &path, Some(json!({"system_prompt": long}))).await;
    assert_eq!(error_of(r).await, (400, ErrorCode::BadRequest), "checked against the session's model, not the default");
}

#[tokio::test]
async fn an_experiment_splits_users_stably_and_the_arms_are_compared() {
    use reqwest::Method;
    let server = TestServer::with(&[
        ("CHAT_MODELS", MODELS),
        ("CHAT_MODEL_EXPERIMENT", "beta:50"),
        ("CHAT_ADMIN_USERS", "root-admin"),
    ])
    .await;
    let mut arms = std::collections::HashMap::new();
    let mut tokens = Vec::new();
    for i in 0..24 {
        let (token, _) = server.register(&format!("user{i:02}")).await;
        let first = server.create_session(&token).await.model.unwrap();
        let second = server.create_session(&token).await.model.unwrap();
        assert_eq!(first, second, "a user stays in their arm");
        *arms.entry(first.clone()).or_insert(0) += 1;
        tokens.push((token, first));
    }
    assert!(arms.get("alpha").copied().unwrap_or(0) >= 4 && arms.get("beta").copied().unwrap_or(0) >= 4, "{arms:?}");

    // One reply in each arm, rated: one up, one down.
    let mut rated = Vec::new();
    for model in ["alpha", "beta"] {
        let (token, _) = tokens.iter().find(|(_, m)| m == model).unwrap();
        let session = server.create_session(token).await;
        let sent = server.send_rest(token, session.id, "rate me [[mock tokens=3]]").await;
        let path = format!("/api/v1/chat/sessions/{}/messages/{}/feedback", session.id, sent.assistant_message.id);
        let rating = if model == "alpha" { 1 } else { -1 };
        let r = call(&server, Method::POST, token, &path, Some(json!({"rating": rating}))).await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!((body["rating"].as_i64(), body["model"].as_str()), (Some(rating), Some(model)));
        for (bad, what) in [(json!({"rating": 2}), "not 1 or -1"), (json!({"rating": 0}), "zero")] {
            let r = call(&server, Method::POST, token, &path, Some(bad)).await;
            assert_eq!(error_of(r).await, (400, ErrorCode::BadRequest), "{what}");
        }
        let question = format!("/api/v1/chat/sessions/{}/messages/{}/feedback", session.id, sent.user_message.id);
        let r = call(&server, Method::POST, token, &question, Some(json!({"rating": 1}))).await;
        assert_eq!(error_of(r).await, (404, ErrorCode::NotFound), "a user message is no reply");
        let (stranger, _) = server.register(&format!("stranger-{model}")).await;
        let r = call(&server, Method::POST, &stranger, &path, Some(json!({"rating": 1}))).await;
        assert_eq!(error_of(r).await, (404, ErrorCode::NotFound), "another user's reply");
        rated.push(model);
    }

    let (admin, _) = server.admin("root-admin").await;
    let (status, report) = server.get(&admin, "/api/v1/admin/usage").await;
    assert_eq!(status, 200);
    let row = |model: &str| report["models"].as_array().unwrap().iter().find(|r| r["model"] == model).cloned().unwrap();
    let (alpha, beta) = (row("alpha"), row("beta"));
    assert_eq!((alpha["arm"].as_str(), beta["arm"].as_str()), (Some("control"), Some("variant")));
    assert_eq!((alpha["replies"].as_u64(), alpha["complete"].as_u64()), (Some(1), Some(1)));
    assert_eq!((alpha["thumbs_up"].as_u64(), alpha["thumbs_down"].as_u64()), (Some(1), Some(0)));
    assert_eq!((beta["thumbs_up"].as_u64(), beta["thumbs_down"].as_u64()), (Some(0), Some(1)));
    assert!(beta["completion_tokens"].as_u64().unwrap() > 0);

    let metrics =
        server.http.get(server.url("/metrics")).bearer_auth(&admin).send().await.unwrap().text().await.unwrap();
    for line in [
        r#"relay_model_replies_total{arm="variant",finish_reason="stop",model="beta"} 1"#,
        r#"relay_model_replies_total{arm="control",finish_reason="stop",model="alpha"} 1"#,
        r#"relay_model_feedback_total{arm="control",model="alpha",rating="up"} 1"#,
        r#"relay_model_feedback_total{arm="variant",model="beta",rating="down"} 1"#,
        r#"relay_model_time_to_first_token_seconds_count{arm="variant",model="beta"} 1"#,
    ] {
        assert!(
            metrics.contains(line),
            "{line} in\n{}",
            metrics.lines().filter(|l| l.contains("model_")).collect::<Vec<_>>().join("\n")
        );
    }
}
