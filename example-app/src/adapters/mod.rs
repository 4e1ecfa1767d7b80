//! Adapters: the concrete implementations behind the service layer's
//! traits. [`database`] opens SQLite or PostgreSQL by URL; each
//! ([`sqlite`], [`postgres`]) has its view, outbox, inbox and dead-letter
//! store, and the SQL of the unit of work that [`relational`] runs;
//! [`relay`] publishes the outboxes; [`memory`] holds the in-memory fakes,
//! [`notifications`] the notifiers.

pub mod database;
pub mod memory;
pub mod notifications;
pub mod postgres;
pub mod relational;
pub mod relay;
mod rows;
pub mod sqlite;
pub mod tracked;
