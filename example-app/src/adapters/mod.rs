//! Adapters: the concrete storage and notification implementations behind
//! the service layer's traits, real (SQLite, the log) and in-memory fakes; and the dead-letter stores.

pub mod dead_letters;
pub mod inbox;
pub mod memory;
pub mod notifications;
pub mod outbox;
pub mod sqlite;
