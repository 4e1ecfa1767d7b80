//! Handling one message in a saga: load its instance, decide what a
//! missing or completed one means, run the handler on the state, commit
//! the change; on a conflict, all of it again on the fresh state.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use super::context::SagaContext;
use super::store::{SagaChange, SagaError, SagaRecord, SagaStore};
use super::{NotFound, Role, Saga};
use crate::context::MessageContext;
use crate::error::BoxError;
use crate::events::EventReleaser;
use crate::message::Message;
use crate::retry::Permanent;

/// How many times a message is handled on fresh state after conflicts
/// before [`SagaError::Contended`]. Of the messages racing on one saga,
/// each round commits one: as many messages as this race without any of
/// them giving up.
pub const MAX_CONFLICTS: u32 = 100;

/// The sagas' runtime, a shared dependency that every saga handler takes:
/// register it once, over the service's store.
///
/// ```
/// use std::sync::Arc;
/// use arch_events::saga::Sagas;
/// use arch_events::schedule::InMemoryScheduler;
/// use arch_events::Dependencies;
///
/// let scheduler = Arc::new(InMemoryScheduler::new());
/// let dependencies = Dependencies::new().shared(Sagas::new(scheduler.clone()));
/// # let _ = dependencies;
/// ```
#[derive(Clone)]
pub struct Sagas {
    store: Arc<dyn SagaStore>,
    settings: Arc<Settings>,
    /// The names of the sagas that start no new instance ([`Sagas::no_new`]).
    not_starting: Arc<[&'static str]>,
}

/// Values a saga's handlers read by type ([`SagaContext::setting`]).
pub(super) type Settings = HashMap<TypeId, Arc<dyn Any + Send + Sync>>;

impl std::fmt::Debug for Sagas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sagas").finish_non_exhaustive()
    }
}

/// Nothing was stored, and running this call again would store nothing
/// either (the saga completed, a timeout it does not wait for, a message
/// the saga declines, a start of a saga that starts no new instance): the
/// delivery it serves (a stored event's, for one
/// of its handlers) needs no record of its own; a crash before the event's
/// other handlers are through runs it again, to the same effect. The call
/// that finishes the delivery is left to the bus, which records that the
/// event is done.
fn unchanged(releaser: &EventReleaser) -> Result<(), SagaError> {
    if releaser
        .delivery()
        .is_some_and(|delivery| !delivery.settles())
    {
        releaser.delivery_recorded();
    }
    Ok(())
}

impl Sagas {
    /// The runtime over `store`.
    pub fn new(store: Arc<dyn SagaStore>) -> Self {
        Sagas {
            store,
            settings: Arc::default(),
            not_starting: Arc::new([]),
        }
    }

    /// The same runtime, giving `value` to every saga handler that asks
    /// for a `T` ([`SagaContext::setting`]): a configured delay, say. A
    /// second value of one type replaces the first.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use arch_events::saga::Sagas;
    /// use arch_events::schedule::InMemoryScheduler;
    ///
    /// /// How long an order waits for its payment.
    /// struct PaymentWindow(Duration);
    ///
    /// let sagas = Sagas::new(Arc::new(InMemoryScheduler::new()))
    ///     .with(PaymentWindow(Duration::from_secs(3600)));
    /// # let _ = sagas;
    /// ```
    pub fn with<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        let mut settings = (*self.settings).clone();
        settings.insert(TypeId::of::<T>(), Arc::new(value));
        self.settings = Arc::new(settings);
        self
    }

    /// The same runtime, starting no new instance of the saga `S`: for a
    /// deployment that turns the saga off. Every message of a `#[starts]`
    /// handler is dropped without reading the store (nothing stored, as
    /// when the saga declines it), also when an instance for it is
    /// running: finding out would take the read this saves. The instances
    /// already running hear their other messages and their timeouts as
    /// before, and so wind down to their end; one that waits for another
    /// starting message (a saga started by whichever of two messages
    /// comes first) waits for its timeout instead.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use arch_events::saga::{saga, SagaContext, Sagas};
    /// use arch_events::schedule::InMemoryScheduler;
    /// use arch_events::Event;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    /// #[event(serde)]
    /// struct Signed { account: String }
    ///
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Onboarding;
    ///
    /// #[saga(name = "onboarding")]
    /// impl Onboarding {
    ///     #[starts(by = account)]
    ///     fn signed(&mut self, _: &Signed, _: &mut SagaContext) {}
    /// }
    ///
    /// // No new onboarding in this deployment.
    /// let sagas = Sagas::new(Arc::new(InMemoryScheduler::new())).no_new::<Onboarding>();
    /// assert!(!sagas.starts("onboarding"));
    /// ```
    pub fn no_new<S: Saga>(mut self) -> Self {
        if self.starts(S::NAME) {
            let mut not_starting = self.not_starting.to_vec();
            not_starting.push(S::NAME);
            self.not_starting = not_starting.into();
        }
        self
    }

    /// Whether the saga named `saga` starts new instances (it does unless
    /// [`no_new`](Self::no_new) said otherwise).
    pub fn starts(&self, saga: &str) -> bool {
        self.not_starting.iter().all(|name| *name != saga)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SagaStore> {
        &self.store
    }

    /// Handles `message`, which correlates to the instance `id`, with
    /// `handler`; what `#[saga]` generates calls this.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub async fn handle<S, M, E>(
        &self,
        role: Role,
        message: &M,
        id: String,
        releaser: EventReleaser,
        flow: MessageContext,
        handler: fn(&mut S, &M, &mut SagaContext) -> Result<(), E>,
    ) -> Result<(), SagaError>
    where
        S: Saga,
        M: Message,
        E: Into<BoxError>,
    {
        let saga = S::NAME;
        let name = M::meta().name();
        if role == Role::Starts && !self.starts(saga) {
            // Dropped unread, also a start for a running instance (finding
            // out would take the read this saves; see `no_new`).
            tracing::debug!(saga, saga_id = %id, message = name, "the saga starts no new instance: dropped");
            return unchanged(&releaser);
        }
        for _ in 0..MAX_CONFLICTS {
            let (mut state, expected, mut timeouts) = match self.store.load(saga, &id).await? {
                Some(SagaRecord::Active {
                    state,
                    version,
                    timeouts,
                }) => {
                    let state: S =
                        serde_json::from_str(&state).map_err(|error| SagaError::Decode {
                            saga,
                            id: id.clone(),
                            // Permanent: the same row reads the same way next time.
                            error: Box::new(Permanent::new(error)),
                        })?;
                    (state, Some(version), timeouts)
                }
                Some(SagaRecord::Completed { .. }) => {
                    tracing::info!(
                        saga,
                        saga_id = %id,
                        message = name,
                        message_id = %flow.message_id(),
                        "a message arrived after its saga completed: ignored"
                    );
                    return unchanged(&releaser);
                }
                None => match role {
                    Role::Starts => (S::default(), None, Vec::new()),
                    Role::Timeout => {
                        tracing::info!(saga, saga_id = %id, message = name, "a timeout found no saga: ignored");
                        return unchanged(&releaser);
                    }
                    Role::Continues(NotFound::Ignore) => {
                        tracing::info!(saga, saga_id = %id, message = name, "no saga for this message: ignored (not_found = ignore)");
                        // Recorded as any handler's: a redelivery may find
                        // the saga started meanwhile.
                        return Ok(());
                    }
                    Role::Continues(NotFound::Error) => {
                        return Err(SagaError::NotFound {
                            saga,
                            id,
                            message: name,
                        });
                    }
                    Role::Continues(NotFound::DeadLetter) => {
                        // Permanent: never retried, dead-lettered at once.
                        return Err(SagaError::Handler {
                            saga,
                            error: Box::new(Permanent::new(SagaError::NotFound {
                                saga,
                                id,
                                message: name,
                            })),
                        });
                    }
                },
            };
            if role == Role::Timeout {
                let this = flow.message_id();
                let Some(at) = timeouts.iter().position(|waiting| *waiting == this) else {
                    tracing::info!(
                        saga,
                        saga_id = %id,
                        message = name,
                        message_id = %this,
                        "a timeout the saga does not wait for (cancelled, or sent by hand): ignored"
                    );
                    return unchanged(&releaser);
                };
                timeouts.remove(at);
            }
            let mut context = SagaContext::new(
                saga,
                id.clone(),
                self.store.now(),
                flow,
                self.settings.clone(),
            );
            handler(&mut state, message, &mut context).map_err(|error| SagaError::Handler {
                saga,
                error: error.into(),
            })?;
            if context.declined {
                tracing::debug!(saga, saga_id = %id, message = name, "declined: nothing stored");
                return unchanged(&releaser);
            }
            if let Some(error) = context.error.take() {
                return Err(error.into());
            }
            timeouts.retain(|waiting| !context.cancelled.contains(waiting));
            timeouts.extend(
                context
                    .scheduled
                    .iter()
                    .filter(|message| message.saga().is_some())
                    .map(|message| message.id()),
            );
            if context.completed {
                timeouts.clear();
            }
            let state = if context.completed {
                None
            } else {
                Some(
                    serde_json::to_string(&state).map_err(|error| SagaError::Encode {
                        saga,
                        error: error.into(),
                    })?,
                )
            };
            let change = SagaChange {
                saga,
                id: id.clone(),
                expected,
                state,
                timeouts,
                events: context.events,
                scheduled: context.scheduled,
                cancelled: context.cancelled,
            };
            match self.store.commit(change, &releaser, &flow).await {
                Ok(()) => return Ok(()),
                Err(SagaError::Conflict { .. }) => {
                    tracing::debug!(saga, saga_id = %id, message = name, "saga changed meanwhile: handled again on its fresh state");
                }
                Err(error) => return Err(error),
            }
        }
        Err(SagaError::Contended {
            saga,
            id,
            attempts: MAX_CONFLICTS,
        })
    }
}
