//! Owns the rule that nothing read over personal data can fail at run time.
//!
//! Whether a query succeeds must not depend on the data. An expression
//! evaluated over `penduduk` rows that can raise an error on some values (a
//! cast of text to a number, an integer division by an expression, a
//! negative `substr` length inside a `CASE` branch) turns success or
//! failure into a noiseless answer to "does a row with these values
//! exist?". So every expression at and below the aggregate must be *total*
//! on every value of its type: this module checks that on the plan as
//! DataFusion will run it (after type coercion, so the casts DataFusion
//! inserts are checked too) and refuses the rest before any data is read,
//! saying what to write instead (`TRY_CAST`, a literal divisor, `CASE`).
//!
//! This is the second wall. The first is the result grid
//! (`execute::grid`): the same plan runs first over every combination of
//! the public domains of the columns used, so an expression that would fail
//! on some person's values fails there, whatever the data. This check
//! covers a value a domain might miss, and says what to write instead
//! where DataFusion's own error would not.
//!
//! Expressions above the aggregate (`HAVING`, `ORDER BY`, arithmetic on
//! the released values) see only protected values and are not checked
//! here. Subqueries read the public reference tables only (the validator
//! refuses one over `penduduk`) and are not checked either.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator};

use super::engine::Engine;
use super::error::{Code, QueryError, clean_message};
use super::udf::{KELOMPOK_UMUR, TAHUN, UMUR, UMUR_PADA, WAJIB_KTP};

/// Largest literal position, length or digit count accepted where a
/// function argument must be a literal.
const MAX_LITERAL_ARGUMENT: i64 = 1_000_000;

/// Refuses a plan (the validated one, scope applied) whose expressions at
/// or below the aggregate could fail at run time on some values. Also
/// refuses a plan DataFusion's analyzer cannot type (`-1 BETWEEN TRUE AND
/// 1`), as a mistake in the query rather than an engine failure.
pub(crate) fn check(engine: &Engine, plan: &LogicalPlan) -> Result<(), QueryError> {
    let state = engine.context().state();
    let analyzed = state
        .analyzer()
        .execute_and_check(plan.clone(), state.config_options(), |_, _| {})
        .map_err(|e| {
            QueryError::new(
                Code::PlanError,
                format!(
                    "the query cannot be typed: {}; check that each comparison, BETWEEN and IN compares values of one kind (numbers with numbers, text with quoted text)",
                    clean_message(&e)
                ),
            )
        })?;
    let Some(aggregate) = top_aggregate(&analyzed) else {
        return Ok(());
    };
    let mut found = Ok(());
    let _ = aggregate.apply(|node| {
        let schema = evaluation_schema(node);
        let lineage = Lineage {
            inputs: node.inputs(),
            schema: &schema,
        };
        for e in node.expressions() {
            if let Err(q) = check_expr(&e, &schema, &lineage) {
                found = Err(q);
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The aggregate under the post-plan.
fn top_aggregate(plan: &LogicalPlan) -> Option<&LogicalPlan> {
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Aggregate(_) => return Some(node),
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Distinct(_) => node = node.inputs().first()?,
            _ => return None,
        }
    }
}

/// Where the columns a node's expressions read come from.
struct Lineage<'a> {
    inputs: Vec<&'a LogicalPlan>,
    schema: &'a DFSchema,
}

impl Lineage<'_> {
    /// The `penduduk` column a column reference is, unchanged, if it is one.
    fn penduduk_column(&self, e: &Expr) -> Option<&'static str> {
        let Expr::Column(c) = e else { return None };
        let mut idx = self.schema.index_of_column(c).ok()?;
        for input in &self.inputs {
            let n = input.schema().fields().len();
            if idx < n {
                return origin(input, idx, 0);
            }
            idx -= n;
        }
        None
    }
}

/// The `penduduk` column output field `idx` of `plan` is, passed through
/// projections, filters and aliases unchanged; `None` for anything
/// computed or read from another table.
fn origin(plan: &LogicalPlan, idx: usize, depth: usize) -> Option<&'static str> {
    if depth > 256 {
        return None;
    }
    match plan {
        LogicalPlan::TableScan(t) => {
            if t.table_name.table() != super::engine::PENDUDUK {
                return None;
            }
            let name = t.projected_schema.field(idx).name();
            crate::catalog::column(name).map(|c| c.name)
        }
        LogicalPlan::Projection(p) => {
            let mut e = p.expr.get(idx)?;
            while let Expr::Alias(a) = e {
                e = &a.expr;
            }
            let Expr::Column(c) = e else { return None };
            let i = p.input.schema().index_of_column(c).ok()?;
            origin(&p.input, i, depth + 1)
        }
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::SubqueryAlias(_) => origin(plan.inputs().first()?, idx, depth + 1),
        LogicalPlan::Join(j) => {
            let n = j.left.schema().fields().len();
            if idx < n {
                origin(&j.left, idx, depth + 1)
            } else {
                origin(&j.right, idx - n, depth + 1)
            }
        }
        _ => None,
    }
}

/// A cast of a numbered code column (`no_rt`, `no_rw`: zero-padded digits,
/// checked on import) to a number type that holds its largest value.
fn numbered_fits(e: &Expr, to: &DataType, lineage: &Lineage) -> bool {
    let Some(column) = lineage.penduduk_column(e).and_then(crate::catalog::column) else {
        return false;
    };
    let crate::catalog::Domain::Numbered { max, .. } = column.domain else {
        return false;
    };
    to.is_floating() || int_range(to).is_some_and(|(lo, hi)| lo <= 0 && i128::from(max) <= hi)
}

/// The schema a node's expressions are evaluated over.
fn evaluation_schema(node: &LogicalPlan) -> DFSchema {
    let inputs = node.inputs();
    match inputs.as_slice() {
        [] => node.schema().as_ref().clone(),
        [one] => one.schema().as_ref().clone(),
        [first, rest @ ..] => {
            let mut schema = first.schema().as_ref().clone();
            for r in rest {
                if let Ok(joined) = schema.join(r.schema()) {
                    schema = joined;
                }
            }
            schema
        }
    }
}

fn refuse(e: &Expr, why: &str, instead: &str) -> Result<(), QueryError> {
    let mut shown = e.to_string();
    if shown.len() > 160 {
        let mut cut = 160;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
        shown.push('…');
    }
    Err(QueryError::new(
        Code::ExpressionMayFail,
        format!(
            "'{shown}' {why}; whether it fails would depend on the data, so the query is refused before any data is read; {instead}"
        ),
    ))
}

/// Checks every node of one expression.
fn check_expr(expr: &Expr, schema: &DFSchema, lineage: &Lineage) -> Result<(), QueryError> {
    let mut found = Ok(());
    let _ = expr.apply(|e| {
        let verdict = check_node(e, schema, lineage);
        if verdict.is_err() {
            found = verdict;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

fn check_node(e: &Expr, schema: &DFSchema, lineage: &Lineage) -> Result<(), QueryError> {
    let type_of = |x: &Expr| x.get_type(schema).ok();
    match e {
        Expr::Cast(c) => {
            let to = c.field.data_type();
            if let Some(value) = literal(&c.expr) {
                // A literal cast either always works or always fails; one
                // that fails could still be reached only on some rows.
                return match value.cast_to(to) {
                    Ok(_) => Ok(()),
                    Err(_) => refuse(
                        e,
                        "is a cast that fails",
                        "write a value of the right type, e.g. a quoted code or a plain number",
                    ),
                };
            }
            match type_of(&c.expr) {
                Some(from) if cast_is_total(&from, to) => Ok(()),
                Some(_) if numbered_fits(&c.expr, to, lineage) => Ok(()),
                Some(from) => refuse(
                    e,
                    &format!("casts {from} to {to}, which fails on some values"),
                    "use TRY_CAST, which gives NULL where the cast fails, or compare the text with quoted codes",
                ),
                None => refuse(
                    e,
                    "is a cast of a value whose type cannot be determined",
                    "use TRY_CAST",
                ),
            }
        }
        Expr::BinaryExpr(b) => check_binary(e, b, &type_of),
        Expr::Like(l) => {
            let Some(ScalarValue::Utf8(Some(p)) | ScalarValue::Utf8View(Some(p))) =
                literal(&l.pattern)
            else {
                return refuse(
                    e,
                    "matches a pattern computed from the data, which can be invalid",
                    "write the LIKE pattern as a quoted literal, e.g. kode_kel LIKE '61.71.01.%'",
                );
            };
            if l.escape_char.is_some() || p.contains('\\') {
                return refuse(
                    e,
                    "uses an escape in its LIKE pattern, which can make the pattern invalid",
                    "write the pattern without backslashes or ESCAPE, e.g. kode_kel LIKE '61.71.01.%'",
                );
            }
            Ok(())
        }
        Expr::SimilarTo(_) => refuse(
            e,
            "is a regular expression, which can fail and whose cost depends on the value",
            "use LIKE with a literal pattern, IN (...) or starts_with",
        ),
        Expr::ScalarFunction(f) => check_function(e, f.name(), &f.args, &type_of),
        _ => Ok(()),
    }
}

fn check_binary(
    e: &Expr,
    b: &BinaryExpr,
    type_of: &dyn Fn(&Expr) -> Option<DataType>,
) -> Result<(), QueryError> {
    use Operator as O;
    let (l, r) = (type_of(&b.left), type_of(&b.right));
    match b.op {
        O::RegexMatch | O::RegexIMatch | O::RegexNotMatch | O::RegexNotIMatch => refuse(
            e,
            "is a regular expression, which can fail and whose cost depends on the value",
            "use LIKE with a literal pattern, IN (...) or starts_with",
        ),
        O::Plus | O::Minus | O::Multiply | O::Divide | O::Modulo
            if [&l, &r].iter().any(|t| {
                t.as_ref()
                    .is_none_or(|t| !(t.is_integer() || t.is_floating()))
            }) =>
        {
            refuse(
                e,
                "is arithmetic on a decimal, date, interval or untyped value, which can overflow on some values",
                "compute with whole numbers or coarsened values (umur, tahun), e.g. tahun(tanggal_lahir) - 2000",
            )
        }
        O::Divide | O::Modulo => {
            let floating = l.as_ref().is_some_and(|t| t.is_floating())
                || r.as_ref().is_some_and(|t| t.is_floating());
            if floating {
                // Float division by zero gives infinity or NaN, no error.
                return Ok(());
            }
            match literal(&b.right).and_then(|v| integer(&v)) {
                // x / 0 fails; i64::MIN / -1 overflows.
                Some(d) if d != 0 && d != -1 => Ok(()),
                _ => refuse(
                    e,
                    "divides whole numbers by a value that can be 0 or -1, which fails on some rows",
                    "divide by a number written into the query other than 0 and -1 (e.g. umur(tanggal_lahir) / 5), or use kelompok_umur for bands",
                ),
            }
        }
        _ => Ok(()),
    }
}

fn check_function(
    e: &Expr,
    name: &str,
    args: &[Expr],
    type_of: &dyn Fn(&Expr) -> Option<DataType>,
) -> Result<(), QueryError> {
    let literal_in = |i: usize, lo: i64| {
        args.get(i)
            .and_then(literal)
            .and_then(|v| integer(&v))
            .is_some_and(|n| (lo..=MAX_LITERAL_ARGUMENT).contains(&n))
    };
    match name {
        // Total on every value: ours return NULL outside their domain, the
        // text functions and comparisons cannot fail on any string.
        UMUR | UMUR_PADA | TAHUN | KELOMPOK_UMUR | WAJIB_KTP | "upper" | "lower" | "trim"
        | "btrim" | "ltrim" | "rtrim" | "starts_with" | "ends_with" | "length" | "char_length"
        | "character_length" | "coalesce" | "nullif" | "floor" | "ceil" => Ok(()),
        "abs" => match args.first().and_then(type_of) {
            Some(t) if t.is_floating() => Ok(()),
            _ => refuse(
                e,
                "takes abs() of a whole number, which overflows on the smallest value",
                "compare instead (x < 0 OR x > 0), or use CASE WHEN x < 0 THEN -x ELSE x END",
            ),
        },
        "substr" | "substring" => {
            if literal_in(1, -MAX_LITERAL_ARGUMENT) && (args.len() < 3 || literal_in(2, 0)) {
                Ok(())
            } else {
                refuse(
                    e,
                    "takes a start or length that is not a fixed number, or a negative length, which fails on some rows",
                    "write the start and a length of 0 or more as numbers, e.g. substr(kode_kel, 1, 8)",
                )
            }
        }
        "left" | "right" => {
            if literal_in(1, -MAX_LITERAL_ARGUMENT) {
                Ok(())
            } else {
                refuse(
                    e,
                    "takes a length that is not a fixed number",
                    "write the length as a number, e.g. left(kode_kel, 8)",
                )
            }
        }
        "round" => {
            let digits = args.get(1).and_then(literal).and_then(|v| integer(&v));
            if args.len() < 2 || digits.is_some_and(|n| (-30..=30).contains(&n)) {
                Ok(())
            } else {
                refuse(
                    e,
                    "rounds to a number of digits that is not a fixed number between -30 and 30",
                    "write the digits as a number, e.g. round(x, 1)",
                )
            }
        }
        other => refuse(
            e,
            &format!("calls '{other}', which is not known to succeed on every value"),
            "use comparisons, IN, BETWEEN, CASE or the coarsening functions (umur, umur_pada, tahun, kelompok_umur)",
        ),
    }
}

/// A literal, through the casts type coercion puts around it.
fn literal(e: &Expr) -> Option<ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v.clone()),
        Expr::Cast(c) => literal(&c.expr).and_then(|v| v.cast_to(c.field.data_type()).ok()),
        Expr::TryCast(c) => literal(&c.expr).and_then(|v| v.cast_to(c.field.data_type()).ok()),
        Expr::Negative(inner) => literal(inner).and_then(|v| v.arithmetic_negate().ok()),
        Expr::Alias(a) => literal(&a.expr),
        _ => None,
    }
}

fn integer(v: &ScalarValue) -> Option<i64> {
    if v.is_null() {
        return None;
    }
    match v.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(Some(n)) => Some(n),
        _ => None,
    }
}

fn string_like(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => string_like(v),
        _ => false,
    }
}

fn int_range(t: &DataType) -> Option<(i128, i128)> {
    Some(match t {
        DataType::Int8 => (i8::MIN as i128, i8::MAX as i128),
        DataType::Int16 => (i16::MIN as i128, i16::MAX as i128),
        DataType::Int32 => (i32::MIN as i128, i32::MAX as i128),
        DataType::Int64 => (i64::MIN as i128, i64::MAX as i128),
        DataType::UInt8 => (0, u8::MAX as i128),
        DataType::UInt16 => (0, u16::MAX as i128),
        DataType::UInt32 => (0, u32::MAX as i128),
        DataType::UInt64 => (0, u64::MAX as i128),
        _ => return None,
    })
}

/// Whether a cast from `from` to `to` succeeds on every value.
fn cast_is_total(from: &DataType, to: &DataType) -> bool {
    if from == to || string_like(to) && !matches!(from, DataType::Binary | DataType::LargeBinary) {
        return true;
    }
    if let DataType::Dictionary(_, v) = from {
        return cast_is_total(v, to);
    }
    if let (Some((fl, fh)), Some((tl, th))) = (int_range(from), int_range(to)) {
        return tl <= fl && fh <= th;
    }
    match (from, to) {
        (DataType::Null, _) | (DataType::Boolean, _) if to.is_integer() || to.is_floating() => true,
        (DataType::Null | DataType::Boolean, DataType::Boolean) => true,
        (f, DataType::Boolean) => f.is_integer() || f.is_floating(),
        // Out-of-range floats become infinity, not an error.
        (f, DataType::Float64 | DataType::Float32) => f.is_integer() || f.is_floating(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn casts_that_cannot_fail() {
        use DataType as T;
        assert!(cast_is_total(&T::Int32, &T::Int64));
        assert!(cast_is_total(&T::Int64, &T::Float64));
        assert!(cast_is_total(&T::Utf8View, &T::Utf8));
        assert!(cast_is_total(&T::Int64, &T::Utf8));
        assert!(cast_is_total(&T::Boolean, &T::Int64));
        assert!(!cast_is_total(&T::Utf8, &T::Int64));
        assert!(!cast_is_total(&T::Int64, &T::Int32));
        assert!(!cast_is_total(&T::Float64, &T::Int64));
        assert!(!cast_is_total(&T::Utf8, &T::Date32));
        assert!(!cast_is_total(&T::Int64, &T::Decimal128(3, 0)));
        assert!(!cast_is_total(&T::Int64, &T::UInt64));
    }
}
