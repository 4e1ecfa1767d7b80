//! Durable messaging for arch-events on SQLite and PostgreSQL, through the
//! service's own [`sqlx`] pool: nothing a unit of work committed is lost,
//! whatever happens to the caller or the process.
//!
//! - **Durable local delivery.** A unit of work stages every event it
//!   releases in its commit's transaction ([`Store::stage`]); the bus
//!   handles them right after the commit as usual, and each handler's
//!   completion is recorded: in the handler's own transaction when it
//!   commits a unit of work (its effect happens once), otherwise right after
//!   it succeeds (at-least-once). Events whose handlers did not all complete
//!   (the process died, the task was torn down) are delivered again to
//!   exactly the handlers that did not, by each process's recovery loop
//!   ([`Store::start_recovery`]), never by two processes at once.
//! - **Transactional outbox.** External events (`external = "stream"`) are
//!   staged in the same transaction and published by a relay
//!   ([`Outbox::run`]): batched, `FOR UPDATE SKIP LOCKED` on PostgreSQL, a
//!   lease on SQLite, any number of relays in any number of processes.
//! - **Inbox.** The inbound message a unit of work handles is recorded in
//!   its transaction: a redelivery is recognised ([`Inbox`]).
//! - **Dead letters.** The bus's sink, with listing, replay under an
//!   expiring claim, and deletion ([`DeadLetters`], [`replay`]).
//! - **Event store.** [`Store::event_store`]: streams with expected
//!   versions and idempotent appends, in the unit of work's transaction
//!   ([`SqlEventStore::save_in`]), in one global order that never skips
//!   (on PostgreSQL without a timeout: see [`SqlEventStore`]); catch-up
//!   [`Projection`]s whose checkpoint commits with their read model;
//!   snapshots; personal fields encrypted per subject
//!   ([`SqlEventStore::with_personal_data`]).
//!
//! Its tables (`bus_*`) and their migrations are its own, recorded in
//! `bus_sqlx_migrations`: they live beside the application's tables and
//! its `sqlx::migrate!()` without touching `_sqlx_migrations`.
//!
//! Enable the feature of each database the service runs on: `sqlite`,
//! `postgres`.
//!
//! # A unit of work, made durable
//!
//! A command's unit of work stages the events it releases; a projection
//! records its delivery in its own transaction (so a redelivered event never
//! writes it twice); a plain handler's completion is recorded by the bus.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use arch_events::{handler, Bus, Command, Dependencies, Event, EventReleaser, MessageContext, PendingEvent, Scoped};
//! use arch_events_sqlx::{Settings, Store, StageError};
//! use sqlx::sqlite::SqlitePoolOptions;
//! use sqlx::Sqlite;
//!
//! #[derive(Debug, Command)]
//! #[command(error = StageError)]
//! struct Deposit { account: String, amount: i64 }
//!
//! // Stored events are found again by name: give durable ones a stable one.
//! #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
//! #[event(name = "ledger.deposited", serde)]
//! struct Deposited { account: String, amount: i64 }
//!
//! /// The unit of work of one handler call: its writes, and what it owes the
//! /// bus, commit together, in one transaction.
//! struct Ledger { store: Store<Sqlite>, releaser: EventReleaser, flow: MessageContext }
//!
//! impl Ledger {
//!     /// A command's change: writes, and stages the events it releases.
//!     async fn deposit(&self, account: &str, amount: i64) -> Result<(), StageError> {
//!         let mut tx = self.store.begin().await?;
//!         sqlx::query("INSERT INTO ledger (account, amount) VALUES (?, ?)")
//!             .bind(account).bind(amount)
//!             .execute(&mut **tx).await?;
//!         let event = PendingEvent::new(Deposited { account: account.into(), amount });
//!         let staged = self.store.stage(&mut tx, &self.releaser, &self.flow, vec![event]).await?;
//!         tx.commit().await?;
//!         staged.release(); // the bus handles `Deposited` now, and again after a crash
//!         Ok(())
//!     }
//!
//!     /// A projection: writes, and records the delivery its call serves.
//!     /// On a redelivery whose first run committed, `stage_delivery` fails
//!     /// with `StageError::Duplicate` (nothing is written) and the bus takes
//!     /// the handler's error as done, not failed.
//!     async fn add_to_balance(&self, account: &str, amount: i64) -> Result<(), StageError> {
//!         let mut tx = self.store.begin().await?;
//!         sqlx::query(
//!             "INSERT INTO balances (account, total) VALUES (?, ?) \
//!              ON CONFLICT (account) DO UPDATE SET total = total + excluded.total",
//!         )
//!         .bind(account).bind(amount)
//!         .execute(&mut **tx).await?;
//!         let staged = self.store.stage_delivery(&mut tx, &self.releaser).await?;
//!         tx.commit().await?;
//!         staged.release();
//!         Ok(())
//!     }
//! }
//!
//! #[handler(releases(Deposited))]
//! async fn deposit(cmd: Deposit, ledger: Scoped<Ledger>) -> Result<(), StageError> {
//!     ledger.deposit(&cmd.account, cmd.amount).await
//! }
//!
//! /// Effectively once: its change and the record of it commit together.
//! #[handler]
//! async fn project_balance(event: &Deposited, ledger: Scoped<Ledger>) -> Result<(), StageError> {
//!     ledger.add_to_balance(&event.account, event.amount).await
//! }
//!
//! /// At-least-once: may run again after a crash between its end and the
//! /// record the bus makes of it.
//! #[handler]
//! fn notify(event: &Deposited) {
//!     println!("{} +{}", event.account, event.amount);
//! }
//!
//! let pool = SqlitePoolOptions::new().connect("sqlite::memory:").await?;
//! sqlx::raw_sql(
//!     "CREATE TABLE ledger (account TEXT, amount INTEGER); \
//!      CREATE TABLE balances (account TEXT PRIMARY KEY, total INTEGER)",
//! )
//! .execute(&pool)
//! .await?;
//! // arch-events-sqlx's own tables, and this process's node. A process that stops
//! // beating is taken for dead after `node_timeout` (the setting of the
//! // process that takes over); `Store::open` uses the defaults.
//! let settings = Settings::default().node_timeout(Duration::from_secs(5));
//! let store = Store::open_with(pool.clone(), settings).await?;
//!
//! let ledger_store = store.clone();
//! let bus = Bus::builder()
//!     .dependencies(Dependencies::new().scoped(move |scope| Ledger {
//!         store: ledger_store.clone(),
//!         releaser: scope.releaser(),
//!         flow: scope.context(),
//!     }))
//!     .dead_letters(store.dead_letters())
//!     .spawner(|task| { tokio::spawn(task); })
//!     .build()?;
//! let recovery = store.start_recovery(&bus)?; // delivers again what a crash left
//!
//! bus.dispatch(Deposit { account: "ada".into(), amount: 10 }).await?;
//! assert_eq!(store.delivery_lag().await?.count, 0, "delivered, and the record of it gone");
//! let total: i64 = sqlx::query_scalar("SELECT total FROM balances").fetch_one(&pool).await?;
//! assert_eq!(total, 10);
//!
//! bus.shutdown(Duration::from_secs(5)).await?;
//! recovery.stop().await;
//! store.close().await;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```
//!
//! # Trying a crash yourself
//!
//! `bus.dispatch(..).await` returns once the events it caused were
//! handled, so a process that aborts after it has nothing left to lose.
//! Abort between the unit of work's `tx.commit()` and `staged.release()`
//! (or `kill -9` a process whose handler is still running): the next
//! process to run [`Store::start_recovery`] delivers what was left, once
//! the dead one has been silent for the node timeout.

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!(
    "arch-events-sqlx needs a database: enable its `sqlite` or `postgres` feature (or both), \
     e.g. `arch-events-sqlx = { version = \"0.1\", features = [\"sqlite\"] }`"
);

mod backend;
mod dead_letters;
mod error;
mod event_store;
mod inbox;
mod migrate;
mod outbox;
#[cfg(feature = "postgres")]
mod postgres;
mod projection;
mod recovery;
mod rows;
mod scheduler;
mod settings;
#[cfg(feature = "sqlite")]
mod sqlite;
mod stage;
mod store;

pub use backend::Backend;
pub use dead_letters::{
    replay, DeadLetterError, DeadLetterRecord, DeadLetterStore, DeadLetters,
    InMemoryDeadLetterStore, StoreSink, StoredDeadLetter,
};
pub use error::{Error, MigrateError, RelayError, StageError};
pub use event_store::{HeldBy, SqlEventStore, SqlKeyStore};
pub use inbox::Inbox;
pub use migrate::migrate;
pub use outbox::Outbox;
pub use projection::{Batch, Projection, ProjectionError, RunningProjection};
pub use recovery::Recovery;
pub use scheduler::{RunningScheduler, SqlScheduler, DEFAULT_LEASE};
pub use settings::Settings;
pub use stage::Staged;
pub use store::{begin_on, Lag, Store, Tx};

/// The `sqlx` this crate is built on: the pool and transaction types a
/// service passes in.
pub use sqlx;
