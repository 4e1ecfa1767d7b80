//! The handlers, through the bus, on the in-memory adapters: the service
//! layer's behaviour without a database.

// A test whose setup fails should panic, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use arch_events::testing::{HandlerRun, Recorder};
use arch_events::{Bus, DispatchError};
use chrono::NaiveDate;
use example_app::adapters::memory::InMemoryProducts;
use example_app::adapters::notifications::RecordingNotifications;
use example_app::domain::commands::{Allocate, ChangeBatchQuantity, CreateBatch};
use example_app::domain::events::Allocated;
use example_app::service_layer::ServiceError;
use example_app::views::{AllocationRow, Allocations};
use example_app::{bootstrap, Adapters};

struct App {
    bus: Bus,
    store: Arc<InMemoryProducts>,
    notifications: Arc<RecordingNotifications>,
    /// What the bus released and which handlers ran.
    recorder: Recorder,
}

fn app() -> App {
    let store = Arc::new(InMemoryProducts::default());
    let notifications = Arc::new(RecordingNotifications::default());
    let bus = bootstrap(Adapters {
        notifications: notifications.clone(),
        ..Adapters::in_memory(&store)
    })
    .expect("the app's wiring is valid");
    App {
        recorder: Recorder::attach(&bus),
        bus,
        store,
        notifications,
    }
}

fn batch(reference: &str, sku: &str, qty: u32, eta: Option<NaiveDate>) -> CreateBatch {
    CreateBatch {
        reference: reference.into(),
        sku: sku.into(),
        qty,
        eta,
    }
}

fn allocate(orderid: &str, sku: &str, qty: u32) -> Allocate {
    Allocate {
        orderid: orderid.into(),
        sku: sku.into(),
        qty,
    }
}

fn tomorrow() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 27).expect("valid date")
}

#[tokio::test]
async fn adding_a_batch_for_a_new_product_creates_it() {
    let app = app();
    app.bus
        .dispatch(batch("b1", "CRUNCHY-ARMCHAIR", 100, None))
        .await
        .expect("added");
    let product = app
        .store
        .product("CRUNCHY-ARMCHAIR")
        .expect("the product exists");
    assert_eq!(product.batches.len(), 1);
    assert_eq!(app.store.commits(), 1);
}

#[tokio::test]
async fn adding_a_batch_for_an_existing_product_joins_it() {
    let app = app();
    app.bus
        .dispatch(batch("b1", "GARISH-RUG", 100, None))
        .await
        .expect("added");
    app.bus
        .dispatch(batch("b2", "GARISH-RUG", 99, None))
        .await
        .expect("added");
    let product = app.store.product("GARISH-RUG").expect("the product exists");
    let references: Vec<_> = product
        .batches
        .iter()
        .map(|b| b.reference.as_str())
        .collect();
    assert_eq!(references, ["b1", "b2"]);
}

#[tokio::test]
async fn adding_a_batch_with_a_taken_reference_is_refused() {
    let app = app();
    app.bus
        .dispatch(batch("b1", "RUG", 1, None))
        .await
        .expect("added");
    let error = app
        .bus
        .dispatch(batch("b1", "LAMP", 1, None))
        .await
        .expect_err("taken");
    assert!(matches!(error, DispatchError::Handler(ServiceError::DuplicateBatch(r)) if r == "b1"));
    assert!(app.store.product("LAMP").is_none(), "nothing was written");
}

#[tokio::test]
async fn allocating_returns_the_batch_and_commits() {
    let app = app();
    app.bus
        .dispatch(batch("batch1", "COMPLICATED-LAMP", 100, None))
        .await
        .expect("added");
    let batchref = app
        .bus
        .dispatch(allocate("o1", "COMPLICATED-LAMP", 10))
        .await
        .expect("allocated");
    assert_eq!(batchref.as_deref(), Some("batch1"));
    assert_eq!(app.store.commits(), 2);
    let product = app.store.product("COMPLICATED-LAMP").expect("exists");
    assert_eq!(
        product.batch("batch1").expect("batch").available_quantity(),
        90
    );
}

#[tokio::test]
async fn allocating_an_invalid_sku_is_the_typed_error() {
    let app = app();
    app.bus
        .dispatch(batch("b1", "AREALSKU", 100, None))
        .await
        .expect("added");
    let error = app
        .bus
        .dispatch(allocate("o1", "NONEXISTENTSKU", 10))
        .await
        .expect_err("no such sku");
    match error {
        DispatchError::Handler(ServiceError::InvalidSku(sku)) => assert_eq!(sku, "NONEXISTENTSKU"),
        other => panic!("expected InvalidSku, got {other:?}"),
    }
    assert_eq!(
        app.store.commits(),
        1,
        "the failed allocation committed nothing"
    );
}

#[tokio::test]
async fn out_of_stock_sends_a_notification() {
    let app = app();
    app.bus
        .dispatch(batch("b1", "POPULAR-CURTAINS", 9, None))
        .await
        .expect("added");
    let batchref = app
        .bus
        .dispatch(allocate("o1", "POPULAR-CURTAINS", 10))
        .await
        .expect("the command itself succeeds");
    assert_eq!(batchref, None);
    assert_eq!(
        app.notifications.sent(),
        [(
            "stock@made.com".to_owned(),
            "Out of stock for POPULAR-CURTAINS".to_owned()
        )]
    );
}

#[tokio::test]
async fn allocations_reach_the_read_model() {
    let app = app();
    app.bus
        .dispatch(batch("b1", "SQUEAKY-CHAIR", 10, None))
        .await
        .expect("added");
    app.bus
        .dispatch(allocate("o1", "SQUEAKY-CHAIR", 2))
        .await
        .expect("allocated");
    let rows = app
        .bus
        .query(Allocations {
            orderid: "o1".into(),
        })
        .await
        .expect("answered");
    assert_eq!(
        rows,
        [AllocationRow {
            sku: "SQUEAKY-CHAIR".into(),
            qty: 2,
            batchref: "b1".into()
        }]
    );
}

#[tokio::test]
async fn changing_a_batch_quantity_changes_it() {
    let app = app();
    app.bus
        .dispatch(batch("b1", "ADORABLE-SETTEE", 100, None))
        .await
        .expect("added");
    app.bus
        .dispatch(ChangeBatchQuantity {
            reference: "b1".into(),
            qty: 50,
        })
        .await
        .expect("changed");
    let product = app.store.product("ADORABLE-SETTEE").expect("exists");
    assert_eq!(product.batch("b1").expect("batch").available_quantity(), 50);
}

#[tokio::test]
async fn changing_an_unknown_batch_is_the_typed_error() {
    let app = app();
    let error = app
        .bus
        .dispatch(ChangeBatchQuantity {
            reference: "nope".into(),
            qty: 5,
        })
        .await
        .expect_err("no such batch");
    assert!(matches!(error, DispatchError::Handler(ServiceError::UnknownBatch(r)) if r == "nope"));
}

#[tokio::test]
async fn reducing_a_batch_reallocates_its_lines_if_necessary() {
    let app = app();
    app.bus
        .dispatch(batch("in-stock", "INDIFFERENT-TABLE", 50, None))
        .await
        .expect("added");
    app.bus
        .dispatch(batch("shipping", "INDIFFERENT-TABLE", 50, Some(tomorrow())))
        .await
        .expect("added");
    for orderid in ["order1", "order2"] {
        let batchref = app
            .bus
            .dispatch(allocate(orderid, "INDIFFERENT-TABLE", 20))
            .await
            .expect("allocated");
        assert_eq!(batchref.as_deref(), Some("in-stock"));
    }
    let product = app.store.product("INDIFFERENT-TABLE").expect("exists");
    assert_eq!(
        product
            .batch("in-stock")
            .expect("batch")
            .available_quantity(),
        10
    );

    app.bus
        .dispatch(ChangeBatchQuantity {
            reference: "in-stock".into(),
            qty: 25,
        })
        .await
        .expect("changed");

    // One order moved to the shipment: 25 - 20 = 5 left here, 50 - 20 = 30 there.
    let product = app.store.product("INDIFFERENT-TABLE").expect("exists");
    assert_eq!(
        product
            .batch("in-stock")
            .expect("batch")
            .available_quantity(),
        5
    );
    assert_eq!(
        product
            .batch("shipping")
            .expect("batch")
            .available_quantity(),
        30
    );

    // The read model followed: the moved order now points at the shipment.
    let mut moved = Vec::new();
    for orderid in ["order1", "order2"] {
        let rows = app
            .bus
            .query(Allocations {
                orderid: orderid.into(),
            })
            .await
            .expect("answered");
        assert_eq!(rows.len(), 1, "{orderid}: {rows:?}");
        moved.push(rows[0].batchref.clone());
    }
    moved.sort();
    assert_eq!(moved, ["in-stock", "shipping"]);
}

#[tokio::test]
async fn a_concurrent_change_loses_with_a_conflict_and_writes_nothing() {
    use arch_events::UnitOfWork as _;
    use example_app::adapters::memory::InMemoryUnitOfWork;
    use example_app::domain::model::OrderLine;
    use example_app::service_layer::unit_of_work::{UnitOfWork, UowError};

    let app = app();
    app.bus
        .dispatch(batch("b1", "LAMP", 10, None))
        .await
        .expect("added");
    let mut first = InMemoryUnitOfWork::new(app.store.clone(), arch_events::EventReleaser::new());
    let mut second = InMemoryUnitOfWork::new(app.store.clone(), arch_events::EventReleaser::new());
    for (uow, orderid) in [(&mut first, "o1"), (&mut second, "o2")] {
        let product = uow
            .products()
            .get("LAMP")
            .await
            .expect("read")
            .expect("exists");
        product.allocate(OrderLine {
            orderid: orderid.into(),
            sku: "LAMP".into(),
            qty: 10,
        });
    }
    first.commit().await.expect("the first commits");
    let error = second.commit().await.expect_err("the second conflicts");
    assert!(
        matches!(error, UowError::Conflict { ref sku } if sku == "LAMP"),
        "{error}"
    );
    let product = app.store.product("LAMP").expect("exists");
    assert_eq!(
        product.batch("b1").expect("batch").allocations().len(),
        1,
        "never oversold"
    );
}

/// Wraps the fake unit of work: the commit attempt numbered `fail_attempt`
/// (counted across all units of work) loses a concurrency race.
mod racing {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use arch_events::{async_trait, MessageContext};
    use example_app::adapters::memory::{InMemoryProducts, InMemoryUnitOfWork};
    use example_app::service_layer::unit_of_work::{
        ProductRepository, UnitOfWork, UnitOfWorkFactory, UowError,
    };

    /// One commit: its number, the message its call handled, which attempt
    /// of that call it was, and whether it lost the race.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Commit {
        pub number: usize,
        pub message: arch_events::MessageId,
        pub attempt: u32,
        pub lost: bool,
    }

    pub struct Racing {
        inner: InMemoryUnitOfWork,
        context: MessageContext,
        attempts: Arc<AtomicUsize>,
        fail_attempt: usize,
        commits: Arc<Mutex<Vec<Commit>>>,
    }

    #[async_trait]
    impl arch_events::UnitOfWork for Racing {
        type Error = UowError;
        async fn commit(&mut self) -> Result<(), UowError> {
            let number = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
            let lost = number == self.fail_attempt;
            self.commits.lock().unwrap().push(Commit {
                number,
                message: self.context.message_id(),
                attempt: self.context.attempt(),
                lost,
            });
            if lost {
                // Lost: what it changed is not stored.
                self.inner.rollback().await?;
                return Err(UowError::Conflict {
                    sku: "raced".into(),
                });
            }
            self.inner.commit().await
        }
        async fn rollback(&mut self) -> Result<(), UowError> {
            self.inner.rollback().await
        }
    }

    impl UnitOfWork for Racing {
        fn products(&mut self) -> &mut dyn ProductRepository {
            self.inner.products()
        }
    }

    /// Units of work over `store` whose `fail_attempt`th commit (counting
    /// every unit of work's) loses a race; and the log of the commits.
    pub fn factory(
        store: Arc<InMemoryProducts>,
        fail_attempt: usize,
    ) -> (UnitOfWorkFactory, Arc<Mutex<Vec<Commit>>>) {
        let attempts = Arc::new(AtomicUsize::new(0));
        let commits = Arc::new(Mutex::new(Vec::new()));
        let log = commits.clone();
        let factory: UnitOfWorkFactory = Arc::new(move |scope: &mut arch_events::Scope| {
            Box::new(Racing {
                inner: InMemoryUnitOfWork::new(store.clone(), scope.releaser()),
                context: scope.context(),
                attempts: attempts.clone(),
                fail_attempt,
                commits: commits.clone(),
            })
        });
        (factory, log)
    }
}

#[tokio::test]
async fn a_reallocation_that_loses_a_race_is_tried_again() {
    let store = Arc::new(InMemoryProducts::default());
    // Commits: 1 and 2 add the batches, 3 allocates, 4 changes the quantity,
    // 5 is the reallocation's first attempt: it loses a race.
    let (unit_of_work, commits) = racing::factory(store.clone(), 5);
    let bus = bootstrap(Adapters {
        unit_of_work,
        ..Adapters::in_memory(&store)
    })
    .expect("valid wiring");
    bus.dispatch(batch("in-stock", "TABLE", 10, None))
        .await
        .expect("added");
    bus.dispatch(batch("shipping", "TABLE", 10, Some(tomorrow())))
        .await
        .expect("added");
    bus.dispatch(allocate("o1", "TABLE", 8))
        .await
        .expect("allocated");
    bus.dispatch(ChangeBatchQuantity {
        reference: "in-stock".into(),
        qty: 5,
    })
    .await
    .expect("changed");
    let product = store.product("TABLE").expect("exists");
    assert_eq!(
        product
            .batch("shipping")
            .expect("batch")
            .available_quantity(),
        2,
        "the line was reallocated on the second attempt"
    );
    // The race happened, and the retry is what won it: the reallocation's
    // first attempt lost commit 5, its second attempt made commit 6.
    let commits = commits.lock().unwrap().clone();
    assert_eq!(commits.len(), 6, "{commits:?}");
    let (lost, won) = (commits[4], commits[5]);
    assert!(lost.lost && !won.lost, "{commits:?}");
    assert_eq!((lost.attempt, won.attempt), (1, 2), "{commits:?}");
    assert_eq!(lost.message, won.message, "one reallocation, tried twice");
}

#[tokio::test]
async fn a_smaller_batch_releases_deallocated_then_reallocates_and_the_read_model_follows() {
    let app = app();
    for (reference, qty) in [("small", 10), ("big", 50)] {
        app.bus
            .dispatch(batch(reference, "VASE", qty, None))
            .await
            .expect("added");
    }
    app.bus
        .dispatch(allocate("o1", "VASE", 8))
        .await
        .expect("allocated");
    app.recorder.clear();

    app.bus
        .dispatch(ChangeBatchQuantity {
            reference: "small".into(),
            qty: 5,
        })
        .await
        .expect("changed");

    // No sleeping: the dispatch returned after its whole cascade ran.
    assert_eq!(
        app.recorder.event_names(),
        [
            "allocation.batch_quantity_changed",
            "allocation.deallocated",
            "allocation.allocated"
        ]
    );
    assert_eq!(
        app.recorder.events_of::<Allocated>(),
        [Allocated {
            orderid: "o1".into(),
            sku: "VASE".into(),
            qty: 8,
            batchref: "big".into(),
            // `small` added (1), `big` added (2), allocated (3),
            // `small` changed (4), reallocated (5).
            version: 5,
        }]
    );
    let ran = |handler: &'static str, message: &'static str| HandlerRun {
        handler,
        message,
        attempts: 1,
        ok: true,
    };
    assert_eq!(
        app.recorder.runs(),
        [
            ran(
                "example_app::service_layer::handlers::change_batch_quantity",
                "allocation.change_batch_quantity"
            ),
            ran(
                "example_app::service_layer::handlers::reallocate",
                "allocation.deallocated"
            ),
            ran(
                "example_app::views::remove_allocation_from_read_model",
                "allocation.deallocated"
            ),
            // The order's shipment watch takes the line's new batch.
            ran(
                "example_app::service_layer::shipment::ShipmentWatch::allocated",
                "allocation.allocated"
            ),
            ran(
                "example_app::views::add_allocation_to_read_model",
                "allocation.allocated"
            ),
        ]
    );
    assert!(app.recorder.failures().is_empty());
}
