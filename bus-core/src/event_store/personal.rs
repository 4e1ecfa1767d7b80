//! Personal data in stored events: the fields an event declares personal
//! (`#[event(serde, personal(subject = customer, fields(email)))]`) are
//! stored encrypted under a key of their subject's own. Forgetting the
//! subject deletes the key: from then on those fields read as erased
//! (`None`) everywhere the events are read (loads, projections, rebuilds),
//! while everything else in the events still loads ("crypto-shredding").
//!
//! Keys live in a [`KeyStore`] (in memory for tests, a table beside the
//! events with `arch-events-sqlx`); a [`Protected`] store encrypts on append
//! and decrypts on read. The cipher is XChaCha20-Poly1305 (a random 192-bit
//! nonce per field), authenticated with the subject's id.
//!
//! What it does not reach: a snapshot, a read model or a log that holds a
//! decrypted copy. Do not snapshot an aggregate whose state holds personal
//! fields, and have the read models that do react to forgetting (an event
//! of your own, say) or be rebuilt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde_json::{Map, Value};

use super::envelope::{NewEvent, RecordedEvent};
use super::error::EventStoreError;
use super::snapshot::StoredSnapshot;
use super::store::{Appended, EventStore, ReadAll};
use super::stream::{ExpectedVersion, StreamId};
use super::Position;

/// A subject's key: 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectKey([u8; 32]);

impl SubjectKey {
    /// A new random key.
    pub fn generate() -> Self {
        SubjectKey(XChaCha20Poly1305::generate_key(&mut OsRng).into())
    }

    /// The key as stored.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A stored key back; `None` unless it is 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(SubjectKey)
    }
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectKey(..)")
    }
}

/// Where subjects' keys are kept.
#[crate::async_trait]
pub trait KeyStore: Send + Sync {
    /// The subject's key; `None` once it was forgotten (or never made).
    async fn key(&self, subject: &str) -> Result<Option<SubjectKey>, EventStoreError>;

    /// The subject's key, made now if it has none. Two callers at once get
    /// the same key.
    async fn key_or_create(&self, subject: &str) -> Result<SubjectKey, EventStoreError>;

    /// Deletes the subject's key: its personal fields read as erased from
    /// now on. `false` when it had none.
    async fn forget(&self, subject: &str) -> Result<bool, EventStoreError>;
}

/// A [`KeyStore`] in memory, for tests.
#[derive(Debug, Default)]
pub struct InMemoryKeyStore {
    keys: Mutex<HashMap<String, SubjectKey>>,
}

impl InMemoryKeyStore {
    /// No keys yet.
    pub fn new() -> Self {
        InMemoryKeyStore::default()
    }

    fn keys(&self) -> MutexGuard<'_, HashMap<String, SubjectKey>> {
        // One insert or removal at a time: a poisoned map is whole.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[crate::async_trait]
impl KeyStore for InMemoryKeyStore {
    async fn key(&self, subject: &str) -> Result<Option<SubjectKey>, EventStoreError> {
        Ok(self.keys().get(subject).cloned())
    }

    async fn key_or_create(&self, subject: &str) -> Result<SubjectKey, EventStoreError> {
        Ok(self
            .keys()
            .entry(subject.to_owned())
            .or_insert_with(SubjectKey::generate)
            .clone())
    }

    async fn forget(&self, subject: &str) -> Result<bool, EventStoreError> {
        Ok(self.keys().remove(subject).is_some())
    }
}

/// The marker an encrypted field is stored as.
const SEALED: &str = "$personal";

fn subject_of(payload: &Map<String, Value>, field: &str) -> Option<String> {
    match payload.get(field)? {
        Value::String(subject) => Some(subject.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Encrypts the personal fields of `events` (those whose type declares
/// some), making their subjects' keys as needed.
pub async fn protect(keys: &dyn KeyStore, events: &mut [NewEvent]) -> Result<(), EventStoreError> {
    for event in events {
        let Some(personal) = event.personal else {
            continue;
        };
        let refuse = |reason: String| EventStoreError::Encode {
            event: personal.subject(),
            source: format!("event `{}`: {reason}", event.name).into(),
        };
        let mut payload: Map<String, Value> = serde_json::from_str(&event.payload)
            .map_err(|error| refuse(format!("its JSON is not an object: {error}")))?;
        let subject = subject_of(&payload, personal.subject()).ok_or_else(|| {
            refuse(format!(
                "its subject field `{}` is missing or neither a string nor a number",
                personal.subject()
            ))
        })?;
        let key = keys.key_or_create(&subject).await?;
        let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
        for field in personal.fields() {
            let Some(value) = payload.get_mut(*field) else {
                return Err(refuse(format!(
                    "its personal field `{field}` is not in its JSON (a serde rename?)"
                )));
            };
            if value.is_null() {
                continue;
            }
            let plain = serde_json::to_vec(value).map_err(|error| refuse(error.to_string()))?;
            let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
            let sealed = cipher
                .encrypt(
                    &nonce,
                    Payload {
                        msg: &plain,
                        aad: subject.as_bytes(),
                    },
                )
                .map_err(|_| refuse("the cipher refused the field".into()))?;
            let mut stored = nonce.to_vec();
            stored.extend_from_slice(&sealed);
            *value = serde_json::json!({ SEALED: BASE64.encode(stored), "subject": subject });
        }
        event.payload = Value::Object(payload).to_string();
    }
    Ok(())
}

/// Decrypts the personal fields of `events`; a field whose subject was
/// forgotten (or whose cipher text does not open) reads as `null`.
pub async fn reveal(
    keys: &dyn KeyStore,
    events: &mut [RecordedEvent],
) -> Result<(), EventStoreError> {
    let mut known: HashMap<String, Option<SubjectKey>> = HashMap::new();
    for event in events {
        if !event.payload.contains(SEALED) {
            continue;
        }
        let Ok(Value::Object(mut payload)) = serde_json::from_str::<Value>(&event.payload) else {
            continue;
        };
        for value in payload.values_mut() {
            let Some((sealed, subject)) = sealed_field(value) else {
                continue;
            };
            if !known.contains_key(&subject) {
                let key = keys.key(&subject).await?;
                known.insert(subject.clone(), key);
            }
            *value = known
                .get(&subject)
                .and_then(Option::as_ref)
                .and_then(|key| open(key, &sealed, &subject))
                .unwrap_or(Value::Null);
        }
        event.payload = Value::Object(payload).to_string();
    }
    Ok(())
}

fn sealed_field(value: &Value) -> Option<(String, String)> {
    let object = value.as_object()?;
    let sealed = object.get(SEALED)?.as_str()?;
    let subject = object.get("subject")?.as_str()?;
    Some((sealed.to_owned(), subject.to_owned()))
}

fn open(key: &SubjectKey, sealed: &str, subject: &str) -> Option<Value> {
    let bytes = BASE64.decode(sealed).ok()?;
    if bytes.len() < 24 {
        return None;
    }
    let (nonce, cipher_text) = bytes.split_at(24);
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let plain = cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: cipher_text,
                aad: subject.as_bytes(),
            },
        )
        .ok()?;
    serde_json::from_slice(&plain).ok()
}

/// An [`EventStore`] whose events' personal fields are stored encrypted
/// under their subjects' keys, and read back decrypted, or erased once the
/// subject is [`forget`](Self::forget)-ten.
///
/// ```
/// use std::sync::Arc;
/// use arch_events::event_store::{EventStore, ExpectedVersion, NewEvent, Position, Protected, ReadAll, StreamId};
/// use arch_events::testing::{InMemoryEventStore, InMemoryKeyStore};
/// use arch_events::{Event, MessageContext, PendingEvent};
///
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
/// #[event(name = "shop.registered", serde, personal(subject = customer, fields(email)))]
/// struct Registered { customer: String, email: Option<String>, plan: String }
///
/// # futures::executor::block_on(async {
/// let store = Protected::new(InMemoryEventStore::new(), Arc::new(InMemoryKeyStore::new()));
/// let registered = Registered { customer: "c1".into(), email: Some("ada@example.com".into()), plan: "pro".into() };
/// let event = NewEvent::encode(&mut PendingEvent::new(registered), &MessageContext::root())?;
/// store.append(&StreamId::new("customer", "c1"), ExpectedVersion::NoStream, &[event]).await?;
///
/// let all = ReadAll::after(Position::START);
/// let read = store.read_all(&all).await?[0].decode::<Registered>()?;
/// assert_eq!(read.email.as_deref(), Some("ada@example.com"));
/// let stored = &store.inner().read_all(&all).await?[0].payload;
/// assert!(!stored.contains("ada@") && stored.contains("\"plan\":\"pro\""), "encrypted, and only that field");
///
/// store.forget("c1").await?;
/// let after = store.read_all(&all).await?[0].decode::<Registered>()?;
/// assert_eq!((after.email, after.plan.as_str()), (None, "pro"), "erased; the rest still loads");
/// # Ok::<(), arch_events::event_store::EventStoreError>(())
/// # }).unwrap();
/// ```
pub struct Protected<S> {
    inner: S,
    keys: Arc<dyn KeyStore>,
}

impl<S> std::fmt::Debug for Protected<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protected").finish_non_exhaustive()
    }
}

impl<S: EventStore> Protected<S> {
    /// `inner`, with its events' personal fields kept under `keys`.
    pub fn new(inner: S, keys: Arc<dyn KeyStore>) -> Self {
        Protected { inner, keys }
    }

    /// The store underneath, which holds the encrypted fields.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The key store.
    pub fn keys(&self) -> &Arc<dyn KeyStore> {
        &self.keys
    }

    /// Forgets `subject`: its personal fields read as erased from now on,
    /// in every event. `false` when it had no key.
    pub async fn forget(&self, subject: &str) -> Result<bool, EventStoreError> {
        self.keys.forget(subject).await
    }
}

#[crate::async_trait]
impl<S: EventStore> EventStore for Protected<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Appended, EventStoreError> {
        if events.iter().all(|event| event.personal.is_none()) {
            return self.inner.append(stream, expected, events).await;
        }
        let mut events = events.to_vec();
        protect(&*self.keys, &mut events).await?;
        self.inner.append(stream, expected, &events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let mut events = self.inner.read_stream(stream, from, limit).await?;
        reveal(&*self.keys, &mut events).await?;
        Ok(events)
    }

    async fn read_all(&self, read: &ReadAll) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let mut events = self.inner.read_all(read).await?;
        reveal(&*self.keys, &mut events).await?;
        Ok(events)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, EventStoreError> {
        self.inner.stream_version(stream).await
    }

    async fn head(&self) -> Result<Position, EventStoreError> {
        self.inner.head().await
    }

    async fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> Result<Option<StoredSnapshot>, EventStoreError> {
        self.inner.load_snapshot(stream).await
    }

    async fn save_snapshot(
        &self,
        stream: &StreamId,
        snapshot: &StoredSnapshot,
    ) -> Result<(), EventStoreError> {
        self.inner.save_snapshot(stream, snapshot).await
    }
}
