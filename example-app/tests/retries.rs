//! Event handlers' retries wait in the database's scheduler, not in the
//! request: with the read model broken, an allocation commits and answers
//! after the view handler's first attempt; its retry, durable, catches the
//! view up once the fault is gone, or ends a dead letter after its
//! attempts. In process on SQLite, the scheduler on a virtual clock (no
//! test sleeps for a retry); then the real binary, killed (`kill -9`)
//! between the failed attempt and its retry. The real binary's dead letter
//! is `tests/tests/reliability.rs`'s.

// A test whose setup fails should panic, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use std::time::Instant;

use arch_events::schedule::Scheduler;
use arch_events_test_support::in_process::{self, InProcess};
use arch_events_test_support::server::{self, add_batch, get, on_database, post, Server};
use example_app::adapters::storage::Storage;
use example_app::bootstrap::{EVENT_HANDLER_ATTEMPTS, EVENT_RETRY_WAIT};
use example_app::domain::commands::{Allocate, CreateBatch};
use example_app::views::{AllocationRow, Allocations};
use sqlx::Connection;

const VIEW_HANDLER: &str = "example_app::views::add_allocation_to_read_model";

/// The service on a fresh SQLite file kept as `storage` says, its
/// scheduler on a virtual clock, with a batch of ten lamps.
struct Service(InProcess);

impl std::ops::Deref for Service {
    type Target = InProcess;

    fn deref(&self) -> &InProcess {
        &self.0
    }
}

async fn service(storage: Storage) -> Service {
    let service = in_process::on_sqlite(storage, |adapters| adapters).await;
    service
        .bus
        .dispatch(CreateBatch {
            reference: "b1".into(),
            sku: "LAMP".into(),
            qty: 10,
            eta: None,
        })
        .await
        .unwrap();
    Service(service)
}

impl Service {
    async fn break_view(&self) {
        break_view(&self.file.url).await;
    }

    async fn mend_view(&self) {
        mend_view(&self.file.url).await;
    }

    async fn allocate(&self, orderid: &str) {
        self.bus
            .dispatch(Allocate {
                orderid: orderid.into(),
                sku: "LAMP".into(),
                qty: 2,
            })
            .await
            .unwrap();
    }

    async fn view(&self, orderid: &str) -> Vec<AllocationRow> {
        self.bus
            .query(Allocations {
                orderid: orderid.into(),
            })
            .await
            .unwrap()
    }

    async fn advance(&self, by: Duration) -> usize {
        self.clock
            .advance_and_fire(by, &*self.scheduler, &self.bus)
            .await
            .unwrap()
    }

    /// The view handler's retries waiting, as (attempt, due in).
    async fn view_retries(&self) -> Vec<(u32, Duration)> {
        let now = self.scheduler.now();
        self.scheduler
            .pending()
            .await
            .unwrap()
            .iter()
            .filter_map(|message| {
                let retry = message.handler_retry()?;
                (retry.handler == VIEW_HANDLER).then(|| {
                    (
                        retry.attempt,
                        message.due().duration_since(now).unwrap_or_default(),
                    )
                })
            })
            .collect()
    }
}

async fn retried_by_the_scheduler(storage: Storage) {
    let service = service(storage).await;
    service.break_view().await;

    // The allocation commits and the dispatch returns after one attempt.
    service.allocate("o1").await;
    let retries = service.view_retries().await;
    assert_eq!(
        retries.len(),
        1,
        "the second attempt waits in the scheduler"
    );
    let (attempt, due_in) = retries[0];
    assert_eq!(attempt, 2);
    assert!(
        (EVENT_RETRY_WAIT..=EVENT_RETRY_WAIT * 2).contains(&due_in),
        "{due_in:?}"
    );
    assert!(service
        .database
        .dead_letters()
        .list(false)
        .await
        .unwrap()
        .is_empty());

    // Still broken at the second attempt: the third waits twice as long.
    service.advance(due_in).await;
    let retries = service.view_retries().await;
    assert_eq!(retries.len(), 1);
    let (attempt, due_in) = retries[0];
    assert_eq!(attempt, 3);
    assert!(
        (EVENT_RETRY_WAIT * 2..=EVENT_RETRY_WAIT * 4).contains(&due_in),
        "{due_in:?}"
    );

    // Mended: the third attempt catches the view up, once.
    service.mend_view().await;
    assert!(service.view("o1").await.is_empty(), "not caught up yet");
    service.advance(due_in).await;
    assert_eq!(
        service.view("o1").await,
        [AllocationRow {
            sku: "LAMP".into(),
            qty: 2,
            batchref: "b1".into()
        }]
    );
    assert!(service.view_retries().await.is_empty());
    service.advance(Duration::from_secs(3600)).await;
    assert_eq!(service.view("o1").await.len(), 1);
}

async fn dead_letter_after_every_attempt(storage: Storage) {
    let service = service(storage).await;
    service.break_view().await;
    service.allocate("o1").await;
    // 1 s, 2 s, 4 s, 8 s, each up to twice that with its jitter: the
    // four retries.
    service.advance(Duration::from_secs(30)).await;
    assert!(service.view_retries().await.is_empty());
    let letters = service.database.dead_letters().list(false).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].record.handler, VIEW_HANDLER);
    assert_eq!(letters[0].record.attempts, EVENT_HANDLER_ATTEMPTS);
    assert!(
        letters[0].record.error.contains("no such table"),
        "{:?}",
        letters[0].record
    );
}

// With `--storage events` the view is a projection of the streams, which
// never skips an event: it has no event handler to retry.

#[tokio::test]
async fn a_broken_read_model_is_retried_by_the_scheduler_not_the_request() {
    retried_by_the_scheduler(Storage::State).await;
}

#[tokio::test]
async fn a_read_model_broken_for_good_is_a_dead_letter_after_every_attempt() {
    dead_letter_after_every_attempt(Storage::State).await;
}

/// The read model's table goes away: its handler fails on every attempt.
async fn break_view(url: &str) {
    on_database(
        url,
        "ALTER TABLE allocations_view RENAME TO allocations_view_away",
    )
    .await;
}

/// The read model's table is back.
async fn mend_view(url: &str) {
    on_database(
        url,
        "ALTER TABLE allocations_view_away RENAME TO allocations_view",
    )
    .await;
}

/// The binary under test.
const BINARY: &str = env!("CARGO_BIN_EXE_example-app");

/// A retry scheduled by a process killed before it was due is made by the
/// next process on the database: the view catches up, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_scheduled_before_a_kill_is_made_by_the_next_process() {
    let file = server::fresh_sqlite().await;
    // Retries 3 s on: the kill comes first, whatever this machine's speed
    // (were it later, the retry would fail on the broken view and wait on).
    let env = [("EVENT_RETRY_WAIT_MS", "3000")];
    let first = Server::start_with(BINARY, &file.url, &env);
    add_batch(&first, "b1", "LAMP", 10, None).await;
    break_view(&file.url).await;
    let (status, body) = post(
        &first,
        "/allocate",
        serde_json::json!({"orderid": "o1", "sku": "LAMP", "qty": 2}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    first.kill_hard();
    assert_eq!(
        retries_kept(&file.url).await,
        1,
        "killed with the view handler's retry kept"
    );

    mend_view(&file.url).await;
    let next = Server::start_with(BINARY, &file.url, &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let (status, rows) = get(&next, "/allocations/o1").await;
        if status == reqwest::StatusCode::OK || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        rows,
        serde_json::json!([{"sku": "LAMP", "qty": 2, "batchref": "b1"}]),
        "the retry was made after the restart"
    );
    // Its row goes once the firing is through (just after the view's commit).
    while retries_kept(&file.url).await != 0 {
        assert!(Instant::now() < deadline, "the retry's row stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many handler retries wait in the database at `url`.
async fn retries_kept(url: &str) -> i64 {
    let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
    let kept =
        sqlx::query_scalar("SELECT count(*) FROM bus_scheduled WHERE name LIKE 'handler-retry:%'")
            .fetch_one(&mut connection)
            .await
            .unwrap();
    connection.close().await.unwrap();
    kept
}
