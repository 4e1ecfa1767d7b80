//! An asymmetric memory barrier: a light side that costs a dispatch
//! nothing at run time, and a heavy side, taken rarely (closing the bus,
//! asking what is in flight), that makes every light side of the process a
//! full barrier.
//!
//! On Linux the heavy side is `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`:
//! the kernel runs a full memory barrier on every CPU running a thread of
//! this process, and a thread not running passes through one when it is
//! scheduled again. Every point of every thread's program is then ordered
//! with the call: what a thread did before that point is visible to the
//! caller once the call returns, and what it does after sees what the
//! caller did before the call. The light side need only keep the compiler
//! from moving its accesses across it (a compiler fence).
//!
//! Where `membarrier` is missing (another system, an old kernel, a sandbox
//! that refuses the call), the process registers nothing, and both sides
//! are full fences (`fence(SeqCst)`): slower on the light side, equally
//! correct. The choice is made once per process, before any bus exists
//! ([`prepare`], called by every build), and never changes after.

use std::sync::atomic::{compiler_fence, fence, AtomicBool, Ordering};
use std::sync::Once;

/// Whether this process registered for expedited private membarriers.
static ASYMMETRIC: AtomicBool = AtomicBool::new(false);
static PREPARED: Once = Once::new();

/// Registers the process for the heavy side, once. Called by every bus
/// build: a bus, and so every light or heavy side taken on it, exists only
/// after this returned, so they all see its outcome.
pub(crate) fn prepare() {
    PREPARED.call_once(|| ASYMMETRIC.store(register(), Ordering::Relaxed));
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn register() -> bool {
    use rustix::thread::{membarrier, membarrier_query, MembarrierCommand, MembarrierQuery};
    membarrier_query().contains(MembarrierQuery::PRIVATE_EXPEDITED)
        && membarrier(MembarrierCommand::RegisterPrivateExpedited).is_ok()
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn register() -> bool {
    false
}

/// The light side, between a store and a load that must not be reordered
/// (see the module's docs).
#[inline(always)]
pub(crate) fn light() {
    if ASYMMETRIC.load(Ordering::Relaxed) {
        compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The heavy side: after it, every light side of the process taken before
/// it has its earlier stores visible here, and every light side taken after
/// it sees this thread's earlier stores.
pub(crate) fn heavy() {
    fence(Ordering::SeqCst);
    if ASYMMETRIC.load(Ordering::Relaxed) && !expedited() {
        // Registered, yet refused now: never seen, but were it to happen,
        // the light sides taken meanwhile were compiler fences only. There
        // is no correct way on from here; say so loudly.
        tracing::error!(
            "membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed after its registration: \
             the count of dispatches in flight may be short"
        );
    }
    fence(Ordering::SeqCst);
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn expedited() -> bool {
    use rustix::thread::{membarrier, MembarrierCommand};
    membarrier(MembarrierCommand::PrivateExpedited).is_ok()
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn expedited() -> bool {
    false
}

/// Whether the light side is a compiler fence (the process registered for
/// membarrier).
#[cfg(test)]
pub(crate) fn is_asymmetric() -> bool {
    ASYMMETRIC.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_heavy_side_can_be_taken_after_preparing() {
        super::prepare();
        super::heavy();
        super::light();
        eprintln!("asymmetric barrier: {}", super::is_asymmetric());
    }
}
