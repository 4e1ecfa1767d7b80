//! The example app on PostgreSQL: the storage contract and the HTTP
//! contract, the same tests as on SQLite (`example-app/tests/storage.rs`,
//! `example-app/tests/api.rs`), each on a fresh database, with the products
//! kept as rows and as streams of events, and what only PostgreSQL's relay
//! does. Built only with the `services` feature
//! (`.ci/run` turns it on):
//! `cargo test -p arch-events-tests --features services --test postgres`.
//! PostgreSQL at `POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); without it the tests fail
//! and say how to start it.

use arch_events_test_support::storage_contract::TestDatabase;
use arch_events_test_support::{
    api_contract_tests, fuzz_tests, postgres, server, storage_contract_tests, under_load_tests,
};

use std::sync::Arc;
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

/// The same suites, the products kept as streams of events.
mod events {
    use super::*;

    async fn fresh_postgres_events() -> TestDatabase {
        fresh_postgres()
            .await
            .keeping(example_app::adapters::storage::Storage::Events)
            .await
    }

    storage_contract_tests!(events fresh_postgres_events);

    api_contract_tests!(server::example_app_binary(), fresh_postgres_events);

    fuzz_tests!(server::example_app_binary(), fresh_postgres_events);

    under_load_tests!(server::example_app_binary(), fresh_postgres_events);

    /// Rebuilds while the projection runs in the background, commands keep
    /// coming and reads keep going: no read misses a line allocated before
    /// it, and the view ends as the write model says.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_view_is_rebuilt_in_place_while_commands_run() {
        let fresh = fresh_postgres_events().await;
        let database = fresh.open().await;
        let running = database.start_projection().expect("events");
        let bus = bootstrap(Adapters::for_database(&database)).unwrap();
        bus.dispatch(CreateBatch {
            reference: "b1".into(),
            sku: "LAMP".into(),
            qty: 1000,
            eta: None,
        })
        .await
        .unwrap();
        let writer = {
            let bus = bus.clone();
            tokio::spawn(async move {
                for n in 0..60 {
                    bus.dispatch(Allocate {
                        orderid: format!("o{n}"),
                        sku: "LAMP".into(),
                        qty: 1,
                    })
                    .await
                    .unwrap();
                }
            })
        };
        let reader = {
            let bus = bus.clone();
            tokio::spawn(async move {
                // o0 is allocated early; once seen, it must never vanish.
                let mut seen = false;
                for _ in 0..300 {
                    let rows = bus
                        .query(example_app::views::Allocations {
                            orderid: "o0".into(),
                        })
                        .await
                        .unwrap();
                    assert!(!(seen && rows.is_empty()), "o0 vanished from the view");
                    seen |= !rows.is_empty();
                    tokio::task::yield_now().await;
                }
                seen
            })
        };
        let mut rebuilt = Vec::new();
        for _ in 0..3 {
            rebuilt.push(database.rebuild_view().await.unwrap());
        }
        writer.await.unwrap();
        assert!(reader.await.unwrap(), "o0 was read");
        assert!(rebuilt.iter().all(|applied| *applied >= 1), "{rebuilt:?}");
        for n in 0..60 {
            let rows = bus
                .query(example_app::views::Allocations {
                    orderid: format!("o{n}"),
                })
                .await
                .unwrap();
            assert_eq!(rows.len(), 1, "o{n}: {rows:?}");
            assert_eq!(rows[0].batchref, "b1");
        }
        bus.shutdown(Duration::from_secs(5)).await.unwrap();
        running.stop().await;
        database.close().await;
    }
}

/// A broker that never answers, and says when it was first called: the
/// relay calling it holds its rows by then.
#[derive(Default)]
struct Stuck {
    reached: tokio::sync::Notify,
}

#[async_trait]
impl Publisher for Stuck {
    async fn publish(&self, _message: &OutboundMessage) -> Result<(), TransportError> {
        // Stored if nobody waits yet: the test's wait sees it either way.
        self.reached.notify_one();
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
    let broker_of_stuck = Arc::new(Stuck::default());
    let publisher = broker_of_stuck.clone();
    let stuck = tokio::spawn(async move { outbox.relay_once(&*publisher, 10).await });
    // Not a guess at how long locking takes: the relay publishes only the
    // rows it locked, so once it calls the broker it holds them.
    tokio::time::timeout(Duration::from_secs(10), broker_of_stuck.reached.notified())
        .await
        .expect("the first relay reaches the broker");

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

/// A database from before arch-events-sqlx kept ids in uuid columns, whose
/// service moved its outbox, inbox and dead letters over with migration 5's
/// first form: the current build opens it, converts the ids, accepts that
/// migration as applied, and the carried-over rows keep their ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_uuid_ids_opens_with_its_rows_and_its_migrations() {
    use sha2::{Digest, Sha256};
    use sqlx::Executor;

    let database = postgres::FreshDatabase::create().await;
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();

    // arch-events-sqlx's tables as its first migration made them (ids as
    // text), recorded as its migrator records them.
    let first = include_str!("../../bus-sqlx/migrations/postgres/0001_durable_messaging.sql");
    pool.execute(sqlx::raw_sql(first)).await.unwrap();
    pool.execute(
        "CREATE TABLE bus_sqlx_migrations (version BIGINT PRIMARY KEY, \
         description TEXT NOT NULL, checksum TEXT NOT NULL, \
         applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .unwrap();
    let checksum: String = Sha256::digest(first.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    sqlx::query("INSERT INTO bus_sqlx_migrations (version, description, checksum) VALUES (1, 'durable messaging', $1)")
        .bind(checksum)
        .execute(&pool)
        .await
        .unwrap();

    // The service's migrations 1 to 4, rows in its old tables, then
    // migration 5 in its first form.
    let dir = tempfile::tempdir().unwrap();
    let migrations =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../example-app/migrations");
    for entry in std::fs::read_dir(migrations.join("postgres")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if ["0001", "0002", "0003", "0004"]
            .iter()
            .any(|v| name.starts_with(v))
        {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let (message, correlation, cause) = (
        "01930000-0000-7000-8000-000000000001",
        "01930000-0000-7000-8000-000000000002",
        "01930000-0000-7000-8000-000000000003",
    );
    pool.execute(sqlx::raw_sql(&format!(
        "INSERT INTO inbox (message_id) VALUES ('{message}');
         INSERT INTO outbox (id, stream, name, payload, correlation_id, causation_id)
             VALUES ('{message}', 'line_allocated', 'line_allocated', '{{}}', '{correlation}', '{cause}');
         INSERT INTO dead_letters (message_name, handler, location, error, attempts, failed_at,
             message_id, correlation_id, causation_id, payload)
             VALUES ('allocation.allocated', 'h', 'f.rs:1', 'down', 3, now(),
                     '{message}', '{correlation}', NULL, '{{}}');"
    )))
    .await
    .unwrap();
    std::fs::copy(
        migrations.join("earlier-forms/postgres_0005_durable_tables_in_bus_sqlx.sql"),
        dir.path().join("0005_durable_tables_in_bus_sqlx.sql"),
    )
    .unwrap();
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();

    // The current build opens it.
    let opened = Database::connect(&database.url).await.unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7]);
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT data_type FROM information_schema.columns \
         WHERE table_name IN ('bus_inbox', 'bus_outbox', 'bus_events', 'bus_nodes') \
         AND column_name IN ('message_id', 'id', 'correlation_id', 'owner') \
         GROUP BY data_type",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(kinds, ["uuid"]);
    let inbox: Vec<String> = sqlx::query_scalar("SELECT message_id::text FROM bus_inbox")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(inbox, [message]);
    let Database::Postgres(postgres) = &opened else {
        panic!("a PostgreSQL database")
    };
    let unsent = postgres.store().outbox().unsent(10).await.unwrap();
    assert_eq!(unsent.len(), 1);
    assert_eq!(unsent[0].id.to_string(), message);
    assert_eq!(unsent[0].correlation_id.to_string(), correlation);
    assert_eq!(
        unsent[0].causation_id.map(|id| id.to_string()).as_deref(),
        Some(cause)
    );
    let letters = arch_events_sqlx::DeadLetterStore::list(&postgres.store().dead_letters(), false)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].record.message_id, message);

    // And it works: an allocation goes through, its event to the outbox.
    let bus = bootstrap(Adapters::for_database(&opened)).unwrap();
    allocations(&bus, 1).await;
    assert_eq!(postgres.store().outbox().unsent(10).await.unwrap().len(), 2);
    opened.close().await;
}

/// The shipment deadlines of orders allocated through one process, with
/// two processes sharing the database (each runs the durable scheduler):
/// every order is released, each deadline handled by one process, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_fire_each_shipment_deadline_once() {
    use arch_events_test_support::server::{add_batch, get, post, Server};
    use reqwest::StatusCode;
    use serde_json::json;

    let database = postgres::FreshDatabase::create().await;
    let logs = tempfile::tempdir().unwrap();
    let env = [("SHIPMENT_DEADLINE_SECS", "2"), ("NO_COLOR", "1")];
    let binary = server::example_app_binary();
    let (first_log, second_log) = (
        logs.path().join("first.log"),
        logs.path().join("second.log"),
    );
    let first = Server::start_logging(&binary, &database.url, &env, &first_log);
    let second = Server::start_logging(&binary, &database.url, &env, &second_log);
    add_batch(&first, "b1", "LAMP", 1000, None).await;
    let orders: Vec<String> = (0..20).map(|n| format!("order-{n}")).collect();
    for (n, orderid) in orders.iter().enumerate() {
        let server = if n % 2 == 0 { &first } else { &second };
        let (status, body) = post(
            server,
            "/allocate",
            json!({"orderid": orderid, "sku": "LAMP", "qty": 10}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for orderid in &orders {
        loop {
            let (status, _) = get(&first, &format!("/allocations/{orderid}")).await;
            if status == StatusCode::NOT_FOUND {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{orderid} was not released"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Both processes stop (their logs are whole), then count who handled
    // which deadline.
    assert!(first.interrupt().success());
    assert!(second.interrupt().success());
    let handled: Vec<String> = [first_log, second_log]
        .iter()
        .flat_map(|log| {
            std::fs::read_to_string(log)
                .unwrap()
                .lines()
                .filter(|line| line.contains("shipment overdue: releasing"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    for orderid in &orders {
        let times = handled
            .iter()
            .filter(|line| line.contains(&format!("orderid={orderid} ")))
            .count();
        assert_eq!(
            times, 1,
            "{orderid}'s deadline handled {times} times: {handled:#?}"
        );
    }
    let (status, body) = post(
        &Server::start_with(&binary, &database.url, &env),
        "/allocate",
        json!({"orderid": "after", "sku": "LAMP", "qty": 1000}),
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::ACCEPTED, json!({"batchref": "b1"})),
        "all the stock is back"
    );
}
