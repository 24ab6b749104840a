//! Disclosure control: turns the complete aggregate grid (true values) into
//! released values. Nothing leaves the process unprotected: the encoders
//! take only a [`ProtectedTable`], which only `protect()` can build.
//!
//! Methods (one per agreement):
//!
//! - **Cell-key perturbation** (default, [`ptable`]): each count cell's key is
//!   the sum of its people's record keys modulo the ptable's key range,
//!   computed in the same aggregate pass as the count. Published count =
//!   `ptable.perturb(count, key)`: the same people always get the same noise,
//!   whichever query produced the cell; zero stays zero. Cells whose true
//!   count is in 1..k-1 are withheld (primary); when the table has margins
//!   (ROLLUP, CUBE, GROUPING SETS), complementary cells are withheld too
//!   ([`suppress`]), so no withheld cell is derivable from published ones.
//!   The sparsity rule refuses tables (or blocks areas) that are mostly ones
//!   and twos. SUM and AVG need a DP agreement.
//! - **Differential privacy** ([`dp`], OpenDP): discrete Gaussian (zCDP, ρ)
//!   or discrete Laplace (ε) noise on every cell of the grid, zeros included;
//!   sensitivity from the plan (one cell per grouping set per person); the
//!   per-query budget is split evenly over the released aggregates (AVG =
//!   noisy sum / noisy count counts twice); the charge is the sum of what
//!   OpenDP's privacy maps return. Noisy values are rounded, clamped at 0 and
//!   withheld below the threshold k (on noisy values only).
//!
//! Withheld cells are NULL in every format, and the `suppression` column of
//! the row says why: `primary`, `secondary` or `blocked` (area failing the
//! sparsity rule). The cell key, the true count and the perturbation never
//! appear in any output, log, error or audit entry.

pub mod aggregate;
pub mod dp;
pub mod ptable;
pub mod suppress;

pub use aggregate::{AggregateKind, check_aggregates};

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use serde::Serialize;

use self::aggregate::is_count;
use self::dp::{DpBudget, DpCharge};
use self::ptable::{PTable, PTableParams};
use self::suppress::{GridCell, GridTable, Suppression};
use crate::refusal::{Code, QueryError};

/// Name of the per-row status column.
pub const SUPPRESSION_COLUMN: &str = "suppression";

/// The sparsity rule of SuperSTAR and Cantabular, on interior cells.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SparsityRule {
    /// Refuse when ones / non-zero cells exceeds this.
    pub max_ones_share: f64,
    /// Refuse when (ones + twos) / non-zero cells exceeds this.
    pub max_ones_twos_share: f64,
}

impl Default for SparsityRule {
    fn default() -> Self {
        SparsityRule {
            max_ones_share: 0.25,
            max_ones_twos_share: 0.5,
        }
    }
}

/// The protection an agreement prescribes.
#[derive(Debug, Clone)]
pub enum Method {
    /// Cell-key perturbation: counts perturbed through the ptable.
    CellKey {
        /// The checked ptable the counts are perturbed with.
        ptable: Arc<PTable>,
        /// Threshold: cells whose released count is below k are withheld.
        k: u64,
    },
    /// Differential privacy: OpenDP noise on every cell of the grid.
    Dp {
        /// The per-query privacy parameter (ρ or ε).
        budget: DpBudget,
        /// Threshold: rows with a noisy count below k are withheld.
        k: u64,
    },
}

/// How an agreement's releases are protected: the method and the sparsity
/// rule.
#[derive(Debug, Clone)]
pub struct Protection {
    /// Cell-key perturbation or differential privacy, with its parameters.
    pub method: Method,
    /// The sparsity rule that refuses (or blocks areas of) mostly-withheld
    /// tables.
    pub sparsity: SparsityRule,
}

impl Protection {
    /// Cell-key perturbation with a checked ptable (`None`: the default
    /// ptable, D = 5, V = 2, js = 2, 256 keys) and threshold `k`.
    pub fn cell_key(ptable: Option<Arc<PTable>>, k: u64, sparsity: SparsityRule) -> Protection {
        let ptable = ptable.unwrap_or_else(|| Arc::clone(default_ptable()));
        Protection {
            method: Method::CellKey { ptable, k },
            sparsity,
        }
    }

    /// Differential privacy with a validated per-query budget and a
    /// threshold `k` on the noisy counts.
    pub fn dp(budget: DpBudget, k: u64, sparsity: SparsityRule) -> Protection {
        Protection {
            method: Method::Dp { budget, k },
            sparsity,
        }
    }

    /// Whether releases draw differential-privacy noise (and charge a
    /// budget).
    pub fn is_dp(&self) -> bool {
        matches!(self.method, Method::Dp { .. })
    }

    /// `"cell_key"` or `"dp"`, as in agreement files and metadata.
    pub fn method_name(&self) -> &'static str {
        match self.method {
            Method::CellKey { .. } => "cell_key",
            Method::Dp { .. } => "dp",
        }
    }

    /// The threshold k.
    pub fn k(&self) -> u64 {
        match self.method {
            Method::CellKey { k, .. } | Method::Dp { k, .. } => k,
        }
    }

    /// The per-query DP budget, under differential privacy.
    pub fn dp_budget(&self) -> Option<DpBudget> {
        match self.method {
            Method::Dp { budget, .. } => Some(budget),
            Method::CellKey { .. } => None,
        }
    }

    /// The ptable, under the cell-key method.
    pub fn ptable(&self) -> Option<&Arc<PTable>> {
        match &self.method {
            Method::CellKey { ptable, .. } => Some(ptable),
            Method::Dp { .. } => None,
        }
    }

    /// The part of a release's identity that the protection decides: two
    /// releases of the same plan under equal parts are the same release
    /// (DP: the same noise; cell-key: deterministic anyway).
    pub fn release_identity(&self) -> String {
        match &self.method {
            Method::Dp { budget, k } => format!("dp {budget:?} k={k}"),
            Method::CellKey { ptable, k } => {
                format!("cell_key {} k={k} {:?}", ptable.sha256(), self.sparsity)
            }
        }
    }

    /// What a query would be charged (DP: the sum of OpenDP's privacy maps
    /// and each column's margin of error); `None` under cell-key, which
    /// has no budget.
    pub fn cost(
        &self,
        aggregates: &[AggregateKind],
        grouping_sets: usize,
    ) -> Result<Option<DpCost>, dp::DpError> {
        match &self.method {
            Method::Dp { budget, k } => dp_cost(*budget, aggregates, grouping_sets, *k).map(Some),
            Method::CellKey { .. } => Ok(None),
        }
    }

    /// Whether a query must be a table (the gate's table rules): under the
    /// cell-key method every released count is a table cell whose noise is
    /// keyed by its contributors; differential privacy's accounting covers
    /// arbitrary predicates.
    pub fn releases_tables(&self) -> bool {
        matches!(self.method, Method::CellKey { .. })
    }

    /// The variance of the noise on one released cell under the cell-key
    /// method (the ptable's `V`); 0 under differential privacy, whose
    /// accounting bounds averaging by itself.
    pub fn noise_variance(&self) -> f64 {
        match &self.method {
            Method::CellKey { ptable, .. } => ptable.params().map_or(0.0, |p| p.variance),
            Method::Dp { .. } => 0.0,
        }
    }

    /// Cell-key with a generated ptable (D = 5, V = 2, js = 2, 256 keys) and
    /// k = 10.
    pub fn default_cell_key() -> Protection {
        Protection::cell_key(None, 10, SparsityRule::default())
    }
}

/// The default ptable (D = 5, V = 2, js = 2, 256 keys), built once.
fn default_ptable() -> &'static Arc<PTable> {
    static DEFAULT: std::sync::OnceLock<Arc<PTable>> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(|| {
        Arc::new(
            PTable::generate(&PTableParams::new(5, 2.0, 2, 256))
                .expect("the default ptable parameters are valid"),
        )
    })
}

impl Default for Protection {
    fn default() -> Self {
        Protection::default_cell_key()
    }
}

/// How a release was protected, carried in JSON and Parquet metadata.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReleaseMetadata {
    /// `"cell_key"` or `"dp"`.
    pub method: String,
    /// The ptable used, under the cell-key method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ptable: Option<PtableInfo>,
    /// The threshold k: released counts below it are withheld.
    pub k: u64,
    /// Budget, charge and margins of error, under differential privacy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpInfo>,
    /// Rows of the protected grid, every grouping set included (before
    /// HAVING/ORDER BY/LIMIT).
    pub cells: usize,
    /// Rows withheld because a released count is below k (or, under the
    /// cell-key method, their households would be).
    pub primary_suppressed: usize,
    /// Rows withheld so that no primary cell can be derived from margins.
    pub secondary_suppressed: usize,
    /// Values of the first (region) key column whose areas fail the
    /// sparsity rule; all their rows are withheld as `blocked`.
    pub blocked_areas: Vec<String>,
    /// Id of the snapshot the release was computed from.
    pub snapshot: String,
    /// The snapshot's reference date (`YYYY-MM-DD`).
    pub tanggal_data: String,
    /// A plain-language note for the reader (Bahasa Indonesia).
    pub catatan: String,
    /// DP: the agreement's budget in the period, after this release (set
    /// by the service, which keeps the ledger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetInfo>,
}

/// The privacy budget of an agreement after a release.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BudgetInfo {
    /// `YEAR-S1` or `YEAR-S2`.
    pub period: String,
    /// `rho` or `epsilon`.
    pub measure: String,
    /// The agreement's budget per period (`budget_per_period`).
    pub allowance: f64,
    /// Committed and pending charges, this release included.
    pub spent: f64,
    /// What is left of the allowance (and under the lifetime ceiling, if
    /// any), never below 0.
    pub remaining: f64,
}

/// The ptable of a cell-key release, as its metadata names it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PtableInfo {
    /// The ptable's file name, or the label of its generation parameters.
    pub name: String,
    /// SHA-256 (hex) of the text the ptable was loaded from (of `to_csv()`
    /// for a generated one).
    pub sha256: String,
    /// `D`: the largest absolute perturbation of a released count.
    pub max_perturbation: u32,
    /// `V`: the variance of the perturbation (the generation target, or
    /// the top row's variance for a loaded table).
    pub variance: f64,
    /// Blocking threshold: counts `1..=js` are never published.
    pub js: u32,
    /// The key range: cell keys run `0..keys`.
    pub keys: u32,
}

/// The differential privacy of a release.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DpInfo {
    /// The agreement's per-query parameter (ρ or ε).
    pub budget: DpBudget,
    /// Privacy loss charged, as OpenDP's maps returned it (summed).
    pub charge: DpCharge,
    /// Noise scale and 95% margin of error per released column; every cell
    /// of a column has the same margin.
    pub columns: BTreeMap<String, DpColumn>,
    /// True when this is a repeat of an earlier identical release: the same
    /// values, and nothing is charged again.
    pub reused: bool,
}

/// The noise on one released column under differential privacy.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DpColumn {
    /// Noise scale: sigma of the discrete Gaussian, or the discrete Laplace
    /// scale (for an AVG, that of its sum).
    pub scale: f64,
    /// Half-width of the 95% interval of a released value of the column;
    /// for an AVG, of the released ratio (delta method), at the published
    /// cell where it is widest.
    pub margin_of_error_95: f64,
    /// Decimals the values are rounded to (AVG), when not whole numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decimals: Option<u32>,
}

impl DpColumn {
    fn of(release: &dp::DpRelease) -> DpColumn {
        DpColumn {
            scale: release.scale,
            margin_of_error_95: release.margin_of_error_95,
            decimals: None,
        }
    }
}

/// Decimals of a released average: noise of a few persons on counts of at
/// least k makes more digits meaningless.
pub const AVG_DECIMALS: u32 = 2;

/// Released values: the only input the post-plan and the encoders accept.
#[derive(Debug, Clone)]
pub struct ProtectedTable {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    metadata: ReleaseMetadata,
}

impl ProtectedTable {
    /// Key columns, released aggregate columns, then `suppression`.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
    /// The released rows (NULL where withheld).
    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }
    /// How the release was protected.
    pub fn metadata(&self) -> &ReleaseMetadata {
        &self.metadata
    }
    /// Rows released, over all batches.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
    /// The release as bytes for the durable release cache: the metadata
    /// (JSON, length-prefixed) and the table (Arrow IPC stream).
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>, datafusion::arrow::error::ArrowError> {
        use datafusion::arrow::ipc::writer::StreamWriter;
        let meta = serde_json::to_vec(&self.metadata)
            .map_err(|e| datafusion::arrow::error::ArrowError::ExternalError(Box::new(e)))?;
        let mut out = Vec::with_capacity(meta.len() + 4096);
        out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        out.extend_from_slice(&meta);
        let mut w = StreamWriter::try_new(&mut out, &self.schema)?;
        for b in &self.batches {
            w.write(b)?;
        }
        w.finish()?;
        drop(w);
        Ok(out)
    }

    /// A release written by [`ProtectedTable::to_bytes`]. Only bytes this
    /// process family wrote to its own state database are ever read back:
    /// they were protected when they were first released.
    pub(crate) fn from_bytes(
        bytes: &[u8],
    ) -> Result<ProtectedTable, datafusion::arrow::error::ArrowError> {
        use datafusion::arrow::error::ArrowError;
        use datafusion::arrow::ipc::reader::StreamReader;
        let bad = |m: &str| ArrowError::ParseError(format!("cached release: {m}"));
        let len = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .ok_or_else(|| bad("truncated"))?;
        let meta = bytes
            .get(8..8 + len)
            .ok_or_else(|| bad("truncated metadata"))?;
        let metadata: ReleaseMetadata =
            serde_json::from_slice(meta).map_err(|e| bad(&e.to_string()))?;
        let reader = StreamReader::try_new(std::io::Cursor::new(&bytes[8 + len..]), None)?;
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        Ok(ProtectedTable {
            schema,
            batches,
            metadata,
        })
    }

    /// The release with the agreement's budget after it (DP).
    pub(crate) fn with_budget(mut self, budget: BudgetInfo) -> ProtectedTable {
        self.metadata.budget = Some(budget);
        self
    }

    /// The same release served again: marked reused, nothing new charged.
    pub(crate) fn reused(mut self) -> ProtectedTable {
        if let Some(dp) = self.metadata.dp.as_mut() {
            dp.reused = true;
        }
        self
    }

    /// The privacy loss this request charges: zero for a reused release
    /// and for cell-key releases.
    pub fn charge_now(&self) -> Option<DpCharge> {
        self.metadata.dp.as_ref().map(|d| {
            if d.reused {
                match d.charge {
                    DpCharge::Rho(_) => DpCharge::Rho(0.0),
                    DpCharge::Epsilon(_) => DpCharge::Epsilon(0.0),
                }
            } else {
                d.charge
            }
        })
    }

    /// The same release after a post-processing step on released values
    /// only (HAVING, ORDER BY, LIMIT, projection).
    pub(crate) fn map_released(
        self,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> ProtectedTable {
        ProtectedTable {
            schema,
            batches,
            metadata: self.metadata,
        }
    }
}

/// The completed aggregate grid as the engine hands it over.
pub(crate) struct TrueTable<'a> {
    /// Group key columns (including `__grouping_id` for grouping sets),
    /// then one column per aggregate, then (cell-key) one cell-key sum per
    /// count aggregate.
    pub batch: &'a RecordBatch,
    pub key_columns: usize,
    pub aggregates: &'a [AggregateKind],
    pub grouping_sets: usize,
    /// The aggregate has grouping sets, so its last key column is
    /// DataFusion's grouping id (read from the plan, not from a name).
    pub grouping_id: bool,
    /// The output name of each aggregate column (the caller's aliases), for
    /// the metadata.
    pub output_names: Vec<String>,
    /// The batch ends with each cell's distinct households and their key
    /// (after the cell keys), for the holding rule.
    pub holding: bool,
    pub snapshot: String,
    pub tanggal_data: String,
}

fn int_values(a: &ArrayRef) -> Vec<i64> {
    let a = cast(a, &DataType::Int64).expect("counts and sums cast to Int64");
    let a = a.as_primitive::<Int64Type>();
    (0..a.len())
        .map(|i| if a.is_null(i) { 0 } else { a.value(i) })
        .collect()
}

/// Whether key `j` of `n` is rolled up in a row with this grouping id
/// (DataFusion sets bit `n-1-j` for a key left out of the grouping set).
fn rolled_up(grouping_id: u64, j: usize, n: usize) -> bool {
    grouping_id >> (n - 1 - j) & 1 == 1
}

struct Layout {
    /// Group key columns without `__grouping_id`.
    dims: usize,
    grouping_ids: Option<Vec<u64>>,
}

fn layout(t: &TrueTable<'_>) -> Layout {
    // From the plan (the aggregate has grouping sets), never from a name.
    let has_gid = t.grouping_id && t.key_columns > 0;
    let grouping_ids = has_gid.then(|| {
        let a = cast(t.batch.column(t.key_columns - 1), &DataType::UInt64).expect("grouping id");
        let a = a.as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
        (0..a.len()).map(|i| a.value(i)).collect()
    });
    Layout {
        dims: t.key_columns - usize::from(has_gid),
        grouping_ids,
    }
}

fn key_string(a: &ArrayRef, row: usize) -> String {
    if a.is_null(row) {
        return "\u{2205}".to_string();
    }
    datafusion::arrow::util::display::array_value_to_string(a, row).unwrap_or_default()
}

fn sparsity_error(what: &str) -> QueryError {
    QueryError::new(
        Code::TableTooSparse,
        format!(
            "{what} is too sparse to release: most of its non-empty cells would be withheld; use coarser dimensions, e.g. kelompok_umur(umur(tanggal_lahir), 5) instead of single years, or kode_kec instead of kode_kel"
        ),
    )
}

/// The sparsity rule on what the release shows: more than the rule's
/// `max_ones_twos_share` of the interior cells would be withheld. It reads
/// only which cells are withheld (released below `k`, or holding too few
/// households), never a withheld value, so a refusal or a blocked area says
/// nothing the release itself would not.
fn sparse(withheld: &[bool], rule: &SparsityRule) -> bool {
    if withheld.is_empty() {
        return false;
    }
    let share = withheld.iter().filter(|&&w| w).count() as f64 / withheld.len() as f64;
    share > rule.max_ones_twos_share
}

/// What a DP release of a validated plan would charge and how precise it
/// would be, computed without touching data (the dry-run cost endpoint and
/// the ledger reservation). Identical to what `protect()` charges.
#[derive(Debug, Clone, Serialize)]
pub struct DpCost {
    /// The total charge: the sum of OpenDP's privacy maps.
    pub charge: DpCharge,
    /// Per aggregate output column, in order: noise scale and 95% margin.
    pub columns: Vec<DpColumn>,
}

/// The per-query budget split evenly over the released aggregates: AVG
/// (noisy sum / noisy count) takes two shares, GROUPING() none.
fn budget_share(budget: DpBudget, aggregates: &[AggregateKind]) -> DpBudget {
    let parts: usize = aggregates
        .iter()
        .map(|a| match a {
            AggregateKind::Avg { .. } => 2,
            AggregateKind::Grouping => 0,
            _ => 1,
        })
        .sum::<usize>()
        .max(1);
    match budget {
        DpBudget::ZCdp { rho } => DpBudget::ZCdp {
            rho: rho / parts as f64,
        },
        DpBudget::PureDp { epsilon } => DpBudget::PureDp {
            epsilon: epsilon / parts as f64,
        },
    }
}

/// The cost of releasing `aggregates` over `grouping_sets` under `budget`:
/// the same even split over aggregates (AVG counts twice) as `protect()`.
///
/// An AVG's margin is that of the released ratio (delta method) for the
/// least favourable published cell: a count of `k` whose values all sit at
/// the upper bound; larger cells have smaller margins.
pub fn dp_cost(
    budget: DpBudget,
    aggregates: &[AggregateKind],
    grouping_sets: usize,
    k: u64,
) -> Result<DpCost, dp::DpError> {
    let share = budget_share(budget, aggregates);
    let mut charge = 0.0;
    let mut columns = Vec::with_capacity(aggregates.len());
    for a in aggregates {
        let (per_set, times) = match *a {
            AggregateKind::CountRows
            | AggregateKind::CountColumn
            | AggregateKind::CountHouseholds => (1.0, 1),
            AggregateKind::Sum { lo, hi } => (
                dp::clamp_sensitivity(lo.floor() as i64, hi.ceil() as i64)?,
                1,
            ),
            AggregateKind::Avg { lo, hi } => {
                // noisy sum + noisy count, both charged
                let (_, cc, count_margin) = dp::plan_cost(grouping_sets, 1.0, share)?;
                let (scale, cs, sum_margin) = dp::plan_cost(
                    grouping_sets,
                    dp::clamp_sensitivity(lo.floor() as i64, hi.ceil() as i64)?,
                    share,
                )?;
                charge += cc.value() + cs.value();
                let n = k.max(1) as f64;
                columns.push(DpColumn {
                    scale,
                    margin_of_error_95: dp::ratio_margin_95(
                        hi.abs().max(lo.abs()) * n,
                        n,
                        sum_margin,
                        count_margin,
                    ),
                    decimals: Some(AVG_DECIMALS),
                });
                continue;
            }
            AggregateKind::Grouping => {
                columns.push(DpColumn {
                    scale: 0.0,
                    margin_of_error_95: 0.0,
                    decimals: None,
                });
                continue;
            }
        };
        let (scale, c, margin) = dp::plan_cost(grouping_sets, per_set, share)?;
        charge += c.value() * times as f64;
        columns.push(DpColumn {
            scale,
            margin_of_error_95: margin,
            decimals: None,
        });
    }
    let charge = match budget {
        DpBudget::ZCdp { .. } => DpCharge::Rho(charge),
        DpBudget::PureDp { .. } => DpCharge::Epsilon(charge),
    };
    Ok(DpCost { charge, columns })
}

/// Protects a completed aggregate grid. The result has the grid's group
/// key and aggregate columns (released values, NULL where withheld) and a
/// `suppression` column.
pub(crate) fn protect(
    t: TrueTable<'_>,
    protection: &Protection,
) -> Result<ProtectedTable, QueryError> {
    let rows = t.batch.num_rows();
    let lay = layout(&t);
    let agg_col = |i: usize| t.batch.column(t.key_columns + i);
    let interior: Vec<bool> = (0..rows)
        .map(|r| lay.grouping_ids.as_ref().is_none_or(|g| g[r] == 0))
        .collect();
    let first_count = t.aggregates.iter().position(is_count);
    let mut status: Vec<Option<&'static str>> = vec![None; rows];
    let mut blocked_areas = Vec::new();
    let mut released: Vec<ArrayRef> = Vec::with_capacity(t.aggregates.len());
    let (method, ptable_info, k, dp_info);
    let (mut primary, mut secondary) = (0, 0);

    match &protection.method {
        Method::CellKey { ptable, k: kk } => {
            k = *kk;
            check_aggregates(&protection.method, t.aggregates)?;
            // 1. Perturb every count cell: the key is the sum of the keys
            // of exactly the people (or households) the cell counts.
            let range = i64::from(ptable.key_range());
            let mut noisy: Vec<Option<Vec<i64>>> = Vec::with_capacity(t.aggregates.len());
            let mut key_idx = 0;
            for (i, kind) in t.aggregates.iter().enumerate() {
                if !is_count(kind) {
                    noisy.push(None);
                    continue;
                }
                let truth = int_values(agg_col(i));
                let keys = int_values(t.batch.column(t.key_columns + t.aggregates.len() + key_idx));
                key_idx += 1;
                noisy.push(Some(
                    (0..rows)
                        .map(|r| {
                            let key = keys[r].rem_euclid(range) as u32;
                            ptable.perturb(truth[r].max(0) as u64, key) as i64
                        })
                        .collect(),
                ));
            }
            // The holding rule (tau-ARGUS): people from a few families
            // describe those families, not a group. A person cell is
            // released only when its households, perturbed like any
            // household count, would be released too (at least k), so
            // whether it is withheld says no more than the household table
            // of the same cells would.
            let families: Option<Vec<i64>> = t.holding.then(|| {
                let base = t.key_columns + t.aggregates.len() + key_idx;
                let truth = int_values(t.batch.column(base));
                let keys = int_values(t.batch.column(base + 1));
                (0..rows)
                    .map(|r| {
                        ptable.perturb(truth[r].max(0) as u64, keys[r].rem_euclid(range) as u32)
                            as i64
                    })
                    .collect()
            });
            // From here on, every rule reads released values only.
            let released_counts: Vec<&Vec<i64>> = noisy.iter().flatten().collect();
            // 2. Withheld: any count of the row released below k, zeros
            // included, so a withheld cell and an empty one look the same;
            // and person cells whose households would be withheld.
            let below: Vec<bool> = (0..rows)
                .map(|r| {
                    released_counts.iter().any(|c| (c[r] as u64) < k)
                        || families.as_ref().is_some_and(|f| (f[r] as u64) < k)
                })
                .collect();
            // 3. Sparsity, on which interior cells are withheld: a table (or
            // an area) that would be mostly withheld.
            if !released_counts.is_empty() {
                let first_is_region =
                    lay.dims > 0 && t.batch.schema().field(0).name().starts_with("kode_");
                if first_is_region {
                    let mut areas: BTreeMap<String, Vec<bool>> = BTreeMap::new();
                    for r in (0..rows).filter(|&r| interior[r]) {
                        areas
                            .entry(key_string(t.batch.column(0), r))
                            .or_default()
                            .push(below[r]);
                    }
                    for (area, cells) in &areas {
                        if sparse(cells, &protection.sparsity) {
                            blocked_areas.push(area.clone());
                        }
                    }
                    for (r, st) in status.iter_mut().enumerate() {
                        if !t.batch.column(0).is_null(r)
                            && blocked_areas.contains(&key_string(t.batch.column(0), r))
                        {
                            *st = Some("blocked");
                        }
                    }
                } else {
                    let cells: Vec<bool> = (0..rows)
                        .filter(|&r| interior[r])
                        .map(|r| below[r])
                        .collect();
                    if sparse(&cells, &protection.sparsity) {
                        return Err(sparsity_error("the table"));
                    }
                }
            }
            // 4. Complementary suppression when the table has margins, so
            // no withheld cell can be estimated from its totals. The choice
            // is made on released values: the interior as released, margins
            // recomputed as sums of released interior cells.
            let additive = t
                .aggregates
                .iter()
                .position(|a| matches!(a, AggregateKind::CountRows | AggregateKind::CountColumn))
                .or(first_count);
            let mut pattern: Vec<Option<Suppression>> = vec![None; rows];
            if let (Some(gids), Some(a)) = (
                lay.grouping_ids.as_ref().filter(|_| t.grouping_sets > 1),
                additive,
            ) {
                let values = noisy[a].as_ref().expect("a count");
                let dims: Vec<String> = (0..lay.dims)
                    .map(|j| t.batch.schema().field(j).name().clone())
                    .collect();
                let coords: Vec<Vec<Option<String>>> = (0..rows)
                    .map(|r| {
                        (0..lay.dims)
                            .map(|j| {
                                (!rolled_up(gids[r], j, lay.dims))
                                    .then(|| key_string(t.batch.column(j), r))
                            })
                            .collect()
                    })
                    .collect();
                let inner: Vec<usize> = (0..rows).filter(|&r| gids[r] == 0).collect();
                let value = |r: usize| -> u64 {
                    if gids[r] == 0 {
                        return values[r].max(0) as u64;
                    }
                    inner
                        .iter()
                        .filter(|&&i| {
                            coords[r]
                                .iter()
                                .zip(&coords[i])
                                .all(|(m, c)| m.is_none() || m == c)
                        })
                        .map(|&i| values[i].max(0) as u64)
                        .sum()
                };
                let grid = GridTable {
                    dims,
                    cells: (0..rows)
                        .map(|r| GridCell {
                            coords: coords[r].clone(),
                            value: value(r),
                        })
                        .collect(),
                };
                pattern = match (
                    inner.is_empty(),
                    suppress::suppress_around(&grid, k, &below),
                ) {
                    (false, Ok(p)) => p,
                    // Margins without their interior (GROUPING SETS of
                    // separate dimensions), or household counts: withhold
                    // every margin, so none can be used.
                    _ => (0..rows)
                        .map(|r| {
                            if below[r] {
                                Some(Suppression::Primary)
                            } else if gids[r] != 0 {
                                Some(Suppression::Secondary)
                            } else {
                                None
                            }
                        })
                        .collect(),
                };
            }
            for r in 0..rows {
                if below[r] && pattern[r].is_none() {
                    pattern[r] = Some(Suppression::Primary);
                }
            }
            for (r, p) in pattern.iter().enumerate() {
                if status[r].is_some() {
                    continue;
                }
                match p {
                    Some(Suppression::Primary) => {
                        status[r] = Some("primary");
                        primary += 1;
                    }
                    Some(Suppression::Secondary) => {
                        status[r] = Some("secondary");
                        secondary += 1;
                    }
                    None => {}
                }
            }
            for (i, n) in noisy.into_iter().enumerate() {
                match n {
                    None => released.push(Arc::clone(agg_col(i))),
                    Some(v) => released.push(Arc::new(Int64Array::from(v))),
                }
            }
            let params = ptable.params();
            method = "cell_key";
            ptable_info = Some(PtableInfo {
                name: ptable.name().to_string(),
                sha256: ptable.sha256(),
                max_perturbation: ptable.perturbation_bound(),
                variance: params.map_or(0.0, |p| p.variance),
                js: params.map_or(0, |p| p.js),
                keys: ptable.key_range(),
            });
            dp_info = None;
        }
        Method::Dp { budget, k: kk } => {
            k = *kk;
            let share = budget_share(*budget, t.aggregates);
            let mut charge = 0.0;
            let mut columns = BTreeMap::new();
            let schema = t.batch.schema();
            let dp_err = |e: dp::DpError| {
                QueryError::new(Code::InvalidValue, format!("differential privacy: {e}"))
            };
            // Every noisy count of the row (AVG's counts included): the
            // threshold applies to each.
            let mut noisy_counts: Vec<Vec<i64>> = Vec::new();
            let mut avg_seen = 0;
            for (i, kind) in t.aggregates.iter().enumerate() {
                let name = t
                    .output_names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| schema.field(t.key_columns + i).name().clone());
                let truth = int_values(agg_col(i));
                let col: ArrayRef = match *kind {
                    AggregateKind::CountRows
                    | AggregateKind::CountColumn
                    | AggregateKind::CountHouseholds => {
                        let rel =
                            dp::noisy_counts(&truth, t.grouping_sets, share).map_err(dp_err)?;
                        charge += rel.charge.value();
                        columns.insert(name, DpColumn::of(&rel));
                        let v: Vec<i64> = rel.values.iter().map(|&x| x.max(0)).collect();
                        noisy_counts.push(v.clone());
                        Arc::new(Int64Array::from(v))
                    }
                    AggregateKind::Sum { lo, hi } => {
                        let rel = dp::noisy_sums(
                            &truth,
                            lo.floor() as i64,
                            hi.ceil() as i64,
                            t.grouping_sets,
                            share,
                        )
                        .map_err(dp_err)?;
                        charge += rel.charge.value();
                        columns.insert(name, DpColumn::of(&rel));
                        Arc::new(Int64Array::from(rel.values.clone()))
                    }
                    AggregateKind::Avg { lo, hi } => {
                        // AVG = noisy sum / noisy count; the engine appended
                        // SUM(x) and COUNT(x) for each AVG, in order.
                        let base = t.key_columns + t.aggregates.len() + 2 * avg_seen;
                        avg_seen += 1;
                        let sums = int_values(t.batch.column(base));
                        let counts = int_values(t.batch.column(base + 1));
                        let s = dp::noisy_sums(
                            &sums,
                            lo.floor() as i64,
                            hi.ceil() as i64,
                            t.grouping_sets,
                            share,
                        )
                        .map_err(dp_err)?;
                        let c =
                            dp::noisy_counts(&counts, t.grouping_sets, share).map_err(dp_err)?;
                        charge += s.charge.value() + c.charge.value();
                        noisy_counts.push(c.values.clone());
                        // The margin of the ratio at the published cell where
                        // it is widest (a cell with a count of at least k).
                        let worst = (0..rows)
                            .filter(|&r| c.values[r] as u64 >= k.max(1))
                            .map(|r| {
                                dp::ratio_margin_95(
                                    s.values[r] as f64,
                                    c.values[r] as f64,
                                    s.margin_of_error_95,
                                    c.margin_of_error_95,
                                )
                            })
                            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
                            .unwrap_or_else(|| {
                                dp::ratio_margin_95(
                                    hi * k.max(1) as f64,
                                    k.max(1) as f64,
                                    s.margin_of_error_95,
                                    c.margin_of_error_95,
                                )
                            });
                        columns.insert(
                            name,
                            DpColumn {
                                scale: s.scale,
                                margin_of_error_95: worst,
                                decimals: Some(AVG_DECIMALS),
                            },
                        );
                        let unit = 10f64.powi(AVG_DECIMALS as i32);
                        let v: Float64Array = (0..rows)
                            .map(|r| {
                                (c.values[r] > 0).then(|| {
                                    let mean =
                                        (s.values[r] as f64 / c.values[r] as f64).clamp(lo, hi);
                                    (mean * unit).round() / unit
                                })
                            })
                            .collect();
                        Arc::new(v)
                    }
                    AggregateKind::Grouping => Arc::clone(agg_col(i)),
                };
                released.push(col);
            }
            // Threshold on noisy values only, on every count of the row. A
            // noisy zero is a differentially private value like any other
            // and is published.
            for r in 0..rows {
                if noisy_counts.iter().any(|n| n[r] > 0 && (n[r] as u64) < k) {
                    status[r] = Some("primary");
                    primary += 1;
                }
            }
            method = "dp";
            ptable_info = None;
            let charge = match budget {
                DpBudget::ZCdp { .. } => DpCharge::Rho(charge),
                DpBudget::PureDp { .. } => DpCharge::Epsilon(charge),
            };
            dp_info = Some(DpInfo {
                budget: *budget,
                charge,
                columns,
                reused: false,
            });
        }
    }

    // Withheld cells are NULL.
    let withheld: Vec<bool> = status.iter().map(Option::is_some).collect();
    let released: Vec<ArrayRef> = released
        .into_iter()
        .map(|a| {
            if withheld.iter().any(|&w| w) {
                let keep = datafusion::arrow::array::BooleanArray::from(
                    withheld.iter().map(|w| !w).collect::<Vec<_>>(),
                );
                datafusion::arrow::compute::nullif(
                    &a,
                    &datafusion::arrow::compute::not(&keep).expect("not"),
                )
                .expect("nullif on equal lengths")
            } else {
                a
            }
        })
        .collect();
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    let schema = t.batch.schema();
    for j in 0..t.key_columns {
        fields.push(schema.field(j).as_ref().clone());
        columns.push(Arc::clone(t.batch.column(j)));
    }
    for (i, a) in released.into_iter().enumerate() {
        let f = schema.field(t.key_columns + i);
        fields.push(Field::new(f.name(), a.data_type().clone(), true));
        columns.push(a);
    }
    fields.push(Field::new(SUPPRESSION_COLUMN, DataType::Utf8, true));
    columns.push(Arc::new(status.iter().copied().collect::<StringArray>()));
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)
        .map_err(|e| QueryError::new(Code::InvalidValue, e.to_string()))?;
    let catatan = match method {
        "cell_key" => {
            let d = ptable_info
                .as_ref()
                .map_or(0, |p| u64::from(p.max_perturbation));
            format!(
                "Angka telah diacak paling banyak ±{d} untuk melindungi kerahasiaan: angka yang ditampilkan v berasal dari jumlah sebenarnya antara v-{d} dan v+{d}. Sel yang hasil acaknya di bawah {k} (termasuk sel kosong) dan sel yang penduduknya berasal dari kurang dari {k} keluarga tidak ditampilkan, sehingga sel kosong tidak dapat dibedakan dari sel kecil; sel yang tidak ditampilkan karena hasil acaknya di bawah {k} berisi 0 sampai {} orang. Total mungkin tidak sama dengan jumlah rinciannya.",
                k.saturating_sub(1) + d
            )
        }
        _ => format!(
            "Angka mengandung derau acak (differential privacy) untuk melindungi kerahasiaan; lihat margin of error tiap kolom. Baris dengan hasil hitung acak antara 1 dan {} tidak ditampilkan. Total mungkin tidak sama dengan jumlah rinciannya.",
            k.saturating_sub(1)
        ),
    };
    Ok(ProtectedTable {
        schema,
        batches: vec![batch],
        metadata: ReleaseMetadata {
            method: method.to_string(),
            ptable: ptable_info,
            k,
            dp: dp_info,
            cells: rows,
            primary_suppressed: primary,
            secondary_suppressed: secondary,
            blocked_areas,
            snapshot: t.snapshot,
            tanggal_data: t.tanggal_data,
            catatan,
            budget: None,
        },
    })
}
