//! Property tests of the frame decoder: whatever text a client sends, decoding answers a
//! frame or an error and never panics; every frame survives encoding and decoding; and a
//! valid frame with a field changed or removed decodes to a frame or a clean error.

use proptest::prelude::*;
use relay_protocol::ClientFrame;
use serde_json::{Map, Value, json};

/// Any JSON value, nested up to a few levels, with the numbers and strings that break
/// naive decoders (huge, negative, fractional, empty, control characters).
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".*".prop_map(Value::String),
        "[\\x00-\\x1f\\u{7f}-\\u{9f}\\u{fffd}]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::hash_map("[a-z_]{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const TYPES: &[&str] = &[
    "auth",
    "subscribe",
    "unsubscribe",
    "send",
    "stop",
    "create_session",
    "rename_session",
    "delete_session",
    "list_sessions",
    "ping",
    "explode",
    "",
];

/// A frame object with a known or unknown `type` and any mix of the protocol's fields,
/// each with any value: the shape a mutating fuzzer produces.
fn frame_like() -> impl Strategy<Value = Value> {
    const FIELDS: &[&str] = &["id", "session_id", "content", "title", "token", "page", "per_page", "extra"];
    (
        prop::sample::select(TYPES),
        prop::collection::vec((prop::sample::select(FIELDS), any_json()), 0..6),
        any::<bool>(),
    )
        .prop_map(|(kind, pairs, uuid_session)| {
            let mut object = Map::new();
            object.insert("type".into(), json!(kind));
            for (field, value) in pairs {
                object.insert(field.to_string(), value);
            }
            if uuid_session {
                object.insert("session_id".into(), json!("6f1c2b9e-0d57-4a51-9a39-0c4a8c1f2e11"));
            }
            Value::Object(object)
        })
}

/// Every valid frame, from the typed side.
fn valid_frame() -> impl Strategy<Value = ClientFrame> {
    let id = prop::option::of(".{0,20}");
    let sid = any::<u128>().prop_map(uuid::Uuid::from_u128);
    prop_oneof![
        ".*".prop_map(|token| ClientFrame::Auth { token }),
        (id.clone(), sid.clone()).prop_map(|(id, session_id)| ClientFrame::Subscribe { id, session_id }),
        (id.clone(), sid.clone()).prop_map(|(id, session_id)| ClientFrame::Unsubscribe { id, session_id }),
        (id.clone(), sid.clone(), ".*", prop::option::of(".{0,64}")).prop_map(
            |(id, session_id, content, client_message_id)| ClientFrame::Send {
                id,
                session_id,
                content,
                client_message_id
            }
        ),
        (id.clone(), sid.clone()).prop_map(|(id, session_id)| ClientFrame::Stop { id, session_id }),
        (id.clone(), prop::option::of(".*")).prop_map(|(id, title)| ClientFrame::CreateSession { id, title }),
        (id.clone(), sid.clone(), ".*").prop_map(|(id, session_id, title)| ClientFrame::RenameSession {
            id,
            session_id,
            title
        }),
        (id.clone(), sid).prop_map(|(id, session_id)| ClientFrame::DeleteSession { id, session_id }),
        (id.clone(), prop::option::of(any::<u32>()), prop::option::of(any::<u32>()))
            .prop_map(|(id, page, per_page)| ClientFrame::ListSessions { id, page, per_page }),
        id.prop_map(|id| ClientFrame::Ping { id }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_text_decodes_or_fails_cleanly(text in ".*") {
        let _ = serde_json::from_str::<ClientFrame>(&text);
    }

    #[test]
    fn any_json_decodes_or_fails_cleanly(value in any_json()) {
        let _ = serde_json::from_str::<ClientFrame>(&value.to_string());
    }

    #[test]
    fn frame_shaped_json_decodes_or_fails_cleanly(value in frame_like()) {
        if let Ok(frame) = serde_json::from_str::<ClientFrame>(&value.to_string()) {
            // Whatever decodes encodes back to something that decodes to the same frame.
            let again: ClientFrame = serde_json::from_str(&serde_json::to_string(&frame).unwrap()).unwrap();
            prop_assert_eq!(again, frame);
        }
    }

    #[test]
    fn valid_frames_roundtrip(frame in valid_frame()) {
        let text = serde_json::to_string(&frame).unwrap();
        let decoded: ClientFrame = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&decoded, &frame);
        prop_assert_eq!(decoded.request_id(), frame.request_id());
    }

    #[test]
    fn valid_frames_with_a_field_changed_decode_or_fail_cleanly(frame in valid_frame(), replacement in any_json(), drop in any::<bool>()) {
        let mut value = serde_json::to_value(&frame).unwrap();
        let object = value.as_object_mut().unwrap();
        let keys: Vec<String> = object.keys().cloned().collect();
        let key = &keys[replacement.to_string().len() % keys.len()];
        if drop { object.remove(key); } else { object.insert(key.clone(), replacement); }
        let _ = serde_json::from_str::<ClientFrame>(&value.to_string());
    }
}

/// Nesting far deeper than any frame is refused by the decoder's depth limit, not by a
/// stack overflow.
#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for depth in [200, 10_000, 100_000] {
        let text = format!(r#"{{"type":"ping","id":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
        assert!(serde_json::from_str::<ClientFrame>(&text).is_err());
        let text = format!("{}{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        assert!(serde_json::from_str::<ClientFrame>(&text).is_err());
    }
}
