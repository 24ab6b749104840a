//! The `/v1` endpoints and the operational ones (`/healthz`, `/readyz`,
//! `/metrics`, `/openapi.json`).
//!
//! Routes and the OpenAPI document are generated from one table (the
//! `api!` invocation below), and each handler carries its own
//! `#[utoipa::path]` annotation, so the published spec cannot drift from
//! what is served (a test compares them).
//!
//! Every `/v1` handler has the same shape: open an audit [`Draft`], run the
//! request in an inner function returning `Result<Response, ApiError>`,
//! and end in [`audit::finish`], which writes the audit entry before the
//! response is returned.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{OpenApi, ToSchema};

use super::audit::{self, Draft};
use super::auth::{Caller, Credentials, admit};
use super::cache::{CachedRelease, ResponseCache};
use super::problem::{ApiError, Problem};
use super::{AppState, ClientAddr};
use crate::catalog::{self, ColumnClass, Domain, RegionScope};
use crate::output::{self, Format};
use crate::policy::Stage;
use crate::protect::{BudgetInfo, Method, ProtectedTable, check_aggregates, dp_cost};
use crate::query::{
    Engine, ValidatedPlan, check_cells, check_query, grid_cells, is_release_cached,
    plan_fingerprint, release_key, run_validated, within_timeout,
};
use crate::state::{Reservation, period_of};
use sha2::Digest;

/// Media type of Parquet downloads.
pub const PARQUET: &str = "application/vnd.apache.parquet";

type Shared = Arc<AppState>;

macro_rules! api {
    ($($method:ident $path:literal => $handler:ident),* $(,)?) => {
        /// Every served route, as (method, path template).
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        fn api_router() -> Router<Shared> {
            Router::new()$(.route($path, $method($handler)))*
        }

        /// The OpenAPI document, from the handlers' annotations.
        #[derive(OpenApi)]
        #[openapi(
            info(
                title = "agregat",
                description = "Aggregate-only statistics over the population register (UU 24/2013 Pasal 58 ayat 3). Every answer is an aggregate protected by cell-key perturbation with suppression, or by differential privacy; every request is audited."
            ),
            paths($($handler),*),
            components(schemas(
                Problem, QueryRequest, CostResponse, BudgetResponse, SnapshotInfo,
                SavedQueryInfo, CatalogResponse, ElementInfo, RegionInfo, ReleaseJson,
                OutputFormat
            )),
            modifiers(&BearerAuth),
            tags(
                (name = "query", description = "Ad-hoc aggregate SQL"),
                (name = "saved", description = "Saved, parameterised queries"),
                (name = "info", description = "What the caller may see"),
                (name = "ops", description = "Health, readiness, metrics, this document")
            )
        )]
        pub struct ApiDoc;
    };
}

api! {
    post "/v1/query" => query,
    post "/v1/query/cost" => query_cost,
    get "/v1/queries" => list_queries,
    post "/v1/queries/{name}" => run_saved,
    get "/v1/catalog" => get_catalog,
    get "/v1/snapshots" => list_snapshots,
    get "/v1/budget" => get_budget,
    get "/healthz" => healthz,
    get "/readyz" => readyz,
    get "/metrics" => metrics,
    get "/openapi.json" => openapi,
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The token issued for the agreement (`agregat agreement token`).",
                    ))
                    .build(),
            ),
        );
    }
}

/// The whole router: API routes, JSON 404/405, credential stripping.
pub fn routes(state: Shared) -> Router {
    api_router()
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(super::auth::strip_credentials))
        .with_state(state)
}

// ---------------------------------------------------------------- bodies

/// `POST /v1/query` and `/v1/query/cost`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// One aggregate SQL statement over `penduduk`.
    #[schema(
        min_length = 1,
        example = "SELECT kode_kec, jenis_kelamin, COUNT(*) AS jumlah FROM penduduk GROUP BY 1, 2"
    )]
    pub sql: String,
    /// Snapshot id; default: the newest snapshot the agreement may query.
    #[serde(default)]
    #[schema(
        pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$",
        example = "dkb-2026-s1"
    )]
    pub snapshot: Option<String>,
}

/// Download format (`?format=`); otherwise the `Accept` header decides.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // documents the query parameter; parsed in `negotiate`
pub enum OutputFormat {
    Json,
    Csv,
    Parquet,
}

/// A JSON release (the `format=json` body).
#[derive(Serialize, ToSchema)]
pub struct ReleaseJson {
    pub columns: Vec<String>,
    /// One array per row: strings for group keys, numbers for released
    /// values, null for withheld cells.
    pub rows: Vec<Vec<Value>>,
    /// How the release was protected (method, k, ptable or DP margins,
    /// suppressed cells, snapshot).
    #[schema(value_type = Object)]
    pub protection: Value,
}

/// The dry run's answer.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CostResponse {
    pub snapshot: String,
    /// Cells of the complete result grid.
    pub cells: usize,
    pub max_cells: usize,
    pub dimensions: usize,
    /// `cell_key` or `dp`.
    pub method: String,
    /// Cells with a true (cell-key) or noisy (dp) count below k are withheld.
    pub k: u64,
    /// Catalog elements the query uses.
    pub elements: Vec<String>,
    pub plan_fingerprint: String,
    /// Cell-key: the largest perturbation of one cell.
    pub max_perturbation: Option<u32>,
    /// DP: `rho` or `epsilon`.
    pub measure: Option<String>,
    /// DP: what this query would charge now (0 when it repeats an earlier
    /// release, which is returned again at no cost).
    pub charge: Option<f64>,
    /// DP: 95% margin of error per aggregate column.
    #[schema(value_type = Option<Object>)]
    pub margin_of_error_95: Option<Map<String, Value>>,
    pub would_reuse: bool,
    /// DP: the budget this period before the query.
    pub budget: Option<BudgetResponse>,
}

/// Privacy budget of the caller's agreement in the current period.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct BudgetResponse {
    pub agreement: String,
    pub method: String,
    /// `YEAR-S1` (Jan–Jun) or `YEAR-S2` (Jul–Dec).
    pub period: String,
    pub measure: Option<String>,
    pub allowance: Option<f64>,
    /// Committed plus pending charges.
    pub spent: Option<f64>,
    pub remaining: Option<f64>,
    pub per_query: Option<f64>,
    /// Fresh queries at the per-query charge that still fit.
    pub queries_left: Option<u64>,
    /// DP: the per-person ceiling shared by every agreement in every
    /// period, and what all of them have charged against it.
    pub lifetime: Option<LifetimeBudget>,
    /// Cell-key: the released margins closest to the averaging floor, per
    /// snapshot (a new breakdown of a margin at the floor is refused).
    pub margins: Vec<MarginRow>,
    pub note: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct LifetimeBudget {
    pub ceiling: f64,
    pub spent: f64,
    pub remaining: f64,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct MarginRow {
    pub snapshot: String,
    /// The margin: its dimensions and its universe (category restrictions).
    pub margin: String,
    /// Distinct breakdowns released so far (a direct release counts as one).
    pub breakdowns: usize,
    /// Standard error (persons) of the best average of those releases.
    pub standard_error: f64,
    /// The floor below which a new breakdown is refused.
    pub floor: f64,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SnapshotInfo {
    pub id: String,
    pub tanggal_data: String,
    pub synthetic: bool,
    pub coverage: Vec<String>,
    /// Used when a request names no snapshot.
    pub default: bool,
}

#[derive(Serialize, ToSchema)]
pub struct SavedQueryInfo {
    pub name: String,
    pub title: String,
    pub description: String,
    pub elements: Vec<String>,
    /// Typed parameters with defaults and accepted values.
    #[schema(value_type = Vec<Object>)]
    pub params: Value,
}

#[derive(Serialize, ToSchema)]
pub struct ElementInfo {
    pub name: String,
    /// Letter of Pasal 58 ayat (2).
    pub element: String,
    pub class: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// Public values (code list labels), where the domain is a code list.
    pub values: Option<Vec<String>>,
    /// `provinsi` … `desa_kelurahan` for region codes.
    pub region_level: Option<String>,
    pub minister_permission: bool,
    /// How the element may be used in SQL.
    pub usage: String,
}

#[derive(Serialize, ToSchema)]
pub struct RegionInfo {
    pub kode: String,
    pub nama: String,
    pub level: String,
}

#[derive(Serialize, ToSchema)]
pub struct CatalogResponse {
    pub agreement: String,
    pub institution: String,
    pub stage: String,
    pub region_scope: Vec<String>,
    pub elements: Vec<ElementInfo>,
    pub regions: Vec<RegionInfo>,
    /// Public reference tables a query may join.
    pub reference_tables: Vec<String>,
    pub functions: Vec<String>,
}

/// Refusals every `/v1` endpoint can return (OpenAPI only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum AccessRefusals {
    /// Missing, malformed or unknown token.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    /// Not allowed: agreement expired or not yet valid; for queries also
    /// element, Minister's permission, region or stage.
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// Rate limit of the agreement reached (see `Retry-After`).
    #[response(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Problem),
}

/// Refusals of the endpoints that take a query (OpenAPI only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum QueryRefusals {
    /// Malformed body, SQL that does not parse, unknown column, bad
    /// saved-query parameter (`param` names it).
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// Unknown snapshot or saved query.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// The `Accept` header names no offered format.
    #[response(status = 406, content_type = "application/problem+json")]
    NotAcceptable(Problem),
    /// Privacy budget exhausted for this period.
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(Problem),
    /// Body, SQL or result grid too large.
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// Rejected by the aggregate-only gate.
    #[response(status = 422, content_type = "application/problem+json")]
    Unprocessable(Problem),
}

// ------------------------------------------------------------- plumbing

/// Reads at most `limit` bytes of body.
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut too_large = false;
        let mut cur: Option<&dyn std::error::Error> = Some(&e);
        while let Some(err) = cur {
            too_large |= err.to_string().contains("length limit");
            cur = err.source();
        }
        if too_large {
            ApiError::PayloadTooLarge {
                size: limit + 1,
                limit,
            }
        } else {
            ApiError::bad_request("bad_body", format!("cannot read the request body: {e}"))
        }
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], example: &str) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "bad_json",
            format!("the request body is empty; send JSON such as {example}"),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "bad_json",
            format!("the request body is not valid: {e}; send JSON such as {example}"),
        )
    })
}

/// The output format from `?format=` or the `Accept` header.
fn negotiate(query: Option<&str>, headers: &HeaderMap) -> Result<Format, ApiError> {
    if let Some(q) = query {
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("format=") {
                return match v {
                    "json" => Ok(Format::Json),
                    "csv" => Ok(Format::Csv),
                    "parquet" => Ok(Format::Parquet),
                    other => Err(ApiError::bad_request(
                        "unsupported_format",
                        format!("format '{other}' is not offered; use format=json, csv or parquet"),
                    )),
                };
            }
        }
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Format::Json);
    };
    for part in accept.split(',') {
        let mime = part
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/json" | "application/*" | "*/*" | "" => return Ok(Format::Json),
            "text/csv" | "text/*" => return Ok(Format::Csv),
            PARQUET | "application/x-parquet" | "application/octet-stream" => {
                return Ok(Format::Parquet);
            }
            _ => {}
        }
    }
    Err(ApiError::NotAcceptable {
        accept: accept.chars().take(200).collect(),
    })
}

fn json_response<T: Serialize>(value: &T) -> Result<Response, ApiError> {
    let body =
        serde_json::to_vec_pretty(value).map_err(|e| ApiError::internal("encoding JSON", e))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Snapshots the caller's stage may query, newest first.
fn visible_snapshots<'a>(state: &'a AppState, caller: &Caller) -> Vec<&'a Arc<Engine>> {
    let mut v: Vec<&Arc<Engine>> = state
        .snapshots()
        .values()
        .filter(|e| stage_allows(caller.pks.stage, e.snapshot().manifest.synthetic))
        .filter(|e| overlaps(&caller.pks.agreement.scope, &e.snapshot().coverage()))
        .collect();
    v.sort_by(|a, b| {
        let (ma, mb) = (&a.snapshot().manifest, &b.snapshot().manifest);
        mb.tanggal_data
            .cmp(&ma.tanggal_data)
            .then(mb.id.cmp(&ma.id))
    });
    v
}

fn stage_allows(stage: Stage, synthetic: bool) -> bool {
    match stage {
        Stage::Trial => synthetic,
        Stage::Production => !synthetic,
    }
}

fn overlaps(a: &RegionScope, b: &RegionScope) -> bool {
    match (a, b) {
        (RegionScope::All, _) | (_, RegionScope::All) => true,
        (RegionScope::Prefixes(pa), RegionScope::Prefixes(pb)) => pa
            .iter()
            .any(|p| b.touches(p) || pb.iter().any(|q| a.touches(q))),
    }
}

fn choose_snapshot(
    state: &AppState,
    caller: &Caller,
    requested: Option<&str>,
) -> Result<Arc<Engine>, ApiError> {
    let visible = visible_snapshots(state, caller);
    let stage = caller.pks.stage;
    match requested {
        None => visible.first().map(|e| Arc::clone(e)).ok_or_else(|| ApiError::NoSnapshot {
            agreement: caller.pks.id().to_string(),
            stage: stage.to_string(),
            hint: match stage {
                Stage::Trial => "trial agreements query synthetic snapshots only, and none covers the agreement's region",
                Stage::Production => "production agreements query production snapshots only, and none covers the agreement's region; the synthetic sample is for trial agreements",
            },
        }),
        Some(id) => {
            let Some(engine) = state.snapshots().get(id) else {
                let names: Vec<&str> = visible.iter().map(|e| e.snapshot().id()).collect();
                return Err(ApiError::SnapshotNotFound {
                    id: id.chars().take(100).collect(),
                    available: if names.is_empty() { "none".into() } else { names.join(", ") },
                });
            };
            let synthetic = engine.snapshot().manifest.synthetic;
            if !stage_allows(stage, synthetic) {
                return Err(ApiError::StageNotAllowed {
                    agreement: caller.pks.id().to_string(),
                    stage: stage.to_string(),
                    snapshot: id.to_string(),
                    kind: if synthetic { "synthetic" } else { "production data" },
                    hint: match stage {
                        Stage::Trial => "trial agreements may query synthetic snapshots only",
                        Stage::Production => "production agreements may query production snapshots only",
                    },
                });
            }
            if !overlaps(&caller.pks.agreement.scope, &engine.snapshot().coverage()) {
                return Err(ApiError::Query(crate::query::QueryError::new(
                    crate::query::Code::RegionNotPermitted,
                    format!(
                        "snapshot '{id}' covers {}, outside the scope of agreement '{}' ({})",
                        engine.snapshot().coverage().describe(),
                        caller.pks.id(),
                        caller.pks.agreement.scope.describe()
                    ),
                )));
            }
            Ok(Arc::clone(engine))
        }
    }
}

/// Validates the SQL for the caller on the engine; fills the draft.
async fn validate(
    engine: &Engine,
    caller: &Caller,
    sql: &str,
    draft: &mut Draft,
) -> Result<ValidatedPlan, ApiError> {
    draft.snapshot = Some(engine.snapshot().id().to_string());
    let agreement = &caller.pks.agreement;
    let validated = within_timeout(engine, agreement, check_query(engine, agreement, sql)).await?;
    draft.plan_fingerprint = Some(plan_fingerprint(&validated));
    draft.elements = validated.elements.iter().map(|e| e.to_string()).collect();
    Ok(validated)
}

/// The key of a DP release in the state database: the snapshot and the
/// engine's release key, hashed.
fn durable_release_key(engine: &Engine, key: &str) -> String {
    hex::encode(sha2::Sha256::digest(
        format!("{}\n{key}", engine.snapshot().id()).as_bytes(),
    ))
}

/// Whether this DP question was released before on this snapshot for this
/// agreement: in the engine's memory, or in the state database (from
/// before a restart), in which case the release is loaded into memory so
/// that it is served again, free of charge. False under cell-key.
async fn dp_release_known(
    state: &Shared,
    engine: &Engine,
    agreement: &crate::agreement::Agreement,
    validated: &ValidatedPlan,
    request_id: &str,
) -> Result<bool, ApiError> {
    if !matches!(agreement.protection.method, Method::Dp { .. }) {
        return Ok(false);
    }
    if is_release_cached(engine, agreement, validated) {
        return Ok(true);
    }
    let Some(key) = release_key(agreement, validated) else {
        return Ok(false);
    };
    let store = Arc::clone(&state.store);
    let durable = durable_release_key(engine, &key);
    let stored = tokio::task::spawn_blocking(move || store.release_get(&durable))
        .await
        .map_err(|e| ApiError::internal("release cache", e))??;
    let Some(bytes) = stored else {
        return Ok(false);
    };
    match ProtectedTable::from_bytes(&bytes) {
        Ok(t) => {
            engine.cache_release(key, t);
            Ok(true)
        }
        Err(e) => {
            eprintln!(
                "agregat: request {request_id}: stored release unreadable ({e}); answering afresh"
            );
            Ok(false)
        }
    }
}

/// Plans, validates, charges and runs one query; the released table.
async fn release(
    state: &Shared,
    caller: &Caller,
    engine: &Engine,
    sql: &str,
    draft: &mut Draft,
) -> Result<ProtectedTable, ApiError> {
    let _slot = state
        .query_slots
        .acquire()
        .await
        .map_err(|_| ApiError::Unavailable)?;
    let agreement = &caller.pks.agreement;
    let validated = validate(engine, caller, sql, draft).await?;
    // DP: a question released before (also before a restart) is answered
    // with that release, free of charge.
    let reservation = match &agreement.protection.method {
        Method::Dp { budget, k }
            if !dp_release_known(state, engine, agreement, &validated, &draft.request_id)
                .await? =>
        {
            let cost = dp_cost(*budget, &validated.aggregates, validated.grouping_sets, *k)
                .map_err(|e| ApiError::internal("privacy cost", e))?;
            let store = Arc::clone(&state.store);
            let (id, period) = (caller.pks.id().to_string(), period_of(state.clock.today()));
            let allowance = caller.pks.budget_per_period.unwrap_or(0.0);
            let request_id = draft.request_id.clone();
            let amount = cost.charge.value();
            let lifetime = Some(state.config.limits.lifetime_privacy_loss);
            let r = tokio::task::spawn_blocking(move || {
                store.reserve_within(&id, &period, amount, allowance, lifetime, &request_id)
            })
            .await
            .map_err(|e| ApiError::internal("budget ledger", e))??;
            Some((r, release_key(agreement, &validated)))
        }
        _ => None,
    };
    let result = run_validated(engine, agreement, validated).await;
    match (result, reservation) {
        (Ok(r), None) => {
            record(draft, &r.table, r.cells);
            Ok(r.table)
        }
        (Ok(r), Some((res, key))) => {
            let charged = r.table.charge_now().map_or(0.0, |c| c.value());
            if charged == 0.0 {
                // An identical release was cached meanwhile: nothing new
                // leaves, so nothing is charged.
                settle(state, res, false).await?;
            } else {
                // Commit before anything leaves: if this fails, nothing is
                // released and the reservation stays charged.
                if let Err(e) = settle(state, res, true).await {
                    if let Some(key) = &key {
                        engine.forget_release(key);
                    }
                    return Err(e);
                }
                if let Some(key) = key
                    && let Some(table) = engine.cached_release(&key)
                {
                    store_release(state, caller, engine, &key, &table, &draft.request_id).await;
                }
            }
            record(draft, &r.table, r.cells);
            Ok(r.table)
        }
        (Err(e), None) => Err(e.into()),
        (Err(e), Some((res, key))) => {
            // The charge follows the noise, not the answer: once protection
            // has drawn noise (the engine holds the release), a failure
            // after it (a post-plan that cannot be evaluated on the
            // released values, a timeout) keeps the charge, and the
            // release is stored like any other so that the repeat is free
            // because it was paid for.
            let drawn = key
                .as_deref()
                .and_then(|k| engine.cached_release(k).map(|t| (k.to_string(), t)));
            match drawn {
                Some((key, table)) => {
                    if let Err(e) = settle(state, res, true).await {
                        engine.forget_release(&key);
                        return Err(e);
                    }
                    store_release(state, caller, engine, &key, &table, &draft.request_id).await;
                    draft.privacy_loss = table.charge_now().map(|c| c.value());
                }
                None => settle(state, res, false).await?,
            }
            Err(e.into())
        }
    }
}

/// Keeps a committed DP release in the state database for repeats after a
/// restart. A failure here only means a later repeat is charged again.
async fn store_release(
    state: &Shared,
    caller: &Caller,
    engine: &Engine,
    key: &str,
    table: &ProtectedTable,
    request_id: &str,
) {
    let Ok(bytes) = table.to_bytes() else {
        eprintln!("agregat: request {request_id}: release not stored for repeats");
        return;
    };
    let store = Arc::clone(&state.store);
    let durable = durable_release_key(engine, key);
    let (a, snap) = (
        caller.pks.id().to_string(),
        engine.snapshot().id().to_string(),
    );
    let put =
        tokio::task::spawn_blocking(move || store.release_put(&durable, &a, &snap, &bytes)).await;
    if !matches!(put, Ok(Ok(()))) {
        eprintln!("agregat: request {request_id}: release not stored for repeats");
    }
}

async fn settle(state: &Shared, r: Reservation, commit: bool) -> Result<(), ApiError> {
    let store = Arc::clone(&state.store);
    tokio::task::spawn_blocking(move || {
        if commit {
            store.commit(&r)
        } else {
            store.release(&r)
        }
    })
    .await
    .map_err(|e| ApiError::internal("budget ledger", e))??;
    Ok(())
}

fn record(draft: &mut Draft, table: &ProtectedTable, cells: usize) {
    let m = table.metadata();
    draft.cells = cells as u64;
    draft.suppressed_cells = (m.primary_suppressed + m.secondary_suppressed) as u64;
    draft.privacy_loss = table.charge_now().map(|c| c.value());
}

/// Encodes a release in the negotiated format.
/// Media type and file extension of a format.
fn media(format: Format) -> (&'static str, &'static str) {
    match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Parquet => (PARQUET, "parquet"),
        Format::Json | Format::Table => ("application/json", "json"),
    }
}

/// The download response for released bytes.
fn release_response(
    body: axum::body::Bytes,
    format: Format,
    protection: Option<&str>,
    request_id: &str,
) -> Response {
    let (ctype, ext) = media(format);
    let mut resp = ([(header::CONTENT_TYPE, ctype)], body).into_response();
    let h = resp.headers_mut();
    if format != Format::Json
        && let Ok(v) = HeaderValue::from_str(&format!(
            "attachment; filename=\"agregat-{request_id}.{ext}\""
        ))
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(v) = protection.and_then(|p| HeaderValue::from_str(p).ok()) {
        h.insert("x-agregat-protection", v);
    }
    resp
}

/// JSON with every non-ASCII character escaped (`\u00b1`), so that it is a
/// valid header value: CSV downloads carry the protection metadata in the
/// `X-Agregat-Protection` header.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Answers one SQL question: from the response cache (cell-key repeats)
/// or through [`release`], then encodes it.
async fn answer(
    state: &Shared,
    caller: &Caller,
    engine: &Engine,
    sql: &str,
    format: Format,
    draft: &mut Draft,
) -> Result<Response, ApiError> {
    let cacheable = matches!(
        caller.pks.agreement.protection.method,
        Method::CellKey { .. }
    );
    let key = ResponseCache::key(
        state.policy().content_sha256(),
        caller.pks.id(),
        engine.snapshot().id(),
        format,
        sql,
    );
    if cacheable && let Some(hit) = state.responses.get(&key) {
        draft.snapshot = Some(hit.snapshot.clone());
        draft.plan_fingerprint = hit.plan_fingerprint.clone();
        draft.elements = hit.elements.clone();
        draft.cells = hit.cells;
        draft.suppressed_cells = hit.suppressed_cells;
        draft.bytes_out = hit.body.len() as u64;
        draft.result_hash = Some(hit.body_sha256.clone());
        return Ok(release_response(
            hit.body.clone(),
            format,
            hit.protection.as_deref(),
            &draft.request_id,
        ));
    }
    let mut table = release(state, caller, engine, sql, draft).await?;
    if let Some(b) = budget_after(state, caller).await? {
        table = table.with_budget(b);
    }
    let bytes = output::encode(&table, format).map_err(|e| ApiError::internal("encoding", e))?;
    draft.released(&bytes);
    let protection = serde_json::to_string(table.metadata())
        .ok()
        .map(|j| ascii_json(&j));
    let body = axum::body::Bytes::from(bytes);
    if cacheable {
        state.responses.put(
            key,
            CachedRelease {
                body: body.clone(),
                body_sha256: draft.result_hash.clone().unwrap_or_default(),
                protection: protection.clone(),
                cells: draft.cells,
                suppressed_cells: draft.suppressed_cells,
                plan_fingerprint: draft.plan_fingerprint.clone(),
                elements: draft.elements.clone(),
                snapshot: engine.snapshot().id().to_string(),
            },
        );
    }
    Ok(release_response(
        body,
        format,
        protection.as_deref(),
        &draft.request_id,
    ))
}

fn client(addr: &ClientAddr) -> Option<String> {
    addr.0.clone()
}

// -------------------------------------------------------------- handlers

/// Run an aggregate SQL query and download the protected result.
#[utoipa::path(
    post, path = "/v1/query", tag = "query",
    request_body = QueryRequest,
    params(("format" = Option<OutputFormat>, Query, description = "json | csv | parquet; otherwise the Accept header decides (application/json, text/csv, application/vnd.apache.parquet)")),
    responses(
        (status = 200, description = "The protected table", content(
            (ReleaseJson = "application/json"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.parquet"))),
        AccessRefusals,
        QueryRefusals,
    ),
    security(("bearer" = []))
)]
async fn query(
    State(state): State<Shared>,
    Extension(creds): Extension<Credentials>,
    Extension(addr): Extension<ClientAddr>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut draft = Draft::begin(&state, "/v1/query", "/v1/query", client(&addr));
    let result = async {
        let caller = admit(&state, &creds, &mut draft)?;
        let format = negotiate(raw.as_deref(), &headers)?;
        let bytes = read_body(body, state.config.limits.max_body_bytes).await?;
        let req: QueryRequest = parse_json(
            &bytes,
            r#"{"sql": "SELECT kode_kec, COUNT(*) FROM penduduk GROUP BY 1"}"#,
        )?;
        draft.sql = Some(req.sql.clone());
        let engine = choose_snapshot(&state, &caller, req.snapshot.as_deref())?;
        answer(&state, &caller, &engine, &req.sql, format, &mut draft).await
    }
    .await;
    audit::finish(&state, draft, result).await
}

/// Dry run: validate a query and report its cells, method, charge and
/// margin of error, without running it and without charging.
#[utoipa::path(
    post, path = "/v1/query/cost", tag = "query",
    request_body = QueryRequest,
    responses(
        (status = 200, description = "What the query would cost", body = CostResponse),
        AccessRefusals,
        QueryRefusals,
    ),
    security(("bearer" = []))
)]
async fn query_cost(
    State(state): State<Shared>,
    Extension(creds): Extension<Credentials>,
    Extension(addr): Extension<ClientAddr>,
    body: Body,
) -> Response {
    let mut draft = Draft::begin(&state, "/v1/query/cost", "/v1/query/cost", client(&addr));
    let result = async {
        let caller = admit(&state, &creds, &mut draft)?;
        let bytes = read_body(body, state.config.limits.max_body_bytes).await?;
        let req: QueryRequest = parse_json(
            &bytes,
            r#"{"sql": "SELECT kode_kec, COUNT(*) FROM penduduk GROUP BY 1"}"#,
        )?;
        draft.sql = Some(req.sql.clone());
        let engine = choose_snapshot(&state, &caller, req.snapshot.as_deref())?;
        let agreement = &caller.pks.agreement;
        let validated = validate(&engine, &caller, &req.sql, &mut draft).await?;
        let cells = grid_cells(&engine, agreement, &validated).await?;
        draft.cells = cells as u64;
        check_cells(cells, agreement)?;
        check_aggregates(&agreement.protection.method, &validated.aggregates)?;
        let names = aggregate_names(&validated);
        let mut resp = CostResponse {
            snapshot: engine.snapshot().id().to_string(),
            cells,
            max_cells: agreement.limits.max_cells,
            dimensions: validated.group_keys.len(),
            method: String::new(),
            k: 0,
            elements: draft.elements.clone(),
            plan_fingerprint: draft.plan_fingerprint.clone().unwrap_or_default(),
            max_perturbation: None,
            measure: None,
            charge: None,
            margin_of_error_95: None,
            would_reuse: false,
            budget: None,
        };
        match &agreement.protection.method {
            Method::CellKey { ptable, k } => {
                resp.method = "cell_key".into();
                resp.k = *k;
                resp.max_perturbation = Some(ptable.perturbation_bound());
            }
            Method::Dp { budget, k } => {
                let cost = dp_cost(*budget, &validated.aggregates, validated.grouping_sets, *k)
                    .map_err(|e| ApiError::internal("privacy cost", e))?;
                let reuse =
                    dp_release_known(&state, &engine, agreement, &validated, &draft.request_id)
                        .await?;
                resp.method = "dp".into();
                resp.k = *k;
                resp.measure = Some(budget.parameter().into());
                resp.charge = Some(if reuse { 0.0 } else { cost.charge.value() });
                resp.would_reuse = reuse;
                resp.margin_of_error_95 = Some(
                    names
                        .iter()
                        .zip(&cost.columns)
                        .map(|(n, c)| (n.clone(), Value::from(c.margin_of_error_95)))
                        .collect(),
                );
                resp.budget = Some(budget_status(&state, &caller).await?);
            }
        }
        json_response(&resp)
    }
    .await;
    audit::finish(&state, draft, result).await
}

/// The output names of the aggregate columns: the alias the query gave
/// each aggregate (`COUNT(*) AS n` is `n`), else the aggregate's own name.
fn aggregate_names(v: &ValidatedPlan) -> Vec<String> {
    v.aggregate_names()
}

/// DP: the budget after a release, for its metadata.
async fn budget_after(state: &Shared, caller: &Caller) -> Result<Option<BudgetInfo>, ApiError> {
    if !matches!(caller.pks.agreement.protection.method, Method::Dp { .. }) {
        return Ok(None);
    }
    let b = budget_status(state, caller).await?;
    Ok(Some(BudgetInfo {
        period: b.period,
        measure: b.measure.unwrap_or_default(),
        allowance: b.allowance.unwrap_or(0.0),
        spent: b.spent.unwrap_or(0.0),
        remaining: b.remaining.unwrap_or(0.0),
    }))
}

async fn budget_status(state: &Shared, caller: &Caller) -> Result<BudgetResponse, ApiError> {
    let period = period_of(state.clock.today());
    let id = caller.pks.id().to_string();
    match &caller.pks.agreement.protection.method {
        Method::CellKey { .. } => Ok(BudgetResponse {
            agreement: id,
            method: "cell_key".into(),
            period,
            measure: None,
            allowance: None,
            spent: None,
            remaining: None,
            per_query: None,
            queries_left: None,
            lifetime: None,
            margins: state
                .snapshots()
                .iter()
                .flat_map(|(snap, engine)| {
                    engine
                        .margin_state(&caller.pks.agreement, 20)
                        .into_iter()
                        .map(|m| MarginRow {
                            snapshot: snap.clone(),
                            margin: m.margin,
                            breakdowns: m.breakdowns,
                            standard_error: m.standard_error,
                            floor: crate::query::margins::SE_FLOOR,
                        })
                })
                .collect(),
            note: "cell-key perturbation spends no budget: the same cell always gets the same noise, so repeating a question reveals nothing new; a margin re-estimated by many different breakdowns could be averaged, so each margin's breakdowns are remembered and a new one is refused once their average would be known to within the floor".into(),
        }),
        Method::Dp { budget, .. } => {
            let store = Arc::clone(&state.store);
            let (a, p) = (id.clone(), period.clone());
            let spent = tokio::task::spawn_blocking(move || store.spent(&a, &p))
                .await
                .map_err(|e| ApiError::internal("budget ledger", e))??;
            let store = Arc::clone(&state.store);
            let lifetime_spent = tokio::task::spawn_blocking(move || store.lifetime_spent())
                .await
                .map_err(|e| ApiError::internal("budget ledger", e))??;
            let ceiling = state.config.limits.lifetime_privacy_loss;
            let allowance = caller.pks.budget_per_period.unwrap_or(0.0);
            let remaining = (allowance - spent)
                .min(ceiling - lifetime_spent)
                .max(0.0);
            let per_query = budget.value();
            Ok(BudgetResponse {
                agreement: id,
                method: "dp".into(),
                period,
                measure: Some(budget.parameter().into()),
                allowance: Some(allowance),
                spent: Some(spent),
                remaining: Some(remaining),
                per_query: Some(per_query),
                queries_left: Some(((remaining + crate::state::BUDGET_TOLERANCE) / per_query).floor() as u64),
                lifetime: Some(LifetimeBudget {
                    ceiling,
                    spent: lifetime_spent,
                    remaining: (ceiling - lifetime_spent).max(0.0),
                }),
                margins: Vec::new(),
                note: "each new question charges the per-query budget; repeating an identical question returns the same release at no charge; the budget renews each six-month period".into(),
            })
        }
    }
}

/// The shape of the information endpoints: open the audit draft, admit
/// the caller, answer, append the audit entry.
async fn informed(
    state: &Shared,
    route: &'static str,
    creds: &Credentials,
    addr: &ClientAddr,
    answer: impl AsyncFnOnce(&Caller) -> Result<Response, ApiError>,
) -> Response {
    let mut draft = Draft::begin(state, route, route, client(addr));
    let result = match admit(state, creds, &mut draft) {
        Ok(caller) => answer(&caller).await,
        Err(e) => Err(e),
    };
    audit::finish(state, draft, result).await
}

/// The saved queries this agreement may run, with their parameters.
#[utoipa::path(
    get, path = "/v1/queries", tag = "saved",
    responses(
        (status = 200, description = "Saved queries", body = Vec<SavedQueryInfo>),
        AccessRefusals,
    ),
    security(("bearer" = []))
)]
async fn list_queries(
    State(state): State<Shared>,
    Extension(creds): Extension<Credentials>,
    Extension(addr): Extension<ClientAddr>,
) -> Response {
    informed(&state, "/v1/queries", &creds, &addr, async |caller| {
        let list: Vec<SavedQueryInfo> = state
            .saved
            .iter()
            .filter(|q| missing_elements(caller, &q.elements).is_empty())
            .map(|q| SavedQueryInfo {
                name: q.name.clone(),
                title: q.title.clone(),
                description: q.description.clone(),
                elements: q.elements.clone(),
                params: serde_json::to_value(&q.params).unwrap_or(Value::Null),
            })
            .collect();
        json_response(&list)
    })
    .await
}

fn missing_elements(caller: &Caller, elements: &[String]) -> Vec<String> {
    let a = &caller.pks.agreement;
    elements
        .iter()
        .filter(|e| {
            !a.permits(e)
                || catalog::column(e).is_some_and(|c| {
                    c.needs_minister_permission() && !a.minister_permission.contains(*e)
                })
        })
        .cloned()
        .collect()
}

/// Run a saved query with JSON parameters (`{}` for the defaults).
#[utoipa::path(
    post, path = "/v1/queries/{name}", tag = "saved",
    params(
        ("name" = String, Path, description = "Saved query name, e.g. usia_sekolah"),
        ("format" = Option<OutputFormat>, Query, description = "json | csv | parquet"),
    ),
    request_body(content = Object, description = "Parameters by name, e.g. {\"tahun_ajaran\": 2026}"),
    responses(
        (status = 200, description = "The protected table", content(
            (ReleaseJson = "application/json"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.parquet"))),
        AccessRefusals,
        QueryRefusals,
    ),
    security(("bearer" = []))
)]
async fn run_saved(
    State(state): State<Shared>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    Extension(creds): Extension<Credentials>,
    Extension(addr): Extension<ClientAddr>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // A name that is not UTF-8 is the caller's mistake: a problem
    // document and an audit entry like any other.
    let name = name.map(|Path(n)| n).map_err(|e| {
        ApiError::bad_request(
            "bad_path",
            format!(
                "{e}; saved query names are ASCII, e.g. usia_sekolah (GET /v1/queries lists them)"
            ),
        )
    });
    let shown: String = name.as_deref().unwrap_or("?").chars().take(64).collect();
    let mut draft = Draft::begin(
        &state,
        "/v1/queries/{name}",
        format!("/v1/queries/{shown}"),
        client(&addr),
    );
    let result = async {
        let caller = admit(&state, &creds, &mut draft)?;
        let name = name?;
        let format = negotiate(raw.as_deref(), &headers)?;
        let bytes = read_body(body, state.config.limits.max_body_bytes).await?;
        let params: Map<String, Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            parse_json(&bytes, r#"{"tahun_ajaran": 2026}"#)?
        };
        let saved = state.saved.require(&name)?;
        let missing = missing_elements(&caller, &saved.elements);
        if !missing.is_empty() {
            return Err(ApiError::SavedQueryNotPermitted {
                name: saved.name.clone(),
                missing: missing.join(", "),
            });
        }
        let sql = saved.render(&params)?;
        draft.sql = Some(sql.clone());
        let engine = choose_snapshot(&state, &caller, None)?;
        answer(&state, &caller, &engine, &sql, format, &mut draft).await
    }
    .await;
    audit::finish(&state, draft, result).await
}

/// The elements, code lists and regions visible to the caller.
#[utoipa::path(
    get, path = "/v1/catalog", tag = "info",
    responses(
        (status = 200, description = "Catalog", body = CatalogResponse),
        AccessRefusals,
    ),
    security(("bearer" = []))
)]
async fn get_catalog(
    State(state): State<Shared>,
    Extension(creds): Extension<Credentials>,
    Extension(addr): Extension<ClientAddr>,
) -> Response {
    informed(&state, "/v1/catalog", &creds, &addr, async |caller| {
        let a = &caller.pks.agreement;
        let elements = catalog::table_columns()
            .filter(|c| a.permits(c.name))
            .map(|c| ElementInfo {
                name: c.name.into(),
                element: c.element.into(),
                class: format!("{:?}", c.class),
                ty: format!("{:?}", c.ty).to_lowercase(),
                values: match c.domain {
                    Domain::CodeList { list } => catalog::code_list(list)
                        .map(|l| l.labels().map(str::to_string).collect()),
                    _ => None,
                },
                region_level: match c.domain {
                    Domain::Region { level } => Some(level.label().to_string()),
                    _ => None,
                },
                minister_permission: c.needs_minister_permission(),
                usage: match c.class {
                    ColumnClass::Identifier | ColumnClass::FreeText => {
                        "identifier: only COUNT(DISTINCT no_kk) for households; never output, grouped or filtered".into()
                    }
                    ColumnClass::DateDimension => {
                        "date: only through umur(), umur_pada(d, DATE 'YYYY-MM-01'), kelompok_umur() and tahun()".into()
                    }
                    ColumnClass::Protected => {
                        "protected (Pasal 84): group and filter, with the Minister's permission".into()
                    }
                    _ => "dimension: group by and filter".into(),
                },
            })
            .collect();
        let mut seen = BTreeSet::new();
        let regions = match &a.scope {
            RegionScope::All => Vec::new(),
            RegionScope::Prefixes(ps) => ps
                .iter()
                .flat_map(|p| {
                    catalog::regions()
                        .get(p)
                        .into_iter()
                        .chain(catalog::regions().under(p).iter())
                })
                .filter(|r| seen.insert(r.kode.clone()))
                .map(|r| RegionInfo {
                    kode: r.kode.clone(),
                    nama: r.nama.clone(),
                    level: r.level.label().to_string(),
                })
                .collect(),
        };
        json_response(&CatalogResponse {
            agreement: caller.pks.id().to_string(),
            institution: caller.pks.institution.clone(),
            stage: caller.pks.stage.to_string(),
            region_scope: match &a.scope {
                RegionScope::All => vec!["all".into()],
                RegionScope::Prefixes(p) => p.clone(),
            },
            elements,
            regions,
            reference_tables: crate::query::engine::REFERENCE_TABLES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            functions: ["umur", "umur_pada", "kelompok_umur", "tahun"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        })
    })
    .await
}

/// Snapshots this agreement may query (its stage and region).
#[utoipa::path(
    get, path = "/v1/snapshots", tag = "info",
    responses(
        (status = 200, description = "Snapshots, newest first", body = Vec<SnapshotInfo>),
        AccessRefusals,
    ),
    security(("bearer" = []))
)]
async fn list_snapshots(
    State(state): State<Shared>,
    Extension(creds): Extension<Credentials>,
    Extension(addr): Extension<ClientAddr>,
) -> Response {
    informed(&state, "/v1/snapshots", &creds, &addr, async |caller| {
        let list: Vec<SnapshotInfo> = visible_snapshots(&state, caller)
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let m = &e.snapshot().manifest;
                SnapshotInfo {
                    id: m.id.clone(),
                    tanggal_data: m.tanggal_data.to_string(),
                    synthetic: m.synthetic,
                    coverage: m.coverage.clone(),
                    default: i == 0,
                }
            })
            .collect();
        json_response(&list)
    })
    .await
}

/// The privacy budget spent and left in the current six-month period.
#[utoipa::path(
    get, path = "/v1/budget", tag = "info",
    responses(
        (status = 200, description = "Budget", body = BudgetResponse),
        AccessRefusals,
    ),
    security(("bearer" = []))
)]
async fn get_budget(
    State(state): State<Shared>,
    Extension(creds): Extension<Credentials>,
    Extension(addr): Extension<ClientAddr>,
) -> Response {
    informed(&state, "/v1/budget", &creds, &addr, async |caller| {
        json_response(&budget_status(&state, caller).await?)
    })
    .await
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: snapshots open, policy loaded, state database answering.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Ready", body = String),
    (status = 503, description = "Not ready", body = Problem, content_type = "application/problem+json"),
))]
async fn readyz(State(state): State<Shared>) -> Response {
    let store = Arc::clone(&state.store);
    let ok = tokio::task::spawn_blocking(move || store.spent("-", "2000-S1"))
        .await
        .is_ok_and(|r| r.is_ok());
    if let Some(reason) = super::disk::not_ready(&state) {
        return super::conn::problem_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "disk_low",
            reason,
            "readyz",
        );
    }
    if ok && !state.snapshots().is_empty() && state.policy().agreements().next().is_some() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        ApiError::Unavailable.into_response_for("readyz")
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4")))]
async fn metrics(State(state): State<Shared>) -> Response {
    // Operational figures only: no figure per agreement (its budget, its
    // refusals) on the service's port. The data owner reads those in the
    // monitoring report (`agregat audit report`).
    let store = Arc::clone(&state.store);
    let lifetime = tokio::task::spawn_blocking(move || store.lifetime_spent().ok())
        .await
        .ok()
        .flatten();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state
            .metrics
            .render(lifetime, state.config.limits.lifetime_privacy_loss),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
async fn openapi() -> Response {
    match ApiDoc::openapi().to_pretty_json() {
        Ok(s) => ([(header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => ApiError::internal("OpenAPI", e).into_response_for("openapi"),
    }
}

async fn fallback(
    State(state): State<Shared>,
    Extension(addr): Extension<ClientAddr>,
    req: Request,
) -> Response {
    let path: String = req.uri().path().chars().take(200).collect();
    let err = ApiError::NotFound { path: path.clone() };
    if path.starts_with("/v1") {
        let draft = Draft::begin(&state, "unmatched", path, client(&addr));
        audit::finish(&state, draft, Err(err)).await
    } else {
        state.metrics.observe(
            "unmatched",
            404,
            Some("not_found"),
            std::time::Duration::ZERO,
        );
        err.into_response_for("-")
    }
}

async fn method_not_allowed(
    State(state): State<Shared>,
    Extension(addr): Extension<ClientAddr>,
    req: Request,
) -> Response {
    let path: String = req.uri().path().chars().take(200).collect();
    let err = ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        path: path.clone(),
    };
    if path.starts_with("/v1") {
        let draft = Draft::begin(&state, "unmatched", path, client(&addr));
        audit::finish(&state, draft, Err(err)).await
    } else {
        err.into_response_for("-")
    }
}
