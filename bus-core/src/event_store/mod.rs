//! Event sourcing: aggregates whose state is the stream of their events,
//! and the store that keeps the streams.
//!
//! - [`EventSourced`] and [`Apply`]: an aggregate's state, one `apply` per
//!   event type; [`record`](EventSourced::record) applies an event at once
//!   and keeps it for the commit.
//! - [`Loaded`]: an aggregate rebuilt from its stream, with the version the
//!   commit expects; [`Loaded::save`] appends what it recorded, and a
//!   concurrent writer makes it fail with [`EventStoreError::Conflict`],
//!   which a command's retry policy turns into a rerun with fresh state.
//! - [`EventStore`]: the store's contract, kept by
//!   [`InMemoryEventStore`](crate::testing::InMemoryEventStore) for tests
//!   and by `arch-events-sqlx`'s SQLite and PostgreSQL stores, which also
//!   append inside a unit of work's transaction.
//! - [`Snapshotted`]: an aggregate's state saved
//!   every so many events ([`Loaded::load_snapshotted`],
//!   [`Loaded::save_snapshot_if_due`]); a snapshot of another state schema
//!   version is ignored and the state rebuilt from the events.
//! - [`RecordedEvent`]: what the store holds for each event: its ids, its
//!   stream and version, its global [`Position`], its type's name and
//!   schema version, when it was recorded, and the application's metadata.
//!
//! Needs the `json` feature (on by default): events are stored as JSON.

mod aggregate;
mod envelope;
mod error;
#[cfg(feature = "personal-data")]
mod personal;
mod snapshot;
mod store;
mod stream;
pub(crate) mod upcast;

pub use crate::message::PersonalFields;
pub use aggregate::{Apply, EventSourced, EventTypes, Loaded};
pub use envelope::{NewEvent, ParsePositionError, Position, RecordedEvent};
pub use error::EventStoreError;
#[cfg(feature = "personal-data")]
pub use personal::{protect, reveal, InMemoryKeyStore, KeyStore, Protected, SubjectKey};
pub use snapshot::{Snapshotted, StoredSnapshot};
pub use store::{earlier_append, Appended, EventStore, ReadAll, StoredAt};
pub use stream::{ExpectedVersion, StreamId};
