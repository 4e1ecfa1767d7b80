//! Scheduled messages read back the same way from SQLite and PostgreSQL:
//! each database selects the same columns, as text and 64-bit integers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arch_events::schedule::{HandlerRetry, SagaRef, ScheduledMessage};
use arch_events::MessageKind;
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::backend::parse_id;

/// The columns [`scheduled_message`] reads, for a database that stores ids
/// and flags as text and integers (SQLite).
#[cfg(feature = "sqlite")]
pub(crate) const COLUMNS: &str = "seq, id, kind, name, payload, due_at, correlation_id, \
     causation_id, saga, saga_id, attempts, last_error, parked, handler, handler_attempt, event_id";

/// Milliseconds since the Unix epoch (0 before it, saturated far after),
/// rounded down: for "now".
pub(crate) fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// [`millis`], rounded up: for a due time, which must never be earlier
/// than asked.
pub(crate) fn due_millis(at: SystemTime) -> i64 {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let whole = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
    if since.subsec_nanos() % 1_000_000 == 0 {
        whole
    } else {
        whole.saturating_add(1)
    }
}

/// The time `millis` milliseconds after the Unix epoch.
pub(crate) fn time(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

/// What a handler's retry's `name` column starts with, before its event's
/// name: a build that does not know handler retries (older than the
/// `handler_retries` migration) finds no event of that name, and leaves
/// the row for another process, instead of publishing the event again to
/// every handler.
const RETRY_PREFIX: &str = "handler-retry:";

/// The `name` column of `message`.
pub(crate) fn stored_name(message: &ScheduledMessage) -> std::borrow::Cow<'_, str> {
    match message.handler_retry() {
        Some(_) => format!("{RETRY_PREFIX}{}", message.name()).into(),
        None => message.name().into(),
    }
}

/// `command` or `event`, as stored.
pub(crate) fn kind_text(kind: MessageKind) -> &'static str {
    kind.as_str()
}

/// A claimed row: its message, or its `seq` and why it does not read back.
pub(crate) type Claimed = Result<ScheduledMessage, (i64, sqlx::Error)>;

/// Reads claimed rows back; a row that does not read back is returned
/// with its `seq`, for the caller to park.
pub(crate) fn claimed<R>(rows: &[R]) -> Result<Vec<Claimed>, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    rows.iter()
        .map(|row| match scheduled_message(row) {
            Ok(message) => Ok(Ok(message)),
            Err(error) => Ok(Err((row.try_get("seq")?, error))),
        })
        .collect()
}

/// Reads listed rows back, skipping (with a warning) a row that does not
/// read back: it was parked with the reason when it was claimed.
pub(crate) fn readable<R>(rows: &[R]) -> Vec<ScheduledMessage>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    rows.iter()
        .filter_map(|row| match scheduled_message(row) {
            Ok(message) => Some(message),
            Err(error) => {
                tracing::warn!(%error, "arch-events-sqlx: a scheduled message does not read back");
                None
            }
        })
        .collect()
}

/// Reads a kept message: columns [`COLUMNS`].
pub(crate) fn scheduled_message<R>(row: &R) -> Result<ScheduledMessage, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    let kind = match row.try_get::<String, _>("kind")?.as_str() {
        "command" => MessageKind::Command,
        "event" => MessageKind::Event,
        other => {
            return Err(sqlx::Error::ColumnDecode {
                index: "kind".into(),
                source: format!("`{other}` is not a kind of scheduled message").into(),
            })
        }
    };
    let causation_id = match row.try_get::<Option<String>, _>("causation_id")? {
        Some(text) => Some(parse_id("causation_id", &text)?),
        None => None,
    };
    let saga = match (
        row.try_get::<Option<String>, _>("saga")?,
        row.try_get::<Option<String>, _>("saga_id")?,
    ) {
        (Some(saga), Some(id)) => Some(SagaRef { saga, id }),
        _ => None,
    };
    let attempts: i64 = row.try_get("attempts")?;
    let parked: i64 = row.try_get("parked")?;
    let retry = match (
        row.try_get::<Option<String>, _>("handler")?,
        row.try_get::<Option<i64>, _>("handler_attempt")?,
        row.try_get::<Option<String>, _>("event_id")?,
    ) {
        (None, None, None) => None,
        (Some(handler), Some(attempt), Some(event_id)) => Some(HandlerRetry::new(
            handler,
            u32::try_from(attempt).unwrap_or(u32::MAX),
            parse_id("event_id", &event_id)?,
        )),
        _ => {
            return Err(sqlx::Error::ColumnDecode {
                index: "handler".into(),
                source: "a handler retry needs its handler, attempt and event id".into(),
            })
        }
    };
    let name: String = row.try_get("name")?;
    let name = match (&retry, name.strip_prefix(RETRY_PREFIX)) {
        (Some(_), Some(event)) => event.to_owned(),
        _ => name,
    };
    let message = ScheduledMessage::restored(
        parse_id("id", &row.try_get::<String, _>("id")?)?,
        kind,
        name,
        row.try_get("payload")?,
        time(row.try_get("due_at")?),
        parse_id(
            "correlation_id",
            &row.try_get::<String, _>("correlation_id")?,
        )?,
        causation_id,
        saga,
    )
    .with_failures(
        u32::try_from(attempts).unwrap_or(u32::MAX),
        row.try_get("last_error")?,
        parked != 0,
    );
    Ok(match retry {
        Some(retry) => message.retrying(retry),
        None => message,
    })
}
