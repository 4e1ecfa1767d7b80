//! Running the cascade of an awaited dispatch so that the caller's drop
//! cannot cut it short.
//!
//! - With a spawner named at build ([`BusBuilder::spawner`](crate::BusBuilder::spawner)),
//!   the cascade runs on a task of its own from the start, and the caller
//!   awaits its end: dropping the caller's future interrupts nothing.
//! - Without one, the cascade runs inside the caller's future (no task, no
//!   allocation); if that future is dropped at an `.await`, what is left of
//!   the run (the interrupted handler called again from the start, then the
//!   rest) is handed to the default [`Spawn`](crate::Spawn).

use tracing::Instrument;

use super::cascade::{Cascade, Run};
use super::Bus;
use crate::error::CascadeLimitError;

/// Why a run of a cascade ended before its end.
#[derive(Debug)]
pub(super) enum Stopped {
    /// Its events kept raising events past the bound.
    Limit(CascadeLimitError),
    /// The task running it was dropped before its end (its runtime shut
    /// down): the events left are lost, but for stored ones, which a
    /// store's recovery delivers.
    Dropped,
}

impl Stopped {
    /// The text of a run that was dropped, for errors.
    pub(super) const DROPPED: &'static str =
        "the task running the rest of the dispatch was dropped before its end (its runtime shut down)";
}

impl<E> From<Stopped> for crate::error::DispatchError<E> {
    fn from(stopped: Stopped) -> Self {
        match stopped {
            Stopped::Limit(error) => error.into(),
            Stopped::Dropped => {
                crate::error::DispatchError::Internal(Box::new(crate::error::InternalError {
                    handler: "(the bus)",
                    error: Stopped::DROPPED.into(),
                }))
            }
        }
    }
}

impl Bus {
    /// Runs `run` to its end, whatever happens to the caller: on a task of
    /// the named spawner, or in this future, handed to the default spawner
    /// if it is dropped.
    pub(super) async fn run_to_end(&self, run: Run, span: tracing::Span) -> Result<(), Stopped> {
        let Some(spawner) = &self.inner.spawner else {
            let mut run = Detachable::new(self, run, span.clone());
            let ran = self.run_queue(run.run()).instrument(span).await;
            run.done();
            return ran.map_err(Stopped::Limit);
        };
        let (sender, receiver) = futures_channel::oneshot::channel();
        let in_flight = DetachedInFlight::enter(self);
        let task = async move {
            let mut run = run;
            // Its handlers are an awaited dispatch's: a blocking call in one
            // is refused, on whatever executor the spawner uses.
            let ran = crate::blocking::driving(in_flight.bus.run_queue(&mut run)).await;
            drop(in_flight);
            // The caller may have stopped waiting: the run ended regardless.
            let _ = sender.send(ran);
        };
        spawner.spawn(Box::pin(task.instrument(span)));
        match receiver.await {
            Ok(ran) => ran.map_err(Stopped::Limit),
            Err(futures_channel::oneshot::Canceled) => {
                tracing::error!("{}", Stopped::DROPPED);
                Err(Stopped::Dropped)
            }
        }
    }
}

/// A run of an awaited dispatch's cascade in the caller's future. Dropped
/// before [`done`](Self::done) (the future was dropped at an `.await`), it
/// hands the rest of the run to the default spawner.
struct Detachable<'b> {
    bus: &'b Bus,
    run: Run,
    span: tracing::Span,
    done: bool,
}

impl<'b> Detachable<'b> {
    fn new(bus: &'b Bus, run: Run, span: tracing::Span) -> Self {
        Detachable {
            bus,
            run,
            span,
            done: false,
        }
    }

    /// The run, to drive.
    fn run(&mut self) -> &mut Run {
        &mut self.run
    }

    /// The run ended (to its end, or stopped at the cascade bound): nothing
    /// goes on after this guard is dropped.
    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Detachable<'_> {
    fn drop(&mut self) {
        if self.done || self.run.is_finished() {
            return;
        }
        let empty = Run::new(Cascade::new(self.run.cascade.origin(), 1, 0));
        let run = std::mem::replace(&mut self.run, empty);
        self.bus.detach(run, self.span.clone());
    }
}

/// The in-flight count of a run on a task of its own, held by the task.
struct DetachedInFlight {
    bus: Bus,
}

impl DetachedInFlight {
    /// Counted in now, whether or not the bus is closed (the dispatch it
    /// belongs to was in flight already, and is counted out only after
    /// this).
    fn enter(bus: &Bus) -> Self {
        bus.inner.lifecycle.enter_detached();
        DetachedInFlight { bus: bus.clone() }
    }
}

impl Drop for DetachedInFlight {
    fn drop(&mut self) {
        self.bus.inner.lifecycle.leave_detached();
    }
}

impl Bus {
    /// Runs the rest of a cut-short `run` on the default spawner, counted in
    /// flight until it ends (so that a graceful shutdown waits for it).
    pub(super) fn detach(&self, mut run: Run, span: tracing::Span) {
        let in_flight = DetachedInFlight::enter(self);
        tracing::info!(
            parent: &span,
            queued = run.cascade.queued(),
            "the caller stopped waiting: the rest of the dispatch goes on in the background \
             (the handler it was in runs again)"
        );
        let task = async move {
            if let Err(error) = crate::blocking::driving(in_flight.bus.run_queue(&mut run)).await {
                tracing::error!(%error, "the rest of a dispatch stopped");
            }
            drop(in_flight);
        };
        crate::spawn::Spawn::spawn(&crate::spawn::DefaultSpawn, Box::pin(task.instrument(span)));
    }
}
