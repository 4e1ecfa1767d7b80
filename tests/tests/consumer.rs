//! The transport-agnostic consumer over the in-memory broker: handled
//! messages are acknowledged, poison ones dead-lettered with their reason
//! and acknowledged, never blocking the next; a closed bus leaves them.

#[path = "support/stock.rs"]
mod stock;

use bus_core::transport::{Consumer, Handled, InMemoryBroker, Publisher};
use stock::{bus, message};

#[tokio::test]
async fn a_poison_message_is_dead_lettered_and_the_next_one_is_still_handled() {
    let (bus, seen) = bus();
    let broker = InMemoryBroker::default();
    for (name, payload) in [
        ("change_batch_quantity", r#"{"batchref": "b1", "qty": 5}"#),
        ("change_batch_quantity", "{not json"),
        ("no.such.message", "{}"),
        ("change_batch_quantity", r#"{"batchref": "b2", "qty": 7}"#),
    ] {
        broker
            .publish(&message("change_batch_quantity", name, payload))
            .await
            .unwrap();
    }
    let mut consumer = Consumer::new(bus, broker.subscribe("change_batch_quantity"));
    let handled = consumer.poll_once().await.unwrap();

    assert_eq!(handled.len(), 4);
    assert_eq!(handled[0], Handled::Done);
    assert!(
        matches!(&handled[1], Handled::DeadLettered(reason) if reason.starts_with("malformed `stock.change_quantity`"))
    );
    assert_eq!(
        handled[2],
        Handled::DeadLettered("no message is named `no.such.message` in this bus".into())
    );
    assert_eq!(handled[3], Handled::Done);
    assert_eq!(*seen.lock().unwrap(), ["b1=5", "b2=7"]);
    let dead = broker.dead_letters("change_batch_quantity");
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].0.payload, "{not json");
    assert_eq!(broker.pending(), 0, "everything was acknowledged");
}

#[tokio::test]
async fn a_closed_bus_leaves_deliveries_unacknowledged() {
    let (bus, seen) = bus();
    let broker = InMemoryBroker::default();
    broker
        .publish(&message(
            "change_batch_quantity",
            "change_batch_quantity",
            r#"{"batchref": "b1", "qty": 5}"#,
        ))
        .await
        .unwrap();
    bus.close();
    let mut consumer = Consumer::new(bus, broker.subscribe("change_batch_quantity"));
    assert_eq!(consumer.poll_once().await.unwrap(), [Handled::Left]);
    assert_eq!(broker.pending(), 1, "another consumer may claim it");
    assert!(broker.dead_letters("change_batch_quantity").is_empty());
    assert!(seen.lock().unwrap().is_empty());
}
