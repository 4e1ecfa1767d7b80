//! Recording what a bus did: the events released, in order, and the
//! handler calls, with how they ended.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use crate::bus::Bus;
use crate::events::PendingEvent;
use crate::message::Event;
use crate::registry::HandlerDef;

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

/// Something a handler did that compiles and runs, but that the bus
/// would otherwise let pass silently. A [`Recorder`] that saw one fails the
/// test when it is dropped, unless the test took it with
/// [`Recorder::take_misuses`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Misuse {
    /// A handler call released an event that its `#[handler(releases(...))]`
    /// does not declare: [`Bus::describe`] and its diagram leave that edge
    /// out. Declare it.
    UndeclaredRelease {
        /// The handler's path.
        handler: &'static str,
        /// The event's name.
        event: &'static str,
    },
    /// A handler returned `Ok` although a unit of work of its call was
    /// dropped without commit while it held changes (see
    /// [`EventReleaser::dropped_uncommitted`](crate::EventReleaser::dropped_uncommitted)):
    /// nothing of them was stored, yet its caller heard success.
    Uncommitted {
        /// The handler's path.
        handler: &'static str,
        /// What the unit of work held.
        dropped: crate::events::Uncommitted,
    },
}

impl std::fmt::Display for Misuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Misuse::UndeclaredRelease { handler, event } => write!(
                f,
                "handler `{handler}` released the event `{event}`, which it does not declare: \
                 add it to `#[handler(releases(...))]`"
            ),
            Misuse::Uncommitted { handler, dropped } => write!(
                f,
                "handler `{handler}` returned Ok, but a unit of work of its call was dropped \
                 without commit while it held {dropped}: nothing of them was stored; commit it, \
                 roll it back (a dry run), or return an error"
            ),
        }
    }
}

#[derive(Default)]
struct Recorded {
    events: Vec<PendingEvent>,
    runs: Vec<HandlerRun>,
    misuses: Vec<Misuse>,
}

/// Records everything a bus does: every event its handlers release, in the
/// order they are handled, and every handler call, with its outcome.
///
/// Attach one to a bus (its clones included) in a test; it stays attached
/// for the bus's life.
///
/// It also watches for [`Misuse`]s, which the bus only logs: a handler that
/// releases an event it did not declare, or that returns `Ok` after dropping
/// a unit of work that held changes. When the last clone of a recorder is
/// dropped while it holds misuses that the test did not take with
/// [`take_misuses`](Self::take_misuses), it panics, listing them: the test
/// fails.
///
/// ```
/// use arch_events::testing::{handler_name, Recorder};
/// use arch_events::{handler, Bus, Command, Event, EventReleaser};
///
/// #[derive(Debug, Command)]
/// struct PlaceOrder { id: u32 }
///
/// #[derive(Debug, Clone, PartialEq, Event)]
/// struct OrderPlaced { id: u32 }
///
/// #[handler(releases(OrderPlaced))]
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
/// assert!(recorder.ran::<place_order>() && recorder.ran::<confirm>());
/// assert_eq!(
///     recorder.handlers_that_ran(),
///     [handler_name::<place_order>(), handler_name::<confirm>()],
/// );
/// ```
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
    /// Shared by this recorder's clones only (the bus holds `inner`): its
    /// drop is the end of the test's use of the recorder.
    _watch: Arc<MisuseCheck>,
}

/// The path of the handler `H` (the type `#[handler]` defines under the
/// function's name), as the bus names it in logs, errors and
/// [`Recorder::handlers_that_ran`]: `your_crate::module::function`.
///
/// ```
/// use arch_events::testing::handler_name;
/// use arch_events::{handler, Command};
///
/// #[derive(Debug, Command)]
/// struct Ping;
///
/// #[handler]
/// fn ping(_: Ping) -> Result<(), std::convert::Infallible> { Ok(()) }
///
/// assert_eq!(handler_name::<ping>(), concat!(module_path!(), "::ping"));
/// ```
pub fn handler_name<H: HandlerDef>() -> &'static str {
    H::registration().name()
}

/// Fails the test when the last clone of a recorder goes while it holds
/// misuses the test did not take.
struct MisuseCheck(Arc<RecorderInner>);

impl Drop for MisuseCheck {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let misuses = std::mem::take(&mut self.0.lock().misuses);
        if misuses.is_empty() {
            return;
        }
        let mut text = format!(
            "the recorder saw {} misuse{} (take them with `Recorder::take_misuses` if the test \
             expects them):",
            misuses.len(),
            if misuses.len() == 1 { "" } else { "s" }
        );
        for misuse in &misuses {
            text.push_str("\n  - ");
            text.push_str(&misuse.to_string());
        }
        panic!("{text}");
    }
}

/// What a recorder holds; the bus writes to it when one is attached.
#[derive(Default)]
pub(crate) struct RecorderInner(Mutex<Recorded>, Mutex<Weak<MisuseCheck>>);

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

    pub(crate) fn misused(&self, misuse: Misuse) {
        let mut recorded = self.lock();
        if !recorded.misuses.contains(&misuse) {
            recorded.misuses.push(misuse);
        }
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
    /// A bus takes one recorder: attaching again returns one that shares
    /// the first's records and its check on drop.
    pub fn attach(bus: &Bus) -> Recorder {
        let fresh = Arc::new(RecorderInner::default());
        let inner = match bus.attach_tap(fresh.clone()) {
            Ok(()) => fresh,
            Err(existing) => existing,
        };
        // Every recorder of one bus shares one check: the test's use of the
        // recorder ends when the last of them goes.
        let check = {
            let mut shared = inner.1.lock().unwrap_or_else(PoisonError::into_inner);
            match shared.upgrade() {
                Some(check) => check,
                None => {
                    let check = Arc::new(MisuseCheck(inner.clone()));
                    *shared = Arc::downgrade(&check);
                    check
                }
            }
        };
        Recorder {
            _watch: check,
            inner,
        }
    }

    /// Whether the handler `H` (the type `#[handler]` defines under the
    /// function's name) ran, successfully or not.
    pub fn ran<H: HandlerDef>(&self) -> bool {
        let name = H::registration().name();
        self.inner.lock().runs.iter().any(|r| r.handler == name)
    }

    /// The calls of the handler `H` that ended so far, in order.
    pub fn runs_of<H: HandlerDef>(&self) -> Vec<HandlerRun> {
        let name = H::registration().name();
        self.inner
            .lock()
            .runs
            .iter()
            .filter(|r| r.handler == name)
            .cloned()
            .collect()
    }

    /// The misuses seen so far (see [`Misuse`]); they stay, and still fail
    /// the test when the recorder is dropped.
    pub fn misuses(&self) -> Vec<Misuse> {
        self.inner.lock().misuses.clone()
    }

    /// Takes the misuses seen so far: a test that expects them takes them,
    /// and the recorder no longer fails for those.
    pub fn take_misuses(&self) -> Vec<Misuse> {
        std::mem::take(&mut self.inner.lock().misuses)
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

    /// Forgets the events and handler calls recorded so far (between the
    /// "given" and the "when" of a test); not the misuses.
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
            .field("misuses", &recorded.misuses)
            .finish()
    }
}
