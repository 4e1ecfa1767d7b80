//! The broker entrypoint (Redis Streams): the outbox relay publishes the
//! external events (`line_allocated`), and a consumer dispatches the
//! external commands (`change_batch_quantity`), with poison messages kept
//! in `change_batch_quantity.dead`.

use std::sync::Arc;
use std::time::Duration;

use arch_events::transport::{Consumer, TransportError};
use arch_events::Bus;
use arch_events_redis::{RedisPublisher, RedisSubscriber};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::adapters::database::{redacted, Database};

/// The stream the app consumes.
pub const INBOUND_STREAM: &str = "change_batch_quantity";

/// The consumer group of every instance of the app.
pub const CONSUMER_GROUP: &str = "allocation";

/// How long a delivery may stay unacknowledged by an instance before another
/// one claims it (the first one died).
pub const CLAIM_AFTER: Duration = Duration::from_secs(10);

/// The relay and the consumer, running.
#[derive(Debug)]
pub struct BrokerTasks {
    stop_relay: Arc<Notify>,
    relay: JoinHandle<()>,
    consumer: JoinHandle<()>,
}

/// Connects to Redis at `url`, then starts the outbox relay (arch-events-sqlx's:
/// batches back to back while there are rows, a round every relay pause
/// when idle) and the consumer (as `consumer` in the group).
pub async fn start(
    url: &str,
    consumer: &str,
    database: &Database,
    bus: Bus,
) -> Result<BrokerTasks, TransportError> {
    let publisher = Arc::new(RedisPublisher::new(arch_events_redis::connect(url).await?));
    let subscriber =
        RedisSubscriber::join(url, INBOUND_STREAM, CONSUMER_GROUP, consumer, CLAIM_AFTER).await?;
    let stop_relay = Arc::new(Notify::new());
    let stop = stop_relay.clone();
    let outbox = database.clone();
    let relay = tokio::spawn(async move {
        outbox
            .relay(publisher, async move { stop.notified().await })
            .await
    });
    let consumer = tokio::spawn(
        Consumer::new(bus, subscriber)
            .with_inbox(database.inbox())
            .run(),
    );
    tracing::info!(
        url = %redacted(url),
        stream = INBOUND_STREAM,
        "broker: relaying the outbox and consuming"
    );
    Ok(BrokerTasks {
        stop_relay,
        relay,
        consumer,
    })
}

/// Relays the outbox of `database` to Redis at `url` until `stop` resolves:
/// the relay as a process of its own (`example-app relay`), beside app
/// instances that relay too or not at all.
pub async fn relay_only(
    url: &str,
    database: &Database,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), TransportError> {
    let publisher = Arc::new(RedisPublisher::new(arch_events_redis::connect(url).await?));
    tracing::info!(url = %redacted(url), "relaying the outbox");
    database.relay(publisher, stop).await;
    Ok(())
}

impl BrokerTasks {
    /// Stops the relay (after its current round). The consumer stops by
    /// itself once the bus is closed.
    pub async fn stop_relay(&mut self) {
        self.stop_relay.notify_one();
        if let Err(error) = (&mut self.relay).await {
            tracing::error!(%error, "the outbox relay ended badly");
        }
    }

    /// Waits for the consumer, once the bus is closed.
    pub async fn join_consumer(self) {
        if let Err(error) = self.consumer.await {
            tracing::error!(%error, "the consumer ended badly");
        }
    }
}
