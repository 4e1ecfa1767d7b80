//! The idempotent consumer: a redelivered `change_batch_quantity` message
//! is recognised by its id (the inbox, written in the commit's transaction)
//! and acknowledged without running again.

// A test whose setup fails should panic, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use bus_core::transport::{Consumer, Handled, InMemoryBroker, OutboundMessage, Publisher};
use bus_core::MessageId;
use example_app::adapters::inbox::SqliteInbox;
use example_app::adapters::sqlite;
use example_app::domain::commands::CreateBatch;
use example_app::{bootstrap, Adapters};

#[tokio::test]
async fn a_redelivered_message_is_handled_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("inbox.db").display());
    let database = sqlite::connect(&url).await.unwrap();
    let bus = bootstrap(Adapters::sqlite(database.clone())).unwrap();
    bus.dispatch(CreateBatch {
        reference: "b1".into(),
        sku: "LAMP".into(),
        qty: 10,
        eta: None,
    })
    .await
    .unwrap();

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
    broker.publish(&message).await.unwrap();
    broker.publish(&message).await.unwrap(); // the broker delivers it twice

    let mut consumer = Consumer::new(bus.clone(), broker.subscribe("change_batch_quantity"))
        .with_inbox(Arc::new(SqliteInbox::new(database.clone())));
    let handled = consumer.poll_once().await.unwrap();
    assert_eq!(handled, [Handled::Done, Handled::Duplicate]);
    assert_eq!(broker.pending(), 0, "both acknowledged");
    assert!(broker.dead_letters("change_batch_quantity").is_empty());

    let versions: i64 =
        sqlx::query_scalar("SELECT version_number FROM products WHERE sku = 'LAMP'")
            .fetch_one(database.pool())
            .await
            .unwrap();
    assert_eq!(versions, 1, "created at version 0, changed once");
}
