//! What the tests of arch-events share, instead of `#[path]` includes:
//!
//! - [`server`]: the real `example-app` binary, started on a free port and
//!   spoken to over HTTP; [`in_process`]: the app in the test's process,
//!   its scheduler on a virtual clock; [`write_model`]: the write model as
//!   stored;
//! - the example app's contracts, written once and run on SQLite (by
//!   example-app's tests) and on PostgreSQL (by the tests package): the
//!   storage contract ([`storage_contract_tests!`]), the HTTP contract
//!   ([`api_contract_tests!`]), the seeded fuzzing ([`fuzz_tests!`]) and the
//!   runs under load ([`under_load_tests!`]);
//! - [`postgres`]: a fresh PostgreSQL database per test.
//!
//! It registers no message and no handler: linking it changes no bus. The
//! contracts' macros expand to `#[tokio::test]`s: the crate that expands
//! them depends on tokio.

// A test whose setup fails should panic, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

pub mod api_contract;
pub mod fuzz;
pub mod in_process;
pub mod postgres;
pub mod server;
pub mod storage_contract;
pub mod under_load;
pub mod write_model;
