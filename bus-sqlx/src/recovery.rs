//! Recovery: the stored events whose handlers did not all complete are
//! delivered again, to exactly the handlers that did not.
//!
//! Two sources, each round:
//! - the events this process let go of before their delivery finished (the
//!   command failed after its commit, the task running the cascade was torn
//!   down, the store could not record the end of a delivery): the store
//!   learns of each one the moment the bus drops it;
//! - the events of processes that died (their heartbeat is older than the
//!   node timeout): taken over in one statement, so that of several live
//!   processes exactly one delivers each.
//!
//! An event that keeps coming back (recovered more than
//! [`Settings::max_recoveries`](crate::Settings::max_recoveries) times,
//! because a handler kills its process) goes to the dead letters, one
//! letter per handler that never completed; an event whose type this bus
//! does not know, or whose stored JSON no longer reads, goes there too.

use std::sync::Arc;

use arch_events::{Bus, MessageContext, MessageId};
use chrono::Utc;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::backend::{parse_id, Backend, EventRow};
use crate::dead_letters::DeadLetterRecord;
use crate::error::Error;
use crate::store::Store;

/// The recovery loop of one process, running.
#[derive(Debug)]
pub struct Recovery {
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Recovery {
    /// Stops the loop after its current round, and waits for it.
    pub async fn stop(self) {
        self.stop.notify_one();
        if let Err(error) = self.task.await {
            tracing::error!(%error, "arch-events-sqlx: the recovery loop ended badly");
        }
    }
}

impl<DB: Backend> Store<DB> {
    /// Checks that the bus can store every event it handles, then starts
    /// this process's recovery loop (a tokio task): a round at once (the
    /// events a dead process left), then every
    /// [`recover_every`](crate::Settings::recover_every) and whenever this
    /// process lets go of an undelivered event, until the bus is closed or
    /// [`Recovery::stop`].
    ///
    /// [`Error::NotStorable`] names every event type that has a handler in
    /// `bus` but no JSON form (`#[event(serde)]`): a unit of work could not
    /// stage it.
    pub fn start_recovery(&self, bus: &Bus) -> Result<Recovery, Error> {
        check_storable(bus)?;
        self.inner
            .recovering
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(run(self.clone(), bus.clone(), stop.clone()));
        Ok(Recovery { stop, task })
    }

    /// One recovery round (what the loop does each time): returns how many
    /// events it delivered again. Three sources, in this order: the events
    /// this process let go of undelivered; the events of dead processes;
    /// and this process's own events older than the node timeout that it is
    /// not delivering (whatever the first source missed: a commit whose
    /// outcome showed only after its events were looked for).
    pub async fn recover_once(&self, bus: &Bus) -> Result<usize, Error> {
        let inner = &self.inner;
        let settings = &inner.settings;
        let mut delivered = 0;
        let mut abandoned = inner.take_abandoned().into_iter();
        while let Some(id) = abandoned.next() {
            match self.take_up(bus, id).await {
                Ok(true) => delivered += 1,
                Ok(false) => {}
                Err(error) => {
                    inner.abandon_again(abandoned);
                    return Err(error);
                }
            }
        }
        let taken = {
            let _turn = inner.writer_turn().await;
            DB::take_over(&inner.pool, &inner.node, settings.recovery_batch).await?
        };
        if !taken.is_empty() {
            tracing::info!(
                events = taken.len(),
                "arch-events-sqlx: taking over the events of a process that stopped"
            );
        }
        // Each one is counted as a recovery when it is taken up, not when
        // it is taken over: a batch this process dies in the middle of is
        // not counted against the events it never got to.
        for text in taken {
            let Ok(id) = parse_id("id", &text) else {
                tracing::error!(id = %text, "arch-events-sqlx: a stored event has no valid id");
                continue;
            };
            match self.take_up(bus, id).await {
                Ok(true) => delivered += 1,
                Ok(false) => {}
                Err(error) => {
                    // They are this process's now: its own sweep finds them.
                    return Err(error);
                }
            }
        }
        let own = DB::owned_before(
            &inner.pool,
            &inner.node,
            settings.node_timeout,
            settings.recovery_batch,
        )
        .await?;
        for text in own {
            let Ok(id) = parse_id("id", &text) else {
                continue;
            };
            if self.take_up(bus, id).await? {
                delivered += 1;
            }
        }
        Ok(delivered)
    }

    /// Takes up one of this process's events that nothing here delivers
    /// (`false` when something does, or when its delivery finished).
    async fn take_up(&self, bus: &Bus, id: MessageId) -> Result<bool, Error> {
        let inner = &self.inner;
        if !inner.register(id) {
            return Ok(false); // delivered here again already
        }
        let row = {
            let _turn = inner.writer_turn().await;
            DB::reload(&inner.pool, &id.to_string(), &inner.node).await
        };
        match row {
            Ok(Some(row)) => {
                self.deliver(bus, id, row).await;
                Ok(true)
            }
            Ok(None) => {
                // Its delivery finished, it was never written, or another
                // live process owns it now.
                inner.finished(id);
                inner.unregister(id);
                Ok(false)
            }
            Err(error) => {
                inner.unregister_quietly(id);
                Err(error.into())
            }
        }
    }

    /// Delivers one taken-up event (registered in flight) again, or sends
    /// it to the dead letters when it cannot be. A failure of the database
    /// leaves it abandoned, for the next round.
    async fn deliver(&self, bus: &Bus, id: MessageId, row: EventRow) {
        if let Err(error) = self.try_deliver(bus, id, row).await {
            tracing::warn!(%error, message_id = %id, "arch-events-sqlx: redelivery postponed");
            self.inner.unregister_quietly(id);
        }
    }

    async fn try_deliver(&self, bus: &Bus, id: MessageId, row: EventRow) -> Result<(), Error> {
        let inner = &self.inner;
        let completed = DB::completed(&inner.pool, &row.id).await?;
        let max = i64::from(inner.settings.max_recoveries);
        if row.recoveries > max {
            let reason = format!(
                "the event was taken up by a recovery {} times without its delivery finishing \
                 (does a handler crash its process?)",
                row.recoveries
            );
            return self.give_up(bus, &row, id, &completed, &reason).await;
        }
        let event = match bus.decode_event(&row.name, &row.payload) {
            Ok(event) => event,
            Err(error) => {
                let reason = format!("the stored event cannot be delivered: {error}");
                return self.give_up(bus, &row, id, &completed, &reason).await;
            }
        };
        let correlation_id = match parse_id("correlation_id", &row.correlation_id) {
            Ok(correlation_id) => correlation_id,
            Err(_) => id,
        };
        let context = MessageContext::restored(
            id,
            correlation_id,
            row.causation_id
                .as_deref()
                .and_then(|causation| causation.parse().ok()),
        );
        // From here on the event tells the store when the bus lets it go.
        let event = event.with_context(context).stored(self.delivery_log());
        tracing::info!(
            message_name = %row.name,
            message_id = %id,
            completed = completed.len(),
            recoveries = row.recoveries,
            "arch-events-sqlx: delivering an event again"
        );
        if let Err(error) = bus.redeliver(event, &completed).await {
            tracing::warn!(%error, message_id = %id, "arch-events-sqlx: redelivery stopped");
        }
        Ok(())
    }

    /// Keeps a dead letter for each handler of the event that did not
    /// complete (one for the event when its type is unknown here), then
    /// drops the event. On a database failure the event stays, abandoned.
    async fn give_up(
        &self,
        bus: &Bus,
        row: &EventRow,
        id: MessageId,
        completed: &[String],
        reason: &str,
    ) -> Result<(), Error> {
        let inner = &self.inner;
        let meta = bus.message_types().find(|meta| meta.name() == row.name);
        let handlers: Vec<String> = match meta {
            Some(meta) => bus
                .handlers_of(meta)
                .filter(|handler| !completed.iter().any(|done| done == handler))
                .map(str::to_owned)
                .collect(),
            None => vec![String::new()],
        };
        tracing::error!(
            message_name = %row.name,
            message_id = %id,
            handlers = ?handlers,
            reason,
            "arch-events-sqlx: an event goes to the dead letters undelivered"
        );
        let letters: Vec<DeadLetterRecord> = handlers
            .into_iter()
            .map(|handler| DeadLetterRecord {
                message_name: row.name.clone(),
                location: meta.map(|m| m.location().to_string()).unwrap_or_default(),
                handler,
                error: reason.to_owned(),
                attempts: u32::try_from(row.recoveries).unwrap_or(u32::MAX),
                failed_at: Utc::now(),
                message_id: row.id.clone(),
                correlation_id: row.correlation_id.clone(),
                causation_id: row.causation_id.clone(),
                payload: Some(row.payload.clone()),
            })
            .collect();
        let result = {
            let _turn = inner.writer_turn().await;
            // The letters and the end of the delivery in one transaction: a
            // failure leaves neither, and the next round tries again.
            DB::give_up(&inner.pool, &letters, &row.id).await
        };
        match result {
            Ok(()) => {
                inner.finished(id);
                inner.unregister(id);
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// Refuses a bus with an event type that has a handler but cannot be
/// stored.
fn check_storable(bus: &Bus) -> Result<(), Error> {
    let unstorable: Vec<&'static str> = bus
        .message_types()
        .filter(|meta| meta.kind() == arch_events::MessageKind::Event && meta.codec().is_none())
        .filter(|meta| bus.handlers_of(meta).next().is_some())
        .map(|meta| meta.name())
        .collect();
    if unstorable.is_empty() {
        Ok(())
    } else {
        Err(Error::NotStorable(unstorable))
    }
}

/// The loop: rounds until the bus closes or `stop` is told; nodes whose
/// heartbeat stopped long ago are forgotten once an hour.
async fn run<DB: Backend>(store: Store<DB>, bus: Bus, stop: Arc<Notify>) {
    round_after_round(&store, &bus, &stop).await;
    store
        .inner
        .recovering
        .store(false, std::sync::atomic::Ordering::Relaxed);
}

async fn round_after_round<DB: Backend>(store: &Store<DB>, bus: &Bus, stop: &Notify) {
    let settings = store.settings().clone();
    let mut purged = tokio::time::Instant::now();
    loop {
        if bus.is_closed() {
            return;
        }
        match store.recover_once(bus).await {
            Ok(0) => {}
            Ok(events) => tracing::debug!(events, "arch-events-sqlx: recovery round"),
            Err(error) => {
                tracing::warn!(%error, "arch-events-sqlx: recovery round failed; trying again")
            }
        }
        if purged.elapsed() >= settings.purge_every {
            purged = tokio::time::Instant::now();
            let stale_for = settings
                .node_timeout
                .max(std::time::Duration::from_secs(24 * 60 * 60));
            let _turn = store.writer_turn().await;
            if let Err(error) = DB::purge_nodes(store.pool(), stale_for).await {
                tracing::warn!(%error, "arch-events-sqlx: stale nodes not purged");
            }
        }
        tokio::select! {
            () = stop.notified() => return,
            () = store.inner.wake.notified() => {}
            () = tokio::time::sleep(settings.recover_every) => {}
        }
    }
}
