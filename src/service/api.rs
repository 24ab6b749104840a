//! The `/v1` endpoints and the operational ones (`/healthz`, `/readyz`,
//! `/metrics`, `/openapi.json`).
//!
//! Routes and the OpenAPI document are generated from one table (the
//! `api!` invocation below), and each handler carries its own
//! `#[utoipa::path]` annotation, so the published spec cannot drift from
//! what is served (a test compares them).
//!
//! Owns: HTTP only: routes, content negotiation, bodies, the response
//! cache of cell-key downloads, and the DTOs of the wire format. What is
//! released comes from [`crate::release`]; who may ask, from
//! [`crate::agreement`].
//!
//! Every `/v1` handler has the same shape: it takes an
//! [`Admitted`] caller with the request's open [`AuditToken`], runs the
//! request in an inner block returning `Result<Response, ApiError>`, and
//! ends in [`AuditToken::finish`], which writes the audit entry before the
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

use super::audit::AuditToken;
use super::auth::Caller;
use super::cache::{CachedRelease, ResponseCache};
use super::extract::Admitted;
use super::problem::{ApiError, Problem};
use super::{AppState, ClientAddr};
use crate::agreement::Stage;
use crate::catalog::{self, ColumnClass, Domain, RegionScope};
use crate::output::{self, Format};
use crate::protect::{BudgetInfo, ProtectedTable};
use crate::query::Engine;
use crate::release::{Ask, Facts};
use crate::state::period_of;

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
    /// `application/json`: columns, rows and protection metadata.
    Json,
    /// `text/csv`, protection metadata in `X-Agregat-Protection`.
    Csv,
    /// `application/vnd.apache.parquet`.
    Parquet,
}

/// A JSON release (the `format=json` body).
#[derive(Serialize, ToSchema)]
pub struct ReleaseJson {
    /// Column names of the released table, in the order of each row.
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
    /// The snapshot the query would run on.
    pub snapshot: String,
    /// Cells of the complete result grid.
    pub cells: usize,
    /// The agreement's limit on the cells of one result grid.
    pub max_cells: usize,
    /// Group-by dimensions of the query.
    pub dimensions: usize,
    /// `cell_key` or `dp`.
    pub method: String,
    /// Cells with a true (cell-key) or noisy (dp) count below k are withheld.
    pub k: u64,
    /// Catalog elements the query uses.
    pub elements: Vec<String>,
    /// SHA-256 of the canonical aggregate plan: equal for the same question
    /// however it is written.
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
    /// DP: whether the question was released before, so the earlier
    /// release would be returned again at no charge.
    pub would_reuse: bool,
    /// DP: the budget this period before the query.
    pub budget: Option<BudgetResponse>,
}

/// Privacy budget of the caller's agreement in the current period.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct BudgetResponse {
    /// The caller's agreement id.
    pub agreement: String,
    /// The agreement's protection method: `cell_key` or `dp`.
    pub method: String,
    /// `YEAR-S1` (Jan–Jun) or `YEAR-S2` (Jul–Dec).
    pub period: String,
    /// DP: `rho` (zCDP) or `epsilon` (pure DP).
    pub measure: Option<String>,
    /// DP: the agreement's allowance per period.
    pub allowance: Option<f64>,
    /// Committed plus pending charges.
    pub spent: Option<f64>,
    /// DP: what is left of the allowance, also capped by the lifetime
    /// ceiling.
    pub remaining: Option<f64>,
    /// DP: the charge of one fresh query.
    pub per_query: Option<f64>,
    /// Fresh queries at the per-query charge that still fit.
    pub queries_left: Option<u64>,
    /// DP: the per-person ceiling shared by every agreement in every
    /// period, and what all of them have charged against it.
    pub lifetime: Option<LifetimeBudget>,
    /// Cell-key: the released margins closest to the averaging floor, per
    /// snapshot (a new breakdown of a margin at the floor is refused).
    pub margins: Vec<MarginRow>,
    /// How the method spends budget, in words.
    pub note: String,
}

/// DP: the per-person lifetime privacy-loss ceiling and its use.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct LifetimeBudget {
    /// The ceiling (`lifetime_privacy_loss` of the service limits).
    pub ceiling: f64,
    /// Charged by all agreements in all periods.
    pub spent: f64,
    /// What is left under the ceiling (never below 0).
    pub remaining: f64,
}

/// Cell-key: how close one released margin is to the averaging floor.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct MarginRow {
    /// The snapshot the margin was released from.
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

/// A snapshot the agreement may query (`GET /v1/snapshots`).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SnapshotInfo {
    /// The snapshot id, as given in a request's `snapshot`.
    pub id: String,
    /// Reference date of the data (`YYYY-MM-DD`); ages are computed at it.
    pub tanggal_data: String,
    /// Whether the data are synthetic (for trial agreements).
    pub synthetic: bool,
    /// Region prefixes the snapshot covers (`["61.71"]`, or `["all"]`).
    pub coverage: Vec<String>,
    /// Used when a request names no snapshot.
    pub default: bool,
}

/// A saved query the agreement may run (`GET /v1/queries`).
#[derive(Serialize, ToSchema)]
pub struct SavedQueryInfo {
    /// The name to run it by: `POST /v1/queries/{name}`.
    pub name: String,
    /// A one-line title.
    pub title: String,
    /// What the query counts.
    pub description: String,
    /// Catalog elements the query uses (all permitted by the agreement).
    pub elements: Vec<String>,
    /// Typed parameters with defaults and accepted values.
    #[schema(value_type = Vec<Object>)]
    pub params: Value,
}

/// One catalog element the agreement permits.
#[derive(Serialize, ToSchema)]
pub struct ElementInfo {
    /// The column name in SQL (e.g. `jenis_kelamin`).
    pub name: String,
    /// Letter of Pasal 58 ayat (2).
    pub element: String,
    /// The column class (`Dimension`, `DateDimension`, `Protected`,
    /// `Identifier`, ...), which decides how it may be used.
    pub class: String,
    /// The stored type: `utf8`, `date32` or `uint64`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Public values (code list labels), where the domain is a code list.
    pub values: Option<Vec<String>>,
    /// `provinsi` … `desa_kelurahan` for region codes.
    pub region_level: Option<String>,
    /// Whether grouping or filtering by it needs the Minister's permission
    /// in the agreement (Pasal 84 protected elements).
    pub minister_permission: bool,
    /// How the element may be used in SQL.
    pub usage: String,
}

/// One region of the agreement's scope.
#[derive(Serialize, ToSchema)]
pub struct RegionInfo {
    /// The Kemendagri region code (e.g. `61.71`).
    pub kode: String,
    /// The region's name.
    pub nama: String,
    /// Its level: `provinsi` … `desa_kelurahan`.
    pub level: String,
}

/// The catalog as the caller's agreement sees it (`GET /v1/catalog`).
#[derive(Serialize, ToSchema)]
pub struct CatalogResponse {
    /// The caller's agreement id.
    pub agreement: String,
    /// The institution the agreement (PKS) was made with.
    pub institution: String,
    /// The agreement's stage: `trial` or `production`.
    pub stage: String,
    /// Region code prefixes the agreement covers, or `["all"]`.
    pub region_scope: Vec<String>,
    /// The elements the agreement permits.
    pub elements: Vec<ElementInfo>,
    /// The regions in the agreement's scope (and the regions under them);
    /// empty when the scope is all of Indonesia.
    pub regions: Vec<RegionInfo>,
    /// Public reference tables a query may join.
    pub reference_tables: Vec<String>,
    /// The date functions a query may call (`umur`, `umur_pada`,
    /// `kelompok_umur`, `tahun`).
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
            ApiError::PayloadTooLarge { limit }
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

/// Snapshots the caller's agreement may query (stage and region rules),
/// newest first.
fn visible_snapshots<'a>(state: &'a AppState, caller: &Caller) -> Vec<&'a Arc<Engine>> {
    let mut v: Vec<&Arc<Engine>> = state
        .snapshots()
        .values()
        .filter(|e| {
            let s = e.snapshot();
            caller.pks.sees(s.manifest.synthetic, &s.coverage())
        })
        .collect();
    v.sort_by(|a, b| {
        let (ma, mb) = (&a.snapshot().manifest, &b.snapshot().manifest);
        mb.tanggal_data
            .cmp(&ma.tanggal_data)
            .then(mb.id.cmp(&ma.id))
    });
    v
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
            let s = engine.snapshot();
            caller
                .pks
                .check_snapshot(id, s.manifest.synthetic, &s.coverage())?;
            Ok(Arc::clone(engine))
        }
    }
}

/// The pipeline's question for this caller.
fn ask<'a>(caller: &'a Caller, engine: &'a Engine, sql: &'a str, request_id: &'a str) -> Ask<'a> {
    Ask {
        engine,
        agreement: &caller.pks.agreement,
        allowance: caller.pks.budget_per_period,
        sql,
        request_id,
    }
}

/// Releases one question through the pipeline, within a query slot; the
/// audit draft gets the release's facts whatever the outcome.
async fn release(
    state: &Shared,
    caller: &Caller,
    engine: &Engine,
    sql: &str,
    audit: &mut AuditToken,
) -> Result<ProtectedTable, ApiError> {
    let _slot = state
        .query_slots
        .acquire()
        .await
        .map_err(|_| ApiError::Unavailable)?;
    let request_id = audit.request_id().to_string();
    let mut facts = Facts::default();
    let result = state
        .pipeline
        .run(&ask(caller, engine, sql, &request_id), &mut facts)
        .await;
    audit.release(&facts);
    Ok(result?.table)
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
    audit: &mut AuditToken,
) -> Result<Response, ApiError> {
    // Cell-key releases are deterministic: the encoded bytes are reused.
    // A DP repeat goes through the pipeline, which serves the same release.
    let cacheable = !caller.pks.agreement.protection().is_dp();
    let key = ResponseCache::key(
        state.policy().content_sha256(),
        caller.pks.id(),
        engine.snapshot().id(),
        format,
        sql,
    );
    if cacheable && let Some(hit) = state.responses.get(&key) {
        audit.cached(&hit.facts, hit.body.len(), &hit.body_sha256);
        return Ok(release_response(
            hit.body.clone(),
            format,
            hit.protection.as_deref(),
            audit.request_id(),
        ));
    }
    let mut table = release(state, caller, engine, sql, audit).await?;
    if let Some(b) = budget_after(state, caller).await? {
        table = table.with_budget(b);
    }
    let bytes = output::encode(&table, format).map_err(|e| ApiError::internal("encoding", e))?;
    audit.released(&bytes);
    let protection = serde_json::to_string(table.metadata())
        .ok()
        .map(|j| ascii_json(&j));
    let body = axum::body::Bytes::from(bytes);
    if cacheable {
        state.responses.put(
            key,
            CachedRelease {
                body: body.clone(),
                body_sha256: audit.result_hash().unwrap_or_default().to_string(),
                protection: protection.clone(),
                facts: audit.facts().clone(),
            },
        );
    }
    Ok(release_response(
        body,
        format,
        protection.as_deref(),
        audit.request_id(),
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
    Admitted { caller, mut audit }: Admitted,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let format = negotiate(raw.as_deref(), &headers)?;
        let bytes = read_body(body, state.config.limits.max_body_bytes).await?;
        let req: QueryRequest = parse_json(
            &bytes,
            r#"{"sql": "SELECT kode_kec, COUNT(*) FROM penduduk GROUP BY 1"}"#,
        )?;
        audit.sql(&req.sql);
        let engine = choose_snapshot(&state, &caller, req.snapshot.as_deref())?;
        answer(&state, &caller, &engine, &req.sql, format, &mut audit).await
    }
    .await;
    audit.finish(result).await
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
    Admitted { caller, mut audit }: Admitted,
    body: Body,
) -> Response {
    let result = async {
        let bytes = read_body(body, state.config.limits.max_body_bytes).await?;
        let req: QueryRequest = parse_json(
            &bytes,
            r#"{"sql": "SELECT kode_kec, COUNT(*) FROM penduduk GROUP BY 1"}"#,
        )?;
        audit.sql(&req.sql);
        let engine = choose_snapshot(&state, &caller, req.snapshot.as_deref())?;
        let request_id = audit.request_id().to_string();
        let mut facts = Facts::default();
        let cost = state
            .pipeline
            .cost(&ask(&caller, &engine, &req.sql, &request_id), &mut facts)
            .await;
        audit.release(&facts);
        let cost = cost?;
        let agreement = &caller.pks.agreement;
        let protection = agreement.protection();
        let names = cost.plan.aggregate_names();
        let resp = CostResponse {
            snapshot: engine.snapshot().id().to_string(),
            cells: cost.cells,
            max_cells: agreement.limits().max_cells,
            dimensions: cost.plan.group_keys().len(),
            method: protection.method_name().into(),
            k: protection.k(),
            elements: facts.elements.clone(),
            plan_fingerprint: facts.plan_fingerprint.clone().unwrap_or_default(),
            max_perturbation: protection.ptable().map(|p| p.perturbation_bound()),
            measure: protection.dp_budget().map(|b| b.parameter().into()),
            charge: cost.dp.as_ref().map(|c| {
                if cost.would_reuse {
                    0.0
                } else {
                    c.charge.value()
                }
            }),
            margin_of_error_95: cost.dp.as_ref().map(|c| {
                names
                    .iter()
                    .zip(&c.columns)
                    .map(|(n, c)| (n.clone(), Value::from(c.margin_of_error_95)))
                    .collect()
            }),
            would_reuse: cost.would_reuse,
            budget: match protection.is_dp() {
                true => Some(budget_status(&state, &caller).await?),
                false => None,
            },
        };
        json_response(&resp)
    }
    .await;
    audit.finish(result).await
}

/// DP: the budget after a release, for its metadata.
async fn budget_after(state: &Shared, caller: &Caller) -> Result<Option<BudgetInfo>, ApiError> {
    let view = state
        .pipeline
        .budget(&caller.pks.agreement, caller.pks.budget_per_period)
        .await?;
    Ok(view.map(|b| BudgetInfo {
        period: b.period,
        measure: b.measure.to_string(),
        allowance: b.allowance,
        spent: b.spent,
        remaining: b.remaining,
    }))
}

async fn budget_status(state: &Shared, caller: &Caller) -> Result<BudgetResponse, ApiError> {
    let id = caller.pks.id().to_string();
    let view = state
        .pipeline
        .budget(&caller.pks.agreement, caller.pks.budget_per_period)
        .await?;
    Ok(match view {
        None => BudgetResponse {
            agreement: id,
            method: caller.pks.agreement.protection().method_name().into(),
            period: period_of(state.clock.today()),
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
        },
        Some(b) => BudgetResponse {
            agreement: id,
            method: caller.pks.agreement.protection().method_name().into(),
            period: b.period,
            measure: Some(b.measure.into()),
            allowance: Some(b.allowance),
            spent: Some(b.spent),
            remaining: Some(b.remaining),
            per_query: Some(b.per_query),
            queries_left: Some(b.queries_left),
            lifetime: b.lifetime_ceiling.map(|ceiling| LifetimeBudget {
                ceiling,
                spent: b.lifetime_spent,
                remaining: (ceiling - b.lifetime_spent).max(0.0),
            }),
            margins: Vec::new(),
            note: "each new question charges the per-query budget; repeating an identical question returns the same release at no charge; the budget renews each six-month period".into(),
        },
    })
}

/// The shape of the information endpoints: answer the admitted caller,
/// then finish the audit entry.
async fn informed(
    admitted: Admitted,
    answer: impl AsyncFnOnce(&Caller) -> Result<Response, ApiError>,
) -> Response {
    let Admitted { caller, audit } = admitted;
    let result = answer(&caller).await;
    audit.finish(result).await
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
async fn list_queries(State(state): State<Shared>, admitted: Admitted) -> Response {
    informed(admitted, async |caller| {
        let list: Vec<SavedQueryInfo> = state
            .saved
            .iter()
            .filter(|q| {
                caller
                    .pks
                    .agreement
                    .missing_elements(&q.elements)
                    .is_empty()
            })
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
    Admitted { caller, mut audit }: Admitted,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
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
    let result = async {
        let name = name?;
        let format = negotiate(raw.as_deref(), &headers)?;
        let bytes = read_body(body, state.config.limits.max_body_bytes).await?;
        let params: Map<String, Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            parse_json(&bytes, r#"{"tahun_ajaran": 2026}"#)?
        };
        let saved = state.saved.require(&name)?;
        let missing = caller.pks.agreement.missing_elements(&saved.elements);
        if !missing.is_empty() {
            return Err(ApiError::SavedQueryNotPermitted {
                name: saved.name.clone(),
                missing: missing.join(", "),
            });
        }
        let sql = saved.render(&params)?;
        audit.sql(&sql);
        let engine = choose_snapshot(&state, &caller, None)?;
        answer(&state, &caller, &engine, &sql, format, &mut audit).await
    }
    .await;
    audit.finish(result).await
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
async fn get_catalog(admitted: Admitted) -> Response {
    informed(admitted, async |caller| {
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
        let regions = match &a.scope() {
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
            region_scope: match &a.scope() {
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
async fn list_snapshots(State(state): State<Shared>, admitted: Admitted) -> Response {
    informed(admitted, async |caller| {
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
async fn get_budget(State(state): State<Shared>, admitted: Admitted) -> Response {
    informed(admitted, async |caller| {
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
        AuditToken::begin(&state, "unmatched", path, client(&addr))
            .finish(Err(err))
            .await
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
        AuditToken::begin(&state, "unmatched", path, client(&addr))
            .finish(Err(err))
            .await
    } else {
        err.into_response_for("-")
    }
}
