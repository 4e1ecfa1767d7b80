//! What time it is, for the scheduler and the sagas: the system's clock in
//! a service, a [`VirtualClock`] in a test, which moves only when the test
//! says so.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// The time a scheduler compares due times with.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock a test moves by hand: time stands still until
/// [`advance`](Self::advance). Clones share one time.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use arch_events::schedule::{Clock, VirtualClock};
///
/// let clock = VirtualClock::at(SystemTime::UNIX_EPOCH);
/// let other = clock.clone();
/// clock.advance(Duration::from_secs(90));
/// assert_eq!(other.now(), SystemTime::UNIX_EPOCH + Duration::from_secs(90));
/// ```
#[derive(Debug, Clone)]
pub struct VirtualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl VirtualClock {
    /// A clock that reads the system's time now, to the whole second (so
    /// that a time it gives reads back equal from a store that keeps
    /// milliseconds), and stands still there.
    pub fn new() -> Self {
        let now = SystemTime::now();
        let second = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| std::time::UNIX_EPOCH + Duration::from_secs(since.as_secs()))
            .unwrap_or(now);
        VirtualClock::at(second)
    }

    /// A clock that reads `now`.
    pub fn at(now: SystemTime) -> Self {
        VirtualClock {
            now: Arc::new(Mutex::new(now)),
        }
    }

    /// The time it reads ([`Clock::now`], without the trait in scope).
    pub fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the clock `by` forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }

    /// Sets the clock to `to` (forward or back).
    pub fn set(&self, to: SystemTime) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

impl Default for VirtualClock {
    fn default() -> Self {
        VirtualClock::new()
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> SystemTime {
        VirtualClock::now(self)
    }
}
