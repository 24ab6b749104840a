//! The audit entry of one request, as a type: an [`AuditToken`] is opened
//! when a request arrives (by the [`super::extract::Admitted`] extractor,
//! or by hand for the routes that authenticate nobody), advanced with typed
//! facts as the request gets further (caller, SQL, the release's
//! [`Facts`], the released bytes), and consumed by [`AuditToken::finish`],
//! which appends the entry to the hash chain and only then lets the
//! response go. A token that is dropped unfinished (the client went away
//! and the handler was cancelled, or a handler returned early by mistake)
//! appends its entry as failed (`cancelled`) from its `Drop`: no request
//! that reached a handler goes unrecorded. Refusals of requests that never
//! authenticated are counted instead ([`super::refusals`]).
//!
//! The model is influxdb3's query-log token: the log entry is a value the
//! request carries, not a call each handler must remember.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::http::HeaderValue;
use axum::response::Response;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::AppState;
use super::problem::ApiError;
use crate::release::Facts;
use crate::state::{AuditEntry, Outcome};

/// Unique request ids: the process start time (ns) and a counter, so ids
/// stay unique across restarts (the budget ledger keys on them).
pub struct RequestIds {
    start: u128,
    next: AtomicU64,
}

impl RequestIds {
    /// Ids of this process.
    pub fn new() -> RequestIds {
        RequestIds {
            start: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            next: AtomicU64::new(1),
        }
    }

    /// The next id.
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

/// Placeholder for the agreement and token of unauthenticated requests.
pub const NOBODY: &str = "-";

/// What is known about a request so far.
struct Pending {
    request_id: String,
    time: DateTime<Utc>,
    started: Instant,
    /// Route template for metrics, e.g. `/v1/queries/{name}`.
    route: &'static str,
    /// The endpoint as logged, e.g. `/v1/queries/usia_sekolah`.
    endpoint: String,
    agreement: String,
    token_id: String,
    client_addr: Option<String>,
    sql: Option<String>,
    facts: Facts,
    bytes_out: u64,
    result_hash: Option<String>,
}

/// The audit entry of a request in the making. It can only be consumed by
/// [`AuditToken::finish`] (entry appended, then the response) or dropped
/// (entry appended as failed).
#[must_use = "a request's audit entry is written by AuditToken::finish; a dropped token records the request as failed"]
pub struct AuditToken {
    state: Arc<AppState>,
    /// `None` only once finished.
    pending: Option<Pending>,
}

impl AuditToken {
    /// Opens the entry of a request arriving now.
    pub fn begin(
        state: &Arc<AppState>,
        route: &'static str,
        endpoint: impl Into<String>,
        client_addr: Option<String>,
    ) -> AuditToken {
        AuditToken {
            state: Arc::clone(state),
            pending: Some(Pending {
                request_id: state.ids.next(),
                time: state.clock.now(),
                started: Instant::now(),
                route,
                endpoint: endpoint.into().chars().take(200).collect(),
                agreement: NOBODY.into(),
                token_id: NOBODY.into(),
                client_addr,
                sql: None,
                facts: Facts::default(),
                bytes_out: 0,
                result_hash: None,
            }),
        }
    }

    fn pending(&self) -> &Pending {
        self.pending
            .as_ref()
            .expect("an unfinished token has its entry")
    }

    fn pending_mut(&mut self) -> &mut Pending {
        self.pending
            .as_mut()
            .expect("an unfinished token has its entry")
    }

    /// The request's id (also the ledger's reservation key).
    pub fn request_id(&self) -> &str {
        &self.pending().request_id
    }

    /// The authenticated caller: agreement and token id.
    pub(super) fn admitted(&mut self, agreement: &str, token_id: &str) {
        let p = self.pending_mut();
        p.agreement = agreement.to_string();
        p.token_id = token_id.to_string();
    }

    /// The SQL asked (ad hoc, or a saved query's rendering).
    pub fn sql(&mut self, sql: &str) {
        self.pending_mut().sql = Some(sql.to_string());
    }

    /// What the release pipeline learnt of the request (snapshot, plan,
    /// elements, cells, privacy loss), also when it refused.
    pub fn release(&mut self, facts: &Facts) {
        self.pending_mut().facts.clone_from(facts);
    }

    /// The facts recorded so far.
    pub fn facts(&self) -> &Facts {
        &self.pending().facts
    }

    /// The released bytes (size and SHA-256).
    pub fn released(&mut self, bytes: &[u8]) {
        let p = self.pending_mut();
        p.bytes_out = bytes.len() as u64;
        p.result_hash = Some(hex::encode(Sha256::digest(bytes)));
    }

    /// A release answered from the response cache: its facts and the
    /// size and hash of its bytes, as when it was first released.
    pub fn cached(&mut self, facts: &Facts, bytes: usize, sha256: &str) {
        let p = self.pending_mut();
        p.facts.clone_from(facts);
        p.bytes_out = bytes as u64;
        p.result_hash = Some(sha256.to_string());
    }

    /// SHA-256 of the released bytes, once recorded.
    pub fn result_hash(&self) -> Option<&str> {
        self.pending().result_hash.as_deref()
    }

    /// Appends the request's audit entry, then returns the response; if the
    /// entry cannot be written, the response is withheld and a 503 returned
    /// (its own failure is logged for the operator).
    pub async fn finish(mut self, result: Result<Response, ApiError>) -> Response {
        let p = self
            .pending
            .take()
            .expect("an unfinished token has its entry");
        finish(&self.state, p, result).await
    }
}

impl Drop for AuditToken {
    fn drop(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        if p.agreement == NOBODY {
            return;
        }
        // The handler was dropped before its response: the client went
        // away, or a code path forgot to finish. Either way the request is
        // on record, as failed.
        let request_id = p.request_id.clone();
        let entry = entry_of(p, Outcome::Failed, Some("cancelled".to_string()));
        let store = Arc::clone(&self.state.store);
        let append = move || {
            if let Err(e) = store.append(entry) {
                eprintln!(
                    "agregat: request {request_id}: audit entry of a cancelled request not written ({e})"
                );
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(append);
            }
            Err(_) => append(),
        }
    }
}

/// The stored entry of a request.
fn entry_of(p: Pending, outcome: Outcome, code: Option<String>) -> AuditEntry {
    let accepted = outcome == Outcome::Accepted;
    AuditEntry {
        time: p.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        agreement: p.agreement,
        token_id: p.token_id,
        endpoint: p.endpoint,
        sql: p.sql,
        plan_fingerprint: p.facts.plan_fingerprint,
        snapshot: p.facts.snapshot,
        outcome,
        code,
        cells: p.facts.cells,
        suppressed_cells: p.facts.suppressed_cells,
        privacy_loss: p.facts.privacy_loss,
        bytes_out: if accepted { p.bytes_out } else { 0 },
        duration_ms: p.started.elapsed().as_millis() as u64,
        result_hash: if accepted { p.result_hash } else { None },
        client_addr: p.client_addr,
        request_id: Some(p.request_id),
        elements: p.facts.elements,
    }
}

/// An unauthenticated refusal: counted per address and minute rather
/// than appended (see [`super::refusals`]), and charged to the address's
/// limit before authentication.
fn refused_unauthenticated(state: &Arc<AppState>, p: Pending, e: &ApiError) -> Response {
    let addr = super::refusals::address_key(p.client_addr.as_deref());
    state.refusals.record(p.time, &addr, e.code());
    let per_minute = state.config.limits.unauthenticated_per_address_per_minute;
    if per_minute > 0 {
        state
            .address_limiter
            .charge(&addr, per_minute, Instant::now());
    }
    let elapsed = p.started.elapsed();
    let mut response = e.response_for(&p.request_id);
    state
        .metrics
        .observe(p.route, response.status().as_u16(), Some(e.code()), elapsed);
    if let Ok(v) = HeaderValue::from_str(&p.request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

async fn finish(state: &Arc<AppState>, p: Pending, result: Result<Response, ApiError>) -> Response {
    let (outcome, code) = match &result {
        Ok(_) => (Outcome::Accepted, None),
        Err(e) if e.is_rejection() => (Outcome::Rejected, Some(e.code().to_string())),
        Err(e) => (Outcome::Failed, Some(e.code().to_string())),
    };
    if let Err(e) = &result
        && p.agreement == NOBODY
        && e.is_rejection()
    {
        return refused_unauthenticated(state, p, e);
    }
    if let Err(ApiError::Internal { context, source }) = &result {
        eprintln!(
            "agregat: request {} failed in {context}: {source}",
            p.request_id
        );
    }
    let (route, request_id, started) = (p.route, p.request_id.clone(), p.started);
    let entry = entry_of(p, outcome, code.clone());
    let store = Arc::clone(&state.store);
    let appended = tokio::task::spawn_blocking(move || store.append(entry)).await;
    let response = match appended {
        Ok(Ok(_)) => {
            state.metrics.audit_appended();
            match result {
                Ok(r) => r,
                Err(e) => e.into_response_for(&request_id),
            }
        }
        Ok(Err(e)) => {
            eprintln!(
                "agregat: request {}: audit entry not written ({e}); response withheld",
                request_id
            );
            ApiError::Unavailable.into_response_for(&request_id)
        }
        Err(e) => {
            eprintln!(
                "agregat: request {}: audit task failed ({e}); response withheld",
                request_id
            );
            ApiError::Unavailable.into_response_for(&request_id)
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
        .observe(route, status, code.as_deref(), started.elapsed());
    let mut response = response;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}
