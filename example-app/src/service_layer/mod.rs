//! The service layer: the handlers (the use cases), the saga that watches
//! allocations until their shipment, and the unit-of-work abstraction
//! they run in.

mod error;
pub mod handlers;
pub mod shipment;
pub mod unit_of_work;

pub use error::ServiceError;
