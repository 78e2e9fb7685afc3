//! The mock's unit tests.

use super::*;
use crate::plan::{Directives, Plan};
use crate::settings::check_reply_size;
use crate::text::{MAX_WORD_BYTES, WORDS, split_tokens};

#[test]
fn fault_parses_and_round_trips() {
    for (text, fault) in [
        ("429", Fault::Status(429)),
        ("500", Fault::Status(500)),
        ("stall", Fault::Stall),
        ("cut:5", Fault::CutAfter(5)),
    ] {
        assert_eq!(text.parse::<Fault>(), Ok(fault.clone()));
        assert_eq!(fault.to_string(), text);
    }
    assert!("200".parse::<Fault>().is_err());
    assert!("cut:x".parse::<Fault>().is_err());
    assert!("boom".parse::<Fault>().is_err());
}

#[test]
fn directives_parse_keys_flags_and_ignore_unknown() {
    let d = Directives::parse("hi [[mock tokens=3 tps=0 delay_ms=1 bytes=8 fault=cut:2 choices=empty wat=1 frob]]")
        .unwrap();
    assert_eq!(d.tokens, Some(3));
    assert_eq!(d.tps, Some(0.0));
    assert_eq!(d.delay_ms, Some(1));
    assert_eq!(d.bytes, Some(Some(8)));
    assert_eq!(d.fault, Some(Some(Fault::CutAfter(2))));
    assert_eq!(d.choices_null, Some(false));

    let d = Directives::parse("[[mock stall]] then [[mock fault=none instant]]").unwrap();
    assert_eq!(d.fault, Some(None));
    assert_eq!(d.delay_ms, Some(0));
    assert_eq!(Directives::parse("[[mockery tokens=1]] [[mock]]").unwrap(), Directives::default());
    assert!(Directives::parse("[[mock tokens=many]]").is_err());
    assert!(Directives::parse("[[mock delay_ms=99999999999]]").is_err());
}

#[test]
fn echo_replies_with_the_message_word_by_word() {
    let tokens = echo_tokens("say **this** [[mock echo tps=5]]\n```rust\nfn x() {}\n```");
    assert_eq!(tokens.concat(), "say **this** \n```rust\nfn x() {}\n```");
    assert_eq!(tokens[0], "say ");
    assert!(Directives::parse("x [[mock echo]]").unwrap().echo);
}

#[test]
fn stamps_format_parse_and_switch_on() {
    let token = stamp_token(1_764_300_000_123_456);
    assert_eq!(token, "@1764300000123456 ");
    assert_eq!(token.len(), STAMP_TOKEN_BYTES);
    // Merged tokens, neighbours that are not stamps (too short, too long, no digits).
    let text = format!("{token}{}x@123 @12345678901234567 @abcdefghijklmnop @0000000000000042", stamp_token(7));
    assert_eq!(parse_stamps(&text).collect::<Vec<_>>(), vec![1_764_300_000_123_456, 7, 42]);
    assert_eq!(parse_stamps("no stamps @").count(), 0);

    let now = unix_micros_now();
    let plan = |settings: &MockSettings, message: &str| {
        Plan::new(settings, Directives::parse(message).unwrap(), "m".into(), None, 1, message)
    };
    let stamped = plan(&MockSettings::default(), "hi [[mock stamp tokens=3]]");
    let stamps: Vec<u64> = parse_stamps(&stamped.text()).collect();
    assert_eq!(stamps.len(), 3);
    assert!(stamps.iter().all(|&t| t >= now && t < now + 60_000_000), "{stamps:?}");
    assert_eq!(parse_stamps(&plan(&MockSettings::default(), "hi").text()).count(), 0);
    let env = |name: &str| (name == "MOCK_STAMP").then(|| "1".to_string());
    let settings = MockSettings::from_lookup(env, false).unwrap();
    assert!(settings.stamp);
    assert_eq!(parse_stamps(&plan(&settings, "hi [[mock echo]]").text()).count(), 1);
    let env = |name: &str| (name == "MOCK_STAMP").then(|| "maybe".to_string());
    assert!(MockSettings::from_lookup(env, false).unwrap_err().contains("MOCK_STAMP"));
}

#[test]
fn reply_size_is_bounded() {
    assert!(check_reply_size(40, None).is_ok());
    assert!(check_reply_size(5000, Some(1000)).is_ok());
    assert!(check_reply_size(1, Some(100_000_000)).is_err());
    assert!(check_reply_size(100_000_000, None).is_err());
    assert!(check_reply_size(100_000, Some(1000)).is_err());
    let env = |name: &str| (name == "MOCK_TOKEN_BYTES").then(|| "100000000".to_string());
    assert!(MockSettings::from_lookup(env, false).unwrap_err().contains("MOCK_"));
}

#[test]
fn settings_from_lookup() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    };
    let s = MockSettings::from_lookup(
        env(&[
            ("MOCK_FIRST_TOKEN_MS", "5"),
            ("MOCK_TOKENS_PER_SEC", "0"),
            ("MOCK_REPLY_TOKENS", "7"),
            ("MOCK_TOKEN_BYTES", "16"),
            ("MOCK_FAULT", "cut:5"),
            ("MOCK_API_KEY", "k"),
        ]),
        false,
    )
    .unwrap();
    assert_eq!(s.first_token_delay, Duration::from_millis(5));
    assert_eq!(s.tokens_per_second, 0.0);
    assert_eq!(s.reply_tokens, 7);
    assert_eq!(s.token_bytes, Some(16));
    assert_eq!(s.fault, Some(Fault::CutAfter(5)));
    assert_eq!(s.api_key.as_deref(), Some("k"));
    assert!(s.choices_null_in_usage_chunk);

    let err = MockSettings::from_lookup(env(&[("MOCK_REPLY_TOKENS", "lots")]), false).unwrap_err();
    assert!(err.contains("MOCK_REPLY_TOKENS"), "{err}");
    let err = MockSettings::from_lookup(env(&[("MOCK_FAULT", "teapot")]), false).unwrap_err();
    assert!(err.contains("MOCK_FAULT"), "{err}");
}

/// Every markdown element in `text`, as pulldown-cmark (the browser client's renderer,
/// with its options) parses it.
fn markdown_tags(text: &str) -> Vec<pulldown_cmark::Tag<'_>> {
    use pulldown_cmark::{Event, Options, Parser};
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    Parser::new_ext(text, options)
        .filter_map(|event| match event {
            Event::Start(tag) => Some(tag),
            _ => None,
        })
        .collect()
}

#[test]
fn the_demo_is_markdown_a_client_renders() {
    use pulldown_cmark::{CodeBlockKind, HeadingLevel, Tag};
    assert!((1500..=3000).contains(&DEMO_REPLY.len()), "{} bytes", DEMO_REPLY.len());
    assert!(DEMO_REPLY.contains("built-in mock model") && DEMO_REPLY.contains("SAMBANOVA_API_KEY"));
    let tags = markdown_tags(DEMO_REPLY);
    let has = |want: &dyn Fn(&Tag<'_>) -> bool| tags.iter().any(want);
    assert!(has(&|t| matches!(t, Tag::Heading { level: HeadingLevel::H2, .. })), "a ## heading");
    assert!(has(&|t| matches!(t, Tag::Strong)) && has(&|t| matches!(t, Tag::Emphasis)), "bold and italic");
    assert!(has(&|t| matches!(t, Tag::Link { dest_url, .. } if dest_url.starts_with("https://github.com/"))));
    assert!(has(&|t| matches!(t, Tag::List(None))), "a bulleted list");
    assert!(has(&|t| matches!(t, Tag::List(Some(1)))), "a numbered list");
    assert!(has(&|t| matches!(t, Tag::Table(_))), "a table");
    assert!(has(&|t| matches!(t, Tag::BlockQuote(_))), "a blockquote");
    let rust = |t: &Tag<'_>| matches!(t, Tag::CodeBlock(CodeBlockKind::Fenced(lang)) if lang.as_ref() == "rust");
    let fence = tags.iter().position(rust).expect("a ```rust block");
    // The fence closes inside the document: blocks follow it (an open fence would run to
    // the end, swallowing them).
    assert!(tags[fence + 1..].iter().any(|t| matches!(t, Tag::BlockQuote(_))), "the fence is closed");
    assert!(pulldown_cmark::Parser::new(DEMO_REPLY).any(|e| matches!(e, pulldown_cmark::Event::Code(_))));
    // It ends with one blank line, so a repetition starts a new block.
    assert!(DEMO_REPLY.ends_with("!\n\n"));
}

#[test]
fn demo_tokens_are_pieces_that_cycle_and_cut_anywhere() {
    let tokens = demo_tokens();
    assert_eq!(tokens.concat(), DEMO_REPLY);
    assert!(tokens.len() > 200, "{} tokens", tokens.len());
    for token in tokens {
        // A run of non-whitespace, then the whitespace after it.
        let word = token.trim_end();
        assert!(!word.is_empty() && !word.contains(char::is_whitespace), "{token:?}");
    }
    assert_eq!(tokens[0], "## ");
    assert!(tokens.contains(&"{\n    "), "a code line's indentation rides on the line break");
    assert_eq!(demo_reply_text(tokens.len()), DEMO_REPLY);
    // Past the end it starts again, and the repetitions are whole markdown documents.
    let n = 2 * tokens.len() + 5;
    assert_eq!(demo_reply_text(n), format!("{DEMO_REPLY}{DEMO_REPLY}{}", tokens[..5].concat()));
    let count =
        |text: &str, want: fn(&pulldown_cmark::Tag<'_>) -> bool| markdown_tags(text).iter().filter(|t| want(t)).count();
    let twice = demo_reply_text(2 * tokens.len());
    for want in [
        (|t| matches!(t, pulldown_cmark::Tag::Table(_))) as fn(&pulldown_cmark::Tag<'_>) -> bool,
        |t| matches!(t, pulldown_cmark::Tag::CodeBlock(_)),
        |t| matches!(t, pulldown_cmark::Tag::Heading { .. }),
        |t| matches!(t, pulldown_cmark::Tag::BlockQuote(_)),
    ] {
        assert_eq!(count(&twice, want), 2 * count(DEMO_REPLY, want));
    }
    // Any length is a prefix of the document (or its repetitions), cut after a token.
    for n in 0..=tokens.len() {
        let text = demo_reply_text(n);
        assert!(DEMO_REPLY.starts_with(&text), "{n}");
        assert!(n == 0 || text.ends_with(char::is_whitespace), "{n}");
        let _ = markdown_tags(&text);
    }
    // Demo tokens stay under the word-mode size bound on average, so the bound that
    // refuses oversized replies holds for demo replies too.
    assert!(DEMO_REPLY.len() <= tokens.len() * MAX_WORD_BYTES);
    assert!(MAX_REPLY_TOKENS * MAX_WORD_BYTES + DEMO_REPLY.len() <= MAX_REPLY_BYTES);
    assert_eq!(split_tokens("a  b\n\n c"), vec!["a  ", "b\n\n ", "c"]);
    assert!(split_tokens("").is_empty());
}

#[test]
fn demo_mode_by_setting_variable_and_directive() {
    let plan = |settings: &MockSettings, message: &str, max_tokens: Option<u64>| {
        Plan::new(settings, Directives::parse(message).unwrap(), "m".into(), max_tokens, 1, message)
    };
    let whole = demo_tokens().len();
    let words = MockSettings::default();
    assert!(!words.demo);
    assert_eq!(plan(&words, "hi", None).text(), reply_text(40, None));
    assert_eq!(plan(&words, "hi [[mock demo tokens=4]]", None).text(), demo_reply_text(4));
    assert_eq!(plan(&words, "hi [[mock demo=1]]", None).text(), demo_reply_text(40));

    let demo = MockSettings { demo: true, reply_tokens: whole, ..MockSettings::default() };
    assert_eq!(plan(&demo, "hi", None).text(), DEMO_REPLY);
    assert_eq!(plan(&demo, "hi [[mock tokens=3]]", None).text(), "## Hello from ");
    assert_eq!(plan(&demo, "hi [[mock tokens=3 demo=0]]", None).text(), reply_text(3, None));
    assert_eq!(plan(&demo, "hi [[mock tokens=2 bytes=5]]", None).text(), reply_text(2, Some(5)));
    assert_eq!(plan(&demo, "say *this* [[mock echo]]", None).text(), "say *this*");
    let cut = plan(&demo, "hi", Some(10));
    assert_eq!((cut.text(), cut.finish_reason), (demo_reply_text(10), "length"));
    assert!(Directives::parse("[[mock demo=maybe]]").is_err());
    assert!(format!("{demo:?}").contains("demo: true"));

    // The server's built-in mock shows the whole demo unless told otherwise; the
    // standalone mock (and `MockSettings::default()`) only when told.
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    };
    let s = MockSettings::from_lookup(env(&[]), true).unwrap();
    assert_eq!((s.demo, s.reply_tokens), (true, whole));
    let s = MockSettings::from_lookup(env(&[("MOCK_REPLY_TOKENS", "7")]), true).unwrap();
    assert_eq!((s.demo, s.reply_tokens), (true, 7));
    let s = MockSettings::from_lookup(env(&[("MOCK_DEMO", "0")]), true).unwrap();
    assert_eq!((s.demo, s.reply_tokens), (false, 40));
    let s = MockSettings::from_lookup(env(&[]), false).unwrap();
    assert_eq!((s.demo, s.reply_tokens), (false, 40));
    let s = MockSettings::from_lookup(env(&[("MOCK_DEMO", "on")]), false).unwrap();
    assert_eq!((s.demo, s.reply_tokens), (true, whole));
    let err = MockSettings::from_lookup(env(&[("MOCK_DEMO", "maybe")]), true).unwrap_err();
    assert!(err.starts_with("MOCK_DEMO"), "{err}");
}

#[test]
fn reply_text_is_tokens_concatenated() {
    assert_eq!(reply_text(3, None), "Lorem ipsum dolor ");
    let t = reply_text(4, Some(5));
    assert_eq!(t.len(), 20);
    assert_eq!(&t[..10], "abcdebcdef");
    assert_eq!(reply_text(WORDS.len() + 1, None).split(' ').nth(WORDS.len()), Some("Lorem"));
}
