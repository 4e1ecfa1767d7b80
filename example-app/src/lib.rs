//! The allocation service of *Architecture Patterns with Python*, on
//! arch-events: the template to copy for a service of your own.
//!
//! - [`domain`]: the `Product` aggregate and the commands and events;
//! - [`service_layer`]: the handlers and the unit-of-work traits;
//! - [`adapters`]: SQLite, PostgreSQL and in-memory storage, the outbox
//!   relay, notifications;
//! - [`views`]: the read model and its query;
//! - [`entrypoints`]: the HTTP API and the broker (Redis Streams);
//! - [`mod@bootstrap`]: the one place where the bus is built from adapters;
//! - [`config`]: command-line and environment settings.

pub mod adapters;
pub mod bootstrap;
pub mod config;
pub mod domain;
pub mod entrypoints;
pub mod service_layer;
pub mod views;

pub use bootstrap::{bootstrap, Adapters};
