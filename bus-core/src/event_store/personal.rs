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
//! What it does not reach: every copy of the event outside the event
//! store's table. With `arch-events-sqlx`, the durable delivery's row of an
//! event (`Store::stage`; deleted once every handler handled it), a dead
//! letter kept for it, and the outbox row and broker message of an external
//! event hold its JSON as the bus has it, in clear; so does a snapshot, a
//! read model or a log that holds a decrypted copy. Do not snapshot an
//! aggregate whose state holds personal fields, do not make an event with
//! personal fields external, purge its dead letters, and have the read
//! models that keep them react to forgetting (an event of your own, say)
//! or be rebuilt. The subject's id itself stays in clear (it is how the
//! key is found). A subject that is forgotten and then appears in a new
//! event gets a new key: forgetting erases what was stored before it.

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
pub(super) const SEALED: &str = "$personal";

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
        let name = event.name.clone();
        let refuse = |reason: String| EventStoreError::Protect {
            event: name.clone(),
            reason,
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
            // Absent (`skip_serializing_if`) or empty: nothing to protect.
            let Some(value) = payload.get_mut(*field).filter(|value| !value.is_null()) else {
                continue;
            };
            let plain = serde_json::to_vec(value).map_err(|error| refuse(error.to_string()))?;
            let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
            let aad = associated(&event.id.to_string(), field, &subject);
            let sealed = cipher
                .encrypt(
                    &nonce,
                    Payload {
                        msg: &plain,
                        aad: &aad,
                    },
                )
                .map_err(|_| refuse(format!("the cipher refused field `{field}`")))?;
            let mut stored = nonce.to_vec();
            stored.extend_from_slice(&sealed);
            *value = serde_json::json!({ SEALED: BASE64.encode(stored), "subject": subject });
        }
        event.payload = Value::Object(payload).to_string();
    }
    Ok(())
}

/// What a sealed field is bound to: its event, its field and its subject,
/// so that a cipher text moved to another field, event or subject does
/// not open.
fn associated(event: &str, field: &str, subject: &str) -> Vec<u8> {
    [event, field, subject].join("\u{0}").into_bytes()
}

/// The personal fields of each linked event type, by name.
fn declared(name: &str) -> Option<&'static crate::message::PersonalFields> {
    use std::sync::OnceLock;
    static BY_NAME: OnceLock<HashMap<&'static str, &'static crate::message::PersonalFields>> =
        OnceLock::new();
    BY_NAME
        .get_or_init(|| {
            inventory::iter::<crate::registry::MessageEntry>
                .into_iter()
                .filter_map(|entry| {
                    entry
                        .0
                        .personal()
                        .map(|personal| (entry.0.name(), personal))
                })
                .collect()
        })
        .get(name)
        .copied()
}

/// Decrypts the personal fields of `events`, those its type declares
/// (`#[event(personal(..))]`; a type this program does not link keeps
/// them sealed): a field whose subject was forgotten reads as `null`. A
/// field whose key is there but does not open it (tampered with, moved
/// from another field or event) is an error, never taken for erased.
pub async fn reveal(
    keys: &dyn KeyStore,
    events: &mut [RecordedEvent],
) -> Result<(), EventStoreError> {
    let mut known: HashMap<String, Option<SubjectKey>> = HashMap::new();
    for event in events {
        if !event.payload.contains(SEALED) {
            continue;
        }
        let Some(personal) = declared(&event.name) else {
            continue;
        };
        let Ok(Value::Object(mut payload)) = serde_json::from_str::<Value>(&event.payload) else {
            continue;
        };
        let id = event.id.to_string();
        for field in personal.fields() {
            let Some(value) = payload.get_mut(*field) else {
                continue;
            };
            let Some((sealed, subject)) = sealed_field(value) else {
                continue;
            };
            if !known.contains_key(&subject) {
                let key = keys.key(&subject).await?;
                known.insert(subject.clone(), key);
            }
            *value = match known.get(&subject).and_then(Option::as_ref) {
                None => Value::Null,
                Some(key) => open(key, &sealed, &associated(&id, field, &subject)).ok_or_else(|| {
                    event.decode_error(format!(
                        "its personal field `{field}` does not open with its subject's key: it was altered"
                    ))
                })?,
            };
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

fn open(key: &SubjectKey, sealed: &str, aad: &[u8]) -> Option<Value> {
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
                aad,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::MessageContext;
    use crate::events::PendingEvent;
    use crate::testing::InMemoryEventStore;
    use crate::Event;

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
    #[event(name = "personal.test.registered", serde, personal(subject = customer, fields(email)))]
    struct Registered {
        customer: String,
        email: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        note: Option<Value>,
    }

    fn registered(customer: &str, email: &str, note: Option<Value>) -> NewEvent {
        let event = Registered {
            customer: customer.into(),
            email: Some(email.into()),
            note,
        };
        NewEvent::encode(&mut PendingEvent::new(event), &MessageContext::root()).unwrap()
    }

    async fn all(store: &dyn EventStore) -> Result<Vec<RecordedEvent>, EventStoreError> {
        store.read_all(&ReadAll::after(Position::START)).await
    }

    #[test]
    fn a_sealed_field_moved_to_another_event_does_not_open_and_undeclared_fields_stay_sealed() {
        futures::executor::block_on(async {
            let inner = Arc::new(InMemoryEventStore::new());
            let store = Protected::new(inner.clone(), Arc::new(InMemoryKeyStore::new()));
            let stream = StreamId::new("customer", "c1");
            store
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    &[registered("c1", "ada@example.com", None)],
                )
                .await
                .unwrap();
            let stored: Value =
                serde_json::from_str(&all(&*inner).await.unwrap()[0].payload).unwrap();
            let sealed = stored["email"].clone();
            assert!(sealed.get(SEALED).is_some(), "{stored}");

            // The same cipher text, in an undeclared field of a new event of
            // the same subject: it stays sealed there.
            let mut copied = registered("c1", "bob@example.com", Some(sealed.clone()));
            copied.personal = None;
            inner
                .append(&stream, ExpectedVersion::Exact(1), &[copied])
                .await
                .unwrap();
            let read = all(&store).await.unwrap();
            let note = read[1].decode::<Registered>().unwrap().note.unwrap();
            assert!(
                note.get(SEALED).is_some(),
                "not decrypted where it was not declared: {note}"
            );

            // Moved into the declared field of another event: an error, not
            // the victim's email and not "erased".
            let mut moved = registered("c1", "x", None);
            moved.personal = None;
            let mut payload: Value = serde_json::from_str(&moved.payload).unwrap();
            payload["email"] = sealed;
            moved.payload = payload.to_string();
            inner
                .append(&stream, ExpectedVersion::Exact(2), &[moved])
                .await
                .unwrap();
            let error = all(&store).await.unwrap_err();
            assert!(error.to_string().contains("was altered"), "{error}");
        });
    }

    #[test]
    fn a_decode_error_of_an_event_with_personal_data_quotes_none_of_it() {
        let recorded = RecordedEvent {
            id: crate::MessageId::new(),
            stream: StreamId::new("customer", "c1"),
            version: 1,
            position: Position::new(1, 1),
            name: "personal.test.registered".into(),
            schema_version: 1,
            payload: r#"{"customer":"c1","email":{"not":"a string: ada@example.com"}}"#.into(),
            recorded_at: std::time::SystemTime::now(),
            correlation_id: crate::MessageId::new(),
            causation_id: None,
            metadata: Value::Null,
        };
        let error = recorded.decode::<Registered>().unwrap_err().to_string();
        assert!(!error.contains("ada@"), "{error}");
        assert!(
            error.contains("withheld") && error.contains("line 1"),
            "{error}"
        );
    }

    #[test]
    fn an_event_read_past_the_protection_names_the_store_to_read_it_through() {
        futures::executor::block_on(async {
            let inner = Arc::new(InMemoryEventStore::new());
            let store = Protected::new(inner.clone(), Arc::new(InMemoryKeyStore::new()));
            let stream = StreamId::new("customer", "c1");
            store
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    &[registered("c1", "ada@example.com", None)],
                )
                .await
                .unwrap();
            let unrevealed = all(&*inner).await.unwrap();
            let error = unrevealed[0]
                .decode::<Registered>()
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("sealed") && error.contains("with_personal_data()"),
                "{error}"
            );
            let revealed = all(&store).await.unwrap()[0]
                .decode::<Registered>()
                .unwrap();
            assert_eq!(revealed.email.as_deref(), Some("ada@example.com"));
        });
    }

    #[test]
    fn an_absent_personal_field_is_nothing_to_protect() {
        futures::executor::block_on(async {
            let store =
                Protected::new(InMemoryEventStore::new(), Arc::new(InMemoryKeyStore::new()));
            let mut event = registered("c2", "x", None);
            let mut payload: Value = serde_json::from_str(&event.payload).unwrap();
            payload.as_object_mut().unwrap().remove("email");
            event.payload = payload.to_string();
            store
                .append(
                    &StreamId::new("customer", "c2"),
                    ExpectedVersion::NoStream,
                    &[event],
                )
                .await
                .unwrap();
            let read = all(&store).await.unwrap();
            assert_eq!(read[0].decode::<Registered>().unwrap().email, None);
        });
    }
}
