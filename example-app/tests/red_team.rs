//! The red-team suite on SQLite: the service under hostile input
//! (`support/fuzz.rs`) and under concurrent load (`support/under_load.rs`),
//! the real binary on a fresh SQLite file per test. The same suite runs on
//! PostgreSQL in the tests package (`tests/tests/postgres.rs`, under the
//! `services` feature).

#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "support/server.rs"]
mod server;

#[path = "support/write_model.rs"]
mod write_model;

#[macro_use]
#[path = "support/fuzz.rs"]
mod fuzz;

#[macro_use]
#[path = "support/under_load.rs"]
mod under_load;

/// The binary under test.
const BINARY: &str = env!("CARGO_BIN_EXE_example-app");

fuzz_tests!(BINARY, server::fresh_sqlite);

under_load_tests!(BINARY, server::fresh_sqlite);
