//! A dispatch whose caller stopped waiting: what is left of its cascade is
//! taken out of the dropped future and run to its end on the bus's
//! [`Spawn`](crate::Spawn).

use tracing::Instrument;

use super::cascade::Run;
use super::Bus;

/// A run of an awaited dispatch's cascade. Dropped before
/// [`done`](Self::done) (the dispatch's future was dropped at an `.await`),
/// it hands the rest of the run to the bus's spawner.
pub(super) struct Detachable<'b> {
    bus: &'b Bus,
    run: Run,
    span: tracing::Span,
    done: bool,
}

impl<'b> Detachable<'b> {
    pub(super) fn new(bus: &'b Bus, run: Run, span: tracing::Span) -> Self {
        Detachable {
            bus,
            run,
            span,
            done: false,
        }
    }

    /// The run, to drive.
    pub(super) fn run(&mut self) -> &mut Run {
        &mut self.run
    }

    /// The run ended (to its end, or stopped at the cascade bound): nothing
    /// goes on after this guard is dropped.
    pub(super) fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Detachable<'_> {
    fn drop(&mut self) {
        if self.done || self.run.is_finished() {
            return;
        }
        let empty = Run::new(super::cascade::Cascade::new(
            self.run.cascade.origin(),
            1,
            0,
        ));
        let run = std::mem::replace(&mut self.run, empty);
        self.bus.detach(run, self.span.clone());
    }
}

/// The in-flight count of a detached run, held by its task.
struct DetachedInFlight {
    bus: Bus,
    shard: usize,
}

impl Drop for DetachedInFlight {
    fn drop(&mut self) {
        self.bus.inner.lifecycle.leave_detached(self.shard);
    }
}

impl Bus {
    /// Runs the rest of `run` on the spawner, counted in flight until it
    /// ends (so that a graceful shutdown waits for it).
    fn detach(&self, mut run: Run, span: tracing::Span) {
        let shard = self.inner.lifecycle.enter_detached();
        let in_flight = DetachedInFlight {
            bus: self.clone(),
            shard,
        };
        let queued = run.cascade.queued();
        tracing::info!(
            parent: &span,
            queued,
            "the caller stopped waiting: the rest of the dispatch goes on in the background"
        );
        let task = async move {
            let bus = in_flight.bus.clone();
            if let Err(error) = bus.run_queue(&mut run).await {
                tracing::error!(%error, "the rest of a dispatch stopped");
            }
            drop(in_flight);
        };
        self.inner.spawner.spawn(Box::pin(task.instrument(span)));
    }
}
