//! Adapters: the concrete implementations behind the service layer's
//! traits. [`database`] opens SQLite or PostgreSQL by URL, with arch-events-sqlx's
//! store on it (outbox, inbox, durable delivery, dead letters); each
//! ([`sqlite`], [`postgres`]) has its view and the SQL of the unit of work
//! that [`relational`] runs, and the SQL of [`event_sourced`]'s (`--storage
//! events`, whose view is a projection read through [`projected_view`]);
//! [`storage`] is how a database keeps its products; [`memory`] holds the in-memory fakes,
//! [`notifications`] the notifiers; [`product_locks`] lets one unit of work
//! at a time change a product within the process.

pub mod database;
pub mod event_sourced;
pub mod memory;
pub mod notifications;
pub mod postgres;
pub mod product_locks;
pub mod projected_view;
pub mod relational;
mod rows;
pub mod sqlite;
pub mod storage;
pub mod tracked;
