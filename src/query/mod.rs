//! The query gate and engine, in data-flow order:
//!
//! 1. [`plan`]: SQL text to a read-only DataFusion `LogicalPlan`;
//! 2. [`validate`]: the plan must be an aggregate over `penduduk` that the
//!    caller's agreement permits; produces a [`validate::ValidatedPlan`],
//!    and nothing evaluated over `penduduk` may fail at run time (`total`);
//! 3. [`execute`](mod@execute): runs the aggregate with the agreement's region scope,
//!    completes the result grid with zero cells, and hands the table to
//!    protection before the post-plan (HAVING, ORDER BY, LIMIT) runs.

pub mod engine;
pub mod error;
pub mod execute;
pub mod margins;
pub mod plan;
pub mod table;
mod total;
pub mod udf;
pub mod validate;

pub use engine::{Engine, EngineConfig};
pub use error::{Code, QueryError, RunError};
pub use execute::{
    Executed, QueryResult, check_cells, check_query, execute, grid_cells, plan_fingerprint,
    post_plan, within_timeout,
};
pub use validate::ValidatedPlan;
