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
//! Both implement `arch_events::transport`'s traits, so a
//! `arch_events::transport::Consumer` runs them through a bus (which dispatches
//! only the messages declared for the subscriber's stream).
//!
//! # Length caps
//!
//! Every stream is capped: each `XADD` carries `MAXLEN ~ <n>`, so Redis
//! trims a stream's oldest entries as new ones arrive, and its memory stays
//! bounded whatever the traffic.
//!
//! - A published stream keeps about [`RedisPublisher::DEFAULT_MAX_LEN`]
//!   (1,000,000) entries unless told otherwise
//!   ([`RedisPublisher::max_len`]). **Redis (7.0 here) trims by length
//!   whether or not the consumer groups have read the entries**: an entry
//!   trimmed before a group read it, or while it is pending (delivered, not
//!   acknowledged), is gone for that group, and a consumer that falls
//!   further behind than the cap loses messages without an error. Set the
//!   cap above the largest backlog a consumer may build up (its outage ×
//!   the publish rate, with room to spare), and watch the groups' lag
//!   (`XINFO GROUPS`).
//! - A dead-letter stream (`<stream>.dead`) keeps about
//!   [`RedisSubscriber::DEFAULT_DEAD_LETTER_MAX_LEN`] (10,000) entries
//!   ([`RedisSubscriber::dead_letter_max_len`]), and of each poison message
//!   only the first [`RedisSubscriber::DEFAULT_DEAD_LETTER_PAYLOAD_LIMIT`]
//!   bytes (4 KiB) of its payload (and of its name and reason), cut on a
//!   UTF-8 character boundary ([`RedisSubscriber::dead_letter_payload_limit`]);
//!   the entry records the payload's original length (`payload_len`) and
//!   whether it was cut (`payload_truncated`: `true` or `false`).
//!
//! `~` lets Redis trim whole macro nodes only (`stream-node-max-entries`,
//! 100 entries by default), which is what makes trimming cheap: a stream
//! holds its cap plus up to about one node more, never fewer than the cap.

use std::time::Duration;

use arch_events::transport::{
    truncated, BatchError, Delivery, OutboundMessage, Publisher, Subscriber, TransportError,
};
use arch_events::{async_trait, MessageId};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamRangeReply, StreamReadOptions};
use redis::{FromRedisValue, Value};

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

/// Publishes messages with `XADD ... MAXLEN ~ <cap>`: each stream keeps
/// about its last [`max_len`](Self::max_len) entries (see the crate's
/// [length caps](crate#length-caps)).
#[derive(Clone)]
pub struct RedisPublisher {
    connection: MultiplexedConnection,
    max_len: u64,
}

impl RedisPublisher {
    /// The entries a stream keeps unless told otherwise
    /// ([`max_len`](Self::max_len)): 1,000,000.
    pub const DEFAULT_MAX_LEN: u64 = 1_000_000;

    /// A publisher over `connection`, capping each stream at
    /// [`DEFAULT_MAX_LEN`](Self::DEFAULT_MAX_LEN) entries.
    pub fn new(connection: MultiplexedConnection) -> Self {
        RedisPublisher {
            connection,
            max_len: Self::DEFAULT_MAX_LEN,
        }
    }

    /// Caps each stream this publisher appends to at about `entries`
    /// (`MAXLEN ~ entries`: Redis trims whole macro nodes, so a stream holds
    /// `entries` and up to about one node, 100 entries by default, more).
    ///
    /// Redis 7.0 trims by length **whether or not the consumer groups have
    /// read the entries**: an entry trimmed before a group read it is lost
    /// to that group, silently. The cap must exceed the backlog a consumer
    /// can fall behind by (its longest outage times the publish rate), with
    /// room to spare.
    ///
    /// # Panics
    ///
    /// When `entries` is 0 (a stream that keeps nothing is a mistake) or
    /// larger than `i64::MAX` (more than Redis can count).
    pub fn max_len(mut self, entries: u64) -> Self {
        assert!(
            entries > 0 && i64::try_from(entries).is_ok(),
            "RedisPublisher::max_len({entries}): a stream's cap is from 1 to i64::MAX entries"
        );
        self.max_len = entries;
        self
    }

    fn xadd(&self, message: &OutboundMessage) -> redis::Cmd {
        let mut command = xadd_capped(&message.stream, self.max_len);
        for (field, value) in fields(message) {
            command.arg(field).arg(value);
        }
        command
    }
}

impl std::fmt::Debug for RedisPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPublisher")
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

/// `XADD <stream> MAXLEN ~ <max_len> *`, for its fields to follow.
fn xadd_capped(stream: &str, max_len: u64) -> redis::Cmd {
    let mut command = redis::cmd("XADD");
    command
        .arg(stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(max_len)
        .arg("*");
    command
}

fn fields(message: &OutboundMessage) -> [(&'static str, String); 5] {
    fields_with(message, &message.name, &message.payload)
}

/// A message's fields, with this `name` and `payload`.
fn fields_with(
    message: &OutboundMessage,
    name: &str,
    payload: &str,
) -> [(&'static str, String); 5] {
    [
        ("id", message.id.to_string()),
        ("name", name.to_owned()),
        ("payload", payload.to_owned()),
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

#[async_trait]
impl Publisher for RedisPublisher {
    async fn publish(&self, message: &OutboundMessage) -> Result<(), TransportError> {
        let mut connection = self.connection.clone();
        self.xadd(message)
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
            pipeline.add_command(self.xadd(message));
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

/// One member of a consumer group on one stream. Its poison messages go to
/// `<stream>.dead`, capped in length and in payload (see the crate's
/// [length caps](crate#length-caps)).
pub struct RedisSubscriber {
    connection: MultiplexedConnection,
    stream: String,
    group: String,
    consumer: String,
    min_idle: Duration,
    dead_letter_max_len: u64,
    dead_letter_payload_limit: usize,
}

impl std::fmt::Debug for RedisSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSubscriber")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("min_idle", &self.min_idle)
            .field("dead_letter_max_len", &self.dead_letter_max_len)
            .field("dead_letter_payload_limit", &self.dead_letter_payload_limit)
            .finish()
    }
}

impl RedisSubscriber {
    /// The entries a dead-letter stream keeps unless told otherwise
    /// ([`dead_letter_max_len`](Self::dead_letter_max_len)): 10,000.
    pub const DEFAULT_DEAD_LETTER_MAX_LEN: u64 = 10_000;

    /// The bytes of a poison message's payload its dead letter keeps unless
    /// told otherwise
    /// ([`dead_letter_payload_limit`](Self::dead_letter_payload_limit)):
    /// 4 KiB.
    pub const DEFAULT_DEAD_LETTER_PAYLOAD_LIMIT: usize = 4 * 1024;

    /// Caps the dead-letter stream at about `entries` (`MAXLEN ~`; trimmed
    /// whether or not anyone read them: the oldest dead letters go first).
    /// The default is
    /// [`DEFAULT_DEAD_LETTER_MAX_LEN`](Self::DEFAULT_DEAD_LETTER_MAX_LEN).
    ///
    /// # Panics
    ///
    /// When `entries` is 0 or larger than `i64::MAX`.
    pub fn dead_letter_max_len(mut self, entries: u64) -> Self {
        assert!(
            entries > 0 && i64::try_from(entries).is_ok(),
            "RedisSubscriber::dead_letter_max_len({entries}): a stream's cap is from 1 to \
             i64::MAX entries"
        );
        self.dead_letter_max_len = entries;
        self
    }

    /// Keeps at most `bytes` of a poison message's payload in its dead
    /// letter (cut on a UTF-8 character boundary, so possibly a few bytes
    /// fewer), and at most as much of its name and of the reason; the
    /// entry's `payload_len` is the payload's original length in bytes, and
    /// its `payload_truncated` says whether it was cut. The default is
    /// [`DEFAULT_DEAD_LETTER_PAYLOAD_LIMIT`](Self::DEFAULT_DEAD_LETTER_PAYLOAD_LIMIT).
    pub fn dead_letter_payload_limit(mut self, bytes: usize) -> Self {
        self.dead_letter_payload_limit = bytes;
        self
    }
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
            dead_letter_max_len: Self::DEFAULT_DEAD_LETTER_MAX_LEN,
            dead_letter_payload_limit: Self::DEFAULT_DEAD_LETTER_PAYLOAD_LIMIT,
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
        let min_idle = u64::try_from(self.min_idle.as_millis()).unwrap_or(u64::MAX);
        let reply = redis::Cmd::xautoclaim_options(
            &self.stream,
            &self.group,
            &self.consumer,
            min_idle,
            "0-0",
            StreamAutoClaimOptions::default().count(max),
        )
        .query_async::<Value>(&mut self.connection)
        .await
        .map_err(|e| TransportError::new("XAUTOCLAIM", e))?;
        // [next start, [entries...], [deleted ids...]]
        match reply {
            Value::Array(parts) => match parts.into_iter().nth(1) {
                Some(entries) => deliveries("XAUTOCLAIM", &self.stream, entries, 1),
                None => Ok(Vec::new()),
            },
            other => Err(unexpected("XAUTOCLAIM", &other)),
        }
    }
}

#[async_trait]
impl Subscriber for RedisSubscriber {
    fn stream(&self) -> &str {
        &self.stream
    }

    async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, TransportError> {
        let claimed = self.claim_stale(max).await?;
        if !claimed.is_empty() {
            return Ok(claimed);
        }
        let block = usize::try_from(wait.as_millis().max(1)).unwrap_or(usize::MAX);
        let options = StreamReadOptions::default()
            .group(&self.group, &self.consumer)
            .count(max)
            .block(block);
        let reply = redis::Cmd::xread_options(&[&self.stream], &[">"], &options)
            .query_async::<Value>(&mut self.connection)
            .await
            .map_err(|e| TransportError::new("XREADGROUP", e))?;
        // Nil on timeout; else [[stream, [entries...]]] (RESP2) or a map
        // (RESP3) of the one stream asked for.
        let entries = match reply {
            Value::Nil => return Ok(Vec::new()),
            Value::Array(streams) => streams.into_iter().next().and_then(|s| match s {
                Value::Array(pair) => pair.into_iter().nth(1),
                _ => None,
            }),
            Value::Map(streams) => streams.into_iter().next().map(|(_, entries)| entries),
            other => return Err(unexpected("XREADGROUP", &other)),
        };
        match entries {
            Some(entries) => deliveries("XREADGROUP", &self.stream, entries, 0),
            None => Ok(Vec::new()),
        }
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
        let limit = self.dead_letter_payload_limit;
        let message = &delivery.message;
        let payload = truncated(&message.payload, limit);
        let mut command = xadd_capped(&self.dead_letter_stream(), self.dead_letter_max_len);
        for (field, value) in fields_with(message, truncated(&message.name, limit), payload) {
            command.arg(field).arg(value);
        }
        command
            .arg("payload_len")
            .arg(message.payload.len())
            .arg("payload_truncated")
            .arg(if payload.len() < message.payload.len() {
                "true"
            } else {
                "false"
            })
            .arg("reason")
            .arg(truncated(reason, limit))
            .arg("receipt")
            .arg(&delivery.receipt)
            .query_async::<String>(&mut self.connection)
            .await
            .map(drop)
            .map_err(|e| TransportError::new("XADD to the dead letters", e))
    }
}

/// The deliveries in a reply's list of entries, `[[entry-id, [field,
/// value, ...]], ...]`.
///
/// Each entry is read on its own, by the `redis` crate's stream reply
/// ([`StreamRangeReply`], whose entries are [`StreamId`]s), so that one
/// entry it cannot read (a field name that is not UTF-8, a value that is
/// not a string) spoils only itself: it becomes a delivery whose name says
/// what is wrong, which the consumer dead-letters and acknowledges, instead
/// of failing every read of the group for ever. A nil entry (one deleted
/// from the stream while pending, as Redis 6 reports it) is skipped.
fn deliveries(
    command: &'static str,
    stream: &str,
    entries: Value,
    redeliveries: u32,
) -> Result<Vec<Delivery>, TransportError> {
    let Value::Array(entries) = entries else {
        return Err(unexpected(command, &entries));
    };
    let mut deliveries = Vec::with_capacity(entries.len());
    for entry in entries {
        if entry == Value::Nil {
            continue;
        }
        let receipt = entry_id(&entry);
        let read = StreamRangeReply::from_redis_value(Value::Array(vec![entry]))
            .ok()
            .and_then(|reply| reply.ids.into_iter().next());
        let Some(read) = read else {
            match receipt {
                Some(receipt) => deliveries.push(not_a_message(stream, receipt, redeliveries)),
                // No id to acknowledge it by: nothing to hand over.
                None => tracing::warn!(stream, "a stream entry without an id was skipped"),
            }
            continue;
        };
        deliveries.push(delivery(stream, read, redeliveries));
    }
    Ok(deliveries)
}

/// A message of ours, or a delivery that says the entry is not one (a
/// field missing, or not what it should be).
fn delivery(stream: &str, entry: StreamId, redeliveries: u32) -> Delivery {
    let id_field = |name: &str| {
        entry
            .get::<String>(name)
            .and_then(|id| id.parse::<MessageId>().ok())
    };
    let (Some(id), Some(name), Some(payload)) = (
        id_field("id"),
        entry.get::<String>("name"),
        entry.get::<String>("payload"),
    ) else {
        return not_a_message(stream, entry.id, redeliveries);
    };
    Delivery {
        message: OutboundMessage {
            id,
            stream: stream.to_owned(),
            name,
            payload,
            correlation_id: id_field("correlation_id").unwrap_or(id),
            causation_id: id_field("causation_id"),
        },
        receipt: entry.id,
        redeliveries,
    }
}

/// A delivery for an entry that is not a message of ours: the consumer
/// refuses its name and dead-letters it.
fn not_a_message(stream: &str, receipt: String, redeliveries: u32) -> Delivery {
    let id = MessageId::default();
    Delivery {
        message: OutboundMessage {
            id,
            stream: stream.to_owned(),
            name: format!("<not a message: entry {receipt} lacks a valid id, a name or a payload>"),
            payload: String::new(),
            correlation_id: id,
            causation_id: None,
        },
        receipt,
        redeliveries,
    }
}

/// An entry's id, read leniently (it is what the entry is acknowledged by).
fn entry_id(entry: &Value) -> Option<String> {
    let Value::Array(parts) = entry else {
        return None;
    };
    match parts.first()? {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

fn unexpected(command: &'static str, reply: &Value) -> TransportError {
    TransportError::new(command, format!("unexpected reply {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &[u8]) -> Value {
        Value::BulkString(text.to_vec())
    }

    fn entry(id: &str, fields: &[(&[u8], &[u8])]) -> Value {
        Value::Array(vec![
            bulk(id.as_bytes()),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(field, value)| [bulk(field), bulk(value)])
                    .collect(),
            ),
        ])
    }

    #[test]
    fn each_entry_is_read_alone_and_a_bad_one_spoils_only_itself() {
        let id = MessageId::new().to_string();
        let cause = MessageId::new().to_string();
        let good = entry(
            "1-0",
            &[
                (b"id", id.as_bytes()),
                (b"name", b"stock.changed"),
                (b"payload", b"{}"),
                (b"correlation_id", id.as_bytes()),
                (b"causation_id", cause.as_bytes()),
            ],
        );
        let entries = Value::Array(vec![
            entry("2-0", &[(&[0xff, 0xfe], b"x"), (b"name", b"n")]),
            good,
            Value::Nil,
            entry("3-0", &[(b"name", b"stock.changed")]),
            entry(
                "4-0",
                &[(b"id", b"not-an-id"), (b"name", b"n"), (b"payload", b"{}")],
            ),
        ]);
        let read = deliveries("XREADGROUP", "stock", entries, 0).unwrap();
        let receipts: Vec<&str> = read.iter().map(|d| d.receipt.as_str()).collect();
        assert_eq!(
            receipts,
            ["2-0", "1-0", "3-0", "4-0"],
            "the nil entry is skipped"
        );
        let message = &read[1].message;
        assert_eq!(message.id.to_string(), id);
        assert_eq!(message.name, "stock.changed");
        assert_eq!(message.causation_id.map(|c| c.to_string()), Some(cause));
        for poison in [&read[0], &read[2], &read[3]] {
            assert!(
                poison.message.name.starts_with("<not a message: entry"),
                "{poison:?}"
            );
            assert!(poison.message.name.contains(&poison.receipt));
        }
    }

    #[test]
    fn a_reply_that_is_not_a_list_of_entries_is_an_error() {
        let error = deliveries("XAUTOCLAIM", "stock", Value::Int(3), 1).unwrap_err();
        assert!(error.to_string().contains("XAUTOCLAIM"), "{error}");
    }
}
