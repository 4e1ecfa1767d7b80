//! The red-team suite on SQLite: the service under hostile input
//! (the test-support crate's `fuzz`) and under concurrent load (its
//! `under_load`),
//! the real binary on a fresh SQLite file per test. The same suite runs on
//! PostgreSQL in the tests package (`tests/tests/postgres.rs`, under the
//! `services` feature).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use arch_events_test_support::{fuzz_tests, server, under_load_tests};

/// The binary under test.
const BINARY: &str = env!("CARGO_BIN_EXE_example-app");

fuzz_tests!(BINARY, server::fresh_sqlite);

under_load_tests!(BINARY, server::fresh_sqlite);

/// The same suite, the products kept as streams of events.
mod events {
    use super::*;

    fuzz_tests!(BINARY, server::fresh_sqlite_events);

    under_load_tests!(BINARY, server::fresh_sqlite_events);
}
