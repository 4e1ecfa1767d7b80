//! The conformance suite on SQLite, the embedded default: each test on a
//! fresh database file (WAL, as a service runs it). The same suite runs on
//! PostgreSQL in the tests package (`--features services`, target
//! `postgres`).

#![allow(clippy::expect_used, clippy::unwrap_used)]

#[macro_use]
mod conformance;

use std::str::FromStr;
use std::time::Duration;

use bus_core::async_trait;
use conformance::{Ledger, TestDatabase};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Pool, Sqlite, Transaction};

/// A fresh SQLite file in a temporary directory.
async fn fresh_sqlite() -> TestDatabase {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    TestDatabase {
        url,
        keep: Box::new(dir),
    }
}

#[async_trait]
impl Ledger for Sqlite {
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

conformance_tests!(Sqlite, fresh_sqlite);
