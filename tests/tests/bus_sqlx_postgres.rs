//! bus-sqlx's conformance suite on PostgreSQL: the same tests as on
//! SQLite (`bus-sqlx/tests/sqlite.rs`), each on a fresh database. A test
//! binary of its own: it links the suite's handlers and nothing else (the
//! example app's would join its bus). Built only with the `services`
//! feature (`.ci/run` turns it on):
//! `cargo test -p arch-events-tests --features services --test bus_sqlx_postgres`.
//! PostgreSQL at `POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); without it the tests fail
//! and say how to start it.

#[macro_use]
#[path = "../../bus-sqlx/tests/conformance/mod.rs"]
mod conformance;

#[path = "support/postgres.rs"]
mod postgres;

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

conformance_tests!(sqlx::Postgres, fresh_ledger);

/// `bus_sqlx::begin_on` is cancel-safe where sqlx's `Pool::begin` is not
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
        let _ = tokio::time::timeout(wait, bus_sqlx::begin_on(&pool, "BEGIN")).await;
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
