//! The event store on PostgreSQL: the conformance suite (the same as in
//! memory and on SQLite, `bus-sqlx/tests/event_store.rs`), and the proof of
//! its global order: transactions held open and committed out of order
//! never make a reader of all events skip or repeat one. Built only with
//! the `services` feature (`.ci/run` turns it on):
//! `cargo test -p arch-events-tests --features services --test event_store_postgres`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arch_events::event_store::{
    EventStore, EventStoreError, ExpectedVersion, NewEvent, Position, ReadAll, RecordedEvent,
    StreamId,
};
use arch_events::{Event, MessageContext, MessageId, PendingEvent};
use arch_events_sqlx::{SqlEventStore, Store};
use arch_events_sqlx_conformance::event_store::{catch_up, EventStoreUnderTest};
use arch_events_sqlx_conformance::event_store_tests;
use arch_events_test_support::postgres::FreshDatabase;
use rand::Rng;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

async fn open() -> (FreshDatabase, PgPool, Store<Postgres>) {
    let database = FreshDatabase::create().await;
    let pool = PgPoolOptions::new()
        .max_connections(24)
        .connect(&database.url)
        .await
        .unwrap();
    let store = Store::open(pool.clone()).await.unwrap();
    (database, pool, store)
}

async fn on_postgres() -> EventStoreUnderTest {
    let (database, _pool, store) = open().await;
    let keys: Arc<dyn arch_events::event_store::KeyStore> = Arc::new(store.key_store());
    EventStoreUnderTest {
        protected: Arc::new(store.event_store().with_personal_data()),
        keys,
        store: Arc::new(store.event_store()),
        keep: Box::new((store, database)),
    }
}

mod conformance {
    super::event_store_tests!(super::on_postgres);
}

async fn fresh_database() -> arch_events_sqlx_conformance::TestDatabase {
    let database = FreshDatabase::create().await;
    arch_events_sqlx_conformance::TestDatabase {
        url: database.url.clone(),
        keep: Box::new(database),
    }
}

mod projection {
    arch_events_sqlx_conformance::projection_tests!(sqlx::Postgres, super::fresh_database);
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "order.noted", serde)]
struct Noted {
    n: u64,
}

fn noted(n: u64) -> NewEvent {
    NewEvent::encode(&mut PendingEvent::new(Noted { n }), &MessageContext::root()).unwrap()
}

async fn read_after(events: &SqlEventStore<Postgres>, after: Position) -> Vec<RecordedEvent> {
    events.read_all(&ReadAll::after(after)).await.unwrap()
}

/// The late commit, step by step: a transaction takes a position, a later
/// one takes the next and commits first. A reader that checkpoints by
/// position alone skips the late one for good; the store's reader waits
/// for it and then reads both, the late one first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_is_read_in_its_place_where_a_position_only_reader_skips_it() {
    let (_database, pool, store) = open().await;
    let events = store.event_store();

    let mut early = store.begin().await.unwrap();
    let first = events
        .append_in(
            &mut early,
            &StreamId::new("order", "a"),
            ExpectedVersion::NoStream,
            &[noted(1)],
        )
        .await
        .unwrap();
    let second = events
        .append(
            &StreamId::new("order", "b"),
            ExpectedVersion::NoStream,
            &[noted(2)],
        )
        .await
        .unwrap();
    assert!(first.position.sequence() < second.position.sequence());

    // A reader by position alone sees the second, and moves past the first.
    let naive: Vec<i64> = sqlx::query_scalar(
        "SELECT position FROM bus_stream_events WHERE position > 0 ORDER BY position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(naive, [second.position.sequence() as i64]);

    // The store's reader waits: an older transaction is still running.
    assert!(read_after(&events, Position::START).await.is_empty());
    let held = events.held_back_by().await.unwrap();
    assert!(!held.is_empty(), "the open transaction is named");

    early.commit().await.unwrap();
    let naive_after: Vec<i64> = sqlx::query_scalar(
        "SELECT position FROM bus_stream_events WHERE position > $1 ORDER BY position",
    )
    .bind(naive[0])
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        naive_after.is_empty(),
        "the position-only reader skipped the late commit for good"
    );

    let read = catch_up(&events, Position::START).await;
    let order: Vec<u64> = read
        .iter()
        .map(|e| e.decode::<Noted>().unwrap().n)
        .collect();
    assert_eq!(order, [1, 2], "both, the earlier transaction's first");
    assert_eq!(read[0].position, first.position);
    assert_eq!(read[1].position, second.position);
    assert!(read_after(&events, second.position).await.is_empty());
    store.close().await;
}

/// A stream's versions follow the global order: an append from a
/// transaction older than the stream's last appender is refused as a race,
/// and its rerun, in a new transaction, succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_from_a_transaction_older_than_the_streams_last_one_is_refused_then_rerun() {
    let (_database, _pool, store) = open().await;
    let events = store.event_store();
    let stream = StreamId::new("order", "s");

    let mut old = store.begin().await.unwrap();
    events
        .append_in(
            &mut old,
            &StreamId::new("order", "elsewhere"),
            ExpectedVersion::Any,
            &[noted(0)],
        )
        .await
        .unwrap();
    events
        .append(&stream, ExpectedVersion::NoStream, &[noted(1)])
        .await
        .unwrap();
    let error = events
        .append_in(&mut old, &stream, ExpectedVersion::Exact(1), &[noted(2)])
        .await
        .unwrap_err();
    assert!(matches!(error, EventStoreError::Raced { .. }), "{error}");
    assert!(error.is_conflict(), "a command's retry policy reruns it");
    old.rollback().await.unwrap();

    let mut rerun = store.begin().await.unwrap();
    events
        .append_in(&mut rerun, &stream, ExpectedVersion::Exact(1), &[noted(2)])
        .await
        .unwrap();
    rerun.commit().await.unwrap();
    let read = catch_up(&events, Position::START).await;
    let in_stream: Vec<u64> = read
        .iter()
        .filter(|e| e.stream == stream)
        .map(|e| e.version)
        .collect();
    assert_eq!(in_stream, [1, 2]);
    store.close().await;
}

/// Sixteen writers append to eight shared streams, each transaction held
/// open for a random while before it commits (one in ten rolls back),
/// while a reader follows all events: it sees every committed event once,
/// no rolled-back one, in positions that only grow, each stream's versions
/// in order with none missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_holding_transactions_open_never_make_a_reader_skip_or_repeat() {
    const WRITERS: u64 = 16;
    const EACH: u64 = 20;
    let (_database, _pool, store) = open().await;
    let events = store.event_store();
    let committed = Arc::new(Mutex::new(HashSet::<MessageId>::new()));
    let rolled_back = Arc::new(Mutex::new(HashSet::<MessageId>::new()));
    let races = Arc::new(AtomicUsize::new(0));

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (store, events) = (store.clone(), events.clone());
        let (committed, rolled_back) = (committed.clone(), rolled_back.clone());
        let races = races.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..EACH {
                let stream = StreamId::new("order", format!("s{}", (writer + n) % 8));
                let (hold, roll_back) = {
                    let mut rng = rand::thread_rng();
                    (
                        Duration::from_millis(rng.gen_range(0..15)),
                        rng.gen_ratio(1, 10),
                    )
                };
                loop {
                    let batch = [noted(writer * 1000 + n), noted(writer * 1000 + n + 500)];
                    let mut tx = store.begin().await.unwrap();
                    match events
                        .append_in(&mut tx, &stream, ExpectedVersion::Any, &batch)
                        .await
                    {
                        Ok(_) => {}
                        Err(error) if error.is_conflict() => {
                            races.fetch_add(1, Ordering::Relaxed);
                            tx.rollback().await.unwrap();
                            continue;
                        }
                        Err(error) => panic!("{error}"),
                    }
                    tokio::time::sleep(hold).await;
                    let ids = batch.iter().map(|event| event.id);
                    if roll_back {
                        tx.rollback().await.unwrap();
                        rolled_back.lock().unwrap().extend(ids);
                    } else {
                        tx.commit().await.unwrap();
                        committed.lock().unwrap().extend(ids);
                    }
                    break;
                }
            }
        }));
    }

    let mut seen: Vec<RecordedEvent> = Vec::new();
    let mut after = Position::START;
    // Finished, or panicked (its panic is raised below).
    while !writers.iter().all(|writer| writer.is_finished()) {
        let page = events
            .read_all(&ReadAll::after(after).limit(25))
            .await
            .unwrap();
        match page.last() {
            Some(last) => after = last.position,
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
        seen.extend(page);
    }
    for writer in writers {
        writer.await.unwrap();
    }
    seen.extend(catch_up(&events, after).await);

    let ids: Vec<MessageId> = seen.iter().map(|e| e.id).collect();
    let unique: HashSet<MessageId> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no event seen twice");
    let committed = std::mem::take(&mut *committed.lock().unwrap());
    let missed = committed.difference(&unique).count();
    assert_eq!(
        missed,
        0,
        "{missed} of {} committed events never seen",
        committed.len()
    );
    let rolled_back = std::mem::take(&mut *rolled_back.lock().unwrap());
    let phantom = unique.difference(&committed).count();
    assert_eq!(phantom, 0, "{phantom} events seen that were not committed");
    assert!(unique.is_disjoint(&rolled_back));
    assert!(seen
        .windows(2)
        .all(|pair| pair[0].position < pair[1].position));
    let mut versions: BTreeMap<StreamId, u64> = BTreeMap::new();
    for event in &seen {
        let last = versions.entry(event.stream.clone()).or_default();
        assert_eq!(
            event.version,
            *last + 1,
            "{}: versions in order, none missing",
            event.stream
        );
        *last = event.version;
    }
    eprintln!(
        "{} events read while {WRITERS} writers held transactions open; {} appends raced and were rerun",
        seen.len(),
        races.load(Ordering::Relaxed)
    );
    store.close().await;
}

/// Two runs of one append at once (a retry racing its first attempt): the
/// one that waited for the stream's lock finds the other's events and
/// reports them, written already, instead of a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_of_one_append_at_once_are_one_append_and_a_retry() {
    let (_database, pool, store) = open().await;
    let events = store.event_store();
    let stream = StreamId::new("order", "twice");
    let batch = vec![noted(1), noted(2)];
    let mut first = store.begin().await.unwrap();
    let appended = events
        .append_in(&mut first, &stream, ExpectedVersion::NoStream, &batch)
        .await
        .unwrap();
    let second = {
        let (store, events, stream, batch) =
            (store.clone(), events.clone(), stream.clone(), batch.clone());
        tokio::spawn(async move {
            let mut tx = store.begin().await.unwrap();
            let result = events
                .append_in(&mut tx, &stream, ExpectedVersion::NoStream, &batch)
                .await;
            tx.rollback().await.unwrap();
            result
        })
    };
    // The second waits for the first's lock, past its own first look for
    // the ids, until the first commits.
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    first.commit().await.unwrap();
    let retried = second.await.unwrap().unwrap();
    assert!(!retried.written);
    assert_eq!(
        (retried.to_version, retried.position),
        (2, appended.position)
    );
    assert_eq!(catch_up(&events, Position::START).await.len(), 2);
    store.close().await;
}

/// A logical dump and restore leaves events with transaction ids the new
/// cluster has not reached: the store refuses to open rather than let
/// readers skip new events, and the renumbering its docs give brings it
/// back with every event readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_another_clusters_transactions_are_refused_until_renumbered() {
    let (database, pool, store) = open().await;
    let events = store.event_store();
    events
        .append(
            &StreamId::new("order", "moved"),
            ExpectedVersion::NoStream,
            &[noted(1)],
        )
        .await
        .unwrap();
    store.close().await;
    // What a restore into a younger cluster looks like.
    sqlx::raw_sql(
        "UPDATE bus_stream_events \
         SET xid = (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000)::text::xid8",
    )
    .execute(&pool)
    .await
    .unwrap();
    match Store::open(pool.clone()).await {
        Err(arch_events_sqlx::Error::ForeignTransactionIds) => {}
        other => panic!("expected the store to refuse, got {other:?}"),
    }
    sqlx::raw_sql(
        "UPDATE bus_stream_events SET xid = '1'; UPDATE bus_streams SET last_xid = '1'; \
         UPDATE bus_projections SET commit_key = 0, position = 0;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let store = Store::open(pool.clone()).await.unwrap();
    let events = store.event_store();
    events
        .append(
            &StreamId::new("order", "moved"),
            ExpectedVersion::Exact(1),
            &[noted(2)],
        )
        .await
        .unwrap();
    let read = catch_up(&events, Position::START).await;
    let order: Vec<u64> = read
        .iter()
        .map(|e| e.decode::<Noted>().unwrap().n)
        .collect();
    assert_eq!(order, [1, 2]);
    store.close().await;
    drop(database);
}
