//! The example app on PostgreSQL: the storage contract and the HTTP
//! contract, the same tests as on SQLite (`example-app/tests/storage.rs`,
//! `example-app/tests/api.rs`), each on a fresh database, and what only
//! PostgreSQL's relay does. Built only with the `services` feature
//! (`.ci/run` turns it on):
//! `cargo test -p arch-events-tests --features services --test postgres`.
//! PostgreSQL at `POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); without it the tests fail
//! and say how to start it.

use arch_events_test_support::storage_contract::TestDatabase;
use arch_events_test_support::{
    api_contract_tests, fuzz_tests, postgres, server, storage_contract_tests, under_load_tests,
};

use std::time::Duration;

use arch_events::transport::{InMemoryBroker, OutboundMessage, Publisher, TransportError};
use arch_events::{async_trait, Bus};
use example_app::adapters::database::Database;
use example_app::domain::commands::{Allocate, CreateBatch};
use example_app::{bootstrap, Adapters};

async fn fresh_postgres() -> TestDatabase {
    let database = postgres::FreshDatabase::create().await;
    TestDatabase {
        url: database.url.clone(),
        keep: Box::new(database),
    }
}

storage_contract_tests!(fresh_postgres);

api_contract_tests!(server::example_app_binary(), fresh_postgres);

fuzz_tests!(server::example_app_binary(), fresh_postgres);

under_load_tests!(server::example_app_binary(), fresh_postgres);

/// A broker that never answers.
struct Stuck;

#[async_trait]
impl Publisher for Stuck {
    async fn publish(&self, _message: &OutboundMessage) -> Result<(), TransportError> {
        std::future::pending().await
    }
}

async fn allocations(bus: &Bus, count: usize) {
    bus.dispatch(CreateBatch {
        reference: "b1".into(),
        sku: "LAMP".into(),
        qty: 100,
        eta: None,
    })
    .await
    .unwrap();
    for n in 0..count {
        bus.dispatch(Allocate {
            orderid: format!("o{n}"),
            sku: "LAMP".into(),
            qty: 1,
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_skips_the_rows_another_holds_and_takes_them_when_that_one_dies() {
    let db = fresh_postgres().await;
    let database = db.open().await;
    let bus = bootstrap(Adapters::for_database(&database)).unwrap();
    allocations(&bus, 3).await;

    let Database::Postgres(postgres) = &database else {
        panic!("a PostgreSQL database")
    };
    // The first relay locks the rows and hangs on the broker.
    let outbox = postgres.store().outbox();
    let stuck = tokio::spawn(async move { outbox.relay_once(&Stuck, 10).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The second one skips them at once: it neither waits nor doubles them.
    let broker = InMemoryBroker::default();
    let second = postgres.store().outbox();
    let skipped = tokio::time::timeout(Duration::from_secs(2), second.relay_once(&broker, 10))
        .await
        .expect("SKIP LOCKED does not wait")
        .unwrap();
    assert_eq!(skipped, 0, "the rows are held by the first relay");

    // The first relay dies: its transaction ends with its connection, and
    // the rows are free again at once (no lease to wait out).
    stuck.abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut sent = 0;
    while sent < 3 {
        assert!(std::time::Instant::now() < deadline, "rows still held");
        sent += second.relay_once(&broker, 10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(broker.waiting("line_allocated").len(), 3, "each once");
}

#[tokio::test]
async fn a_dead_server_is_a_clear_error() {
    let error = example_app::adapters::database::Database::connect(
        "postgres://postgres:secret@127.0.0.1:1/nowhere",
    )
    .await
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with("cannot open the database postgres://postgres:***@127.0.0.1:1/nowhere: "),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
}
