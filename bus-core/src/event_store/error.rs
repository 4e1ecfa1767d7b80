//! What can go wrong with the event store, as one error a unit of work can
//! return from its commit.

use crate::error::BoxError;
use crate::message_id::MessageId;

use super::stream::{ExpectedVersion, StreamId};

/// Why an append, a read or a rebuild failed.
///
/// A [`Conflict`](Self::Conflict) is what a command's retry policy is for:
/// another writer appended to the stream since it was read, and a rerun
/// with fresh state is likely to succeed (see [`is_conflict`](Self::is_conflict)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventStoreError {
    /// The stream is not at the version the append expected: someone else
    /// appended since it was read.
    #[error("stream {stream} was expected at {expected} but is at version {actual}: another writer appended since it was read")]
    Conflict {
        /// The stream.
        stream: StreamId,
        /// What the append expected.
        expected: ExpectedVersion,
        /// Where the stream is.
        actual: u64,
    },
    /// A concurrent transaction wrote the stream in a way this one cannot be
    /// ordered after (on PostgreSQL: it began later but appended first, or
    /// the database reported a serialization failure): a rerun, in a new
    /// transaction, is ordered after it.
    #[error("stream {stream} was written by a concurrent transaction ({reason}): run the command again, in a new transaction")]
    Raced {
        /// The stream.
        stream: StreamId,
        /// What happened.
        reason: String,
    },
    /// An event id the store holds already, in another stream or at
    /// another place than this append would put it: ids are unique, and only
    /// the exact same append again is taken as a retry.
    #[error("event id {id} is stored already, elsewhere than this append would put it ({stream})")]
    DuplicateId {
        /// The id.
        id: MessageId,
        /// The stream the append was for.
        stream: StreamId,
    },
    /// The event type is not declared `#[event(serde)]`: it cannot be
    /// written as JSON.
    #[error("event `{event}` cannot be stored: declare it `#[event(serde)]` (with serde's Serialize and Deserialize derived)")]
    NotStorable {
        /// The event type's name.
        event: &'static str,
    },
    /// The event could not be written as JSON.
    #[error("event `{event}` could not be written as JSON")]
    Encode {
        /// The event type's name.
        event: &'static str,
        /// serde's error.
        #[source]
        source: BoxError,
    },
    /// A stored event could not be read back: its JSON does not fit the
    /// type, no upcaster brings its schema version to the code's, or the
    /// aggregate does not apply events of its type.
    #[error("event `{event}` at version {version} of stream {stream} cannot be read: {reason}")]
    Decode {
        /// The stream.
        stream: StreamId,
        /// The event's version in it.
        version: u64,
        /// The event's stored type name.
        event: String,
        /// What is wrong.
        reason: String,
    },
    /// An aggregate recorded an event its [`EventSourced::event_types`](super::EventSourced::event_types)
    /// does not list: it could be stored but never read back. Nothing was
    /// appended.
    #[error("`{aggregate}` recorded `{event}`, which its `EventSourced::event_types` does not list: add `.event::<{event_path}>()` there")]
    Unlisted {
        /// The aggregate type.
        aggregate: &'static str,
        /// The event's name.
        event: &'static str,
        /// The event's Rust path.
        event_path: &'static str,
    },
    /// An event's personal fields could not be protected: its JSON does
    /// not have the subject field the event declares, or a field would not
    /// encrypt. Nothing was appended.
    #[error("event `{event}` cannot be stored with its personal data protected: {reason}")]
    Protect {
        /// The event's type name.
        event: String,
        /// What is wrong.
        reason: String,
    },
    /// The database failed (or is unreachable).
    #[error("the event store failed")]
    Backend(#[source] BoxError),
}

impl EventStoreError {
    /// Whether another writer got there first, so that a rerun with fresh
    /// state may succeed: give it to the command's retry policy.
    ///
    /// ```
    /// use arch_events::event_store::{EventStoreError, ExpectedVersion, StreamId};
    ///
    /// let conflict = EventStoreError::Conflict {
    ///     stream: StreamId::new("product", "LAMP"),
    ///     expected: ExpectedVersion::Exact(3),
    ///     actual: 4,
    /// };
    /// assert!(conflict.is_conflict());
    /// assert_eq!(
    ///     conflict.to_string(),
    ///     "stream product-LAMP was expected at version 3 but is at version 4: another writer appended since it was read",
    /// );
    /// ```
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            EventStoreError::Conflict { .. } | EventStoreError::Raced { .. }
        )
    }

    /// A database's error, boxed.
    pub fn backend(error: impl Into<BoxError>) -> Self {
        EventStoreError::Backend(error.into())
    }
}
