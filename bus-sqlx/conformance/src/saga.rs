//! The sagas' and scheduler's conformance suite: what every backend (in
//! memory, SQLite, PostgreSQL) must do, written once against the
//! [`Scheduler`] and [`SagaStore`] traits, on a virtual clock: no test
//! sleeps to wait for a time. [`saga_tests!`](crate::saga_tests) expands
//! to one test per function below, given an `async fn(VirtualClock)` that
//! makes an empty backend.
//!
//! The suite's saga waits for an order's payment: `Ordered` starts it and
//! requests a timeout an hour later; `Pay` (a command) completes it;
//! `PaymentOverdue`, the timeout, cancels the order (`OrderCancelled`) and
//! completes it; `Noted` adds to its state (no saga: ignored);
//! `Disputed` finds none: dead-lettered at once; `Refund` (a command)
//! finds none: an error to its caller; `Botched` fails the handler.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arch_events::saga::{saga, SagaContext, SagaError, SagaRecord, SagaStore, Sagas};
use arch_events::schedule::{ScheduledMessage, Scheduler, VirtualClock, MAX_ATTEMPTS};
use arch_events::{
    handler, Bus, Command, Dependencies, DispatchError, Event, MessageContext, MessageId,
    Registrations, RetryPolicy,
};
use serde::{Deserialize, Serialize};

/// A backend under test, and whatever keeps its database alive.
pub struct SagasUnderTest {
    /// The scheduler.
    pub scheduler: Arc<dyn Scheduler>,
    /// The same backend, as the sagas' store.
    pub sagas: Arc<dyn SagaStore>,
    /// Another process on the same database (in memory: the same one).
    pub other: (Arc<dyn Scheduler>, Arc<dyn SagaStore>),
    /// A process started after every other one stopped, on the same
    /// database; `None` in memory (nothing survives there).
    pub restart: Option<Restart>,
    /// The processes' stores: dropped with the test, or by a restart (the
    /// database itself lives in `restart`).
    pub keep: Box<dyn Any + Send>,
}

/// Opens the backend again, as a process started later does.
pub type Restart = Box<
    dyn FnOnce(
            VirtualClock,
        )
            -> Pin<Box<dyn Future<Output = (Arc<dyn Scheduler>, Box<dyn Any + Send>)> + Send>>
        + Send,
>;

/// The backend of `database` (fresh): two processes on it, each a store
/// of its own on a pool of its own, and a restart that opens a third once
/// they stopped.
pub async fn on_database<DB: crate::Ledger>(
    database: crate::TestDatabase,
    clock: VirtualClock,
) -> SagasUnderTest {
    async fn open<DB: crate::Ledger>(
        url: String,
        clock: VirtualClock,
    ) -> (
        arch_events_sqlx::Store<DB>,
        Arc<arch_events_sqlx::SqlScheduler<DB>>,
    ) {
        let store = arch_events_sqlx::Store::open(DB::connect(&url).await)
            .await
            .expect("opens");
        let scheduler = Arc::new(store.scheduler().with_clock(clock).batch(7));
        (store, scheduler)
    }
    let (here, scheduler) = open::<DB>(database.url.clone(), clock.clone()).await;
    let (there, other) = open::<DB>(database.url.clone(), clock).await;
    let restart: Restart = Box::new(move |clock| {
        let url = database.url.clone();
        Box::pin(async move {
            let (store, scheduler) = open::<DB>(url, clock).await;
            let scheduler: Arc<dyn Scheduler> = scheduler;
            (
                scheduler,
                Box::new((store, database)) as Box<dyn Any + Send>,
            )
        })
    });
    let other_sagas: Arc<dyn SagaStore> = other.clone();
    SagasUnderTest {
        other: (other, other_sagas),
        sagas: scheduler.clone(),
        scheduler,
        restart: Some(restart),
        keep: Box::new((here, there)),
    }
}

/// Expands to one `#[tokio::test]` per test of the sagas' and scheduler's
/// suite, each on a fresh backend from `$fresh`.
#[macro_export]
macro_rules! saga_tests {
    ($fresh:path) => {
        $crate::saga_tests!(@each $fresh;
            a_saga_starts_continues_and_completes_and_its_timeout_goes_with_it,
            a_timeout_fires_at_its_time_on_the_virtual_clock_and_not_before,
            a_message_after_completion_is_a_no_op,
            a_continuing_message_that_finds_no_saga_does_what_it_declares,
            racing_starts_make_one_saga,
            concurrent_messages_to_one_saga_lose_no_update,
            a_saga_whose_handler_fails_stores_nothing,
            two_processes_continue_one_saga_without_losing_an_update,
            a_scheduled_command_fires_once_with_the_ids_of_what_scheduled_it,
            scheduled_messages_fire_in_due_order,
            a_cancelled_message_never_fires,
            a_failing_command_is_tried_again_later_then_parked,
            two_processes_fire_each_due_message_once,
            a_message_due_while_no_process_ran_fires_after_a_restart,
            a_saga_with_an_unschedulable_timeout_fails_and_stores_nothing,
            a_timeout_cancelled_while_it_fires_is_ignored,
            a_message_this_bus_does_not_know_is_left_for_another,
            a_declined_start_stores_nothing,
            a_saga_that_starts_no_new_instance_never_reads_for_a_start,
        );
    };
    (@each $fresh:path; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let clock = arch_events::schedule::VirtualClock::new();
                $crate::saga::$test($fresh(clock.clone()).await, clock).await;
            }
        )*
    };
}

/// An order was placed: starts the saga.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "conformance.ordered", serde)]
pub struct Ordered {
    /// The order.
    pub order: u32,
}

/// Pays an order: completes its saga.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "conformance.pay", serde, error = SagaError)]
pub struct Pay {
    /// The order.
    pub order: u32,
}

/// Refunds an order: an error when it has no saga.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "conformance.refund", serde, error = SagaError)]
pub struct Refund {
    /// The order.
    pub order: u32,
}

/// A note on an order, kept in its saga's state; ignored without one.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "conformance.noted", serde)]
pub struct Noted {
    /// The order.
    pub order: u32,
    /// The note.
    pub note: u32,
}

/// A dispute: dead-lettered at once when the order has no saga.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "conformance.disputed", serde)]
pub struct Disputed {
    /// The order.
    pub order: u32,
}

/// The saga's handler fails on it.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "conformance.botched", serde)]
pub struct Botched {
    /// The order.
    pub order: u32,
}

/// Asks the saga for a timeout that cannot be scheduled.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "conformance.misfired", serde)]
pub struct Misfired {
    /// The order.
    pub order: u32,
}

/// Not derived with `serde`: it cannot be kept to be sent later.
#[derive(Debug, Clone, Serialize, Event)]
#[event(name = "conformance.unkept")]
pub struct Unkept {
    /// The order.
    pub order: u32,
}

/// Moves an order's deadline: the saga cancels its timeout and requests
/// another.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "conformance.extended", serde)]
pub struct Extended {
    /// The order.
    pub order: u32,
}

/// The saga's timeout.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "conformance.payment_overdue", serde)]
pub struct PaymentOverdue {
    /// The order.
    pub order: u32,
}

/// What the timeout publishes.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "conformance.order_cancelled", serde)]
pub struct OrderCancelled {
    /// The order.
    pub order: u32,
}

/// The order the saga declines: it starts no saga.
pub const DECLINED: u32 = 999;

/// How long an order waits for its payment.
pub const PAYMENT_WINDOW: Duration = Duration::from_secs(3600);

/// The saga's state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AwaitPayment {
    /// The order.
    pub order: u32,
    /// How many `Ordered` it handled.
    pub starts: u32,
    /// Its notes, in order.
    pub notes: Vec<u32>,
    /// The timeout it waits for.
    pub deadline: Option<MessageId>,
}

#[saga(name = "conformance.await_payment")]
impl AwaitPayment {
    #[starts(by = order)]
    fn ordered(&mut self, event: &Ordered, saga: &mut SagaContext) {
        if event.order == DECLINED {
            saga.decline();
            return;
        }
        self.order = event.order;
        self.starts += 1;
        if self.starts == 1 {
            let deadline =
                saga.request_timeout(PAYMENT_WINDOW, &PaymentOverdue { order: event.order });
            self.deadline = Some(deadline);
        }
    }

    #[handles(by = order, not_found = ignore)]
    fn noted(&mut self, event: &Noted, _: &mut SagaContext) {
        self.notes.push(event.note);
    }

    #[handles(by = order, not_found = error)]
    fn paid(&mut self, _: &Pay, saga: &mut SagaContext) {
        saga.mark_completed();
    }

    #[handles(by = order, not_found = ignore)]
    fn extended(&mut self, event: &Extended, saga: &mut SagaContext) {
        if let Some(old) = self.deadline.take() {
            saga.cancel_timeout(old);
        }
        let deadline = saga.request_timeout(PAYMENT_WINDOW, &PaymentOverdue { order: event.order });
        self.deadline = Some(deadline);
    }

    #[handles(by = order, not_found = error)]
    fn refund(&mut self, _: &Refund, _: &mut SagaContext) {}

    #[handles(by = order, not_found = dead_letter)]
    fn disputed(&mut self, _: &Disputed, _: &mut SagaContext) {}

    #[handles(by = order, not_found = ignore)]
    fn botched(&mut self, event: &Botched, saga: &mut SagaContext) -> Result<(), String> {
        self.notes.push(0);
        saga.publish(OrderCancelled { order: event.order });
        saga.request_timeout(PAYMENT_WINDOW, &PaymentOverdue { order: event.order });
        Err(format!("order {} botched", event.order))
    }

    #[handles(by = order, not_found = ignore)]
    fn misfired(&mut self, event: &Misfired, saga: &mut SagaContext) {
        self.notes.push(1);
        saga.request_timeout(PAYMENT_WINDOW, &Unkept { order: event.order });
    }

    #[timeout(by = order, releases(OrderCancelled))]
    fn overdue(&mut self, _: &PaymentOverdue, saga: &mut SagaContext) {
        saga.publish(OrderCancelled { order: self.order });
        saga.mark_completed();
    }
}

/// Sends a reminder (the scheduler's command).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "conformance.remind", serde)]
pub struct Remind {
    /// Whom.
    pub customer: String,
}

/// Always fails.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "conformance.flaky", serde, error = std::io::Error)]
pub struct Flaky;

/// What the suite's handlers saw.
#[derive(Debug, Default)]
pub struct Journal {
    /// Orders cancelled, in order.
    pub cancelled: Mutex<Vec<u32>>,
    /// Reminders sent, with the ids they were dispatched with.
    pub reminded: Mutex<Vec<(String, MessageContext)>>,
    /// Attempts of `Flaky`.
    pub flaky: Mutex<u32>,
}

#[handler]
fn record_cancelled(event: &OrderCancelled, journal: &Journal) {
    journal.cancelled.lock().unwrap().push(event.order);
}

#[handler]
fn remind(
    command: Remind,
    journal: &Journal,
    flow: MessageContext,
) -> Result<(), std::convert::Infallible> {
    journal
        .reminded
        .lock()
        .unwrap()
        .push((command.customer, flow));
    Ok(())
}

#[handler]
fn flaky(_: Flaky, journal: &Journal) -> Result<(), std::io::Error> {
    *journal.flaky.lock().unwrap() += 1;
    Err(std::io::Error::other("the mail server is down"))
}

/// The suite's bus over `sagas`, writing to `journal`.
pub fn bus(sagas: Arc<dyn SagaStore>, journal: Arc<Journal>) -> Bus {
    bus_with(Sagas::new(sagas), journal)
}

/// The suite's bus over the runtime `sagas`, writing to `journal`.
pub fn bus_with(sagas: Sagas, journal: Arc<Journal>) -> Bus {
    Bus::builder()
        .registrations(
            Registrations::new()
                .saga::<AwaitPayment>()
                .handler::<record_cancelled>()
                .handler::<remind>()
                .handler::<flaky>(),
        )
        .dependencies(Dependencies::new().shared(sagas).shared_arc(journal))
        .retry(RetryPolicy::exponential(3).first_delay(Duration::from_millis(1)))
        .build()
        .expect("the suite's bus builds")
}

/// The saga `order`'s state, if it runs.
async fn state(sagas: &dyn SagaStore, order: u32) -> Option<SagaRecord> {
    sagas
        .load("conformance.await_payment", &order.to_string())
        .await
        .unwrap()
}

async fn running(sagas: &dyn SagaStore, order: u32) -> (AwaitPayment, u64) {
    match state(sagas, order).await {
        Some(SagaRecord::Active { state, version, .. }) => {
            (serde_json::from_str(&state).unwrap(), version)
        }
        other => panic!("saga {order} is not running: {other:?}"),
    }
}

pub async fn a_saga_starts_continues_and_completes_and_its_timeout_goes_with_it(
    under: SagasUnderTest,
    clock: VirtualClock,
) {
    let journal = Arc::new(Journal::default());
    let bus = bus(under.sagas.clone(), journal.clone());
    bus.publish(Ordered { order: 1 }).await.unwrap();
    bus.publish(Noted { order: 1, note: 7 }).await.unwrap();
    let (saga, version) = running(&*under.sagas, 1).await;
    assert_eq!(
        (saga.order, saga.starts, saga.notes, version),
        (1, 1, vec![7], 2)
    );
    let pending = under.scheduler.pending().await.unwrap();
    assert_eq!(pending.len(), 1, "its timeout waits");
    assert_eq!(pending[0].name(), "conformance.payment_overdue");
    assert_eq!(pending[0].due(), clock.now() + PAYMENT_WINDOW);

    bus.dispatch(Pay { order: 1 }).await.unwrap();
    assert_eq!(
        state(&*under.sagas, 1).await,
        Some(SagaRecord::Completed { version: 3 })
    );
    assert!(
        under.scheduler.pending().await.unwrap().is_empty(),
        "completion cancels its timeout"
    );
    let fired = clock
        .advance_and_fire(PAYMENT_WINDOW * 2, &*under.scheduler, &bus)
        .await
        .unwrap();
    assert_eq!(fired, 0);
    assert!(journal.cancelled.lock().unwrap().is_empty());
}

pub async fn a_timeout_fires_at_its_time_on_the_virtual_clock_and_not_before(
    under: SagasUnderTest,
    clock: VirtualClock,
) {
    let journal = Arc::new(Journal::default());
    let bus = bus(under.sagas.clone(), journal.clone());
    bus.publish(Ordered { order: 2 }).await.unwrap();
    let almost = PAYMENT_WINDOW - Duration::from_millis(1);
    assert_eq!(
        clock
            .advance_and_fire(almost, &*under.scheduler, &bus)
            .await
            .unwrap(),
        0
    );
    assert!(journal.cancelled.lock().unwrap().is_empty(), "not due yet");
    assert!(matches!(
        state(&*under.sagas, 2).await,
        Some(SagaRecord::Active { .. })
    ));

    let fired = clock
        .advance_and_fire(Duration::from_millis(1), &*under.scheduler, &bus)
        .await
        .unwrap();
    assert_eq!(fired, 1);
    assert!(bus.settled(Duration::from_secs(10)).await);
    assert_eq!(
        *journal.cancelled.lock().unwrap(),
        [2],
        "the timeout's event was handled"
    );
    assert_eq!(
        state(&*under.sagas, 2).await,
        Some(SagaRecord::Completed { version: 2 })
    );
    assert!(under.scheduler.pending().await.unwrap().is_empty());
}

pub async fn a_message_after_completion_is_a_no_op(under: SagasUnderTest, _clock: VirtualClock) {
    let journal = Arc::new(Journal::default());
    let bus = bus(under.sagas.clone(), journal.clone());
    bus.publish(Ordered { order: 3 }).await.unwrap();
    bus.dispatch(Pay { order: 3 }).await.unwrap();
    // A late timeout, a late payment, a late note, a late start: each is
    // logged and done, none an error, none a change.
    bus.publish(PaymentOverdue { order: 3 }).await.unwrap();
    bus.dispatch(Pay { order: 3 })
        .await
        .expect("a late command is no error");
    bus.publish(Noted { order: 3, note: 1 }).await.unwrap();
    bus.publish(Ordered { order: 3 }).await.unwrap();
    assert_eq!(
        state(&*under.sagas, 3).await,
        Some(SagaRecord::Completed { version: 2 })
    );
    assert!(journal.cancelled.lock().unwrap().is_empty());
    assert!(bus.dead_letters().unwrap().is_empty());
    assert!(
        under.scheduler.pending().await.unwrap().is_empty(),
        "a late start schedules nothing"
    );
}

pub async fn a_continuing_message_that_finds_no_saga_does_what_it_declares(
    under: SagasUnderTest,
    _clock: VirtualClock,
) {
    let journal = Arc::new(Journal::default());
    let bus = bus(under.sagas.clone(), journal.clone());
    // ignore
    bus.publish(Noted { order: 4, note: 1 }).await.unwrap();
    assert_eq!(
        state(&*under.sagas, 4).await,
        None,
        "ignored: nothing started"
    );
    // error, on a command: its caller gets it, typed
    match bus.dispatch(Refund { order: 4 }).await {
        Err(DispatchError::Handler(SagaError::NotFound { saga, id, message })) => {
            assert_eq!(
                (saga, id.as_str(), message),
                ("conformance.await_payment", "4", "conformance.refund")
            );
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    // dead_letter, on an event: dead-lettered after one attempt, not three
    bus.publish(Disputed { order: 4 }).await.unwrap();
    let letters = bus.dead_letters().unwrap().take();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].attempts(),
        1,
        "never retried: {}",
        letters[0].error()
    );
    assert!(
        letters[0]
            .error()
            .contains("no saga `conformance.await_payment` has the id `4`"),
        "{}",
        letters[0].error()
    );
    assert_eq!(state(&*under.sagas, 4).await, None);
}

pub async fn racing_starts_make_one_saga(under: SagasUnderTest, _clock: VirtualClock) {
    let journal = Arc::new(Journal::default());
    let bus = bus(under.sagas.clone(), journal);
    let starts = 8;
    let tasks: Vec<_> = (0..starts)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.publish(Ordered { order: 5 }).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(bus.dead_letters().unwrap().is_empty());
    let (saga, version) = running(&*under.sagas, 5).await;
    assert_eq!(saga.starts, starts, "every start reached the one saga");
    assert_eq!(version, u64::from(starts));
    assert_eq!(
        under.scheduler.pending().await.unwrap().len(),
        1,
        "one timeout, from the first start"
    );
}

pub async fn concurrent_messages_to_one_saga_lose_no_update(
    under: SagasUnderTest,
    _clock: VirtualClock,
) {
    let journal = Arc::new(Journal::default());
    let bus = bus(under.sagas.clone(), journal);
    bus.publish(Ordered { order: 6 }).await.unwrap();
    let notes = 24;
    let tasks: Vec<_> = (1..=notes)
        .map(|note| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.publish(Noted { order: 6, note }).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(
        bus.dead_letters().unwrap().is_empty(),
        "{:?}",
        bus.dead_letters()
            .unwrap()
            .letters()
            .first()
            .map(|l| l.error().to_owned())
    );
    let (mut saga, version) = running(&*under.sagas, 6).await;
    saga.notes.sort_unstable();
    assert_eq!(saga.notes, (1..=notes).collect::<Vec<_>>());
    assert_eq!(version, u64::from(notes) + 1);
}

pub async fn a_saga_whose_handler_fails_stores_nothing(under: SagasUnderTest, clock: VirtualClock) {
    let journal = Arc::new(Journal::default());
    let bus = bus(under.sagas.clone(), journal.clone());
    bus.publish(Ordered { order: 7 }).await.unwrap();
    let before = under.scheduler.pending().await.unwrap();
    bus.publish(Botched { order: 7 }).await.unwrap();
    let letters = bus.dead_letters().unwrap().take();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts(), 3, "retried by the bus's policy");
    assert!(
        letters[0].error().contains("order 7 botched"),
        "{}",
        letters[0].error()
    );
    let (saga, version) = running(&*under.sagas, 7).await;
    assert_eq!((saga.notes.len(), version), (0, 1), "no state change");
    assert_eq!(
        under.scheduler.pending().await.unwrap(),
        before,
        "no timeout"
    );
    assert!(journal.cancelled.lock().unwrap().is_empty(), "no event");
    let _ = clock;
}

pub async fn two_processes_continue_one_saga_without_losing_an_update(
    under: SagasUnderTest,
    _clock: VirtualClock,
) {
    let journal = Arc::new(Journal::default());
    let here = bus(under.sagas.clone(), journal.clone());
    let there = bus(under.other.1.clone(), journal);
    here.publish(Ordered { order: 8 }).await.unwrap();
    let notes = 20;
    let tasks: Vec<_> = (1..=notes)
        .map(|note| {
            let bus = if note % 2 == 0 {
                here.clone()
            } else {
                there.clone()
            };
            tokio::spawn(async move { bus.publish(Noted { order: 8, note }).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(here.dead_letters().unwrap().is_empty());
    assert!(there.dead_letters().unwrap().is_empty());
    let (mut saga, _) = running(&*under.sagas, 8).await;
    saga.notes.sort_unstable();
    assert_eq!(saga.notes, (1..=notes).collect::<Vec<_>>());
}

pub async fn a_scheduled_command_fires_once_with_the_ids_of_what_scheduled_it(
    under: SagasUnderTest,
    clock: VirtualClock,
) {
    let journal = Arc::new(Journal::default());
    let bus = bus(under.sagas.clone(), journal.clone());
    let cause = MessageContext::root();
    let message = ScheduledMessage::command(
        &Remind {
            customer: "ada".into(),
        },
        clock.now() + Duration::from_secs(60),
    )
    .unwrap()
    .caused_by(&cause);
    let id = message.id();
    under.scheduler.schedule(message.clone()).await.unwrap();
    under.scheduler.schedule(message).await.unwrap(); // the same id: kept once
    assert_eq!(
        under.scheduler.next_due().await.unwrap(),
        Some(clock.now() + Duration::from_secs(60))
    );
    assert_eq!(under.scheduler.fire_due(&bus).await.unwrap(), 0, "not due");
    assert_eq!(
        clock
            .advance_and_fire(Duration::from_secs(3600), &*under.scheduler, &bus)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        under.scheduler.fire_due(&bus).await.unwrap(),
        0,
        "fired once"
    );
    let reminded = journal.reminded.lock().unwrap().clone();
    assert_eq!(reminded.len(), 1);
    let (customer, flow) = &reminded[0];
    assert_eq!(customer, "ada");
    assert_eq!(flow.message_id(), id, "dispatched with its own id");
    assert!(flow.is_inbound(), "as an inbound message, for the inbox");
    assert_eq!(flow.causation_id(), Some(cause.message_id()));
    assert_eq!(flow.correlation_id(), cause.correlation_id());
    assert!(under.scheduler.pending().await.unwrap().is_empty());
    assert_eq!(under.scheduler.next_due().await.unwrap(), None);
}

pub async fn scheduled_messages_fire_in_due_order(under: SagasUnderTest, clock: VirtualClock) {
    let journal = Arc::new(Journal::default());
    let bus = bus(under.sagas.clone(), journal.clone());
    let now = clock.now();
    for (customer, after) in [("c", 30), ("a", 10), ("d", 40), ("b", 20)] {
        let message = ScheduledMessage::command(
            &Remind {
                customer: customer.into(),
            },
            now + Duration::from_secs(after),
        )
        .unwrap();
        under.scheduler.schedule(message).await.unwrap();
    }
    assert_eq!(
        clock
            .advance_and_fire(Duration::from_secs(25), &*under.scheduler, &bus)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        clock
            .advance_and_fire(Duration::from_secs(25), &*under.scheduler, &bus)
            .await
            .unwrap(),
        2
    );
    let order: Vec<String> = journal
        .reminded
        .lock()
        .unwrap()
        .iter()
        .map(|(c, _)| c.clone())
        .collect();
    assert_eq!(order, ["a", "b", "c", "d"]);
}

pub async fn a_cancelled_message_never_fires(under: SagasUnderTest, clock: VirtualClock) {
    let journal = Arc::new(Journal::default());
    let bus = bus(under.sagas.clone(), journal.clone());
    let due = clock.now() + Duration::from_secs(5);
    let kept = ScheduledMessage::command(
        &Remind {
            customer: "kept".into(),
        },
        due,
    )
    .unwrap();
    let dropped = ScheduledMessage::command(
        &Remind {
            customer: "dropped".into(),
        },
        due,
    )
    .unwrap();
    under.scheduler.schedule(kept.clone()).await.unwrap();
    under.scheduler.schedule(dropped.clone()).await.unwrap();
    assert!(under.scheduler.cancel(dropped.id()).await.unwrap());
    assert!(
        !under.scheduler.cancel(dropped.id()).await.unwrap(),
        "cancelled once"
    );
    assert!(
        !under.scheduler.cancel(MessageId::new()).await.unwrap(),
        "never scheduled"
    );
    clock
        .advance_and_fire(Duration::from_secs(5), &*under.scheduler, &bus)
        .await
        .unwrap();
    let sent: Vec<String> = journal
        .reminded
        .lock()
        .unwrap()
        .iter()
        .map(|(c, _)| c.clone())
        .collect();
    assert_eq!(sent, ["kept"]);
    assert!(
        !under.scheduler.cancel(kept.id()).await.unwrap(),
        "fired already"
    );
}

pub async fn a_failing_command_is_tried_again_later_then_parked(
    under: SagasUnderTest,
    clock: VirtualClock,
) {
    let journal = Arc::new(Journal::default());
    let bus = bus(under.sagas.clone(), journal.clone());
    let message = ScheduledMessage::command(&Flaky, clock.now()).unwrap();
    under.scheduler.schedule(message.clone()).await.unwrap();
    assert_eq!(under.scheduler.fire_due(&bus).await.unwrap(), 1);
    assert_eq!(*journal.flaky.lock().unwrap(), 1);
    assert_eq!(
        under.scheduler.fire_due(&bus).await.unwrap(),
        0,
        "put off, not fired at once again"
    );
    let waiting = under.scheduler.pending().await.unwrap();
    assert_eq!(
        (waiting.len(), waiting[0].attempts(), waiting[0].is_parked()),
        (1, 1, false)
    );
    assert!(waiting[0]
        .last_error()
        .unwrap()
        .contains("the mail server is down"));
    assert!(waiting[0].due() > clock.now());
    // A day on: fired until parked, never after.
    clock
        .advance_and_fire(Duration::from_secs(86_400), &*under.scheduler, &bus)
        .await
        .unwrap();
    assert_eq!(*journal.flaky.lock().unwrap(), MAX_ATTEMPTS);
    let parked = under.scheduler.pending().await.unwrap();
    assert_eq!(parked.len(), 1, "kept, to be looked at");
    assert!(parked[0].is_parked());
    assert_eq!(parked[0].attempts(), MAX_ATTEMPTS);
    assert_eq!(
        under.scheduler.next_due().await.unwrap(),
        None,
        "a parked message is not due"
    );
    // A parked message can be given up...
    let spare = ScheduledMessage::command(&Flaky, clock.now()).unwrap();
    under.scheduler.schedule(spare.clone()).await.unwrap();
    clock
        .advance_and_fire(Duration::from_secs(86_400), &*under.scheduler, &bus)
        .await
        .unwrap();
    let both = under.scheduler.pending().await.unwrap();
    assert!(both.iter().all(|message| message.is_parked()), "{both:?}");
    assert!(
        under.scheduler.cancel(spare.id()).await.unwrap(),
        "parked, cancelled"
    );
    assert_eq!(under.scheduler.pending().await.unwrap().len(), 1);
    let flaky_runs = *journal.flaky.lock().unwrap();
    // ... or, its fault fixed, fired again, from its first attempt.
    assert!(under.scheduler.unpark(parked[0].id()).await.unwrap());
    assert!(
        !under.scheduler.unpark(parked[0].id()).await.unwrap(),
        "unparked once"
    );
    let waiting = under.scheduler.pending().await.unwrap();
    assert_eq!((waiting[0].attempts(), waiting[0].is_parked()), (0, false));
    assert_eq!(under.scheduler.fire_due(&bus).await.unwrap(), 1);
    assert_eq!(*journal.flaky.lock().unwrap(), flaky_runs + 1);
    // A waiting one can be cancelled too.
    assert!(under.scheduler.cancel(message.id()).await.unwrap());
    assert!(under.scheduler.pending().await.unwrap().is_empty());
}

pub async fn two_processes_fire_each_due_message_once(under: SagasUnderTest, clock: VirtualClock) {
    let journal = Arc::new(Journal::default());
    let here = bus(under.sagas.clone(), journal.clone());
    let there = bus(under.other.1.clone(), journal.clone());
    let count = 60;
    for n in 0..count {
        let message = ScheduledMessage::command(
            &Remind {
                customer: n.to_string(),
            },
            clock.now() + Duration::from_millis(n),
        )
        .unwrap();
        under.scheduler.schedule(message).await.unwrap();
    }
    clock.advance(Duration::from_secs(1));
    let until_none = |scheduler: Arc<dyn Scheduler>, bus: Bus| {
        tokio::spawn(async move {
            let mut fired = 0;
            loop {
                match scheduler.fire_due(&bus).await.unwrap() {
                    0 => return fired,
                    some => fired += some,
                }
            }
        })
    };
    let a = until_none(under.scheduler.clone(), here);
    let b = until_none(under.other.0.clone(), there);
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(a + b, count as usize);
    let mut sent: Vec<String> = journal
        .reminded
        .lock()
        .unwrap()
        .iter()
        .map(|(c, _)| c.clone())
        .collect();
    sent.sort();
    let mut expected: Vec<String> = (0..count).map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(sent, expected, "each once");
}

pub async fn a_message_due_while_no_process_ran_fires_after_a_restart(
    under: SagasUnderTest,
    clock: VirtualClock,
) {
    let Some(restart) = under.restart else {
        return; // in memory: nothing outlives the process
    };
    let due = clock.now() + Duration::from_secs(600);
    let message = ScheduledMessage::command(
        &Remind {
            customer: "later".into(),
        },
        due,
    )
    .unwrap();
    under.scheduler.schedule(message.clone()).await.unwrap();
    // Every process stops; the database stays (the restart holds it).
    drop((under.scheduler, under.sagas, under.other, under.keep));
    clock.advance(Duration::from_secs(3600));
    let (scheduler, keep) = restart(clock.clone()).await;
    let journal = Arc::new(Journal::default());
    let sagas: Arc<dyn SagaStore> = Arc::new(arch_events::schedule::InMemoryScheduler::new());
    let bus = bus(sagas, journal.clone());
    assert_eq!(scheduler.fire_due(&bus).await.unwrap(), 1);
    assert_eq!(
        journal.reminded.lock().unwrap()[0].1.message_id(),
        message.id()
    );
    drop(keep);
}

pub async fn a_saga_with_an_unschedulable_timeout_fails_and_stores_nothing(
    under: SagasUnderTest,
    _clock: VirtualClock,
) {
    let journal = Arc::new(Journal::default());
    let bus = bus(under.sagas.clone(), journal);
    bus.publish(Ordered { order: 9 }).await.unwrap();
    bus.publish(Misfired { order: 9 }).await.unwrap();
    let letters = bus.dead_letters().unwrap().take();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0]
            .error()
            .contains("`conformance.unkept` cannot be scheduled"),
        "{}",
        letters[0].error()
    );
    let (saga, version) = running(&*under.sagas, 9).await;
    assert_eq!((saga.notes.len(), version), (0, 1));
}

pub async fn a_timeout_cancelled_while_it_fires_is_ignored(
    under: SagasUnderTest,
    clock: VirtualClock,
) {
    let journal = Arc::new(Journal::default());
    let bus = bus(under.sagas.clone(), journal.clone());
    bus.publish(Ordered { order: 10 }).await.unwrap();
    let (saga, _) = running(&*under.sagas, 10).await;
    let first = saga.deadline.expect("a deadline");
    bus.publish(Extended { order: 10 }).await.unwrap();
    let pending = under.scheduler.pending().await.unwrap();
    assert_eq!(pending.len(), 1, "the first timeout is cancelled");
    assert_ne!(pending[0].id(), first);
    // The first timeout, fired just before it was cancelled, arrives: the
    // saga no longer waits for it.
    let late = MessageContext::restored(first, first, None);
    bus.publish_in(PaymentOverdue { order: 10 }, late)
        .await
        .unwrap();
    // So does a timeout message sent by hand.
    bus.publish(PaymentOverdue { order: 10 }).await.unwrap();
    assert!(journal.cancelled.lock().unwrap().is_empty());
    assert!(matches!(
        state(&*under.sagas, 10).await,
        Some(SagaRecord::Active { .. })
    ));
    // The second one, when due, is handled.
    let fired = clock
        .advance_and_fire(PAYMENT_WINDOW, &*under.scheduler, &bus)
        .await
        .unwrap();
    assert_eq!(fired, 1);
    assert!(bus.settled(Duration::from_secs(10)).await);
    assert_eq!(*journal.cancelled.lock().unwrap(), [10]);
    assert!(matches!(
        state(&*under.sagas, 10).await,
        Some(SagaRecord::Completed { .. })
    ));
}

pub async fn a_message_this_bus_does_not_know_is_left_for_another(
    under: SagasUnderTest,
    clock: VirtualClock,
) {
    let journal = Arc::new(Journal::default());
    // A bus of another build, without `Remind` (a rolling upgrade).
    let older = Bus::builder()
        .registrations(
            Registrations::new()
                .saga::<AwaitPayment>()
                .handler::<record_cancelled>(),
        )
        .dependencies(
            Dependencies::new()
                .shared(Sagas::new(under.sagas.clone()))
                .shared_arc(journal.clone()),
        )
        .build()
        .unwrap();
    let message = ScheduledMessage::command(
        &Remind {
            customer: "new".into(),
        },
        clock.now(),
    )
    .unwrap();
    under.scheduler.schedule(message.clone()).await.unwrap();
    // An event it does not know either (no type of that name in that build).
    let unknown = ScheduledMessage::restored(
        MessageId::new(),
        arch_events::MessageKind::Event,
        "conformance.from_the_future".into(),
        "{}".into(),
        clock.now(),
        MessageId::new(),
        None,
        None,
    );
    under.scheduler.schedule(unknown).await.unwrap();
    assert_eq!(under.scheduler.fire_due(&older).await.unwrap(), 0);
    let waiting = under.scheduler.pending().await.unwrap();
    assert_eq!(waiting.len(), 2);
    for message in &waiting {
        let failures = (message.attempts(), message.is_parked());
        assert_eq!(failures, (0, false), "no attempt counted");
        assert!(message.due() > clock.now(), "put off");
    }
    // A process that knows it fires it, once its turn comes.
    let newer = bus(under.sagas.clone(), journal.clone());
    let fired = clock
        .advance_and_fire(Duration::from_secs(120), &*under.scheduler, &newer)
        .await
        .unwrap();
    assert_eq!(fired, 1);
    assert_eq!(
        journal.reminded.lock().unwrap()[0].1.message_id(),
        message.id()
    );
}

/// Completed sagas leave their id behind, so that a late message is seen
/// as late; `purge_completed` deletes the old ones, and no running one.
/// (On the SQL databases: the in-memory scheduler keeps nothing past its
/// process.)
pub async fn old_completed_sagas_are_purged<DB: crate::Ledger>(database: crate::TestDatabase) {
    let store = arch_events_sqlx::Store::open(DB::connect(&database.url).await)
        .await
        .expect("opens");
    let scheduler = Arc::new(store.scheduler());
    let bus = bus(scheduler.clone(), Arc::new(Journal::default()));
    for order in [1, 2] {
        bus.publish(Ordered { order }).await.unwrap();
    }
    bus.dispatch(Pay { order: 1 }).await.unwrap();
    let recent = scheduler
        .purge_completed(Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(recent, 0, "too recent");
    assert_eq!(scheduler.purge_completed(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(state(&*scheduler, 1).await, None, "purged");
    assert!(
        matches!(state(&*scheduler, 2).await, Some(SagaRecord::Active { .. })),
        "running: kept"
    );
    store.close().await;
}

pub async fn a_declined_start_stores_nothing(under: SagasUnderTest, _clock: VirtualClock) {
    let journal = Arc::new(Journal::default());
    let bus = bus(under.sagas.clone(), journal);
    bus.publish(Ordered { order: DECLINED }).await.unwrap();
    assert_eq!(state(&*under.sagas, DECLINED).await, None, "no saga");
    assert!(
        under.scheduler.pending().await.unwrap().is_empty(),
        "no timeout"
    );
    assert!(bus.dead_letters().unwrap().is_empty());
}

/// A saga store that counts what it is asked, over another.
struct Counting {
    store: Arc<dyn SagaStore>,
    asked: Mutex<usize>,
}

#[arch_events::async_trait]
impl SagaStore for Counting {
    async fn load(&self, saga: &'static str, id: &str) -> Result<Option<SagaRecord>, SagaError> {
        *self.asked.lock().unwrap() += 1;
        self.store.load(saga, id).await
    }

    async fn commit(
        &self,
        change: arch_events::saga::SagaChange,
        releaser: &arch_events::EventReleaser,
        flow: &MessageContext,
    ) -> Result<(), SagaError> {
        *self.asked.lock().unwrap() += 1;
        self.store.commit(change, releaser, flow).await
    }

    fn now(&self) -> std::time::SystemTime {
        self.store.now()
    }
}

/// A runtime that starts no new instance of a saga (`Sagas::no_new`)
/// drops what would start one without asking the store, while the
/// instances already running go on: their messages update them, their
/// timeouts fire, a start for one of them is dropped too, a continuing
/// message that finds none does what it declares.
pub async fn a_saga_that_starts_no_new_instance_never_reads_for_a_start(
    under: SagasUnderTest,
    clock: VirtualClock,
) {
    let counting = Arc::new(Counting {
        store: under.sagas.clone(),
        asked: Mutex::new(0),
    });
    let journal = Arc::new(Journal::default());
    let on = bus_with(Sagas::new(counting.clone()), journal.clone());
    let off = bus_with(
        Sagas::new(counting.clone()).no_new::<AwaitPayment>(),
        journal.clone(),
    );
    // Started while the saga started instances.
    on.publish(Ordered { order: 9 }).await.unwrap();
    let (_, version) = running(&*under.sagas, 9).await;
    let timeouts = under.scheduler.pending().await.unwrap().len();
    assert_eq!(timeouts, 1, "order 9's timeout waits");
    let asked = *counting.asked.lock().unwrap();
    assert!(asked >= 2, "a start reads, then commits");
    // Starts: dropped unread, a new one as an existing one's.
    off.publish(Ordered { order: 8 }).await.unwrap();
    off.publish(Ordered { order: 9 }).await.unwrap();
    assert_eq!(
        *counting.asked.lock().unwrap(),
        asked,
        "the store was not asked"
    );
    assert_eq!(state(&*under.sagas, 8).await, None, "nothing started");
    assert_eq!(
        running(&*under.sagas, 9).await.1,
        version,
        "order 9 unchanged"
    );
    assert_eq!(
        under.scheduler.pending().await.unwrap().len(),
        timeouts,
        "no new timeout"
    );
    // The running one goes on; a missing one is not found.
    off.publish(Noted { order: 9, note: 5 }).await.unwrap();
    assert!(
        running(&*under.sagas, 9).await.1 > version,
        "order 9 went on"
    );
    match off.dispatch(Refund { order: 8 }).await {
        Err(DispatchError::Handler(SagaError::NotFound { saga, id, .. })) => {
            assert_eq!((saga, id.as_str()), ("conformance.await_payment", "8"));
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    // The running one's timeout fires on the runtime that starts none.
    let fired = clock
        .advance_and_fire(PAYMENT_WINDOW, &*under.scheduler, &off)
        .await
        .unwrap();
    assert_eq!(fired, 1);
    assert!(off.settled(Duration::from_secs(10)).await);
    assert_eq!(*journal.cancelled.lock().unwrap(), [9], "order 9 timed out");
    assert!(matches!(
        state(&*under.sagas, 9).await,
        Some(SagaRecord::Completed { .. })
    ));
    assert!(off.dead_letters().unwrap().is_empty());
    assert!(on.dead_letters().unwrap().is_empty());
}
