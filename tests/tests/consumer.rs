//! The transport-agnostic consumer over the in-memory broker: handled
//! messages are acknowledged, poison ones (malformed, unknown, not declared
//! for the stream, too large) dead-lettered with their reason and
//! acknowledged, never blocking the next; a closed bus leaves them.

use std::time::Duration;

use arch_events::transport::{
    Consumer, Delivery, Handled, InMemoryBroker, Publisher, Subscriber, TransportError,
};
use fixture_stock::{bus, message};

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

#[tokio::test]
async fn only_the_messages_declared_for_the_stream_are_dispatched_the_others_are_dead_lettered() {
    let (bus, seen) = bus();
    let broker = InMemoryBroker::default();
    let stream = "change_batch_quantity";
    for (name, payload) in [
        // An internal event (serde, no `external`): refused.
        ("stock.deallocated", r#"{"orderid": "o1"}"#),
        // An event declared for `line_allocated`, by its external name and
        // by its own: refused.
        ("line_allocated", r#"{"orderid": "o2"}"#),
        ("stock.allocated", r#"{"orderid": "o3"}"#),
        // The command declared for this stream, behind them: dispatched.
        ("change_batch_quantity", r#"{"batchref": "b1", "qty": 5}"#),
    ] {
        broker
            .publish(&message(stream, name, payload))
            .await
            .unwrap();
    }
    let mut consumer = Consumer::new(bus, broker.subscribe(stream));
    let handled = consumer.poll_once().await.unwrap();

    let internal = "the event `stock.deallocated` is internal (declared for no stream: no \
                    `external = \"...\"`): not accepted on stream `change_batch_quantity`";
    let elsewhere = "the event `stock.allocated` is declared for stream `line_allocated`: \
                     not accepted on stream `change_batch_quantity`";
    assert_eq!(
        handled,
        [
            Handled::DeadLettered(internal.into()),
            Handled::DeadLettered(elsewhere.into()),
            Handled::DeadLettered(elsewhere.into()),
            Handled::Done,
        ]
    );
    assert_eq!(*seen.lock().unwrap(), ["b1=5"], "no event handler ran");
    let dead = broker.dead_letters(stream);
    let reasons: Vec<&str> = dead.iter().map(|(_, reason)| reason.as_str()).collect();
    assert_eq!(reasons, [internal, elsewhere, elsewhere]);
    assert_eq!(dead[0].0.name, "stock.deallocated");
    assert_eq!(broker.pending(), 0, "the refused ones were acknowledged");
}

/// A subscriber of `change_batch_quantity` whose one delivery says it
/// came from `line_allocated` (a field whoever writes to the stream sets).
struct Forged {
    deliveries: Vec<Delivery>,
    dead: Vec<String>,
}

#[arch_events::async_trait]
impl Subscriber for Forged {
    fn stream(&self) -> &str {
        "change_batch_quantity"
    }

    async fn next(&mut self, _: usize, _: Duration) -> Result<Vec<Delivery>, TransportError> {
        Ok(std::mem::take(&mut self.deliveries))
    }

    async fn ack(&mut self, _: &Delivery) -> Result<(), TransportError> {
        Ok(())
    }

    async fn dead_letter(&mut self, _: &Delivery, reason: &str) -> Result<(), TransportError> {
        self.dead.push(reason.to_owned());
        Ok(())
    }
}

#[tokio::test]
async fn the_stream_checked_is_the_subscribers_not_the_one_the_delivery_names() {
    let (bus, seen) = bus();
    let forged = Forged {
        deliveries: vec![Delivery {
            message: message("line_allocated", "line_allocated", r#"{"orderid": "o1"}"#),
            receipt: "1".into(),
            redeliveries: 0,
        }],
        dead: Vec::new(),
    };
    let mut consumer = Consumer::new(bus, forged);
    let handled = consumer.poll_once().await.unwrap();
    assert!(
        matches!(&handled[..], [Handled::DeadLettered(reason)]
            if reason.ends_with("declared for stream `line_allocated`: not accepted on stream `change_batch_quantity`")),
        "{handled:?}"
    );
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_oversized_payload_is_dead_lettered_unread_and_the_next_one_is_handled() {
    let (bus, seen) = bus();
    let broker = InMemoryBroker::default();
    let stream = "change_batch_quantity";
    // Valid JSON for the command, padded past the default 64 KiB limit.
    let big = format!(
        r#"{{"batchref": "b1", "qty": 5, "padding": "{}"}}"#,
        "x".repeat(Consumer::<arch_events::transport::InMemorySubscriber>::DEFAULT_MAX_PAYLOAD)
    );
    broker
        .publish(&message(stream, "change_batch_quantity", &big))
        .await
        .unwrap();
    broker
        .publish(&message(
            stream,
            "change_batch_quantity",
            r#"{"batchref": "b2", "qty": 7}"#,
        ))
        .await
        .unwrap();
    let mut consumer = Consumer::new(bus, broker.subscribe(stream));
    let handled = consumer.poll_once().await.unwrap();
    assert_eq!(
        handled,
        [
            Handled::DeadLettered(format!(
                "a payload of {} bytes is over the limit of 65536 bytes: not read",
                big.len()
            )),
            Handled::Done,
        ]
    );
    assert_eq!(*seen.lock().unwrap(), ["b2=7"]);
    assert_eq!(broker.dead_letters(stream).len(), 1);
    assert_eq!(broker.pending(), 0);
}

#[tokio::test]
async fn a_dead_letter_reason_quotes_at_most_a_kilobyte_of_what_was_sent() {
    let (bus, _) = bus();
    let broker = InMemoryBroker::default();
    let stream = "change_batch_quantity";
    let name = "n".repeat(1 << 20);
    broker.publish(&message(stream, &name, "{}")).await.unwrap();
    let mut consumer = Consumer::new(bus, broker.subscribe(stream));
    let handled = consumer.poll_once().await.unwrap();
    let [Handled::DeadLettered(reason)] = handled.as_slice() else {
        panic!("{handled:?}");
    };
    assert!(reason.len() < 1100, "{} bytes", reason.len());
    assert!(
        reason.ends_with(" bytes)"),
        "it says it was cut: {}",
        &reason[1000..]
    );
    let dead = broker.dead_letters(stream);
    assert_eq!(dead.len(), 1);
    assert!(dead[0].1.len() < 1100, "the stored reason is cut too");
}

#[tokio::test]
async fn the_payload_limit_is_set_on_the_consumer() {
    let (bus, seen) = bus();
    let broker = InMemoryBroker::default();
    let stream = "change_batch_quantity";
    let exactly = r#"{"batchref": "b1", "qty": 5}"#;
    let one_more = r#"{"batchref": "b22", "qty": 5}"#;
    for payload in [exactly, one_more] {
        broker
            .publish(&message(stream, "change_batch_quantity", payload))
            .await
            .unwrap();
    }
    let mut consumer = Consumer::new(bus, broker.subscribe(stream)).max_payload(exactly.len());
    let handled = consumer.poll_once().await.unwrap();
    assert_eq!(handled[0], Handled::Done, "a payload at the limit is read");
    assert_eq!(
        handled[1],
        Handled::DeadLettered(format!(
            "a payload of {} bytes is over the limit of {} bytes: not read",
            one_more.len(),
            exactly.len()
        ))
    );
    assert_eq!(*seen.lock().unwrap(), ["b1=5"]);
}
