//! Building the bus: gathering registrations, validating all wiring at once,
//! and resolving every handler's dependencies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::routes::{BoundHandler, Route, Routes};
use super::{Bus, BusInner};
use crate::dependencies::Dependencies;
use crate::error::{BuildError, HandlerSite, Problem};
use crate::message::{Kind, Message, MessageMeta};
use crate::observer::Observer;
use crate::registry::{HandlerRegistration, Registrations};

/// The default bound on messages processed by one dispatch.
pub const DEFAULT_MAX_MESSAGES_PER_DISPATCH: usize = 10_000;

/// Configures and validates a [`Bus`].
///
/// ```
/// use bus_core::{Bus, Dependencies};
///
/// let bus = Bus::builder()
///     .dependencies(Dependencies::new().shared(String::from("shared config")))
///     .max_messages_per_dispatch(500)
///     .observer(|failure: &bus_core::HandlerFailure| eprintln!("{failure}"))
///     .build();
/// # let _ = bus;
/// ```
pub struct BusBuilder {
    registrations: Option<Registrations>,
    dependencies: Dependencies,
    observer: Option<Arc<dyn Observer>>,
    max_messages: usize,
    allowed_unhandled: Vec<&'static MessageMeta>,
}

impl BusBuilder {
    pub(super) fn new() -> Self {
        BusBuilder {
            registrations: None,
            dependencies: Dependencies::new(),
            observer: None,
            max_messages: DEFAULT_MAX_MESSAGES_PER_DISPATCH,
            allowed_unhandled: Vec::new(),
        }
    }

    /// Builds from this explicit list instead of everything linked into the
    /// binary.
    pub fn registrations(mut self, registrations: Registrations) -> Self {
        self.registrations = Some(registrations);
        self
    }

    /// The container the handlers' dependencies come from (replaces any
    /// earlier one).
    pub fn dependencies(mut self, dependencies: Dependencies) -> Self {
        self.dependencies = dependencies;
        self
    }

    /// Told about every event-handler failure, after it was logged.
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// The most messages (the command and every event it causes, directly or
    /// not) one dispatch may process before it stops with
    /// [`DispatchError::CascadeLimit`](crate::DispatchError::CascadeLimit).
    /// Default: [`DEFAULT_MAX_MESSAGES_PER_DISPATCH`].
    pub fn max_messages_per_dispatch(mut self, max: usize) -> Self {
        self.max_messages = max.max(1);
        self
    }

    /// Lets the command or query `M` have no handler in this binary (another
    /// process handles it); dispatching it here returns
    /// [`DispatchError::Unhandled`](crate::DispatchError::Unhandled).
    pub fn allow_unhandled<M: Message>(mut self) -> Self {
        self.allowed_unhandled.push(M::meta());
        self
    }

    /// Validates all wiring and builds the bus, or returns every problem at once.
    pub fn build(self) -> Result<Bus, BuildError> {
        let registrations = self.registrations.unwrap_or_else(Registrations::linked);
        let mut problems = Vec::new();

        let mut handlers = sorted_unique_handlers(&registrations);
        handlers.retain(|handler| {
            let described = handler.message().is_some();
            if !described {
                problems.push(Problem::UndescribedHandler {
                    handler: site(handler),
                });
            }
            described
        });
        let messages = unique_messages(&registrations, &handlers);
        problems.extend(duplicate_names(&messages));

        let mut by_message: HashMap<*const MessageMeta, Vec<&'static HandlerRegistration>> =
            HashMap::new();
        for &handler in &handlers {
            if let Some(message) = handler.message() {
                by_message
                    .entry(message as *const _)
                    .or_default()
                    .push(handler);
            }
        }

        let mut routes = Routes::default();
        for &meta in &messages {
            let mine = by_message.remove(&(meta as *const _)).unwrap_or_default();
            if meta.kind() != Kind::Event {
                check_single_handler(meta, &mine, &self.allowed_unhandled, &mut problems);
            }
            let bound: Box<[BoundHandler]> = mine
                .iter()
                .map(|&registration| bind(registration, &self.dependencies, &mut problems))
                .collect();
            let typed = if meta.kind() == Kind::Event {
                bound
                    .iter()
                    .find_map(|handler| handler.registration.typed_entry())
                    .map(|entry| entry.build_route(&bound))
            } else {
                None
            };
            routes.insert(Route {
                meta,
                handlers: bound,
                typed,
            });
        }

        if !problems.is_empty() {
            return Err(BuildError::new(problems));
        }
        warn_unhandled_releases(&handlers, &routes);
        tracing::debug!(
            messages = messages.len(),
            handlers = handlers.len(),
            "bus built"
        );
        Ok(Bus {
            inner: Arc::new(BusInner {
                routes,
                observer: self.observer,
                max_messages: self.max_messages,
            }),
        })
    }
}

impl std::fmt::Debug for BusBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusBuilder")
            .field("registrations", &self.registrations)
            .field("dependencies", &self.dependencies)
            .field("max_messages", &self.max_messages)
            .finish_non_exhaustive()
    }
}

fn site(registration: &HandlerRegistration) -> HandlerSite {
    HandlerSite {
        name: registration.name(),
        location: registration.location(),
    }
}

/// Handlers without repeats, in a deterministic order (inventory's is not).
fn sorted_unique_handlers(registrations: &Registrations) -> Vec<&'static HandlerRegistration> {
    let mut handlers: Vec<_> = registrations.handlers().collect();
    handlers.sort_by_key(|h| (h.name(), h.location()));
    handlers.dedup_by(|a, b| std::ptr::eq(*a, *b));
    handlers
}

/// Every message type: those registered and those named by a handler.
fn unique_messages(
    registrations: &Registrations,
    handlers: &[&'static HandlerRegistration],
) -> Vec<&'static MessageMeta> {
    let mut messages: Vec<&'static MessageMeta> = registrations
        .messages()
        .chain(handlers.iter().filter_map(|h| h.message()))
        .collect();
    messages.sort_by_key(|m| {
        (
            m.name(),
            m.rust_path(),
            m.location(),
            *m as *const MessageMeta,
        )
    });
    messages.dedup_by(|a, b| std::ptr::eq(*a, *b));
    messages
}

fn duplicate_names(messages: &[&'static MessageMeta]) -> Vec<Problem> {
    let mut by_name: BTreeMap<&'static str, Vec<&'static MessageMeta>> = BTreeMap::new();
    for &meta in messages {
        by_name.entry(meta.name()).or_default().push(meta);
    }
    by_name
        .into_iter()
        .filter(|(_, metas)| metas.len() > 1)
        .map(|(name, metas)| Problem::DuplicateName {
            name,
            types: metas
                .iter()
                .map(|m| (m.rust_path(), m.location()))
                .collect(),
        })
        .collect()
}

fn check_single_handler(
    meta: &'static MessageMeta,
    handlers: &[&'static HandlerRegistration],
    allowed_unhandled: &[&'static MessageMeta],
    problems: &mut Vec<Problem>,
) {
    match handlers.len() {
        0 if allowed_unhandled.iter().any(|m| std::ptr::eq(*m, meta)) => {}
        0 => problems.push(Problem::NoHandler {
            kind: meta.kind(),
            message: meta.name(),
            declared_at: meta.location(),
        }),
        1 => {}
        _ => problems.push(Problem::MultipleHandlers {
            kind: meta.kind(),
            message: meta.name(),
            handlers: handlers.iter().map(|h| site(h)).collect(),
        }),
    }
}

/// Resolves a handler's dependencies, recording each missing one.
fn bind(
    registration: &'static HandlerRegistration,
    dependencies: &Dependencies,
    problems: &mut Vec<Problem>,
) -> BoundHandler {
    let resolved = registration
        .dependencies()
        .filter_map(|key| match dependencies.resolve(&key) {
            Ok(resolved) => Some(resolved),
            Err(registered_as) => {
                problems.push(Problem::MissingDependency {
                    handler: site(registration),
                    type_name: key.type_name(),
                    lifetime: key.lifetime(),
                    registered_as,
                });
                None
            }
        })
        .collect();
    BoundHandler {
        call: registration.call(),
        registration,
        dependencies: resolved,
    }
}

/// A handler that declares it releases an event nobody handles is a dead end
/// worth a warning (not an error: events may have no handler).
fn warn_unhandled_releases(handlers: &[&'static HandlerRegistration], routes: &Routes) {
    for handler in handlers {
        for event in handler.releases() {
            if routes.handlers(event).is_empty() {
                tracing::warn!(
                    handler = handler.name(),
                    event = event.name(),
                    "handler declares it releases an event that has no handler in this bus"
                );
            }
        }
    }
}
