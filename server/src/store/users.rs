//! User accounts: creating one and finding one by name or id.

use relay_protocol::UserRole;
use uuid::Uuid;

use super::{Store, StoreError, UserRecord};

impl Store {
    /// Stores a new user; [`StoreError::Conflict`] when the username is taken.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: UserRole,
    ) -> Result<UserRecord, StoreError> {
        let id = Uuid::new_v4();
        self.execute(
            "CREATE type::record('user', $id) CONTENT { username: $username, password_hash: $hash, role: $role, created_at: time::now() }",
            serde_json::json!({"id": id, "username": username, "hash": password_hash, "role": role}),
        )
        .await?;
        Ok(UserRecord { id, username: username.to_string(), password_hash: password_hash.to_string(), role })
    }

    /// Finds a user by login name.
    pub async fn find_user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let rows = self
            .rows(
                "SELECT record::id(id) AS id, username, password_hash, role FROM user WHERE username = $username LIMIT 1",
                serde_json::json!({"username": username}),
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Finds a user by id.
    pub async fn find_user(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError> {
        let rows = self
            .rows(
                "SELECT record::id(id) AS id, username, password_hash, role FROM type::record('user', $id)",
                serde_json::json!({"id": id}),
            )
            .await?;
        Ok(rows.into_iter().next())
    }
}
