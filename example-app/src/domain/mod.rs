//! The domain: the `Product` aggregate, the messages it speaks in, and nothing
//! that knows about storage, HTTP or the bus's wiring.

pub mod commands;
pub mod events;
pub mod model;
pub mod validation;
