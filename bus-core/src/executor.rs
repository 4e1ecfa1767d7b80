//! A minimal `block_on`: what drives a `*_blocking` dispatch and a handler's
//! describe call with no async runtime. Internal: applications use their
//! runtime's (`tokio::runtime::Runtime::block_on`, `futures::executor::block_on`).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the current thread, parking it while the
/// future waits.
///
/// A future that completes on its first poll (a dispatch whose handlers are
/// all plain `fn`s) costs no allocation.
///
/// # Panics
///
/// When the future has to wait and this thread is inside an async runtime
/// (a thread driving tokio tasks, or a handler of an awaited dispatch of
/// the bus): parking it could hang that runtime. `.await` the future there.
#[track_caller]
#[inline]
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    // First poll with a no-op waker: a future that is ready at once needs no
    // real waker, and so no allocation.
    if let Poll::Ready(output) = future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        return output;
    }
    if crate::blocking::inside_async_runtime() {
        if std::thread::panicking() {
            // A second panic would abort the process: say it, and wait.
            tracing::error!(
                "`arch_events::block_on` parks a thread that drives async tasks while unwinding \
                 from a panic: this may hang that runtime"
            );
        } else {
            refuse_to_park();
        }
    }
    // It is waiting: poll again at once with a waker that unparks this thread,
    // so the wake-up it registers now is the one we wait for.
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => thread::park(),
        }
    }
}

#[cold]
#[inline(never)]
fn refuse_to_park() -> ! {
    panic!(
        "`arch_events::block_on` would park a thread that drives async tasks (it is inside an \
         async runtime), which can hang that runtime: `.await` the future instead"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Pending for its first `pending` polls; each time, another thread wakes
    /// the waker it was given a moment later.
    struct WokenLater {
        pending: u32,
    }

    impl Future for WokenLater {
        type Output = &'static str;
        fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            if self.pending == 0 {
                return Poll::Ready("done");
            }
            self.pending -= 1;
            let waker = cx.waker().clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(5));
                waker.wake();
            });
            Poll::Pending
        }
    }

    #[test]
    fn a_ready_future_is_answered_on_its_first_poll() {
        assert_eq!(block_on(async { 40 + 2 }), 42);
    }

    #[test]
    fn a_future_woken_from_another_thread_completes() {
        // The first wake-up goes to the no-op waker and is lost; block_on must
        // not depend on it.
        assert_eq!(block_on(WokenLater { pending: 3 }), "done");
    }

    #[test]
    fn a_ready_future_returns_at_once() {
        assert_eq!(block_on(async { 5 }), 5);
    }
}
