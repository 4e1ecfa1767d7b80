//! The service layer: the handlers (the use cases) and the unit-of-work
//! abstraction they run in.

mod error;
pub mod handlers;
pub mod unit_of_work;

pub use error::ServiceError;
