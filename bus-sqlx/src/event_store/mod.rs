//! The event store on SQLite and PostgreSQL: streams with a version each,
//! in one global order that never skips, appended inside a unit of work's
//! own transaction ([`SqlEventStore::append_in`]) or in one of its own.

#[cfg(feature = "postgres")]
mod postgres;
mod rows;
pub(crate) mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::collections::HashSet;

use arch_events::event_store::{protect, reveal, EventSourced, KeyStore, Loaded, SubjectKey};
use arch_events::event_store::{
    Appended, EventStore, EventStoreError, ExpectedVersion, NewEvent, Position, ReadAll,
    RecordedEvent, StoredSnapshot, StreamId,
};
use arch_events::{MessageContext, PendingEvent};
use sqlx::Transaction;

use crate::backend::Backend;
use crate::store::Store;

/// The event store of a [`Store`]'s database: `arch_events`'
/// [`EventStore`] on SQLite or PostgreSQL, whose appends can also join a
/// unit of work's transaction, so that the events, the outbox rows, the
/// staged deliveries and an inline projection's writes commit together.
///
/// On PostgreSQL, [`read_all`](EventStore::read_all) reads only events of
/// transactions older than the oldest one still running: a catch-up reader
/// never skips an event that commits late, and never waits on a timer; a
/// transaction held open stalls readers until it ends, which
/// [`held_back_by`](Self::held_back_by) shows.
///
/// # Moving the database
///
/// On PostgreSQL the order of all events rests on the cluster's
/// transaction ids. `pg_upgrade` and physical replicas keep them; a
/// logical dump and restore (or a move by logical replication) does not,
/// and [`Store::open`] then refuses with
/// [`Error::ForeignTransactionIds`](crate::Error::ForeignTransactionIds)
/// rather than let readers skip new events. To go on after such a move,
/// with no writer running: `UPDATE bus_stream_events SET xid = '1';
/// UPDATE bus_streams SET last_xid = '1'; UPDATE bus_projections SET
/// commit_key = 0, position = 0;` (the events keep their order by
/// position, which follows each stream's versions), and rebuild the
/// catch-up projections' read models from the start.
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use arch_events::event_store::{EventStore, ExpectedVersion, NewEvent, Position, ReadAll, StreamId};
/// use arch_events::{Event, MessageContext, PendingEvent};
/// use arch_events_sqlx::Store;
/// use sqlx::sqlite::SqlitePoolOptions;
///
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
/// #[event(name = "door.opened", serde)]
/// struct Opened { by: String }
///
/// let pool = SqlitePoolOptions::new().connect("sqlite::memory:").await?;
/// let store = Store::open(pool).await?;
/// let events = store.event_store();
/// let door = StreamId::new("door", "front");
/// let opened = NewEvent::encode(&mut PendingEvent::new(Opened { by: "ada".into() }), &MessageContext::root())?;
///
/// // In a transaction of the application's own, with its other writes:
/// let mut tx = store.begin().await?;
/// let appended = events.append_in(&mut tx, &door, ExpectedVersion::NoStream, &[opened]).await?;
/// tx.commit().await?;
/// assert_eq!(appended.to_version, 1);
///
/// let all = events.read_all(&ReadAll::after(Position::START)).await?;
/// assert_eq!(all[0].decode::<Opened>()?.by, "ada");
/// store.close().await;
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
pub struct SqlEventStore<DB: Backend> {
    store: Store<DB>,
    /// Set by [`with_personal_data`](SqlEventStore::with_personal_data).
    personal: bool,
}

impl<DB: Backend> Clone for SqlEventStore<DB> {
    fn clone(&self) -> Self {
        SqlEventStore {
            store: self.store.clone(),
            personal: self.personal,
        }
    }
}

impl<DB: Backend> std::fmt::Debug for SqlEventStore<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlEventStore")
            .field("database", &DB::LABEL)
            .finish()
    }
}

impl<DB: Backend> Store<DB> {
    /// The event store in this store's database.
    pub fn event_store(&self) -> SqlEventStore<DB> {
        SqlEventStore {
            store: self.clone(),
            personal: false,
        }
    }

    /// The subjects' keys of the personal fields of this database's events
    /// (`#[event(serde, personal(..))]`), which
    /// [`SqlEventStore::with_personal_data`] uses: forget a subject here.
    pub fn key_store(&self) -> SqlKeyStore<DB> {
        SqlKeyStore {
            pool: self.pool().clone(),
        }
    }
}

/// The subjects' keys, in a table beside the events (`bus_subject_keys`):
/// [`forget`](KeyStore::forget) deletes a subject's row, and its personal
/// fields read as erased from then on, in every process.
pub struct SqlKeyStore<DB: Backend> {
    pool: sqlx::Pool<DB>,
}

impl<DB: Backend> std::fmt::Debug for SqlKeyStore<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlKeyStore")
            .field("database", &DB::LABEL)
            .finish()
    }
}

/// A subject's key on `connection`, made if it has none.
async fn key_on<DB: Backend>(
    connection: &mut DB::Connection,
    subject: &str,
    create: bool,
) -> Result<Option<SubjectKey>, EventStoreError> {
    let read = |stored: Option<Vec<u8>>| match stored {
        None => Ok(None),
        Some(bytes) => SubjectKey::from_bytes(&bytes).map(Some).ok_or_else(|| {
            EventStoreError::backend(format!("the key of subject `{subject}` is not 32 bytes"))
        }),
    };
    let stored = DB::subject_key(connection, subject)
        .await
        .map_err(EventStoreError::backend)?;
    if stored.is_some() || !create {
        return read(stored);
    }
    DB::insert_subject_key(connection, subject, SubjectKey::generate().as_bytes())
        .await
        .map_err(EventStoreError::backend)?;
    // The one kept, whoever made it.
    let stored = DB::subject_key(connection, subject)
        .await
        .map_err(EventStoreError::backend)?;
    read(stored)
}

#[arch_events::async_trait]
impl<DB: Backend> KeyStore for SqlKeyStore<DB> {
    async fn key(&self, subject: &str) -> Result<Option<SubjectKey>, EventStoreError> {
        let mut connection = self
            .pool
            .acquire()
            .await
            .map_err(EventStoreError::backend)?;
        key_on::<DB>(&mut connection, subject, false).await
    }

    async fn key_or_create(&self, subject: &str) -> Result<SubjectKey, EventStoreError> {
        let mut connection = self
            .pool
            .acquire()
            .await
            .map_err(EventStoreError::backend)?;
        key_on::<DB>(&mut connection, subject, true)
            .await?
            .ok_or_else(|| {
                EventStoreError::backend(format!("no key was kept for subject `{subject}`"))
            })
    }

    async fn forget(&self, subject: &str) -> Result<bool, EventStoreError> {
        DB::delete_subject_key(&self.pool, subject)
            .await
            .map_err(EventStoreError::backend)
    }
}

/// The keys as an append inside a transaction sees them: made in that
/// transaction (on SQLite, the only writer; on PostgreSQL, committed with
/// the events or not at all).
struct InTransaction<'c, DB: Backend> {
    connection: tokio::sync::Mutex<&'c mut DB::Connection>,
}

#[arch_events::async_trait]
impl<DB: Backend> KeyStore for InTransaction<'_, DB> {
    async fn key(&self, subject: &str) -> Result<Option<SubjectKey>, EventStoreError> {
        let mut connection = self.connection.lock().await;
        key_on::<DB>(&mut connection, subject, false).await
    }

    async fn key_or_create(&self, subject: &str) -> Result<SubjectKey, EventStoreError> {
        let mut connection = self.connection.lock().await;
        key_on::<DB>(&mut connection, subject, true)
            .await?
            .ok_or_else(|| {
                EventStoreError::backend(format!("no key was kept for subject `{subject}`"))
            })
    }

    async fn forget(&self, _: &str) -> Result<bool, EventStoreError> {
        Err(EventStoreError::backend(
            "a subject is forgotten through the key store, not inside an append",
        ))
    }
}

impl<DB: Backend> SqlEventStore<DB> {
    /// The same store, with its events' personal fields
    /// (`#[event(serde, personal(..))]`) encrypted under their subjects'
    /// keys ([`Store::key_store`], in the same database; a key is made in
    /// the append's transaction) on every append, and decrypted, or read
    /// as erased once the subject is forgotten, on every read, projections'
    /// included. (For keys kept elsewhere, wrap the store in
    /// [`arch_events::event_store::Protected`].)
    pub fn with_personal_data(mut self) -> Self {
        self.personal = true;
        self
    }

    /// Decrypts what `events` hold of personal data, when this store keeps
    /// personal data.
    pub(crate) async fn reveal(&self, events: &mut [RecordedEvent]) -> Result<(), EventStoreError> {
        if !self.personal {
            return Ok(());
        }
        reveal(&self.store.key_store(), events).await
    }

    /// Appends `events` to `stream` in `transaction` (the unit of work's
    /// own, begun with [`Store::begin`]), if the stream's version passes
    /// `expected`. The contract is [`EventStore::append`]'s; once the
    /// transaction commits, the events are stored.
    ///
    /// On PostgreSQL, an append from a transaction older than the one that
    /// last appended to the stream fails with [`EventStoreError::Raced`]
    /// (a rerun in a new transaction succeeds): a stream's versions follow
    /// the global order. Roll the transaction back on any error.
    pub async fn append_in(
        &self,
        transaction: &mut Transaction<'_, DB>,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Appended, EventStoreError> {
        let mut unique = HashSet::with_capacity(events.len());
        if let Some(event) = events.iter().find(|event| !unique.insert(event.id)) {
            return Err(EventStoreError::DuplicateId {
                id: event.id,
                stream: stream.clone(),
            });
        }
        if self.personal && events.iter().any(|event| event.personal.is_some()) {
            let mut events = events.to_vec();
            let connection: &mut DB::Connection = transaction;
            let keys = InTransaction::<DB> {
                connection: tokio::sync::Mutex::new(connection),
            };
            protect(&keys, &mut events).await?;
            let connection = keys.connection.into_inner();
            return DB::append(connection, stream, expected, &events).await;
        }
        let connection: &mut DB::Connection = transaction;
        DB::append(connection, stream, expected, events).await
    }

    /// Appends what `aggregate` recorded since it was loaded, in
    /// `transaction`, expecting the stream at the version it was loaded at;
    /// returns the events for the unit of work to stage
    /// ([`Store::stage`]) in the same transaction and release after the
    /// commit. A concurrent writer makes it fail with a conflict
    /// ([`EventStoreError::is_conflict`]), which the command's retry policy
    /// turns into a rerun with fresh state.
    pub async fn save_in<A: EventSourced>(
        &self,
        transaction: &mut Transaction<'_, DB>,
        aggregate: &mut Loaded<A>,
        cause: &MessageContext,
    ) -> Result<Vec<PendingEvent>, EventStoreError> {
        let events = aggregate.changes(cause)?;
        if events.is_empty() {
            return Ok(aggregate.unstored());
        }
        let appended = self
            .append_in(
                transaction,
                aggregate.stream(),
                aggregate.expected(),
                &events,
            )
            .await?;
        Ok(aggregate.saved(&appended))
    }

    /// Saves `snapshot` as `stream`'s in `transaction`: with the events it
    /// follows, or not at all (see [`Loaded::snapshot_if_due`]). A newer
    /// snapshot stored already is kept.
    ///
    /// [`Loaded::snapshot_if_due`]: arch_events::event_store::Loaded::snapshot_if_due
    pub async fn save_snapshot_in(
        &self,
        transaction: &mut Transaction<'_, DB>,
        stream: &StreamId,
        snapshot: &StoredSnapshot,
    ) -> Result<(), EventStoreError> {
        let connection: &mut DB::Connection = transaction;
        DB::save_snapshot(connection, stream, snapshot)
            .await
            .map_err(EventStoreError::backend)
    }

    /// The store this event store is in.
    pub(crate) fn store(&self) -> &Store<DB> {
        &self.store
    }

    /// The transactions that hold catch-up readers back now (PostgreSQL;
    /// none on SQLite, whose readers never wait): a transaction that stays
    /// open stalls every reader of all events until it ends. Give it to
    /// your monitoring with the projections' lag.
    pub async fn held_back_by(&self) -> Result<Vec<HeldBy>, EventStoreError> {
        DB::held_back_by(self.store.pool())
            .await
            .map_err(EventStoreError::backend)
    }
}

/// A transaction that holds catch-up readers back, as
/// [`SqlEventStore::held_back_by`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBy {
    /// The backend's process id (`pg_stat_activity.pid`), or the prepared
    /// transaction's global id.
    pub holder: String,
    /// How long the transaction has been open.
    pub open_for: std::time::Duration,
    /// What it runs (or ran last): `pg_stat_activity.query`.
    pub query: String,
}

#[arch_events::async_trait]
impl<DB: Backend> EventStore for SqlEventStore<DB> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Appended, EventStoreError> {
        let mut tx = self.store.begin().await.map_err(EventStoreError::backend)?;
        let appended = self.append_in(&mut tx, stream, expected, events).await?;
        if appended.written {
            tx.commit().await.map_err(EventStoreError::backend)?;
        }
        Ok(appended)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let mut events = DB::read_stream(self.store.pool(), stream, from, limit)
            .await
            .map_err(EventStoreError::backend)?;
        self.reveal(&mut events).await?;
        Ok(events)
    }

    async fn read_all(&self, read: &ReadAll) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let mut events = DB::read_all(self.store.pool(), read)
            .await
            .map_err(EventStoreError::backend)?;
        self.reveal(&mut events).await?;
        Ok(events)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, EventStoreError> {
        DB::stream_version(self.store.pool(), stream)
            .await
            .map_err(EventStoreError::backend)
    }

    async fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> Result<Option<StoredSnapshot>, EventStoreError> {
        DB::load_snapshot(self.store.pool(), stream)
            .await
            .map_err(EventStoreError::backend)
    }

    async fn save_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &StoredSnapshot,
    ) -> Result<(), EventStoreError> {
        let mut connection = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(EventStoreError::backend)?;
        DB::save_snapshot(&mut connection, stream, snapshot)
            .await
            .map_err(EventStoreError::backend)
    }

    async fn head(&self) -> Result<Position, EventStoreError> {
        DB::head(self.store.pool())
            .await
            .map_err(EventStoreError::backend)
    }
}

/// A position read from the database as (commit key, sequence).
pub(crate) fn stored_position((commit, sequence): (i64, i64)) -> Position {
    Position::new(unsigned(commit), unsigned(sequence))
}

/// A count or version read from the database, which never stores a
/// negative one.
pub(crate) fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A count or version for the database.
pub(crate) fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
