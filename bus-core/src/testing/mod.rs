//! Test aids: everything a service's tests need besides its own fakes.
//!
//! - [`Recorder`]: attach it to a built bus, dispatch, then assert which
//!   events were released, in order, and which handlers ran, and how they
//!   ended. No recorder to write by hand.
//! - [`given`]: given an aggregate in some state, when a method runs, then
//!   these events were raised (or this error returned); `given_events` for
//!   an event-sourced aggregate, whose state is built from a history of
//!   events (feature `json`).
//! - `InMemoryEventStore`: the event store's contract in memory (feature
//!   `json`).
//! - [`InMemoryStore`], [`InMemoryRepository`] and [`FakeUnitOfWork`]: a
//!   generic in-memory repository and unit of work with the real contract
//!   (optimistic concurrency at commit, events released only after it), for
//!   any aggregate that says its key and version ([`Entity`]).
//!
//! A dispatch returns only once every event it caused, and every handler of
//! those, has run: a test never sleeps to let a cascade settle. For
//! dispatches running on other tasks, [`Bus::settled`](crate::Bus::settled)
//! waits until none is in flight.

#[cfg(feature = "json")]
mod event_store;
#[cfg(feature = "json")]
mod history;
mod recorder;
mod repository;
mod scenario;

#[cfg(feature = "personal-data")]
pub use crate::event_store::InMemoryKeyStore;
#[cfg(feature = "json")]
pub use event_store::InMemoryEventStore;
#[cfg(feature = "json")]
pub use history::{given_events, History};
pub(crate) use recorder::RecorderInner;
pub use recorder::{handler_name, HandlerRun, Misuse, Recorder};
pub use repository::{Conflict, Entity, FakeUnitOfWork, InMemoryRepository, InMemoryStore};
pub use scenario::{given, Given, Then};
