//! Given / when / then for aggregates.

use std::fmt::Debug;

use crate::events::{Aggregate, PendingEvent};
use crate::message::Event;

/// Starts a scenario: given this aggregate (in the state the test built;
/// the events raised while building it are forgotten).
///
/// ```
/// use arch_events::testing::given;
/// use arch_events::{Aggregate, Event, EventRecorder};
///
/// #[derive(Debug, Clone, PartialEq, Event)]
/// struct Withdrawn { amount: u32 }
///
/// #[derive(Debug, PartialEq)]
/// struct Overdrawn;
///
/// #[derive(Default)]
/// struct Account { balance: u32, events: EventRecorder }
///
/// impl Aggregate for Account {
///     fn events(&mut self) -> &mut EventRecorder { &mut self.events }
/// }
///
/// impl Account {
///     fn withdraw(&mut self, amount: u32) -> Result<(), Overdrawn> {
///         self.balance = self.balance.checked_sub(amount).ok_or(Overdrawn)?;
///         self.events.record(Withdrawn { amount });
///         Ok(())
///     }
/// }
///
/// given(Account { balance: 50, ..Default::default() })
///     .when(|account| account.withdraw(20))
///     .then_ok()
///     .then_events(&[Withdrawn { amount: 20 }])
///     .then(|account, _| assert_eq!(account.balance, 30));
///
/// given(Account { balance: 10, ..Default::default() })
///     .when(|account| account.withdraw(20))
///     .then_error(&Overdrawn)
///     .then_no_events();
/// ```
pub fn given<A: Aggregate>(mut aggregate: A) -> Given<A> {
    drop(aggregate.events().take());
    Given { aggregate }
}

/// An aggregate in a known state; see [`given`].
#[derive(Debug)]
pub struct Given<A> {
    aggregate: A,
}

impl<A: Aggregate> Given<A> {
    /// Runs the action under test on the aggregate.
    pub fn when<R>(mut self, act: impl FnOnce(&mut A) -> R) -> Then<A, R> {
        let result = act(&mut self.aggregate);
        let events = self.aggregate.events().take();
        Then {
            aggregate: self.aggregate,
            result,
            events,
        }
    }
}

/// What the action did: its result and the events it raised. Each `then_*`
/// asserts (panicking with what was seen) and hands the scenario on.
#[derive(Debug)]
pub struct Then<A, R> {
    aggregate: A,
    result: R,
    events: Vec<PendingEvent>,
}

impl<A, R> Then<A, R> {
    /// Asserts that the raised events are exactly `expected`, in order.
    #[track_caller]
    pub fn then_events<E: Event + PartialEq>(self, expected: &[E]) -> Self {
        let seen: Vec<Option<&E>> = self.events.iter().map(PendingEvent::downcast_ref).collect();
        let matches = seen.len() == expected.len()
            && seen
                .iter()
                .zip(expected)
                .all(|(seen, expected)| *seen == Some(expected));
        assert!(
            matches,
            "expected the events {expected:?}, the action raised {:?}",
            self.events
        );
        self
    }

    /// Asserts that the raised events have these names, in order (for events
    /// of several types).
    #[track_caller]
    pub fn then_event_names(self, expected: &[&str]) -> Self {
        let names: Vec<&str> = self.events.iter().map(PendingEvent::name).collect();
        assert_eq!(names, expected, "the names of the raised events");
        self
    }

    /// Asserts that the action raised no event.
    #[track_caller]
    pub fn then_no_events(self) -> Self {
        assert!(
            self.events.is_empty(),
            "expected no event, the action raised {:?}",
            self.events
        );
        self
    }

    /// Runs any other check on the aggregate and the result.
    pub fn then(self, check: impl FnOnce(&A, &R)) -> Self {
        check(&self.aggregate, &self.result);
        self
    }

    /// The raised events.
    pub fn events(&self) -> &[PendingEvent] {
        &self.events
    }

    /// The action's result.
    pub fn result(&self) -> &R {
        &self.result
    }

    /// The aggregate after the action.
    pub fn aggregate(&self) -> &A {
        &self.aggregate
    }
}

impl<A, T: Debug, Er: Debug + PartialEq> Then<A, Result<T, Er>> {
    /// Asserts that the action returned `Ok`.
    #[track_caller]
    pub fn then_ok(self) -> Self {
        assert!(
            self.result.is_ok(),
            "expected Ok, the action returned {:?}",
            self.result
        );
        self
    }

    /// Asserts that the action returned this error.
    #[track_caller]
    pub fn then_error(self, expected: &Er) -> Self {
        match &self.result {
            Err(error) if error == expected => self,
            other => panic!("expected the error {expected:?}, the action returned {other:?}"),
        }
    }
}
