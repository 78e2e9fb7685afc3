//! A user's saved prompts.

use chrono::Utc;
use relay_protocol::Prompt;
use uuid::Uuid;

use super::{Store, StoreError};

const PROMPT_FIELDS: &str = "record::id(id) AS id, title, content, created_at, updated_at";

impl Store {
    /// Every prompt of a user, by title.
    pub async fn prompts(&self, user_id: Uuid) -> Result<Vec<Prompt>, StoreError> {
        self.rows(
            &format!("SELECT {PROMPT_FIELDS}, string::lowercase(title) AS sort FROM prompt WHERE user_id = $user_id ORDER BY sort"),
            serde_json::json!({"user_id": user_id}),
        )
        .await
    }

    /// How many prompts a user has.
    pub async fn count_prompts(&self, user_id: Uuid) -> Result<u64, StoreError> {
        self.total(
            "SELECT count() AS total FROM prompt WHERE user_id = $user_id GROUP ALL",
            serde_json::json!({"user_id": user_id}),
        )
        .await
    }

    /// Saves a new prompt.
    pub async fn create_prompt(&self, user_id: Uuid, title: &str, content: &str) -> Result<Prompt, StoreError> {
        let now = Utc::now();
        let prompt = Prompt {
            id: Uuid::new_v4(),
            title: title.to_owned(),
            content: content.to_owned(),
            created_at: now,
            updated_at: now,
        };
        self.execute(
            "CREATE type::record('prompt', $id) CONTENT { user_id: $user_id, title: $title, content: $content, \
             created_at: <datetime>$now, updated_at: <datetime>$now }",
            serde_json::json!({"id": prompt.id, "user_id": user_id, "title": title, "content": content, "now": now}),
        )
        .await?;
        Ok(prompt)
    }

    /// Changes a prompt of the user's; `None` when it is not theirs.
    pub async fn update_prompt(
        &self,
        user_id: Uuid,
        id: Uuid,
        title: Option<&str>,
        content: Option<&str>,
    ) -> Result<Option<Prompt>, StoreError> {
        // Nothing to change leaves it as it is (its `updated_at` too).
        let mut set = vec![if title.is_none() && content.is_none() {
            "updated_at = updated_at"
        } else {
            "updated_at = time::now()"
        }];
        if title.is_some() {
            set.push("title = $title");
        }
        if content.is_some() {
            set.push("content = $content");
        }
        let rows: Vec<Prompt> = self
            .rows(
                &format!(
                    "UPDATE type::record('prompt', $id) SET {} WHERE user_id = $user_id RETURN {PROMPT_FIELDS}",
                    set.join(", ")
                ),
                serde_json::json!({"id": id, "user_id": user_id, "title": title, "content": content}),
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Deletes a prompt of the user's; false when it is not theirs.
    pub async fn delete_prompt(&self, user_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
        let rows: Vec<serde_json::Value> = self
            .rows(
                "DELETE type::record('prompt', $id) WHERE user_id = $user_id RETURN BEFORE",
                serde_json::json!({"id": id, "user_id": user_id}),
            )
            .await?;
        Ok(!rows.is_empty())
    }
}
