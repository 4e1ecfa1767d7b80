//! Many threads and tasks dispatch at once; each dispatch sees only its own
//! events and units of work, and its whole cascade ran before it returned.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use arch_events::{
    handler, Bus, Command, Dependencies, Event, EventReleaser, Registrations, Scoped,
};

/// What each dispatch caused, by dispatch id.
#[derive(Debug, Default)]
struct Trace(Mutex<HashMap<u64, Vec<String>>>);

impl Trace {
    fn push(&self, id: u64, entry: String) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .push(entry);
    }
    fn of(&self, id: u64) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }
}

/// A per-call scoped value: proves no two calls share one.
struct CallToken {
    serial: u64,
}

static SERIALS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Command)]
#[command(output = u64)]
struct Work {
    id: u64,
    depth: u32,
}

#[derive(Debug, Clone, Event)]
struct Step {
    id: u64,
    remaining: u32,
}

/// Returns `Pending` once, waking itself: a real suspension point that needs
/// no runtime.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

#[handler]
async fn work(
    cmd: Work,
    token: Scoped<CallToken>,
    trace: &Trace,
    events: EventReleaser,
) -> Result<u64, Infallible> {
    YieldOnce(false).await;
    trace.push(cmd.id, format!("work {}", cmd.id));
    events.release(Step {
        id: cmd.id,
        remaining: cmd.depth,
    });
    Ok(token.serial)
}

#[handler]
fn step_sync(event: &Step, trace: &Trace, events: EventReleaser) {
    trace.push(event.id, format!("sync {} {}", event.id, event.remaining));
    if event.remaining > 0 {
        events.release(Step {
            id: event.id,
            remaining: event.remaining - 1,
        });
    }
}

#[handler]
async fn step_zasync(event: &Step, trace: &Trace) {
    YieldOnce(false).await;
    trace.push(event.id, format!("async {} {}", event.id, event.remaining));
}

fn bus(trace: Arc<Trace>) -> Bus {
    Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<work>()
                .handler::<step_sync>()
                .handler::<step_zasync>(),
        )
        .dependencies(Dependencies::new().shared_arc(trace).scoped(|_| CallToken {
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
        }))
        .build()
        .expect("valid wiring")
}

fn expected(id: u64, depth: u32) -> Vec<String> {
    let mut entries = vec![format!("work {id}")];
    for remaining in (0..=depth).rev() {
        entries.push(format!("sync {id} {remaining}"));
        entries.push(format!("async {id} {remaining}"));
    }
    entries
}

const THREADS: u64 = 8;
const PER_THREAD: u64 = 250;

#[test]
fn threads_dispatching_at_once_each_see_only_their_own_cascade() {
    let trace = Arc::new(Trace::default());
    let bus = bus(trace.clone());
    let serials = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let bus = bus.clone();
            let trace = trace.clone();
            let serials = serials.clone();
            scope.spawn(move || {
                for n in 0..PER_THREAD {
                    let id = thread * 1_000_000 + n;
                    let depth = (n % 4) as u32;
                    let serial = bus
                        .dispatch_blocking(Work { id, depth })
                        .expect("work succeeds");
                    serials.lock().expect("lock").push(serial);
                    // The whole cascade ran inside this dispatch, and nothing
                    // of another dispatch leaked into it.
                    assert_eq!(trace.of(id), expected(id, depth));
                }
            });
        }
    });
    let mut serials = serials.lock().expect("lock").clone();
    let total = serials.len();
    serials.sort_unstable();
    serials.dedup();
    assert_eq!(total as u64, THREADS * PER_THREAD);
    assert_eq!(serials.len(), total, "every call got its own scoped value");
}

#[test]
fn tasks_on_a_multi_threaded_runtime_each_see_only_their_own_cascade() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .expect("runtime");
    let trace = Arc::new(Trace::default());
    let bus = bus(trace.clone());
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for id in 0..2_000u64 {
            let bus = bus.clone();
            let trace = trace.clone();
            tasks.push(tokio::spawn(async move {
                let depth = (id % 5) as u32;
                bus.dispatch(Work { id, depth })
                    .await
                    .expect("work succeeds");
                assert_eq!(trace.of(id), expected(id, depth));
            }));
        }
        for task in tasks {
            task.await.expect("task did not panic");
        }
    });
}

/// One call's releaser, cloned to threads that release through it at once
/// while the call runs: every event is queued once, and each thread's own
/// events stay in the order it released them.
#[test]
fn threads_releasing_through_clones_of_one_releaser_lose_nothing() {
    const THREADS: u64 = 4;
    const EACH: u64 = 250;

    #[derive(Debug, Command)]
    struct FanOut;

    #[derive(Debug, Clone, Event)]
    struct Released {
        thread: u64,
        n: u64,
    }

    #[handler(releases(Released))]
    fn fan_out(_: FanOut, events: EventReleaser) -> Result<(), Infallible> {
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let events = events.clone();
                scope.spawn(move || {
                    for n in 0..EACH {
                        events.release(Released { thread, n });
                    }
                });
            }
        });
        Ok(())
    }

    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<(u64, u64)>>);

    #[handler]
    fn record(event: &Released, seen: &Seen) {
        seen.0.lock().unwrap().push((event.thread, event.n));
    }

    let seen = Arc::new(Seen::default());
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<fan_out>()
                .handler::<record>(),
        )
        .dependencies(Dependencies::new().shared_arc(seen.clone()))
        .max_messages_per_dispatch(10_000)
        .build()
        .expect("valid wiring");
    for _ in 0..5 {
        seen.0.lock().unwrap().clear();
        bus.dispatch_blocking(FanOut).expect("dispatched");
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(seen.len() as u64, THREADS * EACH, "each event handled once");
        for thread in 0..THREADS {
            let order: Vec<u64> = seen
                .iter()
                .filter(|(t, _)| *t == thread)
                .map(|(_, n)| *n)
                .collect();
            assert_eq!(
                order,
                (0..EACH).collect::<Vec<_>>(),
                "thread {thread}'s order"
            );
        }
    }
}
