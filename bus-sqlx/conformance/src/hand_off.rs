//! Retries handed to the durable scheduler: `project_balance`'s retry
//! policy hands every wait off (`RetryPolicy::hand_off_waits_over`). The
//! event's delivery to it ends in the transaction that schedules the
//! retry; the retry, when due, commits the projection once (its unit of
//! work records the retry's id in the inbox), fires again for each attempt
//! its policy has left, ends a dead letter, and is made once by the
//! processes that outlive the one that scheduled it. On a virtual clock:
//! nothing sleeps for a retry.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arch_events::delivery::DeliveryLog;
use arch_events::schedule::{
    Fired, HandlerRetry, ScheduledMessage, Scheduler, SchedulerError, VirtualClock,
};
use arch_events::{async_trait, Bus, MessageId, MessageKind, RetryPolicy};
use arch_events_sqlx::{DeadLetterStore, SqlScheduler, Store};

use crate::{
    fast, handler_name, ledger, project_balance, App, Deposit, Ledger, Tally, TestDatabase,
};

/// The projection's policy: three attempts, 30 s then 60 s apart, every
/// wait handed to the scheduler.
fn projection_retry() -> RetryPolicy {
    RetryPolicy::exponential(3)
        .first_delay(Duration::from_secs(30))
        .max_delay(Duration::from_secs(3600))
        .without_jitter()
        .hand_off_waits_over(Duration::ZERO)
}

/// One process of the ledger whose projection hands its retries to the
/// store's scheduler, on `clock`.
struct Process<DB: Ledger> {
    app: App<DB>,
    scheduler: Arc<SqlScheduler<DB>>,
}

impl<DB: Ledger> Process<DB> {
    async fn start(db: &TestDatabase, clock: &VirtualClock) -> Self {
        Self::start_with(db, clock, Tally::default()).await
    }

    async fn start_with(db: &TestDatabase, clock: &VirtualClock, tally: Tally) -> Self {
        Self::start_wrapped(db, clock, tally, |scheduler, _| scheduler).await
    }

    /// A process whose bus hands its retries to what `wrap` makes of the
    /// store's scheduler (given the store's delivery log).
    async fn start_wrapped(
        db: &TestDatabase,
        clock: &VirtualClock,
        tally: Tally,
        wrap: impl FnOnce(Arc<SqlScheduler<DB>>, Arc<dyn DeliveryLog>) -> Arc<dyn Scheduler>,
    ) -> Self {
        let pool = db.pool::<DB>().await;
        let store = Store::open_with(pool.clone(), fast()).await.unwrap();
        DB::create_tables(&pool).await;
        let tally = Arc::new(tally);
        let scheduler = Arc::new(store.scheduler().with_clock(clock.clone()));
        let bus = Bus::builder()
            .registrations(ledger())
            .dependencies(App::dependencies(&store, &tally))
            .handler_retry::<project_balance>(projection_retry())
            .scheduler(wrap(scheduler.clone(), store.delivery_log()))
            .dead_letters(store.dead_letters())
            .spawner(|task| {
                tokio::spawn(task);
            })
            .build()
            .unwrap();
        Process {
            app: App { store, bus, tally },
            scheduler,
        }
    }

    async fn pending(&self) -> Vec<ScheduledMessage> {
        self.scheduler.pending().await.unwrap()
    }

    async fn advance(&self, clock: &VirtualClock, by: Duration) -> usize {
        clock
            .advance_and_fire(by, &*self.scheduler, &self.app.bus)
            .await
            .unwrap()
    }

    async fn balance(&self) -> i64 {
        DB::balance(self.app.store.pool(), "ada").await
    }

    fn projected(&self) -> Vec<(MessageId, u32)> {
        self.app.tally.projected.lock().unwrap().clone()
    }

    /// A deposit whose projection fails: its retry scheduled.
    async fn deposit_while_down(&self) -> ScheduledMessage {
        self.app.tally.projection_down.store(true, Ordering::SeqCst);
        self.app.deposit("ada", 5).await;
        let mut pending = self.pending().await;
        assert_eq!(pending.len(), 1, "{pending:?}");
        pending.remove(0)
    }
}

pub async fn a_handed_off_retry_ends_the_events_delivery_and_commits_once_when_due<DB: Ledger>(
    db: TestDatabase,
) {
    let clock = VirtualClock::new();
    let p = Process::<DB>::start(&db, &clock).await;
    let scheduled = p.deposit_while_down().await;

    // The dispatch made the first attempt, and went on.
    let event = *p.app.tally.counted().keys().next().expect("tallied");
    assert_eq!(p.projected(), [(event, 1)]);
    let retry = scheduled.handler_retry().expect("a handler's retry");
    assert_eq!(retry.handler, handler_name("project_balance"));
    assert_eq!(retry.attempt, 2);
    assert_eq!(retry.event_id, event);
    assert_eq!(scheduled.name(), "ledger.deposited");
    assert_eq!(scheduled.due(), clock.now() + Duration::from_secs(30));
    assert_eq!(
        p.app.store.delivery_lag().await.unwrap().count,
        0,
        "the event's delivery ended when its retry was scheduled"
    );
    assert!(p
        .app
        .store
        .dead_letters()
        .list(false)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        DB::count(
            p.app.store.pool(),
            "bus_scheduled WHERE name = 'handler-retry:ledger.deposited'"
        )
        .await,
        1,
        "kept under a name that a build without handler retries knows no event by"
    );

    // Not before its time; then once, with the event's id, as attempt 2.
    assert_eq!(p.advance(&clock, Duration::from_secs(29)).await, 0);
    p.app.tally.projection_down.store(false, Ordering::SeqCst);
    assert_eq!(p.advance(&clock, Duration::from_secs(1)).await, 1);
    assert_eq!(p.balance().await, 5);
    assert_eq!(p.projected(), [(event, 1), (event, 2)]);
    assert!(p.pending().await.is_empty());
    assert_eq!(
        DB::count(p.app.store.pool(), "bus_inbox").await,
        1,
        "the retry's id, recorded with the projection"
    );
    assert_eq!(p.advance(&clock, Duration::from_secs(3600)).await, 0);
    assert_eq!(p.balance().await, 5);
}

pub async fn a_handed_off_retry_fired_twice_has_its_committed_effect_once<DB: Ledger>(
    db: TestDatabase,
) {
    let clock = VirtualClock::new();
    let p = Process::<DB>::start(&db, &clock).await;
    let scheduled = p.deposit_while_down().await;
    p.app.tally.projection_down.store(false, Ordering::SeqCst);

    // Fired, and fired again before its row went (a crash between the
    // commit and the row's delete, a lease that ran out): one effect.
    let fired = p.app.bus.deliver_scheduled(&scheduled).await.unwrap();
    assert_eq!(fired, Fired::Done);
    let again = p.app.bus.deliver_scheduled(&scheduled).await.unwrap();
    assert_eq!(again, Fired::Done, "a duplicate is done, not a failure");
    assert_eq!(p.balance().await, 5);
    assert!(p
        .app
        .store
        .dead_letters()
        .list(false)
        .await
        .unwrap()
        .is_empty());

    // The scheduler finds it in the inbox: its row goes, unfired.
    let calls = p.projected().len();
    p.advance(&clock, Duration::from_secs(30)).await;
    assert!(p.pending().await.is_empty());
    assert_eq!(p.projected().len(), calls, "not called again");
    assert_eq!(p.balance().await, 5);
}

pub async fn a_handed_off_retry_that_fails_again_waits_then_is_a_dead_letter<DB: Ledger>(
    db: TestDatabase,
) {
    let clock = VirtualClock::new();
    let p = Process::<DB>::start(&db, &clock).await;
    let scheduled = p.deposit_while_down().await;

    // Attempt 2 fails: the same message waits for attempt 3, 60 s on.
    p.advance(&clock, Duration::from_secs(30)).await;
    let pending = p.pending().await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id(), scheduled.id());
    assert_eq!(pending[0].handler_retry().map(|r| r.attempt), Some(3));
    assert_eq!(pending[0].due(), clock.now() + Duration::from_secs(60));
    assert_eq!(pending[0].attempts(), 0, "not a failed firing");

    // Attempt 3, the last, fails: a dead letter, kept in the store.
    p.advance(&clock, Duration::from_secs(60)).await;
    assert!(p.pending().await.is_empty());
    let attempts: Vec<u32> = p.projected().iter().map(|(_, a)| *a).collect();
    assert_eq!(attempts, [1, 2, 3]);
    let letters = p.app.store.dead_letters().list(false).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].record.handler, handler_name("project_balance"));
    assert_eq!(letters[0].record.attempts, 3);
    assert_eq!(letters[0].record.error, "the projection's table is down");
    assert_eq!(
        letters[0].record.message_id,
        scheduled.handler_retry().unwrap().event_id.to_string()
    );
    assert_eq!(p.balance().await, 0);

    // Replayed once the table is back: the projection commits.
    p.app.tally.projection_down.store(false, Ordering::SeqCst);
    arch_events_sqlx::replay(&p.app.bus, &p.app.store.dead_letters(), letters[0].id)
        .await
        .unwrap();
    assert_eq!(p.balance().await, 5);
}

pub async fn a_handed_off_retry_is_made_once_by_the_processes_started_after_a_stop<DB: Ledger>(
    db: TestDatabase,
) {
    let clock = VirtualClock::new();
    let first = Process::<DB>::start(&db, &clock).await;
    first.deposit_while_down().await;
    // The process stops before the retry is due.
    first
        .app
        .bus
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap();
    drop(first);

    // Two processes come up after it is due, and fire at once.
    let a = Process::<DB>::start(&db, &clock).await;
    let b = Process::<DB>::start(&db, &clock).await;
    clock.advance(Duration::from_secs(30));
    let (fired_a, fired_b) = tokio::join!(
        a.scheduler.fire_due(&a.app.bus),
        b.scheduler.fire_due(&b.app.bus)
    );
    assert_eq!(fired_a.unwrap() + fired_b.unwrap(), 1, "fired once");
    assert_eq!(a.balance().await, 5);
    let calls: Vec<u32> = [a.projected(), b.projected()]
        .concat()
        .iter()
        .map(|(_, attempt)| *attempt)
        .collect();
    assert_eq!(calls, [2], "one call, as attempt 2");
    assert!(a.pending().await.is_empty());
}

pub async fn a_retry_of_a_handler_whose_delivery_was_recorded_meanwhile_is_not_scheduled<
    DB: Ledger,
>(
    db: TestDatabase,
) {
    let clock = VirtualClock::new();
    // `project_balance` succeeds and is recorded; `tally_deposit` holds
    // the event's delivery open at its gate.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let tally = Tally {
        gate: Some(gate.clone()),
        ..Tally::default()
    };
    let p = Process::<DB>::start_with(&db, &clock, tally).await;
    let bus = p.app.bus.clone();
    let dispatch = tokio::spawn(async move { bus.dispatch(Deposit::of("ada", 5)).await });
    crate::eventually("the projection committed", || async {
        p.balance().await == 5
    })
    .await;
    let (event, _) = p.projected()[0];

    // A hand-off of the same handler on the same event (another delivery
    // of it, a recovery's, failed there): nothing left to retry.
    let late = ScheduledMessage::restored(
        MessageId::new(),
        MessageKind::Event,
        "ledger.deposited".into(),
        r#"{"account":"ada","amount":5}"#.into(),
        clock.now() + Duration::from_secs(30),
        event,
        None,
        None,
    )
    .retrying(HandlerRetry::new(handler_name("project_balance"), 2, event));
    p.scheduler.schedule(late).await.unwrap();
    assert!(p.pending().await.is_empty(), "not scheduled");

    gate.add_permits(1);
    dispatch.await.unwrap().unwrap();
    assert_eq!(p.app.store.delivery_lag().await.unwrap().count, 0);
    assert_eq!(p.advance(&clock, Duration::from_secs(60)).await, 0);
    assert_eq!(p.balance().await, 5);
}

/// The store's scheduler, except that before it schedules a retry another
/// delivery of the event finishes it: what a recovery that took the event
/// over does while the process that handed the retry off is stalled.
struct FinishedMeanwhile<DB: Ledger> {
    inner: Arc<SqlScheduler<DB>>,
    log: Arc<dyn DeliveryLog>,
}

#[async_trait]
impl<DB: Ledger> Scheduler for FinishedMeanwhile<DB> {
    async fn schedule(&self, message: ScheduledMessage) -> Result<(), SchedulerError> {
        if let Some(retry) = message.handler_retry() {
            self.log.delivered(retry.event_id).await.unwrap();
        }
        self.inner.schedule(message).await
    }
    async fn cancel(&self, id: MessageId) -> Result<bool, SchedulerError> {
        self.inner.cancel(id).await
    }
    async fn unpark(&self, id: MessageId) -> Result<bool, SchedulerError> {
        self.inner.unpark(id).await
    }
    async fn fire_due(&self, bus: &Bus) -> Result<usize, SchedulerError> {
        self.inner.fire_due(bus).await
    }
    async fn next_due(&self) -> Result<Option<SystemTime>, SchedulerError> {
        self.inner.next_due().await
    }
    async fn pending(&self) -> Result<Vec<ScheduledMessage>, SchedulerError> {
        self.inner.pending().await
    }
    fn now(&self) -> SystemTime {
        Scheduler::now(&*self.inner)
    }
}

pub async fn a_retry_of_an_event_another_delivery_finished_meanwhile_is_not_scheduled<
    DB: Ledger,
>(
    db: TestDatabase,
) {
    let clock = VirtualClock::new();
    let p = Process::<DB>::start_wrapped(&db, &clock, Tally::default(), |inner, log| {
        Arc::new(FinishedMeanwhile { inner, log })
    })
    .await;
    p.app.tally.projection_down.store(true, Ordering::SeqCst);
    p.app.deposit("ada", 5).await;
    assert_eq!(p.projected().len(), 1, "the first attempt failed");
    assert!(p.pending().await.is_empty(), "nothing left to retry");
    assert_eq!(p.app.store.delivery_lag().await.unwrap().count, 0);
}

pub async fn a_scheduled_row_that_does_not_read_back_is_parked_not_fired<DB: Ledger>(
    db: TestDatabase,
) {
    let clock = VirtualClock::new();
    let p = Process::<DB>::start(&db, &clock).await;
    p.deposit_while_down().await;
    p.app.tally.projection_down.store(false, Ordering::SeqCst);
    // Written by something else than this crate: a kind it does not know.
    DB::execute(
        p.app.store.pool(),
        "UPDATE bus_scheduled SET kind = 'query'",
    )
    .await;

    assert_eq!(p.advance(&clock, Duration::from_secs(60)).await, 0);
    assert_eq!(p.projected().len(), 1, "not fired");
    assert!(
        p.pending().await.is_empty(),
        "not listed: it does not read back"
    );
    assert_eq!(
        DB::count(
            p.app.store.pool(),
            "bus_scheduled WHERE parked = TRUE AND lease_until IS NULL \
             AND last_error LIKE '%not a kind of scheduled message%'"
        )
        .await,
        1,
        "parked, with the reason, its lease gone"
    );
    // Parked: no later round takes it again.
    assert_eq!(p.advance(&clock, Duration::from_secs(3600)).await, 0);
}
