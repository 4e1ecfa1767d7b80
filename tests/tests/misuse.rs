//! No silent misuse: each mistake below compiles, and is caught at build
//! time, fails at once, or fails a test's recorder; never a silent no-op.
//! (Compile-time ones are in `ui/`; what is logged is in `misuse_log.rs`.)

use std::convert::Infallible;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use arch_events::testing::{handler_name, Entity, FakeUnitOfWork, InMemoryStore, Misuse, Recorder};
use arch_events::{
    handler, Aggregate, Bus, BusBuilder, Command, Dependencies, DispatchError, Event,
    EventRecorder, EventReleaser, Lifetime, MessageKind, MisuseError, Problem, Query,
    Registrations, Scoped, Uncommitted, UnitOfWork,
};

fn line_of(needle: &str) -> u32 {
    let source = include_str!("misuse.rs");
    let index = source
        .lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in misuse.rs"));
    index as u32 + 1
}

fn at(needle: &str) -> String {
    format!("tests/tests/misuse.rs:{}", line_of(needle))
}

// ---------------------------------------------------------------------------
// A shelf, its event, and a fake unit of work over it.

#[derive(Debug, Clone, PartialEq, Event)]
#[event(name = "misuse.renamed")]
struct Renamed(String);

#[derive(Debug, Clone, PartialEq, Event)]
#[event(name = "misuse.audited")]
struct Audited;

#[derive(Clone, Default)]
struct Shelf {
    id: u32,
    name: String,
    version: u64,
    events: EventRecorder,
}

impl Aggregate for Shelf {
    fn events(&mut self) -> &mut EventRecorder {
        &mut self.events
    }
}

impl Entity for Shelf {
    type Key = u32;
    fn key(&self) -> u32 {
        self.id
    }
    fn version(&self) -> u64 {
        self.version
    }
}

impl Shelf {
    fn rename(&mut self, name: &str) {
        self.name = name.to_owned();
        self.version += 1;
        self.events.record(Renamed(name.to_owned()));
    }
}

type Uow = FakeUnitOfWork<Shelf>;

fn shelves() -> Arc<InMemoryStore<Shelf>> {
    let store = Arc::new(InMemoryStore::default());
    store.insert(Shelf {
        id: 1,
        ..Default::default()
    });
    store
}

fn with_shelves(store: &Arc<InMemoryStore<Shelf>>) -> Dependencies {
    let store = store.clone();
    Dependencies::new().scoped(move |scope| Uow::new(store.clone(), scope.releaser()))
}

#[derive(Debug, thiserror::Error)]
#[error("refused")]
struct Refused;

// ---------------------------------------------------------------------------
// A query handler that releases events (through its unit of work).

#[derive(Debug, Query)]
#[query(output = String)]
struct ShelfName;

/// Renames through a unit of work, in a query: the read side never changes
/// state, so the query fails and nothing runs.
#[handler]
async fn shelf_name(_: ShelfName, mut uow: Scoped<Uow>) -> Result<String, Infallible> {
    if let Some(shelf) = uow.repository().get(&1) {
        shelf.rename("sneaky");
    }
    let _ = uow.commit().await;
    Ok("shelf".into())
}

#[handler]
fn count_renames(_: &Renamed, count: &AtomicU32) {
    count.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn a_query_whose_handler_releases_events_fails_and_its_events_do_not_run() {
    let store = shelves();
    let count = Arc::new(AtomicU32::new(0));
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<shelf_name>()
                .handler::<count_renames>(),
        )
        .dependencies(with_shelves(&store).shared_arc(count.clone()))
        .build()
        .expect("valid wiring");
    let recorder = Recorder::attach(&bus);
    for result in [
        bus.query_blocking(ShelfName),
        futures::executor::block_on(bus.query(ShelfName)),
    ] {
        let Err(DispatchError::Misuse(misuse)) = result else {
            panic!("the query must fail, got {result:?}");
        };
        assert_eq!(
            *misuse,
            MisuseError::QueryReleased {
                query: "misuse::ShelfName",
                handler: handler_name::<shelf_name>(),
                events: vec!["misuse.renamed"],
            }
        );
        assert!(
            misuse
                .to_string()
                .contains("a query reads, it never changes state"),
            "{misuse}"
        );
    }
    assert_eq!(count.load(Ordering::SeqCst), 0, "no released event ran");
    // Like a store that writes events in its commit, the fake wrote nothing.
    assert_eq!(store.get(&1).expect("shelf").name, "");
    assert_eq!(store.commits(), 0);
    // The refusal is the query's failure, not a second misuse.
    assert!(recorder.events().is_empty());
    assert_eq!(recorder.failures().len(), 2, "{:?}", recorder.runs());
    assert_eq!(recorder.failures()[0].handler, handler_name::<shelf_name>());
    assert!(recorder.misuses().is_empty(), "{:?}", recorder.misuses());
}

#[derive(Debug, Query)]
#[query(output = u32, error = Refused)]
struct Stash;

/// A query that releases events and fails anyway: its caller gets the
/// handler's error; the events were refused all the same.
#[handler]
fn stash(_: Stash, mut uow: Scoped<Uow>) -> Result<u32, Refused> {
    if let Some(shelf) = uow.repository().get(&1) {
        shelf.rename("stashed");
    }
    let _ = futures::executor::block_on(uow.commit());
    Err(Refused)
}

#[test]
fn a_query_that_releases_then_fails_returns_its_error_and_releases_nothing() {
    let store = shelves();
    let count = Arc::new(AtomicU32::new(0));
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<stash>()
                .handler::<count_renames>(),
        )
        .dependencies(with_shelves(&store).shared_arc(count.clone()))
        .build()
        .expect("valid wiring");
    assert!(matches!(
        bus.query_blocking(Stash),
        Err(DispatchError::Handler(Refused))
    ));
    assert_eq!(count.load(Ordering::SeqCst), 0);
    assert_eq!(store.commits(), 0);
}

// ---------------------------------------------------------------------------
// The same dependency type registered twice.

struct Clock(u32);

#[derive(Debug, Command)]
#[command(output = u32)]
struct Tick;

#[handler]
fn tick(_: Tick, clock: &Clock) -> Result<u32, Infallible> {
    Ok(clock.0)
}

#[test]
fn a_dependency_registered_twice_is_a_build_problem_naming_both_lines() {
    let error = Bus::builder()
        .registrations(Registrations::new().handler::<tick>())
        .dependencies(
            Dependencies::new()
                .shared(Clock(1)) // first clock
                .shared(Clock(2)), // second clock
        )
        .build()
        .expect_err("which clock?");
    assert_eq!(
        error.problems(),
        [Problem::DuplicateDependency {
            type_name: "misuse::Clock",
            lifetime: Lifetime::Shared,
            registered_at: vec![
                arch_events::registry::Location {
                    file: "tests/tests/misuse.rs",
                    line: line_of("// first clock"),
                },
                arch_events::registry::Location {
                    file: "tests/tests/misuse.rs",
                    line: line_of("// second clock"),
                },
            ],
        }]
    );
    let text = error.to_string();
    assert!(
        text.contains(&format!(
            "the shared dependency `misuse::Clock` is registered 2 times: {}; {};",
            at("// first clock"),
            at("// second clock")
        )),
        "{text}"
    );
    assert!(text.contains("Dependencies::replace_shared"), "{text}");
}

#[test]
fn two_containers_given_to_one_builder_add_up_and_a_type_in_both_is_a_problem() {
    struct Other;
    let both = Bus::builder()
        .registrations(Registrations::new().handler::<tick>())
        .dependencies(Dependencies::new().shared(Clock(1)))
        .dependencies(Dependencies::new().shared(Other))
        .build()
        .expect("the first container is kept, not replaced");
    assert_eq!(both.dispatch_blocking(Tick).expect("ticks"), 1);

    let error = Bus::builder()
        .registrations(Registrations::new().handler::<tick>())
        .dependencies(Dependencies::new().shared(Clock(1)))
        .dependencies(Dependencies::new().shared(Clock(2)))
        .build()
        .expect_err("a clock in each");
    assert!(matches!(
        error.problems(),
        [Problem::DuplicateDependency { type_name: "misuse::Clock", registered_at, .. }]
            if registered_at.len() == 2
    ));
}

#[test]
fn a_trait_object_registered_twice_is_told_to_use_replace_shared_arc() {
    let error = Bus::builder()
        .registrations(Registrations::new().handler::<notify>())
        .dependencies(
            Dependencies::new()
                .shared_arc::<dyn Notifications>(Arc::new(Stdout))
                .shared_arc::<dyn Notifications>(Arc::new(Stdout)),
        )
        .build()
        .expect_err("registered twice");
    let text = error.to_string();
    assert!(
        text.contains(
            "say that a later one replaces it with \
             `Dependencies::replace_shared_arc::<dyn misuse::Notifications>(Arc::new(value))`"
        ),
        "{text}"
    );
}

#[test]
fn a_replacement_of_a_type_nothing_registered_is_a_build_problem() {
    struct FakeStdout;
    impl Notifications for FakeStdout {
        fn send(&self, _: &str) {}
    }
    // The fake is given as itself, not as the trait object the handler asks
    // for: it would be injected nowhere.
    let error = Bus::builder()
        .registrations(Registrations::new().handler::<notify>())
        .dependencies(
            Dependencies::new()
                .shared_arc::<dyn Notifications>(Arc::new(Stdout))
                .replace_shared(FakeStdout), // the wrong replacement
        )
        .build()
        .expect_err("the fake replaces nothing");
    let text = error.to_string();
    assert_eq!(
        error.problems(),
        [Problem::ReplacesNothing {
            type_name:
                "misuse::a_replacement_of_a_type_nothing_registered_is_a_build_problem::FakeStdout",
            lifetime: Lifetime::Shared,
            at: arch_events::registry::Location {
                file: "tests/tests/misuse.rs",
                line: line_of("// the wrong replacement"),
            },
        }],
        "{text}"
    );
    assert!(text.contains("but nothing registered it"), "{text}");
}

fn production() -> Dependencies {
    Dependencies::new().shared(Clock(1))
}

#[test]
fn a_replacement_merged_in_later_replaces_what_came_before() {
    for dependencies in [
        production().merge(Dependencies::new().replace_shared(Clock(7))),
        Dependencies::new()
            .shared(Clock(0))
            .replace_shared(Clock(5))
            .merge(Dependencies::new().replace_shared(Clock(7))),
    ] {
        let bus = Bus::builder()
            .registrations(Registrations::new().handler::<tick>())
            .dependencies(dependencies)
            .build()
            .expect("replaced on purpose");
        assert_eq!(bus.dispatch_blocking(Tick).expect("ticks"), 7);
    }
    let bus = Bus::builder()
        .registrations(Registrations::new().handler::<tick>())
        .dependencies(production())
        .dependencies(Dependencies::new().replace_shared(Clock(7)))
        .build()
        .expect("a second container replaces on purpose");
    assert_eq!(bus.dispatch_blocking(Tick).expect("ticks"), 7);
    // A replacement, then a plain registration again: two registrations.
    let twice = Bus::builder()
        .registrations(Registrations::new().handler::<tick>())
        .dependencies(production().replace_shared(Clock(7)).shared(Clock(8)))
        .build()
        .expect_err("7 or 8?");
    assert!(matches!(
        twice.problems(),
        [Problem::DuplicateDependency { registered_at, .. }] if registered_at.len() == 2
    ));
}

#[test]
fn replace_swaps_a_registration_on_purpose() {
    let bus = Bus::builder()
        .registrations(Registrations::new().handler::<tick>())
        .dependencies(
            Dependencies::new()
                .shared(Clock(1))
                .replace_shared(Clock(7))
                .scoped(|_| Clock(3))
                .replace_scoped(|_| Clock(4)),
        )
        .build()
        .expect("a replacement is not a duplicate");
    assert_eq!(bus.dispatch_blocking(Tick).expect("ticks"), 7);
}

// ---------------------------------------------------------------------------
// A handler that releases an event it does not declare.

#[derive(Debug, Command)]
struct Check;

#[handler(releases(Renamed))]
fn check(_: Check, events: EventReleaser) -> Result<(), Infallible> {
    events.release(Renamed("declared".into()));
    events.release(Audited);
    events.release(Audited);
    Ok(())
}

#[derive(Debug, Command)]
struct CheckAsync;

#[handler]
async fn check_async(_: CheckAsync, events: EventReleaser) -> Result<(), Infallible> {
    events.release(Audited);
    Ok(())
}

/// An event handler that releases an undeclared event too.
#[handler]
fn audit_renames(_: &Renamed, events: EventReleaser) -> Result<(), Infallible> {
    events.release(Audited);
    Ok(())
}

fn undeclared(handler: &'static str) -> Misuse {
    Misuse::UndeclaredRelease {
        handler,
        event: "misuse.audited",
    }
}

#[test]
fn an_undeclared_release_runs_and_is_a_misuse_the_recorder_reports_once_per_call() {
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<check>()
                .handler::<check_async>()
                .handler::<audit_renames>()
                .message::<Audited>(),
        )
        .build()
        .expect("valid wiring");
    let recorder = Recorder::attach(&bus);
    bus.dispatch_blocking(Check).expect("handled");
    // Nothing committed is lost: the undeclared events ran.
    assert_eq!(
        recorder.event_names(),
        [
            "misuse.renamed",
            "misuse.audited",
            "misuse.audited",
            "misuse.audited"
        ]
    );
    assert_eq!(
        recorder.take_misuses(),
        [
            undeclared(handler_name::<check>()),
            undeclared(handler_name::<audit_renames>()),
        ]
    );
    futures::executor::block_on(bus.dispatch(CheckAsync)).expect("handled");
    assert_eq!(
        recorder.take_misuses(),
        [undeclared(handler_name::<check_async>())]
    );
    assert!(recorder.misuses().is_empty());
}

#[test]
fn a_recorder_that_saw_a_misuse_fails_the_test_when_dropped() {
    let bus = Bus::builder()
        .registrations(Registrations::new().handler::<check>())
        .build()
        .expect("valid wiring");
    let recorder = Recorder::attach(&bus);
    let clone = recorder.clone();
    bus.dispatch_blocking(Check).expect("handled");
    drop(clone); // one clone left: nothing yet
    let dropped = catch_unwind(AssertUnwindSafe(move || drop(recorder)));
    let panic = dropped.expect_err("the last recorder fails the test");
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        text.contains(&format!(
            "handler `{}` released the event `misuse.audited`, which it does not declare: \
             add it to `#[handler(releases(...))]`",
            handler_name::<check>()
        )),
        "{text}"
    );
}

#[test]
fn a_second_recorder_of_one_bus_shares_the_first_ones_misuses_and_check() {
    let bus = Bus::builder()
        .registrations(Registrations::new().handler::<check>())
        .build()
        .expect("valid wiring");
    let recorder = Recorder::attach(&bus);
    bus.dispatch_blocking(Check).expect("handled");
    // A helper that attaches, reads, and drops its recorder.
    let seen = Recorder::attach(&bus).event_names().len();
    assert_eq!(seen, 3, "the same records");
    assert_eq!(
        recorder.take_misuses(),
        [undeclared(handler_name::<check>())],
        "still there"
    );
}

/// Passes a call through, or turns its success into a failure.
struct Veto(bool);

impl arch_events::layer::Layer for Veto {
    fn call<'a>(
        &'a self,
        call: arch_events::layer::HandlerCall<'a>,
        next: arch_events::layer::Next<'a>,
    ) -> arch_events::layer::BoxFuture<'a, arch_events::layer::Outcome> {
        Box::pin(async move {
            let outcome = next.run(call).await;
            if self.0 {
                return Err(arch_events::FailureCause::Error("vetoed".into()));
            }
            outcome
        })
    }
}

#[test]
fn a_layered_call_is_checked_once_its_pipeline_decided() {
    for (veto, misuses) in [(false, 1), (true, 0)] {
        let bus = Bus::builder()
            .registrations(
                Registrations::new()
                    .handler::<audit>()
                    .handler::<audit_renames>()
                    .handler::<log_audit>(),
            )
            .layer_for::<Renamed>(Veto(veto))
            .build()
            .expect("valid wiring");
        let recorder = Recorder::attach(&bus);
        bus.publish_blocking(Renamed("x".into()))
            .expect("published");
        assert_eq!(
            recorder.take_misuses().len(),
            misuses,
            "veto {veto}: a call that failed in the end released nothing"
        );
    }
}

#[handler]
fn log_audit(_: &Audited) {}

#[test]
fn declared_releases_are_no_misuse() {
    #[derive(Debug, Command)]
    struct Fine;

    #[handler(releases(Renamed))]
    fn fine(_: Fine, events: EventReleaser) -> Result<(), Infallible> {
        events.release(Renamed("ok".into()));
        Ok(())
    }

    let bus = Bus::builder()
        .registrations(Registrations::new().handler::<fine>())
        .build()
        .expect("valid wiring");
    let recorder = Recorder::attach(&bus);
    bus.dispatch_blocking(Fine).expect("handled");
    assert_eq!(recorder.event_names(), ["misuse.renamed"]);
    assert!(recorder.misuses().is_empty());
}

// ---------------------------------------------------------------------------
// A unit of work dropped without commit while it holds changes.

#[derive(Debug, Command)]
#[command(error = Refused)]
struct Rename {
    commit: bool,
    fail: bool,
}

#[handler(releases(Renamed))]
async fn rename(cmd: Rename, mut uow: Scoped<Uow>) -> Result<(), Refused> {
    if let Some(shelf) = uow.repository().get(&1) {
        shelf.rename("new");
    }
    if cmd.commit {
        uow.commit().await.map_err(|_| Refused)?;
    }
    if cmd.fail {
        return Err(Refused);
    }
    Ok(())
}

/// An event handler that forgets to commit.
#[handler]
fn rename_on_audit(_: &Audited, mut uow: Scoped<Uow>) -> Result<(), Infallible> {
    if let Some(shelf) = uow.repository().get(&1) {
        shelf.rename("audited");
    }
    Ok(())
}

#[derive(Debug, Command)]
struct Audit;

#[handler(releases(Audited))]
fn audit(_: Audit, events: EventReleaser) -> Result<(), Infallible> {
    events.release(Audited);
    Ok(())
}

#[derive(Debug, Command)]
#[command(output = String)]
struct ReadShelf;

/// Loads without changing: nothing to commit.
#[handler]
fn read_shelf(_: ReadShelf, mut uow: Scoped<Uow>) -> Result<String, Infallible> {
    Ok(uow
        .repository()
        .get(&1)
        .map(|shelf| shelf.name.clone())
        .unwrap_or_default())
}

fn rename_bus(store: &Arc<InMemoryStore<Shelf>>) -> Bus {
    Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<rename>()
                .handler::<read_shelf>()
                .handler::<audit>()
                .handler::<rename_on_audit>(),
        )
        .dependencies(with_shelves(store))
        .build()
        .expect("valid wiring")
}

#[test]
fn ok_after_dropping_an_uncommitted_unit_of_work_is_a_misuse() {
    let store = shelves();
    let bus = rename_bus(&store);
    let recorder = Recorder::attach(&bus);

    bus.dispatch_blocking(Rename {
        commit: false,
        fail: false,
    })
    .expect("the handler said Ok");
    assert_eq!(store.commits(), 0, "nothing was stored");
    assert_eq!(
        recorder.take_misuses(),
        [Misuse::Uncommitted {
            handler: handler_name::<rename>(),
            dropped: Uncommitted {
                aggregates: 1,
                events: 1,
            },
        }]
    );

    // An event handler's call too.
    bus.dispatch_blocking(Audit).expect("handled");
    assert_eq!(
        recorder.take_misuses(),
        [Misuse::Uncommitted {
            handler: handler_name::<rename_on_audit>(),
            dropped: Uncommitted {
                aggregates: 1,
                events: 1,
            },
        }]
    );
}

#[test]
fn a_unit_of_work_committed_read_only_or_dropped_by_a_failing_handler_is_no_misuse() {
    let store = shelves();
    let bus = rename_bus(&store);
    let recorder = Recorder::attach(&bus);
    assert_eq!(bus.dispatch_blocking(ReadShelf).expect("read"), "");
    let failed = bus.dispatch_blocking(Rename {
        commit: false,
        fail: true,
    });
    assert!(matches!(failed, Err(DispatchError::Handler(Refused))));
    bus.dispatch_blocking(Rename {
        commit: true,
        fail: false,
    })
    .expect("renamed");
    assert_eq!(store.commits(), 1);
    assert_eq!(bus.dispatch_blocking(ReadShelf).expect("read"), "new");
    assert_eq!(recorder.event_names(), ["misuse.renamed"]);
    assert!(recorder.misuses().is_empty(), "{:?}", recorder.misuses());
}

// ---------------------------------------------------------------------------
// A `*_blocking` call from inside an async runtime.

#[derive(Debug, Command)]
struct Ping;

#[handler]
fn ping(_: Ping) -> Result<(), Infallible> {
    Ok(())
}

#[derive(Debug, Command)]
struct PingAsync;

/// An `async fn` handler: a blocking dispatch of it must drive a future.
#[handler]
async fn ping_async(_: PingAsync) -> Result<(), Infallible> {
    Ok(())
}

#[derive(Debug, Query)]
#[query(output = u32)]
struct Depth;

#[handler]
async fn depth(_: Depth) -> Result<u32, Infallible> {
    Ok(3)
}

#[derive(Debug, Clone, Event)]
struct Pinged;

/// Counts `Pinged`, in an `async fn`.
#[handler]
async fn count_pings(_: &Pinged, pings: &AtomicU32) {
    pings.fetch_add(1, Ordering::SeqCst);
}

#[derive(Debug, Command)]
struct Announce;

/// A plain `fn` whose event has an `async fn` handler.
#[handler(releases(Pinged))]
fn announce(_: Announce, events: EventReleaser) -> Result<(), Infallible> {
    events.release(Pinged);
    Ok(())
}

fn ping_bus() -> (Bus, Arc<AtomicU32>) {
    let pings = Arc::new(AtomicU32::new(0));
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<ping>()
                .handler::<ping_async>()
                .handler::<depth>()
                .handler::<count_pings>()
                .handler::<announce>(),
        )
        .dependencies(Dependencies::new().shared_arc(pings.clone()))
        .build()
        .expect("valid wiring");
    (bus, pings)
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn a_blocking_call_that_would_wait_on_a_task_s_thread_panics_before_it_starts() {
    let (bus, pings) = ping_bus();
    let runtime = current_thread();
    type Call = Box<dyn Fn(&Bus)>;
    let calls: [(&str, Call); 4] = [
        (
            "bus.dispatch(command).await",
            Box::new(|bus| drop(bus.dispatch_blocking(PingAsync))),
        ),
        (
            "bus.publish(event).await",
            Box::new(|bus| drop(bus.publish_blocking(Pinged))),
        ),
        (
            "bus.query(query).await",
            Box::new(|bus| drop(bus.query_blocking(Depth))),
        ),
        (
            "bus.shutdown(grace).await",
            Box::new(|bus| {
                let _ = bus.shutdown_blocking(std::time::Duration::from_secs(1));
            }),
        ),
    ];
    for (instead, call) in calls {
        let refused = runtime.block_on(async { catch_unwind(AssertUnwindSafe(|| call(&bus))) });
        let text = panic_text(refused.expect_err("refused at once"));
        assert!(
            text.contains("was called from inside an async runtime")
                && text.contains(&format!("Call `{instead}` instead")),
            "{text}"
        );
    }
    assert_eq!(
        pings.load(Ordering::SeqCst),
        0,
        "the refused publish ran nothing"
    );
    assert!(!bus.is_closed(), "the refused shutdown did nothing");
    // A dispatch of plain `fn`s only never waits: it is not refused.
    runtime
        .block_on(async { bus.dispatch_blocking(Ping) })
        .expect("handled");
    // Outside the runtime, the same calls work.
    bus.dispatch_blocking(PingAsync).expect("handled");
    assert_eq!(bus.query_blocking(Depth).expect("answered"), 3);
}

#[test]
fn refused_after_its_command_ran_a_blocking_dispatch_leaves_its_events_to_the_runtime() {
    let (bus, pings) = ping_bus();
    let runtime = current_thread();
    runtime.block_on(async {
        let refused = catch_unwind(AssertUnwindSafe(|| bus.dispatch_blocking(Announce)));
        let text = panic_text(refused.expect_err("its event needs driving"));
        assert!(
            text.contains("Call `bus.dispatch(command).await` instead"),
            "{text}"
        );
        // The command committed: its event is not lost, it runs on the
        // runtime, as for a caller that stopped waiting.
        assert!(bus.settled(std::time::Duration::from_secs(10)).await);
    });
    assert_eq!(pings.load(Ordering::SeqCst), 1);
}

#[test]
fn blocking_calls_where_no_task_is_driven_work_inside_a_runtime() {
    let (bus, _) = ping_bus();
    let current = current_thread();
    let pooled = current.block_on({
        let bus = bus.clone();
        async move { tokio::task::spawn_blocking(move || bus.dispatch_blocking(PingAsync)).await }
    });
    assert!(matches!(pooled, Ok(Ok(()))), "spawn_blocking: {pooled:?}");
    let entered = current.enter();
    bus.dispatch_blocking(PingAsync)
        .expect("a thread that entered a runtime");
    drop(entered);
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let in_place = multi.block_on({
        let bus = bus.clone();
        async move {
            tokio::spawn(
                async move { tokio::task::block_in_place(|| bus.dispatch_blocking(PingAsync)) },
            )
            .await
        }
    });
    assert!(
        matches!(in_place, Ok(Ok(()))),
        "block_in_place: {in_place:?}"
    );
}

/// Shuts the bus down when dropped: an app guard.
struct App(Bus);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self
            .0
            .shutdown_blocking(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_blocking_call_while_unwinding_inside_a_runtime_is_not_a_second_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (bus, _) = ping_bus();
    let failed = catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async {
            let app = App(bus.clone());
            app.0.dispatch(Ping).await.expect("handled");
            panic!("the test's own failure");
        })
    }));
    // A refusal while unwinding would have aborted the process.
    let text = panic_text(failed.expect_err("the test's panic"));
    assert_eq!(text, "the test's own failure");
    assert!(bus.is_closed(), "the guard's shutdown ran");
}

#[derive(Debug, Command)]
struct Nested;

/// A handler that makes a blocking dispatch (which must drive a future):
/// inside an awaited one, on any executor, that is refused.
#[handler]
fn nested(_: Nested, bus: &BusHandle) -> Result<(), Infallible> {
    if let Some(bus) = bus.0.get() {
        let _ = bus.dispatch_blocking(PingAsync);
    }
    Ok(())
}

#[derive(Default)]
struct BusHandle(std::sync::OnceLock<Bus>);

#[test]
fn a_handler_of_an_awaited_dispatch_that_blocks_is_refused_on_any_executor() {
    let handle = Arc::new(BusHandle::default());
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<nested>()
                .handler::<ping_async>(),
        )
        .dependencies(Dependencies::new().shared_arc(handle.clone()))
        .build()
        .expect("valid wiring");
    assert!(handle.0.set(bus.clone()).is_ok());
    // `futures`' executor: no tokio context at all.
    let refused = catch_unwind(AssertUnwindSafe(|| {
        futures::executor::block_on(bus.dispatch(Nested))
    }));
    let text = panic_text(refused.expect_err("the handler's blocking call is refused"));
    assert!(text.contains("`Bus::dispatch_blocking`"), "{text}");
    // A blocking dispatch whose handler dispatches blocking is fine: it
    // drives nothing else.
    bus.dispatch_blocking(Nested)
        .expect("nested blocking calls work");
}

// ---------------------------------------------------------------------------
// An event with no handler: a function that lost its `#[handler]`.

#[derive(Debug, Clone, Event)]
#[event(name = "misuse.shipped")]
struct Shipped;

/// Meant as `Shipped`'s handler, but its `#[handler]` is missing.
#[allow(dead_code)]
fn email_customer(_: &Shipped) {}

#[derive(Debug, Command)]
struct Ship;

#[handler(releases(Shipped))]
fn ship(_: Ship, events: EventReleaser) -> Result<(), Infallible> {
    events.release(Shipped);
    Ok(())
}

fn shipping() -> BusBuilder {
    Bus::builder().registrations(
        Registrations::new()
            .handler::<ship>()
            .handler::<count_renames>()
            .message::<Shipped>()
            .message::<Audited>(),
    )
}

#[test]
fn dead_ends_list_every_event_without_a_handler() {
    let bus = shipping()
        .dependencies(Dependencies::new().shared(AtomicU32::new(0)))
        .build()
        .expect("events may have no handler");
    let ends = bus.describe().dead_ends();
    let ends: Vec<(&str, Vec<&str>)> = ends
        .iter()
        .map(|end| (end.event, end.released_by.clone()))
        .collect();
    assert_eq!(
        ends,
        [
            ("misuse.audited", vec![]),
            ("misuse.shipped", vec![handler_name::<ship>()]),
        ]
    );
}

#[test]
fn require_event_handlers_refuses_every_event_without_one_but_those_allowed() {
    let error = shipping()
        .dependencies(Dependencies::new().shared(AtomicU32::new(0)))
        .require_event_handlers()
        .build()
        .expect_err("two events have no handler");
    assert_eq!(
        error.problems(),
        [
            Problem::NoHandler {
                kind: MessageKind::Event,
                message: "misuse.audited",
                declared_at: arch_events::registry::Location {
                    file: "tests/tests/misuse.rs",
                    line: line_of("struct Audited;"),
                },
            },
            Problem::NoHandler {
                kind: MessageKind::Event,
                message: "misuse.shipped",
                declared_at: arch_events::registry::Location {
                    file: "tests/tests/misuse.rs",
                    line: line_of("struct Shipped;"),
                },
            },
        ]
    );
    let text = error.to_string();
    assert!(
        text.contains("event `misuse.shipped` (declared at tests/tests/misuse.rs:")
            && text.contains("`require_event_handlers`")
            && text.contains("allow_unhandled"),
        "{text}"
    );

    shipping()
        .dependencies(Dependencies::new().shared(AtomicU32::new(0)))
        .require_event_handlers()
        .allow_unhandled::<Shipped>()
        .allow_unhandled::<Audited>()
        .build()
        .expect("both allowed");
}

// ---------------------------------------------------------------------------
// Hints for a missing dependency: the exact call, and what is near.

trait Notifications: Send + Sync {
    fn send(&self, text: &str);
}

struct Stdout;

impl Notifications for Stdout {
    fn send(&self, text: &str) {
        println!("{text}");
    }
}

trait Journal: Send {}

struct Log;

#[derive(Debug, Command)]
struct Notify;

#[handler]
fn notify(_: Notify, notifications: &dyn Notifications) -> Result<(), Infallible> {
    notifications.send("hi");
    Ok(())
}

#[derive(Debug, Command)]
struct NotifyAgain;

#[handler]
fn notify_again(_: NotifyAgain, notifications: Arc<dyn Notifications>) -> Result<(), Infallible> {
    notifications.send("hi again");
    Ok(())
}

#[handler]
fn notify_on_audit(_: &Audited, _notifications: &dyn Notifications, _log: &Log) {}

#[derive(Debug, Command)]
struct Write;

#[handler]
fn write(_: Write, _journal: Scoped<dyn Journal>) -> Result<(), Infallible> {
    Ok(())
}

#[test]
fn a_missing_dependency_is_reported_once_with_its_handlers_the_exact_call_and_what_is_near() {
    let error = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<notify>()
                .handler::<notify_again>()
                .handler::<notify_on_audit>()
                .handler::<write>(),
        )
        .dependencies(
            Dependencies::new()
                .shared(Stdout) // the value, not the trait object
                .shared(Arc::new(Log)), // an Arc in an Arc
        )
        .build()
        .expect_err("three types are missing");
    let text = error.to_string();
    println!("{text}");
    assert_eq!(error.problems().len(), 3, "one per type: {text}");

    let Problem::MissingDependency {
        type_name,
        lifetime,
        handlers,
        registered_as,
        near,
    } = error
        .problems()
        .iter()
        .find(|p| matches!(p, Problem::MissingDependency { type_name, .. } if type_name.contains("Notifications")))
        .expect("the trait object is missing")
    else {
        panic!("{text}");
    };
    assert_eq!(*type_name, "dyn misuse::Notifications");
    assert_eq!(*lifetime, Lifetime::Shared);
    assert_eq!(*registered_as, None);
    let names: Vec<&str> = handlers.iter().map(|h| h.name).collect();
    assert_eq!(
        names,
        [
            handler_name::<notify>(),
            handler_name::<notify_again>(),
            handler_name::<notify_on_audit>(),
        ]
    );
    assert_eq!(handlers[0].location.to_string(), at("fn notify(_: Notify"));
    assert_eq!(
        near,
        &[
            ("alloc::sync::Arc<misuse::Log>", Lifetime::Shared),
            ("misuse::Stdout", Lifetime::Shared),
        ]
    );
    assert!(
        text.contains(
            "the shared dependency `dyn misuse::Notifications` was not provided; 3 handlers \
             need it:"
        ) && text.contains(
            "register it with `Dependencies::shared_arc::<dyn misuse::Notifications>(Arc::new(value))`; \
             registered: `alloc::sync::Arc<misuse::Log>` (shared), `misuse::Stdout` (shared)"
        ),
        "{text}"
    );
    // `&Log` asked, `Arc<Log>` registered: named as near.
    assert!(
        text.contains("the shared dependency `misuse::Log` was not provided; 1 handler needs it:")
            && text.contains("registered: `alloc::sync::Arc<misuse::Log>` (shared)"),
        "{text}"
    );
    // A scoped trait object: `scoped_boxed`, in its exact generic form.
    assert!(
        text.contains(
            "register it with `Dependencies::scoped_boxed::<dyn misuse::Journal, _>(|scope| \
             Box::new(value))`"
        ),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// Builder settings that would do nothing, or would fight.

#[handler]
async fn slow_audit(_: &Renamed) {}

#[test]
fn settings_that_would_do_nothing_or_fight_are_build_problems() {
    use arch_events::layer::{BoxFuture, HandlerCall, Layer, Next, Outcome};
    use arch_events::RetryPolicy;

    struct Pass;
    impl Layer for Pass {
        fn call<'a>(&'a self, call: HandlerCall<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
            next.run(call)
        }
    }

    let error = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<count_renames>()
                .handler::<tick>()
                .handler::<slow_audit>()
                .message::<Audited>(),
        )
        .dependencies(
            Dependencies::new()
                .shared(AtomicU32::new(0))
                .shared(Clock(1)),
        )
        .handler_retry::<count_renames>(RetryPolicy::exponential(2))
        .handler_retry::<count_renames>(RetryPolicy::exponential(3))
        .handler_timeout::<slow_audit>(std::time::Duration::ZERO)
        .layer_for::<Audited>(Pass) // Audited has no handler here
        .max_messages_per_dispatch(0) // no dispatch could run
        .build()
        .expect_err("four settings cannot apply");
    let text = error.to_string();
    assert_eq!(error.problems().len(), 4, "{text}");
    assert!(
        text.contains(&format!(
            "`handler_timeout` for `{}` ({}) cannot apply: a timeout of zero fails every call",
            handler_name::<slow_audit>(),
            at("async fn slow_audit")
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "`handler_retry` for `{}` ({}) cannot apply: it is set twice for this handler",
            handler_name::<count_renames>(),
            at("fn count_renames")
        )),
        "{text}"
    );
    assert!(
        text.contains("`layer_for` for `misuse.audited`")
            && text.contains("the layer would wrap nothing"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "`max_messages_per_dispatch` for `the bus` ({}) cannot apply: it must be at least 1",
            at("// no dispatch could run")
        )),
        "{text}"
    );
}
