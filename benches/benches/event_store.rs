//! The event store's speed: rebuilding an aggregate from 10,000 events (in
//! memory, SQLite, PostgreSQL), appends per second with 1 and 16 concurrent
//! writers (one event per transaction, each writer on a stream of its own,
//! and all 16 on one stream, where they conflict and retry), and a catch-up
//! projection's events per second (one row written per event). Needs
//! PostgreSQL:
//!
//! ```sh
//! cargo bench -p arch-events-benches --bench event_store
//! ES_EVENTS=20000 cargo bench -p arch-events-benches --bench event_store
//! ```
//!
//! `POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`, where a
//! database of its own is created and dropped) says where the server is.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arch_events::event_store::{
    Apply, EventSourced, EventStore, EventTypes, ExpectedVersion, Loaded, NewEvent, RecordedEvent,
    StreamId,
};
use arch_events::testing::InMemoryEventStore;
use arch_events::{
    async_trait, Aggregate, BoxError, Event, EventRecorder, MessageContext, PendingEvent,
};
use arch_events_sqlx::{Backend, Batch, Projection, SqlEventStore, Store};
use sqlx::{Connection, PgConnection, Pool, Postgres, Sqlite};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "bench.allocated", serde)]
struct Allocated {
    order: u64,
    sku: String,
    qty: u32,
}

#[derive(Debug, Default)]
struct Product {
    allocated: u64,
    lines: u64,
    events: EventRecorder,
}

impl EventSourced for Product {
    const KIND: &'static str = "product";
    fn event_types(types: EventTypes<Self>) -> EventTypes<Self> {
        types.event::<Allocated>()
    }
}

impl Apply<Allocated> for Product {
    fn apply(&mut self, event: &Allocated) {
        self.allocated += u64::from(event.qty);
        self.lines += 1;
    }
}

impl Aggregate for Product {
    fn events(&mut self) -> &mut EventRecorder {
        &mut self.events
    }
}

fn allocated(order: u64) -> NewEvent {
    let event = Allocated {
        order,
        sku: "RED-CHAIR".into(),
        qty: 2,
    };
    NewEvent::encode(&mut PendingEvent::new(event), &MessageContext::root()).unwrap()
}

fn number(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |value| value.parse().expect("a number"))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Loads the aggregate of `events` events five times: the median.
async fn rebuild(store: &dyn EventStore, events: u64) -> Duration {
    let stream = StreamId::new("product", "rebuild");
    if store.stream_version(&stream).await.unwrap() == 0 {
        for chunk in (0..events).collect::<Vec<_>>().chunks(1000) {
            let batch: Vec<NewEvent> = chunk.iter().map(|&n| allocated(n)).collect();
            store
                .append(&stream, ExpectedVersion::Any, &batch)
                .await
                .unwrap();
        }
    }
    let mut samples = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let product = Loaded::<Product>::load(store, "rebuild").await.unwrap();
        samples.push(start.elapsed());
        assert_eq!(product.lines, events);
    }
    median(samples)
}

/// `writers` tasks append `each` events, one per transaction: on streams
/// of their own, or all on one (expecting the version they read, retrying
/// on a conflict). Events per second, and how many appends conflicted.
async fn appends(store: Arc<dyn EventStore>, writers: u64, each: u64, shared: bool) -> (f64, u64) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = if shared {
                StreamId::new("product", "shared")
            } else {
                StreamId::new("product", format!("w{writer}"))
            };
            let mut conflicts = 0;
            for n in 0..each {
                let event = [allocated(writer * each + n)];
                loop {
                    let expected = if shared {
                        ExpectedVersion::Exact(store.stream_version(&stream).await.unwrap())
                    } else {
                        ExpectedVersion::Any
                    };
                    match store.append(&stream, expected, &event).await {
                        Ok(_) => break,
                        Err(error) if error.is_conflict() => conflicts += 1,
                        Err(error) => panic!("{error}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    (
        (writers * each) as f64 / start.elapsed().as_secs_f64(),
        conflicts,
    )
}

/// Writes one row per event.
struct Lines;

#[async_trait]
impl Projection<Sqlite> for Lines {
    fn name(&self) -> &str {
        "bench_lines"
    }
    async fn apply(
        &self,
        connection: &mut sqlx::SqliteConnection,
        event: &RecordedEvent,
    ) -> Result<(), BoxError> {
        let allocated: Allocated = event.decode()?;
        sqlx::query("INSERT INTO bench_lines (ord, sku, qty) VALUES (?, ?, ?)")
            .bind(i64::try_from(allocated.order)?)
            .bind(allocated.sku)
            .bind(i64::from(allocated.qty))
            .execute(&mut *connection)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Projection<Postgres> for Lines {
    fn name(&self) -> &str {
        "bench_lines"
    }
    async fn apply(
        &self,
        connection: &mut sqlx::PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), BoxError> {
        let allocated: Allocated = event.decode()?;
        sqlx::query("INSERT INTO bench_lines (ord, sku, qty) VALUES ($1, $2, $3)")
            .bind(i64::try_from(allocated.order)?)
            .bind(allocated.sku)
            .bind(i64::from(allocated.qty))
            .execute(&mut *connection)
            .await?;
        Ok(())
    }
}

/// Runs the projection over everything stored: events per second.
async fn catch_up<DB: Backend>(events: &SqlEventStore<DB>, pool: &Pool<DB>) -> f64
where
    Lines: Projection<DB>,
    for<'c> &'c Pool<DB>: sqlx::Executor<'c, Database = DB>,
{
    sqlx::raw_sql("CREATE TABLE bench_lines (ord BIGINT, sku TEXT, qty BIGINT)")
        .execute(pool)
        .await
        .unwrap();
    let start = Instant::now();
    let mut applied = 0;
    while let Batch::Applied { events, .. } = events.project(&Lines).await.unwrap() {
        applied += events;
    }
    applied as f64 / start.elapsed().as_secs_f64()
}

async fn bench<DB: Backend>(label: &str, pool: Pool<DB>, events: u64)
where
    Lines: Projection<DB>,
    for<'c> &'c Pool<DB>: sqlx::Executor<'c, Database = DB>,
{
    let store = Store::open(pool.clone()).await.unwrap();
    let event_store = store.event_store();
    let took = rebuild(&event_store, events).await;
    println!(
        "| rebuild {events} events | {label} | {:.1} ms | {:.0} events/s |",
        took.as_secs_f64() * 1e3,
        events as f64 / took.as_secs_f64()
    );
    let shared: Arc<dyn EventStore> = Arc::new(event_store.clone());
    for (writers, each, on_one) in [(1, 2000, false), (16, 250, false), (16, 125, true)] {
        let (rate, conflicts) = appends(shared.clone(), writers, each, on_one).await;
        let streams = if on_one {
            "one stream"
        } else {
            "a stream each"
        };
        println!("| append, {writers} writer(s), {streams} | {label} | {rate:.0} events/s | {conflicts} conflicts retried |");
    }
    let rate = catch_up(&event_store, &pool).await;
    println!("| catch-up projection, a row per event | {label} | {rate:.0} events/s | |");
    store.close().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let events = number("ES_EVENTS", 10_000);
        let postgres = std::env::var("POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        println!(
            "on {} cores",
            std::thread::available_parallelism().map_or(1, usize::from)
        );
        println!("| what | store | time or rate | |");
        println!("|---|---|---:|---|");

        let memory = InMemoryEventStore::new();
        let took = rebuild(&memory, events).await;
        println!(
            "| rebuild {events} events | in memory | {:.1} ms | {:.0} events/s |",
            took.as_secs_f64() * 1e3,
            events as f64 / took.as_secs_f64()
        );
        let memory: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
        for (writers, each, on_one) in [(1, 20_000, false), (16, 2_500, false)] {
            let (rate, _) = appends(memory.clone(), writers, each, on_one).await;
            println!(
                "| append, {writers} writer(s), a stream each | in memory | {rate:.0} events/s | |"
            );
        }

        let dir = tempfile::tempdir().unwrap();
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(&format!(
            "sqlite://{}",
            dir.path().join("events.db").display()
        ))
        .unwrap()
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
        let sqlite = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .unwrap();
        bench::<Sqlite>("SQLite", sqlite, events).await;

        let name = format!("event_store_bench_{}", std::process::id());
        let mut admin = PgConnection::connect(&postgres).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let url = format!("{}/{name}", postgres.rsplit_once('/').unwrap().0);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(20)
            .connect(&url)
            .await
            .unwrap();
        bench::<Postgres>("PostgreSQL", pool.clone(), events).await;
        pool.close().await;
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .unwrap();
    });
}
