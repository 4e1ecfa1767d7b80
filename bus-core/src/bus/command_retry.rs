//! A command's opt-in retry: the whole call again, on a fresh copy of the
//! command, when its handler's error is one the application named retryable
//! (an optimistic-concurrency conflict, say). Commands are never retried
//! otherwise.

use std::future::Future;

use crate::context::MessageContext;
use crate::error::DispatchError;
use crate::inject::Scope;
use crate::retry::{sleep, RetryPolicy};

/// The retry of one command type, `M`, whose handler's error type is `E`.
pub(crate) struct CommandRetry<M, E> {
    pub(crate) policy: RetryPolicy,
    pub(crate) copy: fn(&M) -> M,
    pub(crate) retry_if: Box<dyn Fn(&E) -> bool + Send + Sync>,
}

impl<M, E> CommandRetry<M, E> {
    /// Runs `attempt` on copies of `message` until it succeeds, fails with an
    /// error that is not retryable, or the policy's attempts are spent.
    pub(crate) async fn run<O, F, Fut>(
        &self,
        message: M,
        context: MessageContext,
        attempt: F,
    ) -> (Result<O, DispatchError<E>>, Scope)
    where
        F: Fn(M, MessageContext) -> Fut,
        Fut: Future<Output = (Result<O, DispatchError<E>>, Scope)>,
    {
        let mut delays = self.policy.delays();
        let mut number = 1;
        loop {
            let copy = (self.copy)(&message);
            let (output, scope) = attempt(copy, context.at_attempt(number)).await;
            let retryable =
                matches!(&output, Err(DispatchError::Handler(error)) if (self.retry_if)(error));
            if !retryable {
                return (output, scope);
            }
            let Some(delay) = delays.next() else {
                tracing::warn!(
                    attempts = number,
                    "command failed with a retryable error on every attempt; giving up"
                );
                return (output, scope);
            };
            tracing::debug!(attempt = number, retry_in = ?delay, "command failed; retrying");
            sleep(delay).await;
            number += 1;
        }
    }
}
