//! What each database brings to the scheduler and the sagas' store: its
//! SQL, behind one sealed trait implemented for `sqlx::Sqlite` and
//! `sqlx::Postgres`. Times are milliseconds since the Unix epoch, on the
//! scheduler's clock.

use arch_events::schedule::ScheduledMessage;
use sqlx::Pool;

/// The scheduler's SQL for one database.
#[arch_events::async_trait]
pub trait SchedulerSql: sqlx::Database + Sized {
    /// The saga's state (`None` once completed) and version, if it ever
    /// started.
    async fn load_saga(
        pool: &Pool<Self>,
        saga: &str,
        id: &str,
    ) -> Result<Option<(Option<String>, i64)>, sqlx::Error>;

    /// Inserts a saga at version 1; `false` if it exists (a racing start).
    async fn insert_saga(
        connection: &mut Self::Connection,
        saga: &str,
        id: &str,
        state: Option<&str>,
    ) -> Result<bool, sqlx::Error>;

    /// Moves a running saga from `expected` to the next version; `false`
    /// if it is not at `expected` any more, or completed.
    async fn update_saga(
        connection: &mut Self::Connection,
        saga: &str,
        id: &str,
        expected: i64,
        state: Option<&str>,
    ) -> Result<bool, sqlx::Error>;

    /// Keeps `messages` (an id kept already is left alone).
    async fn insert_scheduled(
        connection: &mut Self::Connection,
        messages: &[ScheduledMessage],
    ) -> Result<(), sqlx::Error>;

    /// Deletes the waiting message `id` unless a firing holds it (its
    /// lease runs after `now`) or it is parked; `true` if it was deleted.
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
    /// earliest first, leasing them to `node` until `lease_until`.
    async fn claim_due(
        pool: &Pool<Self>,
        node: &str,
        now: i64,
        lease_until: i64,
        max: u32,
    ) -> Result<Vec<ScheduledMessage>, sqlx::Error>;

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

    /// Lets go of the lease `node` holds on `id` (it was not fired).
    async fn let_go(pool: &Pool<Self>, id: &str, node: &str) -> Result<(), sqlx::Error>;

    /// The earliest due time of a message that is not parked.
    async fn next_due(pool: &Pool<Self>) -> Result<Option<i64>, sqlx::Error>;

    /// Every kept message, earliest first.
    async fn scheduled(pool: &Pool<Self>) -> Result<Vec<ScheduledMessage>, sqlx::Error>;
}
