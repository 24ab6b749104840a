//! Errors of the HTTP API and their wire form: RFC 9457 problem details
//! (`application/problem+json`) with the stable code of the gate or the
//! service.
//!
//! Every variant says which party is at fault through its status: 4xx for
//! the caller (with a message that names the offending value and the fix),
//! 5xx only for failures of the service itself. A 5xx never echoes the
//! underlying error to the caller; the detail goes to the operator's log
//! under the request id, which the problem carries as `instance`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ErrorCategory;
use crate::query::{Code, QueryError, RunError};
use crate::saved::SavedError;
use crate::state::StateError;

/// Media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Why a request was not answered.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `Authorization` header (401 `token_missing`).
    #[error(
        "no bearer token; send 'Authorization: Bearer <token>' with the token issued for your agreement"
    )]
    TokenMissing,
    /// An `Authorization` header that is not `Bearer <token>` (401
    /// `token_malformed`).
    #[error(
        "the Authorization header is not 'Bearer <token>'; send 'Authorization: Bearer <token>'"
    )]
    TokenMalformed,
    /// More than one `Authorization` header (400 `ambiguous_credentials`).
    #[error(
        "the request has more than one Authorization header; send exactly one 'Authorization: Bearer <token>'"
    )]
    AmbiguousCredentials,
    /// A bearer token whose hash matches no agreement of the policy (401
    /// `token_unknown`).
    #[error(
        "the token is not valid for any agreement (unknown, revoked or mistyped); ask Disdukcapil for a new token"
    )]
    TokenUnknown,
    /// The agreement's validity ended (403 `agreement_expired`).
    #[error(
        "agreement '{agreement}' expired on {valid_until}; no data can be released under it until the PKS is renewed"
    )]
    AgreementExpired {
        /// The agreement id.
        agreement: String,
        /// Its last valid date.
        valid_until: String,
    },
    /// The agreement's validity has not begun (403
    /// `agreement_not_yet_valid`).
    #[error("agreement '{agreement}' is valid only from {valid_from}; try again from that date")]
    AgreementNotYetValid {
        /// The agreement id.
        agreement: String,
        /// Its first valid date.
        valid_from: String,
    },
    /// The agreement's stage does not allow the requested snapshot (403
    /// `stage_not_allowed`): trial agreements query synthetic snapshots,
    /// production agreements production ones.
    #[error(
        "agreement '{agreement}' is at stage '{stage}' and snapshot '{snapshot}' is {kind}; {hint}"
    )]
    StageNotAllowed {
        /// The agreement id.
        agreement: String,
        /// The agreement's stage (`trial` or `production`).
        stage: String,
        /// The requested snapshot id.
        snapshot: String,
        /// What the snapshot is: `synthetic` or `production data`.
        kind: &'static str,
        /// Which snapshots the stage may query instead.
        hint: &'static str,
    },
    /// The agreement's bucket is empty (429 `rate_limited`, with
    /// `Retry-After`).
    #[error(
        "rate limit of agreement '{agreement}' reached: {per_minute} requests per minute; retry after {retry_after} s"
    )]
    RateLimited {
        /// The agreement id.
        agreement: String,
        /// The agreement's rate limit, requests per minute.
        per_minute: u32,
        /// Seconds until a request is available (the `Retry-After` value).
        retry_after: u64,
    },
    /// A client address used up its unauthenticated refusals (429
    /// `rate_limited` before authentication, with `Retry-After`).
    #[error(
        "too many unauthenticated requests from {address}: at most {per_minute} per minute before authentication; retry after {retry_after} s with a valid token"
    )]
    AddressRateLimited {
        /// The client address (IPv6: its /64).
        address: String,
        /// `unauthenticated_per_address_per_minute` of the limits.
        per_minute: u32,
        /// Seconds until the bucket holds a request (the `Retry-After`
        /// value).
        retry_after: u64,
    },
    /// The period's or the lifetime privacy budget does not cover the query
    /// (409 `budget_exhausted`); holds the ledger's message.
    #[error("{0}")]
    BudgetExhausted(String),
    /// A malformed request (400) with its own stable code.
    #[error("{message}")]
    BadRequest {
        /// The stable code, e.g. `bad_json`, `bad_body`, `bad_path`.
        code: &'static str,
        /// What is wrong and the fix.
        message: String,
    },
    /// The `Accept` header names no format the service produces (406
    /// `not_acceptable`).
    #[error(
        "cannot produce '{accept}'; accepted: application/json, text/csv, application/vnd.apache.parquet (or ?format=json|csv|parquet)"
    )]
    NotAcceptable {
        /// The `Accept` header as sent (at most 200 characters of it).
        accept: String,
    },
    /// The request body exceeds `max_body_bytes` (413 `payload_too_large`).
    #[error(
        "the request body is larger than {limit} bytes, the most accepted; send a shorter query or use a saved query"
    )]
    PayloadTooLarge {
        /// `max_body_bytes` of the limits (the body is read no further).
        limit: usize,
    },
    /// The requested snapshot id is not served (404 `snapshot_not_found`).
    #[error("no snapshot '{id}'; available to this agreement: {available}")]
    SnapshotNotFound {
        /// The requested id (at most 100 characters of it).
        id: String,
        /// The snapshots the agreement may query, comma-separated, or
        /// `none`.
        available: String,
    },
    /// No served snapshot fits the agreement's stage and region (404
    /// `no_snapshot`).
    #[error("no snapshot is available to agreement '{agreement}' at stage '{stage}'; {hint}")]
    NoSnapshot {
        /// The agreement id.
        agreement: String,
        /// The agreement's stage (`trial` or `production`).
        stage: String,
        /// Which snapshots the stage may query.
        hint: &'static str,
    },
    /// No saved query of that name (404 `saved_query_not_found`).
    #[error("no saved query '{name}'; GET /v1/queries lists the ones this agreement may run")]
    SavedQueryNotFound {
        /// The requested name.
        name: String,
    },
    /// The saved query uses elements the agreement does not permit (403
    /// `element_not_permitted`).
    #[error(
        "saved query '{name}' needs elements this agreement does not permit: {missing}; GET /v1/queries lists the ones it may run"
    )]
    SavedQueryNotPermitted {
        /// The saved query's name.
        name: String,
        /// The elements not permitted, comma-separated.
        missing: String,
    },
    /// A saved-query parameter is missing or invalid (400
    /// `invalid_parameter`; the problem's `param` names it).
    #[error("{0}")]
    Parameter(Box<SavedError>),
    /// The query gate refused the query; status and code are the gate's.
    #[error("{0}")]
    Query(QueryError),
    /// No such route (404 `not_found`).
    #[error("route {path} does not exist; see GET /openapi.json")]
    NotFound {
        /// The requested path.
        path: String,
    },
    /// The route exists but not with this method (405
    /// `method_not_allowed`).
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The HTTP method sent.
        method: String,
        /// The requested path.
        path: String,
    },
    /// A failure of the service. The source goes to the operator's log only.
    #[error("internal error ({context}); the operator can find the details under this request id")]
    Internal {
        /// Which part failed (e.g. `state database`), shown to the caller.
        context: &'static str,
        /// The underlying error, logged only.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Shutting down, or the audit log cannot be written (503
    /// `unavailable`): nothing is released.
    #[error("the service is shutting down or its audit log is unavailable; retry shortly")]
    Unavailable,
}

impl ApiError {
    /// A 400 with a stable `code` (e.g. `bad_json`, `bad_body`) and a
    /// message that names the fix.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 500 for a failure of the service: `context` is shown to the caller,
    /// `source` goes to the operator's log only.
    pub fn internal(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ApiError {
        ApiError::Internal {
            context,
            source: source.into(),
        }
    }

    /// The category of the error; its status comes from the one table in
    /// [`crate::error`].
    pub fn category(&self) -> ErrorCategory {
        use ApiError as E;
        use ErrorCategory as C;
        match self {
            E::TokenMissing | E::TokenMalformed | E::TokenUnknown => C::Unauthenticated,
            E::AgreementExpired { .. }
            | E::AgreementNotYetValid { .. }
            | E::StageNotAllowed { .. }
            | E::SavedQueryNotPermitted { .. } => C::Forbidden,
            E::RateLimited { .. } | E::AddressRateLimited { .. } => C::RateLimited,
            E::BudgetExhausted(_) => C::BudgetExhausted,
            E::BadRequest { .. } | E::Parameter(_) | E::AmbiguousCredentials => C::Usage,
            E::NotAcceptable { .. } => C::NotAcceptable,
            E::PayloadTooLarge { .. } => C::TooLarge,
            E::SnapshotNotFound { .. }
            | E::NoSnapshot { .. }
            | E::SavedQueryNotFound { .. }
            | E::NotFound { .. } => C::NotFound,
            E::MethodNotAllowed { .. } => C::MethodNotAllowed,
            E::Query(q) => q.category(),
            E::Internal { .. } => C::Internal,
            E::Unavailable => C::Unavailable,
        }
    }

    /// The HTTP status, from the category.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.category().http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The stable code (the gate's codes for query refusals).
    pub fn code(&self) -> &'static str {
        use ApiError as E;
        match self {
            E::TokenMissing => "token_missing",
            E::TokenMalformed => "token_malformed",
            E::TokenUnknown => "token_unknown",
            E::AmbiguousCredentials => "ambiguous_credentials",
            E::AgreementExpired { .. } => "agreement_expired",
            E::AgreementNotYetValid { .. } => "agreement_not_yet_valid",
            E::StageNotAllowed { .. } => "stage_not_allowed",
            E::RateLimited { .. } | E::AddressRateLimited { .. } => "rate_limited",
            E::BudgetExhausted(_) => "budget_exhausted",
            E::BadRequest { code, .. } => code,
            E::NotAcceptable { .. } => "not_acceptable",
            E::PayloadTooLarge { .. } => "payload_too_large",
            E::SnapshotNotFound { .. } => "snapshot_not_found",
            E::NoSnapshot { .. } => "no_snapshot",
            E::SavedQueryNotFound { .. } => "saved_query_not_found",
            E::SavedQueryNotPermitted { .. } => "element_not_permitted",
            E::Parameter(_) => "invalid_parameter",
            E::Query(q) => q.code.as_str(),
            E::NotFound { .. } => "not_found",
            E::MethodNotAllowed { .. } => "method_not_allowed",
            E::Internal { .. } => "internal_error",
            E::Unavailable => "unavailable",
        }
    }

    /// Refused by a gate (the caller's doing) rather than failed.
    pub fn is_rejection(&self) -> bool {
        self.status().is_client_error()
    }

    /// The problem document for this error.
    pub fn problem(&self, request_id: &str) -> Problem {
        let status = self.status();
        Problem {
            r#type: format!("urn:agregat:problem:{}", self.code()),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: self.code().to_string(),
            instance: format!("urn:agregat:request:{request_id}"),
            param: match self {
                ApiError::Parameter(e) => e.param().map(str::to_string),
                _ => None,
            },
        }
    }

    /// The `WWW-Authenticate` challenge of an authentication failure
    /// (RFC 6750 section 3): every 401, and the 400 of ambiguous
    /// credentials.
    pub fn challenge(&self) -> Option<&'static str> {
        match self {
            ApiError::TokenMissing => Some("Bearer realm=\"agregat\""),
            ApiError::TokenMalformed | ApiError::AmbiguousCredentials => {
                Some("Bearer realm=\"agregat\", error=\"invalid_request\"")
            }
            ApiError::TokenUnknown => Some("Bearer realm=\"agregat\", error=\"invalid_token\""),
            _ => None,
        }
    }

    /// The response, with `Retry-After` for rate limits and
    /// `WWW-Authenticate` for authentication failures.
    pub fn into_response_for(self, request_id: &str) -> Response {
        self.response_for(request_id)
    }

    /// [`ApiError::into_response_for`] by reference.
    pub fn response_for(&self, request_id: &str) -> Response {
        let problem = self.problem(request_id);
        let mut resp = (
            self.status(),
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
            serde_json::to_vec(&problem).unwrap_or_default(),
        )
            .into_response();
        if let ApiError::RateLimited { retry_after, .. }
        | ApiError::AddressRateLimited { retry_after, .. } = self
            && let Ok(v) = HeaderValue::from_str(&retry_after.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if let Some(c) = self.challenge() {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        resp
    }
}

/// HTTP status of a query refusal.
pub fn query_status(code: Code) -> StatusCode {
    StatusCode::from_u16(code.category().http_status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY)
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Query(q) => ApiError::Query(q),
            RunError::Engine(e) => ApiError::internal("query engine", e),
        }
    }
}

impl From<crate::release::ReleaseError> for ApiError {
    fn from(e: crate::release::ReleaseError) -> Self {
        use crate::release::ReleaseError as R;
        match e {
            R::Run(e) => e.into(),
            R::State(e) => e.into(),
            R::Privacy(e) => ApiError::internal("privacy cost", e),
            R::Task(e) => ApiError::internal("budget ledger", e),
        }
    }
}

impl From<crate::agreement::AccessRefusal> for ApiError {
    fn from(e: crate::agreement::AccessRefusal) -> Self {
        use crate::agreement::AccessRefusal as A;
        match e {
            A::Expired {
                agreement,
                valid_until,
            } => ApiError::AgreementExpired {
                agreement,
                valid_until: valid_until.to_string(),
            },
            A::NotYetValid {
                agreement,
                valid_from,
            } => ApiError::AgreementNotYetValid {
                agreement,
                valid_from: valid_from.to_string(),
            },
            A::Stage {
                agreement,
                stage,
                snapshot,
                synthetic,
            } => ApiError::StageNotAllowed {
                agreement,
                stage: stage.to_string(),
                snapshot,
                kind: if synthetic {
                    "synthetic"
                } else {
                    "production data"
                },
                hint: stage.snapshot_hint(),
            },
            e @ A::OutsideScope { .. } => {
                ApiError::Query(QueryError::new(Code::RegionNotPermitted, e.to_string()))
            }
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(q: QueryError) -> Self {
        ApiError::Query(q)
    }
}

impl From<SavedError> for ApiError {
    fn from(e: SavedError) -> Self {
        match e {
            SavedError::UnknownQuery { name, .. } => ApiError::SavedQueryNotFound { name },
            e if e.param().is_some() => ApiError::Parameter(Box::new(e)),
            e => ApiError::internal("saved queries", e),
        }
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        match e {
            e @ (StateError::BudgetExhausted { .. } | StateError::LifetimeExhausted { .. }) => {
                ApiError::BudgetExhausted(e.to_string())
            }
            e => ApiError::internal("state database", e),
        }
    }
}

/// RFC 9457 problem details, plus the stable `code`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct Problem {
    /// `urn:agregat:problem:<code>`.
    #[serde(rename = "type")]
    pub r#type: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    /// The HTTP status code of the response, repeated in the body.
    pub status: u16,
    /// What is wrong, the offending value, and the fix.
    pub detail: String,
    /// Stable machine-readable code, e.g. `identifier_in_group_by`.
    pub code: String,
    /// `urn:agregat:request:<request id>`; quote it to the operator.
    pub instance: String,
    /// The saved-query parameter at fault, for `invalid_parameter`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_fault() {
        let q = |c| ApiError::Query(QueryError::new(c, "x"));
        assert_eq!(q(Code::IdentifierInGroupBy).status(), 422);
        assert_eq!(q(Code::ElementNotPermitted).status(), 403);
        assert_eq!(q(Code::RegionNotPermitted).status(), 403);
        assert_eq!(q(Code::TooManyCells).status(), 413);
        assert_eq!(q(Code::ParseError).status(), 400);
        assert_eq!(ApiError::TokenUnknown.status(), 401);
        assert_eq!(ApiError::AmbiguousCredentials.status(), 400);
        for e in [
            ApiError::TokenMissing,
            ApiError::TokenMalformed,
            ApiError::TokenUnknown,
        ] {
            let r = e.into_response_for("r");
            assert!(
                r.headers()[header::WWW_AUTHENTICATE]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer ")
            );
        }
        assert_eq!(ApiError::BudgetExhausted("x".into()).status(), 409);
        let p = ApiError::internal("state database", std::io::Error::other("disk /x/y full"))
            .problem("r1");
        assert_eq!(p.status, 500);
        assert!(!p.detail.contains("/x/y"), "{}", p.detail);
        assert_eq!(p.instance, "urn:agregat:request:r1");
    }
}
