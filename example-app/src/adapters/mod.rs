//! Adapters: the concrete implementations behind the service layer's
//! traits. [`database`] opens SQLite or PostgreSQL by URL; each has its
//! unit of work, view, outbox, inbox and dead-letter store ([`sqlite`],
//! [`postgres`]); [`memory`] holds the in-memory fakes; [`notifications`]
//! the notifiers.

pub mod database;
pub mod memory;
pub mod notifications;
pub mod postgres;
pub mod relay;
mod rows;
pub mod sqlite;
mod tracked;
