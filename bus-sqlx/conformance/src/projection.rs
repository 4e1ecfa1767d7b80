//! The catch-up projections' conformance suite, on SQLite and PostgreSQL:
//! [`projection_tests!`](crate::projection_tests) expands to one test per
//! function below, for one database type.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arch_events::event_store::{EventStore, ExpectedVersion, Position, RecordedEvent, StreamId};
use arch_events::BoxError;
use arch_events_sqlx::{Backend, Batch, Projection, ProjectionError, SqlEventStore, Store};
use sqlx::Pool;
use tokio::sync::Semaphore;

use crate::event_store::{catch_up, Deposited};
use crate::{Ledger, TestDatabase};

/// Expands to one `#[tokio::test]` per projection test, on the database
/// type `$db`, each on a fresh database from `$fresh`.
#[macro_export]
macro_rules! projection_tests {
    ($db:ty, $fresh:path) => {
        $crate::projection_tests!(@each $db, $fresh;
            a_projection_applies_every_event_once_with_its_checkpoint,
            a_failing_event_rolls_its_batch_back_and_the_projection_stops_there,
            a_batch_cut_short_midway_leaves_nothing_and_the_next_one_redoes_it,
            two_processes_running_one_projection_apply_each_event_once,
            waiting_for_a_position_the_projection_has_not_reached_says_where_it_is,
            a_running_projection_stops_while_events_keep_coming,
        );
    };
    (@each $db:ty, $fresh:path; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                $crate::projection::$test::<$db>($fresh().await).await;
            }
        )*
    };
}

/// Totals per account, and how many events were applied to each: a
/// deposit applied twice or skipped shows in both.
struct Totals {
    /// Fails on deposits of this amount while set.
    fail_on: Option<(u64, Arc<AtomicBool>)>,
    /// Waits here before applying a deposit of this amount.
    gate: Option<(u64, Arc<Semaphore>, Arc<AtomicUsize>)>,
}

impl Totals {
    fn plain() -> Self {
        Totals {
            fail_on: None,
            gate: None,
        }
    }
}

#[arch_events::async_trait]
impl<DB> Projection<DB> for Totals
where
    DB: Backend + Ledger,
{
    fn name(&self) -> &str {
        "totals"
    }

    async fn apply(
        &self,
        connection: &mut DB::Connection,
        event: &RecordedEvent,
    ) -> Result<(), BoxError> {
        let amount = event.decode::<Deposited>()?.amount;
        if let Some((failing, on)) = &self.fail_on {
            if amount == *failing && on.load(Ordering::SeqCst) {
                return Err("the read model refuses this one".into());
            }
        }
        if let Some((gated, gate, reached)) = &self.gate {
            if amount == *gated {
                reached.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await?.forget();
            }
        }
        // The account ids are the test's own: safe in the statement.
        let sql = format!(
            "INSERT INTO totals (account, total, applied) VALUES ('{}', {amount}, 1) \
             ON CONFLICT (account) DO UPDATE SET total = totals.total + excluded.total, \
             applied = totals.applied + 1",
            event.stream.id()
        );
        DB::execute_in(connection, &sql).await?;
        Ok(())
    }
}

async fn open<DB: Ledger + Backend>(database: &TestDatabase) -> (Pool<DB>, Store<DB>) {
    let pool = database.pool::<DB>().await;
    let store = Store::open(pool.clone()).await.expect("opens");
    DB::execute(
        &pool,
        "CREATE TABLE IF NOT EXISTS totals (account TEXT PRIMARY KEY, total BIGINT NOT NULL, \
         applied BIGINT NOT NULL)",
    )
    .await;
    (pool, store)
}

async fn append(
    events: &SqlEventStore<impl Backend>,
    account: &str,
    amounts: impl IntoIterator<Item = u64>,
) -> Position {
    let batch = crate::event_store::deposits(amounts);
    events
        .append(
            &StreamId::new("account", account),
            ExpectedVersion::Any,
            &batch,
        )
        .await
        .expect("appends")
        .position
}

/// Waits until every event appended so far is readable (on PostgreSQL,
/// another test's open transaction can hold readers back for a while).
async fn readable(events: &SqlEventStore<impl Backend>) {
    catch_up(events, Position::START).await;
}

async fn totals<DB: Ledger>(pool: &Pool<DB>) -> (i64, i64) {
    let total = DB::balance_sum(pool).await;
    (total.0, total.1)
}

async fn run_to_the_end<DB>(events: &SqlEventStore<DB>, projection: &Totals) -> usize
where
    DB: Backend + Ledger,
{
    events.catch_up(projection).await.expect("catches up")
}

pub async fn a_projection_applies_every_event_once_with_its_checkpoint<DB>(database: TestDatabase)
where
    DB: Ledger + Backend,
{
    let (pool, store) = open::<DB>(&database).await;
    let events = store.event_store();
    for account in ["a", "b", "c"] {
        append(&events, account, 1..=400).await;
    }
    assert_eq!(events.checkpoint("totals").await.unwrap(), Position::START);
    let applied = run_to_the_end(&events, &Totals::plain()).await;
    assert_eq!(applied, 1200, "in batches, each event once");
    assert_eq!(totals(&pool).await, (3 * 400 * 401 / 2, 1200));
    assert_eq!(
        events.checkpoint("totals").await.unwrap(),
        events.head().await.unwrap()
    );
    assert_eq!(
        events.project(&Totals::plain()).await.unwrap(),
        Batch::UpToDate
    );
    let later = append(&events, "a", [1000]).await;
    run_to_the_end(&events, &Totals::plain()).await;
    assert_eq!(totals(&pool).await, (3 * 400 * 401 / 2 + 1000, 1201));
    assert_eq!(events.checkpoint("totals").await.unwrap(), later);
    store.close().await;
}

pub async fn a_failing_event_rolls_its_batch_back_and_the_projection_stops_there<DB>(
    database: TestDatabase,
) where
    DB: Ledger + Backend,
{
    let (pool, store) = open::<DB>(&database).await;
    let events = store.event_store();
    append(&events, "a", 1..=10).await;
    readable(&events).await;
    let failing = Arc::new(AtomicBool::new(true));
    let projection = Totals {
        fail_on: Some((7, failing.clone())),
        gate: None,
    };
    for _ in 0..3 {
        match events.project(&projection).await {
            Err(ProjectionError::Apply {
                event,
                stream,
                version,
                ..
            }) => {
                assert_eq!(
                    (event.as_str(), stream.as_str(), version),
                    ("conformance.deposited", "account-a", 7)
                );
            }
            other => panic!("expected the batch to fail, got {other:?}"),
        }
        assert_eq!(
            totals(&pool).await,
            (0, 0),
            "the events before it rolled back too"
        );
        assert_eq!(events.checkpoint("totals").await.unwrap(), Position::START);
    }
    // Running, it is stuck there and says why.
    let running = events.start_projection(projection, Duration::from_millis(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reason = loop {
        if let Some(reason) = running.last_error() {
            break reason;
        }
        assert!(std::time::Instant::now() < deadline, "no failure seen");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert!(
        reason.contains("account-a") && reason.ends_with("the read model refuses this one"),
        "{reason}"
    );
    failing.store(false, Ordering::SeqCst);
    let head = events.head().await.unwrap();
    events
        .wait_for("totals", head, Duration::from_secs(30))
        .await
        .expect("it goes on once the event applies");
    assert_eq!(running.last_error(), None, "a batch succeeded since");
    running.stop().await;
    assert_eq!(totals(&pool).await, (55, 10));
    store.close().await;
}

pub async fn a_batch_cut_short_midway_leaves_nothing_and_the_next_one_redoes_it<DB>(
    database: TestDatabase,
) where
    DB: Ledger + Backend,
{
    let (pool, store) = open::<DB>(&database).await;
    let events = store.event_store();
    append(&events, "a", 1..=10).await;
    readable(&events).await;
    let gate = Arc::new(Semaphore::new(0));
    let reached = Arc::new(AtomicUsize::new(0));
    let projection = Arc::new(Totals {
        fail_on: None,
        gate: Some((6, gate.clone(), reached.clone())),
    });
    let batch = {
        let (events, projection) = (events.clone(), projection.clone());
        tokio::spawn(async move { events.project(&*projection).await })
    };
    while reached.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // Five events written in the batch's transaction, then it is torn down
    // (as a crash would end it).
    batch.abort();
    assert!(batch.await.unwrap_err().is_cancelled());
    assert_eq!(totals(&pool).await, (0, 0));
    assert_eq!(events.checkpoint("totals").await.unwrap(), Position::START);
    gate.add_permits(100);
    run_to_the_end(&events, &projection).await;
    assert_eq!(totals(&pool).await, (55, 10), "each event once");
    store.close().await;
}

pub async fn two_processes_running_one_projection_apply_each_event_once<DB>(database: TestDatabase)
where
    DB: Ledger + Backend,
{
    let (pool, first) = open::<DB>(&database).await;
    let (_, second) = open::<DB>(&database).await;
    let running = [
        first
            .event_store()
            .start_projection(Totals::plain(), Duration::from_millis(2)),
        second
            .event_store()
            .start_projection(Totals::plain(), Duration::from_millis(2)),
    ];
    let events = first.event_store();
    let mut writers = Vec::new();
    for account in ["a", "b", "c", "d"] {
        let events = if account < "c" {
            first.event_store()
        } else {
            second.event_store()
        };
        writers.push(tokio::spawn(async move {
            for n in 1..=50 {
                append(&events, account, [n]).await;
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let head = events.head().await.unwrap();
    events
        .wait_for("totals", head, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        totals(&pool).await,
        (4 * 50 * 51 / 2, 200),
        "each event applied once"
    );
    assert_eq!(catch_up(&events, Position::START).await.len(), 200);
    for projection in running {
        projection.stop().await;
    }
    first.close().await;
    second.close().await;
}

pub async fn waiting_for_a_position_the_projection_has_not_reached_says_where_it_is<DB>(
    database: TestDatabase,
) where
    DB: Ledger + Backend,
{
    let (_pool, store) = open::<DB>(&database).await;
    let events = store.event_store();
    let first = append(&events, "a", [1]).await;
    run_to_the_end(&events, &Totals::plain()).await;
    let second = append(&events, "a", [2]).await;
    events
        .wait_for("totals", first, Duration::from_millis(10))
        .await
        .unwrap();
    match events
        .wait_for("totals", second, Duration::from_millis(30))
        .await
    {
        Err(ProjectionError::NotReached { at, wanted, .. }) => {
            assert_eq!((at, wanted), (first, second))
        }
        other => panic!("expected NotReached, got {other:?}"),
    }
    store.close().await;
}

pub async fn a_running_projection_stops_while_events_keep_coming<DB>(database: TestDatabase)
where
    DB: Ledger + Backend,
{
    let (_pool, store) = open::<DB>(&database).await;
    let events = store.event_store();
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (events, writing) = (events.clone(), writing.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while writing.load(Ordering::SeqCst) {
                n += 1;
                append(&events, "a", [n]).await;
            }
        })
    };
    let running = events.start_projection(Totals::plain(), Duration::from_millis(1));
    while events.checkpoint("totals").await.unwrap() == Position::START {
        tokio::task::yield_now().await;
    }
    // A bound for a hang, not a speed: stop returns after the current batch.
    tokio::time::timeout(Duration::from_secs(60), running.stop())
        .await
        .expect("the projection stops although events keep coming");
    writing.store(false, Ordering::SeqCst);
    writer.await.unwrap();
    store.close().await;
}
