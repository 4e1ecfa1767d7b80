//! End to end on SQLite: the HTTP contract (the test-support crate's
//! `api_contract`, also run on PostgreSQL by the tests package) on a fresh SQLite file per
//! test, with the products kept as rows and as streams of events, and
//! SQLite's own startup errors.

// A test whose setup fails should panic, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

use arch_events_test_support::{api_contract_tests, server};

/// The binary under test.
const BINARY: &str = env!("CARGO_BIN_EXE_example-app");

api_contract_tests!(BINARY, server::fresh_sqlite);

/// The same contract, the products kept as streams of events.
mod events {
    use super::*;

    api_contract_tests!(BINARY, server::fresh_sqlite_events);
}

#[test]
fn an_unreachable_database_is_a_clear_startup_error() {
    let output = Command::new(BINARY)
        .args([
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            "sqlite:///no/such/dir/allocation.db",
        ])
        .env("RUST_LOG", "off")
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: cannot open the database sqlite:///no/such/dir/allocation.db"),
        "{stderr}"
    );
}
