//! Syntax highlighting for code blocks: a small lexer that knows, per language, its
//! keywords, comments and string quotes, and marks each token with a `tok-KIND` class
//! (keyword, string, comment, digit, function, type, macro). No regular expressions: it
//! stays small in the WebAssembly and fast on long code.

use super::escape_into;

/// What the lexer knows of a language.
struct Rules {
    keywords: &'static [&'static str],
    /// Starts of comments that run to the end of the line.
    line_comments: &'static [&'static str],
    /// Start and end of block comments.
    block_comment: Option<(&'static str, &'static str)>,
    /// Characters that open (and close) a string.
    quotes: &'static [char],
    /// Whether `name!` is a macro (Rust).
    macros: bool,
}

const C_LIKE: &[&str] = &[
    "auto",
    "break",
    "case",
    "char",
    "const",
    "continue",
    "default",
    "do",
    "double",
    "else",
    "enum",
    "extern",
    "float",
    "for",
    "goto",
    "if",
    "inline",
    "int",
    "long",
    "register",
    "return",
    "short",
    "signed",
    "sizeof",
    "static",
    "struct",
    "switch",
    "typedef",
    "union",
    "unsigned",
    "void",
    "volatile",
    "while",
    "class",
    "namespace",
    "public",
    "private",
    "protected",
    "template",
    "typename",
    "virtual",
    "new",
    "delete",
    "this",
    "true",
    "false",
    "nullptr",
    "using",
    "try",
    "catch",
    "throw",
    "bool",
    "import",
    "package",
    "interface",
    "extends",
    "implements",
    "final",
    "abstract",
    "null",
    "var",
    "val",
    "fun",
    "func",
    "let",
    "in",
    "is",
    "as",
    "override",
    "object",
    "when",
    "async",
    "await",
    "yield",
    "readonly",
    "string",
    "go",
    "defer",
    "chan",
    "map",
    "range",
    "select",
    "type",
    "init",
    "self",
    "guard",
    "protocol",
    "extension",
    "where",
    "throws",
    "lazy",
    "def",
    "trait",
    "sealed",
    "match",
    "foreach",
    "function",
    "echo",
    "instanceof",
    "of",
    "typeof",
    "undefined",
    "export",
    "from",
    "constructor",
    "super",
];
const RUST: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern", "false", "fn",
    "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "self", "Self",
    "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where", "while", "yield",
];
const PYTHON: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
    "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal",
    "not", "or", "pass", "raise", "return", "try", "while", "with", "yield", "self", "match", "case",
];
const RUBY_LUA: &[&str] = &[
    "and", "begin", "break", "case", "class", "def", "do", "else", "elsif", "elseif", "end", "ensure", "false", "for",
    "function", "if", "in", "local", "module", "next", "nil", "not", "or", "repeat", "rescue", "return", "self",
    "then", "true", "unless", "until", "when", "while", "yield", "require", "goto",
];
const SHELL: &[&str] = &[
    "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac", "in", "function",
    "return", "exit", "export", "local", "readonly", "set", "unset", "echo", "cd", "source", "true", "false",
];
const SQL: &[&str] = &[
    "select",
    "from",
    "where",
    "insert",
    "into",
    "values",
    "update",
    "set",
    "delete",
    "create",
    "table",
    "drop",
    "alter",
    "index",
    "join",
    "left",
    "right",
    "inner",
    "outer",
    "on",
    "group",
    "by",
    "order",
    "having",
    "limit",
    "offset",
    "and",
    "or",
    "not",
    "null",
    "is",
    "as",
    "distinct",
    "union",
    "all",
    "primary",
    "key",
    "foreign",
    "references",
    "default",
    "begin",
    "commit",
    "rollback",
    "with",
    "case",
    "when",
    "then",
    "else",
    "end",
    "in",
    "exists",
    "like",
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "asc",
    "desc",
    "true",
    "false",
];
const DATA: &[&str] = &["true", "false", "null", "yes", "no", "on", "off"];
const HASKELL: &[&str] = &[
    "case", "class", "data", "deriving", "do", "else", "if", "import", "in", "infix", "instance", "let", "module",
    "newtype", "of", "then", "type", "where", "True", "False",
];

/// The rules for a fence's language name, if it is one the lexer knows.
fn rules(language: &str) -> Option<Rules> {
    let c = |keywords| Rules {
        keywords,
        line_comments: &["//"],
        block_comment: Some(("/*", "*/")),
        quotes: &['"', '\'', '`'],
        macros: false,
    };
    Some(match language.to_ascii_lowercase().as_str() {
        "rust" | "rs" => Rules { macros: true, quotes: &['"'], ..c(RUST) },
        "javascript" | "js" | "jsx" | "typescript" | "ts" | "tsx" | "go" | "golang" | "c" | "h" | "cpp" | "c++"
        | "cxx" | "hpp" | "csharp" | "cs" | "c#" | "java" | "kotlin" | "kt" | "swift" | "scala" | "php" => c(C_LIKE),
        "python" | "py" => {
            Rules { keywords: PYTHON, line_comments: &["#"], block_comment: None, quotes: &['"', '\''], macros: false }
        }
        "ruby" | "rb" => Rules {
            keywords: RUBY_LUA,
            line_comments: &["#"],
            block_comment: None,
            quotes: &['"', '\''],
            macros: false,
        },
        "lua" => Rules {
            keywords: RUBY_LUA,
            line_comments: &["--"],
            block_comment: Some(("--[[", "]]")),
            quotes: &['"', '\''],
            macros: false,
        },
        "bash" | "sh" | "shell" | "zsh" | "console" => {
            Rules { keywords: SHELL, line_comments: &["#"], block_comment: None, quotes: &['"', '\''], macros: false }
        }
        "sql" => Rules {
            keywords: SQL,
            line_comments: &["--"],
            block_comment: Some(("/*", "*/")),
            quotes: &['\'', '"'],
            macros: false,
        },
        "haskell" | "hs" => Rules {
            keywords: HASKELL,
            line_comments: &["--"],
            block_comment: Some(("{-", "-}")),
            quotes: &['"'],
            macros: false,
        },
        "json" => Rules { keywords: DATA, line_comments: &[], block_comment: None, quotes: &['"'], macros: false },
        "toml" | "yaml" | "yml" => {
            Rules { keywords: DATA, line_comments: &["#"], block_comment: None, quotes: &['"', '\''], macros: false }
        }
        "css" => Rules {
            keywords: &[],
            line_comments: &[],
            block_comment: Some(("/*", "*/")),
            quotes: &['"', '\''],
            macros: false,
        },
        "html" | "xml" => Rules {
            keywords: &[],
            line_comments: &[],
            block_comment: Some(("<!--", "-->")),
            quotes: &['"', '\''],
            macros: false,
        },
        _ => return None,
    })
}

/// Code as HTML with a `<span class="tok-KIND">` around each highlighted token, every
/// character escaped; `None` for a language the lexer does not know.
pub fn highlight(language: &str, code: &str) -> Option<String> {
    let rules = rules(language)?;
    // SQL is written in either case.
    let fold = matches!(language.to_ascii_lowercase().as_str(), "sql");
    let mut out = String::with_capacity(code.len() * 2);
    let mut rest = code;
    while let Some(c) = rest.chars().next() {
        let (kind, len) = token(&rules, fold, rest, c);
        let (text, after) = rest.split_at(len);
        match kind {
            Some(kind) => {
                out.push_str("<span class=\"tok-");
                out.push_str(kind);
                out.push_str("\">");
                escape_into(&mut out, text);
                out.push_str("</span>");
            }
            None => escape_into(&mut out, text),
        }
        rest = after;
    }
    Some(out)
}

/// The token at the start of `rest` (whose first character is `c`): its kind (none for
/// plain text) and its length in bytes.
fn token(rules: &Rules, fold: bool, rest: &str, c: char) -> (Option<&'static str>, usize) {
    if let Some((open, close)) = rules.block_comment
        && rest.starts_with(open)
    {
        let end = rest[open.len()..].find(close).map_or(rest.len(), |i| open.len() + i + close.len());
        return (Some("comment"), end);
    }
    if rules.line_comments.iter().any(|start| rest.starts_with(start)) {
        return (Some("comment"), rest.find('\n').unwrap_or(rest.len()));
    }
    if rules.quotes.contains(&c) {
        return (Some("string"), string_len(rest, c));
    }
    if c.is_ascii_digit() {
        let len = rest.find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '.')).unwrap_or(rest.len());
        return (Some("digit"), len);
    }
    if c.is_alphabetic() || c == '_' {
        let len = rest.find(|ch: char| !(ch.is_alphanumeric() || ch == '_')).unwrap_or(rest.len());
        let word = &rest[..len];
        let next = rest[len..].chars().next();
        let keyword = if fold {
            rules.keywords.iter().any(|k| k.eq_ignore_ascii_case(word))
        } else {
            rules.keywords.contains(&word)
        };
        let kind = if keyword {
            Some("keyword")
        } else if rules.macros && next == Some('!') {
            return (Some("macro"), len + 1);
        } else if next == Some('(') {
            Some("function")
        } else if c.is_uppercase() {
            Some("type")
        } else {
            None
        };
        return (kind, len);
    }
    (None, c.len_utf8())
}

/// The length of the string that starts `rest` with `quote`: to the closing quote (a
/// backslash escapes the next character), or the end of the line for an unclosed one.
fn string_len(rest: &str, quote: char) -> usize {
    let mut escaped = false;
    for (i, ch) in rest.char_indices().skip(1) {
        match ch {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '\n' if quote != '`' => return i,
            ch if ch == quote => return i + ch.len_utf8(),
            _ => {}
        }
    }
    rest.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_tokens_are_marked_and_escaped() {
        let html =
            highlight("rust", "// hi <b>\nfn main() { println!(\"a \\\" <b>\"); let x = 42; Vec::new() }").unwrap();
        assert!(html.contains("<span class=\"tok-comment\">// hi &lt;b&gt;</span>"), "{html}");
        assert!(html.contains("<span class=\"tok-keyword\">fn</span>"), "{html}");
        assert!(html.contains("<span class=\"tok-function\">main</span>"), "{html}");
        assert!(html.contains("<span class=\"tok-macro\">println!</span>"), "{html}");
        assert!(html.contains("<span class=\"tok-string\">&quot;a \\&quot; &lt;b&gt;&quot;</span>"), "{html}");
        assert!(html.contains("<span class=\"tok-digit\">42</span>"), "{html}");
        assert!(html.contains("<span class=\"tok-type\">Vec</span>"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
    }

    #[test]
    fn other_languages_and_unknown_ones() {
        let py = highlight("python", "def f(x):  # note\n    return 'y'").unwrap();
        assert!(
            py.contains("<span class=\"tok-keyword\">def</span>")
                && py.contains("<span class=\"tok-comment\"># note</span>"),
            "{py}"
        );
        let sql = highlight("SQL", "SELECT * FROM t -- all").unwrap();
        assert!(sql.contains("<span class=\"tok-keyword\">SELECT</span>") && sql.contains("tok-comment"), "{sql}");
        let c = highlight("c", "/* a\nb */ int x = 1;").unwrap();
        assert!(c.contains("<span class=\"tok-comment\">/* a\nb */</span>"), "{c}");
        assert!(highlight("brainfuck", "+-").is_none());
        // An unclosed string or comment ends with the line or the code, never panics.
        assert!(highlight("js", "'abc\nlet é = \"").unwrap().contains("tok-string"));
        assert!(highlight("c", "/* never closed").unwrap().contains("tok-comment"));
    }
}
