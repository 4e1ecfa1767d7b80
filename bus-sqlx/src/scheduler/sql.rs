//! What each database brings to the scheduler and the sagas' store: its
//! SQL, behind one sealed trait implemented for `sqlx::Sqlite` and
//! `sqlx::Postgres`. Times are milliseconds since the Unix epoch, on the
//! scheduler's clock.

use arch_events::schedule::ScheduledMessage;
use sqlx::Pool;

/// The scheduler's SQL for one database.
#[arch_events::async_trait]
pub trait SchedulerSql: sqlx::Database + Sized {
    /// The saga's state (`None` once completed), version and timeouts (a
    /// JSON array of ids), if it ever started.
    async fn load_saga(
        pool: &Pool<Self>,
        saga: &str,
        id: &str,
    ) -> Result<Option<(Option<String>, i64, String)>, sqlx::Error>;

    /// Inserts a saga at version 1; `false` if it exists (a racing start).
    async fn insert_saga(
        connection: &mut Self::Connection,
        saga: &str,
        id: &str,
        state: Option<&str>,
        timeouts: &str,
    ) -> Result<bool, sqlx::Error>;

    /// Moves a running saga from `expected` to the next version; `false`
    /// if it is not at `expected` any more, or completed.
    async fn update_saga(
        connection: &mut Self::Connection,
        saga: &str,
        id: &str,
        expected: i64,
        state: Option<&str>,
        timeouts: &str,
    ) -> Result<bool, sqlx::Error>;

    /// Keeps `messages` (an id kept already is left alone).
    async fn insert_scheduled(
        connection: &mut Self::Connection,
        messages: &[ScheduledMessage],
    ) -> Result<(), sqlx::Error>;

    /// Whether the stored event `event` is still in `bus_events` (its
    /// delivery not finished).
    async fn holds_event(
        connection: &mut Self::Connection,
        event: &str,
    ) -> Result<bool, sqlx::Error>;

    /// Deletes the waiting or parked message `id` unless a firing holds it
    /// (its lease runs after `now`); `true` if it was deleted.
    async fn cancel_scheduled(
        connection: &mut Self::Connection,
        id: &str,
        now: i64,
    ) -> Result<bool, sqlx::Error>;

    /// Deletes the saga instance's timeouts.
    async fn cancel_saga_timeouts(
        connection: &mut Self::Connection,
        saga: &str,
        id: &str,
    ) -> Result<(), sqlx::Error>;

    /// Takes up to `max` messages due by `now` that no live lease holds,
    /// earliest first, leasing them to `node` until `lease_until`; a row
    /// that does not read back comes with its `seq` and why.
    async fn claim_due(
        pool: &Pool<Self>,
        node: &str,
        now: i64,
        lease_until: i64,
        max: u32,
    ) -> Result<Vec<super::rows::Claimed>, sqlx::Error>;

    /// Parks the row `seq`, which does not read back, with `reason`; its
    /// lease goes.
    async fn park_unreadable(pool: &Pool<Self>, seq: i64, reason: &str) -> Result<(), sqlx::Error>;

    /// Extends the lease `node` holds on `id` to `until`, if it still holds
    /// it at `now`; `false` otherwise (its lease ran out, another process
    /// may have it: it must not be fired here).
    async fn renew_lease(
        pool: &Pool<Self>,
        id: &str,
        node: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, sqlx::Error>;

    /// Makes the parked message `id` due at `now`, its attempts from zero;
    /// `false` if no parked message has it.
    async fn unpark(pool: &Pool<Self>, id: &str, now: i64) -> Result<bool, sqlx::Error>;

    /// Deletes the message `id` if `node` still holds it: `false` when it
    /// was cancelled, or its lease went to another process.
    async fn take_claimed(
        connection: &mut Self::Connection,
        id: &str,
        node: &str,
    ) -> Result<bool, sqlx::Error>;

    /// Records a failed firing of `id` held by `node`: its attempts, the
    /// error, its next due time, whether it is parked; the lease goes.
    #[allow(clippy::too_many_arguments)]
    async fn put_off(
        pool: &Pool<Self>,
        id: &str,
        node: &str,
        attempts: i64,
        error: &str,
        due: i64,
        parked: bool,
    ) -> Result<(), sqlx::Error>;

    /// Keeps the handler retry `id` held by `node` for its attempt
    /// `attempt`, due at `due`; the lease goes.
    async fn retry_later(
        pool: &Pool<Self>,
        id: &str,
        node: &str,
        attempt: u32,
        due: i64,
    ) -> Result<(), sqlx::Error>;

    /// Lets go of the lease `node` holds on `id` (it was not fired).
    async fn let_go(pool: &Pool<Self>, id: &str, node: &str) -> Result<(), sqlx::Error>;

    /// Deletes the rows of sagas that completed before `before`; how many.
    async fn purge_completed(
        pool: &Pool<Self>,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, sqlx::Error>;

    /// The earliest time a message that is not parked can be taken: its
    /// due time, or the end of the lease a firing holds it by.
    async fn next_due(pool: &Pool<Self>) -> Result<Option<i64>, sqlx::Error>;

    /// Every kept message, earliest first.
    async fn scheduled(pool: &Pool<Self>) -> Result<Vec<ScheduledMessage>, sqlx::Error>;
}
