//! Adapters: the concrete storage and notification implementations behind
//! the service layer's traits, real (SQLite, the log) and in-memory fakes.

pub mod memory;
pub mod notifications;
pub mod sqlite;
