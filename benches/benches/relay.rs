//! The outbox relay's throughput, from committed rows to Redis, on SQLite
//! and PostgreSQL, with 1 and 4 relays, next to the ceiling (the same
//! messages `XADD`ed straight to Redis by one pipelined client) and to the
//! database's share alone (the same relays publishing to a broker that
//! drops everything). Needs Redis and PostgreSQL:
//!
//! ```sh
//! cargo bench -p arch-events-benches --bench relay            # 50,000 messages, batches of 1,000
//! RELAY_MESSAGES=100000 RELAY_BATCH=500 cargo bench -p arch-events-benches --bench relay
//! ```
//!
//! `REDIS_URL` (default `redis://127.0.0.1:6379`) and `POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`, where a database of
//! its own is created and dropped) say where the servers are.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arch_events::transport::{OutboundMessage, Publisher, TransportError};
use arch_events::{async_trait, Event, EventReleaser, MessageContext, PendingEvent};
use arch_events_redis::RedisPublisher;
use arch_events_sqlx::{Backend, Settings, Store};
use sqlx::{Connection, PgConnection, Pool, Postgres, Sqlite};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "bench.shipped", external = "bench.relay")]
struct Shipped {
    order: u64,
    sku: String,
    qty: u32,
}

/// A broker that takes everything and keeps nothing: what is left is the
/// database's share of a relay round.
struct Drop;

#[async_trait]
impl Publisher for Drop {
    async fn publish(&self, _: &OutboundMessage) -> Result<(), TransportError> {
        Ok(())
    }
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn number(name: &str, default: u64) -> u64 {
    env(name, &default.to_string()).parse().expect("a number")
}

/// Commits `count` external events, `per_commit` to a transaction.
async fn commit<DB: Backend>(store: &Store<DB>, count: u64, per_commit: u64) {
    let mut order = 0;
    while order < count {
        let mut tx = store.begin().await.unwrap();
        let events: Vec<PendingEvent> = (order..(order + per_commit).min(count))
            .map(|order| {
                PendingEvent::new(Shipped {
                    order,
                    sku: "RED-CHAIR".into(),
                    qty: 3,
                })
            })
            .collect();
        order += events.len() as u64;
        let staged = store
            .stage(
                &mut tx,
                &EventReleaser::new(),
                &MessageContext::root(),
                events,
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        drop(staged);
    }
}

/// Runs `relays` relays (each on a publisher of its own) until the outbox
/// is empty; returns how long that took.
async fn relay<DB: Backend>(
    store: &Store<DB>,
    publishers: Vec<Arc<dyn Publisher>>,
    batch: u32,
) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = publishers
        .into_iter()
        .map(|publisher| {
            let outbox = store.outbox();
            tokio::spawn(async move {
                let mut sent = 0;
                loop {
                    match outbox.relay_once(&*publisher, batch).await.unwrap() {
                        0 => return sent,
                        n => sent += n,
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

async fn redis_publishers(url: &str, count: usize) -> Vec<Arc<dyn Publisher>> {
    let mut publishers: Vec<Arc<dyn Publisher>> = Vec::new();
    for _ in 0..count {
        let connection = arch_events_redis::connect(url).await.unwrap();
        publishers.push(Arc::new(RedisPublisher::new(connection)));
    }
    publishers
}

async fn trim(url: &str) {
    let mut connection = arch_events_redis::connect(url).await.unwrap();
    let _: () = arch_events_redis::redis::cmd("DEL")
        .arg("bench.relay")
        .query_async(&mut connection)
        .await
        .unwrap();
}

/// The ceiling: the same messages, `XADD`ed by one pipelined client in
/// batches of `batch`.
async fn ceiling(url: &str, count: u64, batch: u32) -> Duration {
    let publisher = RedisPublisher::new(arch_events_redis::connect(url).await.unwrap());
    let messages: Vec<OutboundMessage> = (0..count)
        .map(|order| {
            let event = PendingEvent::new(Shipped {
                order,
                sku: "RED-CHAIR".into(),
                qty: 3,
            });
            OutboundMessage::from_event(&event, &MessageContext::root())
                .unwrap()
                .unwrap()
        })
        .collect();
    let started = Instant::now();
    for chunk in messages.chunks(batch as usize) {
        publisher.publish_batch(chunk).await.unwrap();
    }
    started.elapsed()
}

fn rate(count: u64, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64()
}

async fn bench<DB: Backend>(
    name: &str,
    pool: Pool<DB>,
    redis: &str,
    count: u64,
    batch: u32,
    ceiling: f64,
) {
    let store = Store::open_with(pool, Settings::default()).await.unwrap();
    for relays in [1, 4] {
        for (broker, publishers) in [
            ("Redis", redis_publishers(redis, relays).await),
            (
                "nothing (the database's share)",
                vec![Arc::new(Drop) as Arc<dyn Publisher>; relays],
            ),
        ] {
            trim(redis).await;
            let filling = Instant::now();
            commit(&store, count, 1_000).await;
            let filled = filling.elapsed();
            let took = relay(&store, publishers, batch).await;
            let per_second = rate(count, took);
            println!(
                "| {name} | {relays} | {broker} | {:>9.0} msg/s | {:.2} × ceiling | {:.2} s (committed in {:.2} s) |",
                per_second,
                per_second / ceiling,
                took.as_secs_f64(),
                filled.as_secs_f64(),
            );
            let left = store.outbox().lag().await.unwrap().count;
            assert_eq!(left, 0, "all sent");
            store
                .outbox()
                .purge_sent(chrono::Utc::now() + chrono::Duration::hours(1))
                .await
                .unwrap();
        }
    }
    store.close().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let redis = env("REDIS_URL", "redis://127.0.0.1:6379");
        let postgres = env("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
        let count = number("RELAY_MESSAGES", 50_000);
        let batch = u32::try_from(number("RELAY_BATCH", 1_000)).unwrap();

        trim(&redis).await;
        let ceiling_took = ceiling(&redis, count, batch).await;
        let ceiling = rate(count, ceiling_took);
        println!("{count} messages, relay batches of {batch}, on {} cores", num_cpus());
        println!("| database | relays | published to | throughput | ratio | time |");
        println!("|---|---:|---|---:|---:|---|");
        println!(
            "| (none: one pipelined client XADDs them) | 1 | Redis | {ceiling:>9.0} msg/s | 1.00 × ceiling | {:.2} s |",
            ceiling_took.as_secs_f64()
        );

        let dir = tempfile::tempdir().unwrap();
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(&format!(
            "sqlite://{}",
            dir.path().join("relay.db").display()
        ))
        .unwrap()
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
        let sqlite = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .unwrap();
        bench::<Sqlite>("SQLite", sqlite, &redis, count, batch, ceiling).await;

        let name = format!("relay_bench_{}", std::process::id());
        let mut admin = PgConnection::connect(&postgres).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let url = format!("{}/{name}", postgres.rsplit_once('/').unwrap().0);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .unwrap();
        bench::<Postgres>("PostgreSQL", pool.clone(), &redis, count, batch, ceiling).await;
        pool.close().await;
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .unwrap();
        trim(&redis).await;
    });
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
