//! What a service's handlers, domain and bootstrap name every day, in one
//! `use`:
//!
//! ```
//! use arch_events::prelude::*;
//!
//! #[derive(Debug, Command)]
//! #[command(output = u32)]
//! struct Double(u32);
//!
//! #[handler]
//! fn double(cmd: Double) -> Result<u32, std::convert::Infallible> {
//!     Ok(cmd.0 * 2)
//! }
//!
//! let bus = Bus::builder().dependencies(Dependencies::new()).build()?;
//! assert_eq!(bus.dispatch_blocking(Double(21))?, 42);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The rest (layers, dead letters, durable delivery, transports, the
//! wiring report, test aids) lives in its own module.

pub use crate::{
    async_trait, handler, Aggregate, Bus, Command, Dependencies, DispatchError, Event,
    EventRecorder, EventReleaser, MessageContext, PendingEvent, Permanent, Query, RetryPolicy,
    Scope, Scoped, UnitOfWork,
};
