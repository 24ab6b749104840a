//! Strict import of the register's CSV export into a snapshot.

use std::path::Path;

use crate::error::ErrorCategory;
use crate::record_key::RecordKeySecret;
use crate::warehouse::Manifest;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("import not available")]
    Unavailable,
}

impl ImportError {
    pub fn category(&self) -> ErrorCategory {
        ErrorCategory::InvalidData
    }
}

/// Imports a CSV export into a new snapshot at `out`.
pub fn import_csv(
    _csv: &Path,
    _as_of: chrono::NaiveDate,
    _out: &Path,
    _secret: &RecordKeySecret,
    _synthetic: bool,
) -> Result<Manifest, ImportError> {
    Err(ImportError::Unavailable)
}
