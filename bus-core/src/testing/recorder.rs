//! Recording what a bus did: the events released, in order, and the
//! handler calls, with how they ended.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::bus::Bus;
use crate::events::PendingEvent;
use crate::message::Event;

/// One handler call, as the recorder saw it end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerRun {
    /// The handler's path.
    pub handler: &'static str,
    /// The message's name.
    pub message: &'static str,
    /// How many times it was called (its retries included).
    pub attempts: u32,
    /// Whether it succeeded (for a command or query: returned `Ok`).
    pub ok: bool,
}

#[derive(Default)]
struct Recorded {
    events: Vec<PendingEvent>,
    runs: Vec<HandlerRun>,
}

/// Records everything a bus does: every event its handlers release, in the
/// order they are handled, and every handler call, with its outcome.
///
/// Attach one to a bus (its clones included) in a test; it stays attached
/// for the bus's life.
///
/// ```
/// use bus_core::testing::Recorder;
/// use bus_core::{handler, Bus, Command, Event, EventReleaser};
///
/// #[derive(Debug, Command)]
/// struct PlaceOrder { id: u32 }
///
/// #[derive(Debug, Clone, PartialEq, Event)]
/// struct OrderPlaced { id: u32 }
///
/// #[handler]
/// fn place_order(cmd: PlaceOrder, events: EventReleaser) -> Result<(), std::convert::Infallible> {
///     events.release(OrderPlaced { id: cmd.id });
///     Ok(())
/// }
///
/// #[handler]
/// fn confirm(_: &OrderPlaced) -> Result<(), std::convert::Infallible> {
///     Ok(())
/// }
///
/// let bus = Bus::builder().build().unwrap();
/// let recorder = Recorder::attach(&bus);
/// bus.dispatch_blocking(PlaceOrder { id: 7 }).unwrap();
///
/// assert_eq!(recorder.events_of::<OrderPlaced>(), [OrderPlaced { id: 7 }]);
/// assert_eq!(recorder.handlers_that_ran(), ["rust_out::place_order", "rust_out::confirm"]);
/// ```
#[derive(Clone, Default)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

/// What a recorder holds; the bus writes to it when one is attached.
#[derive(Default)]
pub(crate) struct RecorderInner(Mutex<Recorded>);

impl RecorderInner {
    fn lock(&self) -> MutexGuard<'_, Recorded> {
        // Each write is one push: a poisoned lock's data is whole.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RecorderInner {
    pub(crate) fn released(&self, event: &PendingEvent) {
        self.lock().events.push(event.clone());
    }

    pub(crate) fn ran(
        &self,
        handler: &'static str,
        message: &'static str,
        attempts: u32,
        ok: bool,
    ) {
        self.lock().runs.push(HandlerRun {
            handler,
            message,
            attempts,
            ok,
        });
    }
}

impl Recorder {
    /// Attaches a new recorder to `bus` and returns it.
    ///
    /// A bus takes one recorder: attaching a second one returns the first.
    pub fn attach(bus: &Bus) -> Recorder {
        let recorder = Recorder::default();
        match bus.attach_tap(recorder.inner.clone()) {
            Ok(()) => recorder,
            Err(existing) => Recorder { inner: existing },
        }
    }

    /// Every event released so far, in the order the bus handled them.
    pub fn events(&self) -> Vec<PendingEvent> {
        self.inner.lock().events.clone()
    }

    /// The names of the events released so far, in order.
    pub fn event_names(&self) -> Vec<&'static str> {
        self.inner
            .lock()
            .events
            .iter()
            .map(PendingEvent::name)
            .collect()
    }

    /// The released events of type `E`, in order.
    pub fn events_of<E: Event>(&self) -> Vec<E> {
        self.inner
            .lock()
            .events
            .iter()
            .filter_map(PendingEvent::downcast_ref::<E>)
            .cloned()
            .collect()
    }

    /// Every handler call that ended so far, in order.
    pub fn runs(&self) -> Vec<HandlerRun> {
        self.inner.lock().runs.clone()
    }

    /// The paths of the handlers that ran, in the order they ended.
    pub fn handlers_that_ran(&self) -> Vec<&'static str> {
        self.inner.lock().runs.iter().map(|r| r.handler).collect()
    }

    /// The handler calls that failed for good.
    pub fn failures(&self) -> Vec<HandlerRun> {
        self.inner
            .lock()
            .runs
            .iter()
            .filter(|r| !r.ok)
            .cloned()
            .collect()
    }

    /// Forgets everything recorded so far (between the "given" and the
    /// "when" of a test).
    pub fn clear(&self) {
        let mut recorded = self.inner.lock();
        recorded.events.clear();
        recorded.runs.clear();
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let recorded = self.inner.lock();
        f.debug_struct("Recorder")
            .field("events", &recorded.events)
            .field("runs", &recorded.runs)
            .finish()
    }
}
