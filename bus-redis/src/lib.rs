//! Redis Streams as the broker of an arch-events service.
//!
//! - [`RedisPublisher`] appends each message to its stream (`XADD`), with
//!   its id, name, JSON payload and correlation and causation ids as fields.
//! - [`RedisSubscriber`] reads a stream as one member of a consumer group
//!   (`XREADGROUP`), acknowledges what was handled (`XACK`), claims the
//!   deliveries another member took and never acknowledged once they are
//!   older than `min_idle` (`XAUTOCLAIM`: a consumer that died loses
//!   nothing), and keeps poison messages in `<stream>.dead` with the reason.
//!
//! Both implement `bus_core::transport`'s traits, so a
//! `bus_core::transport::Consumer` runs them through a bus.

use std::time::Duration;

use bus_core::transport::{
    BatchError, Delivery, OutboundMessage, Publisher, Subscriber, TransportError,
};
use bus_core::{async_trait, MessageId};
use redis::aio::MultiplexedConnection;
use redis::Value;

/// The `redis` crate this adapter is built on, for a connection of your own.
pub use redis;

/// Opens a multiplexed connection to `url` (`redis://127.0.0.1:6379`), with
/// an error that says how to start Redis when it is not there.
pub async fn connect(url: &str) -> Result<MultiplexedConnection, TransportError> {
    connect_with(url, redis::AsyncConnectionConfig::new()).await
}

async fn connect_with(
    url: &str,
    config: redis::AsyncConnectionConfig,
) -> Result<MultiplexedConnection, TransportError> {
    let client =
        redis::Client::open(url).map_err(|e| TransportError::new("parsing the Redis URL", e))?;
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|error| {
            TransportError::new(
                "connecting to Redis",
                format!(
                    "{error} (is Redis running at {url}? start one with \
                     `docker run -p 6379:6379 redis:7` or `apt-get install redis-server`)"
                ),
            )
        })
}

/// Publishes messages with `XADD`.
#[derive(Clone)]
pub struct RedisPublisher {
    connection: MultiplexedConnection,
}

impl RedisPublisher {
    /// A publisher over `connection`.
    pub fn new(connection: MultiplexedConnection) -> Self {
        RedisPublisher { connection }
    }
}

impl std::fmt::Debug for RedisPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisPublisher")
    }
}

fn fields(message: &OutboundMessage) -> [(&'static str, String); 5] {
    [
        ("id", message.id.to_string()),
        ("name", message.name.clone()),
        ("payload", message.payload.clone()),
        ("correlation_id", message.correlation_id.to_string()),
        (
            "causation_id",
            message
                .causation_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
        ),
    ]
}

fn xadd(message: &OutboundMessage) -> redis::Cmd {
    let mut command = redis::cmd("XADD");
    command.arg(&message.stream).arg("*");
    for (field, value) in fields(message) {
        command.arg(field).arg(value);
    }
    command
}

#[async_trait]
impl Publisher for RedisPublisher {
    async fn publish(&self, message: &OutboundMessage) -> Result<(), TransportError> {
        let mut connection = self.connection.clone();
        xadd(message)
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(|e| TransportError::new("XADD", e))
    }

    /// One pipeline of `XADD`s: one round trip for the whole batch. On an
    /// error none of it counts as published (some may have been: the relay
    /// sends them again, the consumers' inboxes drop the copies).
    async fn publish_batch(&self, messages: &[OutboundMessage]) -> Result<(), BatchError> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        for message in messages {
            pipeline.add_command(xadd(message));
        }
        let mut connection = self.connection.clone();
        pipeline
            .query_async::<Vec<String>>(&mut connection)
            .await
            .map(drop)
            .map_err(|e| BatchError {
                published: 0,
                error: TransportError::new("XADD (pipelined)", e),
            })
    }
}

/// One member of a consumer group on one stream.
pub struct RedisSubscriber {
    connection: MultiplexedConnection,
    stream: String,
    group: String,
    consumer: String,
    min_idle: Duration,
}

impl std::fmt::Debug for RedisSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSubscriber")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("min_idle", &self.min_idle)
            .finish()
    }
}

impl RedisSubscriber {
    /// Joins `group` on `stream` as `consumer`, on a connection of its own
    /// to `url` (its blocking reads must not hold up anyone else's
    /// commands), creating the group (from the stream's start) and the
    /// stream when missing. Deliveries that another member left
    /// unacknowledged for `min_idle` are claimed.
    pub async fn join(
        url: &str,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
    ) -> Result<Self, TransportError> {
        // A blocking read answers only when its wait is over: no response
        // timeout on this connection.
        let connection = connect_with(
            url,
            redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await?;
        let mut subscriber = RedisSubscriber {
            connection,
            stream: stream.to_owned(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            min_idle,
        };
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<Value>(&mut subscriber.connection)
            .await;
        match created {
            Ok(_) => {}
            Err(error) if error.code() == Some("BUSYGROUP") => {}
            Err(error) => return Err(TransportError::new("XGROUP CREATE", error)),
        }
        Ok(subscriber)
    }

    /// The stream where this stream's poison messages go.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}.dead", self.stream)
    }

    async fn claim_stale(&mut self, max: usize) -> Result<Vec<Delivery>, TransportError> {
        let reply = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(self.min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(max)
            .query_async::<Value>(&mut self.connection)
            .await
            .map_err(|e| TransportError::new("XAUTOCLAIM", e))?;
        // [next-start, [entries...], [deleted ids...]]
        let entries = match reply {
            Value::Array(parts) => parts.into_iter().nth(1),
            _ => None,
        };
        entries
            .map(|entries| parse_entries(&self.stream, entries, 1))
            .unwrap_or_else(|| Ok(Vec::new()))
    }
}

#[async_trait]
impl Subscriber for RedisSubscriber {
    async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, TransportError> {
        let claimed = self.claim_stale(max).await?;
        if !claimed.is_empty() {
            return Ok(claimed);
        }
        let reply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(wait.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async::<Value>(&mut self.connection)
            .await
            .map_err(|e| TransportError::new("XREADGROUP", e))?;
        // nil on timeout; else [[stream, [entries...]]] (RESP2) or a map (RESP3).
        let entries = match reply {
            Value::Nil => return Ok(Vec::new()),
            Value::Array(streams) => streams.into_iter().next().and_then(|s| match s {
                Value::Array(pair) => pair.into_iter().nth(1),
                _ => None,
            }),
            Value::Map(streams) => streams.into_iter().next().map(|(_, entries)| entries),
            other => {
                return Err(TransportError::new(
                    "XREADGROUP",
                    format!("unexpected reply {other:?}"),
                ))
            }
        };
        entries
            .map(|entries| parse_entries(&self.stream, entries, 0))
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<(), TransportError> {
        redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&delivery.receipt)
            .query_async::<i64>(&mut self.connection)
            .await
            .map(drop)
            .map_err(|e| TransportError::new("XACK", e))
    }

    async fn dead_letter(
        &mut self,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), TransportError> {
        let mut command = redis::cmd("XADD");
        command.arg(self.dead_letter_stream()).arg("*");
        for (field, value) in fields(&delivery.message) {
            command.arg(field).arg(value);
        }
        command
            .arg("reason")
            .arg(reason)
            .arg("receipt")
            .arg(&delivery.receipt)
            .query_async::<String>(&mut self.connection)
            .await
            .map(drop)
            .map_err(|e| TransportError::new("XADD to the dead letters", e))
    }
}

/// Reads `[[entry-id, [field, value, ...]], ...]`. An entry that is not a
/// message of ours (fields missing) becomes a delivery whose name says so,
/// so that the consumer dead-letters it instead of stalling on it.
fn parse_entries(
    stream: &str,
    entries: Value,
    redeliveries: u32,
) -> Result<Vec<Delivery>, TransportError> {
    let Value::Array(entries) = entries else {
        return Err(TransportError::new(
            "reading stream entries",
            format!("unexpected reply {entries:?}"),
        ));
    };
    let mut deliveries = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(mut parts) = entry else {
            continue;
        };
        if parts.len() != 2 {
            continue;
        }
        let values = parts.pop().unwrap_or(Value::Nil);
        let receipt = text(parts.pop().unwrap_or(Value::Nil));
        let field = |name: &str| -> Option<String> {
            match &values {
                Value::Array(items) => items
                    .chunks(2)
                    .find(|pair| text(pair[0].clone()) == name)
                    .and_then(|pair| pair.get(1).cloned().map(text)),
                Value::Map(items) => items
                    .iter()
                    .find(|(k, _)| text(k.clone()) == name)
                    .map(|(_, v)| text(v.clone())),
                _ => None,
            }
        };
        let id = field("id").and_then(|id| id.parse::<MessageId>().ok());
        let correlation = field("correlation_id").and_then(|id| id.parse::<MessageId>().ok());
        let causation = field("causation_id").and_then(|id| id.parse::<MessageId>().ok());
        let name = field("name");
        let payload = field("payload");
        let (name, payload) = match (id, name, payload) {
            (Some(_), Some(name), Some(payload)) => (name, payload),
            _ => (
                format!("<not a message: entry {receipt} lacks a valid id, a name or a payload>"),
                String::new(),
            ),
        };
        let id = id.unwrap_or_default();
        deliveries.push(Delivery {
            message: OutboundMessage {
                id,
                stream: stream.to_owned(),
                name,
                payload,
                correlation_id: correlation.unwrap_or(id),
                causation_id: causation,
            },
            receipt,
            redeliveries,
        });
    }
    Ok(deliveries)
}

fn text(value: Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Value::SimpleString(text) => text,
        Value::Int(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}
