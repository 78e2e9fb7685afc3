//! What the mock says: lorem-ipsum words or fixed-size tokens, the markdown demo document,
//! and an echo of the message, each cut into the pieces a model streams.

/// Words cycled through to build word-mode replies; a fixed list keeps replies deterministic.
pub(crate) const WORDS: &[&str] = &[
    "Lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet,",
    "consectetur",
    "adipiscing",
    "elit,",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua.",
];

/// Bytes cycled through in fixed-size token mode; JSON-safe ASCII so a token's wire size is predictable.
const BYTE_PATTERN: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// The demo reply ([`MockSettings::demo`](crate::MockSettings::demo)): a friendly markdown answer using what a chat
/// client renders (headings, emphasis, inline code, a link, both kinds of list, a table, a
/// fenced Rust block, a blockquote). It ends with a blank line, so a reply longer than it,
/// which starts it again, starts a new block: a repetition never lands inside the previous
/// one's code block or table.
pub const DEMO_REPLY: &str = r#"## Hello from the built-in mock model

This reply comes from **relay-chat's built-in mock model**, not a real one: the server starts it when no `SAMBANOVA_API_KEY` is set, so you can try everything *without an account anywhere*. Set `SAMBANOVA_API_KEY` and restart the server, and the real model answers instead. The text is always the same; it is here to show what the client renders, with [pulldown-cmark](https://github.com/pulldown-cmark/pulldown-cmark) doing the markdown.

### Things to try

- Send a few messages and watch each reply stream in, piece by piece.
- Open a second tab: both show the same chat as it is written.
- Press **Stop** (or `Esc`) in the middle of a reply.
- Steer the mock with a directive, e.g. `[[mock tokens=500 tps=50]]`.

### Using the real model

1. Get an API key from SambaNova Cloud.
2. Start the server with it: `SAMBANOVA_API_KEY=... cargo xtask run`.
3. Reload this page: the banner about the mock model is gone.

| Variable | Default | What it does |
|---|---|---|
| `SAMBANOVA_API_KEY` | unset | Set, the real model answers |
| `MOCK_TOKENS_PER_SEC` | `200` | How fast the mock writes |
| `MOCK_REPLY_TOKENS` | this reply | How long its replies are |
| `MOCK_DEMO` | `1` | `0` makes it write lorem ipsum |

Code blocks are highlighted, and each has a *Copy* button:

```rust
/// Splits a reply into the pieces a model streams.
fn pieces(text: &str) -> Vec<&str> {
    text.split_inclusive(' ').collect()
}

fn main() {
    for piece in pieces("Hello, world! ") {
        print!("{piece}");
    }
}
```

> **Note:** a reply longer than this one starts it again from the top.

Happy chatting!

"#;

/// The demo reply's tokens, each a piece of [`DEMO_REPLY`] with the whitespace after it.
pub(crate) static DEMO_TOKENS: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| split_tokens(DEMO_REPLY));

/// Longest word token, with its space, in word mode. Demo tokens vary, but average no more
/// than this (a unit test keeps it so), so it bounds a demo reply's size too.
pub(crate) const MAX_WORD_BYTES: usize = 12;

/// Returns exactly the content the mock streams for a complete reply of `n_tokens` tokens.
pub fn reply_text(n_tokens: usize, token_bytes: Option<usize>) -> String {
    (0..n_tokens).map(|i| token(i, token_bytes)).collect()
}

/// Returns content token `i`: a word plus a space, or `n` bytes of the pattern starting at offset `i`.
pub(crate) fn token(i: usize, token_bytes: Option<usize>) -> String {
    match token_bytes {
        None => format!("{} ", WORDS[i % WORDS.len()]),
        // Starting each token at a different offset makes reordering or loss visible in comparisons.
        Some(n) => (0..n).map(|j| BYTE_PATTERN[(i + j) % BYTE_PATTERN.len()] as char).collect(),
    }
}

/// The tokens of [`DEMO_REPLY`], in order: what a demo-mode mock streams
/// ([`MockSettings::demo`](crate::MockSettings::demo)) before it starts the document again.
pub fn demo_tokens() -> &'static [&'static str] {
    &DEMO_TOKENS
}

/// Returns exactly the content a demo-mode mock ([`MockSettings::demo`](crate::MockSettings::demo)) streams for a
/// complete reply of `n_tokens` tokens: the first `n_tokens` pieces of [`DEMO_REPLY`],
/// starting it again from the top as often as needed.
pub fn demo_reply_text(n_tokens: usize) -> String {
    (0..n_tokens).map(demo_token).collect()
}

/// Demo token `i`, cycling through [`DEMO_REPLY`].
pub(crate) fn demo_token(i: usize) -> &'static str {
    DEMO_TOKENS[i % DEMO_TOKENS.len()]
}

/// `text` in pieces, each a run of non-whitespace with the whitespace after it (so a code
/// line's indentation rides on the line break before it).
pub(crate) fn split_tokens(text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            tokens.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        tokens.push(&text[start..]);
    }
    tokens
}

/// The tokens of an `echo` reply: the message without its directives, word by word (each
/// with the whitespace after it), so markdown arrives piece by piece as a model's would.
pub fn echo_tokens(message: &str) -> Vec<String> {
    let mut text = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find("[[mock") {
        text.push_str(&rest[..start]);
        match rest[start..].find("]]") {
            Some(end) => rest = &rest[start + end + 2..],
            None => {
                rest = "";
            }
        }
    }
    text.push_str(rest);
    text.trim().split_inclusive(char::is_whitespace).map(str::to_string).collect()
}
