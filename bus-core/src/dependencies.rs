//! The dependency container that bootstrap fills and the bus build reads.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::inject::{DependencyKey, Lifetime, Resolved, Scope, ScopedFactory};
use crate::message::Location;

/// How a registration treats one already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A second registration of the type is a build problem.
    Add,
    /// It replaces the one there, on purpose; there must be one.
    Replace,
}

/// One call of `shared`, `scoped`, `replace_*`...
struct Registration {
    type_id: TypeId,
    type_name: &'static str,
    lifetime: Lifetime,
    value: Arc<dyn Any + Send + Sync>,
    at: Location,
    mode: Mode,
}

/// Everything handlers may ask for, keyed by type.
///
/// Each type is registered once per lifetime: registering it again is a
/// build problem that names both places (which one should win?). A test
/// that builds the real set and swaps a fake in says so with `replace_*`,
/// which must replace something (a replacement of a type nothing
/// registered is a build problem too: the fake would never be injected):
///
/// ```
/// use std::sync::Arc;
/// use arch_events::Dependencies;
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
/// build's messages. The container is the list of its registrations, in
/// order: [`merge`](Self::merge) appends another's, as if they were made
/// here.
///
/// ```
/// use std::sync::Arc;
/// use arch_events::{Dependencies, EventReleaser};
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
    /// Every registration, in the order it was made.
    log: Vec<Registration>,
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
        self.shared_with(Arc::new(value), Mode::Add)
    }

    /// Registers an already shared instance; `T` may be a trait object, so
    /// handlers can take `&dyn Trait` and tests can pass a fake:
    /// `shared_arc::<dyn Mailer>(Arc::new(Smtp))`.
    #[track_caller]
    pub fn shared_arc<T: ?Sized + Send + Sync + 'static>(self, value: Arc<T>) -> Self {
        self.shared_with(value, Mode::Add)
    }

    /// Registers a factory called once per handler call that takes
    /// `Scoped<T>`; the [`Scope`] gives it the call's event releaser.
    #[track_caller]
    pub fn scoped<T, F>(self, factory: F) -> Self
    where
        T: Send + 'static,
        F: Fn(&mut Scope) -> T + Send + Sync + 'static,
    {
        self.scoped_with::<T>(Box::new(move |scope| Box::new(factory(scope))), Mode::Add)
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
        self.scoped_with::<T>(Box::new(factory), Mode::Add)
    }

    /// [`shared`](Self::shared), replacing what is registered for `T` (a
    /// test's fake in place of the real adapter).
    #[track_caller]
    pub fn replace_shared<T: Send + Sync + 'static>(self, value: T) -> Self {
        self.shared_with(Arc::new(value), Mode::Replace)
    }

    /// [`shared_arc`](Self::shared_arc), replacing what is registered for
    /// `T`: `replace_shared_arc::<dyn Mailer>(Arc::new(FakeMailer))`.
    #[track_caller]
    pub fn replace_shared_arc<T: ?Sized + Send + Sync + 'static>(self, value: Arc<T>) -> Self {
        self.shared_with(value, Mode::Replace)
    }

    /// [`scoped`](Self::scoped), replacing what is registered for `T`.
    #[track_caller]
    pub fn replace_scoped<T, F>(self, factory: F) -> Self
    where
        T: Send + 'static,
        F: Fn(&mut Scope) -> T + Send + Sync + 'static,
    {
        self.scoped_with::<T>(
            Box::new(move |scope| Box::new(factory(scope))),
            Mode::Replace,
        )
    }

    /// [`scoped_boxed`](Self::scoped_boxed), replacing what is registered
    /// for `T`: `replace_scoped_boxed::<dyn UnitOfWork, _>(|scope| ...)`.
    #[track_caller]
    pub fn replace_scoped_boxed<T, F>(self, factory: F) -> Self
    where
        T: ?Sized + Send + 'static,
        F: Fn(&mut Scope) -> Box<T> + Send + Sync + 'static,
    {
        self.scoped_with::<T>(Box::new(factory), Mode::Replace)
    }

    /// Appends every registration of `other`, as if it were made here,
    /// after this container's own: a type registered in both is a build
    /// problem, and a `replace_*` of `other` replaces what this one holds.
    ///
    /// ```
    /// use arch_events::Dependencies;
    ///
    /// struct Clock(u32);
    ///
    /// let production = Dependencies::new().shared(Clock(1)).shared(String::from("config"));
    /// let fakes = Dependencies::new().replace_shared(Clock(7));
    /// assert_eq!(production.merge(fakes).len(), 2);
    /// ```
    pub fn merge(mut self, other: Dependencies) -> Self {
        self.log.extend(other.log);
        self
    }

    #[track_caller]
    fn shared_with<T: ?Sized + Send + Sync + 'static>(self, value: Arc<T>, mode: Mode) -> Self {
        self.register::<T>(Lifetime::Shared, Arc::new(value), mode)
    }

    #[track_caller]
    fn scoped_with<T: ?Sized + Send + 'static>(
        self,
        factory: ScopedFactory<T>,
        mode: Mode,
    ) -> Self {
        self.register::<T>(Lifetime::Scoped, Arc::new(factory), mode)
    }

    #[track_caller]
    fn register<T: ?Sized + 'static>(
        mut self,
        lifetime: Lifetime,
        value: Arc<dyn Any + Send + Sync>,
        mode: Mode,
    ) -> Self {
        let caller = std::panic::Location::caller();
        self.log.push(Registration {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            lifetime,
            value,
            at: Location {
                file: caller.file(),
                line: caller.line(),
            },
            mode,
        });
        self
    }

    /// How many types the container provides (a type registered twice, or
    /// replaced, counts once).
    pub fn len(&self) -> usize {
        self.container().entries.len()
    }

    /// Whether the container is empty.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// What the registrations add up to, in order.
    pub(crate) fn container(&self) -> Container {
        let mut entries: HashMap<(TypeId, Lifetime), Entry> = HashMap::new();
        for registration in &self.log {
            let key = (registration.type_id, registration.lifetime);
            match (entries.get_mut(&key), registration.mode) {
                // A second registration: the first stays (the build refuses
                // the container anyway), every place is named.
                (Some(entry), Mode::Add) => entry.sites.push(registration.at),
                (Some(entry), Mode::Replace) => {
                    entry.value = registration.value.clone();
                    entry.sites = vec![registration.at];
                }
                (None, mode) => {
                    entries.insert(
                        key,
                        Entry {
                            type_name: registration.type_name,
                            value: registration.value.clone(),
                            sites: vec![registration.at],
                            replaced_nothing: mode == Mode::Replace,
                        },
                    );
                }
            }
        }
        Container { entries }
    }
}

/// What one type, with one lifetime, is registered as.
pub(crate) struct Entry {
    pub(crate) type_name: &'static str,
    value: Arc<dyn Any + Send + Sync>,
    /// Where the registrations in force were made: more than one is a
    /// duplicate; a `replace_*` starts the list again.
    pub(crate) sites: Vec<Location>,
    /// Whether the first registration was a `replace_*` of nothing.
    pub(crate) replaced_nothing: bool,
}

/// The registrations of a [`Dependencies`], added up: what the build
/// resolves handler parameters against.
pub(crate) struct Container {
    pub(crate) entries: HashMap<(TypeId, Lifetime), Entry>,
}

/// What the container holds under a type near one a handler asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Registered {
    pub(crate) type_id: TypeId,
    pub(crate) type_name: &'static str,
    pub(crate) lifetime: Lifetime,
}

impl Container {
    /// Every registration: its type and lifetime.
    pub(crate) fn registered(&self) -> impl Iterator<Item = Registered> + '_ {
        self.entries
            .iter()
            .map(|(&(type_id, lifetime), entry)| Registered {
                type_id,
                type_name: entry.type_name,
                lifetime,
            })
    }

    /// Finds what a handler parameter needs; `Err` carries a hint when the
    /// type is registered with the other lifetime.
    pub(crate) fn resolve(&self, key: &DependencyKey) -> Result<Resolved, Option<Lifetime>> {
        let other = match key.lifetime() {
            Lifetime::Bus => return Ok(Resolved::Bus),
            Lifetime::Shared => Lifetime::Scoped,
            Lifetime::Scoped => Lifetime::Shared,
        };
        match self.entries.get(&(key.type_id(), key.lifetime())) {
            Some(entry) => Ok(match key.lifetime() {
                Lifetime::Scoped => Resolved::Scoped(entry.value.clone()),
                _ => Resolved::Shared(entry.value.clone()),
            }),
            None => Err(self
                .entries
                .contains_key(&(key.type_id(), other))
                .then_some(other)),
        }
    }
}

impl fmt::Debug for Dependencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let container = self.container();
        let mut shared = Vec::new();
        let mut scoped = Vec::new();
        for registered in container.registered() {
            match registered.lifetime {
                Lifetime::Scoped => scoped.push(registered.type_name),
                _ => shared.push(registered.type_name),
            }
        }
        shared.sort_unstable();
        scoped.sort_unstable();
        f.debug_struct("Dependencies")
            .field("shared", &shared)
            .field("scoped", &scoped)
            .finish()
    }
}
