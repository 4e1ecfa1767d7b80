//! End to end on SQLite: the HTTP contract (`support/api_contract.rs`,
//! also run on PostgreSQL by the tests package) on a fresh SQLite file per
//! test, and SQLite's own startup error.

// A test whose setup fails should panic, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

#[path = "support/server.rs"]
mod server;

#[path = "support/write_model.rs"]
mod write_model;

#[macro_use]
#[path = "support/api_contract.rs"]
mod api_contract;

/// The binary under test.
const BINARY: &str = env!("CARGO_BIN_EXE_example-app");

api_contract_tests!(BINARY, server::fresh_sqlite);

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
