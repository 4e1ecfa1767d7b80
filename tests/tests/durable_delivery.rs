//! The bus's side of durable delivery, against an in-memory store: what a
//! store hears about the events it stored (each handler's completion, unless
//! the handler's own commit recorded it; the end of the delivery; the moment
//! the bus lets go of an event), what a redelivery runs, and how a duplicate
//! delivery is told apart from a failure.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arch_events::delivery::{Delivery, DeliveryLog};
use arch_events::{
    async_trait, handler, BoxError, Bus, Command, Dependencies, Event, EventReleaser,
    MessageContext, MessageId, PendingEvent, Registrations, RetryPolicy, Scoped,
};

/// What the bus told the store, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Heard {
    Handled(MessageId, &'static str),
    Delivered(MessageId),
    LetGo(MessageId),
}

#[derive(Default)]
struct MemoryLog {
    heard: Mutex<Vec<Heard>>,
}

impl MemoryLog {
    fn heard(&self) -> Vec<Heard> {
        self.heard.lock().unwrap().clone()
    }
}

#[async_trait]
impl DeliveryLog for MemoryLog {
    async fn handled(&self, event: MessageId, handler: &'static str) -> Result<(), BoxError> {
        self.heard
            .lock()
            .unwrap()
            .push(Heard::Handled(event, handler));
        Ok(())
    }

    async fn delivered(&self, event: MessageId) -> Result<(), BoxError> {
        self.heard.lock().unwrap().push(Heard::Delivered(event));
        Ok(())
    }

    fn let_go(&self, event: MessageId) {
        self.heard.lock().unwrap().push(Heard::LetGo(event));
    }
}

#[derive(Debug, Command)]
#[command(error = Refused)]
struct Ship {
    /// Fail after the commit.
    fail_after_commit: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("refused")]
struct Refused;

#[derive(Debug, Clone, PartialEq, Event)]
struct Shipped {
    order: u32,
}

/// What the handlers did.
#[derive(Default)]
struct Seen {
    calls: Mutex<Vec<String>>,
    /// The deliveries the units of work saw.
    deliveries: Mutex<Vec<Delivery>>,
    /// Handler names whose unit of work reports a duplicate.
    duplicates: Mutex<BTreeSet<&'static str>>,
    /// Handler names that fail (permanently).
    failing: Mutex<BTreeSet<&'static str>>,
}

impl Seen {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

/// A unit of work that "stores" the events it releases: it marks them
/// stored in `log`, and records the delivery its call serves.
struct StoringUow {
    releaser: EventReleaser,
    log: Arc<MemoryLog>,
    seen: Arc<Seen>,
    events: Vec<PendingEvent>,
    flow: MessageContext,
}

impl StoringUow {
    /// Commits: records the delivery (or finds it a duplicate), then
    /// releases the events, stored.
    fn commit(&mut self, handler: &'static str) -> Result<(), BoxError> {
        if let Some(delivery) = self.releaser.delivery() {
            self.seen.deliveries.lock().unwrap().push(delivery);
            if self.seen.duplicates.lock().unwrap().contains(handler) {
                self.releaser.delivery_duplicate();
                return Err("handled already".into());
            }
        }
        let log: Arc<dyn DeliveryLog> = self.log.clone();
        let events: Vec<PendingEvent> = self
            .events
            .drain(..)
            .map(|mut event| {
                event.assign_ids(&self.flow);
                event.stored(log.clone())
            })
            .collect();
        self.releaser.release_all(events);
        if self.releaser.delivery().is_some() {
            self.releaser.delivery_recorded();
        }
        Ok(())
    }
}

#[handler]
fn ship(cmd: Ship, mut uow: Scoped<StoringUow>) -> Result<(), Refused> {
    uow.events.push(PendingEvent::new(Shipped { order: 1 }));
    uow.events.push(PendingEvent::new(Shipped { order: 2 }));
    uow.commit("ship").map_err(|_| Refused)?;
    if cmd.fail_after_commit {
        return Err(Refused);
    }
    Ok(())
}

/// A plain handler: the bus records its completion.
#[handler]
fn a_notify(event: &Shipped, seen: &Seen) -> Result<(), BoxError> {
    seen.calls
        .lock()
        .unwrap()
        .push(format!("a_notify {}", event.order));
    if seen.failing.lock().unwrap().contains("a_notify") {
        return Err(arch_events::Permanent::new("mail refused").into());
    }
    Ok(())
}

/// A handler that commits a unit of work: it records its own completion.
#[handler]
fn b_project(event: &Shipped, mut uow: Scoped<StoringUow>, seen: &Seen) -> Result<(), BoxError> {
    seen.calls
        .lock()
        .unwrap()
        .push(format!("b_project {}", event.order));
    uow.commit("b_project")
}

struct Fixture {
    bus: Bus,
    log: Arc<MemoryLog>,
    seen: Arc<Seen>,
}

/// `seen`, and a storing unit of work per call over `log`.
fn dependencies(log: &Arc<MemoryLog>, seen: &Arc<Seen>) -> Dependencies {
    let (log, shared) = (log.clone(), seen.clone());
    Dependencies::new()
        .shared_arc(seen.clone())
        .scoped(move |scope| StoringUow {
            releaser: scope.releaser(),
            log: log.clone(),
            seen: shared.clone(),
            events: Vec::new(),
            flow: scope.context(),
        })
}

fn fixture(registrations: Registrations) -> Fixture {
    let log = Arc::new(MemoryLog::default());
    let seen = Arc::new(Seen::default());
    let dependencies = dependencies(&log, &seen);
    let bus = Bus::builder()
        .registrations(registrations.handler::<ship>())
        .dependencies(dependencies)
        .spawner(|task| {
            tokio::spawn(task);
        })
        .build()
        .expect("wiring");
    Fixture { bus, log, seen }
}

fn both() -> Registrations {
    Registrations::new()
        .handler::<a_notify>()
        .handler::<b_project>()
}

/// The ids of the events the log heard of, in the order first heard.
fn events_heard(heard: &[Heard]) -> Vec<MessageId> {
    let mut ids = Vec::new();
    for entry in heard {
        let id = match entry {
            Heard::Handled(id, _) | Heard::Delivered(id) | Heard::LetGo(id) => *id,
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

const A: &str = "durable_delivery::a_notify";
const B: &str = "durable_delivery::b_project";

#[tokio::test]
async fn a_stored_event_is_recorded_handled_by_each_handler_then_delivered_then_let_go() {
    let f = fixture(both());
    f.bus
        .dispatch(Ship {
            fail_after_commit: false,
        })
        .await
        .expect("shipped");
    assert_eq!(
        f.seen.calls(),
        ["a_notify 1", "b_project 1", "a_notify 2", "b_project 2"]
    );
    let heard = f.log.heard();
    let ids = events_heard(&heard);
    assert_eq!(ids.len(), 2, "{heard:?}");
    // `a_notify` records nothing itself: the bus tells the store. The last
    // handler, `b_project`, commits a unit of work that finishes the
    // delivery: the bus tells the store nothing more than that it let go.
    let expected: Vec<Heard> = ids
        .iter()
        .flat_map(|id| [Heard::Handled(*id, A), Heard::LetGo(*id)])
        .collect();
    assert_eq!(heard, expected);
    let deliveries = f.seen.deliveries.lock().unwrap().clone();
    assert_eq!(deliveries.len(), 2);
    for (delivery, id) in deliveries.iter().zip(&ids) {
        assert_eq!(
            (delivery.event(), delivery.handler(), delivery.settles()),
            (*id, B, true)
        );
    }
}

#[tokio::test]
async fn the_last_plain_handler_leaves_the_record_to_the_delivery_itself() {
    let f = fixture(Registrations::new().handler::<a_notify>());
    f.bus
        .dispatch(Ship {
            fail_after_commit: false,
        })
        .await
        .expect("shipped");
    let heard = f.log.heard();
    let expected: Vec<Heard> = events_heard(&heard)
        .iter()
        .flat_map(|id| [Heard::Delivered(*id), Heard::LetGo(*id)])
        .collect();
    assert_eq!(heard, expected, "no separate record for the last handler");
}

#[tokio::test]
async fn a_handler_that_failed_for_good_is_recorded_once_its_dead_letter_is_kept() {
    let f = fixture(both());
    f.seen.failing.lock().unwrap().insert("a_notify");
    f.bus
        .dispatch(Ship {
            fail_after_commit: false,
        })
        .await
        .expect("shipped");
    let letters = f.bus.dead_letters().expect("in memory").take();
    assert_eq!(letters.len(), 2);
    let heard = f.log.heard();
    let ids = events_heard(&heard);
    // `b_project` ran after a failure: its commit cannot finish the
    // delivery, so it records only itself, and the bus finishes it after
    // the dead letter is kept.
    let expected: Vec<Heard> = ids
        .iter()
        .flat_map(|id| {
            [
                Heard::Handled(*id, A),
                Heard::Delivered(*id),
                Heard::LetGo(*id),
            ]
        })
        .collect();
    assert_eq!(heard, expected);
    assert!(f
        .seen
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .all(|delivery| !delivery.settles()));
    assert_eq!(letters[0].context().message_id(), ids[0]);
}

#[tokio::test]
async fn events_of_a_command_that_failed_after_its_commit_are_let_go_undelivered() {
    let f = fixture(both());
    let refused = f
        .bus
        .dispatch(Ship {
            fail_after_commit: true,
        })
        .await;
    assert!(refused.is_err());
    assert!(
        f.seen.calls().is_empty(),
        "the bus drops a failed handler's events"
    );
    let heard = f.log.heard();
    assert_eq!(heard.len(), 2, "{heard:?}");
    assert!(
        heard.iter().all(|h| matches!(h, Heard::LetGo(_))),
        "the store may now recover them: {heard:?}"
    );
}

#[tokio::test]
async fn a_redelivery_skips_the_handlers_that_completed_and_finishes_the_delivery() {
    let f = fixture(both());
    let log: Arc<dyn DeliveryLog> = f.log.clone();
    let mut event = PendingEvent::new(Shipped { order: 7 });
    let context = event.assign_ids(&MessageContext::root());
    let event = event.stored(log);
    f.bus
        .redeliver(event, &[A.to_owned()])
        .await
        .expect("redelivered");
    assert_eq!(f.seen.calls(), ["b_project 7"]);
    let delivery = f.seen.deliveries.lock().unwrap()[0];
    assert_eq!(delivery.event(), context.message_id());
    assert!(delivery.settles(), "the only handler left finishes it");
    assert_eq!(f.log.heard(), [Heard::LetGo(context.message_id())]);

    // Everything handled before: nothing runs, the delivery is finished.
    let log: Arc<dyn DeliveryLog> = f.log.clone();
    let mut event = PendingEvent::new(Shipped { order: 8 });
    let id = event.assign_ids(&MessageContext::root()).message_id();
    f.bus
        .redeliver(event.stored(log), &[A.to_owned(), B.to_owned()])
        .await
        .expect("redelivered");
    assert_eq!(f.seen.calls(), ["b_project 7"]);
    assert_eq!(f.log.heard()[1..], [Heard::Delivered(id), Heard::LetGo(id)]);
}

#[tokio::test]
async fn a_duplicate_delivery_is_neither_retried_nor_dead_lettered() {
    let f = fixture(both());
    f.seen.duplicates.lock().unwrap().insert("b_project");
    let bus = Bus::builder()
        .registrations(both().handler::<ship>())
        .dependencies(dependencies(&f.log, &f.seen))
        .retry(RetryPolicy::exponential(3).first_delay(Duration::from_millis(1)))
        .build()
        .expect("wiring");
    bus.dispatch(Ship {
        fail_after_commit: false,
    })
    .await
    .expect("shipped");
    assert_eq!(
        f.seen.calls(),
        ["a_notify 1", "b_project 1", "a_notify 2", "b_project 2"],
        "called once each: a duplicate is not retried"
    );
    assert!(bus.dead_letters().expect("in memory").is_empty());
    let heard = f.log.heard();
    let expected: Vec<Heard> = events_heard(&heard)
        .iter()
        .flat_map(|id| {
            [
                Heard::Handled(*id, A),
                Heard::Delivered(*id),
                Heard::LetGo(*id),
            ]
        })
        .collect();
    assert_eq!(heard, expected);
}

#[tokio::test]
async fn stored_events_of_a_caller_that_hung_up_are_still_delivered() {
    #[derive(Debug, Command)]
    struct SlowShip;

    #[derive(Debug, Clone, Event)]
    struct SlowShipped(u32);

    #[handler]
    fn slow_ship(_: SlowShip, mut uow: Scoped<StoringUow>) -> Result<(), Infallible> {
        for n in 0..3 {
            uow.events.push(PendingEvent::new(SlowShipped(n)));
        }
        uow.commit("slow_ship").ok();
        Ok(())
    }

    #[handler]
    async fn wait_then_count(event: &SlowShipped, seen: &Seen, gate: &tokio::sync::Semaphore) {
        if event.0 == 0 {
            drop(gate.acquire().await);
        }
        seen.calls
            .lock()
            .unwrap()
            .push(format!("counted {}", event.0));
    }

    let f = fixture(Registrations::new());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<slow_ship>()
                .handler::<wait_then_count>(),
        )
        .dependencies(dependencies(&f.log, &f.seen).shared_arc(gate.clone()))
        .spawner(|task| {
            tokio::spawn(task);
        })
        .build()
        .expect("wiring");
    {
        let dispatch = bus.dispatch(SlowShip);
        tokio::pin!(dispatch);
        assert!(
            futures::poll!(dispatch.as_mut()).is_pending(),
            "held at the gate"
        );
    } // the caller hangs up
    gate.add_permits(10);
    assert!(bus.settled(Duration::from_secs(10)).await);
    assert_eq!(f.seen.calls(), ["counted 0", "counted 1", "counted 2"]);
    let heard = f.log.heard();
    let expected: Vec<Heard> = events_heard(&heard)
        .iter()
        .flat_map(|id| [Heard::Delivered(*id), Heard::LetGo(*id)])
        .collect();
    assert_eq!(heard.len(), 6, "{heard:?}");
    assert_eq!(heard, expected);
}

#[test]
fn stored_events_of_a_blocking_dispatch_are_recorded_too() {
    let f = fixture(both());
    f.bus
        .dispatch_blocking(Ship {
            fail_after_commit: false,
        })
        .expect("shipped");
    let heard = f.log.heard();
    let expected: Vec<Heard> = events_heard(&heard)
        .iter()
        .flat_map(|id| [Heard::Handled(*id, A), Heard::LetGo(*id)])
        .collect();
    assert_eq!(heard, expected);
}

// ---- the corners: a second commit, another store, the cascade bound, a
// failing sink, a failure after the commit

#[derive(Debug, Clone, Event)]
struct Followed;

/// Commits twice in one call: the second commit releases `Followed`.
#[handler]
fn c_twice(_: &Shipped, mut uow: Scoped<StoringUow>) -> Result<(), BoxError> {
    uow.commit("c_twice")?;
    uow.events.push(PendingEvent::new(Followed));
    uow.commit("c_twice")
}

#[handler]
fn d_follow(_: &Followed, seen: &Seen) {
    seen.calls.lock().unwrap().push("d_follow".into());
}

#[tokio::test]
async fn a_second_commit_in_one_call_has_no_delivery_left_to_record() {
    let f = fixture(
        Registrations::new()
            .handler::<c_twice>()
            .handler::<d_follow>(),
    );
    f.bus
        .dispatch(Ship {
            fail_after_commit: false,
        })
        .await
        .expect("shipped");
    assert_eq!(
        f.seen.deliveries.lock().unwrap().len(),
        2,
        "one delivery seen per Shipped: the second commit of each call saw none"
    );
    assert_eq!(
        f.seen.calls(),
        ["d_follow", "d_follow"],
        "nothing was dropped"
    );
}

/// What a unit of work of another store sees of its call's delivery.
#[handler]
fn e_other_store(
    _: &Shipped,
    events: EventReleaser,
    logs: &Mutex<Option<Arc<dyn DeliveryLog>>>,
    seen: &Seen,
) {
    let delivery = events.delivery().expect("a stored event's delivery");
    let other: Arc<dyn DeliveryLog> = Arc::new(MemoryLog::default());
    let own = logs.lock().unwrap().clone().expect("the fixture's log");
    seen.calls.lock().unwrap().push(format!(
        "for its own store: {}, for another: {}",
        delivery.is_for(&own),
        delivery.is_for(&other)
    ));
}

#[tokio::test]
async fn a_delivery_says_which_store_the_event_is_in() {
    let log = Arc::new(MemoryLog::default());
    let seen = Arc::new(Seen::default());
    let own: Arc<dyn DeliveryLog> = log.clone();
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<ship>()
                .handler::<e_other_store>(),
        )
        .dependencies(dependencies(&log, &seen).shared(Mutex::new(Some(own))))
        .build()
        .expect("wiring");
    bus.dispatch(Ship {
        fail_after_commit: false,
    })
    .await
    .expect("shipped");
    assert_eq!(
        seen.calls(),
        ["for its own store: true, for another: false"; 2]
    );
}

#[derive(Debug, Command)]
#[command(error = Refused)]
struct StartEcho;

#[derive(Debug, Clone, Event)]
struct Echo(u32);

#[handler]
fn start_echo(_: StartEcho, mut uow: Scoped<StoringUow>) -> Result<(), Refused> {
    uow.events.push(PendingEvent::new(Echo(0)));
    uow.commit("start_echo").map_err(|_| Refused)
}

/// Raises the next echo for ever: a chain that never ends.
#[handler]
fn echo(event: &Echo, mut uow: Scoped<StoringUow>) -> Result<(), BoxError> {
    uow.events.push(PendingEvent::new(Echo(event.0 + 1)));
    uow.events.push(PendingEvent::new(Echo(event.0 + 1)));
    uow.commit("echo")
}

/// A bus whose `StartEcho` starts a chain of stored events that never ends,
/// stopped by a bound of five messages.
fn echo_bus(
    sink: Option<Arc<dyn arch_events::dead_letter::DeadLetterSink>>,
) -> (Bus, Arc<MemoryLog>, Arc<Seen>) {
    let log = Arc::new(MemoryLog::default());
    let seen = Arc::new(Seen::default());
    let builder = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<start_echo>()
                .handler::<echo>(),
        )
        .dependencies(dependencies(&log, &seen))
        .max_messages_per_dispatch(5);
    let builder = match sink {
        Some(sink) => builder.dead_letters_arc(sink),
        None => builder,
    };
    (builder.build().expect("wiring"), log, seen)
}

/// Every stored event the bus let go (each one stored is let go in the
/// end) was either delivered to `echo`, whose commit recorded it, or kept as
/// a dead letter (`letters`) whose delivery was ended: one let go otherwise
/// is one a recovery would run again.
fn assert_nothing_left_to_recover(log: &MemoryLog, seen: &Seen, letters: &[MessageId]) {
    let heard = log.heard();
    assert!(!letters.is_empty());
    for id in letters {
        assert!(
            heard.contains(&Heard::Delivered(*id)),
            "a stopped event's delivery is ended, so no recovery takes the chain up again: \
             {id} in {heard:?}"
        );
    }
    let delivered: Vec<MessageId> = seen
        .deliveries
        .lock()
        .unwrap()
        .iter()
        .map(|delivery| delivery.event())
        .collect();
    let let_go: Vec<MessageId> = heard
        .iter()
        .filter_map(|heard| match heard {
            Heard::LetGo(id) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(let_go.len(), delivered.len() + letters.len(), "{heard:?}");
    for id in let_go {
        assert!(
            delivered.contains(&id) || letters.contains(&id),
            "{id} was let go neither delivered nor a dead letter: {heard:?}"
        );
    }
}

/// What a chain of stored events stopped by the bound leaves: the stopped
/// events are dead letters whose delivery was ended, and no stored event
/// was let go otherwise.
fn assert_stopped_chain_left_nothing_to_recover(
    bus: &Bus,
    log: &MemoryLog,
    seen: &Seen,
    error: arch_events::DispatchError<Refused>,
) {
    assert!(
        matches!(error, arch_events::DispatchError::CascadeLimit(_)),
        "{error}"
    );
    let letters = bus.dead_letters().expect("in memory").take();
    assert!(letters
        .iter()
        .all(|letter| letter.error().contains("messages") && letter.handler().ends_with("::echo")));
    let letters: Vec<MessageId> = letters.iter().map(|l| l.context().message_id()).collect();
    assert_nothing_left_to_recover(log, seen, &letters);
}

#[tokio::test]
async fn stored_events_stopped_by_the_cascade_bound_are_dead_letters_not_recovered() {
    let (bus, log, seen) = echo_bus(None);
    let error = bus.dispatch(StartEcho).await.expect_err("a runaway chain");
    assert_stopped_chain_left_nothing_to_recover(&bus, &log, &seen, error);
}

#[test]
fn a_blocking_dispatch_stopped_by_the_cascade_bound_leaves_nothing_to_recover() {
    let (bus, log, seen) = echo_bus(None);
    let error = bus
        .dispatch_blocking(StartEcho)
        .expect_err("a runaway chain");
    assert_stopped_chain_left_nothing_to_recover(&bus, &log, &seen, error);
}

/// A dead-letter sink that keeps its letters once a gate opens, and says
/// when the first one reached it.
struct GatedSink {
    reached: tokio::sync::Notify,
    gate: tokio::sync::Semaphore,
    kept: Mutex<Vec<arch_events::dead_letter::DeadLetter>>,
}

impl Default for GatedSink {
    fn default() -> Self {
        GatedSink {
            reached: tokio::sync::Notify::new(),
            // Closed until the test opens it.
            gate: tokio::sync::Semaphore::new(0),
            kept: Mutex::default(),
        }
    }
}

#[async_trait]
impl arch_events::dead_letter::DeadLetterSink for GatedSink {
    async fn store(&self, letter: &arch_events::dead_letter::DeadLetter) -> Result<(), BoxError> {
        self.reached.notify_one();
        let _pass = self.gate.acquire().await?;
        self.kept.lock().unwrap().push(letter.clone());
        Ok(())
    }
}

#[tokio::test]
async fn a_stop_at_the_bound_cut_short_by_its_caller_goes_on_and_leaves_nothing_to_recover() {
    let sink = Arc::new(GatedSink::default());
    let (bus, log, seen) = echo_bus(Some(sink.clone()));
    // The caller stops waiting while the first dead letter of the stop is
    // with the sink: the rest of the run goes on without it.
    let dispatch = bus.dispatch(StartEcho);
    tokio::select! {
        _ = dispatch => panic!("the sink holds the stop"),
        () = sink.reached.notified() => {}
    }
    sink.gate.add_permits(1_000);
    assert!(
        bus.settled(Duration::from_secs(30)).await,
        "the rest of the run ended"
    );
    let letters: Vec<MessageId> = sink
        .kept
        .lock()
        .unwrap()
        .iter()
        .map(|letter| letter.context().message_id())
        .collect();
    let mut distinct = letters.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        letters.len(),
        "one letter per stopped event: {letters:?}"
    );
    assert_nothing_left_to_recover(&log, &seen, &letters);
}

/// A sink that keeps nothing.
struct BrokenSink;

#[async_trait]
impl arch_events::dead_letter::DeadLetterSink for BrokenSink {
    async fn store(&self, _: &arch_events::dead_letter::DeadLetter) -> Result<(), BoxError> {
        Err("the dead-letter table is gone".into())
    }
}

#[tokio::test]
async fn a_stored_event_whose_dead_letter_was_not_kept_stays_undelivered() {
    let log = Arc::new(MemoryLog::default());
    let seen = Arc::new(Seen::default());
    seen.failing.lock().unwrap().insert("a_notify");
    let bus = Bus::builder()
        .registrations(Registrations::new().handler::<ship>().handler::<a_notify>())
        .dependencies(dependencies(&log, &seen))
        .dead_letters(BrokenSink)
        .build()
        .expect("wiring");
    bus.dispatch(Ship {
        fail_after_commit: false,
    })
    .await
    .expect("shipped");
    let heard = log.heard();
    assert_eq!(heard.len(), 2, "{heard:?}");
    assert!(
        heard.iter().all(|h| matches!(h, Heard::LetGo(_))),
        "let go undelivered: the store's recovery calls the handler again: {heard:?}"
    );
}

/// Commits its unit of work, then fails.
#[handler]
fn f_commit_then_fail(
    _: &Shipped,
    mut uow: Scoped<StoringUow>,
    seen: &Seen,
) -> Result<(), BoxError> {
    seen.calls.lock().unwrap().push("f_commit_then_fail".into());
    uow.commit("f_commit_then_fail")?;
    Err("the mail after the commit failed".into())
}

#[tokio::test]
async fn a_handler_that_fails_after_its_commit_recorded_the_delivery_counts_as_done() {
    let log = Arc::new(MemoryLog::default());
    let seen = Arc::new(Seen::default());
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<ship>()
                .handler::<f_commit_then_fail>(),
        )
        .dependencies(dependencies(&log, &seen))
        .retry(RetryPolicy::exponential(3).first_delay(Duration::from_millis(1)))
        .build()
        .expect("wiring");
    bus.dispatch(Ship {
        fail_after_commit: false,
    })
    .await
    .expect("shipped");
    assert_eq!(seen.calls().len(), 2, "once per event: not retried");
    assert!(
        bus.dead_letters().expect("in memory").is_empty(),
        "not a dead letter"
    );
    let heard = log.heard();
    assert!(
        heard.iter().all(|h| matches!(h, Heard::LetGo(_))),
        "its commit settled the delivery: {heard:?}"
    );
}
