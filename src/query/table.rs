//! Under the cell-key method a query is a table. This module owns the
//! compilation of a validated aggregate plan into a [`TableSpec`]: a measure
//! (persons, `COUNT(*)`, or households, `COUNT(DISTINCT no_kk)`) over a
//! cross-classification of catalogued dimensions, each a column or a
//! catalogued classification of it (`umur`, `umur_pada`, `tahun`,
//! `kelompok_umur`), restricted to chosen categories per dimension, with
//! optional margins (ROLLUP, CUBE, GROUPING SETS).
//!
//! What a table cannot express is refused here with `not_a_table` and a
//! message naming what to write instead: `FILTER`, `COUNT(expr)`, CASE or
//! computed group keys, conditions that combine dimensions with OR or NOT,
//! conditions that do not select categories of one dimension, joins and
//! subqueries. These are exactly the tools of differencing inside one
//! query (two counts of one cell that differ by one person) and of
//! predicates built around one person.
//!
//! The specification is what the rest of the release works from: the cell
//! keys are sums of the engine's own record and household keys of exactly
//! the people or households each cell counts, and the margin memory
//! ([`super::margins`]) reads the dimensions and restrictions.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::logical_expr::{Aggregate, Expr, GroupingSet, LogicalPlan, Operator};

use super::error::{Code, QueryError};
use super::udf::{KELOMPOK_UMUR, TAHUN, UMUR, UMUR_PADA, WAJIB_KTP};
use super::validate::AggregateKind;
use crate::catalog::{self, ColumnClass};

/// What a released count counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// `COUNT(*)`: people.
    Persons,
    /// `COUNT(DISTINCT no_kk)`: households (family cards).
    Households,
}

/// A table: measures over a cross-classification, restricted to chosen
/// categories, with margins. Built only by `compile`, from a validated plan.
#[derive(Debug, Clone)]
pub struct TableSpec {
    dims: Vec<String>,
    /// The group key expressions, one per dimension (aliases removed).
    keys: Vec<Expr>,
    /// The variables (source columns; the region levels are one variable)
    /// each dimension classifies.
    variables: Vec<BTreeSet<String>>,
    grouping_sets: Vec<Vec<usize>>,
    restrictions: BTreeMap<String, Restriction>,
    measures: Vec<Measure>,
}

/// The caller's conditions on one dimension.
#[derive(Debug, Clone)]
pub struct Restriction {
    /// The dimension expression, as written.
    pub dimension: Expr,
    /// The conditions (joined by AND).
    pub conditions: Vec<Expr>,
    /// The variables the conditions read.
    pub variables: BTreeSet<String>,
    /// The table's dimensions over the same variables: the conditions must
    /// select whole categories of these (checked on the public domains).
    pub shown_by: Vec<usize>,
}

/// The variables an expression classifies: its source columns, with the
/// region levels (`kode_prov` … `kode_kel`) counted as one variable, since
/// each finer level determines the coarser ones.
pub(crate) fn variables(e: &Expr) -> BTreeSet<String> {
    e.column_refs()
        .into_iter()
        .map(|c| {
            if matches!(
                c.name.as_str(),
                "kode_prov" | "kode_kab" | "kode_kec" | "kode_kel"
            ) {
                "region".to_string()
            } else {
                c.name.clone()
            }
        })
        .collect()
}

impl TableSpec {
    /// Canonical names of the classified dimensions, in group-key order.
    pub fn dims(&self) -> &[String] {
        &self.dims
    }

    /// The group key expression of each dimension.
    pub fn keys(&self) -> &[Expr] {
        &self.keys
    }

    /// The variables each dimension classifies.
    pub fn variables(&self) -> &[BTreeSet<String>] {
        &self.variables
    }

    /// The grouping sets, as indices into [`TableSpec::dims`].
    pub fn grouping_sets(&self) -> &[Vec<usize>] {
        &self.grouping_sets
    }

    /// The caller's category restrictions, per dimension (canonical name).
    pub fn restrictions(&self) -> &BTreeMap<String, Restriction> {
        &self.restrictions
    }

    /// One measure per aggregate output column.
    pub fn measures(&self) -> &[Measure] {
        &self.measures
    }
}

const TABLE_HELP: &str = "under the cell-key method a query is a table: COUNT(*) (people) or COUNT(DISTINCT no_kk) (households), grouped by dimension columns or umur(), umur_pada(), tahun(), kelompok_umur(), with WHERE conditions that each select categories of one dimension (=, IN, BETWEEN, <, >), joined by AND";

fn refuse<T>(what: impl std::fmt::Display, instead: &str) -> Result<T, QueryError> {
    Err(QueryError::new(
        Code::NotATable,
        format!("{what}; {instead}. In short, {TABLE_HELP}"),
    ))
}

/// The canonical name of a dimension expression: a categorical column, or a
/// catalogued classification of a column; `None` for anything else.
pub(crate) fn dimension(e: &Expr) -> Option<String> {
    match e {
        Expr::Alias(a) => dimension(&a.expr),
        Expr::Column(c) => {
            let col = catalog::column(&c.name)?;
            matches!(col.class, ColumnClass::Dimension | ColumnClass::Protected)
                .then(|| col.name.to_string())
        }
        Expr::ScalarFunction(f) => {
            let date_arg = |i: usize| match f.args.get(i) {
                Some(Expr::Column(c)) => catalog::column(&c.name)
                    .filter(|col| col.class == ColumnClass::DateDimension)
                    .map(|col| col.name),
                _ => None,
            };
            match f.name() {
                UMUR | TAHUN if f.args.len() == 1 => {
                    Some(format!("{}({})", f.name(), date_arg(0)?))
                }
                UMUR_PADA if f.args.len() == 2 => {
                    let on = super::validate::literal_date(&f.args[1])?;
                    Some(format!(
                        "umur_pada({}, {})",
                        date_arg(0)?,
                        crate::calendar::days_to_date(on)
                    ))
                }
                WAJIB_KTP if f.args.len() == 2 => {
                    let age = dimension(&f.args[0])?;
                    let status = dimension(&f.args[1])?;
                    (age.starts_with("umur") && status == "status_perkawinan")
                        .then(|| format!("wajib_ktp({age}, {status})"))
                }
                KELOMPOK_UMUR if f.args.len() == 2 => {
                    let inner = dimension(&f.args[0])?;
                    let width = super::validate::literal_number(&f.args[1])?;
                    Some(format!("kelompok_umur({inner}, {width})"))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether a restriction selects exactly one category (`kode_kec =
/// '61.71.01'`, `agama IN ('ISLAM')`): its total is then that category's
/// group of people, the same whatever else the query asks.
fn selects_one_category(r: &Restriction) -> bool {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    r.conditions.iter().any(|c| match c {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => is_literal(left) != is_literal(right),
        Expr::InList(l) => !l.negated && l.list.len() == 1 && is_literal(&l.list[0]),
        _ => false,
    })
}

fn is_literal(e: &Expr) -> bool {
    match e {
        Expr::Literal(..) => true,
        Expr::Cast(c) => is_literal(&c.expr),
        Expr::TryCast(c) => is_literal(&c.expr),
        Expr::Negative(x) => is_literal(x),
        Expr::Alias(a) => is_literal(&a.expr),
        _ => false,
    }
}

/// The one dimension a WHERE condition selects categories of.
fn restricted_dimension(e: &Expr) -> Result<(String, Expr), QueryError> {
    let mut dims = BTreeMap::new();
    // Iterative: the gate has bounded the depth, but no walk here recurses.
    let mut stack = vec![e];
    while let Some(x) = stack.pop() {
        if let Some(d) = dimension(x) {
            dims.insert(d, x.clone());
            continue;
        }
        let dim_vs_literal = |a: &Expr, b: &Expr| {
            (dimension(a).is_some() && is_literal(b)) || (is_literal(a) && dimension(b).is_some())
        };
        match x {
            Expr::BinaryExpr(b) => match b.op {
                Operator::And | Operator::Or => {
                    stack.push(&b.left);
                    stack.push(&b.right);
                }
                Operator::Eq
                | Operator::NotEq
                | Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq
                | Operator::IsDistinctFrom
                | Operator::IsNotDistinctFrom => {
                    if !dim_vs_literal(&b.left, &b.right) {
                        return refuse(
                            format!(
                                "the condition '{x}' does not compare one dimension with a value"
                            ),
                            "compare a dimension with a literal, e.g. kode_kec = '61.71.01' or umur(tanggal_lahir) >= 17",
                        );
                    }
                    stack.push(&b.left);
                    stack.push(&b.right);
                }
                op => {
                    return refuse(
                        format!(
                            "the operator '{op}' in the condition '{x}' does not select categories"
                        ),
                        "select categories with =, <>, IN, BETWEEN, <, <=, >, >= on one dimension",
                    );
                }
            },
            Expr::Not(inner) => stack.push(inner),
            Expr::IsNull(inner) | Expr::IsNotNull(inner) if dimension(inner).is_some() => {
                stack.push(inner)
            }
            Expr::InList(l) if dimension(&l.expr).is_some() && l.list.iter().all(is_literal) => {
                stack.push(&l.expr)
            }
            Expr::Between(b)
                if dimension(&b.expr).is_some() && is_literal(&b.low) && is_literal(&b.high) =>
            {
                stack.push(&b.expr)
            }
            Expr::Like(l)
                if dimension(&l.expr).is_some()
                    && is_literal(&l.pattern)
                    && !l.case_insensitive =>
            {
                stack.push(&l.expr)
            }
            x if is_literal(x) => {}
            other => {
                return refuse(
                    format!("the condition part '{other}' is not a selection of categories"),
                    "use =, IN, BETWEEN or comparisons of one dimension with literal values; computed values, CASE and subqueries cannot be used in a table",
                );
            }
        }
    }
    let mut it = dims.into_iter();
    match (it.next(), it.next()) {
        (Some(d), None) => Ok(d),
        (None, _) => refuse(
            format!("the condition '{e}' restricts no dimension"),
            "drop it, or compare a dimension with a value",
        ),
        (Some((a, _)), Some((b, _))) => refuse(
            format!("the condition '{e}' combines the dimensions {a} and {b}"),
            "write one condition per dimension and join them with AND (conditions that mix dimensions with OR or NOT describe individual people rather than a table); for several tables, send several queries",
        ),
    }
}

/// Compiles the aggregate of a validated plan into a table specification,
/// or refuses what a table cannot express. `aggregates` are the gate's
/// classification of the aggregate's output columns.
pub(crate) fn compile(
    agg: &Aggregate,
    aggregates: &[AggregateKind],
) -> Result<TableSpec, QueryError> {
    // The source: penduduk, optionally under its own alias, with filters.
    let mut restrictions: BTreeMap<String, Restriction> = BTreeMap::new();
    let mut node = agg.input.as_ref();
    loop {
        match node {
            LogicalPlan::Filter(f) => {
                for c in datafusion::logical_expr::utils::split_conjunction(&f.predicate) {
                    let (d, dimension) = restricted_dimension(c)?;
                    restrictions
                        .entry(d)
                        .or_insert_with(|| Restriction {
                            variables: variables(&dimension),
                            dimension,
                            conditions: Vec::new(),
                            shown_by: Vec::new(),
                        })
                        .conditions
                        .push(c.clone());
                }
                node = &f.input;
            }
            LogicalPlan::Projection(p) if p.expr.iter().all(|e| matches!(e, Expr::Column(_))) => {
                node = &p.input
            }
            LogicalPlan::SubqueryAlias(a)
                if matches!(a.input.as_ref(), LogicalPlan::TableScan(_)) =>
            {
                node = &a.input
            }
            LogicalPlan::TableScan(t) if t.table_name.table() == super::engine::PENDUDUK => break,
            LogicalPlan::Join(_) => {
                return refuse(
                    "joins are not available under the cell-key method",
                    "group by the code column (e.g. kode_kec) and take the names from GET /v1/catalog",
                );
            }
            _ => {
                return refuse(
                    "subqueries and derived tables are not available under the cell-key method",
                    "aggregate directly over penduduk",
                );
            }
        }
    }

    // Group keys: dimensions only.
    let (keys, sets): (Vec<&Expr>, Option<&GroupingSet>) = match agg.group_expr.as_slice() {
        [Expr::GroupingSet(gs)] => (gs.distinct_expr(), Some(gs)),
        exprs => (exprs.iter().collect(), None),
    };
    let mut dims = Vec::with_capacity(keys.len());
    for k in &keys {
        match dimension(k) {
            Some(d) => dims.push(d),
            None => {
                return refuse(
                    format!("the group key '{k}' is not a catalogued classification"),
                    "group by a dimension column (kode_kel, jenis_kelamin, agama, …) or by umur(tanggal_lahir), kelompok_umur(umur(tanggal_lahir), 5), umur_pada(tanggal_lahir, DATE 'YYYY-07-01') or tahun(tanggal_lahir); CASE groupings cannot be released as a table",
                );
            }
        }
    }
    // A condition selects categories of what the table shows: its variable
    // must be a dimension of the table (as in ABS TableBuilder and
    // Cantabular). A condition on a variable the table sums over would
    // change the people behind every cell while leaving most cells
    // identical ("same people, same noise"), so comparing two such tables
    // shows exactly which cells the removed people were in.
    let key_exprs: Vec<Expr> = keys
        .iter()
        .map(|k| match k {
            Expr::Alias(a) => a.expr.as_ref().clone(),
            other => (*other).clone(),
        })
        .collect();
    let dim_variables: Vec<BTreeSet<String>> = key_exprs.iter().map(variables).collect();
    for (name, r) in restrictions.iter_mut() {
        r.shown_by = dim_variables
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_disjoint(&r.variables))
            .map(|(i, _)| i)
            .collect();
        if r.shown_by.is_empty() {
            return refuse(
                format!("the condition on {name} restricts a variable the table does not show"),
                &format!(
                    "add {name} (or a classification of it) to GROUP BY, so that the table shows the categories you select; e.g. WHERE kode_kec = '61.71.01' GROUP BY kode_kec, …, or WHERE umur(tanggal_lahir) BETWEEN 15 AND 64 GROUP BY kelompok_umur(umur(tanggal_lahir), 5), …"
                ),
            );
        }
    }
    let index = |e: &Expr| keys.iter().position(|k| *k == e).unwrap_or(0);
    let grouping_sets: Vec<Vec<usize>> = match sets {
        None => vec![(0..dims.len()).collect()],
        Some(GroupingSet::Rollup(v)) => (0..=v.len())
            .rev()
            .map(|n| v[..n].iter().map(index).collect())
            .collect(),
        Some(GroupingSet::Cube(v)) => (0..1usize << v.len().min(16))
            .map(|mask| {
                v.iter()
                    .enumerate()
                    .filter(|(i, _)| mask >> i & 1 == 1)
                    .map(|(_, e)| index(e))
                    .collect()
            })
            .collect(),
        Some(GroupingSet::GroupingSets(v)) => v
            .iter()
            .map(|set| set.iter().map(index).collect())
            .collect(),
    };
    // No margin over a restricted variable: its total over the categories
    // the caller selected is a group of people chosen per query, and two
    // selections that differ by one category (ages x..y and x+1..y, a
    // religion more or less) give two such totals whose difference,
    // averaged over many selections, is that category's exact count.
    // Margins over the variables that are not restricted add up fixed
    // groups and stay.
    // A coarser form of the variable (kode_kab of selected kelurahan, a
    // 10-year band of a selected age range) totals a chosen group just the
    // same: every dimension showing the variable must be in every set.
    for (name, r) in &restrictions {
        if !selects_one_category(r)
            && grouping_sets
                .iter()
                .any(|set| r.shown_by.iter().any(|i| !set.contains(i)))
        {
            return refuse(
                format!(
                    "the table has a total over {name}, which the WHERE clause restricts to the categories it selects"
                ),
                &format!(
                    "ask for the total without the condition on {name} (totals over all its categories are fixed groups), or keep {name} in every grouping set and add the rows up yourself"
                ),
            );
        }
    }

    // Measures: COUNT(*) and COUNT(DISTINCT no_kk), without FILTER.
    let mut measures = Vec::with_capacity(aggregates.len());
    for (e, kind) in agg.aggr_expr.iter().zip(aggregates) {
        let inner = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            other => other,
        };
        if let Expr::AggregateFunction(f) = inner
            && f.params.filter.is_some()
        {
            return refuse(
                format!("'{e}' has a FILTER clause"),
                "move the condition into WHERE, or group by the dimension it tests",
            );
        }
        match kind {
            AggregateKind::CountRows => measures.push(Measure::Persons),
            AggregateKind::CountHouseholds => measures.push(Measure::Households),
            AggregateKind::CountColumn => {
                return refuse(
                    format!("'{e}' counts the rows where an expression is not null"),
                    "count people with COUNT(*) and restrict them in WHERE (e.g. WHERE tanggal_kawin IS NOT NULL)",
                );
            }
            AggregateKind::Sum { .. } | AggregateKind::Avg { .. } => {
                return refuse(
                    format!("'{e}' is a sum or an average"),
                    "SUM and AVG are released only under differential privacy; count people per age instead, e.g. GROUP BY umur(tanggal_lahir)",
                );
            }
            AggregateKind::Grouping => {
                return refuse(format!("'{e}' is not a count"), "drop it");
            }
        }
    }
    Ok(TableSpec {
        dims,
        keys: key_exprs,
        variables: dim_variables,
        grouping_sets,
        restrictions,
        measures,
    })
}
