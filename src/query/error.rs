//! Errors of running a query: the engine's own failures, and the union of
//! those with a refusal ([`crate::refusal`]).

pub use crate::refusal::{Code, QueryError};

/// Failures that are not the caller's fault.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// DataFusion failed to plan or execute.
    #[error("query engine failure: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Opening or verifying the snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] crate::warehouse::SnapshotError),
    /// The margin memory could not be made durable; nothing is released.
    #[error("the record of released margins could not be written: {0}")]
    MarginJournal(String),
    /// A local run's ledger failed.
    #[error("the ledger of the local run failed: {0}")]
    Ledger(#[from] crate::state::StateError),
    /// OpenDP could not state a charge.
    #[error("privacy cost: {0}")]
    Privacy(#[from] crate::protect::dp::DpError),
    /// A blocking task did not finish.
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What running a query can end in.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The query was refused.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl RunError {
    /// Refusals by their code; the engine's failures are internal.
    pub fn category(&self) -> crate::error::ErrorCategory {
        match self {
            RunError::Query(q) => q.category(),
            RunError::Engine(_) => crate::error::ErrorCategory::Internal,
        }
    }
}

impl From<datafusion::error::DataFusionError> for RunError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        RunError::Engine(EngineError::DataFusion(e))
    }
}

/// DataFusion's message without its internal prefixes and plan dumps.
pub fn clean_message(e: &datafusion::error::DataFusionError) -> String {
    let raw = e.strip_backtrace();
    let mut s = raw.as_str();
    for prefix in [
        "SQL error: ",
        "Error during planning: ",
        "Schema error: ",
        "This feature is not implemented: ",
        "Execution error: ",
        "Optimizer rule ",
    ] {
        if let Some(rest) = s.strip_prefix(prefix) {
            s = rest;
        }
    }
    let mut out = s.to_string();
    if let Some(inner) = out
        .strip_prefix("ParserError(\"")
        .and_then(|r| r.strip_suffix("\")"))
    {
        out = inner.replace("\\\"", "\"");
    }
    if let Some(inner) = out
        .strip_prefix("TokenizerError(\"")
        .and_then(|r| r.strip_suffix("\")"))
    {
        out = inner.replace("\\\"", "\"");
    }
    // Never echo a plan dump.
    if let Some(i) = out.find("\nLogical plan") {
        out.truncate(i);
    }
    out.lines().next().unwrap_or_default().trim().to_string()
}
