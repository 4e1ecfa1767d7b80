//! The sagas' and scheduler's conformance suite in memory and on SQLite (a
//! fresh database file each, WAL, as a service runs it). The same suite
//! runs on PostgreSQL in the tests package (`--features services`, target
//! `arch_events_sqlx_postgres`).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use arch_events::schedule::{InMemoryScheduler, VirtualClock};
use arch_events_sqlx_conformance::saga::SagasUnderTest;
use arch_events_sqlx_conformance::{self as conformance, saga_tests};

async fn in_memory(clock: VirtualClock) -> SagasUnderTest {
    let scheduler = Arc::new(InMemoryScheduler::with_clock(clock));
    SagasUnderTest {
        other: (scheduler.clone(), scheduler.clone()),
        sagas: scheduler.clone(),
        scheduler,
        restart: None,
        keep: Box::new(()),
    }
}

async fn on_sqlite(clock: VirtualClock) -> SagasUnderTest {
    conformance::saga::on_database::<sqlx::Sqlite>(conformance::fresh_sqlite().await, clock).await
}

mod in_memory {
    super::saga_tests!(super::in_memory);
}

mod sqlite {
    super::saga_tests!(super::on_sqlite);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_completed_sagas_are_purged_and_running_ones_kept() {
    conformance::saga::old_completed_sagas_are_purged::<sqlx::Sqlite>(
        conformance::fresh_sqlite().await,
    )
    .await;
}

/// A stored event a saga declines, as its only handler (the call that
/// finishes its delivery): the delivery is recorded as finished all the
/// same, and nothing waits for a recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_event_a_saga_declines_is_delivered() {
    use std::sync::Arc;

    use arch_events::schedule::{ScheduledMessage, Scheduler};
    use arch_events_sqlx_conformance::saga::{bus, Journal, Ordered, DECLINED};

    let database = conformance::fresh_sqlite().await;
    let pool = <sqlx::Sqlite as conformance::Ledger>::connect(&database.url).await;
    let store = arch_events_sqlx::Store::open(pool).await.expect("opens");
    let clock = VirtualClock::new();
    let scheduler = Arc::new(store.scheduler().with_clock(clock.clone()));
    let bus = bus(scheduler.clone(), Arc::new(Journal::default()));
    // Fired by the scheduler, the event is stored for durable delivery.
    for order in [DECLINED, 5] {
        let message = ScheduledMessage::event(&Ordered { order }, clock.now()).unwrap();
        scheduler.schedule(message).await.unwrap();
    }
    assert_eq!(scheduler.fire_due(&bus).await.unwrap(), 2);
    assert!(bus.settled(std::time::Duration::from_secs(10)).await);
    assert_eq!(
        store.delivery_lag().await.unwrap().count,
        0,
        "both delivered"
    );
    let sagas: Arc<dyn arch_events::saga::SagaStore> = scheduler.clone();
    assert_eq!(
        sagas
            .load("conformance.await_payment", "999")
            .await
            .unwrap(),
        None
    );
    assert!(sagas
        .load("conformance.await_payment", "5")
        .await
        .unwrap()
        .is_some());
    store.close().await;
}
