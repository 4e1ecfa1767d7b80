//! The store's own migrations, recorded in a table of their own
//! (`bus_sqlx_migrations`), so that they never collide with the
//! application's sqlx migrations in the same database: sqlx keeps one
//! `_sqlx_migrations` table per database and refuses a migration it does
//! not know, so a library must not write there.

use sha2::{Digest, Sha256};
use sqlx::Pool;

use crate::backend::Backend;
use crate::error::MigrateError;

/// One migration of the store's tables.
#[derive(Debug)]
pub struct Migration {
    pub(crate) version: i64,
    pub(crate) description: &'static str,
    pub(crate) sql: &'static str,
}

impl Migration {
    /// A hash of its SQL, to tell a changed migration from the one applied.
    pub(crate) fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// The migrations still to apply, in order, given those applied (version
/// and checksum). A changed migration is an error; a version this build
/// does not know (a newer arch-events-sqlx migrated the database) is logged and
/// left alone: migrations only ever add, so an older build still works on
/// the newer tables during a rolling upgrade.
pub(crate) fn pending<'m>(
    migrations: &'m [Migration],
    applied: &[(i64, String)],
) -> Result<Vec<&'m Migration>, MigrateError> {
    for (version, checksum) in applied {
        match migrations.iter().find(|m| m.version == *version) {
            Some(migration) if migration.checksum() != *checksum => {
                return Err(MigrateError::Changed {
                    version: *version,
                    description: migration.description,
                    applied: checksum.clone(),
                    expected: migration.checksum(),
                })
            }
            Some(_) => {}
            None => tracing::warn!(
                version,
                "arch-events-sqlx: the database has a migration this build does not know \
                 (a newer arch-events-sqlx applied it); going on"
            ),
        }
    }
    Ok(migrations
        .iter()
        .filter(|m| !applied.iter().any(|(version, _)| *version == m.version))
        .collect())
}

/// Brings the store's tables in `pool`'s database up to date. Safe to call
/// from several processes starting at once (PostgreSQL: under an advisory
/// lock; SQLite: in one `BEGIN IMMEDIATE` transaction), and beside the
/// application's own `sqlx::migrate!()` in the same database.
///
/// [`Store::open`](crate::Store::open) calls it; call it yourself to
/// migrate without opening a store (a deployment step).
pub async fn migrate<DB: Backend>(pool: &Pool<DB>) -> Result<(), MigrateError> {
    DB::migrate(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATIONS: &[Migration] = &[
        Migration {
            version: 1,
            description: "one",
            sql: "CREATE TABLE one (id INTEGER)",
        },
        Migration {
            version: 2,
            description: "two",
            sql: "CREATE TABLE two (id INTEGER)",
        },
    ];

    #[test]
    fn only_the_missing_ones_are_pending_and_a_changed_one_is_refused() {
        let first = (1, MIGRATIONS[0].checksum());
        let versions: Vec<i64> = pending(MIGRATIONS, std::slice::from_ref(&first))
            .unwrap()
            .iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(versions, [2]);
        assert_eq!(pending(MIGRATIONS, &[]).unwrap().len(), 2);
        let newer = [
            first.clone(),
            (2, MIGRATIONS[1].checksum()),
            (3, "x".into()),
        ];
        assert!(pending(MIGRATIONS, &newer).unwrap().is_empty());
        let changed = pending(MIGRATIONS, &[(1, "other".into())]).unwrap_err();
        assert!(
            changed
                .to_string()
                .contains("migration 1 (one) was applied with another content"),
            "{changed}"
        );
    }

    /// A migration a database applied is never edited: its checksum is
    /// what every such database recorded, and a changed one is refused at
    /// start-up. A change to the schema is a new migration.
    #[test]
    fn no_released_migration_has_changed() {
        let released: &[(&str, i64, &str)] = &[
            #[cfg(feature = "sqlite")]
            (
                "sqlite",
                1,
                "627af2b5017b1ef3a6bb14d80cb532def6dbea25b6d1d7de60d6ed44e9898b9d",
            ),
            #[cfg(feature = "postgres")]
            (
                "postgres",
                1,
                "e8555de38a01a2e6fd220b7b29fac03cdd5fe421bdd742f4b507820cab6b7189",
            ),
            #[cfg(feature = "postgres")]
            (
                "postgres",
                2,
                "47c8f14252aab6fbefc7f914087df1b4ea07d612ecf90f5be849e23164c82a50",
            ),
        ];
        let shipped = |database: &str| -> &'static [Migration] {
            match database {
                #[cfg(feature = "sqlite")]
                "sqlite" => crate::sqlite::MIGRATIONS,
                #[cfg(feature = "postgres")]
                "postgres" => crate::postgres::MIGRATIONS,
                _ => &[],
            }
        };
        for (database, version, checksum) in released {
            let migration = shipped(database)
                .iter()
                .find(|m| m.version == *version)
                .unwrap_or_else(|| panic!("{database} migration {version} is gone"));
            assert_eq!(
                migration.checksum(),
                *checksum,
                "{database} migration {version} was edited: add a new migration instead"
            );
        }
    }
}
