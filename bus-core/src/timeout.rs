//! The timeout layer: an `async fn` handler call that takes too long is
//! dropped and fails with [`FailureCause::TimedOut`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::call::BoxFuture;
use crate::layer::{HandlerCall, Layer, Next, Outcome};
use crate::observer::FailureCause;

/// Fails a handler call that has not finished after `limit`.
///
/// Each attempt gets the whole limit (the bus installs it inside the retry
/// layer), and a timed-out attempt counts as transient. A plain `fn` handler
/// cannot be interrupted while it runs, so a timeout only ever fires on an
/// `async fn` handler's await points;
/// [`BusBuilder::handler_timeout`](crate::BusBuilder::handler_timeout) refuses
/// to put one on a plain `fn`.
///
/// ```
/// use std::time::Duration;
/// use arch_events::{handler, Bus, Event, Timeout};
///
/// #[derive(Debug, Clone, Event)]
/// struct Ordered;
///
/// #[handler]
/// async fn call_slow_partner(_: &Ordered) -> Result<(), std::convert::Infallible> {
///     futures_timer::Delay::new(Duration::from_secs(5)).await;
///     Ok(())
/// }
///
/// let bus = Bus::builder()
///     .layer_for::<Ordered>(Timeout::new(Duration::from_millis(20)))
///     .build()
///     .unwrap();
/// bus.publish_blocking(Ordered).unwrap(); // back in 20 ms, not 5 s
/// let letters = bus.dead_letters().unwrap().letters();
/// assert_eq!(letters[0].error(), "timed out after 20ms");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Timeout {
    limit: Duration,
}

impl Timeout {
    /// A timeout of `limit` per attempt.
    pub fn new(limit: Duration) -> Self {
        Timeout { limit }
    }

    /// The limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

impl Layer for Timeout {
    fn call<'a>(&'a self, call: HandlerCall<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(Race {
            call: next.run(call),
            timer: futures_timer::Delay::new(self.limit),
            limit: self.limit,
        })
    }
}

/// The call, unless the timer fires first.
struct Race<'a> {
    call: BoxFuture<'a, Outcome>,
    timer: futures_timer::Delay,
    limit: Duration,
}

impl Future for Race<'_> {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        if let Poll::Ready(outcome) = self.call.as_mut().poll(cx) {
            return Poll::Ready(outcome);
        }
        match Pin::new(&mut self.timer).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(FailureCause::TimedOut(self.limit))),
            Poll::Pending => Poll::Pending,
        }
    }
}
