//! A generic in-memory repository and fake unit of work, with the real
//! contract: optimistic concurrency checked at commit, and the seen
//! aggregates' events released only after it.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::events::{Aggregate, EventReleaser};
use crate::uow::UnitOfWork;

/// An aggregate the in-memory store can keep: it says its key and its
/// version (which its methods bump on every change).
pub trait Entity: Aggregate + Clone + Send + Sync + 'static {
    /// What identifies it (a sku, an account number).
    type Key: Clone + Eq + Hash + Debug + Send + Sync + 'static;

    /// Its key.
    fn key(&self) -> Self::Key;

    /// Its version: a commit succeeds only when the stored version is still
    /// the one this unit of work loaded.
    fn version(&self) -> u64;
}

/// The aggregates of one test, shared by every unit of work made over it.
#[derive(Debug)]
pub struct InMemoryStore<A: Entity> {
    items: Mutex<HashMap<A::Key, A>>,
    commits: AtomicUsize,
}

impl<A: Entity> Default for InMemoryStore<A> {
    fn default() -> Self {
        InMemoryStore {
            items: Mutex::new(HashMap::new()),
            commits: AtomicUsize::new(0),
        }
    }
}

impl<A: Entity> InMemoryStore<A> {
    fn items(&self) -> MutexGuard<'_, HashMap<A::Key, A>> {
        // Every change is one insert: a poisoned lock's data is whole.
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the stored aggregate.
    pub fn get(&self, key: &A::Key) -> Option<A> {
        self.items().get(key).cloned()
    }

    /// A copy of the first stored aggregate that `matches`.
    pub fn find(&self, matches: impl Fn(&A) -> bool) -> Option<A> {
        self.items().values().find(|item| matches(item)).cloned()
    }

    /// Stores an aggregate as it is (test set-up); its events are dropped.
    pub fn insert(&self, mut aggregate: A) {
        drop(aggregate.events().take());
        self.items().insert(aggregate.key(), aggregate);
    }

    /// How many aggregates are stored.
    pub fn len(&self) -> usize {
        self.items().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many units of work committed.
    pub fn commits(&self) -> usize {
        self.commits.load(Ordering::SeqCst)
    }
}

/// An aggregate a unit of work loaded or added.
struct Seen<A> {
    aggregate: A,
    /// Its version when loaded; `None` when added.
    loaded: Option<u64>,
}

/// The repository of one [`FakeUnitOfWork`]: it hands out copies of the
/// stored aggregates and remembers them for the commit.
pub struct InMemoryRepository<A: Entity> {
    store: Arc<InMemoryStore<A>>,
    seen: Vec<Seen<A>>,
}

impl<A: Entity> InMemoryRepository<A> {
    /// A repository over `store`.
    pub fn new(store: Arc<InMemoryStore<A>>) -> Self {
        InMemoryRepository {
            store,
            seen: Vec::new(),
        }
    }

    /// The aggregate with this key, loaded once per unit of work.
    pub fn get(&mut self, key: &A::Key) -> Option<&mut A> {
        if let Some(index) = self.seen.iter().position(|s| s.aggregate.key() == *key) {
            return self.seen.get_mut(index).map(|s| &mut s.aggregate);
        }
        let aggregate = self.store.get(key)?;
        Some(self.track(aggregate))
    }

    /// Remembers a loaded aggregate for the commit.
    fn track(&mut self, aggregate: A) -> &mut A {
        let loaded = Some(aggregate.version());
        let index = self.seen.len();
        self.seen.push(Seen { aggregate, loaded });
        &mut self.seen[index].aggregate
    }

    /// The first aggregate that `matches`: among those already loaded, else
    /// in the store.
    pub fn find(&mut self, matches: impl Fn(&A) -> bool) -> Option<&mut A> {
        if let Some(index) = self.seen.iter().position(|s| matches(&s.aggregate)) {
            return self.seen.get_mut(index).map(|s| &mut s.aggregate);
        }
        let aggregate = self.store.find(&matches)?;
        Some(self.track(aggregate))
    }

    /// Adds a new aggregate, stored at commit.
    pub fn add(&mut self, aggregate: A) -> &mut A {
        let index = self.seen.len();
        self.seen.push(Seen {
            aggregate,
            loaded: None,
        });
        &mut self.seen[index].aggregate
    }

    /// The aggregates loaded or added so far.
    pub fn seen(&self) -> impl Iterator<Item = &A> {
        self.seen.iter().map(|s| &s.aggregate)
    }
}

/// Another unit of work changed an aggregate first: nothing was stored,
/// nothing released.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("aggregate {key:?} was changed by someone else first")]
pub struct Conflict<K: Debug> {
    /// The aggregate's key.
    pub key: K,
}

/// A unit of work over an [`InMemoryStore`]: a fake with the real contract.
///
/// ```
/// use std::sync::Arc;
/// use arch_events::testing::{Entity, FakeUnitOfWork, InMemoryStore};
/// use futures::executor::block_on;
/// use arch_events::{Aggregate, Event, EventRecorder, EventReleaser, UnitOfWork};
///
/// #[derive(Debug, Clone, Event)]
/// struct Renamed;
///
/// #[derive(Clone, Default)]
/// struct Shelf { id: u32, name: String, version: u64, events: EventRecorder }
///
/// impl Aggregate for Shelf {
///     fn events(&mut self) -> &mut EventRecorder { &mut self.events }
/// }
/// impl Entity for Shelf {
///     type Key = u32;
///     fn key(&self) -> u32 { self.id }
///     fn version(&self) -> u64 { self.version }
/// }
///
/// let store = Arc::new(InMemoryStore::default());
/// store.insert(Shelf { id: 1, ..Default::default() });
/// let releaser = EventReleaser::new();
///
/// let mut first = FakeUnitOfWork::new(store.clone(), releaser.clone());
/// let mut second = FakeUnitOfWork::new(store.clone(), EventReleaser::new());
/// for uow in [&mut first, &mut second] {
///     let shelf = uow.repository().get(&1).unwrap();
///     shelf.name = "new".into();
///     shelf.version += 1;
///     shelf.events.record(Renamed);
/// }
/// assert!(block_on(first.commit()).is_ok());
/// assert!(block_on(second.commit()).is_err()); // it loaded version 0, now 1
/// assert_eq!(store.commits(), 1);
/// ```
pub struct FakeUnitOfWork<A: Entity> {
    repository: InMemoryRepository<A>,
    releaser: EventReleaser,
}

impl<A: Entity> FakeUnitOfWork<A> {
    /// A unit of work over `store` that releases into `releaser` (in a
    /// scoped factory: `scope.releaser()`).
    pub fn new(store: Arc<InMemoryStore<A>>, releaser: EventReleaser) -> Self {
        FakeUnitOfWork {
            repository: InMemoryRepository::new(store),
            releaser,
        }
    }

    /// Its repository.
    pub fn repository(&mut self) -> &mut InMemoryRepository<A> {
        &mut self.repository
    }
}

#[crate::async_trait]
impl<A: Entity> UnitOfWork for FakeUnitOfWork<A> {
    type Error = Conflict<A::Key>;

    async fn commit(&mut self) -> Result<(), Conflict<A::Key>> {
        let store = self.repository.store.clone();
        let mut items = store.items();
        for seen in &self.repository.seen {
            let key = seen.aggregate.key();
            if items.get(&key).map(Entity::version) != seen.loaded {
                return Err(Conflict { key });
            }
        }
        // A query's call takes no event (see `EventReleaser::accepts_events`):
        // like a store that writes its events in the commit, write nothing,
        // and hand the events over to be refused (the query fails).
        if !self.releaser.accepts_events()
            && self
                .repository
                .seen
                .iter_mut()
                .any(|s| !s.aggregate.events().is_empty())
        {
            drop(items);
            let events: Vec<_> = self
                .repository
                .seen
                .drain(..)
                .flat_map(|mut seen| seen.aggregate.events().take())
                .collect();
            self.releaser.release_all(events);
            return Ok(());
        }
        let mut events = Vec::new();
        for seen in &mut self.repository.seen {
            events.extend(seen.aggregate.events().take());
            seen.loaded = Some(seen.aggregate.version());
            items.insert(seen.aggregate.key(), seen.aggregate.clone());
        }
        drop(items);
        store.commits.fetch_add(1, Ordering::SeqCst);
        self.releaser.release_all(events);
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), Conflict<A::Key>> {
        self.repository.seen.clear();
        Ok(())
    }
}

/// Says what it drops uncommitted (see
/// [`EventReleaser::dropped_uncommitted`]): an aggregate added, or changed
/// since it was loaded, or holding recorded events. After a commit or a
/// rollback it holds nothing of the kind.
impl<A: Entity> Drop for FakeUnitOfWork<A> {
    fn drop(&mut self) {
        let mut changed = 0;
        let mut events = 0;
        for seen in &mut self.repository.seen {
            if seen.loaded != Some(seen.aggregate.version()) {
                changed += 1;
            }
            events += seen.aggregate.events().len();
        }
        self.releaser.dropped_uncommitted(changed, events);
    }
}
