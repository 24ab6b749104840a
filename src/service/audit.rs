//! The audit entry of one request. A [`Draft`] is opened when a request
//! arrives and filled in as the request gets further (agreement, SQL,
//! plan fingerprint, snapshot, cells, privacy loss, bytes, hash of the
//! released bytes); [`finish`] appends it to the hash chain and only then
//! lets the response go. Every `/v1` handler ends in [`finish`], so no
//! request can be answered without its entry. Refusals of requests that
//! never authenticated are counted instead ([`super::refusals`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::http::HeaderValue;
use axum::response::Response;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::AppState;
use super::problem::ApiError;
use crate::state::{AuditEntry, Outcome};

/// Unique request ids: the process start time (ns) and a counter, so ids
/// stay unique across restarts (the budget ledger keys on them).
pub struct RequestIds {
    start: u128,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        RequestIds {
            start: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            next: AtomicU64::new(1),
        }
    }

    pub fn next(&self) -> String {
        format!(
            "{:x}-{}",
            self.start,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// What is known about a request so far.
pub struct Draft {
    pub request_id: String,
    pub time: DateTime<Utc>,
    started: Instant,
    /// Route template for metrics, e.g. `/v1/queries/{name}`.
    pub route: &'static str,
    /// The endpoint as logged, e.g. `/v1/queries/usia_sekolah`.
    pub endpoint: String,
    pub agreement: String,
    pub token_id: String,
    pub client_addr: Option<String>,
    pub sql: Option<String>,
    pub plan_fingerprint: Option<String>,
    pub snapshot: Option<String>,
    pub elements: Vec<String>,
    pub cells: u64,
    pub suppressed_cells: u64,
    pub privacy_loss: Option<f64>,
    pub bytes_out: u64,
    pub result_hash: Option<String>,
}

/// Placeholder for the agreement and token of unauthenticated requests.
pub const NOBODY: &str = "-";

impl Draft {
    pub fn begin(
        state: &AppState,
        route: &'static str,
        endpoint: impl Into<String>,
        client_addr: Option<String>,
    ) -> Draft {
        Draft {
            request_id: state.ids.next(),
            time: state.clock.now(),
            started: Instant::now(),
            route,
            endpoint: endpoint.into(),
            agreement: NOBODY.into(),
            token_id: NOBODY.into(),
            client_addr,
            sql: None,
            plan_fingerprint: None,
            snapshot: None,
            elements: Vec::new(),
            cells: 0,
            suppressed_cells: 0,
            privacy_loss: None,
            bytes_out: 0,
            result_hash: None,
        }
    }

    /// Records the released bytes (size and SHA-256).
    pub fn released(&mut self, bytes: &[u8]) {
        self.bytes_out = bytes.len() as u64;
        self.result_hash = Some(hex::encode(Sha256::digest(bytes)));
    }
}

/// An unauthenticated refusal: counted per address and minute rather
/// than appended (see [`super::refusals`]), and charged to the address's
/// limit before authentication.
fn refused_unauthenticated(state: &Arc<AppState>, draft: Draft, e: &ApiError) -> Response {
    let addr = super::refusals::address_key(draft.client_addr.as_deref());
    state.refusals.record(draft.time, &addr, e.code());
    let per_minute = state.config.limits.unauthenticated_per_address_per_minute;
    if per_minute > 0 {
        state
            .address_limiter
            .charge(&addr, per_minute, Instant::now());
    }
    let elapsed = draft.started.elapsed();
    let mut response = e.response_for(&draft.request_id);
    state.metrics.observe(
        draft.route,
        response.status().as_u16(),
        Some(e.code()),
        elapsed,
    );
    if let Ok(v) = HeaderValue::from_str(&draft.request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Appends the request's audit entry, then returns the response; if the
/// entry cannot be written, the response is withheld and a 503 returned
/// (its own failure is logged for the operator).
pub async fn finish(
    state: &Arc<AppState>,
    draft: Draft,
    result: Result<Response, ApiError>,
) -> Response {
    let (outcome, code) = match &result {
        Ok(_) => (Outcome::Accepted, None),
        Err(e) if e.is_rejection() => (Outcome::Rejected, Some(e.code().to_string())),
        Err(e) => (Outcome::Failed, Some(e.code().to_string())),
    };
    if let Err(e) = &result
        && draft.agreement == NOBODY
        && e.is_rejection()
    {
        return refused_unauthenticated(state, draft, e);
    }
    if let Err(ApiError::Internal { context, source }) = &result {
        eprintln!(
            "agregat: request {} failed in {context}: {source}",
            draft.request_id
        );
    }
    let elapsed = draft.started.elapsed();
    let entry = AuditEntry {
        time: draft
            .time
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        agreement: draft.agreement,
        token_id: draft.token_id,
        endpoint: draft.endpoint,
        sql: draft.sql,
        plan_fingerprint: draft.plan_fingerprint,
        snapshot: draft.snapshot,
        outcome,
        code: code.clone(),
        cells: draft.cells,
        suppressed_cells: draft.suppressed_cells,
        privacy_loss: draft.privacy_loss,
        bytes_out: if outcome == Outcome::Accepted {
            draft.bytes_out
        } else {
            0
        },
        duration_ms: elapsed.as_millis() as u64,
        result_hash: if outcome == Outcome::Accepted {
            draft.result_hash
        } else {
            None
        },
        client_addr: draft.client_addr,
        request_id: Some(draft.request_id.clone()),
        elements: draft.elements,
    };
    let store = Arc::clone(&state.store);
    let appended = tokio::task::spawn_blocking(move || store.append(entry)).await;
    let response = match appended {
        Ok(Ok(_)) => {
            state.metrics.audit_appended();
            match result {
                Ok(r) => r,
                Err(e) => e.into_response_for(&draft.request_id),
            }
        }
        Ok(Err(e)) => {
            eprintln!(
                "agregat: request {}: audit entry not written ({e}); response withheld",
                draft.request_id
            );
            ApiError::Unavailable.into_response_for(&draft.request_id)
        }
        Err(e) => {
            eprintln!(
                "agregat: request {}: audit task failed ({e}); response withheld",
                draft.request_id
            );
            ApiError::Unavailable.into_response_for(&draft.request_id)
        }
    };
    let status = response.status().as_u16();
    let code = if status >= 400 {
        code.or_else(|| Some("unavailable".to_string()))
    } else {
        None
    };
    state
        .metrics
        .observe(draft.route, status, code.as_deref(), elapsed);
    let mut response = response;
    if let Ok(v) = HeaderValue::from_str(&draft.request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}
