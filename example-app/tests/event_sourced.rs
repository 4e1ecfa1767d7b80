//! What only `--storage events` does, on SQLite: the setting belongs to the
//! database, a product loads from its snapshot as it would from its whole
//! stream, and the allocations view is rebuilt from the streams beside the
//! live one, without firing a side effect again. (The storage, HTTP, fuzz
//! and load suites run in this storage too: `storage.rs`, `api.rs`,
//! `red_team.rs`.)

// A test whose setup fails should panic, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;

use arch_events::event_store::{EventStore, Loaded, Snapshotted, StreamId};
use arch_events::{Bus, EventReleaser};
use arch_events_sqlx::Settings;
use arch_events_test_support::server::{self, add_batch, post, Server};
use example_app::adapters::database::{Database, DatabaseError};
use example_app::adapters::notifications::RecordingNotifications;
use example_app::adapters::storage::Storage;
use example_app::domain::commands::{Allocate, ChangeBatchQuantity, CreateBatch};
use example_app::domain::model::{OrderLine, Product};
use example_app::views::{AllocationRow, Allocations};
use example_app::{bootstrap, Adapters};
use reqwest::StatusCode;
use serde_json::json;

/// The binary under test.
const BINARY: &str = env!("CARGO_BIN_EXE_example-app");

async fn open_events(url: &str) -> Database {
    Database::open(url, Settings::default(), Some(Storage::Events))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn sqlite_of(database: &Database) -> &example_app::adapters::sqlite::SqliteDatabase {
    match database {
        Database::Sqlite(database) => database,
        Database::Postgres(_) => panic!("a SQLite database"),
    }
}

fn started_with(url: &str, storage: &str) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(BINARY)
        .args([
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            url,
            "--storage",
            storage,
        ])
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waits") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().expect("killed");
            panic!("the binary started with --storage {storage} serves instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr)
        .expect("read");
    (status, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_setting_makes_a_new_database_and_the_other_one_is_refused() {
    let fresh = server::fresh_sqlite().await;
    let server = Server::start_with(BINARY, &fresh.url, &[("STORAGE", "events")]);
    add_batch(&server, "b1", "LAMP", 10, None).await;
    let (status, _) = post(
        &server,
        "/allocate",
        json!({"orderid": "o1", "sku": "LAMP", "qty": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(server.interrupt().success());

    let database = Database::connect(&fresh.url).await.expect("opens");
    assert_eq!(database.storage(), Storage::Events);
    let stream = StreamId::new("product", "LAMP");
    let version = sqlite_of(&database)
        .event_store()
        .stream_version(&stream)
        .await
        .expect("read");
    assert_eq!(version, 2, "BatchAdded, Allocated");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM products")
        .fetch_one(sqlite_of(&database).pool())
        .await
        .expect("read");
    assert_eq!(rows, 0, "no product is kept as rows");
    database.close().await;

    let (status, stderr) = started_with(&fresh.url, "state");
    assert!(!status.success());
    assert!(
        stderr.contains("keeps its products as events")
            && stderr.contains("start with --storage events"),
        "{stderr}"
    );

    // A database of rows refuses events the same way, and a bad name is
    // refused before anything opens.
    let rows = server::fresh_sqlite().await;
    Database::open(&rows.url, Settings::default(), Some(Storage::State))
        .await
        .expect("opens")
        .close()
        .await;
    let (status, stderr) = started_with(&rows.url, "events");
    assert!(!status.success());
    assert!(stderr.contains("keeps its products as state"), "{stderr}");
    let (status, stderr) = started_with(&rows.url, "rows");
    assert!(
        !status.success() && stderr.contains("unknown storage \"rows\""),
        "{stderr}"
    );
}

/// A process that only follows the database (a relay, a rebuild, a test)
/// on a new one leaves the choice to the service.
#[tokio::test]
async fn only_the_serving_process_chooses_a_new_databases_storage() {
    let fresh = server::fresh_sqlite().await;
    let follower = Database::connect(&fresh.url).await.expect("opens");
    assert_eq!(follower.storage(), Storage::State, "read as rows meanwhile");
    follower.close().await;
    let served = open_events(&fresh.url).await;
    assert_eq!(served.storage(), Storage::Events);
    served.close().await;
    let follower = Database::connect(&fresh.url).await.expect("opens");
    assert_eq!(follower.storage(), Storage::Events, "then followed");
    follower.close().await;
}

/// A database from before the setting existed, whose products are rows:
/// opening it for events would hide them, so its migration fixes it as
/// rows.
#[tokio::test]
async fn a_database_from_before_the_setting_keeps_its_products_as_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("allocation.db");
    let url = format!("sqlite://{}", file.display());
    // The schema as it was: arch-events-sqlx's store, then the service's
    // own migrations up to 0007, and a product.
    let old = tempfile::tempdir().expect("temp dir");
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for entry in std::fs::read_dir(&migrations).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        if name.as_str() < "0008" {
            std::fs::copy(&path, old.path().join(&name)).expect("copied");
        }
    }
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options)
        .await
        .expect("opened");
    arch_events_sqlx::Store::open(pool.clone())
        .await
        .expect("the store")
        .close()
        .await;
    sqlx::migrate::Migrator::new(old.path())
        .await
        .expect("the old migrations")
        .run(&pool)
        .await
        .expect("applied");
    sqlx::query("INSERT INTO products (sku, version_number) VALUES ('LAMP', 1)")
        .execute(&pool)
        .await
        .expect("a product");
    pool.close().await;

    let refused = Database::open(&url, Settings::default(), Some(Storage::Events)).await;
    assert!(
        matches!(
            refused,
            Err(DatabaseError::StorageMismatch {
                stored: Storage::State,
                requested: Storage::Events,
                ..
            })
        ),
        "{refused:?}"
    );
    let database = Database::connect(&url).await.expect("opens");
    assert_eq!(database.storage(), Storage::State);
    database.close().await;
}

#[tokio::test]
async fn a_product_loads_from_its_snapshot_as_from_its_whole_stream() {
    let fresh = server::fresh_sqlite().await;
    let database = open_events(&fresh.url).await;
    let mut uow = database.unit_of_work(EventReleaser::new());
    uow.products()
        .add("LAMP")
        .add_batch("b1", "LAMP", 1000, None);
    uow.commit().await.expect("committed");
    for n in 0..150 {
        let mut uow = database.unit_of_work(EventReleaser::new());
        let line = OrderLine {
            orderid: format!("o{n}"),
            sku: "LAMP".into(),
            qty: 1,
        };
        let product = uow.products().get_for_line(&line).await.expect("read");
        assert!(product.expect("exists").allocate(line).is_some());
        uow.commit().await.expect("committed");
    }
    let events = sqlite_of(&database).event_store();
    let snapshot = events
        .load_snapshot(&StreamId::new("product", "LAMP"))
        .await
        .expect("read")
        .expect("a snapshot every SNAPSHOT_EVERY events");
    let every = <Product as Snapshotted>::SNAPSHOT_EVERY;
    assert!(every < 151, "the test crosses a snapshot");
    assert_eq!(snapshot.version, 151 / every * every, "the latest one");

    let rebuilt = Loaded::<Product>::load(events, "LAMP").await.expect("read");
    let from_snapshot = Loaded::<Product>::load_snapshotted(events, "LAMP")
        .await
        .expect("read");
    assert_eq!(rebuilt.version(), 151);
    assert_eq!(from_snapshot.version(), 151);
    assert_eq!(from_snapshot.batches, rebuilt.batches);
    assert_eq!(from_snapshot.version_number, rebuilt.version_number);
    assert_eq!(rebuilt.batches[0].allocations().len(), 150);
    database.close().await;
}

async fn allocate(bus: &Bus, orderid: &str, sku: &str, qty: u32) -> Option<String> {
    bus.dispatch(Allocate {
        orderid: orderid.into(),
        sku: sku.into(),
        qty,
    })
    .await
    .expect("allocated")
}

async fn view_of(bus: &Bus, orders: &[&str]) -> Vec<Vec<AllocationRow>> {
    let mut rows = Vec::new();
    for orderid in orders {
        rows.push(
            bus.query(Allocations {
                orderid: (*orderid).into(),
            })
            .await
            .expect("read"),
        );
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_is_rebuilt_from_the_streams_alike_and_fires_nothing_again() {
    let fresh = server::fresh_sqlite().await;
    let database = open_events(&fresh.url).await;
    let notifications = Arc::new(RecordingNotifications::default());
    let bus = bootstrap(Adapters {
        notifications: notifications.clone(),
        ..Adapters::for_database(&database)
    })
    .expect("wiring");
    for (reference, qty) in [("small", 10), ("big", 100)] {
        bus.dispatch(CreateBatch {
            reference: reference.into(),
            sku: "VASE".into(),
            qty,
            eta: None,
        })
        .await
        .expect("added");
    }
    assert_eq!(
        allocate(&bus, "o1", "VASE", 8).await.as_deref(),
        Some("small")
    );
    assert_eq!(
        allocate(&bus, "o2", "VASE", 2).await.as_deref(),
        Some("small")
    );
    assert_eq!(allocate(&bus, "o3", "VASE", 500).await, None);
    // o2 moves to big: Deallocated, then Allocated again.
    bus.dispatch(ChangeBatchQuantity {
        reference: "small".into(),
        qty: 8,
    })
    .await
    .expect("changed");
    let orders = ["o1", "o2", "o3"];
    let before = view_of(&bus, &orders).await;
    assert_eq!(
        before,
        [
            vec![AllocationRow {
                sku: "VASE".into(),
                qty: 8,
                batchref: "small".into()
            }],
            vec![AllocationRow {
                sku: "VASE".into(),
                qty: 2,
                batchref: "big".into()
            }],
            vec![],
        ],
        "read your writes: a read catches the projection up first"
    );
    assert_eq!(notifications.sent().len(), 1, "o3 ran out of stock");

    // Rebuilt from the first event, beside the live view, then swapped in.
    let applied = database.rebuild_view().await.expect("rebuilt");
    let sqlite = sqlite_of(&database);
    let head = sqlite.event_store().head().await.expect("read");
    assert_eq!(applied as u64, head.sequence(), "every event, once");
    assert_eq!(view_of(&bus, &orders).await, before);
    assert_eq!(notifications.sent().len(), 1, "no notification again");
    bus.shutdown(std::time::Duration::from_secs(5))
        .await
        .expect("idle");
    database.close().await;
}

/// While the view is rebuilt beside it, the live one serves every line:
/// no read sees it empty or half-built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_serves_whole_while_it_is_rebuilt() {
    const LINES: usize = 200;
    let fresh = server::fresh_sqlite().await;
    let database = open_events(&fresh.url).await;
    let bus = bootstrap(Adapters::for_database(&database)).expect("wiring");
    bus.dispatch(CreateBatch {
        reference: "b1".into(),
        sku: "LAMP".into(),
        qty: 1000,
        eta: None,
    })
    .await
    .expect("added");
    for n in 0..LINES {
        allocate(&bus, &format!("o{n}"), "LAMP", 1).await;
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (bus, done) = (bus.clone(), done.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || reads < LINES {
                let orderid = format!("o{}", reads % LINES);
                let rows = bus
                    .query(Allocations {
                        orderid: orderid.clone(),
                    })
                    .await
                    .expect("read");
                assert_eq!(
                    rows.len(),
                    1,
                    "{orderid} read as {rows:?} during the rebuild"
                );
                reads += 1;
            }
            reads
        })
    };
    for _ in 0..3 {
        let applied = database.rebuild_view().await.expect("rebuilt");
        assert_eq!(applied, LINES + 1, "BatchAdded, then each Allocated");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let reads = reader.await.expect("the reader saw every line each time");
    assert!(reads >= LINES);
    bus.shutdown(std::time::Duration::from_secs(5))
        .await
        .expect("idle");
    database.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuild_subcommand_rebuilds_the_view_while_the_service_serves() {
    let fresh = server::fresh_sqlite_events().await;
    let server = Server::start_with(BINARY, &fresh.url, &[]);
    add_batch(&server, "b1", "LAMP", 10, None).await;
    for orderid in ["o1", "o2"] {
        let line = json!({"orderid": orderid, "sku": "LAMP", "qty": 3});
        assert_eq!(
            post(&server, "/allocate", line).await.0,
            StatusCode::ACCEPTED
        );
    }
    let rebuilt = Command::new(BINARY)
        .args(["--database-url", &fresh.url, "rebuild-view"])
        .env("RUST_LOG", "off")
        .output()
        .expect("the binary runs");
    assert!(rebuilt.status.success(), "{rebuilt:?}");
    assert_eq!(
        String::from_utf8_lossy(&rebuilt.stdout),
        "rebuilt the allocations view from 3 events\n"
    );
    let (status, body) = server::get(&server, "/allocations/o2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!([{"sku": "LAMP", "qty": 3, "batchref": "b1"}]));

    // Rows have no streams to rebuild from: said, not done.
    let rows = server::fresh_sqlite().await;
    Database::open(&rows.url, Settings::default(), Some(Storage::State))
        .await
        .expect("opens")
        .close()
        .await;
    let refused = Command::new(BINARY)
        .args(["--database-url", &rows.url, "rebuild-view"])
        .env("RUST_LOG", "off")
        .output()
        .expect("the binary runs");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("keeps its products as rows"), "{stderr}");
}
