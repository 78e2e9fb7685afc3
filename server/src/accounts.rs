//! Accounts the operator creates from the command line: `relay-server create-admin <name>`.
//!
//! A name listed in `CHAT_ADMIN_USERS` cannot be registered over the API (whoever got
//! there first would be an admin), so this is how its account comes to exist: by someone
//! who can run the server binary against its database, with the password on stdin (never
//! in the arguments, where other users of the machine could read it).

use relay_protocol::UserRole;

use crate::auth::{self, AuthError, PasswordHashing};
use crate::config::{Config, redact_url};
use crate::store::{Store, StoreError};

/// Why an admin account could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateAdminError {
    /// The name is not in `CHAT_ADMIN_USERS`, so the account would not be an admin.
    #[error(
        "{0:?} is not listed in CHAT_ADMIN_USERS: list it there first (an account is an admin only while its name is listed)"
    )]
    NotListed(String),
    /// The name or the password breaks the rules registration enforces.
    #[error(transparent)]
    Rule(AuthError),
    /// An account with that name exists already (it is not replaced).
    #[error("an account named {0:?} exists already")]
    Exists(String),
    /// The database could not be opened.
    #[error("cannot open the database at {url}: {source}")]
    Database {
        /// `DATABASE_URL`, without credentials.
        url: String,
        /// Why.
        source: StoreError,
    },
    /// Hashing the password failed (should not happen).
    #[error(transparent)]
    Hashing(AuthError),
    /// The database failed while creating the account.
    #[error(transparent)]
    Store(StoreError),
    /// The account was stored but closing the database failed or took over
    /// `CLOSE_GRACE` (the next start replays its log). SurrealKV logs most failures of
    /// its own close rather than returning them, so this is rare.
    #[error("the account was created, but the database did not close cleanly: {0}")]
    Close(StoreError),
}

impl CreateAdminError {
    /// Whether the operator asked for something impossible (a usage error, exit code 2)
    /// rather than something failing (exit code 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, CreateAdminError::NotListed(_) | CreateAdminError::Rule(_))
    }
}

/// Creates the account `username`, listed in `CHAT_ADMIN_USERS`, with `password`, in the
/// configured database. With the embedded database, run it while the server is stopped.
///
/// The database is closed before this returns (the embedded one writes its memtables and
/// closes its log, so the server's next start has nothing to replay), and its closed
/// handle is handed back with the outcome: the caller keeps it until the process exits,
/// since the embedded engine shuts its datastore down again, logging errors about the
/// closed store, when its last handle is dropped.
pub async fn create_admin(
    config: &Config,
    username: &str,
    password: String,
) -> (Result<(), CreateAdminError>, Option<Store>) {
    if !config.admin_users.iter().any(|a| a == username) {
        return (Err(CreateAdminError::NotListed(username.to_string())), None);
    }
    let rules = auth::validate_username(username).and_then(|()| auth::validate_password(&password));
    if let Err(rule) = rules {
        return (Err(CreateAdminError::Rule(rule)), None);
    }
    let store = match Store::connect(&config.store_config()).await {
        Ok(store) => store,
        Err(source) => {
            return (Err(CreateAdminError::Database { url: redact_url(&config.database_url), source }), None);
        }
    };
    let created = create(&store, username, password).await;
    let closed = store.close_within(crate::app::CLOSE_GRACE).await.map_err(CreateAdminError::Close);
    if let (Err(_), Err(close)) = (&created, &closed) {
        tracing::warn!(error = %close, "the database did not close cleanly either");
    }
    (created.and(closed), Some(store))
}

/// Stores the admin account in an open database.
async fn create(store: &Store, username: &str, password: String) -> Result<(), CreateAdminError> {
    let hash = PasswordHashing::new(1, 0).hash(password).await.map_err(CreateAdminError::Hashing)?;
    match store.create_user(username, &hash, UserRole::Admin).await {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict) => Err(CreateAdminError::Exists(username.to_string())),
        Err(e) => Err(CreateAdminError::Store(e)),
    }
}
