//! How a message crosses a process boundary: as JSON, through `serde_json`,
//! when the `json` feature is on (it is by default).
//!
//! The derives ask for a codec when a message is declared with `serde` or
//! `external = "..."`; without the `json` feature such a declaration does
//! not compile, and the error names the feature. Every failure to write or
//! read a message is a [`CodecError`], whatever the format underneath.

use crate::error::BoxError;

/// A message that could not be written as JSON or read back from it.
///
/// Its text is the serializer's own (`missing field `qty` at line 1 column
/// 12`); [`source`](std::error::Error::source) is the serializer's error
/// itself.
///
/// ```
/// use arch_events::{Event, PendingEvent};
///
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
/// #[event(serde)]
/// struct Shipped { order: u32 }
///
/// let codec = PendingEvent::new(Shipped { order: 7 }).meta().codec().unwrap();
/// let error = codec.decode(r#"{"order":"seven"}"#).unwrap_err();
/// assert!(error.to_string().contains("invalid type"), "{error}");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(#[source] BoxError);

impl CodecError {
    /// A codec error carrying `error`.
    pub fn new(error: impl Into<BoxError>) -> Self {
        CodecError(error.into())
    }
}

#[cfg(feature = "json")]
impl From<serde_json::Error> for CodecError {
    fn from(error: serde_json::Error) -> Self {
        CodecError(Box::new(error))
    }
}

/// An event that can be written as JSON and read back: what `#[event(serde)]`
/// and `external` need. Implemented for every `Serialize + Deserialize` type.
#[cfg(feature = "json")]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be written as JSON and read back",
    label = "needs `serde::Serialize` and `serde::Deserialize`",
    note = "derive them on `{Self}`: `#[derive(serde::Serialize, serde::Deserialize)]`, or drop `serde`/`external`"
)]
pub trait JsonEvent: serde::Serialize + serde::de::DeserializeOwned {}

#[cfg(feature = "json")]
impl<T: serde::Serialize + serde::de::DeserializeOwned> JsonEvent for T {}

/// A command that can be read from JSON: what `#[command(serde)]` and
/// `external` need. Implemented for every `Deserialize` type.
#[cfg(feature = "json")]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be read from JSON",
    label = "needs `serde::Deserialize`",
    note = "derive it on `{Self}`: `#[derive(serde::Deserialize)]`, or drop `serde`/`external`"
)]
pub trait JsonCommand: serde::de::DeserializeOwned {}

#[cfg(feature = "json")]
impl<T: serde::de::DeserializeOwned> JsonCommand for T {}

/// Without the `json` feature no type is a `JsonEvent`: a message declared
/// with `serde` or `external` fails to compile, naming the feature.
#[cfg(not(feature = "json"))]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be written as JSON: arch-events' `json` feature is off",
    label = "`serde` and `external` need arch-events' `json` feature",
    note = "turn the feature back on (it is a default feature of arch-events), or drop `serde`/`external`"
)]
pub trait JsonEvent {}

/// Without the `json` feature no type is a `JsonCommand` (see [`JsonEvent`]).
#[cfg(not(feature = "json"))]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be read from JSON: arch-events' `json` feature is off",
    label = "`serde` and `external` need arch-events' `json` feature",
    note = "turn the feature back on (it is a default feature of arch-events), or drop `serde`/`external`"
)]
pub trait JsonCommand {}

/// `value` as JSON.
#[cfg(feature = "json")]
pub(crate) fn to_json<T: JsonEvent>(value: &T) -> Result<String, CodecError> {
    Ok(serde_json::to_string(value)?)
}

/// A `T` read from `json`.
#[cfg(feature = "json")]
pub(crate) fn event_from_json<T: JsonEvent>(json: &str) -> Result<T, CodecError> {
    Ok(serde_json::from_str(json)?)
}

/// A `T` read from `json`.
#[cfg(feature = "json")]
pub(crate) fn command_from_json<T: JsonCommand>(json: &str) -> Result<T, CodecError> {
    Ok(serde_json::from_str(json)?)
}

#[cfg(not(feature = "json"))]
pub(crate) fn to_json<T: JsonEvent>(_: &T) -> Result<String, CodecError> {
    Err(CodecError::new("arch-events' `json` feature is off"))
}

#[cfg(not(feature = "json"))]
pub(crate) fn event_from_json<T: JsonEvent>(_: &str) -> Result<T, CodecError> {
    Err(CodecError::new("arch-events' `json` feature is off"))
}

#[cfg(not(feature = "json"))]
pub(crate) fn command_from_json<T: JsonCommand>(_: &str) -> Result<T, CodecError> {
    Err(CodecError::new("arch-events' `json` feature is off"))
}
