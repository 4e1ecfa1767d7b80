//! The cost of the bus next to the floor (a direct call), the fastest dynamic
//! dispatch written by hand, and a published mediator crate.
//!
//! Run with `cargo bench -p arch-events-benches --bench dispatch`; BENCHMARKS.md has the
//! figures and what they mean.

// A benchmark whose setup fails should stop at once.
#![allow(clippy::expect_used)]

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;

use arch_events::{handler, Bus, Command, Dependencies, Event, EventReleaser, Registrations};
use criterion::{criterion_group, Criterion};

// ---- the command every variant handles ------------------------------------

/// The one shared dependency: read-only configuration.
#[derive(Debug)]
struct Config {
    factor: u64,
}

#[derive(Debug, Command)]
#[command(output = u64)]
struct Scale {
    value: u64,
}

#[handler]
fn scale(cmd: Scale, config: &Config) -> Result<u64, Infallible> {
    Ok(cmd.value.wrapping_mul(config.factor))
}

#[derive(Debug, Command)]
#[command(output = u64)]
struct ScaleAsync {
    value: u64,
}

#[handler]
async fn scale_async(cmd: ScaleAsync, config: &Config) -> Result<u64, Infallible> {
    Ok(cmd.value.wrapping_mul(config.factor))
}

// ---- hand-wired: a TypeId map of erased fn pointers, &mut dyn Any slots ----

type ErasedCommand = fn(&mut dyn Any, &mut dyn Any, &Config);
type ErasedEventHandlers = HashMap<TypeId, Vec<fn(&dyn Any)>>;

fn erased_scale(message: &mut dyn Any, output: &mut dyn Any, config: &Config) {
    let (Some(message), Some(output)) = (
        message.downcast_mut::<Option<Scale>>(),
        output.downcast_mut::<Option<Result<u64, Infallible>>>(),
    ) else {
        return;
    };
    if let Some(cmd) = message.take() {
        *output = Some(scale(cmd, config));
    }
}

struct HandWired {
    commands: HashMap<TypeId, ErasedCommand>,
    events: ErasedEventHandlers,
    config: Config,
}

impl HandWired {
    fn dispatch(&self, cmd: Scale) -> Option<u64> {
        let handler = self.commands.get(&TypeId::of::<Scale>())?;
        let mut message = Some(cmd);
        let mut output: Option<Result<u64, Infallible>> = None;
        handler(&mut message, &mut output, &self.config);
        output.and_then(Result::ok)
    }

    fn publish(&self, event: &Tick) {
        if let Some(handlers) = self.events.get(&TypeId::of::<Tick>()) {
            for handler in handlers {
                handler(event);
            }
        }
    }
}

// ---- the mediator crate ----------------------------------------------------

struct MediatorScale {
    value: u64,
}
impl mediator::Request<u64> for MediatorScale {}

// ---- the mediator-rs crate (async, boxed, a pipeline of behaviors) ----------

struct MediatorRsScale {
    value: u64,
}

impl mediator_rs::Request for MediatorRsScale {
    type Output = u64;
}

struct MediatorRsHandler;

#[async_trait::async_trait]
impl mediator_rs::Handler<MediatorRsScale, Infallible, Config> for MediatorRsHandler {
    async fn handle(&self, cmd: MediatorRsScale, config: &Config) -> Result<u64, Infallible> {
        Ok(cmd.value.wrapping_mul(config.factor))
    }
}

/// A future's output on its first poll (every async variant here is ready
/// at once: nothing awaits I/O), with no executor's own cost.
fn on_first_poll<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

// ---- one event, ten handlers ------------------------------------------------

#[derive(Debug, Clone, Event)]
struct Tick(u64);

macro_rules! tick_handlers {
    ($($name:ident = $k:expr),*) => {
        $(
            #[handler]
            fn $name(event: &Tick) {
                black_box(event.0.wrapping_mul($k));
            }
        )*
        const TICK_HANDLERS: [fn(&dyn Any); 10] = [$(
            |event: &dyn Any| {
                if let Some(event) = event.downcast_ref::<Tick>() {
                    $name(event);
                }
            }
        ),*];
        fn tick_registrations() -> Registrations {
            Registrations::new()$(.handler::<$name>())*
        }
        /// The same ten handlers as subscribers of the pubsub-bus crate.
        fn tick_pubsub() -> pubsub_bus::EventBus<Tick, ()> {
            let bus = pubsub_bus::EventBus::new();
            $( bus.add_subscriber(TickSubscriber($name)); )*
            bus
        }
    };
}

tick_handlers!(
    tick_0 = 1,
    tick_1 = 2,
    tick_2 = 3,
    tick_3 = 4,
    tick_4 = 5,
    tick_5 = 6,
    tick_6 = 7,
    tick_7 = 8,
    tick_8 = 9,
    tick_9 = 10
);

/// A `Tick` handler as a pubsub-bus subscriber.
struct TickSubscriber(fn(&Tick));

impl pubsub_bus::Subscriber<Tick, ()> for TickSubscriber {
    fn on_event(&mut self, event: &pubsub_bus::BusEvent<Tick, ()>) {
        (self.0)(event.get_content());
    }
}

// ---- a command releasing three events, each with two handlers -------------

#[derive(Debug, Command)]
struct Checkout(u64);

#[derive(Debug, Clone, Event)]
struct Reserved(u64);

#[derive(Debug, Clone, Event)]
struct Charged(u64);

#[derive(Debug, Clone, Event)]
struct Shipped(u64);

#[handler(releases(Reserved, Charged, Shipped))]
fn checkout(cmd: Checkout, events: EventReleaser) -> Result<(), Infallible> {
    events.release(Reserved(cmd.0));
    events.release(Charged(cmd.0));
    events.release(Shipped(cmd.0));
    Ok(())
}

macro_rules! chain_handlers {
    ($($name:ident: $event:ident),*) => {
        $(
            #[handler]
            fn $name(event: &$event) {
                black_box(event.0);
            }
        )*
        fn chain_registrations() -> Registrations {
            Registrations::new().handler::<checkout>()$(.handler::<$name>())*
        }
    };
}

chain_handlers!(
    reserved_a: Reserved, reserved_b: Reserved,
    charged_a: Charged, charged_b: Charged,
    shipped_a: Shipped, shipped_b: Shipped
);

// ---- 1,000 commands with a handler each, for the build benchmarks ---------

/// The dependency of every startup handler.
#[derive(Debug)]
struct StartupDep;

macro_rules! startup_leaves {
    ($($leaf:ident)*) => {$(
        pub(crate) mod $leaf {
            /// One of the 1,000 startup commands.
            #[derive(Debug, arch_events::Command)]
            pub(crate) struct Cmd;

            /// Its handler.
            #[arch_events::handler]
            pub(crate) fn handle(_: Cmd, _dep: &crate::StartupDep) -> Result<(), std::convert::Infallible> {
                Ok(())
            }
        }
    )*};
}

macro_rules! startup_tens {
    ($($ten:ident)*) => {$(
        pub(crate) mod $ten {
            startup_leaves!(u0 u1 u2 u3 u4 u5 u6 u7 u8 u9);
        }
    )*};
}

mod startup {
    macro_rules! startup_hundreds {
        ($($hundred:ident)*) => {$(
            pub(crate) mod $hundred {
                startup_tens!(t0 t1 t2 t3 t4 t5 t6 t7 t8 t9);
            }
        )*};
    }
    startup_hundreds!(h0 h1 h2 h3 h4 h5 h6 h7 h8 h9);
}

fn startup_registrations(count: usize) -> Registrations {
    let mut handlers: Vec<_> = Registrations::linked()
        .handlers()
        .filter(|h| h.name().contains("::startup::"))
        .collect();
    handlers.sort_by_key(|h| h.name());
    assert_eq!(handlers.len(), 1000, "the startup handlers are linked");
    handlers
        .into_iter()
        .take(count)
        .fold(Registrations::new(), Registrations::handler_registration)
}

// ---- the benchmarks ---------------------------------------------------------

/// The bus of the command benchmarks: `scale` and `scale_async`, over
/// the same configuration as the hand-written map.
fn command_bus() -> Result<Bus, arch_events::BuildError> {
    Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<scale>()
                .handler::<scale_async>(),
        )
        .dependencies(Dependencies::new().shared(Config { factor: 3 }))
        .build()
}

fn command_dispatch(c: &mut Criterion) {
    let config = Config { factor: 3 };
    let mut group = c.benchmark_group("command_dispatch");

    group.bench_function("direct_call", |b| {
        b.iter(|| scale(black_box(Scale { value: 7 }), black_box(&config)))
    });

    let mut commands: HashMap<TypeId, ErasedCommand> = HashMap::new();
    commands.insert(TypeId::of::<Scale>(), erased_scale);
    let hand_wired = HandWired {
        commands,
        events: HashMap::new(),
        config: Config { factor: 3 },
    };
    group.bench_function("hand_wired_map", |b| {
        b.iter(|| hand_wired.dispatch(black_box(Scale { value: 7 })))
    });

    let bus = command_bus().expect("valid wiring");
    // Every variant hands back an `Option<u64>`, as `hand_wired_map` does.
    group.bench_function("bus_sync", |b| {
        b.iter(|| bus.dispatch_blocking(black_box(Scale { value: 7 })).ok())
    });
    group.bench_function("bus_async", |b| {
        b.iter(|| {
            bus.dispatch_blocking(black_box(ScaleAsync { value: 7 }))
                .ok()
        })
    });

    let factor = 3;
    let mut mediator = mediator::DefaultMediator::builder()
        .add_handler_fn(move |request: MediatorScale| request.value.wrapping_mul(factor))
        .build();
    group.bench_function("mediator_crate", |b| {
        b.iter(|| {
            use mediator::Mediator;
            mediator.send(black_box(MediatorScale { value: 7 })).ok()
        })
    });

    let mut mediator_rs = mediator_rs::Mediator::<Config, Infallible>::new();
    mediator_rs.register::<MediatorRsScale, _>(MediatorRsHandler);
    let config = Config { factor: 3 };
    group.bench_function("mediator_rs_crate", |b| {
        b.iter(|| {
            on_first_poll(mediator_rs.dispatch(black_box(MediatorRsScale { value: 7 }), &config))
                .and_then(Result::ok)
        })
    });
    group.finish();
}

fn event_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("event_fanout");
    let mut events: ErasedEventHandlers = HashMap::new();
    events.insert(TypeId::of::<Tick>(), TICK_HANDLERS.to_vec());
    let hand_wired = HandWired {
        commands: HashMap::new(),
        events,
        config: Config { factor: 1 },
    };
    group.bench_function("hand_wired_10", |b| {
        b.iter(|| hand_wired.publish(&black_box(Tick(7))))
    });
    let bus = Bus::builder()
        .registrations(tick_registrations())
        .build()
        .expect("valid wiring");
    group.bench_function("bus_10", |b| {
        b.iter(|| bus.publish_blocking(black_box(Tick(7))).is_ok())
    });
    // The same ten handlers under a retry policy: each call goes through the
    // retry layer (never needed here), the price of retries when nothing fails.
    let retrying = Bus::builder()
        .registrations(tick_registrations())
        .retry(arch_events::RetryPolicy::exponential(3))
        .build()
        .expect("valid wiring");
    group.bench_function("bus_10_retry_layer", |b| {
        b.iter(|| retrying.publish_blocking(black_box(Tick(7))).is_ok())
    });
    let pubsub = tick_pubsub();
    group.bench_function("pubsub_bus_crate_10", |b| {
        b.iter(|| pubsub.publish(black_box(Tick(7)), None, 0))
    });
    group.finish();
}

// ---- the chain wired by hand: a queue of boxed events, a TypeId map -------

type ChainQueue = std::collections::VecDeque<Box<dyn Any + Send>>;

struct HandWiredChain {
    commands: HashMap<TypeId, fn(&mut dyn Any, &mut ChainQueue)>,
    events: ErasedEventHandlers,
}

impl HandWiredChain {
    fn new() -> Self {
        fn checkout_erased(message: &mut dyn Any, queue: &mut ChainQueue) {
            if let Some(Checkout(n)) = message
                .downcast_mut::<Option<Checkout>>()
                .and_then(Option::take)
            {
                queue.push_back(Box::new(Reserved(n)));
                queue.push_back(Box::new(Charged(n)));
                queue.push_back(Box::new(Shipped(n)));
            }
        }
        macro_rules! erased {
            ($event:ident, $handler:ident) => {
                |event: &dyn Any| {
                    if let Some(event) = event.downcast_ref::<$event>() {
                        $handler(event);
                    }
                }
            };
        }
        let mut commands: HashMap<TypeId, fn(&mut dyn Any, &mut ChainQueue)> = HashMap::new();
        commands.insert(TypeId::of::<Checkout>(), checkout_erased);
        let mut events: ErasedEventHandlers = HashMap::new();
        events.insert(
            TypeId::of::<Reserved>(),
            vec![erased!(Reserved, reserved_a), erased!(Reserved, reserved_b)],
        );
        events.insert(
            TypeId::of::<Charged>(),
            vec![erased!(Charged, charged_a), erased!(Charged, charged_b)],
        );
        events.insert(
            TypeId::of::<Shipped>(),
            vec![erased!(Shipped, shipped_a), erased!(Shipped, shipped_b)],
        );
        HandWiredChain { commands, events }
    }

    /// The command's handler, then every event it released, in order, each
    /// through its handlers: the bus's order, by hand.
    fn dispatch(&self, cmd: Checkout) -> Option<()> {
        let handler = self.commands.get(&TypeId::of::<Checkout>())?;
        let mut queue = ChainQueue::new();
        handler(&mut Some(cmd), &mut queue);
        while let Some(event) = queue.pop_front() {
            let event: &dyn Any = &*event;
            if let Some(handlers) = self.events.get(&event.type_id()) {
                for handler in handlers {
                    handler(event);
                }
            }
        }
        Some(())
    }
}

fn chain(c: &mut Criterion) {
    let mut group = c.benchmark_group("chain");
    let hand_wired = HandWiredChain::new();
    group.bench_function("hand_wired_3_events", |b| {
        b.iter(|| hand_wired.dispatch(black_box(Checkout(7))))
    });
    let bus = Bus::builder()
        .registrations(chain_registrations())
        .build()
        .expect("valid wiring");
    group.bench_function("bus_command_3_events", |b| {
        b.iter(|| bus.dispatch_blocking(black_box(Checkout(7))))
    });
    group.finish();
}

fn startup(c: &mut Criterion) {
    let mut group = c.benchmark_group("startup");
    for (id, count) in [("build_100", 100), ("build_1000", 1000)] {
        group.bench_function(id, |b| {
            b.iter_batched(
                || startup_registrations(count),
                |registrations| {
                    Bus::builder()
                        .registrations(registrations)
                        .dependencies(Dependencies::new().shared(StartupDep))
                        .build()
                        .expect("valid wiring")
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, command_dispatch, event_fanout, chain, startup);

// ---- counted runs, for callgrind ---------------------------------------------

/// One path run `times` times, for an instruction count that does not move
/// between runs (timings on a shared machine do):
///
/// ```sh
/// ARCH_EVENTS_COUNT=bus_command_3_events:10000 valgrind --tool=callgrind target/release/deps/dispatch-<hash>
/// ARCH_EVENTS_COUNT=bus_command_3_events:20000 valgrind --tool=callgrind target/release/deps/dispatch-<hash>
/// ```
///
/// The difference of the two totals, divided by 10,000, is one dispatch's
/// instructions, start-up and wiring taken out.
fn counted(spec: &str) -> Result<(), String> {
    let (path, times) = spec
        .split_once(':')
        .ok_or_else(|| format!("ARCH_EVENTS_COUNT is <path>:<times>, not {spec:?}"))?;
    let times: u64 = times
        .parse()
        .map_err(|_| format!("not a number of times: {times:?}"))?;
    let config = Config { factor: 3 };
    let commands = command_bus().map_err(|e| e.to_string())?;
    let ticks = Bus::builder()
        .registrations(tick_registrations())
        .build()
        .map_err(|e| e.to_string())?;
    let chained = Bus::builder()
        .registrations(chain_registrations())
        .build()
        .map_err(|e| e.to_string())?;
    let mut command_map: HashMap<TypeId, ErasedCommand> = HashMap::new();
    command_map.insert(TypeId::of::<Scale>(), erased_scale);
    let mut tick_map: ErasedEventHandlers = HashMap::new();
    tick_map.insert(TypeId::of::<Tick>(), TICK_HANDLERS.to_vec());
    let hand_wired = HandWired {
        commands: command_map,
        events: tick_map,
        config,
    };
    let hand_chain = HandWiredChain::new();
    let run: Box<dyn Fn()> = match path {
        "hand_wired_map" => Box::new(|| {
            black_box(hand_wired.dispatch(black_box(Scale { value: 7 })));
        }),
        "bus_sync" => Box::new(|| {
            black_box(commands.dispatch_blocking(black_box(Scale { value: 7 })).ok());
        }),
        "bus_async" => Box::new(|| {
            black_box(commands.dispatch_blocking(black_box(ScaleAsync { value: 7 })).ok());
        }),
        "hand_wired_10" => Box::new(|| hand_wired.publish(&black_box(Tick(7)))),
        "bus_10" => Box::new(|| {
            black_box(ticks.publish_blocking(black_box(Tick(7))).is_ok());
        }),
        "hand_wired_3_events" => Box::new(|| {
            black_box(hand_chain.dispatch(black_box(Checkout(7))));
        }),
        "bus_command_3_events" => Box::new(|| {
            black_box(chained.dispatch_blocking(black_box(Checkout(7))).ok());
        }),
        other => return Err(format!("no path {other:?}: hand_wired_map, bus_sync, bus_async, hand_wired_10, bus_10, hand_wired_3_events, bus_command_3_events")),
    };
    for _ in 0..times {
        run();
    }
    Ok(())
}

fn main() {
    if let Ok(spec) = std::env::var("ARCH_EVENTS_COUNT") {
        if let Err(problem) = counted(&spec) {
            eprintln!("{problem}");
            std::process::exit(2);
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
