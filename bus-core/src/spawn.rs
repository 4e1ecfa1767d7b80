//! Where the events of an awaited dispatch run, so that a caller that stops
//! waiting for it (an HTTP client hung up, a timeout fired) does not stop
//! them.
//!
//! - With a spawner named at build ([`BusBuilder::spawner`](crate::BusBuilder::spawner)),
//!   the events of an awaited dispatch run on a task of their own, and the
//!   caller awaits their end: dropping the caller's future once the command
//!   handler returned interrupts none of them.
//! - Without one, they run inside the caller's future (no task: the
//!   cheapest); if that future is dropped at an `.await`, what is left of
//!   the cascade goes on on the current tokio runtime (arch-events' `tokio`
//!   feature) or a thread of its own: the event handler that was
//!   interrupted is called again from the start, and so are a retry and a
//!   dead letter that were under way; every other handler runs once, as it
//!   would have.

use crate::call::BoxFuture;

/// Runs the events of a dispatch to their end, on another task.
///
/// Bootstrap names the application's runtime with
/// [`BusBuilder::spawner`](crate::BusBuilder::spawner); any `Fn` that spawns
/// a `'static` future will do. Handlers then run on that task, not the
/// caller's (a task-local of the caller is not there), and every awaited
/// dispatch must be driven inside that runtime (`tokio::spawn` panics
/// outside one):
///
/// ```
/// use arch_events::Bus;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bus = Bus::builder()
///     .spawner(|task| {
///         tokio::spawn(task);
///     })
///     .build()
///     .unwrap();
/// # let _ = bus;
/// # }
/// ```
///
/// Without one, a dispatch whose caller stopped waiting goes on on the
/// tokio runtime it was dropped on (with arch-events' `tokio` feature), or
/// else on a thread of its own that drives it with
/// a minimal executor of its own: handlers that need a runtime's timers or
/// I/O then fail there (loudly: logged, retried, dead-lettered). Name your
/// runtime.
pub trait Spawn: Send + Sync + 'static {
    /// Runs `task` to its end, on another task or thread.
    fn spawn(&self, task: BoxFuture<'static, ()>);
}

impl<F> Spawn for F
where
    F: Fn(BoxFuture<'static, ()>) + Send + Sync + 'static,
{
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self(task)
    }
}

/// The spawner of a bus built without one: the current tokio runtime when
/// there is one (`tokio` feature), else a thread.
pub(crate) struct DefaultSpawn;

impl Spawn for DefaultSpawn {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        #[cfg(feature = "tokio")]
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(task);
            return;
        }
        spawn_thread(task);
    }
}

/// Drives `task` on a thread of its own; on this thread when no thread can
/// be made (the task is never dropped unrun).
fn spawn_thread(task: BoxFuture<'static, ()>) {
    let task = std::sync::Arc::new(std::sync::Mutex::new(Some(task)));
    let shared = task.clone();
    let spawned = std::thread::Builder::new()
        .name("bus-dispatch".into())
        .spawn(move || run(&shared));
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start a thread for the rest of a dispatch: running it here");
        run(&task);
    }
}

fn run(task: &std::sync::Mutex<Option<BoxFuture<'static, ()>>>) {
    let taken = task
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(task) = taken {
        crate::executor::block_on(task);
    }
}
