//! Refusals: the stable codes shared by the gate, protection, the service
//! and the monitoring report. Every rejection carries a stable code (`identifier_in_output`,
//! `element_not_permitted`, …) and a message that names the offending column
//! or function and says what would be accepted instead.

use std::fmt;

use crate::error::ErrorCategory;

/// Declares the stable rejection codes once: the enum, their string form
/// (part of the API) and the list of all of them.
macro_rules! codes {
    ($($variant:ident => $text:literal,)*) => {
        /// Stable rejection codes. The string form is part of the API.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($variant,)*
        }

        impl Code {
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
    ParseError => "parse_error",
    PlanError => "plan_error",
    MultipleStatements => "multiple_statements",
    StatementNotAllowed => "statement_not_allowed",
    NotAnAggregate => "not_an_aggregate",
    TableNotAllowed => "table_not_allowed",
    IdentifierInOutput => "identifier_in_output",
    IdentifierInGroupBy => "identifier_in_group_by",
    IdentifierInPredicate => "identifier_in_predicate",
    IdentifierInAggregate => "identifier_in_aggregate",
    IdentifierInProjection => "identifier_in_projection",
    RecordKeyNotQueryable => "record_key_not_queryable",
    DateNotCoarsened => "date_not_coarsened",
    AgeReferenceDatesConflict => "age_reference_dates_conflict",
    AgeReferenceDateNotAllowed => "age_reference_date_not_allowed",
    AggregateNotAllowed => "aggregate_not_allowed",
    DistinctNotAllowed => "distinct_not_allowed",
    SumNeedsBounds => "sum_needs_bounds",
    WindowFunctionNotAllowed => "window_function_not_allowed",
    NestedAggregate => "nested_aggregate",
    SubqueryReadsPenduduk => "subquery_reads_penduduk",
    SetOperationNotAllowed => "set_operation_not_allowed",
    SelfJoinNotAllowed => "self_join_not_allowed",
    JoinNotAllowed => "join_not_allowed",
    JoinNotOnKey => "join_not_on_key",
    PlanShapeNotAllowed => "plan_shape_not_allowed",
    VolatileFunctionNotAllowed => "volatile_function_not_allowed",
    FunctionNotAllowed => "function_not_allowed",
    ValuesNotAllowed => "values_not_allowed",
    ElementNotPermitted => "element_not_permitted",
    MinisterPermissionRequired => "minister_permission_required",
    RegionNotPermitted => "region_not_permitted",
    TooManyDimensions => "too_many_dimensions",
    TooManyCells => "too_many_cells",
    TableTooSparse => "table_too_sparse",
    SqlTooLarge => "sql_too_large",
    InvalidValue => "invalid_value",
    ExpressionMayFail => "expression_may_fail",
    QueryTimeout => "query_timeout",
    ResourcesExhausted => "resources_exhausted",
    NotATable => "not_a_table",
    ReservedName => "reserved_name",
    QueryTooComplex => "query_too_complex",
    MarginRepartitioned => "margin_repartitioned",
}

impl Code {
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
    pub code: Code,
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
