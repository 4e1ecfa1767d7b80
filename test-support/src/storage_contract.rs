//! The storage contract: what every database the service runs on must do
//! for allocation, written once and run on each (SQLite in
//! `example-app/tests/storage.rs`, PostgreSQL in the `postgres` target of
//! the tests package): the unit of work, the view, and what the service's
//! events and failures leave in arch-events-sqlx's store (the outbox, the inbox,
//! the dead letters; arch-events-sqlx's own conformance suite covers the store
//! itself). [`storage_contract_tests!`](crate::storage_contract_tests) expands to
//! every test below, given an `async fn` that makes an empty database.

use std::sync::Arc;

use arch_events::schedule::{InMemoryScheduler, VirtualClock};
use arch_events::transport::{Consumer, Handled, InMemoryBroker, OutboundMessage, Publisher};
use arch_events::{Bus, EventReleaser, MessageId, Scope};
use arch_events_sqlx::{DeadLetterError, DeadLetterRecord, DeadLetterStore};
use chrono::{NaiveDate, Utc};
use example_app::adapters::database::Database;
use example_app::adapters::memory::InMemoryProducts;
use example_app::adapters::notifications::RecordingNotifications;
use example_app::adapters::storage::Storage;
use example_app::bootstrap::EVENT_HANDLER_ATTEMPTS;
use example_app::domain::commands::{Allocate, CreateBatch};
use example_app::domain::model::{Batch, OrderLine, Product};
use example_app::service_layer::unit_of_work::{UnitOfWork, UowError};
use example_app::views::{AllocationRow, LineChange};
use example_app::{bootstrap, Adapters};
use serde_json::json;
use tokio::sync::Barrier;

/// An empty database for one test, and whatever keeps it alive (a
/// temporary directory, a guard that drops a PostgreSQL database).
pub struct TestDatabase {
    /// Where it is.
    pub url: String,
    /// Dropped with the test.
    pub keep: Box<dyn std::any::Any + Send>,
}

impl TestDatabase {
    /// Opens it (again: a restart opens it a second time), as a process
    /// that the others take for dead 300 ms after it went silent.
    pub async fn open(&self) -> Database {
        let settings = arch_events_sqlx::Settings::default()
            .heartbeat_every(std::time::Duration::from_millis(50))
            .node_timeout(std::time::Duration::from_millis(300));
        Database::connect_with(&self.url, settings)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The same empty database, made to keep its products as `storage`
    /// says (a database keeps what it was first opened with).
    pub async fn keeping(self, storage: Storage) -> TestDatabase {
        let settings = arch_events_sqlx::Settings::default();
        Database::open(&self.url, settings, Some(storage))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .close()
            .await;
        self
    }
}

/// Expands to one `#[tokio::test]` per contract test, each on a fresh
/// database from `$fresh` (an `async fn() -> TestDatabase`). With
/// `events $fresh` (a database that keeps its products as streams), all but
/// the tests that write the view directly: there only its projection
/// writes it, from the streams.
#[macro_export]
macro_rules! storage_contract_tests {
    ($fresh:path) => {
        $crate::storage_contract_tests!(@each $fresh;
            a_commit_persists_products_batches_and_allocations,
            without_commit_nothing_is_written_or_released,
            a_rollback_writes_nothing,
            a_failed_commit_writes_nothing_and_releases_nothing,
            of_two_concurrent_allocations_exactly_one_commits,
            concurrent_allocations_through_the_bus_never_oversell,
            a_deallocation_is_persisted_and_the_rest_kept_in_order,
            a_batch_reference_finds_its_product,
            the_view_keeps_rows_in_order_and_forgets_removed_ones,
            the_view_is_the_same_whatever_order_its_changes_arrive_in,
            an_event_from_before_versions_leaves_the_view_as_it_is,
            an_allocation_writes_its_event_to_the_outbox_and_the_relay_publishes_it_once,
            an_event_committed_before_a_crash_is_published_after_the_restart,
            a_lost_race_writes_nothing_to_the_outbox,
            a_redelivered_message_is_handled_once,
            the_stream_takes_only_its_own_messages_checked_as_over_http,
            an_allocation_committed_before_a_crash_reaches_the_view_after_the_restart,
            a_failing_notification_is_kept_and_replayed_once_the_notifier_is_back,
            a_dead_letter_is_claimed_once_and_an_unknown_one_is_not_found,
            a_working_notifier_leaves_no_dead_letter,
        );
    };
    (events $fresh:path) => {
        $crate::storage_contract_tests!(@each $fresh;
            a_commit_persists_products_batches_and_allocations,
            without_commit_nothing_is_written_or_released,
            a_rollback_writes_nothing,
            a_failed_commit_writes_nothing_and_releases_nothing,
            of_two_concurrent_allocations_exactly_one_commits,
            concurrent_allocations_through_the_bus_never_oversell,
            a_deallocation_is_persisted_and_the_rest_kept_in_order,
            a_batch_reference_finds_its_product,
            an_allocation_writes_its_event_to_the_outbox_and_the_relay_publishes_it_once,
            an_event_committed_before_a_crash_is_published_after_the_restart,
            a_lost_race_writes_nothing_to_the_outbox,
            a_redelivered_message_is_handled_once,
            the_stream_takes_only_its_own_messages_checked_as_over_http,
            an_allocation_committed_before_a_crash_reaches_the_view_after_the_restart,
            a_failing_notification_is_kept_and_replayed_once_the_notifier_is_back,
            a_dead_letter_is_claimed_once_and_an_unknown_one_is_not_found,
            a_working_notifier_leaves_no_dead_letter,
        );
    };
    (@each $fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::storage_contract::$name($fresh().await).await
            }
        )*
    };
}

fn line(orderid: &str, sku: &str, qty: u32) -> OrderLine {
    OrderLine {
        orderid: orderid.into(),
        sku: sku.into(),
        qty,
    }
}

async fn insert_product(database: &Database, sku: &str, batches: Vec<Batch>) {
    let mut uow = database.unit_of_work(EventReleaser::new());
    let product = uow.products().add(sku);
    for batch in batches {
        assert!(product.add_batch(
            &batch.reference,
            &batch.sku,
            batch.purchased_quantity(),
            batch.eta
        ));
    }
    uow.commit().await.expect("committed");
}

/// The product `sku`, which exists, loaded and tracked by `uow`.
async fn tracked<'a>(uow: &'a mut Box<dyn UnitOfWork>, sku: &str) -> &'a mut Product {
    uow.products()
        .get(sku)
        .await
        .expect("read")
        .expect("exists")
}

/// The product `sku` as stored, with every line of its first batch (the one
/// these tests allocate from; a load reads only the lines a decision needs).
async fn load(database: &Database, sku: &str) -> Option<Product> {
    let first = {
        let mut uow = database.unit_of_work(EventReleaser::new());
        let product = uow.products().get(sku).await.expect("read")?;
        product.batches.first()?.reference.clone()
    };
    let mut uow = database.unit_of_work(EventReleaser::new());
    let product = uow
        .products()
        .get_with_batch_lines(&first)
        .await
        .expect("read")
        .cloned();
    assert!(
        product.as_ref().is_some_and(|p| p.batches[0].all_loaded()),
        "a load by reference has every line of the batch"
    );
    product
}

// ---------------------------------------------------------------------------
// The unit of work
// ---------------------------------------------------------------------------

pub async fn a_commit_persists_products_batches_and_allocations(db: TestDatabase) {
    let database = db.open().await;
    let eta = NaiveDate::from_ymd_opt(2026, 12, 24).expect("date");
    insert_product(
        &database,
        "HIPSTER-WORKBENCH",
        vec![
            Batch::new("b1", "HIPSTER-WORKBENCH", 100, None),
            Batch::new("b2", "HIPSTER-WORKBENCH", 50, Some(eta)),
        ],
    )
    .await;

    let releaser = EventReleaser::new();
    let mut uow = database.unit_of_work(releaser.clone());
    let product = tracked(&mut uow, "HIPSTER-WORKBENCH").await;
    assert_eq!(
        product
            .allocate(line("o1", "HIPSTER-WORKBENCH", 10))
            .as_deref(),
        Some("b1")
    );
    assert!(
        releaser.drain().is_empty(),
        "nothing released before commit"
    );
    uow.commit().await.expect("committed");
    let released: Vec<_> = releaser.drain().iter().map(|e| e.name()).collect();
    assert_eq!(released, ["allocation.allocated"]);

    let product = load(&database, "HIPSTER-WORKBENCH")
        .await
        .expect("persisted");
    assert_eq!(
        product.version_number, 3,
        "two batches added, one allocation"
    );
    let batches: Vec<_> = product
        .batches
        .iter()
        .map(|b| b.reference.as_str())
        .collect();
    assert_eq!(batches, ["b1", "b2"], "in the order they were added");
    assert_eq!(
        product.batch("b1").expect("b1").allocations(),
        [line("o1", "HIPSTER-WORKBENCH", 10)]
    );
    assert_eq!(product.batch("b2").expect("b2").eta, Some(eta));
    assert_eq!(product.batch("b2").expect("b2").available_quantity(), 50);
}

pub async fn without_commit_nothing_is_written_or_released(db: TestDatabase) {
    let database = db.open().await;
    let releaser = EventReleaser::new();
    {
        let mut uow = database.unit_of_work(releaser.clone());
        let product = uow.products().add("LAMP");
        product.add_batch("b1", "LAMP", 5, None);
        product.allocate(line("o1", "LAMP", 1));
    }
    assert!(load(&database, "LAMP").await.is_none());
    assert!(releaser.drain().is_empty());
}

pub async fn a_rollback_writes_nothing(db: TestDatabase) {
    let database = db.open().await;
    insert_product(&database, "LAMP", vec![Batch::new("b1", "LAMP", 5, None)]).await;
    let mut uow = database.unit_of_work(EventReleaser::new());
    let product = tracked(&mut uow, "LAMP").await;
    product.allocate(line("o1", "LAMP", 1));
    uow.rollback().await.expect("rolled back");
    uow.commit().await.expect("an empty commit");
    let product = load(&database, "LAMP").await.expect("exists");
    assert!(product.batch("b1").expect("b1").allocations().is_empty());
}

pub async fn a_failed_commit_writes_nothing_and_releases_nothing(db: TestDatabase) {
    let database = db.open().await;
    insert_product(&database, "LAMP", vec![Batch::new("b1", "LAMP", 5, None)]).await;
    let releaser = EventReleaser::new();
    let mut stale = database.unit_of_work(releaser.clone());
    tracked(&mut stale, "LAMP").await;
    // Another unit of work changes the product first.
    let mut other = database.unit_of_work(EventReleaser::new());
    tracked(&mut other, "LAMP")
        .await
        .allocate(line("o1", "LAMP", 1));
    other.commit().await.expect("committed");

    let product = tracked(&mut stale, "LAMP").await;
    product.allocate(line("o2", "LAMP", 2));
    product.add_batch("b9", "LAMP", 9, None);
    let error = stale.commit().await.expect_err("stale");
    assert!(matches!(error, UowError::Conflict { .. }), "{error}");
    assert!(
        releaser.drain().is_empty(),
        "a failed commit releases nothing"
    );
    // Its events went with the failed transaction: committing its changes
    // again, without them, is refused.
    let again = stale.commit().await.expect_err("nothing more to commit");
    assert!(again.to_string().contains("failed already"), "{again}");
    let product = load(&database, "LAMP").await.expect("exists");
    assert_eq!(
        product.batch("b1").expect("b1").allocations(),
        [line("o1", "LAMP", 1)]
    );
    assert!(
        product.batch("b9").is_none(),
        "the failed commit's writes were rolled back"
    );
}

/// The reference's concurrent-update test: two units of work read the same
/// version, both allocate, both commit at once; exactly one commits.
pub async fn of_two_concurrent_allocations_exactly_one_commits(db: TestDatabase) {
    let database = db.open().await;
    insert_product(
        &database,
        "LAST-CHAIR",
        vec![Batch::new("b1", "LAST-CHAIR", 1, None)],
    )
    .await;
    let barrier = Arc::new(Barrier::new(2));
    let mut tasks = Vec::new();
    for orderid in ["o1", "o2"] {
        // Two processes: within one, the second would wait for the first.
        let database = db.open().await;
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut uow = database.unit_of_work(EventReleaser::new());
            let product = uow.products().get("LAST-CHAIR").await?.expect("exists");
            product.allocate(line(orderid, "LAST-CHAIR", 1));
            // Both have read version 0 before either writes.
            barrier.wait().await;
            uow.commit().await
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task finished"));
    }
    let committed = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(committed, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(UowError::Conflict { sku }) if sku == "LAST-CHAIR")),
        "the loser gets the typed conflict: {outcomes:?}"
    );
    let product = load(&database, "LAST-CHAIR").await.expect("exists");
    assert_eq!(product.version_number, 2, "its batch added, one allocation");
    assert_eq!(
        product.batch("b1").expect("b1").allocations().len(),
        1,
        "never oversold"
    );
}

/// Thirty allocations at once through the bootstrapped bus (commands retry
/// on conflicts) on ten units: exactly ten lines, each one committed once.
pub async fn concurrent_allocations_through_the_bus_never_oversell(db: TestDatabase) {
    let database = db.open().await;
    let bus = bootstrap(Adapters::for_database(&database)).expect("wiring");
    create_batch(&bus, "b1", "DESK", 10).await;
    let tasks: Vec<_> = (0..30)
        .map(|n| {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.dispatch(Allocate {
                    orderid: format!("o{n}"),
                    sku: "DESK".into(),
                    qty: 1,
                })
                .await
            })
        })
        .collect();
    let (mut allocated, mut out_of_stock) = (0, 0);
    for task in tasks {
        match task.await.expect("task finished") {
            Ok(Some(batch)) => {
                assert_eq!(batch, "b1");
                allocated += 1;
            }
            Ok(None) => out_of_stock += 1,
            Err(error) => panic!("no allocation fails: {error}"),
        }
    }
    // Ten units: exactly ten lines are allocated, the twenty others are
    // told the product is out of stock; none is lost to a race.
    assert_eq!((allocated, out_of_stock), (10, 20));
    let product = load(&database, "DESK").await.expect("exists");
    let lines = product.batch("b1").expect("b1").allocations().len();
    assert_eq!(
        lines, 10,
        "every committed allocation is stored, none oversold"
    );
}

pub async fn a_deallocation_is_persisted_and_the_rest_kept_in_order(db: TestDatabase) {
    let database = db.open().await;
    insert_product(&database, "RUG", vec![Batch::new("b1", "RUG", 50, None)]).await;
    let mut uow = database.unit_of_work(EventReleaser::new());
    let product = tracked(&mut uow, "RUG").await;
    for orderid in ["o1", "o2", "o3"] {
        product.allocate(line(orderid, "RUG", 10));
    }
    uow.commit().await.expect("committed");

    let mut uow = database.unit_of_work(EventReleaser::new());
    let product = uow
        .products()
        .get_with_batch_lines("b1")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(product.change_batch_quantity("b1", 25), Ok(()));
    uow.commit().await.expect("committed");

    let product = load(&database, "RUG").await.expect("exists");
    let batch = product.batch("b1").expect("b1");
    assert_eq!(batch.purchased_quantity(), 25);
    assert_eq!(
        batch.allocations(),
        [line("o1", "RUG", 10), line("o2", "RUG", 10)],
        "the last line was deallocated; the others kept their order"
    );
}

pub async fn a_batch_reference_finds_its_product(db: TestDatabase) {
    let database = db.open().await;
    insert_product(&database, "SOFA", vec![Batch::new("s1", "SOFA", 3, None)]).await;
    let mut uow = database.unit_of_work(EventReleaser::new());
    let sku = uow
        .products()
        .get_by_batchref("s1")
        .await
        .expect("read")
        .map(|product| product.sku.clone());
    assert_eq!(sku.as_deref(), Some("SOFA"));
    assert!(uow
        .products()
        .get_by_batchref("nope")
        .await
        .expect("read")
        .is_none());
}

pub async fn the_view_keeps_rows_in_order_and_forgets_removed_ones(db: TestDatabase) {
    let database = db.open().await;
    let view = (Adapters::for_database(&database).views)(&mut Scope::new());
    let change = |orderid, sku, qty, batchref, version| LineChange {
        orderid,
        sku,
        qty,
        batchref,
        version,
    };
    view.apply(change("o1", "LAMP", 3, Some("b1"), 1))
        .await
        .expect("added");
    view.apply(change("o1", "DESK", 1, Some("b7"), 1))
        .await
        .expect("added");
    view.apply(change("o2", "LAMP", 2, Some("b1"), 2))
        .await
        .expect("added");
    let row = |sku: &str, qty, batchref: &str| AllocationRow {
        sku: sku.into(),
        qty,
        batchref: batchref.into(),
    };
    assert_eq!(
        view.for_order("o1").await.expect("read"),
        [row("LAMP", 3, "b1"), row("DESK", 1, "b7")]
    );
    view.apply(change("o1", "LAMP", 3, None, 3))
        .await
        .expect("removed");
    assert_eq!(
        view.for_order("o1").await.expect("read"),
        [row("DESK", 1, "b7")]
    );
    assert_eq!(
        view.for_order("o2").await.expect("read"),
        [row("LAMP", 2, "b1")]
    );
    assert!(view.for_order("o3").await.expect("read").is_empty());
}

/// Events stored before events carried a version (version 0: a dead letter
/// or an undelivered event from before the upgrade) leave the view as the
/// migration rebuilt it from the write model: no phantom row, no row lost.
pub async fn an_event_from_before_versions_leaves_the_view_as_it_is(db: TestDatabase) {
    let database = db.open().await;
    let bus = bootstrap(Adapters::for_database(&database)).expect("wiring");
    create_batch(&bus, "b1", "LAMP", 10).await;
    assert_eq!(allocate(&bus, "o1", 3).await.as_deref(), Some("b1"));
    let old: example_app::domain::events::Allocated =
        serde_json::from_str(r#"{"orderid": "o-old", "sku": "LAMP", "qty": 3, "batchref": "b1"}"#)
            .expect("an event without a version still decodes");
    assert_eq!(old.version, 0);
    bus.publish(old).await.expect("published");
    bus.publish(example_app::domain::events::Deallocated {
        orderid: "o1".into(),
        sku: "LAMP".into(),
        qty: 3,
        version: 0,
    })
    .await
    .expect("published");
    let view = (Adapters::for_database(&database).views)(&mut Scope::new());
    assert!(view.for_order("o-old").await.expect("read").is_empty());
    assert_eq!(
        view.for_order("o1").await.expect("read"),
        [AllocationRow {
            sku: "LAMP".into(),
            qty: 3,
            batchref: "b1".into()
        }]
    );
}

/// The view keeps the newest change per line, whatever order the changes
/// arrive in and however often: two lines of one order and product are two
/// rows; an old allocation arriving after the deallocation that followed
/// it changes nothing; a redelivery changes nothing.
pub async fn the_view_is_the_same_whatever_order_its_changes_arrive_in(db: TestDatabase) {
    let database = db.open().await;
    let view = (Adapters::for_database(&database).views)(&mut Scope::new());
    // One order, two lines of LAMP (3 and 5 units) in b1; b1 shrinks and the
    // 5-unit line moves to b2; the 3-unit line stays.
    let changes = [
        ("o1", 3, Some("b1"), 1),
        ("o1", 5, Some("b1"), 2),
        ("o1", 5, None, 3),
        ("o1", 5, Some("b2"), 4),
    ];
    // Every order of the four changes, each applied twice.
    let orders = [
        [0, 1, 2, 3],
        [3, 2, 1, 0],
        [2, 0, 3, 1],
        [1, 3, 0, 2],
        [3, 0, 2, 1],
    ];
    for (run, order) in orders.iter().enumerate() {
        let orderid = format!("o-run{run}");
        for index in order.iter().chain(order.iter()) {
            let (_, qty, batchref, version) = changes[*index];
            view.apply(LineChange {
                orderid: &orderid,
                sku: "LAMP",
                qty,
                batchref,
                version,
            })
            .await
            .expect("applied");
        }
        let mut rows = view.for_order(&orderid).await.expect("read");
        rows.sort_by_key(|row| row.qty);
        assert_eq!(
            rows,
            [
                AllocationRow {
                    sku: "LAMP".into(),
                    qty: 3,
                    batchref: "b1".into()
                },
                AllocationRow {
                    sku: "LAMP".into(),
                    qty: 5,
                    batchref: "b2".into()
                }
            ],
            "order {order:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// The outbox
// ---------------------------------------------------------------------------

async fn create_batch(bus: &Bus, reference: &str, sku: &str, qty: u32) {
    bus.dispatch(CreateBatch {
        reference: reference.into(),
        sku: sku.into(),
        qty,
        eta: None,
    })
    .await
    .expect("batch created");
}

async fn allocate(bus: &Bus, orderid: &str, qty: u32) -> Option<String> {
    bus.dispatch(Allocate {
        orderid: orderid.into(),
        sku: "LAMP".into(),
        qty,
    })
    .await
    .expect("allocation ran")
}

fn orders(messages: &[OutboundMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            let payload: serde_json::Value = serde_json::from_str(&m.payload).expect("JSON");
            payload["orderid"].as_str().expect("orderid").to_owned()
        })
        .collect()
}

/// The outbox's unsent messages, oldest first.
async fn unsent(database: &Database) -> Vec<OutboundMessage> {
    match database {
        Database::Sqlite(db) => db.store().outbox().unsent(10).await,
        Database::Postgres(db) => db.store().outbox().unsent(10).await,
    }
    .expect("read")
}

/// One relay round to `broker`.
async fn relay_once(database: &Database, broker: &InMemoryBroker) -> usize {
    match database {
        Database::Sqlite(db) => db.store().outbox().relay_once(broker, 10).await,
        Database::Postgres(db) => db.store().outbox().relay_once(broker, 10).await,
    }
    .expect("relayed")
}

pub async fn an_allocation_writes_its_event_to_the_outbox_and_the_relay_publishes_it_once(
    db: TestDatabase,
) {
    let database = db.open().await;
    let bus = bootstrap(Adapters::for_database(&database)).expect("wiring");
    create_batch(&bus, "b1", "LAMP", 10).await;
    assert_eq!(allocate(&bus, "o1", 4).await.as_deref(), Some("b1"));
    assert_eq!(
        allocate(&bus, "o2", 99).await,
        None,
        "out of stock: internal, not in the outbox"
    );

    let unsent = unsent(&database).await;
    assert_eq!(unsent.len(), 1);
    assert_eq!(unsent[0].stream, "line_allocated");
    assert_eq!(unsent[0].name, "line_allocated");
    let payload: serde_json::Value = serde_json::from_str(&unsent[0].payload).expect("JSON");
    assert_eq!(
        payload,
        json!({"orderid": "o1", "sku": "LAMP", "qty": 4, "batchref": "b1", "version": 2})
    );
    assert!(unsent[0].causation_id.is_some());

    let broker = InMemoryBroker::default();
    assert_eq!(relay_once(&database, &broker).await, 1);
    assert_eq!(relay_once(&database, &broker).await, 0, "sent once");
    let published = broker.waiting("line_allocated");
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].id, unsent[0].id, "the message keeps its id");
    assert!(self::unsent(&database).await.is_empty());
}

pub async fn an_event_committed_before_a_crash_is_published_after_the_restart(db: TestDatabase) {
    {
        let database = db.open().await;
        let bus = bootstrap(Adapters::for_database(&database)).expect("wiring");
        create_batch(&bus, "b1", "LAMP", 10).await;
        allocate(&bus, "o1", 4).await;
        // The process dies here: committed, never relayed.
        database.close().await;
    }
    let database = db.open().await;
    let broker = InMemoryBroker::default();
    assert_eq!(relay_once(&database, &broker).await, 1);
    assert_eq!(orders(&broker.waiting("line_allocated")), ["o1"]);
}

pub async fn a_lost_race_writes_nothing_to_the_outbox(db: TestDatabase) {
    let database = db.open().await;
    let bus = bootstrap(Adapters::for_database(&database)).expect("wiring");
    create_batch(&bus, "b1", "LAMP", 10).await;
    let mut first = database.unit_of_work(EventReleaser::new());
    let mut second = database.unit_of_work(EventReleaser::new());
    for (uow, orderid) in [(&mut first, "o1"), (&mut second, "o2")] {
        let product = tracked(uow, "LAMP").await;
        product.allocate(line(orderid, "LAMP", 1));
    }
    first.commit().await.expect("committed");
    assert!(second.commit().await.is_err(), "the second one lost");
    let unsent = unsent(&database).await;
    assert_eq!(orders(&unsent), ["o1"], "only the committed change's event");
}

// ---------------------------------------------------------------------------
// The inbox
// ---------------------------------------------------------------------------

pub async fn a_redelivered_message_is_handled_once(db: TestDatabase) {
    let database = db.open().await;
    let bus = bootstrap(Adapters::for_database(&database)).expect("wiring");
    create_batch(&bus, "b1", "LAMP", 10).await;

    let id = MessageId::new();
    let message = OutboundMessage {
        id,
        stream: "change_batch_quantity".into(),
        name: "change_batch_quantity".into(),
        payload: r#"{"batchref": "b1", "qty": 7}"#.into(),
        correlation_id: id,
        causation_id: None,
    };
    let broker = InMemoryBroker::default();
    broker.publish(&message).await.expect("published");
    broker.publish(&message).await.expect("published"); // delivered twice

    let mut consumer = Consumer::new(bus.clone(), broker.subscribe("change_batch_quantity"))
        .with_inbox(database.inbox());
    let handled = consumer.poll_once().await.expect("polled");
    assert_eq!(handled, [Handled::Done, Handled::Duplicate]);
    assert_eq!(broker.pending(), 0, "both acknowledged");
    assert!(broker.dead_letters("change_batch_quantity").is_empty());
    let product = load(&database, "LAMP").await.expect("exists");
    assert_eq!(product.version_number, 2, "its batch added, changed once");
    assert_eq!(product.batch("b1").expect("b1").purchased_quantity(), 7);
}

/// The stream `change_batch_quantity` takes only that command, checked as
/// over HTTP: an internal event (a fake `Deallocated` would allocate stock
/// to an order never placed), another stream's event (a fake `Allocated`
/// would write a row into the view), a quantity of 0 and a reference with a
/// NUL are each dead-lettered with the reason, and change nothing.
pub async fn the_stream_takes_only_its_own_messages_checked_as_over_http(db: TestDatabase) {
    let database = db.open().await;
    let bus = bootstrap(Adapters::for_database(&database)).expect("wiring");
    create_batch(&bus, "b1", "LAMP", 10).await;
    let broker = InMemoryBroker::default();
    let cases = [
        (
            "allocation.deallocated",
            r#"{"orderid": "ghost", "sku": "LAMP", "qty": 1, "version": 99}"#,
            "allocation.deallocated",
        ),
        (
            "allocation.allocated",
            r#"{"orderid": "ghost", "sku": "LAMP", "qty": 1, "batchref": "b1", "version": 99}"#,
            "line_allocated",
        ),
        (
            "allocation.change_batch_quantity",
            r#"{"batchref": "b1", "qty": 0}"#,
            "qty must be a whole number from 1",
        ),
        (
            "allocation.change_batch_quantity",
            r#"{"batchref": "b\u0000", "qty": 5}"#,
            "batchref must not contain control or invisible formatting characters",
        ),
    ];
    for (name, payload, _) in &cases {
        let id = MessageId::new();
        broker
            .publish(&OutboundMessage {
                id,
                stream: "change_batch_quantity".into(),
                name: (*name).into(),
                payload: (*payload).into(),
                correlation_id: id,
                causation_id: None,
            })
            .await
            .expect("published");
    }
    let mut consumer = Consumer::new(bus.clone(), broker.subscribe("change_batch_quantity"))
        .with_inbox(database.inbox());
    let handled = consumer.poll_once().await.expect("polled");
    assert_eq!(handled.len(), cases.len());
    for (outcome, (name, payload, reason)) in handled.iter().zip(&cases) {
        match outcome {
            Handled::DeadLettered(said) => {
                assert!(
                    said.contains(reason),
                    "{name} {payload}: {said:?} lacks {reason:?}"
                )
            }
            other => panic!("{name} {payload} was not refused: {other:?}"),
        }
    }
    assert_eq!(
        broker.dead_letters("change_batch_quantity").len(),
        cases.len()
    );
    let product = load(&database, "LAMP").await.expect("exists");
    let batch = product.batch("b1").expect("b1");
    assert_eq!(batch.purchased_quantity(), 10, "no change went through");
    assert!(batch.allocations().is_empty(), "nothing allocated to ghost");
    let view = (Adapters::for_database(&database).views)(&mut Scope::new());
    assert!(view.for_order("ghost").await.expect("read").is_empty());
}

/// An allocation whose process died between its commit and its handlers:
/// the restarted service delivers its `Allocated` to the view, once (with
/// streams, the view has it at once: a read catches its projection up).
pub async fn an_allocation_committed_before_a_crash_reaches_the_view_after_the_restart(
    db: TestDatabase,
) {
    {
        let database = db.open().await;
        insert_product(&database, "LAMP", vec![Batch::new("b1", "LAMP", 10, None)]).await;
        let mut uow = database.unit_of_work(EventReleaser::new());
        tracked(&mut uow, "LAMP")
            .await
            .allocate(line("o1", "LAMP", 3));
        uow.commit().await.expect("committed");
        // The process dies here: committed, its events never handled (the
        // releaser belongs to no bus), and it never said goodbye.
    }
    let database = db.open().await;
    let view = (Adapters::for_database(&database).views)(&mut Scope::new());
    let before = view.for_order("o1").await.expect("read");
    match database.storage() {
        // The handler that writes the view has not run.
        Storage::State => assert!(before.is_empty(), "{before:?}"),
        // The view is the stream's: a read catches its projection up,
        // whatever happened to the handlers.
        Storage::Events => assert_eq!(before.len(), 1, "{before:?}"),
    }
    let bus = bootstrap(Adapters::for_database(&database)).expect("wiring");
    let recovery = database.start_recovery(&bus).expect("storable events");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while view.for_order("o1").await.expect("read").is_empty() {
        assert!(std::time::Instant::now() < deadline, "not delivered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    bus.shutdown(std::time::Duration::from_secs(5))
        .await
        .expect("nothing left running");
    recovery.stop().await;
    assert_eq!(
        view.for_order("o1").await.expect("read"),
        [AllocationRow {
            sku: "LAMP".into(),
            qty: 3,
            batchref: "b1".into()
        }],
        "once"
    );
}

// ---------------------------------------------------------------------------
// The dead letters
// ---------------------------------------------------------------------------

struct DeadLetterApp {
    bus: Bus,
    notifications: Arc<RecordingNotifications>,
    dead_letters: Arc<dyn DeadLetterStore>,
    /// Where the notifier's retries wait, on `clock`.
    scheduler: Arc<InMemoryScheduler>,
    clock: VirtualClock,
}

/// The in-memory write model, with the database's dead-letter store.
fn dead_letter_app(database: &Database) -> DeadLetterApp {
    let store = Arc::new(InMemoryProducts::default());
    let notifications = Arc::new(RecordingNotifications::default());
    let dead_letters = database.dead_letters();
    let clock = VirtualClock::new();
    let scheduler = Arc::new(InMemoryScheduler::with_clock(clock.clone()));
    let bus = bootstrap(Adapters {
        notifications: notifications.clone(),
        dead_letters: dead_letters.clone(),
        scheduler: scheduler.clone(),
        ..Adapters::in_memory(&store)
    })
    .expect("wiring");
    DeadLetterApp {
        bus,
        notifications,
        dead_letters,
        scheduler,
        clock,
    }
}

/// Allocates more than there is: `OutOfStock` is released.
async fn run_out_of_stock(bus: &Bus) {
    create_batch(bus, "b1", "LAMP", 1).await;
    assert_eq!(allocate(bus, "o1", 5).await, None, "out of stock");
}

pub async fn a_failing_notification_is_kept_and_replayed_once_the_notifier_is_back(
    db: TestDatabase,
) {
    let database = db.open().await;
    let app = dead_letter_app(&database);
    app.notifications.fail("smtp: connection refused");
    run_out_of_stock(&app.bus).await;

    // One attempt in the dispatch; the others wait in the scheduler.
    assert_eq!(app.notifications.refused(), 1);
    assert!(app
        .dead_letters
        .list(false)
        .await
        .expect("listed")
        .is_empty());
    // Retried per policy, then kept, with everything needed to replay it.
    app.clock
        .advance_and_fire(
            std::time::Duration::from_secs(3600),
            &*app.scheduler,
            &app.bus,
        )
        .await
        .expect("fired");
    assert_eq!(app.notifications.refused(), EVENT_HANDLER_ATTEMPTS);
    let letters = app.dead_letters.list(false).await.expect("listed");
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.record.message_name, "allocation.out_of_stock");
    assert_eq!(
        letter.record.handler,
        "example_app::service_layer::handlers::send_out_of_stock_notification"
    );
    assert!(
        letter.record.location.contains("handlers.rs:"),
        "{}",
        letter.record.location
    );
    assert_eq!(
        letter.record.error,
        "cannot notify stock@made.com: smtp: connection refused"
    );
    assert_eq!(letter.record.attempts, EVENT_HANDLER_ATTEMPTS);
    assert!(
        (Utc::now() - letter.record.failed_at).num_seconds().abs() < 60,
        "failed just now: {}",
        letter.record.failed_at
    );
    assert_eq!(letter.record.payload.as_deref(), Some(r#"{"sku":"LAMP"}"#));
    assert_eq!(
        letter.record.causation_id.as_deref(),
        Some(letter.record.correlation_id.as_str()),
        "caused by the command, which opened the flow"
    );

    // Still down: the replay fails, the letter stays, with the new error.
    let error = arch_events_sqlx::replay(&app.bus, &*app.dead_letters, letter.id)
        .await
        .expect_err("still down");
    assert!(
        matches!(error, DeadLetterError::StillFailing { .. }),
        "{error}"
    );
    let kept = app
        .dead_letters
        .get(letter.id)
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(kept.replayed_at, None);
    assert!(
        kept.replay_error
            .as_deref()
            .expect("the replay's error")
            .contains("connection refused"),
        "{kept:?}"
    );
    assert!(app.notifications.sent().is_empty());

    // Back up: the replay succeeds, once.
    app.notifications.recover();
    let replayed = arch_events_sqlx::replay(&app.bus, &*app.dead_letters, letter.id)
        .await
        .expect("replayed");
    assert!(replayed.replayed_at.is_some());
    assert_eq!(replayed.replay_error, None);
    assert_eq!(
        app.notifications.sent(),
        [(
            "stock@made.com".to_owned(),
            "Out of stock for LAMP".to_owned()
        )]
    );
    let again = arch_events_sqlx::replay(&app.bus, &*app.dead_letters, letter.id)
        .await
        .expect_err("replayed already");
    assert!(
        matches!(again, DeadLetterError::AlreadyReplayed(_)),
        "{again}"
    );
    assert_eq!(app.notifications.sent().len(), 1, "sent exactly once");
    assert!(app
        .dead_letters
        .list(false)
        .await
        .expect("listed")
        .is_empty());
    assert_eq!(app.dead_letters.list(true).await.expect("listed").len(), 1);
}

pub async fn a_dead_letter_is_claimed_once_and_an_unknown_one_is_not_found(db: TestDatabase) {
    let database = db.open().await;
    let app = dead_letter_app(&database);
    let error = arch_events_sqlx::replay(&app.bus, &*app.dead_letters, 42)
        .await
        .expect_err("unknown");
    assert!(matches!(error, DeadLetterError::NotFound(42)));

    let id = app
        .dead_letters
        .add(DeadLetterRecord {
            message_name: "allocation.out_of_stock".into(),
            handler: "h".into(),
            location: "src/h.rs:1".into(),
            error: "down".into(),
            attempts: 3,
            failed_at: Utc::now(),
            message_id: MessageId::new().to_string(),
            correlation_id: MessageId::new().to_string(),
            causation_id: None,
            payload: Some(r#"{"sku":"LAMP"}"#.into()),
        })
        .await
        .expect("added");
    assert!(app.dead_letters.claim(id).await.expect("claimed"));
    assert!(
        !app.dead_letters.claim(id).await.expect("answered"),
        "two replays at once"
    );
    let busy = arch_events_sqlx::replay(&app.bus, &*app.dead_letters, id)
        .await
        .expect_err("claimed");
    assert!(matches!(busy, DeadLetterError::AlreadyReplayed(_)));
}

pub async fn a_working_notifier_leaves_no_dead_letter(db: TestDatabase) {
    let database = db.open().await;
    let app = dead_letter_app(&database);
    run_out_of_stock(&app.bus).await;
    assert_eq!(app.notifications.sent().len(), 1);
    assert!(app
        .dead_letters
        .list(true)
        .await
        .expect("listed")
        .is_empty());
}
