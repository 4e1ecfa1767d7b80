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
