//! Ordered, idempotent schema migrations, recorded in the database itself.
//!
//! Each migration is a SurrealQL file under `schema/`. The newest applied version is kept
//! in the `schema_migration` table; at start-up the server applies the ones after it, and
//! refuses a database whose schema is newer than the migrations it was built with (an
//! older server must not write into a schema it does not understand).
//!
//! Nodes of a cluster that start together may race to apply the same migration: each
//! migration and its version record commit in one transaction, so one node's transaction
//! wins and the others conflict; `Store::connect` then runs the whole apply again, which
//! reads the version anew and skips what the winner applied. A migration whose version record
//! another node committed after this one read the version fails as a duplicate; the
//! version is read again then too.

use super::StoreError;

/// One schema migration.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Its version, counting from 1 without gaps.
    pub version: u32,
    /// A short name, recorded with the version.
    pub name: &'static str,
    /// The SurrealQL to run; must be safe to run twice.
    pub sql: &'static str,
}

/// The migrations this build knows, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "init", sql: include_str!("../../../schema/0001_init.surql") },
    Migration {
        version: 2,
        name: "generating_status",
        sql: include_str!("../../../schema/0002_generating_status.surql"),
    },
    Migration { version: 3, name: "usage_ledger", sql: include_str!("../../../schema/0003_usage_ledger.surql") },
    Migration { version: 4, name: "retention", sql: include_str!("../../../schema/0004_retention.surql") },
    Migration { version: 5, name: "superseded", sql: include_str!("../../../schema/0005_superseded.surql") },
    Migration {
        version: 6,
        name: "fewer_message_indexes",
        sql: include_str!("../../../schema/0006_fewer_message_indexes.surql"),
    },
    Migration {
        version: 7,
        name: "fencing_and_idempotency",
        sql: include_str!("../../../schema/0007_fencing_and_idempotency.surql"),
    },
    Migration { version: 8, name: "search", sql: include_str!("../../../schema/0008_search.surql") },
    Migration { version: 9, name: "shares", sql: include_str!("../../../schema/0009_shares.surql") },
    Migration {
        version: 10,
        name: "prompts and models",
        sql: include_str!("../../../schema/0010_prompts_and_models.surql"),
    },
    Migration { version: 11, name: "replaced_by", sql: include_str!("../../../schema/0011_replaced_by.surql") },
];

const BOOKKEEPING: &str = "
    DEFINE TABLE IF NOT EXISTS schema_migration SCHEMAFULL;
    DEFINE FIELD IF NOT EXISTS version ON schema_migration TYPE int;
    DEFINE FIELD IF NOT EXISTS name ON schema_migration TYPE string;
    DEFINE FIELD IF NOT EXISTS applied_at ON schema_migration TYPE datetime;
    DEFINE INDEX IF NOT EXISTS schema_migration_version ON schema_migration FIELDS version UNIQUE;
";

/// Applies the migrations newer than the database's version; returns the version after.
pub(super) async fn apply(db: &super::Database, migrations: &[Migration]) -> Result<u32, StoreError> {
    db.query(BOOKKEEPING, None).await?.check()?;
    let current = current_version(db).await?;
    let known = migrations.last().map_or(0, |m| m.version);
    if current > known {
        return Err(StoreError::SchemaTooNew { found: current, known });
    }
    for migration in migrations.iter().filter(|m| m.version > current) {
        tracing::info!(version = migration.version, name = migration.name, "applying schema migration");
        let sql = format!(
            "BEGIN TRANSACTION;\n{}\nCREATE type::record('schema_migration', $version) CONTENT \
             {{ version: $version, name: $name, applied_at: time::now() }};\nCOMMIT TRANSACTION;",
            migration.sql
        );
        let applied = db
            .query(sql, Some(serde_json::json!({"version": migration.version, "name": migration.name})))
            .await
            .and_then(|mut r| super::cause_of(r.take_errors()).map_or(Ok(()), Err));
        if let Err(e) = applied {
            // Another node may have committed this migration since the version was read.
            if current_version(db).await? >= migration.version {
                continue;
            }
            return Err(e.into());
        }
    }
    current_version(db).await
}

async fn current_version(db: &super::Database) -> Result<u32, StoreError> {
    // One small row per migration, so reading them all and taking the maximum is cheap.
    let mut response = db.query("SELECT VALUE version FROM schema_migration", None).await?.check()?;
    let versions: Vec<serde_json::Value> = response.take(0)?;
    Ok(versions.iter().filter_map(|v| v.as_u64()).max().unwrap_or(0) as u32)
}
