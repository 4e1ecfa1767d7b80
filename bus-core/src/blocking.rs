//! Refusing a blocking call on a thread that drives async tasks.
//!
//! A `*_blocking` method of the bus that must drive a future (an `async fn`
//! handler, a layer, a retry, a durable store) parks its thread while the
//! future waits. On a thread that an async runtime uses to drive its tasks,
//! that parks the runtime too: a current-thread runtime (what
//! `#[tokio::test]` gives) then hangs for ever as soon as a handler waits
//! on a timer or on I/O that the runtime was to drive. So each such call
//! checks, before it drives anything, and panics, naming the awaited method
//! to call instead, when its thread
//!
//! - is driving tokio tasks (arch-events' `tokio` feature, on by default):
//!   inside the poll of a task or of a `block_on`. A runtime's blocking pool
//!   (`spawn_blocking`), `block_in_place` and a thread that merely entered a
//!   runtime (`Handle::enter`) drive no task: blocking there is what they
//!   are for, and is allowed. tokio tells them apart by its cooperative
//!   budget, which it sets for the poll of a task or a `block_on` and lifts
//!   everywhere else; the check asks for that budget (and gives back what
//!   it took), so it rests on no timing; or
//! - is polling an awaited dispatch of the bus (whatever the executor): a
//!   handler that makes a blocking call inside an awaited one.
//!
//! The second check is a thread-local counter raised for the length of each
//! poll of an awaited dispatch: it says nothing about any other thread, and
//! nothing after the poll returned.
//!
//! A dispatch whose handlers are all plain `fn`s drives no future: it never
//! parks, is never refused, and pays nothing for the check. When the need
//! to drive comes after a command's handler returned (an `async fn` handler
//! of one of its events), the rest of the run goes on on the runtime, as
//! for a caller that stopped waiting, before the call panics: nothing the
//! command committed is dropped.
//!
//! A call made while the thread is unwinding from a panic (a `Drop` that
//! shuts the bus down, say) is not refused: a second panic would abort the
//! process. It is logged instead, and goes on.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

thread_local! {
    /// How many polls of awaited dispatches this thread is inside.
    static DRIVING: Cell<u32> = const { Cell::new(0) };
}

/// Whether a blocking call here would park a thread that drives async
/// tasks (see the module docs).
#[inline]
pub(crate) fn inside_async_runtime() -> bool {
    if DRIVING.with(Cell::get) > 0 {
        return true;
    }
    #[cfg(feature = "tokio")]
    if drives_tokio_tasks() {
        return true;
    }
    false
}

/// Whether this thread is inside the poll of a tokio task or `block_on`:
/// there, and only there, tokio gives the thread a cooperative budget (at
/// most 128 units). Asks for units until tokio says the budget is spent
/// (constrained) or more were given than any budget holds (unconstrained:
/// no task is being driven); then gives every unit back.
#[cfg(feature = "tokio")]
#[inline(never)]
fn drives_tokio_tasks() -> bool {
    use std::task::{Context, Poll, Waker};
    use tokio::task::coop;

    // Outside any runtime context: no tokio task is being driven here.
    if tokio::runtime::Handle::try_current().is_err() {
        return false;
    }
    let mut cx = Context::from_waker(Waker::noop());
    // The first unit's guard gives the whole budget back when it drops
    // (it was not marked as progress); the later ones are marked, so that
    // each one stays taken until then.
    let Poll::Ready(_restore) = coop::poll_proceed(&mut cx) else {
        return true; // spent already: a task's budget
    };
    for _ in 0..=u8::MAX {
        match coop::poll_proceed(&mut cx) {
            Poll::Ready(unit) => unit.made_progress(),
            Poll::Pending => return true,
        }
    }
    false
}

/// A `*_blocking` method of the bus, and the awaited call to make instead.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Blocking {
    method: &'static str,
    instead: &'static str,
}

impl Blocking {
    pub(crate) const DISPATCH: Blocking = Blocking {
        method: "Bus::dispatch_blocking",
        instead: "bus.dispatch(command).await",
    };
    pub(crate) const QUERY: Blocking = Blocking {
        method: "Bus::query_blocking",
        instead: "bus.query(query).await",
    };
    pub(crate) const PUBLISH: Blocking = Blocking {
        method: "Bus::publish_blocking",
        instead: "bus.publish(event).await",
    };
    pub(crate) const REPLAY: Blocking = Blocking {
        method: "Bus::replay_blocking",
        instead: "bus.replay(handler, event, context).await",
    };
    pub(crate) const SHUTDOWN: Blocking = Blocking {
        method: "Bus::shutdown_blocking",
        instead: "bus.shutdown(grace).await",
    };

    /// Whether this call may not drive a future here: its thread drives
    /// async tasks (see the module docs). While unwinding from a panic it
    /// may (a second panic would abort the process): that is logged.
    #[inline]
    pub(crate) fn refused(&self) -> bool {
        inside_async_runtime() && self.refused_inside()
    }

    /// [`refused`](Self::refused), on a thread that drives async tasks.
    #[cold]
    #[inline(never)]
    fn refused_inside(&self) -> bool {
        if std::thread::panicking() {
            tracing::error!(
                method = self.method,
                instead = self.instead,
                "a blocking call of the bus waits on a thread that drives async tasks, while \
                 unwinding from a panic: not refused (a second panic would abort), but it may \
                 hang that runtime"
            );
            return false;
        }
        true
    }

    /// Panics, naming the awaited call to make instead.
    #[cold]
    #[inline(never)]
    #[track_caller]
    pub(crate) fn refuse(&self) -> ! {
        panic!(
            "`{method}` was called from inside an async runtime: it would block a thread that \
             drives async tasks, and a current-thread runtime (what `#[tokio::test]` gives) \
             hangs for ever once a handler waits on a timer or I/O. Call `{instead}` instead. \
             (Synchronous code that must block runs on the runtime's blocking pool, \
             `spawn_blocking`, where `{method}` is allowed.)",
            method = self.method,
            instead = self.instead,
        )
    }

    /// Panics when this call may not drive a future here.
    #[track_caller]
    #[inline]
    pub(crate) fn check(&self) {
        if self.refused() {
            self.refuse();
        }
    }
}

pin_project_lite::pin_project! {
    /// An awaited dispatch's future, marking its thread for the length of
    /// each poll: a blocking call made by a handler inside it is refused.
    pub(crate) struct Driving<F> {
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Driving<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _mark = Mark::enter();
        self.project().future.poll(cx)
    }
}

/// Marks `future`'s polls (see [`Driving`]).
#[inline]
pub(crate) fn driving<F: Future>(future: F) -> Driving<F> {
    Driving { future }
}

/// The thread is inside a poll of an awaited dispatch until this drops
/// (an unwinding poll included).
struct Mark;

impl Mark {
    #[inline]
    fn enter() -> Mark {
        DRIVING.with(|driving| driving.set(driving.get() + 1));
        Mark
    }
}

impl Drop for Mark {
    #[inline]
    fn drop(&mut self) {
        DRIVING.with(|driving| driving.set(driving.get().saturating_sub(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_thread_is_not_inside_a_runtime() {
        assert!(!inside_async_runtime());
        Blocking::DISPATCH.check();
    }

    #[test]
    fn a_poll_of_an_awaited_dispatch_marks_its_thread_for_its_length_only() {
        let seen = crate::executor::block_on(driving(async { inside_async_runtime() }));
        assert!(seen, "inside the poll");
        assert!(!inside_async_runtime(), "after it");
    }

    #[cfg(feature = "tokio")]
    fn runtime(threads: usize) -> tokio::runtime::Runtime {
        let built = if threads == 0 {
            tokio::runtime::Builder::new_current_thread().build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .build()
        };
        built.unwrap_or_else(|error| panic!("a runtime: {error}"))
    }

    #[test]
    #[cfg(feature = "tokio")]
    fn a_thread_driving_tokio_tasks_is_inside_a_runtime() {
        let current = runtime(0);
        assert!(
            current.block_on(async { inside_async_runtime() }),
            "block_on"
        );
        let spawned =
            current.block_on(async { tokio::spawn(async { inside_async_runtime() }).await });
        assert!(spawned.unwrap_or(false), "a task");
        let multi = runtime(2);
        let on_worker =
            multi.block_on(async { tokio::spawn(async { inside_async_runtime() }).await });
        assert!(on_worker.unwrap_or(false), "a worker's task");
        assert!(!inside_async_runtime(), "after");
    }

    #[test]
    #[cfg(feature = "tokio")]
    fn a_runtime_thread_that_drives_no_task_is_not() {
        let current = runtime(0);
        let pool =
            current.block_on(async { tokio::task::spawn_blocking(inside_async_runtime).await });
        assert_eq!(pool.ok(), Some(false), "spawn_blocking");
        let entered = current.enter();
        assert!(!inside_async_runtime(), "Handle::enter");
        drop(entered);
        let multi = runtime(2);
        let in_place = multi.block_on(async {
            tokio::spawn(async { tokio::task::block_in_place(inside_async_runtime) }).await
        });
        assert_eq!(in_place.ok(), Some(false), "block_in_place");
    }

    #[test]
    #[cfg(feature = "tokio")]
    fn the_check_gives_the_budget_back() {
        let current = runtime(0);
        current.block_on(async {
            assert!(tokio::task::coop::has_budget_remaining());
            for _ in 0..1000 {
                assert!(inside_async_runtime());
            }
            assert!(
                tokio::task::coop::has_budget_remaining(),
                "not spent by the checks"
            );
        });
    }

    #[test]
    #[cfg(feature = "tokio")]
    #[should_panic(expected = "Call `bus.dispatch(command).await` instead")]
    fn a_blocking_call_inside_a_runtime_panics_naming_the_awaited_one() {
        runtime(0).block_on(async { Blocking::DISPATCH.check() });
    }
}
