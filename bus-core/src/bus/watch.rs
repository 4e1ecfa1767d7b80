//! What the bus checks when a handler call ends well: the events it
//! released against those it declared, and the units of work it dropped
//! without committing. Neither stops anything (the events were committed:
//! they run), both are logged, and a test's recorder fails on them.
//!
//! The checks cost nothing for a call that released nothing and asked for
//! no releaser: they read the releaser's state, which only such calls have.
//! What was released is checked against the declaration in debug builds
//! and whenever a test's recorder is attached; a release build without a
//! recorder skips that look at every event.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::events::{Closed, PendingEvent, Released, Uncommitted};
use crate::inject::Scope;
use crate::registry::HandlerRegistration;
use crate::testing::{Misuse, RecorderInner};

/// The test recorder, if one is attached, and the misuses logged so far.
#[derive(Default)]
pub(crate) struct Watch {
    /// A test's recorder, once attached.
    pub(crate) tap: OnceLock<Arc<RecorderInner>>,
    /// `(handler, event)` pairs already warned about: an undeclared release
    /// is logged once per pair, not once per call.
    warned: Mutex<HashSet<(usize, usize)>>,
}

impl Watch {
    /// What a handler call that succeeded released, for the queue: checked
    /// against what it declared, and against what its units of work
    /// dropped.
    #[inline]
    pub(crate) fn accept(
        &self,
        registration: &'static HandlerRegistration,
        mut scope: Scope,
    ) -> Released {
        self.accept_closed(registration, scope.finish_checked())
    }

    /// [`accept`](Self::accept), for a call whose scope was closed already
    /// (a layered call keeps what its last successful run left, until the
    /// pipeline's outcome is known).
    #[inline]
    pub(crate) fn accept_closed(
        &self,
        registration: &'static HandlerRegistration,
        closed: Closed,
    ) -> Released {
        let uncommitted = closed.uncommitted();
        if !uncommitted.is_empty() {
            self.uncommitted(registration, uncommitted);
        }
        // Checked in debug builds, and whenever a test's recorder is
        // attached: a release build without one skips it (it costs a look
        // at every released event).
        if !closed.events.is_empty() && (cfg!(debug_assertions) || self.tap.get().is_some()) {
            self.check_declared(registration, &closed.events);
        }
        closed.events
    }

    #[inline]
    fn check_declared(&self, registration: &'static HandlerRegistration, events: &[PendingEvent]) {
        let declared = registration.declared();
        for (index, event) in events.iter().enumerate() {
            let meta = event.meta();
            if !declared.iter().any(|d| std::ptr::eq(*d, meta)) {
                self.undeclared(registration, meta, events[..index].iter());
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn undeclared<'a>(
        &self,
        registration: &'static HandlerRegistration,
        meta: &'static crate::message::MessageMeta,
        mut earlier: impl Iterator<Item = &'a PendingEvent>,
    ) {
        // Once per call and event type.
        if earlier.any(|e| std::ptr::eq(e.meta(), meta)) {
            return;
        }
        let key = (
            registration as *const HandlerRegistration as usize,
            meta as *const crate::message::MessageMeta as usize,
        );
        let first = self
            .warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key);
        if first {
            tracing::warn!(
                handler = registration.name(),
                location = %registration.location(),
                event = meta.name(),
                "handler released an event it does not declare: `describe()` and its diagram \
                 leave this edge out; add the event to `#[handler(releases(...))]` \
                 (logged once per handler and event)"
            );
        }
        if let Some(tap) = self.tap.get() {
            tap.misused(Misuse::UndeclaredRelease {
                handler: registration.name(),
                event: meta.name(),
            });
        }
    }

    #[cold]
    #[inline(never)]
    fn uncommitted(&self, registration: &'static HandlerRegistration, dropped: Uncommitted) {
        tracing::warn!(
            handler = registration.name(),
            location = %registration.location(),
            aggregates = dropped.aggregates,
            events = dropped.events,
            "handler returned Ok, but a unit of work of its call was dropped without commit \
             while it held changes: nothing of them was stored or released; commit it, roll \
             it back (a dry run), or return an error"
        );
        if let Some(tap) = self.tap.get() {
            tap.misused(Misuse::Uncommitted {
                handler: registration.name(),
                dropped,
            });
        }
    }
}
