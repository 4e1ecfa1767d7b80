//! The conformance suite of arch-events-sqlx: what every database it runs on must
//! do, written once and run on each (SQLite in `bus-sqlx/tests/sqlite.rs`,
//! PostgreSQL in the tests package's `arch_events_sqlx_postgres` target, under the
//! `services` feature); [`conformance_tests!`] expands to every test below
//! for one database type, given an `async fn` that makes an empty
//! database. Its ledger's handlers register at link time: only the suite's
//! test targets link this crate.
//!
//! The suite's service is a small ledger: `Deposit` writes a row and stages
//! `Deposited` (internal) and, when asked, `Announced` (external, stream
//! `deposits`); `project_balance` keeps a balance table in its own
//! transaction (its effect happens once), `tally_deposit` counts in memory
//! (at-least-once); `Flagged` has a handler whose mail server can be down.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

mod dialects;
pub mod event_store;
mod hand_off;
pub mod projection;
pub mod saga;

pub use dialects::fresh_sqlite;
pub use hand_off::*;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arch_events::transport::{
    Consumer, Handled, InMemoryBroker, OutboundMessage, Publisher, TransportError,
};
use arch_events::{
    async_trait, handler, Bus, Command, Dependencies, DispatchError, Event, EventReleaser,
    MessageContext, MessageId, PendingEvent, Query, Registrations, RetryPolicy, Scoped,
};
use arch_events_sqlx::{
    Backend, DeadLetterError, DeadLetterRecord, DeadLetterStore, Error, Settings, StageError, Store,
};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sqlx::{Pool, Transaction};

/// An empty database for one test, and whatever keeps it alive (a
/// temporary directory, a guard that drops a PostgreSQL database).
pub struct TestDatabase {
    /// Where it is.
    pub url: String,
    /// Dropped with the test.
    pub keep: Box<dyn std::any::Any + Send>,
}

impl TestDatabase {
    /// A new pool on it (a restarted process opens one of its own).
    pub async fn pool<DB: Ledger>(&self) -> Pool<DB> {
        DB::connect(&self.url).await
    }
}

/// Expands to one `#[tokio::test]` per conformance test, on the database
/// type `$db`, each on a fresh database from `$fresh`.
#[macro_export]
macro_rules! conformance_tests {
    ($db:ty, $fresh:path) => {
        $crate::conformance_tests!(@each $db, $fresh;
            the_crates_migrations_live_beside_the_applications_own,
            migrations_run_once_when_processes_start_together,
            every_handler_of_a_committed_event_runs_once_and_its_record_is_gone,
            events_committed_before_a_crash_are_delivered_by_another_process,
            a_crash_between_two_handlers_reruns_only_the_one_that_did_not_complete,
            two_processes_never_redeliver_one_event_at_once,
            events_of_a_command_that_failed_after_its_commit_are_recovered_by_its_own_process,
            a_handler_whose_delivery_was_recorded_already_is_a_duplicate_not_a_failure,
            two_deliveries_of_one_event_at_once_have_its_committed_effects_once,
            an_event_of_this_process_that_nothing_here_delivers_is_found_again,
            timings_that_cannot_work_are_refused,
            a_live_process_keeps_its_events_whatever_the_others_timeouts,
            an_event_that_keeps_crashing_its_process_goes_to_the_dead_letters,
            an_event_this_bus_cannot_read_goes_to_the_dead_letters,
            a_bus_with_an_event_that_cannot_be_stored_is_refused,
            an_unstorable_event_fails_the_commit_with_the_fix,
            a_query_that_stages_events_writes_nothing,
            an_external_event_goes_to_the_outbox_in_the_commit_and_is_relayed_once,
            an_event_committed_before_a_crash_is_published_after_the_restart,
            a_rolled_back_commit_writes_nothing_to_the_outbox,
            two_relays_never_publish_one_row_twice,
            a_failed_publish_leaves_the_rest_for_the_next_round,
            a_broker_that_does_not_answer_fails_the_round_and_frees_its_rows,
            sent_rows_are_purged_once_old_and_unsent_ones_never,
            the_outbox_lag_says_how_many_wait_and_for_how_long,
            a_redelivered_message_is_handled_once,
            a_failing_handler_is_kept_and_replayed_once_the_fault_is_gone,
            a_projection_replayed_twice_has_its_effect_once,
            a_dead_letter_is_claimed_once_until_its_claim_runs_out,
            a_dead_letter_given_up_on_is_deleted_unless_it_is_being_replayed,
            a_handed_off_retry_ends_the_events_delivery_and_commits_once_when_due,
            a_handed_off_retry_fired_twice_has_its_committed_effect_once,
            a_handed_off_retry_that_fails_again_waits_then_is_a_dead_letter,
            a_handed_off_retry_is_made_once_by_the_processes_started_after_a_stop,
            a_retry_of_a_handler_whose_delivery_was_recorded_meanwhile_is_not_scheduled,
            a_retry_of_an_event_another_delivery_finished_meanwhile_is_not_scheduled,
            a_scheduled_row_that_does_not_read_back_is_parked_not_fired,
        );
    };
    (@each $db:ty, $fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::$name::<$db>($fresh().await).await
            }
        )*
    };
}

// ---------------------------------------------------------------------------
// The ledger: its SQL per database, its messages and handlers
// ---------------------------------------------------------------------------

/// The ledger's own SQL on one database (arch-events-sqlx brings the rest).
#[async_trait]
pub trait Ledger: Backend {
    /// A pool on `url`.
    async fn connect(url: &str) -> Pool<Self>;
    /// Creates the ledger's tables (what an application's own migrations do).
    async fn create_tables(pool: &Pool<Self>);
    /// Writes a deposit.
    async fn insert_deposit(
        tx: &mut Transaction<'_, Self>,
        account: &str,
        amount: i64,
    ) -> Result<(), sqlx::Error>;
    /// Adds to an account's projected balance.
    async fn add_to_balance(
        tx: &mut Transaction<'_, Self>,
        account: &str,
        amount: i64,
    ) -> Result<(), sqlx::Error>;
    /// A projected balance.
    async fn balance(pool: &Pool<Self>, account: &str) -> i64;
    /// The projection suite's `totals` table: the sum of `total` and of
    /// `applied` (0, 0 when empty).
    async fn balance_sum(pool: &Pool<Self>) -> (i64, i64);
    /// Runs a statement of the test's own in the transaction `connection`
    /// is in.
    async fn execute_in(connection: &mut Self::Connection, sql: &str) -> Result<(), sqlx::Error>;
    /// `SELECT count(*) FROM <table>`.
    async fn count(pool: &Pool<Self>, table: &str) -> i64;
    /// Runs a statement of the test's own.
    async fn execute(pool: &Pool<Self>, sql: &str);
    /// The versions in sqlx's own `_sqlx_migrations` table.
    async fn sqlx_versions(pool: &Pool<Self>) -> Vec<i64>;
    /// The versions in arch-events-sqlx's `bus_sqlx_migrations` table.
    async fn store_versions(pool: &Pool<Self>) -> Vec<i64>;
    /// How many migrations arch-events-sqlx has for this database.
    const STORE_MIGRATIONS: i64;
    /// Runs the application's own sqlx migrations, from `dir`.
    async fn app_migrate(pool: &Pool<Self>, dir: &std::path::Path);
}

/// Why a deposit failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("failed after its commit")]
    AfterCommit,
    #[error("the projection's table is down")]
    Down,
}

#[derive(Debug, Clone, Deserialize, Command)]
#[command(error = LedgerError, external = "deposits.in")]
pub struct Deposit {
    pub account: String,
    pub amount: i64,
    #[serde(default)]
    pub announce: bool,
    /// Fails the command after its commit.
    #[serde(default)]
    pub fail_after_commit: bool,
    /// Also flags the account.
    #[serde(default)]
    pub flag: bool,
    /// How many `Deposited` events to raise.
    #[serde(default = "one")]
    pub events: u32,
}

fn one() -> u32 {
    1
}

impl Deposit {
    pub fn of(account: &str, amount: i64) -> Self {
        Deposit {
            account: account.into(),
            amount,
            announce: false,
            fail_after_commit: false,
            flag: false,
            events: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "ledger.deposited", serde)]
pub struct Deposited {
    pub account: String,
    pub amount: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "ledger.announced", external = "deposits")]
pub struct Announced {
    pub account: String,
    pub amount: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "ledger.flagged", serde)]
pub struct Flagged {
    pub account: String,
}

/// An event that cannot be stored (no `serde`).
#[derive(Debug, Clone, Event)]
#[event(name = "ledger.unstorable")]
pub struct Unstorable;

/// What the plain handlers did.
#[derive(Default)]
pub struct Tally {
    /// `tally_deposit` calls, by event id.
    pub counted: Mutex<BTreeMap<MessageId, usize>>,
    /// Mails sent by `notify_flagged`.
    pub mails: AtomicUsize,
    /// `notify_flagged`'s mail server is down.
    pub mail_down: AtomicBool,
    /// `project_balance` fails.
    pub projection_down: AtomicBool,
    /// `project_balance` calls: the event's id and the attempt.
    pub projected: Mutex<Vec<(MessageId, u32)>>,
    /// `tally_deposit` waits here (never, unless a test closes it).
    pub gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl Tally {
    pub fn counted(&self) -> BTreeMap<MessageId, usize> {
        self.counted.lock().unwrap().clone()
    }

    /// How many events were counted, each once.
    pub fn counted_once(&self) -> usize {
        let counted = self.counted();
        assert!(
            counted.values().all(|n| *n == 1),
            "an event was counted twice: {counted:?}"
        );
        counted.len()
    }
}

/// The unit of work the ledger's handlers take, whatever the database.
#[async_trait]
pub trait LedgerUow: Send {
    async fn deposit(&mut self, command: &Deposit) -> Result<(), StageError>;
    async fn project(&mut self, event: &Deposited) -> Result<(), StageError>;
}

struct SqlLedger<DB: Ledger> {
    store: Store<DB>,
    releaser: EventReleaser,
    flow: MessageContext,
}

#[async_trait]
impl<DB: Ledger> LedgerUow for SqlLedger<DB> {
    async fn deposit(&mut self, command: &Deposit) -> Result<(), StageError> {
        let mut tx = self.store.begin().await?;
        DB::insert_deposit(&mut tx, &command.account, command.amount).await?;
        let mut events: Vec<PendingEvent> = (0..command.events)
            .map(|_| {
                PendingEvent::new(Deposited {
                    account: command.account.clone(),
                    amount: command.amount,
                })
            })
            .collect();
        if command.announce {
            events.push(PendingEvent::new(Announced {
                account: command.account.clone(),
                amount: command.amount,
            }));
        }
        if command.flag {
            events.push(PendingEvent::new(Flagged {
                account: command.account.clone(),
            }));
        }
        let staged = self
            .store
            .stage(&mut tx, &self.releaser, &self.flow, events)
            .await?;
        tx.commit().await?;
        staged.release();
        Ok(())
    }

    async fn project(&mut self, event: &Deposited) -> Result<(), StageError> {
        let mut tx = self.store.begin().await?;
        DB::add_to_balance(&mut tx, &event.account, event.amount).await?;
        let staged = self
            .store
            .stage(&mut tx, &self.releaser, &self.flow, Vec::new())
            .await?;
        tx.commit().await?;
        staged.release();
        Ok(())
    }
}

#[handler]
pub async fn deposit(cmd: Deposit, mut uow: Scoped<dyn LedgerUow>) -> Result<(), LedgerError> {
    uow.deposit(&cmd).await?;
    if cmd.fail_after_commit {
        return Err(LedgerError::AfterCommit);
    }
    Ok(())
}

/// A handler's path, as the bus names it.
fn handler_name(name: &str) -> String {
    format!("{}::{name}", module_path!())
}

/// Commits a unit of work: its effect happens once.
#[handler]
pub async fn project_balance(
    event: &Deposited,
    context: MessageContext,
    mut uow: Scoped<dyn LedgerUow>,
    tally: &Tally,
) -> Result<(), LedgerError> {
    tally
        .projected
        .lock()
        .unwrap()
        .push((context.message_id(), context.attempt()));
    if tally.projection_down.load(Ordering::SeqCst) {
        return Err(LedgerError::Down);
    }
    Ok(uow.project(event).await?)
}

/// At-least-once: counts in memory (after `project_balance`: the bus calls
/// an event's handlers in path order).
#[handler]
pub async fn tally_deposit(event: &Deposited, context: MessageContext, tally: &Tally) {
    if let Some(gate) = &tally.gate {
        drop(gate.acquire().await);
    }
    *tally
        .counted
        .lock()
        .unwrap()
        .entry(context.message_id())
        .or_default() += 1;
    let _ = event;
}

#[handler]
pub fn notify_flagged(_: &Flagged, tally: &Tally) -> Result<(), std::io::Error> {
    if tally.mail_down.load(Ordering::SeqCst) {
        return Err(std::io::Error::other("smtp: connection refused"));
    }
    tally.mails.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[handler]
pub fn swallow_unstorable(_: &Unstorable) {}

/// Raises the unstorable event through a durable unit of work.
#[derive(Debug, Command)]
#[command(error = StageError)]
pub struct RaiseUnstorable;

#[handler]
pub async fn raise_unstorable(
    _: RaiseUnstorable,
    uow: Scoped<dyn UnstorableUow>,
) -> Result<(), StageError> {
    uow.raise().await
}

#[async_trait]
pub trait UnstorableUow: Send + Sync {
    async fn raise(&self) -> Result<(), StageError>;
}

#[async_trait]
impl<DB: Ledger> UnstorableUow for SqlLedger<DB> {
    async fn raise(&self) -> Result<(), StageError> {
        let mut tx = self.store.begin().await?;
        let staged = self
            .store
            .stage(
                &mut tx,
                &self.releaser,
                &self.flow,
                vec![PendingEvent::new(Unstorable)],
            )
            .await?;
        tx.commit().await?;
        staged.release();
        Ok(())
    }
}

/// A query whose handler deposits (a misuse: a query never changes state).
#[derive(Debug, Query)]
#[query(output = i64, error = LedgerError)]
pub struct SneakyBalance;

#[handler]
pub async fn sneaky_balance(
    _: SneakyBalance,
    mut uow: Scoped<dyn LedgerUow>,
) -> Result<i64, LedgerError> {
    uow.deposit(&Deposit::of("ada", 10)).await?;
    Ok(0)
}

/// The ledger's handlers (`Unstorable`'s left out).
fn ledger() -> Registrations {
    Registrations::new()
        .handler::<deposit>()
        .handler::<project_balance>()
        .handler::<tally_deposit>()
        .handler::<notify_flagged>()
        .message::<Announced>()
}

/// One process of the ledger service: its store and its bus.
pub struct App<DB: Ledger> {
    pub store: Store<DB>,
    pub bus: Bus,
    pub tally: Arc<Tally>,
}

impl<DB: Ledger> App<DB> {
    fn dependencies(store: &Store<DB>, tally: &Arc<Tally>) -> Dependencies {
        let ledger = store.clone();
        let unstorable = store.clone();
        Dependencies::new()
            .shared_arc(tally.clone())
            .scoped_boxed::<dyn LedgerUow, _>(move |scope| {
                Box::new(SqlLedger {
                    store: ledger.clone(),
                    releaser: scope.releaser(),
                    flow: scope.context(),
                })
            })
            .scoped_boxed::<dyn UnstorableUow, _>(move |scope| {
                Box::new(SqlLedger {
                    store: unstorable.clone(),
                    releaser: scope.releaser(),
                    flow: scope.context(),
                })
            })
    }

    /// The ledger on `pool`, with `settings`; `tally` as given.
    pub async fn with(pool: Pool<DB>, settings: Settings, tally: Tally) -> Self {
        let store = Store::open_with(pool, settings).await.unwrap();
        let tally = Arc::new(tally);
        let bus = Bus::builder()
            .registrations(ledger())
            .dependencies(Self::dependencies(&store, &tally))
            .retry(
                RetryPolicy::exponential(3)
                    .first_delay(Duration::from_millis(5))
                    .max_delay(Duration::from_millis(20)),
            )
            .dead_letters(store.dead_letters())
            .spawner(|task| {
                tokio::spawn(task);
            })
            .build()
            .unwrap();
        App { store, bus, tally }
    }

    pub async fn open(pool: Pool<DB>) -> Self {
        Self::with(pool, fast(), Tally::default()).await
    }

    pub async fn deposit(&self, account: &str, amount: i64) {
        self.bus
            .dispatch(Deposit::of(account, amount))
            .await
            .unwrap();
    }
}

/// Timings for tests: a dead process is one silent for 300 ms.
pub fn fast() -> Settings {
    Settings::default()
        .heartbeat_every(Duration::from_millis(50))
        .node_timeout(Duration::from_millis(300))
        .recover_every(Duration::from_millis(50))
}

/// Waits (at most 20 s) until `done` says so.
pub async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "not within 20 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `work` on a runtime of its own (a process), then tears that
/// runtime down without letting anything on it finish: what `kill -9` does
/// to a process, to the tasks and connections it had.
pub async fn run_then_kill<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> T {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.spawn(work).await.unwrap();
    runtime.shutdown_background();
    result
}

// ---------------------------------------------------------------------------
// Migrations
// ---------------------------------------------------------------------------

pub async fn the_crates_migrations_live_beside_the_applications_own<DB: Ledger>(db: TestDatabase) {
    let pool = db.pool::<DB>().await;
    // The application's own sqlx migrations, before and after the crate's.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("0001_accounts.sql"),
        "CREATE TABLE accounts (name TEXT PRIMARY KEY);",
    )
    .unwrap();
    DB::app_migrate(&pool, dir.path()).await;
    arch_events_sqlx::migrate(&pool).await.unwrap();
    std::fs::write(
        dir.path().join("0002_outbox.sql"),
        // A table name an application may well have of its own.
        "CREATE TABLE outbox (id TEXT PRIMARY KEY);",
    )
    .unwrap();
    DB::app_migrate(&pool, dir.path()).await;
    arch_events_sqlx::migrate(&pool).await.unwrap();
    DB::app_migrate(&pool, dir.path()).await;

    assert_eq!(
        DB::sqlx_versions(&pool).await,
        [1, 2],
        "sqlx sees only the app's"
    );
    assert_eq!(
        DB::store_versions(&pool).await,
        (1..=DB::STORE_MIGRATIONS).collect::<Vec<_>>(),
        "the crate's migrations, each recorded once"
    );
    assert_eq!(DB::count(&pool, "outbox").await, 0);
    assert_eq!(DB::count(&pool, "bus_outbox").await, 0);
    // A store opens on it, and the app's migrator still runs.
    let app = App::<DB>::with(pool.clone(), fast(), Tally::default()).await;
    DB::create_tables(&pool).await;
    app.deposit("ada", 5).await;
    DB::app_migrate(&pool, dir.path()).await;
    assert_eq!(DB::sqlx_versions(&pool).await, [1, 2]);
}

pub async fn migrations_run_once_when_processes_start_together<DB: Ledger>(db: TestDatabase) {
    let mut starts = Vec::new();
    for _ in 0..4 {
        let pool = db.pool::<DB>().await;
        starts.push(tokio::spawn(async move {
            arch_events_sqlx::migrate(&pool).await
        }));
    }
    for start in starts {
        start.await.unwrap().unwrap();
    }
    let pool = db.pool::<DB>().await;
    assert_eq!(
        DB::store_versions(&pool).await,
        (1..=DB::STORE_MIGRATIONS).collect::<Vec<_>>(),
        "each migration applied once"
    );
}

// ---------------------------------------------------------------------------
// Durable local delivery
// ---------------------------------------------------------------------------

async fn ledger_app<DB: Ledger>(db: &TestDatabase) -> App<DB> {
    let pool = db.pool::<DB>().await;
    let app = App::open(pool.clone()).await;
    DB::create_tables(&pool).await;
    app
}

pub async fn every_handler_of_a_committed_event_runs_once_and_its_record_is_gone<DB: Ledger>(
    db: TestDatabase,
) {
    let app = ledger_app::<DB>(&db).await;
    for _ in 0..5 {
        app.deposit("ada", 10).await;
    }
    assert_eq!(DB::balance(app.store.pool(), "ada").await, 50);
    assert_eq!(app.tally.counted_once(), 5);
    let lag = app.store.delivery_lag().await.unwrap();
    assert_eq!(
        (lag.count, lag.oldest),
        (0, None),
        "delivered: nothing pending"
    );
    assert_eq!(DB::count(app.store.pool(), "bus_handled").await, 0);
    assert_eq!(app.store.in_flight(), 0);
}

/// Commits a `Deposited` of 10 to `ada` through `store`, outside any bus,
/// and returns it as staged (with its ids, not yet marked stored).
async fn commit_deposited<DB: Ledger>(store: &Store<DB>) -> PendingEvent {
    let mut tx = store.begin().await.unwrap();
    DB::insert_deposit(&mut tx, "ada", 10).await.unwrap();
    let event = PendingEvent::new(Deposited {
        account: "ada".into(),
        amount: 10,
    });
    let staged = store
        .stage(
            &mut tx,
            &EventReleaser::new(),
            &MessageContext::root(),
            vec![event],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let event = staged.events()[0].clone();
    // Killed here (for the callers that stop at this point): committed,
    // never released to a bus.
    std::mem::forget(staged);
    event
}

/// Waits until `store` has no event left to deliver.
async fn all_delivered<DB: Ledger>(store: &Store<DB>) {
    eventually("every stored event is delivered", || async {
        store.delivery_lag().await.unwrap().count == 0
    })
    .await;
}

/// A process that commits `deposits` of 10 to `ada` and dies right after
/// each commit, before any handler ran.
async fn commit_then_die<DB: Ledger>(db: &TestDatabase, deposits: u32) {
    let url = db.url.clone();
    run_then_kill(async move {
        let pool = DB::connect(&url).await;
        let store = Store::<DB>::open_with(pool.clone(), fast()).await.unwrap();
        DB::create_tables(&pool).await;
        for _ in 0..deposits {
            commit_deposited(&store).await;
        }
        std::mem::forget(store);
    })
    .await;
}

pub async fn events_committed_before_a_crash_are_delivered_by_another_process<DB: Ledger>(
    db: TestDatabase,
) {
    commit_then_die::<DB>(&db, 3).await;
    let app = App::<DB>::open(db.pool::<DB>().await).await;
    assert_eq!(app.store.delivery_lag().await.unwrap().count, 3, "pending");
    let recovery = app.store.start_recovery(&app.bus).unwrap();
    all_delivered(&app.store).await;
    assert_eq!(DB::balance(app.store.pool(), "ada").await, 30);
    assert_eq!(app.tally.counted_once(), 3);
    recovery.stop().await;
}

pub async fn a_crash_between_two_handlers_reruns_only_the_one_that_did_not_complete<DB: Ledger>(
    db: TestDatabase,
) {
    let url = db.url.clone();
    // `project_balance` (first) commits; `tally_deposit` waits at a gate
    // that never opens; then the process is killed.
    let counted = run_then_kill(async move {
        let pool = DB::connect(&url).await;
        let tally = Tally {
            gate: Some(Arc::new(tokio::sync::Semaphore::new(0))),
            ..Tally::default()
        };
        let app = App::<DB>::with(pool.clone(), fast(), tally).await;
        DB::create_tables(&pool).await;
        let bus = app.bus.clone();
        tokio::spawn(async move { bus.dispatch(Deposit::of("ada", 10)).await });
        eventually("the first handler committed", || async {
            DB::balance(&pool, "ada").await == 10
        })
        .await;
        let counted = app.tally.counted().len();
        std::mem::forget(app);
        counted
    })
    .await;
    assert_eq!(counted, 0, "the second handler never completed");

    let app = App::<DB>::open(db.pool::<DB>().await).await;
    let recovery = app.store.start_recovery(&app.bus).unwrap();
    all_delivered(&app.store).await;
    assert_eq!(
        app.tally.counted_once(),
        1,
        "the one that did not complete ran"
    );
    assert_eq!(
        DB::balance(app.store.pool(), "ada").await,
        10,
        "the one that committed did not run again"
    );
    recovery.stop().await;
}

pub async fn two_processes_never_redeliver_one_event_at_once<DB: Ledger>(db: TestDatabase) {
    commit_then_die::<DB>(&db, 40).await;
    let tally = Arc::new(Tally::default());
    let mut apps = Vec::new();
    for _ in 0..2 {
        let pool = db.pool::<DB>().await;
        let store = Store::<DB>::open_with(pool, fast().recovery_batch(5))
            .await
            .unwrap();
        let bus = Bus::builder()
            .registrations(ledger())
            .dependencies(App::dependencies(&store, &tally))
            .spawner(|task| {
                tokio::spawn(task);
            })
            .build()
            .unwrap();
        let recovery = store.start_recovery(&bus).unwrap();
        apps.push((store, bus, recovery));
    }
    let store = apps[0].0.clone();
    all_delivered(&store).await;
    assert_eq!(DB::balance(store.pool(), "ada").await, 400);
    assert_eq!(tally.counted_once(), 40, "no event was delivered twice");
    for (_, _, recovery) in apps {
        recovery.stop().await;
    }
}

pub async fn events_of_a_command_that_failed_after_its_commit_are_recovered_by_its_own_process<
    DB: Ledger,
>(
    db: TestDatabase,
) {
    let app = ledger_app::<DB>(&db).await;
    let recovery = app.store.start_recovery(&app.bus).unwrap();
    let failed = app
        .bus
        .dispatch(Deposit {
            fail_after_commit: true,
            ..Deposit::of("ada", 7)
        })
        .await;
    assert!(failed.is_err(), "the command failed");
    // Its change committed, so its event is delivered all the same.
    all_delivered(&app.store).await;
    assert_eq!(DB::balance(app.store.pool(), "ada").await, 7);
    assert_eq!(app.tally.counted_once(), 1);
    recovery.stop().await;
}

pub async fn a_handler_whose_delivery_was_recorded_already_is_a_duplicate_not_a_failure<
    DB: Ledger,
>(
    db: TestDatabase,
) {
    let app = ledger_app::<DB>(&db).await;
    // An event that `project_balance` handled before (its record is there),
    // redelivered as a recovery would: the handler runs, its unit of work
    // finds the record, writes nothing, and the bus takes it as done.
    let event = commit_deposited(&app.store).await;
    let id = event.context().unwrap().message_id();
    let handled = handler_name("project_balance");
    DB::execute(
        app.store.pool(),
        &format!(
            "INSERT INTO bus_handled (event_id, handler, handled_at) \
             VALUES ('{id}', '{handled}', '2026-01-01T00:00:00Z')"
        ),
    )
    .await;
    let event = event.stored(app.store.delivery_log());
    app.bus.redeliver(event, &[]).await.unwrap();
    assert_eq!(
        DB::balance(app.store.pool(), "ada").await,
        0,
        "not projected twice"
    );
    assert_eq!(app.tally.counted_once(), 1, "the other handler ran");
    assert!(app.bus.dead_letters().is_none());
    assert!(app
        .store
        .dead_letters()
        .list(true)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(app.store.delivery_lag().await.unwrap().count, 0);
}

/// Two processes deliver one stored event at the same moment (as when one
/// was taken for dead while it still ran): the handler that commits a unit
/// of work has its effect once, whichever commits first; the other delivery
/// of it finds the record and writes nothing.
pub async fn two_deliveries_of_one_event_at_once_have_its_committed_effects_once<DB: Ledger>(
    db: TestDatabase,
) {
    let first = ledger_app::<DB>(&db).await;
    let second = App::<DB>::open(db.pool::<DB>().await).await;
    for round in 0..10 {
        let event = commit_deposited(&first.store).await;
        let (a, b) = tokio::join!(
            first
                .bus
                .redeliver(event.clone().stored(first.store.delivery_log()), &[]),
            second
                .bus
                .redeliver(event.stored(second.store.delivery_log()), &[]),
        );
        a.unwrap();
        b.unwrap();
        assert_eq!(
            DB::balance(first.store.pool(), "ada").await,
            10 * (round + 1),
            "projected once"
        );
    }
    assert_eq!(first.store.delivery_lag().await.unwrap().count, 0);
    assert!(first
        .store
        .dead_letters()
        .list(true)
        .await
        .unwrap()
        .is_empty());
}

/// An event this process owns, that nothing in it delivers, and that it
/// never heard it let go of (a commit whose outcome showed only after the
/// recovery looked for its events): a later round finds it among the
/// process's own old rows.
pub async fn an_event_of_this_process_that_nothing_here_delivers_is_found_again<DB: Ledger>(
    db: TestDatabase,
) {
    commit_then_die::<DB>(&db, 1).await;
    let app = ledger_app::<DB>(&db).await;
    DB::execute(
        app.store.pool(),
        &format!(
            "UPDATE bus_events SET owner = '{}', recorded_at = '2000-01-01T00:00:00+00:00'",
            app.store.node()
        ),
    )
    .await;
    assert_eq!(app.store.recover_once(&app.bus).await.unwrap(), 1);
    all_delivered(&app.store).await;
    assert_eq!(DB::balance(app.store.pool(), "ada").await, 10);
    assert_eq!(app.tally.counted_once(), 1);
}

/// A process is dead by the timeout it declared, not by the takers':
/// one with a short timeout never takes over a live one's events.
pub async fn a_live_process_keeps_its_events_whatever_the_others_timeouts<DB: Ledger>(
    db: TestDatabase,
) {
    let patient =
        App::<DB>::with(db.pool::<DB>().await, Settings::default(), Tally::default()).await;
    DB::create_tables(patient.store.pool()).await;
    commit_deposited(&patient.store).await; // in flight in `patient`, for ever
    let hasty = App::<DB>::open(db.pool::<DB>().await).await; // a 300 ms timeout
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hasty.store.recover_once(&hasty.bus).await.unwrap(), 0);
    assert_eq!(
        hasty.tally.counted().len(),
        0,
        "the patient process is alive by its own 10 s timeout"
    );
    assert_eq!(patient.store.delivery_lag().await.unwrap().count, 1);
}

pub async fn timings_that_cannot_work_are_refused<DB: Ledger>(db: TestDatabase) {
    let pool = db.pool::<DB>().await;
    let too_short = Settings::default()
        .heartbeat_every(Duration::from_secs(1))
        .node_timeout(Duration::from_millis(1500));
    let error = Store::<DB>::open_with(pool.clone(), too_short)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidSettings(_)));
    assert!(
        error.to_string().contains("at least three heartbeats"),
        "{error}"
    );
    let never = Settings::default().heartbeat_every(Duration::ZERO);
    assert!(matches!(
        Store::<DB>::open_with(pool, never).await.unwrap_err(),
        Error::InvalidSettings(_)
    ));
}

pub async fn an_event_that_keeps_crashing_its_process_goes_to_the_dead_letters<DB: Ledger>(
    db: TestDatabase,
) {
    commit_then_die::<DB>(&db, 1).await;
    let pool = db.pool::<DB>().await;
    // As if it had been taken up (and crashed its process) five times.
    DB::execute(&pool, "UPDATE bus_events SET recoveries = 5").await;
    let app = App::<DB>::with(pool, fast().max_recoveries(5), Tally::default()).await;
    let recovery = app.store.start_recovery(&app.bus).unwrap();
    all_delivered(&app.store).await;
    let letters = app.store.dead_letters().list(false).await.unwrap();
    let handlers: Vec<String> = letters.iter().map(|l| l.record.handler.clone()).collect();
    assert_eq!(
        handlers,
        [
            handler_name("project_balance"),
            handler_name("tally_deposit")
        ],
        "one letter per handler that never completed"
    );
    assert!(
        letters[0].record.error.contains("6 times"),
        "{}",
        letters[0].record.error
    );
    assert_eq!(
        letters[0].record.payload.as_deref(),
        Some(r#"{"account":"ada","amount":10}"#)
    );
    assert_eq!(app.tally.counted().len(), 0, "not delivered");
    recovery.stop().await;
}

pub async fn an_event_this_bus_cannot_read_goes_to_the_dead_letters<DB: Ledger>(db: TestDatabase) {
    commit_then_die::<DB>(&db, 2).await;
    let pool = db.pool::<DB>().await;
    DB::execute(
        &pool,
        "UPDATE bus_events SET name = 'ledger.renamed' WHERE position = \
         (SELECT min(position) FROM bus_events)",
    )
    .await;
    DB::execute(
        &pool,
        "UPDATE bus_events SET payload = '{\"account\": 7}' WHERE position = \
         (SELECT max(position) FROM bus_events)",
    )
    .await;
    let app = App::<DB>::open(pool).await;
    let recovery = app.store.start_recovery(&app.bus).unwrap();
    all_delivered(&app.store).await;
    let letters = app.store.dead_letters().list(false).await.unwrap();
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert_eq!(letters[0].record.message_name, "ledger.renamed");
    assert_eq!(letters[0].record.handler, "", "no handler knows it here");
    assert!(
        letters[0]
            .record
            .error
            .contains("no event type is named `ledger.renamed`"),
        "{}",
        letters[0].record.error
    );
    assert!(
        letters[1].record.error.contains("does not read back"),
        "{}",
        letters[1].record.error
    );
    recovery.stop().await;
}

pub async fn a_bus_with_an_event_that_cannot_be_stored_is_refused<DB: Ledger>(db: TestDatabase) {
    let pool = db.pool::<DB>().await;
    let store = Store::<DB>::open_with(pool, fast()).await.unwrap();
    let tally = Arc::new(Tally::default());
    let bus = Bus::builder()
        .registrations(ledger().handler::<swallow_unstorable>())
        .dependencies(App::dependencies(&store, &tally))
        .build()
        .unwrap();
    let error = store.start_recovery(&bus).unwrap_err();
    assert!(matches!(&error, Error::NotStorable(names) if names == &["ledger.unstorable"]));
    assert!(
        error
            .to_string()
            .contains("derive them with `#[event(serde)]`"),
        "{error}"
    );
}

pub async fn an_unstorable_event_fails_the_commit_with_the_fix<DB: Ledger>(db: TestDatabase) {
    let pool = db.pool::<DB>().await;
    let store = Store::<DB>::open_with(pool, fast()).await.unwrap();
    let tally = Arc::new(Tally::default());
    let bus = Bus::builder()
        .registrations(ledger().handler::<raise_unstorable>())
        .dependencies(App::dependencies(&store, &tally))
        .build()
        .unwrap();
    let error = bus.dispatch(RaiseUnstorable).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("`ledger.unstorable` cannot be stored for durable delivery: derive it with `#[event(serde)]`"),
        "{error}"
    );
    assert_eq!(
        store.delivery_lag().await.unwrap().count,
        0,
        "nothing written"
    );
}

pub async fn a_query_that_stages_events_writes_nothing<DB: Ledger>(db: TestDatabase) {
    let pool = db.pool::<DB>().await;
    let store = Store::<DB>::open_with(pool.clone(), fast()).await.unwrap();
    DB::create_tables(&pool).await;
    let tally = Arc::new(Tally::default());
    let bus = Bus::builder()
        .registrations(ledger().handler::<sneaky_balance>())
        .dependencies(App::dependencies(&store, &tally))
        .build()
        .unwrap();
    let refused = bus.query(SneakyBalance).await.unwrap_err();
    assert!(
        matches!(
            &refused,
            DispatchError::Handler(LedgerError::Stage(StageError::QueryReleases { events }))
                if events == &["ledger.deposited"]
        ),
        "{refused:?}"
    );
    assert_eq!(
        DB::count(&pool, "ledger").await,
        0,
        "the deposit rolled back"
    );
    assert_eq!(
        store.delivery_lag().await.unwrap().count,
        0,
        "no event stored: no recovery will deliver one"
    );
    assert_eq!(tally.counted_once(), 0);
}

// ---------------------------------------------------------------------------
// The outbox
// ---------------------------------------------------------------------------

fn accounts(messages: &[OutboundMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            let payload: serde_json::Value = serde_json::from_str(&m.payload).unwrap();
            payload["account"].as_str().unwrap().to_owned()
        })
        .collect()
}

async fn announce<DB: Ledger>(app: &App<DB>, account: &str, amount: i64) {
    app.bus
        .dispatch(Deposit {
            announce: true,
            ..Deposit::of(account, amount)
        })
        .await
        .unwrap();
}

pub async fn an_external_event_goes_to_the_outbox_in_the_commit_and_is_relayed_once<DB: Ledger>(
    db: TestDatabase,
) {
    let app = ledger_app::<DB>(&db).await;
    announce(&app, "ada", 4).await;
    app.deposit("bob", 5).await; // internal only: not in the outbox

    let outbox = app.store.outbox();
    let unsent = outbox.unsent(10).await.unwrap();
    assert_eq!(unsent.len(), 1);
    assert_eq!(
        (unsent[0].stream.as_str(), unsent[0].name.as_str()),
        ("deposits", "deposits")
    );
    let payload: serde_json::Value = serde_json::from_str(&unsent[0].payload).unwrap();
    assert_eq!(payload, serde_json::json!({"account": "ada", "amount": 4}));
    assert!(unsent[0].causation_id.is_some(), "caused by the command");

    let broker = InMemoryBroker::default();
    assert_eq!(outbox.relay_once(&broker, 10).await.unwrap(), 1);
    assert_eq!(
        outbox.relay_once(&broker, 10).await.unwrap(),
        0,
        "sent once"
    );
    let published = broker.waiting("deposits");
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].id, unsent[0].id, "the message keeps its id");
    assert!(outbox.unsent(10).await.unwrap().is_empty());
}

pub async fn an_event_committed_before_a_crash_is_published_after_the_restart<DB: Ledger>(
    db: TestDatabase,
) {
    {
        let app = ledger_app::<DB>(&db).await;
        announce(&app, "ada", 4).await;
        // The process dies here: committed, never relayed.
        app.store.pool().close().await;
    }
    let app = App::<DB>::open(db.pool::<DB>().await).await;
    let broker = InMemoryBroker::default();
    let outbox = app.store.outbox();
    assert_eq!(outbox.relay_once(&broker, 10).await.unwrap(), 1);
    assert_eq!(accounts(&broker.waiting("deposits")), ["ada"]);
}

pub async fn a_rolled_back_commit_writes_nothing_to_the_outbox<DB: Ledger>(db: TestDatabase) {
    let app = ledger_app::<DB>(&db).await;
    announce(&app, "ada", 1).await;
    let mut tx = app.store.begin().await.unwrap();
    let event = PendingEvent::new(Announced {
        account: "bob".into(),
        amount: 1,
    });
    let staged = app
        .store
        .stage(
            &mut tx,
            &EventReleaser::new(),
            &MessageContext::root(),
            vec![event],
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    drop(staged);
    let unsent = app.store.outbox().unsent(10).await.unwrap();
    assert_eq!(
        accounts(&unsent),
        ["ada"],
        "only the committed change's event"
    );
    assert_eq!(app.store.delivery_lag().await.unwrap().count, 0);
}

pub async fn two_relays_never_publish_one_row_twice<DB: Ledger>(db: TestDatabase) {
    let app = ledger_app::<DB>(&db).await;
    for n in 0..40 {
        announce(&app, &format!("a{n}"), 1).await;
    }
    let broker = InMemoryBroker::default();
    // Each relay's first batch waits, inside its publish, for the other's:
    // both hold rows at once, so a row they both claimed would show.
    let both_publishing = Arc::new(tokio::sync::Barrier::new(2));
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let outbox = app.store.outbox();
            let publisher = MeetingFirst {
                inner: broker.clone(),
                barrier: both_publishing.clone(),
                met: AtomicBool::new(false),
                first_batch: Mutex::new(Vec::new()),
            };
            tokio::spawn(async move {
                let mut sent = 0;
                loop {
                    match outbox.relay_once(&publisher, 3).await.unwrap() {
                        0 => return (sent, publisher.first_batch.into_inner().unwrap()),
                        n => sent += n,
                    }
                }
            })
        })
        .collect();
    let mut total = 0;
    let mut first_batches = Vec::new();
    for relay in relays {
        let (sent, first) = relay.await.unwrap();
        total += sent;
        first_batches.push(first);
    }
    assert_eq!(
        first_batches.iter().map(Vec::len).collect::<Vec<_>>(),
        [3, 3],
        "both relays published a batch at the same time"
    );
    assert!(
        first_batches[0]
            .iter()
            .all(|id| !first_batches[1].contains(id)),
        "two relays publishing at once hold different rows: {first_batches:?}"
    );
    let published = broker.waiting("deposits");
    let mut ids: Vec<_> = published.iter().map(|m| m.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((total, published.len(), ids.len()), (40, 40, 40));
}

/// A publisher whose first batch waits for the other relay's first batch
/// (a barrier both publishers share), and remembers which ids it held.
struct MeetingFirst {
    inner: InMemoryBroker,
    barrier: Arc<tokio::sync::Barrier>,
    met: AtomicBool,
    first_batch: Mutex<Vec<MessageId>>,
}

#[async_trait]
impl Publisher for MeetingFirst {
    async fn publish(&self, message: &OutboundMessage) -> Result<(), TransportError> {
        self.inner.publish(message).await
    }

    async fn publish_batch(
        &self,
        messages: &[OutboundMessage],
    ) -> Result<(), arch_events::transport::BatchError> {
        if !self.met.swap(true, Ordering::SeqCst) {
            *self.first_batch.lock().unwrap() = messages.iter().map(|m| m.id).collect();
            self.barrier.wait().await;
        }
        for (published, message) in messages.iter().enumerate() {
            if let Err(error) = self.inner.publish(message).await {
                return Err(arch_events::transport::BatchError { published, error });
            }
        }
        Ok(())
    }
}

/// A broker that takes `accept` messages, then fails.
struct FailingAfter {
    inner: InMemoryBroker,
    accept: AtomicUsize,
}

#[async_trait]
impl Publisher for FailingAfter {
    async fn publish(&self, message: &OutboundMessage) -> Result<(), TransportError> {
        let left = self.accept.load(Ordering::SeqCst);
        if left == 0 {
            return Err(TransportError::new(
                "publishing",
                std::io::Error::other("broker down"),
            ));
        }
        self.accept.store(left - 1, Ordering::SeqCst);
        self.inner.publish(message).await
    }
}

pub async fn a_failed_publish_leaves_the_rest_for_the_next_round<DB: Ledger>(db: TestDatabase) {
    let app = ledger_app::<DB>(&db).await;
    for n in 0..3 {
        announce(&app, &format!("a{n}"), 1).await;
    }
    let broker = InMemoryBroker::default();
    let flaky = FailingAfter {
        inner: broker.clone(),
        accept: 1.into(),
    };
    let outbox = app.store.outbox();
    let error = outbox.relay_once(&flaky, 10).await.unwrap_err();
    assert!(error.to_string().contains("broker down"), "{error}");
    assert_eq!(accounts(&broker.waiting("deposits")), ["a0"]);
    assert_eq!(
        accounts(&outbox.unsent(10).await.unwrap()),
        ["a1", "a2"],
        "what the broker has is marked sent; the rest waits"
    );
    // The broker is back: the next round publishes the rest at once.
    assert_eq!(outbox.relay_once(&broker, 10).await.unwrap(), 2);
    assert_eq!(accounts(&broker.waiting("deposits")), ["a0", "a1", "a2"]);
}

/// A broker that never answers.
struct Stuck;

#[async_trait]
impl Publisher for Stuck {
    async fn publish(&self, _: &OutboundMessage) -> Result<(), TransportError> {
        std::future::pending().await
    }
}

pub async fn a_broker_that_does_not_answer_fails_the_round_and_frees_its_rows<DB: Ledger>(
    db: TestDatabase,
) {
    let pool = db.pool::<DB>().await;
    let settings = fast().publish_timeout(Duration::from_millis(200));
    let app = App::<DB>::with(pool.clone(), settings, Tally::default()).await;
    DB::create_tables(&pool).await;
    announce(&app, "a1", 1).await;
    let outbox = app.store.outbox();
    let error = outbox.relay_once(&Stuck, 10).await.unwrap_err();
    assert!(
        error.to_string().contains("did not answer within"),
        "{error}"
    );
    assert_eq!(accounts(&outbox.unsent(10).await.unwrap()), ["a1"]);
    let broker = InMemoryBroker::default();
    assert_eq!(
        app.store.outbox().relay_once(&broker, 10).await.unwrap(),
        1,
        "another relay takes the rows at once"
    );
}

pub async fn sent_rows_are_purged_once_old_and_unsent_ones_never<DB: Ledger>(db: TestDatabase) {
    let app = ledger_app::<DB>(&db).await;
    announce(&app, "a1", 1).await;
    let broker = InMemoryBroker::default();
    let outbox = app.store.outbox();
    assert_eq!(outbox.relay_once(&broker, 10).await.unwrap(), 1);
    announce(&app, "a2", 1).await;

    let an_hour = chrono::Duration::hours(1);
    assert_eq!(
        outbox.purge_sent(Utc::now() - an_hour).await.unwrap(),
        0,
        "sent just now: kept"
    );
    assert_eq!(
        outbox.purge_sent(Utc::now() + an_hour).await.unwrap(),
        1,
        "the sent row, not the unsent one"
    );
    assert_eq!(accounts(&outbox.unsent(10).await.unwrap()), ["a2"]);
    assert_eq!(outbox.relay_once(&broker, 10).await.unwrap(), 1);
    assert_eq!(accounts(&broker.waiting("deposits")), ["a1", "a2"]);
}

pub async fn the_outbox_lag_says_how_many_wait_and_for_how_long<DB: Ledger>(db: TestDatabase) {
    let app = ledger_app::<DB>(&db).await;
    let outbox = app.store.outbox();
    let lag = outbox.lag().await.unwrap();
    assert_eq!((lag.count, lag.oldest), (0, None));
    announce(&app, "a1", 1).await;
    announce(&app, "a2", 1).await;
    let lag = outbox.lag().await.unwrap();
    assert_eq!(lag.count, 2);
    assert!(lag.oldest.unwrap() < Duration::from_secs(60), "{lag:?}");
    outbox
        .relay_once(&InMemoryBroker::default(), 10)
        .await
        .unwrap();
    assert_eq!(outbox.lag().await.unwrap().count, 0);
}

// ---------------------------------------------------------------------------
// The inbox
// ---------------------------------------------------------------------------

pub async fn a_redelivered_message_is_handled_once<DB: Ledger>(db: TestDatabase) {
    let app = ledger_app::<DB>(&db).await;
    let id = MessageId::new();
    let message = OutboundMessage {
        id,
        stream: "deposits.in".into(),
        name: "deposits.in".into(),
        payload: r#"{"account": "ada", "amount": 7}"#.into(),
        correlation_id: id,
        causation_id: None,
    };
    let broker = InMemoryBroker::default();
    broker.publish(&message).await.unwrap();
    broker.publish(&message).await.unwrap(); // delivered twice

    let mut consumer = Consumer::new(app.bus.clone(), broker.subscribe("deposits.in"))
        .with_inbox(Arc::new(app.store.inbox()));
    let handled = consumer.poll_once().await.unwrap();
    assert_eq!(handled, [Handled::Done, Handled::Duplicate]);
    assert_eq!(broker.pending(), 0, "both acknowledged");
    assert!(broker.dead_letters("deposits.in").is_empty());
    assert_eq!(
        DB::count(app.store.pool(), "ledger").await,
        1,
        "handled once"
    );
    assert_eq!(DB::balance(app.store.pool(), "ada").await, 7);

    // The same message committed again (a consumer that did not look
    // first): the second commit fails, nothing is written twice.
    let context = MessageContext::inbound(id, id, None);
    let again = app
        .bus
        .dispatch_in(Deposit::of("ada", 7), context)
        .await
        .unwrap_err();
    assert!(again.to_string().contains("was handled already"), "{again}");
    assert_eq!(DB::count(app.store.pool(), "ledger").await, 1);
}

// ---------------------------------------------------------------------------
// The dead letters
// ---------------------------------------------------------------------------

pub async fn a_failing_handler_is_kept_and_replayed_once_the_fault_is_gone<DB: Ledger>(
    db: TestDatabase,
) {
    let app = ledger_app::<DB>(&db).await;
    app.tally.mail_down.store(true, Ordering::SeqCst);
    app.bus
        .dispatch(Deposit {
            flag: true,
            ..Deposit::of("ada", 1)
        })
        .await
        .unwrap();

    let letters = app.store.dead_letters();
    let kept = letters.list(false).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let letter = &kept[0];
    assert_eq!(letter.record.message_name, "ledger.flagged");
    assert_eq!(letter.record.handler, handler_name("notify_flagged"));
    assert!(
        letter.record.location.starts_with(concat!(file!(), ":")),
        "{}",
        letter.record.location
    );
    assert_eq!(letter.record.error, "smtp: connection refused");
    assert_eq!(letter.record.attempts, 3);
    assert!((Utc::now() - letter.record.failed_at).num_seconds().abs() < 60);
    assert_eq!(
        letter.record.payload.as_deref(),
        Some(r#"{"account":"ada"}"#)
    );
    assert_eq!(
        letter.record.causation_id.as_deref(),
        Some(letter.record.correlation_id.as_str()),
        "caused by the command, which opened the flow"
    );
    assert_eq!(
        app.store.delivery_lag().await.unwrap().count,
        0,
        "a dead letter ends the event's delivery"
    );

    // Still down: the replay fails, the letter stays, with the new error.
    let error = arch_events_sqlx::replay(&app.bus, &letters, letter.id)
        .await
        .unwrap_err();
    assert!(
        matches!(error, DeadLetterError::StillFailing { .. }),
        "{error}"
    );
    let stays = letters.get(letter.id).await.unwrap().unwrap();
    assert_eq!(stays.replayed_at, None);
    assert!(stays.replay_error.unwrap().contains("connection refused"));

    // Back up: the replay succeeds, once.
    app.tally.mail_down.store(false, Ordering::SeqCst);
    let replayed = arch_events_sqlx::replay(&app.bus, &letters, letter.id)
        .await
        .unwrap();
    assert!(replayed.replayed_at.is_some());
    assert_eq!(replayed.replay_error, None);
    let again = arch_events_sqlx::replay(&app.bus, &letters, letter.id)
        .await
        .unwrap_err();
    assert!(
        matches!(again, DeadLetterError::AlreadyReplayed(_)),
        "{again}"
    );
    assert_eq!(
        app.tally.mails.load(Ordering::SeqCst),
        1,
        "sent exactly once"
    );
    assert!(letters.list(false).await.unwrap().is_empty());
    assert_eq!(letters.list(true).await.unwrap().len(), 1);
}

/// A replay marks its letter replayed in the projection's own transaction:
/// replayed again (a crash after its commit, before the letter's mark; two
/// replays at once), it writes nothing.
pub async fn a_projection_replayed_twice_has_its_effect_once<DB: Ledger>(db: TestDatabase) {
    let app = ledger_app::<DB>(&db).await;
    app.tally.projection_down.store(true, Ordering::SeqCst);
    app.deposit("ada", 10).await;
    let letters = app.store.dead_letters();
    let kept = letters.list(false).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].record.handler, handler_name("project_balance"));
    app.tally.projection_down.store(false, Ordering::SeqCst);

    let record = &kept[0].record;
    let event = app
        .bus
        .decode_event(&record.message_name, record.payload.as_deref().unwrap())
        .unwrap();
    let context = MessageContext::restored(
        record.message_id.parse().unwrap(),
        record.correlation_id.parse().unwrap(),
        None,
    );
    let log = app.store.delivery_log();
    for _ in 0..2 {
        app.bus
            .replay_letter(&record.handler, event.clone(), context, &log, kept[0].id)
            .await
            .unwrap();
    }
    assert_eq!(
        DB::balance(app.store.pool(), "ada").await,
        10,
        "projected once"
    );
    let replayed = letters.get(kept[0].id).await.unwrap().unwrap();
    assert!(
        replayed.replayed_at.is_some(),
        "marked in the replay's own commit"
    );
    let again = arch_events_sqlx::replay(&app.bus, &letters, kept[0].id)
        .await
        .unwrap_err();
    assert!(
        matches!(again, DeadLetterError::AlreadyReplayed(_)),
        "{again}"
    );
    assert_eq!(DB::balance(app.store.pool(), "ada").await, 10);
}

fn record() -> DeadLetterRecord {
    DeadLetterRecord {
        message_name: "ledger.flagged".into(),
        handler: handler_name("notify_flagged"),
        location: "src/h.rs:1".into(),
        error: "down".into(),
        attempts: 3,
        failed_at: Utc::now(),
        message_id: MessageId::new().to_string(),
        correlation_id: MessageId::new().to_string(),
        causation_id: None,
        payload: Some(r#"{"account":"ada"}"#.into()),
    }
}

pub async fn a_dead_letter_is_claimed_once_until_its_claim_runs_out<DB: Ledger>(db: TestDatabase) {
    let pool = db.pool::<DB>().await;
    let settings = fast().dead_letter_claim(Duration::from_millis(200));
    let app = App::<DB>::with(pool, settings, Tally::default()).await;
    let letters = app.store.dead_letters();
    let unknown = arch_events_sqlx::replay(&app.bus, &letters, 42)
        .await
        .unwrap_err();
    assert!(matches!(unknown, DeadLetterError::NotFound(42)));

    let id = letters.add(record()).await.unwrap();
    assert!(letters.claim(id).await.unwrap());
    assert!(!letters.claim(id).await.unwrap(), "two replays at once");
    let busy = arch_events_sqlx::replay(&app.bus, &letters, id)
        .await
        .unwrap_err();
    assert!(matches!(busy, DeadLetterError::AlreadyReplayed(_)));
    // The replay that claimed it died: once its claim runs out, another
    // replay takes the letter, and the handler runs.
    eventually("the claim runs out", || async {
        letters.claim(id).await.unwrap()
    })
    .await;
    letters.settle(id, Err("died".into())).await.unwrap();
    let replayed = arch_events_sqlx::replay(&app.bus, &letters, id)
        .await
        .unwrap();
    assert!(replayed.replayed_at.is_some());
    assert_eq!(app.tally.mails.load(Ordering::SeqCst), 1);
}

pub async fn a_dead_letter_given_up_on_is_deleted_unless_it_is_being_replayed<DB: Ledger>(
    db: TestDatabase,
) {
    let app = App::<DB>::open(db.pool::<DB>().await).await;
    let letters = app.store.dead_letters();
    let first = letters.add(record()).await.unwrap();
    let second = letters.add(record()).await.unwrap();
    letters.delete(first).await.unwrap();
    assert!(letters.get(first).await.unwrap().is_none());
    assert!(matches!(
        letters.delete(first).await.unwrap_err(),
        DeadLetterError::NotFound(_)
    ));
    assert!(letters.claim(second).await.unwrap());
    assert!(matches!(
        letters.delete(second).await.unwrap_err(),
        DeadLetterError::BeingReplayed(_)
    ));
    letters.settle(second, Err("gave up".into())).await.unwrap();
    letters.delete(second).await.unwrap();
    assert!(letters.list(true).await.unwrap().is_empty());
}
