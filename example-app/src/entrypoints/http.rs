//! The HTTP API (axum): thin handlers that turn requests into commands and
//! queries, and domain errors into status codes.
//!
//! Every error answer is JSON `{"message"}`. A 4xx's message names the
//! problem; a 5xx's says only what could not be done, with an `error_id`
//! that the log's line about the error carries too (a database's own error
//! text never reaches a client). The limits and timeouts that keep slow or
//! hostile clients from holding the server are in [`Settings`] and
//! [`serve`]; the operations routes (`/dead_letters`) exist only with an
//! [`AdminToken`].

mod admin;
mod limits;
mod server;

pub use admin::{AdminToken, BadAdminToken};
pub use limits::{MAX_HEADERS, MAX_HEADER_BYTES, MAX_URI_BYTES};
pub use server::{serve, Settings, HYPER_MAX_HEADERS, HYPER_MAX_HEAD_BYTES};

use std::future::Future;
use std::sync::Arc;

use arch_events::saga::SagaError;
use arch_events::{Bus, DispatchError};
use arch_events_sqlx::{DeadLetterError, DeadLetterStore};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{middleware, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tower_http::timeout::TimeoutLayer;

use crate::domain::commands::{Allocate, ChangeBatchQuantity, ConfirmShipment, CreateBatch};
use crate::domain::validation::{self, InvalidField};
use crate::service_layer::shipment::ShippedTooLate;
use crate::service_layer::unit_of_work::UowError;
use crate::service_layer::ServiceError;
use crate::views::{Allocations, ViewError};

/// What every route works with: the bus, and the dead letters to list and
/// replay.
#[derive(Clone)]
pub struct AppState {
    /// The built bus.
    pub bus: Bus,
    /// The store the bus's dead letters go to.
    pub dead_letters: Arc<dyn DeadLetterStore>,
    /// Room for commands in progress: a command runs to its end even when
    /// its client hangs up or times out, so without a bound, clients that
    /// send and drop requests could pile up work without end. When it is
    /// full, a command is answered 503 with `Retry-After`.
    pub commands: Arc<Semaphore>,
}

impl AppState {
    /// The state of the routes, with room for `max_commands` commands in
    /// progress at once.
    pub fn new(bus: Bus, dead_letters: Arc<dyn DeadLetterStore>, max_commands: usize) -> Self {
        AppState {
            bus,
            dead_letters,
            commands: Arc::new(Semaphore::new(max_commands)),
        }
    }
}

/// The routes, and what every request goes through: the limits on its
/// head ([`MAX_URI_BYTES`], [`MAX_HEADER_BYTES`], [`MAX_HEADERS`]) and
/// body, the request timeout, JSON for every error answer. The operations
/// routes exist only when `settings` has an admin token, and need it.
///
/// A command that loses an optimistic-concurrency race is retried by the bus
/// (see [`bootstrap`](crate::bootstrap())); one that keeps losing is a 409.
pub fn router(state: AppState, settings: &Settings) -> Router {
    let mut routes = Router::new()
        .route("/add_batch", post(add_batch))
        .route("/allocate", post(allocate))
        .route("/allocations/{orderid}", get(allocations))
        .route("/change_batch_quantity", post(change_batch_quantity))
        .route("/orders/{orderid}/shipped", post(shipped));
    if let Some(token) = &settings.admin_token {
        let operations = Router::new()
            .route("/dead_letters", get(list_dead_letters))
            .route("/dead_letters/{id}/replay", post(replay_dead_letter))
            .route("/dead_letters/{id}", delete(delete_dead_letter))
            .route_layer(middleware::from_fn_with_state(
                Arc::new(token.clone()),
                admin::require_token,
            ));
        routes = routes.merge(operations);
    }
    routes
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            settings.request_timeout,
        ))
        .layer(middleware::from_fn(limits::head_within_limits))
        .layer(middleware::map_response(limits::json_errors))
        .layer(middleware::from_fn(limits::close_if_body_unread))
        .with_state(state)
}

/// An error answer: a status and a JSON `{"message"}`; for a 5xx, a
/// generic message and an `error_id`, the error itself going to the log.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// For a 4xx, what the client is told; for a 5xx, what the log is told.
    message: String,
    /// For a 5xx, what could not be done ("command", "query"...).
    failed: &'static str,
    /// Whether the client is told to retry after a second (the service is
    /// busy, not failing): the message is then the client's.
    retry_after: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            failed: "request",
            retry_after: false,
        }
    }

    /// A 5xx about `error`, which only the log sees.
    fn server(status: StatusCode, failed: &'static str, error: impl std::fmt::Display) -> Self {
        ApiError {
            status,
            message: error.to_string(),
            failed,
            retry_after: false,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// Too many commands in progress: try again shortly.
    fn busy() -> Self {
        ApiError {
            retry_after: true,
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many commands in progress; retry in a second",
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.retry_after {
            let retry = [(axum::http::header::RETRY_AFTER, "1")];
            return (self.status, retry, Json(json!({ "message": self.message }))).into_response();
        }
        if !self.status.is_server_error() {
            let message = shortened(&self.message);
            return (self.status, Json(json!({ "message": message }))).into_response();
        }
        let error_id = uuid::Uuid::new_v4();
        tracing::error!(
            %error_id,
            status = self.status.as_u16(),
            failed = self.failed,
            error = %self.message,
            "the service could not complete a {}", self.failed
        );
        let message = format!("the service could not complete the {}", self.failed);
        let body = json!({ "message": message, "error_id": error_id.to_string() });
        (self.status, Json(body)).into_response()
    }
}

/// The longest message a 4xx carries, in bytes: a message may quote what
/// the client sent (a path, a field's value), and never echoes more.
pub const MAX_MESSAGE_BYTES: usize = 300;

/// `message`, cut to [`MAX_MESSAGE_BYTES`] on a character boundary, saying
/// how long it was.
fn shortened(message: &str) -> String {
    let kept = arch_events::transport::truncated(message, MAX_MESSAGE_BYTES);
    if kept.len() == message.len() {
        return message.to_owned();
    }
    format!("{kept}... (cut from {} bytes)", message.len())
}

impl From<DispatchError<ServiceError>> for ApiError {
    fn from(error: DispatchError<ServiceError>) -> Self {
        let status = match &error {
            DispatchError::Handler(ServiceError::InvalidSku(_) | ServiceError::UnknownBatch(_)) => {
                StatusCode::BAD_REQUEST
            }
            DispatchError::Handler(ServiceError::DuplicateBatch(_)) => StatusCode::CONFLICT,
            DispatchError::Handler(ServiceError::Uow(
                UowError::Conflict { .. } | UowError::AlreadyHandled { .. },
            )) => StatusCode::CONFLICT,
            DispatchError::Handler(ServiceError::Uow(UowError::Storage(_))) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // Shutting down: another instance, or this one restarted, can serve it.
            DispatchError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            return ApiError::server(status, "command", error);
        }
        ApiError::new(status, error.to_string())
    }
}

impl From<DispatchError<ViewError>> for ApiError {
    fn from(error: DispatchError<ViewError>) -> Self {
        let status = match error {
            DispatchError::Handler(_) | DispatchError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::server(status, "query", error)
    }
}

/// Runs a command on a task of its own, in one of the `commands` slots: a
/// client that hangs up cancels nothing half-way (a command runs to its end,
/// events included, and its transactions are never cut short), and holds
/// its slot until then. No slot free: a 503 with `Retry-After`.
async fn detached<T: Send + 'static>(
    commands: &Arc<Semaphore>,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, ApiError> {
    let Ok(slot) = Arc::clone(commands).try_acquire_owned() else {
        return Err(ApiError::busy());
    };
    tokio::spawn(async move {
        let done = work.await;
        drop(slot);
        done
    })
    .await
    .map_err(|error| ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, "request", error))
}

/// A JSON body whose every rejection (not JSON, wrong content type, a
/// missing, unknown or mistyped field) is an [`ApiError`] naming the problem:
/// axum's `Json`, with its rejection turned into ours.
#[derive(FromRequest)]
#[from_request(via(Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::new(rejection.status(), rejection.body_text())
    }
}

impl From<InvalidField> for ApiError {
    fn from(error: InvalidField) -> Self {
        ApiError::bad_request(error.to_string())
    }
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

async fn add_batch(
    State(AppState { bus, commands, .. }): State<AppState>,
    ApiJson(body): ApiJson<AddBatchBody>,
) -> Result<Response, ApiError> {
    let command = CreateBatch::new(body.reference, body.sku, body.qty, body.eta)?;
    let reference = command.reference.clone();
    detached(&commands, async move { bus.dispatch(command).await }).await??;
    Ok((StatusCode::CREATED, Json(json!({ "ref": reference }))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocateBody {
    orderid: String,
    sku: String,
    qty: i64,
}

async fn allocate(
    State(AppState { bus, commands, .. }): State<AppState>,
    ApiJson(body): ApiJson<AllocateBody>,
) -> Result<Response, ApiError> {
    let command = Allocate::new(body.orderid, body.sku, body.qty)?;
    let batchref = detached(&commands, async move { bus.dispatch(command).await }).await??;
    Ok((StatusCode::ACCEPTED, Json(json!({ "batchref": batchref }))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeBatchQuantityBody {
    #[serde(rename = "ref")]
    reference: String,
    qty: i64,
}

async fn change_batch_quantity(
    State(AppState { bus, commands, .. }): State<AppState>,
    ApiJson(body): ApiJson<ChangeBatchQuantityBody>,
) -> Result<Response, ApiError> {
    let command = ChangeBatchQuantity::new("ref", body.reference, body.qty)?;
    let answer = json!({ "ref": command.reference, "qty": command.qty });
    detached(&commands, async move { bus.dispatch(command).await }).await??;
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// Confirms an order's shipment: its allocations stay. 200 once confirmed
/// (again: a repeated confirmation changes nothing), 409 for an order whose
/// lines were released for being late, 404 for an order never allocated.
async fn shipped(
    State(AppState { bus, commands, .. }): State<AppState>,
    Path(orderid): Path<String>,
) -> Result<Response, ApiError> {
    let command = ConfirmShipment::new(orderid)?;
    let answer = json!({ "orderid": command.orderid, "shipped": true });
    detached(&commands, async move { bus.dispatch(command).await }).await??;
    Ok((StatusCode::OK, Json(answer)).into_response())
}

impl From<DispatchError<SagaError>> for ApiError {
    fn from(error: DispatchError<SagaError>) -> Self {
        let too_late = matches!(
            &error,
            DispatchError::Handler(SagaError::Handler { error, .. }) if error.is::<ShippedTooLate>()
        );
        let status = match &error {
            _ if too_late => StatusCode::CONFLICT,
            DispatchError::Handler(SagaError::NotFound { .. }) => StatusCode::NOT_FOUND,
            DispatchError::Handler(SagaError::Store(_) | SagaError::Contended { .. })
            | DispatchError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            return ApiError::server(status, "command", error);
        }
        let message = match &error {
            DispatchError::Handler(SagaError::NotFound { id, .. }) => {
                format!("no allocation of order {id} waits for its shipment")
            }
            DispatchError::Handler(SagaError::Handler { error, .. }) if too_late => {
                error.to_string()
            }
            other => other.to_string(),
        };
        ApiError::new(status, message)
    }
}

async fn allocations(
    State(AppState { bus, .. }): State<AppState>,
    Path(orderid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let orderid = validation::identifier("orderid", orderid)?;
    let rows = bus
        .query(Allocations {
            orderid: orderid.clone(),
        })
        .await?;
    if rows.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no allocations for order {orderid}"),
        ));
    }
    Ok(Json(json!(rows)))
}

impl From<DeadLetterError> for ApiError {
    fn from(error: DeadLetterError) -> Self {
        let status = match &error {
            DeadLetterError::NotFound(_) => StatusCode::NOT_FOUND,
            DeadLetterError::AlreadyReplayed(_)
            | DeadLetterError::BeingReplayed(_)
            | DeadLetterError::StillFailing { .. } => StatusCode::CONFLICT,
            DeadLetterError::NotReplayable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status.is_server_error() {
            return ApiError::server(status, "dead-letter operation", error);
        }
        ApiError::new(status, error.to_string())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListDeadLetters {
    /// Lists the replayed letters too.
    #[serde(default)]
    all: bool,
}

async fn list_dead_letters(
    State(AppState { dead_letters, .. }): State<AppState>,
    query: Result<Query<ListDeadLetters>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let letters = dead_letters.list(query.all).await?;
    Ok(Json(json!(letters)))
}

fn dead_letter_id(id: &str) -> Result<i64, ApiError> {
    let digits = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
    match id.parse() {
        Ok(number) if digits => Ok(number),
        _ => Err(ApiError::bad_request(format!(
            "dead letter id must be a whole number, got {id:?}"
        ))),
    }
}

/// Replays a letter on a task of its own: a client that hangs up does not
/// cut the replay short.
async fn replay_dead_letter(
    State(AppState {
        bus, dead_letters, ..
    }): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = dead_letter_id(&id)?;
    let replay =
        tokio::spawn(async move { arch_events_sqlx::replay(&bus, &*dead_letters, id).await });
    let letter = replay.await.map_err(|error| {
        ApiError::server(
            StatusCode::INTERNAL_SERVER_ERROR,
            "replay",
            format_args!("dead letter {id}: {error}"),
        )
    })??;
    Ok(Json(json!(letter)))
}

/// Deletes a letter given up on (its event is not handled by that handler).
async fn delete_dead_letter(
    State(AppState { dead_letters, .. }): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    dead_letters.delete(dead_letter_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn no_such_route(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such route: {}", request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}
