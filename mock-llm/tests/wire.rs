//! Tests of the mock chat model over real HTTP, parsing its SSE the way a client would.

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use relay_mock_llm::{DEMO_REPLY, Fault, MockLlm, MockSettings, MockStats, demo_reply_text, demo_tokens, reply_text};
use serde_json::{Value, json};

const MODEL: &str = "Meta-Llama-3.3-70B-Instruct";

/// Settings that keep tests fast: almost no first-token delay and unthrottled tokens.
fn fast() -> MockSettings {
    MockSettings { first_token_delay: Duration::from_millis(1), tokens_per_second: 0.0, ..MockSettings::default() }
}

async fn start(settings: MockSettings) -> MockLlm {
    MockLlm::start(settings, "127.0.0.1:0".parse().unwrap()).await.expect("mock starts")
}

fn request(content: Value, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "an earlier question [[mock fault=500]]"},
            {"role": "assistant", "content": "an earlier answer"},
            {"role": "user", "content": content},
        ],
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

async fn post(mock: &MockLlm, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(body)
        .send()
        .await
        .expect("request sent")
}

/// One parsed SSE event.
#[derive(Debug)]
enum Ev {
    Chunk(Value),
    Done,
}

/// Reads the whole SSE body; the second value is the transport error that ended it, if any.
async fn read_sse(resp: reqwest::Response) -> (Vec<Ev>, Option<String>) {
    let mut events = Vec::new();
    let mut stream = resp.bytes_stream().eventsource();
    while let Some(item) = stream.next().await {
        match item {
            Ok(ev) if ev.data == "[DONE]" => events.push(Ev::Done),
            Ok(ev) => events.push(Ev::Chunk(serde_json::from_str(&ev.data).expect("chunk is JSON"))),
            Err(err) => return (events, Some(err.to_string())),
        }
    }
    (events, None)
}

fn chunk_values(events: &[Ev]) -> Vec<&Value> {
    events
        .iter()
        .filter_map(|e| match e {
            Ev::Chunk(v) => Some(v),
            Ev::Done => None,
        })
        .collect()
}

/// Content deltas in order, excluding the empty content of the role chunk.
fn contents(events: &[Ev]) -> Vec<String> {
    chunk_values(events)
        .into_iter()
        .filter(|c| c["choices"][0]["delta"]["role"].is_null())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn streaming_reply_has_the_exact_wire_format() {
    let mock = start(fast()).await;
    let body = request(json!("Say something [[mock tokens=12 tps=5000]]"), true);
    let resp = post(&mock, &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (events, err) = read_sse(resp).await;
    assert_eq!(err, None);

    assert!(matches!(events.last(), Some(Ev::Done)), "ends with [DONE]");
    assert_eq!(events.iter().filter(|e| matches!(e, Ev::Done)).count(), 1);
    let chunks = chunk_values(&events);
    // role + 12 tokens + finish + usage
    assert_eq!(chunks.len(), 15);
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"), "{id}");
    for c in &chunks {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], MODEL);
        assert!(c["created"].as_i64().unwrap() > 1_600_000_000);
    }

    let role = chunks[0];
    assert_eq!(role["system_fingerprint"], "fastcoe");
    assert_eq!(
        role["choices"],
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}])
    );

    let content = contents(&events);
    assert_eq!(content.len(), 12);
    assert_eq!(content.concat(), reply_text(12, None));
    assert!(
        chunks.iter().any(|c| c["choices"][0]["delta"].get("channel").is_some()),
        "some deltas carry unknown fields"
    );

    let finish = chunks[13];
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");

    let usage_chunk = chunks[14];
    assert!(usage_chunk["choices"].is_null(), "SambaNova sends choices: null");
    assert!(usage_chunk.get("choices").is_some());
    let usage = &usage_chunk["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert!(prompt >= 1);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + 12);
    assert_eq!(usage["is_last_response"], true);
    for key in ["time_to_first_token", "end_time", "start_time", "completion_tokens_per_sec", "total_latency"] {
        assert!(usage[key].is_number(), "usage.{key} is a number");
    }

    let stats = mock.stats();
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.streams_started, 1);
    assert_eq!(stats.streams_completed, 1);
    assert_eq!(stats.streams_closed_early, 0);
    assert_eq!(stats.active_streams, 0);
    assert_eq!(stats.last_request, Some(body));
}

#[tokio::test]
async fn choices_directive_and_setting_control_the_usage_chunk() {
    let mock = start(fast()).await;
    let (events, _) = read_sse(post(&mock, &request(json!("[[mock tokens=2 choices=empty]]"), true)).await).await;
    let chunks = chunk_values(&events);
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert_eq!(contents(&events).concat(), reply_text(2, None));

    let mock = start(MockSettings { choices_null_in_usage_chunk: false, ..fast() }).await;
    let (events, _) = read_sse(post(&mock, &request(json!("[[mock tokens=1]]"), true)).await).await;
    assert_eq!(chunk_values(&events).last().unwrap()["choices"], json!([]));
    let (events, _) = read_sse(post(&mock, &request(json!("[[mock tokens=1 choices=null]]"), true)).await).await;
    assert!(chunk_values(&events).last().unwrap()["choices"].is_null());
}

#[tokio::test]
async fn max_tokens_below_the_reply_finishes_with_length() {
    let mock = start(fast()).await;
    let mut body = request(json!("[[mock tokens=10]]"), true);
    body["max_tokens"] = json!(4);
    let (events, err) = read_sse(post(&mock, &body).await).await;
    assert_eq!(err, None);
    assert_eq!(contents(&events).concat(), reply_text(4, None));
    let chunks = chunk_values(&events);
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 4);

    // A larger limit changes nothing.
    let mut body = request(json!("[[mock tokens=3]]"), true);
    body["max_completion_tokens"] = json!(100);
    let (events, _) = read_sse(post(&mock, &body).await).await;
    let chunks = chunk_values(&events);
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn non_streaming_returns_full_text_and_usage() {
    let mock = start(fast()).await;
    // Content as an array of parts, as newer OpenAI clients send it.
    let parts = json!([{"type": "text", "text": "Hello"}, {"type": "text", "text": "[[mock tokens=7]]"}]);
    let mut body = request(parts, false);
    body["max_completion_tokens"] = json!(5);
    let resp = post(&mock, &body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], reply_text(5, None));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v["usage"]["total_tokens"].as_u64().unwrap(), prompt + 5);

    // `stream` omitted means non-streaming.
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "[[mock tokens=2]]"}]});
    let v: Value = post(&mock, &body).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], reply_text(2, None));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let stats = mock.stats();
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.streams_started, 0);
    assert_eq!(stats.streams_closed_early, 0);
}

#[tokio::test]
async fn fixed_size_tokens_for_flood_tests() {
    let mock = start(fast()).await;
    let (events, _) = read_sse(post(&mock, &request(json!("[[mock tokens=5 bytes=7]]"), true)).await).await;
    let content = contents(&events);
    assert_eq!(content.len(), 5);
    assert!(content.iter().all(|t| t.len() == 7));
    assert_eq!(content.concat(), reply_text(5, Some(7)));

    let mock = start(MockSettings { token_bytes: Some(1024), reply_tokens: 3, ..fast() }).await;
    let (events, _) = read_sse(post(&mock, &request(json!("go"), true)).await).await;
    assert_eq!(contents(&events).concat(), reply_text(3, Some(1024)));
}

/// In demo mode the reply is the markdown demo document, one piece per delta, cycling
/// when longer; the non-streaming answer carries the same text.
#[tokio::test]
async fn demo_mode_streams_the_markdown_document_piece_by_piece() {
    let whole = demo_tokens().len();
    let mock = start(MockSettings { demo: true, reply_tokens: whole, ..fast() }).await;
    let (events, _) = read_sse(post(&mock, &request(json!("show me"), true)).await).await;
    assert_eq!(contents(&events), demo_tokens());
    assert_eq!(contents(&events).concat(), DEMO_REPLY);
    let more = whole + 3;
    let body = request(json!(format!("again [[mock tokens={more}]]")), false);
    let v: Value = post(&mock, &body).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], demo_reply_text(more));
    assert_eq!(v["usage"]["completion_tokens"], more);
    // A directive switches it either way.
    let (events, _) = read_sse(post(&mock, &request(json!("[[mock demo=0 tokens=4]]"), true)).await).await;
    assert_eq!(contents(&events).concat(), reply_text(4, None));
    let mock = start(fast()).await;
    let (events, _) = read_sse(post(&mock, &request(json!("[[mock demo tokens=4]]"), true)).await).await;
    assert_eq!(contents(&events).concat(), demo_reply_text(4));
}

#[tokio::test]
async fn tokens_are_paced() {
    let mock = start(fast()).await;
    let t0 = Instant::now();
    let (events, _) =
        read_sse(post(&mock, &request(json!("[[mock tokens=10 tps=100 delay_ms=20]]"), true)).await).await;
    assert_eq!(contents(&events).len(), 10);
    // 20 ms to the first chunk, then one token every 10 ms.
    assert!(t0.elapsed() >= Duration::from_millis(115), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn status_faults_return_openai_errors() {
    let mock = start(fast()).await;
    for (fault, status) in [("429", 429), ("500", 500), ("401", 401), ("503", 503)] {
        for stream in [true, false] {
            let resp = post(&mock, &request(json!(format!("hi [[mock fault={fault}]]")), stream)).await;
            assert_eq!(resp.status(), status);
            if status == 429 {
                assert_eq!(resp.headers()["retry-after"], "1");
            }
            let v: Value = resp.json().await.unwrap();
            assert!(v["error"]["message"].is_string(), "{v}");
            assert!(v["error"]["type"].is_string(), "{v}");
        }
    }
    // A bare flag works too.
    assert_eq!(post(&mock, &request(json!("[[mock 429]]"), true)).await.status(), 429);
    assert_eq!(mock.stats().streams_started, 0);

    // A global fault applies to every request, and `fault=none` clears it for one.
    let mock = start(MockSettings { fault: Some(Fault::Status(500)), ..fast() }).await;
    assert_eq!(post(&mock, &request(json!("hi"), false)).await.status(), 500);
    assert_eq!(post(&mock, &request(json!("[[mock fault=none tokens=1]]"), false)).await.status(), 200);
}

#[tokio::test]
async fn api_key_is_enforced() {
    let mock = start(MockSettings { api_key: Some("sekrit".into()), ..fast() }).await;
    let url = format!("{}/chat/completions", mock.base_url());
    let body = request(json!("[[mock tokens=1]]"), false);
    let client = reqwest::Client::new();
    let wrong = client.post(&url).bearer_auth("nope").json(&body).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let v: Value = wrong.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let missing = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let right = client.post(&url).bearer_auth("sekrit").json(&body).send().await.unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(mock.stats().requests, 3);
}

#[tokio::test]
async fn bad_requests_get_400_with_openai_error_body() {
    let mock = start(fast()).await;
    let url = format!("{}/chat/completions", mock.base_url());
    let client = reqwest::Client::new();
    for body in ["{not json", r#"{"model":"m"}"#, r#"{"model":"m","messages":"hi"}"#, "[]"] {
        let resp = client.post(&url).header("content-type", "application/json").body(body).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].is_string());
        assert!(v["error"]["code"].is_null());
    }
    // A known directive with a bad value is reported rather than silently ignored.
    let resp = post(&mock, &request(json!("[[mock tokens=lots]]"), true)).await;
    assert_eq!(resp.status(), 400);
    // Unknown keys are ignored.
    let resp = post(&mock, &request(json!("[[mock tokens=1 colour=blue]]"), false)).await;
    assert_eq!(resp.status(), 200);
    // A directive is user input: a reply past the bounds is refused, never built.
    for huge in ["[[mock bytes=100000000]]", "[[mock tokens=100000000]]", "[[mock tokens=100000 bytes=100000]]"] {
        let resp = post(&mock, &request(json!(huge), true)).await;
        assert_eq!(resp.status(), 400, "{huge}");
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("too large"), "{v}");
    }
}

#[tokio::test]
async fn cut_fault_truncates_the_stream_without_done() {
    let mock = start(fast()).await;
    let (events, err) = read_sse(post(&mock, &request(json!("[[mock tokens=10 fault=cut:3]]"), true)).await).await;
    assert_eq!(contents(&events).len(), 3);
    assert_eq!(contents(&events).concat(), reply_text(3, None));
    assert!(!events.iter().any(|e| matches!(e, Ev::Done)), "no [DONE]");
    assert!(
        chunk_values(&events).iter().all(|c| c["choices"][0]["finish_reason"].is_null() && c.get("usage").is_none()),
        "no finish or usage chunk"
    );
    assert!(err.is_some(), "the client sees a broken body");

    let stats = mock.stats();
    assert_eq!(stats.streams_started, 1);
    assert_eq!(stats.streams_completed, 0);
    assert_eq!(stats.streams_closed_early, 0, "a server-side cut is not a client close");
    assert_eq!(stats.active_streams, 0);

    // The non-streaming variant breaks the JSON body.
    let resp = post(&mock, &request(json!("[[mock tokens=10 cut:3]]"), false)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err());
}

#[tokio::test]
async fn client_dropping_mid_stream_counts_as_closed_early() {
    let mock = start(fast()).await;
    let resp = post(&mock, &request(json!("[[mock tokens=100000 tps=200]]"), true)).await;
    let mut stream = resp.bytes_stream().eventsource();
    let mut seen = 0;
    while seen < 3 {
        let ev = stream.next().await.unwrap().unwrap();
        assert_ne!(ev.data, "[DONE]");
        seen += 1;
    }
    assert_eq!(mock.stats().active_streams, 1);
    drop(stream);

    assert!(mock.wait_for_closed_early(1, Duration::from_secs(2)).await);
    let stats = mock.stats();
    assert_eq!(stats.streams_closed_early, 1);
    assert_eq!(stats.streams_completed, 0);
    assert_eq!(stats.active_streams, 0);
}

#[tokio::test]
async fn client_dropping_a_stalled_stream_counts_as_closed_early() {
    let mock = start(MockSettings { fault: Some(Fault::Stall), ..fast() }).await;
    let resp = post(&mock, &request(json!("hello"), true)).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream().eventsource();
    let role = stream.next().await.unwrap().unwrap();
    let role: Value = serde_json::from_str(&role.data).unwrap();
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
    // Nothing more arrives while stalled.
    assert!(tokio::time::timeout(Duration::from_millis(150), stream.next()).await.is_err());
    assert!(!mock.wait_for_closed_early(1, Duration::from_millis(10)).await);
    drop(stream);

    assert!(mock.wait_for_closed_early(1, Duration::from_secs(2)).await);
    let stats = mock.stats();
    assert_eq!(stats.streams_completed, 0);
    assert_eq!(stats.active_streams, 0);
}

#[tokio::test]
async fn client_giving_up_on_a_stalled_non_streaming_request_counts_as_closed_early() {
    let mock = start(fast()).await;
    let client = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().unwrap();
    let err = client
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&request(json!("[[mock stall]]"), false))
        .send()
        .await
        .expect_err("never answered");
    assert!(err.is_timeout(), "{err}");
    assert!(mock.wait_for_closed_early(1, Duration::from_secs(2)).await);
    assert_eq!(mock.stats().streams_started, 0);
}

#[tokio::test]
async fn stats_and_reset_over_http() {
    let mock = start(fast()).await;
    let (_, err) = read_sse(post(&mock, &request(json!("[[mock tokens=2]]"), true)).await).await;
    assert_eq!(err, None);
    let root = mock.base_url().trim_end_matches("/v1").to_owned();
    let client = reqwest::Client::new();

    let stats: MockStats = client.get(format!("{root}/mock/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats, mock.stats());
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.streams_completed, 1);
    assert!(stats.last_request.is_some());

    let resp = client.post(format!("{root}/mock/reset")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let stats: MockStats = client.get(format!("{root}/mock/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats, MockStats::default());
}

#[tokio::test]
async fn shutdown_ends_stalled_streams_without_counting_a_client_close() {
    let mock = start(fast()).await;
    assert!(mock.base_url().starts_with("http://127.0.0.1:"));
    assert_eq!(mock.base_url(), format!("http://{}/v1", mock.addr()));
    let resp = post(&mock, &request(json!("[[mock stall]]"), true)).await;
    let mut stream = resp.bytes_stream().eventsource();
    stream.next().await.unwrap().unwrap();
    mock.shutdown();
    let rest = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(item) = stream.next().await {
            if item.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream ends promptly on shutdown");
    let stats = mock.stats();
    assert_eq!(stats.streams_closed_early, 0);
    assert_eq!(stats.active_streams, 0);
}

/// The standalone binary prints its base URL, serves, refuses bad settings with exit code 2,
/// and stops on SIGTERM.
#[tokio::test]
async fn the_binary_serves_until_sigterm() {
    use std::io::BufRead;
    let bad =
        std::process::Command::new(env!("CARGO_BIN_EXE_relay-mock-llm")).env("MOCK_BIND", "nowhere").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("MOCK_BIND"));
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_relay-mock-llm"))
        .env("MOCK_BIND", "127.0.0.1:0")
        .env("MOCK_FAULT", "teapot")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relay-mock-llm"))
        .env("MOCK_BIND", format!("127.0.0.1:{port}"))
        .env("MOCK_FIRST_TOKEN_MS", "1")
        .env_remove("MOCK_DEMO")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("http://127.0.0.1:{port}/v1"));
    let resp = reqwest::Client::new()
        .post(format!("{}/chat/completions", line.trim()))
        .json(&request(json!("hi [[mock tokens=3]]"), false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Without MOCK_DEMO=1 the standalone mock writes lorem ipsum.
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], reply_text(3, None));
    let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    assert!(child.wait().unwrap().success(), "SIGTERM is a clean exit");
}

/// `fail_first=N` fails the first N requests carrying the same message, then answers:
/// what a client's retries meet.
#[tokio::test]
async fn fail_first_fails_then_answers() {
    let mock = start(fast()).await;
    let body = request(json!("retry me [[mock fail_first=2 fault=503 tokens=2]]"), true);
    assert_eq!(post(&mock, &body).await.status(), 503);
    assert_eq!(post(&mock, &body).await.status(), 503);
    let ok = post(&mock, &body).await;
    assert_eq!(ok.status(), 200);
    let (events, _) = read_sse(ok).await;
    assert_eq!(contents(&events).concat(), reply_text(2, None));
    // Another message has its own count.
    let other = request(json!("another [[mock fail_first=1 fault=404]]"), false);
    let resp = post(&mock, &other).await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(post(&mock, &other).await.status(), 200);
}
