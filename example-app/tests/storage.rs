//! The storage contract on SQLite, the embedded default: the unit of work,
//! the view, the outbox, the inbox and the dead letters, each test on a
//! fresh database file. The same tests run on PostgreSQL in the tests
//! package (`--features services`, target `postgres`).

// A test whose setup fails should panic, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use arch_events_test_support::storage_contract::TestDatabase;
use arch_events_test_support::storage_contract_tests;

/// A fresh SQLite file in a temporary directory.
async fn fresh_sqlite() -> TestDatabase {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("allocation.db").display());
    TestDatabase {
        url,
        keep: Box::new(dir),
    }
}

storage_contract_tests!(fresh_sqlite);

/// A fresh SQLite file that keeps its products as streams of events.
async fn fresh_sqlite_events() -> TestDatabase {
    fresh_sqlite()
        .await
        .keeping(example_app::adapters::storage::Storage::Events)
        .await
}

/// The same contract, the products kept as streams of events.
mod events {
    use arch_events_test_support::storage_contract_tests;

    storage_contract_tests!(events super::fresh_sqlite_events);
}

/// A database made before the outbox, the inbox and the dead letters moved
/// to arch-events-sqlx keeps what they held: the service's migration carries it
/// over to arch-events-sqlx's tables.
#[tokio::test]
async fn a_database_from_before_bus_sqlx_keeps_its_outbox_inbox_and_dead_letters() {
    use example_app::adapters::database::Database;

    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("allocation.db").display());
    // The schema as it was: the service's own migrations up to 0005.
    let old = tempfile::tempdir().expect("temp dir");
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for entry in std::fs::read_dir(&migrations).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        if name.as_str() < "0006" {
            std::fs::copy(&path, old.path().join(&name)).expect("copied");
        }
    }
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("allocation.db"))
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options)
        .await
        .expect("opened");
    sqlx::migrate::Migrator::new(old.path())
        .await
        .expect("the old migrations")
        .run(&pool)
        .await
        .expect("applied");
    let id = arch_events::MessageId::new().to_string();
    sqlx::raw_sql(&format!(
        "INSERT INTO outbox (id, stream, name, payload, correlation_id, created_at) \
         VALUES ('{id}', 'line_allocated', 'line_allocated', '{{}}', '{id}', '2026-01-01T00:00:00+00:00');
         INSERT INTO inbox (message_id, handled_at) VALUES ('{id}', '2026-01-01T00:00:00+00:00');
         INSERT INTO dead_letters (message_name, handler, location, error, attempts, failed_at, \
             message_id, correlation_id) \
         VALUES ('allocation.out_of_stock', 'h', 'src/h.rs:1', 'down', 3, \
             '2026-01-01T00:00:00+00:00', '{id}', '{id}');"
    ))
    .execute(&pool)
    .await
    .expect("old rows");
    pool.close().await;

    let database = Database::connect(&url).await.expect("opened, and migrated");
    let Database::Sqlite(sqlite) = &database else {
        panic!("SQLite")
    };
    let unsent = sqlite.store().outbox().unsent(10).await.expect("read");
    assert_eq!(unsent.len(), 1);
    assert_eq!(
        unsent[0].id.to_string(),
        id,
        "the unsent message, with its id"
    );
    let handled = database
        .inbox()
        .handled(id.parse().expect("an id"))
        .await
        .expect("read");
    assert!(handled, "the inbox still knows the message");
    let letters = database.dead_letters().list(false).await.expect("read");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].record.error, "down");
    let old_tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE name IN ('outbox', 'inbox', 'dead_letters')",
    )
    .fetch_one(sqlite.pool())
    .await
    .expect("read");
    assert_eq!(old_tables, 0, "the old tables are gone");
    database.close().await;
}
