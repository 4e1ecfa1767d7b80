//! Graceful shutdown: closing the bus to new dispatches and waiting for the
//! ones in flight (with all of their events) to finish.
//!
//! Counting blocking dispatches in flight must not cost the hot path an
//! atomic read-modify-write (a locked instruction costs as much as a whole
//! dispatch). So each thread owns one counter slot of each bus, which only it
//! writes, with plain stores; shutdown reads them all. Threads beyond
//! [`SLOTS`] at once share one more slot, updated with read-modify-writes.
//! An awaited dispatch may end on another thread than it started on (its
//! task moved), so it counts itself on [`SHARDS`] shared counters with
//! read-modify-writes instead.
//!
//! A plain store can reach other cores a moment after the thread went on to
//! read the `closed` flag, so [`Lifecycle::wait_idle`] only trusts "nothing
//! in flight" once it has seen it twice, a millisecond apart: far longer
//! than any store takes to become visible.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counter slots of a bus, one per thread dispatching at once.
const SLOTS: usize = 128;

/// A counter on its own cache line, so that two threads never write one line.
#[repr(align(64))]
#[derive(Default)]
struct Slot(AtomicUsize);

/// Shared counters of awaited dispatches.
const SHARDS: usize = 8;

pub(crate) struct Lifecycle {
    closed: AtomicBool,
    slots: Box<[Slot]>,
    /// Shared by threads whose index is `SLOTS` or more.
    overflow: Slot,
    /// Awaited dispatches, counted by the thread they started on.
    shards: [Slot; SHARDS],
}

/// Thread indices in use, and those freed by threads that ended.
static INDICES: Mutex<(usize, Vec<usize>)> = Mutex::new((0, Vec::new()));

/// Gives this thread's index back when the thread ends.
struct ThreadIndex(usize);

impl Drop for ThreadIndex {
    fn drop(&mut self) {
        let mut indices = INDICES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        indices.1.push(self.0);
    }
}

fn take_index() -> ThreadIndex {
    let mut indices = INDICES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match indices.1.pop() {
        Some(index) => ThreadIndex(index),
        None => {
            indices.0 += 1;
            ThreadIndex(indices.0 - 1)
        }
    }
}

thread_local! {
    /// This thread's index: its slot in every bus. Unique among the threads
    /// alive; reused after a thread ends (its counts are back to zero then,
    /// as every dispatch it entered has left).
    static INDEX: ThreadIndex = take_index();
    /// A copy of the index, readable without running the initializer check
    /// of `INDEX` again; `usize::MAX` until first set.
    static CACHED: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn thread_index() -> usize {
    let cached = CACHED.with(Cell::get);
    if cached != usize::MAX {
        return cached;
    }
    first_index()
}

#[cold]
fn first_index() -> usize {
    // During thread teardown `INDEX` may be gone: use the overflow slot.
    let index = INDEX.try_with(|index| index.0).unwrap_or(usize::MAX - 1);
    CACHED.with(|cached| cached.set(index));
    index
}

/// One dispatch in flight; counted until dropped.
pub(crate) struct InFlight<'a> {
    counter: &'a AtomicUsize,
    owned: bool,
}

impl Drop for InFlight<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.owned {
            let now = self.counter.load(Ordering::Relaxed);
            self.counter.store(now.wrapping_sub(1), Ordering::Release);
        } else {
            self.counter.fetch_sub(1, Ordering::Release);
        }
    }
}

/// The bus was closed: the dispatch was not started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Closed;

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            closed: AtomicBool::new(false),
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            overflow: Slot::default(),
            shards: Default::default(),
        }
    }
}

impl Lifecycle {
    /// Counts an awaited dispatch in, unless the bus is closed; the guard may
    /// be dropped on any thread.
    #[inline]
    pub(crate) fn enter(&self) -> Result<InFlight<'_>, Closed> {
        let shard = &self.shards[thread_index() % SHARDS].0;
        shard.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight {
            counter: shard,
            owned: false,
        };
        if self.closed.load(Ordering::SeqCst) {
            return Err(Closed);
        }
        Ok(guard)
    }

    /// Counts a blocking dispatch in, unless the bus is closed; the guard
    /// must be dropped on this thread (it is: the dispatch runs to its end
    /// here).
    #[inline]
    pub(crate) fn enter_blocking(&self) -> Result<InFlight<'_>, Closed> {
        let guard = match self.slots.get(thread_index()) {
            // Only this thread writes its slot: a plain store suffices.
            Some(slot) => {
                let now = slot.0.load(Ordering::Relaxed);
                slot.0.store(now + 1, Ordering::Relaxed);
                InFlight {
                    counter: &slot.0,
                    owned: true,
                }
            }
            None => {
                self.overflow.0.fetch_add(1, Ordering::SeqCst);
                InFlight {
                    counter: &self.overflow.0,
                    owned: false,
                }
            }
        };
        if self.closed.load(Ordering::Acquire) {
            return Err(Closed);
        }
        Ok(guard)
    }

    /// Counts in the rest of a dispatch that goes on detached from its
    /// caller, whether or not the bus is closed (it was in flight already);
    /// returns the counter to [`leave_detached`](Self::leave_detached).
    pub(crate) fn enter_detached(&self) -> usize {
        let shard = thread_index() % SHARDS;
        self.shards[shard].0.fetch_add(1, Ordering::SeqCst);
        shard
    }

    /// Counts out what [`enter_detached`](Self::enter_detached) counted in.
    pub(crate) fn leave_detached(&self, shard: usize) {
        if let Some(counter) = self.shards.get(shard) {
            counter.0.fetch_sub(1, Ordering::Release);
        }
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.slots
            .iter()
            .chain(std::iter::once(&self.overflow))
            .chain(self.shards.iter())
            .map(|slot| slot.0.load(Ordering::Acquire))
            .fold(0usize, usize::wrapping_add)
    }

    /// Waits, without blocking the thread, until nothing is in flight (seen
    /// twice, a millisecond apart) or the grace period is over; returns how
    /// many dispatches were still running.
    pub(crate) async fn wait_idle(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let mut pause = Duration::from_micros(200);
        let mut idle_since: Option<Instant> = None;
        loop {
            let running = self.in_flight();
            let now = Instant::now();
            if running == 0 {
                match idle_since {
                    Some(since) if now - since >= Duration::from_millis(1) => return 0,
                    Some(_) => {}
                    None => idle_since = Some(now),
                }
            } else {
                idle_since = None;
            }
            if now >= deadline {
                return running;
            }
            crate::retry::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}
