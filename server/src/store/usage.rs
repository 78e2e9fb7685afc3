//! The daily usage ledger: what a user sent and the tokens spent, per day.

use chrono::NaiveDate;
use relay_protocol::UserUsage;
use serde::Deserialize;
use uuid::Uuid;

use super::{Store, StoreError};

impl Store {
    /// A user's usage on `day` (zeros for a day without any).
    pub async fn usage_on(&self, user_id: Uuid, day: NaiveDate) -> Result<DayUsage, StoreError> {
        let rows: Vec<DayUsage> = self
            .rows(
                "SELECT messages, prompt_tokens, completion_tokens FROM type::record('daily_usage', [$user_id, $day])",
                serde_json::json!({"user_id": user_id, "day": day.to_string()}),
            )
            .await?;
        Ok(rows.into_iter().next().unwrap_or_default())
    }

    /// How many messages the user sent on `day`.
    pub async fn messages_on(&self, user_id: Uuid, day: NaiveDate) -> Result<u32, StoreError> {
        Ok(self.usage_on(user_id, day).await?.messages)
    }

    /// Every user's usage on `day` (or one user's), the most tokens first.
    pub async fn usage_report(&self, day: NaiveDate, user: Option<Uuid>) -> Result<Vec<UserUsage>, StoreError> {
        let filter = if user.is_some() { "AND user_id = $user_id" } else { "" };
        self.rows(
            &format!(
                "SELECT user_id, messages, prompt_tokens, completion_tokens, \
                 (prompt_tokens ?? 0) + (completion_tokens ?? 0) AS total FROM daily_usage \
                 WHERE day = $day {filter} ORDER BY total DESC LIMIT 10000"
            ),
            serde_json::json!({"day": day.to_string(), "user_id": user}),
        )
        .await
    }
}

/// One user's usage on one day, from the ledger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct DayUsage {
    /// Messages sent.
    #[serde(default, deserialize_with = "zero_if_none")]
    pub messages: u32,
    /// Tokens sent to the model.
    #[serde(default, deserialize_with = "zero_if_none")]
    pub prompt_tokens: u64,
    /// Tokens the model wrote.
    #[serde(default, deserialize_with = "zero_if_none")]
    pub completion_tokens: u64,
}

/// Reads a counter that older rows may not have (`null`) as zero.
fn zero_if_none<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
