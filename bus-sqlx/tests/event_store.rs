//! The event store's conformance suite in memory and on SQLite (a fresh
//! database file each, WAL, as a service runs it). The same suite runs on
//! PostgreSQL in the tests package (`--features services`, target
//! `arch_events_sqlx_postgres`).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use arch_events::event_store::{KeyStore, Protected};
use arch_events::testing::{InMemoryEventStore, InMemoryKeyStore};
use arch_events_sqlx::Store;
use arch_events_sqlx_conformance::event_store::EventStoreUnderTest;
use arch_events_sqlx_conformance::{self as conformance, event_store_tests};

async fn in_memory() -> EventStoreUnderTest {
    let store = Arc::new(InMemoryEventStore::new());
    let keys: Arc<dyn KeyStore> = Arc::new(InMemoryKeyStore::new());
    EventStoreUnderTest {
        protected: Arc::new(Protected::new(store.clone(), keys.clone())),
        store,
        keys,
        keep: Box::new(()),
    }
}

async fn on_sqlite() -> EventStoreUnderTest {
    let database = conformance::fresh_sqlite().await;
    let pool = database.pool::<sqlx::Sqlite>().await;
    let store = Store::open(pool).await.expect("opens");
    let keys: Arc<dyn KeyStore> = Arc::new(store.key_store());
    EventStoreUnderTest {
        protected: Arc::new(store.event_store().with_personal_data()),
        keys,
        store: Arc::new(store.event_store()),
        keep: Box::new((database, store)),
    }
}

mod in_memory {
    super::event_store_tests!(super::in_memory);
}

mod sqlite {
    super::event_store_tests!(super::on_sqlite);
}

mod projection_on_sqlite {
    arch_events_sqlx_conformance::projection_tests!(
        sqlx::Sqlite,
        arch_events_sqlx_conformance::fresh_sqlite
    );
}
