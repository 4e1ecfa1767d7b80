//! What each database brings to the event store: its SQL, behind one
//! sealed trait implemented for `sqlx::Sqlite` and `sqlx::Postgres`.

use arch_events::event_store::{
    Appended, EventStoreError, ExpectedVersion, NewEvent, Position, ReadAll, RecordedEvent,
    StoredSnapshot, StreamId,
};
use sqlx::Pool;

use super::HeldBy;

/// The event store's SQL for one database.
#[arch_events::async_trait]
pub trait EventSql: sqlx::Database + Sized {
    /// Appends `events` (ids unique among themselves) to `stream` in the
    /// transaction `connection` is in.
    async fn append(
        connection: &mut Self::Connection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Appended, EventStoreError>;

    async fn read_stream(
        pool: &Pool<Self>,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error>;

    async fn read_all(pool: &Pool<Self>, read: &ReadAll)
        -> Result<Vec<RecordedEvent>, sqlx::Error>;

    /// [`read_all`](Self::read_all), in the transaction `connection` is in.
    async fn read_all_on(
        connection: &mut Self::Connection,
        read: &ReadAll,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error>;

    /// The projection's checkpoint, its row locked to the commit (made at
    /// [`Position::START`] if it has none); `None` when another
    /// transaction holds it (another process is applying a batch).
    async fn lock_checkpoint(
        connection: &mut Self::Connection,
        name: &str,
    ) -> Result<Option<Position>, sqlx::Error>;

    /// [`lock_checkpoint`](Self::lock_checkpoint), waiting for the
    /// transaction that holds it instead of skipping it.
    async fn wait_for_checkpoint(
        connection: &mut Self::Connection,
        name: &str,
    ) -> Result<Position, sqlx::Error>;

    async fn save_checkpoint(
        connection: &mut Self::Connection,
        name: &str,
        position: Position,
    ) -> Result<(), sqlx::Error>;

    /// The projection's checkpoint as committed ([`Position::START`] if it
    /// has none).
    async fn checkpoint(pool: &Pool<Self>, name: &str) -> Result<Position, sqlx::Error>;

    async fn stream_version(pool: &Pool<Self>, stream: &StreamId) -> Result<u64, sqlx::Error>;

    async fn head(pool: &Pool<Self>) -> Result<Position, sqlx::Error>;

    async fn load_snapshot(
        pool: &Pool<Self>,
        stream: &StreamId,
    ) -> Result<Option<StoredSnapshot>, sqlx::Error>;

    /// Upserts, unless the kept one is at a later version.
    async fn save_snapshot(
        connection: &mut Self::Connection,
        stream: &StreamId,
        snapshot: &StoredSnapshot,
    ) -> Result<(), sqlx::Error>;

    async fn subject_key(
        connection: &mut Self::Connection,
        subject: &str,
    ) -> Result<Option<Vec<u8>>, sqlx::Error>;

    /// Keeps `key` unless the subject has one already.
    async fn insert_subject_key(
        connection: &mut Self::Connection,
        subject: &str,
        key: &[u8],
    ) -> Result<(), sqlx::Error>;

    /// `true` when the subject had a key.
    async fn delete_subject_key(pool: &Pool<Self>, subject: &str) -> Result<bool, sqlx::Error>;

    /// `false` when stored events carry transaction ids this database has
    /// not reached (PostgreSQL after a logical restore).
    async fn transaction_ids_are_ours(pool: &Pool<Self>) -> Result<bool, sqlx::Error>;

    async fn held_back_by(pool: &Pool<Self>) -> Result<Vec<HeldBy>, sqlx::Error>;
}
