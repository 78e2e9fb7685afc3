//! Marks the words of a message that a search matched, reading the text as the index's
//! analyzer `chat_text` (schema migration 8) does: tokenizers `blank, class`, filters
//! `lowercase, ascii, snowball(english)`.
//!
//! SurrealDB's `search::highlight` does the same, but only inside a query that walks the
//! full-text index, and each row it marks costs reads of the index. A search marks one
//! page of hits, so it asks the database for the query's terms (`search::analyze`) and
//! marks the page here. `marks_agree_with_the_database` (in `store::search`) holds the two
//! to the same answer.

use std::collections::HashSet;

use rust_stemmers::{Algorithm, Stemmer};

/// How the `class` tokenizer sorts a character: a token is a run of one class; every
/// other character separates tokens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Digit,
    Punctuation,
    Separator,
}

impl Class {
    fn of(c: char) -> Class {
        if c.is_alphabetic() {
            Class::Letter
        } else if c.is_numeric() {
            Class::Digit
        } else if c.is_ascii_punctuation() {
            Class::Punctuation
        } else {
            // Whitespace ends a token; any other character the analyzer ignores.
            Class::Separator
        }
    }
}

/// The term the analyzer makes of one token. The filters run in the analyzer's order; the
/// stemmer lower-cases what it is given, and ASCII folding can bring capitals back
/// (`日` → `Ri`), hence the second `to_lowercase`. A token the filters empty is dropped by
/// the analyzer: its `""` is never among a query's terms, so it is never marked.
fn term(stemmer: &Stemmer, token: &str) -> String {
    let lower = token.to_lowercase();
    let ascii = deunicode::deunicode(&lower);
    stemmer.stem(&ascii.to_lowercase()).into_owned()
}

/// `text` with every token whose term is in `terms` between `open` and `close`.
pub fn mark(text: &str, terms: &HashSet<String>, open: char, close: char) -> String {
    let stemmer = Stemmer::create(Algorithm::English);
    let mut marked = String::with_capacity(text.len() + 16);
    let mut token_start: Option<(usize, Class)> = None;
    let flush = |marked: &mut String, token: &str| {
        if terms.contains(&term(&stemmer, token)) {
            marked.push(open);
            marked.push_str(token);
            marked.push(close);
        } else {
            marked.push_str(token);
        }
    };
    for (at, c) in text.char_indices() {
        let class = Class::of(c);
        match token_start {
            Some((_, current)) if current == class => continue,
            Some((start, _)) => {
                flush(&mut marked, &text[start..at]);
                token_start = None;
            }
            None => {}
        }
        if class == Class::Separator {
            marked.push(c);
        } else {
            token_start = Some((at, class));
        }
    }
    if let Some((start, _)) = token_start {
        flush(&mut marked, &text[start..]);
    }
    marked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(words: &[&str]) -> HashSet<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn marks_whole_tokens_by_their_stem() {
        let t = terms(&["run", "rust"]);
        assert_eq!(
            mark("Running rust, RUNS and rusty runners", &t, '[', ']'),
            "[Running] [rust], [RUNS] and rusty runners"
        );
    }

    #[test]
    fn letters_digits_and_punctuation_are_separate_tokens() {
        assert_eq!(mark("v2rust: rust2024", &terms(&["rust", "2024"]), '[', ']'), "v2[rust]: [rust][2024]");
        assert_eq!(mark("a -> b", &terms(&["->"]), '[', ']'), "a [->] b");
    }

    #[test]
    fn accents_fold_and_the_text_is_kept_as_written() {
        let t = terms(&["cafe"]);
        assert_eq!(mark("  Café\tcafé «café»\n", &t, '[', ']'), "  [Café]\t[café] «[café]»\n");
        assert_eq!(mark("", &t, '[', ']'), "");
        assert_eq!(mark("no match here", &t, '[', ']'), "no match here");
    }
}
