//! The service's schema migrations on PostgreSQL (sqlx's migrator), and the
//! earlier forms of a migration that a database may have applied.
//!
//! sqlx refuses to start on a database whose record of an applied migration
//! has another checksum than the migration's file: an edited migration
//! would otherwise leave that database unlike a new one. When a migration
//! has to change all the same (one that could no longer run on a new
//! database), its first form is kept here, and a database that applied that
//! form gets its record brought up to date: only when the first form leaves
//! the database in the state the current one does.

use sha2::{Digest, Sha384};
use sqlx::migrate::Migrator;
use sqlx::PgPool;

/// The service's migrations.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// A migration's earlier form: its version and its text as applied.
struct EarlierForm {
    version: i64,
    sql: &'static str,
}

/// Migration 5 as first released, before arch-events-sqlx kept ids in uuid
/// columns: it copied the old tables' text ids as they were, into text
/// columns. Its current form casts them, or it could not run on a new
/// database. A database that applied the first form has the same tables and
/// rows (arch-events-sqlx's migration 2 converted them since), so it is
/// accepted.
const EARLIER_FORMS: &[EarlierForm] = &[EarlierForm {
    version: 5,
    sql: include_str!(
        "../../../migrations/earlier-forms/postgres_0005_durable_tables_in_bus_sqlx.sql"
    ),
}];

/// Brings the service's tables up to date (under sqlx's advisory lock:
/// processes starting together apply each migration once).
pub(super) async fn run(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    accept_earlier_forms(pool).await?;
    MIGRATOR.run(pool).await
}

/// Records the current checksum for a migration a database applied in an
/// earlier form (idempotent: processes starting together may all do it).
async fn accept_earlier_forms(pool: &PgPool) -> Result<(), sqlx::Error> {
    let recorded: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !recorded {
        return Ok(());
    }
    for earlier in EARLIER_FORMS {
        let Some(current) = MIGRATOR.iter().find(|m| m.version == earlier.version) else {
            continue;
        };
        let updated = sqlx::query(
            "UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2 AND checksum = $3",
        )
        .bind(&*current.checksum)
        .bind(earlier.version)
        .bind(Sha384::digest(earlier.sql.as_bytes()).as_slice())
        .execute(pool)
        .await?;
        if updated.rows_affected() > 0 {
            tracing::info!(
                version = earlier.version,
                "a migration applied in its earlier form is recorded as its current form"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An earlier form is another text than the current one, or it would
    /// not be needed; and its version is one of the service's migrations.
    #[test]
    fn every_earlier_form_differs_from_its_current_form() {
        for earlier in EARLIER_FORMS {
            let current = MIGRATOR
                .iter()
                .find(|m| m.version == earlier.version)
                .unwrap_or_else(|| panic!("no migration {}", earlier.version));
            assert_ne!(
                &*current.checksum,
                Sha384::digest(earlier.sql.as_bytes()).as_slice()
            );
        }
    }
}
