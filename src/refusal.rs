//! Refusals: the stable codes shared by the gate, protection, the service
//! and the monitoring report. Every rejection carries a stable code (`identifier_in_output`,
//! `element_not_permitted`, …) and a message that names the offending column
//! or function and says what would be accepted instead.

use std::fmt;

use crate::error::ErrorCategory;

/// Declares the stable rejection codes once: the enum, their string form
/// (part of the API) and the list of all of them.
macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident => $text:literal,)*) => {
        /// Stable rejection codes. The string form is part of the API.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[$doc])* $variant,)*
        }

        impl Code {
            /// The stable string form (`identifier_in_output`, …) sent to
            /// clients and written to the audit log.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)*
                }
            }

            /// Every code, for documentation and tests.
            pub fn all() -> &'static [Code] {
                &[$(Code::$variant,)*]
            }
        }
    };
}

codes! {
    /// The SQL text does not parse, or is empty.
    ParseError => "parse_error",
    /// The statement parses but cannot be planned or typed: an unknown or
    /// unavailable column, a wrong number of function arguments, a comparison
    /// between values of different kinds.
    PlanError => "plan_error",
    /// The SQL text holds more than one statement.
    MultipleStatements => "multiple_statements",
    /// The statement is not a SELECT (DDL, DML, EXPLAIN, COPY, SET, …).
    StatementNotAllowed => "statement_not_allowed",
    /// The result is not an aggregate over `penduduk` read exactly once.
    NotAnAggregate => "not_an_aggregate",
    /// The query reads a table other than `penduduk`, `wilayah` and
    /// `kode_referensi`.
    TableNotAllowed => "table_not_allowed",
    /// The result would output identifiers (`nik`, `no_kk`, names, …) of
    /// individual people.
    IdentifierInOutput => "identifier_in_output",
    /// GROUP BY uses an identifier, or a date column that is not coarsened.
    IdentifierInGroupBy => "identifier_in_group_by",
    /// WHERE, JOIN ON or an aggregate's FILTER clause uses an identifier, or
    /// a date column outside `umur()`, `umur_pada()` or `tahun()`.
    IdentifierInPredicate => "identifier_in_predicate",
    /// An aggregate takes an identifier as its argument (other than
    /// `COUNT(DISTINCT no_kk)`), or SUM/AVG takes a raw date.
    IdentifierInAggregate => "identifier_in_aggregate",
    /// A subquery selects an identifier (`SELECT *` included), even if the outer
    /// query drops it.
    IdentifierInProjection => "identifier_in_projection",
    /// The query mentions the record key, which only the cell-key method reads.
    RecordKeyNotQueryable => "record_key_not_queryable",
    /// A date is used without coarsening, or a coarsening function is applied to a
    /// computed date or a non-age.
    DateNotCoarsened => "date_not_coarsened",
    /// Ages are computed on more than one reference date in one query, which would
    /// narrow birth dates.
    AgeReferenceDatesConflict => "age_reference_dates_conflict",
    /// `umur_pada()` is given a date other than 1 July of a school year or the
    /// snapshot's reference date.
    AgeReferenceDateNotAllowed => "age_reference_date_not_allowed",
    /// Under the cell-key method, an age band width or an age reference
    /// year outside the fixed classifications (widths 1, 5 and 10; 1 July of
    /// the snapshot's school years).
    AgeClassificationNotAllowed => "age_classification_not_allowed",
    /// An aggregate the gate does not approve (ordered aggregates), or SUM/AVG
    /// where the protection method cannot release it (cell-key, or a SUM without a
    /// count of the same cells).
    AggregateNotAllowed => "aggregate_not_allowed",
    /// DISTINCT inside an aggregate other than `COUNT(DISTINCT no_kk)`.
    DistinctNotAllowed => "distinct_not_allowed",
    /// A SUM or AVG over an expression with no declared bounds, which differential
    /// privacy cannot protect.
    SumNeedsBounds => "sum_needs_bounds",
    /// A window function (`OVER ...`), which computes values per person.
    WindowFunctionNotAllowed => "window_function_not_allowed",
    /// An aggregate of another aggregate's result, or an aggregate where none may
    /// appear.
    NestedAggregate => "nested_aggregate",
    /// A subquery reads `penduduk` a second time.
    SubqueryReadsPenduduk => "subquery_reads_penduduk",
    /// UNION, INTERSECT or EXCEPT.
    SetOperationNotAllowed => "set_operation_not_allowed",
    /// `penduduk` is joined with itself.
    SelfJoinNotAllowed => "self_join_not_allowed",
    /// A join type other than INNER, or LEFT with `penduduk` on the left.
    JoinNotAllowed => "join_not_allowed",
    /// A join with `penduduk` that is not an equality on the reference table's key,
    /// or whose key turns out not to be unique there.
    JoinNotOnKey => "join_not_on_key",
    /// A plan shape the gate does not support: correlated subqueries, UNNEST,
    /// placeholders, ORDER BY/LIMIT/DISTINCT inside a subquery.
    PlanShapeNotAllowed => "plan_shape_not_allowed",
    /// A non-deterministic function (`random()`, `now()`, …), whose result does not
    /// depend only on the data.
    VolatileFunctionNotAllowed => "volatile_function_not_allowed",
    /// A function outside the allowed list below the aggregate, or `kelompok_umur`
    /// with a band width that is not a literal in range.
    FunctionNotAllowed => "function_not_allowed",
    /// A `VALUES` list used as a relation.
    ValuesNotAllowed => "values_not_allowed",
    /// A column whose data element the agreement does not permit.
    ElementNotPermitted => "element_not_permitted",
    /// A protected element (UU 24/2013 Pasal 84) for which the agreement has no
    /// Minister's permission.
    MinisterPermissionRequired => "minister_permission_required",
    /// A region outside the agreement's region scope.
    RegionNotPermitted => "region_not_permitted",
    /// More GROUP BY expressions than the agreement's `max_group_dimensions`.
    TooManyDimensions => "too_many_dimensions",
    /// The result grid has more cells than the agreement's `max_cells`, or the
    /// dimensions' combinations exceed what one query may cover.
    TooManyCells => "too_many_cells",
    /// The table is too sparse to release: most of its non-empty cells would be
    /// withheld.
    TableTooSparse => "table_too_sparse",
    /// The SQL text is longer than the agreement's `max_sql_bytes`.
    SqlTooLarge => "sql_too_large",
    /// A value fails at run time (a cast or function argument), or a protection
    /// parameter is rejected.
    InvalidValue => "invalid_value",
    /// An expression at or below the aggregate could fail on some values, so
    /// whether it fails would depend on the data; refused before any data is read.
    ExpressionMayFail => "expression_may_fail",
    /// The query did not finish within the engine's or the agreement's
    /// timeout, whichever is shorter.
    QueryTimeout => "query_timeout",
    /// The query needs more memory than the service allows.
    ResourcesExhausted => "resources_exhausted",
    /// Under the cell-key method, the query is not a table: counts grouped by
    /// dimensions with WHERE conditions that each select whole categories of one
    /// dimension.
    NotATable => "not_a_table",
    /// An alias uses a name reserved for the engine (starting with `__`, or
    /// `record_key`).
    ReservedName => "reserved_name",
    /// Parentheses or expressions nested deeper than the fixed limits
    /// (`MAX_PAREN_DEPTH`, `MAX_EXPR_DEPTH`).
    QueryTooComplex => "query_too_complex",
    /// A margin already released in other breakdowns would be broken down again,
    /// letting the released tables be averaged close to its true value.
    MarginRepartitioned => "margin_repartitioned",
}

impl Code {
    /// The code whose string form is `s`; `None` for an unknown string.
    pub fn parse(s: &str) -> Option<Code> {
        Code::all().iter().copied().find(|c| c.as_str() == s)
    }

    /// The error category of a refusal with this code: its exit code and
    /// HTTP status come from the one table in [`crate::error`].
    pub fn category(self) -> ErrorCategory {
        match self {
            c if c.is_forbidden() => ErrorCategory::Forbidden,
            Code::TooManyCells | Code::SqlTooLarge => ErrorCategory::TooLarge,
            Code::TooManyDimensions | Code::QueryTimeout | Code::ResourcesExhausted => {
                ErrorCategory::Limit
            }
            Code::ParseError | Code::PlanError | Code::MultipleStatements | Code::InvalidValue => {
                ErrorCategory::Malformed
            }
            _ => ErrorCategory::Rejected,
        }
    }

    /// Forbidden (the agreement does not allow it) rather than malformed.
    pub fn is_forbidden(self) -> bool {
        matches!(
            self,
            Code::ElementNotPermitted | Code::MinisterPermissionRequired | Code::RegionNotPermitted
        )
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A query the gate refused or could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} [{code}]")]
pub struct QueryError {
    /// Why the query was refused: the stable code clients match on.
    pub code: Code,
    /// What was wrong (naming the column or function) and what would be
    /// accepted instead.
    pub message: String,
}

impl QueryError {
    /// The category of the refusal's code.
    pub fn category(&self) -> ErrorCategory {
        self.code.category()
    }

    /// A refusal with its code and a message that says what to do instead.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        QueryError {
            code,
            message: message.into(),
        }
    }
}
