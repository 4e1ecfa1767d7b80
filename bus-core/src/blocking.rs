//! Refusing a blocking call on a thread that drives async tasks.
//!
//! A `*_blocking` method of the bus parks its thread until the dispatch is
//! done. On a thread that an async runtime uses to drive its tasks, that
//! parks the runtime too: a current-thread runtime (what `#[tokio::test]`
//! gives) then hangs for ever as soon as a handler waits on a timer or on
//! I/O that the runtime was to drive. So every `*_blocking` method panics at
//! once, naming the awaited method to call instead, when its thread
//!
//! - is inside a tokio runtime (bus-core's `tokio` feature, on by default):
//!   a task, a `block_on`, or a runtime's blocking pool, where tokio gives no
//!   way to tell these apart; or
//! - is polling an awaited dispatch of the bus (whatever the executor): a
//!   handler that makes a blocking call inside an awaited one.
//!
//! The second check is a thread-local counter raised for the length of each
//! poll of an awaited dispatch: it says nothing about any other thread, and
//! nothing after the poll returned.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::pin;

thread_local! {
    /// How many polls of awaited dispatches this thread is inside.
    static DRIVING: Cell<u32> = const { Cell::new(0) };
}

/// Whether a blocking call here would park a thread that drives async
/// tasks (see the module docs).
pub(crate) fn inside_async_runtime() -> bool {
    if DRIVING.with(Cell::get) > 0 {
        return true;
    }
    #[cfg(feature = "tokio")]
    if tokio::runtime::Handle::try_current().is_ok() {
        return true;
    }
    false
}

/// Panics when `method` (a `*_blocking` method of the bus) is called where
/// it would park an async runtime's thread; `instead` names the awaited
/// call to make.
#[track_caller]
#[inline]
pub(crate) fn refuse_inside_runtime(method: &'static str, instead: &'static str) {
    if inside_async_runtime() {
        refuse(method, instead);
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn refuse(method: &'static str, instead: &'static str) -> ! {
    panic!(
        "`{method}` was called from inside an async runtime: it would block a thread that \
         drives async tasks, and a current-thread runtime (what `#[tokio::test]` gives) hangs \
         for ever once a handler waits on a timer or I/O. Call `{instead}` instead. (From \
         synchronous code on a runtime's blocking pool, `spawn_blocking`, run \
         `tokio::runtime::Handle::current().block_on({instead_future})`.)",
        instead_future = instead.trim_end_matches(".await"),
    )
}

/// Awaits an awaited dispatch's future, marking its thread for the length
/// of each poll: a blocking call made by a handler inside it is refused.
#[inline]
pub(crate) async fn driving<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    poll_fn(|cx| {
        let _mark = Mark::enter();
        future.as_mut().poll(cx)
    })
    .await
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
        refuse_inside_runtime("Bus::dispatch_blocking", "bus.dispatch(command).await");
    }

    #[test]
    fn a_poll_of_an_awaited_dispatch_marks_its_thread_for_its_length_only() {
        let seen = crate::block_on(driving(async { inside_async_runtime() }));
        assert!(seen, "inside the poll");
        assert!(!inside_async_runtime(), "after it");
    }

    #[test]
    fn a_tokio_runtime_thread_is_inside_a_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|error| panic!("a runtime: {error}"));
        assert!(runtime.block_on(async { inside_async_runtime() }));
        assert!(!inside_async_runtime());
    }

    #[test]
    #[should_panic(expected = "Call `bus.dispatch(command).await` instead")]
    fn a_blocking_call_inside_a_runtime_panics_naming_the_awaited_one() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|error| panic!("a runtime: {error}"));
        runtime.block_on(async {
            refuse_inside_runtime("Bus::dispatch_blocking", "bus.dispatch(command).await")
        });
    }
}
