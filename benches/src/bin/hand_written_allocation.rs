//! The example app's `POST /allocate`, written by hand: no bus, no event
//! handlers, no tracing. The reference that `benches/service/run.sh` loads
//! beside the example app, to measure what the framework costs inside a
//! service. (The example app's `#[handler]` registrations are linked in
//! with its domain model, which this reuses; nothing here reads them.)
//!
//! It does the same work per request as the app, statement for statement
//! (the SQL is copied from `example-app/src/adapters/{sqlite,postgres}` and
//! `bus-sqlx/src/{sqlite,postgres}.rs`), in the same three transactions:
//!
//! 1. **load** (SQLite `BEGIN`; PostgreSQL `BEGIN ISOLATION LEVEL REPEATABLE
//!    READ, READ ONLY`): the product's version, the line's allocation rows
//!    (if it was allocated before), the product's batches;
//! 2. **write** (SQLite `BEGIN IMMEDIATE`; PostgreSQL `BEGIN`): the
//!    version-checked update of the product, the batch's row, the new
//!    allocation row, the event's row in `bus_events` (the app stores every
//!    event it raises, for durable local delivery) and its `bus_outbox` row
//!    (`Allocated` is external, stream `line_allocated`);
//! 3. **view** (as 2): the `allocations_view` upsert, and the record that
//!    the event's one handler handled it, which settles the event: its
//!    `bus_events` row goes.
//!
//! Out of stock: 1, then a write with only the `OutOfStock` event's row,
//! then its deletion once "handled" (the app's handler logs a WARN line,
//! which `RUST_LOG=error` drops; here nothing is logged). A line allocated
//! before: 1 only. An unknown sku: the first `SELECT` of 1 only.
//!
//! As in the app, the units of work of one product take turns within the
//! process (from the load to the write's commit), SQLite's write
//! transactions take turns on an in-process mutex, a lost race
//! (optimistic concurrency) runs again up to 5 times, and the work of a
//! request runs on a task of its own, so that a client that hangs up cuts
//! no transaction short. The business decision is the app's own code:
//! `example_app::domain::model::Product::allocate`.
//!
//! ```sh
//! cargo build --release -p arch-events-benches --bin hand-written-allocation
//! target/release/hand-written-allocation --bind 127.0.0.1:5005 --database-url sqlite://baseline.db
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{NaiveDate, Utc};
use clap::Parser;
use example_app::domain::events::{Allocated, OutOfStock};
use example_app::domain::model::{Batch, OrderLine, Product};
use example_app::domain::validation::{self, InvalidField};
use serde::Deserialize;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;
use tokio::sync::OwnedMutexGuard;

/// The example app's settings that matter here.
#[derive(Debug, Parser)]
#[command(
    name = "hand-written-allocation",
    about = "The allocation service's POST /allocate, by hand"
)]
struct Args {
    /// Address to serve HTTP on.
    #[arg(long = "bind", env = "BIND_ADDR", default_value = "127.0.0.1:5005")]
    bind: SocketAddr,
    /// `sqlite://<file>` (created when missing) or `postgres://...`.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "sqlite://allocation.db"
    )]
    database_url: String,
}

/// The app's `PostgresDatabase` limits (`adapters/postgres/mod.rs`).
const PG_MAX_CONNECTIONS: u32 = 16;
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a command that lost an optimistic-concurrency race runs
/// (the app's `CONFLICT_ATTEMPTS`), 5 ms apart, then 10, 20, 40 (at most 100).
const CONFLICT_ATTEMPTS: u32 = 5;
/// The name of the app's handler of `Allocated`, as its delivery is recorded.
const VIEW_HANDLER: &str = "example_app::views::add_allocation_to_read_model";

#[derive(Clone)]
enum Db {
    /// One writer at a time: the app's store queues its write transactions
    /// on an in-process mutex before `BEGIN IMMEDIATE`.
    Sqlite {
        pool: SqlitePool,
        writer: Arc<tokio::sync::Mutex<()>>,
    },
    Postgres(PgPool),
}

#[derive(Clone)]
struct App {
    db: Db,
    locks: ProductLocks,
    /// Owner of the `bus_events` rows (the app's store's node id).
    node: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let db = match connect(&args.database_url).await {
        Ok(db) => db,
        Err(error) => {
            eprintln!("error: cannot open {}: {error}", args.database_url);
            return ExitCode::FAILURE;
        }
    };
    let app = App {
        db,
        locks: ProductLocks::default(),
        node: uuid::Uuid::now_v7().to_string(),
    };
    let router = Router::new()
        .route("/add_batch", post(add_batch))
        .route("/allocate", post(allocate))
        .with_state(app);
    let listener = match tokio::net::TcpListener::bind(args.bind).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("error: cannot listen on {}: {error}", args.bind);
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the database as the app does (same pool, pragmas, session
/// settings) and applies the same schema: arch-events-sqlx's tables first
/// (the app's migrations move rows into them), then the app's.
async fn connect(url: &str) -> Result<Db, Box<dyn std::error::Error>> {
    if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().connect_with(options).await?;
        arch_events_sqlx::migrate(&pool).await?;
        sqlx::migrate!("../example-app/migrations/sqlite")
            .run(&pool)
            .await?;
        let writer = Arc::default();
        return Ok(Db::Sqlite { pool, writer });
    }
    let options =
        PgConnectOptions::from_str(url)?.options([("idle_in_transaction_session_timeout", "10s")]);
    let pool = PgPoolOptions::new()
        .max_connections(PG_MAX_CONNECTIONS)
        .acquire_timeout(PG_ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await?;
    arch_events_sqlx::migrate(&pool).await?;
    sqlx::migrate!("../example-app/migrations/postgres")
        .run(&pool)
        .await?;
    Ok(Db::Postgres(pool))
}

// ---------------------------------------------------------------- HTTP ----

/// Why a request failed, and its answer (the app's status codes).
#[derive(Debug)]
enum Failure {
    /// 400, 415, 422...: the body, as axum or the validation refused it.
    Refused(StatusCode, String),
    InvalidSku(String),
    DuplicateBatch(String),
    /// Still losing the optimistic-concurrency race after every attempt.
    Conflict(String),
    Storage(String),
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        Failure::Storage(error.to_string())
    }
}

impl From<InvalidField> for Failure {
    fn from(error: InvalidField) -> Self {
        Failure::Refused(StatusCode::BAD_REQUEST, error.to_string())
    }
}

impl From<JsonRejection> for Failure {
    fn from(rejection: JsonRejection) -> Self {
        Failure::Refused(rejection.status(), rejection.body_text())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Failure::Refused(status, message) => (status, message),
            Failure::InvalidSku(sku) => (StatusCode::BAD_REQUEST, format!("Invalid sku {sku}")),
            Failure::DuplicateBatch(reference) => (
                StatusCode::CONFLICT,
                format!("Batch {reference} already exists"),
            ),
            Failure::Conflict(sku) => (
                StatusCode::CONFLICT,
                format!("product {sku} was changed concurrently; nothing was written, retry"),
            ),
            Failure::Storage(error) => {
                eprintln!("error: {error}");
                let message = "the service could not complete the command".to_owned();
                (StatusCode::SERVICE_UNAVAILABLE, message)
            }
        };
        (status, Json(json!({ "message": message }))).into_response()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocateBody {
    orderid: String,
    sku: String,
    qty: i64,
}

/// `{"orderid","sku","qty"}` → 202 `{"batchref": "<ref>" | null}`.
async fn allocate(
    State(app): State<App>,
    body: Result<Json<AllocateBody>, JsonRejection>,
) -> Result<Response, Failure> {
    let Json(body) = body?;
    let line = OrderLine {
        orderid: validation::identifier("orderid", body.orderid)?,
        sku: validation::identifier("sku", body.sku)?,
        qty: validation::quantity("qty", body.qty)?,
    };
    let batchref = detached(async move { app.allocate(line).await }).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "batchref": batchref }))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBatchBody {
    #[serde(rename = "ref")]
    reference: String,
    sku: String,
    qty: i64,
    eta: Option<String>,
}

/// `{"ref","sku","qty","eta"}` → 201 `{"ref"}`: for seeding (not measured).
async fn add_batch(
    State(app): State<App>,
    body: Result<Json<AddBatchBody>, JsonRejection>,
) -> Result<Response, Failure> {
    let Json(body) = body?;
    let reference = validation::identifier("ref", body.reference)?;
    let sku = validation::identifier("sku", body.sku)?;
    let qty = validation::quantity("qty", body.qty)?;
    let eta = validation::date("eta", body.eta)?;
    let batch = Batch::new(&reference, &sku, qty, eta);
    detached(async move { app.add_batch(batch).await }).await?;
    Ok((StatusCode::CREATED, Json(json!({ "ref": reference }))).into_response())
}

/// Runs a command on a task of its own: a client that hangs up does not
/// cut its transactions short (the app's `detached`).
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, Failure>> + Send + 'static,
) -> Result<T, Failure> {
    tokio::spawn(work)
        .await
        .map_err(|error| Failure::Storage(error.to_string()))?
}

// ----------------------------------------------------------- allocation ----

/// What one allocation wrote, for the view's transaction.
struct Change {
    event_id: String,
    batchref: String,
    version: i64,
}

/// The ids of a stored event: its own, its correlation and causation (the
/// command's id, as the bus assigns them to an event of a dispatched
/// command), and its JSON.
struct StagedEvent {
    id: String,
    correlation_id: String,
    causation_id: String,
    name: &'static str,
    payload: String,
}

impl StagedEvent {
    fn new(command_id: &str, name: &'static str, payload: String) -> Self {
        StagedEvent {
            id: uuid::Uuid::now_v7().to_string(),
            correlation_id: command_id.to_owned(),
            causation_id: command_id.to_owned(),
            name,
            payload,
        }
    }
}

/// How a write failed: a lost race is run again.
enum WriteError {
    Conflict,
    Failed(Failure),
}

impl From<sqlx::Error> for WriteError {
    fn from(error: sqlx::Error) -> Self {
        let lost = match &error {
            sqlx::Error::Database(db) => {
                let code = db.code();
                // SQLite busy/locked, PostgreSQL serialization failure or
                // deadlock, a unique key taken meanwhile (the app's
                // `write_error`).
                matches!(
                    code.as_deref(),
                    Some("5" | "6" | "261" | "262" | "517" | "40001" | "40P01")
                ) || db.is_unique_violation()
            }
            _ => false,
        };
        if lost {
            WriteError::Conflict
        } else {
            WriteError::Failed(error.into())
        }
    }
}

impl From<Failure> for WriteError {
    fn from(failure: Failure) -> Self {
        WriteError::Failed(failure)
    }
}

impl App {
    /// Allocates `line`, running again (with a fresh load) after a lost race.
    async fn allocate(&self, line: OrderLine) -> Result<Option<String>, Failure> {
        let mut delay = Duration::from_millis(5);
        for attempt in 1..=CONFLICT_ATTEMPTS {
            match self.try_allocate(&line).await {
                Err(WriteError::Conflict) if attempt < CONFLICT_ATTEMPTS => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
                Err(WriteError::Conflict) => return Err(Failure::Conflict(line.sku)),
                Err(WriteError::Failed(failure)) => return Err(failure),
                Ok(batchref) => return Ok(batchref),
            }
        }
        Err(Failure::Conflict(line.sku))
    }

    async fn try_allocate(&self, line: &OrderLine) -> Result<Option<String>, WriteError> {
        let command_id = uuid::Uuid::now_v7().to_string();
        // Held from the load to the write's commit.
        let held = self.locks.lock(&line.sku).await;
        let Some(mut product) = self.db.load(line).await? else {
            return Err(Failure::InvalidSku(line.sku.clone()).into());
        };
        let loaded = product.version_number;
        // The decision: the example app's domain model.
        let batchref = product.allocate(line.clone());
        match &batchref {
            // Allocated before: nothing to write.
            Some(_) if product.version_number == loaded => {}
            Some(reference) => {
                let version = to_i64(product.version_number);
                let event = StagedEvent::new(
                    &command_id,
                    "allocation.allocated",
                    to_json(&Allocated {
                        orderid: line.orderid.clone(),
                        sku: line.sku.clone(),
                        qty: line.qty,
                        batchref: reference.clone(),
                        version: product.version_number,
                    })?,
                );
                let Some(batch) = product.batch(reference) else {
                    return Err(Failure::Storage(format!("no batch {reference}")).into());
                };
                self.db
                    .write_allocation(&product, to_i64(loaded), batch, line, &event, &self.node)
                    .await?;
                drop(held);
                let change = Change {
                    event_id: event.id,
                    batchref: reference.clone(),
                    version,
                };
                // The app's event handler: when it fails, the app retries it
                // and keeps it as a dead letter; the answer is 202 all the
                // same.
                if let Err(error) = self.db.update_view(line, &change).await {
                    eprintln!("error: the view missed {}: {error}", line.orderid);
                }
            }
            None => {
                let event = StagedEvent::new(
                    &command_id,
                    "allocation.out_of_stock",
                    to_json(&OutOfStock {
                        sku: line.sku.clone(),
                    })?,
                );
                self.db.write_out_of_stock(&event, &self.node).await?;
                drop(held);
                // The app's handler sends a notification (a WARN log line);
                // then its delivery is recorded finished.
                if let Err(error) = self.db.delivered(&event.id).await {
                    eprintln!("error: the event {} stays stored: {error}", event.id);
                }
            }
        }
        Ok(batchref)
    }

    async fn add_batch(&self, batch: Batch) -> Result<(), Failure> {
        let sku = batch.sku.clone();
        let _held = self.locks.lock(&sku).await;
        match self.db.add_batch(&batch).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::DuplicateBatch(batch.reference)),
            Err(WriteError::Conflict) => Err(Failure::Conflict(sku)),
            Err(WriteError::Failed(failure)) => Err(failure),
        }
    }
}

fn to_json(event: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string(event).map_err(|error| Failure::Storage(error.to_string()))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A batch row and the allocation rows of the line, as a domain `Product`
/// (the app's `Tracked::loaded` for `Lines::Of(line)`).
fn restore(
    sku: &str,
    version: i64,
    lines: Vec<(String, OrderLine)>,
    batches: Vec<(String, i64, i64, Option<NaiveDate>)>,
) -> Result<Product, Failure> {
    let bad = |what: &str| Failure::Storage(format!("product {sku}: {what} out of range"));
    let mut lines_by_batch: HashMap<String, Vec<OrderLine>> = HashMap::new();
    for (batchref, line) in lines {
        lines_by_batch.entry(batchref).or_default().push(line);
    }
    let mut restored = Vec::with_capacity(batches.len());
    for (reference, purchased, allocated, eta) in batches {
        let loaded = lines_by_batch.remove(&reference).unwrap_or_default();
        let qty = u32::try_from(purchased).map_err(|_| bad("quantity"))?;
        let allocated = u64::try_from(allocated).map_err(|_| bad("allocation"))?;
        restored.push(Batch::restore_partly(
            reference,
            sku.to_owned(),
            qty,
            eta,
            allocated,
            loaded,
        ));
    }
    let version = u64::try_from(version).map_err(|_| bad("version"))?;
    Ok(Product::new(sku, restored, version))
}

fn line_row<R: Row>(row: &R, sku: &str) -> Result<(String, OrderLine), sqlx::Error>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
{
    let qty: i64 = row.try_get("qty")?;
    let line = OrderLine {
        orderid: row.try_get("orderid")?,
        sku: sku.to_owned(),
        qty: u32::try_from(qty).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    };
    Ok((row.try_get("batchref")?, line))
}

type BatchRow = (String, i64, i64, Option<NaiveDate>);

fn batch_row<R: Row>(row: &R) -> Result<BatchRow, sqlx::Error>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> NaiveDate: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
{
    Ok((
        row.try_get("reference")?,
        row.try_get("purchased_quantity")?,
        row.try_get("allocated_quantity")?,
        row.try_get("eta")?,
    ))
}

// ----------------------------------------------------------------- SQL ----
// Every statement below is the app's, with the same binds; each function
// is one transaction of the app's (or, for `delivered` on PostgreSQL, one
// statement on the pool).

impl Db {
    /// Transaction 1: the product, its batches, and where the line is.
    async fn load(&self, line: &OrderLine) -> Result<Option<Product>, Failure> {
        let sku = line.sku.as_str();
        let qty = i64::from(line.qty);
        match self {
            Db::Sqlite { pool, .. } => {
                let mut tx = pool.begin_with("BEGIN").await?;
                let Some(version) = sqlx::query_scalar::<_, i64>(
                    "SELECT version_number FROM products WHERE sku = ?",
                )
                .bind(sku)
                .fetch_optional(&mut *tx)
                .await?
                else {
                    return Ok(None);
                };
                let lines: Vec<SqliteRow> = sqlx::query(
                    "SELECT id, batchref, orderid, qty FROM allocations \
                     WHERE sku = ? AND orderid = ? AND qty = ? ORDER BY id",
                )
                .bind(sku)
                .bind(&line.orderid)
                .bind(qty)
                .fetch_all(&mut *tx)
                .await?;
                let batches: Vec<SqliteRow> = sqlx::query(
                    "SELECT reference, purchased_quantity, allocated_quantity, eta FROM batches \
                     WHERE sku = ? ORDER BY rowid",
                )
                .bind(sku)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                let lines = lines
                    .iter()
                    .map(|r| line_row(r, sku))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                let batches = batches
                    .iter()
                    .map(batch_row)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                restore(sku, version, lines, batches).map(Some)
            }
            Db::Postgres(pool) => {
                let mut tx = pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await?;
                let Some(version) = sqlx::query_scalar::<_, i64>(
                    "SELECT version_number FROM products WHERE sku = $1",
                )
                .bind(sku)
                .fetch_optional(&mut *tx)
                .await?
                else {
                    return Ok(None);
                };
                let lines: Vec<PgRow> = sqlx::query(
                    "SELECT id, batchref, orderid, qty FROM allocations \
                     WHERE sku = $1 AND orderid = $2 AND qty = $3 ORDER BY id",
                )
                .bind(sku)
                .bind(&line.orderid)
                .bind(qty)
                .fetch_all(&mut *tx)
                .await?;
                let batches: Vec<PgRow> = sqlx::query(
                    "SELECT reference, purchased_quantity, allocated_quantity, eta FROM batches \
                     WHERE sku = $1 ORDER BY position",
                )
                .bind(sku)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                let lines = lines
                    .iter()
                    .map(|r| line_row(r, sku))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                let batches = batches
                    .iter()
                    .map(batch_row)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                restore(sku, version, lines, batches).map(Some)
            }
        }
    }

    /// Transaction 2: the version-checked write of the allocation, with the
    /// `Allocated` event's `bus_events` and `bus_outbox` rows.
    async fn write_allocation(
        &self,
        product: &Product,
        loaded: i64,
        batch: &Batch,
        line: &OrderLine,
        event: &StagedEvent,
        node: &str,
    ) -> Result<(), WriteError> {
        let sku = product.sku.as_str();
        let version = to_i64(product.version_number);
        let purchased = i64::from(batch.purchased_quantity());
        let allocated = to_i64(batch.allocated_quantity());
        let qty = i64::from(line.qty);
        match self {
            Db::Sqlite { pool, writer } => {
                let _turn = writer.lock().await;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let updated = sqlx::query(
                    "UPDATE products SET version_number = ? WHERE sku = ? AND version_number = ?",
                )
                .bind(version)
                .bind(sku)
                .bind(loaded)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() != 1 {
                    return Err(WriteError::Conflict);
                }
                let written = sqlx::query(
                    "UPDATE batches SET purchased_quantity = ?, allocated_quantity = ?, \
                     eta = ? WHERE reference = ? AND sku = ?",
                )
                .bind(purchased)
                .bind(allocated)
                .bind(batch.eta)
                .bind(&batch.reference)
                .bind(sku)
                .execute(&mut *tx)
                .await?;
                if written.rows_affected() != 1 {
                    return Err(WriteError::Conflict);
                }
                sqlx::query(
                    "INSERT INTO allocations (batchref, orderid, sku, qty) VALUES (?, ?, ?, ?)",
                )
                .bind(&batch.reference)
                .bind(&line.orderid)
                .bind(sku)
                .bind(qty)
                .execute(&mut *tx)
                .await?;
                let now = Utc::now();
                sqlite_insert_event(&mut tx, event, now, node).await?;
                sqlx::query(
                    "INSERT INTO bus_outbox \
                     (id, stream, name, payload, correlation_id, causation_id, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&event.id)
                .bind("line_allocated")
                .bind("line_allocated")
                .bind(&event.payload)
                .bind(&event.correlation_id)
                .bind(&event.causation_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin_with("BEGIN").await?;
                let updated = sqlx::query(
                    "UPDATE products SET version_number = $1 WHERE sku = $2 AND version_number = $3",
                )
                .bind(version)
                .bind(sku)
                .bind(loaded)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() != 1 {
                    return Err(WriteError::Conflict);
                }
                let written = sqlx::query(
                    "UPDATE batches SET purchased_quantity = $1, allocated_quantity = $2, \
                     eta = $3 WHERE reference = $4 AND sku = $5",
                )
                .bind(purchased)
                .bind(allocated)
                .bind(batch.eta)
                .bind(&batch.reference)
                .bind(sku)
                .execute(&mut *tx)
                .await?;
                if written.rows_affected() != 1 {
                    return Err(WriteError::Conflict);
                }
                sqlx::query(
                    "INSERT INTO allocations (batchref, orderid, sku, qty) VALUES ($1, $2, $3, $4)",
                )
                .bind(&batch.reference)
                .bind(&line.orderid)
                .bind(sku)
                .bind(qty)
                .execute(&mut *tx)
                .await?;
                postgres_insert_staged(&mut tx, event, node, Some("line_allocated")).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Transaction 3: the read model, and the record that settles the
    /// event (its one handler handled it: its row goes).
    async fn update_view(&self, line: &OrderLine, change: &Change) -> Result<(), sqlx::Error> {
        let qty = i64::from(line.qty);
        match self {
            Db::Sqlite { pool, writer } => {
                let _turn = writer.lock().await;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query(
                    "INSERT INTO allocations_view (orderid, sku, qty, batchref, version) \
                     VALUES (?, ?, ?, ?, ?) ON CONFLICT (orderid, sku, qty) DO UPDATE \
                     SET batchref = excluded.batchref, version = excluded.version \
                     WHERE excluded.version > allocations_view.version",
                )
                .bind(&line.orderid)
                .bind(&line.sku)
                .bind(qty)
                .bind(&change.batchref)
                .bind(change.version)
                .execute(&mut *tx)
                .await?;
                let settled = sqlx::query(
                    "DELETE FROM bus_events WHERE id = ? AND NOT EXISTS \
                     (SELECT 1 FROM bus_handled WHERE event_id = ? AND handler = ?)",
                )
                .bind(&change.event_id)
                .bind(&change.event_id)
                .bind(VIEW_HANDLER)
                .execute(&mut *tx)
                .await?;
                if settled.rows_affected() == 0 {
                    // Handled already (never here: no redelivery): the app
                    // writes nothing then.
                    return tx.rollback().await;
                }
                sqlx::query("DELETE FROM bus_handled WHERE event_id = ?")
                    .bind(&change.event_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin_with("BEGIN").await?;
                sqlx::query(
                    "INSERT INTO allocations_view (orderid, sku, qty, batchref, version) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (orderid, sku, qty) DO UPDATE \
                     SET batchref = excluded.batchref, version = excluded.version \
                     WHERE excluded.version > allocations_view.version",
                )
                .bind(&line.orderid)
                .bind(&line.sku)
                .bind(qty)
                .bind(&change.batchref)
                .bind(change.version)
                .execute(&mut *tx)
                .await?;
                let recorded: i64 = sqlx::query_scalar(
                    "WITH pending AS (SELECT id FROM bus_events WHERE id = $1::uuid FOR UPDATE), \
                     recorded AS ( \
                         INSERT INTO bus_handled (event_id, handler) SELECT id, $2 FROM pending \
                         ON CONFLICT DO NOTHING RETURNING 1) \
                     SELECT count(*) FROM recorded",
                )
                .bind(&change.event_id)
                .bind(VIEW_HANDLER)
                .fetch_one(&mut *tx)
                .await?;
                if recorded != 1 {
                    return tx.rollback().await;
                }
                // Its bus_handled row goes with it (ON DELETE CASCADE).
                sqlx::query("DELETE FROM bus_events WHERE id = $1::uuid")
                    .bind(&change.event_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }
        }
    }

    /// Out of stock, transaction 2: nothing changed but the `OutOfStock`
    /// event, stored (not external: no outbox row).
    async fn write_out_of_stock(&self, event: &StagedEvent, node: &str) -> Result<(), WriteError> {
        match self {
            Db::Sqlite { pool, writer } => {
                let _turn = writer.lock().await;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                sqlite_insert_event(&mut tx, event, Utc::now(), node).await?;
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin_with("BEGIN").await?;
                postgres_insert_staged(&mut tx, event, node, None).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Out of stock, after its handler: the event's delivery is finished
    /// (the store's `delivered`).
    async fn delivered(&self, event_id: &str) -> Result<(), sqlx::Error> {
        match self {
            Db::Sqlite { pool, writer } => {
                let _turn = writer.lock().await;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                for statement in [
                    "DELETE FROM bus_handled WHERE event_id = ?",
                    "DELETE FROM bus_events WHERE id = ?",
                ] {
                    sqlx::query(statement)
                        .bind(event_id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }
            Db::Postgres(pool) => sqlx::query("DELETE FROM bus_events WHERE id = $1::uuid")
                .bind(event_id)
                .execute(pool)
                .await
                .map(drop),
        }
    }

    /// Adds a batch (creating its product at version 0, as the app does);
    /// `false` when the reference is taken. Seeding only: not the app's
    /// statements (it reads before it writes), and not measured.
    async fn add_batch(&self, batch: &Batch) -> Result<bool, WriteError> {
        let qty = i64::from(batch.purchased_quantity());
        match self {
            Db::Sqlite { pool, writer } => {
                let _turn = writer.lock().await;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let taken = sqlx::query("SELECT 1 FROM batches WHERE reference = ?")
                    .bind(&batch.reference)
                    .fetch_optional(&mut *tx)
                    .await?;
                if taken.is_some() {
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO products (sku, version_number) VALUES (?, 0) \
                     ON CONFLICT (sku) DO UPDATE SET version_number = products.version_number + 1",
                )
                .bind(&batch.sku)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO batches (reference, sku, purchased_quantity, allocated_quantity, eta) \
                     VALUES (?, ?, ?, 0, ?)",
                )
                .bind(&batch.reference)
                .bind(&batch.sku)
                .bind(qty)
                .bind(batch.eta)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin_with("BEGIN").await?;
                let taken = sqlx::query("SELECT 1 FROM batches WHERE reference = $1")
                    .bind(&batch.reference)
                    .fetch_optional(&mut *tx)
                    .await?;
                if taken.is_some() {
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO products (sku, version_number) VALUES ($1, 0) \
                     ON CONFLICT (sku) DO UPDATE SET version_number = products.version_number + 1",
                )
                .bind(&batch.sku)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO batches (reference, sku, purchased_quantity, allocated_quantity, eta) \
                     VALUES ($1, $2, $3, 0, $4)",
                )
                .bind(&batch.reference)
                .bind(&batch.sku)
                .bind(qty)
                .bind(batch.eta)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        }
        Ok(true)
    }
}

/// SQLite: an event's `bus_events` row (arch-events-sqlx's `insert_staged`,
/// one row).
async fn sqlite_insert_event(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    event: &StagedEvent,
    now: chrono::DateTime<Utc>,
    node: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO bus_events \
         (id, name, payload, correlation_id, causation_id, recorded_at, owner) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&event.id)
    .bind(event.name)
    .bind(&event.payload)
    .bind(&event.correlation_id)
    .bind(&event.causation_id)
    .bind(now)
    .bind(node)
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// PostgreSQL: an event's `bus_events` row and, when it is external (its
/// stream), its `bus_outbox` row, in arch-events-sqlx's one statement
/// (`insert_staged`; ids are uuid columns).
async fn postgres_insert_staged(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    event: &StagedEvent,
    node: &str,
    stream: Option<&str>,
) -> Result<(), sqlx::Error> {
    let outbound = usize::from(stream.is_some());
    let repeat = |value: &str| vec![value.to_owned(); outbound];
    let stream = stream.unwrap_or_default();
    sqlx::query(
        "WITH events AS ( \
             INSERT INTO bus_events (id, name, payload, correlation_id, causation_id, owner) \
             SELECT id, name, payload, correlation_id, causation_id, $6::uuid \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::uuid[]) \
                 WITH ORDINALITY AS e (id, name, payload, correlation_id, causation_id, n) \
             ORDER BY n) \
         INSERT INTO bus_outbox (id, stream, name, payload, correlation_id, causation_id) \
         SELECT id, stream, name, payload, correlation_id, causation_id \
         FROM UNNEST($7::uuid[], $8::text[], $9::text[], $10::text[], $11::uuid[], \
                     $12::uuid[]) \
             WITH ORDINALITY AS m (id, stream, name, payload, correlation_id, causation_id, n) \
         ORDER BY n",
    )
    .bind(vec![event.id.clone()])
    .bind(vec![event.name.to_owned()])
    .bind(vec![event.payload.clone()])
    .bind(vec![event.correlation_id.clone()])
    .bind(vec![Some(event.causation_id.clone())])
    .bind(node)
    .bind(repeat(&event.id))
    .bind(repeat(stream))
    .bind(repeat(stream))
    .bind(repeat(&event.payload))
    .bind(repeat(&event.correlation_id))
    .bind(vec![Some(event.causation_id.clone()); outbound])
    .execute(&mut **tx)
    .await
    .map(drop)
}

// --------------------------------------------------------- product locks ----

/// One unit of work per product at a time within the process, as the app's
/// `ProductLocks`: a busy product queues instead of losing races.
#[derive(Clone, Default)]
struct ProductLocks {
    held: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// A product held; dropping it lets the next one in.
struct Held {
    locks: ProductLocks,
    sku: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl ProductLocks {
    async fn lock(&self, sku: &str) -> Held {
        let mutex = {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            held.entry(sku.to_owned()).or_default().clone()
        };
        Held {
            guard: Some(mutex.lock_owned().await),
            locks: self.clone(),
            sku: sku.to_owned(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self
            .locks
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        drop(self.guard.take());
        // Forget the product when nobody else holds or waits for it.
        if held
            .get(&self.sku)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            held.remove(&self.sku);
        }
    }
}
