//! The shipment watch: an order's allocations wait for its shipment, and
//! are released when it is late. In process on SQLite with the durable
//! scheduler on a virtual clock (no test sleeps for a deadline), in both
//! storages; then the real binary, killed between the allocation and the
//! deadline. Two processes sharing PostgreSQL are in the tests package
//! (`tests/tests/postgres.rs`, `--features services`).

// A test whose setup fails should panic, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arch_events::saga::{SagaError, SagaRecord, SagaStore};
use arch_events::schedule::{Scheduler, VirtualClock};
use arch_events::{Bus, DispatchError};
use arch_events_sqlx::SqlScheduler;
use arch_events_test_support::in_process::{self, InProcess};
use arch_events_test_support::server::{self, add_batch, get, post, Server};
use example_app::adapters::database::Database;
use example_app::adapters::storage::Storage;
use example_app::domain::commands::{Allocate, ConfirmShipment, CreateBatch};
use example_app::domain::events::ShipmentOverdue;
use example_app::service_layer::shipment::ShipmentDeadline;
use example_app::views::{AllocationRow, Allocations};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Sqlite;

/// The binary under test.
const BINARY: &str = env!("CARGO_BIN_EXE_example-app");

const DEADLINE: Duration = Duration::from_secs(3600);

/// The service on a fresh SQLite file kept as `storage` says, its
/// scheduler on `clock`.
struct Service {
    bus: Bus,
    scheduler: Arc<SqlScheduler<Sqlite>>,
    clock: VirtualClock,
    database: Database,
    _file: server::FreshSqlite,
}

async fn service(storage: Storage) -> Service {
    let InProcess {
        bus,
        scheduler,
        clock,
        database,
        file,
    } = in_process::on_sqlite(storage, |adapters| {
        adapters.shipment_deadline(ShipmentDeadline(DEADLINE))
    })
    .await;
    bus.dispatch(CreateBatch {
        reference: "b1".into(),
        sku: "LAMP".into(),
        qty: 10,
        eta: None,
    })
    .await
    .unwrap();
    bus.dispatch(CreateBatch {
        reference: "b2".into(),
        sku: "DESK".into(),
        qty: 5,
        eta: None,
    })
    .await
    .unwrap();
    Service {
        bus,
        scheduler,
        clock,
        database,
        _file: file,
    }
}

impl Service {
    async fn allocate(&self, orderid: &str, sku: &str, qty: u32) -> Option<String> {
        self.bus
            .dispatch(Allocate {
                orderid: orderid.into(),
                sku: sku.into(),
                qty,
            })
            .await
            .unwrap()
    }

    async fn allocations(&self, orderid: &str) -> Vec<AllocationRow> {
        let mut rows = self
            .bus
            .query(Allocations {
                orderid: orderid.into(),
            })
            .await
            .unwrap();
        rows.sort_by(|a, b| a.sku.cmp(&b.sku));
        rows
    }

    async fn confirm(&self, orderid: &str) -> Result<(), DispatchError<SagaError>> {
        self.bus
            .dispatch(ConfirmShipment {
                orderid: orderid.into(),
            })
            .await
    }

    async fn advance(&self, by: Duration) -> usize {
        let fired = self
            .clock
            .advance_and_fire(by, &*self.scheduler, &self.bus)
            .await
            .unwrap();
        assert!(self.bus.settled(Duration::from_secs(10)).await);
        fired
    }

    async fn watch(&self, orderid: &str) -> Option<SagaRecord> {
        self.scheduler
            .load("allocation.shipment_watch", orderid)
            .await
            .unwrap()
    }
}

async fn a_shipped_order_keeps_its_allocations(storage: Storage) {
    let service = service(storage).await;
    service.allocate("o1", "LAMP", 3).await.unwrap();
    service.allocate("o1", "DESK", 2).await.unwrap();
    assert!(matches!(
        service.watch("o1").await,
        Some(SagaRecord::Active { .. })
    ));
    assert_eq!(
        service.scheduler.pending().await.unwrap().len(),
        1,
        "one deadline per order"
    );

    service.confirm("o1").await.unwrap();
    assert!(matches!(
        service.watch("o1").await,
        Some(SagaRecord::Completed { .. })
    ));
    assert!(
        service.scheduler.pending().await.unwrap().is_empty(),
        "the deadline went with it"
    );
    assert_eq!(service.advance(DEADLINE * 2).await, 0);
    let rows = service.allocations("o1").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    service.database.close().await;
}

async fn a_late_order_has_its_lines_released_and_their_stock_returned(storage: Storage) {
    let service = service(storage).await;
    service.allocate("late", "LAMP", 10).await.unwrap();
    service.allocate("late", "DESK", 5).await.unwrap();
    assert_eq!(
        service.allocate("other", "LAMP", 1).await,
        None,
        "all of it is taken"
    );
    service.advance(DEADLINE - Duration::from_secs(1)).await;
    assert_eq!(service.allocations("late").await.len(), 2, "not late yet");

    // The deadline fires; the saga sends a release per line, which fire
    // in the same span of virtual time.
    let fired = service.advance(Duration::from_secs(1)).await;
    assert_eq!(fired, 3, "the deadline and two releases");
    assert!(service.allocations("late").await.is_empty(), "released");
    assert_eq!(
        service.allocate("other", "LAMP", 10).await.as_deref(),
        Some("b1"),
        "its stock is back"
    );
    // Too late to confirm: nothing waits for it.
    match service.confirm("never").await {
        Err(DispatchError::Handler(SagaError::NotFound { id, .. })) => assert_eq!(id, "never"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // Confirmed after the release: refused, its stock may be sold already.
    match service.confirm("late").await {
        Err(DispatchError::Handler(SagaError::Handler { error, .. })) => assert_eq!(
            error.to_string(),
            "order late was not shipped in time: its allocations were released"
        ),
        other => panic!("expected the order to be too late, got {other:?}"),
    }
    assert!(service.allocations("late").await.is_empty());
    // Remembered, released: refused whenever it comes.
    service.advance(DEADLINE * 10).await;
    assert!(matches!(
        service.watch("late").await,
        Some(SagaRecord::Active { .. })
    ));
    assert!(service.confirm("late").await.is_err(), "still too late");
    service.database.close().await;
}

async fn a_deadline_after_the_shipment_changes_nothing(storage: Storage) {
    let service = service(storage).await;
    service.allocate("o2", "LAMP", 4).await.unwrap();
    service.confirm("o2").await.unwrap();
    // A deadline that arrives anyway (fired just as the order shipped).
    service
        .bus
        .publish(ShipmentOverdue {
            orderid: "o2".into(),
        })
        .await
        .unwrap();
    service
        .confirm("o2")
        .await
        .expect("confirmed twice: no error");
    assert!(service.bus.settled(Duration::from_secs(10)).await);
    assert_eq!(service.allocations("o2").await.len(), 1, "still allocated");
    assert!(service.scheduler.pending().await.unwrap().is_empty());
    service.database.close().await;
}

mod rows {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shipped_order_keeps_its_allocations() {
        super::a_shipped_order_keeps_its_allocations(Storage::State).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_order_has_its_lines_released_and_their_stock_returned() {
        super::a_late_order_has_its_lines_released_and_their_stock_returned(Storage::State).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadline_after_the_shipment_changes_nothing() {
        super::a_deadline_after_the_shipment_changes_nothing(Storage::State).await;
    }
}

mod events {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shipped_order_keeps_its_allocations() {
        super::a_shipped_order_keeps_its_allocations(Storage::Events).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_order_has_its_lines_released_and_their_stock_returned() {
        super::a_late_order_has_its_lines_released_and_their_stock_returned(Storage::Events).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadline_after_the_shipment_changes_nothing() {
        super::a_deadline_after_the_shipment_changes_nothing(Storage::Events).await;
    }
}

/// Polls `GET /allocations/<orderid>` until it answers `status`, for at
/// most `within`.
async fn until_status(server: &Server, orderid: &str, status: StatusCode, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (answered, body) = get(server, &format!("/allocations/{orderid}")).await;
        if answered == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {answered} {body} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirming_over_http_keeps_the_allocations_and_a_bad_order_is_refused() {
    let (_dir, path) = server::database();
    let server = Server::start(BINARY, &path);
    add_batch(&server, "b1", "LAMP", 10, None).await;
    let (status, _) = post(
        &server,
        "/allocate",
        json!({"orderid": "o1", "sku": "LAMP", "qty": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = post(&server, "/orders/o1/shipped", json!(null)).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"orderid": "o1", "shipped": true}))
    );
    let (status, _) = post(&server, "/orders/o1/shipped", json!(null)).await;
    assert_eq!(status, StatusCode::OK, "confirmed twice");
    let (status, body) = post(&server, "/orders/nobody/shipped", json!(null)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        server::message(&body),
        "no allocation of order nobody waits for its shipment"
    );
    let (status, body) = post(&server, "/orders/%20bad%0A/shipped", json!(null)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    until_status(&server, "o1", StatusCode::OK, Duration::from_secs(5)).await;
}

/// The deadline is in the database, not in the process: killed between
/// the allocation and its deadline, the service releases the order when
/// it comes back after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_while_the_service_is_down_fires_when_it_is_back() {
    let (_dir, path) = server::database();
    let url = format!("sqlite://{}", path.display());
    let env = [("SHIPMENT_DEADLINE_SECS", "2"), ("NODE_TIMEOUT_MS", "1000")];
    let server = Server::start_with(BINARY, &url, &env);
    add_batch(&server, "b1", "LAMP", 10, None).await;
    let (status, _) = post(
        &server,
        "/allocate",
        json!({"orderid": "late", "sku": "LAMP", "qty": 10}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.kill_hard();
    // Down past the deadline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let server = Server::start_with(BINARY, &url, &env);
    until_status(
        &server,
        "late",
        StatusCode::NOT_FOUND,
        Duration::from_secs(30),
    )
    .await;
    let (status, body) = post(
        &server,
        "/allocate",
        json!({"orderid": "next", "sku": "LAMP", "qty": 10}),
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::ACCEPTED, json!({"batchref": "b1"})),
        "its stock is back"
    );
    let (status, body) = post(&server, "/orders/late/shipped", json!(null)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        server::message(&body),
        "order late was not shipped in time: its allocations were released"
    );
}

async fn an_order_allocated_again_after_its_release_is_watched_again(storage: Storage) {
    let service = service(storage).await;
    service.allocate("again", "LAMP", 2).await.unwrap();
    service.advance(DEADLINE).await;
    assert!(service.allocations("again").await.is_empty(), "released");
    // The customer orders again, under the same order id: a new deadline.
    service.allocate("again", "DESK", 1).await.unwrap();
    let pending = service.scheduler.pending().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].name(), "allocation.shipment_overdue");
    assert_eq!(pending[0].due(), service.clock.now() + DEADLINE);
    service
        .confirm("again")
        .await
        .expect("a new watch, confirmed in time");
    assert!(
        service.scheduler.pending().await.unwrap().is_empty(),
        "no timeout left"
    );
    assert_eq!(service.advance(DEADLINE * 3).await, 0);
    assert_eq!(
        service.allocations("again").await.len(),
        1,
        "the new line stays"
    );
    service.database.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_allocated_again_after_its_release_is_watched_again_with_rows() {
    an_order_allocated_again_after_its_release_is_watched_again(Storage::State).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_allocated_again_after_its_release_is_watched_again_with_streams() {
    an_order_allocated_again_after_its_release_is_watched_again(Storage::Events).await;
}

/// With the watch off (a deadline of 0), no order is watched: nothing is
/// stored per allocation, and a confirmation finds nothing to confirm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_watch_off_no_order_is_watched() {
    // The file is kept to the test's end.
    let InProcess {
        bus,
        database,
        file: _file,
        ..
    } = in_process::on_sqlite(Storage::State, |adapters| {
        adapters.shipment_deadline(ShipmentDeadline(Duration::ZERO))
    })
    .await;
    bus.dispatch(CreateBatch {
        reference: "b1".into(),
        sku: "LAMP".into(),
        qty: 10,
        eta: None,
    })
    .await
    .unwrap();
    bus.dispatch(Allocate {
        orderid: "o1".into(),
        sku: "LAMP".into(),
        qty: 1,
    })
    .await
    .unwrap();
    let Database::Sqlite(sqlite) = &database else {
        unreachable!("a SQLite URL")
    };
    // A watch that does not read back, for another order: an allocation
    // that read its order's watch (to decline it) would fail on it, and
    // its event would be a dead letter.
    sqlx::query(
        "INSERT INTO bus_sagas (saga, id, version, state) \
         VALUES ('allocation.shipment_watch', 'o2', 1, 'not a watch')",
    )
    .execute(sqlite.pool())
    .await
    .unwrap();
    bus.dispatch(Allocate {
        orderid: "o2".into(),
        sku: "LAMP".into(),
        qty: 1,
    })
    .await
    .unwrap();
    assert!(
        database
            .dead_letters()
            .list(false)
            .await
            .unwrap()
            .is_empty(),
        "no allocation read its order's watch"
    );
    let watch = sqlite
        .scheduler()
        .load("allocation.shipment_watch", "o1")
        .await
        .unwrap();
    assert_eq!(watch, None);
    assert!(sqlite.scheduler().pending().await.unwrap().is_empty());
    assert_eq!(
        sqlite.store().delivery_lag().await.unwrap().count,
        0,
        "`Allocated` delivered to every handler, the watch that starts nothing included"
    );
    let confirmed = bus
        .dispatch(ConfirmShipment {
            orderid: "o1".into(),
        })
        .await;
    assert!(
        matches!(
            confirmed,
            Err(DispatchError::Handler(SagaError::NotFound { .. }))
        ),
        "{confirmed:?}"
    );
    database.close().await;
}
