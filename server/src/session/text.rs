//! Rules for the text of messages and titles.

use crate::session::SessionError;

/// The title a session has until its first message names it.
pub const DEFAULT_TITLE: &str = "New chat";
/// Longest title derived from a first message, in characters.
const DERIVED_TITLE_CHARS: usize = 60;

/// Checks a user message: not blank, and at most `max_chars` characters.
pub fn validate_content(content: &str, max_chars: usize) -> Result<(), SessionError> {
    if content.trim().is_empty() {
        return Err(SessionError::InvalidContent("message content is empty".into()));
    }
    let chars = content.chars().count();
    if chars > max_chars {
        return Err(SessionError::InvalidContent(format!("message is {chars} characters; the limit is {max_chars}")));
    }
    Ok(())
}

/// Cuts `text` to at most `max_bytes`, at a character boundary.
pub fn cut_to(text: &mut String, max_bytes: usize) {
    let mut cut = max_bytes.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
}

/// A session title from a first message: its first non-blank line, trimmed to 60 characters.
pub fn derive_title(content: &str) -> String {
    let line = content.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or(DEFAULT_TITLE);
    let mut title: String = line.chars().take(DERIVED_TITLE_CHARS).collect();
    if line.chars().count() > DERIVED_TITLE_CHARS {
        title = title.trim_end().to_string();
    }
    title
}

/// A rough token count (about four characters a token) where the provider gave none.
pub fn estimate_tokens(text: &str) -> u32 {
    (text.chars().count().div_ceil(4)).max(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_come_from_the_first_line() {
        assert_eq!(derive_title("\n  What is Rust?  \nmore"), "What is Rust?");
        assert_eq!(derive_title(&"x".repeat(100)).chars().count(), 60);
    }

    #[test]
    fn content_rules() {
        assert!(validate_content("   ", 10).is_err());
        assert!(validate_content("é".repeat(10).as_str(), 10).is_ok());
        assert!(validate_content("é".repeat(11).as_str(), 10).is_err());
    }
}
