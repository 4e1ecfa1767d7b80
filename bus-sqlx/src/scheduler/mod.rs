//! The durable scheduler and sagas' store, on SQLite and PostgreSQL
//! ([`SqlScheduler`]): scheduled messages survive a restart and fire once
//! across processes; a saga's state, the events it publishes, the
//! messages it sends and the timeouts it requests commit in one
//! transaction.

#[cfg(feature = "postgres")]
mod postgres;
mod rows;
pub(crate) mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arch_events::saga::{SagaChange, SagaError, SagaRecord, SagaStore};
use arch_events::schedule::{
    Clock, Fired, ScheduledMessage, Scheduler, SchedulerError, SystemClock,
};
use arch_events::{
    async_trait, Bus, EventReleaser, InboundError, MessageContext, MessageId, MessageKind,
    ReplayError,
};
use sqlx::Transaction;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::error::StageError;
use crate::store::Store;
use rows::{due_millis, millis, time};

/// How long a firing process holds a message before another may take it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// How many due messages one round takes, by default.
const BATCH: u32 = 100;

/// The scheduler and sagas' store of a [`Store`]'s database: `arch_events`'
/// [`Scheduler`] and [`SagaStore`], durable, shared by every process on
/// the database.
///
/// - A message is kept in `bus_scheduled` until it fires: due while every
///   process was down, it fires when one comes back.
/// - Each round ([`fire_due`](Scheduler::fire_due), or the loop of
///   [`start`](Self::start)) leases the due messages it takes (PostgreSQL:
///   `FOR UPDATE SKIP LOCKED`): of several processes, one fires each.
/// - An event is handed to durable delivery in the transaction that deletes
///   it (exactly once; its handlers run as any stored event's, again after
///   a crash). A command is dispatched as an inbound message with its own
///   id: its unit of work records the id in the inbox, so a firing repeated
///   after a crash (or a lease that ran out) has its effect once; one found
///   in the inbox is not dispatched again.
/// - A handler's retry (an event handler's retry policy handed the attempt
///   off) is scheduled in the transaction that ends the event's delivery
///   to that handler, when the event is this store's; firing it calls that
///   handler alone, and its unit of work records the message's id in its
///   inbox (so, again, once). One that fails again and hands the next
///   attempt back stays, due then.
/// - A failed command is fired again after a growing pause, and parked
///   after [`MAX_ATTEMPTS`](arch_events::schedule::MAX_ATTEMPTS) (listed by [`pending`](Scheduler::pending),
///   fired again by [`unpark`](Scheduler::unpark)).
/// - Each message is leased again just before it fires, for the whole
///   lease: a batch that takes long does not let another process take the
///   rest of it while this one is still going.
/// - A saga's change commits with its events (staged, with the outbox), the
///   messages it sends, the timeouts it requests and cancels, and the
///   record of the delivery or inbound message it handles.
///
/// Due times are read on the scheduler's clock ([`with_clock`](Self::with_clock):
/// a [`VirtualClock`](arch_events::schedule::VirtualClock) in tests); the
/// processes' clocks should agree to within the lease.
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use arch_events::schedule::{ScheduledMessage, Scheduler};
/// use arch_events::{handler, Bus, Command, Dependencies};
/// use arch_events_sqlx::Store;
///
/// #[derive(Debug, serde::Serialize, serde::Deserialize, Command)]
/// #[command(name = "billing.remind", serde)]
/// struct Remind { customer: String }
///
/// #[handler]
/// fn remind(cmd: Remind, sent: &Mutex<Vec<String>>) -> Result<(), std::convert::Infallible> {
///     sent.lock().unwrap().push(cmd.customer);
///     Ok(())
/// }
///
/// let sent = Arc::new(Mutex::new(Vec::<String>::new()));
/// let bus = Bus::builder().dependencies(Dependencies::new().shared_arc(sent.clone())).build()?;
/// let store = Store::open(sqlx::SqlitePool::connect("sqlite::memory:").await?).await?;
/// let scheduler = store.scheduler();
/// let running = scheduler.start(&bus);
///
/// let due = scheduler.now() + Duration::from_millis(50);
/// scheduler.schedule(ScheduledMessage::command(&Remind { customer: "ada".into() }, due)?).await?;
/// // Fired by the loop once due, then deleted.
/// while !scheduler.pending().await?.is_empty() {
///     tokio::time::sleep(Duration::from_millis(10)).await;
/// }
/// assert_eq!(*sent.lock().unwrap(), ["ada"]);
/// running.stop().await;
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
pub struct SqlScheduler<DB: Backend> {
    store: Store<DB>,
    clock: Arc<dyn Clock>,
    lease: Duration,
    batch: u32,
    /// Wakes this process's loop when something is scheduled here.
    wake: Arc<Notify>,
}

impl<DB: Backend> Clone for SqlScheduler<DB> {
    fn clone(&self) -> Self {
        SqlScheduler {
            store: self.store.clone(),
            clock: self.clock.clone(),
            lease: self.lease,
            batch: self.batch,
            wake: self.wake.clone(),
        }
    }
}

impl<DB: Backend> std::fmt::Debug for SqlScheduler<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlScheduler")
            .field("database", &DB::LABEL)
            .field("lease", &self.lease)
            .finish()
    }
}

impl<DB: Backend> Store<DB> {
    /// The scheduler and sagas' store on this database, on the system's
    /// clock.
    pub fn scheduler(&self) -> SqlScheduler<DB> {
        SqlScheduler {
            store: self.clone(),
            clock: Arc::new(SystemClock),
            lease: DEFAULT_LEASE,
            batch: BATCH,
            wake: Arc::new(Notify::new()),
        }
    }
}

/// Why a scheduled event could not be handed to durable delivery.
enum FireError {
    /// This build does not know it.
    Unknown(String),
    /// Anything else: counted as a failed attempt.
    Failed(String),
}

impl From<sqlx::Error> for FireError {
    fn from(error: sqlx::Error) -> Self {
        FireError::Failed(error.to_string())
    }
}

/// A lease's length in milliseconds.
fn lease_millis(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

/// A saga's timeouts as stored: a JSON array of ids.
fn write_timeouts(timeouts: &[MessageId]) -> String {
    let ids: Vec<String> = timeouts.iter().map(MessageId::to_string).collect();
    serde_json::Value::from(ids).to_string()
}

/// A saga's stored timeouts.
fn read_timeouts(stored: &str) -> Result<Vec<MessageId>, arch_events::BoxError> {
    let ids: Vec<String> = serde_json::from_str(stored)?;
    ids.iter()
        .map(|id| id.parse().map_err(arch_events::BoxError::from))
        .collect()
}

fn store_error(error: sqlx::Error) -> SchedulerError {
    SchedulerError::Store(Box::new(error))
}

fn saga_store_error(error: impl Into<arch_events::BoxError>) -> SagaError {
    SagaError::Store(error.into())
}

/// The scheduler's loop in one process, running.
#[derive(Debug)]
pub struct RunningScheduler {
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl RunningScheduler {
    /// Stops the loop after its current round, and waits for it.
    pub async fn stop(self) {
        self.stop.notify_one();
        if let Err(error) = self.task.await {
            tracing::error!(%error, "arch-events-sqlx: the scheduler loop ended badly");
        }
    }
}

impl<DB: Backend> SqlScheduler<DB> {
    /// The same scheduler, on `clock`.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The same scheduler, holding the messages it fires for `lease`
    /// (default [`DEFAULT_LEASE`]) before another process may take them:
    /// longer than a firing takes.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The same scheduler, taking at most `batch` due messages a round
    /// (default 100; at least 1).
    pub fn batch(mut self, batch: u32) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Keeps `message` in `transaction` (a unit of work's own): it is
    /// scheduled if and only if the transaction commits.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use arch_events::saga::{SagaStore, Sagas};
    /// use arch_events::schedule::{ScheduledMessage, Scheduler, VirtualClock};
    /// use arch_events::{handler, Bus, Command, Dependencies};
    /// use arch_events_sqlx::Store;
    ///
    /// #[derive(Debug, serde::Serialize, serde::Deserialize, Command)]
    /// #[command(name = "billing.invoice", serde)]
    /// struct Invoice { customer: String }
    ///
    /// #[handler]
    /// fn invoice(cmd: Invoice) -> Result<(), std::convert::Infallible> {
    ///     println!("invoicing {}", cmd.customer);
    ///     Ok(())
    /// }
    ///
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// let store = Store::open(pool).await?;
    /// let clock = VirtualClock::new();
    /// let scheduler = Arc::new(store.scheduler().with_clock(clock.clone()));
    /// let sagas: Arc<dyn SagaStore> = scheduler.clone();
    /// let bus = Bus::builder().dependencies(Dependencies::new().shared(Sagas::new(sagas))).build()?;
    ///
    /// // Scheduled in a unit of work's transaction: it exists once that commits.
    /// let mut tx = store.begin().await?;
    /// let message = ScheduledMessage::command(&Invoice { customer: "ada".into() }, clock.now() + Duration::from_secs(30 * 86_400))?;
    /// scheduler.schedule_in(&mut tx, &message).await?;
    /// tx.commit().await?;
    ///
    /// assert_eq!(scheduler.pending().await?.len(), 1);
    /// assert_eq!(clock.advance_and_fire(Duration::from_secs(30 * 86_400), &*scheduler, &bus).await?, 1);
    /// assert!(scheduler.pending().await?.is_empty());
    /// // In a service: `let running = scheduler.start(&bus);` ... `running.stop().await;`
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub async fn schedule_in(
        &self,
        transaction: &mut Transaction<'_, DB>,
        message: &ScheduledMessage,
    ) -> Result<(), SchedulerError> {
        let connection: &mut DB::Connection = transaction;
        DB::insert_scheduled(connection, std::slice::from_ref(message))
            .await
            .map_err(store_error)?;
        self.wake_for(std::slice::from_ref(message));
        Ok(())
    }

    /// Deletes what is left of the sagas that completed more than
    /// `older_than` ago: their ids, kept so that a late message is
    /// recognised as late. A message for a purged saga finds none: a
    /// starting one starts it anew, another does what its `not_found`
    /// says. Run it now and then with a span longer than any message can
    /// arrive late (days); returns how many were deleted.
    pub async fn purge_completed(&self, older_than: Duration) -> Result<u64, SchedulerError> {
        let older_than = chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        // Never before the Unix epoch: a date every database stores.
        let before = chrono::Utc::now()
            .checked_sub_signed(older_than)
            .filter(|before| before.timestamp() > 0)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH);
        let _turn = self.store.writer_turn().await;
        DB::purge_completed(self.store.pool(), before)
            .await
            .map_err(store_error)
    }

    /// Starts this process's loop (a tokio task): a round at once, then
    /// whenever the next message falls due, something is scheduled here,
    /// or a second passes (another process may have scheduled), until the
    /// bus is closed or [`RunningScheduler::stop`].
    pub fn start(&self, bus: &Bus) -> RunningScheduler {
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(run(self.clone(), bus.clone(), stop.clone()));
        RunningScheduler { stop, task }
    }

    /// Fires one claimed message; `true` if it was fired (or failed and
    /// was put off).
    async fn fire(&self, bus: &Bus, message: ScheduledMessage) -> Result<bool, SchedulerError> {
        let node = self.store.node().to_owned();
        let id = message.id().to_string();
        let pool = self.store.pool();
        // A lease for this firing alone: the batch's may have run out while
        // the ones before it fired, and another process may have it now.
        let now = self.clock.now();
        let renewed = {
            let _turn = self.store.writer_turn().await;
            DB::renew_lease(pool, &id, &node, millis(now), self.lease_end(now))
                .await
                .map_err(store_error)?
        };
        if !renewed {
            return Ok(false);
        }
        let outcome = match message.kind() {
            MessageKind::Event if message.handler_retry().is_none() => {
                match self.fire_event(bus, &message).await {
                    Ok(true) => Ok(()),
                    Ok(false) => return Ok(false),
                    Err(FireError::Unknown(error)) => {
                        return self.put_off_unknown(&message, &error).await.map(|()| false)
                    }
                    Err(FireError::Failed(error)) => Err(error),
                }
            }
            _ => {
                if DB::inbox_has(pool, &id).await.map_err(store_error)? {
                    // Its effect committed before a crash, or another
                    // firing's did: done.
                    self.take(&id).await?;
                    return Ok(false);
                }
                match bus.deliver_scheduled(&message).await {
                    Ok(Fired::Again { attempt, after }) => {
                        let due = due_millis(self.clock.now() + after);
                        let _turn = self.store.writer_turn().await;
                        DB::retry_later(pool, &id, &node, attempt, due)
                            .await
                            .map_err(store_error)?;
                        return Ok(true);
                    }
                    Ok(_) => {
                        self.take(&id).await?;
                        Ok(())
                    }
                    Err(InboundError::Closed(_)) => {
                        let _turn = self.store.writer_turn().await;
                        DB::let_go(pool, &id, &node).await.map_err(store_error)?;
                        return Ok(false);
                    }
                    Err(
                        error
                        @ (InboundError::UnknownName(_) | InboundError::UnknownHandler { .. }),
                    ) => {
                        self.put_off_unknown(&message, &error.to_string()).await?;
                        return Ok(false);
                    }
                    Err(error) => Err(error.to_string()),
                }
            }
        };
        match outcome {
            Ok(()) => Ok(true),
            Err(error) => {
                let failed = message.failed(&error, self.clock.now());
                let attempts = i64::from(failed.attempts());
                let due = millis(failed.due());
                let _turn = self.store.writer_turn().await;
                DB::put_off(pool, &id, &node, attempts, &error, due, failed.is_parked())
                    .await
                    .map_err(store_error)?;
                Ok(true)
            }
        }
    }

    /// Deletes a fired message this process holds.
    async fn take(&self, id: &str) -> Result<bool, SchedulerError> {
        let mut tx = self.store.begin().await.map_err(store_error)?;
        let connection: &mut DB::Connection = &mut tx;
        let taken = DB::take_claimed(connection, id, self.store.node())
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(taken)
    }

    /// Wakes this process's loop when one of `messages` is due before its
    /// next look anyway (a saga's `send`, a short delay); a message due
    /// later is found by that look, without a round now.
    fn wake_for(&self, messages: &[ScheduledMessage]) {
        let soon = self.clock.now() + POLL;
        if messages.iter().any(|message| message.due() <= soon) {
            self.wake.notify_one();
        }
    }

    /// A message this build does not know (a newer one, in a rolling
    /// upgrade, scheduled it): put off for another process, a lease later,
    /// without counting an attempt.
    async fn put_off_unknown(
        &self,
        message: &ScheduledMessage,
        error: &str,
    ) -> Result<(), SchedulerError> {
        tracing::warn!(message = message.name(), message_id = %message.id(), %error, "arch-events-sqlx: a scheduled message this build does not know: left for another process");
        let due = self.lease_end(self.clock.now());
        let attempts = i64::from(message.attempts());
        let id = message.id().to_string();
        let _turn = self.store.writer_turn().await;
        DB::put_off(
            self.store.pool(),
            &id,
            self.store.node(),
            attempts,
            error,
            due,
            false,
        )
        .await
        .map_err(store_error)
    }

    /// When a lease taken at `now` ends, in milliseconds.
    fn lease_end(&self, now: SystemTime) -> i64 {
        millis(now).saturating_add(lease_millis(self.lease))
    }

    /// Hands an event to durable delivery in the transaction that deletes
    /// it, then delivers it: `false` when it was cancelled meanwhile (or
    /// its lease went to another process). `Err` holds why it could not be.
    async fn fire_event(&self, bus: &Bus, message: &ScheduledMessage) -> Result<bool, FireError> {
        let event = bus
            .decode_event(message.name(), message.payload())
            .map_err(|error| match error {
                ReplayError::UnknownEvent(_) => FireError::Unknown(error.to_string()),
                other => FireError::Failed(other.to_string()),
            })?;
        let context = message.context();
        let releaser = EventReleaser::new();
        let mut tx = self.store.begin().await.map_err(FireError::from)?;
        let connection: &mut DB::Connection = &mut tx;
        let id = message.id().to_string();
        if !DB::take_claimed(connection, &id, self.store.node())
            .await
            .map_err(FireError::from)?
        {
            // Cancelled, or its lease went to another process.
            return Ok(false);
        }
        let staged = self
            .store
            .stage(
                &mut tx,
                &releaser,
                &context,
                vec![event.with_context(context)],
            )
            .await
            .map_err(|e| FireError::Failed(e.to_string()))?;
        tx.commit().await.map_err(FireError::from)?;
        staged.release();
        for event in releaser.drain() {
            // Its handlers' failures are theirs (retried, dead-lettered);
            // what is left undelivered, the recovery delivers.
            if let Err(error) = bus.redeliver(event, &[]).await {
                tracing::warn!(%error, message_id = %message.id(), "arch-events-sqlx: a scheduled event's delivery stopped; the recovery goes on with it");
            }
        }
        Ok(true)
    }
}

#[async_trait]
impl<DB: Backend> Scheduler for SqlScheduler<DB> {
    async fn schedule(&self, message: ScheduledMessage) -> Result<(), SchedulerError> {
        let mut tx = self.store.begin().await.map_err(store_error)?;
        let connection: &mut DB::Connection = &mut tx;
        if let Some(retry) = message.handler_retry() {
            // The event's delivery to the handler ends with its retry
            // scheduled, in one transaction, when the event is this
            // store's (a no-op otherwise: the bus tells the event's own
            // store next).
            let event = retry.event_id.to_string();
            let recorded = DB::record_delivery(connection, &event, &retry.handler, false)
                .await
                .map_err(store_error)?;
            let ours = message.retries_an_event_of(&self.store.delivery_log());
            if !recorded
                && (ours
                    || DB::holds_event(connection, &event)
                        .await
                        .map_err(store_error)?)
            {
                // Another delivery of the event (a recovery's) recorded this
                // handler meanwhile (it succeeded, or handed off a retry of
                // its own), or finished the event: nothing left to retry.
                tracing::info!(
                    handler = %retry.handler,
                    message_id = %retry.event_id,
                    "arch-events-sqlx: the handler's delivery was recorded meanwhile: no retry scheduled"
                );
                return Ok(());
            }
        }
        DB::insert_scheduled(connection, std::slice::from_ref(&message))
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        self.wake_for(std::slice::from_ref(&message));
        Ok(())
    }

    async fn cancel(&self, id: MessageId) -> Result<bool, SchedulerError> {
        let mut tx = self.store.begin().await.map_err(store_error)?;
        let connection: &mut DB::Connection = &mut tx;
        let cancelled = DB::cancel_scheduled(connection, &id.to_string(), millis(self.clock.now()))
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(cancelled)
    }

    async fn fire_due(&self, bus: &Bus) -> Result<usize, SchedulerError> {
        let at = self.clock.now();
        // A read first: a round with nothing to take writes nothing (on
        // SQLite, it does not take the database's one writer's turn).
        match self.next_due().await? {
            Some(next) if next <= at => {}
            _ => return Ok(0),
        }
        let (now, lease_until) = (millis(at), self.lease_end(at));
        let pool = self.store.pool();
        let mut claimed = Vec::new();
        let turn = self.store.writer_turn().await;
        let rows = DB::claim_due(pool, self.store.node(), now, lease_until, self.batch)
            .await
            .map_err(store_error)?;
        for row in rows {
            match row {
                Ok(message) => claimed.push(message),
                Err((seq, error)) => {
                    tracing::error!(seq, %error, "arch-events-sqlx: a scheduled message does not read back: parked");
                    DB::park_unreadable(pool, seq, &error.to_string())
                        .await
                        .map_err(store_error)?;
                }
            }
        }
        drop(turn);
        claimed.sort_by_key(|message| (message.due(), message.id()));
        let mut fired = 0;
        for message in claimed {
            if self.fire(bus, message).await? {
                fired += 1;
            }
        }
        Ok(fired)
    }

    async fn unpark(&self, id: MessageId) -> Result<bool, SchedulerError> {
        let now = millis(self.clock.now());
        let unparked = {
            let _turn = self.store.writer_turn().await;
            DB::unpark(self.store.pool(), &id.to_string(), now)
                .await
                .map_err(store_error)?
        };
        if unparked {
            self.wake.notify_one();
        }
        Ok(unparked)
    }

    async fn next_due(&self) -> Result<Option<SystemTime>, SchedulerError> {
        Ok(DB::next_due(self.store.pool())
            .await
            .map_err(store_error)?
            .map(time))
    }

    async fn pending(&self) -> Result<Vec<ScheduledMessage>, SchedulerError> {
        DB::scheduled(self.store.pool()).await.map_err(store_error)
    }

    fn now(&self) -> SystemTime {
        self.clock.now()
    }
}

#[async_trait]
impl<DB: Backend> SagaStore for SqlScheduler<DB> {
    async fn load(&self, saga: &'static str, id: &str) -> Result<Option<SagaRecord>, SagaError> {
        let row = DB::load_saga(self.store.pool(), saga, id)
            .await
            .map_err(saga_store_error)?;
        let Some((state, version, timeouts)) = row else {
            return Ok(None);
        };
        let version = u64::try_from(version).unwrap_or(0);
        Ok(Some(match state {
            Some(state) => SagaRecord::Active {
                state,
                version,
                timeouts: read_timeouts(&timeouts).map_err(saga_store_error)?,
            },
            None => SagaRecord::Completed { version },
        }))
    }

    async fn commit(
        &self,
        change: SagaChange,
        releaser: &EventReleaser,
        flow: &MessageContext,
    ) -> Result<(), SagaError> {
        let saga = change.saga;
        let mut tx = self.store.begin().await.map_err(saga_store_error)?;
        let connection: &mut DB::Connection = &mut tx;
        let state = change.state.as_deref();
        let timeouts = write_timeouts(&change.timeouts);
        let written = match change.expected {
            None => DB::insert_saga(connection, saga, &change.id, state, &timeouts).await,
            Some(version) => {
                let version = i64::try_from(version).unwrap_or(i64::MAX);
                DB::update_saga(connection, saga, &change.id, version, state, &timeouts).await
            }
        }
        .map_err(saga_store_error)?;
        if !written {
            return Err(SagaError::Conflict {
                saga,
                id: change.id,
            });
        }
        DB::insert_scheduled(connection, &change.scheduled)
            .await
            .map_err(saga_store_error)?;
        if state.is_none() {
            // After the inserts: a timeout requested by the step that
            // completes goes too, as in memory.
            DB::cancel_saga_timeouts(connection, saga, &change.id)
                .await
                .map_err(saga_store_error)?;
        }
        let now = millis(self.clock.now());
        for id in &change.cancelled {
            DB::cancel_scheduled(connection, &id.to_string(), now)
                .await
                .map_err(saga_store_error)?;
        }
        let staged = match self
            .store
            .stage(&mut tx, releaser, flow, change.events)
            .await
        {
            Ok(staged) => staged,
            Err(StageError::Duplicate { .. }) => return Err(SagaError::Duplicate { saga }),
            Err(error) => return Err(saga_store_error(error)),
        };
        tx.commit().await.map_err(saga_store_error)?;
        staged.release();
        self.wake_for(&change.scheduled);
        Ok(())
    }

    fn now(&self) -> SystemTime {
        self.clock.now()
    }
}

/// How often a process's loop looks for what other processes scheduled.
const POLL: Duration = Duration::from_secs(1);

async fn run<DB: Backend>(scheduler: SqlScheduler<DB>, bus: Bus, stop: Arc<Notify>) {
    const IDLE: Duration = Duration::from_millis(10);
    loop {
        if bus.is_closed() {
            return;
        }
        let fired = match scheduler.fire_due(&bus).await {
            Ok(fired) => fired,
            Err(error) => {
                tracing::warn!(%error, "arch-events-sqlx: scheduler round failed; trying again");
                0
            }
        };
        let pause = match scheduler.next_due().await {
            Ok(Some(due)) => due
                .duration_since(scheduler.clock.now())
                .unwrap_or_default()
                .min(POLL),
            _ => POLL,
        };
        // Never less than this after a round that fired nothing: the loop
        // does not spin on a message it cannot take.
        let pause = if fired == 0 { pause.max(IDLE) } else { pause };
        tokio::select! {
            () = stop.notified() => return,
            () = scheduler.wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}
