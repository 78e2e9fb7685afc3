//! Search within conversations (`GET /api/v1/chat/search`) over real HTTP: the caller's
//! own messages only, every word required, stemmed, best first, the match marked in an
//! escaped snippet; never a superseded message or a deleted session's; every limit refused
//! with a clear error.

mod common;

use common::{TestServer, error_of, eventually};
use relay_protocol::{ErrorCode, Role, SearchResults, SendMessageResponse};
use serde_json::json;
use uuid::Uuid;

async fn search(server: &TestServer, token: &str, query: &str) -> SearchResults {
    let r = server
        .http
        .get(server.url("/api/v1/chat/search"))
        .query(&[("q", query)])
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "search {query:?}");
    r.json().await.unwrap()
}

/// The ids of the messages a search finds.
async fn found(server: &TestServer, token: &str, query: &str) -> Vec<Uuid> {
    search(server, token, query).await.results.iter().map(|r| r.message_id).collect()
}

#[tokio::test]
async fn finds_the_callers_messages_by_every_word_marked_and_escaped() {
    let server = TestServer::start().await;
    let (alice, _) = server.register("alice").await;
    let (bob, _) = server.register("bob").await;
    let trip = server.create_session(&alice).await;
    let run = server.create_session(&alice).await;
    let museums = server.send_rest(&alice, trip.id, "Which museums in Paris open on Mondays?").await;
    let shoes = server.send_rest(&alice, run.id, "Running shoes for a <b>marathon</b> & more").await;
    let echoed = server.send_rest(&alice, trip.id, "A café near the Louvre [[mock echo]]").await;
    let bobs = server.create_session(&bob).await;
    server.send_rest(&bob, bobs.id, "Paris museums are lovely in spring").await;

    // Writes land through the write-behind batch; the first search waits for them.
    eventually("the messages to be searchable", || async {
        search(&server, &alice, "paris").await.total == 1 && search(&server, &alice, "louvre").await.total == 2
    })
    .await;

    // Only the caller's messages, with the session they are in.
    let paris = search(&server, &alice, "paris").await;
    assert_eq!((paris.total, paris.page, paris.per_page), (1, 1, 20));
    let hit = &paris.results[0];
    assert_eq!((hit.message_id, hit.session_id, hit.role), (museums.user_message.id, trip.id, Role::User));
    assert_eq!(hit.session_title, "Which museums in Paris open on Mondays?");
    assert_eq!(hit.snippet, "Which museums in <mark>Paris</mark> open on Mondays?");
    assert_eq!(hit.created_at, museums.user_message.created_at);
    assert_eq!(found(&server, &bob, "mondays").await, Vec::<Uuid>::new(), "never another user's");

    // Every word must match; words match by their stem, case and accents aside.
    assert_eq!(found(&server, &alice, "museums mondays").await, [museums.user_message.id]);
    assert_eq!(found(&server, &alice, "paris marathon").await, Vec::<Uuid>::new());
    assert_eq!(found(&server, &alice, "run").await, [shoes.user_message.id]);
    assert_eq!(found(&server, &alice, "MUSEUM").await, [museums.user_message.id]);
    let cafe = search(&server, &alice, "cafe").await;
    let mut ids: Vec<Uuid> = cafe.results.iter().map(|r| r.message_id).collect();
    ids.sort();
    let mut both = vec![echoed.user_message.id, echoed.assistant_message.id];
    both.sort();
    assert_eq!(ids, both, "the user's message and the reply that echoed it");
    let reply = cafe.results.iter().find(|r| r.role == Role::Assistant).unwrap();
    assert!(reply.snippet.contains("<mark>café</mark>"), "{}", reply.snippet);

    // The snippet is HTML: the message's own markup is text.
    let marked = search(&server, &alice, "marathon").await;
    assert_eq!(marked.results[0].snippet, "Running shoes for a &lt;b&gt;<mark>marathon</mark>&lt;/b&gt; &amp; more");
    assert_eq!(found(&server, &alice, "zeppelin").await, Vec::<Uuid>::new());
}

#[tokio::test]
async fn superseded_messages_and_deleted_sessions_are_not_found() {
    let server = TestServer::start().await;
    let (token, _) = server.register("carol").await;
    let session = server.create_session(&token).await;
    let first = server.send_rest(&token, session.id, "tell me about aardvarks").await;
    let edited = server
        .http
        .post(server.url(&format!("/api/v1/chat/sessions/{}/messages/{}/edit", session.id, first.user_message.id)))
        .bearer_auth(&token)
        .json(&json!({"content": "tell me about pangolins"}))
        .send()
        .await
        .unwrap();
    assert_eq!(edited.status(), 200);
    let edited: SendMessageResponse = edited.json().await.unwrap();
    eventually("the edit to be searchable", || async { search(&server, &token, "pangolins").await.total == 1 }).await;
    assert_eq!(found(&server, &token, "pangolins").await, [edited.user_message.id]);
    assert_eq!(found(&server, &token, "aardvarks").await, Vec::<Uuid>::new(), "the replaced question is superseded");

    let other = server.create_session(&token).await;
    server.send_rest(&token, other.id, "pangolins again, elsewhere").await;
    eventually("both to be searchable", || async { search(&server, &token, "pangolins").await.total == 2 }).await;
    let r = server
        .http
        .delete(server.url(&format!("/api/v1/chat/sessions/{}", other.id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(found(&server, &token, "pangolins").await, [edited.user_message.id], "a deleted session's are gone");
}

#[tokio::test]
async fn results_come_best_first_in_pages() {
    let server = TestServer::start().await;
    let (token, _) = server.register("dave").await;
    let session = server.create_session(&token).await;
    let mut sent = Vec::new();
    for i in 0..24 {
        sent.push(server.send_rest(&token, session.id, &format!("note {i} about the weather and other things")).await);
    }
    let best = server.send_rest(&token, session.id, "zebra weather weather weather").await;
    eventually("all to be searchable", || async { search(&server, &token, "weather").await.total == 25 }).await;
    assert_eq!(search(&server, &token, "weather").await.results[0].message_id, best.user_message.id, "BM25 ranks");

    let page = |n: u32| {
        let (server, token) = (&server, &token);
        async move {
            let r = server
                .http
                .get(server.url(&format!("/api/v1/chat/search?q=weather&page={n}&per_page=10")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            r.json::<SearchResults>().await.unwrap()
        }
    };
    let (one, two, three) = (page(1).await, page(2).await, page(3).await);
    assert_eq!((one.results.len(), two.results.len(), three.results.len()), (10, 10, 5));
    assert_eq!((three.total, three.page, three.per_page), (25, 3, 10));
    let mut all: Vec<Uuid> = [one, two, three].iter().flat_map(|p| p.results.iter().map(|r| r.message_id)).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 25, "pages neither overlap nor skip");
    // Past the first 1,000 results a page is empty, the total still counted.
    let r = server
        .http
        .get(server.url("/api/v1/chat/search?q=weather&page=1000&per_page=2"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let deep: SearchResults = r.json().await.unwrap();
    assert_eq!((deep.results.len(), deep.total, deep.page), (0, 25, 1000));
}

#[tokio::test]
async fn bad_searches_get_clear_errors() {
    let server = TestServer::start().await;
    let (token, _) = server.register("erin").await;
    let long = "a".repeat(201);
    for (query, says) in [
        ("", "q is required"),
        ("q=", "q is required"),
        ("q=%20%20", "q is required"),
        (&format!("q={long}") as &str, "at most 200 characters"),
        ("q=x&per_page=51", "per_page must be 1 to 50"),
        ("q=x&per_page=0", "per_page must be 1 to 50"),
        ("q=x&page=0", "page must be 1 to 1000"),
        ("q=x&page=1001", "page must be 1 to 1000"),
        ("q=x&page=two", "page"),
    ] {
        let r = server
            .http
            .get(server.url(&format!("/api/v1/chat/search?{query}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{query}");
        assert!(body["error"]["message"].as_str().unwrap().contains(says), "{query}: {body}");
    }
    let ok = format!("q={}", "a".repeat(200));
    let r = server.http.get(server.url(&format!("/api/v1/chat/search?{ok}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Punctuation alone, or SurrealQL, is only text to look for.
    for query in ["!!!", "' OR 1=1 --", "\"; DELETE chat_message; --", "@@", "*"] {
        assert_eq!(search(&server, &token, query).await.total, 0, "{query}");
    }
    let r = server.http.get(server.url("/api/v1/chat/search?q=x")).send().await.unwrap();
    assert_eq!(error_of(r).await, (401, ErrorCode::Unauthorized));
}

/// A user's searches are limited per minute (`CHAT_SEARCHES_PER_MINUTE`): past it, `429`
/// with when to retry; another user's allowance is their own.
#[tokio::test]
async fn searches_are_limited_per_user() {
    let server = TestServer::with(&[("CHAT_SEARCHES_PER_MINUTE", "3")]).await;
    let (token, _) = server.register("rita").await;
    let url = server.url("/api/v1/chat/search");
    let ask = |token: String| {
        let (http, url) = (server.http.clone(), url.clone());
        async move { http.get(url).query(&[("q", "anything")]).bearer_auth(token).send().await.unwrap() }
    };
    for _ in 0..3 {
        assert_eq!(ask(token.clone()).await.status(), 200);
    }
    let refused = ask(token.clone()).await;
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(error_of(refused).await, (429, relay_protocol::ErrorCode::RateLimited));
    let (other, _) = server.register("saul").await;
    assert_eq!(ask(other).await.status(), 200, "per user");
}

/// Searches run at most `CHAT_SEARCH_CONCURRENCY` at once on a node: one more waits up to
/// 2 s for a turn, then is refused with `503` and when to retry, counted in `/metrics`;
/// the turn is given back when the search ends. (A fault holds each search 5 s, so the
/// server runs as its own process, built with the fault switches.)
#[tokio::test]
async fn a_search_finding_every_turn_taken_is_refused_after_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let vars = [
        ("JWT_SECRET", common::SECRET),
        ("METRICS_TOKEN", "scrape"),
        ("CHAT_SEARCH_CONCURRENCY", "1"),
        ("RELAY_FAULT_SEARCH_DELAY_MS", "5000"),
    ];
    let node = common::Process::start_with(dir.path(), &vars, std::process::Stdio::inherit());
    let http = reqwest::Client::new();
    node.ready(&http).await;
    let ask = |token: String| {
        let (http, url) = (http.clone(), node.url("/api/v1/chat/search"));
        async move {
            let started = std::time::Instant::now();
            let r = http.get(url).query(&[("q", "anything")]).bearer_auth(token).send().await.unwrap();
            (r, started.elapsed())
        }
    };
    let tokens = [node.register(&http, "fern").await.token, node.register(&http, "gus").await.token];
    // Both at once (the second a little later): whichever reaches the server first holds
    // the turn for 5 s, the other waits 2 s for it and is refused.
    let first = tokio::spawn(ask(tokens[0].clone()));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let second = tokio::spawn(ask(tokens[1].clone()));
    let answers = [first.await.unwrap(), second.await.unwrap()];
    let refused: Vec<usize> = (0..2).filter(|&i| answers[i].0.status() == 503).collect();
    assert_eq!(refused.len(), 1, "one search held the turn, the other was refused");
    let [a, b] = answers;
    let ((held, _), (refusal, waited)) = if refused[0] == 0 { (b, a) } else { (a, b) };
    assert_eq!(held.status(), 200, "the search holding the turn ends well");
    assert!(waited >= std::time::Duration::from_millis(1900), "waited {waited:?} for a turn");
    assert!(refusal.headers().contains_key("retry-after"));
    assert_eq!(error_of(refusal).await, (503, ErrorCode::Unavailable));
    let (after, _) = ask(tokens[refused[0]].clone()).await;
    assert_eq!(after.status(), 200, "the turn was given back");
    let metrics = http.get(node.url("/metrics")).bearer_auth("scrape").send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"relay_limits_refused_total{limit="search_concurrency"} 1"#), "{metrics}");
}
