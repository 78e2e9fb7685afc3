//! A search result's snippet (HTML from the server: escaped text with `<mark>`ed matches)
//! read back into plain pieces, so the client puts text on the page, never markup it was
//! sent.

/// The snippet's pieces in order: their text, and whether it is a match.
pub fn parts(snippet: &str) -> Vec<(String, bool)> {
    let mut parts = Vec::new();
    let mut rest = snippet;
    let mut marked = false;
    while !rest.is_empty() {
        let tag = if marked { "</mark>" } else { "<mark>" };
        let (text, after) = match rest.find(tag) {
            Some(i) => (&rest[..i], Some(&rest[i + tag.len()..])),
            None => (rest, None),
        };
        if !text.is_empty() {
            parts.push((unescape(text), marked));
        }
        match after {
            Some(after) => {
                rest = after;
                marked = !marked;
            }
            None => break,
        }
    }
    parts
}

/// The text an escaped piece of HTML stands for (the five entities the server writes).
fn unescape(html: &str) -> String {
    html.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_become_pieces_and_entities_text() {
        assert_eq!(
            parts("…a &lt;b&gt; <mark>Paris</mark> &amp;amp; <mark>x</mark>"),
            vec![
                ("…a <b> ".to_string(), false),
                ("Paris".to_string(), true),
                (" &amp; ".to_string(), false),
                ("x".to_string(), true),
            ]
        );
        assert_eq!(parts(""), vec![]);
        assert_eq!(parts("plain"), vec![("plain".to_string(), false)]);
        // A mark left open still ends the snippet as a match.
        assert_eq!(parts("<mark>open"), vec![("open".to_string(), true)]);
        // Script in a snippet stays text.
        assert_eq!(parts("&lt;script&gt;"), vec![("<script>".to_string(), false)]);
    }
}
