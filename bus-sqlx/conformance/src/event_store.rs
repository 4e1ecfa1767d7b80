//! The event store's conformance suite: what every backend (in memory,
//! SQLite, PostgreSQL) must do, written once against the
//! [`EventStore`] trait. [`event_store_tests!`](crate::event_store_tests)
//! expands to one test per function below, given an `async fn` that makes
//! an empty store.

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arch_events::event_store::{
    Appended, Apply, EventSourced, EventStore, EventStoreError, EventTypes, ExpectedVersion,
    KeyStore, Loaded, NewEvent, Position, ReadAll, RecordedEvent, Snapshotted, StoredSnapshot,
    StreamId,
};
use arch_events::{
    Aggregate, Event, EventRecorder, Message, MessageContext, MessageId, PendingEvent,
};
use serde::{Deserialize, Serialize};

/// A store under test, and whatever keeps its database alive.
pub struct EventStoreUnderTest {
    /// The store.
    pub store: Arc<dyn EventStore>,
    /// The same store, encrypting personal fields under `keys`.
    pub protected: Arc<dyn EventStore>,
    /// The subjects' keys of `protected`.
    pub keys: Arc<dyn KeyStore>,
    /// Dropped with the test.
    pub keep: Box<dyn Any + Send>,
}

/// Expands to one `#[tokio::test]` per conformance test of the event
/// store, each on a fresh store from `$fresh`.
#[macro_export]
macro_rules! event_store_tests {
    ($fresh:path) => {
        $crate::event_store_tests!(@each $fresh;
            an_appended_event_reads_back_with_everything_it_was_given,
            the_expected_version_is_checked_and_a_conflict_writes_nothing,
            an_append_retried_after_it_succeeded_writes_nothing_and_says_what_was_written,
            an_id_stored_elsewhere_is_refused_and_nothing_is_written,
            a_stream_reads_from_a_version_in_pages,
            reading_all_goes_on_from_a_position_and_filters_by_type,
            an_empty_append_only_checks_the_version,
            a_large_append_is_one_block_of_versions,
            concurrent_writers_to_one_stream_each_win_once_per_version,
            a_reader_following_concurrent_writers_sees_every_event_once_in_stream_order,
            an_aggregate_is_rebuilt_from_its_stream_and_a_stale_one_conflicts,
            an_aggregate_that_recorded_an_unlisted_event_appends_nothing,
            a_snapshot_every_so_many_events_spares_a_load_the_events_before_it,
            a_snapshot_of_another_state_version_or_that_does_not_read_is_ignored,
            an_event_stored_in_an_older_shape_is_upcast_when_read,
            personal_fields_are_stored_encrypted_and_read_as_erased_once_forgotten,
            an_event_released_only_goes_to_the_bus_and_never_to_the_stream,
            no_snapshot_is_taken_of_a_state_whose_save_did_not_commit,
        );
    };
    (@each $fresh:path; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                $crate::event_store::$test($fresh().await).await;
            }
        )*
    };
}

/// The suite's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "conformance.opened", serde)]
pub struct Opened {
    /// Who opened the account.
    pub owner: String,
}

/// The suite's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "conformance.deposited", serde, version = 2)]
pub struct Deposited {
    /// How much.
    pub amount: u64,
}

/// Version 1 of `Deposited` kept the amount in `cents`; version 2 calls it
/// `amount`.
#[arch_events::upcaster(Deposited, from = 1)]
fn deposited_from_cents(mut value: serde_json::Value) -> Result<serde_json::Value, String> {
    let cents = value
        .get_mut("cents")
        .map(serde_json::Value::take)
        .ok_or("a version 1 deposit has `cents`")?;
    Ok(serde_json::json!({ "amount": cents }))
}

/// The suite's events: a withdrawal refused, released and never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "conformance.refused", serde)]
pub struct Refused {
    /// How much was asked.
    pub amount: u64,
}

/// An event-sourced account.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Account {
    owner: String,
    balance: u64,
    /// Events applied since this state was loaded or made.
    #[serde(skip)]
    replayed: u64,
    #[serde(skip)]
    events: EventRecorder,
}

impl Snapshotted for Account {
    const STATE_VERSION: u32 = 1;
    const SNAPSHOT_EVERY: u64 = 10;
}

impl Account {
    fn open(&mut self, owner: &str) {
        self.record(Opened {
            owner: owner.into(),
        });
    }

    fn deposit(&mut self, amount: u64) {
        self.record(Deposited { amount });
    }

    /// Withdrawing is not built: every withdrawal is refused.
    fn withdraw(&mut self, amount: u64) {
        Aggregate::events(self).record(Refused { amount });
    }
}

impl EventSourced for Account {
    const KIND: &'static str = "account";
    fn event_types(types: EventTypes<Self>) -> EventTypes<Self> {
        types
            .event::<Opened>()
            .event::<Deposited>()
            .released::<Refused>()
    }
}

impl Apply<Opened> for Account {
    fn apply(&mut self, event: &Opened) {
        self.replayed += 1;
        self.owner.clone_from(&event.owner);
    }
}

impl Apply<Deposited> for Account {
    fn apply(&mut self, event: &Deposited) {
        self.replayed += 1;
        self.balance += event.amount;
    }
}

impl Aggregate for Account {
    fn events(&mut self) -> &mut EventRecorder {
        &mut self.events
    }
}

/// An event the account does not list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "conformance.audited", serde)]
pub struct Audited;

impl Apply<Audited> for Account {
    fn apply(&mut self, _: &Audited) {}
}

fn deposit(amount: u64, cause: &MessageContext) -> NewEvent {
    NewEvent::encode(&mut PendingEvent::new(Deposited { amount }), cause).expect("encodes")
}

pub(crate) fn deposits(amounts: impl IntoIterator<Item = u64>) -> Vec<NewEvent> {
    let cause = MessageContext::root();
    amounts
        .into_iter()
        .map(|amount| deposit(amount, &cause))
        .collect()
}

fn stream(id: &str) -> StreamId {
    StreamId::new("account", id)
}

async fn everything(store: &dyn EventStore) -> Vec<RecordedEvent> {
    catch_up(store, Position::START).await
}

/// Every event after `after` committed before the call, in pages: read
/// until the head the store gave at the start. (On PostgreSQL, a
/// transaction still open anywhere in the cluster, another test's say,
/// holds the reader back until it ends.)
pub async fn catch_up(store: &dyn EventStore, mut after: Position) -> Vec<RecordedEvent> {
    let head = store.head().await.expect("reads the head");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut all = Vec::new();
    while after < head {
        let page = store
            .read_all(&ReadAll::after(after).limit(7))
            .await
            .expect("reads");
        match page.last() {
            Some(last) => after = last.position,
            None => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the reader did not reach the head {head} in 60 s: a transaction stays open"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        all.extend(page);
    }
    all
}

fn amounts(events: &[RecordedEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|event| event.decode::<Deposited>().expect("a deposit").amount)
        .collect()
}

pub async fn an_appended_event_reads_back_with_everything_it_was_given(
    subject: EventStoreUnderTest,
) {
    let store = &*subject.store;
    let command = MessageContext::root();
    let before = SystemTime::now() - Duration::from_secs(5);
    let opened = NewEvent::encode(
        &mut PendingEvent::new(Opened {
            owner: "ada".into(),
        }),
        &command,
    )
    .unwrap()
    .with_metadata(serde_json::json!({"user": "ada", "ip": "10.0.0.1"}));
    let deposited = deposit(5, &command);
    assert_eq!(deposited.schema_version, 2, "#[event(version = 2)]");
    let appended = store
        .append(
            &stream("a1"),
            ExpectedVersion::NoStream,
            &[opened.clone(), deposited.clone()],
        )
        .await
        .unwrap();
    assert_eq!(
        (appended.from_version, appended.to_version, appended.written),
        (0, 2, true)
    );

    let read = store.read_stream(&stream("a1"), 1, 100).await.unwrap();
    assert_eq!(read.len(), 2);
    for (recorded, new) in read.iter().zip([&opened, &deposited]) {
        assert_eq!(recorded.id, new.id);
        assert_eq!(recorded.stream, stream("a1"));
        assert_eq!(recorded.name, new.name);
        assert_eq!(recorded.schema_version, new.schema_version);
        let payload: serde_json::Value = serde_json::from_str(&recorded.payload).unwrap();
        let sent: serde_json::Value = serde_json::from_str(&new.payload).unwrap();
        assert_eq!(payload, sent);
        assert_eq!(recorded.metadata, new.metadata);
        assert_eq!(recorded.correlation_id, command.correlation_id());
        assert_eq!(recorded.causation_id, Some(command.message_id()));
        assert!(
            recorded.recorded_at > before
                && recorded.recorded_at < SystemTime::now() + Duration::from_secs(5)
        );
        assert_eq!(recorded.context().message_id(), new.id);
    }
    assert_eq!(read.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
    assert!(read[0].position < read[1].position);
    assert_eq!(
        appended.position, read[1].position,
        "the append says where its last event is"
    );
    assert_eq!(read[0].decode::<Opened>().unwrap().owner, "ada");
    assert!(matches!(
        read[0].decode::<Deposited>(),
        Err(EventStoreError::Decode { .. })
    ));
    assert_eq!(store.stream_version(&stream("a1")).await.unwrap(), 2);
    assert_eq!(everything(store).await, read);
}

pub async fn the_expected_version_is_checked_and_a_conflict_writes_nothing(
    subject: EventStoreUnderTest,
) {
    let store = &*subject.store;
    let s = stream("a1");
    store
        .append(&s, ExpectedVersion::Exact(0), &deposits([1]))
        .await
        .unwrap();
    let conflict = |result: Result<_, EventStoreError>, actual_version: u64| match result {
        Err(EventStoreError::Conflict { actual, .. }) => assert_eq!(actual, actual_version),
        other => panic!("expected a conflict, got {other:?}"),
    };
    conflict(
        store
            .append(&s, ExpectedVersion::NoStream, &deposits([2]))
            .await,
        1,
    );
    conflict(
        store
            .append(&s, ExpectedVersion::Exact(0), &deposits([2]))
            .await,
        1,
    );
    conflict(
        store
            .append(&s, ExpectedVersion::Exact(2), &deposits([2]))
            .await,
        1,
    );
    assert_eq!(
        amounts(&everything(store).await),
        [1],
        "a conflict writes nothing"
    );
    let appended = store
        .append(&s, ExpectedVersion::Exact(1), &deposits([2, 3]))
        .await
        .unwrap();
    assert_eq!((appended.from_version, appended.to_version), (1, 3));
    let appended = store
        .append(&s, ExpectedVersion::Any, &deposits([4]))
        .await
        .unwrap();
    assert_eq!(appended.to_version, 4);
    let appended = store
        .append(&stream("new"), ExpectedVersion::Any, &deposits([5]))
        .await
        .unwrap();
    assert_eq!(appended.to_version, 1);
    match store
        .append(&stream("none"), ExpectedVersion::Exact(3), &deposits([6]))
        .await
    {
        Err(EventStoreError::Conflict {
            actual: 0,
            stream: found,
            expected: ExpectedVersion::Exact(3),
        }) => {
            assert_eq!(found, stream("none"));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(amounts(&everything(store).await), [1, 2, 3, 4, 5]);
    let error = store
        .append(&s, ExpectedVersion::Exact(3), &deposits([7]))
        .await
        .unwrap_err();
    assert!(error.is_conflict());
    assert!(error.to_string().contains("account-a1"), "{error}");
}

pub async fn an_append_retried_after_it_succeeded_writes_nothing_and_says_what_was_written(
    subject: EventStoreUnderTest,
) {
    let store = &*subject.store;
    let s = stream("a1");
    store
        .append(&s, ExpectedVersion::NoStream, &deposits([1]))
        .await
        .unwrap();
    let batch = deposits([2, 3]);
    let first = store
        .append(&s, ExpectedVersion::Exact(1), &batch)
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::Exact(3), &deposits([4]))
        .await
        .unwrap();
    // The same append again (its answer was lost): its expected version is
    // stale now, and it is still a retry, not a conflict.
    let again = store
        .append(&s, ExpectedVersion::Exact(1), &batch)
        .await
        .unwrap();
    assert!(!again.written);
    assert_eq!(
        (again.from_version, again.to_version, again.position),
        (1, 3, first.position)
    );
    assert_eq!(amounts(&everything(store).await), [1, 2, 3, 4]);
    assert_eq!(store.stream_version(&s).await.unwrap(), 4);
}

pub async fn an_id_stored_elsewhere_is_refused_and_nothing_is_written(
    subject: EventStoreUnderTest,
) {
    let store = &*subject.store;
    let batch = deposits([1, 2]);
    store
        .append(&stream("a1"), ExpectedVersion::NoStream, &batch)
        .await
        .unwrap();
    let duplicate = |result: Result<_, EventStoreError>, id: MessageId| match result {
        Err(EventStoreError::DuplicateId { id: found, .. }) => assert_eq!(found, id),
        other => panic!("expected a duplicate id, got {other:?}"),
    };
    // In another stream.
    duplicate(
        store
            .append(&stream("a2"), ExpectedVersion::Any, &batch)
            .await,
        batch[0].id,
    );
    // Part of the earlier append, with a new event.
    let mut mixed = deposits([3]);
    mixed.insert(0, batch[1].clone());
    duplicate(
        store
            .append(&stream("a1"), ExpectedVersion::Any, &mixed)
            .await,
        batch[1].id,
    );
    // In another order.
    let reversed = vec![batch[1].clone(), batch[0].clone()];
    assert!(matches!(
        store
            .append(&stream("a1"), ExpectedVersion::Any, &reversed)
            .await,
        Err(EventStoreError::DuplicateId { .. })
    ));
    // Twice in one append.
    let twice = deposits([4]);
    let twice = vec![twice[0].clone(), twice[0].clone()];
    duplicate(
        store
            .append(&stream("a3"), ExpectedVersion::Any, &twice)
            .await,
        twice[0].id,
    );
    assert_eq!(amounts(&everything(store).await), [1, 2], "nothing written");
    assert_eq!(store.stream_version(&stream("a2")).await.unwrap(), 0);
    assert_eq!(store.stream_version(&stream("a3")).await.unwrap(), 0);
}

pub async fn a_stream_reads_from_a_version_in_pages(subject: EventStoreUnderTest) {
    let store = &*subject.store;
    store
        .append(&stream("a1"), ExpectedVersion::NoStream, &deposits(1..=10))
        .await
        .unwrap();
    store
        .append(&stream("a2"), ExpectedVersion::NoStream, &deposits([100]))
        .await
        .unwrap();
    let page = store.read_stream(&stream("a1"), 4, 3).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.version).collect::<Vec<_>>(),
        [4, 5, 6]
    );
    assert_eq!(amounts(&page), [4, 5, 6]);
    assert_eq!(
        store
            .read_stream(&stream("a1"), 10, 100)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store
        .read_stream(&stream("a1"), 11, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .read_stream(&stream("a1"), 0, 100)
            .await
            .unwrap()
            .len(),
        10
    );
    assert!(store
        .read_stream(&stream("none"), 1, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.stream_version(&stream("none")).await.unwrap(), 0);
}

pub async fn reading_all_goes_on_from_a_position_and_filters_by_type(subject: EventStoreUnderTest) {
    let store = &*subject.store;
    let cause = MessageContext::root();
    for (id, owner) in [("a1", "ada"), ("a2", "bob")] {
        let opened = NewEvent::encode(
            &mut PendingEvent::new(Opened {
                owner: owner.into(),
            }),
            &cause,
        )
        .unwrap();
        store
            .append(&stream(id), ExpectedVersion::NoStream, &[opened])
            .await
            .unwrap();
        store
            .append(&stream(id), ExpectedVersion::Exact(1), &deposits([1, 2]))
            .await
            .unwrap();
    }
    let all = everything(store).await;
    assert_eq!(all.len(), 6);
    assert!(all
        .windows(2)
        .all(|pair| pair[0].position < pair[1].position));
    let middle = all[2].position;
    let rest = store.read_all(&ReadAll::after(middle)).await.unwrap();
    assert_eq!(rest, all[3..].to_vec());
    let opened = store
        .read_all(&ReadAll::after(Position::START).types([Opened::name()]))
        .await
        .unwrap();
    assert_eq!(
        opened
            .iter()
            .map(|e| e.decode::<Opened>().unwrap().owner)
            .collect::<Vec<_>>(),
        ["ada", "bob"]
    );
    let limited = store
        .read_all(&ReadAll::after(Position::START).limit(2))
        .await
        .unwrap();
    assert_eq!(limited, all[..2].to_vec());
    let last = all.last().unwrap().position;
    assert!(store
        .read_all(&ReadAll::after(last))
        .await
        .unwrap()
        .is_empty());
}

pub async fn an_empty_append_only_checks_the_version(subject: EventStoreUnderTest) {
    let store = &*subject.store;
    let s = stream("a1");
    let appended = store
        .append(&s, ExpectedVersion::NoStream, &[])
        .await
        .unwrap();
    assert_eq!((appended.to_version, appended.written), (0, false));
    let written = store
        .append(&s, ExpectedVersion::NoStream, &deposits([1]))
        .await
        .unwrap();
    let appended = store
        .append(&s, ExpectedVersion::Exact(1), &[])
        .await
        .unwrap();
    assert_eq!(
        (appended.to_version, appended.position, appended.written),
        (1, written.position, false)
    );
    assert!(store
        .append(&s, ExpectedVersion::NoStream, &[])
        .await
        .unwrap_err()
        .is_conflict());
    assert_eq!(everything(store).await.len(), 1);
}

pub async fn a_large_append_is_one_block_of_versions(subject: EventStoreUnderTest) {
    let store = &*subject.store;
    let s = stream("a1");
    let appended = store
        .append(&s, ExpectedVersion::NoStream, &deposits(1..=2500))
        .await
        .unwrap();
    assert_eq!(appended.to_version, 2500);
    let all = everything(store).await;
    assert_eq!(amounts(&all), (1..=2500).collect::<Vec<_>>());
    assert_eq!(
        all.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=2500).collect::<Vec<_>>()
    );
    assert_eq!(appended.position, all[2499].position);
    let loaded = Loaded::<Account>::load(store, "a1").await.unwrap();
    assert_eq!((loaded.version(), loaded.balance), (2500, 2500 * 2501 / 2));
}

pub async fn concurrent_writers_to_one_stream_each_win_once_per_version(
    subject: EventStoreUnderTest,
) {
    let store = subject.store.clone();
    const WRITERS: u64 = 8;
    const EACH: u64 = 10;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for n in 0..EACH {
                let amount = writer * 1000 + n;
                loop {
                    let version = store.stream_version(&stream("shared")).await.unwrap();
                    match store
                        .append(
                            &stream("shared"),
                            ExpectedVersion::Exact(version),
                            &deposits([amount]),
                        )
                        .await
                    {
                        Ok(appended) => {
                            assert_eq!(appended.to_version, version + 1);
                            break;
                        }
                        Err(error) if error.is_conflict() => conflicts += 1,
                        Err(error) => panic!("{error}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    let events = store.read_stream(&stream("shared"), 1, 1000).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=WRITERS * EACH).collect::<Vec<_>>()
    );
    let mut written = amounts(&events);
    // Each writer's own events in its order; none lost, none twice.
    for writer in 0..WRITERS {
        let own: Vec<u64> = written
            .iter()
            .copied()
            .filter(|a| a / 1000 == writer)
            .collect();
        assert_eq!(
            own,
            (0..EACH).map(|n| writer * 1000 + n).collect::<Vec<_>>()
        );
    }
    written.sort_unstable();
    written.dedup();
    assert_eq!(written.len() as u64, WRITERS * EACH);
    eprintln!("{conflicts} conflicts among {WRITERS} writers");
}

pub async fn a_reader_following_concurrent_writers_sees_every_event_once_in_stream_order(
    subject: EventStoreUnderTest,
) {
    let store = subject.store.clone();
    const WRITERS: u64 = 6;
    const EACH: u64 = 25;
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..EACH {
                // Streams shared between pairs of writers, with Any: appends
                // to one stream from several writers at once.
                // (On PostgreSQL an append can race an older transaction
                // even with `Any`: rerun, as a command's retry would.)
                let s = stream(&format!("s{}", (writer + n) % 4));
                let batch = deposits([writer * 1000 + n]);
                loop {
                    match store.append(&s, ExpectedVersion::Any, &batch).await {
                        Ok(_) => break,
                        Err(error) if error.is_conflict() => continue,
                        Err(error) => panic!("{error}"),
                    }
                }
            }
        }));
    }
    let mut seen: Vec<RecordedEvent> = Vec::new();
    let mut after = Position::START;
    // Finished, or panicked: either way it writes no more.
    while !writers.iter().all(|writer| writer.is_finished()) {
        let page = store
            .read_all(&ReadAll::after(after).limit(10))
            .await
            .unwrap();
        match page.last() {
            Some(last) => after = last.position,
            None => tokio::task::yield_now().await,
        }
        seen.extend(page);
    }
    for writer in writers {
        writer.await.unwrap();
    }
    // The rest, up to the last event written.
    seen.extend(catch_up(&*store, after).await);
    let ids: HashSet<MessageId> = seen.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), seen.len(), "no event seen twice");
    assert_eq!(seen.len() as u64, WRITERS * EACH, "every event seen");
    assert!(seen
        .windows(2)
        .all(|pair| pair[0].position < pair[1].position));
    let mut versions: BTreeMap<StreamId, u64> = BTreeMap::new();
    for event in &seen {
        let last = versions.entry(event.stream.clone()).or_default();
        assert_eq!(
            event.version,
            *last + 1,
            "each stream's versions in order, none missing"
        );
        *last = event.version;
    }
    assert_eq!(
        seen,
        everything(&*store).await,
        "the follower saw what a reader after the fact sees"
    );
}

pub async fn an_aggregate_is_rebuilt_from_its_stream_and_a_stale_one_conflicts(
    subject: EventStoreUnderTest,
) {
    let store = &*subject.store;
    let flow = MessageContext::root();
    let mut account = Loaded::<Account>::new("a1");
    account.open("ada");
    account.deposit(5);
    assert_eq!(account.balance, 5, "applied when recorded");
    let released = account.save(store, &flow).await.unwrap();
    assert_eq!(released.len(), 2, "handed back for the bus");
    assert_eq!(
        released[0].context().unwrap().causation_id(),
        Some(flow.message_id())
    );
    assert_eq!(account.version(), 2);

    let mut fresh = Loaded::<Account>::load(store, "a1").await.unwrap();
    assert_eq!(
        (fresh.owner.as_str(), fresh.balance, fresh.version()),
        ("ada", 5, 2)
    );
    let mut stale = Loaded::<Account>::load(store, "a1").await.unwrap();
    fresh.deposit(10);
    fresh.save(store, &flow).await.unwrap();
    stale.deposit(20);
    let error = stale.save(store, &flow).await.unwrap_err();
    assert!(error.is_conflict(), "{error}");
    // What a command's retry does: load again, decide again.
    let mut retried = Loaded::<Account>::load(store, "a1").await.unwrap();
    retried.deposit(20);
    retried.save(store, &flow).await.unwrap();
    let last = Loaded::<Account>::load(store, "a1").await.unwrap();
    assert_eq!((last.balance, last.version()), (35, 4));
    // A new aggregate over an existing stream conflicts too.
    let mut twin = Loaded::<Account>::new("a1");
    twin.open("eve");
    assert!(twin.save(store, &flow).await.unwrap_err().is_conflict());
}

pub async fn an_aggregate_that_recorded_an_unlisted_event_appends_nothing(
    subject: EventStoreUnderTest,
) {
    let store = &*subject.store;
    let mut account = Loaded::<Account>::new("a1");
    account.open("ada");
    account.record(Audited);
    let error = account
        .save(store, &MessageContext::root())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            EventStoreError::Unlisted {
                event: "conformance.audited",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains(".event::<"), "{error}");
    assert!(everything(store).await.is_empty());
}

pub async fn a_snapshot_every_so_many_events_spares_a_load_the_events_before_it(
    subject: EventStoreUnderTest,
) {
    let store = &*subject.store;
    let flow = MessageContext::root();
    let mut taken = Vec::new();
    for amount in 1..=25 {
        let mut account = Loaded::<Account>::load_snapshotted(store, "a1")
            .await
            .unwrap();
        account.deposit(amount);
        account.save(store, &flow).await.unwrap();
        if account.save_snapshot_if_due(store).await.unwrap() {
            taken.push(account.version());
        }
    }
    assert_eq!(taken, [10, 20], "every 10 events");
    let kept = store.load_snapshot(&stream("a1")).await.unwrap().unwrap();
    assert_eq!((kept.version, kept.state_version), (20, 1));
    let from_snapshot = Loaded::<Account>::load_snapshotted(store, "a1")
        .await
        .unwrap();
    assert_eq!(
        (from_snapshot.balance, from_snapshot.version()),
        (25 * 26 / 2, 25)
    );
    assert_eq!(
        from_snapshot.replayed, 5,
        "only the events after the snapshot"
    );
    let from_events = Loaded::<Account>::load(store, "a1").await.unwrap();
    assert_eq!(
        (from_events.balance, from_events.replayed),
        (25 * 26 / 2, 25)
    );
    // An older snapshot never replaces a newer one.
    let older = StoredSnapshot {
        version: 5,
        ..kept.clone()
    };
    store.save_snapshot(&stream("a1"), &older).await.unwrap();
    assert_eq!(
        store.load_snapshot(&stream("a1")).await.unwrap(),
        Some(kept)
    );
}

pub async fn a_snapshot_of_another_state_version_or_that_does_not_read_is_ignored(
    subject: EventStoreUnderTest,
) {
    let store = &*subject.store;
    let flow = MessageContext::root();
    for id in ["a1", "a2"] {
        let mut account = Loaded::<Account>::new(id);
        for amount in 1..=12 {
            account.deposit(amount);
        }
        account.save(store, &flow).await.unwrap();
    }
    let other_shape = StoredSnapshot {
        version: 12,
        state_version: 99,
        state: r#"{"owner":"","balance":1000000}"#.into(),
    };
    store
        .save_snapshot(&stream("a1"), &other_shape)
        .await
        .unwrap();
    let unreadable = StoredSnapshot {
        version: 12,
        state_version: Account::STATE_VERSION,
        state: r#"{"owner":7}"#.into(),
    };
    store
        .save_snapshot(&stream("a2"), &unreadable)
        .await
        .unwrap();
    let ahead = StoredSnapshot {
        version: 13,
        state_version: Account::STATE_VERSION,
        state: r#"{"owner":"","balance":1000000}"#.into(),
    };
    store.save_snapshot(&stream("a3"), &ahead).await.unwrap();
    let mut a3 = Loaded::<Account>::new("a3");
    for amount in 1..=12 {
        a3.deposit(amount);
    }
    a3.save(store, &flow).await.unwrap();
    for id in ["a1", "a2", "a3"] {
        let account = Loaded::<Account>::load_snapshotted(store, id)
            .await
            .unwrap();
        assert_eq!(
            (account.balance, account.version()),
            (12 * 13 / 2, 12),
            "{id}: never misread"
        );
        assert_eq!(account.replayed, 12, "{id}: rebuilt from the events");
    }
}

pub async fn an_event_stored_in_an_older_shape_is_upcast_when_read(subject: EventStoreUnderTest) {
    let store = &*subject.store;
    let stored_as = |schema_version: u32, payload: &str| NewEvent {
        schema_version,
        payload: payload.into(),
        ..deposit(0, &MessageContext::root())
    };
    let events = [
        stored_as(1, r#"{"cents":7}"#),
        stored_as(2, r#"{"amount":5}"#),
    ];
    store
        .append(&stream("old"), ExpectedVersion::NoStream, &events)
        .await
        .unwrap();
    let read = store.read_stream(&stream("old"), 1, 10).await.unwrap();
    assert_eq!(read[0].schema_version, 1, "stored as it was written");
    assert_eq!(
        read[0].decode::<Deposited>().unwrap(),
        Deposited { amount: 7 }
    );
    let account = Loaded::<Account>::load(store, "old").await.unwrap();
    assert_eq!(account.balance, 12, "the aggregate reads both shapes");

    store
        .append(
            &stream("broken"),
            ExpectedVersion::NoStream,
            &[stored_as(1, r#"{"dollars":7}"#)],
        )
        .await
        .unwrap();
    store
        .append(
            &stream("newer"),
            ExpectedVersion::NoStream,
            &[stored_as(3, r#"{"amount":1}"#)],
        )
        .await
        .unwrap();
    for (id, says) in [("broken", "deposited_from_cents"), ("newer", "newer build")] {
        let error = Loaded::<Account>::load(store, id).await.unwrap_err();
        assert!(matches!(error, EventStoreError::Decode { .. }), "{error}");
        assert!(error.to_string().contains(says), "{id}: {error}");
    }
}

/// A customer's registration: whose (`customer`), their email and name
/// (personal), and their plan (not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "conformance.registered", serde, personal(subject = customer, fields(email, name)))]
pub struct Registered {
    customer: String,
    email: Option<String>,
    name: Option<String>,
    plan: String,
}

fn registered(customer: &str, email: Option<&str>) -> NewEvent {
    let event = Registered {
        customer: customer.into(),
        email: email.map(Into::into),
        name: Some(format!("{customer}'s name")),
        plan: "pro".into(),
    };
    NewEvent::encode(&mut PendingEvent::new(event), &MessageContext::root()).unwrap()
}

pub async fn personal_fields_are_stored_encrypted_and_read_as_erased_once_forgotten(
    subject: EventStoreUnderTest,
) {
    let (raw, protected, keys) = (&*subject.store, &*subject.protected, &*subject.keys);
    for (customer, email) in [
        ("c1", Some("ada@example.com")),
        ("c2", Some("bob@example.com")),
        ("c3", None),
    ] {
        protected
            .append(
                &StreamId::new("customer", customer),
                ExpectedVersion::NoStream,
                &[registered(customer, email)],
            )
            .await
            .unwrap();
    }
    let stored = everything(raw).await;
    assert_eq!(stored.len(), 3);
    for event in &stored {
        for secret in ["ada@", "bob@", "'s name"] {
            assert!(
                !event.payload.contains(secret),
                "stored encrypted: {}",
                event.payload
            );
        }
        assert!(
            event.payload.contains("pro"),
            "the rest in clear: {}",
            event.payload
        );
    }
    let read = |events: Vec<RecordedEvent>| -> Vec<Registered> {
        events
            .iter()
            .map(|event| event.decode::<Registered>().unwrap())
            .collect()
    };
    let before = read(everything(protected).await);
    assert_eq!(before[0].email.as_deref(), Some("ada@example.com"));
    assert_eq!(before[1].name.as_deref(), Some("c2's name"));
    assert_eq!(before[2].email, None, "a field that was empty stays empty");

    assert!(keys.forget("c1").await.unwrap());
    assert!(!keys.forget("c1").await.unwrap(), "forgotten already");
    assert!(keys.key("c1").await.unwrap().is_none());
    let after = read(everything(protected).await);
    assert_eq!(
        (after[0].email.as_deref(), after[0].name.as_deref()),
        (None, None),
        "erased"
    );
    assert_eq!(
        (after[0].customer.as_str(), after[0].plan.as_str()),
        ("c1", "pro"),
        "the rest still loads"
    );
    assert_eq!(after[1], before[1], "another subject untouched");
    let stream = protected
        .read_stream(&StreamId::new("customer", "c1"), 1, 10)
        .await
        .unwrap();
    assert_eq!(
        read(stream)[0].email,
        None,
        "erased when read by stream too"
    );
}

pub async fn an_event_released_only_goes_to_the_bus_and_never_to_the_stream(
    subject: EventStoreUnderTest,
) {
    let store = &*subject.store;
    let flow = MessageContext::root();
    let mut account = Loaded::<Account>::new("a1");
    account.open("ada");
    account.withdraw(3);
    account.deposit(5);
    let released: Vec<&str> = account
        .save(store, &flow)
        .await
        .unwrap()
        .iter()
        .map(PendingEvent::name)
        .collect();
    assert_eq!(
        released,
        [
            "conformance.opened",
            "conformance.refused",
            "conformance.deposited"
        ],
        "every recorded event goes to the bus, in order"
    );
    assert_eq!(account.version(), 2, "two of them stored");

    // Only a released one: nothing to append, the version stays.
    let mut account = Loaded::<Account>::load(store, "a1").await.unwrap();
    account.withdraw(10);
    assert!(account.changes(&flow).unwrap().is_empty());
    let released = account.save(store, &flow).await.unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(
        released[0].downcast_ref::<Refused>(),
        Some(&Refused { amount: 10 })
    );
    assert_eq!(account.version(), 2);
    let stream = stream("a1");
    assert_eq!(store.stream_version(&stream).await.unwrap(), 2);
    let names: Vec<String> = store
        .read_stream(&stream, 1, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.name)
        .collect();
    assert_eq!(names, ["conformance.opened", "conformance.deposited"]);
}

pub async fn no_snapshot_is_taken_of_a_state_whose_save_did_not_commit(
    subject: EventStoreUnderTest,
) {
    let store = &*subject.store;
    let flow = MessageContext::root();
    let mut account = Loaded::<Account>::new("a1");
    account.open("ada");
    for amount in 1..=8 {
        account.deposit(amount);
    }
    account.save(store, &flow).await.unwrap();
    assert_eq!(account.version(), 9);

    // A save whose commit failed: the aggregate took its events and moved
    // to version 10, the stream did not.
    let mut failed = Loaded::<Account>::load(store, "a1").await.unwrap();
    failed.deposit(100);
    assert_eq!(failed.changes(&flow).unwrap().len(), 1);
    failed.saved(&Appended {
        from_version: 9,
        to_version: 10,
        position: Position::new(u64::from(u32::MAX), u64::from(u32::MAX)),
        written: true,
    });
    assert!(failed.snapshot_due());
    assert!(!failed.save_snapshot_if_due(store).await.unwrap());
    assert_eq!(store.load_snapshot(&stream("a1")).await.unwrap(), None);

    // The same step, committed: its snapshot is taken.
    let mut committed = Loaded::<Account>::load(store, "a1").await.unwrap();
    committed.deposit(9);
    committed.save(store, &flow).await.unwrap();
    assert!(committed.save_snapshot_if_due(store).await.unwrap());
    let snapshot = store.load_snapshot(&stream("a1")).await.unwrap().unwrap();
    assert_eq!(snapshot.version, 10);
    let loaded = Loaded::<Account>::load_snapshotted(store, "a1")
        .await
        .unwrap();
    assert_eq!(loaded.balance, (1..=9).sum::<u64>());
}
