//! The example app on PostgreSQL: the storage contract and the HTTP
//! contract, the same tests as on SQLite (`example-app/tests/storage.rs`,
//! `example-app/tests/api.rs`), each on a fresh database, and what only
//! PostgreSQL's relay does. Built only with the `services` feature
//! (`.ci/run` turns it on):
//! `cargo test -p arch-events-tests --features services --test postgres`.
//! PostgreSQL at `POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); without it the tests fail
//! and say how to start it.

#[macro_use]
#[path = "../../example-app/tests/support/storage_contract.rs"]
mod storage_contract;

#[path = "support/postgres.rs"]
mod postgres;

#[path = "../../example-app/tests/support/server.rs"]
mod server;

#[macro_use]
#[path = "../../example-app/tests/support/api_contract.rs"]
mod api_contract;

#[macro_use]
#[path = "../../bus-sqlx/tests/conformance/mod.rs"]
mod conformance;

use std::time::Duration;

use bus_core::transport::{InMemoryBroker, OutboundMessage, Publisher, TransportError};
use bus_core::{async_trait, Bus};
use example_app::domain::commands::{Allocate, CreateBatch};
use example_app::{bootstrap, Adapters};
use storage_contract::TestDatabase;

async fn fresh_postgres() -> TestDatabase {
    let database = postgres::FreshDatabase::create().await;
    TestDatabase {
        url: database.url.clone(),
        keep: Box::new(database),
    }
}

storage_contract_tests!(fresh_postgres);

api_contract_tests!(server::example_app_binary(), fresh_postgres);

/// A broker that never answers.
struct Stuck;

#[async_trait]
impl Publisher for Stuck {
    async fn publish(&self, _message: &OutboundMessage) -> Result<(), TransportError> {
        std::future::pending().await
    }
}

async fn allocations(bus: &Bus, count: usize) {
    bus.dispatch(CreateBatch {
        reference: "b1".into(),
        sku: "LAMP".into(),
        qty: 100,
        eta: None,
    })
    .await
    .unwrap();
    for n in 0..count {
        bus.dispatch(Allocate {
            orderid: format!("o{n}"),
            sku: "LAMP".into(),
            qty: 1,
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_skips_the_rows_another_holds_and_takes_them_when_that_one_dies() {
    let db = fresh_postgres().await;
    let database = db.open().await;
    let bus = bootstrap(Adapters::for_database(&database)).unwrap();
    allocations(&bus, 3).await;

    // The first relay locks the rows and hangs on the broker.
    let outbox = database.outbox();
    let stuck = tokio::spawn(async move { outbox.relay_once(&Stuck, 10).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The second one skips them at once: it neither waits nor doubles them.
    let broker = InMemoryBroker::default();
    let second = database.outbox();
    let skipped = tokio::time::timeout(Duration::from_secs(2), second.relay_once(&broker, 10))
        .await
        .expect("SKIP LOCKED does not wait")
        .unwrap();
    assert_eq!(skipped, 0, "the rows are held by the first relay");

    // The first relay dies: its transaction ends with its connection, and
    // the rows are free again at once (no lease to wait out).
    stuck.abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut sent = 0;
    while sent < 3 {
        assert!(std::time::Instant::now() < deadline, "rows still held");
        sent += second.relay_once(&broker, 10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(broker.waiting("line_allocated").len(), 3, "each once");
}

#[tokio::test]
async fn a_dead_server_is_a_clear_error() {
    let error = example_app::adapters::database::Database::connect(
        "postgres://postgres:secret@127.0.0.1:1/nowhere",
    )
    .await
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with("cannot open the database postgres://postgres:***@127.0.0.1:1/nowhere: "),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
}

// ---------------------------------------------------------------------------
// bus-sqlx's conformance suite on PostgreSQL
// ---------------------------------------------------------------------------

async fn fresh_ledger() -> conformance::TestDatabase {
    let database = postgres::FreshDatabase::create().await;
    conformance::TestDatabase {
        url: database.url.clone(),
        keep: Box::new(database),
    }
}

#[bus_core::async_trait]
impl conformance::Ledger for sqlx::Postgres {
    async fn connect(url: &str) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(url)
            .await
            .unwrap()
    }

    async fn create_tables(pool: &sqlx::PgPool) {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS ledger (account TEXT NOT NULL, amount BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, total BIGINT NOT NULL);",
        )
        .execute(pool)
        .await
        .unwrap();
    }

    async fn insert_deposit(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        account: &str,
        amount: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO ledger (account, amount) VALUES ($1, $2)")
            .bind(account)
            .bind(amount)
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    async fn add_to_balance(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        account: &str,
        amount: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO balances (account, total) VALUES ($1, $2) \
             ON CONFLICT (account) DO UPDATE SET total = balances.total + excluded.total",
        )
        .bind(account)
        .bind(amount)
        .execute(&mut **tx)
        .await
        .map(drop)
    }

    async fn balance(pool: &sqlx::PgPool, account: &str) -> i64 {
        sqlx::query_scalar("SELECT total FROM balances WHERE account = $1")
            .bind(account)
            .fetch_optional(pool)
            .await
            .unwrap()
            .unwrap_or(0)
    }

    async fn count(pool: &sqlx::PgPool, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn execute(pool: &sqlx::PgPool, sql: &str) {
        sqlx::raw_sql(sql).execute(pool).await.unwrap();
    }

    async fn sqlx_versions(pool: &sqlx::PgPool) -> Vec<i64> {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    async fn app_migrate(pool: &sqlx::PgPool, dir: &std::path::Path) {
        let migrator = sqlx::migrate::Migrator::new(dir).await.unwrap();
        migrator.run(pool).await.unwrap();
    }
}

mod bus_sqlx_conformance {
    use super::{conformance, fresh_ledger};

    conformance_tests!(sqlx::Postgres, fresh_ledger);
}
