//! A minimal `block_on`, so sync code can drive the bus with no async runtime.

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
/// all plain `fn`s) costs no allocation. Do not call this from inside an async
/// runtime's worker thread: it would block that worker; `.await` instead.
///
/// ```
/// assert_eq!(bus_core::block_on(async { 40 + 2 }), 42);
/// ```
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
