#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

extern crate self as bus_core;

mod bus;
mod call;
mod dependencies;
mod error;
mod events;
mod executor;
mod inject;
mod message;
mod observer;
mod registry;
mod uow;

pub use bus::DEFAULT_MAX_MESSAGES_PER_DISPATCH;
pub use bus::{Bus, BusBuilder};
pub use dependencies::Dependencies;
pub use error::{BoxError, BuildError, CascadeLimitError, DispatchError, HandlerSite, Problem};
pub use events::{Aggregate, EventRecorder, EventReleaser, PendingEvent};
pub use executor::block_on;
pub use inject::{DependencyKey, Inject, Lifetime, Scope, Scoped};
pub use message::kind::{CommandKind, EventKind, MessageKind, QueryKind};
pub use message::{Command, Event, Kind, Location, Message, MessageMeta, Query};
pub use observer::{FailureCause, HandlerFailure, Observer};
pub use registry::{HandlerDef, HandlerRegistration, Registrations};
pub use uow::UnitOfWork;

pub use bus_macros::{handler, Command, Event, Query};

/// What the macros' generated code names. Not a public API: it may change in
/// any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::call::{
        boxed, event_result, put_output, ready_err, ready_ok, take_cloned, take_owned, BoxFuture,
        Call, DefaultError, HandlerOutput, MessageRef, Output, TakeMessage,
    };
    pub use crate::message::{Kind, MessageMeta};
    pub use crate::registry::{HandlerEntry, HandlerFn, HandlerRegistration, MessageEntry};
    pub use crate::{CommandKind, EventKind, QueryKind};
    pub use core;
    pub use inventory;

    /// The `TypeId` of `T`, as a `fn` pointer the derives can store in a static.
    pub fn type_id_of<T: 'static>() -> ::core::any::TypeId {
        ::core::any::TypeId::of::<T>()
    }
}
