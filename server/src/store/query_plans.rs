//! The reads on the hot paths go through the index meant for them. SurrealDB's planner,
//! left to choose, once picked indexes whose entries span the whole table (every live
//! session, every reply being generated), so a send or a claim cost more the more the
//! database held; `EXPLAIN` shows which index a query walks. The queries are tested through
//! the constants the store builds them from.

use uuid::Uuid;

use super::write_behind::tests::store;
use super::{LEFTOVERS_OF_SESSION, LIVE_SESSIONS_OF_USER, LIVE_SESSIONS_OF_USER_NEWEST_FIRST, Store};

/// The plan SurrealDB would run for `sql` (which ends in `EXPLAIN`), as text.
async fn plan(store: &Store, sql: &str, bind: serde_json::Value) -> String {
    let mut response = store.db.query(sql, Some(bind)).await.unwrap().check().unwrap();
    let plan: Option<serde_json::Value> = response.take(0).unwrap();
    plan.expect("a plan").to_string()
}

#[tokio::test]
async fn a_users_live_sessions_are_read_through_the_users_index() {
    let store = store().await;
    let bind = serde_json::json!({"user_id": Uuid::new_v4()});
    for sql in [
        format!("SELECT VALUE record::id(id) FROM {LIVE_SESSIONS_OF_USER} EXPLAIN"),
        format!("SELECT count() AS total FROM {LIVE_SESSIONS_OF_USER} GROUP ALL EXPLAIN"),
        format!("SELECT math::sum(message_count) AS total FROM {LIVE_SESSIONS_OF_USER} GROUP ALL EXPLAIN"),
    ] {
        let plan = plan(&store, &sql, bind.clone()).await;
        assert!(plan.contains("\"chat_session_user\""), "{sql}: {plan}");
        assert!(!plan.contains("chat_session_deleted"), "{sql} walks every live session: {plan}");
    }
}

#[tokio::test]
async fn a_page_of_sessions_is_read_backwards_through_the_users_activity_index() {
    let store = store().await;
    let sql = format!("SELECT * FROM {LIVE_SESSIONS_OF_USER_NEWEST_FIRST} LIMIT 20 START 0 EXPLAIN");
    let plan = plan(&store, &sql, serde_json::json!({"user_id": Uuid::new_v4()})).await;
    assert!(plan.contains("\"chat_session_user_updated\"") && plan.contains("Backward"), "{plan}");
    assert!(!plan.contains("chat_session_deleted"), "{plan}");
}

#[tokio::test]
async fn a_claim_finds_its_leftover_replies_through_the_sessions_index() {
    let store = store().await;
    let sql = format!("{LEFTOVERS_OF_SESSION} EXPLAIN");
    let plan = plan(&store, &sql, serde_json::json!({"id": Uuid::new_v4()})).await;
    assert!(plan.contains("\"chat_message_session\""), "{plan}");
    assert!(!plan.contains("chat_message_status"), "a claim walks every reply being generated: {plan}");
}
