//! What a unit of work's commit writes besides its own changes, in its own
//! transaction, with one call: every event it releases (for durable
//! delivery), the outbox message of each external one, the inbox row of
//! the inbound message it handles, and the record of the stored event it
//! delivers.

use arch_events::delivery::Delivery;
use arch_events::transport::OutboundMessage;
use arch_events::{EventReleaser, MessageContext, MessageId, PendingEvent};
use sqlx::Transaction;

use crate::backend::{Backend, EventRow};
use crate::error::StageError;
use crate::store::Store;

/// What [`Store::stage`] wrote: release it once the transaction committed.
/// Dropped instead (the commit failed), it releases nothing.
#[must_use = "release the staged events once the transaction committed"]
pub struct Staged<DB: Backend> {
    store: Store<DB>,
    releaser: EventReleaser,
    events: Vec<PendingEvent>,
    /// The events registered in flight, until they are released.
    registered: Vec<MessageId>,
    /// The delivery recorded in the transaction.
    delivery: Option<Delivery>,
}

impl<DB: Backend> std::fmt::Debug for Staged<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("events", &self.events.len())
            .field("delivery", &self.delivery)
            .finish()
    }
}

impl<DB: Backend> Staged<DB> {
    /// Hands the staged events to the releaser, marked as stored (the bus
    /// reports their delivery to the store), and tells the bus that the
    /// delivery this call served is recorded. Call it after the commit
    /// succeeded.
    pub fn release(mut self) {
        let log = self.store.delivery_log();
        let events: Vec<PendingEvent> = self
            .events
            .drain(..)
            .map(|event| event.stored(log.clone()))
            .collect();
        // From here on each event tells the store when the bus lets it go.
        self.registered.clear();
        if let Some(delivery) = self.delivery.take() {
            if delivery.settles() {
                self.store.inner.finished(delivery.event());
            }
            self.releaser.delivery_recorded();
        }
        self.releaser.release_all(events);
    }

    /// The staged events, with the ids they were stored under.
    pub fn events(&self) -> &[PendingEvent] {
        &self.events
    }
}

impl<DB: Backend> Drop for Staged<DB> {
    fn drop(&mut self) {
        // Not released: the commit failed, or its outcome is unknown (the
        // connection broke while committing). The recovery looks: an event
        // that was written after all is delivered, one that was not is not
        // found.
        for id in self.registered.drain(..) {
            self.store.inner.unregister(id);
        }
    }
}

impl<DB: Backend> Store<DB> {
    /// Writes, in `transaction` (the unit of work's own, before it
    /// commits), everything the commit owes the bus:
    ///
    /// - the record of the delivery this call serves, when it handles a
    ///   stored event ([`EventReleaser::delivery`]): so that the handler's
    ///   effect and the record of it commit together, once;
    ///   [`StageError::Duplicate`] if it was handled already;
    /// - the inbox row of the inbound message the call handles, when it is
    ///   one ([`MessageContext::is_inbound`]); [`StageError::AlreadyHandled`]
    ///   if it is there already;
    /// - every event in `events`, with its ids (made now, as caused by
    ///   `flow`, the message the call handles): delivered durably, again
    ///   after a crash, until every handler handled it;
    /// - the outbox message of every external event (`external = "..."`),
    ///   for the relay.
    ///
    /// Events released by a query's handler are refused
    /// ([`StageError::QueryReleases`]): none is stored.
    ///
    /// On an error, roll the transaction back (drop it). Once it committed,
    /// [`release`](Staged::release) what this returns.
    ///
    /// On a duplicate, the releaser is told
    /// ([`EventReleaser::delivery_duplicate`]): the handler's error is then
    /// not a failure (neither retried nor dead-lettered).
    pub async fn stage(
        &self,
        transaction: &mut Transaction<'_, DB>,
        releaser: &EventReleaser,
        flow: &MessageContext,
        events: Vec<PendingEvent>,
    ) -> Result<Staged<DB>, StageError> {
        if !events.is_empty() && !releaser.accepts_events() {
            return Err(StageError::QueryReleases {
                events: events.iter().map(PendingEvent::name).collect(),
            });
        }
        let mut staged = self.stage_delivery(transaction, releaser).await?;
        let connection: &mut DB::Connection = transaction;
        if flow.is_inbound() {
            let id = flow.message_id().to_string();
            if let Err(error) = DB::record_inbox(connection, &id).await {
                return Err(match error {
                    sqlx::Error::Database(e) if e.is_unique_violation() => {
                        StageError::AlreadyHandled { message_id: id }
                    }
                    other => StageError::Database(other),
                });
            }
        }
        if events.is_empty() {
            return Ok(staged);
        }
        staged.events.reserve(events.len());
        let mut rows = Vec::with_capacity(events.len());
        let mut outbound = Vec::new();
        for mut event in events {
            let context = event.assign_ids(flow);
            let name = event.name();
            let payload = match event.to_json() {
                Some(Ok(payload)) => payload,
                Some(Err(source)) => {
                    return Err(StageError::Encode {
                        event: name,
                        source: source.into(),
                    })
                }
                None => return Err(StageError::NotStorable(name)),
            };
            if let Some(stream) = event.meta().external() {
                outbound.push(OutboundMessage {
                    id: context.message_id(),
                    stream: stream.to_owned(),
                    name: stream.to_owned(),
                    payload: payload.clone(),
                    correlation_id: context.correlation_id(),
                    causation_id: context.causation_id(),
                });
            }
            rows.push(EventRow {
                id: context.message_id().to_string(),
                name: name.to_owned(),
                payload,
                correlation_id: context.correlation_id().to_string(),
                causation_id: context.causation_id().map(|id| id.to_string()),
                recoveries: 0,
            });
            // In flight before the commit: the recovery never takes up an
            // event this process is about to deliver.
            if self.inner.register(context.message_id()) {
                staged.registered.push(context.message_id());
            }
            staged.events.push(event);
        }
        DB::insert_staged(connection, &rows, &self.inner.node, &outbound).await?;
        Ok(staged)
    }

    /// The part of [`stage`](Self::stage) a handler that raises no events
    /// needs (a read-model projection): the record of the delivery its call
    /// serves, in `transaction`, so that its write and the record commit
    /// together; nothing when the call serves none.
    /// [`StageError::Duplicate`] if it was recorded already.
    pub async fn stage_delivery(
        &self,
        transaction: &mut Transaction<'_, DB>,
        releaser: &EventReleaser,
    ) -> Result<Staged<DB>, StageError> {
        // Only a delivery of this store's events (a unit of work on another
        // database leaves the record to the bus), or a scheduled retry (its
        // record is this unit of work's inbox).
        let log = self.delivery_log();
        let delivery = releaser
            .delivery()
            .filter(|delivery| delivery.scheduled().is_some() || delivery.is_for(&log));
        if let Some(delivery) = delivery {
            let connection: &mut DB::Connection = transaction;
            let event = delivery.event().to_string();
            let handler = delivery.handler();
            let recorded = match (delivery.letter(), delivery.scheduled()) {
                // A replay of a dead letter: the event's delivery ended when
                // the letter was kept; the letter is what records this one.
                (Some(letter), _) => DB::record_replay(connection, letter).await?,
                // A retry the scheduler fired: the event's delivery ended
                // when it was scheduled; its own id, in the inbox, records
                // this one.
                (None, Some(retry)) => {
                    match DB::record_inbox(connection, &retry.to_string()).await {
                        Ok(()) => true,
                        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => false,
                        Err(other) => return Err(other.into()),
                    }
                }
                (None, None) => {
                    DB::record_delivery(connection, &event, handler, delivery.settles()).await?
                }
            };
            if !recorded {
                releaser.delivery_duplicate();
                return Err(StageError::Duplicate { event, handler });
            }
        }
        Ok(Staged {
            store: self.clone(),
            releaser: releaser.clone(),
            events: Vec::new(),
            registered: Vec::new(),
            delivery,
        })
    }
}
