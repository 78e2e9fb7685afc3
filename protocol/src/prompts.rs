//! A user's saved prompts (`/api/v1/prompts`): text to insert into the composer.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest prompt title, in characters.
pub const MAX_PROMPT_TITLE_CHARS: usize = 100;
/// Longest prompt text, in characters.
pub const MAX_PROMPT_CONTENT_CHARS: usize = 4000;
/// Most prompts one user keeps.
pub const MAX_PROMPTS_PER_USER: usize = 200;

/// A saved prompt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Prompt {
    /// Its id.
    pub id: Uuid,
    /// What the list shows.
    pub title: String,
    /// The text inserted.
    pub content: String,
    /// When it was saved.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// Body of `POST /api/v1/prompts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreatePromptRequest {
    /// 1 to 100 characters, not only whitespace (trimmed).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 100, pattern = "\\S"))]
    pub title: String,
    /// 1 to 4,000 characters, not only whitespace.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 4000, pattern = "\\S"))]
    pub content: String,
}

/// Body of `PATCH /api/v1/prompts/{id}`: at least one field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdatePromptRequest {
    /// A new title (1 to 100 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 100, pattern = "\\S"))]
    pub title: Option<String>,
    /// A new text (1 to 4,000 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 4000, pattern = "\\S"))]
    pub content: Option<String>,
}

/// Answer to `GET /api/v1/prompts`: every prompt of the caller, by title.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PromptList {
    /// The prompts.
    pub prompts: Vec<Prompt>,
}
