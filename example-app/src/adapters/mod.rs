//! Adapters: the concrete implementations behind the service layer's
//! traits. [`database`] opens SQLite or PostgreSQL by URL, with arch-events-sqlx's
//! store on it (outbox, inbox, durable delivery, dead letters); each
//! ([`sqlite`], [`postgres`]) has its view and the SQL of the unit of work
//! that [`relational`] runs; [`memory`] holds the in-memory fakes,
//! [`notifications`] the notifiers; [`product_locks`] lets one unit of work
//! at a time change a product within the process.

pub mod database;
pub mod memory;
pub mod notifications;
pub mod postgres;
pub mod product_locks;
pub mod relational;
mod rows;
pub mod sqlite;
pub mod tracked;
