//! Graceful shutdown: closing the bus to new dispatches and waiting for the
//! ones in flight (with all of their events) to finish.
//!
//! Dispatches in flight are counted on a few cache-line-sized counters, one
//! picked per thread, so that threads dispatching at once do not fight over
//! one counter.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SHARDS: usize = 8;

#[repr(align(64))]
#[derive(Default)]
struct Shard(AtomicUsize);

#[derive(Default)]
pub(crate) struct Lifecycle {
    closed: AtomicBool,
    in_flight: [Shard; SHARDS],
}

thread_local! {
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
}

/// One dispatch in flight; counted until dropped.
pub(crate) struct InFlight<'a> {
    shard: &'a AtomicUsize,
}

impl Drop for InFlight<'_> {
    #[inline]
    fn drop(&mut self) {
        self.shard.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The bus was closed: the dispatch was not started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Closed;

impl Lifecycle {
    /// Counts a dispatch in, unless the bus is closed.
    #[inline]
    pub(crate) fn enter(&self) -> Result<InFlight<'_>, Closed> {
        let shard = &self.in_flight[SHARD.with(|s| *s)].0;
        // Count first, then look: with both sides sequentially consistent,
        // either `wait_idle` sees this dispatch or this dispatch sees `closed`.
        shard.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight { shard };
        if self.closed.load(Ordering::SeqCst) {
            return Err(Closed);
        }
        Ok(guard)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
            .iter()
            .map(|shard| shard.0.load(Ordering::SeqCst))
            .sum()
    }

    /// Waits, without blocking the thread, until nothing is in flight or the
    /// grace period is over; returns how many dispatches were still running.
    pub(crate) async fn wait_idle(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let mut pause = Duration::from_micros(200);
        loop {
            let running = self.in_flight();
            let now = Instant::now();
            if running == 0 || now >= deadline {
                return running;
            }
            crate::retry::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}
