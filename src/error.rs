//! The crate's top-level error: every module's error, grouped by category.
//!
//! Categories decide the process exit code and, in the service, the HTTP
//! status. Modules keep their own `thiserror` enums; this type only wraps
//! them, so no error is ever flattened into a string.

use crate::agreement::AgreementError;
use crate::generate::GenerateError;
use crate::import::ImportError;
use crate::query::RunError;
use crate::record_key::SecretError;
use crate::warehouse::SnapshotError;

/// What kind of failure this is, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCategory {
    /// The caller gave bad input (arguments, files, values): fix and retry.
    Usage,
    /// Input data failed validation (an import with bad rows).
    InvalidData,
    /// A snapshot on disk is damaged or does not match its manifest.
    Integrity,
    /// The environment failed (disk, permissions).
    Io,
    /// The query gate refused the query (malformed, not an aggregate).
    Rejected,
    /// The agreement does not allow it (element, Minister's permission).
    Forbidden,
    /// A limit was hit (cells, time, memory, size).
    Limit,
    /// A failure that is not the caller's fault.
    Internal,
}

impl ErrorCategory {
    /// Process exit code for the command line.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorCategory::Usage => 2,
            ErrorCategory::InvalidData => 3,
            ErrorCategory::Integrity => 4,
            ErrorCategory::Io => 5,
            ErrorCategory::Rejected => 6,
            ErrorCategory::Forbidden => 7,
            ErrorCategory::Limit => 8,
            ErrorCategory::Internal => 70,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Agreement(#[from] AgreementError),
    #[error(transparent)]
    Query(#[from] RunError),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error("runtime I/O failure: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    PTable(crate::protect::ptable::PTableError),
    #[error("{file}: {violations} ptable violations (listed above)")]
    PTableCheck { file: String, violations: usize },
    #[error(transparent)]
    Suppress(crate::protect::suppress::SuppressError),
    #[error(transparent)]
    Saved(Box<crate::saved::SavedError>),
    #[error(transparent)]
    State(Box<crate::state::StateError>),
    #[error(transparent)]
    Service(Box<crate::service::ServiceError>),
    #[error(transparent)]
    Policy(Box<crate::policy::PolicyErrors>),
    #[error(transparent)]
    Report(crate::report::ReportError),
    /// A command-line argument that is wrong in itself.
    #[error("{0}")]
    Usage(String),
    #[error(
        "audit chain broken at entry {seq} (of {entries}): {reason}; the log was tampered with or damaged after it was written: restore it from a backup and investigate"
    )]
    ChainBroken {
        seq: u64,
        entries: u64,
        reason: String,
    },
}

impl From<crate::service::ServiceError> for Error {
    fn from(e: crate::service::ServiceError) -> Self {
        Error::Service(Box::new(e))
    }
}

impl From<crate::policy::PolicyErrors> for Error {
    fn from(e: crate::policy::PolicyErrors) -> Self {
        Error::Policy(Box::new(e))
    }
}

impl From<crate::saved::SavedError> for Error {
    fn from(e: crate::saved::SavedError) -> Self {
        Error::Saved(Box::new(e))
    }
}

impl From<crate::state::StateError> for Error {
    fn from(e: crate::state::StateError) -> Self {
        Error::State(Box::new(e))
    }
}

fn snapshot_category(e: &SnapshotError) -> ErrorCategory {
    use SnapshotError as S;
    match e {
        S::NotFound { .. }
        | S::OutputExists { .. }
        | S::BadId { .. }
        | S::ManifestMissing { .. } => ErrorCategory::Usage,
        S::Io { .. } => ErrorCategory::Io,
        _ => ErrorCategory::Integrity,
    }
}

fn service_category(e: &crate::service::ServiceError) -> ErrorCategory {
    use crate::service::ServiceError as S;
    match e {
        S::Snapshot(e) => snapshot_category(e),
        S::SecretMismatch { .. } => ErrorCategory::Integrity,
        S::State(_) | S::Warehouse { .. } | S::Bind { .. } | S::Serve(_) => ErrorCategory::Io,
        S::Engine { .. } => ErrorCategory::Internal,
        _ => ErrorCategory::Usage,
    }
}

impl Error {
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::Snapshot(e) => snapshot_category(e),
            Error::Generate(GenerateError::Snapshot(e)) => snapshot_category(e),
            Error::Generate(_) => ErrorCategory::Usage,
            Error::Import(e) => e.category(),
            Error::Secret(SecretError::Read { .. }) => ErrorCategory::Io,
            Error::Secret(_) => ErrorCategory::Usage,
            Error::Agreement(_) => ErrorCategory::Usage,
            Error::Query(RunError::Query(q)) => {
                use crate::query::Code;
                match q.code {
                    c if c.is_forbidden() => ErrorCategory::Forbidden,
                    Code::TooManyCells
                    | Code::TooManyDimensions
                    | Code::SqlTooLarge
                    | Code::QueryTimeout
                    | Code::ResourcesExhausted => ErrorCategory::Limit,
                    _ => ErrorCategory::Rejected,
                }
            }
            Error::Query(RunError::Engine(_)) | Error::Output(_) => ErrorCategory::Internal,
            Error::Runtime(_) => ErrorCategory::Io,
            Error::PTable(_) | Error::Suppress(_) => ErrorCategory::Usage,
            Error::PTableCheck { .. } => ErrorCategory::InvalidData,
            Error::Saved(_) => ErrorCategory::Usage,
            Error::State(e)
                if matches!(
                    **e,
                    crate::state::StateError::BudgetExhausted { .. }
                        | crate::state::StateError::LifetimeExhausted { .. }
                ) =>
            {
                ErrorCategory::Limit
            }
            Error::State(e)
                if matches!(
                    **e,
                    crate::state::StateError::Missing { .. }
                        | crate::state::StateError::NotState { .. }
                ) =>
            {
                ErrorCategory::Usage
            }
            Error::State(_) => ErrorCategory::Io,
            Error::Service(e) => service_category(e),
            Error::Policy(_) => ErrorCategory::Usage,
            Error::ChainBroken { .. } => ErrorCategory::Integrity,
            Error::Report(_) | Error::Usage(_) => ErrorCategory::Usage,
        }
    }
}
