//! The model's context in tokens: how many a text costs, and which of a session's messages
//! fit the budget (`CHAT_CONTEXT_TOKENS` less `CHAT_MAX_TOKENS`, kept for the reply).
//!
//! No crate ships Llama 4's tokenizer (its `tokenizer.json` is not bundled anywhere), so
//! tokens are estimated, on the side of too many: a byte-level BPE such as Llama 4's or
//! OpenAI's `o200k` spends about one token per four characters of English, one per
//! punctuation mark, and one or more per character of most other scripts. The estimate
//! counts three ASCII letters or digits as a token, every punctuation mark, line break or
//! tab as one, a space as none (it joins the word after it), a run of further spaces as one
//! per four, and every other character as half a token per UTF-8 byte (a CJK character 1.5,
//! an emoji 2); each message adds [`MESSAGE_OVERHEAD`] for its role and separators. English
//! prose comes out 20–40% above a real count, so a context that fits by the estimate fits.

/// Tokens the chat format spends on a message beside its text (role, start and end marks).
pub const MESSAGE_OVERHEAD: u32 = 4;

/// The estimated tokens of a text, its message's overhead not included.
pub fn estimate(text: &str) -> u32 {
    // Counted in twelfths, so thirds, halves and quarters stay whole.
    let mut twelfths: u64 = 0;
    let mut after_space = false;
    for c in text.chars() {
        twelfths += match c {
            ' ' if after_space => 3,
            ' ' => 0,
            c if c.is_ascii_alphanumeric() => 4,
            c if c.is_ascii() => 12,
            c => 6 * c.len_utf8() as u64,
        };
        after_space = c == ' ';
    }
    twelfths.div_ceil(12).min(u32::MAX as u64) as u32
}

/// The estimated tokens a message costs in the context.
pub fn message_cost(text: &str) -> u32 {
    estimate(text).saturating_add(MESSAGE_OVERHEAD)
}

/// How many of `earlier` (oldest first) fit, newest first and whole, in what `budget` leaves
/// after the system prompt and the message being answered (the oldest that does not fit
/// ends the count: the context is never a conversation with holes).
pub fn fitting<'a>(budget: u32, fixed: u32, earlier: impl DoubleEndedIterator<Item = &'a str>) -> usize {
    let mut left = budget.saturating_sub(fixed);
    let mut kept = 0;
    for text in earlier.rev() {
        let cost = message_cost(text);
        if cost > left {
            break;
        }
        left -= cost;
        kept += 1;
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_err_on_the_side_of_too_many() {
        // About what a byte-level BPE with a large vocabulary (o200k, Llama 4's) counts.
        let cases = [
            ("The quick brown fox jumps over the lazy dog.", 10),
            ("hello", 1),
            ("hello world", 2),
            ("東京は日本の首都です", 8),
            ("🙂", 1),
        ];
        for (text, bpe) in cases {
            assert!(estimate(text) >= bpe, "{text:?}: {} < {bpe}", estimate(text));
        }
        assert_eq!(estimate(""), 0);
        assert_eq!(estimate("abc"), 1);
        assert_eq!(estimate("a, b"), 2, "a letter, a comma, a space joined to the next word, a letter: 1/3+1+1/3");
        assert_eq!(estimate("        "), 2, "indentation: a run of spaces is one token per four");
        let long = "word ".repeat(1000);
        assert!((1300..=1400).contains(&estimate(&long)), "{}", estimate(&long));
    }

    #[test]
    fn the_newest_messages_that_fit_whole() {
        let earlier = ["a".repeat(300), "b".repeat(30), "c".repeat(30)];
        let texts = || earlier.iter().map(String::as_str);
        let cost = |s: &String| message_cost(s);
        assert_eq!(fitting(1000, 0, texts()), 3);
        let two = cost(&earlier[1]) + cost(&earlier[2]);
        assert_eq!(fitting(two, 0, texts()), 2);
        assert_eq!(fitting(two + 10, 10, texts()), 2, "the fixed part counts");
        assert_eq!(fitting(two - 1, 0, texts()), 1);
        assert_eq!(fitting(5, 10, texts()), 0);
        let holes = ["x".repeat(30), "y".repeat(3000), "z".repeat(30)];
        let small = message_cost(&holes[0]) + message_cost(&holes[2]);
        assert_eq!(fitting(small + 1, 0, holes.iter().map(String::as_str)), 1, "never past one that does not fit");
    }
}
