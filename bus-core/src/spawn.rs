//! Where the rest of a dispatch runs when its caller stops waiting for it.
//!
//! An awaited dispatch runs its whole cascade inside the caller's future.
//! If that future is dropped once the command handler has returned (an HTTP
//! client hung up, a timeout fired), the events still queued are not
//! dropped with it: what is left of the cascade is handed to the bus's
//! [`Spawn`] and runs to its end there. The event handler that was running
//! when the future was dropped is called again from the start (it was
//! interrupted at an `.await`), and so are a retry and a dead letter that
//! were under way; every other handler runs once, as it would have.

use crate::call::BoxFuture;

/// Runs a detached piece of a dispatch to its end.
///
/// Bootstrap names the application's runtime with
/// [`BusBuilder::spawner`](crate::BusBuilder::spawner); any `Fn` that spawns
/// a `'static` future will do:
///
/// ```
/// use bus_core::Bus;
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
/// Without one, the bus uses the tokio runtime the dispatch was dropped on
/// (with bus-core's `tokio` feature), or else a thread of its own that
/// drives the rest with [`block_on`](crate::block_on): handlers that need
/// a runtime's timers or I/O then fail there (loudly: logged, retried,
/// dead-lettered), so name your runtime.
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
