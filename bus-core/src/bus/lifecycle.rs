//! Graceful shutdown: closing the bus to new dispatches and waiting for the
//! ones in flight (with all of their events) to finish.
//!
//! # The counters
//!
//! Counting blocking dispatches in flight must not cost the hot path an
//! atomic read-modify-write (a locked instruction costs as much as a whole
//! dispatch), nor even a plain one: an increment and a decrement of one
//! memory word by every dispatch chain each dispatch to the one before it
//! through that word, some ten cycles a dispatch. So each thread owns one
//! slot of each bus, which only it writes, with plain stores of constants:
//! `1` while a blocking dispatch of that bus runs on the thread, `0` once it
//! is over. A blocking dispatch made by a handler of another one on the
//! same thread finds the slot set and leaves it be: the outer dispatch ends
//! after it, on this thread, and clears the slot then (so it counts as one).
//! Shutdown reads every slot. Threads beyond [`SLOTS`] at once share one
//! more slot, a counter updated with read-modify-writes.
//! An awaited dispatch may end on another thread than it started on (its
//! task moved), so it counts itself on [`SHARDS`] shared counters with
//! read-modify-writes instead. The rest of a dispatch that goes on detached
//! from its caller counts itself on one more counter, `detached`, before
//! the dispatch it comes from counts itself out.
//!
//! # Why a closed bus never misses a dispatch in flight
//!
//! A dispatch *enters* by setting its slot or adding one to its counter
//! (store `S`), then reading `closed` (load `L`); it runs only if `L` read
//! `false`. (A blocking dispatch whose slot an outer one set has no `S` of
//! its own: the outer one's `S` comes before its `L` on its thread, and
//! the argument below holds with that `S`.) Closing
//! stores `closed = true` (`W`), then takes the heavy side of the
//! asymmetric barrier (`B`, see `barrier.rs`), then reads the counters
//! (`R`). Between `S` and `L` a dispatch takes the light side.
//!
//! 1. *Every dispatch that runs is seen, or no dispatch runs after the
//!    close.* This is Dekker's pattern with a full barrier on both sides:
//!    the light side is a full barrier whenever `B` may be taken (it is a
//!    `fence(SeqCst)`, or `membarrier` makes it one on every thread of the
//!    process). So either `L` comes after `B` and reads `true` (the dispatch
//!    is refused), or `S` is visible when `B` returns and `R` reads it (or
//!    a later value: the dispatch's own clear or decrement, or the covering
//!    dispatch's clear, once it is over).
//! 2. *A dispatch is counted from its entry to its end, on one counter or
//!    slot (its own, or the slot of the dispatch covering it, which ends
//!    after it)*, but for the rest of a dispatch that goes on detached:
//!    `detached`
//!    is incremented before the shard it comes from is decremented, and `R`
//!    reads `detached` after every other counter. A read of the shard that
//!    finds the decrement acquires it (the decrement is a release), and with
//!    it the increment of `detached` sequenced before it; so the later read
//!    of `detached` finds that increment (or the end of the detached run).
//! 3. *A dispatch made by a handler* enters while the dispatch running that
//!    handler is still counted.
//!
//! A blocking dispatch's guard ([`BlockingInFlight`]) is not `Send`: it is
//! dropped on the thread that made it, and a dispatch covered by another is
//! a local of a call made inside that one, so it is dropped first, unwinding
//! included. (Nested blocking dispatches on one thread count as one.)
//!
//! So when one reading of every counter after the close sums to zero, no
//! dispatch is in flight and none will start: [`Lifecycle::wait_idle`]
//! trusts the first such reading, and nothing rests on a timing. A decrement
//! is a release and `R` an acquire: what the dispatches did happens before
//! what the closer does next.
//!
//! Without a close ([`Bus::settled`](crate::Bus::settled)), the same
//! reading after `B` sees every dispatch that entered before `B`.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::barrier;
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
    /// The rest of awaited dispatches, detached from their callers; read
    /// last (see the module's docs).
    detached: Slot,
}

/// Thread indices in use, and those freed by threads that ended.
static INDICES: Mutex<(usize, Vec<usize>)> = Mutex::new((0, Vec::new()));

/// Gives this thread's index back when the thread ends.
struct ThreadIndex(usize);

impl Drop for ThreadIndex {
    fn drop(&mut self) {
        // From here on this thread (its later thread-local destructors) uses
        // the shared overflow slot: the index may go to a new thread at once.
        let _ = CACHED.try_with(|cached| cached.set(usize::MAX - 1));
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
    counted: Counted,
}

/// A blocking dispatch in flight: an [`InFlight`] that stays on the thread
/// that made it (not `Send`), so that a dispatch covered by its thread's
/// slot always ends before the one that set it.
pub(crate) struct BlockingInFlight<'a> {
    _counted: InFlight<'a>,
    _on_this_thread: std::marker::PhantomData<*const ()>,
}

/// How an [`InFlight`] dispatch is counted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// It set this thread's slot: it clears it.
    Slot,
    /// An outer blocking dispatch on this thread set the slot: that one
    /// clears it, after this one is over.
    Covered,
    /// On a shared counter.
    Shared,
}

impl Drop for InFlight<'_> {
    #[inline]
    fn drop(&mut self) {
        match self.counted {
            Counted::Slot => self.counter.store(0, Ordering::Release),
            Counted::Covered => {}
            Counted::Shared => {
                self.counter.fetch_sub(1, Ordering::Release);
            }
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
            detached: Slot::default(),
        }
    }
}

impl Lifecycle {
    /// Counts an awaited dispatch in, unless the bus is closed; the guard may
    /// be dropped on any thread.
    #[inline]
    pub(crate) fn enter(&self) -> Result<InFlight<'_>, Closed> {
        let shard = &self.shards[thread_index() % SHARDS].0;
        // A sequentially consistent read-modify-write, then load: with the
        // closer's store, fence and loads, Dekker's pattern holds within the
        // language's own memory model (no light side needed).
        shard.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight {
            counter: shard,
            counted: Counted::Shared,
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
    pub(crate) fn enter_blocking(&self) -> Result<BlockingInFlight<'_>, Closed> {
        let guard = match self.slots.get(thread_index()) {
            // Only this thread writes its slot: a plain store suffices, and
            // it stores a constant, so that no dispatch waits on the last
            // one's store. The load only picks the branch.
            Some(slot) => {
                let counted = if slot.0.load(Ordering::Relaxed) == 0 {
                    slot.0.store(1, Ordering::Relaxed);
                    Counted::Slot
                } else {
                    Counted::Covered
                };
                InFlight {
                    counter: &slot.0,
                    counted,
                }
            }
            None => {
                self.overflow.0.fetch_add(1, Ordering::SeqCst);
                InFlight {
                    counter: &self.overflow.0,
                    counted: Counted::Shared,
                }
            }
        };
        // The store above must not pass the load below (see the module's
        // docs): the light side of the barrier keeps them in order.
        barrier::light();
        if self.closed.load(Ordering::Acquire) {
            return Err(Closed);
        }
        Ok(BlockingInFlight {
            _counted: guard,
            _on_this_thread: std::marker::PhantomData,
        })
    }

    /// Counts in the rest of a dispatch that goes on detached from its
    /// caller, whether or not the bus is closed (it was in flight already);
    /// returns the counter to [`leave_detached`](Self::leave_detached).
    pub(crate) fn enter_detached(&self) {
        self.detached.0.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts out what [`enter_detached`](Self::enter_detached) counted in.
    pub(crate) fn leave_detached(&self) {
        self.detached.0.fetch_sub(1, Ordering::Release);
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// How many dispatches are in flight: one reading of every counter,
    /// after the heavy side of the barrier, `detached` last (see the
    /// module's docs).
    pub(crate) fn in_flight(&self) -> usize {
        barrier::heavy();
        self.slots
            .iter()
            .chain(std::iter::once(&self.overflow))
            .chain(self.shards.iter())
            .chain(std::iter::once(&self.detached))
            .map(|slot| slot.0.load(Ordering::Acquire))
            .fold(0usize, usize::wrapping_add)
    }

    /// Waits, without blocking the thread, until nothing is in flight or the
    /// grace period is over; returns how many dispatches were still running.
    pub(crate) async fn wait_idle(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let mut pause = Duration::from_micros(200);
        loop {
            let running = self.in_flight();
            if running == 0 {
                return 0;
            }
            let now = Instant::now();
            if now >= deadline {
                return running;
            }
            crate::retry::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Barrier};

    /// Either guard, held until dropped.
    enum Guard<'a> {
        Blocking(#[allow(dead_code)] BlockingInFlight<'a>),
        Awaited(#[allow(dead_code)] InFlight<'a>),
    }

    #[test]
    fn the_rest_of_a_detached_dispatch_is_counted_before_its_origin_leaves() {
        barrier::prepare();
        let life = Lifecycle::default();
        let awaited = life.enter().unwrap();
        let blocking = life.enter_blocking().unwrap();
        assert_eq!(life.in_flight(), 2);
        life.enter_detached();
        drop(awaited);
        assert_eq!(life.in_flight(), 2, "the detached rest is still in flight");
        drop(blocking);
        life.leave_detached();
        assert_eq!(life.in_flight(), 0);
        life.close();
        assert!(life.enter().is_err());
        assert!(life.enter_blocking().is_err());
        assert_eq!(life.in_flight(), 0, "a refused dispatch counts itself out");
    }

    #[test]
    fn a_blocking_dispatch_inside_another_on_its_thread_is_covered_by_it() {
        barrier::prepare();
        let life = Lifecycle::default();
        let outer = life.enter_blocking().unwrap();
        let inner = life.enter_blocking().unwrap();
        assert_eq!(life.in_flight(), 1, "counted as one");
        drop(inner);
        assert_eq!(life.in_flight(), 1, "the outer one still runs");
        drop(outer);
        assert_eq!(life.in_flight(), 0);
        let again = life.enter_blocking().unwrap();
        assert_eq!(life.in_flight(), 1, "a later dispatch sets the slot again");
        life.close();
        assert!(
            life.enter_blocking().is_err(),
            "a dispatch made inside one that runs is refused once closed"
        );
        assert_eq!(life.in_flight(), 1, "the refusal left the slot set");
        drop(again);
        assert_eq!(life.in_flight(), 0);
    }

    /// Four threads enter and leave as fast as they can while another
    /// closes: once the closer saw nothing in flight, no thread may be
    /// inside, and none may enter. (A race test: it can only catch a broken
    /// protocol, not prove the module's argument.)
    #[test]
    fn a_close_never_misses_a_dispatch_that_went_on() {
        barrier::prepare();
        for round in 0..100 {
            let life = Arc::new(Lifecycle::default());
            let inside = Arc::new(AtomicUsize::new(0));
            let idle_seen = Arc::new(AtomicBool::new(false));
            let start = Arc::new(Barrier::new(5));
            let threads: Vec<_> = (0..4)
                .map(|n| {
                    let (life, inside, idle_seen, start) = (
                        life.clone(),
                        inside.clone(),
                        idle_seen.clone(),
                        start.clone(),
                    );
                    std::thread::spawn(move || {
                        start.wait();
                        let mut violations = 0;
                        loop {
                            let entered = if n % 2 == 0 {
                                life.enter_blocking().map(Guard::Blocking)
                            } else {
                                life.enter().map(Guard::Awaited)
                            };
                            let Ok(guard) = entered else { break };
                            if idle_seen.load(Ordering::SeqCst) {
                                violations += 1;
                            }
                            inside.fetch_add(1, Ordering::SeqCst);
                            std::hint::spin_loop();
                            inside.fetch_sub(1, Ordering::SeqCst);
                            drop(guard);
                        }
                        violations
                    })
                })
                .collect();
            start.wait();
            for _ in 0..round % 7 {
                std::hint::spin_loop();
            }
            life.close();
            let running = crate::executor::block_on(life.wait_idle(Duration::from_secs(60)));
            assert_eq!(running, 0);
            assert_eq!(
                inside.load(Ordering::SeqCst),
                0,
                "a dispatch was still inside"
            );
            idle_seen.store(true, Ordering::SeqCst);
            let violations: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(
                violations, 0,
                "a dispatch entered after the bus was seen idle"
            );
        }
    }
}
