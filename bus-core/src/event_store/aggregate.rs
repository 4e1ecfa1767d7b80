//! Event-sourced aggregates: state rebuilt from its stream, one `apply`
//! per event type, and `record`, which applies an event at once and keeps
//! it for the commit.

use std::any::type_name;
use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};

use crate::context::MessageContext;
use crate::events::{Aggregate, PendingEvent};
use crate::message::Event;

use super::envelope::{NewEvent, Position, RecordedEvent};
use super::error::EventStoreError;
use super::snapshot::{Snapshotted, StoredSnapshot};
use super::store::{Appended, EventStore};
use super::stream::{ExpectedVersion, StreamId};

/// How an aggregate's state changes with one of its events.
///
/// It is the only place the state changes: a method decides, then
/// [`record`](EventSourced::record)s what happened, which applies it. The
/// same `apply` rebuilds the state from the stream on the next load.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not apply `{E}`",
    label = "`{E}` is not one of `{Self}`'s events",
    note = "implement `arch_events::event_store::Apply<{E}> for {Self}` and list it in `{Self}`'s `EventSourced::event_types`"
)]
pub trait Apply<E: Event> {
    /// The state after `event`.
    fn apply(&mut self, event: &E);
}

/// An aggregate whose state is its stream of events.
///
/// Its state starts as `Default` and is rebuilt by applying its stored
/// events in order. Its methods [`record`](Self::record) events, which
/// applies each at once (the state is current within a command) and keeps
/// it for the commit, which appends it to the stream at the version the
/// aggregate was loaded at.
///
/// ```
/// use arch_events::event_store::{Apply, EventSourced, EventTypes};
/// use arch_events::{Aggregate, Event, EventRecorder};
///
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
/// #[event(name = "account.opened", serde)]
/// struct Opened { owner: String }
///
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
/// #[event(name = "account.deposited", serde)]
/// struct Deposited { amount: u64 }
///
/// #[derive(Debug, Default)]
/// struct Account { owner: String, balance: u64, events: EventRecorder }
///
/// impl Account {
///     fn deposit(&mut self, amount: u64) {
///         self.record(Deposited { amount });
///     }
/// }
///
/// impl EventSourced for Account {
///     const KIND: &'static str = "account";
///     fn event_types(types: EventTypes<Self>) -> EventTypes<Self> {
///         types.event::<Opened>().event::<Deposited>()
///     }
/// }
/// impl Apply<Opened> for Account {
///     fn apply(&mut self, event: &Opened) { self.owner = event.owner.clone(); }
/// }
/// impl Apply<Deposited> for Account {
///     fn apply(&mut self, event: &Deposited) { self.balance += event.amount; }
/// }
/// impl Aggregate for Account {
///     fn events(&mut self) -> &mut EventRecorder { &mut self.events }
/// }
///
/// let mut account = Account::default();
/// account.deposit(5);
/// account.deposit(7);
/// assert_eq!(account.balance, 12, "applied as recorded");
/// assert_eq!(Aggregate::events(&mut account).len(), 2, "and kept for the commit");
/// ```
pub trait EventSourced: Aggregate + Default + Send + 'static {
    /// The aggregate's kind: the first part of its streams' ids. Keep it
    /// stable: stored streams are found by it.
    const KIND: &'static str;

    /// Every event type its stream can hold, each with its [`Apply`].
    fn event_types(types: EventTypes<Self>) -> EventTypes<Self>;

    /// Applies `event` to the state and keeps it for the commit.
    fn record<E: Event>(&mut self, event: E)
    where
        Self: Apply<E>,
    {
        self.apply(&event);
        self.events().record(event);
    }
}

type ApplyFn<A> = fn(&mut A, &RecordedEvent) -> Result<(), EventStoreError>;

/// The event types of an aggregate's stream, each with the step that
/// applies it: built by [`EventSourced::event_types`].
pub struct EventTypes<A> {
    by_name: HashMap<&'static str, ApplyFn<A>>,
    /// Events released with the others and never stored.
    released: Vec<&'static str>,
}

impl<A> fmt::Debug for EventTypes<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.by_name.keys().collect();
        names.sort();
        f.debug_struct("EventTypes")
            .field("events", &names)
            .field("released", &self.released)
            .finish()
    }
}

impl<A: EventSourced> EventTypes<A> {
    fn new() -> Self {
        EventTypes {
            by_name: HashMap::new(),
            released: Vec::new(),
        }
    }

    /// The aggregate's event types, as its [`EventSourced::event_types`] lists
    /// them.
    pub fn of() -> Self {
        A::event_types(EventTypes::new())
    }

    /// Lists `E`: the stream can hold it, and loading applies it.
    pub fn event<E>(mut self) -> Self
    where
        E: Event + serde::de::DeserializeOwned,
        A: Apply<E>,
    {
        fn apply<A: Apply<E>, E: Event + serde::de::DeserializeOwned>(
            state: &mut A,
            recorded: &RecordedEvent,
        ) -> Result<(), EventStoreError> {
            let event: E = recorded.decode()?;
            state.apply(&event);
            Ok(())
        }
        // Two types under one name never get this far: the bus refuses to
        // build with them.
        self.by_name.insert(E::name(), apply::<A, E>);
        self
    }

    /// Lists `E` as released only: the aggregate records it (with
    /// `Aggregate::events(self).record(..)`: it changes no state, so it has
    /// no [`Apply`]) and the commit hands it to the bus with the others,
    /// but it is never stored in the stream. For what a decision says and
    /// nothing needs to replay (an attempt refused, a notice to send): a
    /// refused request then grows no stream, and conflicts with no writer.
    pub fn released<E: Event>(mut self) -> Self {
        self.released.push(E::name());
        self
    }

    /// Whether the stream can hold events named `name`.
    pub fn lists(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Whether events named `name` are released only, never stored.
    pub fn releases_only(&self, name: &str) -> bool {
        self.released.contains(&name)
    }

    /// Applies a stored event to `state`: [`EventStoreError::Decode`] when
    /// its type is not listed or its JSON does not fit.
    pub fn apply(&self, state: &mut A, recorded: &RecordedEvent) -> Result<(), EventStoreError> {
        match self.by_name.get(recorded.name.as_str()) {
            Some(apply) => apply(state, recorded),
            None => Err(recorded.decode_error(format!(
                "`{}` does not list it in its `EventSourced::event_types`",
                type_name::<A>()
            ))),
        }
    }
}

/// An event-sourced aggregate as loaded from its stream: its state, and the
/// version the commit expects the stream to still be at. Derefs to the
/// state.
///
/// ```
/// # use arch_events::event_store::{Apply, EventSourced, EventTypes};
/// # use arch_events::{Aggregate, Event, EventRecorder};
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
/// # #[event(name = "counter.bumped", serde)]
/// # struct Bumped;
/// # #[derive(Debug, Default)]
/// # struct Counter { count: u32, events: EventRecorder }
/// # impl EventSourced for Counter {
/// #     const KIND: &'static str = "counter";
/// #     fn event_types(types: EventTypes<Self>) -> EventTypes<Self> { types.event::<Bumped>() }
/// # }
/// # impl Apply<Bumped> for Counter { fn apply(&mut self, _: &Bumped) { self.count += 1; } }
/// # impl Aggregate for Counter { fn events(&mut self) -> &mut EventRecorder { &mut self.events } }
/// use arch_events::event_store::{ExpectedVersion, Loaded, EventStore};
/// use arch_events::testing::InMemoryEventStore;
/// use arch_events::MessageContext;
///
/// # futures::executor::block_on(async {
/// let store = InMemoryEventStore::new();
/// let flow = MessageContext::root();
///
/// let mut counter = Loaded::<Counter>::new("c1");
/// counter.record(Bumped);
/// counter.save(&store, &flow).await?;
/// // Where its event stands in the global order (to wait for a projection).
/// assert_eq!(counter.position(), Some(store.head().await?));
///
/// let mut counter = Loaded::<Counter>::load(&store, "c1").await?;
/// assert_eq!((counter.count, counter.version()), (1, 1));
/// counter.record(Bumped);
///
/// // Another writer appends first: this commit conflicts.
/// let mut other = Loaded::<Counter>::load(&store, "c1").await?;
/// other.record(Bumped);
/// other.save(&store, &flow).await?;
/// assert!(counter.save(&store, &flow).await.unwrap_err().is_conflict());
/// assert_eq!(Loaded::<Counter>::load(&store, "c1").await?.count, 2);
/// # Ok::<(), arch_events::event_store::EventStoreError>(())
/// # }).unwrap();
/// ```
pub struct Loaded<A> {
    stream: StreamId,
    version: u64,
    /// The version the state was loaded at (from the events or a
    /// snapshot): a snapshot is due when a commit crosses a multiple of the
    /// policy since.
    loaded_at: u64,
    /// Where the last save put the stream's last event.
    saved_at: Option<Position>,
    state: A,
}

impl<A: fmt::Debug> fmt::Debug for Loaded<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("stream", &self.stream)
            .field("version", &self.version)
            .field("loaded_at", &self.loaded_at)
            .field("state", &self.state)
            .finish()
    }
}

/// Events read per round trip while rebuilding.
const PAGE: usize = 1000;

impl<A: EventSourced> Loaded<A> {
    /// A new aggregate, whose stream must not exist yet: its first commit
    /// fails with a conflict if it does.
    pub fn new(id: impl Into<String>) -> Self {
        Loaded {
            stream: StreamId::new(A::KIND, id),
            version: 0,
            loaded_at: 0,
            saved_at: None,
            state: A::default(),
        }
    }

    /// The aggregate `id`, rebuilt from its stream: the default state, and
    /// version 0, when the stream has no event.
    pub async fn load(
        store: &(impl EventStore + ?Sized),
        id: impl Into<String>,
    ) -> Result<Self, EventStoreError> {
        Loaded::<A>::new(id).replay(store).await
    }

    /// Applies the stream's events after the current version.
    async fn replay(mut self, store: &(impl EventStore + ?Sized)) -> Result<Self, EventStoreError> {
        let loaded = &mut self;
        let types = EventTypes::<A>::of();
        loop {
            let page = store
                .read_stream(&loaded.stream, loaded.version + 1, PAGE)
                .await?;
            let full = page.len() == PAGE;
            for recorded in &page {
                loaded.apply(&types, recorded)?;
            }
            if !full {
                loaded.loaded_at = loaded.version;
                return Ok(self);
            }
        }
    }

    /// Applies the stream's next event (the stream's events must come in
    /// version order, from the one after [`version`](Self::version)).
    pub fn apply(
        &mut self,
        types: &EventTypes<A>,
        recorded: &RecordedEvent,
    ) -> Result<(), EventStoreError> {
        if recorded.stream != self.stream || recorded.version != self.version + 1 {
            return Err(recorded.decode_error(format!(
                "expected version {} of stream {}",
                self.version + 1,
                self.stream
            )));
        }
        types.apply(&mut self.state, recorded)?;
        self.version = recorded.version;
        Ok(())
    }

    /// The stream.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// The stream's version this state stands at (0 for a new aggregate).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The global position of the last event the last save appended
    /// (`None` before one): wait for a projection to reach it
    /// (`SqlEventStore::wait_for`) to read your own write.
    pub fn position(&self) -> Option<Position> {
        self.saved_at
    }

    /// The state.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The version the commit expects the stream at.
    pub fn expected(&self) -> ExpectedVersion {
        match self.version {
            0 => ExpectedVersion::NoStream,
            version => ExpectedVersion::Exact(version),
        }
    }

    /// The events recorded since the load, as the store writes them (with
    /// ids caused by `cause`; those released only are not among them), and
    /// as the bus releases them after the commit; the aggregate keeps them
    /// until [`saved`](Self::saved) or [`unstored`](Self::unstored).
    /// [`EventStoreError::Unlisted`] when one of them is not in the
    /// aggregate's [`EventSourced::event_types`]: it could be written but never
    /// read back.
    pub fn changes(&mut self, cause: &MessageContext) -> Result<Vec<NewEvent>, EventStoreError> {
        let types = EventTypes::<A>::of();
        let recorded = Aggregate::events(&mut self.state).as_mut_slice();
        encode_listed::<A>(&types, recorded, cause)
    }

    /// Whether a snapshot is due: the stream crossed a multiple of
    /// [`Snapshotted::SNAPSHOT_EVERY`] since this state was loaded.
    pub fn snapshot_due(&self) -> bool
    where
        A: Snapshotted,
    {
        let every = A::SNAPSHOT_EVERY.max(1);
        self.version / every > self.loaded_at / every
    }

    /// Saves the state as the stream's snapshot if one is due
    /// ([`snapshot_due`](Self::snapshot_due)), after the commit. `true`
    /// when it saved one; `false`, and nothing saved, when the stream's
    /// event at this version is not the one this state's last save
    /// appended (its commit failed, or was never made): such a snapshot
    /// would describe a state the stream never had.
    pub async fn save_snapshot_if_due(
        &mut self,
        snapshots: &(impl EventStore + ?Sized),
    ) -> Result<bool, EventStoreError>
    where
        A: Snapshotted,
    {
        if !self.snapshot_due() {
            return Ok(false);
        }
        let stored = snapshots.read_stream(&self.stream, self.version, 1).await?;
        let committed = stored.first().map(|event| event.position);
        if self.saved_at.is_none() || committed != self.saved_at {
            tracing::warn!(
                stream = %self.stream,
                version = self.version,
                "arch-events: no snapshot of a state whose last save did not commit"
            );
            return Ok(false);
        }
        let Some(snapshot) = self.snapshot_if_due()? else {
            return Ok(false);
        };
        snapshots.save_snapshot(&self.stream, &snapshot).await?;
        Ok(true)
    }

    /// The state as the stream's snapshot, when one is due
    /// ([`snapshot_due`](Self::snapshot_due)), for a store that saves it in
    /// the transaction of the save it follows (`SqlEventStore::save_snapshot_in`,
    /// after `save_in`): then it is stored with those events, or not at all.
    /// The next one is due [`Snapshotted::SNAPSHOT_EVERY`] events later.
    pub fn snapshot_if_due(&mut self) -> Result<Option<StoredSnapshot>, EventStoreError>
    where
        A: Snapshotted,
    {
        if !self.snapshot_due() {
            return Ok(None);
        }
        let state =
            serde_json::to_string(&self.state).map_err(|error| EventStoreError::Encode {
                event: type_name::<A>(),
                source: error.into(),
            })?;
        self.loaded_at = self.version;
        Ok(Some(StoredSnapshot {
            version: self.version,
            state_version: A::STATE_VERSION,
            state,
        }))
    }

    /// The aggregate `id`, from its latest snapshot and the events after
    /// it; from the events alone when it has no snapshot, or one of another
    /// [`Snapshotted::STATE_VERSION`], or one that no longer reads (logged).
    pub async fn load_snapshotted(
        store: &(impl EventStore + ?Sized),
        id: impl Into<String>,
    ) -> Result<Self, EventStoreError>
    where
        A: Snapshotted,
    {
        let mut loaded = Loaded::<A>::new(id);
        let Some(snapshot) = store.load_snapshot(&loaded.stream).await? else {
            return loaded.replay(store).await;
        };
        if snapshot.state_version != A::STATE_VERSION {
            tracing::debug!(
                stream = %loaded.stream,
                stored = snapshot.state_version,
                code = A::STATE_VERSION,
                "arch-events: a snapshot of another state version is ignored"
            );
            return loaded.replay(store).await;
        }
        let state = match serde_json::from_str::<A>(&snapshot.state) {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(
                    stream = %loaded.stream,
                    version = snapshot.version,
                    %error,
                    "arch-events: a snapshot does not read; the state is rebuilt from the events"
                );
                return loaded.replay(store).await;
            }
        };
        // Read from the snapshot's own version: that event must be there (a
        // snapshot taken after a commit that failed is ahead of its stream),
        // and the ones after it are the rest of the state.
        let page = store
            .read_stream(&loaded.stream, snapshot.version, PAGE)
            .await?;
        match page.first() {
            Some(taken_at) if snapshot.version > 0 && taken_at.version == snapshot.version => {}
            _ => {
                tracing::warn!(
                    stream = %loaded.stream,
                    snapshot = snapshot.version,
                    "arch-events: a snapshot ahead of its stream (taken after a commit that failed) is ignored"
                );
                return loaded.replay(store).await;
            }
        }
        loaded.state = state;
        loaded.version = snapshot.version;
        let types = EventTypes::<A>::of();
        for recorded in &page[1..] {
            loaded.apply(&types, recorded)?;
        }
        if page.len() == PAGE {
            return loaded.replay(store).await;
        }
        loaded.loaded_at = loaded.version;
        Ok(loaded)
    }

    /// The recorded events, handed over for the bus to release, when
    /// [`changes`](Self::changes) has none to store (they are all released
    /// only: see [`EventTypes::released`]); the version is unchanged.
    pub fn unstored(&mut self) -> Vec<PendingEvent> {
        Aggregate::events(&mut self.state).take()
    }

    /// After the commit: the stream is at `appended.to_version` now, and
    /// the recorded events are handed back for the bus to release.
    pub fn saved(&mut self, appended: &Appended) -> Vec<PendingEvent> {
        self.version = appended.to_version;
        self.saved_at = Some(appended.position);
        Aggregate::events(&mut self.state).take()
    }

    /// Appends what was recorded since the load to `store` (one append,
    /// expecting the loaded version) and returns the events for the bus to
    /// release. For a store of its own transaction; a unit of work on a SQL
    /// store appends in its transaction instead
    /// ([`changes`](Self::changes), then [`saved`](Self::saved)).
    pub async fn save(
        &mut self,
        store: &(impl EventStore + ?Sized),
        cause: &MessageContext,
    ) -> Result<Vec<PendingEvent>, EventStoreError> {
        let events = self.changes(cause)?;
        if events.is_empty() {
            return Ok(self.unstored());
        }
        let appended = store.append(&self.stream, self.expected(), &events).await?;
        Ok(self.saved(&appended))
    }
}

fn encode_listed<A: EventSourced>(
    types: &EventTypes<A>,
    pending: &mut [PendingEvent],
    cause: &MessageContext,
) -> Result<Vec<NewEvent>, EventStoreError> {
    pending
        .iter_mut()
        .filter(|event| !types.releases_only(event.name()))
        .map(|event| {
            if !types.lists(event.name()) {
                return Err(EventStoreError::Unlisted {
                    aggregate: type_name::<A>(),
                    event: event.name(),
                    event_path: event.meta().rust_path(),
                });
            }
            NewEvent::encode(event, cause)
        })
        .collect()
}

impl<A> Deref for Loaded<A> {
    type Target = A;
    fn deref(&self) -> &A {
        &self.state
    }
}

impl<A> DerefMut for Loaded<A> {
    fn deref_mut(&mut self) -> &mut A {
        &mut self.state
    }
}
