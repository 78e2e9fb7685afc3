//! Model output as HTML: CommonMark with tables, strikethrough and task lists
//! (pulldown-cmark), where nothing the model writes can become markup or script.
//!
//! - Raw HTML, block or inline, is shown as text: `<script>` and `<img onerror=...>` are
//!   escaped like any other characters.
//! - Links keep only `http:`, `https:` and `mailto:` targets (and open in a new tab, with
//!   `rel="noopener noreferrer"`); anything else (`javascript:`, `data:`) loses its link and
//!   keeps its text. Images are shown as links (no request is made to a place the model
//!   chose).
//! - Fenced code blocks get syntax highlighting ([`highlight`]) and a copy button.
//!
//! A reply streaming in is cut into blocks ([`blocks::Blocks`]) so each finished block is
//! rendered once.

pub mod blocks;
pub mod highlight;

use pulldown_cmark::{CodeBlockKind, CowStr, Event, Options, Parser, Tag, TagEnd, html};

/// Renders markdown to safe HTML; `highlight` colours code blocks (off for the block still
/// streaming in, which is rendered again with every piece).
pub fn render(markdown: &str, highlight: bool) -> String {
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let mut events = Vec::new();
    let mut code: Option<(String, String)> = None;
    for event in Parser::new_ext(markdown, options) {
        match event {
            Event::Html(text) | Event::InlineHtml(text) => events.push(Event::Text(text)),
            Event::Start(Tag::CodeBlock(kind)) => {
                let language = match kind {
                    CodeBlockKind::Fenced(info) => info.split_whitespace().next().unwrap_or("").to_string(),
                    CodeBlockKind::Indented => String::new(),
                };
                code = Some((language, String::new()));
            }
            Event::Text(text) if code.is_some() => {
                if let Some((_, body)) = code.as_mut() {
                    body.push_str(&text);
                }
            }
            Event::End(TagEnd::CodeBlock) => {
                if let Some((language, body)) = code.take() {
                    events.push(Event::Html(CowStr::from(code_block(&language, &body, highlight))));
                }
            }
            Event::Start(Tag::Link { dest_url, title, .. } | Tag::Image { dest_url, title, .. }) => {
                events.push(Event::InlineHtml(CowStr::from(link_start(&dest_url, &title))));
            }
            Event::End(TagEnd::Image) => events.push(Event::End(TagEnd::Link)),
            other => events.push(other),
        }
    }
    let mut out = String::with_capacity(markdown.len() * 2);
    html::push_html(&mut out, events.into_iter());
    out
}

/// The words of markdown without its syntax, as a screen reader should hear them, up to
/// `max_chars` characters (cut at the end of a word); `true` with it when text was left
/// out. Only the start of a long text is parsed.
pub fn plain_text(markdown: &str, max_chars: usize) -> (String, bool) {
    // Markup takes room too: four bytes of source per character kept is plenty.
    let mut end = markdown.len().min(max_chars.saturating_mul(4));
    while !markdown.is_char_boundary(end) {
        end -= 1;
    }
    let mut text = String::new();
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    for event in Parser::new_ext(&markdown[..end], options) {
        match event {
            Event::Text(t) | Event::Code(t) | Event::Html(t) | Event::InlineHtml(t) => text.push_str(&t),
            Event::SoftBreak | Event::HardBreak => text.push(' '),
            Event::End(_) if !text.ends_with(char::is_whitespace) && !text.is_empty() => text.push(' '),
            _ => {}
        }
    }
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(max_chars) {
        None if end == markdown.len() => (text, false),
        None => (text, true),
        Some((cut, _)) => {
            let word_end = text[..cut].rfind(' ').filter(|&i| i > cut / 2).unwrap_or(cut);
            (text[..word_end].to_owned(), true)
        }
    }
}

/// A link's opening tag: one the browser may follow opens in a new tab, telling the page
/// it opens neither who opened it (`noopener`) nor where from (`noreferrer`); any other
/// target is dropped (`<a>`, plain text).
fn link_start(url: &str, title: &str) -> String {
    if !safe_url(url) {
        return "<a>".into();
    }
    let mut tag = String::from("<a href=\"");
    escape_into(&mut tag, url);
    tag.push('"');
    if !title.is_empty() {
        tag.push_str(" title=\"");
        escape_into(&mut tag, title);
        tag.push('"');
    }
    tag.push_str(r#" target="_blank" rel="noopener noreferrer">"#);
    tag
}

/// Whether a link target is one the browser may follow safely.
fn safe_url(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    let scheme_end = lower.find(':');
    match scheme_end {
        // Relative links have no scheme (a colon after a slash or `#` is part of a path).
        None => true,
        Some(i) if lower[..i].contains(['/', '?', '#']) => true,
        Some(i) => matches!(&lower[..i], "http" | "https" | "mailto"),
    }
}

/// A code block: a copy button and the highlighted (or plain) code, every character escaped.
fn code_block(language: &str, code: &str, highlight: bool) -> String {
    let mut out = String::from("<div class=\"code\"><div class=\"code-bar\"><span class=\"lang\">");
    escape_into(&mut out, language);
    // The code scrolls sideways in its own box: focusable, so the keyboard can scroll it.
    out.push_str(
        "</span><button class=\"copy\" type=\"button\" title=\"Copy\">Copy</button></div><pre tabindex=\"0\"><code",
    );
    if !language.is_empty() {
        out.push_str(" class=\"language-");
        escape_into(&mut out, language);
        out.push('"');
    }
    out.push('>');
    match highlight.then(|| highlight::highlight(language, code)).flatten() {
        Some(html) => out.push_str(&html),
        None => escape_into(&mut out, code),
    }
    out.push_str("</code></pre></div>");
    out
}

/// Escapes text for HTML content and attribute values.
pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn plain_text_keeps_the_words_and_cuts_long_text_at_a_word() {
        let (text, cut) = plain_text("## Title\n\nSome **bold** and `code`.\n\n- one\n- two", 100);
        assert_eq!(text, "Title Some bold and code. one two");
        assert!(!cut);
        let (text, cut) = plain_text(&"word ".repeat(1_000), 100);
        assert!(cut);
        assert!(text.len() <= 100 && text.ends_with("word"), "{text}");
        // One unbroken word longer than the cap is cut on a character.
        let (text, cut) = plain_text(&"é".repeat(1_000), 100);
        assert!(cut);
        assert_eq!(text.chars().count(), 100);
    }

    use super::*;

    #[test]
    fn raw_html_is_text() {
        let html = render("hello <img src=x onerror=alert(1)> and\n\n<script>alert(2)</script>", true);
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn unsafe_links_lose_their_target() {
        let html = render("[click](javascript:alert(1)) [ok](https://example.com/a?b=c) [rel](/x:y)", false);
        assert!(!html.contains("javascript"), "{html}");
        assert!(html.contains("<a>click</a>"), "{html}");
        assert!(html.contains(r#"href="https://example.com/a?b=c""#), "{html}");
        assert!(html.contains(r#"href="/x:y""#), "{html}");
        let html = render("![pic](https://example.com/p.png) ![bad](data:text/html,x)", false);
        assert!(!html.contains("<img"), "images become links: {html}");
        assert!(
            html.contains(r#"<a href="https://example.com/p.png" target="_blank" rel="noopener noreferrer">pic</a>"#),
            "{html}"
        );
        assert!(!html.contains("data:"), "{html}");
    }

    #[test]
    fn tables_strikethrough_and_task_lists() {
        let html = render("| a | b |\n|---|---|\n| 1 | 2 |\n\n~~gone~~\n\n- [x] done\n- [ ] todo", false);
        assert!(html.contains("<table>") && html.contains("<td>1</td>"), "{html}");
        assert!(html.contains("<del>gone</del>"), "{html}");
        assert!(html.contains("type=\"checkbox\""), "{html}");
    }

    #[test]
    fn code_blocks_are_highlighted_escaped_and_copyable() {
        let html = render("```rust\nfn main() { let x = \"<b>\"; }\n```", true);
        assert!(html.contains("class=\"copy\""), "{html}");
        assert!(html.contains("language-rust"), "{html}");
        assert!(html.contains("<span class=\"tok-keyword\">fn</span>"), "{html}");
        assert!(html.contains("&lt;b&gt;"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        // While streaming: the same block, plain.
        let plain = render("```rust\nfn main() {}\n```", false);
        assert!(plain.contains("fn main() {}") && !plain.contains("tok-"), "{plain}");
        // An unknown language is escaped text.
        let unknown = render("```brainfuck\n<>+-\n```", true);
        assert!(unknown.contains("&lt;&gt;+-"), "{unknown}");
        // The language name cannot break out of its attribute.
        let sneaky = render("```\"><script>\nx\n```", true);
        assert!(!sneaky.contains("<script>"), "{sneaky}");
    }
}
