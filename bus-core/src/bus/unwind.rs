//! Catching a panic inside an async handler's future.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::call::HandlerFuture;
use crate::error::BoxError;

pin_project_lite::pin_project! {
    /// Polls a handler future, turning a panic into `Err(payload)`.
    pub(crate) struct CatchUnwind<'a> {
        #[pin]
        future: HandlerFuture<'a>,
    }
}

impl<'a> CatchUnwind<'a> {
    pub(crate) fn new(future: HandlerFuture<'a>) -> Self {
        CatchUnwind { future }
    }
}

impl Future for CatchUnwind<'_> {
    type Output = Result<Result<(), BoxError>, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A future that panicked is never polled again: the bus drops it at
        // once.
        let future = self.project().future;
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}
