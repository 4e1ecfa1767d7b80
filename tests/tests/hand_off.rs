//! Event handlers' retries handed to the scheduler
//! (`RetryPolicy::hand_off_waits_over`): the dispatch returns after the
//! attempts its policy keeps in it, the scheduler makes the others when
//! they fall due (a virtual clock here: nothing sleeps), with the event's
//! ids and the attempts counted on; spent, the call is a dead letter. Every
//! call path hands off alike (a plain `fn` with its retry beside it, an
//! `async fn` inside layers, a blocking dispatch); a scheduler that refuses
//! the attempt makes the call a dead letter; a retry this bus cannot call
//! is left for another; a replay stops where its policy hands off,
//! scheduling nothing; and the build refuses a
//! hand-off that cannot work, naming each. Durability (SQLite, PostgreSQL)
//! is the sqlx conformance suite's.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arch_events::dead_letter::InMemoryDeadLetters;
use arch_events::layer::{BoxFuture, HandlerCall, Layer, Next, Outcome};
use arch_events::schedule::{
    Fired, InMemoryScheduler, ScheduledMessage, Scheduler, SchedulerError, VirtualClock,
};
use arch_events::{
    async_trait, handler, Bus, BusBuilder, Command, Dependencies, Event, EventReleaser,
    MessageContext, MessageId, Permanent, Registrations, RetryPolicy,
};
use serde::{Deserialize, Serialize};

/// Every handler call: the event's id and correlation id, the attempt.
#[derive(Default)]
struct Journal {
    calls: Mutex<Vec<(MessageId, MessageId, u32)>>,
    /// Attempts below this fail.
    succeed_from: AtomicU32,
    /// Calls of `record_shipped`.
    shipped: AtomicU32,
}

impl Journal {
    fn failing_until(attempt: u32) -> Arc<Self> {
        let journal = Journal::default();
        journal.succeed_from.store(attempt, Ordering::SeqCst);
        Arc::new(journal)
    }

    fn call(&self, context: &MessageContext) -> Result<(), std::io::Error> {
        self.calls.lock().unwrap().push((
            context.message_id(),
            context.correlation_id(),
            context.attempt(),
        ));
        if context.attempt() < self.succeed_from.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("warehouse api down"));
        }
        Ok(())
    }

    fn attempts(&self) -> Vec<u32> {
        self.calls.lock().unwrap().iter().map(|c| c.2).collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(serde)]
struct PlaceOrder {
    order: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "hand_off.order_placed", serde)]
struct OrderPlaced {
    order: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "hand_off.order_shipped", serde)]
struct OrderShipped {
    order: u32,
}

/// Not read from JSON: its retries cannot be kept by a scheduler.
#[derive(Debug, Clone, Event)]
#[event(name = "hand_off.order_noted")]
struct OrderNoted;

#[handler(releases(OrderPlaced))]
fn place_order(cmd: PlaceOrder, events: EventReleaser) -> Result<(), std::convert::Infallible> {
    events.release(OrderPlaced { order: cmd.order });
    Ok(())
}

/// A plain `fn`: its retry, its only layer, is beside it.
#[handler(releases(OrderShipped))]
fn ship(
    event: &OrderPlaced,
    context: MessageContext,
    journal: &Journal,
    events: EventReleaser,
) -> Result<(), std::io::Error> {
    journal.call(&context)?;
    events.release(OrderShipped { order: event.order });
    Ok(())
}

#[handler]
async fn ship_async(
    _: &OrderPlaced,
    context: MessageContext,
    journal: &Journal,
) -> Result<(), std::io::Error> {
    journal.call(&context)
}

/// Fails retryably once, then for good.
#[handler]
fn refuse(
    _: &OrderPlaced,
    context: MessageContext,
    journal: &Journal,
) -> Result<(), arch_events::BoxError> {
    let transient = journal.call(&context);
    if context.attempt() >= 2 {
        return Err(Permanent::new("order unknown to the warehouse").into());
    }
    Ok(transient?)
}

#[handler]
fn record_shipped(_: &OrderShipped, journal: &Journal) {
    journal.shipped.fetch_add(1, Ordering::SeqCst);
}

#[handler]
fn note(_: &OrderNoted) -> Result<(), std::io::Error> {
    Ok(())
}

/// 30 s, then 60 s, 120 s...: every wait handed off.
fn handed_off(attempts: u32) -> RetryPolicy {
    RetryPolicy::exponential(attempts)
        .first_delay(Duration::from_secs(30))
        .max_delay(Duration::from_secs(3600))
        .without_jitter()
        .hand_off_waits_over(Duration::ZERO)
}

struct Setup {
    bus: Bus,
    clock: VirtualClock,
    scheduler: Arc<InMemoryScheduler>,
    journal: Arc<Journal>,
}

fn setup(
    registrations: Registrations,
    journal: Arc<Journal>,
    build: impl FnOnce(BusBuilder) -> BusBuilder,
) -> Setup {
    let clock = VirtualClock::new();
    let scheduler = Arc::new(InMemoryScheduler::with_clock(clock.clone()));
    let builder = Bus::builder()
        .registrations(registrations.handler::<place_order>())
        .dependencies(Dependencies::new().shared_arc(journal.clone()))
        .scheduler(scheduler.clone());
    let bus = build(builder).build().unwrap();
    Setup {
        bus,
        clock,
        scheduler,
        journal,
    }
}

impl Setup {
    async fn advance(&self, by: Duration) -> usize {
        self.clock
            .advance_and_fire(by, &*self.scheduler, &self.bus)
            .await
            .unwrap()
    }

    async fn pending(&self) -> Vec<ScheduledMessage> {
        self.scheduler.pending().await.unwrap()
    }

    fn letters(&self) -> &InMemoryDeadLetters {
        self.bus.dead_letters().unwrap()
    }
}

#[tokio::test]
async fn a_dispatch_returns_after_the_first_attempt_and_the_scheduler_makes_the_rest() {
    let s = setup(
        Registrations::new()
            .handler::<ship>()
            .handler::<record_shipped>(),
        Journal::failing_until(3),
        |bus| bus.retry(handed_off(5)),
    );
    s.bus.dispatch(PlaceOrder { order: 7 }).await.unwrap();
    assert_eq!(
        s.journal.attempts(),
        [1],
        "only the first attempt in the dispatch"
    );
    let (event_id, correlation_id, _) = s.journal.calls.lock().unwrap()[0];

    let pending = s.pending().await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    let retry = pending[0].handler_retry().expect("a handler's retry");
    assert_eq!(retry.handler, "hand_off::ship");
    assert_eq!(retry.attempt, 2);
    assert_eq!(retry.event_id, event_id);
    assert_eq!(pending[0].name(), "hand_off.order_placed");
    assert_eq!(pending[0].correlation_id(), correlation_id);
    assert_eq!(
        pending[0].due(),
        s.scheduler.now() + Duration::from_secs(30),
        "due after the policy's first wait"
    );

    // Not before its time.
    assert_eq!(s.advance(Duration::from_secs(29)).await, 0);
    assert_eq!(s.journal.attempts(), [1]);
    // Attempt 2 fails: the message stays, for attempt 3, 60 s later.
    assert_eq!(s.advance(Duration::from_secs(1)).await, 1);
    assert_eq!(s.journal.attempts(), [1, 2]);
    let pending = s.pending().await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].handler_retry().map(|r| r.attempt), Some(3));
    assert_eq!(
        pending[0].due(),
        s.scheduler.now() + Duration::from_secs(60)
    );
    assert_eq!(s.journal.shipped.load(Ordering::SeqCst), 0);
    // Attempt 3 succeeds; the event it releases is handled in the firing.
    s.advance(Duration::from_secs(60)).await;
    assert_eq!(s.journal.attempts(), [1, 2, 3]);
    assert!(s.pending().await.is_empty());
    assert_eq!(s.journal.shipped.load(Ordering::SeqCst), 1);
    assert!(s.letters().is_empty());
    // Every attempt saw the event's own ids.
    for (id, correlation, _) in s.journal.calls.lock().unwrap().iter() {
        assert_eq!((*id, *correlation), (event_id, correlation_id));
    }
}

#[tokio::test]
async fn short_waits_stay_in_the_dispatch_and_longer_ones_go_to_the_scheduler() {
    let s = setup(
        Registrations::new()
            .handler::<ship>()
            .handler::<record_shipped>(),
        Journal::failing_until(5),
        |bus| {
            bus.retry(
                RetryPolicy::exponential(6)
                    .first_delay(Duration::from_millis(1))
                    .max_delay(Duration::from_secs(60))
                    .without_jitter()
                    .hand_off_waits_over(Duration::from_millis(3)),
            )
        },
    );
    s.bus.dispatch(PlaceOrder { order: 1 }).await.unwrap();
    // 1 ms and 2 ms waited in the dispatch; the 4 ms wait handed off.
    assert_eq!(s.journal.attempts(), [1, 2, 3]);
    let pending = s.pending().await;
    assert_eq!(pending[0].handler_retry().map(|r| r.attempt), Some(4));
    assert_eq!(
        pending[0].due(),
        s.scheduler.now() + Duration::from_millis(4)
    );
    // Attempt 4 fails again in the firing; its 8 ms wait is handed back.
    s.advance(Duration::from_millis(4)).await;
    assert_eq!(s.journal.attempts(), [1, 2, 3, 4]);
    let pending = s.pending().await;
    assert_eq!(pending[0].handler_retry().map(|r| r.attempt), Some(5));
    s.advance(Duration::from_millis(8)).await;
    assert_eq!(s.journal.attempts(), [1, 2, 3, 4, 5]);
    assert!(s.pending().await.is_empty());
    assert_eq!(s.journal.shipped.load(Ordering::SeqCst), 1);
}

/// Counts the calls that pass through it: a layer of its own makes the
/// handler's call path a pipeline.
struct Counting(Arc<AtomicU32>);

impl Layer for Counting {
    fn call<'a>(&'a self, call: HandlerCall<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        self.0.fetch_add(1, Ordering::SeqCst);
        next.run(call)
    }
}

#[tokio::test]
async fn an_async_handler_inside_layers_hands_off_from_its_pipeline() {
    let through = Arc::new(AtomicU32::new(0));
    let counting = Counting(through.clone());
    let s = setup(
        Registrations::new().handler::<ship_async>(),
        Journal::failing_until(3),
        |bus| {
            bus.retry(handed_off(3))
                .handler_timeout::<ship_async>(Duration::from_secs(5))
                .layer_for::<OrderPlaced>(counting)
        },
    );
    s.bus.dispatch(PlaceOrder { order: 2 }).await.unwrap();
    assert_eq!(s.journal.attempts(), [1]);
    assert_eq!(through.load(Ordering::SeqCst), 1);
    s.advance(Duration::from_secs(30)).await;
    assert_eq!(s.journal.attempts(), [1, 2]);
    assert_eq!(
        s.pending().await[0].handler_retry().map(|r| r.attempt),
        Some(3)
    );
    s.advance(Duration::from_secs(60)).await;
    assert_eq!(s.journal.attempts(), [1, 2, 3]);
    assert_eq!(
        through.load(Ordering::SeqCst),
        3,
        "every attempt through its layers"
    );
    assert!(s.pending().await.is_empty());
    assert!(s.letters().is_empty());
}

#[test]
fn a_blocking_dispatch_hands_off_too() {
    let through = Arc::new(AtomicU32::new(0));
    let counting = Counting(through.clone());
    let s = setup(
        Registrations::new()
            .handler::<ship>()
            .handler::<record_shipped>(),
        Journal::failing_until(2),
        |bus| bus.retry(handed_off(3)).layer_for::<OrderPlaced>(counting),
    );
    s.bus.dispatch_blocking(PlaceOrder { order: 3 }).unwrap();
    assert_eq!(s.journal.attempts(), [1]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(s.pending().await.len(), 1);
        s.advance(Duration::from_secs(30)).await;
    });
    assert_eq!(s.journal.attempts(), [1, 2]);
    assert_eq!(s.journal.shipped.load(Ordering::SeqCst), 1);
    assert_eq!(through.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_call_whose_attempts_are_spent_in_the_scheduler_is_a_dead_letter_with_them_all() {
    let failures = Arc::new(AtomicU32::new(0));
    let told = failures.clone();
    let s = setup(
        Registrations::new()
            .handler::<ship>()
            .handler::<record_shipped>(),
        Journal::failing_until(u32::MAX),
        |bus| {
            bus.retry(handed_off(3)).observer(move |_: &_| {
                told.fetch_add(1, Ordering::SeqCst);
            })
        },
    );
    s.bus.dispatch(PlaceOrder { order: 4 }).await.unwrap();
    assert!(s.letters().is_empty(), "not failed for good yet");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "the observer hears of failures for good only"
    );
    s.advance(Duration::from_secs(90)).await;
    assert_eq!(s.journal.attempts(), [1, 2, 3]);
    assert!(s.pending().await.is_empty());
    let letters = s.letters().take();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].handler(), "hand_off::ship");
    assert_eq!(letters[0].attempts(), 3);
    assert_eq!(letters[0].error(), "warehouse api down");
    let (event_id, _, _) = s.journal.calls.lock().unwrap()[0];
    assert_eq!(letters[0].context().message_id(), event_id);
    assert_eq!(failures.load(Ordering::SeqCst), 1);
    // Nothing more comes of it.
    assert_eq!(s.advance(Duration::from_secs(3600)).await, 0);
}

#[tokio::test]
async fn a_permanent_error_on_a_scheduled_attempt_is_a_dead_letter_at_once() {
    let s = setup(
        Registrations::new().handler::<refuse>(),
        Journal::failing_until(u32::MAX),
        |bus| bus.retry(handed_off(5)),
    );
    s.bus.dispatch(PlaceOrder { order: 6 }).await.unwrap();
    assert_eq!(s.pending().await.len(), 1, "attempt 1 failed retryably");
    s.advance(Duration::from_secs(30)).await;
    assert_eq!(s.journal.attempts(), [1, 2]);
    let pending = s.pending().await;
    assert!(
        pending.is_empty(),
        "a permanent error is never retried: {pending:?}"
    );
    let letters = s.letters().take();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts(), 2);
    assert_eq!(letters[0].error(), "order unknown to the warehouse");
}

/// A scheduler whose store is down.
struct Refusing;

#[async_trait]
impl Scheduler for Refusing {
    async fn schedule(&self, _: ScheduledMessage) -> Result<(), SchedulerError> {
        Err(SchedulerError::Store("connection refused".into()))
    }
    async fn cancel(&self, _: MessageId) -> Result<bool, SchedulerError> {
        Ok(false)
    }
    async fn unpark(&self, _: MessageId) -> Result<bool, SchedulerError> {
        Ok(false)
    }
    async fn fire_due(&self, _: &Bus) -> Result<usize, SchedulerError> {
        Ok(0)
    }
    async fn next_due(&self) -> Result<Option<SystemTime>, SchedulerError> {
        Ok(None)
    }
    async fn pending(&self) -> Result<Vec<ScheduledMessage>, SchedulerError> {
        Ok(Vec::new())
    }
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

#[tokio::test]
async fn a_scheduler_that_refuses_the_attempt_makes_the_call_a_dead_letter() {
    let journal = Journal::failing_until(u32::MAX);
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<place_order>()
                .handler::<ship>()
                .handler::<record_shipped>(),
        )
        .dependencies(Dependencies::new().shared_arc(journal.clone()))
        .retry(handed_off(5))
        .scheduler(Arc::new(Refusing))
        .build()
        .unwrap();
    bus.dispatch(PlaceOrder { order: 8 }).await.unwrap();
    let letters = bus.dead_letters().unwrap().take();
    assert_eq!(letters.len(), 1, "kept, not dropped: {letters:?}");
    assert_eq!(letters[0].attempts(), 1);
    assert_eq!(letters[0].error(), "warehouse api down");
}

#[tokio::test]
async fn a_retry_for_a_handler_not_here_is_left_for_another_and_a_replay_schedules_nothing() {
    let s = setup(
        Registrations::new()
            .handler::<ship>()
            .handler::<record_shipped>(),
        Journal::failing_until(2),
        |bus| bus.retry(handed_off(5)),
    );
    s.bus.dispatch(PlaceOrder { order: 9 }).await.unwrap();
    let kept = s.pending().await.remove(0);

    // An older build, without `ship`: the firing is put off, not counted.
    let older = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<record_shipped>()
                .message::<OrderPlaced>(),
        )
        .dependencies(Dependencies::new().shared_arc(s.journal.clone()))
        .build()
        .unwrap();
    let error = older.deliver_scheduled(&kept).await.unwrap_err();
    assert!(
        error.to_string().contains("no handler `hand_off::ship`"),
        "{error}"
    );
    s.clock.advance(Duration::from_secs(30));
    assert_eq!(
        s.scheduler.fire_due(&older).await.unwrap(),
        0,
        "not fired here"
    );
    let put_off = s.pending().await.remove(0);
    assert_eq!(
        put_off.handler_retry(),
        kept.handler_retry(),
        "same attempt"
    );
    assert_eq!(put_off.attempts(), 0, "no failed firing counted");
    assert!(put_off.due() > s.scheduler.now());
    assert_eq!(s.journal.attempts(), [1]);

    // This build fires it: attempt 2 succeeds.
    assert_eq!(
        s.bus.deliver_scheduled(&put_off).await.unwrap(),
        Fired::Done
    );
    assert_eq!(s.journal.attempts(), [1, 2]);

    // A replay of a dead letter: its caller waits, so it makes the
    // attempts a dispatch makes (here the short waits) and stops, failed,
    // at the first wait the policy hands off; nothing is scheduled.
    let journal = Journal::failing_until(u32::MAX);
    let r = setup(
        Registrations::new().handler::<ship_async>(),
        journal.clone(),
        |bus| {
            bus.retry(
                RetryPolicy::exponential(4)
                    .first_delay(Duration::from_millis(1))
                    .max_delay(Duration::from_secs(60))
                    .without_jitter()
                    .hand_off_waits_over(Duration::from_millis(1)),
            )
        },
    );
    r.bus.dispatch(PlaceOrder { order: 10 }).await.unwrap();
    r.advance(Duration::from_secs(1)).await;
    let letter = r.letters().take().remove(0);
    assert_eq!(letter.attempts(), 4);
    journal.calls.lock().unwrap().clear();
    let replay = || {
        r.bus
            .replay(letter.handler(), letter.event().clone(), letter.context())
    };
    let still = replay().await;
    assert!(
        matches!(&still, Err(arch_events::ReplayError::Failed(failure)) if failure.attempts() == 2),
        "{still:?}"
    );
    assert_eq!(
        journal.attempts(),
        [1, 2],
        "the 1 ms wait made in place, the 2 ms one not handed off"
    );
    assert!(
        r.pending().await.is_empty(),
        "nothing handed off by a replay"
    );
    journal.succeed_from.store(2, Ordering::SeqCst);
    journal.calls.lock().unwrap().clear();
    let replayed = replay().await;
    assert!(replayed.is_ok(), "{replayed:?}");
    assert_eq!(journal.attempts(), [1, 2]);
    assert!(r.pending().await.is_empty());
}

#[test]
fn a_hand_off_that_cannot_work_is_refused_at_build_naming_each() {
    let line = line!() + 9;
    let error = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<place_order>()
                .handler::<ship>()
                .handler::<note>(),
        )
        .dependencies(Dependencies::new().shared(Journal::default()))
        .retry(handed_off(3))
        .handler_retry::<note>(handed_off(2))
        .retry_command::<PlaceOrder>(handed_off(2), |_| true)
        .build()
        .unwrap_err();
    let text = error.to_string();
    for expected in [
        // The bus-wide policy, and no scheduler: once, where it was set.
        format!("`retry` for `the bus` (tests/tests/hand_off.rs:{line}) cannot apply"),
        "and the bus has none: add `.scheduler(...)`".to_owned(),
        // The handler's own, on an event without JSON: both reasons.
        "`handler_retry` for `hand_off::note` (tests/tests/hand_off.rs:".to_owned(),
        "cannot apply: its retry policy hands waits off to a scheduler".to_owned(),
        "the event does not read from JSON: derive it with `#[event(serde)]`".to_owned(),
        // A command's.
        "a command's caller waits for its answer".to_owned(),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(error.problems().len(), 4, "{text}");
}
