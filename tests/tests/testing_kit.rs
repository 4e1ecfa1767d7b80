//! `arch_events::testing`: the recorder, the given/when/then scenario, and
//! `Bus::settled`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arch_events::testing::{given, HandlerRun, Recorder};
use arch_events::{
    handler, Aggregate, Bus, Command, Dependencies, Event, EventRecorder, EventReleaser,
    Registrations, RetryPolicy,
};

#[derive(Debug, Command)]
struct Ship;

#[derive(Debug, Clone, PartialEq, Event)]
#[event(name = "kit.shipped")]
struct Shipped;

#[handler(releases(Shipped))]
fn ship(_: Ship, events: EventReleaser) -> Result<(), Infallible> {
    events.release(Shipped);
    Ok(())
}

/// Fails twice, then succeeds.
#[handler]
fn flaky_label(_: &Shipped, calls: &AtomicU32) -> Result<(), std::io::Error> {
    match calls.fetch_add(1, Ordering::SeqCst) {
        0 | 1 => Err(std::io::Error::other("printer jammed")),
        _ => Ok(()),
    }
}

#[handler]
fn always_fails(_: &Shipped) -> Result<(), std::io::Error> {
    Err(std::io::Error::other("no ink"))
}

fn bus() -> Bus {
    Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<ship>()
                .handler::<flaky_label>()
                .handler::<always_fails>(),
        )
        .dependencies(Dependencies::new().shared(AtomicU32::new(0)))
        .retry(RetryPolicy::exponential(3).first_delay(Duration::from_millis(1)))
        .build()
        .expect("valid wiring")
}

#[test]
fn the_recorder_sees_events_handler_runs_attempts_and_failures() {
    let bus = bus();
    let recorder = Recorder::attach(&bus);
    bus.dispatch_blocking(Ship).expect("shipped");

    assert_eq!(recorder.events_of::<Shipped>(), [Shipped]);
    assert_eq!(recorder.event_names(), ["kit.shipped"]);
    let runs = recorder.runs();
    assert_eq!(runs[0].handler, "testing_kit::ship");
    assert!(runs.contains(&HandlerRun {
        handler: "testing_kit::flaky_label",
        message: "kit.shipped",
        attempts: 3,
        ok: true,
    }));
    assert_eq!(
        recorder.failures(),
        [HandlerRun {
            handler: "testing_kit::always_fails",
            message: "kit.shipped",
            attempts: 3,
            ok: false,
        }]
    );

    // A second recorder is the first one; clearing forgets everything.
    let again = Recorder::attach(&bus.clone());
    assert_eq!(again.runs(), runs);
    again.clear();
    assert!(recorder.runs().is_empty() && recorder.events().is_empty());
}

#[derive(Debug, Command)]
struct Pack;

#[derive(Debug, Clone, PartialEq, Event)]
#[event(name = "kit.packed")]
struct Packed;

#[handler(releases(Packed))]
fn pack(_: Pack, events: EventReleaser) -> Result<(), Infallible> {
    events.release(Packed);
    Ok(())
}

/// Holds every `Packed` handler until the test opens it.
struct Gate {
    open: tokio::sync::Semaphore,
    inside: AtomicU32,
    arrived: tokio::sync::Notify,
    through: AtomicU32,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            open: tokio::sync::Semaphore::new(0),
            inside: AtomicU32::new(0),
            arrived: tokio::sync::Notify::new(),
            through: AtomicU32::new(0),
        }
    }
}

#[handler]
async fn wait_at_gate(_: &Packed, gate: &Gate) {
    gate.inside.fetch_add(1, Ordering::SeqCst);
    gate.arrived.notify_waiters();
    drop(gate.open.acquire().await);
    gate.through.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_waits_for_dispatches_running_on_other_tasks() {
    let gate = std::sync::Arc::new(Gate::default());
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<pack>()
                .handler::<wait_at_gate>(),
        )
        .dependencies(Dependencies::new().shared_arc(gate.clone()))
        .build()
        .expect("valid wiring");
    let recorder = Recorder::attach(&bus);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.dispatch(Pack).await })
        })
        .collect();
    // Every dispatch is inside its handler, held at the gate.
    while gate.inside.load(Ordering::SeqCst) < 20 {
        // Registered before the count is read again: no arrival is missed.
        let arrived = gate.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if gate.inside.load(Ordering::SeqCst) < 20 {
            arrived.await;
        }
    }
    // None can finish while the gate is shut: not settled, whatever the wait.
    assert!(!bus.settled(Duration::from_millis(20)).await);
    assert_eq!(bus.in_flight(), 20);
    // Waiting while they run: settled once the last one is through, and
    // not before.
    let settled = tokio::spawn({
        let (bus, gate) = (bus.clone(), gate.clone());
        async move {
            let settled = bus.settled(Duration::from_secs(30)).await;
            (settled, gate.through.load(Ordering::SeqCst))
        }
    });
    gate.open.add_permits(20);
    let (settled, through) = settled.await.expect("joined");
    assert!(settled);
    assert_eq!(through, 20, "settled saw every handler through");
    assert_eq!(recorder.events_of::<Packed>().len(), 20);
    for task in tasks {
        task.await.expect("joined").expect("packed");
    }
}

#[derive(Default)]
struct Counter {
    value: u32,
    events: EventRecorder,
}

#[derive(Debug, Clone, PartialEq, Event)]
struct Counted(u32);

impl Aggregate for Counter {
    fn events(&mut self) -> &mut EventRecorder {
        &mut self.events
    }
}

impl Counter {
    fn add(&mut self, by: u32) -> Result<u32, String> {
        if by == 0 {
            return Err("nothing to add".into());
        }
        self.value += by;
        self.events.record(Counted(self.value));
        Ok(self.value)
    }
}

#[test]
fn given_forgets_the_set_up_events_and_then_checks_the_action_only() {
    let mut counter = Counter::default();
    counter.add(1).expect("set-up");
    given(counter)
        .when(|c| c.add(2))
        .then_ok()
        .then_events(&[Counted(3)])
        .then_event_names(&["testing_kit::Counted"])
        .then(|c, result| {
            assert_eq!(c.value, 3);
            assert_eq!(result, &Ok(3));
        });
    given(Counter::default())
        .when(|c| c.add(0))
        .then_error(&"nothing to add".to_owned())
        .then_no_events();
}

#[test]
#[should_panic(expected = "expected the events [Counted(9)], the action raised [Counted(3)]")]
fn a_wrong_expectation_fails_saying_what_was_raised() {
    given(Counter {
        value: 1,
        ..Default::default()
    })
    .when(|c| c.add(2))
    .then_events(&[Counted(9)]);
}
