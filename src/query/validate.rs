//! The gate: walks the DataFusion `LogicalPlan` (never the SQL text) and
//! accepts only plans of the shape
//!
//! ```text
//! (Sort | Limit | Filter-on-aggregates | Projection)*   <- post-plan, runs on released values
//!   Aggregate                                           <- approved aggregates, groupable keys
//!     (Filter | Projection | Join-with-public-tables)*  <- dimensions and coarsened dates only
//!       penduduk
//! ```
//!
//! Every column reference is traced to its source (a catalog column, a
//! reference table, or a derived expression) and classified: identifiers
//! never appear in group keys, predicates, projections or aggregate
//! arguments (except `COUNT(DISTINCT no_kk)`); dates only through the
//! coarsening functions; the record key never. The agreement's element
//! permissions, Minister's permissions and limits are checked here, and the
//! region scope is added as a predicate right above the `penduduk` scan so
//! that partitions outside the scope are never read.
//!
//! A [`ValidatedPlan`] can only be built by [`validate`].

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, InList};
use datafusion::logical_expr::{
    Distinct, Expr, Filter, GroupingSet, JoinType, LogicalPlan, Volatility, lit,
};

use super::engine::{PENDUDUK, REFERENCE_TABLES};
use super::error::{Code, QueryError};
use super::udf::{KELOMPOK_UMUR, MAX_AGE, TAHUN, UMUR, UMUR_PADA, earliest_year};
use crate::agreement::Agreement;
use crate::calendar::{date_to_days, days_to_date};
use crate::catalog::{self, ColumnClass, RegionLevel, RegionScope};
use chrono::Datelike;

/// A reference-side plan and the join keys that must be unique in it.
pub type UniqueCheck = (LogicalPlan, Vec<Expr>);

/// Scalar functions allowed below the aggregate besides the coarsening
/// functions: cheap functions of a code or a number, whose cost does not
/// depend on the value in a way a stopwatch could read (no `repeat`, no
/// padding, no regular expressions).
const ALLOWED_FUNCTIONS: &[&str] = &[
    "wajib_ktp",
    "upper",
    "lower",
    "substr",
    "substring",
    "left",
    "right",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "starts_with",
    "ends_with",
    "length",
    "char_length",
    "character_length",
    "coalesce",
    "nullif",
    "abs",
    "round",
    "floor",
    "ceil",
];

/// Largest magnitude of a SUM/AVG bound: 285 million people times it stays
/// far below 2^63, so a sum never wraps (a wrapped sum would move by 2^64
/// for one person, not by the bound the privacy charge assumes).
pub const MAX_SUM_BOUND: f64 = 1e9;

/// Band widths of `kelompok_umur` under the cell-key method: the fixed age
/// classifications (width 1 is the single years, the same groups as
/// `umur`). Bands of any width (or on any reference year) would
/// let the caller make many age groups that differ by one birth cohort,
/// and since each group of people gets its own noise, differences of such
/// tables, averaged, single out the cohort (its emptiness exactly).
pub const CELL_KEY_BAND_WIDTHS: [i64; 3] = [1, 5, 10];

/// Functions refused in the post-plan too: their output can be made
/// arbitrarily large (memory) or slow from a short query.
const EXPANDING_FUNCTIONS: &[&str] = &["repeat", "lpad", "rpad", "overlay", "replace", "translate"];

const RECORD_KEY_MESSAGE: &str =
    "the record key is internal to the cell-key method and is never queryable";

/// What an expression touches and what is known about its values.
#[derive(Debug, Clone, Default)]
struct Facts {
    identifiers: BTreeSet<&'static str>,
    record_key: bool,
    raw_dates: BTreeSet<&'static str>,
    columns: BTreeSet<&'static str>,
    /// The expression is exactly this `penduduk` column (through aliases).
    plain: Option<&'static str>,
    /// Known numeric bounds (coarsened ages and years, numeric literals).
    bounds: Option<(f64, f64)>,
    /// Depends on a reference table column.
    reference: bool,
}

impl Facts {
    fn merge(&mut self, o: Facts) {
        self.identifiers.extend(o.identifiers);
        self.record_key |= o.record_key;
        self.raw_dates.extend(o.raw_dates);
        self.columns.extend(o.columns);
        self.reference |= o.reference;
        self.plain = None;
        self.bounds = None;
    }

    /// The one place that refuses the record key, identifiers and raw
    /// dates; callers say which code an identifier gets and how to word the
    /// messages for their position in the query.
    fn forbid(
        &self,
        identifier: Code,
        identifier_message: impl Fn(&str) -> String,
        date_message: impl Fn(&str) -> String,
    ) -> Result<(), QueryError> {
        if self.record_key {
            return reject(Code::RecordKeyNotQueryable, RECORD_KEY_MESSAGE);
        }
        if let Some(id) = self.identifiers.iter().next() {
            return reject(identifier, identifier_message(id));
        }
        if let Some(d) = self.raw_dates.iter().next() {
            return reject(Code::DateNotCoarsened, date_message(d));
        }
        Ok(())
    }

    fn column(c: &'static catalog::Column) -> Facts {
        let mut f = Facts {
            plain: Some(c.name),
            ..Facts::default()
        };
        f.columns.insert(c.name);
        match c.class {
            ColumnClass::Identifier | ColumnClass::FreeText => {
                f.identifiers.insert(c.name);
            }
            ColumnClass::RecordKey => f.record_key = true,
            ColumnClass::DateDimension => {
                f.raw_dates.insert(c.name);
            }
            ColumnClass::Dimension | ColumnClass::Protected => {}
        }
        f
    }
}

pub use crate::protect::AggregateKind;

/// A plan that passed the gate, with the agreement's scope applied.
#[derive(Debug, Clone)]
pub struct ValidatedPlan {
    /// The whole plan, scope predicate included.
    pub(crate) plan: LogicalPlan,
    /// The distinct group-key expressions.
    group_keys: Vec<Expr>,
    /// Number of grouping sets (1 for a plain GROUP BY).
    grouping_sets: usize,
    /// One entry per aggregate output column, in order.
    aggregates: Vec<AggregateKind>,
    /// Catalog columns the query uses.
    elements: BTreeSet<&'static str>,
    /// Reference dates of the ages used (days), at most one.
    age_reference: Option<i32>,
    /// The coarsening functions applied to each date column.
    date_functions: std::collections::BTreeMap<&'static str, BTreeSet<&'static str>>,
    /// The table this query is, under the cell-key method (`None` under
    /// differential privacy, whose accounting covers richer SQL).
    table: Option<super::table::TableSpec>,
}

impl ValidatedPlan {
    /// The distinct group-key expressions.
    pub fn group_keys(&self) -> &[Expr] {
        &self.group_keys
    }

    /// Number of grouping sets (1 for a plain GROUP BY): a person counts
    /// once per set, so it scales the DP sensitivity.
    pub fn grouping_sets(&self) -> usize {
        self.grouping_sets
    }

    /// One entry per aggregate output column, in order.
    pub fn aggregates(&self) -> &[AggregateKind] {
        &self.aggregates
    }

    /// Catalog columns the query uses.
    pub fn elements(&self) -> &BTreeSet<&'static str> {
        &self.elements
    }

    /// Reference date of the ages used (days), at most one.
    pub fn age_reference(&self) -> Option<i32> {
        self.age_reference
    }

    /// The coarsening functions applied to each date column.
    pub fn date_functions(
        &self,
    ) -> &std::collections::BTreeMap<&'static str, BTreeSet<&'static str>> {
        &self.date_functions
    }

    /// The whole plan, scope applied.
    pub fn plan(&self) -> &LogicalPlan {
        &self.plan
    }

    /// Whether the aggregate has grouping sets (ROLLUP, CUBE, GROUPING
    /// SETS), so that DataFusion adds its grouping id as the last key.
    pub(crate) fn has_grouping_id(&self) -> bool {
        match self.aggregate() {
            LogicalPlan::Aggregate(a) => matches!(a.group_expr.as_slice(), [Expr::GroupingSet(_)]),
            _ => false,
        }
    }

    /// The output name of each aggregate column: the caller's alias in the
    /// final projection (`COUNT(*) AS n` is `n`), else DataFusion's name.
    /// The same names in a release's metadata and in `/v1/query/cost`.
    pub fn aggregate_names(&self) -> Vec<String> {
        let v = self;
        let LogicalPlan::Aggregate(a) = v.aggregate() else {
            return Vec::new();
        };
        let mut node = v.plan();
        let projection = loop {
            match node {
                LogicalPlan::Projection(p) => break Some(p),
                LogicalPlan::Aggregate(_) => break None,
                other => match other.inputs().first() {
                    Some(i) => node = i,
                    None => break None,
                },
            }
        };
        let fields = a.schema.fields();
        let first = fields.len().saturating_sub(a.aggr_expr.len());
        fields[first..]
            .iter()
            .map(|f| {
                let name = f.name().clone();
                projection
                    .and_then(|p| {
                        p.expr.iter().find_map(|x| {
                            let Expr::Alias(outer) = x else {
                                return None;
                            };
                            // COUNT(*) is `count(Int64(1)) AS count(*) AS n`.
                            let mut inner = outer.expr.as_ref();
                            while let Expr::Alias(a) = inner {
                                inner = a.expr.as_ref();
                            }
                            match inner {
                                Expr::Column(c) if c.name == name => Some(outer.name.clone()),
                                _ => None,
                            }
                        })
                    })
                    .unwrap_or(name)
            })
            .collect()
    }

    /// The table specification, under the cell-key method.
    pub fn table(&self) -> Option<&super::table::TableSpec> {
        self.table.as_ref()
    }

    /// The aggregate node, scope applied (what is executed before
    /// protection).
    pub(crate) fn aggregate(&self) -> &LogicalPlan {
        let mut node = &self.plan;
        loop {
            match node {
                LogicalPlan::Aggregate(_) => return node,
                other => node = other.inputs()[0],
            }
        }
    }
}

struct Walk {
    as_of: i32,
    /// Cell-key: ages only in the fixed classifications
    /// ([`CELL_KEY_BAND_WIDTHS`], the snapshot's school years).
    fixed_classifications: bool,
    penduduk_scans: usize,
    columns: BTreeSet<&'static str>,
    age_dates: BTreeSet<i32>,
    date_functions: std::collections::BTreeMap<&'static str, BTreeSet<&'static str>>,
    /// Reference-side plans and key expressions whose uniqueness must hold.
    unique_checks: Vec<UniqueCheck>,
}

fn reject<T>(code: Code, message: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError::new(code, message))
}

const WINDOW_MESSAGE: &str =
    "window functions (OVER ...) are not allowed; they compute values per person";

/// Plan nodes refused wherever they appear, above or below the aggregate.
fn refused_node(plan: &LogicalPlan) -> Option<QueryError> {
    let (code, message) = match plan {
        LogicalPlan::Window(_) => (Code::WindowFunctionNotAllowed, WINDOW_MESSAGE),
        LogicalPlan::Union(_) => (
            Code::SetOperationNotAllowed,
            "UNION, INTERSECT and EXCEPT are not allowed; use GROUPING SETS or ROLLUP for several groupings in one query",
        ),
        LogicalPlan::Explain(_)
        | LogicalPlan::Analyze(_)
        | LogicalPlan::Statement(_)
        | LogicalPlan::Dml(_)
        | LogicalPlan::Ddl(_)
        | LogicalPlan::Copy(_)
        | LogicalPlan::DescribeTable(_) => (
            Code::StatementNotAllowed,
            "only a single SELECT statement is accepted",
        ),
        _ => return None,
    };
    Some(QueryError::new(code, message))
}

/// Whether a name is reserved for the engine: the record key and every name
/// starting with `__` (internal columns such as the cell keys, and
/// DataFusion's `__grouping_id`). Protection finds its inputs by the plan,
/// never by a name, but a caller who could produce these names could still
/// confuse a reader of the plan, so they are refused anywhere.
pub(crate) fn is_reserved_name(name: &str) -> bool {
    name.starts_with("__") || name.eq_ignore_ascii_case(catalog::RECORD_KEY)
}

/// Refuses reserved names anywhere in the query: as an alias, a subquery or
/// CTE name, or a derived table's column list.
fn refuse_reserved_names(plan: &LogicalPlan) -> Result<(), QueryError> {
    let mut found: Option<String> = None;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::SubqueryAlias(a) = node
            && is_reserved_name(a.alias.table())
        {
            found = Some(a.alias.table().to_string());
            return Ok(TreeNodeRecursion::Stop);
        }
        let _ = node.apply_expressions(|root| {
            root.apply(|e| {
                if let Expr::Alias(a) = e
                    && is_reserved_name(&a.name)
                    && !matches!(a.expr.as_ref(), Expr::Column(c) if c.name == a.name)
                {
                    found = Some(a.name.clone());
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        });
        Ok(if found.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    match found {
        Some(name) => reject(
            Code::ReservedName,
            format!(
                "the name '{name}' is reserved for the engine (names starting with '__' and 'record_key'); choose another alias, e.g. jumlah"
            ),
        ),
        None => Ok(()),
    }
}

fn plan_reads(plan: &LogicalPlan, table: &str) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(t) = p
            && t.table_name.table() == table
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

pub(super) fn literal_date(e: &Expr) -> Option<i32> {
    match e {
        Expr::Literal(ScalarValue::Date32(Some(d)), _) => Some(*d),
        Expr::Literal(ScalarValue::Utf8(Some(s)), _)
        | Expr::Literal(ScalarValue::Utf8View(Some(s)), _) => {
            s.parse::<chrono::NaiveDate>().ok().map(date_to_days)
        }
        Expr::Cast(c) => literal_date(&c.expr),
        Expr::Alias(a) => literal_date(&a.expr),
        _ => None,
    }
}

pub(super) fn literal_number(e: &Expr) -> Option<f64> {
    match e {
        Expr::Literal(v, _) => match v {
            ScalarValue::Int8(Some(x)) => Some(f64::from(*x)),
            ScalarValue::Int16(Some(x)) => Some(f64::from(*x)),
            ScalarValue::Int32(Some(x)) => Some(f64::from(*x)),
            ScalarValue::Int64(Some(x)) => Some(*x as f64),
            ScalarValue::UInt8(Some(x)) => Some(f64::from(*x)),
            ScalarValue::UInt16(Some(x)) => Some(f64::from(*x)),
            ScalarValue::UInt32(Some(x)) => Some(f64::from(*x)),
            ScalarValue::UInt64(Some(x)) => Some(*x as f64),
            ScalarValue::Float32(Some(x)) => Some(f64::from(*x)),
            ScalarValue::Float64(Some(x)) => Some(*x),
            _ => None,
        },
        Expr::Cast(c) => literal_number(&c.expr),
        Expr::Negative(inner) => literal_number(inner).map(|x| -x),
        _ => None,
    }
}

fn list(cols: &BTreeSet<&'static str>) -> String {
    cols.iter()
        .map(|c| format!("'{c}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Walk {
    /// Classifies an expression evaluated over `schema`, whose columns have
    /// the facts `lineage`.
    fn classify(
        &mut self,
        e: &Expr,
        schema: &DFSchema,
        lineage: &[Facts],
    ) -> Result<Facts, QueryError> {
        match e {
            Expr::Alias(a) => self.classify(&a.expr, schema, lineage),
            Expr::Column(c) => {
                let idx = schema.index_of_column(c).map_err(|_| {
                    QueryError::new(
                        Code::PlanError,
                        format!("column '{}' is not available here", c.name),
                    )
                })?;
                Ok(lineage.get(idx).cloned().unwrap_or_default())
            }
            Expr::Literal(..) => Ok(Facts {
                bounds: literal_number(e).map(|x| (x, x)),
                ..Facts::default()
            }),
            Expr::ScalarFunction(f) => {
                let name = f.name();
                match name {
                    UMUR | UMUR_PADA | TAHUN => self.coarsen(name, &f.args, schema, lineage),
                    KELOMPOK_UMUR => {
                        let age = self.classify(&f.args[0], schema, lineage)?;
                        if !age.raw_dates.is_empty() {
                            return reject(
                                Code::DateNotCoarsened,
                                "kelompok_umur takes an age, e.g. kelompok_umur(umur(tanggal_lahir), 5)",
                            );
                        }
                        let width = f.args.get(1).and_then(literal_number);
                        if let Some(w) = width
                            && !(1.0..=super::udf::MAX_BAND_WIDTH as f64).contains(&w)
                        {
                            return reject(
                                Code::FunctionNotAllowed,
                                format!(
                                    "kelompok_umur band width {w} is out of range; use 1 to {} years, e.g. 5",
                                    super::udf::MAX_BAND_WIDTH
                                ),
                            );
                        }
                        if let Some(w) = width
                            && self.fixed_classifications
                            && !CELL_KEY_BAND_WIDTHS.contains(&(w as i64))
                        {
                            return reject(
                                Code::AgeClassificationNotAllowed,
                                format!(
                                    "kelompok_umur band width {w} is not one of the fixed age classifications of the cell-key method ({}); tables over bands of any width could be differenced to single out people born in one year, so use 5 or 10 (1 is single years)",
                                    CELL_KEY_BAND_WIDTHS.map(|w| w.to_string()).join(", ")
                                ),
                            );
                        }
                        if width.is_none() {
                            return reject(
                                Code::FunctionNotAllowed,
                                "kelompok_umur needs a literal band width, e.g. kelompok_umur(umur(tanggal_lahir), 5)",
                            );
                        }
                        let mut out = Facts::default();
                        out.merge(age);
                        Ok(out)
                    }
                    _ => {
                        if f.func.signature().volatility != Volatility::Immutable {
                            return reject(
                                Code::VolatileFunctionNotAllowed,
                                format!(
                                    "function '{name}' is not deterministic; results must depend only on the data, so use a fixed value instead"
                                ),
                            );
                        }
                        let mut out = Facts::default();
                        for a in &f.args {
                            let fa = self.classify(a, schema, lineage)?;
                            out.merge(fa);
                        }
                        // An identifier or a raw date inside is refused
                        // wherever the expression is used, with that
                        // reason; otherwise the function must be allowed.
                        let refused_anyway = !out.identifiers.is_empty()
                            || !out.raw_dates.is_empty()
                            || out.record_key;
                        if !refused_anyway && !ALLOWED_FUNCTIONS.contains(&name) {
                            return reject(
                                Code::FunctionNotAllowed,
                                format!(
                                    "function '{name}' is not allowed below the aggregate; use comparisons, IN, BETWEEN, the coarsening functions (umur, umur_pada, tahun, kelompok_umur) or one of: {}",
                                    ALLOWED_FUNCTIONS.join(", ")
                                ),
                            );
                        }
                        Ok(out)
                    }
                }
            }
            Expr::Case(c) => {
                let mut out = Facts::default();
                let mut lo = f64::INFINITY;
                let mut hi = f64::NEG_INFINITY;
                let mut numeric = true;
                if let Some(base) = &c.expr {
                    let f = self.classify(base, schema, lineage)?;
                    out.merge(f);
                }
                let mut branch = |v: Option<f64>| match v {
                    Some(x) => {
                        lo = lo.min(x);
                        hi = hi.max(x);
                    }
                    None => numeric = false,
                };
                for (when, then) in &c.when_then_expr {
                    let fw = self.classify(when, schema, lineage)?;
                    out.merge(fw);
                    let ft = self.classify(then, schema, lineage)?;
                    branch(literal_number(then));
                    out.merge(ft);
                }
                match &c.else_expr {
                    Some(e) => {
                        let fe = self.classify(e, schema, lineage)?;
                        branch(literal_number(e));
                        out.merge(fe);
                    }
                    // A missing ELSE yields NULL, which sums ignore.
                    None => branch(Some(0.0)),
                }
                out.bounds = numeric.then_some((lo, hi));
                Ok(out)
            }
            Expr::AggregateFunction(_) => reject(
                Code::NestedAggregate,
                "an aggregate cannot be used here; aggregate once, at the top of the query",
            ),
            Expr::WindowFunction(_) => reject(Code::WindowFunctionNotAllowed, WINDOW_MESSAGE),
            Expr::ScalarSubquery(s) => {
                self.subquery(&s.subquery, !s.outer_ref_columns.is_empty())?;
                Ok(Facts {
                    reference: true,
                    ..Facts::default()
                })
            }
            Expr::Exists(x) => {
                self.subquery(
                    &x.subquery.subquery,
                    !x.subquery.outer_ref_columns.is_empty(),
                )?;
                Ok(Facts::default())
            }
            Expr::InSubquery(x) => {
                self.subquery(
                    &x.subquery.subquery,
                    !x.subquery.outer_ref_columns.is_empty(),
                )?;
                self.classify(&x.expr, schema, lineage)
            }
            Expr::SetComparison(x) => {
                self.subquery(
                    &x.subquery.subquery,
                    !x.subquery.outer_ref_columns.is_empty(),
                )?;
                self.classify(&x.expr, schema, lineage)
            }
            Expr::OuterReferenceColumn(..) => reject(
                Code::PlanShapeNotAllowed,
                "correlated subqueries are not supported; join a reference table instead",
            ),
            Expr::ScalarVariable(..) | Expr::Placeholder(_) => reject(
                Code::FunctionNotAllowed,
                "variables and placeholders are not allowed; write the value into the query",
            ),
            Expr::Unnest(_) => reject(Code::PlanShapeNotAllowed, "UNNEST is not allowed"),
            other => {
                let mut out = Facts::default();
                let mut err = None;
                let _ = other.apply_children(|child| match self.classify(child, schema, lineage) {
                    Ok(f) => {
                        out.merge(f);
                        Ok(TreeNodeRecursion::Continue)
                    }
                    Err(e) => {
                        err = Some(e);
                        Ok(TreeNodeRecursion::Stop)
                    }
                });
                if let Some(e) = err {
                    return Err(e);
                }
                Ok(out)
            }
        }
    }

    fn coarsen(
        &mut self,
        name: &str,
        args: &[Expr],
        schema: &DFSchema,
        lineage: &[Facts],
    ) -> Result<Facts, QueryError> {
        let arg = self.classify(&args[0], schema, lineage)?;
        if arg.record_key {
            return reject(Code::RecordKeyNotQueryable, RECORD_KEY_MESSAGE);
        }
        if let Some(id) = arg.identifiers.iter().next() {
            return reject(
                Code::IdentifierInAggregate,
                format!(
                    "column '{id}' is an identifier and cannot be passed to {name}(); use a date column such as tanggal_lahir"
                ),
            );
        }
        let date_col = match arg.plain.and_then(catalog::column) {
            Some(c) if c.class == ColumnClass::DateDimension => c.name,
            _ => {
                return reject(
                    Code::DateNotCoarsened,
                    format!(
                        "{name}() must be applied directly to a date column, e.g. {name}(tanggal_lahir); shifting or computing dates first is not allowed"
                    ),
                );
            }
        };
        let mut out = Facts::default();
        out.columns.insert(date_col);
        let function = match name {
            UMUR => UMUR,
            UMUR_PADA => UMUR_PADA,
            _ => TAHUN,
        };
        self.date_functions
            .entry(date_col)
            .or_default()
            .insert(function);
        match name {
            UMUR => {
                self.age_dates.insert(self.as_of);
                out.bounds = Some((0.0, f64::from(MAX_AGE)));
            }
            UMUR_PADA => {
                let Some(on) = args.get(1).and_then(literal_date) else {
                    return reject(
                        Code::DateNotCoarsened,
                        "umur_pada() takes a literal date as its second argument, e.g. umur_pada(tanggal_lahir, DATE '2026-07-01')",
                    );
                };
                let date = days_to_date(on);
                if !((date.month() == 7 && date.day() == 1) || on == self.as_of) {
                    return reject(
                        Code::AgeReferenceDateNotAllowed,
                        format!(
                            "umur_pada() takes 1 July of a school year (e.g. DATE '{}-07-01') or the snapshot's reference date ({}), not {date}; ages on other days could be combined to narrow birth dates",
                            days_to_date(self.as_of).year(),
                            days_to_date(self.as_of)
                        ),
                    );
                }
                let year = days_to_date(self.as_of).year();
                if self.fixed_classifications
                    && on != self.as_of
                    && !(year..=year + 1).contains(&date.year())
                {
                    return reject(
                        Code::AgeClassificationNotAllowed,
                        format!(
                            "under the cell-key method umur_pada() takes 1 July of the snapshot's school years, DATE '{year}-07-01' or DATE '{}-07-01' (or the snapshot's reference date {}), not {date}; ages on other years shift every age group, and tables over shifted groups could be differenced to single out people born in one year",
                            year + 1,
                            days_to_date(self.as_of)
                        ),
                    );
                }
                self.age_dates.insert(on);
                out.bounds = Some((0.0, f64::from(MAX_AGE)));
            }
            _ => {
                let year = days_to_date(self.as_of).year();
                out.bounds = Some((f64::from(earliest_year(self.as_of)), f64::from(year)));
            }
        }
        Ok(out)
    }

    /// A subquery inside an expression may read only public tables.
    fn subquery(&mut self, plan: &LogicalPlan, correlated: bool) -> Result<(), QueryError> {
        if plan_reads(plan, PENDUDUK) {
            return reject(
                Code::SubqueryReadsPenduduk,
                "a subquery may not read penduduk a second time; filter on dimensions directly, or use a subquery over wilayah or kode_referensi",
            );
        }
        if correlated {
            return reject(
                Code::PlanShapeNotAllowed,
                "correlated subqueries are not supported; join a reference table instead",
            );
        }
        let mut bad = None;
        let _ = plan.apply_with_subqueries(|p| {
            match p {
                LogicalPlan::TableScan(t) if !REFERENCE_TABLES.contains(&t.table_name.table()) => {
                    bad = Some(t.table_name.to_string());
                    return Ok(TreeNodeRecursion::Stop);
                }
                LogicalPlan::Values(_) => {
                    bad = Some("VALUES".to_string());
                    return Ok(TreeNodeRecursion::Stop);
                }
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        });
        if let Some(t) = bad {
            return reject(
                Code::TableNotAllowed,
                format!(
                    "table '{t}' cannot be read; only penduduk, wilayah and kode_referensi are available"
                ),
            );
        }
        Ok(())
    }

    fn predicate(
        &mut self,
        e: &Expr,
        schema: &DFSchema,
        lineage: &[Facts],
        place: &str,
    ) -> Result<Facts, QueryError> {
        let f = self.classify(e, schema, lineage)?;
        f.forbid(
            Code::IdentifierInPredicate,
            |id| format!("column '{id}' is an identifier and cannot be used in {place}; filter on a region or category column instead"),
            |d| format!("column '{d}' is a date and can be used in {place} only through umur(), umur_pada() or tahun()"),
        )?;
        self.columns.extend(f.columns.iter().copied());
        Ok(f)
    }

    /// Validates the subtree below the aggregate; returns facts per output
    /// column.
    fn lower(&mut self, plan: &LogicalPlan) -> Result<Vec<Facts>, QueryError> {
        if let Some(e) = refused_node(plan) {
            return Err(e);
        }
        match plan {
            LogicalPlan::TableScan(t) => {
                let table = t.table_name.table();
                if t.table_name.schema().is_some_and(|s| s != "public")
                    || t.table_name.catalog().is_some_and(|c| c != "datafusion")
                {
                    return reject(
                        Code::TableNotAllowed,
                        format!(
                            "table '{}' cannot be read; only penduduk, wilayah and kode_referensi are available",
                            t.table_name
                        ),
                    );
                }
                if t.fetch.is_some() {
                    return reject(
                        Code::PlanShapeNotAllowed,
                        "row limits below the aggregate are not allowed",
                    );
                }
                if table == PENDUDUK {
                    self.penduduk_scans += 1;
                    Ok(t.projected_schema
                        .fields()
                        .iter()
                        .map(|f| {
                            catalog::column(f.name())
                                .map(Facts::column)
                                .unwrap_or_default()
                        })
                        .collect())
                } else if REFERENCE_TABLES.contains(&table) {
                    Ok(vec![
                        Facts {
                            reference: true,
                            ..Facts::default()
                        };
                        t.projected_schema.fields().len()
                    ])
                } else {
                    reject(
                        Code::TableNotAllowed,
                        format!(
                            "table '{}' cannot be read; only penduduk, wilayah and kode_referensi are available",
                            t.table_name
                        ),
                    )
                }
            }
            LogicalPlan::Filter(f) => {
                let l = self.lower(&f.input)?;
                self.predicate(&f.predicate, f.input.schema(), &l, "WHERE")?;
                Ok(l)
            }
            LogicalPlan::Projection(p) => {
                let l = self.lower(&p.input)?;
                let mut out = Vec::with_capacity(p.expr.len());
                for e in &p.expr {
                    let f = self.classify(e, p.input.schema(), &l)?;
                    if f.record_key {
                        return reject(Code::RecordKeyNotQueryable, RECORD_KEY_MESSAGE);
                    }
                    if let Some(id) = f.identifiers.iter().next() {
                        return reject(
                            Code::IdentifierInProjection,
                            format!(
                                "column '{id}' is an identifier and cannot be selected, even in a subquery; select only the region and category columns you need (SELECT * includes identifiers)"
                            ),
                        );
                    }
                    if !f.raw_dates.is_empty() && f.plain.is_none() {
                        return reject(
                            Code::DateNotCoarsened,
                            format!(
                                "dates can be used only through umur(), umur_pada() or tahun(); '{}' computes on a raw date",
                                e.schema_name()
                            ),
                        );
                    }
                    self.columns.extend(
                        f.columns
                            .iter()
                            .filter(|c| !f.raw_dates.contains(*c))
                            .copied(),
                    );
                    out.push(f);
                }
                Ok(out)
            }
            LogicalPlan::SubqueryAlias(a) => self.lower(&a.input),
            LogicalPlan::Join(j) => {
                let (lp, rp) = (
                    plan_reads(&j.left, PENDUDUK),
                    plan_reads(&j.right, PENDUDUK),
                );
                if lp && rp {
                    return reject(
                        Code::SelfJoinNotAllowed,
                        "penduduk cannot be joined with itself; one pass over penduduk per query",
                    );
                }
                let ok_type = match j.join_type {
                    JoinType::Inner => true,
                    JoinType::Left => !rp,
                    JoinType::Right => !lp,
                    _ => false,
                };
                if !ok_type {
                    return reject(
                        Code::JoinNotAllowed,
                        format!(
                            "{} joins are not allowed here; join reference tables with INNER JOIN, or LEFT JOIN with penduduk on the left",
                            j.join_type
                        ),
                    );
                }
                let l = self.lower(&j.left)?;
                let r = self.lower(&j.right)?;
                let mut all = l.clone();
                all.extend(r.iter().cloned());
                let schema = j.schema.as_ref();
                for (a, b) in &j.on {
                    self.predicate(a, j.left.schema(), &l, "JOIN ON")?;
                    self.predicate(b, j.right.schema(), &r, "JOIN ON")?;
                }
                if let Some(f) = &j.filter {
                    self.predicate(f, schema, &all, "JOIN ON")?;
                }
                // The reference side must be joined on a unique key, so no
                // person is counted twice.
                if lp || rp {
                    // Equalities between the two sides, from ON keys or the
                    // (unoptimised) join filter.
                    let mut pairs: Vec<(Expr, Expr)> = j.on.clone();
                    if let Some(f) = &j.filter {
                        let side = |e: &Expr, s: &DFSchema| {
                            let cols = e.column_refs();
                            !cols.is_empty() && cols.iter().all(|c| s.has_column(c))
                        };
                        for c in datafusion::logical_expr::utils::split_conjunction(f) {
                            if let Expr::BinaryExpr(b) = c
                                && b.op == datafusion::logical_expr::Operator::Eq
                            {
                                let (x, y) = (b.left.as_ref(), b.right.as_ref());
                                if side(x, j.left.schema()) && side(y, j.right.schema()) {
                                    pairs.push((x.clone(), y.clone()));
                                } else if side(y, j.left.schema()) && side(x, j.right.schema()) {
                                    pairs.push((y.clone(), x.clone()));
                                }
                            }
                        }
                    }
                    let (ref_plan, keys): (&LogicalPlan, Vec<Expr>) = if lp {
                        (&j.right, pairs.iter().map(|(_, b)| b.clone()).collect())
                    } else {
                        (&j.left, pairs.iter().map(|(a, _)| a.clone()).collect())
                    };
                    if keys.is_empty() {
                        return reject(
                            Code::JoinNotOnKey,
                            "a join with penduduk needs an equality on the reference table's key, e.g. JOIN wilayah w ON w.kode = p.kode_kec",
                        );
                    }
                    self.unique_checks.push((ref_plan.clone(), keys));
                }
                Ok(all)
            }
            LogicalPlan::Aggregate(_) => reject(
                Code::NestedAggregate,
                "aggregating the result of another aggregate is not allowed; it can single out small groups. Aggregate once, over penduduk",
            ),
            LogicalPlan::Sort(_) | LogicalPlan::Limit(_) | LogicalPlan::Distinct(_) => reject(
                Code::PlanShapeNotAllowed,
                "ORDER BY, LIMIT and DISTINCT inside a subquery pick individual rows; apply them to the aggregated result instead",
            ),
            LogicalPlan::Values(_) => reject(
                Code::ValuesNotAllowed,
                "VALUES lists are not allowed; filter with IN (...) on a dimension, or join wilayah/kode_referensi",
            ),
            LogicalPlan::EmptyRelation(_) => reject(
                Code::NotAnAggregate,
                "the query must aggregate over penduduk, e.g. SELECT kode_kec, COUNT(*) FROM penduduk GROUP BY kode_kec",
            ),
            other => reject(
                Code::PlanShapeNotAllowed,
                format!(
                    "'{}' is not supported in an aggregate query",
                    other.display()
                ),
            ),
        }
    }

    /// Checks an expression of the post-plan (above the aggregate).
    fn upper(&mut self, e: &Expr) -> Result<(), QueryError> {
        let mut err = None;
        let _ = e.apply(|x| {
            let r = match x {
                Expr::WindowFunction(_) => reject(
                    Code::WindowFunctionNotAllowed,
                    "window functions (OVER ...) are not allowed; sort or filter the aggregated result instead",
                ),
                Expr::ScalarSubquery(s) => self.subquery(&s.subquery, !s.outer_ref_columns.is_empty()),
                Expr::Exists(s) => self.subquery(&s.subquery.subquery, true),
                Expr::InSubquery(s) => self.subquery(&s.subquery.subquery, !s.subquery.outer_ref_columns.is_empty()),
                Expr::SetComparison(s) => self.subquery(&s.subquery.subquery, !s.subquery.outer_ref_columns.is_empty()),
                Expr::ScalarFunction(f) if f.func.signature().volatility != Volatility::Immutable => reject(
                    Code::VolatileFunctionNotAllowed,
                    format!("function '{}' is not deterministic; use a fixed value instead", f.name()),
                ),
                Expr::ScalarFunction(f) if EXPANDING_FUNCTIONS.contains(&f.name()) => reject(
                    Code::FunctionNotAllowed,
                    format!("function '{}' can build arbitrarily large values and is not allowed; format the released table on your side", f.name()),
                ),
                _ => Ok(()),
            };
            match r {
                Ok(()) => Ok(TreeNodeRecursion::Continue),
                Err(e) => {
                    err = Some(e);
                    Ok(TreeNodeRecursion::Stop)
                }
            }
        });
        err.map_or(Ok(()), Err)
    }

    fn aggregate_fn(
        &mut self,
        a: &AggregateFunction,
        schema: &DFSchema,
        lineage: &[Facts],
    ) -> Result<AggregateKind, QueryError> {
        let name = a.func.name().to_ascii_lowercase();
        let p = &a.params;
        if !p.order_by.is_empty() {
            return reject(
                Code::AggregateNotAllowed,
                format!("{name}(... ORDER BY ...) is not an approved aggregate"),
            );
        }
        if let Some(f) = &p.filter {
            self.predicate(f, schema, lineage, "an aggregate FILTER clause")?;
        }
        let arg = match p.args.as_slice() {
            [] => None,
            [x] => Some(x),
            _ => None,
        };
        let not_allowed = |why: &str| {
            reject(
                Code::AggregateNotAllowed,
                format!(
                    "{} is not an approved aggregate: {why}; use COUNT(*), COUNT(DISTINCT no_kk), SUM or AVG of an age",
                    name.to_uppercase()
                ),
            )
        };
        match name.as_str() {
            "count" => {
                let Some(arg) = arg else {
                    return Ok(AggregateKind::CountRows);
                };
                if !p.distinct && matches!(arg, Expr::Literal(..)) {
                    return Ok(AggregateKind::CountRows);
                }
                let f = self.classify(arg, schema, lineage)?;
                if f.record_key {
                    return reject(Code::RecordKeyNotQueryable, RECORD_KEY_MESSAGE);
                }
                if p.distinct {
                    if f.plain == Some("no_kk") {
                        self.columns.insert("no_kk");
                        return Ok(AggregateKind::CountHouseholds);
                    }
                    return reject(
                        Code::DistinctNotAllowed,
                        "COUNT(DISTINCT ...) is allowed only as COUNT(DISTINCT no_kk), to count households; group by the column instead",
                    );
                }
                if let Some(id) = f.identifiers.iter().next() {
                    return reject(
                        Code::IdentifierInAggregate,
                        format!(
                            "column '{id}' is an identifier and cannot be aggregated; use COUNT(*), or COUNT(DISTINCT no_kk) for households"
                        ),
                    );
                }
                if let Some(d) = f.raw_dates.iter().next() {
                    if f.plain.is_some() {
                        // COUNT(tanggal_kawin) counts known dates: a count of a
                        // dimension-like fact, not the date itself.
                        self.columns.insert(d);
                        return Ok(AggregateKind::CountColumn);
                    }
                    return reject(
                        Code::DateNotCoarsened,
                        format!(
                            "column '{d}' is a date and can be used only through umur(), umur_pada() or tahun()"
                        ),
                    );
                }
                self.columns.extend(f.columns.iter().copied());
                Ok(AggregateKind::CountColumn)
            }
            "sum" | "avg" => {
                if p.distinct {
                    return reject(
                        Code::DistinctNotAllowed,
                        format!(
                            "{}(DISTINCT ...) is not allowed; drop DISTINCT",
                            name.to_uppercase()
                        ),
                    );
                }
                let Some(arg) = arg else {
                    return reject(Code::PlanError, format!("{name} takes one argument"));
                };
                let f = self.classify(arg, schema, lineage)?;
                f.forbid(
                    Code::IdentifierInAggregate,
                    |id| format!("column '{id}' is an identifier and cannot be aggregated"),
                    |d| format!("column '{d}' is a date; sum ages with umur({d}) instead"),
                )?;
                let Some((lo, hi)) = f.bounds.filter(|(lo, hi)| lo.is_finite() && hi.is_finite())
                else {
                    return reject(
                        Code::SumNeedsBounds,
                        format!(
                            "{}({}) has no declared bounds, so it cannot be protected; sum umur(), umur_pada() or tahun() directly, or a CASE with numeric literal results",
                            name.to_uppercase(),
                            arg.schema_name()
                        ),
                    );
                };
                if lo == 0.0 && hi == 0.0 {
                    return reject(
                        Code::SumNeedsBounds,
                        format!(
                            "{}({}) is always 0, so there is nothing to protect or release; count the rows with COUNT(*) instead",
                            name.to_uppercase(),
                            arg.schema_name()
                        ),
                    );
                }
                if lo.abs().max(hi.abs()) > MAX_SUM_BOUND {
                    return reject(
                        Code::SumNeedsBounds,
                        format!(
                            "{}({}) has bounds [{lo}, {hi}]; values beyond ±{MAX_SUM_BOUND} could overflow the sum over a whole register, which the privacy accounting would not see; sum smaller values (ages, years, codes) or count with COUNT(*)",
                            name.to_uppercase(),
                            arg.schema_name()
                        ),
                    );
                }
                self.columns.extend(f.columns.iter().copied());
                Ok(if name == "sum" {
                    AggregateKind::Sum { lo, hi }
                } else {
                    AggregateKind::Avg { lo, hi }
                })
            }
            "grouping" => reject(
                Code::AggregateNotAllowed,
                "GROUPING() is not supported yet; in ROLLUP/CUBE results the rolled-up keys are NULL, which marks the margins",
            ),
            "min" | "max" => not_allowed("it returns one person's value"),
            "median"
            | "percentile_cont"
            | "percentile_disc"
            | "approx_percentile_cont"
            | "approx_percentile_cont_with_weight"
            | "approx_median"
            | "quantile_cont"
            | "quantile_disc" => not_allowed("quantiles are values of individual people"),
            "array_agg" | "string_agg" => not_allowed("it lists individual values"),
            "first_value" | "last_value" | "nth_value" => not_allowed("it picks one person's row"),
            "approx_distinct" => not_allowed("distinct counts can reveal rare values"),
            "bit_and" | "bit_or" | "bit_xor" | "bool_and" | "bool_or" => {
                not_allowed("bitwise and boolean aggregates can reveal a single person")
            }
            "stddev" | "stddev_pop" | "stddev_samp" | "var" | "var_pop" | "var_samp"
            | "variance" | "covar" | "covar_pop" | "covar_samp" | "corr" => {
                not_allowed("dispersion measures have no approved protection")
            }
            n if n.starts_with("regr_") => not_allowed("regressions have no approved protection"),
            _ => not_allowed("only approved aggregates can be protected"),
        }
    }
}

/// Validates a planned query against the agreement. `as_of` is the
/// snapshot's reference date (Date32 days).
pub fn validate(
    plan: &LogicalPlan,
    agreement: &Agreement,
    as_of: i32,
) -> Result<(ValidatedPlan, Vec<UniqueCheck>), QueryError> {
    refuse_reserved_names(plan)?;
    let mut w = Walk {
        as_of,
        fixed_classifications: !agreement.protection().is_dp(),
        penduduk_scans: 0,
        columns: BTreeSet::new(),
        age_dates: BTreeSet::new(),
        date_functions: Default::default(),
        unique_checks: Vec::new(),
    };
    // 1. The post-plan above the aggregate.
    let mut node = plan;
    let agg = loop {
        if let Some(e) = refused_node(node) {
            return Err(e);
        }
        match node {
            LogicalPlan::Projection(p) => {
                for e in &p.expr {
                    w.upper(e)?;
                }
                node = &p.input;
            }
            LogicalPlan::Filter(f) => {
                w.upper(&f.predicate)?;
                node = &f.input;
            }
            LogicalPlan::Sort(s) => {
                for e in &s.expr {
                    w.upper(&e.expr)?;
                }
                node = &s.input;
            }
            LogicalPlan::Limit(l) => {
                for e in [&l.skip, &l.fetch].into_iter().flatten() {
                    if !matches!(e.as_ref(), Expr::Literal(..)) {
                        return reject(
                            Code::PlanShapeNotAllowed,
                            format!(
                                "LIMIT and OFFSET take a number written into the query, not '{}'; e.g. LIMIT 10",
                                e.schema_name()
                            ),
                        );
                    }
                }
                node = &l.input;
            }
            LogicalPlan::SubqueryAlias(a) => node = &a.input,
            LogicalPlan::Distinct(Distinct::All(input)) => node = input,
            LogicalPlan::Aggregate(a) => break a,
            other => {
                // Not an aggregate: say which identifier would have leaked.
                let mut ids = BTreeSet::new();
                if plan_reads(other, PENDUDUK) {
                    for f in plan.schema().fields() {
                        if let Some(c) = catalog::column(f.name())
                            && matches!(
                                c.class,
                                ColumnClass::Identifier
                                    | ColumnClass::FreeText
                                    | ColumnClass::RecordKey
                            )
                        {
                            ids.insert(c.name);
                        }
                    }
                }
                if !ids.is_empty() {
                    return reject(
                        Code::IdentifierInOutput,
                        format!(
                            "{} would output identifiers of individual people; agregat returns only aggregates, e.g. SELECT kode_kel, COUNT(*) FROM penduduk GROUP BY kode_kel",
                            list(&ids)
                        ),
                    );
                }
                if !plan_reads(other, PENDUDUK) {
                    let _ = w.lower(other)?;
                }
                return reject(
                    Code::NotAnAggregate,
                    "the result must be an aggregate over penduduk, e.g. SELECT kode_kel, COUNT(*) FROM penduduk GROUP BY kode_kel",
                );
            }
        }
    };

    // 2. Below the aggregate.
    let lineage = w.lower(&agg.input)?;
    if w.penduduk_scans != 1 {
        return reject(
            Code::NotAnAggregate,
            "the query must aggregate over the table penduduk (exactly once)",
        );
    }
    let schema = agg.input.schema();

    // 3. Group keys.
    let (keys, sets): (Vec<Expr>, usize) = match agg.group_expr.as_slice() {
        [Expr::GroupingSet(gs)] => {
            let sets = match gs {
                GroupingSet::Rollup(v) => v.len() + 1,
                GroupingSet::Cube(v) => 1usize << v.len().min(20),
                GroupingSet::GroupingSets(v) => v.len(),
            };
            (gs.distinct_expr().into_iter().cloned().collect(), sets)
        }
        exprs => (exprs.to_vec(), 1),
    };
    for k in &keys {
        let f = w.classify(k, schema, &lineage)?;
        f.forbid(
            Code::IdentifierInGroupBy,
            |id| format!("column '{id}' is an identifier and cannot be grouped by; use a region or category column instead"),
            |d| format!("column '{d}' is a date and cannot be grouped by directly; group by umur({d}), kelompok_umur(umur({d}), 5) or tahun({d})"),
        )?;
        w.columns.extend(f.columns.iter().copied());
    }
    let max_dims = agreement.limits().max_group_dimensions;
    if keys.len() > max_dims {
        return reject(
            Code::TooManyDimensions,
            format!(
                "the query groups by {} expressions; this agreement allows at most {max_dims}; drop or combine dimensions",
                keys.len()
            ),
        );
    }

    // 4. Aggregates.
    let mut aggregates = Vec::new();
    for e in &agg.aggr_expr {
        let inner = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            other => other,
        };
        match inner {
            Expr::AggregateFunction(a) => aggregates.push(w.aggregate_fn(a, schema, &lineage)?),
            _ => {
                return reject(
                    Code::AggregateNotAllowed,
                    format!("'{}' is not an approved aggregate", e.schema_name()),
                );
            }
        }
    }

    // 5. One age reference date per query.
    if w.age_dates.len() > 1 {
        let dates: Vec<String> = w
            .age_dates
            .iter()
            .map(|d| crate::calendar::days_to_date(*d).to_string())
            .collect();
        return reject(
            Code::AgeReferenceDatesConflict,
            format!(
                "ages are computed on {} different dates ({}); combining reference dates narrows birth dates, so use one: umur() (the snapshot date) or umur_pada() with a single date",
                dates.len(),
                dates.join(", ")
            ),
        );
    }

    // 6. The agreement's elements.
    for c in &w.columns {
        let column = catalog::column(c).expect("classified columns come from the catalog");
        if !agreement.permits(c) {
            let permitted: Vec<&str> = agreement.permitted().iter().map(String::as_str).collect();
            return reject(
                Code::ElementNotPermitted,
                format!(
                    "column '{c}' is not permitted by agreement '{}'; permitted: {}",
                    agreement.id(),
                    permitted.join(", ")
                ),
            );
        }
        if column.needs_minister_permission() && !agreement.minister_permission().contains(*c) {
            return reject(
                Code::MinisterPermissionRequired,
                format!(
                    "column '{c}' is protected (UU 24/2013 Pasal 84) and agreement '{}' has no Minister's permission for it",
                    agreement.id()
                ),
            );
        }
    }

    // What the agreement's method can release (SUM and AVG only under DP,
    // a SUM only next to a count), before anything is reserved or run.
    crate::protect::check_aggregates(&agreement.protection().method, &aggregates)?;

    // 7. The region scope, right above the penduduk scan. A region code
    // the query names explicitly outside the scope is refused outright
    // (the scope predicate alone would answer it with zeros).
    region_literals_in_scope(plan, agreement.scope(), agreement.id())?;
    // 8. Under the cell-key method the query must be a table.
    let table = if agreement.protection().releases_tables() {
        Some(super::table::compile(agg, &aggregates)?)
    } else {
        None
    };
    let scoped = apply_scope(plan, agreement.scope())?;
    let v = ValidatedPlan {
        plan: scoped,
        group_keys: keys,
        grouping_sets: sets,
        aggregates,
        elements: w.columns.clone(),
        age_reference: w.age_dates.iter().next().copied(),
        date_functions: w.date_functions.clone(),
        table,
    };
    Ok((v, w.unique_checks))
}

/// Region codes written as literals in the query (`kode_kab = '61.72'`,
/// `kode_kec IN (...)`, `w.kode LIKE '61.72%'`) must lie within the scope.
/// Any string literal shaped like a Kemendagri code anywhere in a filter
/// counts, whichever column it is compared with: refusing a harmless
/// query is better than answering a question about another region.
fn region_literals_in_scope(
    plan: &LogicalPlan,
    scope: &RegionScope,
    agreement: &str,
) -> Result<(), QueryError> {
    let RegionScope::Prefixes(_) = scope else {
        return Ok(());
    };
    let mut found: Option<String> = None;
    let mut visit = |e: &Expr| {
        if let Expr::Literal(
            ScalarValue::Utf8(Some(v))
            | ScalarValue::LargeUtf8(Some(v))
            | ScalarValue::Utf8View(Some(v)),
            _,
        ) = e
        {
            let code = v.trim_end_matches('%');
            if RegionLevel::of_code(code).is_some()
                && catalog::regions().get(code).is_some()
                && !scope.touches(code)
                && found.is_none()
            {
                found = Some(v.clone());
            }
        }
        Ok(TreeNodeRecursion::Continue)
    };
    plan.apply(|node| {
        let exprs: Vec<&Expr> = match node {
            LogicalPlan::Filter(f) => vec![&f.predicate],
            LogicalPlan::Join(j) => j.filter.iter().collect(),
            LogicalPlan::Aggregate(a) => a.aggr_expr.iter().collect(),
            _ => vec![],
        };
        for e in exprs {
            e.apply(&mut visit)?;
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| QueryError::new(Code::PlanError, e.to_string()))?;
    match found {
        None => Ok(()),
        Some(code) => reject(
            Code::RegionNotPermitted,
            format!(
                "region '{code}' is outside the scope of agreement '{agreement}' ({}); ask only about regions within it",
                scope.describe()
            ),
        ),
    }
}

/// The scope predicate for a `penduduk` scan qualified as `qualifier`.
pub(crate) fn scope_predicate(
    scope: &RegionScope,
    qualifier: Option<&datafusion::common::TableReference>,
) -> Option<Expr> {
    let RegionScope::Prefixes(prefixes) = scope else {
        return None;
    };
    let column = |name: &str| Expr::Column(Column::new(qualifier.cloned(), name));
    let kabs: BTreeSet<String> = prefixes
        .iter()
        .flat_map(|p| {
            catalog::regions()
                .at_level(
                    &RegionScope::Prefixes(vec![p.clone()]),
                    RegionLevel::KabKota,
                )
                .map(|r| r.kode.clone())
                .chain(if p.len() >= 5 {
                    Some(p[..5].to_string())
                } else {
                    None
                })
                .collect::<Vec<_>>()
        })
        .collect();
    // Partition pruning: only the kab/kota directories in scope are read.
    let prune = Expr::InList(InList::new(
        Box::new(column(catalog::PARTITION_COLUMN)),
        kabs.into_iter().map(lit).collect(),
        false,
    ));
    let exact = prefixes
        .iter()
        .map(|p| {
            let level = RegionLevel::of_code(p).expect("scope codes are valid");
            column(level.column()).eq(lit(p.clone()))
        })
        .reduce(Expr::or)
        .expect("a scope has at least one prefix");
    // When every prefix is a provinsi or kab/kota, the partition list is
    // already exact and the per-row predicate would only cost time.
    let coarse = prefixes.iter().all(|p| {
        matches!(
            RegionLevel::of_code(p),
            Some(RegionLevel::Provinsi | RegionLevel::KabKota)
        )
    });
    Some(if coarse { prune } else { prune.and(exact) })
}

fn apply_scope(plan: &LogicalPlan, scope: &RegionScope) -> Result<LogicalPlan, QueryError> {
    plan.clone()
        .transform_up_with_subqueries(|p| match &p {
            LogicalPlan::TableScan(t) if t.table_name.table() == PENDUDUK => {
                match scope_predicate(scope, Some(&t.table_name)) {
                    None => Ok(Transformed::no(p)),
                    Some(pred) => {
                        let filtered = LogicalPlan::Filter(Filter::try_new(pred, Arc::new(p))?);
                        Ok(Transformed::yes(filtered))
                    }
                }
            }
            _ => Ok(Transformed::no(p)),
        })
        .map(|t| t.data)
        .map_err(|e| QueryError::new(Code::PlanError, super::error::clean_message(&e)))
}
