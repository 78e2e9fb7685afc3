//! Every frame and body of PROTOCOL.md, written out as JSON by hand from the contract,
//! must decode into its type and encode back to the same JSON.

use relay_protocol::*;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

const SID: &str = "6f1c2b9e-0d57-4a51-9a39-0c4a8c1f2e11";
const MID: &str = "0b7e3f40-5a1d-4a7e-8c61-2f9d7b1e9a02";
const UID: &str = "a3d5c7e9-1b2d-4f6a-8c0e-2a4c6e8f0b1d";
const T: &str = "2026-11-26T12:00:00Z";

fn roundtrip<T: Serialize + DeserializeOwned + std::fmt::Debug>(example: Value) -> T {
    let decoded: T =
        serde_json::from_value(example.clone()).unwrap_or_else(|e| panic!("{example} does not decode: {e}"));
    let encoded = serde_json::to_value(&decoded).unwrap();
    assert_eq!(encoded, example, "re-encoding {decoded:?} changed it");
    decoded
}

fn user() -> Value {
    json!({"id": UID, "username": "alice", "role": "user"})
}
fn session() -> Value {
    json!({"id": SID, "title": "New chat", "created_at": T, "updated_at": T})
}
fn message(role: &str, status: &str, tokens: Value) -> Value {
    json!({"id": MID, "session_id": SID, "role": role, "content": "Hi **there**",
           "token_count": tokens, "status": status, "created_at": T})
}
fn quota() -> Value {
    json!({"messages_today": 3, "limit": 100, "remaining": 97, "resets_at": "2026-11-27T00:00:00Z",
           "prompt_tokens_today": 120, "completion_tokens_today": 300})
}
fn usage() -> Value {
    json!({"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42})
}

#[test]
fn objects_roundtrip() {
    roundtrip::<User>(user());
    roundtrip::<User>(json!({"id": UID, "username": "root", "role": "admin"}));
    roundtrip::<Session>(session());
    for role in ["user", "assistant", "system"] {
        for status in ["complete", "cancelled", "error", "generating"] {
            roundtrip::<Message>(message(role, status, json!(7)));
        }
    }
    roundtrip::<Message>(message("user", "complete", Value::Null));
    let mut superseded = message("assistant", "complete", json!(3));
    superseded["superseded"] = json!(true);
    assert!(roundtrip::<Message>(superseded).superseded);
    roundtrip::<Quota>(quota());
    roundtrip::<Quota>(json!({"messages_today": 0, "limit": null, "remaining": null, "resets_at": T,
        "prompt_tokens_today": 0, "completion_tokens_today": 0}));
    // The contract's quota without the token counts (older servers) still decodes.
    let bare: Quota =
        serde_json::from_value(json!({"messages_today": 1, "limit": 5, "remaining": 4, "resets_at": T})).unwrap();
    assert_eq!(bare.prompt_tokens_today, 0);
    roundtrip::<Usage>(usage());
    roundtrip::<ErrorBody>(json!({"code": "rate_limited", "message": "slow down", "retry_after_ms": 1500}));
    roundtrip::<ErrorResponse>(json!({"error": {"code": "not_found", "message": "no such session"}}));
}

#[test]
fn rest_bodies_roundtrip() {
    roundtrip::<RegisterRequest>(json!({"username": "alice", "password": "correct horse"}));
    roundtrip::<LoginRequest>(json!({"username": "alice", "password": "correct horse"}));
    roundtrip::<AuthResponse>(json!({"token": "a.b.c", "user": user()}));
    roundtrip::<MeResponse>(json!({"user": user(), "quota": quota()}));
    roundtrip::<CreateSessionRequest>(json!({"title": "Trip"}));
    roundtrip::<CreateSessionRequest>(json!({}));
    roundtrip::<UpdateSessionRequest>(json!({"title": "Renamed"}));
    roundtrip::<SessionList>(
        json!({"sessions": [session()], "total": 41, "page": 2, "per_page": 20, "total_pages": 3}),
    );
    roundtrip::<SessionWithMessages>(
        json!({"session": session(), "messages": [message("user", "complete", json!(3))]}),
    );
    roundtrip::<DeletedResponse>(json!({"message": "Session deleted"}));
    roundtrip::<UsageReport>(json!({"day": "2026-11-28", "users": [
        {"user_id": UID, "messages": 3, "prompt_tokens": 120, "completion_tokens": 300}]}));
    roundtrip::<SendMessageRequest>(json!({"content": "What is Rust?"}));
    roundtrip::<EditMessageRequest>(json!({"content": "What is Rust, really?"}));
    roundtrip::<MessagePage>(json!({"messages": [message("user", "complete", json!(3))], "has_more": true}));
    roundtrip::<SendMessageResponse>(json!({"user_message": message("user", "complete", json!(4)),
        "assistant_message": message("assistant", "complete", json!(30))}));
}

#[test]
fn sse_events_roundtrip() {
    assert!(matches!(roundtrip::<SseEvent>(json!({"chunk": "Hel", "done": false})), SseEvent::Chunk { .. }));
    assert!(matches!(
        roundtrip::<SseEvent>(json!({"done": true, "message_id": MID, "finish_reason": "stop", "usage": usage()})),
        SseEvent::Done { finish_reason: FinishReason::Stop, .. }
    ));
    assert!(matches!(
        roundtrip::<SseEvent>(json!({"done": true, "message_id": MID, "finish_reason": "cancelled", "usage": null})),
        SseEvent::Done { finish_reason: FinishReason::Cancelled, usage: None, .. }
    ));
    assert!(matches!(
        roundtrip::<SseEvent>(json!({"error": "model down", "code": "upstream_unavailable"})),
        SseEvent::Error { code: ErrorCode::UpstreamUnavailable, .. }
    ));
}

#[test]
fn client_frames_roundtrip() {
    let frames = [
        json!({"type": "auth", "token": "a.b.c"}),
        json!({"type": "subscribe", "id": "1", "session_id": SID}),
        json!({"type": "subscribe", "session_id": SID}),
        json!({"type": "unsubscribe", "id": "2", "session_id": SID}),
        json!({"type": "send", "id": "3", "session_id": SID, "content": "Hello"}),
        json!({"type": "stop", "id": "4", "session_id": SID}),
        json!({"type": "create_session", "id": "5", "title": "Trip"}),
        json!({"type": "create_session"}),
        json!({"type": "rename_session", "id": "6", "session_id": SID, "title": "Renamed"}),
        json!({"type": "delete_session", "id": "7", "session_id": SID}),
        json!({"type": "list_sessions", "id": "8", "page": 2, "per_page": 10}),
        json!({"type": "list_sessions"}),
        json!({"type": "ping", "id": "9"}),
        json!({"type": "ping"}),
        json!({"type": "regenerate", "id": "10", "session_id": SID}),
        json!({"type": "edit", "id": "11", "session_id": SID, "message_id": MID, "content": "Better"}),
    ];
    for frame in frames {
        let decoded = roundtrip::<ClientFrame>(frame.clone());
        assert_eq!(decoded.request_id(), frame.get("id").and_then(Value::as_str));
    }
}

#[test]
fn server_frames_roundtrip() {
    let frames = [
        json!({"type": "ready", "user": user(), "quota": quota(), "protocol": 1}),
        json!({"type": "ready", "user": user(), "quota": quota(), "protocol": 1,
               "model": {"name": "Llama-4-Maverick-17B-128E-Instruct", "mock": true}}),
        json!({"type": "superseded", "session_id": SID, "seq": 12, "message_ids": [MID]}),
        json!({"type": "subscribed", "id": "1", "session": session(), "messages": [message("user", "complete", json!(2))],
               "seq": 7, "generating": null}),
        json!({"type": "subscribed", "session": session(), "messages": [], "seq": 9,
               "generating": {"message_id": MID, "content": "Partial"}}),
        json!({"type": "subscribed", "session": session(), "messages": [], "seq": 9, "generating": null,
               "has_older": true}),
        json!({"type": "unsubscribed", "id": "2", "session_id": SID}),
        json!({"type": "ack", "id": "3", "message": message("user", "complete", json!(2))}),
        json!({"type": "message", "session_id": SID, "seq": 8, "message": message("assistant", "cancelled", json!(5))}),
        json!({"type": "generation_started", "session_id": SID, "seq": 9, "message_id": MID}),
        json!({"type": "delta", "session_id": SID, "seq": 10, "message_id": MID, "text": "Hel"}),
        json!({"type": "done", "session_id": SID, "seq": 11, "message_id": MID, "finish_reason": "stop", "usage": usage()}),
        json!({"type": "done", "session_id": SID, "seq": 11, "message_id": MID, "finish_reason": "length", "usage": usage()}),
        json!({"type": "done", "session_id": SID, "seq": 11, "message_id": MID, "finish_reason": "cancelled"}),
        json!({"type": "done", "session_id": SID, "seq": 11, "message_id": MID, "finish_reason": "error",
               "error": {"code": "upstream_timeout", "message": "model too slow"}}),
        json!({"type": "session_created", "id": "5", "session": session()}),
        json!({"type": "session_created", "session": session()}),
        json!({"type": "session_updated", "id": "6", "session": session()}),
        json!({"type": "session_deleted", "id": "7", "session_id": SID}),
        json!({"type": "sessions", "id": "8", "sessions": [session()], "total": 1, "page": 1, "per_page": 20, "total_pages": 1}),
        json!({"type": "quota", "quota": quota()}),
        json!({"type": "error", "id": "3", "session_id": SID, "error": {"code": "busy", "message": "queue full", "retry_after_ms": 1000}}),
        json!({"type": "error", "error": {"code": "bad_request", "message": "unknown frame type"}}),
        json!({"type": "pong", "id": "9"}),
    ];
    for frame in frames {
        let decoded = roundtrip::<ServerFrame>(frame.clone());
        assert_eq!(decoded.seq(), frame.get("seq").and_then(Value::as_u64));
    }
}

#[test]
fn bad_frames_are_rejected() {
    for bad in [
        json!({"type": "explode"}),
        json!({"type": "send", "session_id": SID}),
        json!({"type": "send", "session_id": "not-a-uuid", "content": "x"}),
        json!({"no_type": true}),
    ] {
        assert!(serde_json::from_value::<ClientFrame>(bad.clone()).is_err(), "{bad} decoded");
    }
}

#[test]
fn error_codes_have_their_http_status() {
    let table = [
        ("unauthorized", 401),
        ("bad_request", 400),
        ("invalid_content", 400),
        ("too_large", 413),
        ("not_found", 404),
        ("conflict", 409),
        ("rate_limited", 429),
        ("quota_exceeded", 429),
        ("busy", 429),
        ("upstream_unavailable", 503),
        ("upstream_timeout", 504),
        ("upstream_error", 502),
        ("internal", 500),
        ("limit_exceeded", 403),
        ("forbidden", 403),
        ("storage_full", 403),
        ("method_not_allowed", 405),
        ("unavailable", 503),
    ];
    for (name, status) in table {
        let code: ErrorCode = serde_json::from_value(json!(name)).unwrap();
        assert_eq!(code.http_status(), status, "{name}");
        assert_eq!(code.as_str(), name);
    }
}

#[test]
fn pages_out_of_range_are_refused() {
    assert_eq!(check_page(None, None), Ok((1, 20)));
    assert_eq!(check_page(Some(3), Some(100)), Ok((3, 100)));
    assert!(check_page(Some(0), None).is_err());
    assert!(check_page(None, Some(0)).is_err());
    assert!(check_page(Some(3), Some(101)).is_err());
    assert!(check_page(Some(MAX_PAGE + 1), None).is_err());
    assert_eq!(check_page(Some(MAX_PAGE), None), Ok((MAX_PAGE, 20)));
    assert_eq!(total_pages(0, 20), 0);
    assert_eq!(total_pages(41, 20), 3);
    assert_eq!(PROTOCOL_VERSION, 1);
}

/// The OpenAPI document's "not blank" pattern lists exactly the characters `str::trim`
/// removes (Unicode `White_Space`), so what the document calls blank is what the server
/// refuses as blank.
#[test]
fn the_not_blank_pattern_is_what_trim_removes() {
    let class: Vec<char> = NOT_BLANK_PATTERN
        .strip_prefix("[^")
        .and_then(|p| p.strip_suffix(']'))
        .expect("a negated class")
        .chars()
        .collect();
    let atom = |i: &mut usize| -> char {
        if class[*i] != '\\' {
            *i += 1;
            return class[*i - 1];
        }
        let c = match class[*i + 1] {
            't' => '\t',
            'r' => '\r',
            'u' => {
                let hex: String = class[*i + 2..*i + 6].iter().collect();
                *i += 4;
                char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap()
            }
            other => panic!("unexpected escape \\{other}"),
        };
        *i += 2;
        c
    };
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < class.len() {
        let start = atom(&mut i);
        if class.get(i) == Some(&'-') {
            i += 1;
            ranges.push((start, atom(&mut i)));
        } else {
            ranges.push((start, start));
        }
    }
    for c in (0..=0x10FFFF).filter_map(char::from_u32) {
        let listed = ranges.iter().any(|(a, b)| (*a..=*b).contains(&c));
        assert_eq!(listed, c.is_whitespace(), "{c:?} (U+{:04X})", c as u32);
    }
}
