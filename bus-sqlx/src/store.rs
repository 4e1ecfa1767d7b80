//! The store: the service's own sqlx pool, the process's place among the
//! processes sharing the database (a node with a heartbeat), the events it
//! is delivering now, and the entry points to everything else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use arch_events::delivery::DeliveryLog;
use arch_events::{async_trait, BoxError, MessageId};
use chrono::{DateTime, Utc};
use sqlx::{Pool, Transaction};
use tokio::sync::{Notify, OwnedMutexGuard};

use crate::backend::Backend;
use crate::dead_letters::DeadLetters;
use crate::error::Error;
use crate::inbox::Inbox;
use crate::outbox::Outbox;
use crate::settings::Settings;

/// The durable side of a service, over its own sqlx pool: staging a
/// commit's events ([`stage`](Self::stage)), the outbox and its relay
/// ([`outbox`](Self::outbox)), the inbox ([`inbox`](Self::inbox)), durable
/// local delivery with its recovery ([`start_recovery`](Self::start_recovery))
/// and the dead letters ([`dead_letters`](Self::dead_letters)).
///
/// Cheap to clone: clones share one pool and one node. Open one per process.
pub struct Store<DB: Backend> {
    pub(crate) inner: Arc<Inner<DB>>,
}

impl<DB: Backend> Clone for Store<DB> {
    fn clone(&self) -> Self {
        Store {
            inner: self.inner.clone(),
        }
    }
}

impl<DB: Backend> std::fmt::Debug for Store<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("database", &DB::LABEL)
            .field("node", &self.inner.node)
            .field("in_flight", &self.inner.in_flight().len())
            .finish()
    }
}

pub(crate) struct Inner<DB: Backend> {
    pub(crate) pool: Pool<DB>,
    /// This process's id among the processes sharing the database.
    pub(crate) node: String,
    pub(crate) settings: Settings,
    /// SQLite: this process's writers take turns (see [`Store::begin`]).
    pub(crate) writer: Arc<tokio::sync::Mutex<()>>,
    /// The stored events this process is delivering now, and whether their
    /// delivery is recorded as finished.
    in_flight: Mutex<HashMap<MessageId, bool>>,
    /// Stored events this process let go of before their delivery finished:
    /// its recovery delivers them again.
    abandoned: Mutex<Vec<MessageId>>,
    /// Wakes the recovery loop when something was abandoned.
    pub(crate) wake: Notify,
    /// Whether a recovery loop runs for this store.
    pub(crate) recovering: AtomicBool,
    /// Whether this process said that nothing recovers what it abandons.
    warned: AtomicBool,
    /// Stops the heartbeat.
    stop: Arc<Notify>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is one insert, removal or push: a
    // poisoned lock's data is whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<DB: Backend> Inner<DB> {
    fn in_flight(&self) -> MutexGuard<'_, HashMap<MessageId, bool>> {
        lock(&self.in_flight)
    }

    /// Counts `id` in flight here; `false` if it was already.
    pub(crate) fn register(&self, id: MessageId) -> bool {
        let mut in_flight = self.in_flight();
        if in_flight.contains_key(&id) {
            return false;
        }
        in_flight.insert(id, false);
        true
    }

    /// Records that `id`'s delivery finished (it stays in flight until let
    /// go).
    pub(crate) fn finished(&self, id: MessageId) {
        if let Some(finished) = self.in_flight().get_mut(&id) {
            *finished = true;
        }
    }

    /// Counts `id` out; an unfinished one is abandoned, for the recovery,
    /// which wakes.
    pub(crate) fn unregister(&self, id: MessageId) {
        if self.abandon(id) {
            self.wake.notify_one();
        }
    }

    /// [`unregister`](Self::unregister), leaving the recovery asleep (it
    /// takes the event up next round: after a failure, not at once).
    pub(crate) fn unregister_quietly(&self, id: MessageId) {
        self.abandon(id);
    }

    /// Counts `id` out; `true` when it was unfinished, and so abandoned.
    fn abandon(&self, id: MessageId) -> bool {
        let finished = self.in_flight().remove(&id);
        if finished != Some(false) {
            return false;
        }
        lock(&self.abandoned).push(id);
        if !self.recovering.load(Ordering::Relaxed) && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                message_id = %id,
                "arch-events-sqlx: an event was left undelivered, and no recovery runs in this process: \
                 call Store::start_recovery, or it waits until this process stops"
            );
        }
        true
    }

    /// Takes the abandoned events.
    pub(crate) fn take_abandoned(&self) -> Vec<MessageId> {
        std::mem::take(&mut *lock(&self.abandoned))
    }

    /// Gives back abandoned events a recovery round could not take up.
    pub(crate) fn abandon_again(&self, ids: impl IntoIterator<Item = MessageId>) {
        lock(&self.abandoned).extend(ids);
    }

    /// This process's turn to write (SQLite), or nothing (PostgreSQL).
    pub(crate) async fn writer_turn(&self) -> Option<OwnedMutexGuard<()>> {
        if DB::ONE_WRITER {
            Some(self.writer.clone().lock_owned().await)
        } else {
            None
        }
    }
}

#[async_trait]
impl<DB: Backend> DeliveryLog for Inner<DB> {
    async fn handled(&self, event: MessageId, handler: &'static str) -> Result<(), BoxError> {
        let _turn = self.writer_turn().await;
        DB::handled(&self.pool, &event.to_string(), handler).await?;
        Ok(())
    }

    async fn delivered(&self, event: MessageId) -> Result<(), BoxError> {
        let _turn = self.writer_turn().await;
        DB::delivered(&self.pool, &event.to_string()).await?;
        self.finished(event);
        Ok(())
    }

    fn let_go(&self, event: MessageId) {
        self.unregister(event);
    }
}

/// A write transaction from [`Store::begin`]: a `sqlx::Transaction` (it
/// derefs to one), holding this process's turn to write on SQLite.
pub struct Tx<DB: Backend> {
    transaction: Transaction<'static, DB>,
    _turn: Option<OwnedMutexGuard<()>>,
}

impl<DB: Backend> Tx<DB> {
    /// Commits, and gives the turn to the next writer.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.transaction.commit().await
    }

    /// Rolls back (dropping it does too).
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.transaction.rollback().await
    }
}

impl<DB: Backend> std::ops::Deref for Tx<DB> {
    type Target = Transaction<'static, DB>;
    fn deref(&self) -> &Self::Target {
        &self.transaction
    }
}

impl<DB: Backend> std::ops::DerefMut for Tx<DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.transaction
    }
}

impl<DB: Backend> std::fmt::Debug for Tx<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").field("database", &DB::LABEL).finish()
    }
}

/// Begins a transaction on `pool` with `statement` (`"BEGIN"`, or one with
/// an isolation level), on a task of its own.
///
/// sqlx 0.8 and 0.9 are not cancel-safe here on PostgreSQL: a future of
/// `Pool::begin` dropped while its `BEGIN` is in flight (an HTTP client that
/// hangs up, a timeout) returns the connection to the pool inside a
/// transaction nothing rolls back, and the next borrowers' statements run
/// in it (transact-rs/sqlx#4393). Here the `BEGIN` always completes; a
/// caller that stopped waiting drops the transaction, which rolls back.
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), sqlx::Error> {
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let mut tx = arch_events_sqlx::begin_on(&pool, "BEGIN").await?;
/// sqlx::query("SELECT 1").execute(&mut *tx).await?;
/// tx.commit().await?;
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
pub async fn begin_on<DB: Backend>(
    pool: &Pool<DB>,
    statement: &'static str,
) -> Result<Transaction<'static, DB>, sqlx::Error> {
    let pool = pool.clone();
    detached(async move { pool.begin_with(statement).await }).await
}

/// Runs `work` on a task of its own: dropping this future does not cut it
/// short (its result is dropped instead).
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'static,
) -> Result<T, sqlx::Error> {
    tokio::spawn(work)
        .await
        .map_err(|error| sqlx::Error::Io(std::io::Error::other(error)))?
}

/// How far behind a backlog is: how many wait, and for how long the oldest
/// has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// How many wait.
    pub count: u64,
    /// How long the oldest has waited (`None` when none waits).
    pub oldest: Option<Duration>,
}

impl Lag {
    pub(crate) fn new(count: i64, oldest: Option<DateTime<Utc>>) -> Self {
        Lag {
            count: u64::try_from(count).unwrap_or(0),
            oldest: oldest.map(|at| (Utc::now() - at).to_std().unwrap_or_default()),
        }
    }
}

impl<DB: Backend> Store<DB> {
    /// Opens the store over `pool`: brings arch-events-sqlx's tables up to date
    /// ([`migrate`](crate::migrate)), registers this process as a node and
    /// starts its heartbeat (a tokio task, for as long as the store lives
    /// or until [`close`](Self::close)).
    pub async fn open(pool: Pool<DB>) -> Result<Self, Error> {
        Self::open_with(pool, Settings::default()).await
    }

    /// [`open`](Self::open), with other timings.
    pub async fn open_with(pool: Pool<DB>, settings: Settings) -> Result<Self, Error> {
        settings.check().map_err(Error::InvalidSettings)?;
        crate::migrate::migrate(&pool).await?;
        if !DB::transaction_ids_are_ours(&pool).await? {
            return Err(Error::ForeignTransactionIds);
        }
        let node = MessageId::new().to_string();
        DB::register_node(&pool, &node, settings.node_timeout).await?;
        let stop = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            pool,
            node,
            settings,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            in_flight: Mutex::default(),
            abandoned: Mutex::default(),
            wake: Notify::new(),
            recovering: AtomicBool::new(false),
            warned: AtomicBool::new(false),
            stop: stop.clone(),
        });
        tokio::spawn(heartbeat(Arc::downgrade(&inner), stop));
        tracing::info!(node = %inner.node, database = DB::LABEL, "arch-events-sqlx store open");
        Ok(Store { inner })
    }

    /// The pool the store runs on.
    pub fn pool(&self) -> &Pool<DB> {
        &self.inner.pool
    }

    /// This process's id among the processes sharing the database.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The store's timings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// What the bus reports to about the events this store staged (they
    /// carry it already; see [`arch_events::delivery::DeliveryLog`]).
    pub fn delivery_log(&self) -> Arc<dyn DeliveryLog> {
        self.inner.clone()
    }

    /// Begins a write transaction: on SQLite `BEGIN IMMEDIATE`, after this
    /// process's earlier writers (its writers queue here, in order, instead
    /// of polling SQLite's lock); on PostgreSQL a plain `BEGIN`.
    ///
    /// Cancel-safe: the `BEGIN` runs on a task of its own (see [`begin_on`]).
    pub async fn begin(&self) -> Result<Tx<DB>, sqlx::Error> {
        let turn = self.inner.writer_turn().await;
        let transaction = DB::begin_write(&self.inner.pool).await?;
        Ok(Tx {
            transaction,
            _turn: turn,
        })
    }

    /// Waits for this process's turn to write (SQLite; nothing to wait for
    /// on PostgreSQL): for a write of the application's own outside
    /// [`begin`](Self::begin), so that it does not contend with the store's.
    pub async fn writer_turn(&self) -> Option<OwnedMutexGuard<()>> {
        self.inner.writer_turn().await
    }

    /// The outbox and its relay.
    pub fn outbox(&self) -> Outbox<DB> {
        Outbox::new(self.clone())
    }

    /// The inbox, for a [`Consumer`](arch_events::transport::Consumer)'s
    /// duplicate check.
    pub fn inbox(&self) -> Inbox<DB> {
        Inbox::new(self.clone())
    }

    /// The dead letters: the bus's sink, listed, replayed, deleted.
    pub fn dead_letters(&self) -> DeadLetters<DB> {
        DeadLetters::new(self.clone())
    }

    /// How many stored events wait for their handlers, and for how long the
    /// oldest has: for monitoring.
    pub async fn delivery_lag(&self) -> Result<Lag, sqlx::Error> {
        let (count, oldest) = DB::pending_events(&self.inner.pool).await?;
        Ok(Lag::new(count, oldest))
    }

    /// How many stored events this process is delivering now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight().len()
    }

    /// Leaves the processes sharing the database: stops the heartbeat and
    /// deletes this node's row, so that another process takes over at once
    /// whatever this one leaves undelivered. Call it last, once the bus is
    /// shut down and the recovery stopped.
    pub async fn close(&self) {
        self.inner.stop.notify_one();
        let _turn = self.inner.writer_turn().await;
        if let Err(error) = DB::remove_node(&self.inner.pool, &self.inner.node).await {
            tracing::warn!(%error, "arch-events-sqlx: this node's row was not removed; it will time out");
        }
    }
}

/// Tells the other processes this one is alive, every `heartbeat_every`,
/// until the store is dropped or closed. Not in the writers' turn (SQLite):
/// a backlog of this process's writes does not hold it up.
async fn heartbeat<DB: Backend>(inner: Weak<Inner<DB>>, stop: Arc<Notify>) {
    let mut last = Instant::now();
    loop {
        let Some(every) = inner.upgrade().map(|inner| inner.settings.heartbeat_every) else {
            return;
        };
        tokio::select! {
            () = stop.notified() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match DB::heartbeat(&inner.pool, &inner.node).await {
            Ok(alive) => {
                let silent = last.elapsed();
                last = Instant::now();
                if !alive || silent > inner.settings.node_timeout {
                    tracing::warn!(
                        node = %inner.node,
                        silent = ?silent,
                        "arch-events-sqlx: this process went without a heartbeat for longer than the \
                         node timeout: others may have taken over some of its events (handlers \
                         that commit a unit of work still have their effect once)"
                    );
                }
                if !alive {
                    let timeout = inner.settings.node_timeout;
                    if let Err(error) = DB::register_node(&inner.pool, &inner.node, timeout).await {
                        tracing::warn!(%error, "arch-events-sqlx: heartbeat failed");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "arch-events-sqlx: heartbeat failed"),
        }
    }
}
