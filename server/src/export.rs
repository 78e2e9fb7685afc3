//! Exports: one session as Markdown, plain text or JSON (`GET /chat/sessions/:id/export`),
//! and everything the server holds of a user as JSON (`GET /me/export`).

use chrono::{DateTime, Utc};
use relay_protocol::{ExportedSession, Message, MessageStatus, Role, SessionExport, UserExport};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::AppError;
use crate::state::AppState;

/// What a session is exported as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Markdown: headings per message, the replies' markdown as written.
    Markdown,
    /// Plain text.
    Text,
    /// JSON ([`SessionExport`]), replaced messages included.
    Json,
}

impl Format {
    /// The format a `format` query value names (`md`, the default, `txt` or `json`).
    pub fn parse(value: Option<&str>) -> Result<Format, AppError> {
        match value.unwrap_or("md") {
            "md" => Ok(Format::Markdown),
            "txt" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(AppError::BadRequest(format!("format must be md, txt or json, not {other:?}"))),
        }
    }

    /// The file name's extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Markdown => "md",
            Format::Text => "txt",
            Format::Json => "json",
        }
    }

    /// The `Content-Type` of the file.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Markdown => "text/markdown; charset=utf-8",
            Format::Text => "text/plain; charset=utf-8",
            Format::Json => "application/json",
        }
    }
}

/// One session of the user, whole; `not_found` when it is not theirs or is deleted.
pub async fn session(state: &AppState, user: &AuthUser, session_id: Uuid) -> Result<SessionExport, AppError> {
    let session = state.store.get_owned_session(user.id, session_id).await?.ok_or(AppError::NotFound)?;
    let messages = state.store.all_messages(session_id).await?;
    Ok(SessionExport { session, model: state.config.model.clone(), exported_at: Utc::now(), messages })
}

/// Everything the server holds of the user.
pub async fn everything(state: &AppState, user: &AuthUser) -> Result<UserExport, AppError> {
    let mut sessions = Vec::new();
    for (session, deleted_at) in state.store.all_sessions(user.id).await? {
        let messages = state.store.all_messages(session.id).await?;
        sessions.push(ExportedSession { session, deleted_at, messages });
    }
    let usage = state.store.all_usage(user.id).await?;
    let prompts = state.store.prompts(user.id).await?;
    Ok(UserExport { user: user.to_user(), exported_at: Utc::now(), sessions, usage, prompts })
}

/// The file: its body in `format`.
pub fn render(export: &SessionExport, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(export).expect("an export always encodes"),
        Format::Markdown => markdown(export),
        Format::Text => text(export),
    }
}

/// A file name for the export: the title's letters and digits, and the date.
pub fn file_name(export: &SessionExport, format: Format) -> String {
    let mut slug = String::new();
    for c in export.session.title.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 40 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    let slug = if slug.is_empty() { "chat" } else { slug };
    format!("{slug}-{}.{}", export.session.created_at.format("%Y-%m-%d"), format.extension())
}

/// The messages a reader sees: the replaced ones are left out.
fn live(export: &SessionExport) -> impl Iterator<Item = &Message> {
    export.messages.iter().filter(|m| !m.superseded)
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn who(message: &Message) -> &'static str {
    match message.role {
        Role::User => "You",
        Role::Assistant => "Assistant",
        Role::System => "System",
    }
}

/// How a message ended, when not complete.
fn ending(message: &Message) -> Option<&'static str> {
    match message.status {
        MessageStatus::Complete => None,
        MessageStatus::Cancelled => Some("stopped"),
        MessageStatus::Error => Some("failed"),
        MessageStatus::Generating => Some("interrupted"),
    }
}

fn markdown(export: &SessionExport) -> String {
    let s = &export.session;
    let mut out = format!(
        "# {}\n\n- Created: {}\n- Last active: {}\n- Model: {}\n- Exported: {}\n",
        s.title,
        when(s.created_at),
        when(s.updated_at),
        export.model,
        when(export.exported_at)
    );
    for m in live(export) {
        let note = ending(m).map(|e| format!(" ({e})")).unwrap_or_default();
        out.push_str(&format!("\n## {} · {}{note}\n\n", who(m), when(m.created_at)));
        // A user's text is text: kept as written, in a block that markdown leaves alone.
        if m.role == Role::User {
            let fence = "`".repeat(longest_backtick_run(&m.content).max(2) + 1);
            out.push_str(&format!("{fence}text\n{}\n{fence}\n", m.content));
        } else {
            out.push_str(m.content.trim_end());
            out.push('\n');
        }
    }
    out
}

fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

fn text(export: &SessionExport) -> String {
    let s = &export.session;
    let mut out = format!(
        "{}\nCreated: {}\nLast active: {}\nModel: {}\nExported: {}\n",
        s.title,
        when(s.created_at),
        when(s.updated_at),
        export.model,
        when(export.exported_at)
    );
    for m in live(export) {
        let note = ending(m).map(|e| format!(" ({e})")).unwrap_or_default();
        out.push_str(&format!("\n[{}] {}{note}:\n{}\n", when(m.created_at), who(m), m.content.trim_end()));
    }
    out
}

#[cfg(test)]
mod tests {
    use relay_protocol::Session;

    use super::*;

    fn export() -> SessionExport {
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z").unwrap().with_timezone(&Utc);
        let session = Session::new(Uuid::nil(), "Trip: Paris & Lyon!".into(), at);
        let message = |role, content: &str, status, superseded| Message {
            id: Uuid::new_v4(),
            session_id: Uuid::nil(),
            role,
            content: content.into(),
            token_count: None,
            status,
            created_at: at,
            superseded,
            model: None,
            replaced_by: None,
        };
        SessionExport {
            session,
            model: "Llama".into(),
            exported_at: at,
            messages: vec![
                message(Role::User, "old question", MessageStatus::Complete, true),
                message(Role::User, "# not a heading ``` ok", MessageStatus::Complete, false),
                message(Role::Assistant, "**Yes.**", MessageStatus::Cancelled, false),
            ],
        }
    }

    #[test]
    fn markdown_and_text_hold_the_live_messages_with_dates_and_model() {
        let md = render(&export(), Format::Markdown);
        assert!(md.starts_with("# Trip: Paris & Lyon!\n\n- Created: 2026-12-01 10:00:00 UTC\n"), "{md}");
        assert!(md.contains("- Model: Llama\n"));
        assert!(md.contains("## You · 2026-12-01 10:00:00 UTC\n\n````text\n# not a heading ``` ok\n````\n"), "{md}");
        assert!(md.contains("## Assistant · 2026-12-01 10:00:00 UTC (stopped)\n\n**Yes.**\n"), "{md}");
        assert!(!md.contains("old question"), "superseded messages only in json");
        let txt = render(&export(), Format::Text);
        assert!(txt.contains("[2026-12-01 10:00:00 UTC] You:\n# not a heading ``` ok\n"), "{txt}");
        assert!(!txt.contains("old question"));
        let json: SessionExport = serde_json::from_str(&render(&export(), Format::Json)).unwrap();
        assert_eq!(json.messages.len(), 3);
        assert!(json.messages[0].superseded);
    }

    #[test]
    fn file_names_and_formats() {
        assert_eq!(file_name(&export(), Format::Markdown), "trip-paris-lyon-2026-12-01.md");
        let mut untitled = export();
        untitled.session.title = "¿¿??".into();
        assert_eq!(file_name(&untitled, Format::Json), "chat-2026-12-01.json");
        assert_eq!(Format::parse(None).unwrap(), Format::Markdown);
        assert_eq!(Format::parse(Some("txt")).unwrap(), Format::Text);
        assert!(matches!(Format::parse(Some("pdf")), Err(AppError::BadRequest(m)) if m.contains("md, txt or json")));
    }
}
