//! A growing markdown text cut into top-level blocks as it arrives, so a reply streaming in
//! is parsed block by block: a finished block is parsed and put on the page once, and only
//! the open block (the one still growing) is rendered again with each piece.
//!
//! A block ends at a blank line outside a code fence, once the next line shows a new block
//! starts there. Lines that may continue the block before them (indented, or a list item,
//! which would otherwise turn a loose list into several lists) do not start one.

use std::rc::Rc;

/// The blocks of one text, updated as it grows.
#[derive(Debug, Default)]
pub struct Blocks {
    /// The finished blocks, in order; their concatenation is the text up to `open_from`.
    finished: Vec<Rc<str>>,
    /// The text examined so far (whole lines), to notice a text that is not a continuation.
    seen: String,
    /// Where the open block starts.
    open_from: usize,
    /// The open code fence, if any: its character and length.
    fence: Option<(u8, usize)>,
    /// Whether a blank line (outside a fence) ended the open block's last paragraph.
    after_blank: bool,
    /// How many times the blocks were cut again from the start: finished blocks never
    /// change within one generation, so a range of them names its text.
    generation: u64,
}

impl Blocks {
    /// Takes the text as it now is: a continuation of the text seen before is examined from
    /// where the last look stopped; any other text is cut again from the start.
    pub fn update(&mut self, text: &str) {
        if !text.as_bytes().starts_with(self.seen.as_bytes()) {
            *self = Blocks { generation: self.generation + 1, ..Blocks::default() };
        }
        // Whole lines: the last one may still grow.
        let mut start = self.seen.len();
        if let Some(last_newline) = text.rfind('\n') {
            while start <= last_newline {
                let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
                self.line(text, start, &text[start..end]);
                start = end + 1;
            }
            self.seen.push_str(&text[self.seen.len()..start]);
        }
        // A line still growing may already show that a block starts with it (its first
        // character says so), so the block before it is finished without waiting for the
        // line's end.
        let growing = &text[start..];
        if self.after_blank
            && self.fence.is_none()
            && start > self.open_from
            && growing.bytes().next().is_some_and(|b| !b" \t-*+0123456789`~".contains(&b))
        {
            self.finished.push(Rc::from(&text[self.open_from..start]));
            self.open_from = start;
            self.after_blank = false;
        }
    }

    fn line(&mut self, text: &str, start: usize, line: &str) {
        if let Some((mark, len)) = self.fence {
            if closes_fence(line, mark, len) {
                self.fence = None;
            }
            return;
        }
        if line.trim().is_empty() {
            self.after_blank = true;
            return;
        }
        if self.after_blank && start > self.open_from && starts_block(line) {
            self.finished.push(Rc::from(&text[self.open_from..start]));
            self.open_from = start;
        }
        self.after_blank = false;
        self.fence = opens_fence(line);
    }

    /// The finished blocks, in order.
    pub fn finished(&self) -> &[Rc<str>] {
        &self.finished
    }

    /// Which cut of the text the finished blocks belong to (see [`Blocks::update`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The open block of `text` (the text last given to [`Blocks::update`]).
    pub fn open<'t>(&self, text: &'t str) -> &'t str {
        text.get(self.open_from..).unwrap_or("")
    }
}

/// Whether a line that follows a blank line begins a new top-level block.
fn starts_block(line: &str) -> bool {
    let first = line.as_bytes()[0];
    if first == b' ' || first == b'\t' {
        return false;
    }
    !is_list_item(line)
}

/// Whether a line is a list item (`- `, `* `, `+ `, `1. `, `1) `).
fn is_list_item(line: &str) -> bool {
    let bytes = line.as_bytes();
    let after_marker = match bytes[0] {
        b'-' | b'*' | b'+' => 1,
        b'0'..=b'9' => {
            let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
            match bytes.get(digits) {
                Some(b'.' | b')') if digits <= 9 => digits + 1,
                _ => return false,
            }
        }
        _ => return false,
    };
    matches!(bytes.get(after_marker), None | Some(b' ' | b'\t'))
}

/// The fence a line opens (three or more backticks or tildes), if it opens one.
fn opens_fence(line: &str) -> Option<(u8, usize)> {
    let trimmed = line.trim_start();
    let mark = *trimmed.as_bytes().first()?;
    if mark != b'`' && mark != b'~' {
        return None;
    }
    let len = trimmed.bytes().take_while(|&b| b == mark).count();
    // A backtick fence's info string has no backtick (else it is inline code).
    (len >= 3 && !(mark == b'`' && trimmed[len..].contains('`'))).then_some((mark, len))
}

/// Whether a line closes the fence opened with `len` of `mark`.
fn closes_fence(line: &str, mark: u8, len: usize) -> bool {
    let trimmed = line.trim();
    trimmed.len() >= len && trimmed.bytes().all(|b| b == mark)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(text: &str) -> (Vec<String>, String) {
        let mut blocks = Blocks::default();
        blocks.update(text);
        (blocks.finished().iter().map(|b| b.to_string()).collect(), blocks.open(text).to_string())
    }

    #[test]
    fn paragraphs_and_headings_are_blocks_once_the_next_one_starts() {
        let (done, open) = cut("# Title\n\nFirst para\ngoes on.\n\nSecond\n");
        assert_eq!(done, ["# Title\n\n", "First para\ngoes on.\n\n"]);
        assert_eq!(open, "Second\n");
        // A line still growing starts a block as soon as its first character says so...
        let (done, open) = cut("# Title\n\nFirst para\n\nSec");
        assert_eq!(done, ["# Title\n\n", "First para\n\n"]);
        assert_eq!(open, "Sec");
        // ...and not before, when it might continue a list or open a fence.
        for growing in ["- ite", "2", "  indented", "``"] {
            let text = format!("- one\n\n{growing}");
            assert!(cut(&text).0.is_empty(), "{growing:?}");
        }
        // A blank line alone does not finish a block: what follows may continue it.
        let (done, open) = cut("One\n\n");
        assert!(done.is_empty());
        assert_eq!(open, "One\n\n");
    }

    #[test]
    fn a_code_fence_is_one_block_blank_lines_and_all() {
        let text = "Intro\n\n```rust\nfn a() {}\n\nfn b() {}\n```\n\nAfter\n";
        let (done, open) = cut(text);
        assert_eq!(done, ["Intro\n\n", "```rust\nfn a() {}\n\nfn b() {}\n```\n\n"]);
        assert_eq!(open, "After\n");
        // Still open: nothing after the fence's start is finished.
        let (done, open) = cut("```\nx\n\ny\n\nz");
        assert!(done.is_empty());
        assert_eq!(open, "```\nx\n\ny\n\nz");
        // A longer fence is closed only by one as long.
        let (done, _) = cut("````\n```\n\nstill code\n````\n\nout\n");
        assert_eq!(done, ["````\n```\n\nstill code\n````\n\n"]);
    }

    #[test]
    fn loose_lists_and_indented_continuations_stay_together() {
        let (done, open) = cut("1. one\n\n2. two\n\n   more of two\n\n- x\n\nEnd\n");
        assert_eq!(done, ["1. one\n\n2. two\n\n   more of two\n\n- x\n\n"]);
        assert_eq!(open, "End\n");
    }

    #[test]
    fn growing_text_gives_the_same_blocks_as_the_whole() {
        let text = "# H\n\nA *b* c.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```py\nx = 1\n\ny = 2\n```\n\n> q\n\n- l\n- m\n\nlast";
        let mut blocks = Blocks::default();
        for end in 0..=text.len() {
            if text.is_char_boundary(end) {
                blocks.update(&text[..end]);
                let joined: String = blocks.finished().iter().map(|b| b.as_ref()).collect();
                assert_eq!(joined + blocks.open(&text[..end]), &text[..end]);
            }
        }
        assert_eq!(blocks.finished().len(), cut(text).0.len());
        assert_eq!(blocks.finished(), Blocks::default().finished_after(text));
    }

    #[test]
    fn another_text_is_cut_from_the_start() {
        let mut blocks = Blocks::default();
        blocks.update("a\n\nb\n");
        assert_eq!(blocks.finished().len(), 1);
        blocks.update("c\n");
        assert!(blocks.finished().is_empty());
        assert_eq!(blocks.open("c\n"), "c\n");
    }

    impl Blocks {
        fn finished_after(mut self, text: &str) -> Vec<Rc<str>> {
            self.update(text);
            self.finished
        }
    }
}
