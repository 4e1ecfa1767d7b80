//! Retry policies: how often, and how far apart, a failed handler call is
//! tried again; and how a handler's error says that trying again is useless.
//!
//! The delays come from [`backon`]'s exponential backoff (a factor, a first
//! delay, a cap, and jitter). Waiting never blocks a thread in an awaited
//! dispatch: the retry [`Layer`](crate::layer::Layer) awaits a timer. In a
//! `*_blocking` dispatch the dispatching thread waits (it is the one that
//! asked for the answer; other dispatches are not held up).

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::call::BoxFuture;
use crate::error::BoxError;
use crate::layer::{HandlerCall, Layer, Next, Outcome};
use crate::observer::FailureCause;

/// Marks an error as permanent: retrying the call cannot help (bad data, a
/// rule broken), so the retry policy gives up at once.
///
/// Return it from a handler (`Err(Permanent::new(error))`), or keep it
/// anywhere in your error's [`source`](std::error::Error::source) chain.
///
/// ```
/// use arch_events::{FailureCause, Permanent};
///
/// let cause = FailureCause::Error(Permanent::new("no such customer").into());
/// assert!(!cause.is_transient());
/// assert!(FailureCause::Error("mail server timed out".into()).is_transient());
/// ```
#[derive(Debug)]
pub struct Permanent(BoxError);

impl Permanent {
    /// Wraps the error.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Permanent(error.into())
    }

    /// The wrapped error.
    pub fn into_inner(self) -> BoxError {
        self.0
    }
}

impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for Permanent {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.0.as_ref())
    }
}

/// Whether `error`, or any error in its source chain, is [`Permanent`].
pub fn is_permanent(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<Permanent>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// Decides, for a failure, whether another attempt may help.
pub type RetryIf = Arc<dyn Fn(&FailureCause) -> bool + Send + Sync>;

/// How many attempts a handler call gets and how long to wait between them:
/// exponential backoff with jitter and a cap.
///
/// ```
/// use std::time::Duration;
/// use arch_events::RetryPolicy;
///
/// let policy = RetryPolicy::exponential(5)
///     .first_delay(Duration::from_millis(50))
///     .max_delay(Duration::from_secs(2));
/// assert_eq!(policy.max_attempts(), 5);
/// // Four waits between five attempts, each at most the cap.
/// let delays: Vec<Duration> = policy.delays().collect();
/// assert_eq!(delays.len(), 4);
/// assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
/// assert_eq!(RetryPolicy::none().delays().count(), 0);
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    first_delay: Duration,
    max_delay: Duration,
    factor: f32,
    jitter: bool,
    retry_if: Option<RetryIf>,
    hand_off_over: Option<Duration>,
}

impl RetryPolicy {
    /// One attempt, no retry: the default for event handlers.
    pub fn none() -> Self {
        RetryPolicy::exponential(1)
    }

    /// Up to `max_attempts` attempts in all (at least 1), waiting 100 ms,
    /// then twice as long each time, at most 10 s, with jitter.
    pub fn exponential(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            factor: 2.0,
            jitter: true,
            retry_if: None,
            hand_off_over: None,
        }
    }

    /// The wait before the second attempt.
    pub fn first_delay(mut self, delay: Duration) -> Self {
        self.first_delay = delay;
        self
    }

    /// The longest wait between two attempts (the cap).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// How much longer each wait is than the one before (default 2).
    pub fn factor(mut self, factor: f32) -> Self {
        self.factor = factor.max(1.0);
        self
    }

    /// Waits exactly the computed delays, with no random part.
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// Decides which failures are worth another attempt, instead of
    /// [`FailureCause::is_transient`]: for an error type of your own that
    /// knows whether it is transient.
    pub fn retry_if(
        mut self,
        decide: impl Fn(&FailureCause) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.retry_if = Some(Arc::new(decide));
        self
    }

    /// Hands every wait longer than `limit` to the bus's scheduler instead
    /// of waiting in the dispatch: the dispatch goes on at once (an HTTP
    /// request no longer waits for its event handlers' retries), and the
    /// scheduler calls the handler again when the wait is over, durably
    /// with a durable scheduler (`arch_events_sqlx::SqlScheduler`), in
    /// another process if this one is gone. `Duration::ZERO` hands off every
    /// retry; the first attempt is always made in the dispatch.
    ///
    /// The retry keeps the event's ids and counts its attempts on (a
    /// handler sees [`MessageContext::attempt`](crate::MessageContext::attempt));
    /// once they are spent, the call is a dead letter as always. Only event
    /// handlers' retries are handed off, and only on a bus with a scheduler
    /// ([`BusBuilder::scheduler`](crate::BusBuilder::scheduler)), for events
    /// that read from JSON: the build refuses a policy set with
    /// [`retry`](crate::BusBuilder::retry) or
    /// [`handler_retry`](crate::BusBuilder::handler_retry) that cannot be
    /// handed off. (A [`Retry`] layer added by hand, with
    /// [`layer`](crate::BusBuilder::layer), waits in the dispatch where it
    /// cannot hand off.) A dead letter's replay, whose caller waits for its
    /// outcome, makes the attempts a dispatch makes and stops, failed, at
    /// the first wait handed off.
    ///
    /// ```
    /// use std::time::Duration;
    /// use arch_events::RetryPolicy;
    ///
    /// // Two quick tries in the request, then minutes apart, in the background.
    /// let policy = RetryPolicy::exponential(8)
    ///     .first_delay(Duration::from_millis(20))
    ///     .max_delay(Duration::from_secs(600))
    ///     .without_jitter()
    ///     .hand_off_waits_over(Duration::from_millis(50));
    /// assert!(!policy.hands_off(Duration::from_millis(40)));
    /// assert!(policy.hands_off(Duration::from_millis(80)));
    /// assert!(!RetryPolicy::exponential(8).hands_off(Duration::from_secs(3600)));
    /// ```
    pub fn hand_off_waits_over(mut self, limit: Duration) -> Self {
        self.hand_off_over = Some(limit);
        self
    }

    /// Whether a wait of `delay` is handed to the scheduler (see
    /// [`hand_off_waits_over`](Self::hand_off_waits_over)).
    pub fn hands_off(&self, delay: Duration) -> bool {
        self.hand_off_over.is_some_and(|limit| delay > limit)
    }

    /// Whether the policy was told to hand waits off at all.
    pub(crate) fn sets_hand_off(&self) -> bool {
        self.hand_off_over.is_some()
    }

    /// Whether any wait of this policy may be handed to the scheduler.
    pub(crate) fn may_hand_off(&self) -> bool {
        self.retries()
            && self
                .hand_off_over
                .is_some_and(|limit| limit < self.max_delay)
    }

    /// Attempts in all, the first one included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether this policy ever calls a handler more than once.
    pub fn retries(&self) -> bool {
        self.max_attempts > 1
    }

    /// Whether `cause` is worth another attempt.
    pub fn is_retryable(&self, cause: &FailureCause) -> bool {
        match &self.retry_if {
            Some(decide) => decide(cause),
            None => cause.is_transient(),
        }
    }

    /// The waits between attempts, in order: `max_attempts - 1` of them.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send {
        let mut builder = ExponentialBuilder::new()
            .with_min_delay(self.first_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize);
        if self.jitter {
            builder = builder.with_jitter();
        }
        let cap = self.max_delay;
        // backon's jitter adds up to one more delay; the cap holds regardless.
        builder.build().map(move |delay| delay.min(cap))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::none()
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("first_delay", &self.first_delay)
            .field("max_delay", &self.max_delay)
            .field("factor", &self.factor)
            .field("jitter", &self.jitter)
            .field("retry_if", &self.retry_if.is_some())
            .field("hand_off_over", &self.hand_off_over)
            .finish()
    }
}

/// The retry layer: calls the rest of the pipeline again, per its
/// [`RetryPolicy`], while the failure is retryable and attempts remain.
///
/// [`BusBuilder::retry`](crate::BusBuilder::retry) and
/// [`BusBuilder::handler_retry`](crate::BusBuilder::handler_retry) put one
/// outermost around each event handler; it can also be added like any other
/// layer. When it is a handler's only layer, the bus calls the handler
/// directly and hands over to it only after a failed first attempt: the
/// attempts and waits are the same, the other handlers of the event run
/// before the second attempt, and a call that succeeds costs nothing extra.
#[derive(Debug, Clone)]
pub struct Retry {
    policy: RetryPolicy,
}

impl Retry {
    /// A retry layer with this policy.
    pub fn new(policy: RetryPolicy) -> Self {
        Retry { policy }
    }

    /// Its policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

impl Layer for Retry {
    fn call<'a>(&'a self, call: HandlerCall<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            match next.run(call).await {
                Ok(()) => Ok(()),
                Err(cause) => self.after_failure(call, next, cause).await,
            }
        })
    }
}

impl Retry {
    /// What follows a failed attempt (numbered `call.attempt()`): the next
    /// attempts, while the failure is retryable and the policy allows. The
    /// bus also calls it directly for a handler whose only layer this is, so
    /// that its first attempt is a direct call.
    pub(crate) async fn after_failure<'a>(
        &'a self,
        call: HandlerCall<'a>,
        next: Next<'a>,
        cause: crate::observer::FailureCause,
    ) -> Outcome {
        let retryable = |outcome: &Outcome| match outcome {
            Ok(()) => false,
            Err(cause) if self.policy.is_retryable(cause) => true,
            Err(cause) => {
                tracing::debug!(
                    handler = call.handler_name(),
                    %cause,
                    "permanent failure: not retried"
                );
                false
            }
        };
        let retrying = |attempt: u32, delay: Duration, outcome: &Outcome| {
            if let Err(cause) = outcome {
                tracing::warn!(
                    handler = call.handler_name(),
                    message_name = call.message_name(),
                    attempt,
                    retry_in = ?delay,
                    %cause,
                    "handler failed; retrying"
                );
            }
        };
        // A wait the policy hands off, and the call can: the attempt after
        // it is the scheduler's; this call ends with the last failure.
        let hand_off = |attempt: u32, delay: Duration| {
            let handed = self.policy.hands_off(delay) && next.hand_off(attempt, delay);
            if handed {
                tracing::info!(
                    handler = call.handler_name(),
                    message_name = call.message_name(),
                    attempt,
                    retry_in = ?delay,
                    "handler failed; its next attempt is handed to the scheduler"
                );
            }
            handed
        };
        retried(
            &self.policy,
            call.attempt(),
            Err(cause),
            retryable,
            retrying,
            hand_off,
            |attempt| next.run(call.at_attempt(attempt)),
        )
        .await
    }
}

/// The one retry loop of the bus, for event handlers (the [`Retry`] layer)
/// and commands (their opt-in retry) alike: given the outcome of attempt
/// number `attempt`, while `retryable` says it is worth another and the
/// policy has a delay left (the delay after attempt `n` is its `n`th: an
/// attempt the scheduler makes goes on where the dispatch stopped), waits
/// that delay and runs the next attempt. `hand_off` is asked first, with
/// the next attempt's number and the delay: when it takes the attempt over,
/// the loop returns. `retrying` is told of each retry before its wait.
/// Returns the last outcome.
pub(crate) async fn retried<T, Fut>(
    policy: &RetryPolicy,
    mut attempt: u32,
    mut outcome: T,
    retryable: impl Fn(&T) -> bool,
    retrying: impl Fn(u32, Duration, &T),
    hand_off: impl Fn(u32, Duration) -> bool,
    mut run: impl FnMut(u32) -> Fut,
) -> T
where
    Fut: std::future::Future<Output = T>,
{
    // The policy's delays after attempt `attempt`: up to `max_attempts`
    // attempts in all.
    let mut delays = policy
        .delays()
        .skip(usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX));
    loop {
        if !retryable(&outcome) {
            return outcome;
        }
        let Some(delay) = delays.next() else {
            return outcome;
        };
        if hand_off(attempt + 1, delay) {
            return outcome;
        }
        retrying(attempt, delay, &outcome);
        sleep(delay).await;
        attempt += 1;
        outcome = run(attempt).await;
    }
}

impl Retry {
    /// The attempts after one that was interrupted (the dispatch running it
    /// was dropped at an `.await`): `call` (numbered as attempt 2, wherever
    /// the interrupted one was) at once, then as after any failure: such a
    /// call may be made more often than the policy says.
    pub(crate) async fn resume<'a>(&'a self, call: HandlerCall<'a>, next: Next<'a>) -> Outcome {
        match next.run(call).await {
            Ok(()) => Ok(()),
            Err(cause) => self.after_failure(call, next, cause).await,
        }
    }
}

/// Waits without blocking the thread (a timer thread wakes the task), so it
/// works under any executor, the bus's own blocking one included.
pub(crate) async fn sleep(delay: Duration) {
    if !delay.is_zero() {
        futures_timer::Delay::new(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    fn quick(attempts: u32) -> RetryPolicy {
        RetryPolicy::exponential(attempts)
            .first_delay(Duration::ZERO)
            .max_delay(Duration::ZERO)
            .without_jitter()
    }

    /// Runs the loop after a failed first attempt; `fails` says which
    /// attempt numbers fail, and whether retryably.
    fn run(
        policy: &RetryPolicy,
        fails: impl Fn(u32) -> Option<bool>,
    ) -> (Result<u32, bool>, Vec<u32>) {
        let ran = RefCell::new(vec![1]);
        let retried_after = Cell::new(0);
        let outcome = |attempt: u32| match fails(attempt) {
            None => Ok(attempt),
            Some(retryable) => Err(retryable),
        };
        let last = crate::executor::block_on(retried(
            policy,
            1,
            outcome(1),
            |last: &Result<u32, bool>| matches!(last, Err(true)),
            |attempt, _, _: &_| {
                assert_eq!(
                    attempt,
                    retried_after.get() + 1,
                    "told of each retry in order"
                );
                retried_after.set(attempt);
            },
            |_, _| false,
            |attempt| {
                ran.borrow_mut().push(attempt);
                std::future::ready(outcome(attempt))
            },
        ));
        (last, ran.into_inner())
    }

    #[test]
    fn the_loop_retries_a_retryable_failure_until_it_succeeds() {
        let (last, ran) = run(&quick(5), |attempt| (attempt < 3).then_some(true));
        assert_eq!(last, Ok(3));
        assert_eq!(ran, [1, 2, 3]);
    }

    #[test]
    fn the_loop_stops_at_a_failure_that_is_not_retryable() {
        let (last, ran) = run(&quick(5), |attempt| Some(attempt < 2));
        assert_eq!(last, Err(false));
        assert_eq!(ran, [1, 2]);
    }

    /// An attempt's number and the wait before it.
    type Wait = (u32, Duration);

    /// The loop from attempt `from` on, every attempt failing retryably:
    /// the attempts it made, and the (attempt, delay) it was told of or
    /// handed off.
    fn from_attempt(
        policy: &RetryPolicy,
        from: u32,
        hand_off_from: u32,
    ) -> (Vec<u32>, Vec<Wait>, Option<Wait>) {
        let ran = RefCell::new(vec![from]);
        let told = RefCell::new(Vec::new());
        let handed = Cell::new(None);
        let last = crate::executor::block_on(retried(
            policy,
            from,
            Err::<(), ()>(()),
            |_| true,
            |attempt, delay, _: &_| told.borrow_mut().push((attempt, delay)),
            |attempt, delay| {
                let hand = attempt >= hand_off_from;
                if hand {
                    handed.set(Some((attempt, delay)));
                }
                hand
            },
            |attempt| {
                ran.borrow_mut().push(attempt);
                std::future::ready(Err(()))
            },
        ));
        assert_eq!(last, Err(()), "the last failure is returned");
        (ran.into_inner(), told.into_inner(), handed.get())
    }

    #[test]
    fn a_loop_taken_up_at_a_later_attempt_goes_on_with_the_policys_later_delays() {
        let policy = RetryPolicy::exponential(5)
            .first_delay(Duration::ZERO)
            .max_delay(Duration::ZERO)
            .without_jitter();
        let (ran, _, handed) = from_attempt(&policy, 3, u32::MAX);
        assert_eq!(
            ran,
            [3, 4, 5],
            "five attempts in all, the first two made before"
        );
        assert_eq!(handed, None);
        let (ran, _, _) = from_attempt(&policy, 5, u32::MAX);
        assert_eq!(ran, [5], "none left after the last");
    }

    #[test]
    fn a_hand_off_ends_the_loop_before_its_wait_with_the_next_attempts_number() {
        let policy = RetryPolicy::exponential(6)
            .first_delay(Duration::from_millis(1))
            .max_delay(Duration::from_secs(60))
            .without_jitter();
        // Attempts 2 and 3 in the loop; attempt 4 handed off, after the
        // third delay (4 ms: 1, 2, then 4).
        let (ran, told, handed) = from_attempt(&policy, 1, 4);
        assert_eq!(ran, [1, 2, 3]);
        assert_eq!(
            told,
            [(1, Duration::from_millis(1)), (2, Duration::from_millis(2))]
        );
        assert_eq!(handed, Some((4, Duration::from_millis(4))));
        // Taken up by the scheduler at attempt 4: its delay is the fourth.
        let (ran, _, handed) = from_attempt(&policy, 4, 5);
        assert_eq!(ran, [4]);
        assert_eq!(handed, Some((5, Duration::from_millis(8))));
    }

    #[test]
    fn a_policy_hands_off_only_the_waits_over_its_limit() {
        let policy = RetryPolicy::exponential(3).hand_off_waits_over(Duration::from_millis(50));
        assert!(policy.may_hand_off());
        assert!(!policy.hands_off(Duration::from_millis(50)));
        assert!(policy.hands_off(Duration::from_millis(51)));
        assert!(
            !RetryPolicy::none()
                .hand_off_waits_over(Duration::ZERO)
                .may_hand_off(),
            "one attempt: nothing to hand off"
        );
        assert!(
            !RetryPolicy::exponential(3)
                .max_delay(Duration::from_millis(20))
                .hand_off_waits_over(Duration::from_millis(20))
                .may_hand_off(),
            "no wait is ever over the limit"
        );
    }

    #[test]
    fn the_loop_makes_no_more_attempts_than_the_policy_allows() {
        let (last, ran) = run(&quick(3), |_| Some(true));
        assert_eq!(last, Err(true));
        assert_eq!(ran, [1, 2, 3]);
        let (last, ran) = run(&RetryPolicy::none(), |_| Some(true));
        assert_eq!(last, Err(true));
        assert_eq!(ran, [1]);
    }
}
