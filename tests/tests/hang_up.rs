//! A caller that stops waiting: dropping an awaited dispatch's future once
//! its command handler returned does not drop the rest of the cascade. On a
//! bus with a spawner the events run on a task of their own (nothing is
//! interrupted); without one, the rest goes on on a thread (the handler
//! that was interrupted runs again from the start). A graceful shutdown
//! waits for them, and dropping the future before the command handler
//! returned cancels the command and everything it would have caused.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arch_events::{
    handler, Bus, Command, Dependencies, Event, EventReleaser, Registrations, RetryPolicy,
};
use tokio::sync::{Notify, Semaphore};

#[derive(Debug, Command)]
struct PlaceOrder {
    lines: u32,
    /// Whether the handler waits for the gate before it returns.
    slow: bool,
}

#[derive(Debug, Clone, Event)]
struct LinePlaced {
    line: u32,
}

/// What the handlers did, and the switches a test holds them with.
struct Probe {
    /// Closed (no permit) until a test opens it.
    gate: Semaphore,
    /// Told when `reserve_stock` starts waiting on the gate for line 0.
    waiting: Notify,
    /// Told when `flaky` failed its first attempt.
    failed_once: Notify,
    starts: Mutex<BTreeMap<(&'static str, u32), u32>>,
    completions: Mutex<BTreeMap<(&'static str, u32), u32>>,
    flaky_attempts: AtomicU32,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            gate: Semaphore::new(0),
            waiting: Notify::new(),
            failed_once: Notify::new(),
            starts: Mutex::default(),
            completions: Mutex::default(),
            flaky_attempts: AtomicU32::new(0),
        }
    }
}

impl Probe {
    fn started(&self, handler: &'static str, line: u32) {
        *self
            .starts
            .lock()
            .unwrap()
            .entry((handler, line))
            .or_default() += 1;
    }

    fn completed(&self, handler: &'static str, line: u32) {
        *self
            .completions
            .lock()
            .unwrap()
            .entry((handler, line))
            .or_default() += 1;
    }

    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    fn completions(&self) -> BTreeMap<(&'static str, u32), u32> {
        self.completions.lock().unwrap().clone()
    }

    fn starts(&self, handler: &'static str, line: u32) -> u32 {
        self.starts
            .lock()
            .unwrap()
            .get(&(handler, line))
            .copied()
            .unwrap_or(0)
    }
}

#[handler]
async fn place_order(
    cmd: PlaceOrder,
    probe: &Probe,
    events: EventReleaser,
) -> Result<(), Infallible> {
    if cmd.slow {
        probe.waiting.notify_one();
        drop(probe.gate.acquire().await);
    }
    for line in 0..cmd.lines {
        events.release(LinePlaced { line });
    }
    Ok(())
}

/// Waits on the gate for line 0: that is where a test drops the dispatch.
#[handler]
async fn reserve_stock(event: &LinePlaced, probe: &Probe) {
    probe.started("reserve_stock", event.line);
    if event.line == 0 {
        probe.waiting.notify_one();
        drop(probe.gate.acquire().await);
    }
    probe.completed("reserve_stock", event.line);
}

#[handler]
fn send_mail(event: &LinePlaced, probe: &Probe) {
    probe.started("send_mail", event.line);
    probe.completed("send_mail", event.line);
}

/// Fails its first attempt (on line 0), then succeeds.
#[handler]
fn flaky(event: &LinePlaced, probe: &Probe) -> Result<(), std::io::Error> {
    probe.started("flaky", event.line);
    if event.line == 0 && probe.flaky_attempts.fetch_add(1, Ordering::SeqCst) == 0 {
        probe.failed_once.notify_one();
        return Err(std::io::Error::other("not yet"));
    }
    probe.completed("flaky", event.line);
    Ok(())
}

fn bus(probe: &Arc<Probe>, registrations: Registrations, tokio_spawner: bool) -> Bus {
    let builder = Bus::builder()
        .registrations(registrations.handler::<place_order>())
        .dependencies(Dependencies::new().shared_arc(probe.clone()))
        .retry(
            RetryPolicy::exponential(3)
                .first_delay(Duration::from_millis(200))
                .without_jitter(),
        );
    let builder = if tokio_spawner {
        builder.spawner(|task| {
            tokio::spawn(task);
        })
    } else {
        builder
    };
    builder.build().expect("wiring")
}

/// Every `(handler, line)` of `handlers` over `lines` lines, completed once.
fn once_each(handlers: &[&'static str], lines: u32) -> BTreeMap<(&'static str, u32), u32> {
    handlers
        .iter()
        .flat_map(|handler| (0..lines).map(move |line| ((*handler, line), 1)))
        .collect()
}

/// Dispatches `PlaceOrder` and drops the dispatch's future as soon as
/// `signal` is told (the future never completes before that).
async fn dispatch_and_hang_up(bus: &Bus, command: PlaceOrder, signal: &Notify) {
    tokio::select! {
        biased;
        () = signal.notified() => {}
        result = bus.dispatch(command) => panic!("the dispatch ended first: {result:?}"),
    }
}

async fn the_rest_runs_once_after_the_caller_hung_up(tokio_spawner: bool) {
    let probe = Arc::new(Probe::default());
    let handlers = Registrations::new()
        .handler::<reserve_stock>()
        .handler::<send_mail>();
    let bus = bus(&probe, handlers, tokio_spawner);
    let command = PlaceOrder {
        lines: 3,
        slow: false,
    };
    dispatch_and_hang_up(&bus, command, &probe.waiting).await;

    // The caller is gone; `reserve_stock` was waiting for line 0 when its
    // future was dropped. Nothing else ran yet, and the rest is in flight.
    assert_eq!(bus.in_flight(), 1, "the rest of the dispatch is in flight");
    assert!(probe.completions().is_empty(), "{:?}", probe.completions());
    probe.open();
    assert!(bus.settled(Duration::from_secs(10)).await, "the rest ran");
    assert_eq!(
        probe.completions(),
        once_each(&["reserve_stock", "send_mail"], 3),
        "every handler completed once, on every event"
    );
    if tokio_spawner {
        assert_eq!(
            probe.starts("reserve_stock", 0),
            1,
            "nothing was interrupted"
        );
    } else {
        assert_eq!(
            probe.starts("reserve_stock", 0),
            2,
            "the interrupted call ran again"
        );
    }
    assert_eq!(probe.starts("send_mail", 0), 1);
}

#[tokio::test]
async fn the_rest_of_a_dispatch_runs_on_the_named_runtime_after_the_caller_hung_up() {
    the_rest_runs_once_after_the_caller_hung_up(true).await;
}

#[tokio::test]
async fn without_a_spawner_the_rest_runs_on_a_thread_of_its_own() {
    the_rest_runs_once_after_the_caller_hung_up(false).await;
}

/// `flaky` fails its first attempt on line 0; its retry waits 200 ms after
/// the event's other handlers ran: the caller hangs up then. With a spawner
/// the retry goes on without the caller; without one it is taken up again,
/// and makes its next attempt at once.
async fn a_retry_under_way_when_the_caller_hung_up_succeeds_once(tokio_spawner: bool) {
    let probe = Arc::new(Probe::default());
    let handlers = Registrations::new()
        .handler::<flaky>()
        .handler::<send_mail>();
    let bus = bus(&probe, handlers, tokio_spawner);
    let command = PlaceOrder {
        lines: 2,
        slow: false,
    };
    dispatch_and_hang_up(&bus, command, &probe.failed_once).await;
    assert!(bus.settled(Duration::from_secs(10)).await, "the rest ran");
    assert_eq!(probe.completions(), once_each(&["flaky", "send_mail"], 2));
    assert_eq!(probe.flaky_attempts.load(Ordering::SeqCst), 2);
    assert!(bus.dead_letters().expect("in memory").is_empty());
}

#[tokio::test]
async fn a_retry_under_way_when_the_caller_hung_up_still_succeeds_once() {
    a_retry_under_way_when_the_caller_hung_up_succeeds_once(true).await;
}

#[tokio::test]
async fn without_a_spawner_a_retry_under_way_is_taken_up_again() {
    a_retry_under_way_when_the_caller_hung_up_succeeds_once(false).await;
}

#[tokio::test]
async fn a_graceful_shutdown_waits_for_the_rest_of_a_dispatch_whose_caller_hung_up() {
    let probe = Arc::new(Probe::default());
    let handlers = Registrations::new()
        .handler::<reserve_stock>()
        .handler::<send_mail>();
    let bus = bus(&probe, handlers, true);
    let command = PlaceOrder {
        lines: 2,
        slow: false,
    };
    dispatch_and_hang_up(&bus, command, &probe.waiting).await;

    let shutdown = tokio::spawn({
        let bus = bus.clone();
        async move { bus.shutdown(Duration::from_secs(10)).await }
    });
    tokio::task::yield_now().await;
    assert!(bus.is_closed());
    assert_eq!(bus.in_flight(), 1, "held at the gate");
    assert!(!shutdown.is_finished(), "shutdown waits for it");
    probe.open();
    shutdown
        .await
        .expect("shutdown ran")
        .expect("nothing left running at the end");
    assert_eq!(
        probe.completions(),
        once_each(&["reserve_stock", "send_mail"], 2)
    );
}

#[tokio::test]
async fn hanging_up_before_the_command_handler_returned_cancels_the_command() {
    let probe = Arc::new(Probe::default());
    let handlers = Registrations::new()
        .handler::<reserve_stock>()
        .handler::<send_mail>();
    let bus = bus(&probe, handlers, true);
    let command = PlaceOrder {
        lines: 2,
        slow: true,
    };
    dispatch_and_hang_up(&bus, command, &probe.waiting).await;
    probe.open();
    assert!(bus.settled(Duration::from_secs(10)).await);
    assert_eq!(bus.in_flight(), 0);
    assert!(
        probe.completions().is_empty(),
        "the command never returned, so nothing it would have released ran: {:?}",
        probe.completions()
    );
}
