//! Against real servers: Redis Streams as the broker. Built only with the
//! `services` feature (`.ci/run` turns it on):
//! `cargo test -p arch-events-tests --features services --test scale_out`.
//! Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`); without it the
//! tests fail and say how to start it.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::transport::{Consumer, Handled, OutboundMessage, Publisher, Subscriber};
use bus_core::{handler, Bus, Command, Dependencies, MessageId, Registrations};
use bus_redis::redis;
use bus_redis::{RedisPublisher, RedisSubscriber};
use redis::aio::MultiplexedConnection;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn connection() -> MultiplexedConnection {
    match bus_redis::connect(&redis_url()).await {
        Ok(connection) => connection,
        Err(error) => panic!("{error}"),
    }
}

/// A stream name no other test run uses.
fn fresh_stream(what: &str) -> String {
    format!("test.{what}.{}", MessageId::new())
}

#[derive(Debug, serde::Deserialize, Command)]
#[command(name = "stock.change_quantity", external = "change_batch_quantity")]
struct ChangeQuantity {
    batchref: String,
    qty: u32,
}

#[handler]
fn change_quantity(cmd: ChangeQuantity, seen: &Mutex<Vec<String>>) -> Result<(), Infallible> {
    seen.lock()
        .unwrap()
        .push(format!("{}={}", cmd.batchref, cmd.qty));
    Ok(())
}

fn bus() -> (Bus, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let bus = Bus::builder()
        .registrations(Registrations::new().handler::<change_quantity>())
        .dependencies(Dependencies::new().shared_arc(seen.clone()))
        .build()
        .unwrap();
    (bus, seen)
}

fn message(stream: &str, name: &str, payload: &str) -> OutboundMessage {
    let id = MessageId::new();
    OutboundMessage {
        id,
        stream: stream.into(),
        name: name.into(),
        payload: payload.into(),
        correlation_id: id,
        causation_id: None,
    }
}

async fn stream_len(connection: &mut MultiplexedConnection, stream: &str) -> i64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(connection)
        .await
        .unwrap()
}

#[tokio::test]
async fn redis_streams_deliver_acknowledge_and_dead_letter_a_poison_message_without_blocking() {
    let mut connection = connection().await;
    let stream = fresh_stream("cbq");
    let publisher = RedisPublisher::new(connection.clone());
    for (name, payload) in [
        ("change_batch_quantity", r#"{"batchref": "b1", "qty": 5}"#),
        ("change_batch_quantity", "{poison"),
        ("change_batch_quantity", r#"{"batchref": "b2", "qty": 7}"#),
    ] {
        publisher
            .publish(&message(&stream, name, payload))
            .await
            .unwrap();
    }
    let subscriber =
        RedisSubscriber::join(&redis_url(), &stream, "app", "one", Duration::from_secs(30))
            .await
            .unwrap();
    let dead_stream = subscriber.dead_letter_stream();
    let (bus, seen) = bus();
    let handled = Consumer::new(bus, subscriber).poll_once().await.unwrap();

    assert_eq!(handled.len(), 3);
    assert!(
        matches!(&handled[1], Handled::DeadLettered(reason) if reason.starts_with("malformed"))
    );
    assert_eq!(
        *seen.lock().unwrap(),
        ["b1=5", "b2=7"],
        "the poison did not block the next"
    );
    assert_eq!(stream_len(&mut connection, &dead_stream).await, 1);
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("app")
        .query_async(&mut connection)
        .await
        .unwrap();
    let redis::Value::Array(summary) = pending else {
        panic!("XPENDING: {pending:?}")
    };
    assert_eq!(summary[0], redis::Value::Int(0), "everything acknowledged");
}

#[tokio::test]
async fn a_delivery_left_unacknowledged_by_a_dead_consumer_is_claimed_by_another() {
    let connection = connection().await;
    let stream = fresh_stream("claim");
    RedisPublisher::new(connection.clone())
        .publish(&message(
            &stream,
            "change_batch_quantity",
            r#"{"batchref": "b9", "qty": 1}"#,
        ))
        .await
        .unwrap();
    let idle = Duration::from_millis(200);
    // The first member takes it and dies before acknowledging.
    let mut first = RedisSubscriber::join(&redis_url(), &stream, "app", "first", idle)
        .await
        .unwrap();
    let taken = first.next(10, Duration::from_millis(100)).await.unwrap();
    assert_eq!(taken.len(), 1);
    drop(first);

    let second = RedisSubscriber::join(&redis_url(), &stream, "app", "second", idle)
        .await
        .unwrap();
    let (bus, seen) = bus();
    let mut consumer = Consumer::new(bus, second);
    // Not yet idle long enough: nothing to claim, nothing new.
    assert!(consumer.poll_once().await.unwrap().is_empty());
    tokio::time::sleep(idle + Duration::from_millis(50)).await;
    assert_eq!(consumer.poll_once().await.unwrap(), [Handled::Done]);
    assert_eq!(*seen.lock().unwrap(), ["b9=1"]);
}
