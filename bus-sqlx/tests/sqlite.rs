//! The conformance suite on SQLite, the embedded default: each test on a
//! fresh database file (WAL, as a service runs it). The same suite runs on
//! PostgreSQL in the tests package (`--features services`, target
//! `postgres`).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use arch_events_sqlx_conformance::{self as conformance, conformance_tests};

conformance_tests!(sqlx::Sqlite, conformance::fresh_sqlite);
