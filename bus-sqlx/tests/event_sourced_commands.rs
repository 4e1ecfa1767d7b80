//! An event-sourced aggregate behind the bus, on SQLite: a command's
//! handler loads it from its stream, records, and commits its events with
//! the expected version, staging them for durable delivery in the same
//! transaction. Concurrent commands on one aggregate conflict, and the
//! command's retry policy reruns the losers with fresh state: nothing is
//! lost, and only committed events reach the event handlers, once each.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arch_events::event_store::{Apply, EventSourced, EventStoreError, EventTypes, Loaded};
use arch_events::{
    handler, Aggregate, Bus, Command, Dependencies, Event, EventRecorder, EventReleaser,
    MessageContext, RetryPolicy, Scoped,
};
use arch_events_sqlx::{SqlEventStore, StageError, Store};
use serde::{Deserialize, Serialize};
use sqlx::Sqlite;

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "bank.deposited", serde)]
struct Deposited {
    amount: u64,
}

#[derive(Debug, Default)]
struct Account {
    balance: u64,
    events: EventRecorder,
}

impl EventSourced for Account {
    const KIND: &'static str = "account";
    fn event_types(types: EventTypes<Self>) -> EventTypes<Self> {
        types.event::<Deposited>()
    }
}

impl Apply<Deposited> for Account {
    fn apply(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }
}

impl Aggregate for Account {
    fn events(&mut self) -> &mut EventRecorder {
        &mut self.events
    }
}

#[derive(Debug, thiserror::Error)]
enum BankError {
    #[error(transparent)]
    Events(#[from] EventStoreError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl BankError {
    fn is_conflict(&self) -> bool {
        matches!(self, BankError::Events(error) if error.is_conflict())
    }
}

#[derive(Debug, Clone, Command)]
#[command(output = u64, error = BankError)]
struct Deposit {
    account: String,
    amount: u64,
}

/// The unit of work of one call.
struct Bank {
    store: Store<Sqlite>,
    events: SqlEventStore<Sqlite>,
    releaser: EventReleaser,
    flow: MessageContext,
}

/// Holds every first attempt until all of them loaded the account: they
/// all read version 0, and all but one must conflict.
struct Together(tokio::sync::Barrier);

#[derive(Default)]
struct Seen {
    deposits: AtomicUsize,
    attempts: AtomicUsize,
}

#[handler(releases(Deposited))]
async fn deposit(
    cmd: Deposit,
    bank: Scoped<Bank>,
    together: &Together,
    seen: &Seen,
) -> Result<u64, BankError> {
    seen.attempts.fetch_add(1, Ordering::SeqCst);
    let mut account = Loaded::<Account>::load(&bank.events, cmd.account.as_str()).await?;
    if bank.flow.attempt() == 1 {
        together.0.wait().await;
    }
    account.record(Deposited { amount: cmd.amount });
    let mut tx = bank.store.begin().await?;
    let released = bank
        .events
        .save_in(&mut tx, &mut account, &bank.flow)
        .await?;
    let staged = bank
        .store
        .stage(&mut tx, &bank.releaser, &bank.flow, released)
        .await?;
    tx.commit().await?;
    staged.release();
    Ok(account.balance)
}

#[handler]
fn count_deposit(_: &Deposited, seen: &Seen) {
    seen.deposits.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_one_aggregate_conflict_and_are_rerun_with_fresh_state() {
    const COMMANDS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("bank.db").display());
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect(&url)
        .await
        .unwrap();
    let store = Store::open(pool).await.unwrap();
    let seen = Arc::new(Seen::default());
    let factory_store = store.clone();
    let bus = Bus::builder()
        .dependencies(
            Dependencies::new()
                .shared(Together(tokio::sync::Barrier::new(COMMANDS)))
                .shared_arc(seen.clone())
                .scoped(move |scope| Bank {
                    events: factory_store.event_store(),
                    store: factory_store.clone(),
                    releaser: scope.releaser(),
                    flow: scope.context(),
                }),
        )
        .retry_command::<Deposit>(
            RetryPolicy::exponential(30)
                .first_delay(Duration::from_millis(1))
                .max_delay(Duration::from_millis(20)),
            BankError::is_conflict,
        )
        .spawner(|task| {
            tokio::spawn(task);
        })
        .build()
        .unwrap();
    let recovery = store.start_recovery(&bus).unwrap();

    let mut calls = Vec::new();
    for _ in 0..COMMANDS {
        let bus = bus.clone();
        calls.push(tokio::spawn(async move {
            bus.dispatch(Deposit {
                account: "ada".into(),
                amount: 5,
            })
            .await
        }));
    }
    let mut balances = Vec::new();
    for call in calls {
        balances.push(call.await.unwrap().unwrap());
    }
    balances.sort_unstable();
    assert_eq!(
        balances,
        (1..=COMMANDS as u64).map(|n| n * 5).collect::<Vec<_>>(),
        "each saw the others' deposits"
    );
    let account = Loaded::<Account>::load(&store.event_store(), "ada")
        .await
        .unwrap();
    assert_eq!(
        (account.balance, account.version()),
        (5 * COMMANDS as u64, COMMANDS as u64)
    );
    assert!(
        seen.attempts.load(Ordering::SeqCst) >= 2 * COMMANDS - 1,
        "every first attempt but one conflicted and was rerun"
    );
    assert_eq!(
        seen.deposits.load(Ordering::SeqCst),
        COMMANDS,
        "only committed events, once each"
    );
    assert_eq!(
        store.delivery_lag().await.unwrap().count,
        0,
        "their durable delivery finished"
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    recovery.stop().await;
    store.close().await;
}
