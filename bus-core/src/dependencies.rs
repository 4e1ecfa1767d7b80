//! The dependency container that bootstrap fills and the bus build reads.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::inject::{DependencyKey, Lifetime, Resolved, Scope, ScopedFactory};

struct Entry {
    type_name: &'static str,
    value: Arc<dyn Any + Send + Sync>,
}

/// Everything handlers may ask for, keyed by type.
///
/// Registering a type twice replaces the first registration, which is how a
/// test swaps a fake in: build the real set, then override one entry.
///
/// ```
/// use std::sync::Arc;
/// use bus_core::{Dependencies, EventReleaser};
///
/// trait Notifications: Send + Sync { fn send(&self, to: &str, text: &str); }
/// struct Log;
/// impl Notifications for Log { fn send(&self, to: &str, text: &str) { println!("{to}: {text}") } }
///
/// struct UnitOfWork { releaser: EventReleaser }
///
/// let deps = Dependencies::new()
///     .shared(String::from("config value"))                    // `&String`, `Arc<String>`
///     .shared_arc::<dyn Notifications>(Arc::new(Log))          // `&dyn Notifications`
///     .scoped(|scope| UnitOfWork { releaser: scope.releaser() }); // `Scoped<UnitOfWork>`
/// assert_eq!(deps.len(), 3);
/// ```
#[derive(Default)]
pub struct Dependencies {
    shared: HashMap<TypeId, Entry>,
    scoped: HashMap<TypeId, Entry>,
}

impl Dependencies {
    /// An empty container.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers one instance for the whole app, injected as `&T` or `Arc<T>`.
    pub fn shared<T: Send + Sync + 'static>(self, value: T) -> Self {
        self.shared_arc(Arc::new(value))
    }

    /// Registers an already shared instance; `T` may be a trait object, so
    /// handlers can take `&dyn Trait` and tests can pass a fake.
    pub fn shared_arc<T: ?Sized + Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.shared.insert(
            TypeId::of::<T>(),
            Entry {
                type_name: std::any::type_name::<T>(),
                value: Arc::new(value),
            },
        );
        self
    }

    /// Registers a factory called once per handler call that takes
    /// `Scoped<T>`; the [`Scope`] gives it the call's event releaser.
    pub fn scoped<T, F>(self, factory: F) -> Self
    where
        T: Send + 'static,
        F: Fn(&mut Scope) -> T + Send + Sync + 'static,
    {
        self.scoped_boxed::<T, _>(move |scope| Box::new(factory(scope)))
    }

    /// Like [`scoped`](Self::scoped) for a type that may be a trait object:
    /// handlers take `Scoped<dyn UnitOfWork>` and the factory boxes a real or
    /// a fake one.
    pub fn scoped_boxed<T, F>(mut self, factory: F) -> Self
    where
        T: ?Sized + Send + 'static,
        F: Fn(&mut Scope) -> Box<T> + Send + Sync + 'static,
    {
        let factory: ScopedFactory<T> = Box::new(factory);
        self.scoped.insert(
            TypeId::of::<T>(),
            Entry {
                type_name: std::any::type_name::<T>(),
                value: Arc::new(factory),
            },
        );
        self
    }

    /// How many registrations the container holds.
    pub fn len(&self) -> usize {
        self.shared.len() + self.scoped.len()
    }

    /// Whether the container is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Finds what a handler parameter needs; `Err` carries a hint when the
    /// type is registered with the other lifetime.
    pub(crate) fn resolve(&self, key: &DependencyKey) -> Result<Resolved, Option<Lifetime>> {
        let (own, other, other_lifetime) = match key.lifetime() {
            Lifetime::Bus => return Ok(Resolved::Bus),
            Lifetime::Shared => (&self.shared, &self.scoped, Lifetime::Scoped),
            Lifetime::Scoped => (&self.scoped, &self.shared, Lifetime::Shared),
        };
        match own.get(&key.type_id()) {
            Some(entry) => Ok(match key.lifetime() {
                Lifetime::Scoped => Resolved::Scoped(entry.value.clone()),
                _ => Resolved::Shared(entry.value.clone()),
            }),
            None => Err(other.contains_key(&key.type_id()).then_some(other_lifetime)),
        }
    }
}

impl fmt::Debug for Dependencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shared: Vec<_> = self.shared.values().map(|e| e.type_name).collect();
        let mut scoped: Vec<_> = self.scoped.values().map(|e| e.type_name).collect();
        shared.sort_unstable();
        scoped.sort_unstable();
        f.debug_struct("Dependencies")
            .field("shared", &shared)
            .field("scoped", &scoped)
            .finish()
    }
}
