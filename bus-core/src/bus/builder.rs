//! Building the bus: gathering registrations, validating all wiring at once,
//! and resolving every handler's dependencies.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::command_retry::CommandRetry;
use super::routes::{BoundHandler, CallPath, Route, Routes};
use super::{Bus, BusInner};
use crate::context::MessageContext;
use crate::dead_letter::{DeadLetterSink, InMemoryDeadLetters};
use crate::dependencies::{Container, Dependencies, Registered};
use crate::error::{BuildError, HandlerSite, Problem};
use crate::inject::{DependencyKey, Lifetime};
use crate::layer::{Layer, Pipeline};
use crate::message::{Command, Location, Message, MessageKind, MessageMeta};
use crate::observer::Observer;
use crate::registry::{HandlerDef, HandlerFn, HandlerRegistration, Registrations};
use crate::retry::{Retry, RetryPolicy};
use crate::timeout::Timeout;

/// The default bound on messages processed by one dispatch.
pub const DEFAULT_MAX_MESSAGES_PER_DISPATCH: usize = 10_000;

/// Configures and validates a [`Bus`].
///
/// ```
/// use arch_events::{Bus, Dependencies};
///
/// let bus = Bus::builder()
///     .dependencies(Dependencies::new().shared(String::from("shared config")))
///     .max_messages_per_dispatch(500)
///     .observer(|failure: &arch_events::HandlerFailure| eprintln!("{failure}"))
///     .build();
/// # let _ = bus;
/// ```
pub struct BusBuilder {
    registrations: Option<Registrations>,
    dependencies: Dependencies,
    observer: Option<Arc<dyn Observer>>,
    max_messages: usize,
    /// Where `max_messages_per_dispatch` was called, for its problem.
    max_messages_at: Option<Location>,
    allowed_unhandled: Vec<&'static MessageMeta>,
    require_event_handlers: bool,
    layers: Vec<Arc<dyn Layer>>,
    message_layers: Vec<(&'static MessageMeta, Arc<dyn Layer>)>,
    retry: RetryPolicy,
    /// Where `retry` was called, for its problems.
    retry_at: Option<Location>,
    handler_retries: Vec<(&'static HandlerRegistration, RetryPolicy)>,
    handler_timeouts: Vec<(&'static HandlerRegistration, Duration)>,
    command_retries: Vec<(&'static MessageMeta, Box<dyn Any + Send + Sync>)>,
    dead_letters: Option<Arc<dyn DeadLetterSink>>,
    spawner: Option<Arc<dyn crate::spawn::Spawn>>,
    scheduler: Option<super::hand_off::RetryScheduler>,
    /// Commands whose retry was given a policy that hands off.
    command_hand_offs: Vec<&'static MessageMeta>,
}

impl BusBuilder {
    pub(super) fn new() -> Self {
        BusBuilder {
            registrations: None,
            dependencies: Dependencies::new(),
            observer: None,
            max_messages: DEFAULT_MAX_MESSAGES_PER_DISPATCH,
            max_messages_at: None,
            allowed_unhandled: Vec::new(),
            require_event_handlers: false,
            layers: Vec::new(),
            message_layers: Vec::new(),
            retry: RetryPolicy::none(),
            retry_at: None,
            handler_retries: Vec::new(),
            handler_timeouts: Vec::new(),
            command_retries: Vec::new(),
            dead_letters: None,
            spawner: None,
            scheduler: None,
            command_hand_offs: Vec::new(),
        }
    }

    /// Wraps every handler call (commands, queries and events) in `layer`.
    /// Layers run in the order they were added, the first one outermost,
    /// inside the bus's own retry and timeout layers.
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// Wraps every call of the handlers of `M` in `layer`, inside the layers
    /// added with [`layer`](Self::layer).
    pub fn layer_for<M: Message>(mut self, layer: impl Layer) -> Self {
        self.message_layers.push((M::meta(), Arc::new(layer)));
        self
    }

    /// The retry policy of every event handler without one of its own
    /// (default: [`RetryPolicy::none`], one attempt).
    ///
    /// ```
    /// use std::time::Duration;
    /// use arch_events::{Bus, RetryPolicy};
    ///
    /// let bus = Bus::builder()
    ///     .retry(RetryPolicy::exponential(4).first_delay(Duration::from_millis(200)))
    ///     .build()
    ///     .unwrap();
    /// # let _ = bus;
    /// ```
    #[track_caller]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        let caller = std::panic::Location::caller();
        self.retry = policy;
        self.retry_at = Some(Location {
            file: caller.file(),
            line: caller.line(),
        });
        self
    }

    /// The retry policy of the event handler `H` (the type `#[handler]`
    /// defines under the function's name), instead of the bus-wide one.
    pub fn handler_retry<H: HandlerDef>(mut self, policy: RetryPolicy) -> Self {
        self.handler_retries.push((H::registration(), policy));
        self
    }

    /// Fails a call of the `async fn` handler `H` that has not finished after
    /// `limit` (per attempt): a [`Timeout`] layer just inside its retry
    /// layer. A plain `fn` cannot be interrupted: the build refuses it.
    pub fn handler_timeout<H: HandlerDef>(mut self, limit: Duration) -> Self {
        self.handler_timeouts.push((H::registration(), limit));
        self
    }

    /// Opts the command `C` in to retries: when its handler fails with an
    /// error for which `retry_if` says yes (an optimistic-concurrency
    /// conflict, say), the whole call runs again on a copy of the command,
    /// per `policy`. Commands are never retried otherwise.
    ///
    /// ```
    /// use arch_events::{Bus, Command, RetryPolicy};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// enum BookError {
    ///     #[error("someone else changed the booking first")]
    ///     Conflict,
    ///     #[error("no such room")]
    ///     NoSuchRoom,
    /// }
    ///
    /// #[derive(Debug, Clone, Command)]
    /// #[command(error = BookError)]
    /// struct Book { room: u32 }
    ///
    /// #[arch_events::handler]
    /// fn book(_: Book) -> Result<(), BookError> { Ok(()) }
    ///
    /// let bus = Bus::builder()
    ///     .retry_command::<Book>(RetryPolicy::exponential(5), |error| matches!(error, BookError::Conflict))
    ///     .build()
    ///     .unwrap();
    /// # let _ = bus;
    /// ```
    pub fn retry_command<C: Command + Clone>(
        mut self,
        policy: RetryPolicy,
        retry_if: impl Fn(&C::Error) -> bool + Send + Sync + 'static,
    ) -> Self {
        if policy.sets_hand_off() {
            self.command_hand_offs.push(C::meta());
        }
        let retry = CommandRetry::<C, C::Error> {
            policy,
            copy: C::clone,
            retry_if: Box::new(retry_if),
        };
        self.command_retries.push((C::meta(), Box::new(retry)));
        self
    }

    /// Where dead letters go (default: an [`InMemoryDeadLetters`], reachable
    /// through [`Bus::dead_letters`]).
    pub fn dead_letters(mut self, sink: impl DeadLetterSink) -> Self {
        self.dead_letters = Some(Arc::new(sink));
        self
    }

    /// [`dead_letters`](Self::dead_letters), with a sink the caller keeps a
    /// handle on.
    pub fn dead_letters_arc(mut self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.dead_letters = Some(sink);
        self
    }

    /// The application's runtime: the events of an awaited dispatch then
    /// run on a task of their own (the caller awaits their end), so that a
    /// caller that stops waiting (a timeout, an HTTP client that hung up)
    /// interrupts none of their handlers. See [`Bus::dispatch`] and
    /// [`Spawn`](crate::Spawn).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let bus = arch_events::Bus::builder()
    ///     .spawner(|task| {
    ///         tokio::spawn(task);
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = bus;
    /// # }
    /// ```
    pub fn spawner(mut self, spawner: impl crate::spawn::Spawn) -> Self {
        self.spawner = Some(Arc::new(spawner));
        self
    }

    /// The scheduler that keeps the attempts event handlers' retry
    /// policies hand off
    /// ([`RetryPolicy::hand_off_waits_over`](crate::RetryPolicy::hand_off_waits_over)),
    /// and fires them when due (run its loop, or fire it, with this bus):
    /// `arch_events_sqlx::SqlScheduler` keeps them durably, with the
    /// events they retry; an [`InMemoryScheduler`](crate::schedule::InMemoryScheduler)
    /// in a test, driven by its [`VirtualClock`](crate::schedule::VirtualClock).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use arch_events::schedule::{InMemoryScheduler, Scheduler, VirtualClock};
    /// use arch_events::{handler, Bus, Dependencies, Event, MessageContext, RetryPolicy};
    ///
    /// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
    /// #[event(serde)]
    /// struct Ordered { id: u32 }
    ///
    /// /// The mail server is down for the first two attempts.
    /// #[handler]
    /// fn send_mail(_: &Ordered, context: MessageContext, sent: &AtomicU32) -> Result<(), std::io::Error> {
    ///     if context.attempt() < 3 {
    ///         return Err(std::io::Error::other("mail server down"));
    ///     }
    ///     sent.fetch_add(1, Ordering::SeqCst);
    ///     Ok(())
    /// }
    ///
    /// let clock = VirtualClock::new();
    /// let scheduler = Arc::new(InMemoryScheduler::with_clock(clock.clone()));
    /// let sent = Arc::new(AtomicU32::new(0));
    /// let bus = Bus::builder()
    ///     .dependencies(Dependencies::new().shared_arc(sent.clone()))
    ///     .retry(
    ///         RetryPolicy::exponential(5)
    ///             .first_delay(Duration::from_secs(30))
    ///             .without_jitter()
    ///             .hand_off_waits_over(Duration::ZERO),
    ///     )
    ///     .scheduler(scheduler.clone())
    ///     .build()?;
    ///
    /// // The publish returns after the first attempt; the second waits in the scheduler.
    /// bus.publish(Ordered { id: 7 }).await?;
    /// assert_eq!(scheduler.pending().await?.len(), 1);
    /// // 30 s later the second attempt fails and hands off the third, 60 s after it.
    /// clock.advance_and_fire(Duration::from_secs(90), &*scheduler, &bus).await?;
    /// assert_eq!(sent.load(Ordering::SeqCst), 1);
    /// assert!(scheduler.pending().await?.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "json")]
    pub fn scheduler(mut self, scheduler: Arc<dyn crate::schedule::Scheduler>) -> Self {
        self.scheduler = Some(scheduler);
        self
    }

    /// Builds from this explicit list instead of everything linked into the
    /// binary.
    pub fn registrations(mut self, registrations: Registrations) -> Self {
        self.registrations = Some(registrations);
        self
    }

    /// The container the handlers' dependencies come from. Called again,
    /// it adds the new container's registrations to the earlier ones (a type
    /// registered in both is a build problem, as in one container).
    pub fn dependencies(mut self, dependencies: Dependencies) -> Self {
        self.dependencies = std::mem::take(&mut self.dependencies).merge(dependencies);
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
    /// At least 1: 0 is a build problem (no dispatch could run).
    #[track_caller]
    pub fn max_messages_per_dispatch(mut self, max: usize) -> Self {
        let caller = std::panic::Location::caller();
        self.max_messages = max;
        self.max_messages_at = Some(Location {
            file: caller.file(),
            line: caller.line(),
        });
        self
    }

    /// Lets the command or query `M` have no handler in this binary (another
    /// process handles it); dispatching it here returns
    /// [`DispatchError::Unhandled`](crate::DispatchError::Unhandled). With
    /// [`require_event_handlers`](Self::require_event_handlers), lets the
    /// event `M` have none.
    pub fn allow_unhandled<M: Message>(mut self) -> Self {
        self.allowed_unhandled.push(M::meta());
        self
    }

    /// Refuses to build when an event type of the bus has no handler
    /// (except those allowed with [`allow_unhandled`](Self::allow_unhandled)):
    /// a function meant as its handler that lacks `#[handler]`, or sits in
    /// a crate that is not linked, is found at startup, not in production.
    /// Off by default (an event may have no handler);
    /// [`BusDescription::dead_ends`](crate::describe::BusDescription::dead_ends) lists
    /// them either way.
    ///
    /// ```
    /// use arch_events::{Bus, Event};
    ///
    /// #[derive(Debug, Clone, Event)]
    /// struct Shipped;
    ///
    /// #[derive(Debug, Clone, Event)]
    /// struct Audited;
    ///
    /// let refused = Bus::builder()
    ///     .registrations(arch_events::Registrations::new().message::<Shipped>().message::<Audited>())
    ///     .require_event_handlers()
    ///     .allow_unhandled::<Audited>() // published for another service
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(refused.problems().len(), 1);
    /// let shipped = <Shipped as arch_events::Message>::name();
    /// assert!(refused.to_string().contains(&format!("event `{shipped}`")));
    /// ```
    pub fn require_event_handlers(mut self) -> Self {
        self.require_event_handlers = true;
        self
    }

    /// Validates all wiring and builds the bus, or returns every problem at once.
    pub fn build(mut self) -> Result<Bus, BuildError> {
        // Before the bus exists: its in-flight counting relies on it.
        super::barrier::prepare();
        let registrations_linked = self.registrations.is_none();
        let registrations = self
            .registrations
            .take()
            .unwrap_or_else(Registrations::linked);
        let mut problems = Vec::new();
        let mut command_retries = std::mem::take(&mut self.command_retries);
        let retried_commands: Vec<&'static MessageMeta> =
            command_retries.iter().map(|(meta, _)| *meta).collect();

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
        #[cfg(feature = "json")]
        problems.extend(crate::event_store::upcast::problems(&messages));
        #[cfg(feature = "json")]
        problems.extend(crate::saga::problems(&handlers));

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
        let container = self.dependencies.container();
        let mut missing = MissingDependencies::default();
        for &meta in &messages {
            let mine = by_message.remove(&(meta as *const _)).unwrap_or_default();
            if meta.kind() != MessageKind::Event {
                check_single_handler(meta, &mine, &self.allowed_unhandled, &mut problems);
            } else if self.require_event_handlers
                && mine.is_empty()
                && !self
                    .allowed_unhandled
                    .iter()
                    .any(|m| std::ptr::eq(*m, meta))
            {
                problems.push(Problem::NoHandler {
                    kind: MessageKind::Event,
                    message: meta.name(),
                    declared_at: meta.location(),
                });
            }
            let bound: Box<[BoundHandler]> = mine
                .iter()
                .map(|&registration| {
                    let mut handler = bind(registration, &container, &mut missing);
                    let (pipeline, retry) = self.pipeline(meta, registration);
                    if let Some(pipeline) = pipeline {
                        handler.path = CallPath::Layered(pipeline, handler.path.call());
                        // Its layers come first: no typed entry around them.
                        handler.typed_request = None;
                        handler.typed_async_request = None;
                    }
                    handler.retry = retry;
                    if meta.kind() == MessageKind::Command {
                        handler.command_retry = take_command_retry(&mut command_retries, meta);
                    }
                    handler
                })
                .collect();
            let typed = if meta.kind() == MessageKind::Event {
                bound
                    .iter()
                    .find_map(|handler| handler.registration.typed_entry())
                    .map(|entry| entry.build_route(&bound))
            } else {
                None
            };
            let typed_any = typed.clone().map(super::typed_route::EventRoute::into_any);
            let drives = bound.iter().any(|handler| handler.path.drives());
            routes.insert(Route {
                meta,
                handlers: bound,
                typed,
                typed_any,
                drives,
            });
        }

        problems.extend(missing.into_problems(&container, &handlers));
        problems.extend(registration_problems(&container));
        warn_unused(&container, &handlers, registrations_linked);
        problems.extend(self.setting_problems(
            &handlers,
            &messages,
            &retried_commands,
            &command_retries,
        ));
        if !problems.is_empty() {
            return Err(BuildError::new(problems));
        }
        warn_unhandled_releases(&handlers, &routes, &self.allowed_unhandled);
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
                dead_letters: self
                    .dead_letters
                    .unwrap_or_else(|| Arc::new(InMemoryDeadLetters::new())),
                lifecycle: Default::default(),
                messages: messages.into_boxed_slice(),
                names: Default::default(),
                watch: Default::default(),
                spawner: self.spawner,
                scheduler: self.scheduler,
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
            .field("layers", &self.layers.len())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl BusBuilder {
    /// The layers of one handler, outermost first: its retry (event
    /// handlers), its timeout, the bus-wide layers, then those of its message.
    ///
    /// A handler whose only layer would be its retry keeps the direct call,
    /// with the retry beside it (`BoundHandler::retry`): its first attempt
    /// costs nothing more, and the retry layer takes over on a failure.
    fn pipeline(
        &self,
        meta: &'static MessageMeta,
        registration: &'static HandlerRegistration,
    ) -> (Option<Pipeline>, Option<Arc<Retry>>) {
        let mut layers: Vec<Arc<dyn Layer>> = Vec::new();
        let mut retry = None;
        if meta.kind() == MessageKind::Event {
            let policy = self
                .handler_retries
                .iter()
                .rev()
                .find(|(h, _)| std::ptr::eq(*h, registration))
                .map_or(&self.retry, |(_, policy)| policy);
            if policy.retries() {
                let layer = Arc::new(Retry::new(policy.clone()));
                layers.push(layer.clone());
                retry = Some(layer);
            }
        }
        let timeout = self
            .handler_timeouts
            .iter()
            .rev()
            .find(|(h, _)| std::ptr::eq(*h, registration));
        if let Some(&(_, limit)) = timeout {
            if registration.is_async() {
                layers.push(Arc::new(Timeout::new(limit)));
            }
        }
        layers.extend(self.layers.iter().cloned());
        layers.extend(
            self.message_layers
                .iter()
                .filter(|(m, _)| std::ptr::eq(*m, meta))
                .map(|(_, layer)| layer.clone()),
        );
        match (layers.len(), retry) {
            (0, _) => (None, None),
            (1, Some(retry)) => (None, Some(retry)),
            _ => (Some(layers.into_boxed_slice()), None),
        }
    }

    /// Per-handler settings that name a handler outside this bus, or do not
    /// fit the handler they name.
    fn setting_problems(
        &self,
        handlers: &[&'static HandlerRegistration],
        messages: &[&'static MessageMeta],
        retried_commands: &[&'static MessageMeta],
        unused_command_retries: &[(&'static MessageMeta, Box<dyn Any + Send + Sync>)],
    ) -> Vec<Problem> {
        let in_bus = |h: &HandlerRegistration| handlers.iter().any(|b| std::ptr::eq(*b, h));
        let mut problems = Vec::new();
        if self.max_messages == 0 {
            problems.push(Problem::InvalidSetting {
                handler: HandlerSite {
                    name: "the bus",
                    location: self.max_messages_at.unwrap_or(Location {
                        file: "(bootstrap)",
                        line: 0,
                    }),
                },
                setting: "max_messages_per_dispatch",
                reason: "it must be at least 1: the message dispatched counts as the first",
            });
        }
        // The same handler named twice by one setting: which value should win?
        let twice = |list: &mut dyn Iterator<Item = &'static HandlerRegistration>| {
            let mut seen: Vec<&'static HandlerRegistration> = Vec::new();
            let mut repeated: Vec<&'static HandlerRegistration> = Vec::new();
            for handler in list {
                if seen.iter().any(|s| std::ptr::eq(*s, handler)) {
                    if !repeated.iter().any(|r| std::ptr::eq(*r, handler)) {
                        repeated.push(handler);
                    }
                } else {
                    seen.push(handler);
                }
            }
            repeated
        };
        let settings: [(&'static str, Vec<&'static HandlerRegistration>); 2] = [
            (
                "handler_retry",
                twice(&mut self.handler_retries.iter().map(|(h, _)| *h)),
            ),
            (
                "handler_timeout",
                twice(&mut self.handler_timeouts.iter().map(|(h, _)| *h)),
            ),
        ];
        for (setting, repeated) in settings {
            for handler in repeated {
                problems.push(Problem::InvalidSetting {
                    handler: site(handler),
                    setting,
                    reason: "it is set twice for this handler: keep one",
                });
            }
        }
        let mut retried: Vec<&'static MessageMeta> = Vec::new();
        for meta in retried_commands {
            if retried.iter().any(|m| std::ptr::eq(*m, *meta)) {
                continue;
            }
            let count = retried_commands
                .iter()
                .filter(|m| std::ptr::eq(**m, *meta))
                .count();
            if count > 1 {
                retried.push(meta);
                problems.push(Problem::InvalidSetting {
                    handler: HandlerSite {
                        name: meta.name(),
                        location: meta.location(),
                    },
                    setting: "retry_command",
                    reason: "it is set twice for this command: keep one",
                });
            }
        }
        for (meta, _) in &self.message_layers {
            let routed = messages.iter().any(|m| std::ptr::eq(*m, *meta))
                && handlers
                    .iter()
                    .any(|h| h.message().is_some_and(|m| std::ptr::eq(m, *meta)));
            let elsewhere = self
                .allowed_unhandled
                .iter()
                .any(|m| std::ptr::eq(*m, *meta));
            if !routed && !elsewhere {
                problems.push(Problem::InvalidSetting {
                    handler: HandlerSite {
                        name: meta.name(),
                        location: meta.location(),
                    },
                    setting: "layer_for",
                    reason: "the message has no handler in this bus (and is not allowed \
                             unhandled): the layer would wrap nothing",
                });
            }
        }
        for (handler, _) in &self.handler_retries {
            let reason = if !in_bus(handler) {
                Some("the handler is not in this bus")
            } else if handler.message().map(MessageMeta::kind) != Some(MessageKind::Event) {
                Some("only event handlers have retry policies; opt a command in with `retry_command`")
            } else {
                None
            };
            if let Some(reason) = reason {
                problems.push(Problem::InvalidSetting {
                    handler: site(handler),
                    setting: "handler_retry",
                    reason,
                });
            }
        }
        for (handler, limit) in &self.handler_timeouts {
            let reason = if !in_bus(handler) {
                Some("the handler is not in this bus")
            } else if limit.is_zero() {
                Some("a timeout of zero fails every call before it starts")
            } else if !handler.is_async() {
                Some("a plain `fn` cannot be interrupted while it runs; only `async fn` handlers take a timeout")
            } else {
                None
            };
            if let Some(reason) = reason {
                problems.push(Problem::InvalidSetting {
                    handler: site(handler),
                    setting: "handler_timeout",
                    reason,
                });
            }
        }
        problems.extend(self.hand_off_problems(handlers));
        for meta in &self.command_hand_offs {
            problems.push(Problem::InvalidSetting {
                handler: HandlerSite {
                    name: meta.name(),
                    location: meta.location(),
                },
                setting: "retry_command",
                reason: "a command's caller waits for its answer: its retries cannot be handed \
                         to the scheduler (drop `hand_off_waits_over` from its policy)",
            });
        }
        for (meta, _) in unused_command_retries {
            problems.push(Problem::InvalidSetting {
                handler: HandlerSite {
                    name: meta.name(),
                    location: meta.location(),
                },
                setting: "retry_command",
                reason: "the command has no handler in this bus",
            });
        }
        problems
    }
}

impl BusBuilder {
    /// Event handlers whose retry policy hands waits off where it cannot:
    /// the bus has no scheduler (one problem for the bus-wide policy), or
    /// the handler's event does not read back from JSON.
    fn hand_off_problems(&self, handlers: &[&'static HandlerRegistration]) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut bus_wide_told = false;
        for &handler in handlers {
            let Some(meta) = handler.message() else {
                continue;
            };
            if meta.kind() != MessageKind::Event {
                continue;
            }
            let own = self
                .handler_retries
                .iter()
                .rev()
                .find(|(h, _)| std::ptr::eq(*h, handler))
                .map(|(_, policy)| policy);
            let policy = own.unwrap_or(&self.retry);
            if !policy.may_hand_off() {
                continue;
            }
            let setting = if own.is_some() {
                "handler_retry"
            } else {
                "retry"
            };
            if self.scheduler.is_none() {
                let reason = "its retry policy hands waits off to a scheduler, and the bus has \
                              none: add `.scheduler(...)` (a durable one, such as the store's \
                              `SqlScheduler`)";
                if own.is_some() {
                    problems.push(Problem::InvalidSetting {
                        handler: site(handler),
                        setting,
                        reason,
                    });
                } else if !bus_wide_told {
                    bus_wide_told = true;
                    problems.push(Problem::InvalidSetting {
                        handler: HandlerSite {
                            name: "the bus",
                            location: self.retry_at.unwrap_or(Location {
                                file: "(bootstrap)",
                                line: 0,
                            }),
                        },
                        setting,
                        reason,
                    });
                }
            }
            if meta.codec().is_none() {
                problems.push(Problem::InvalidSetting {
                    handler: site(handler),
                    setting,
                    reason: "its retry policy hands waits off to the scheduler, which keeps the \
                             event as JSON, and the event does not read from JSON: derive it \
                             with `#[event(serde)]`, or give this handler a `handler_retry` \
                             without `hand_off_waits_over`",
                });
            }
        }
        problems
    }
}

/// The retry set for the command `meta`, taken out of the list (what is left
/// at the end names commands without a handler here).
fn take_command_retry(
    retries: &mut Vec<(&'static MessageMeta, Box<dyn Any + Send + Sync>)>,
    meta: &'static MessageMeta,
) -> Option<Box<dyn Any + Send + Sync>> {
    let position = retries.iter().rposition(|(m, _)| std::ptr::eq(*m, meta))?;
    let (_, retry) = retries.remove(position);
    retries.retain(|(m, _)| !std::ptr::eq(*m, meta));
    Some(retry)
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

/// Every message type: those registered and those a handler takes or
/// declares it releases.
fn unique_messages(
    registrations: &Registrations,
    handlers: &[&'static HandlerRegistration],
) -> Vec<&'static MessageMeta> {
    let mut messages: Vec<&'static MessageMeta> = registrations
        .messages()
        .chain(handlers.iter().filter_map(|h| h.message()))
        .chain(handlers.iter().flat_map(|h| h.releases()))
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
    dependencies: &Container,
    missing: &mut MissingDependencies,
) -> BoundHandler {
    let resolved = registration
        .dependencies()
        .filter_map(|key| match dependencies.resolve(&key) {
            Ok(resolved) => Some(resolved),
            Err(registered_as) => {
                missing.add(key, registered_as, site(registration));
                None
            }
        })
        .collect();
    let needs_context = registration.dependencies().any(|key| {
        key.lifetime() == Lifetime::Scoped
            || key.type_id() == std::any::TypeId::of::<MessageContext>()
    });
    let path = match registration.call() {
        HandlerFn::Sync(f) => CallPath::Inline(f),
        HandlerFn::Async(f) => CallPath::Awaited(f),
    };
    let (typed_request, typed_async_request) = match path {
        CallPath::Inline(_) => (registration.typed_request(), None),
        CallPath::Awaited(_) => (
            registration.typed_request(),
            registration.typed_async_request(),
        ),
        // Not made here: layers are set on a bound handler later, and clear
        // its typed entries then.
        CallPath::Layered(..) => (None, None),
    };
    BoundHandler {
        path,
        registration,
        dependencies: resolved,
        typed_request,
        typed_async_request,
        needs_context,
        retry: None,
        command_retry: None,
    }
}

/// The dependencies nobody provided, each once, with every handler that
/// asks for it.
#[derive(Default)]
struct MissingDependencies {
    by_key: HashMap<(std::any::TypeId, Lifetime), Missing>,
}

struct Missing {
    key: DependencyKey,
    registered_as: Option<Lifetime>,
    handlers: Vec<HandlerSite>,
}

impl MissingDependencies {
    fn add(&mut self, key: DependencyKey, registered_as: Option<Lifetime>, handler: HandlerSite) {
        let missing = self
            .by_key
            .entry((key.type_id(), key.lifetime()))
            .or_insert_with(|| Missing {
                key,
                registered_as,
                handlers: Vec::new(),
            });
        if !missing.handlers.contains(&handler) {
            missing.handlers.push(handler);
        }
    }

    fn into_problems<'a>(
        self,
        container: &'a Container,
        handlers: &'a [&'static HandlerRegistration],
    ) -> impl Iterator<Item = Problem> + 'a {
        self.by_key.into_values().map(move |mut missing| {
            missing.handlers.sort();
            Problem::MissingDependency {
                type_name: missing.key.type_name(),
                lifetime: missing.key.lifetime(),
                handlers: missing.handlers,
                registered_as: missing.registered_as,
                near: near_registrations(&missing.key, container, handlers),
            }
        })
    }
}

/// Types registered twice, and replacements of nothing.
fn registration_problems(container: &Container) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (&(_, lifetime), entry) in &container.entries {
        if entry.replaced_nothing {
            problems.push(Problem::ReplacesNothing {
                type_name: entry.type_name,
                lifetime,
                at: entry.sites[0],
            });
        }
        if entry.sites.len() > 1 {
            problems.push(Problem::DuplicateDependency {
                type_name: entry.type_name,
                lifetime,
                registered_at: entry.sites.clone(),
            });
        }
    }
    problems
}

/// Whether some handler asks for `registered`.
fn asked_for(registered: &Registered, handlers: &[&'static HandlerRegistration]) -> bool {
    handlers.iter().any(|handler| {
        handler
            .dependencies()
            .any(|key| key.type_id() == registered.type_id && key.lifetime() == registered.lifetime)
    })
}

/// A registration no handler of the whole binary asks for is most likely
/// registered under the wrong type (an `Arc<T>` given to `shared`, a
/// concrete type meant as a trait object): a warning, since a container may
/// serve several buses. Only for a bus built from every linked handler.
fn warn_unused(container: &Container, handlers: &[&'static HandlerRegistration], linked: bool) {
    if !linked {
        return;
    }
    for registered in container.registered() {
        if !asked_for(&registered, handlers) {
            tracing::warn!(
                type_name = registered.type_name,
                lifetime = %registered.lifetime,
                "a dependency is registered that no handler asks for: check its type \
                 (a trait object is registered with `shared_arc::<dyn Trait>` or \
                 `scoped_boxed::<dyn Trait, _>`)"
            );
        }
    }
}

/// What the container holds under a type near `key`'s: the same type
/// inside or outside an `Arc`, a `Box`, an `Rc` or a reference, with or
/// without `dyn`; or, when `key` is a trait object, a concrete type of its
/// lifetime that no handler asks for (the value meant to be registered as
/// that trait object, most likely). Sorted, at most five.
fn near_registrations(
    key: &DependencyKey,
    container: &Container,
    handlers: &[&'static HandlerRegistration],
) -> Vec<(&'static str, Lifetime)> {
    let wanted = key.type_name();
    let wanted_bare = bare_type(wanted);
    let wants_dyn = wanted.starts_with("dyn ");
    let mut near: Vec<(&'static str, Lifetime)> = container
        .registered()
        .filter(|r| r.type_id != key.type_id())
        .filter(|r| {
            bare_type(r.type_name) == wanted_bare
                || (wants_dyn
                    && r.lifetime == key.lifetime()
                    && !r.type_name.starts_with("dyn ")
                    && !asked_for(r, handlers))
        })
        .map(|r| (r.type_name, r.lifetime))
        .collect();
    near.sort_unstable();
    near.truncate(5);
    near
}

/// A type's name without the wrappers it may be handed over in, `dyn` and
/// auto-trait bounds: `alloc::sync::Arc<dyn app::Mailer + core::marker::Send>`
/// → `app::Mailer`. Generic arguments stay: `Mutex<A>` is not `Mutex<B>`.
fn bare_type(type_name: &str) -> &str {
    const WRAPPERS: [&str; 3] = ["alloc::sync::Arc<", "alloc::boxed::Box<", "alloc::rc::Rc<"];
    let mut name = type_name.trim();
    loop {
        let before = name;
        for wrapper in WRAPPERS {
            if let Some(inner) = name.strip_prefix(wrapper).and_then(|n| n.strip_suffix('>')) {
                name = inner.trim();
            }
        }
        if let Some(inner) = name.strip_prefix('&') {
            name = inner.trim_start();
            name = name.strip_prefix("mut ").unwrap_or(name);
        }
        name = name.strip_prefix("dyn ").unwrap_or(name).trim();
        if name == before {
            break;
        }
    }
    // `dyn A + core::marker::Send` → `A`, outside any generic argument.
    match name.find(" + ") {
        Some(at) if !name[..at].contains('<') => &name[..at],
        _ => name,
    }
}

/// A handler that declares it releases an event nobody handles is a dead end
/// worth a warning (not an error: events may have no handler), unless the
/// event was allowed none ([`BusBuilder::allow_unhandled`]).
fn warn_unhandled_releases(
    handlers: &[&'static HandlerRegistration],
    routes: &Routes,
    allowed: &[&'static MessageMeta],
) {
    for handler in handlers {
        for event in handler.releases() {
            let allowed = allowed.iter().any(|meta| std::ptr::eq(*meta, event));
            if !allowed && routes.handlers(event).is_empty() {
                tracing::warn!(
                    handler = handler.name(),
                    event = event.name(),
                    "handler declares it releases an event that has no handler in this bus"
                );
            }
        }
    }
}
