//! A command's opt-in retry: the whole call again, on a fresh copy of the
//! command, when its handler's error is one the application named retryable
//! (an optimistic-concurrency conflict, say). Commands are never retried
//! otherwise.

use std::future::Future;

use crate::context::MessageContext;
use crate::error::DispatchError;
use crate::inject::Scope;
use crate::retry::{retried, RetryPolicy};

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
        // Owns the command (a borrow held across the waits would need it
        // `Sync`): each attempt gets a fresh copy.
        let copy = self.copy;
        let run = move |number: u32| attempt(copy(&message), context.at_attempt(number));
        let first = run(1).await;
        let retryable = |(output, _): &(Result<O, DispatchError<E>>, Scope)| matches!(output, Err(DispatchError::Handler(error)) if (self.retry_if)(error));
        let retrying = |number: u32, delay, _: &_| {
            tracing::debug!(attempt = number, retry_in = ?delay, "command failed; retrying");
        };
        // The caller waits for the answer: a command's waits are never
        // handed off.
        let never = |_, _| false;
        let (output, scope) =
            retried(&self.policy, 1, first, retryable, retrying, never, run).await;
        if matches!(&output, Err(DispatchError::Handler(error)) if (self.retry_if)(error)) {
            tracing::warn!(
                attempts = self.policy.max_attempts(),
                "command failed with a retryable error on every attempt; giving up"
            );
        }
        (output, scope)
    }
}
