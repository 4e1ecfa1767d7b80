//! Dispatch semantics: typed results, deterministic fan-out, chaining,
//! isolated failures, commit-gated release, the cascade bound.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use arch_events::{
    handler, Aggregate, Bus, Command, Dependencies, DispatchError, Event, EventRecorder,
    EventReleaser, HandlerFailure, Query, Registrations, Scoped, UnitOfWork,
};
use arch_events_tests::Log;

// ---- a small bank domain -------------------------------------------------

#[derive(Debug, thiserror::Error, PartialEq)]
enum BankError {
    #[error("account {0} is frozen")]
    Frozen(String),
}

#[derive(Debug, Command)]
#[command(output = u64, error = BankError)]
struct Deposit {
    account: String,
    amount: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
struct Deposited {
    account: String,
    amount: u64,
}

#[derive(Debug, Clone, Event)]
struct Audited {
    account: String,
}

#[derive(Debug, Default, Clone)]
struct Account {
    name: String,
    balance: u64,
    frozen: bool,
    events: EventRecorder,
}

impl Aggregate for Account {
    fn events(&mut self) -> &mut EventRecorder {
        &mut self.events
    }
}

impl Account {
    fn deposit(&mut self, amount: u64) -> Result<u64, BankError> {
        if self.frozen {
            return Err(BankError::Frozen(self.name.clone()));
        }
        self.balance += amount;
        self.events.record(Deposited {
            account: self.name.clone(),
            amount,
        });
        Ok(self.balance)
    }
}

/// Accounts in memory, shared by every unit of work of a bus.
#[derive(Debug, Default)]
struct Store(Mutex<HashMap<String, Account>>);

/// A unit of work over [`Store`]: releases events only after commit.
struct BankUow {
    store: Arc<Store>,
    seen: Vec<Account>,
    releaser: EventReleaser,
    committed: bool,
}

impl BankUow {
    fn get(&mut self, name: &str) -> &mut Account {
        let account = self
            .store
            .0
            .lock()
            .expect("store lock")
            .get(name)
            .cloned()
            .unwrap_or_else(|| Account {
                name: name.to_owned(),
                frozen: name.starts_with("frozen"),
                ..Account::default()
            });
        self.seen.push(account);
        self.seen.last_mut().expect("just pushed")
    }
}

#[arch_events::async_trait]
impl UnitOfWork for BankUow {
    type Error = Infallible;
    async fn commit(&mut self) -> Result<(), Infallible> {
        let events: Vec<_> = self.seen.iter_mut().flat_map(|a| a.events.take()).collect();
        let mut store = self.store.0.lock().expect("store lock");
        for account in &self.seen {
            store.insert(account.name.clone(), account.clone());
        }
        drop(store);
        self.releaser.release_all(events);
        self.committed = true;
        Ok(())
    }
    async fn rollback(&mut self) -> Result<(), Infallible> {
        self.seen.clear();
        Ok(())
    }
}

fn bank_dependencies(store: Arc<Store>, log: Arc<Log>) -> Dependencies {
    Dependencies::new()
        .shared_arc(log)
        .scoped(move |scope| BankUow {
            store: store.clone(),
            seen: Vec::new(),
            releaser: scope.releaser(),
            committed: false,
        })
}

#[handler(releases(Deposited))]
async fn deposit(cmd: Deposit, mut uow: Scoped<BankUow>, log: &Log) -> Result<u64, BankError> {
    let balance = uow.get(&cmd.account).deposit(cmd.amount)?;
    // A deposit of 13 is unlucky: the handler forgets to commit.
    if cmd.amount != 13 {
        let Ok(()) = uow.commit().await;
    }
    log.push(format!("deposit {} {}", cmd.account, cmd.amount));
    Ok(balance)
}

// Three handlers of one event, registered out of order: they run sorted by path.
#[handler]
fn on_deposited_c(event: &Deposited, log: &Log) {
    log.push(format!("c {}", event.account));
}

#[handler(releases(Audited))]
fn on_deposited_a(event: Deposited, log: &Log, events: EventReleaser) {
    log.push(format!("a {}", event.account));
    events.release(Audited {
        account: event.account,
    });
}

#[handler]
async fn on_deposited_b(event: &Deposited, log: Arc<Log>) -> Result<(), BankError> {
    log.push(format!("b {}", event.account));
    Ok(())
}

#[handler]
fn on_audited(event: &Audited, log: &Log) {
    log.push(format!("audited {}", event.account));
}

fn bank_bus(log: Arc<Log>) -> (Bus, Arc<Store>) {
    let store = Arc::new(Store::default());
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<deposit>()
                .handler::<on_deposited_c>()
                .handler::<on_deposited_b>()
                .handler::<on_deposited_a>()
                .handler::<on_audited>(),
        )
        .dependencies(bank_dependencies(store.clone(), log))
        .build()
        .expect("bank wiring is valid");
    (bus, store)
}

#[test]
fn a_command_returns_its_typed_output() {
    let log = Arc::new(Log::default());
    let (bus, _) = bank_bus(log);
    let first = bus.dispatch_blocking(Deposit {
        account: "alice".into(),
        amount: 5,
    });
    assert_eq!(first.expect("deposit succeeds"), 5);
    let second = bus.dispatch_blocking(Deposit {
        account: "alice".into(),
        amount: 7,
    });
    assert_eq!(second.expect("deposit succeeds"), 12);
}

#[test]
fn a_command_fails_with_its_typed_error_and_releases_nothing() {
    let log = Arc::new(Log::default());
    let (bus, store) = bank_bus(log.clone());
    let result = bus.dispatch_blocking(Deposit {
        account: "frozen-bob".into(),
        amount: 5,
    });
    match result {
        Err(DispatchError::Handler(BankError::Frozen(name))) => assert_eq!(name, "frozen-bob"),
        other => panic!("expected the typed domain error, got {other:?}"),
    }
    assert!(
        log.entries().is_empty(),
        "no handler ran: {:?}",
        log.entries()
    );
    assert!(store.0.lock().expect("lock").is_empty());
}

#[test]
fn event_handlers_run_in_a_deterministic_order_and_chain() {
    let log = Arc::new(Log::default());
    let (bus, _) = bank_bus(log.clone());
    bus.dispatch_blocking(Deposit {
        account: "carol".into(),
        amount: 1,
    })
    .expect("deposit succeeds");
    assert_eq!(
        log.entries(),
        [
            "deposit carol 1",
            "a carol",
            "b carol",
            "c carol",
            "audited carol"
        ]
    );
    // A second dispatch releases its own events only, none of the first's.
    let recorder = arch_events::testing::Recorder::attach(&bus);
    bus.dispatch_blocking(Deposit {
        account: "carol".into(),
        amount: 2,
    })
    .expect("deposit succeeds");
    assert_eq!(
        log.entries()[5..],
        [
            "deposit carol 2",
            "a carol",
            "b carol",
            "c carol",
            "audited carol"
        ]
    );
    assert_eq!(
        recorder.events_of::<Deposited>(),
        [Deposited {
            account: "carol".into(),
            amount: 2,
        }],
        "the second deposit's event, once"
    );
    assert_eq!(
        recorder.event_names(),
        ["dispatch::Deposited", "dispatch::Audited"]
    );
}

#[test]
fn an_uncommitted_unit_of_work_releases_nothing() {
    let log = Arc::new(Log::default());
    let (bus, store) = bank_bus(log.clone());
    let balance = bus
        .dispatch_blocking(Deposit {
            account: "dave".into(),
            amount: 13,
        })
        .expect("the handler itself succeeds");
    assert_eq!(balance, 13);
    assert_eq!(log.entries(), ["deposit dave 13"], "no event handler ran");
    assert!(
        store.0.lock().expect("lock").is_empty(),
        "nothing persisted"
    );
}

// ---- failures of event handlers are isolated -----------------------------

#[derive(Debug, Clone, Event)]
struct Risky(u32);

#[derive(Debug, thiserror::Error)]
#[error("mail server timed out")]
struct MailTimeout;

#[handler]
fn risky_1_errors(_: &Risky, log: &Log, events: EventReleaser) -> Result<(), MailTimeout> {
    log.push("errors");
    events.release(Audited {
        account: "never".into(),
    });
    Err(MailTimeout)
}

#[handler]
fn risky_2_panics(event: &Risky, log: &Log) {
    log.push("panics");
    if event.0 > 0 {
        panic!("risky handler exploded on {}", event.0);
    }
}

#[handler]
async fn risky_3_async_panics(event: &Risky, log: &Log) {
    log.push("async panics");
    if event.0 > 0 {
        panic!("async risky handler exploded");
    }
}

#[handler]
fn risky_4_records(event: &Risky, log: &Log) {
    log.push(format!("records {}", event.0));
}

fn risky_bus(log: Arc<Log>, failures: Arc<Mutex<Vec<String>>>) -> Bus {
    Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<risky_1_errors>()
                .handler::<risky_2_panics>()
                .handler::<risky_3_async_panics>()
                .handler::<risky_4_records>()
                .handler::<on_audited>(),
        )
        .dependencies(Dependencies::new().shared_arc(log))
        .observer(move |failure: &HandlerFailure| {
            failures.lock().expect("lock").push(format!(
                "{} | {} | {} | panic={}",
                failure.message(),
                failure.handler(),
                failure.cause(),
                failure.is_panic()
            ));
        })
        .build()
        .expect("valid wiring")
}

#[test]
fn an_event_handler_error_or_panic_is_isolated_and_reported() {
    let log = Arc::new(Log::default());
    let failures = Arc::new(Mutex::new(Vec::new()));
    let bus = risky_bus(log.clone(), failures.clone());

    bus.publish_blocking(Risky(1))
        .expect("failures do not fail the publish");
    bus.publish_blocking(Risky(2))
        .expect("the bus keeps working");

    assert_eq!(
        log.entries(),
        [
            "errors",
            "panics",
            "async panics",
            "records 1",
            "errors",
            "panics",
            "async panics",
            "records 2",
        ],
        "every handler ran, and the erroring one released nothing"
    );
    let failures = failures.lock().expect("lock").clone();
    assert_eq!(
        failures,
        [
            "dispatch::Risky | dispatch::risky_1_errors | mail server timed out | panic=false",
            "dispatch::Risky | dispatch::risky_2_panics | panicked: risky handler exploded on 1 | panic=true",
            "dispatch::Risky | dispatch::risky_3_async_panics | panicked: async risky handler exploded | panic=true",
            "dispatch::Risky | dispatch::risky_1_errors | mail server timed out | panic=false",
            "dispatch::Risky | dispatch::risky_2_panics | panicked: risky handler exploded on 2 | panic=true",
            "dispatch::Risky | dispatch::risky_3_async_panics | panicked: async risky handler exploded | panic=true",
        ]
    );
}

#[test]
fn a_failed_handler_does_not_stop_the_rest_of_the_queue() {
    #[derive(Debug, Command)]
    struct Start;

    #[handler]
    fn start(_: Start, events: EventReleaser) -> Result<(), Infallible> {
        events.release(Risky(9));
        events.release(Audited {
            account: "after".into(),
        });
        Ok(())
    }

    let log = Arc::new(Log::default());
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<start>()
                .handler::<risky_2_panics>()
                .handler::<on_audited>(),
        )
        .dependencies(Dependencies::new().shared_arc(log.clone()))
        .build()
        .expect("valid wiring");
    bus.dispatch_blocking(Start).expect("the command succeeded");
    assert_eq!(log.entries(), ["panics", "audited after"]);
}

#[test]
fn plain_fn_handlers_go_on_after_one_that_releases_panics_or_fails() {
    #[derive(Debug, Clone, Event)]
    struct Parcel(u32);

    #[handler]
    fn parcel_1_counts(event: &Parcel, log: &Log) {
        log.push(format!("counted {}", event.0));
    }

    #[handler(releases(Audited))]
    fn parcel_2_releases(event: &Parcel, log: &Log, events: EventReleaser) {
        log.push(format!("released {}", event.0));
        events.release(Audited {
            account: format!("parcel {}", event.0),
        });
    }

    #[handler]
    fn parcel_3_panics(event: &Parcel, log: &Log) {
        log.push(format!("panics {}", event.0));
        panic!("parcel {} jammed", event.0);
    }

    #[handler]
    fn parcel_4_fails(event: &Parcel, log: &Log) -> Result<(), MailTimeout> {
        log.push(format!("fails {}", event.0));
        Err(MailTimeout)
    }

    #[handler]
    fn parcel_5_counts(event: &Parcel, log: &Log) {
        log.push(format!("counted again {}", event.0));
    }

    let log = Arc::new(Log::default());
    let failures = Arc::new(Mutex::new(Vec::new()));
    let seen = failures.clone();
    // Plain `fn`s only, no recorder, no span: the calls run back to back
    // under one catch, and each stop is settled before the rest go on.
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<parcel_1_counts>()
                .handler::<parcel_2_releases>()
                .handler::<parcel_3_panics>()
                .handler::<parcel_4_fails>()
                .handler::<parcel_5_counts>()
                .handler::<on_audited>(),
        )
        .dependencies(Dependencies::new().shared_arc(log.clone()))
        .observer(move |failure: &HandlerFailure| {
            seen.lock().expect("lock").push(
                failure
                    .handler()
                    .rsplit("::")
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            );
        })
        .build()
        .expect("valid wiring");
    for n in 1..=2 {
        bus.publish_blocking(Parcel(n))
            .expect("failures do not fail the publish");
    }
    assert_eq!(
        log.entries(),
        [
            "counted 1",
            "released 1",
            "panics 1",
            "fails 1",
            "counted again 1",
            "audited parcel 1",
            "counted 2",
            "released 2",
            "panics 2",
            "fails 2",
            "counted again 2",
            "audited parcel 2",
        ]
    );
    assert_eq!(
        *failures.lock().expect("lock"),
        [
            "parcel_3_panics",
            "parcel_4_fails",
            "parcel_3_panics",
            "parcel_4_fails"
        ]
    );
}

// ---- the cascade bound ---------------------------------------------------

#[derive(Debug, Clone, Event)]
struct Ping(u64);

#[derive(Debug, Clone, Event)]
struct Pong(u64);

#[handler]
fn ping_raises_pong(event: &Ping, events: EventReleaser) {
    events.release(Pong(event.0 + 1));
}

#[handler]
fn pong_raises_ping(event: &Pong, events: EventReleaser) {
    events.release(Ping(event.0 + 1));
}

#[derive(Debug, Command)]
struct Serve;

#[handler]
fn serve(_: Serve, events: EventReleaser) -> Result<(), Infallible> {
    events.release(Ping(0));
    Ok(())
}

#[test]
fn an_endless_cascade_stops_at_the_bound_naming_its_messages() {
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<serve>()
                .handler::<ping_raises_pong>()
                .handler::<pong_raises_ping>(),
        )
        .max_messages_per_dispatch(50)
        .build()
        .expect("valid wiring");
    let error = bus
        .dispatch_blocking(Serve)
        .expect_err("the cascade never ends");
    let DispatchError::CascadeLimit(cascade) = &error else {
        panic!("expected the cascade bound, got {error:?}");
    };
    assert_eq!(cascade.limit(), 50);
    assert_eq!(cascade.origin(), "dispatch::Serve");
    let names: Vec<&str> = cascade.pending().iter().map(|(name, _)| *name).collect();
    assert!(
        names.contains(&"dispatch::Ping") || names.contains(&"dispatch::Pong"),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("`dispatch::Serve` stopped after 50 messages"),
        "{text}"
    );
    assert!(text.contains("max_messages_per_dispatch"), "{text}");

    let published = bus
        .publish_blocking(Ping(0))
        .expect_err("publishing cascades too");
    assert!(matches!(published, DispatchError::CascadeLimit(_)));
}

// ---- queries ---------------------------------------------------------------

#[derive(Debug, Query)]
#[query(output = Option<u64>)]
struct Balance {
    account: String,
}

#[handler]
fn balance(query: Balance, store: &Store) -> Result<Option<u64>, Infallible> {
    Ok(store
        .0
        .lock()
        .expect("lock")
        .get(&query.account)
        .map(|a| a.balance))
}

#[test]
fn a_query_is_answered_by_its_handler() {
    let store = Arc::new(Store::default());
    store.0.lock().expect("lock").insert(
        "erin".into(),
        Account {
            name: "erin".into(),
            balance: 40,
            ..Account::default()
        },
    );
    let bus = Bus::builder()
        .registrations(Registrations::new().handler::<balance>())
        .dependencies(Dependencies::new().shared_arc(store))
        .build()
        .expect("valid wiring");
    assert_eq!(
        bus.query_blocking(Balance {
            account: "erin".into()
        })
        .expect("answered"),
        Some(40)
    );
    assert_eq!(
        bus.query_blocking(Balance {
            account: "nobody".into()
        })
        .expect("answered"),
        None
    );
}

// ---- the bus itself --------------------------------------------------------

#[test]
fn the_bus_is_send_sync_clone_and_its_futures_are_send() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    fn assert_send<T: Send>(_: &T) {}
    assert_send_sync_clone::<Bus>();

    let (bus, _) = bank_bus(Arc::new(Log::default()));
    let future = bus.dispatch(Deposit {
        account: "x".into(),
        amount: 1,
    });
    assert_send(&future);
    drop(future);
}

#[test]
fn events_and_releasers_keep_their_auto_traits() {
    fn assert_send_sync_unpin<T: Send + Sync + Unpin>() {}
    fn assert_unwind_safe<T: std::panic::UnwindSafe + std::panic::RefUnwindSafe>() {}
    // A pending event, and what holds one, can be moved out of a pinned
    // future's state and kept in any container.
    assert_send_sync_unpin::<arch_events::PendingEvent>();
    assert_send_sync_unpin::<arch_events::dead_letter::DeadLetter>();
    assert_send_sync_unpin::<EventReleaser>();
    // A releaser can be captured by `catch_unwind` as it could before.
    assert_unwind_safe::<EventReleaser>();
    let releaser = EventReleaser::new();
    let caught = std::panic::catch_unwind(|| {
        releaser.release(Audited {
            account: "before the panic".into(),
        });
        panic!("after a release");
    });
    assert!(caught.is_err());
    assert_eq!(
        releaser.drain().len(),
        1,
        "the release before the panic is kept, the lock free again"
    );
}

#[test]
fn sync_handlers_need_no_runtime_and_async_ones_run_on_any_executor() {
    let log = Arc::new(Log::default());
    let (bus, _) = bank_bus(log.clone());
    // futures' executor, not tokio: the bus needs no particular runtime.
    let balance = futures::executor::block_on(bus.dispatch(Deposit {
        account: "fred".into(),
        amount: 3,
    }))
    .expect("deposit succeeds");
    assert_eq!(balance, 3);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let balance = runtime
        .block_on(bus.dispatch(Deposit {
            account: "fred".into(),
            amount: 4,
        }))
        .expect("deposit succeeds");
    assert_eq!(balance, 7);
}

#[test]
fn awaited_publishes_isolate_failures_of_plain_fn_handlers_too() {
    let log = Arc::new(Log::default());
    let failures = Arc::new(Mutex::new(Vec::new()));
    let recorded = failures.clone();
    let bus = Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<risky_1_errors>()
                .handler::<risky_2_panics>()
                .handler::<risky_4_records>(),
        )
        .dependencies(Dependencies::new().shared_arc(log.clone()))
        .observer(move |failure: &HandlerFailure| {
            recorded
                .lock()
                .expect("lock")
                .push(failure.handler().to_owned());
        })
        .build()
        .expect("valid wiring");
    futures::executor::block_on(bus.publish(Risky(5))).expect("failures do not fail the publish");
    assert_eq!(log.entries(), ["errors", "panics", "records 5"]);
    assert_eq!(
        *failures.lock().expect("lock"),
        ["dispatch::risky_1_errors", "dispatch::risky_2_panics"]
    );
}

// ---- commands and queries taken by reference ----------------------------

#[derive(Debug, Command)]
#[command(output = String, error = BankError)]
struct Rename {
    account: String,
    to: String,
}

/// A command handler that borrows its command: the bus still owns it.
#[handler]
fn rename(cmd: &Rename, log: &Log) -> Result<String, BankError> {
    if cmd.to.is_empty() {
        return Err(BankError::Frozen(cmd.account.clone()));
    }
    log.push(format!("rename {} -> {}", cmd.account, cmd.to));
    Ok(format!("{} is now {}", cmd.account, cmd.to))
}

#[derive(Debug, Command)]
#[command(output = usize, error = BankError)]
struct Close {
    account: String,
}

/// An `async fn` command handler that borrows its command across an await.
#[handler]
async fn close(cmd: &Close, log: &Log) -> Result<usize, BankError> {
    std::future::ready(()).await;
    if cmd.account == "frozen" {
        return Err(BankError::Frozen(cmd.account.clone()));
    }
    log.push(format!("close {}", cmd.account));
    Ok(cmd.account.len())
}

#[derive(Debug, Query)]
#[query(output = usize)]
struct NameLength {
    name: String,
}

#[handler]
fn name_length(query: &NameLength) -> Result<usize, Infallible> {
    Ok(query.name.len())
}

fn by_ref_bus(log: Arc<Log>) -> Bus {
    Bus::builder()
        .registrations(
            Registrations::new()
                .handler::<rename>()
                .handler::<close>()
                .handler::<name_length>(),
        )
        .dependencies(Dependencies::new().shared_arc(log))
        .build()
        .expect("valid wiring")
}

#[test]
fn commands_and_queries_taken_by_reference_answer_blocking_and_awaited() {
    let log = Arc::new(Log::default());
    let bus = by_ref_bus(log.clone());
    let renamed = Rename {
        account: "alice".into(),
        to: "alicia".into(),
    };
    assert_eq!(
        bus.dispatch_blocking(renamed).expect("renamed"),
        "alice is now alicia"
    );
    let closed = Close {
        account: "bob".into(),
    };
    assert_eq!(bus.dispatch_blocking(closed).expect("closed"), 3);
    let asked = NameLength {
        name: "carol".into(),
    };
    assert_eq!(bus.query_blocking(asked).expect("answered"), 5);
    let awaited = futures::executor::block_on(async {
        let renamed = bus
            .dispatch(Rename {
                account: "dave".into(),
                to: "david".into(),
            })
            .await;
        let closed = bus
            .dispatch(Close {
                account: "erin".into(),
            })
            .await;
        let asked = bus
            .query(NameLength {
                name: "frank".into(),
            })
            .await;
        (renamed, closed, asked)
    });
    assert_eq!(awaited.0.expect("renamed"), "dave is now david");
    assert_eq!(awaited.1.expect("closed"), 4);
    assert_eq!(awaited.2.expect("answered"), 5);
    assert_eq!(
        log.entries(),
        vec![
            "rename alice -> alicia",
            "close bob",
            "rename dave -> david",
            "close erin"
        ]
    );
}

#[test]
fn a_command_taken_by_reference_fails_with_its_typed_error() {
    let log = Arc::new(Log::default());
    let bus = by_ref_bus(log.clone());
    let refused = bus.dispatch_blocking(Rename {
        account: "alice".into(),
        to: String::new(),
    });
    assert!(
        matches!(&refused, Err(DispatchError::Handler(BankError::Frozen(name))) if name == "alice"),
        "{refused:?}"
    );
    let refused = futures::executor::block_on(bus.dispatch(Close {
        account: "frozen".into(),
    }));
    assert!(
        matches!(&refused, Err(DispatchError::Handler(BankError::Frozen(name))) if name == "frozen"),
        "{refused:?}"
    );
    let refused = bus.dispatch_blocking(Close {
        account: "frozen".into(),
    });
    assert!(
        matches!(&refused, Err(DispatchError::Handler(BankError::Frozen(_)))),
        "{refused:?}"
    );
    assert!(log.entries().is_empty(), "{:?}", log.entries());
}
