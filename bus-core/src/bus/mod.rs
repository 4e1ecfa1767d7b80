//! The message bus: built once at startup, then dispatched to concurrently.

mod builder;
mod dispatch;
mod routes;
mod typed_route;
mod unwind;

use std::sync::Arc;

pub use builder::{BusBuilder, DEFAULT_MAX_MESSAGES_PER_DISPATCH};
use routes::Routes;
pub(crate) use typed_route::{TypedEntry, TypedSyncEntry};

use crate::observer::Observer;

/// The message bus.
///
/// Built once by [`Bus::builder`], which validates all wiring; then cheap to
/// clone, `Send + Sync`, and safe to dispatch to from many threads and tasks
/// at once: every dispatch has its own queue and its own scoped dependencies.
///
/// ```
/// use bus_core::{handler, Bus, Command, Dependencies, Event, EventReleaser};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// #[derive(Debug, Command)]
/// #[command(output = usize)]
/// struct Add(usize);
///
/// #[derive(Debug, Clone, Event)]
/// struct Added(usize);
///
/// #[handler]
/// fn add(cmd: Add, total: &AtomicUsize, events: EventReleaser) -> Result<usize, std::convert::Infallible> {
///     let now = total.fetch_add(cmd.0, Ordering::SeqCst) + cmd.0;
///     events.release(Added(now));
///     Ok(now)
/// }
///
/// let bus = Bus::builder()
///     .dependencies(Dependencies::new().shared(AtomicUsize::new(0)))
///     .build()
///     .unwrap();
/// assert_eq!(bus.dispatch_blocking(Add(2)).unwrap(), 2);
/// assert_eq!(bus.dispatch_blocking(Add(3)).unwrap(), 5);
/// ```
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

struct BusInner {
    routes: Routes,
    observer: Option<Arc<dyn Observer>>,
    max_messages: usize,
}

impl Bus {
    /// Starts building a bus; see [`BusBuilder`].
    pub fn builder() -> BusBuilder {
        BusBuilder::new()
    }

    /// The bound on messages one dispatch may process.
    pub fn max_messages_per_dispatch(&self) -> usize {
        self.inner.max_messages
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("routes", &self.inner.routes)
            .field("max_messages", &self.inner.max_messages)
            .field("observer", &self.inner.observer.is_some())
            .finish()
    }
}
