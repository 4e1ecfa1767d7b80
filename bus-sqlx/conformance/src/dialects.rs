//! The suite's SQL in each database's dialect: the tables and statements
//! of its ledger, written as an application writes its own.

use std::str::FromStr;
use std::time::Duration;

use arch_events::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Pool, Postgres, Sqlite, Transaction};

use crate::{Ledger, TestDatabase};

/// A fresh SQLite file in a temporary directory.
pub async fn fresh_sqlite() -> TestDatabase {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    TestDatabase {
        url,
        keep: Box::new(dir),
    }
}

#[async_trait]
impl Ledger for Sqlite {
    const STORE_MIGRATIONS: i64 = 4;

    async fn store_versions(pool: &Pool<Self>) -> Vec<i64> {
        sqlx::query_scalar("SELECT version FROM bus_sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    async fn connect(url: &str) -> Pool<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .unwrap()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap()
    }

    async fn create_tables(pool: &Pool<Self>) {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS ledger (account TEXT NOT NULL, amount INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, total INTEGER NOT NULL);",
        )
        .execute(pool)
        .await
        .unwrap();
    }

    async fn insert_deposit(
        tx: &mut Transaction<'_, Self>,
        account: &str,
        amount: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO ledger (account, amount) VALUES (?, ?)")
            .bind(account)
            .bind(amount)
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    async fn add_to_balance(
        tx: &mut Transaction<'_, Self>,
        account: &str,
        amount: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO balances (account, total) VALUES (?, ?) \
             ON CONFLICT (account) DO UPDATE SET total = balances.total + excluded.total",
        )
        .bind(account)
        .bind(amount)
        .execute(&mut **tx)
        .await
        .map(drop)
    }

    async fn balance(pool: &Pool<Self>, account: &str) -> i64 {
        sqlx::query_scalar("SELECT total FROM balances WHERE account = ?")
            .bind(account)
            .fetch_optional(pool)
            .await
            .unwrap()
            .unwrap_or(0)
    }

    async fn balance_sum(pool: &Pool<Self>) -> (i64, i64) {
        sqlx::query_as(
            "SELECT CAST(coalesce(sum(total), 0) AS BIGINT), \
             CAST(coalesce(sum(applied), 0) AS BIGINT) FROM totals",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    }

    async fn execute_in(connection: &mut Self::Connection, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::query(sql).execute(&mut *connection).await.map(drop)
    }

    async fn count(pool: &Pool<Self>, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn execute(pool: &Pool<Self>, sql: &str) {
        sqlx::raw_sql(sql).execute(pool).await.unwrap();
    }

    async fn app_migrate(pool: &Pool<Self>, dir: &std::path::Path) {
        let migrator = sqlx::migrate::Migrator::new(dir).await.unwrap();
        migrator.run(pool).await.unwrap();
    }

    async fn sqlx_versions(pool: &Pool<Self>) -> Vec<i64> {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap()
    }
}

#[async_trait]
impl Ledger for Postgres {
    const STORE_MIGRATIONS: i64 = 5;

    async fn store_versions(pool: &Pool<Self>) -> Vec<i64> {
        sqlx::query_scalar("SELECT version FROM bus_sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    async fn connect(url: &str) -> PgPool {
        PgPoolOptions::new()
            .max_connections(8)
            .connect(url)
            .await
            .unwrap()
    }

    async fn create_tables(pool: &PgPool) {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS ledger (account TEXT NOT NULL, amount BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, total BIGINT NOT NULL);",
        )
        .execute(pool)
        .await
        .unwrap();
    }

    async fn insert_deposit(
        tx: &mut Transaction<'_, Postgres>,
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
        tx: &mut Transaction<'_, Postgres>,
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

    async fn balance(pool: &PgPool, account: &str) -> i64 {
        sqlx::query_scalar("SELECT total FROM balances WHERE account = $1")
            .bind(account)
            .fetch_optional(pool)
            .await
            .unwrap()
            .unwrap_or(0)
    }

    async fn balance_sum(pool: &Pool<Self>) -> (i64, i64) {
        sqlx::query_as(
            "SELECT CAST(coalesce(sum(total), 0) AS BIGINT), \
             CAST(coalesce(sum(applied), 0) AS BIGINT) FROM totals",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    }

    async fn execute_in(connection: &mut Self::Connection, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::query(sql).execute(&mut *connection).await.map(drop)
    }

    async fn count(pool: &PgPool, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn execute(pool: &PgPool, sql: &str) {
        sqlx::raw_sql(sql).execute(pool).await.unwrap();
    }

    async fn sqlx_versions(pool: &PgPool) -> Vec<i64> {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    async fn app_migrate(pool: &PgPool, dir: &std::path::Path) {
        let migrator = sqlx::migrate::Migrator::new(dir).await.unwrap();
        migrator.run(pool).await.unwrap();
    }
}
