//! Authentication and admission.
//!
//! [`strip_credentials`] runs first on every request: it removes the
//! `Authorization` header and keeps the bearer token in a request
//! extension whose `Debug` is redacted, so no later layer, log line or
//! error can print it. [`admit`] then finds the token's agreement (by
//! SHA-256, compared in constant time with every known hash, see
//! [`crate::agreement::Policy::authenticate`]), checks the agreement's
//! validity dates against today's date in WIB, and takes one request from
//! its rate limit.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::audit::AuditToken;
use super::problem::ApiError;
use crate::agreement::Pks;

/// The bearer credential of a request, taken off its headers.
#[derive(Clone)]
pub enum Credentials {
    /// No `Authorization` header: refused with 401 `token_missing`.
    None,
    /// One `Authorization` header that is not `Bearer <token>`: refused with
    /// 401 `token_malformed`.
    Malformed,
    /// More than one `Authorization` header: refused (400) rather than
    /// guessed at, since a proxy in front may have checked another one.
    Ambiguous,
    /// The presented bearer token, to be hashed and compared with the
    /// policy's token hashes; redacted in `Debug`.
    Bearer(Arc<str>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("Credentials::None"),
            Credentials::Malformed => f.write_str("Credentials::Malformed"),
            Credentials::Ambiguous => f.write_str("Credentials::Ambiguous"),
            Credentials::Bearer(_) => f.write_str("Credentials::Bearer(<redacted>)"),
        }
    }
}

/// Middleware: moves the `Authorization` header into [`Credentials`] and
/// records the client address.
pub async fn strip_credentials(mut req: Request, next: Next) -> Response {
    let creds = match req.headers_mut().entry(header::AUTHORIZATION) {
        header::Entry::Vacant(_) => Credentials::None,
        header::Entry::Occupied(e) => {
            let (_, mut values) = e.remove_entry_mult();
            match (values.next(), values.next()) {
                (Some(v), None) => match v.to_str().ok().and_then(bearer_token) {
                    Some(t) => Credentials::Bearer(Arc::from(t)),
                    None => Credentials::Malformed,
                },
                _ => Credentials::Ambiguous,
            }
        }
    };
    let addr = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    req.extensions_mut().insert(creds);
    req.extensions_mut().insert(super::ClientAddr(addr));
    next.run(req).await
}

/// The token of `Bearer <token>` (scheme case-insensitive); `None` for any
/// other scheme, an empty token, or one holding spaces or commas (two
/// credentials folded into one header).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && !token.contains(|c: char| c.is_whitespace() || c == ','))
    .then_some(token)
}

/// An authenticated caller.
pub struct Caller {
    /// The agreement the token was issued for, as the policy in force holds
    /// it.
    pub pks: Arc<Pks>,
    /// The id of the presented token in the agreement file (never the
    /// token), for the audit log.
    pub token_id: String,
}

/// Authenticates and admits a request; records the agreement and token id
/// in the audit draft as soon as they are known.
pub fn admit(
    state: &AppState,
    creds: &Credentials,
    audit: &mut AuditToken,
) -> Result<Caller, ApiError> {
    let token = match creds {
        Credentials::None => return Err(ApiError::TokenMissing),
        Credentials::Malformed => return Err(ApiError::TokenMalformed),
        Credentials::Ambiguous => return Err(ApiError::AmbiguousCredentials),
        Credentials::Bearer(t) => t,
    };
    let policy = state.policy();
    let (pks, token_id) = policy.authenticate(token).ok_or(ApiError::TokenUnknown)?;
    audit.admitted(pks.id(), &token_id);
    pks.check_valid_on(state.clock.today())?;
    state
        .limiter
        .check(pks.id(), pks.requests_per_minute, Instant::now())
        .map_err(|retry_after| ApiError::RateLimited {
            agreement: pks.id().to_string(),
            per_minute: pks.requests_per_minute,
            retry_after,
        })?;
    Ok(Caller { pks, token_id })
}
