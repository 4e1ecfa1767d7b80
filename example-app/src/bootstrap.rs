//! The composition root: the bus, built from the adapters it is given, with
//! the service's failure policy.
//!
//! `main` passes the real adapters; tests pass fakes, one line each:
//! `bootstrap(Adapters { notifications: fake.clone(), ..Adapters::in_memory(&store) })`.

use std::sync::Arc;
use std::time::Duration;

use arch_events::saga::{SagaStore, Sagas};
use arch_events::schedule::{InMemoryScheduler, Scheduler};
use arch_events::{BuildError, Bus, Dependencies, EventReleaser, FailureCause, RetryPolicy, Scope};
use arch_events_sqlx::{
    Backend, DeadLetterStore, InMemoryDeadLetterStore, Projection, SqlEventStore, StoreSink,
};

use crate::adapters::database::Database;
use crate::adapters::event_sourced::{self, ProductStreams};
use crate::adapters::memory::{InMemoryAllocationsView, InMemoryProducts};
use crate::adapters::notifications::{LogNotifications, Notifications};
use crate::adapters::postgres::{self, PostgresDatabase};
use crate::adapters::projected_view::{AllocationsProjection, ProjectedAllocationsView};
use crate::adapters::relational::{self, ProductTables};
use crate::adapters::sqlite::{self, SqliteDatabase};
use crate::adapters::storage::Storage;
use crate::domain::commands::{Allocate, ChangeBatchQuantity, CreateBatch, ReleaseAllocation};
use crate::domain::events::{BatchAdded, BatchQuantityChanged};
use crate::service_layer::handlers::reallocate;
use crate::service_layer::shipment::{ShipmentDeadline, ShipmentWatch};
use crate::service_layer::unit_of_work::{UnitOfWork, UnitOfWorkFactory};
use crate::service_layer::ServiceError;
use crate::views::{AllocationsView, AllocationsViewFactory, ViewTable};

/// Everything the handlers depend on.
pub struct Adapters {
    /// Makes a fresh unit of work for each handler call.
    pub unit_of_work: UnitOfWorkFactory,
    /// Makes the read model's view for each handler call.
    pub views: AllocationsViewFactory,
    /// Where notifications go.
    pub notifications: Arc<dyn Notifications>,
    /// Where event-handler calls that failed for good are kept.
    pub dead_letters: Arc<dyn DeadLetterStore>,
    /// Where the sagas keep their state, where their timeouts and what
    /// they send wait, and where event handlers' retries wait: the
    /// database's durable scheduler.
    pub scheduler: Arc<dyn SchedulerStore>,
    /// How long an order's allocations wait for its shipment.
    pub shipment_deadline: ShipmentDeadline,
    /// How long an event handler's first retry waits (each next one twice
    /// as long): see [`bootstrap`].
    pub event_retry_wait: Duration,
}

/// A scheduler that keeps the sagas' state too, as both of arch-events'
/// schedulers do: `SqlScheduler` (durable) and `InMemoryScheduler`.
pub trait SchedulerStore: Scheduler + SagaStore {
    /// The same, as the bus's scheduler.
    fn into_scheduler(self: Arc<Self>) -> Arc<dyn Scheduler>;
    /// The same, as the sagas' store.
    fn into_saga_store(self: Arc<Self>) -> Arc<dyn SagaStore>;
}

impl<T: Scheduler + SagaStore> SchedulerStore for T {
    fn into_scheduler(self: Arc<Self>) -> Arc<dyn Scheduler> {
        self
    }

    fn into_saga_store(self: Arc<Self>) -> Arc<dyn SagaStore> {
        self
    }
}

/// The default of [`Adapters::event_retry_wait`].
pub const EVENT_RETRY_WAIT: Duration = Duration::from_secs(1);

impl Adapters {
    /// The real adapters over `database`, whichever it is and however it
    /// keeps the products: both models and the dead letters in it,
    /// notifications to the log.
    pub fn for_database(database: &Database) -> Self {
        match database {
            Database::Sqlite(database) => Adapters::sqlite(database.clone()),
            Database::Postgres(database) => Adapters::postgres(database.clone()),
        }
    }

    /// The same adapters, with allocations waiting `deadline` for their
    /// shipment.
    pub fn shipment_deadline(mut self, deadline: ShipmentDeadline) -> Self {
        self.shipment_deadline = deadline;
        self
    }

    /// The same adapters, with event handlers' first retry `wait` after
    /// their first attempt.
    pub fn event_retry_wait(mut self, wait: Duration) -> Self {
        self.event_retry_wait = wait;
        self
    }

    /// The real adapters on SQLite, as it keeps the products.
    pub fn sqlite(database: SqliteDatabase) -> Self {
        let scheduler = Arc::new(database.scheduler().clone());
        Adapters::on(
            scheduler,
            database.storage(),
            database,
            sqlite::SqliteAllocationsView::new,
            AllocationsProjection(ViewTable::LIVE),
        )
    }

    /// The real adapters on PostgreSQL, as it keeps the products.
    pub fn postgres(database: PostgresDatabase) -> Self {
        let scheduler = Arc::new(database.scheduler().clone());
        Adapters::on(
            scheduler,
            database.storage(),
            database,
            postgres::PostgresAllocationsView::new,
            AllocationsProjection(ViewTable::LIVE),
        )
    }

    /// The real adapters over one database's SQL, which keeps its products
    /// as `storage` says: its view (`view`, for a handler call's releaser),
    /// and with streams the projection that writes that view.
    fn on<D, B, V, P>(
        scheduler: Arc<dyn SchedulerStore>,
        storage: Storage,
        database: D,
        view: fn(D, EventReleaser) -> V,
        projection: P,
    ) -> Self
    where
        B: Backend,
        D: ProductTables<Db = B> + ProductStreams<Db = B>,
        V: AllocationsView + 'static,
        P: Projection<B>,
    {
        let dead_letters = Arc::new(ProductTables::store(&database).dead_letters());
        let reads = database.clone();
        let read_view = move |scope: &mut Scope| -> Box<dyn AllocationsView> {
            Box::new(view(reads.clone(), scope.releaser()))
        };
        let (unit_of_work, views): (UnitOfWorkFactory, AllocationsViewFactory) = match storage {
            Storage::State => (
                relational::unit_of_work_factory(database),
                Arc::new(read_view),
            ),
            Storage::Events => {
                let events = database.event_store().clone();
                (
                    event_sourced::unit_of_work_factory(database),
                    projected(events, projection, read_view),
                )
            }
        };
        Adapters {
            unit_of_work,
            views,
            dead_letters,
            notifications: Arc::new(LogNotifications),
            scheduler,
            shipment_deadline: ShipmentDeadline::default(),
            event_retry_wait: EVENT_RETRY_WAIT,
        }
    }

    /// In-memory adapters over `store`, for tests and demos. Their
    /// scheduler is in memory too, and fires only when told to (give a
    /// test's own, on a virtual clock, as `scheduler`): the sagas'
    /// timeouts, and event handlers' retries, wait until then.
    pub fn in_memory(store: &Arc<InMemoryProducts>) -> Self {
        Adapters {
            unit_of_work: store.unit_of_work_factory(),
            views: InMemoryAllocationsView::default().factory(),
            notifications: Arc::new(LogNotifications),
            dead_letters: Arc::new(InMemoryDeadLetterStore::default()),
            scheduler: Arc::new(InMemoryScheduler::new()),
            shipment_deadline: ShipmentDeadline::default(),
            event_retry_wait: EVENT_RETRY_WAIT,
        }
    }
}

/// The views of `--storage events`: written by `projection` from the
/// streams in `events`, read through `reads`.
fn projected<DB: Backend, P: Projection<DB>>(
    events: SqlEventStore<DB>,
    projection: P,
    reads: impl Fn(&mut Scope) -> Box<dyn AllocationsView> + Send + Sync + 'static,
) -> AllocationsViewFactory {
    let projection = Arc::new(projection);
    Arc::new(move |scope| {
        Box::new(ProjectedAllocationsView::new(
            events.clone(),
            projection.clone(),
            reads(scope),
        ))
    })
}

/// How many times a command that lost an optimistic-concurrency race runs
/// before its caller gets the conflict (HTTP 409).
pub const CONFLICT_ATTEMPTS: u32 = 5;

/// How many times an event handler is called before its event becomes a
/// dead letter.
pub const EVENT_HANDLER_ATTEMPTS: u32 = 5;

/// How many times `reallocate` is called before its line waits in the dead
/// letters: it only ever loses races (and database outages), so it keeps
/// trying for about two seconds.
pub const REALLOCATION_ATTEMPTS: u32 = 10;

/// Builds the bus. Every handler is registered by `#[handler]`; this decides
/// which adapters they get, and how failures are handled:
/// - an event handler is tried [`EVENT_HANDLER_ATTEMPTS`] times, unless its
///   error is a broken rule ([`ServiceError::is_transient`]); then it is a
///   dead letter in [`Adapters::dead_letters`]. Only its first attempt is
///   made in the dispatch: the others wait in [`Adapters::scheduler`]
///   ([`Adapters::event_retry_wait`], 1 s, then twice as long each time,
///   at most 5 minutes apart), so a request never waits for a broken read
///   model or notifier, and a retry due while the process is down is made
///   by the next one;
/// - `reallocate` tries harder ([`REALLOCATION_ATTEMPTS`], from 10 ms to
///   half a second apart): it only ever loses races to other requests on
///   the same product, or a database that is briefly away. Its waits of
///   up to 100 ms are made in the dispatch (a race is best tried again at
///   once); the longer ones wait in the scheduler;
/// - a command that lost an optimistic-concurrency race runs again, up to
///   [`CONFLICT_ATTEMPTS`] times; no other command error is retried;
/// - the events of a dispatch whose caller stopped waiting (an HTTP client
///   hung up) still run, on the tokio runtime;
/// - every event must have a handler (but [`BatchAdded`] and
///   [`BatchQuantityChanged`], which only tell a product's history): a
///   handler that lost its `#[handler]` (or whose crate is no longer
///   linked) stops the service at startup.
pub fn bootstrap(adapters: Adapters) -> Result<Bus, BuildError> {
    let Adapters {
        unit_of_work,
        views,
        notifications,
        dead_letters,
        scheduler,
        shipment_deadline,
        event_retry_wait,
    } = adapters;
    let mut sagas = Sagas::new(scheduler.clone().into_saga_store()).with(shipment_deadline);
    if shipment_deadline.0.is_zero() {
        // The watch is off: an allocation starts no watch, and costs no
        // read of one either (watches started before go on to their end).
        sagas = sagas.no_new::<ShipmentWatch>();
    }
    let dependencies = Dependencies::new()
        .scoped_boxed::<dyn UnitOfWork, _>(move |scope| unit_of_work(scope))
        .scoped_boxed::<dyn AllocationsView, _>(move |scope| views(scope))
        .shared_arc(notifications)
        .shared(sagas);
    Bus::builder()
        .dependencies(dependencies)
        .require_event_handlers()
        // Facts of a product's history (its stream, with `--storage
        // events`): nothing reacts to them.
        .allow_unhandled::<BatchAdded>()
        .allow_unhandled::<BatchQuantityChanged>()
        .retry(
            RetryPolicy::exponential(EVENT_HANDLER_ATTEMPTS)
                .first_delay(event_retry_wait)
                .max_delay(Duration::from_secs(300))
                .retry_if(is_transient)
                .hand_off_waits_over(Duration::ZERO),
        )
        .handler_retry::<reallocate>(
            RetryPolicy::exponential(REALLOCATION_ATTEMPTS)
                .first_delay(Duration::from_millis(10))
                .max_delay(Duration::from_millis(500))
                .retry_if(is_transient)
                .hand_off_waits_over(Duration::from_millis(100)),
        )
        .scheduler(scheduler.into_scheduler())
        .retry_command::<Allocate>(conflicts(), ServiceError::is_conflict)
        .retry_command::<ChangeBatchQuantity>(conflicts(), ServiceError::is_conflict)
        .retry_command::<CreateBatch>(conflicts(), ServiceError::is_conflict)
        .retry_command::<ReleaseAllocation>(conflicts(), ServiceError::is_conflict)
        .dead_letters(StoreSink(dead_letters))
        .spawner(|task| {
            tokio::spawn(task);
        })
        .build()
}

/// The retry of a command that lost an optimistic-concurrency race.
fn conflicts() -> RetryPolicy {
    RetryPolicy::exponential(CONFLICT_ATTEMPTS)
        .first_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(100))
}

/// The service's errors know whether they are transient; any other failure
/// (a storage error of the read model, a notifier down, a panic) is.
fn is_transient(cause: &FailureCause) -> bool {
    match cause
        .error()
        .and_then(|error| error.downcast_ref::<ServiceError>())
    {
        Some(error) => error.is_transient(),
        None => cause.is_transient(),
    }
}
