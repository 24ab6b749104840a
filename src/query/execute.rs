//! Running a validated query: the aggregate under the agreement's scope, the
//! complete result grid, and the post-plan.
//!
//! The grid. Omitting empty groups would leak which groups are empty, so the
//! result lists every combination of the grouped values' public domains
//! within scope, with zero for empty cells. The grid is enumerated by
//! running the *same* aggregate plan over a small domain table that stands in
//! for `penduduk`: one row per combination of the public domains of the
//! columns the query uses (region rows at the finest level used within the
//! scope, code lists, and representative dates at every age and year
//! boundary). WHERE clauses, CASE expressions, joins with reference tables
//! and grouping sets therefore shape the grid exactly as they shape the
//! result, and no cross join over `penduduk` is ever made.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Datelike;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
    UInt32Array, UInt64Array, new_null_array,
};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, UInt64Type,
};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::MemTable;
use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::provider_as_source;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, TableScan, col, lit};

use super::engine::{Engine, PENDUDUK};
use super::error::{Code, EngineError, QueryError, RunError, clean_message};
use super::plan::sql_to_plan;
use super::udf::MAX_AGE;
use super::validate::{AggregateKind, ValidatedPlan, scope_predicate, validate};
use crate::agreement::Agreement;
use crate::calendar::{date_to_days, days_to_date};
use crate::catalog::{self, Domain, RegionLevel};
use crate::protect::{ProtectedTable, SUPPRESSION_COLUMN, TrueTable, protect};

/// Largest domain table built to enumerate a grid.
const MAX_DOMAIN_ROWS: u64 = 4_000_000;

/// The answer to a query (before protection in this version).
#[derive(Debug)]
pub struct QueryResult {
    /// The released table: protected values, HAVING/ORDER BY/LIMIT applied.
    pub table: ProtectedTable,
    /// Cells of the complete aggregate grid (before HAVING/LIMIT).
    pub cells: usize,
    /// The plan that was executed: validated, with the agreement's region
    /// scope applied.
    pub plan: ValidatedPlan,
    /// Result cells that fell outside the public grid and were dropped.
    /// For the operator's audit log only: never shown to the caller,
    /// because it depends on the data.
    pub outside_grid: usize,
}

impl QueryResult {
    /// Rows of the released table.
    pub fn num_rows(&self) -> usize {
        self.table.num_rows()
    }

    /// The executed plan (scope applied), indented, for logs and tests.
    pub fn plan_display(&self) -> String {
        self.plan.plan.display_indent().to_string()
    }
}

/// Runs `work` within the engine's and the agreement's timeout, whichever
/// is shorter; a query that takes longer is cancelled and refused.
pub async fn within_timeout<T>(
    engine: &Engine,
    agreement: &Agreement,
    work: impl std::future::Future<Output = Result<T, RunError>>,
) -> Result<T, RunError> {
    let timeout = engine.config().query_timeout.min(Duration::from_secs(
        agreement.limits().timeout_seconds.max(1),
    ));
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(QueryError::new(
            Code::QueryTimeout,
            format!(
                "the query did not finish within {} s; narrow the region or use fewer dimensions",
                timeout.as_secs()
            ),
        )
        .into()),
    }
}

/// Plans and validates a query without running it (dry run, benches).
pub async fn check_query(
    engine: &Engine,
    agreement: &Agreement,
    sql: &str,
) -> Result<ValidatedPlan, RunError> {
    let (validated, unique_checks) = plan_and_validate(engine, agreement, sql)?;
    for (ref_plan, keys) in unique_checks {
        check_unique(engine, ref_plan, keys).await?;
    }
    Ok(validated)
}

/// Stack of the thread that parses, plans and validates: hostile SQL is
/// refused by depth limits before any recursive walk of the plan, and this
/// is the margin behind those limits, whatever the caller's thread (a
/// tokio worker has 2 MiB).
const PLANNING_STACK: usize = 64 << 20;

/// Parses, plans and validates on a thread of its own with a large stack;
/// a deep plan is also dropped there.
fn plan_and_validate(
    engine: &Engine,
    agreement: &Agreement,
    sql: &str,
) -> Result<(ValidatedPlan, Vec<super::validate::UniqueCheck>), RunError> {
    std::thread::scope(|s| {
        let work = std::thread::Builder::new()
            .name("agregat-plan".into())
            .stack_size(PLANNING_STACK)
            .spawn_scoped(s, || -> Result<_, RunError> {
                let plan = futures::executor::block_on(sql_to_plan(
                    engine,
                    sql,
                    agreement.limits().max_sql_bytes,
                ))?;
                let validated = validate(&plan, agreement, engine.as_of_days())?;
                super::total::check(engine, validated.0.plan())?;
                Ok(validated)
            });
        match work {
            Ok(handle) => handle.join().unwrap_or_else(|_| {
                Err(RunError::Engine(EngineError::DataFusion(
                    datafusion::error::DataFusionError::Internal(
                        "the planning thread failed".into(),
                    ),
                )))
            }),
            Err(e) => Err(RunError::Engine(EngineError::DataFusion(
                datafusion::error::DataFusionError::External(Box::new(e)),
            ))),
        }
    })
}

/// SHA-256 of the canonical aggregate plan (scope applied): equal for the
/// same question however it is written. For the audit log.
pub fn plan_fingerprint(validated: &ValidatedPlan) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(
        validated
            .aggregate()
            .display_indent()
            .to_string()
            .as_bytes(),
    ))
}

/// Refuses a result grid larger than the agreement allows.
pub fn check_cells(cells: usize, agreement: &Agreement) -> Result<(), QueryError> {
    if cells > agreement.limits().max_cells {
        return Err(QueryError::new(
            Code::TooManyCells,
            format!(
                "the result grid has {cells} cells; this agreement allows at most {}; use coarser dimensions (kecamatan instead of kelurahan, 5-year age groups instead of single years)",
                agreement.limits().max_cells
            ),
        ));
    }
    Ok(())
}

/// Cells of the complete result grid of a validated plan. The grid is
/// built from public value domains only, so this reads no personal data
/// (the dry-run cost endpoint uses it).
pub async fn grid_cells(
    engine: &Engine,
    agreement: &Agreement,
    validated: &ValidatedPlan,
) -> Result<usize, RunError> {
    Ok(grid(engine, validated, agreement).await?.num_rows())
}

/// What execution produced: the protected table (before the post-plan),
/// the cells of the complete grid, and the result cells that fell outside
/// the public grid (for the operator's log only).
#[derive(Debug)]
pub struct Executed {
    /// The released values; nothing unprotected leaves execution.
    pub table: ProtectedTable,
    /// Cells of the complete aggregate grid.
    pub cells: usize,
    /// Result cells outside the public grid, dropped (never shown to the
    /// caller: it depends on the data).
    pub outside_grid: usize,
}

/// Runs a validated plan: the grid, the cell limit, the margin memory
/// (cell-key tables), the aggregate over `penduduk` with the scope, the
/// completion of the grid, and protection. The post-plan is not applied
/// ([`post_plan`]): the release pipeline keeps the protected table between
/// the two (a DP release is committed and cached there).
pub async fn execute(
    engine: &Engine,
    agreement: &Agreement,
    validated: &ValidatedPlan,
) -> Result<Executed, RunError> {
    let grid = grid(engine, validated, agreement).await?;
    check_cells(grid.num_rows(), agreement)?;
    // Cell-key: a table that would let averaging pin one of its margins is
    // refused before any personal data is read.
    if let Some(spec) = validated.table() {
        let restricted = restrictions(engine, validated, spec, agreement).await?;
        let estimates = margin_estimates(spec, &restricted, &grid);
        engine.margins().admit(
            agreement.id(),
            agreement.protection().noise_variance(),
            &estimates,
        )?;
    }
    let aggregate = match agreement.protection().ptable() {
        Some(ptable) => with_cell_keys(validated, ptable.key_range(), agreement.scope())?,
        None => with_avg_parts(validated)?,
    };
    let found = collect(engine, aggregate).await?;
    let (table, outside_grid) = complete(&grid, &found, validated)?;
    let cells = table.num_rows();
    let snapshot = engine.snapshot();
    // Protection: from here on only released values exist.
    let protected = protect(
        TrueTable {
            batch: &table,
            key_columns: key_columns(validated, &grid),
            aggregates: validated.aggregates(),
            grouping_sets: validated.grouping_sets(),
            grouping_id: validated.has_grouping_id(),
            output_names: validated.aggregate_names(),
            holding: holds_households(validated),
            snapshot: snapshot.id().to_string(),
            tanggal_data: snapshot.manifest.tanggal_data.to_string(),
        },
        agreement.protection(),
    )?;
    Ok(Executed {
        table: protected,
        cells,
        outside_grid,
    })
}

async fn collect(engine: &Engine, plan: LogicalPlan) -> Result<RecordBatch, RunError> {
    let df = engine
        .context()
        .execute_logical_plan(plan)
        .await
        .map_err(map_df)?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let task = Arc::new(df.task_ctx());
    // Planning reads no data: a failure here is the query's shape (the
    // gate checked its types), never the data's, so it is the caller's.
    let physical = df.create_physical_plan().await.map_err(|e| {
        RunError::from(QueryError::new(
            Code::PlanError,
            format!(
                "the query engine cannot plan this query: {}; write the expression more simply",
                clean_message(&e)
            ),
        ))
    })?;
    let batches = datafusion::physical_plan::collect(physical, task)
        .await
        .map_err(map_df)?;
    Ok(concat_batches(&schema, &batches).map_err(|e| EngineError::DataFusion(e.into()))?)
}

/// Execution errors caused by the query (resources) versus internal ones.
fn map_df(e: datafusion::error::DataFusionError) -> RunError {
    use datafusion::error::DataFusionError as D;
    match e.find_root() {
        D::ResourcesExhausted(_) => QueryError::new(
            Code::ResourcesExhausted,
            "the query needs more memory than this service allows; narrow the region or use fewer dimensions",
        )
        .into(),
        // A value the query computes cannot be computed (a failed cast, a
        // bad function argument): the caller's expression, not our fault.
        D::ArrowError(..) | D::Execution(_) => QueryError::new(
            Code::InvalidValue,
            format!("{}; check the casts and function arguments in the query", clean_message(&e)),
        )
        .into(),
        D::Plan(_) | D::SchemaError(..) | D::SQL(..) => QueryError::new(Code::PlanError, clean_message(&e)).into(),
        _ => RunError::Engine(EngineError::DataFusion(e)),
    }
}

/// A join with a reference table must not multiply people.
async fn check_unique(engine: &Engine, plan: LogicalPlan, keys: Vec<Expr>) -> Result<(), RunError> {
    let named: Vec<Expr> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| k.clone().alias(format!("k{i}")))
        .collect();
    let dup = LogicalPlanBuilder::from(plan)
        .aggregate(named, vec![count(lit(1)).alias("n")])
        .and_then(|b| b.filter(col("n").gt(lit(1i64))))
        .and_then(|b| b.limit(0, Some(1)))
        .and_then(|b| b.build())
        .map_err(|e| QueryError::new(Code::PlanError, clean_message(&e)))?;
    let found = collect(engine, dup).await?;
    if found.num_rows() > 0 {
        let keys: Vec<String> = keys.iter().map(|k| k.schema_name().to_string()).collect();
        return Err(QueryError::new(
            Code::JoinNotOnKey,
            format!(
                "the join key ({}) is not unique in the reference table, so people would be counted more than once; join wilayah on w.kode, or kode_referensi on elemen and kode/label",
                keys.join(", ")
            ),
        )
        .into());
    }
    Ok(())
}

/// Representative dates: every age and year that any date can produce on
/// the reference dates in play is produced by one of these.
fn representative_dates(
    as_of: i32,
    age_reference: Option<i32>,
    functions: &BTreeSet<&'static str>,
) -> Vec<i32> {
    let refs: Vec<i32> = [Some(as_of), age_reference].into_iter().flatten().collect();
    let years: Vec<i32> = refs.iter().map(|d| days_to_date(*d).year()).collect();
    let (lo, hi) = (
        years.iter().min().copied().unwrap_or(0),
        years.iter().max().copied().unwrap_or(0),
    );
    let cuts: Vec<(u32, u32)> = refs
        .iter()
        .map(|d| {
            let d = days_to_date(*d);
            (d.month(), d.day())
        })
        .collect();
    // Every birth year from one past the oldest top-coded age on the
    // earliest reference date up to the latest: ages and years are
    // top-coded, so older dates give values already produced here. Dates
    // after the snapshot date cannot occur (the importer and generator
    // refuse them).
    let mut out = BTreeSet::new();
    for year in (lo - MAX_AGE - 2)..=hi {
        let mut push = |m: u32, d: u32| {
            if let Some(x) = chrono::NaiveDate::from_ymd_opt(year, m, d) {
                for day in [x.pred_opt(), Some(x), x.succ_opt()].into_iter().flatten() {
                    let day = date_to_days(day);
                    if day <= as_of {
                        out.insert(day);
                    }
                }
            }
        };
        push(1, 1);
        push(12, 31);
        for &(m, d) in &cuts {
            push(m, d);
        }
        if cuts.iter().any(|&(m, d)| (m, d) == (2, 29)) {
            push(2, 28);
            push(3, 1);
        }
    }
    // Keep one date per distinct combination of the values the functions
    // in play give it: the image is the same, the domain table far smaller.
    let earliest = super::udf::earliest_year(as_of);
    let mut seen = BTreeSet::new();
    out.into_iter()
        .filter(|&d| {
            let age = |on: i32| {
                let a = crate::calendar::age_on(d, on);
                (a >= 0).then_some(a.min(MAX_AGE))
            };
            let signature = (
                functions.contains(super::udf::UMUR).then(|| age(as_of)),
                functions
                    .contains(super::udf::UMUR_PADA)
                    .then(|| age_reference.and_then(age)),
                functions
                    .contains(super::udf::TAHUN)
                    .then(|| days_to_date(d).year().max(earliest)),
            );
            seen.insert(signature)
        })
        .collect()
}

/// The domain table standing in for `penduduk`: the cross product of the
/// public domains of the columns the query uses.
fn domain_table(
    engine: &Engine,
    v: &ValidatedPlan,
    agreement: &Agreement,
) -> Result<RecordBatch, RunError> {
    let regions = catalog::regions();
    let scope = agreement.scope();
    let coverage = engine.snapshot().coverage();
    let used = v.elements();
    // Region rows: the finest level used, each with a consistent chain of
    // codes (a representative desa below it) so the scope filter holds.
    let finest = [
        RegionLevel::DesaKelurahan,
        RegionLevel::Kecamatan,
        RegionLevel::KabKota,
        RegionLevel::Provinsi,
    ]
    .into_iter()
    .find(|l| used.contains(l.column()));
    let mut region_rows: Vec<[String; 4]> = Vec::new();
    let mut seen = BTreeSet::new();
    for desa in regions.at_level(scope, RegionLevel::DesaKelurahan) {
        if !coverage.covers(&desa.kode) {
            continue;
        }
        let k = &desa.kode;
        let chain = [
            k[..2].to_string(),
            k[..5].to_string(),
            k[..8].to_string(),
            k.clone(),
        ];
        let key = match finest {
            Some(RegionLevel::DesaKelurahan) => chain[3].clone(),
            Some(RegionLevel::Kecamatan) => chain[2].clone(),
            Some(RegionLevel::KabKota) => chain[1].clone(),
            Some(RegionLevel::Provinsi) => chain[0].clone(),
            None => String::new(),
        };
        if seen.insert(key) {
            region_rows.push(chain);
            if finest.is_none() {
                break;
            }
        }
    }
    // Other columns: their domains if used, a single placeholder otherwise.
    let as_of = engine.as_of_days();
    #[derive(Clone)]
    enum Values {
        Text(Vec<Option<String>>),
        Dates(Vec<Option<i32>>),
        /// Not referenced by the query: all NULL.
        Unused,
    }
    let mut columns: Vec<(&catalog::Column, Values)> = Vec::new();
    for c in catalog::COLUMNS {
        let values = if matches!(c.domain, Domain::Region { .. }) {
            continue;
        } else if c.class == catalog::ColumnClass::RecordKey || !used.contains(c.name) {
            Values::Unused
        } else {
            match c.domain {
                Domain::CodeList { list } => Values::Text(
                    catalog::code_list(list)
                        .expect("catalog lists exist")
                        .labels()
                        .map(|l| Some(l.to_string()))
                        .collect(),
                ),
                Domain::Numbered { width, max } => Values::Text(
                    (1..=max)
                        .map(|n| Some(format!("{n:0width$}", width = width as usize)))
                        .collect(),
                ),
                Domain::Dates => {
                    let none = BTreeSet::new();
                    let functions = v.date_functions().get(c.name).unwrap_or(&none);
                    let mut d: Vec<Option<i32>> =
                        representative_dates(as_of, v.age_reference(), functions)
                            .into_iter()
                            .map(Some)
                            .collect();
                    if c.nullable {
                        d.push(None);
                    }
                    Values::Dates(d)
                }
                // COUNT(DISTINCT no_kk) and similar: a placeholder suffices.
                Domain::None | Domain::Region { .. } => Values::Text(vec![Some(String::new())]),
            }
        };
        columns.push((c, values));
    }
    let size = |v: &Values| match v {
        Values::Text(x) => x.len() as u64,
        Values::Dates(x) => x.len() as u64,
        Values::Unused => 1,
    };
    let total: u64 = columns
        .iter()
        .map(|(_, v)| size(v))
        .product::<u64>()
        .saturating_mul(region_rows.len().max(1) as u64);
    if total > MAX_DOMAIN_ROWS {
        return Err(QueryError::new(
            Code::TooManyCells,
            format!(
                "the combinations of the dimensions used ({total}) exceed what one query may cover; use coarser dimensions or a smaller region"
            ),
        )
        .into());
    }
    let n = total as usize;
    // Mixed-radix enumeration of the cross product: the value index of
    // factor `pos` in row r is (r / stride[pos]) % radix[pos]; each column
    // is a `take` from its small array of values.
    let mut radices: Vec<u64> = vec![region_rows.len().max(1) as u64];
    radices.extend(columns.iter().map(|(_, v)| size(v)));
    let mut strides = vec![1u64; radices.len()];
    for pos in (0..radices.len().saturating_sub(1)).rev() {
        strides[pos] = strides[pos + 1] * radices[pos + 1];
    }
    let indices = |pos: usize| -> UInt32Array {
        (0..n as u64)
            .map(|r| ((r / strides[pos]) % radices[pos]) as u32)
            .collect()
    };
    let internal =
        |e: datafusion::arrow::error::ArrowError| RunError::from(EngineError::DataFusion(e.into()));
    let schema = penduduk_table_schema();
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    let mut col_pos = 0;
    let region_idx = indices(0);
    for field in schema.fields() {
        let name = field.name().as_str();
        if let Some(level) = [
            RegionLevel::Provinsi,
            RegionLevel::KabKota,
            RegionLevel::Kecamatan,
            RegionLevel::DesaKelurahan,
        ]
        .into_iter()
        .find(|l| l.column() == name)
        {
            let values: StringArray = region_rows
                .iter()
                .map(|r| Some(r[level as usize].as_str()))
                .collect();
            arrays.push(take(&values, &region_idx, None).map_err(internal)?);
            continue;
        }
        col_pos += 1;
        let (_, values) = &columns[col_pos - 1];
        let array: ArrayRef = match values {
            Values::Unused => new_null_array(field.data_type(), n),
            Values::Text(vals) => {
                let values: StringArray = vals.iter().map(|v| v.as_deref()).collect();
                take(&values, &indices(col_pos), None).map_err(internal)?
            }
            Values::Dates(vals) => {
                let values: Date32Array = vals.iter().copied().collect();
                take(&values, &indices(col_pos), None).map_err(internal)?
            }
        };
        arrays.push(array);
    }
    RecordBatch::try_new(schema, arrays).map_err(|e| EngineError::DataFusion(e.into()).into())
}

/// Schema of the `penduduk` table (files plus partition column), nullable so
/// that the domain table can hold NULL dates.
fn penduduk_table_schema() -> SchemaRef {
    Arc::new(Schema::new(
        catalog::table_columns()
            .map(|c| Field::new(c.name, c.ty.arrow(), true))
            .collect::<Vec<_>>(),
    ))
}

/// Replaces the `penduduk` scan's source in a plan.
fn with_penduduk_source(plan: &LogicalPlan, table: Arc<MemTable>) -> Result<LogicalPlan, RunError> {
    let source = provider_as_source(table);
    plan.clone()
        .transform_up(|p| match p {
            LogicalPlan::TableScan(t) if t.table_name.table() == PENDUDUK => {
                let scan = TableScan {
                    source: Arc::clone(&source),
                    ..t
                };
                Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
            }
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
        .map_err(|e| EngineError::DataFusion(e).into())
}

/// The caller's category restrictions of a table, canonical: per
/// restricted dimension, the categories its conditions select within the
/// public domain, found by running the conditions over the domain table (so
/// `umur(...) < 200` and no condition at all are the same, and so are two
/// spellings of one selection), with the variables they read. Also checks
/// that every condition selects whole categories of the table's own
/// dimensions over the same variable (e.g. `umur BETWEEN 15 AND 64` with
/// 5-year bands, not with `umur_pada` on another date). Reads no personal
/// data.
async fn restrictions(
    engine: &Engine,
    v: &ValidatedPlan,
    spec: &super::table::TableSpec,
    agreement: &Agreement,
) -> Result<Vec<(String, BTreeSet<String>)>, RunError> {
    if spec.restrictions().is_empty() {
        return Ok(Vec::new());
    }
    let LogicalPlan::Aggregate(agg) = v.aggregate() else {
        return Ok(Vec::new());
    };
    let engine_err =
        |e: datafusion::error::DataFusionError| RunError::from(EngineError::DataFusion(e));
    let domain = domain_table(engine, v, agreement)?;
    let mem = Arc::new(
        MemTable::try_new(domain.schema(), vec![vec![domain]]).map_err(EngineError::DataFusion)?,
    );
    // The aggregate's source without any condition (the domain table is
    // within the scope already).
    let base = agg
        .input
        .as_ref()
        .clone()
        .transform_up(|p| match p {
            LogicalPlan::Filter(f) => Ok(Transformed::yes(f.input.as_ref().clone())),
            other => Ok(Transformed::no(other)),
        })
        .map_err(engine_err)?
        .data;
    let mut out = Vec::new();
    for (name, r) in spec.restrictions() {
        let cond = r
            .conditions
            .iter()
            .cloned()
            .reduce(Expr::and)
            .unwrap_or_else(|| lit(true));
        // Whole categories: within each category of the dimensions that
        // show this variable, the condition is all true or all false.
        let selected = Expr::Case(datafusion::logical_expr::Case::new(
            None,
            vec![(Box::new(cond.clone()), Box::new(lit(1i64)))],
            Some(Box::new(lit(0i64))),
        ));
        let shown: Vec<Expr> = r
            .shown_by
            .iter()
            .enumerate()
            .map(|(i, &j)| spec.keys()[j].clone().alias(format!("g{i}")))
            .collect();
        let check = LogicalPlanBuilder::from(base.clone())
            .aggregate(
                shown,
                vec![
                    datafusion::functions_aggregate::expr_fn::min(selected.clone()).alias("lo"),
                    datafusion::functions_aggregate::expr_fn::max(selected).alias("hi"),
                ],
            )
            .and_then(|b| b.filter(col("lo").not_eq(col("hi"))))
            .and_then(|b| b.limit(0, Some(1)))
            .and_then(|b| b.build())
            .map_err(engine_err)?;
        let split = collect(engine, with_penduduk_source(&check, Arc::clone(&mem))?).await?;
        if split.num_rows() > 0 {
            let shown: Vec<&str> = r
                .shown_by
                .iter()
                .map(|&j| spec.dims()[j].as_str())
                .collect();
            return Err(QueryError::new(
                Code::NotATable,
                format!(
                    "the condition on {name} splits categories of {}: a condition must select whole categories of what the table shows; group by {name} itself, or choose bounds that fall on category boundaries (e.g. umur BETWEEN 15 AND 64 with kelompok_umur(umur(tanggal_lahir), 5))",
                    shown.join(", ")
                ),
            )
            .into());
        }
        let values = |filtered: bool| {
            let mut b = LogicalPlanBuilder::from(base.clone());
            if filtered {
                b = b.filter(cond.clone())?;
            }
            b.aggregate(vec![r.dimension.clone().alias("v")], Vec::<Expr>::new())?
                .sort(vec![col("v").sort(true, true)])?
                .build()
        };
        let all = values(false).map_err(engine_err)?;
        let selected = values(true).map_err(engine_err)?;
        let all = collect(engine, with_penduduk_source(&all, Arc::clone(&mem))?).await?;
        let selected = collect(engine, with_penduduk_source(&selected, Arc::clone(&mem))?).await?;
        if selected.num_rows() == all.num_rows() {
            continue; // selects every category: no restriction
        }
        let a = selected.column(0);
        let cats: Vec<String> = (0..a.len())
            .map(|i| {
                datafusion::arrow::util::display::array_value_to_string(a, i).unwrap_or_default()
            })
            .collect();
        out.push((
            format!("{name} in {{{}}}", cats.join(",")),
            r.variables.clone(),
        ));
    }
    Ok(out)
}

/// What a table releases about each margin it determines (see
/// [`super::margins`]): for every grouping set and every subset of its
/// dimensions (and every coarser region level of a region dimension), the
/// margin and the number of the table's cells that partition it.
fn margin_estimates(
    spec: &super::table::TableSpec,
    restricted: &[(String, BTreeSet<String>)],
    grid: &RecordBatch,
) -> Vec<super::margins::Estimate> {
    const PUBLIC: &[&str] = &["kode_prov", "kode_kab", "jenis_kelamin"];
    const REGIONS: &[(&str, usize)] = &[
        ("kode_prov", 2),
        ("kode_kab", 5),
        ("kode_kec", 8),
        ("kode_kel", 13),
    ];
    let dims = spec.dims();
    let distinct = |j: usize, prefix: Option<usize>| -> usize {
        let a = grid.column(j);
        let mut seen = BTreeSet::new();
        for r in 0..a.len() {
            if a.is_null(r) {
                continue;
            }
            let v =
                datafusion::arrow::util::display::array_value_to_string(a, r).unwrap_or_default();
            seen.insert(match prefix {
                Some(n) => v.chars().take(n).collect(),
                None => v,
            });
        }
        seen.len().max(1)
    };
    let sizes: Vec<usize> = (0..dims.len()).map(|j| distinct(j, None)).collect();
    // The population a margin's cells count: the restrictions on variables
    // the margin sums over. A restriction on a variable the margin shows
    // only chooses which of its cells exist; a total over a restricted
    // variable (or a coarser form of it), which would be a chosen group,
    // is refused before this by the table rule (`table::compile`).
    let universe_of = |names: &[String]| -> String {
        let mut shown: BTreeSet<String> = BTreeSet::new();
        for n in names {
            if let Some(j) = dims.iter().position(|d| d == n) {
                shown.extend(spec.variables()[j].iter().cloned());
            }
            if n.starts_with("kode_") {
                shown.insert("region".to_string());
            }
        }
        let parts: Vec<&str> = restricted
            .iter()
            .filter(|(_, vars)| vars.is_disjoint(&shown))
            .map(|(c, _)| c.as_str())
            .collect();
        if parts.is_empty() {
            "everyone in scope".to_string()
        } else {
            parts.join(" and ")
        }
    };
    let mut out = Vec::new();

    for g in spec.grouping_sets() {
        let mut g_names: Vec<&str> = g.iter().map(|&j| dims[j].as_str()).collect();
        g_names.sort_unstable();
        let partition = format!("by {}", g_names.join(" x "));
        for mask in 0u32..(1u32 << g.len().min(16)) {
            let kept: Vec<usize> = g
                .iter()
                .enumerate()
                .filter(|(i, _)| mask >> i & 1 == 1)
                .map(|(_, &j)| j)
                .collect();
            let cells: usize = g
                .iter()
                .filter(|j| !kept.contains(j))
                .map(|&j| sizes[j])
                .product();
            let mut push = |names: Vec<String>, cells: usize, direct: bool| {
                let mut names = names;
                names.sort();
                let universe = universe_of(&names);
                if universe == "everyone in scope"
                    && names.iter().all(|n| PUBLIC.contains(&n.as_str()))
                {
                    return;
                }
                out.push(super::margins::Estimate {
                    margin: format!("[{}] of [{universe}]", names.join(" x ")),
                    partition: if direct {
                        "direct".to_string()
                    } else {
                        partition.clone()
                    },
                    information: 1.0 / cells.max(1) as f64,
                });
            };
            let names: Vec<String> = kept.iter().map(|&j| dims[j].clone()).collect();
            push(names.clone(), cells, kept.len() == g.len());
            // A finer region level also partitions every coarser one.
            for (pos, &j) in kept.iter().enumerate() {
                let Some(level) = REGIONS.iter().position(|(n, _)| *n == dims[j]) else {
                    continue;
                };
                for (coarse, len) in &REGIONS[..level] {
                    if dims.iter().any(|d| d == coarse) {
                        continue;
                    }
                    let groups = distinct(j, Some(*len));
                    let per = sizes[j].div_ceil(groups).max(1);
                    let mut n = names.clone();
                    n[pos] = (*coarse).to_string();
                    push(n, cells * per, false);
                }
            }
        }
    }
    out
}

/// Every cell of the result: the aggregate's key columns over the domain.
async fn grid(
    engine: &Engine,
    v: &ValidatedPlan,
    agreement: &Agreement,
) -> Result<RecordBatch, RunError> {
    let key = v.aggregate().display_indent().to_string();
    if let Some(g) = engine.cached_grid(&key) {
        return Ok(g);
    }
    let domain = domain_table(engine, v, agreement)?;
    let mem =
        MemTable::try_new(domain.schema(), vec![vec![domain]]).map_err(EngineError::DataFusion)?;
    let plan = with_penduduk_source(v.aggregate(), Arc::new(mem))?;
    let grid = collect(engine, plan).await?;
    engine.cache_grid(key, grid.clone());
    Ok(grid)
}

fn key_columns(v: &ValidatedPlan, batch: &RecordBatch) -> usize {
    batch.num_columns() - v.aggregates().len()
}

/// The grid with the aggregate's values filled in, zero for empty cells.
fn complete(
    grid: &RecordBatch,
    found: &RecordBatch,
    v: &ValidatedPlan,
) -> Result<(RecordBatch, usize), RunError> {
    let nkeys = key_columns(v, grid);
    let extra = found.num_columns() - grid.num_columns();
    if nkeys == 0 {
        // A grand total: one cell, always present in the aggregate's output.
        return Ok((found.clone(), 0));
    }
    let internal = |m: String| {
        RunError::Engine(EngineError::DataFusion(
            datafusion::error::DataFusionError::Internal(m),
        ))
    };
    let fields: Vec<SortField> = grid.columns()[..nkeys]
        .iter()
        .map(|c| SortField::new(c.data_type().clone()))
        .collect();
    let conv = RowConverter::new(fields).map_err(|e| internal(e.to_string()))?;
    let grid_rows = conv
        .convert_columns(&grid.columns()[..nkeys])
        .map_err(|e| internal(e.to_string()))?;
    let found_rows = conv
        .convert_columns(&found.columns()[..nkeys])
        .map_err(|e| internal(e.to_string()))?;
    let mut index: HashMap<&[u8], u32> = HashMap::with_capacity(found.num_rows());
    for i in 0..found.num_rows() {
        index.insert(found_rows.row(i).data(), i as u32);
    }
    let mut hit = 0usize;
    let take_idx: UInt32Array = (0..grid.num_rows())
        .map(|i| {
            let r = index.get(grid_rows.row(i).data()).copied();
            hit += usize::from(r.is_some());
            r
        })
        .collect();
    // A result cell outside the public grid is dropped, never reported:
    // an error or a count here would depend on the data and could be
    // used to test whether someone exists. The grid covers every value the
    // coarsening functions can produce, so this should not happen; the
    // number is kept for the audit log, not for the caller.
    let outside_grid = found.num_rows() - hit;
    let mut columns: Vec<ArrayRef> = grid.columns()[..nkeys].to_vec();
    for (j, kind) in v.aggregates().iter().enumerate() {
        let src = found.column(nkeys + j);
        let taken = take(src.as_ref(), &take_idx, None).map_err(|e| internal(e.to_string()))?;
        let filled: ArrayRef = match (kind, taken.data_type()) {
            (AggregateKind::Grouping, _) => Arc::clone(grid.column(nkeys + j)),
            (AggregateKind::Avg { .. }, _) => taken,
            (_, DataType::Int64) => {
                let a = taken.as_primitive::<Int64Type>();
                Arc::new(
                    a.iter()
                        .map(|x| Some(x.unwrap_or(0)))
                        .collect::<Int64Array>(),
                )
            }
            (_, DataType::UInt64) => {
                let a = taken.as_primitive::<UInt64Type>();
                Arc::new(
                    a.iter()
                        .map(|x| Some(x.unwrap_or(0)))
                        .collect::<UInt64Array>(),
                )
            }
            (_, DataType::Float64) => {
                let a = taken.as_primitive::<Float64Type>();
                Arc::new(
                    a.iter()
                        .map(|x| Some(x.unwrap_or(0.0)))
                        .collect::<Float64Array>(),
                )
            }
            _ => taken,
        };
        columns.push(filled);
    }
    // Cell keys (cell-key method): zero for empty cells, whose published
    // value is zero whatever the key.
    let mut fields: Vec<Field> = grid
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for j in 0..extra {
        let c = grid.num_columns() + j;
        let taken =
            take(found.column(c).as_ref(), &take_idx, None).map_err(|e| internal(e.to_string()))?;
        let taken = datafusion::arrow::compute::cast(&taken, &DataType::Int64)
            .map_err(|e| internal(e.to_string()))?;
        let a = taken.as_primitive::<Int64Type>();
        columns.push(Arc::new(
            a.iter()
                .map(|x| Some(x.unwrap_or(0)))
                .collect::<Int64Array>(),
        ));
        fields.push(Field::new(
            found.schema().field(c).name(),
            DataType::Int64,
            false,
        ));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map(|b| (b, outside_grid))
        .map_err(|e| internal(e.to_string()))
}

/// For differential privacy, AVG is released as noisy sum over noisy count:
/// the aggregate gains `SUM(x)` and `COUNT(x)` for every `AVG(x)`, in the
/// same pass (with the AVG's own FILTER).
fn with_avg_parts(v: &ValidatedPlan) -> Result<LogicalPlan, RunError> {
    use datafusion::logical_expr::Aggregate;
    let engine_err =
        |e: datafusion::error::DataFusionError| RunError::Engine(EngineError::DataFusion(e));
    let LogicalPlan::Aggregate(agg) = v.aggregate() else {
        return Err(engine_err(datafusion::error::DataFusionError::Internal(
            "no aggregate".into(),
        )));
    };
    let mut aggr = agg.aggr_expr.clone();
    for (i, (e, kind)) in agg.aggr_expr.iter().zip(v.aggregates()).enumerate() {
        if !matches!(kind, AggregateKind::Avg { .. }) {
            continue;
        }
        let inner = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            other => other,
        };
        let Expr::AggregateFunction(f) = inner else {
            continue;
        };
        let arg = f.params.args[0].clone();
        for (name, mut part) in [
            (
                "sum",
                datafusion::functions_aggregate::expr_fn::sum(arg.clone()),
            ),
            (
                "count",
                datafusion::functions_aggregate::expr_fn::count(arg),
            ),
        ] {
            if let Expr::AggregateFunction(p) = &mut part {
                p.params.filter = f.params.filter.clone();
            }
            aggr.push(part.alias(format!("__avg_{name}_{i}")));
        }
    }
    Aggregate::try_new(Arc::clone(&agg.input), agg.group_expr.clone(), aggr)
        .map(LogicalPlan::Aggregate)
        .map_err(engine_err)
}

/// Internal names of the engine's keys. The gate refuses every name that
/// starts with `__` anywhere in a query, so these columns can only come from
/// the scan rewrite below.
const RECORD_KEY_COLUMN: &str = "__agregat_record_key";
const HOUSEHOLD_KEY_COLUMN: &str = "__agregat_household_key";
const HOUSEHOLD_KK_COLUMN: &str = "__agregat_household_kk";
const HOUSEHOLDS_SOURCE: &str = "__agregat_households";

/// The aggregate with one cell-key column per count, computed in the same
/// pass. The keys are read by the engine itself at the `penduduk` scan:
///
/// - a person count's key is the sum of its people's record keys modulo the
///   key range;
/// - a household count's key is the sum, over the distinct households it
///   counts, of each household's key: the smallest record key of all its
///   members in the scope (whoever the query selects), so the same
///   households always get the same noise, however they were selected.
fn with_cell_keys(
    v: &ValidatedPlan,
    key_range: u32,
    scope: &catalog::RegionScope,
) -> Result<LogicalPlan, RunError> {
    use datafusion::logical_expr::{Aggregate, JoinType, Projection};
    let engine_err =
        |e: datafusion::error::DataFusionError| RunError::Engine(EngineError::DataFusion(e));
    let LogicalPlan::Aggregate(agg) = v.aggregate() else {
        return Err(engine_err(datafusion::error::DataFusionError::Internal(
            "no aggregate".into(),
        )));
    };
    // Person counts carry their cell's households too, for the holding
    // rule (a cell of people from one or two families is withheld).
    let holding = holds_households(v);
    let households = holding
        || v.aggregates()
            .iter()
            .any(|k| matches!(k, AggregateKind::CountHouseholds));
    let keys = [RECORD_KEY_COLUMN, HOUSEHOLD_KEY_COLUMN, HOUSEHOLD_KK_COLUMN];
    let input = agg
        .input
        .as_ref()
        .clone()
        .transform_up(|p| match p {
            LogicalPlan::TableScan(t) if t.table_name.table() == PENDUDUK => {
                let name = t.table_name.clone();
                let source = Arc::clone(&t.source);
                // Every column of the table, whatever the caller projected.
                let scan = LogicalPlan::TableScan(
                    datafusion::logical_expr::TableScanBuilder::new(
                        name.clone(),
                        Arc::clone(&source),
                    )
                    .with_filters(t.filters.clone())
                    .build()?,
                );
                let visible: Vec<Expr> = t
                    .projected_schema
                    .columns()
                    .into_iter()
                    .map(Expr::Column)
                    .collect();
                let mut exprs = visible;
                exprs.push(
                    Expr::Column(Column::new(Some(name.clone()), catalog::RECORD_KEY))
                        .alias(RECORD_KEY_COLUMN),
                );
                let below = if households {
                    let mut hk = LogicalPlanBuilder::scan(HOUSEHOLDS_SOURCE, source, None)?;
                    if let Some(pred) = scope_predicate(scope, Some(&HOUSEHOLDS_SOURCE.into())) {
                        hk = hk.filter(pred)?;
                    }
                    let hk = hk
                        .aggregate(
                            vec![
                                Expr::Column(Column::new(Some(HOUSEHOLDS_SOURCE), "no_kk"))
                                    .alias(HOUSEHOLD_KK_COLUMN),
                            ],
                            vec![
                                datafusion::functions_aggregate::expr_fn::min(Expr::Column(
                                    Column::new(Some(HOUSEHOLDS_SOURCE), catalog::RECORD_KEY),
                                ))
                                .alias(HOUSEHOLD_KEY_COLUMN),
                            ],
                        )?
                        .build()?;
                    exprs.push(Expr::Column(Column::from_name(HOUSEHOLD_KEY_COLUMN)));
                    exprs.push(Expr::Column(Column::from_name(HOUSEHOLD_KK_COLUMN)));
                    LogicalPlanBuilder::from(scan)
                        .join(
                            hk,
                            JoinType::Inner,
                            (
                                vec![Column::new(Some(name), "no_kk")],
                                vec![Column::from_name(HOUSEHOLD_KK_COLUMN)],
                            ),
                            None,
                        )?
                        .build()?
                } else {
                    scan
                };
                Ok(Transformed::yes(LogicalPlan::Projection(
                    Projection::try_new(exprs, Arc::new(below))?,
                )))
            }
            LogicalPlan::Projection(pr) => {
                let mut exprs = pr.expr.clone();
                let mut changed = false;
                for k in keys {
                    let c = Column::from_name(k);
                    if pr.input.schema().has_column(&c) && !pr.schema.has_column(&c) {
                        exprs.push(Expr::Column(c));
                        changed = true;
                    }
                }
                if changed {
                    Ok(Transformed::yes(LogicalPlan::Projection(
                        Projection::try_new(exprs, pr.input)?,
                    )))
                } else {
                    Ok(Transformed::no(LogicalPlan::Projection(pr)))
                }
            }
            other => Ok(Transformed::yes(other.recompute_schema()?)),
        })
        .map_err(engine_err)?
        .data;
    let mut aggr = agg.aggr_expr.clone();
    for (i, kind) in v.aggregates().iter().enumerate() {
        let key = match kind {
            AggregateKind::CountRows | AggregateKind::CountColumn => {
                datafusion::functions_aggregate::expr_fn::sum(Expr::Cast(
                    datafusion::logical_expr::Cast::new(
                        Box::new(
                            Expr::Column(Column::from_name(RECORD_KEY_COLUMN))
                                % lit(u64::from(key_range)),
                        ),
                        DataType::Int64,
                    ),
                ))
            }
            AggregateKind::CountHouseholds => household_key(),
            _ => continue,
        };
        aggr.push(key.alias(format!("__cell_key_{i}")));
    }
    if holding {
        aggr.push(
            datafusion::functions_aggregate::expr_fn::count_distinct(Expr::Column(
                Column::from_name(HOUSEHOLD_KK_COLUMN),
            ))
            .alias("__holding_households"),
        );
        aggr.push(household_key().alias("__holding_key"));
    }
    Aggregate::try_new(Arc::new(input), agg.group_expr.clone(), aggr)
        .map(LogicalPlan::Aggregate)
        .map_err(engine_err)
}

/// Whether the release applies the holding rule: a cell-key table with a
/// person count.
fn holds_households(v: &ValidatedPlan) -> bool {
    v.table()
        .is_some_and(|t| t.measures().contains(&super::table::Measure::Persons))
}

/// The key of a household count: 32 bits of each household's key, summed
/// over the distinct households of the cell (no overflow below 2^31
/// households per cell).
fn household_key() -> Expr {
    let hk32 = Expr::Cast(datafusion::logical_expr::Cast::new(
        Box::new(Expr::Column(Column::from_name(HOUSEHOLD_KEY_COLUMN)) / lit(1u64 << 32)),
        DataType::Int64,
    ));
    datafusion::functions_aggregate::expr_fn::sum_distinct(hk32)
}

/// Runs HAVING, ORDER BY, LIMIT and the final projection over the released
/// table, by replacing the aggregate in the plan with a scan of it.
/// HAVING, ORDER BY and LIMIT over the released values only.
pub async fn post_plan(
    engine: &Engine,
    v: &ValidatedPlan,
    table: ProtectedTable,
) -> Result<ProtectedTable, RunError> {
    let agg = v.aggregate();
    let agg_schema = agg.schema();
    let released = &table.batches()[0];
    let mut fields: Vec<Field> = agg_schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, _)| {
            Field::new(
                format!("c{i}"),
                released.schema().field(i).data_type().clone(),
                true,
            )
        })
        .collect();
    fields.push(Field::new(SUPPRESSION_COLUMN, DataType::Utf8, true));
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(Arc::clone(&schema), released.columns().to_vec())
        .map_err(|e| EngineError::DataFusion(e.into()))?;
    let mem = MemTable::try_new(schema, vec![vec![batch]]).map_err(EngineError::DataFusion)?;
    let mut exprs: Vec<Expr> = agg_schema
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            Expr::Column(Column::from_name(format!("c{i}"))).alias_qualified(q.cloned(), f.name())
        })
        .collect();
    exprs.push(Expr::Column(Column::from_name(SUPPRESSION_COLUMN)));
    let released_plan =
        LogicalPlanBuilder::scan("__released", provider_as_source(Arc::new(mem)), None)
            .and_then(|b| b.project(exprs))
            .and_then(|b| b.build())
            .map_err(EngineError::DataFusion)?;
    let mut replaced = false;
    let status = Column::from_name(SUPPRESSION_COLUMN);
    let plan = v
        .plan
        .clone()
        .transform_down(|p| {
            if !replaced && matches!(p, LogicalPlan::Aggregate(_)) {
                replaced = true;
                return Ok(Transformed::new(
                    released_plan.clone(),
                    true,
                    TreeNodeRecursion::Jump,
                ));
            }
            Ok(Transformed::no(p))
        })
        .and_then(|t| {
            // Carry the status column through the post-plan's projections.
            t.data.transform_up(|p| match p {
                LogicalPlan::Projection(pr)
                    if pr.input.schema().has_column(&status) && !pr.schema.has_column(&status) =>
                {
                    let mut exprs = pr.expr.clone();
                    exprs.push(Expr::Column(status.clone()));
                    Ok(Transformed::yes(LogicalPlan::Projection(
                        datafusion::logical_expr::Projection::try_new(exprs, pr.input)?,
                    )))
                }
                other => Ok(Transformed::yes(other.recompute_schema()?)),
            })
        })
        .map(|t| t.data)
        .map_err(EngineError::DataFusion)?;
    let out = collect(engine, plan).await?;
    Ok(table.map_released(out.schema(), vec![out]))
}
