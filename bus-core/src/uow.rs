//! The unit of work: the transaction boundary that releases events on commit.

/// A transaction boundary around the aggregates one handler call touches.
///
/// The contract, which is what keeps "events go out only after the transaction
/// that raised them committed" true:
/// - the unit of work remembers every [`Aggregate`](crate::Aggregate) it loaded
///   or added;
/// - [`commit`](Self::commit) makes the changes durable, and only once that
///   succeeded hands each seen aggregate's recorded events to the
///   [`EventReleaser`](crate::EventReleaser) it got from its
///   [`Scope`](crate::Scope);
/// - a unit of work dropped without commit, or whose commit failed, releases
///   nothing, and the bus drops whatever a failed handler released anyway;
/// - dropped without commit or rollback while it still holds changes, it
///   says so from its `Drop`, with
///   [`EventReleaser::dropped_uncommitted`](crate::EventReleaser::dropped_uncommitted):
///   a handler that then returns `Ok` told its caller of a success that
///   was never stored, and the bus warns (a test's recorder fails);
/// - a query's call takes no event
///   ([`EventReleaser::accepts_events`](crate::EventReleaser::accepts_events)
///   is `false`): a unit of work that writes its events in its commit's
///   transaction checks it first, and fails the commit instead.
///
/// Register it as a scoped dependency so every handler call gets a fresh one,
/// and take it as `Scoped<YourUnitOfWork>`, or as `Scoped<dyn YourTrait>` so
/// tests can substitute a fake: the trait is object-safe (its methods are
/// declared with [`async_trait`](crate::async_trait), re-exported here, which
/// implementations use too).
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
/// use arch_events::{Aggregate, EventRecorder, EventReleaser, Event, UnitOfWork};
///
/// #[derive(Debug, Clone, Event)]
/// struct Opened { id: u32 }
///
/// #[derive(Debug, Clone, Default)]
/// struct Account { id: u32, events: EventRecorder }
/// impl Aggregate for Account {
///     fn events(&mut self) -> &mut EventRecorder { &mut self.events }
/// }
///
/// /// Stores accounts in memory; a real one would hold a transaction.
/// struct InMemoryUow {
///     store: Arc<Mutex<HashMap<u32, Account>>>,
///     seen: Vec<Account>,
///     releaser: EventReleaser,
/// }
///
/// #[arch_events::async_trait]
/// impl UnitOfWork for InMemoryUow {
///     type Error = std::convert::Infallible;
///     async fn commit(&mut self) -> Result<(), Self::Error> {
///         let mut store = self.store.lock().unwrap();
///         for mut account in self.seen.drain(..) {
///             let events = account.events.take();
///             store.insert(account.id, account);
///             self.releaser.release_all(events); // only after the write
///         }
///         Ok(())
///     }
///     async fn rollback(&mut self) -> Result<(), Self::Error> {
///         self.seen.clear();
///         Ok(())
///     }
/// }
///
/// /// Commit and rollback empty `seen`: what is left was never stored.
/// impl Drop for InMemoryUow {
///     fn drop(&mut self) {
///         let events = self.seen.iter_mut().map(|a| a.events.len()).sum();
///         self.releaser.dropped_uncommitted(self.seen.len(), events);
///     }
/// }
///
/// let releaser = EventReleaser::new();
/// let mut uow = InMemoryUow { store: Default::default(), seen: vec![], releaser: releaser.clone() };
/// let mut account = Account { id: 7, ..Default::default() };
/// account.events.record(Opened { id: 7 });
/// uow.seen.push(account);
/// assert!(releaser.drain().is_empty());           // nothing before commit
/// futures::executor::block_on(uow.commit()).unwrap();
/// assert_eq!(releaser.drain().len(), 1);          // released on commit
/// ```
#[async_trait::async_trait]
pub trait UnitOfWork: Send {
    /// Why a commit or rollback failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Makes the changes durable, then releases the seen aggregates' events.
    async fn commit(&mut self) -> Result<(), Self::Error>;

    /// Discards the changes; releases nothing.
    async fn rollback(&mut self) -> Result<(), Self::Error>;
}
