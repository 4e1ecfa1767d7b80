//! The event store's contract, which every backend keeps (in memory,
//! SQLite, PostgreSQL) and one conformance suite checks on each.

use super::envelope::{NewEvent, Position, RecordedEvent};
use super::error::EventStoreError;
use super::snapshot::StoredSnapshot;
use super::stream::{ExpectedVersion, StreamId};

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version before the append.
    pub from_version: u64,
    /// The stream's version after it: its last event's.
    pub to_version: u64,
    /// The global position of the last event appended (or of the stream's
    /// last event, when nothing was appended): a caller waits for a
    /// projection to reach it to read its own write.
    pub position: Position,
    /// `false` when every event was stored already, by an earlier run of
    /// the same append (a retry): nothing was written.
    pub written: bool,
}

/// Where an event id is stored already: what a backend found when it
/// looked up an append's ids, for [`earlier_append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAt {
    /// The event's id.
    pub id: crate::MessageId,
    /// Its stream.
    pub stream: StreamId,
    /// Its version in the stream.
    pub version: u64,
    /// Its global position.
    pub position: Position,
}

/// The idempotency rule of [`EventStore::append`], for a backend: given
/// where the ids of `events` are stored already (`found`, any order),
/// `None` when none is (a new append); the earlier append's outcome
/// (`written: false`) when all are, as `stream`'s events at consecutive
/// versions in this order (a retry); [`EventStoreError::DuplicateId`]
/// otherwise.
pub fn earlier_append(
    stream: &StreamId,
    events: &[NewEvent],
    found: &[StoredAt],
) -> Result<Option<Appended>, EventStoreError> {
    let Some(known) = found.first().map(|found| found.id) else {
        return Ok(None);
    };
    let duplicate = || EventStoreError::DuplicateId {
        id: known,
        stream: stream.clone(),
    };
    let by_id: std::collections::HashMap<crate::MessageId, &StoredAt> =
        found.iter().map(|found| (found.id, found)).collect();
    let stored: Option<Vec<&StoredAt>> = events
        .iter()
        .map(|event| by_id.get(&event.id).copied())
        .collect();
    let (Some(first), Some(last)) = (
        stored.as_ref().and_then(|stored| stored.first()),
        stored.as_ref().and_then(|stored| stored.last()),
    ) else {
        return Err(duplicate());
    };
    let in_place = stored.iter().flatten().enumerate().all(|(offset, found)| {
        found.stream == *stream && found.version == first.version + offset as u64
    });
    if !in_place {
        return Err(duplicate());
    }
    Ok(Some(Appended {
        from_version: first.version.saturating_sub(1),
        to_version: last.version,
        position: last.position,
        written: false,
    }))
}

/// Which events [`EventStore::read_all`] reads.
///
/// ```
/// use arch_events::event_store::{Position, ReadAll};
///
/// let read = ReadAll::after(Position::START).limit(100).types(["shop.shipped"]);
/// assert!(read.wants("shop.shipped"));
/// assert!(!read.wants("shop.ordered"));
/// assert!(ReadAll::after(Position::START).wants("anything"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadAll {
    /// Only events after this position.
    pub after: Position,
    /// At most this many.
    pub limit: usize,
    /// Only events with one of these type names; every type when empty.
    pub types: Vec<String>,
}

impl ReadAll {
    /// Every event after `after`, in pages of 1,000.
    pub fn after(after: Position) -> Self {
        ReadAll {
            after,
            limit: 1000,
            types: Vec::new(),
        }
    }

    /// At most `limit` events (at least 1).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit.max(1);
        self
    }

    /// Only events of these types (by name).
    pub fn types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Whether an event of type `name` is one this read wants.
    pub fn wants(&self, name: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|wanted| wanted == name)
    }
}

/// An event store: streams of events, each with its own version, in one
/// global order.
///
/// The contract (the conformance suite checks it on every backend):
/// - **Append** writes all of its events or none, at the stream's next
///   versions, only if the stream's version passes `expected`; otherwise
///   [`EventStoreError::Conflict`], with the actual version.
/// - **Idempotent**: an append whose event ids are stored already, as the
///   same stream's events in the same order, is a retry of an append that
///   succeeded: it writes nothing and returns what was written
///   (`written: false`), whatever `expected` says. Any other use of a
///   stored id is [`EventStoreError::DuplicateId`].
/// - **Read a stream**: its events from a version, in version order.
/// - **Read all**: every event after a [`Position`], in position order;
///   a reader that goes on from the last position it saw never misses an
///   event, however concurrent the writers were, and never sees one twice.
#[crate::async_trait]
pub trait EventStore: Send + Sync {
    /// Appends `events` to `stream` if its version passes `expected`.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Appended, EventStoreError>;

    /// Up to `limit` events of `stream` from version `from` on (1 for
    /// the whole stream), in version order; none for a stream that does
    /// not exist.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, EventStoreError>;

    /// The events `read` asks for, in position order.
    async fn read_all(&self, read: &ReadAll) -> Result<Vec<RecordedEvent>, EventStoreError>;

    /// The stream's version: 0 when it has no event.
    async fn stream_version(&self, stream: &StreamId) -> Result<u64, EventStoreError>;

    /// The position of the last event committed now ([`Position::START`]
    /// when there is none). Every event committed before this call is at
    /// or before it, and [`read_all`](Self::read_all) reaches it once the
    /// transactions older than it have ended (at once where commits are
    /// serial): a caller that read up to it has read everything committed
    /// before it asked.
    async fn head(&self) -> Result<Position, EventStoreError>;

    /// The stream's latest snapshot, if any.
    async fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> Result<Option<StoredSnapshot>, EventStoreError>;

    /// Keeps `snapshot` as the stream's latest, unless one at a later
    /// version is kept already.
    async fn save_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &StoredSnapshot,
    ) -> Result<(), EventStoreError>;
}

/// A shared store is a store: `Arc<InMemoryEventStore>`, `Arc<dyn EventStore>`.
#[crate::async_trait]
impl<S: EventStore + ?Sized> EventStore for std::sync::Arc<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Appended, EventStoreError> {
        (**self).append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        (**self).read_stream(stream, from, limit).await
    }

    async fn read_all(&self, read: &ReadAll) -> Result<Vec<RecordedEvent>, EventStoreError> {
        (**self).read_all(read).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, EventStoreError> {
        (**self).stream_version(stream).await
    }

    async fn head(&self) -> Result<Position, EventStoreError> {
        (**self).head().await
    }

    async fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> Result<Option<StoredSnapshot>, EventStoreError> {
        (**self).load_snapshot(stream).await
    }

    async fn save_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &StoredSnapshot,
    ) -> Result<(), EventStoreError> {
        (**self).save_snapshot(stream, snapshot).await
    }
}
