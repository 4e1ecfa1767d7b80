//! The operations routes' guard: `Authorization: Bearer <token>`, checked
//! in constant time.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;

/// The token of the operations routes. Only its SHA-256 digest is kept, and
/// a presented token is compared digest to digest, in constant time: the
/// time an answer takes tells nothing about the token, not even its length.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

/// A token refused at start (the message never shows the token).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BadAdminToken {
    /// Too short to resist guessing.
    #[error(
        "the admin token (--admin-token / ADMIN_TOKEN) must be at least {min} characters long, not {0}",
        min = AdminToken::MIN_LENGTH
    )]
    TooShort(usize),
    /// With characters other than visible ASCII: a space, a control
    /// character, or one that a header cannot carry as it is.
    #[error(
        "the admin token (--admin-token / ADMIN_TOKEN) must be visible ASCII characters only (no spaces)"
    )]
    NotVisible,
}

impl AdminToken {
    /// The shortest token taken.
    pub const MIN_LENGTH: usize = 16;

    /// The token `token`: at least [`MIN_LENGTH`](Self::MIN_LENGTH)
    /// visible ASCII characters.
    pub fn new(token: &str) -> Result<Self, BadAdminToken> {
        let length = token.chars().count();
        if length < Self::MIN_LENGTH {
            return Err(BadAdminToken::TooShort(length));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(BadAdminToken::NotVisible);
        }
        Ok(AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    fn accepts(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        presented.ct_eq(&self.digest).into()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Lets through only the requests that carry the token; the others get a
/// JSON 401 with `WWW-Authenticate: Bearer`.
pub(super) async fn require_token(
    State(token): State<Arc<AdminToken>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer);
    let message = match presented {
        Some(presented) if token.accepts(presented) => return next.run(request).await,
        Some(_) => "wrong admin token",
        None => "this route needs the admin token: Authorization: Bearer <token>",
    };
    let mut answer = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    answer
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    answer
}

/// The token of an `Authorization: Bearer <token>` value (the scheme's case
/// does not matter).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}
