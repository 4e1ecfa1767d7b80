//! Catch-up projections: read models kept from all events, in global
//! order, each event applied exactly once.
//!
//! A batch is one transaction: it locks the projection's checkpoint row,
//! reads the events after it, applies each one (the projection's writes go
//! in the same transaction), and moves the checkpoint to the last one. A
//! crash anywhere before the commit rolls everything back, writes and
//! checkpoint together: the next batch starts from the same place, so no
//! event is applied twice and none is skipped. Several processes can run
//! one projection: a batch takes the checkpoint's lock (PostgreSQL: `FOR
//! UPDATE SKIP LOCKED`, the others skip their turn; SQLite: the single
//! writer), so one process at a time applies its events.
//!
//! On PostgreSQL a batch holds a transaction id from its first write to its
//! commit, and every catch-up reader in the cluster (other projections
//! included) waits for it: keep `apply` quick, and put slow work (a call to
//! another service) in an event handler instead.
//!
//! A failing event stops the projection there (the batch rolls back and is
//! retried, with growing pauses): a read model that skipped an event would
//! be wrong for good. Its error is logged each time, and
//! [`SqlEventStore::checkpoint`] shows where it stands.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arch_events::event_store::{EventStoreError, Position, ReadAll, RecordedEvent};
use arch_events::BoxError;
use sqlx::Transaction;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::event_store::SqlEventStore;

/// A read model kept from the event store's events.
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use arch_events::event_store::{EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamId};
/// use arch_events::{BoxError, Event, MessageContext, PendingEvent};
/// use arch_events_sqlx::{Projection, Store};
/// use sqlx::{Sqlite, SqliteConnection};
///
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
/// #[event(name = "shop.ordered", serde)]
/// struct Ordered { amount: i64 }
///
/// /// Orders per customer, in a table of its own.
/// struct OrderTotals;
///
/// #[arch_events::async_trait]
/// impl Projection<Sqlite> for OrderTotals {
///     fn name(&self) -> &str { "order_totals" }
///     async fn apply(&self, tx: &mut SqliteConnection, event: &RecordedEvent) -> Result<(), BoxError> {
///         if event.is::<Ordered>() {
///             let ordered: Ordered = event.decode()?;
///             sqlx::query(
///                 "INSERT INTO order_totals (customer, total) VALUES (?, ?) \
///                  ON CONFLICT (customer) DO UPDATE SET total = total + excluded.total",
///             )
///             .bind(event.stream.id()).bind(ordered.amount)
///             .execute(&mut *tx).await?;
///         }
///         Ok(())
///     }
/// }
///
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// sqlx::query("CREATE TABLE order_totals (customer TEXT PRIMARY KEY, total INTEGER)")
///     .execute(&pool).await?;
/// let store = Store::open(pool.clone()).await?;
/// let events = store.event_store();
/// let order = NewEvent::encode(&mut PendingEvent::new(Ordered { amount: 30 }), &MessageContext::root())?;
/// let appended = events
///     .append(&StreamId::new("customer", "ada"), ExpectedVersion::Any, &[order])
///     .await?;
///
/// let running = events.start_projection(OrderTotals, Duration::from_millis(50));
/// // Read your own write: wait until the projection has applied it.
/// events.wait_for("order_totals", appended.position, Duration::from_secs(5)).await?;
/// let total: i64 = sqlx::query_scalar("SELECT total FROM order_totals WHERE customer = 'ada'")
///     .fetch_one(&pool).await?;
/// assert_eq!(total, 30);
/// running.stop().await;
/// store.close().await;
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[arch_events::async_trait]
pub trait Projection<DB: Backend>: Send + Sync + 'static {
    /// Its name: the key of its checkpoint. A new name starts from the
    /// first event; rename it to rebuild it from scratch.
    fn name(&self) -> &str;

    /// Applies one event, writing through `connection`, which is in the
    /// batch's transaction: the writes commit with the checkpoint that
    /// says they were made. An error rolls the batch back, and it is
    /// tried again.
    async fn apply(
        &self,
        connection: &mut DB::Connection,
        event: &RecordedEvent,
    ) -> Result<(), BoxError>;
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// It applied `events` events; the checkpoint is at `to` now.
    Applied {
        /// How many.
        events: usize,
        /// The new checkpoint.
        to: Position,
    },
    /// Nothing after the checkpoint was readable yet.
    UpToDate,
    /// Another process is applying a batch of this projection now.
    Busy,
}

/// Why a batch failed; nothing of it was committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The projection failed on an event.
    #[error("projection `{projection}` failed on event `{event}` at {position} (stream {stream}, version {version})")]
    Apply {
        /// The projection.
        projection: String,
        /// The event's type name.
        event: String,
        /// Its position.
        position: Position,
        /// Its stream.
        stream: String,
        /// Its version in the stream.
        version: u64,
        /// The projection's error.
        #[source]
        source: BoxError,
    },
    /// The database failed.
    #[error("projection `{projection}`: the database failed")]
    Database {
        /// The projection.
        projection: String,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// The subjects' keys could not be read.
    #[error("projection `{projection}`: the subjects' keys could not be read")]
    Keys {
        /// The projection.
        projection: String,
        /// The key store's error.
        #[source]
        source: EventStoreError,
    },
    /// [`SqlEventStore::wait_for`] gave up.
    #[error("projection `{projection}` did not reach {wanted} within {within:?}: it is at {at}")]
    NotReached {
        /// The projection.
        projection: String,
        /// The position waited for.
        wanted: Position,
        /// Where the projection is.
        at: Position,
        /// How long it waited.
        within: Duration,
    },
}

/// A projection running on a task of its own
/// ([`SqlEventStore::start_projection`]).
#[derive(Debug)]
pub struct RunningProjection {
    stop: Arc<Notify>,
    stopping: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl RunningProjection {
    /// Why its last batch failed, with its causes, while it is stuck on an
    /// event (`None` once a batch succeeds): each failure is also logged
    /// (`tracing`, at `error`).
    pub fn last_error(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops it after its current batch, and waits for it.
    pub async fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_one();
        if let Err(error) = self.task.await {
            tracing::error!(%error, "arch-events-sqlx: a projection's task ended badly");
        }
    }
}

/// Events per batch.
const BATCH: usize = 500;

/// The longest pause after failures.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// The longest pause of [`SqlEventStore::catch_up`] between two looks.
const MAX_WAIT_PAUSE: Duration = Duration::from_millis(50);

impl<DB: Backend> SqlEventStore<DB> {
    /// Applies the next batch of events (up to 500) to `projection`, in
    /// one transaction with its checkpoint.
    pub async fn project<P: Projection<DB> + ?Sized>(
        &self,
        projection: &P,
    ) -> Result<Batch, ProjectionError> {
        let name = projection.name();
        let database = |source| ProjectionError::Database {
            projection: name.to_owned(),
            source,
        };
        let mut tx = self.store().begin().await.map_err(database)?;
        let connection: &mut DB::Connection = &mut tx;
        let Some(checkpoint) = DB::lock_checkpoint(connection, name)
            .await
            .map_err(database)?
        else {
            return Ok(Batch::Busy);
        };
        let mut events = DB::read_all_on(connection, &ReadAll::after(checkpoint).limit(BATCH))
            .await
            .map_err(database)?;
        self.reveal(&mut events)
            .await
            .map_err(|error| ProjectionError::Keys {
                projection: name.to_owned(),
                source: error,
            })?;
        let Some(last) = events.last().map(|event| event.position) else {
            return Ok(Batch::UpToDate);
        };
        for event in &events {
            if let Err(source) = projection.apply(connection, event).await {
                return Err(ProjectionError::Apply {
                    projection: name.to_owned(),
                    event: event.name.clone(),
                    position: event.position,
                    stream: event.stream.to_string(),
                    version: event.version,
                    source,
                });
            }
        }
        DB::save_checkpoint(connection, name, last)
            .await
            .map_err(database)?;
        tx.commit().await.map_err(database)?;
        Ok(Batch::Applied {
            events: events.len(),
            to: last,
        })
    }

    /// Applies to `projection` every event committed before the call, batch
    /// after batch, and returns how many it applied: a command-line rebuild,
    /// or a test's "given these events, then this read model" (see the
    /// example). On PostgreSQL it waits, as every reader does, for the
    /// transactions older than the last event to end; while another process
    /// holds the projection's batch, it waits for that one too.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use arch_events::event_store::{EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamId};
    /// use arch_events::{BoxError, Event, MessageContext, PendingEvent};
    /// use arch_events_sqlx::{Projection, Store};
    /// use sqlx::{Sqlite, SqliteConnection};
    ///
    /// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
    /// #[event(name = "shop.ordered", serde)]
    /// struct Ordered { amount: i64 }
    ///
    /// struct Orders;
    ///
    /// #[arch_events::async_trait]
    /// impl Projection<Sqlite> for Orders {
    ///     fn name(&self) -> &str { "orders" }
    ///     async fn apply(&self, tx: &mut SqliteConnection, event: &RecordedEvent) -> Result<(), BoxError> {
    ///         let ordered: Ordered = event.decode()?;
    ///         sqlx::query("INSERT INTO orders (customer, amount) VALUES (?, ?)")
    ///             .bind(event.stream.id()).bind(ordered.amount)
    ///             .execute(&mut *tx).await?;
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// sqlx::query("CREATE TABLE orders (customer TEXT, amount INTEGER)").execute(&pool).await?;
    /// let store = Store::open(pool.clone()).await?;
    /// let events = store.event_store();
    ///
    /// // Given these events,
    /// for (customer, amount) in [("ada", 30), ("bob", 5), ("ada", 12)] {
    ///     let ordered = NewEvent::encode(&mut PendingEvent::new(Ordered { amount }), &MessageContext::root())?;
    ///     events.append(&StreamId::new("customer", customer), ExpectedVersion::Any, &[ordered]).await?;
    /// }
    /// // when the projection catches up,
    /// assert_eq!(events.catch_up(&Orders).await?, 3);
    /// // then this read model.
    /// let ada: i64 = sqlx::query_scalar("SELECT sum(amount) FROM orders WHERE customer = 'ada'")
    ///     .fetch_one(&pool).await?;
    /// assert_eq!(ada, 42);
    /// assert_eq!(events.catch_up(&Orders).await?, 0, "each event once");
    /// store.close().await;
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub async fn catch_up<P: Projection<DB> + ?Sized>(
        &self,
        projection: &P,
    ) -> Result<usize, ProjectionError> {
        let database = |source| ProjectionError::Database {
            projection: projection.name().to_owned(),
            source,
        };
        let pool = self.store().pool();
        let head = DB::head(pool).await.map_err(database)?;
        // Already there (another caller applied it): no batch, no write.
        if DB::checkpoint(pool, projection.name())
            .await
            .map_err(database)?
            >= head
        {
            return Ok(0);
        }
        let mut applied = 0;
        let mut pause = Duration::from_millis(1);
        loop {
            match self.project(projection).await? {
                Batch::Applied { events, to } => {
                    applied += events;
                    if to >= head {
                        return Ok(applied);
                    }
                }
                Batch::UpToDate | Batch::Busy => {
                    let at = DB::checkpoint(self.store().pool(), projection.name())
                        .await
                        .map_err(database)?;
                    if at >= head {
                        return Ok(applied);
                    }
                    // Another process's batch, or (PostgreSQL) older
                    // transactions still running: look again, less and
                    // less often.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_WAIT_PAUSE);
                }
            }
        }
    }

    /// Runs `projection` on a tokio task until [`RunningProjection::stop`]:
    /// batch after batch while there are events, then a look every `poll`.
    /// A failing batch is retried after a pause that doubles up to 30 s.
    pub fn start_projection<P: Projection<DB>>(
        &self,
        projection: P,
        poll: Duration,
    ) -> RunningProjection {
        let stop = Arc::new(Notify::new());
        let stopping = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(Mutex::new(None));
        let events = self.clone();
        let (stopped, asked, failed) = (stop.clone(), stopping.clone(), failure.clone());
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            // Checked before every batch: a projection that always has
            // events to apply still stops.
            while !asked.load(Ordering::SeqCst) {
                let outcome = events.project(&projection).await;
                // Another process's batch (`Busy`) says nothing of this one.
                match &outcome {
                    Ok(Batch::Busy) => {}
                    outcome => {
                        *failed.lock().unwrap_or_else(PoisonError::into_inner) =
                            outcome.as_ref().err().map(with_causes);
                    }
                }
                let pause = match outcome {
                    Ok(Batch::Applied { .. }) => {
                        failures = 0;
                        continue;
                    }
                    Ok(Batch::UpToDate | Batch::Busy) => {
                        failures = 0;
                        poll
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        let pause = poll
                            .saturating_mul(2u32.saturating_pow(failures.min(16)))
                            .min(MAX_PAUSE);
                        tracing::error!(
                            projection = projection.name(),
                            error = %error,
                            source = ?std::error::Error::source(&error),
                            failures,
                            retry_in = ?pause,
                            "arch-events-sqlx: a projection batch failed; it stops at this event until it succeeds"
                        );
                        pause
                    }
                };
                tokio::select! {
                    () = stopped.notified() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        });
        RunningProjection {
            stop,
            stopping,
            failure,
            task,
        }
    }

    /// Where the projection `name` stands, read in `transaction` with its
    /// checkpoint held until the commit: no batch of it runs meanwhile
    /// (one in progress elsewhere is waited for). With
    /// [`set_checkpoint_in`](Self::set_checkpoint_in), a rebuild swaps a
    /// read model caught up under another name for this one's (see
    /// `example-app rebuild-view`).
    pub async fn checkpoint_in(
        &self,
        transaction: &mut Transaction<'_, DB>,
        name: &str,
    ) -> Result<Position, EventStoreError> {
        let connection: &mut DB::Connection = transaction;
        DB::wait_for_checkpoint(connection, name)
            .await
            .map_err(EventStoreError::backend)
    }

    /// Moves the projection `name` to `position`, in `transaction`: the
    /// next batch applies the events after it ([`Position::START`]: from
    /// the first). Its read model must hold every event up to `position`,
    /// and no other. Waits for a batch of it in progress elsewhere.
    pub async fn set_checkpoint_in(
        &self,
        transaction: &mut Transaction<'_, DB>,
        name: &str,
        position: Position,
    ) -> Result<(), EventStoreError> {
        let connection: &mut DB::Connection = transaction;
        DB::wait_for_checkpoint(connection, name)
            .await
            .map_err(EventStoreError::backend)?;
        let connection: &mut DB::Connection = transaction;
        DB::save_checkpoint(connection, name, position)
            .await
            .map_err(EventStoreError::backend)
    }

    /// Where the projection `name` stands: the position of the last event
    /// it applied, as committed.
    pub async fn checkpoint(&self, name: &str) -> Result<Position, EventStoreError> {
        DB::checkpoint(self.store().pool(), name)
            .await
            .map_err(EventStoreError::backend)
    }

    /// Waits until the projection `name` has applied the event at
    /// `position` (the one an append returned): read your own write. Looks
    /// every 5 ms; [`ProjectionError::NotReached`] after `within`.
    pub async fn wait_for(
        &self,
        name: &str,
        position: Position,
        within: Duration,
    ) -> Result<(), ProjectionError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let at = DB::checkpoint(self.store().pool(), name)
                .await
                .map_err(|source| ProjectionError::Database {
                    projection: name.to_owned(),
                    source,
                })?;
            if at >= position {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProjectionError::NotReached {
                    projection: name.to_owned(),
                    wanted: position,
                    at,
                    within,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// `error` and its sources, `: `-separated.
fn with_causes(error: &ProjectionError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
