//! What protection can release: the kinds of aggregate the gate may pass
//! on, and the rule of which kinds each method releases. The gate
//! classifies a query's aggregates into these words; protection owns them.

use super::Method;
use crate::refusal::{Code, QueryError};

/// An approved aggregate of the result.
#[derive(Debug, Clone, PartialEq)]
pub enum AggregateKind {
    /// `COUNT(*)`: people.
    CountRows,
    /// `COUNT(column)` (refused under the cell-key method's table rules).
    CountColumn,
    /// `COUNT(DISTINCT no_kk)`: households.
    CountHouseholds,
    /// `SUM(x)` with public bounds on `x` (DP only).
    Sum {
        /// Lower bound of a summand.
        lo: f64,
        /// Upper bound of a summand.
        hi: f64,
    },
    /// `AVG(x)` with public bounds on `x` (DP only).
    Avg {
        /// Lower bound of a value.
        lo: f64,
        /// Upper bound of a value.
        hi: f64,
    },
    /// `GROUPING(...)`: public, not protected.
    Grouping,
}

pub(crate) fn is_count(k: &AggregateKind) -> bool {
    matches!(
        k,
        AggregateKind::CountRows | AggregateKind::CountColumn | AggregateKind::CountHouseholds
    )
}

/// Refuses aggregates the method cannot release: SUM and AVG need
/// differential privacy (a perturbed count has no bounded analogue for
/// sums).
pub fn check_aggregates(method: &Method, aggregates: &[AggregateKind]) -> Result<(), QueryError> {
    let sums = aggregates
        .iter()
        .any(|a| matches!(a, AggregateKind::Sum { .. } | AggregateKind::Avg { .. }));
    if sums && matches!(method, Method::CellKey { .. }) {
        return Err(QueryError::new(
            Code::AggregateNotAllowed,
            "SUM and AVG are released only under differential privacy; this agreement uses the cell-key method, so count people instead (e.g. COUNT(*) per age band)",
        ));
    }
    let counted = aggregates.iter().any(|a| {
        matches!(
            a,
            AggregateKind::CountRows
                | AggregateKind::CountColumn
                | AggregateKind::CountHouseholds
                | AggregateKind::Avg { .. }
        )
    });
    if sums && !counted {
        return Err(QueryError::new(
            Code::AggregateNotAllowed,
            "a SUM is released only next to a count of the same cells, because the threshold k applies to the noisy count of every released row; add COUNT(*) to the query",
        ));
    }
    Ok(())
}
