//! The storage contract on SQLite, the embedded default: the unit of work,
//! the view, the outbox, the inbox and the dead letters, each test on a
//! fresh database file. The same tests run on PostgreSQL in the tests
//! package (`--features services`, target `postgres`).

// A test whose setup fails should panic, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[macro_use]
#[path = "support/storage_contract.rs"]
mod storage_contract;

use storage_contract::TestDatabase;

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
