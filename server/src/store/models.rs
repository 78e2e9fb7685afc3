//! What the model comparison reads and writes: ratings of replies, and each model's replies
//! on a day.

use chrono::{NaiveDate, TimeDelta};
use relay_protocol::Message;
use serde::Deserialize;
use uuid::Uuid;

use super::{Store, StoreError};

/// One model's replies on a day, by how they ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelDay {
    /// The model (`None`: replies stored before models were named).
    pub model: Option<String>,
    /// Replies by status: complete, cancelled, error.
    pub complete: u64,
    /// Stopped early.
    pub cancelled: u64,
    /// Failed.
    pub failed: u64,
    /// Tokens written.
    pub completion_tokens: u64,
    /// Thumbs up and down given that day.
    pub thumbs: (u64, u64),
}

#[derive(Deserialize)]
struct StatusRow {
    model: Option<String>,
    status: String,
    replies: u64,
    tokens: Option<u64>,
}

#[derive(Deserialize)]
struct RatingRow {
    model: String,
    rating: i8,
    count: u64,
}

impl Store {
    /// Stores a user's rating of a reply (replacing their earlier one).
    pub async fn put_feedback(
        &self,
        user_id: Uuid,
        reply: &Message,
        model: &str,
        rating: i8,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPSERT type::record('message_feedback', [$user_id, $message_id]) CONTENT { user_id: $user_id, \
             session_id: $session_id, message_id: $message_id, model: $model, rating: $rating, at: time::now() }",
            serde_json::json!({"user_id": user_id, "session_id": reply.session_id, "message_id": reply.id,
                "model": model, "rating": rating}),
        )
        .await
    }

    /// Every model's replies stored on `day`, and the ratings given that day.
    pub async fn model_days(&self, day: NaiveDate) -> Result<Vec<ModelDay>, StoreError> {
        let start = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
        let bind = serde_json::json!({"start": start, "end": start + TimeDelta::days(1)});
        let statuses: Vec<StatusRow> = self
            .rows(
                "SELECT model, status, count() AS replies, math::sum(token_count ?? 0) AS tokens FROM chat_message \
                 WHERE created_at >= <datetime>$start AND created_at < <datetime>$end AND role = 'assistant' \
                 GROUP BY model, status",
                bind.clone(),
            )
            .await?;
        let ratings: Vec<RatingRow> = self
            .rows(
                "SELECT model, rating, count() AS count FROM message_feedback \
                 WHERE at >= <datetime>$start AND at < <datetime>$end GROUP BY model, rating",
                bind,
            )
            .await?;
        let mut days: Vec<ModelDay> = Vec::new();
        let day_of = |model: Option<String>, days: &mut Vec<ModelDay>| -> usize {
            match days.iter().position(|d| d.model == model) {
                Some(i) => i,
                None => {
                    days.push(ModelDay { model, ..ModelDay::default() });
                    days.len() - 1
                }
            }
        };
        for row in statuses {
            let i = day_of(row.model, &mut days);
            let d = &mut days[i];
            match row.status.as_str() {
                "complete" => d.complete += row.replies,
                "cancelled" => d.cancelled += row.replies,
                "error" => d.failed += row.replies,
                _ => {}
            }
            d.completion_tokens += row.tokens.unwrap_or(0);
        }
        for row in ratings {
            let i = day_of(Some(row.model), &mut days);
            if row.rating > 0 {
                days[i].thumbs.0 += row.count;
            } else {
                days[i].thumbs.1 += row.count;
            }
        }
        Ok(days)
    }
}
