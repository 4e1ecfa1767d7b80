//! What every request and every error answer goes through: the limits on a
//! request's head, and JSON for every error, whoever produced it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::ApiError;

/// The longest URI (path and query) the API takes: a longer one is a 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The most bytes of headers (names, values and their separators) the API
/// takes: more is a 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The most headers the API takes: more is a 431.
pub const MAX_HEADERS: usize = 100;

/// Answers a request whose URI or headers are over the limits with a JSON
/// 414 or 431, before any route sees it.
pub(super) async fn head_within_limits(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let uri_bytes = uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri_bytes > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("the URI is {uri_bytes} bytes long; the limit is {MAX_URI_BYTES}"),
        )
        .into_response();
    }
    let headers = request.headers();
    if headers.len() > MAX_HEADERS {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request has {} headers; the limit is {MAX_HEADERS}",
                headers.len()
            ),
        )
        .into_response();
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the headers are {header_bytes} bytes; the limit is {MAX_HEADER_BYTES}"),
        )
        .into_response();
    }
    next.run(request).await
}

/// Answers with `Connection: close` a request whose body was not read to
/// its end (refused before it was: a 413, a wrong content type, an unknown
/// route...). The server closes such a connection after the answer, since
/// the rest of the body is still on it; saying so lets a client that keeps
/// its connections open a new one instead of sending its next request into
/// a closed one.
pub(super) async fn close_if_body_unread(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    if !has_body {
        return next.run(request).await;
    }
    let read_to_end = Arc::new(AtomicBool::new(false));
    let seen = read_to_end.clone();
    let (parts, body) = request.into_parts();
    let body = body
        .into_data_stream()
        .chain(futures::stream::poll_fn(move |_| {
            seen.store(true, Ordering::Release);
            Poll::Ready(None)
        }));
    let mut response = next
        .run(Request::from_parts(parts, Body::from_stream(body)))
        .await;
    if !read_to_end.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Turns an error answer that is not JSON (an extractor's plain-text
/// rejection, a timeout's empty 408) into the API's JSON `{"message"}`,
/// keeping its status and headers; a 5xx becomes a generic message and an
/// error id, like every 5xx of the API.
pub(super) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_error = status.is_client_error() || status.is_server_error();
    if !is_error || is_json(response.headers()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = to_bytes(body, 16 * 1024)
        .await
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    let message = text.unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    });
    let (json, body) = ApiError::new(status, message).into_response().into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.remove(CONTENT_TYPE);
    parts.headers.extend(json.headers);
    Response::from_parts(parts, body)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"))
}
