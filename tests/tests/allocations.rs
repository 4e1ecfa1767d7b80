//! Heap allocations on the hot path, counted by a counting global allocator
//! (`allocation-counter`, per thread). Allocation counts are deterministic,
//! so these are tests, unlike timings.

use std::convert::Infallible;
use std::hint::black_box;

use allocation_counter::measure;
use bus_core::{handler, Bus, Command, Dependencies, Event, EventReleaser, Registrations};

#[derive(Debug)]
struct Config {
    factor: u64,
}

#[derive(Debug, Command)]
#[command(output = u64)]
struct Scale(u64);

#[handler]
fn scale(cmd: Scale, config: &Config) -> Result<u64, Infallible> {
    Ok(cmd.0.wrapping_mul(config.factor))
}

#[derive(Debug, Command)]
#[command(output = u64)]
struct ScaleAsync(u64);

#[handler]
async fn scale_async(cmd: ScaleAsync, config: &Config) -> Result<u64, Infallible> {
    Ok(cmd.0.wrapping_mul(config.factor))
}

#[derive(Debug, Clone, Event)]
struct Tick(u64);

#[handler]
fn tick_a(event: &Tick) {
    black_box(event.0);
}

#[handler]
fn tick_b(event: &Tick, config: &Config) {
    black_box(event.0 * config.factor);
}

#[derive(Debug, Command)]
struct Checkout(u64);

#[handler]
fn checkout(cmd: Checkout, events: EventReleaser) -> Result<(), Infallible> {
    events.release(Tick(cmd.0));
    Ok(())
}

fn bus() -> Bus {
    builder().build().expect("valid wiring")
}

fn builder() -> bus_core::BusBuilder {
    Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<scale>()
                .handler::<scale_async>()
                .handler::<tick_a>()
                .handler::<tick_b>()
                .handler::<checkout>(),
        )
        .dependencies(Dependencies::new().shared(Config { factor: 3 }))
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
    let bus = bus();
    bus.dispatch_blocking(Scale(1)).expect("warm-up");
    let info = measure(|| {
        for n in 0..CALLS {
            black_box(
                bus.dispatch_blocking(black_box(Scale(n)))
                    .expect("dispatched"),
            );
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
}

#[test]
fn awaiting_a_sync_command_dispatch_allocates_nothing() {
    let bus = bus();
    bus_core::block_on(bus.dispatch(Scale(1))).expect("warm-up");
    let info = measure(|| {
        for n in 0..CALLS {
            black_box(bus_core::block_on(bus.dispatch(black_box(Scale(n)))).expect("dispatched"));
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
}

#[test]
fn an_async_handler_call_allocates_once() {
    let bus = bus();
    bus.dispatch_blocking(ScaleAsync(1)).expect("warm-up");
    let info = measure(|| {
        for n in 0..CALLS {
            black_box(
                bus.dispatch_blocking(black_box(ScaleAsync(n)))
                    .expect("dispatched"),
            );
        }
    });
    assert_eq!(
        info.count_total, CALLS,
        "one boxed future per call: {info:?}"
    );
}

#[test]
fn publishing_to_plain_fn_handlers_allocates_nothing() {
    let bus = bus();
    bus.publish_blocking(Tick(1)).expect("warm-up");
    let info = measure(|| {
        for n in 0..CALLS {
            bus.publish_blocking(black_box(Tick(n))).expect("published");
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
}

#[test]
fn a_retry_policy_costs_nothing_until_a_handler_fails() {
    let bus = builder()
        .retry(bus_core::RetryPolicy::exponential(3))
        .build()
        .expect("valid wiring");
    bus.publish_blocking(Tick(1)).expect("warm-up");
    let info = measure(|| {
        for n in 0..CALLS {
            bus.publish_blocking(black_box(Tick(n))).expect("published");
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
}

#[test]
fn releasing_an_event_costs_a_bounded_number_of_allocations() {
    let bus = bus();
    bus.dispatch_blocking(Checkout(1)).expect("warm-up");
    let info = measure(|| {
        for n in 0..CALLS {
            bus.dispatch_blocking(black_box(Checkout(n)))
                .expect("dispatched");
        }
    });
    // The call's releaser, its buffer (which becomes the dispatch's queue),
    // and the boxed event.
    assert_eq!(info.count_total, 3 * CALLS, "{info:?}");
    assert_eq!(info.count_current, 0, "nothing leaks: {info:?}");
}
