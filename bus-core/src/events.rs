//! Events on their way to the bus: recorded by aggregates, released on commit.
//!
//! The path of an event: an aggregate method [records](EventRecorder::record)
//! it; the unit of work, once its commit succeeded, hands the aggregate's
//! events to its [`EventReleaser`]; when the handler returns `Ok`, the bus
//! appends them to the dispatch's queue. A handler that fails releases nothing.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use spin::mutex::{SpinMutex, SpinMutexGuard};
use spin::relax::Yield;

use crate::context::{Cause, LazyContext, MessageContext};
use crate::delivery::{Delivery, DeliveryLog, Stored};
use crate::event_box::{event_box, EventBox};
use crate::message::{Event, MessageMeta};

/// The object-safe face of an event, for queues and recorders.
pub(crate) trait ErasedEvent: Send + Sync + 'static {
    fn meta(&self) -> &'static MessageMeta;
    fn as_any(&self) -> &(dyn Any + Send + Sync);
    fn clone_box(&self) -> EventBox;
    fn debug(&self) -> &dyn fmt::Debug;
}

impl<E: Event> ErasedEvent for E {
    fn meta(&self) -> &'static MessageMeta {
        E::meta()
    }
    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
    fn clone_box(&self) -> EventBox {
        event_box(self.clone())
    }
    fn debug(&self) -> &dyn fmt::Debug {
        self
    }
}

/// Events a handler call released, in order: the buffer that becomes its
/// dispatch's queue.
pub(crate) type Released = Vec<PendingEvent>;

/// One event of any type, waiting to be handled.
pub struct PendingEvent {
    /// Inline when small: releasing a small event allocates nothing.
    event: EventBox,
    /// Unmade until it joins a dispatch's queue (`Root`), its cause's
    /// then, its own once read or assigned by a unit of work that stores it
    /// ([`assign_ids`](Self::assign_ids)).
    ids: LazyContext,
    /// Set by a store that wrote the event ([`stored`](Self::stored)).
    /// Boxed: most events are not stored, and a smaller event moves
    /// through the queue faster.
    pub(crate) stored: Option<Box<Stored>>,
}

impl PendingEvent {
    /// Wraps an event.
    pub fn new<E: Event>(event: E) -> Self {
        PendingEvent::boxed(event_box(event))
    }

    fn boxed(event: EventBox) -> Self {
        PendingEvent {
            event,
            ids: LazyContext::Root,
            stored: None,
        }
    }

    /// The ids the event is handled with: `None` until the bus handles it
    /// and something reads them (a handler taking a [`MessageContext`], an
    /// event it releases, a failure, a span, a test's recorder), or until
    /// [`assign_ids`](Self::assign_ids).
    pub fn context(&self) -> Option<MessageContext> {
        self.ids.made()
    }

    /// Queues the event as released by the handler of the message `cause`
    /// describes: it takes that message's correlation id, and that
    /// message's id as its causation id; its own id is made when first
    /// read. An event with ids (a stored one) keeps them.
    #[inline]
    pub(crate) fn caused_by(&mut self, cause: &MessageContext) {
        if let LazyContext::Root = self.ids {
            self.ids = LazyContext::Caused(Cause::of(cause));
        }
    }

    /// The event as the bus handles it, and its ids, made on first read:
    /// the event's own, lent (the blocking run reads them through it, with
    /// no copy of them in between).
    #[inline]
    pub(crate) fn with_lazy_ids(&mut self) -> (&dyn ErasedEvent, &mut LazyContext) {
        (&*self.event, &mut self.ids)
    }

    /// The ids the bus handles the event with, made now if they were not.
    #[inline]
    pub(crate) fn fixed_ids(&mut self) -> MessageContext {
        self.ids.get()
    }

    /// Gives the event its ids now, as an event released by the handler of
    /// the message `cause` describes (unless it has ids already), and
    /// returns them: a unit of work that stores the events it releases calls
    /// this before writing them, so that the stored ids are the ones the bus
    /// handles the event with.
    ///
    /// ```
    /// use arch_events::{Event, MessageContext, PendingEvent};
    ///
    /// #[derive(Debug, Clone, Event)]
    /// struct Shipped;
    ///
    /// let command = MessageContext::root();
    /// let mut event = PendingEvent::new(Shipped);
    /// let ids = event.assign_ids(&command);
    /// assert_eq!(ids.causation_id(), Some(command.message_id()));
    /// assert_eq!(ids.correlation_id(), command.correlation_id());
    /// assert_eq!(event.assign_ids(&MessageContext::root()), ids, "assigned once");
    /// ```
    pub fn assign_ids(&mut self, cause: &MessageContext) -> MessageContext {
        self.caused_by(cause);
        self.fixed_ids()
    }

    /// The event with exactly these ids: a stored event read back, to be
    /// handled with the ids it was stored with.
    pub fn with_context(mut self, context: MessageContext) -> Self {
        self.ids = LazyContext::Known(context);
        self
    }

    /// Marks the event as written by a durable store: the bus tells `log`
    /// how its delivery goes (see [`DeliveryLog`]). Its ids are made first
    /// if it has none (see [`assign_ids`](Self::assign_ids)).
    pub fn stored(mut self, log: Arc<dyn DeliveryLog>) -> Self {
        self.fixed_ids();
        self.stored = Some(Box::new(Stored::new(log)));
        self
    }

    /// Whether a durable store wrote the event ([`stored`](Self::stored)).
    pub fn is_stored(&self) -> bool {
        self.stored.is_some()
    }

    /// The store's log of this event, when it was stored.
    pub(crate) fn delivery_log(&self) -> Option<&Arc<dyn DeliveryLog>> {
        self.stored.as_ref().map(|stored| &stored.log)
    }

    /// The static description of the event's type.
    pub fn meta(&self) -> &'static MessageMeta {
        self.event.meta()
    }

    /// The event's stable name.
    pub fn name(&self) -> &'static str {
        self.event.meta().name()
    }

    /// The event, if it is an `E`.
    pub fn downcast_ref<E: Event>(&self) -> Option<&E> {
        self.event.as_any().downcast_ref()
    }

    /// The event as JSON, when its type was derived with `#[event(serde)]`
    /// (`None` otherwise).
    pub fn to_json(&self) -> Option<Result<String, crate::CodecError>> {
        self.meta().codec().map(|codec| codec.encode(self))
    }

    /// Whether the event is an `E`.
    pub fn is<E: Event>(&self) -> bool {
        self.event.as_any().is::<E>()
    }

    pub(crate) fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self.event.as_any()
    }

    /// The event as the bus handles it.
    #[inline]
    pub(crate) fn erased(&self) -> &dyn ErasedEvent {
        &*self.event
    }

    /// A copy of an event the bus is handling.
    pub(crate) fn copy_of(event: &dyn ErasedEvent) -> Self {
        PendingEvent::boxed(event.clone_box())
    }
}

impl Clone for PendingEvent {
    /// A copy with the same ids; a copy of a stored event still reports to
    /// its store, but only the original tells it the bus let the event go.
    fn clone(&self) -> Self {
        // An event queued with its cause's ids only (its own id made when
        // first read) is never copied: each copy would make an id of its
        // own. The bus fixes the ids first (`fixed_ids`), or copies the
        // event without them (`copy_of`, with the ids kept beside it).
        PendingEvent {
            event: self.event.clone_box(),
            ids: self.ids.copied(),
            stored: self.stored.as_ref().map(|stored| Box::new(stored.copy())),
        }
    }
}

// `SmallBox<dyn ErasedEvent>` is not `Unpin` (the trait has no `Unpin`
// bound); nothing pins into a pending event, and it was `Unpin` with a
// `Box`. A safe trait: no projection of the event's place is offered.
impl Unpin for PendingEvent {}

impl Drop for PendingEvent {
    fn drop(&mut self) {
        if let Some(stored) = &mut self.stored {
            stored.let_go(self.ids.made().map(|context| context.message_id()));
        }
    }
}

impl fmt::Debug for PendingEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.event.debug().fmt(f)
    }
}

impl<E: Event> From<E> for PendingEvent {
    fn from(event: E) -> Self {
        PendingEvent::new(event)
    }
}

/// The events an aggregate raised and nobody has released yet.
///
/// Cloning copies the pending events too: a unit of work that stores a copy
/// of an aggregate should [`take`](Self::take) its events first, or the stored
/// copy would raise them again when loaded.
///
/// ```
/// use arch_events::{Event, EventRecorder};
///
/// #[derive(Debug, Clone, PartialEq, Event)]
/// struct OutOfStock { sku: String }
///
/// let mut recorder = EventRecorder::default();
/// recorder.record(OutOfStock { sku: "LAMP".into() });
/// assert_eq!(recorder.of_type::<OutOfStock>().count(), 1);
/// assert_eq!(recorder.take().len(), 1);
/// assert!(recorder.is_empty());
/// ```
#[derive(Default, Clone, Debug)]
pub struct EventRecorder {
    events: Vec<PendingEvent>,
}

impl EventRecorder {
    /// Records an event, after those already recorded.
    pub fn record<E: Event>(&mut self, event: E) {
        self.events.push(PendingEvent::new(event));
    }

    /// Takes every recorded event, oldest first, leaving the recorder empty.
    pub fn take(&mut self) -> Vec<PendingEvent> {
        std::mem::take(&mut self.events)
    }

    /// The recorded events, to give them ids before they are stored.
    #[cfg(feature = "json")]
    pub(crate) fn as_mut_slice(&mut self) -> &mut [PendingEvent] {
        &mut self.events
    }

    /// The recorded events, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &PendingEvent> {
        self.events.iter()
    }

    /// The recorded events of type `E`, oldest first.
    pub fn of_type<E: Event>(&self) -> impl Iterator<Item = &E> {
        self.events.iter().filter_map(PendingEvent::downcast_ref)
    }

    /// How many events are recorded.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event is recorded.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// A consistency boundary that records the events its methods raise.
///
/// ```
/// use arch_events::{Aggregate, Event, EventRecorder};
///
/// #[derive(Debug, Clone, Event)]
/// struct Renamed { to: String }
///
/// #[derive(Default)]
/// struct Product { name: String, events: EventRecorder }
///
/// impl Product {
///     fn rename(&mut self, to: &str) {
///         self.name = to.to_owned();
///         self.events.record(Renamed { to: to.to_owned() });
///     }
/// }
///
/// impl Aggregate for Product {
///     fn events(&mut self) -> &mut EventRecorder { &mut self.events }
/// }
///
/// let mut p = Product::default();
/// p.rename("lamp");
/// assert_eq!(p.events().len(), 1);
/// ```
pub trait Aggregate {
    /// The aggregate's recorder of raised, unreleased events.
    fn events(&mut self) -> &mut EventRecorder;
}

/// The channel through which a unit of work hands committed events to the bus.
///
/// The bus gives each handler call its own releaser (get it in a scoped
/// factory with [`Scope::releaser`](crate::Scope::releaser), or take
/// `EventReleaser` as a handler parameter). What it holds reaches the
/// dispatch's queue when the handler returns `Ok`, and is dropped when the
/// handler fails. Clones share one buffer.
///
/// A unit of work releases only after its commit succeeded; that is what makes
/// "events go out only after the transaction that raised them committed" true.
///
/// ```
/// use std::sync::Mutex;
/// use arch_events::{handler, Bus, Command, Dependencies, Event, EventReleaser};
///
/// #[derive(Debug, Command)]
/// #[command(error = Refused)]
/// struct Ship { ok: bool }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("refused")]
/// struct Refused;
///
/// #[derive(Debug, Clone, Event)]
/// struct Shipped;
///
/// #[handler(releases(Shipped))]
/// fn ship(cmd: Ship, events: EventReleaser) -> Result<(), Refused> {
///     events.release(Shipped);
///     if cmd.ok { Ok(()) } else { Err(Refused) }
/// }
///
/// #[derive(Default)]
/// struct Seen(Mutex<u32>);
///
/// #[handler]
/// fn count(_: &Shipped, seen: &Seen) {
///     *seen.0.lock().unwrap() += 1;
/// }
///
/// let seen = std::sync::Arc::new(Seen::default());
/// let bus = Bus::builder()
///     .dependencies(Dependencies::new().shared_arc(seen.clone()))
///     .build()
///     .unwrap();
/// bus.dispatch_blocking(Ship { ok: true }).unwrap();
/// assert!(bus.dispatch_blocking(Ship { ok: false }).is_err());
/// assert_eq!(*seen.0.lock().unwrap(), 1, "the failed handler released nothing");
/// ```
#[derive(Clone, Default)]
pub struct EventReleaser {
    inner: Arc<ReleaserLock>,
}

/// The lock around a releaser's state: a spin lock, whose release is a
/// plain store, as the state is only ever held to move events in or out
/// (never while a caller's code runs: not an iterator, a `Debug`, a drop or
/// a log), by one call's handler and units of work, in turn; a thread that
/// finds it taken (another thread releasing through a clone at that very
/// moment) yields.
type ReleaserLock = SpinMutex<ReleaserState, Yield>;

thread_local! {
    /// A releaser's state that its last call left unshared, emptied: the
    /// next call on this thread takes it instead of allocating one.
    static SPARE: Cell<Option<Arc<ReleaserLock>>> = const { Cell::new(None) };

    /// The buffer of a dispatch's queue that was done with, empty: the next
    /// call on this thread that releases an event fills it instead of
    /// allocating one (the released events' buffer becomes the queue).
    static SPARE_BUFFER: Cell<Vec<PendingEvent>> = const { Cell::new(Vec::new()) };
}

/// The most events a buffer kept for reuse holds room for: a dispatch that
/// queued more gives its larger buffer back to the allocator.
const SPARE_BUFFER_MAX: usize = 64;

/// Keeps the empty buffer of a dispatch's queue for this thread's next
/// releasing call (see [`SPARE_BUFFER`]).
pub(crate) fn recycle_buffer(buffer: Released) {
    if buffer.is_empty() && buffer.capacity() <= SPARE_BUFFER_MAX {
        // A thread being torn down keeps nothing.
        let _ = SPARE_BUFFER.try_with(|spare| spare.set(buffer));
    }
}

impl ReleaserState {
    /// Refuses `events` (this is a query's releaser, or its call ended): a
    /// query's call keeps their names, under the same lock as the check, so
    /// that closing the call sees them and the query fails. Returns whether
    /// this is a query's releaser.
    #[cold]
    fn refuses(&mut self, events: &[PendingEvent]) -> bool {
        if self.reads_only {
            let trouble = self.trouble.get_or_insert_with(Box::default);
            trouble
                .refused
                .extend(events.iter().map(PendingEvent::name));
        }
        self.reads_only
    }

    /// Takes what the call released, what its units of work dropped and
    /// what a query's call tried to release.
    #[inline]
    fn take_closed(&mut self) -> Closed {
        Closed {
            events: std::mem::take(&mut self.events),
            trouble: self.trouble.take(),
        }
    }

    /// The buffer released events go to: the spare one of this thread
    /// when this call has none yet.
    #[inline]
    fn buffer(&mut self) -> &mut Released {
        if self.events.capacity() == 0 {
            if let Ok(buffer) = SPARE_BUFFER.try_with(Cell::take) {
                self.events = buffer;
            }
        }
        &mut self.events
    }
}

#[derive(Default)]
struct ReleaserState {
    events: Released,
    closed: bool,
    /// Whether the bus made it for a handler call (and so checks it when
    /// the call ends); `false` for [`EventReleaser::new`].
    in_call: bool,
    /// The releaser of a query's handler call: it takes no event.
    reads_only: bool,
    /// The stored event this call delivers, if it is one.
    delivery: Option<Delivery>,
    recorded: Recorded,
    /// What is wrong with the call, if anything: boxed, so that what a
    /// call hands over when it ends stays small.
    trouble: Option<Box<Trouble>>,
}

/// What a handler call's releaser holds when something went wrong.
#[derive(Default)]
pub(crate) struct Trouble {
    /// What units of work of the call dropped without committing.
    uncommitted: Uncommitted,
    /// The names of the events refused because the call is a query's.
    refused: Vec<&'static str>,
}

/// What a handler call's releaser held when the call ended.
#[derive(Default)]
pub(crate) struct Closed {
    /// What it released, for the queue.
    pub(crate) events: Released,
    /// What else it has to say, rarely anything.
    trouble: Option<Box<Trouble>>,
}

impl Trouble {
    /// What units of work dropped without committing, if there is trouble.
    fn uncommitted(trouble: Option<&Trouble>) -> Uncommitted {
        trouble.map_or_else(Uncommitted::default, |trouble| trouble.uncommitted)
    }
}

impl Closed {
    /// What its units of work dropped without committing.
    pub(crate) fn uncommitted(&self) -> Uncommitted {
        Trouble::uncommitted(self.trouble.as_deref())
    }

    /// What it tried to release although it is a query's, taken.
    pub(crate) fn take_refused(&mut self) -> Vec<&'static str> {
        self.trouble
            .as_mut()
            .map_or_else(Vec::new, |trouble| std::mem::take(&mut trouble.refused))
    }
}

/// What a unit of work dropped without commit still held: reported with
/// [`EventReleaser::dropped_uncommitted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Uncommitted {
    /// Aggregates it loaded and changed, or added.
    pub aggregates: usize,
    /// Events its aggregates recorded.
    pub events: usize,
}

impl Uncommitted {
    /// Whether it held nothing.
    pub fn is_empty(&self) -> bool {
        self.aggregates == 0 && self.events == 0
    }
}

impl fmt::Display for Uncommitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} changed aggregate{} and {} recorded event{}",
            self.aggregates,
            if self.aggregates == 1 { "" } else { "s" },
            self.events,
            if self.events == 1 { "" } else { "s" },
        )
    }
}

/// What the call's unit of work said about its [`Delivery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Recorded {
    /// Nothing: the bus records the handler's completion itself.
    #[default]
    No,
    /// Its commit recorded the delivery.
    Yes,
    /// The store found the delivery done already: this call is a duplicate.
    Duplicate,
}

impl EventReleaser {
    /// A releaser that belongs to no bus, for unit tests of a unit of work:
    /// inspect it with [`EventReleaser::drain`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The releaser of one handler call (`delivery`: the stored event it
    /// delivers, if it is one; `reads_only`: the call is a query's).
    pub(crate) fn for_call(delivery: Option<Delivery>, reads_only: bool) -> Self {
        // The state a call on this thread left unshared, ready for a call
        // that delivers nothing and is not a query's (see `close_checked`),
        // or a new one.
        let inner = match SPARE.try_with(Cell::take) {
            Ok(Some(spare)) => spare,
            _ => Arc::new(ReleaserLock::new(ReleaserState {
                in_call: true,
                ..ReleaserState::default()
            })),
        };
        let releaser = EventReleaser { inner };
        if delivery.is_some() || reads_only {
            let mut state = releaser.state();
            state.delivery = delivery;
            state.reads_only = reads_only;
        }
        releaser
    }

    /// Whether events released here can be handled: `false` for the
    /// releaser of a query's handler call (a query reads, it never changes
    /// state or releases events), whose events are refused and fail the
    /// query. A unit of work that writes the events it releases in its own
    /// transaction checks this before writing them, and fails its commit
    /// instead (arch-events-sqlx's `Store::stage` does): a refused event must not
    /// be stored either, or a recovery would deliver it later.
    ///
    /// ```
    /// assert!(arch_events::EventReleaser::new().accepts_events());
    /// ```
    pub fn accepts_events(&self) -> bool {
        !self.state().reads_only
    }

    fn state(&self) -> SpinMutexGuard<'_, ReleaserState, Yield> {
        // A panic while the lock was held cannot leave the Vec half-written
        // (pushes are single calls), and unwinding releases the lock.
        self.inner.lock()
    }

    /// Releases one event.
    pub fn release<E: Event>(&self, event: E) {
        let mut state = self.state();
        if !(state.reads_only || state.closed) {
            // Moving the event in runs none of the caller's code.
            state.buffer().push(PendingEvent::new(event));
            return;
        }
        let event = PendingEvent::new(event);
        let reads_only = state.refuses(std::slice::from_ref(&event));
        drop(state);
        Self::refuse(reads_only, vec![event]);
    }

    /// Releases events, in order.
    pub fn release_all(&self, events: impl IntoIterator<Item = PendingEvent>) {
        // The caller's iterator runs before the lock is taken (collecting a
        // `Vec`'s own iterator reuses its buffer).
        let mut events: Vec<PendingEvent> = events.into_iter().collect();
        if events.is_empty() {
            return;
        }
        let refused = {
            let mut state = self.state();
            if state.reads_only || state.closed {
                Some(state.refuses(&events))
            } else {
                state.buffer().append(&mut events);
                None
            }
        };
        // Dropped, and said so, outside the lock.
        if let Some(reads_only) = refused {
            Self::refuse(reads_only, events);
        }
    }

    /// Events released through a query's releaser, or after the call
    /// ended, once refused ([`ReleaserState::refuses`]): dropped, and said
    /// so. Called without the lock held: dropping an event may call its
    /// store, and logging runs a subscriber.
    #[cold]
    #[inline(never)]
    fn refuse(reads_only: bool, events: Vec<PendingEvent>) {
        let names: Vec<&'static str> = events.iter().map(PendingEvent::name).collect();
        drop(events);
        if reads_only {
            tracing::error!(
                events = ?names,
                "a query's handler released events: refused, and the query fails \
                 (a query reads, it never releases events)"
            );
        } else {
            tracing::error!(
                events = ?names,
                "events released after their handler returned were not handled; \
                 release events before the handler returns"
            );
        }
    }

    /// Releases everything the aggregate recorded, leaving it empty.
    pub fn release_from<A: Aggregate + ?Sized>(&self, aggregate: &mut A) {
        let events = aggregate.events().take();
        if !events.is_empty() {
            self.release_all(events);
        }
    }

    /// Takes what was released so far (for tests of a unit of work).
    pub fn drain(&self) -> Vec<PendingEvent> {
        std::mem::take(&mut self.state().events)
    }

    /// Takes what was released and refuses anything later.
    pub(crate) fn close(self) -> Released {
        self.close_checked().events
    }

    /// Takes what was released, what units of work dropped without
    /// committing and what a query's call tried to release, and refuses
    /// anything later (through any clone still held).
    ///
    /// When no clone is left, the state is emptied and kept for the next
    /// call on this thread, so that a call that releases events does not
    /// allocate its releaser. No clone can appear meanwhile: cloning takes
    /// a releaser, and this one is the last.
    pub(crate) fn close_checked(mut self) -> Closed {
        // The last handle (the common case): no lock to take, and the state
        // is kept for the next call.
        let Some(state) = Arc::get_mut(&mut self.inner).map(SpinMutex::get_mut) else {
            // Shared: closed for good.
            let mut state = self.state();
            state.closed = true;
            return state.take_closed();
        };
        let closed = state.take_closed();
        // Every field named: one added later must be reset here too. Ready
        // for a call that delivers nothing and is not a query's.
        let ReleaserState {
            events: _,
            closed: is_closed,
            in_call,
            reads_only,
            delivery,
            recorded,
            trouble: _,
        } = state;
        (*is_closed, *in_call, *reads_only) = (false, true, false);
        (*delivery, *recorded) = (None, Recorded::No);
        let inner = self.inner;
        // A thread being torn down keeps nothing.
        let _ = SPARE.try_with(|spare| spare.set(Some(inner)));
        closed
    }

    /// Says that a unit of work was dropped without commit or rollback while
    /// it still held `aggregates` changed (or added) aggregates and `events`
    /// recorded events: nothing of them was stored or released. Call it from
    /// your unit of work's `Drop`; it does nothing when both are zero.
    ///
    /// When the handler of this call then returns `Ok` anyway, the caller
    /// hears success for work that was never stored: the bus logs a warning
    /// naming the handler, and a test's [`Recorder`](crate::testing::Recorder)
    /// fails. (A handler that returns an error dropped its unit of work on
    /// purpose: nothing is reported.) On a releaser made with
    /// [`EventReleaser::new`], outside any bus, the warning is logged at once.
    ///
    /// ```
    /// use arch_events::{Aggregate, EventRecorder, EventReleaser};
    ///
    /// struct Account { version: u64, loaded: u64, events: EventRecorder }
    ///
    /// /// A unit of work that says what it drops.
    /// struct UnitOfWork { seen: Vec<Account>, releaser: EventReleaser }
    ///
    /// impl Drop for UnitOfWork {
    ///     fn drop(&mut self) {
    ///         // `commit` and `rollback` empty `seen`: only an uncommitted
    ///         // unit of work has something to say here.
    ///         let changed = self.seen.iter().filter(|a| a.version != a.loaded).count();
    ///         let events = self.seen.iter_mut().map(|a| a.events.len()).sum();
    ///         self.releaser.dropped_uncommitted(changed, events);
    ///     }
    /// }
    /// # let _ = UnitOfWork { seen: Vec::new(), releaser: EventReleaser::new() };
    /// ```
    pub fn dropped_uncommitted(&self, aggregates: usize, events: usize) {
        if aggregates == 0 && events == 0 {
            return;
        }
        let mut state = self.state();
        if state.in_call && !state.closed {
            let trouble = state.trouble.get_or_insert_with(Box::default);
            trouble.uncommitted.aggregates += aggregates;
            trouble.uncommitted.events += events;
            return;
        }
        drop(state);
        let uncommitted = Uncommitted { aggregates, events };
        tracing::warn!(
            %uncommitted,
            "a unit of work was dropped without commit or rollback: nothing of what it held \
             was stored or released"
        );
    }

    /// When this call delivers an event a durable store wrote: which event
    /// and which handler. A unit of work records it in its commit's
    /// transaction, then calls [`delivery_recorded`](Self::delivery_recorded),
    /// so that the handler's effect and the record of it commit together;
    /// `None` from then on (a second commit of the call records nothing).
    pub fn delivery(&self) -> Option<Delivery> {
        let state = self.state();
        // Recorded once per call: a second commit in the same call has
        // nothing more to record.
        match state.recorded {
            Recorded::No => state.delivery,
            Recorded::Yes | Recorded::Duplicate => None,
        }
    }

    /// The commit that recorded this call's [`delivery`](Self::delivery)
    /// succeeded: the bus records nothing more for it.
    pub fn delivery_recorded(&self) {
        self.state().recorded = Recorded::Yes;
    }

    /// The store found this call's [`delivery`](Self::delivery) done
    /// already (an earlier run, or another process, handled the event): the
    /// unit of work wrote nothing, and the handler's error, if it returns
    /// one, is not a failure.
    pub fn delivery_duplicate(&self) {
        self.state().recorded = Recorded::Duplicate;
    }

    /// What the call's unit of work said about its delivery.
    pub(crate) fn recorded(&self) -> Recorded {
        self.state().recorded
    }
}

impl fmt::Debug for EventReleaser {
    /// The names of the events it holds, not the events: formatting them
    /// would run their `Debug` with the lock held.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (events, closed, delivery, uncommitted) = {
            let state = self.state();
            let names: Vec<&'static str> = state.events.iter().map(PendingEvent::name).collect();
            let uncommitted = Trouble::uncommitted(state.trouble.as_deref());
            (names, state.closed, state.delivery, uncommitted)
        };
        f.debug_struct("EventReleaser")
            .field("events", &events)
            .field("closed", &closed)
            .field("delivery", &delivery)
            .field("uncommitted", &uncommitted)
            .finish()
    }
}

// A panic anywhere leaves a releaser's state whole: the lock is held only
// to move events in or out (a push, an append, a take), never while a
// caller's code runs, and unwinding releases it. (`SpinMutex` holds an
// `UnsafeCell`, which is why these are not inferred; `std`'s `Mutex`, used
// before, had them.)
impl std::panic::UnwindSafe for EventReleaser {}
impl std::panic::RefUnwindSafe for EventReleaser {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;

    #[derive(Debug, Clone, PartialEq, Event)]
    struct Shipped(u32);

    #[test]
    fn a_releaser_keeps_order_and_refuses_events_after_its_handler_returned() {
        let releaser = EventReleaser::new();
        releaser.release(Shipped(1));
        releaser.release_all([PendingEvent::new(Shipped(2))]);
        let (clone, other) = (releaser.clone(), releaser.clone());
        let taken = releaser.close();
        let values: Vec<_> = taken
            .iter()
            .map(|e| e.downcast_ref::<Shipped>().map(|s| s.0))
            .collect();
        assert_eq!(values, [Some(1), Some(2)]);
        clone.release(Shipped(3));
        assert!(other.drain().is_empty(), "a late release is refused");
    }

    #[test]
    fn a_closed_releaser_nobody_holds_is_reused_empty_and_a_shared_one_never() {
        let first = EventReleaser::for_call(None, true);
        first.release(Shipped(1));
        let kept = first.clone();
        let mut closed = first.close_checked();
        assert_eq!(
            closed.take_refused().len(),
            1,
            "a query's releaser refused it"
        );
        // A clone is still held: the next call gets a state of its own.
        let second = EventReleaser::for_call(None, false);
        assert!(!Arc::ptr_eq(&kept.inner, &second.inner));
        second.release(Shipped(2));
        let second_state = Arc::as_ptr(&second.inner);
        assert_eq!(second.close_checked().events.len(), 1);
        // Nothing held that one: the next call on this thread reuses it,
        // emptied, and as a command's releaser it takes events again.
        let third = EventReleaser::for_call(None, false);
        assert_eq!(Arc::as_ptr(&third.inner), second_state, "reused");
        assert!(third.accepts_events());
        assert!(third.delivery().is_none());
        third.release(Shipped(3));
        let closed = third.close_checked();
        let values: Vec<_> = closed
            .events
            .iter()
            .map(|e| e.downcast_ref::<Shipped>().map(|s| s.0))
            .collect();
        assert_eq!(values, [Some(3)], "nothing of the earlier calls is left");
        // The first one, still held, stays closed.
        kept.release(Shipped(4));
        assert!(kept.drain().is_empty());
    }

    #[test]
    fn the_callers_code_never_runs_under_the_releasers_lock() {
        let releaser = EventReleaser::new();
        let same = releaser.clone();
        // An iterator that reads the releaser it releases into: run under
        // the lock, it would wait on itself for ever.
        releaser.release_all((0..3).map(|n| {
            assert!(same.accepts_events());
            assert!(format!("{same:?}").contains("EventReleaser"));
            PendingEvent::new(Shipped(n))
        }));
        let shown = format!("{releaser:?}");
        assert!(shown.contains("events::tests::Shipped"), "{shown}");
        assert_eq!(releaser.drain().len(), 3);
        // Refused events are dropped and logged without the lock too.
        let refusing = EventReleaser::for_call(None, true);
        refusing.release_all((0..2).map(|n| {
            assert!(!refusing.accepts_events());
            PendingEvent::new(Shipped(n))
        }));
        assert_eq!(refusing.close_checked().take_refused().len(), 2);
    }

    #[test]
    fn pending_events_know_their_type_and_name() {
        let event = PendingEvent::new(Shipped(4));
        assert!(event.is::<Shipped>());
        assert_eq!(event.name(), "arch_events::events::tests::Shipped");
        assert_eq!(format!("{event:?}"), "Shipped(4)");
        assert_eq!(event.clone().downcast_ref::<Shipped>(), Some(&Shipped(4)));
    }
}
