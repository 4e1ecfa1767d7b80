//! Sagas: a business process that spans several messages and time, with
//! its state kept between them.
//!
//! A saga is a type (its state, `Default` + serde) and an `impl` block
//! under `#[saga]` whose methods handle messages:
//!
//! - `#[starts(by = field)]`: the message starts an instance (or, if one
//!   with that id runs already, continues it: two racing starts make one
//!   saga);
//! - `#[handles(by = field, not_found = ignore | error | dead_letter)]`:
//!   the message continues an instance; what a message that finds none
//!   does is declared, never silently dropped by default;
//! - `#[timeout(by = field)]`: a message the saga sends itself with
//!   [`SagaContext::request_timeout`]; one that finds no saga is ignored.
//!
//! `by` names the message's field that holds the instance's id (compared
//! as text: give every handler's field the same type): a handler without
//! one does not compile. The saga's `name` is the key of its stored
//! instances: it is required, and must not change. An instance's id is
//! used once: a message for a completed one is ignored, a starting one
//! included. Each may declare the events it publishes
//! with `releases(..)`, as a `#[handler]` does. A message that arrives after its saga
//! completed ([`SagaContext::mark_completed`]) is logged and ignored.
//!
//! Each method takes `&mut self`, the message by reference and
//! `&mut SagaContext`, decides, and returns `Result<(), E>` (or nothing).
//! The runtime ([`Sagas`], a shared dependency over a [`SagaStore`]) then
//! commits at once the new state, the events it publishes, the messages
//! it sends and the timeouts it requests; on a conflict with another
//! message it handles the message again on the fresh state.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use arch_events::saga::{saga, SagaContext, SagaError, Sagas};
//! use arch_events::schedule::{InMemoryScheduler, VirtualClock};
//! use arch_events::{Bus, Command, Dependencies, Event};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(name = "shop.ordered", serde)]
//! struct Ordered { order: u32 }
//!
//! #[derive(Debug, Serialize, Deserialize, Command)]
//! #[command(name = "shop.pay", serde, error = SagaError)]
//! struct Pay { order: u32 }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(name = "shop.payment_overdue", serde)]
//! struct PaymentOverdue { order: u32 }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[event(name = "shop.order_cancelled", serde)]
//! struct OrderCancelled { order: u32 }
//!
//! /// Waits for an order's payment, and cancels the order after a day.
//! #[derive(Debug, Default, Serialize, Deserialize)]
//! struct AwaitPayment { order: u32 }
//!
//! #[saga(name = "shop.await_payment")]
//! impl AwaitPayment {
//!     #[starts(by = order)]
//!     fn ordered(&mut self, event: &Ordered, saga: &mut SagaContext) {
//!         self.order = event.order;
//!         saga.request_timeout(Duration::from_secs(86_400), &PaymentOverdue { order: event.order });
//!     }
//!
//!     #[handles(by = order, not_found = error)]
//!     fn paid(&mut self, _: &Pay, saga: &mut SagaContext) {
//!         saga.mark_completed(); // the timeout is cancelled
//!     }
//!
//!     #[timeout(by = order, releases(OrderCancelled))]
//!     fn overdue(&mut self, _: &PaymentOverdue, saga: &mut SagaContext) {
//!         saga.publish(OrderCancelled { order: self.order });
//!         saga.mark_completed();
//!     }
//! }
//! # #[arch_events::handler]
//! # fn cancelled(_: &OrderCancelled) {}
//!
//! let clock = VirtualClock::new();
//! let scheduler = Arc::new(InMemoryScheduler::with_clock(clock.clone()));
//! let bus = Bus::builder()
//!     .dependencies(Dependencies::new().shared(Sagas::new(scheduler.clone())))
//!     .build()?;
//!
//! bus.publish(Ordered { order: 1 }).await?;
//! bus.publish(Ordered { order: 2 }).await?;
//! bus.dispatch(Pay { order: 1 }).await?;
//! // A day later, order 2 (never paid) is cancelled; order 1's timeout is gone.
//! let fired = clock.advance_and_fire(Duration::from_secs(86_400), &*scheduler, &bus).await?;
//! assert_eq!(fired, 1);
//! # Ok(())
//! # }
//! ```

mod context;
mod runtime;
mod store;

pub use crate::saga_role::{NotFound, Role};
pub use arch_events_macros::saga;
pub use context::SagaContext;
pub use runtime::{Sagas, MAX_CONFLICTS};
pub use store::{SagaChange, SagaError, SagaRecord, SagaStore};

use crate::message::{Location, MessageMeta};

/// A saga's state type; implemented by `#[saga]`.
pub trait Saga: serde::Serialize + serde::de::DeserializeOwned + Default + Send + 'static {
    /// The saga's stable name: the key of its stored instances.
    const NAME: &'static str;

    /// Its handlers, as `#[saga]` registered them.
    #[doc(hidden)]
    fn registration() -> &'static SagaRegistration;
}

/// A saga, as `#[saga]` registers it: what describes it in
/// [`Bus::describe`](crate::Bus::describe).
#[doc(hidden)]
pub struct SagaRegistration {
    /// The saga's name.
    pub name: &'static str,
    /// Its type's path.
    pub rust_path: &'static str,
    /// Where the `#[saga]` is.
    pub location: Location,
    /// Its handlers.
    pub steps: &'static [SagaStep],
}

/// One handler of a saga.
#[doc(hidden)]
pub struct SagaStep {
    /// The generated handler.
    pub handler: fn() -> &'static crate::registry::HandlerRegistration,
    /// The message it takes.
    pub message: fn() -> &'static MessageMeta,
    /// What the message does to the saga.
    pub role: Role,
}

/// A saga, as submitted by `#[saga]`.
#[doc(hidden)]
pub struct SagaEntry(pub &'static SagaRegistration);
inventory::collect!(SagaEntry);

/// Every linked saga.
pub(crate) fn registered() -> impl Iterator<Item = &'static SagaRegistration> {
    inventory::iter::<SagaEntry>
        .into_iter()
        .map(|entry| entry.0)
}

/// The sagas with a handler among `handlers` (the bus's), each once.
fn in_bus(
    handlers: &[&'static crate::registry::HandlerRegistration],
) -> Vec<&'static SagaRegistration> {
    let mut sagas: Vec<&'static SagaRegistration> = registered()
        .filter(|saga| {
            saga.steps.iter().any(|step| {
                let registration = (step.handler)();
                handlers
                    .iter()
                    .any(|handler| std::ptr::eq(*handler, registration))
            })
        })
        .collect();
    sagas.sort_by_key(|saga| (saga.name, saga.location));
    sagas.dedup_by(|a, b| std::ptr::eq(*a, *b));
    sagas
}

/// What the bus's build finds wrong with the sagas among its `handlers`:
/// two saga types with one name (their instances would share rows), a
/// timeout that cannot be scheduled (its type has no JSON codec).
pub(crate) fn problems(
    handlers: &[&'static crate::registry::HandlerRegistration],
) -> Vec<crate::error::Problem> {
    use crate::error::Problem;

    let sagas = in_bus(handlers);
    let mut problems = Vec::new();
    for (i, saga) in sagas.iter().enumerate() {
        let others: Vec<String> = sagas
            .iter()
            .enumerate()
            .filter(|(j, other)| *j != i && other.name == saga.name)
            .map(|(_, other)| format!("`{}` ({})", other.rust_path, other.location))
            .collect();
        if !others.is_empty() {
            problems.push(Problem::Saga {
                saga: saga.name,
                location: saga.location,
                reason: format!(
                    "`{}` shares its name with {}: their instances would mix; give each a \
                     distinct `#[saga(name = \"...\")]`",
                    saga.rust_path,
                    others.join(", ")
                ),
            });
        }
        let mut taken: Vec<&'static MessageMeta> = Vec::new();
        for step in saga.steps {
            let message = (step.message)();
            if taken.iter().any(|seen| std::ptr::eq(*seen, message)) {
                problems.push(Problem::Saga {
                    saga: saga.name,
                    location: saga.location,
                    reason: format!(
                        "two of its handlers take `{}`: a message has one role in a saga; \
                         handle it in one method",
                        message.name()
                    ),
                });
            }
            taken.push(message);
        }
        for step in saga.steps.iter().filter(|step| step.role == Role::Timeout) {
            let message = (step.message)();
            if !crate::schedule::schedulable(message) {
                problems.push(Problem::Saga {
                    saga: saga.name,
                    location: saga.location,
                    reason: format!(
                        "its timeout `{}` ({}) cannot be scheduled: it is kept as JSON until \
                         due; derive it with `#[{}(serde)]` and serde's `Serialize` and \
                         `Deserialize`",
                        message.name(),
                        message.location(),
                        message.kind()
                    ),
                });
            }
        }
    }
    problems
}
