//! arch-events-sqlx's conformance suite on PostgreSQL: the same tests as on
//! SQLite (`bus-sqlx/tests/sqlite.rs`), each on a fresh database. A test
//! binary of its own: it links the suite's handlers and nothing else (the
//! example app's would join its bus). Built only with the `services`
//! feature (`.ci/run` turns it on):
//! `cargo test -p arch-events-tests --features services --test arch_events_sqlx_postgres`.
//! PostgreSQL at `POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); without it the tests fail
//! and say how to start it.

use arch_events_sqlx_conformance::{self as conformance, conformance_tests};
use arch_events_test_support::postgres;

async fn fresh_ledger() -> conformance::TestDatabase {
    let database = postgres::FreshDatabase::create().await;
    conformance::TestDatabase {
        url: database.url.clone(),
        keep: Box::new(database),
    }
}

conformance_tests!(sqlx::Postgres, fresh_ledger);

/// The sagas' and scheduler's suite (the same as in memory and on SQLite,
/// `bus-sqlx/tests/saga.rs`): two processes on each database.
mod sagas {
    async fn on_postgres(
        clock: arch_events::schedule::VirtualClock,
    ) -> arch_events_sqlx_conformance::saga::SagasUnderTest {
        arch_events_sqlx_conformance::saga::on_database::<sqlx::Postgres>(
            super::fresh_ledger().await,
            clock,
        )
        .await
    }

    arch_events_sqlx_conformance::saga_tests!(on_postgres);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_completed_sagas_are_purged_and_running_ones_kept() {
        arch_events_sqlx_conformance::saga::old_completed_sagas_are_purged::<sqlx::Postgres>(
            super::fresh_ledger().await,
        )
        .await;
    }
}

/// `arch_events_sqlx::begin_on` is cancel-safe where sqlx's `Pool::begin` is not
/// (transact-rs/sqlx#4393): a caller that stops waiting during `BEGIN` never
/// leaves the pool's connection inside a transaction, which would swallow
/// the next borrower's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_cut_short_leaves_no_connection_inside_a_transaction() {
    use sqlx::Connection;

    let database = postgres::FreshDatabase::create().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&database.url)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE writes (n INTEGER)")
        .execute(&pool)
        .await
        .unwrap();
    let mut other = sqlx::PgConnection::connect(&database.url).await.unwrap();
    for n in 0..50_i32 {
        // Cut short at once, or a little later: with BEGIN on the wire.
        let wait = std::time::Duration::from_micros(50 * u64::from(n.unsigned_abs() % 5));
        let _ = tokio::time::timeout(wait, arch_events_sqlx::begin_on(&pool, "BEGIN")).await;
        sqlx::query("INSERT INTO writes (n) VALUES ($1)")
            .bind(n)
            .execute(&pool)
            .await
            .unwrap();
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM writes")
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert_eq!(
            seen,
            i64::from(n) + 1,
            "write {n} committed, visible elsewhere"
        );
    }
    pool.close().await;
}
