//! One writer per product at a time within a process: the units of work
//! that load one product queue for it instead of racing each other to the
//! commit, where all but one would lose and run again. A busy product gets
//! slower, never a stream of conflicts; between processes, the version
//! check at commit still decides.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use tokio::task;

/// The products being changed in this process, by sku; clones share them.
#[derive(Debug, Clone, Default)]
pub struct ProductLocks {
    held: Arc<Mutex<HashMap<String, Slot>>>,
}

#[derive(Debug)]
struct Slot {
    mutex: Weak<AsyncMutex<()>>,
    /// The task that holds the product, when it holds it.
    holder: Option<task::Id>,
}

impl ProductLocks {
    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until no other unit of work of this process holds `sku`, then
    /// holds it until the guard is dropped. Waiting holds no connection and
    /// no transaction.
    ///
    /// A task that holds `sku` already (two units of work in one task, as
    /// in a test) is let through at once rather than waiting for itself
    /// for ever: its units of work are serialized by the task, and the
    /// version check at commit decides between them as between processes.
    /// So is code outside any tokio task (a `block_on`), which cannot be
    /// told apart from the tasks it waits for.
    ///
    /// Reentrant per task only: a handler that holds a product and waits
    /// for work on another task that loads it (a dispatch whose events run
    /// on tasks of their own, before the handler commits) waits for
    /// itself. Commit, or drop the unit of work, before such a wait.
    pub async fn lock(&self, sku: &str) -> ProductGuard {
        let Some(me) = task::try_id() else {
            return ProductGuard {
                guard: None,
                sku: sku.to_owned(),
                locks: self.clone(),
            };
        };
        let me = Some(me);
        let mutex = {
            let mut slots = self.slots();
            let existing = slots
                .get(sku)
                .and_then(|slot| Some((slot.mutex.upgrade()?, slot.holder)));
            match existing {
                Some((_, Some(holder))) if Some(holder) == me => {
                    return ProductGuard {
                        guard: None,
                        sku: sku.to_owned(),
                        locks: self.clone(),
                    };
                }
                Some((mutex, _)) => mutex,
                None => {
                    let mutex = Arc::new(AsyncMutex::new(()));
                    slots.insert(
                        sku.to_owned(),
                        Slot {
                            mutex: Arc::downgrade(&mutex),
                            holder: None,
                        },
                    );
                    mutex
                }
            }
        };
        let guard = mutex.lock_owned().await;
        if let Some(slot) = self.slots().get_mut(sku) {
            slot.holder = me;
        }
        ProductGuard {
            guard: Some(guard),
            sku: sku.to_owned(),
            locks: self.clone(),
        }
    }
}

/// A product held by one unit of work; dropping it lets the next one in.
#[derive(Debug)]
pub struct ProductGuard {
    /// `None` for a task's second hold on a product it holds already.
    guard: Option<OwnedMutexGuard<()>>,
    sku: String,
    locks: ProductLocks,
}

impl ProductGuard {
    /// The product held.
    pub fn sku(&self) -> &str {
        &self.sku
    }
}

impl Drop for ProductGuard {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let mut slots = self.locks.slots();
        // Let the next unit of work in, then forget the product if nobody
        // waits for it (each waiter holds the mutex too).
        drop(guard);
        let forget = match slots.get_mut(&self.sku) {
            Some(slot) => {
                slot.holder = None;
                slot.mutex.strong_count() == 0
            }
            None => false,
        };
        if forget {
            slots.remove(&self.sku);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Runs `test` in a task of its own, as the bus runs handlers.
    async fn in_a_task(test: impl std::future::Future<Output = ()> + Send + 'static) {
        tokio::spawn(test).await.expect("the test's task ends");
    }

    #[tokio::test]
    async fn one_holder_per_product_and_none_across_products() {
        in_a_task(one_holder_per_product()).await;
    }

    async fn one_holder_per_product() {
        let locks = ProductLocks::default();
        let first = locks.lock("LAMP").await;
        let other = tokio::time::timeout(Duration::from_secs(5), locks.lock("DESK"))
            .await
            .expect("another product is not held");
        let waiting = tokio::spawn({
            let locks = locks.clone();
            async move { locks.lock("LAMP").await.sku().to_owned() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "LAMP is held");
        drop(first);
        assert_eq!(waiting.await.expect("the waiter ends"), "LAMP");
        drop(other);
        assert!(
            locks.slots().is_empty(),
            "products nobody holds are forgotten"
        );
    }

    #[tokio::test]
    async fn a_task_never_waits_for_itself() {
        in_a_task(never_waits_for_itself()).await;
    }

    async fn never_waits_for_itself() {
        let locks = ProductLocks::default();
        let outer = locks.lock("LAMP").await;
        let inner = tokio::time::timeout(Duration::from_secs(5), locks.lock("LAMP"))
            .await
            .expect("the holder's own task goes through");
        drop(inner);
        let waiting = tokio::spawn({
            let locks = locks.clone();
            async move { drop(locks.lock("LAMP").await) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the outer hold is still in force");
        drop(outer);
        waiting.await.expect("the waiter ends");
    }
}
