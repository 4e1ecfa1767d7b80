//! The service layer: the handlers (the use cases), the unit-of-work
//! abstraction they run in, and the dead letters of the handlers that failed
//! for good.

pub mod dead_letters;
mod error;
pub mod handlers;
pub mod unit_of_work;

pub use error::ServiceError;
