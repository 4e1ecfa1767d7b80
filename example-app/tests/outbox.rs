//! The transactional outbox on SQLite: external events are written in the
//! commit's transaction, and the relay publishes each one once it is there,
//! even after a crash between the commit and the publish.

// A test whose setup fails should panic, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use bus_core::transport::InMemoryBroker;
use bus_core::Bus;
use example_app::adapters::outbox::SqliteOutbox;
use example_app::adapters::sqlite::{self, SqliteDatabase};
use example_app::domain::commands::{Allocate, CreateBatch};
use example_app::{bootstrap, Adapters};
use serde_json::json;

async fn open(path: &std::path::Path) -> (SqliteDatabase, Bus) {
    let database = sqlite::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let bus = bootstrap(Adapters::sqlite(database.clone())).unwrap();
    (database, bus)
}

/// Adds the batch `b1` of `qty` lamps.
async fn add_lamps(bus: &Bus, qty: u32) {
    bus.dispatch(CreateBatch {
        reference: "b1".into(),
        sku: "LAMP".into(),
        qty,
        eta: None,
    })
    .await
    .unwrap();
}

async fn allocate(bus: &Bus, orderid: &str, qty: u32) -> Option<String> {
    bus.dispatch(Allocate {
        orderid: orderid.into(),
        sku: "LAMP".into(),
        qty,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn an_allocation_writes_its_event_to_the_outbox_and_the_relay_publishes_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (database, bus) = open(&dir.path().join("o.db")).await;
    add_lamps(&bus, 10).await;
    assert_eq!(allocate(&bus, "o1", 4).await.as_deref(), Some("b1"));
    assert_eq!(
        allocate(&bus, "o2", 99).await,
        None,
        "out of stock: internal, not in the outbox"
    );

    let outbox = SqliteOutbox::new(database);
    let unsent = outbox.unsent(10).await.unwrap();
    assert_eq!(unsent.len(), 1);
    assert_eq!(unsent[0].stream, "line_allocated");
    assert_eq!(unsent[0].name, "line_allocated");
    let payload: serde_json::Value = serde_json::from_str(&unsent[0].payload).unwrap();
    assert_eq!(
        payload,
        json!({"orderid": "o1", "sku": "LAMP", "qty": 4, "batchref": "b1"})
    );
    assert!(unsent[0].causation_id.is_some());

    let broker = InMemoryBroker::default();
    assert_eq!(outbox.relay_once(&broker, 10).await.unwrap(), 1);
    assert_eq!(
        outbox.relay_once(&broker, 10).await.unwrap(),
        0,
        "sent once"
    );
    let published = broker.waiting("line_allocated");
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].id, unsent[0].id, "the message keeps its id");
    assert!(outbox.unsent(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_event_committed_before_a_crash_is_published_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    {
        let (database, bus) = open(&path).await;
        add_lamps(&bus, 10).await;
        allocate(&bus, "o1", 4).await;
        // The process dies here: committed, never relayed.
        database.close().await;
    }
    let (database, _bus) = open(&path).await;
    let broker = InMemoryBroker::default();
    let outbox = SqliteOutbox::new(database);
    assert_eq!(outbox.relay_once(&broker, 10).await.unwrap(), 1);
    assert_eq!(broker.waiting("line_allocated").len(), 1);
}

#[tokio::test]
async fn a_lost_race_writes_nothing_to_the_outbox() {
    use bus_core::{EventReleaser, UnitOfWork as _};
    use example_app::adapters::sqlite::SqliteUnitOfWork;
    use example_app::domain::model::OrderLine;
    use example_app::service_layer::unit_of_work::UnitOfWork;

    let dir = tempfile::tempdir().unwrap();
    let (database, bus) = open(&dir.path().join("race.db")).await;
    add_lamps(&bus, 10).await;
    let mut first = SqliteUnitOfWork::new(database.clone(), EventReleaser::new());
    let mut second = SqliteUnitOfWork::new(database.clone(), EventReleaser::new());
    for (uow, orderid) in [(&mut first, "o1"), (&mut second, "o2")] {
        let product = uow.products().get("LAMP").await.unwrap().unwrap();
        product.allocate(OrderLine {
            orderid: orderid.into(),
            sku: "LAMP".into(),
            qty: 1,
        });
    }
    first.commit().await.unwrap();
    assert!(second.commit().await.is_err(), "the second one lost");
    let unsent = SqliteOutbox::new(database).unsent(10).await.unwrap();
    let orders: Vec<serde_json::Value> = unsent
        .iter()
        .map(|m| serde_json::from_str::<serde_json::Value>(&m.payload).unwrap()["orderid"].clone())
        .collect();
    assert_eq!(orders, [json!("o1")], "only the committed change's event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_never_publish_one_row_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (database, bus) = open(&dir.path().join("relays.db")).await;
    add_lamps(&bus, 1000).await;
    for n in 0..40 {
        allocate(&bus, &format!("o{n}"), 1).await;
    }
    let broker = InMemoryBroker::default();
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let outbox = SqliteOutbox::new(database.clone());
            let broker = broker.clone();
            tokio::spawn(async move {
                let mut sent = 0;
                loop {
                    match outbox.relay_once(&broker, 3).await.unwrap() {
                        0 => return sent,
                        n => sent += n,
                    }
                }
            })
        })
        .collect();
    let mut total = 0;
    for relay in relays {
        total += relay.await.unwrap();
    }
    let published = broker.waiting("line_allocated");
    let mut ids: Vec<_> = published.iter().map(|m| m.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((total, published.len(), ids.len()), (40, 40, 40));
}
