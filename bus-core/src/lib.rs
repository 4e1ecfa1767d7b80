//! The runtime of arch-events: a message bus built from link-time
//! registrations, validated at startup, with dependencies injected by type.
//!
//! - [`Command`], [`Event`] and [`Query`] are derived on your message types;
//!   [`handler`] registers a plain `fn` or `async fn` as a handler.
//! - [`Bus::builder`] gathers every linked registration ([`Registrations`]),
//!   resolves each handler's parameters from a [`Dependencies`] container, and
//!   returns a [`BuildError`] listing every wiring [`Problem`] at once.
//! - [`Bus::dispatch`] returns the command handler's output or its typed error
//!   ([`DispatchError::Handler`]); the events it released then run, each
//!   through all of its handlers, in a per-dispatch FIFO queue.
//! - An [`Aggregate`] records events in an [`EventRecorder`]; a
//!   [`UnitOfWork`] hands them to its [`EventReleaser`] only after it
//!   committed.
//! - An event handler's error or panic is logged, reported to the
//!   [`Observer`], and does not stop the rest of the queue.
//!
//! ```
//! use arch_events::{handler, Bus, Command, Dependencies};
//!
//! #[derive(Debug, Command)]
//! #[command(output = String)]
//! struct Greet(String);
//!
//! #[handler]
//! fn greet(cmd: Greet, greeting: &String) -> Result<String, std::convert::Infallible> {
//!     Ok(format!("{greeting}, {}!", cmd.0))
//! }
//!
//! let bus = Bus::builder()
//!     .dependencies(Dependencies::new().shared(String::from("Hello")))
//!     .build()?;
//! assert_eq!(bus.dispatch_blocking(Greet("Ada".into()))?, "Hello, Ada!");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
// `unsafe` is denied everywhere but in `event_box`, whose soundness its
// module docs prove (it is what the `smallbox!` macro expands to).
#![deny(unsafe_code)]

extern crate self as arch_events;

mod blocking;
mod bus;
mod call;
mod codec;
mod context;
pub mod dead_letter;
pub mod delivery;
mod dependencies;
mod error;
mod event_box;
#[cfg(feature = "json")]
pub mod event_store;
mod events;
mod executor;
pub mod guide;
mod inject;
pub mod layer;
mod message;
mod message_id;
mod observer;
pub mod prelude;
pub mod registry;
mod retry;
#[cfg(feature = "json")]
pub mod saga;
mod saga_role;
#[cfg(feature = "json")]
pub mod schedule;
mod spawn;
pub mod testing;
mod timeout;
pub mod transport;
mod uow;

pub use bus::DEFAULT_MAX_MESSAGES_PER_DISPATCH;
pub use bus::{Bus, BusBuilder, InboundError, ReplayError, ShutdownError};
pub use codec::CodecError;
pub use context::{MessageContext, MessageId, ParseMessageIdError};
pub use dependencies::Dependencies;
pub use error::{
    BoxError, BuildError, CascadeLimitError, DispatchError, HandlerSite, InternalError,
    MisuseError, Problem,
};
pub use events::{Aggregate, EventRecorder, EventReleaser, PendingEvent, Uncommitted};
pub use inject::{DependencyKey, Inject, Lifetime, Scope, Scoped};
pub use message::{Command, Event, Message, MessageKind, Query};
pub use observer::{FailureCause, HandlerFailure, Observer};
pub use registry::Registrations;
pub use retry::{is_permanent, Permanent, Retry, RetryPolicy};
pub use spawn::Spawn;
pub use timeout::Timeout;
pub use uow::UnitOfWork;

/// The wiring report: what a built bus routes, to which handlers, with
/// which dependencies; as data ([`Bus::describe`]), as a table and as a
/// Mermaid flowchart.
pub mod describe {
    pub use crate::bus::{
        BusDescription, DeadEnd, DependencyDescription, HandlerDescription, MessageDescription,
        SagaDescription, SagaRole, SagaStepDescription,
    };
}

pub use arch_events_macros::{handler, upcaster, Command, Event, Query};

/// The `async_trait` attribute, re-exported so that object-safe async traits
/// such as [`UnitOfWork`] can be implemented without another dependency.
pub use async_trait::async_trait;

/// What the macros' generated code names. Not a public API: it may change in
/// any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::bus::CommandCodec;
    pub use crate::call::{
        borrow_event, borrow_from_frame, clone_event, drive_future, event_result, handler_future,
        inject, not_shared, put_output, ready_err, ready_ok, ready_request_err, request_future,
        request_result, take_event, take_from_frame, Call, DefaultError, HandlerFuture,
        HandlerOutput, MessageRef, Output, TakeMessage, TypedAsyncRequest, TypedRequest, TypedSync,
    };
    pub use crate::codec::{JsonCommand, JsonEvent};
    #[cfg(feature = "json")]
    pub use crate::event_store::upcast::UpcasterEntry;
    #[cfg(feature = "json")]
    pub use serde_json;

    /// What `#[saga]` generates names.
    #[cfg(feature = "json")]
    pub mod saga {
        pub use crate::saga::{
            NotFound, Role, Saga, SagaContext, SagaEntry, SagaError, SagaRegistration, SagaStep,
            Sagas,
        };

        /// A saga handler's return value: nothing, or `Result<(), E>`.
        #[diagnostic::on_unimplemented(
            message = "a saga's handler returns nothing or `Result<(), E>`, not `{Self}`",
            label = "not a saga handler's result",
            note = "return `Result<(), E>` with an error type `E` that converts into \
                    `Box<dyn Error + Send + Sync>`, or nothing"
        )]
        pub trait StepResult {
            /// As a result.
            fn into_result(self) -> Result<(), crate::BoxError>;
        }

        impl<E: Into<crate::BoxError>> StepResult for Result<(), E> {
            fn into_result(self) -> Result<(), crate::BoxError> {
                self.map_err(Into::into)
            }
        }

        /// `result`, as the runtime takes it.
        pub fn into_result(result: impl StepResult) -> Result<(), crate::BoxError> {
            result.into_result()
        }

        /// Where a `#[saga]` is.
        pub const fn location(file: &'static str, line: u32) -> crate::registry::Location {
            crate::registry::Location { file, line }
        }
    }

    /// What `#[upcaster]` calls: a function with an upcaster's signature.
    #[cfg(feature = "json")]
    #[diagnostic::on_unimplemented(
        message = "`#[upcaster]` needs `fn(serde_json::Value) -> Result<serde_json::Value, E>`",
        label = "not an upcaster's signature",
        note = "take the stored JSON as `value: serde_json::Value` and return \
                `Result<serde_json::Value, E>` with an error type `E` that converts into \
                `Box<dyn Error + Send + Sync>` (a `String` does)"
    )]
    pub trait Upcast {
        /// Runs it.
        fn upcast(&self, value: serde_json::Value) -> Result<serde_json::Value, crate::BoxError>;
    }

    #[cfg(feature = "json")]
    impl<F, E> Upcast for F
    where
        F: Fn(serde_json::Value) -> Result<serde_json::Value, E>,
        E: Into<crate::BoxError>,
    {
        fn upcast(&self, value: serde_json::Value) -> Result<serde_json::Value, crate::BoxError> {
            self(value).map_err(Into::into)
        }
    }

    /// Names the event an upcaster is for: it must be a stored event.
    #[cfg(feature = "json")]
    pub fn upcast_target<E: crate::Event + JsonEvent>() -> &'static crate::__private::MessageMeta {
        E::meta()
    }
    pub use crate::executor::block_on;
    pub use crate::message::marker::{CommandMarker, EventMarker, KindMarker, QueryMarker};
    pub use crate::message::{EventCodec, MessageKind, MessageMeta, PersonalFields};
    pub use crate::registry::{
        HandlerDef, HandlerEntry, HandlerFn, HandlerRegistration, MessageEntry,
    };
    pub use crate::{BoxError, Command, Event, EventReleaser, Message, MessageContext, Query};
    pub use core;
    pub use inventory;

    /// The `TypeId` of `T`, as a `fn` pointer the derives can store in a static.
    pub fn type_id_of<T: 'static>() -> ::core::any::TypeId {
        ::core::any::TypeId::of::<T>()
    }
}

/// The crate's README, whose example runs as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
