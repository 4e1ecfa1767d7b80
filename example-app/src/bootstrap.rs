//! The composition root: the bus, built from the adapters it is given.
//!
//! `main` passes the real adapters; tests pass fakes, one line each:
//! `bootstrap(Adapters { notifications: fake.clone(), ..Adapters::in_memory(&store) })`.

use std::sync::Arc;

use bus_core::{BuildError, Bus, Dependencies};

use crate::adapters::memory::{InMemoryAllocationsView, InMemoryStore};
use crate::adapters::notifications::{LogNotifications, Notifications};
use crate::adapters::sqlite::{self, SqliteAllocationsView, SqliteDatabase};
use crate::service_layer::unit_of_work::{UnitOfWork, UnitOfWorkFactory};
use crate::views::AllocationsView;

/// Everything the handlers depend on.
pub struct Adapters {
    /// Makes a fresh unit of work for each handler call.
    pub unit_of_work: UnitOfWorkFactory,
    /// The read model.
    pub views: Arc<dyn AllocationsView>,
    /// Where notifications go.
    pub notifications: Arc<dyn Notifications>,
}

impl Adapters {
    /// The real adapters: SQLite for both models, notifications to the log.
    pub fn sqlite(database: SqliteDatabase) -> Self {
        Adapters {
            views: Arc::new(SqliteAllocationsView::new(database.clone())),
            unit_of_work: sqlite::unit_of_work_factory(database),
            notifications: Arc::new(LogNotifications),
        }
    }

    /// In-memory adapters over `store`, for tests and demos.
    pub fn in_memory(store: &Arc<InMemoryStore>) -> Self {
        Adapters {
            unit_of_work: store.unit_of_work_factory(),
            views: Arc::new(InMemoryAllocationsView::default()),
            notifications: Arc::new(LogNotifications),
        }
    }
}

/// Builds the bus. Every handler is registered by `#[handler]`; this only
/// decides which adapters they get.
pub fn bootstrap(adapters: Adapters) -> Result<Bus, BuildError> {
    let Adapters {
        unit_of_work,
        views,
        notifications,
    } = adapters;
    let dependencies = Dependencies::new()
        .scoped_boxed::<dyn UnitOfWork, _>(move |scope| unit_of_work(scope.releaser()))
        .shared_arc(views)
        .shared_arc(notifications);
    Bus::builder().dependencies(dependencies).build()
}
