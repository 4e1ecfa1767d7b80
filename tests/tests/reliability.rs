//! Reliability under faults and load: retries per policy, dead letters for
//! what cannot be recovered, nothing lost, nothing handled twice, nothing
//! mixed between dispatches, nothing hung; and the edges (the cascade bound,
//! permanent errors, timeouts, a panic inside a retry, a command's opt-in
//! retry, graceful shutdown); and the example app's dead letter, replayed
//! over HTTP once its fault is gone (the real binary, built if need be).
//!
//! The fault-injection run prints its counts as one line:
//! `cargo test -p arch-events-tests --test reliability -- --nocapture`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, Once};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use arch_events::dead_letter::InMemoryDeadLetters;
use arch_events::layer::{BoxFuture, HandlerCall, Layer, Next, Outcome};
use arch_events::{
    handler, BuildError, Bus, Command, Dependencies, DispatchError, Event, EventReleaser,
    MessageContext, MessageId, Permanent, Problem, Registrations, RetryPolicy,
};

// ---------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------

const SEED: u64 = 0x5eed_2026_1126;
const THREADS: usize = 8;
const COMMANDS: usize = 10_000;
const MAX_ATTEMPTS: u32 = 4;
/// The handlers of the released events, in the order of `Faults::calls`.
const HANDLERS: [&str; 5] = [
    "reliability::ship",
    "reliability::bill",
    "reliability::notify",
    "reliability::audit",
    "reliability::archive",
];

/// What one handler call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Fail,
    Panic,
}

/// The seeded random source: a SplitMix64 step over (seed, order, handler,
/// attempt), so that every call's fate is fixed by the seed whatever the
/// threads' interleaving, and the test can compute what must have happened.
fn fault(order: u32, handler: usize, attempt: u32) -> Fault {
    let mut z = SEED ^ (u64::from(order) << 20) ^ ((handler as u64) << 8) ^ u64::from(attempt);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    match z % 100 {
        0..=19 => Fault::Fail,
        20..=24 => Fault::Panic,
        _ => Fault::None,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("injected failure: order {order}, handler {handler}, attempt {attempt}")]
struct Injected {
    order: u32,
    handler: usize,
    attempt: u32,
}

/// Every handler call, counted per (order, handler).
struct Faults {
    calls: Vec<AtomicU32>,
    successes: Vec<AtomicU32>,
    out_of_order_attempts: AtomicU32,
}

impl Faults {
    fn new() -> Self {
        Faults {
            calls: (0..COMMANDS * HANDLERS.len())
                .map(|_| AtomicU32::new(0))
                .collect(),
            successes: (0..COMMANDS * HANDLERS.len())
                .map(|_| AtomicU32::new(0))
                .collect(),
            out_of_order_attempts: AtomicU32::new(0),
        }
    }

    fn run(&self, order: u32, handler: usize, context: MessageContext) -> Result<(), Injected> {
        let slot = order as usize * HANDLERS.len() + handler;
        let call = self.calls[slot].fetch_add(1, Ordering::SeqCst) + 1;
        let attempt = context.attempt();
        if call != attempt {
            self.out_of_order_attempts.fetch_add(1, Ordering::SeqCst);
        }
        match fault(order, handler, attempt) {
            Fault::Fail => Err(Injected {
                order,
                handler,
                attempt,
            }),
            Fault::Panic => {
                panic!("injected panic: order {order}, handler {handler}, attempt {attempt}")
            }
            Fault::None => {
                self.successes[slot].fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    }
}

#[derive(Debug, Command)]
struct Place {
    order: u32,
}

#[derive(Debug, Clone, Event)]
struct Placed {
    order: u32,
}

#[derive(Debug, Clone, Event)]
struct Audited {
    order: u32,
}

#[handler]
fn place(command: Place, events: EventReleaser) -> Result<(), Infallible> {
    events.release(Placed {
        order: command.order,
    });
    events.release(Audited {
        order: command.order,
    });
    Ok(())
}

#[handler]
fn ship(event: &Placed, faults: &Faults, context: MessageContext) -> Result<(), Injected> {
    faults.run(event.order, 0, context)
}

#[handler]
fn bill(event: &Placed, faults: &Faults, context: MessageContext) -> Result<(), Injected> {
    faults.run(event.order, 1, context)
}

#[handler]
async fn notify(event: &Placed, faults: &Faults, context: MessageContext) -> Result<(), Injected> {
    futures::future::ready(()).await;
    faults.run(event.order, 2, context)
}

#[handler]
fn audit(event: &Audited, faults: &Faults, context: MessageContext) -> Result<(), Injected> {
    faults.run(event.order, 3, context)
}

#[handler]
async fn archive(
    event: &Audited,
    faults: &Faults,
    context: MessageContext,
) -> Result<(), Injected> {
    futures::future::ready(()).await;
    faults.run(event.order, 4, context)
}

/// Injected panics are expected by the thousand: keep them off stderr, and
/// leave every other panic to the default hook.
fn quiet_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !text.starts_with("injected panic") {
                default(info);
            }
        }));
    });
}

/// What the seed says must happen to one (order, handler): the attempts it
/// takes and, when every attempt fails, the last fault.
fn expected(order: u32, handler: usize) -> (u32, Option<Fault>) {
    for attempt in 1..=MAX_ATTEMPTS {
        if fault(order, handler, attempt) == Fault::None {
            return (attempt, None);
        }
    }
    (MAX_ATTEMPTS, Some(fault(order, handler, MAX_ATTEMPTS)))
}

/// Passes every call through: puts the handlers on the layered path (the
/// retry layer around a pipeline), instead of a direct first attempt.
struct PassThrough;

impl Layer for PassThrough {
    fn call<'a>(&'a self, call: HandlerCall<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        next.run(call)
    }
}

#[test]
fn under_injected_faults_every_handler_runs_retries_follow_the_policy_and_the_exhausted_are_dead_letters(
) {
    fault_injection(false);
}

#[test]
fn under_injected_faults_through_layers_too() {
    fault_injection(true);
}

fn fault_injection(layered: bool) {
    quiet_injected_panics();
    let faults = Arc::new(Faults::new());
    let sink = Arc::new(InMemoryDeadLetters::with_capacity(
        COMMANDS * HANDLERS.len(),
    ));
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<place>()
                .handler::<ship>()
                .handler::<bill>()
                .handler::<notify>()
                .handler::<audit>()
                .handler::<archive>(),
        )
        .dependencies(Dependencies::new().shared_arc(faults.clone()))
        .retry(
            RetryPolicy::exponential(MAX_ATTEMPTS)
                .first_delay(Duration::from_micros(200))
                .max_delay(Duration::from_millis(2)),
        )
        .dead_letters_arc(sink.clone());
    let bus = if layered { bus.layer(PassThrough) } else { bus }
        .build()
        .expect("valid wiring");

    let started = Instant::now();
    let (done, finished) = mpsc::channel();
    for thread in 0..THREADS {
        let bus = bus.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let orders = (thread..COMMANDS).step_by(THREADS).map(|o| o as u32);
            let mut failed = 0usize;
            if thread % 2 == 0 {
                for order in orders {
                    failed += usize::from(bus.dispatch_blocking(Place { order }).is_err());
                }
            } else {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async {
                    for order in orders {
                        failed += usize::from(bus.dispatch(Place { order }).await.is_err());
                    }
                });
            }
            done.send(failed).expect("the test waits");
        });
    }
    drop(done);
    let mut command_failures = 0;
    for _ in 0..THREADS {
        // No dispatch hung: every thread reports well within the limit.
        command_failures += finished
            .recv_timeout(Duration::from_secs(240))
            .expect("a dispatching thread hung");
    }
    let elapsed = started.elapsed();
    assert_eq!(command_failures, 0, "event failures never fail the command");

    let letters = sink.take();
    let mut dead: BTreeMap<(u32, &str), (u32, String)> = BTreeMap::new();
    for letter in &letters {
        let order = letter
            .event()
            .downcast_ref::<Placed>()
            .map(|e| e.order)
            .or_else(|| letter.event().downcast_ref::<Audited>().map(|e| e.order))
            .expect("a dead letter holds the event");
        let previous = dead.insert(
            (order, letter.handler()),
            (letter.attempts(), letter.error().to_owned()),
        );
        assert!(previous.is_none(), "one dead letter per exhausted call");
    }

    let (mut calls, mut successes, mut retries, mut failures, mut panics, mut exhausted) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut lost, mut duplicated) = (0u64, 0u64);
    for order in 0..COMMANDS as u32 {
        for (handler, name) in HANDLERS.iter().enumerate() {
            let slot = order as usize * HANDLERS.len() + handler;
            let ran = faults.calls[slot].load(Ordering::SeqCst);
            let succeeded = faults.successes[slot].load(Ordering::SeqCst);
            let (attempts, last_fault) = expected(order, handler);
            // Every handler ran for every event, exactly as often as the
            // policy allows.
            assert_eq!(ran, attempts, "{name} on order {order}: calls");
            for attempt in 1..=ran {
                match fault(order, handler, attempt) {
                    Fault::Fail => failures += 1,
                    Fault::Panic => panics += 1,
                    Fault::None => {}
                }
            }
            calls += u64::from(ran);
            retries += u64::from(ran - 1);
            successes += u64::from(succeeded);
            lost += u64::from(succeeded == 0 && !dead.contains_key(&(order, *name)));
            duplicated += u64::from(succeeded > 1);
            match last_fault {
                None => {
                    // Handled once, never twice, and not a dead letter.
                    assert_eq!(succeeded, 1, "{name} on order {order}: successes");
                    assert!(!dead.contains_key(&(order, *name)), "{name} {order}");
                }
                Some(last) => {
                    exhausted += 1;
                    assert_eq!(succeeded, 0, "{name} on order {order}: successes");
                    let (letter_attempts, error) = dead
                        .get(&(order, *name))
                        .unwrap_or_else(|| panic!("{name} on order {order}: no dead letter"));
                    assert_eq!(*letter_attempts, MAX_ATTEMPTS);
                    let wanted = match last {
                        Fault::Fail => format!(
                            "injected failure: order {order}, handler {handler}, attempt {MAX_ATTEMPTS}"
                        ),
                        _ => format!(
                            "panicked: injected panic: order {order}, handler {handler}, attempt {MAX_ATTEMPTS}"
                        ),
                    };
                    assert_eq!(error, &wanted);
                }
            }
        }
    }
    assert_eq!(dead.len() as u64, exhausted, "no unexpected dead letter");
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(faults.out_of_order_attempts.load(Ordering::SeqCst), 0);
    assert_eq!(bus.in_flight(), 0);
    assert!(
        exhausted > 0 && panics > 0 && retries > 0,
        "the faults were real"
    );

    println!(
        "reliability figures ({}): seed={SEED:#x} threads={THREADS} commands={COMMANDS} events={} \
         handler_calls={calls} injected_failures={failures} injected_panics={panics} \
         retries={retries} handled_once={successes} dead_letters={} lost={lost} duplicated={duplicated} \
         elapsed_ms={}",
        if layered { "through a layer" } else { "direct first attempts" },
        COMMANDS * 2,
        letters.len(),
        elapsed.as_millis()
    );
}

// ---------------------------------------------------------------------------
// Load: chains of events, no loss, no duplicate, no mixing
// ---------------------------------------------------------------------------

const LOAD_PER_THREAD: usize = 10_000;
const CHAIN: u32 = 3;

thread_local! {
    /// The order this thread is dispatching now.
    static CURRENT: std::cell::Cell<u64> = const { std::cell::Cell::new(u64::MAX) };
}

#[derive(Debug, Command)]
struct Begin {
    order: u64,
}

#[derive(Debug, Clone, Event)]
struct Step {
    order: u64,
    depth: u32,
    root: MessageId,
}

#[derive(Default)]
struct Ledger {
    handled: Vec<AtomicU32>,
    mixed: AtomicU64,
}

impl Ledger {
    fn check(&self, step: &Step, context: MessageContext) {
        let foreign_thread = CURRENT.with(|c| c.get()) != step.order;
        let foreign_flow = context.correlation_id() != step.root;
        if foreign_thread || foreign_flow {
            self.mixed.fetch_add(1, Ordering::SeqCst);
        }
        self.handled[step.order as usize].fetch_add(1, Ordering::SeqCst);
    }
}

#[handler]
fn begin(command: Begin, events: EventReleaser, context: MessageContext) -> Result<(), Infallible> {
    events.release(Step {
        order: command.order,
        depth: 1,
        root: context.correlation_id(),
    });
    Ok(())
}

#[handler]
fn step_forward(
    step: &Step,
    ledger: &Ledger,
    events: EventReleaser,
    context: MessageContext,
) -> Result<(), Infallible> {
    ledger.check(step, context);
    if step.depth < CHAIN {
        events.release(Step {
            depth: step.depth + 1,
            ..step.clone()
        });
    }
    Ok(())
}

#[handler]
async fn step_record(
    step: &Step,
    ledger: &Ledger,
    context: MessageContext,
) -> Result<(), Infallible> {
    futures::future::ready(()).await;
    ledger.check(step, context);
    Ok(())
}

#[test]
fn under_load_chains_of_events_are_neither_lost_nor_duplicated_nor_mixed() {
    let total = THREADS * LOAD_PER_THREAD;
    let ledger = Arc::new(Ledger {
        handled: (0..total).map(|_| AtomicU32::new(0)).collect(),
        mixed: AtomicU64::new(0),
    });
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<begin>()
                .handler::<step_forward>()
                .handler::<step_record>(),
        )
        .dependencies(Dependencies::new().shared_arc(ledger.clone()))
        // Every event handler goes through the retry layer (never needed).
        .retry(RetryPolicy::exponential(3))
        .build()
        .expect("valid wiring");
    let (done, finished) = mpsc::channel();
    for thread in 0..THREADS {
        let bus = bus.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a runtime");
            for i in 0..LOAD_PER_THREAD {
                let order = (thread * LOAD_PER_THREAD + i) as u64;
                CURRENT.with(|c| c.set(order));
                let result = if i % 2 == 0 {
                    bus.dispatch_blocking(Begin { order })
                } else {
                    runtime.block_on(bus.dispatch(Begin { order }))
                };
                result.expect("the command succeeds");
            }
            done.send(()).expect("the test waits");
        });
    }
    drop(done);
    for _ in 0..THREADS {
        finished
            .recv_timeout(Duration::from_secs(240))
            .expect("a dispatching thread hung");
    }
    let per_order = CHAIN * 2;
    for (order, handled) in ledger.handled.iter().enumerate() {
        assert_eq!(
            handled.load(Ordering::SeqCst),
            per_order,
            "order {order}: every step handled once by each of its two handlers"
        );
    }
    assert_eq!(
        ledger.mixed.load(Ordering::SeqCst),
        0,
        "an event reached another dispatch"
    );
    assert!(bus.dead_letters().expect("the default sink").is_empty());
}

// ---------------------------------------------------------------------------
// The edges
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Event)]
struct Echo;

#[handler]
fn echo_forever(_: &Echo, events: EventReleaser) -> Result<(), Infallible> {
    events.release(Echo);
    Ok(())
}

#[test]
fn the_cascade_bound_holds_with_retry_layers_in_place() {
    let bus = Bus::builder()
        .registrations(Registrations::new().handler::<echo_forever>())
        .retry(RetryPolicy::exponential(3))
        .max_messages_per_dispatch(50)
        .build()
        .expect("valid wiring");
    let error = bus
        .publish_blocking(Echo)
        .expect_err("the chain never ends");
    let DispatchError::CascadeLimit(limit) = error else {
        panic!("expected the cascade bound, got {error}");
    };
    assert_eq!(limit.limit(), 50);
    assert!(bus.dead_letters().expect("default sink").is_empty());
}

#[derive(Debug, Clone, Event)]
struct Invoice {
    customer: u32,
}

#[derive(Default)]
struct Attempts(AtomicU32);

#[derive(Debug, thiserror::Error)]
#[error("customer {0} does not exist")]
struct NoSuchCustomer(u32);

#[handler]
fn reject_unknown_customer(invoice: &Invoice, attempts: &Attempts) -> Result<(), Permanent> {
    attempts.0.fetch_add(1, Ordering::SeqCst);
    Err(Permanent::new(NoSuchCustomer(invoice.customer)))
}

#[test]
fn a_permanent_error_is_not_retried_and_goes_straight_to_the_dead_letters() {
    let attempts = Arc::new(Attempts::default());
    let bus = Bus::builder()
        .registrations(Registrations::new().handler::<reject_unknown_customer>())
        .dependencies(Dependencies::new().shared_arc(attempts.clone()))
        .retry(RetryPolicy::exponential(5).first_delay(Duration::from_millis(1)))
        .build()
        .expect("valid wiring");
    bus.publish_blocking(Invoice { customer: 42 })
        .expect("an event failure does not fail the publish");
    assert_eq!(attempts.0.load(Ordering::SeqCst), 1);
    let letters = bus.dead_letters().expect("default sink").take();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts(), 1);
    assert_eq!(letters[0].error(), "customer 42 does not exist");
    assert_eq!(letters[0].handler(), "reliability::reject_unknown_customer");
}

#[derive(Debug, Clone, Event)]
struct PartnerCalled;

#[handler]
async fn call_hanging_partner(_: &PartnerCalled, attempts: &Attempts) -> Result<(), Infallible> {
    attempts.0.fetch_add(1, Ordering::SeqCst);
    // The partner never answers: only the bus's timeout ends this call.
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test]
async fn a_timeout_fires_per_attempt_and_the_exhausted_call_is_a_dead_letter() {
    let attempts = Arc::new(Attempts::default());
    let bus = Bus::builder()
        .registrations(Registrations::new().handler::<call_hanging_partner>())
        .dependencies(Dependencies::new().shared_arc(attempts.clone()))
        .retry(RetryPolicy::exponential(2).first_delay(Duration::from_millis(1)))
        .handler_timeout::<call_hanging_partner>(Duration::from_millis(50))
        .build()
        .expect("valid wiring");
    // The handler never returns by itself: that the publish returns at all
    // shows the timeout cut each attempt short. (The outer limit only turns
    // a hang into a failure.)
    tokio::time::timeout(Duration::from_secs(120), bus.publish(PartnerCalled))
        .await
        .expect("the handler timeout ended the calls")
        .expect("publish returns");
    assert_eq!(
        attempts.0.load(Ordering::SeqCst),
        2,
        "each attempt timed out"
    );
    let letters = bus.dead_letters().expect("default sink").take();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].error(), "timed out after 50ms");
    assert_eq!(letters[0].attempts(), 2);
}

#[test]
fn a_timeout_on_a_plain_fn_is_refused_at_build() {
    let error: BuildError = Bus::builder()
        .registrations(Registrations::new().handler::<reject_unknown_customer>())
        .dependencies(Dependencies::new().shared(Attempts::default()))
        .handler_timeout::<reject_unknown_customer>(Duration::from_secs(1))
        .build()
        .expect_err("a plain fn cannot be interrupted");
    assert!(matches!(
        error.problems(),
        [Problem::InvalidSetting {
            setting: "handler_timeout",
            ..
        }]
    ));
    assert!(error
        .to_string()
        .contains("reliability::reject_unknown_customer"));
}

#[derive(Debug, Clone, Event)]
struct Packed {
    parcel: u32,
}

#[derive(Debug, Clone, Event)]
struct Labelled {
    parcel: u32,
}

#[derive(Default)]
struct Flaky {
    calls: AtomicU32,
    labelled: AtomicU32,
}

#[handler]
fn label_after_a_panic(
    packed: &Packed,
    flaky: &Flaky,
    events: EventReleaser,
) -> Result<(), Infallible> {
    // Released before the panic: must be dropped with the failed attempt.
    events.release(Labelled {
        parcel: packed.parcel,
    });
    if flaky.calls.fetch_add(1, Ordering::SeqCst) == 0 {
        panic!("injected panic: the label printer jammed");
    }
    Ok(())
}

#[handler]
fn count_labels(label: &Labelled, flaky: &Flaky) -> Result<(), Infallible> {
    flaky.labelled.fetch_add(label.parcel, Ordering::SeqCst);
    Ok(())
}

#[test]
fn a_panic_inside_a_retry_is_caught_and_the_next_attempt_succeeds_once() {
    quiet_injected_panics();
    let flaky = Arc::new(Flaky::default());
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<label_after_a_panic>()
                .handler::<count_labels>(),
        )
        .dependencies(Dependencies::new().shared_arc(flaky.clone()))
        .retry(RetryPolicy::exponential(3).first_delay(Duration::from_millis(1)))
        .build()
        .expect("valid wiring");
    bus.publish_blocking(Packed { parcel: 9 })
        .expect("publish returns");
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        flaky.labelled.load(Ordering::SeqCst),
        9,
        "only the successful attempt's event (parcel 9) was handled"
    );
    assert!(bus.dead_letters().expect("default sink").is_empty());
}

/// Records which attempt each call was, as a user's layer sees it.
struct AttemptLog(Arc<Mutex<Vec<(String, u32)>>>);

impl Layer for AttemptLog {
    fn call<'a>(&'a self, call: HandlerCall<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let outcome = next.run(call).await;
            self.0
                .lock()
                .expect("lock")
                .push((call.handler_name().to_owned(), call.attempt()));
            outcome
        })
    }
}

#[test]
fn user_layers_run_inside_the_retry_layer_and_see_each_attempt() {
    quiet_injected_panics();
    let log = Arc::new(Mutex::new(Vec::new()));
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<label_after_a_panic>()
                .handler::<count_labels>(),
        )
        .dependencies(Dependencies::new().shared(Flaky::default()))
        .retry(RetryPolicy::exponential(3).first_delay(Duration::from_millis(1)))
        .layer_for::<Packed>(AttemptLog(log.clone()))
        .build()
        .expect("valid wiring");
    bus.publish_blocking(Packed { parcel: 1 })
        .expect("publish returns");
    assert_eq!(
        *log.lock().expect("lock"),
        [
            ("reliability::label_after_a_panic".to_owned(), 1),
            ("reliability::label_after_a_panic".to_owned(), 2)
        ],
        "the layer of `Packed` saw both attempts; `Labelled` has no layer"
    );
}

// Commands: retried only on opt-in.

#[derive(Debug, thiserror::Error)]
enum ReserveError {
    #[error("someone else reserved first")]
    Conflict,
    #[error("no such seat")]
    NoSuchSeat,
}

#[derive(Debug, Clone, Command)]
#[command(output = u32, error = ReserveError)]
struct Reserve {
    seat: u32,
}

/// Loses the race `conflicts` times, then succeeds.
#[derive(Default)]
struct Seats {
    conflicts: AtomicU32,
    calls: AtomicU32,
}

#[handler]
fn reserve(command: Reserve, seats: &Seats) -> Result<u32, ReserveError> {
    let call = seats.calls.fetch_add(1, Ordering::SeqCst);
    if command.seat == 0 {
        return Err(ReserveError::NoSuchSeat);
    }
    if call < seats.conflicts.load(Ordering::SeqCst) {
        return Err(ReserveError::Conflict);
    }
    Ok(command.seat)
}

fn seat_bus(seats: &Arc<Seats>, opt_in: bool) -> Bus {
    let builder = Bus::builder()
        .registrations(Registrations::new().handler::<reserve>())
        .dependencies(Dependencies::new().shared_arc(seats.clone()));
    let builder = if opt_in {
        builder.retry_command::<Reserve>(
            RetryPolicy::exponential(4).first_delay(Duration::from_millis(1)),
            |error| matches!(error, ReserveError::Conflict),
        )
    } else {
        builder.retry(RetryPolicy::exponential(4))
    };
    builder.build().expect("valid wiring")
}

#[test]
fn a_command_is_not_retried_without_opting_in() {
    let seats = Arc::new(Seats::default());
    seats.conflicts.store(1, Ordering::SeqCst);
    let bus = seat_bus(&seats, false);
    let error = bus
        .dispatch_blocking(Reserve { seat: 3 })
        .expect_err("the conflict reaches the caller");
    assert!(matches!(
        error,
        DispatchError::Handler(ReserveError::Conflict)
    ));
    assert_eq!(seats.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_opted_in_command_is_retried_on_the_errors_it_named_only() {
    let seats = Arc::new(Seats::default());
    seats.conflicts.store(2, Ordering::SeqCst);
    let bus = seat_bus(&seats, true);
    assert_eq!(
        bus.dispatch(Reserve { seat: 3 }).await.expect("third try"),
        3
    );
    assert_eq!(seats.calls.load(Ordering::SeqCst), 3);

    // A conflict on every attempt: the policy's 4 attempts, then the error.
    seats.calls.store(0, Ordering::SeqCst);
    seats.conflicts.store(100, Ordering::SeqCst);
    let error = bus
        .dispatch(Reserve { seat: 3 })
        .await
        .expect_err("gives up");
    assert!(matches!(
        error,
        DispatchError::Handler(ReserveError::Conflict)
    ));
    assert_eq!(seats.calls.load(Ordering::SeqCst), 4);

    // An error it did not name: not retried.
    seats.calls.store(0, Ordering::SeqCst);
    let error = bus
        .dispatch(Reserve { seat: 0 })
        .await
        .expect_err("no such seat");
    assert!(matches!(
        error,
        DispatchError::Handler(ReserveError::NoSuchSeat)
    ));
    assert_eq!(seats.calls.load(Ordering::SeqCst), 1);
}

// Graceful shutdown.

#[derive(Debug, Command)]
struct SlowWork;

#[derive(Debug, Clone, Event)]
struct SlowWorkDone;

struct Gate {
    entered: AtomicBool,
    open: AtomicBool,
    events_handled: AtomicUsize,
}

#[handler]
async fn slow_work(_: SlowWork, gate: &Gate, events: EventReleaser) -> Result<(), Infallible> {
    gate.entered.store(true, Ordering::SeqCst);
    while !gate.open.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    events.release(SlowWorkDone);
    Ok(())
}

#[handler]
fn slow_work_done(_: &SlowWorkDone, gate: &Gate) -> Result<(), Infallible> {
    gate.events_handled.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// A bus whose `SlowWork` handler waits at `gate` until it is opened.
fn gated_bus() -> (Arc<Gate>, Bus) {
    let gate = Arc::new(Gate {
        entered: AtomicBool::new(false),
        open: AtomicBool::new(false),
        events_handled: AtomicUsize::new(0),
    });
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<slow_work>()
                .handler::<slow_work_done>(),
        )
        .dependencies(Dependencies::new().shared_arc(gate.clone()))
        .build()
        .expect("valid wiring");
    (gate, bus)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_dispatches_in_flight_finish_and_refuses_new_ones() {
    let (gate, bus) = gated_bus();

    let in_flight = tokio::spawn({
        let bus = bus.clone();
        async move { bus.dispatch(SlowWork).await }
    });
    while !gate.entered.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(bus.in_flight(), 1);

    // The dispatch cannot finish while the gate is shut: a shutdown that
    // ends before its grace runs out did not wait for it.
    let grace = Duration::from_millis(50);
    let early = bus.shutdown(grace).await;
    assert_eq!(
        early,
        Err(arch_events::ShutdownError { running: 1, grace }),
        "shutdown waits for the dispatch in flight"
    );
    assert!(bus.is_closed());
    let refused = bus.dispatch(SlowWork).await.expect_err("closed");
    assert!(matches!(refused, DispatchError::Closed));
    assert_eq!(
        refused.to_string(),
        "the bus is shutting down: it accepts no new dispatch"
    );
    assert_eq!(bus.in_flight(), 1, "the refused dispatch was not counted");

    // A shutdown waiting while the dispatch runs ends after its events.
    let shutdown = tokio::spawn({
        let (bus, gate) = (bus.clone(), gate.clone());
        async move {
            let done = bus.shutdown(Duration::from_secs(30)).await;
            (done, gate.events_handled.load(Ordering::SeqCst))
        }
    });
    gate.open.store(true, Ordering::SeqCst);
    in_flight
        .await
        .expect("the task")
        .expect("the dispatch in flight finished");
    let (done, handled) = shutdown.await.expect("the task");
    done.expect("nothing left in flight");
    assert_eq!(handled, 1, "the in-flight dispatch's events ran before");
    assert_eq!(bus.in_flight(), 0);
}

#[test]
fn shutdown_reports_dispatches_still_running_after_the_grace_period() {
    let (gate, bus) = gated_bus();
    let worker = std::thread::spawn({
        let bus = bus.clone();
        move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(bus.dispatch(SlowWork))
        }
    });
    while !gate.entered.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let error = bus
        .shutdown_blocking(Duration::from_millis(30))
        .expect_err("still running");
    assert_eq!(error.running, 1);
    gate.open.store(true, Ordering::SeqCst);
    worker.join().expect("joins").expect("it finished anyway");
    assert_eq!(bus.in_flight(), 0);
}

// ---------------------------------------------------------------------------
// The example app: a dead letter replayed once its fault is gone
// ---------------------------------------------------------------------------

use arch_events_test_support::server;
use reqwest::Method;
use server::{
    add_batch, admin, database, example_app_binary, get, message, on_database, post, Server,
};

#[tokio::test]
async fn the_example_app_replays_a_dead_letter_once_the_fault_is_gone() {
    let (_dir, path) = database();
    let url = format!("sqlite://{}", path.display());
    let server = Server::start_with(
        &example_app_binary(),
        &url,
        // Its retries 10 ms, 20 ms, 40 ms and 80 ms apart, in the scheduler.
        &[
            ("ADMIN_TOKEN", server::ADMIN_TOKEN),
            ("EVENT_RETRY_WAIT_MS", "10"),
        ],
    );
    add_batch(&server, "b1", "CHAIR", 10, None).await;

    // The read model's table goes away: its event handler fails on every
    // attempt, the allocation itself still commits.
    on_database(
        &url,
        "ALTER TABLE allocations_view RENAME TO allocations_view_away",
    )
    .await;
    let (status, body) = post(
        &server,
        "/allocate",
        json!({"orderid": "o1", "sku": "CHAIR", "qty": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // The answer came after the first attempt; the scheduler makes the
    // others, then keeps the dead letter.
    let deadline = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let (status, letters) = admin(&server, Method::GET, "/dead_letters").await;
        assert_eq!(status, StatusCode::OK);
        let letters = letters.as_array().expect("a list").clone();
        if !letters.is_empty() || Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["message_name"], "allocation.allocated");
    assert_eq!(
        letter["handler"],
        "example_app::views::add_allocation_to_read_model"
    );
    assert_eq!(
        letter["attempts"],
        example_app::bootstrap::EVENT_HANDLER_ATTEMPTS
    );
    assert!(
        letter["error"].as_str().unwrap().contains("no such table"),
        "{letter}"
    );
    let id = letter["id"].as_i64().unwrap();

    // Still broken: 409, and the letter stays.
    let (status, body) = admin(&server, Method::POST, &format!("/dead_letters/{id}/replay")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(message(&body).contains("no such table"), "{body}");

    // The fault is gone: the replay succeeds and the read model catches up.
    on_database(
        &url,
        "ALTER TABLE allocations_view_away RENAME TO allocations_view",
    )
    .await;
    let (status, body) = admin(&server, Method::POST, &format!("/dead_letters/{id}/replay")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["replayed_at"].is_string(), "{body}");
    let (status, rows) = get(&server, "/allocations/o1").await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    assert_eq!(rows, json!([{"sku": "CHAIR", "qty": 2, "batchref": "b1"}]));

    // Once only; then it is listed only with `?all=true`.
    let (status, _) = admin(&server, Method::POST, &format!("/dead_letters/{id}/replay")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, open) = admin(&server, Method::GET, "/dead_letters").await;
    assert_eq!(open, json!([]));
    let (_, all) = admin(&server, Method::GET, "/dead_letters?all=true").await;
    assert_eq!(all.as_array().map(Vec::len), Some(1));

    // Bad requests name the problem.
    let (status, body) = admin(&server, Method::POST, "/dead_letters/999/replay").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(message(&body), "no dead letter 999");
    let (status, body) = admin(&server, Method::POST, "/dead_letters/abc/replay").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = admin(&server, Method::GET, "/dead_letters?everything=yes").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

// Layers around commands.

#[derive(Debug, Command)]
#[command(output = u32)]
struct Quote {
    delay_ms: u64,
}

#[handler]
async fn quote(command: Quote) -> Result<u32, Infallible> {
    tokio::time::sleep(Duration::from_millis(command.delay_ms)).await;
    Ok(42)
}

/// Refuses every call outside business hours (here: always).
struct Closed;

impl Layer for Closed {
    fn call<'a>(&'a self, _: HandlerCall<'a>, _: Next<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(async {
            Err(arch_events::FailureCause::Error(
                "outside business hours".into(),
            ))
        })
    }
}

#[tokio::test]
async fn a_command_times_out_or_is_refused_by_a_layer_with_a_pipeline_error() {
    let bus = Bus::builder()
        .registrations(Registrations::new().handler::<quote>())
        .handler_timeout::<quote>(Duration::from_millis(30))
        .build()
        .expect("valid wiring");
    assert_eq!(
        bus.dispatch(Quote { delay_ms: 1 }).await.expect("in time"),
        42
    );
    let error = bus
        .dispatch(Quote { delay_ms: 5_000 })
        .await
        .expect_err("too slow");
    let DispatchError::Pipeline(failure) = &error else {
        panic!("expected a pipeline failure, got {error}");
    };
    assert!(matches!(
        failure.cause(),
        arch_events::FailureCause::TimedOut(limit) if *limit == Duration::from_millis(30)
    ));
    assert_eq!(failure.handler(), "reliability::quote");

    let refusing = Bus::builder()
        .registrations(Registrations::new().handler::<quote>())
        .layer_for::<Quote>(Closed)
        .build()
        .expect("valid wiring");
    let error = refusing
        .dispatch(Quote { delay_ms: 1 })
        .await
        .expect_err("refused");
    assert!(
        error.to_string().contains("outside business hours"),
        "{error}"
    );
}
