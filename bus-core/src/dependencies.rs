//! The dependency container that bootstrap fills and the bus build reads.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::inject::{DependencyKey, Lifetime, Resolved, Scope, ScopedFactory};
use crate::message::Location;

struct Entry {
    type_name: &'static str,
    value: Arc<dyn Any + Send + Sync>,
    /// Where it was registered.
    at: Location,
}

/// A type registered twice with one lifetime, without `replace_*`: the bus
/// refuses to build (which one should win?).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Duplicate {
    type_id: TypeId,
    pub(crate) type_name: &'static str,
    pub(crate) lifetime: Lifetime,
    /// Every place it was registered, in order.
    pub(crate) at: Vec<Location>,
}

/// What the container holds under a type near one a handler asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Registered {
    pub(crate) type_name: &'static str,
    pub(crate) lifetime: Lifetime,
}

/// Everything handlers may ask for, keyed by type.
///
/// Each type is registered once per lifetime: registering it again is a
/// build problem that names both places (which one should win?). A test
/// that builds the real set and swaps a fake in says so with `replace_*`:
///
/// ```
/// use std::sync::Arc;
/// use bus_core::Dependencies;
///
/// trait Mailer: Send + Sync { fn send(&self, to: &str); }
/// struct Smtp;
/// impl Mailer for Smtp { fn send(&self, _: &str) {} }
/// struct FakeMailer;
/// impl Mailer for FakeMailer { fn send(&self, _: &str) {} }
///
/// fn production() -> Dependencies {
///     Dependencies::new().shared_arc::<dyn Mailer>(Arc::new(Smtp))
/// }
///
/// let for_tests = production().replace_shared_arc::<dyn Mailer>(Arc::new(FakeMailer));
/// assert_eq!(for_tests.len(), 1);
/// ```
///
/// Where each registration is made is kept (`#[track_caller]`), for the
/// build's messages.
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
    /// Types registered twice (without `replace_*`), for the build.
    duplicates: Vec<Duplicate>,
}

/// How a registration treats one already there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A second registration is a build problem.
    Add,
    /// It replaces the first, on purpose.
    Replace,
}

impl Dependencies {
    /// An empty container.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers one instance for the whole app, injected as `&T` or `Arc<T>`.
    ///
    /// `value` is wrapped in an `Arc`: to register a value you hold in an
    /// `Arc` already, or a trait object, use [`shared_arc`](Self::shared_arc).
    #[track_caller]
    pub fn shared<T: Send + Sync + 'static>(self, value: T) -> Self {
        self.insert_shared(Arc::new(value), Mode::Add)
    }

    /// Registers an already shared instance; `T` may be a trait object, so
    /// handlers can take `&dyn Trait` and tests can pass a fake:
    /// `shared_arc::<dyn Mailer>(Arc::new(Smtp))`.
    #[track_caller]
    pub fn shared_arc<T: ?Sized + Send + Sync + 'static>(self, value: Arc<T>) -> Self {
        self.insert_shared(value, Mode::Add)
    }

    /// Registers a factory called once per handler call that takes
    /// `Scoped<T>`; the [`Scope`] gives it the call's event releaser.
    #[track_caller]
    pub fn scoped<T, F>(self, factory: F) -> Self
    where
        T: Send + 'static,
        F: Fn(&mut Scope) -> T + Send + Sync + 'static,
    {
        self.insert_scoped::<T>(Box::new(move |scope| Box::new(factory(scope))), Mode::Add)
    }

    /// Like [`scoped`](Self::scoped) for a type that may be a trait object:
    /// handlers take `Scoped<dyn UnitOfWork>` and the factory boxes a real or
    /// a fake one: `scoped_boxed::<dyn UnitOfWork, _>(|scope| Box::new(...))`.
    #[track_caller]
    pub fn scoped_boxed<T, F>(self, factory: F) -> Self
    where
        T: ?Sized + Send + 'static,
        F: Fn(&mut Scope) -> Box<T> + Send + Sync + 'static,
    {
        self.insert_scoped::<T>(Box::new(factory), Mode::Add)
    }

    /// [`shared`](Self::shared), replacing what is registered for `T` (a
    /// test's fake in place of the real adapter); registers it if nothing
    /// is.
    #[track_caller]
    pub fn replace_shared<T: Send + Sync + 'static>(self, value: T) -> Self {
        self.insert_shared(Arc::new(value), Mode::Replace)
    }

    /// [`shared_arc`](Self::shared_arc), replacing what is registered for
    /// `T`; registers it if nothing is.
    #[track_caller]
    pub fn replace_shared_arc<T: ?Sized + Send + Sync + 'static>(self, value: Arc<T>) -> Self {
        self.insert_shared(value, Mode::Replace)
    }

    /// [`scoped`](Self::scoped), replacing what is registered for `T`;
    /// registers it if nothing is.
    #[track_caller]
    pub fn replace_scoped<T, F>(self, factory: F) -> Self
    where
        T: Send + 'static,
        F: Fn(&mut Scope) -> T + Send + Sync + 'static,
    {
        self.insert_scoped::<T>(
            Box::new(move |scope| Box::new(factory(scope))),
            Mode::Replace,
        )
    }

    /// [`scoped_boxed`](Self::scoped_boxed), replacing what is registered
    /// for `T`; registers it if nothing is.
    #[track_caller]
    pub fn replace_scoped_boxed<T, F>(self, factory: F) -> Self
    where
        T: ?Sized + Send + 'static,
        F: Fn(&mut Scope) -> Box<T> + Send + Sync + 'static,
    {
        self.insert_scoped::<T>(Box::new(factory), Mode::Replace)
    }

    /// Adds every registration of `other` to this container, as if made
    /// here: a type that both register with one lifetime is a build
    /// problem, as a second registration is.
    pub fn merge(mut self, other: Dependencies) -> Self {
        self.duplicates.extend(other.duplicates);
        for (lifetime, entries) in [
            (Lifetime::Shared, other.shared),
            (Lifetime::Scoped, other.scoped),
        ] {
            for (type_id, entry) in entries {
                self.insert(lifetime, type_id, entry, Mode::Add);
            }
        }
        self
    }

    #[track_caller]
    fn insert_shared<T: ?Sized + Send + Sync + 'static>(self, value: Arc<T>, mode: Mode) -> Self {
        self.insert_entry::<T>(Lifetime::Shared, Arc::new(value), mode)
    }

    #[track_caller]
    fn insert_scoped<T: ?Sized + Send + 'static>(
        self,
        factory: ScopedFactory<T>,
        mode: Mode,
    ) -> Self {
        self.insert_entry::<T>(Lifetime::Scoped, Arc::new(factory), mode)
    }

    #[track_caller]
    fn insert_entry<T: ?Sized + 'static>(
        mut self,
        lifetime: Lifetime,
        value: Arc<dyn Any + Send + Sync>,
        mode: Mode,
    ) -> Self {
        let caller = std::panic::Location::caller();
        let entry = Entry {
            type_name: std::any::type_name::<T>(),
            value,
            at: Location {
                file: caller.file(),
                line: caller.line(),
            },
        };
        self.insert(lifetime, TypeId::of::<T>(), entry, mode);
        self
    }

    fn insert(&mut self, lifetime: Lifetime, type_id: TypeId, entry: Entry, mode: Mode) {
        let map = match lifetime {
            Lifetime::Scoped => &mut self.scoped,
            _ => &mut self.shared,
        };
        let (type_name, at) = (entry.type_name, entry.at);
        let Some(first) = map.insert(type_id, entry) else {
            return;
        };
        if mode == Mode::Replace {
            return;
        }
        // Keep the first: the build refuses the container anyway, and its
        // message names every place.
        let first_at = first.at;
        map.insert(type_id, first);
        match self
            .duplicates
            .iter_mut()
            .find(|d| d.type_id == type_id && d.lifetime == lifetime)
        {
            Some(duplicate) => duplicate.at.push(at),
            None => self.duplicates.push(Duplicate {
                type_id,
                type_name,
                lifetime,
                at: vec![first_at, at],
            }),
        }
    }

    /// How many registrations the container holds.
    pub fn len(&self) -> usize {
        self.shared.len() + self.scoped.len()
    }

    /// Whether the container is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The types registered twice without `replace_*`.
    pub(crate) fn duplicates(&self) -> &[Duplicate] {
        &self.duplicates
    }

    /// Every registration: its type and lifetime.
    pub(crate) fn registered(&self) -> impl Iterator<Item = Registered> + '_ {
        let shared = self.shared.values().map(|e| Registered {
            type_name: e.type_name,
            lifetime: Lifetime::Shared,
        });
        let scoped = self.scoped.values().map(|e| Registered {
            type_name: e.type_name,
            lifetime: Lifetime::Scoped,
        });
        shared.chain(scoped)
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
