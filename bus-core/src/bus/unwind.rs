//! Catching a panic inside an async handler's future.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::call::BoxFuture;
use crate::error::BoxError;

/// Polls a handler future, turning a panic into `Err(payload)`.
pub(crate) struct CatchUnwind<'a>(pub(crate) BoxFuture<'a, Result<(), BoxError>>);

impl Future for CatchUnwind<'_> {
    type Output = Result<Result<(), BoxError>, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The boxed future is Unpin, so no projection is needed. A future that
        // panicked is never polled again: the bus drops it at once.
        let future = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}
