//! Heap allocations on the hot path, counted by a counting global allocator
//! (`allocation-counter`, per thread). Allocation counts are deterministic,
//! so these are tests, unlike timings.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use allocation_counter::measure;
use arch_events::{handler, Bus, Command, Dependencies, Event, EventReleaser, Registrations};

#[derive(Debug)]
struct Config {
    factor: u64,
}

/// What the handlers did: each counts its calls, so that a dispatch that
/// silently did nothing cannot pass for one that allocated nothing.
#[derive(Debug, Default)]
struct Calls {
    scale: AtomicU64,
    tick_a: AtomicU64,
    tick_b: AtomicU64,
    tock_a: AtomicU64,
    tock_b: AtomicU64,
    /// `tick_b` fails its next call.
    fail_tick_b: AtomicBool,
    /// The releasers `keep` kept past their calls.
    kept: std::sync::Mutex<Vec<EventReleaser>>,
}

/// How many calls a counter of [`Calls`] saw.
fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::SeqCst)
}

#[derive(Debug, Command)]
#[command(output = u64)]
struct Scale(u64);

#[handler]
fn scale(cmd: Scale, config: &Config, calls: &Calls) -> Result<u64, Infallible> {
    calls.scale.fetch_add(1, Ordering::Relaxed);
    Ok(cmd.0.wrapping_mul(config.factor))
}

#[derive(Debug, Command)]
#[command(output = u64)]
struct ScaleAsync(u64);

#[handler]
async fn scale_async(cmd: ScaleAsync, config: &Config, calls: &Calls) -> Result<u64, Infallible> {
    calls.scale.fetch_add(1, Ordering::Relaxed);
    Ok(cmd.0.wrapping_mul(config.factor))
}

#[derive(Debug, Clone, Event)]
struct Tick(u64);

#[handler]
fn tick_a(event: &Tick, calls: &Calls) {
    calls.tick_a.fetch_add(1, Ordering::Relaxed);
    black_box(event.0);
}

#[handler]
fn tick_b(event: &Tick, config: &Config, calls: &Calls) -> Result<(), std::io::Error> {
    calls.tick_b.fetch_add(1, Ordering::Relaxed);
    if calls.fail_tick_b.swap(false, Ordering::SeqCst) {
        return Err(std::io::Error::other("printer jammed"));
    }
    black_box(event.0 * config.factor);
    Ok(())
}

/// A command whose handler's future is too large to be stored in place.
#[derive(Debug, Command)]
#[command(output = u64)]
struct Sum(u8);

#[handler]
async fn sum(cmd: Sum) -> Result<u64, Infallible> {
    // Held across an `.await`: part of the future, larger than the room
    // kept for a handler's future in place.
    let buffer = [cmd.0; 4096];
    std::future::ready(()).await;
    Ok(buffer.iter().map(|byte| u64::from(*byte)).sum())
}

/// A command whose handler's future is too large to hold on the stack.
#[derive(Debug, Command)]
#[command(output = u64)]
struct SumHuge(u8);

#[handler]
async fn sum_huge(cmd: SumHuge) -> Result<u64, Infallible> {
    let buffer = [cmd.0; 64 * 1024];
    std::future::ready(()).await;
    Ok(buffer.iter().map(|byte| u64::from(*byte)).sum())
}

/// An event whose handlers are both `async fn`s.
#[derive(Debug, Clone, Event)]
struct Tock(u64);

#[handler]
async fn tock_a(event: &Tock, calls: &Calls) {
    calls.tock_a.fetch_add(1, Ordering::Relaxed);
    black_box(event.0);
}

#[handler]
async fn tock_b(event: Tock, config: &Config, calls: &Calls) -> Result<(), std::io::Error> {
    calls.tock_b.fetch_add(1, Ordering::Relaxed);
    black_box(event.0 * config.factor);
    Ok(())
}

#[derive(Debug, Command)]
struct Checkout(u64);

#[handler(releases(Tick))]
fn checkout(cmd: Checkout, events: EventReleaser) -> Result<(), Infallible> {
    events.release(Tick(cmd.0));
    Ok(())
}

/// An event larger than the room a pending event keeps in place.
#[derive(Debug, Clone, Event)]
struct Manifest([u64; 8]);

#[derive(Debug, Command)]
struct Ship(u64);

#[handler(releases(Manifest))]
fn ship(cmd: Ship, events: EventReleaser, calls: &Calls) -> Result<(), Infallible> {
    calls.scale.fetch_add(1, Ordering::Relaxed);
    events.release(Manifest([cmd.0; 8]));
    Ok(())
}

#[handler]
fn file_manifest(event: &Manifest, calls: &Calls) {
    calls.tock_a.fetch_add(1, Ordering::Relaxed);
    black_box(event.0);
}

/// A command whose handler keeps a clone of its releaser past the call, as
/// a unit of work stored somewhere would.
#[derive(Debug, Command)]
struct Keep(u64);

#[handler(releases(Tick))]
fn keep(cmd: Keep, events: EventReleaser, calls: &Calls) -> Result<(), Infallible> {
    events.release(Tick(cmd.0));
    calls.kept.lock().expect("not poisoned").push(events);
    Ok(())
}

fn bus() -> (Bus, Arc<Calls>) {
    let (builder, calls) = builder();
    (builder.build().expect("valid wiring"), calls)
}

fn builder() -> (arch_events::BusBuilder, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let builder = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<scale>()
                .handler::<scale_async>()
                .handler::<tick_a>()
                .handler::<tick_b>()
                .handler::<sum>()
                .handler::<sum_huge>()
                .handler::<tock_a>()
                .handler::<tock_b>()
                .handler::<checkout>()
                .handler::<ship>()
                .handler::<file_manifest>()
                .handler::<keep>(),
        )
        .dependencies(
            Dependencies::new()
                .shared(Config { factor: 3 })
                .shared_arc(calls.clone()),
        );
    (builder, calls)
}

const CALLS: u64 = 1_000;

#[test]
fn allocations_are_counted_at_all() {
    // Guards the zero-allocation assertions against passing vacuously.
    let info = measure(|| {
        black_box(Box::new(7_u64));
    });
    assert_eq!(info.count_total, 1);
}

#[test]
fn a_sync_command_dispatch_without_events_allocates_nothing() {
    let (bus, calls) = bus();
    bus.dispatch_blocking(Scale(1)).expect("warm-up");
    let mut wrong = 0;
    let info = measure(|| {
        for n in 0..CALLS {
            let scaled = bus
                .dispatch_blocking(black_box(Scale(n)))
                .expect("dispatched");
            wrong += u64::from(scaled != n * 3);
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
    assert_eq!(wrong, 0, "every answer is the handler's");
    assert_eq!(count(&calls.scale), CALLS + 1);
}

/// The future's output on its first poll: an awaited dispatch to plain `fn`
/// handlers never waits. Polled with a no-op waker, so the executor adds no
/// allocation of its own.
fn on_first_poll<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("a dispatch to plain `fn` handlers waited"),
    }
}

#[test]
fn awaiting_a_sync_command_dispatch_allocates_nothing() {
    let (bus, calls) = bus();
    on_first_poll(bus.dispatch(Scale(1))).expect("warm-up");
    let mut wrong = 0;
    let info = measure(|| {
        for n in 0..CALLS {
            let scaled = on_first_poll(bus.dispatch(black_box(Scale(n)))).expect("dispatched");
            wrong += u64::from(scaled != n * 3);
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
    assert_eq!(wrong, 0, "every answer is the handler's");
    assert_eq!(count(&calls.scale), CALLS + 1);
}

#[test]
fn an_async_command_handler_call_allocates_nothing() {
    let (bus, calls) = bus();
    bus.dispatch_blocking(ScaleAsync(1)).expect("warm-up");
    let mut wrong = 0;
    let info = measure(|| {
        for n in 0..CALLS {
            let scaled = bus
                .dispatch_blocking(black_box(ScaleAsync(n)))
                .expect("dispatched");
            wrong += u64::from(scaled != n * 3);
        }
    });
    assert_eq!(
        info.count_total, 0,
        "the handler's future is stored in place: {info:?}"
    );
    assert_eq!(wrong, 0, "every answer is the handler's");
    assert_eq!(count(&calls.scale), CALLS + 1);
}

#[test]
fn an_async_handler_whose_future_is_too_large_to_keep_in_place_is_boxed_once_per_call() {
    let (bus, _) = bus();
    // Awaited: the handler's future is stored by the dispatch's future,
    // in place when it fits, boxed otherwise.
    assert_eq!(
        futures::executor::block_on(bus.dispatch(Sum(2))).expect("warm-up"),
        8192
    );
    let mut wrong = 0;
    let info = measure(|| {
        for n in 0..CALLS {
            let byte = (n % 200) as u8;
            let total = on_first_poll(bus.dispatch(black_box(Sum(byte)))).expect("dispatched");
            wrong += u64::from(total != u64::from(byte) * 4096);
        }
    });
    assert_eq!(info.count_total, CALLS, "one box per call: {info:?}");
    assert_eq!(wrong, 0);
}

#[test]
fn a_blocking_dispatch_drives_even_a_large_handler_future_where_it_was_made() {
    let (bus, _) = bus();
    assert_eq!(bus.dispatch_blocking(Sum(2)).expect("warm-up"), 8192);
    let mut wrong = 0;
    let info = measure(|| {
        for n in 0..CALLS {
            let byte = (n % 200) as u8;
            let total = bus
                .dispatch_blocking(black_box(Sum(byte)))
                .expect("dispatched");
            wrong += u64::from(total != u64::from(byte) * 4096);
        }
    });
    assert_eq!(
        info.count_total, 0,
        "the future is polled on this thread's stack, never stored: {info:?}"
    );
    assert_eq!(wrong, 0);
}

#[test]
fn a_blocking_dispatch_boxes_a_handler_future_too_large_for_the_stack_once() {
    let (bus, _) = bus();
    assert_eq!(
        bus.dispatch_blocking(SumHuge(1)).expect("warm-up"),
        64 * 1024
    );
    let mut wrong = 0;
    let info = measure(|| {
        for n in 0..CALLS {
            let byte = (n % 200) as u8;
            let total = bus
                .dispatch_blocking(black_box(SumHuge(byte)))
                .expect("dispatched");
            wrong += u64::from(total != u64::from(byte) * 64 * 1024);
        }
    });
    assert_eq!(info.count_total, CALLS, "one box per call: {info:?}");
    assert_eq!(wrong, 0);
}

#[test]
fn publishing_to_async_fn_handlers_allocates_nothing() {
    let (bus, calls) = bus();
    bus.publish_blocking(Tock(1)).expect("warm-up");
    let info = measure(|| {
        for n in 0..CALLS {
            bus.publish_blocking(black_box(Tock(n))).expect("published");
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
    assert_eq!(
        (count(&calls.tock_a), count(&calls.tock_b)),
        (CALLS + 1, CALLS + 1),
        "both handlers ran every time"
    );
}

#[test]
fn publishing_to_plain_fn_handlers_allocates_nothing() {
    let (bus, calls) = bus();
    bus.publish_blocking(Tick(1)).expect("warm-up");
    let info = measure(|| {
        for n in 0..CALLS {
            bus.publish_blocking(black_box(Tick(n))).expect("published");
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
    assert_eq!(
        (count(&calls.tick_a), count(&calls.tick_b)),
        (CALLS + 1, CALLS + 1),
        "both handlers ran every time"
    );
}

#[test]
fn a_retry_policy_costs_nothing_until_a_handler_fails() {
    let (builder, calls) = builder();
    let bus = builder
        .retry(arch_events::RetryPolicy::exponential(3).first_delay(std::time::Duration::ZERO))
        .build()
        .expect("valid wiring");
    bus.publish_blocking(Tick(1)).expect("warm-up");
    let info = measure(|| {
        for n in 0..CALLS {
            bus.publish_blocking(black_box(Tick(n))).expect("published");
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
    assert_eq!(count(&calls.tick_b), CALLS + 1);
    // The policy is in force on this bus: a failure is retried.
    calls.fail_tick_b.store(true, Ordering::SeqCst);
    bus.publish_blocking(Tick(0)).expect("published");
    assert_eq!(
        count(&calls.tick_b),
        CALLS + 3,
        "the failed call and its retry"
    );
    assert!(
        bus.dead_letters().expect("in memory").is_empty(),
        "the retry succeeded"
    );
}

#[test]
fn releasing_a_small_event_allocates_nothing() {
    let (bus, calls) = bus();
    bus.dispatch_blocking(Checkout(1)).expect("warm-up");
    let info = measure(|| {
        for n in 0..CALLS {
            bus.dispatch_blocking(black_box(Checkout(n)))
                .expect("dispatched");
        }
    });
    // Nothing: the call's releaser and its buffer (which becomes the
    // dispatch's queue) are the ones the warm-up's dispatch left on this
    // thread, and the event is small enough to be kept in place.
    assert_eq!(info.count_total, 0, "{info:?}");
    assert_eq!(info.count_current, 0, "nothing leaks: {info:?}");
    assert_eq!(
        (count(&calls.tick_a), count(&calls.tick_b)),
        (CALLS + 1, CALLS + 1),
        "every released event was handled"
    );
}

#[test]
fn releasing_a_large_event_allocates_its_box_only() {
    let (bus, calls) = bus();
    bus.dispatch_blocking(Ship(1)).expect("warm-up");
    let info = measure(|| {
        for n in 0..CALLS {
            bus.dispatch_blocking(black_box(Ship(n)))
                .expect("dispatched");
        }
    });
    assert_eq!(info.count_total, CALLS, "{info:?}");
    assert_eq!(info.count_current, 0, "nothing leaks: {info:?}");
    assert_eq!(
        (count(&calls.scale), count(&calls.tock_a)),
        (CALLS + 1, CALLS + 1),
        "every command ran and every manifest was filed"
    );
}

#[test]
fn a_releaser_kept_past_its_call_is_never_handed_to_another_call() {
    let (bus, calls) = bus();
    for n in 0..3 {
        bus.dispatch_blocking(Keep(n)).expect("dispatched");
        // The next call releases through a releaser of its own: what it
        // releases is handled once, with nothing of the kept one's.
        bus.dispatch_blocking(Checkout(n)).expect("dispatched");
    }
    assert_eq!(
        (count(&calls.tick_a), count(&calls.tick_b)),
        (6, 6),
        "three kept and three fresh releases, each handled once"
    );
    let kept = std::mem::take(&mut *calls.kept.lock().expect("not poisoned"));
    assert_eq!(kept.len(), 3);
    for releaser in &kept {
        // Closed when its call ended: a late release is refused, and never
        // reaches a later call's queue.
        releaser.release(Tick(99));
        assert!(releaser.drain().is_empty());
    }
    bus.dispatch_blocking(Checkout(7)).expect("dispatched");
    assert_eq!(
        (count(&calls.tick_a), count(&calls.tick_b)),
        (7, 7),
        "the late releases were not handled"
    );
}
