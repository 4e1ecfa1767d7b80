//! Against real servers: Redis Streams as the broker, and the example app
//! scaled out on PostgreSQL and Redis. Built only with the `services`
//! feature (`.ci/run` turns it on):
//! `cargo test -p arch-events-tests --features services --test scale_out`.
//! Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`), PostgreSQL at
//! `POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`, where
//! each test creates a database of its own); without them the tests fail
//! and say how to start them.

use std::time::Duration;

use arch_events::transport::{Consumer, Handled, Publisher, Subscriber};
use arch_events::MessageId;
use arch_events_redis::redis;
use arch_events_redis::{RedisPublisher, RedisSubscriber};
use fixture_stock::{bus, message};
use redis::aio::MultiplexedConnection;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn connection() -> MultiplexedConnection {
    match arch_events_redis::connect(&redis_url()).await {
        Ok(connection) => connection,
        Err(error) => panic!("{error}"),
    }
}

/// A stream name no other test run uses.
fn fresh_stream(what: &str) -> String {
    format!("test.{what}.{}", MessageId::new())
}

async fn stream_len(connection: &mut MultiplexedConnection, stream: &str) -> i64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(connection)
        .await
        .unwrap()
}

/// How many of `group`'s deliveries on `stream` are pending (read, not
/// acknowledged), as the broker says (`XPENDING`).
async fn pending(connection: &mut MultiplexedConnection, stream: &str, group: &str) -> i64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(connection)
        .await
        .unwrap();
    match summary {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::Int(count)) => *count,
            _ => 0,
        },
        _ => 0,
    }
}

/// The outbox of the app's database at `database_url`: `(unsent, sent)`.
async fn outbox(database_url: &str) -> (i64, i64) {
    let sql = "SELECT count(*) FILTER (WHERE sent_at IS NULL), \
               count(*) FILTER (WHERE sent_at IS NOT NULL) FROM bus_outbox";
    if database_url.starts_with("sqlite") {
        let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(database_url)
            .await
            .unwrap();
        sqlx::query_as(sql).fetch_one(&mut db).await.unwrap()
    } else {
        let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(database_url)
            .await
            .unwrap();
        sqlx::query_as(sql).fetch_one(&mut db).await.unwrap()
    }
}

/// Waits (at most 30 s) until the outbox at `database_url` has sent
/// everything: a row marked sent is never published again, so what the
/// broker holds then is final.
async fn outbox_all_sent(database_url: &str) -> (i64, i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (unsent, sent) = outbox(database_url).await;
        if unsent == 0 || std::time::Instant::now() > deadline {
            return (unsent, sent);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stream the stock fixture's command is declared for
/// (`external = "change_batch_quantity"`), the app's inbound stream too: a
/// test that consumes it takes its turn with the app's tests, and starts
/// from an empty stream.
async fn declared_stream(
    connection: &mut MultiplexedConnection,
) -> (tokio::sync::MutexGuard<'static, ()>, String) {
    let turn = APP_STREAMS.lock().await;
    reset_app_streams(connection).await;
    (turn, "change_batch_quantity".to_owned())
}

#[tokio::test]
async fn redis_streams_deliver_acknowledge_and_dead_letter_a_poison_message_without_blocking() {
    let mut connection = connection().await;
    let (_turn, stream) = declared_stream(&mut connection).await;
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

/// Entries another writer put on the stream that are not messages of ours
/// (a field name that is not UTF-8, fields missing, an id that is no id):
/// each is dead-lettered and acknowledged alone, the messages around them
/// are handled, and the group reads on.
#[tokio::test]
async fn entries_that_are_not_messages_are_dead_lettered_one_by_one_and_reading_goes_on() {
    let mut connection = connection().await;
    let (_turn, stream) = declared_stream(&mut connection).await;
    let publisher = RedisPublisher::new(connection.clone());
    publisher
        .publish(&message(
            &stream,
            "change_batch_quantity",
            r#"{"batchref": "b1", "qty": 5}"#,
        ))
        .await
        .unwrap();
    let hostile: [Vec<(Vec<u8>, Vec<u8>)>; 3] = [
        vec![
            (vec![0xff, 0xfe], b"x".to_vec()),
            (b"name".to_vec(), b"n".to_vec()),
        ],
        vec![(b"name".to_vec(), b"change_batch_quantity".to_vec())],
        vec![
            (b"id".to_vec(), b"not-an-id".to_vec()),
            (b"name".to_vec(), b"change_batch_quantity".to_vec()),
            (b"payload".to_vec(), b"{}".to_vec()),
        ],
    ];
    for fields in &hostile {
        let mut add = redis::cmd("XADD");
        add.arg(&stream).arg("*");
        for (field, value) in fields {
            add.arg(field.as_slice()).arg(value.as_slice());
        }
        add.query_async::<String>(&mut connection).await.unwrap();
    }
    publisher
        .publish(&message(
            &stream,
            "change_batch_quantity",
            r#"{"batchref": "b2", "qty": 7}"#,
        ))
        .await
        .unwrap();
    let subscriber =
        RedisSubscriber::join(&redis_url(), &stream, "app", "one", Duration::from_secs(30))
            .await
            .unwrap();
    let dead_stream = subscriber.dead_letter_stream();
    let (bus, seen) = bus();
    let handled = Consumer::new(bus, subscriber).poll_once().await.unwrap();

    assert_eq!(handled.len(), 5, "{handled:?}");
    for outcome in &handled[1..4] {
        assert!(
            matches!(outcome, Handled::DeadLettered(reason) if reason.contains("not a message")),
            "{outcome:?}"
        );
    }
    assert_eq!(*seen.lock().unwrap(), ["b1=5", "b2=7"]);
    assert_eq!(stream_len(&mut connection, &dead_stream).await, 3);
    assert_eq!(
        pending(&mut connection, &stream, "app").await,
        0,
        "all acknowledged"
    );
}

#[tokio::test]
async fn a_delivery_left_unacknowledged_by_a_dead_consumer_is_claimed_by_another() {
    let mut connection = connection().await;
    let (_turn, stream) = declared_stream(&mut connection).await;
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

    // A member that claims only what sat an hour: nothing to claim yet,
    // nothing new.
    let patient = RedisSubscriber::join(
        &redis_url(),
        &stream,
        "app",
        "patient",
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let (bus, seen) = bus();
    let mut consumer = Consumer::new(bus.clone(), patient);
    assert!(consumer.poll_once().await.unwrap().is_empty());
    assert!(seen.lock().unwrap().is_empty());
    // One that claims what sat `idle`: it gets it once the broker says it
    // has sat that long.
    let second = RedisSubscriber::join(&redis_url(), &stream, "app", "second", idle)
        .await
        .unwrap();
    let mut consumer = Consumer::new(bus, second);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let handled = loop {
        let handled = consumer.poll_once().await.unwrap();
        if !handled.is_empty() || std::time::Instant::now() > deadline {
            break handled;
        }
    };
    assert_eq!(handled, [Handled::Done]);
    assert_eq!(*seen.lock().unwrap(), ["b9=1"]);
}

#[tokio::test]
async fn on_redis_a_message_is_checked_against_the_stream_it_was_read_from() {
    let mut connection = connection().await;
    // Not `change_batch_quantity`: nothing the fixture declares.
    let stream = fresh_stream("undeclared");
    let publisher = RedisPublisher::new(connection.clone());
    for (name, payload) in [
        ("change_batch_quantity", r#"{"batchref": "b1", "qty": 5}"#),
        ("stock.deallocated", r#"{"orderid": "o1"}"#),
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
    assert_eq!(
        handled,
        [
            Handled::DeadLettered(format!(
                "the command `stock.change_quantity` is declared for stream \
                 `change_batch_quantity`: not accepted on stream `{stream}`"
            )),
            Handled::DeadLettered(format!(
                "the event `stock.deallocated` is internal (declared for no stream: no \
                 `external = \"...\"`): not accepted on stream `{stream}`"
            )),
        ]
    );
    assert!(seen.lock().unwrap().is_empty(), "no handler ran");
    assert_eq!(stream_len(&mut connection, &dead_stream).await, 2);
    delete(&mut connection, &[&stream, &dead_stream]).await;
}

async fn delete(connection: &mut MultiplexedConnection, keys: &[&str]) {
    let _: i64 = redis::cmd("DEL")
        .arg(keys)
        .query_async(connection)
        .await
        .unwrap();
}

/// How many entries a stream's macro node holds at most: what `MAXLEN ~`
/// may keep above its cap (it trims whole nodes only, and never below the
/// cap).
async fn node_max_entries(connection: &mut MultiplexedConnection) -> i64 {
    let config: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("stream-node-max-entries")
        .query_async(connection)
        .await
        .unwrap();
    config[1].parse().unwrap()
}

#[tokio::test]
async fn a_published_stream_keeps_about_its_cap_whether_published_one_by_one_or_in_batches() {
    let mut connection = connection().await;
    let cap = 10;
    // Redis trims whole nodes (100 entries by default): a stream holds its
    // cap and fewer than one node more, never less than its cap, whatever
    // the entries' sizes (a node also closes at 4 KiB, which only makes it
    // smaller). A bound that holds every time.
    let bound = cap + node_max_entries(&mut connection).await;
    let publisher = RedisPublisher::new(connection.clone()).max_len(cap as u64);

    let one_by_one = fresh_stream("capped");
    for n in 0..1_000 {
        let payload = format!(r#"{{"batchref": "b{n}", "qty": 1}}"#);
        publisher
            .publish(&message(&one_by_one, "change_batch_quantity", &payload))
            .await
            .unwrap();
    }
    let kept = stream_len(&mut connection, &one_by_one).await;
    assert!(
        (cap..bound).contains(&kept),
        "{kept} entries kept of 1,000 published, the cap being {cap}"
    );
    // The newest are the ones kept.
    assert_eq!(
        payloads(&mut connection, &one_by_one).await.last(),
        Some(&json!({"batchref": "b999", "qty": 1}))
    );

    let batched = fresh_stream("capped_batches");
    let messages: Vec<_> = (0..1_000)
        .map(|n| {
            message(
                &batched,
                "change_batch_quantity",
                &format!(r#"{{"batchref": "b{n}", "qty": 1}}"#),
            )
        })
        .collect();
    for batch in messages.chunks(100) {
        publisher.publish_batch(batch).await.unwrap();
    }
    let kept = stream_len(&mut connection, &batched).await;
    assert!(
        (cap..bound).contains(&kept),
        "{kept} entries kept of 1,000 published in batches, the cap being {cap}"
    );
    delete(&mut connection, &[&one_by_one, &batched]).await;
}

#[tokio::test]
async fn a_stream_is_capped_at_a_million_entries_unless_told_otherwise() {
    assert_eq!(RedisPublisher::DEFAULT_MAX_LEN, 1_000_000);
    assert_eq!(RedisSubscriber::DEFAULT_DEAD_LETTER_MAX_LEN, 10_000);
    assert_eq!(RedisSubscriber::DEFAULT_DEAD_LETTER_PAYLOAD_LIMIT, 4096);
    // The default cap is sent: a publisher without `max_len` trims too.
    let mut connection = connection().await;
    let stream = fresh_stream("default_cap");
    RedisPublisher::new(connection.clone())
        .publish(&message(&stream, "change_batch_quantity", "{}"))
        .await
        .unwrap();
    assert_eq!(stream_len(&mut connection, &stream).await, 1);
    delete(&mut connection, &[&stream]).await;
}

/// The fields of each entry of `stream`, oldest first.
async fn entries(
    connection: &mut MultiplexedConnection,
    stream: &str,
) -> Vec<std::collections::HashMap<String, Vec<u8>>> {
    let reply: redis::Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(connection)
        .await
        .unwrap();
    let redis::Value::Array(entries) = reply else {
        panic!("XRANGE: {reply:?}")
    };
    let bytes = |value: &redis::Value| match value {
        redis::Value::BulkString(bytes) => bytes.clone(),
        other => panic!("not a bulk string: {other:?}"),
    };
    entries
        .iter()
        .map(|entry| {
            let redis::Value::Array(parts) = entry else {
                panic!("entry: {entry:?}")
            };
            let redis::Value::Array(fields) = &parts[1] else {
                panic!("fields: {parts:?}")
            };
            fields
                .chunks(2)
                .map(|pair| (String::from_utf8(bytes(&pair[0])).unwrap(), bytes(&pair[1])))
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn a_dead_letter_of_a_megabyte_payload_keeps_4_kib_of_it_and_its_length() {
    let mut connection = connection().await;
    let stream = fresh_stream("huge");
    // 1 MB of a three-byte character: 4 KiB falls inside one, so the cut
    // lands on the boundary before it (4,095 bytes).
    let huge = "€".repeat(1_048_576 / 3 + 1);
    assert!(huge.len() >= 1_048_576);
    let publisher = RedisPublisher::new(connection.clone());
    publisher
        .publish(&message(&stream, "change_batch_quantity", &huge))
        .await
        .unwrap();
    // A small poison message: kept whole.
    publisher
        .publish(&message(&stream, "no.such.message", "{}"))
        .await
        .unwrap();
    let subscriber =
        RedisSubscriber::join(&redis_url(), &stream, "app", "one", Duration::from_secs(30))
            .await
            .unwrap();
    let dead_stream = subscriber.dead_letter_stream();
    let (bus, seen) = bus();
    let handled = Consumer::new(bus, subscriber).poll_once().await.unwrap();
    assert_eq!(
        handled[0],
        Handled::DeadLettered(format!(
            "a payload of {} bytes is over the limit of 65536 bytes: not read",
            huge.len()
        ))
    );
    assert!(matches!(&handled[1], Handled::DeadLettered(_)));
    assert!(seen.lock().unwrap().is_empty());

    let dead = entries(&mut connection, &dead_stream).await;
    assert_eq!(dead.len(), 2);
    let text = |entry: &std::collections::HashMap<String, Vec<u8>>, field: &str| {
        String::from_utf8(entry[field].clone()).unwrap()
    };
    let payload = text(&dead[0], "payload");
    assert_eq!(payload.len(), 4095, "cut on a character boundary");
    assert!(huge.starts_with(&payload));
    assert_eq!(text(&dead[0], "payload_len"), huge.len().to_string());
    assert_eq!(text(&dead[0], "payload_truncated"), "true");
    assert!(text(&dead[0], "reason").contains("over the limit"));
    let stored: usize = dead[0].iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(
        stored < 4096 + 1024,
        "the dead letter holds {stored} bytes: the payload's first 4 KiB and a few fields"
    );
    assert_eq!(text(&dead[1], "payload"), "{}");
    assert_eq!(text(&dead[1], "payload_len"), "2");
    assert_eq!(text(&dead[1], "payload_truncated"), "false");
    delete(&mut connection, &[&stream, &dead_stream]).await;
}

#[tokio::test]
async fn a_dead_letter_stream_keeps_about_its_cap_and_its_payload_limit_is_set_on_the_subscriber() {
    let mut connection = connection().await;
    let cap = 10;
    let bound = cap + node_max_entries(&mut connection).await;
    let stream = fresh_stream("dead_capped");
    let mut subscriber =
        RedisSubscriber::join(&redis_url(), &stream, "app", "one", Duration::from_secs(30))
            .await
            .unwrap()
            .dead_letter_max_len(cap as u64)
            .dead_letter_payload_limit(8);
    let dead_stream = subscriber.dead_letter_stream();
    for n in 0..1_000 {
        let delivery = arch_events::transport::Delivery {
            message: message(&stream, "no.such.message", &format!("poison number {n}")),
            receipt: format!("{n}-0"),
            redeliveries: 0,
        };
        subscriber
            .dead_letter(&delivery, "a reason longer than eight bytes")
            .await
            .unwrap();
    }
    let kept = stream_len(&mut connection, &dead_stream).await;
    assert!(
        (cap..bound).contains(&kept),
        "{kept} dead letters kept of 1,000, the cap being {cap}"
    );
    let dead = entries(&mut connection, &dead_stream).await;
    let last = dead.last().unwrap();
    assert_eq!(last["payload"], b"poison n");
    assert_eq!(last["payload_len"], b"17");
    assert_eq!(last["payload_truncated"], b"true");
    assert_eq!(last["reason"], b"a reason", "the reason is capped too");
    assert_eq!(last["name"], b"no.such.", "and the name");
    delete(&mut connection, &[&stream, &dead_stream]).await;
}

// ---------------------------------------------------------------------------
// The example app scaled out: its real binary, PostgreSQL, and Redis
// ---------------------------------------------------------------------------

use arch_events_test_support::{postgres, server};

use example_app::entrypoints::broker::CONSUMER_GROUP;
use serde_json::{json, Value};
use server::{add_batch, database, example_app_binary, get, post, Server};

/// The app's streams are fixed names: its tests take turns.
static APP_STREAMS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn reset_app_streams(connection: &mut MultiplexedConnection) {
    let _: i64 = redis::cmd("DEL")
        .arg("line_allocated")
        .arg("change_batch_quantity")
        .arg("change_batch_quantity.dead")
        .arg("shipment_confirmed")
        .arg("shipment_confirmed.dead")
        .query_async(connection)
        .await
        .unwrap();
}

/// The payloads on `stream`, oldest first.
async fn payloads(connection: &mut MultiplexedConnection, stream: &str) -> Vec<Value> {
    let entries: redis::Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(connection)
        .await
        .unwrap();
    let redis::Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| match entry {
            redis::Value::Array(mut parts) => parts.pop(),
            _ => None,
        })
        .filter_map(|fields| match fields {
            redis::Value::Array(fields) => fields
                .chunks(2)
                .find(|pair| pair[0] == redis::Value::BulkString(b"payload".to_vec()))
                .and_then(|pair| match &pair[1] {
                    redis::Value::BulkString(bytes) => serde_json::from_slice(bytes).ok(),
                    _ => None,
                }),
            _ => None,
        })
        .collect()
}

/// Waits (at most 15 s) until `stream` holds `count` payloads.
async fn wait_for(
    connection: &mut MultiplexedConnection,
    stream: &str,
    count: usize,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let found = payloads(connection, stream).await;
        if found.len() >= count || std::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The app's turn on its streams, reset: the lock, a Redis connection and
/// URL, and a fresh PostgreSQL database.
struct AppRun {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    connection: MultiplexedConnection,
    database: postgres::FreshDatabase,
    database_url: String,
    url: String,
}

async fn app_run() -> AppRun {
    let turn = APP_STREAMS.lock().await;
    let mut connection = connection().await;
    reset_app_streams(&mut connection).await;
    let database = postgres::FreshDatabase::create().await;
    AppRun {
        _turn: turn,
        connection,
        database_url: database.url.clone(),
        database,
        url: redis_url(),
    }
}

impl AppRun {
    /// Starts the app on this run's database and Redis, with more settings.
    fn start(&self, env: &[(&str, &str)]) -> Server {
        let mut env = env.to_vec();
        env.push(("REDIS_URL", &self.url));
        Server::start_with(&example_app_binary(), &self.database_url, &env)
    }
}

/// Stocks `sku` in `b1` (10, in the warehouse) and `b2` (10, shipping), and
/// allocates `o1` (`qty`) in `b1`.
async fn two_batches_and_an_order(server: &Server, sku: &str, qty: u32) {
    add_batch(server, "b1", sku, 10, None).await;
    add_batch(server, "b2", sku, 10, Some("2030-01-01")).await;
    let (status, body) = post(
        server,
        "/allocate",
        json!({"orderid": "o1", "sku": sku, "qty": qty}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["batchref"], "b1");
}

async fn publish_command(connection: &MultiplexedConnection, payload: &str) {
    RedisPublisher::new(connection.clone())
        .publish(&message(
            "change_batch_quantity",
            "change_batch_quantity",
            payload,
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_change_batch_quantity_message_reallocates_and_line_allocated_names_the_new_batch() {
    let run = app_run().await;
    let mut connection = run.connection.clone();
    let server = run.start(&[]);
    two_batches_and_an_order(&server, "VASE", 8).await;

    publish_command(&connection, r#"{"batchref": "b1", "qty": 5}"#).await;

    let allocated = wait_for(&mut connection, "line_allocated", 2).await;
    assert_eq!(
        allocated,
        [
            json!({"orderid": "o1", "sku": "VASE", "qty": 8, "batchref": "b1", "version": 3}),
            json!({"orderid": "o1", "sku": "VASE", "qty": 8, "batchref": "b2", "version": 5}),
        ]
    );
    // The read model (in PostgreSQL) followed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(&server, "/allocations/o1").await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        if body == json!([{"sku": "VASE", "qty": 8, "batchref": "b2"}]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "view: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
}

#[tokio::test]
async fn a_poison_message_lands_in_the_dead_letter_stream_and_the_next_one_is_handled() {
    let run = app_run().await;
    let mut connection = run.connection.clone();
    let server = run.start(&[]);
    two_batches_and_an_order(&server, "CHAIR", 6).await;

    publish_command(&connection, r#"{"batchref": "b1", "qty": "many"}"#).await;
    publish_command(&connection, r#"{"batchref": "b1", "qty": 2}"#).await;

    let allocated = wait_for(&mut connection, "line_allocated", 2).await;
    assert_eq!(allocated.len(), 2, "{allocated:?}");
    assert_eq!(
        allocated[1]["batchref"], "b2",
        "the message after the poison was handled"
    );
    let dead: redis::Value = redis::cmd("XRANGE")
        .arg("change_batch_quantity.dead")
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    let text = format!("{dead:?}");
    assert!(text.contains("many"), "the poison is kept: {text}");
    assert!(text.contains("malformed"), "with its reason: {text}");
    drop(server);
}

#[tokio::test]
async fn an_event_committed_before_a_kill_9_arrives_exactly_once_after_the_restart() {
    let run = app_run().await;
    let mut connection = run.connection.clone();
    // The fault-injection switch: the relay waits ten minutes between
    // rounds, so the committed event is not relayed before the kill.
    let server = run.start(&[("RELAY_PAUSE_MS", "600000")]);
    add_batch(&server, "b1", "LAMP", 10, None).await;
    let (status, _) = post(
        &server,
        "/allocate",
        json!({"orderid": "o9", "sku": "LAMP", "qty": 1}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "committed");
    // Committed with its event in the outbox, not relayed: the outbox says
    // so, and the broker has nothing.
    assert_eq!(
        outbox(&run.database_url).await,
        (1, 0),
        "in the outbox, unsent"
    );
    assert!(
        payloads(&mut connection, "line_allocated").await.is_empty(),
        "not relayed yet"
    );
    server.kill_hard();

    let restarted = run.start(&[]);
    // Once its row is marked sent it is never published again: what the
    // broker holds then is final.
    assert_eq!(outbox_all_sent(&run.database_url).await, (0, 1));
    let allocated = payloads(&mut connection, "line_allocated").await;
    assert_eq!(
        allocated,
        [json!({"orderid": "o9", "sku": "LAMP", "qty": 1, "batchref": "b1", "version": 2})],
        "exactly once"
    );
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_database_loses_nothing_and_the_app_recovers_when_it_is_back() {
    let run = app_run().await;
    let mut connection = run.connection.clone();
    let server = run.start(&[]);
    two_batches_and_an_order(&server, "CHAIR", 6).await;
    assert_eq!(
        wait_for(&mut connection, "line_allocated", 1).await.len(),
        1
    );

    run.database.kill().await;
    // A request fails with a clear answer, and the process stays up.
    let (status, body) = post(
        &server,
        "/allocate",
        json!({"orderid": "o2", "sku": "CHAIR", "qty": 1}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        server::message(&body).contains("could not complete"),
        "{body}"
    );
    assert!(
        body["error_id"].is_string(),
        "the client can quote it: {body}"
    );
    // A message arriving meanwhile is neither handled nor dead-lettered:
    // it stays pending. The broker says when the app has read it; with the
    // database down the app cannot acknowledge it (it acknowledges only
    // after its inbox, in the database, said whether it was handled).
    publish_command(&connection, r#"{"batchref": "b1", "qty": 2}"#).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pending(&mut connection, "change_batch_quantity", CONSUMER_GROUP).await < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the app never read it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(payloads(&mut connection, "line_allocated").await.len(), 1);
    assert_eq!(
        stream_len(&mut connection, "change_batch_quantity.dead").await,
        0
    );

    run.database.revive().await;
    // The pending message is delivered again (claimed once idle for the
    // app's CLAIM_AFTER, 10 s) and handled: o1 moves to b2.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let allocated = loop {
        let found = payloads(&mut connection, "line_allocated").await;
        if found.len() >= 2 || std::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        allocated.get(1),
        Some(&json!({"orderid": "o1", "sku": "CHAIR", "qty": 6, "batchref": "b2", "version": 5})),
        "{allocated:?}"
    );
    let (status, body) = post(
        &server,
        "/allocate",
        json!({"orderid": "o2", "sku": "CHAIR", "qty": 1}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        stream_len(&mut connection, "change_batch_quantity.dead").await,
        0
    );
    assert_eq!(
        pending(&mut connection, "change_batch_quantity", CONSUMER_GROUP).await,
        0,
        "handled and acknowledged once the database was back"
    );
    drop(server);
}

#[tokio::test]
async fn the_relay_runs_as_a_process_of_its_own() {
    let run = app_run().await;
    let (mut connection, database_url, url) = (
        run.connection.clone(),
        run.database_url.clone(),
        run.url.clone(),
    );
    let binary = example_app_binary();
    // The app without a broker: its external events wait in the outbox.
    let server = Server::start_with(&binary, &database_url, &[]);
    add_batch(&server, "b1", "MIRROR", 10, None).await;
    let (status, _) = post(
        &server,
        "/allocate",
        json!({"orderid": "o5", "sku": "MIRROR", "qty": 2}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    assert_eq!(outbox(&database_url).await, (1, 0), "waiting in the outbox");
    assert!(payloads(&mut connection, "line_allocated").await.is_empty());

    let relay = |redis: Option<&str>| {
        let mut command = std::process::Command::new(&binary);
        command
            .args(["--database-url", &database_url, "relay"])
            .env("RUST_LOG", "warn")
            .env_remove("REDIS_URL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some(redis) = redis {
            command.env("REDIS_URL", redis);
        }
        command
    };
    // Without Redis it refuses to start, and says why.
    let refused = relay(None).output().unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("give --redis-url or REDIS_URL"), "{said}");

    let mut relay = relay(Some(&url)).spawn().unwrap();
    let published = wait_for(&mut connection, "line_allocated", 1).await;
    assert_eq!(
        published,
        [json!({"orderid": "o5", "sku": "MIRROR", "qty": 2, "batchref": "b1", "version": 2})]
    );
    // Ctrl-C stops it cleanly.
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &relay.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = relay.wait().unwrap();
    assert!(status.success(), "{status}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_on_postgresql_and_redis_never_oversell_or_double_publish() {
    let run = app_run().await;
    let database_url = run.database_url.clone();
    let allocated = two_processes_allocate_concurrently(&run, &database_url).await;
    // The database agrees with what the processes answered.
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&database_url)
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM allocations WHERE batchref = 'b1'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, allocated as i64, "every 202 is one stored line");
}

/// The same on one SQLite file (one machine): SQLite's file lock plays the
/// part of PostgreSQL's row locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_on_one_sqlite_file_never_oversell_or_double_publish() {
    let run = app_run().await;
    let (_dir, path) = database();
    two_processes_allocate_concurrently(&run, &format!("sqlite://{}", path.display())).await;
}

/// Two processes over `database_url` and Redis, 40 allocations of one unit
/// spread over both on 20 units: none oversold, each committed allocation
/// published exactly once, whichever relay took it. Returns how many
/// committed.
async fn two_processes_allocate_concurrently(run: &AppRun, database_url: &str) -> usize {
    let (mut connection, url) = (run.connection.clone(), run.url.clone());
    let binary = example_app_binary();
    let servers = [
        Server::start_with(
            &binary,
            database_url,
            &[("REDIS_URL", &url), ("CONSUMER_NAME", "one")],
        ),
        Server::start_with(
            &binary,
            database_url,
            &[("REDIS_URL", &url), ("CONSUMER_NAME", "two")],
        ),
    ];
    add_batch(&servers[0], "b1", "TABLE", 20, None).await;

    let client = reqwest::Client::new();
    let requests = (0..40).map(|n| {
        let url = servers[n % 2].url("/allocate");
        let client = client.clone();
        async move {
            let response = client
                .post(url)
                .json(&json!({"orderid": format!("o{n}"), "sku": "TABLE", "qty": 1}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (n, status, body)
        }
    });
    let answers = futures::future::join_all(requests).await;
    let mut allocated: Vec<String> = answers
        .iter()
        .filter(|(_, status, body)| {
            *status == reqwest::StatusCode::ACCEPTED && body["batchref"] == "b1"
        })
        .map(|(n, _, _)| format!("o{n}"))
        .collect();
    for (_, status, body) in &answers {
        assert!(
            *status == reqwest::StatusCode::ACCEPTED || *status == reqwest::StatusCode::CONFLICT,
            "{status} {body}"
        );
    }
    assert!(
        allocated.len() <= 20,
        "oversold: {} lines on 20 units",
        allocated.len()
    );
    assert!(!allocated.is_empty());
    eprintln!(
        "two processes on {}: 40 requests, {} allocated, {} refused after conflicts",
        database_url.split(':').next().unwrap_or("?"),
        allocated.len(),
        answers
            .iter()
            .filter(|(_, status, _)| *status == reqwest::StatusCode::CONFLICT)
            .count()
    );

    // Each committed allocation is published once, whichever process's
    // relay claimed it.
    // Every row marked sent: none is published again, what the broker
    // holds is final.
    let (unsent, sent) = outbox_all_sent(database_url).await;
    assert_eq!(
        (unsent, sent),
        (0, allocated.len() as i64),
        "each one relayed"
    );
    let published_later = payloads(&mut connection, "line_allocated").await;
    let mut orders: Vec<String> = published_later
        .iter()
        .map(|p| p["orderid"].as_str().unwrap().to_owned())
        .collect();
    orders.sort();
    allocated.sort();
    assert_eq!(
        orders, allocated,
        "exactly the committed allocations, once each"
    );
    allocated.len()
}

/// A shipment confirmed on the stream `shipment_confirmed` keeps the
/// order's allocations past its deadline; an order not confirmed is
/// released; a confirmation that does not read is dead-lettered with the
/// reason, and the stream goes on.
#[tokio::test]
async fn a_shipment_confirmed_on_the_stream_keeps_the_order_and_an_unconfirmed_one_is_released() {
    let run = app_run().await;
    let connection = run.connection.clone();
    let server = run.start(&[("SHIPMENT_DEADLINE_SECS", "4")]);
    add_batch(&server, "b1", "LAMP", 10, None).await;
    for order in ["kept", "late"] {
        let (status, body) = post(
            &server,
            "/allocate",
            json!({"orderid": order, "sku": "LAMP", "qty": 2}),
        )
        .await;
        assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    }
    let publisher = RedisPublisher::new(connection.clone());
    for payload in [r#"{"orderid": ""}"#, r#"{"orderid": "kept"}"#] {
        publisher
            .publish(&message(
                "shipment_confirmed",
                "shipment_confirmed",
                payload,
            ))
            .await
            .unwrap();
    }
    // The deadline passes: the unconfirmed order is released.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = get(&server, "/allocations/late").await;
        if status == reqwest::StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "late was not released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = get(&server, "/allocations/kept").await;
    assert_eq!(
        (status, body),
        (
            reqwest::StatusCode::OK,
            json!([{"sku": "LAMP", "qty": 2, "batchref": "b1"}])
        ),
        "confirmed on the stream: kept"
    );
    let mut connection = connection.clone();
    let dead: redis::Value = redis::cmd("XRANGE")
        .arg("shipment_confirmed.dead")
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    let text = format!("{dead:?}");
    assert!(text.contains("orderid"), "the bad one is kept: {text}");
    assert!(text.contains("malformed"), "with its reason: {text}");
    drop(server);
}
