//! The `Admitted` extractor: a `/v1` handler that names it in its
//! arguments gets an authenticated, admitted caller and the request's open
//! audit token, or never runs.
//!
//! Owns: the order in which a request is admitted (audit token opened,
//! credentials checked, agreement validity and rate limit, see
//! [`super::auth::admit`]). A refusal here is finished through the token,
//! so it is audited (or, unauthenticated, counted) like any other.

use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::response::Response;

use super::audit::AuditToken;
use super::auth::{Caller, Credentials, admit};
use super::{AppState, ClientAddr};

type Shared = std::sync::Arc<AppState>;

/// An admitted caller and the request's audit token.
pub struct Admitted {
    /// Who asks, under which agreement.
    pub caller: Caller,
    /// The request's audit entry in the making.
    pub audit: AuditToken,
}

impl FromRequestParts<Shared> for Admitted {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Response> {
        let creds = parts
            .extensions
            .get::<Credentials>()
            .cloned()
            .unwrap_or(Credentials::None);
        let client = parts
            .extensions
            .get::<ClientAddr>()
            .and_then(|a| a.0.clone());
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map_or("unmatched", |m| route_template(m.as_str()));
        let mut audit = AuditToken::begin(state, route, parts.uri.path(), client);
        match admit(state, &creds, &mut audit) {
            Ok(caller) => Ok(Admitted { caller, audit }),
            Err(e) => Err(audit.finish(Err(e)).await),
        }
    }
}

/// The `'static` route template for metrics (the routes are a fixed set;
/// an unknown one is reported as `unmatched`).
fn route_template(path: &str) -> &'static str {
    super::api::ROUTES
        .iter()
        .map(|(_, p)| *p)
        .find(|p| *p == path)
        .unwrap_or("unmatched")
}
