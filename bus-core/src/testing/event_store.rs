//! The event store in memory: the same contract as the SQL stores, for
//! tests and for trying a design out.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use crate::event_store::{
    earlier_append, Appended, EventStore, EventStoreError, ExpectedVersion, NewEvent, Position,
    ReadAll, RecordedEvent, StoredAt, StoredSnapshot, StreamId,
};
use crate::message_id::MessageId;

/// An [`EventStore`] in memory, with the real contract (the conformance
/// suite runs on it): optimistic concurrency, idempotent appends, one
/// global order. Clones are separate stores; share one behind an `Arc`.
///
/// ```
/// use arch_events::event_store::{EventStore, ExpectedVersion, NewEvent, ReadAll, Position, StreamId};
/// use arch_events::testing::InMemoryEventStore;
/// use arch_events::{Event, MessageContext, PendingEvent};
///
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
/// #[event(name = "door.opened", serde)]
/// struct Opened;
///
/// # futures::executor::block_on(async {
/// let store = InMemoryEventStore::new();
/// let door = StreamId::new("door", "front");
/// let opened = NewEvent::encode(&mut PendingEvent::new(Opened), &MessageContext::root())?;
/// let appended = store.append(&door, ExpectedVersion::NoStream, &[opened.clone()]).await?;
/// assert_eq!(appended.to_version, 1);
/// // The same append again is a retry: nothing is written.
/// let again = store.append(&door, ExpectedVersion::NoStream, &[opened]).await?;
/// assert_eq!((again.written, again.to_version), (false, 1));
/// let all = store.read_all(&ReadAll::after(Position::START)).await?;
/// assert_eq!(all.len(), 1);
/// # Ok::<(), arch_events::event_store::EventStoreError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Default)]
pub struct InMemoryEventStore {
    inner: Mutex<Streams>,
}

#[derive(Debug, Default)]
struct Streams {
    /// Every event, in position order.
    all: Vec<RecordedEvent>,
    /// Each stream's latest snapshot.
    snapshots: HashMap<StreamId, StoredSnapshot>,
    /// Each stream's events, as indexes into `all`.
    streams: HashMap<StreamId, Vec<usize>>,
    /// Where each id is in `all`.
    ids: HashMap<MessageId, usize>,
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        InMemoryEventStore::default()
    }

    fn streams(&self) -> MutexGuard<'_, Streams> {
        // An append changes the maps only after every check passed, and
        // none of its steps panics: a poisoned lock's data is whole.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many events the store holds.
    pub fn len(&self) -> usize {
        self.streams().all.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Streams {
    fn version(&self, stream: &StreamId) -> u64 {
        self.streams
            .get(stream)
            .map_or(0, |events| events.len() as u64)
    }

    /// Where the ids of `events` are stored already.
    fn stored(&self, events: &[NewEvent]) -> Vec<StoredAt> {
        events
            .iter()
            .filter_map(|event| self.ids.get(&event.id))
            .map(|&index| {
                let event = &self.all[index];
                StoredAt {
                    id: event.id,
                    stream: event.stream.clone(),
                    version: event.version,
                    position: event.position,
                }
            })
            .collect()
    }
}

#[crate::async_trait]
impl EventStore for InMemoryEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Appended, EventStoreError> {
        let mut streams = self.streams();
        let current = streams.version(stream);
        if events.is_empty() {
            if !expected.admits(current) {
                return Err(EventStoreError::Conflict {
                    stream: stream.clone(),
                    expected,
                    actual: current,
                });
            }
            let position = streams
                .streams
                .get(stream)
                .and_then(|events| events.last())
                .map_or(Position::START, |&last| streams.all[last].position);
            return Ok(Appended {
                from_version: current,
                to_version: current,
                position,
                written: false,
            });
        }
        if let Some(appended) = earlier_append(stream, events, &streams.stored(events))? {
            return Ok(appended);
        }
        let mut unique = std::collections::HashSet::new();
        if let Some(event) = events.iter().find(|event| !unique.insert(event.id)) {
            return Err(EventStoreError::DuplicateId {
                id: event.id,
                stream: stream.clone(),
            });
        }
        if !expected.admits(current) {
            return Err(EventStoreError::Conflict {
                stream: stream.clone(),
                expected,
                actual: current,
            });
        }
        let recorded_at = SystemTime::now();
        let mut position = Position::START;
        for (offset, event) in events.iter().enumerate() {
            let index = streams.all.len();
            let sequence = index as u64 + 1;
            position = Position::new(sequence, sequence);
            streams.all.push(RecordedEvent {
                id: event.id,
                stream: stream.clone(),
                version: current + offset as u64 + 1,
                position,
                name: event.name.clone(),
                schema_version: event.schema_version,
                payload: event.payload.clone(),
                recorded_at,
                correlation_id: event.correlation_id,
                causation_id: event.causation_id,
                metadata: event.metadata.clone(),
            });
            streams.ids.insert(event.id, index);
            streams
                .streams
                .entry(stream.clone())
                .or_default()
                .push(index);
        }
        Ok(Appended {
            from_version: current,
            to_version: current + events.len() as u64,
            position,
            written: true,
        })
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let streams = self.streams();
        let Some(indexes) = streams.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let skip = from.saturating_sub(1).try_into().unwrap_or(usize::MAX);
        Ok(indexes
            .iter()
            .skip(skip)
            .take(limit)
            .map(|&index| streams.all[index].clone())
            .collect())
    }

    async fn read_all(&self, read: &ReadAll) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let streams = self.streams();
        let start = streams
            .all
            .partition_point(|event| event.position <= read.after);
        Ok(streams.all[start..]
            .iter()
            .filter(|event| read.wants(&event.name))
            .take(read.limit.max(1))
            .cloned()
            .collect())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, EventStoreError> {
        Ok(self.streams().version(stream))
    }

    async fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> Result<Option<StoredSnapshot>, EventStoreError> {
        Ok(self.streams().snapshots.get(stream).cloned())
    }

    async fn save_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &StoredSnapshot,
    ) -> Result<(), EventStoreError> {
        let mut streams = self.streams();
        let kept = streams
            .snapshots
            .entry(stream.clone())
            .or_insert_with(|| snapshot.clone());
        if kept.version < snapshot.version {
            *kept = snapshot.clone();
        }
        Ok(())
    }

    async fn head(&self) -> Result<Position, EventStoreError> {
        Ok(self
            .streams()
            .all
            .last()
            .map_or(Position::START, |event| event.position))
    }
}
