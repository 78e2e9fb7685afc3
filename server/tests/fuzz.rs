//! Black-box fuzzing of the WebSocket endpoint: 100,000 random and mutated frames (wrong
//! types, huge numbers, deep nesting, invalid UTF-8, control characters, unknown fields)
//! over real connections to the real server. No panic; every frame is answered, in order,
//! with `bad_request` (or `pong` for the pings among them); oversized frames close 1009 and
//! text that is not UTF-8 closes 1007; a connection streaming a reply meanwhile gets all of
//! it, gap-free; and the server's memory comes back near where it started.

mod common;

use common::flow::*;
use common::{TestServer, Ws, assert_contiguous, reply_text, rss_bytes};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay_mock_llm as mock;
use relay_protocol::{ClientFrame, ErrorCode, ServerFrame};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::Utf8Bytes;

/// How many frames in all, over how many connections, sent in batches of this size.
const FRAMES: usize = 100_000;
const CONNECTIONS: usize = 4;
const BATCH: usize = 500;

/// Valid frames the mutator starts from.
fn seeds() -> Vec<Value> {
    let sid = "6f1c2b9e-0d57-4a51-9a39-0c4a8c1f2e11";
    vec![
        json!({"type": "subscribe", "id": "1", "session_id": sid}),
        json!({"type": "unsubscribe", "id": "2", "session_id": sid}),
        json!({"type": "send", "id": "3", "session_id": sid, "content": "hello"}),
        json!({"type": "stop", "id": "4", "session_id": sid}),
        json!({"type": "create_session", "id": "5", "title": "Trip"}),
        json!({"type": "rename_session", "id": "6", "session_id": sid, "title": "Renamed"}),
        json!({"type": "delete_session", "id": "7", "session_id": sid}),
        json!({"type": "list_sessions", "id": "8", "page": 2, "per_page": 10}),
        json!({"type": "ping", "id": "9"}),
    ]
}

/// A value of a random kind, some of them hostile.
fn random_value(rng: &mut StdRng, depth: usize) -> Value {
    match rng.gen_range(0..12) {
        0 => Value::Null,
        1 => json!(rng.r#gen::<bool>()),
        2 => json!(rng.r#gen::<i64>()),
        3 => json!(u64::MAX),
        4 => serde_json::from_str("1e308").unwrap(),
        5 => json!(rng.r#gen::<f64>() * -1e12),
        6 => json!(random_text(rng, 40)),
        7 => json!("\u{0000}\u{001b}[31m\u{202e}\u{feff}"),
        8 => json!("x".repeat(rng.gen_range(0..4000))),
        9 if depth < 4 => Value::Array((0..rng.gen_range(0..4)).map(|_| random_value(rng, depth + 1)).collect()),
        10 if depth < 4 => {
            let mut object = serde_json::Map::new();
            for _ in 0..rng.gen_range(0..4) {
                object.insert(random_text(rng, 8), random_value(rng, depth + 1));
            }
            Value::Object(object)
        }
        _ => json!("6f1c2b9e-0d57-4a51-9a39-0c4a8c1f2e11"),
    }
}

/// Random characters, control characters and non-ASCII included.
fn random_text(rng: &mut StdRng, max: usize) -> String {
    (0..rng.gen_range(0..max))
        .map(|_| match rng.gen_range(0..4) {
            0 => char::from(rng.gen_range(0u8..0x20)),
            1 => char::from_u32(rng.gen_range(0x80..0x2FFFF)).unwrap_or('?'),
            _ => char::from(rng.gen_range(0x20u8..0x7f)),
        })
        .collect()
}

/// One fuzz frame as text: a mutated valid frame, raw JSON-ish text, or a structure nested
/// far beyond the decoder's depth limit.
fn fuzz_text(rng: &mut StdRng, seeds: &[Value]) -> String {
    match rng.gen_range(0..10) {
        0 => random_text(rng, 200),
        1 => {
            let depth = rng.gen_range(100..5000);
            format!(r#"{{"type":"ping","id":{}{}}}"#, "[".repeat(depth), "]".repeat(depth))
        }
        2 => {
            // Truncated or spliced JSON.
            let text = seeds[rng.gen_range(0..seeds.len())].to_string();
            let cut = rng.gen_range(0..text.len());
            format!("{}{}", &text[..cut], random_text(rng, 10))
        }
        3 => r#"{"type":"ping","id":"\ud800"}"#.to_string(), // a lone surrogate
        _ => {
            let mut frame = seeds[rng.gen_range(0..seeds.len())].clone();
            let object = frame.as_object_mut().unwrap();
            for _ in 0..rng.gen_range(1..4) {
                let keys: Vec<String> = object.keys().cloned().collect();
                if keys.is_empty() {
                    object.insert(random_text(rng, 12), random_value(rng, 0));
                    continue;
                }
                match rng.gen_range(0..5) {
                    0 => {
                        let key = &keys[rng.gen_range(0..keys.len())];
                        object.remove(key);
                    }
                    1 => {
                        object.insert("type".into(), json!(random_text(rng, 16)));
                    }
                    2 => {
                        object.insert(random_text(rng, 12), random_value(rng, 0));
                    }
                    _ => {
                        let key = keys[rng.gen_range(0..keys.len())].clone();
                        object.insert(key, random_value(rng, 0));
                    }
                }
            }
            frame.to_string()
        }
    }
}

/// The answer a frame must get.
enum Expect {
    /// A ping that decodes: its pong.
    Pong,
    /// Anything else: `bad_request`, echoing the frame's `id` when it is JSON with one.
    BadRequest(Option<String>),
}

/// Decides what the server must answer to a text frame. Frames that decode as anything
/// but a ping are made invalid before sending (valid frames would act: create sessions,
/// send messages), so every other frame is a `bad_request`.
fn neutralised(text: String) -> (String, Expect) {
    let text = match serde_json::from_str::<ClientFrame>(&text) {
        Ok(ClientFrame::Ping { .. }) => return (text, Expect::Pong),
        Ok(_) => format!("{text}!"),
        Err(_) => text,
    };
    let id = serde_json::from_str::<Value>(&text).ok().and_then(|v| v.get("id")?.as_str().map(str::to_string));
    (text, Expect::BadRequest(id))
}

/// Sends `count` fuzz frames in batches and checks each answer, in order.
async fn fuzz_connection(mut ws: Ws, seed: u64, count: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let seeds = seeds();
    let mut sent = 0;
    while sent < count {
        let mut expected = Vec::with_capacity(BATCH);
        for _ in 0..BATCH.min(count - sent) {
            if rng.gen_range(0..50) == 0 {
                let bytes: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.r#gen()).collect();
                ws.send_raw(WsMessage::Binary(bytes.into())).await;
                expected.push(Expect::BadRequest(None));
            } else {
                let (text, expect) = neutralised(fuzz_text(&mut rng, &seeds));
                ws.send_raw(WsMessage::Text(text.into())).await;
                expected.push(expect);
            }
        }
        sent += expected.len();
        for (i, expect) in expected.into_iter().enumerate() {
            // The user's other connections send meanwhile: their hub frames are no answers.
            let answer = loop {
                match ws.recv().await {
                    ServerFrame::Quota { .. } | ServerFrame::SessionUpdated { .. } => continue,
                    frame => break frame,
                }
            };
            match (answer, expect) {
                (ServerFrame::Pong { .. }, Expect::Pong) => {}
                (ServerFrame::Error { id, error, session_id: None }, Expect::BadRequest(want_id)) => {
                    assert_eq!(error.code, ErrorCode::BadRequest, "frame {i} of a batch");
                    assert_eq!(id, want_id, "frame {i} of a batch: the error echoes the id");
                }
                (other, _) => panic!("frame {i} of a batch was answered {other:?}"),
            }
        }
    }
    // Still a working connection.
    ws.send(json!({"type": "ping", "id": "still-here"})).await;
    assert!(matches!(ws.recv().await, ServerFrame::Pong { id: Some(id) } if id == "still-here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_hostile_frames() {
    let server = TestServer::start().await;
    let (token, _, sid) = user_with_session(&server, "fuzzer").await;
    // Warm up (first actor, first reply), so the memory baseline is the steady state.
    let mut bystander = server.ws(&token).await;
    let (seq0, _) = subscribe(&mut bystander, sid).await;
    send(&mut bystander, sid, "warm", &format!("warm {}", directive(5, 1000))).await;
    until_dones(&mut bystander, sid, 1).await;
    let before = rss_bytes();

    // A connection streaming a long reply all along must not notice the fuzzing. (The warm
    // reply took nine events: its message, generation_started, five deltas, message, done.)
    let seq1 = seq0 + 9;
    send(&mut bystander, sid, "watch", &format!("watch {}", directive(400, 200))).await;
    let watcher = tokio::spawn(async move {
        let frames = until_dones(&mut bystander, sid, 1).await;
        (frames, bystander)
    });

    let mut fuzzers = Vec::new();
    for c in 0..CONNECTIONS {
        let ws = server.ws(&token).await;
        fuzzers.push(tokio::spawn(fuzz_connection(ws, 0xF022 + c as u64, FRAMES / CONNECTIONS)));
    }
    for fuzzer in fuzzers {
        fuzzer.await.expect("a fuzz connection got every answer");
    }

    // Frames over the size limit close 1009; text that is not UTF-8 closes 1007.
    for _ in 0..5 {
        let mut ws = server.ws(&token).await;
        ws.send_raw(WsMessage::Text("x".repeat(70 * 1024).into())).await;
        assert_eq!(ws.expect_close().await, Some(1009));
    }
    for bytes in [&b"\xff\xfe"[..], b"{\"type\":\"ping\",\"id\":\"\xc3\x28\"}", b"\xed\xa0\x80"] {
        let mut ws = server.ws(&token).await;
        // SAFETY: deliberately not UTF-8; the peer must reject it, and this client only sends it.
        let text = unsafe { Utf8Bytes::from_bytes_unchecked(bytes::Bytes::copy_from_slice(bytes)) };
        ws.send_raw(WsMessage::Text(text)).await;
        assert_eq!(ws.expect_close().await, Some(1007));
    }

    let (frames, bystander) = watcher.await.unwrap();
    let reply = started_reply(&frames);
    assert_eq!(done_of(&frames, reply), relay_protocol::FinishReason::Stop);
    assert_eq!(reply_text(&frames, reply), mock::reply_text(400, None));
    assert_contiguous(&frames, sid, seq1);
    bystander.close().await;

    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "memory grew by {} MiB over the fuzzing", grown >> 20);
    assert!(
        server.state().metrics.render().contains("relay_ws_slow_closed_total 0"),
        "no fuzz connection was too slow"
    );
}
