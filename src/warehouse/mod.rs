//! The warehouse: snapshot directories of Parquet files and their manifests.
//!
//! ```text
//! <warehouse>/<snapshot-id>/
//!   manifest.json                         id, tanggal_data, files + SHA-256
//!   penduduk/kode_kab=61.71/part-0000.parquet   hive-partitioned by kab/kota
//!   referensi/wilayah.parquet             regions touched by the coverage
//!   referensi/kode_referensi.parquet      all public code lists (long form)
//! ```
//!
//! This module owns the layout, writing ([`writer`]) and opening with
//! verification ([`Snapshot::open`]): a missing, resized, altered, unlisted
//! or schema-drifted file is an error that names the file.

pub mod manifest;
pub mod writer;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::errors::ParquetError;
use rayon::prelude::*;

pub use manifest::{FileEntry, Manifest, Provenance, RecordKeyInfo};
pub use writer::{PartitionWriter, PendudukBuilder, PersonRow, SnapshotWriter};

use crate::catalog::{self, RegionScope};

/// File name of the manifest at the root of a snapshot directory.
pub const MANIFEST: &str = "manifest.json";
/// Subdirectory holding the hive-partitioned `penduduk` Parquet files.
pub const PENDUDUK_DIR: &str = "penduduk";
/// Subdirectory holding the reference tables (`wilayah`, `kode_referensi`).
pub const REFERENCE_DIR: &str = "referensi";
/// Record-key algorithm name written into manifests.
pub const RECORD_KEY_ALGORITHM: &str = "hmac-sha256-u64be";

impl SnapshotError {
    /// A wrong path or id is the caller's; a failed read the
    /// environment's; anything else is damage.
    pub fn category(&self) -> crate::error::ErrorCategory {
        use crate::error::ErrorCategory as C;
        match self {
            SnapshotError::NotFound { .. }
            | SnapshotError::OutputExists { .. }
            | SnapshotError::BadId { .. }
            | SnapshotError::ManifestMissing { .. } => C::Usage,
            SnapshotError::Io { .. } => C::Io,
            _ => C::Integrity,
        }
    }
}

/// Errors opening, verifying or writing a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot directory does not exist.
    #[error(
        "snapshot directory '{dir}' does not exist; list the warehouse directory to see available snapshots"
    )]
    NotFound {
        /// The snapshot directory asked for.
        dir: PathBuf,
    },
    /// The directory has no `manifest.json`.
    #[error(
        "'{dir}' has no manifest.json, so it is not a snapshot; create snapshots with `agregat generate` or `agregat import`"
    )]
    ManifestMissing {
        /// The directory opened as a snapshot.
        dir: PathBuf,
    },
    /// `manifest.json` could not be parsed.
    #[error("manifest '{path}' is invalid: {detail}")]
    ManifestInvalid {
        /// Path of the `manifest.json`.
        path: PathBuf,
        /// The JSON parser's message.
        detail: String,
    },
    /// The manifest was written for another `penduduk` schema version.
    #[error(
        "manifest '{path}' has schema version {found}, this agregat reads version {expected}; rebuild the snapshot with this version"
    )]
    SchemaVersion {
        /// Path of the `manifest.json`.
        path: PathBuf,
        /// The manifest's `schema_version`.
        found: u32,
        /// The version this build reads (`catalog::SCHEMA_VERSION`).
        expected: u32,
    },
    /// A file listed in the manifest is absent.
    #[error("snapshot file '{file}' listed in the manifest is missing")]
    FileMissing {
        /// Path of the file relative to the snapshot root (`/` separators).
        file: String,
    },
    /// A file's size differs from the manifest.
    #[error(
        "snapshot file '{file}' is {actual} bytes, the manifest says {expected}; the file was truncated or replaced"
    )]
    SizeMismatch {
        /// Path of the file relative to the snapshot root (`/` separators).
        file: String,
        /// Size in bytes per the manifest.
        expected: u64,
        /// Size in bytes on disk.
        actual: u64,
    },
    /// A file's SHA-256 differs from the manifest.
    #[error(
        "snapshot file '{file}' has SHA-256 {actual}, the manifest says {expected}; the file was altered"
    )]
    ChecksumMismatch {
        /// Path of the file relative to the snapshot root (`/` separators).
        file: String,
        /// SHA-256 per the manifest, lowercase hex.
        expected: String,
        /// SHA-256 of the file on disk, lowercase hex.
        actual: String,
    },
    /// A file in the snapshot directory is not listed in the manifest.
    #[error(
        "snapshot file '{file}' is not listed in the manifest; remove it, since queries would read it"
    )]
    UnlistedFile {
        /// Path of the file relative to the snapshot root (`/` separators).
        file: String,
    },
    /// A Parquet file is unreadable or its columns or row count differ from
    /// what is expected.
    #[error("snapshot file '{file}' does not have the expected schema: {detail}")]
    SchemaDrift {
        /// Path of the file relative to the snapshot root (`/` separators).
        file: String,
        /// What differs: unreadable, row count, or missing/extra columns.
        detail: String,
    },
    /// The `penduduk` files together do not hold the manifest's `row_count`.
    #[error("snapshot '{id}' holds {actual} rows, the manifest says {expected}")]
    RowCount {
        /// The snapshot id.
        id: String,
        /// The manifest's `row_count`.
        expected: u64,
        /// Rows the `penduduk` files hold, per their manifest entries.
        actual: u64,
    },
    /// The output directory of a new snapshot already exists.
    #[error(
        "'{path}' already exists; choose a new snapshot directory (snapshots are never overwritten)"
    )]
    OutputExists {
        /// The output directory given.
        path: PathBuf,
    },
    /// A snapshot id that is empty, too long, starts with `.`, or holds
    /// characters other than letters, digits, `-`, `_` and `.`.
    #[error(
        "'{id}' is not a valid snapshot id; use letters, digits, '-', '_' and '.', e.g. 'dkb-2026-s1'"
    )]
    BadId {
        /// The rejected id (or the output path it would come from).
        id: String,
    },
    /// An I/O error on a path.
    #[error("I/O error on '{path}': {source}")]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A Parquet error reading or writing a file.
    #[error("Parquet error in '{file}': {source}")]
    Parquet {
        /// Path of the file relative to the snapshot root (`/` separators).
        file: String,
        /// The Parquet library's error.
        source: ParquetError,
    },
    /// An Arrow error building record batches.
    #[error("Arrow error: {0}")]
    Arrow(#[from] ArrowError),
}

impl SnapshotError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        SnapshotError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub(crate) fn parquet(file: &str, source: ParquetError) -> Self {
        SnapshotError::Parquet {
            file: file.to_string(),
            source,
        }
    }
}

/// Snapshot ids become directory names and partition values in SQL; keep
/// them plain.
pub fn check_id(id: &str) -> Result<(), SnapshotError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SnapshotError::BadId { id: id.to_string() })
    }
}

/// How much of a snapshot to verify on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Presence, sizes, SHA-256 of every byte, schemas and row counts.
    Full,
    /// Presence, sizes, schemas and row counts; no hashing. For very large
    /// snapshots that were fully verified when they were installed.
    Structure,
}

/// An opened, verified snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// The parsed and verified manifest.
    pub manifest: Manifest,
}

impl Snapshot {
    /// Opens the snapshot in `dir`: reads the manifest, checks its schema
    /// version and id, and verifies the files to the given depth.
    pub fn open(dir: &Path, verify: Verify) -> Result<Snapshot, SnapshotError> {
        if !dir.is_dir() {
            return Err(SnapshotError::NotFound {
                dir: dir.to_path_buf(),
            });
        }
        let mpath = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&mpath) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::ManifestMissing {
                    dir: dir.to_path_buf(),
                });
            }
            Err(e) => return Err(SnapshotError::io(&mpath, e)),
        };
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| SnapshotError::ManifestInvalid {
                path: mpath.clone(),
                detail: e.to_string(),
            })?;
        if manifest.schema_version != catalog::SCHEMA_VERSION {
            return Err(SnapshotError::SchemaVersion {
                path: mpath,
                found: manifest.schema_version,
                expected: catalog::SCHEMA_VERSION,
            });
        }
        check_id(&manifest.id)?;
        let snap = Snapshot {
            dir: dir.to_path_buf(),
            manifest,
        };
        snap.verify(verify)?;
        Ok(snap)
    }

    /// The snapshot id from the manifest.
    pub fn id(&self) -> &str {
        &self.manifest.id
    }

    /// Directory of the hive-partitioned `penduduk` files.
    pub fn penduduk_dir(&self) -> PathBuf {
        self.dir.join(PENDUDUK_DIR)
    }

    /// Path of the reference table `table` (`referensi/<table>.parquet`).
    pub fn reference_file(&self, table: &str) -> PathBuf {
        self.dir
            .join(REFERENCE_DIR)
            .join(format!("{table}.parquet"))
    }

    /// The manifest's coverage as a region scope.
    pub fn coverage(&self) -> RegionScope {
        if self.manifest.coverage.iter().any(|c| c == "all") {
            RegionScope::All
        } else {
            RegionScope::Prefixes(self.manifest.coverage.clone())
        }
    }

    fn verify(&self, verify: Verify) -> Result<(), SnapshotError> {
        let listed: BTreeSet<&str> = self
            .manifest
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        for found in list_files(&self.dir)? {
            if found != MANIFEST && !listed.contains(found.as_str()) {
                return Err(SnapshotError::UnlistedFile { file: found });
            }
        }
        // Hash in parallel: verification of a large snapshot is I/O and
        // SHA-256 bound. Report the first failing file in manifest order.
        let results: Vec<Result<(), SnapshotError>> = self
            .manifest
            .files
            .par_iter()
            .map(|f| self.verify_file(f, verify))
            .collect();
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        let rows: u64 = self
            .manifest
            .files
            .iter()
            .filter(|f| f.path.starts_with(PENDUDUK_DIR))
            .map(|f| f.rows)
            .sum();
        if rows != self.manifest.row_count {
            return Err(SnapshotError::RowCount {
                id: self.manifest.id.clone(),
                expected: self.manifest.row_count,
                actual: rows,
            });
        }
        Ok(())
    }

    fn verify_file(&self, f: &FileEntry, verify: Verify) -> Result<(), SnapshotError> {
        let path = self.dir.join(&f.path);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::FileMissing {
                    file: f.path.clone(),
                });
            }
            Err(e) => return Err(SnapshotError::io(&path, e)),
        };
        if meta.len() != f.bytes {
            return Err(SnapshotError::SizeMismatch {
                file: f.path.clone(),
                expected: f.bytes,
                actual: meta.len(),
            });
        }
        if verify == Verify::Full {
            let actual = sha256_file(&path)?;
            if actual != f.sha256 {
                return Err(SnapshotError::ChecksumMismatch {
                    file: f.path.clone(),
                    expected: f.sha256.clone(),
                    actual,
                });
            }
        }
        self.verify_schema(f)
    }

    fn verify_schema(&self, f: &FileEntry) -> Result<(), SnapshotError> {
        let path = self.dir.join(&f.path);
        let file = std::fs::File::open(&path).map_err(|e| SnapshotError::io(&path, e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
            SnapshotError::SchemaDrift {
                file: f.path.clone(),
                detail: format!("not a readable Parquet file ({e})"),
            }
        })?;
        let rows = reader.metadata().file_metadata().num_rows() as u64;
        if rows != f.rows {
            return Err(SnapshotError::SchemaDrift {
                file: f.path.clone(),
                detail: format!("{rows} rows, the manifest says {}", f.rows),
            });
        }
        let expected = if f.path.starts_with(PENDUDUK_DIR) {
            catalog::penduduk_file_schema()
        } else if f.path == format!("{REFERENCE_DIR}/wilayah.parquet") {
            writer::wilayah_schema()
        } else if f.path == format!("{REFERENCE_DIR}/kode_referensi.parquet") {
            writer::kode_referensi_schema()
        } else {
            return Err(SnapshotError::SchemaDrift {
                file: f.path.clone(),
                detail: format!(
                    "the manifest lists it, but a snapshot holds only {PENDUDUK_DIR}/**.parquet, {REFERENCE_DIR}/wilayah.parquet and {REFERENCE_DIR}/kode_referensi.parquet; remove it from the manifest and the directory"
                ),
            });
        };
        let actual = reader.schema();
        let names = |s: &datafusion::arrow::datatypes::Schema| {
            s.fields()
                .iter()
                .map(|f| format!("{}:{}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
        };
        let (want, got) = (names(&expected), names(actual));
        if want != got {
            let missing: Vec<_> = want.iter().filter(|c| !got.contains(c)).collect();
            let extra: Vec<_> = got.iter().filter(|c| !want.contains(c)).collect();
            return Err(SnapshotError::SchemaDrift {
                file: f.path.clone(),
                detail: format!(
                    "expected columns missing or retyped: {missing:?}; unexpected columns: {extra:?}{}",
                    if missing.is_empty() && extra.is_empty() {
                        " (column order differs)"
                    } else {
                        ""
                    }
                ),
            });
        }
        Ok(())
    }
}

/// Relative paths of every file under `dir`, with `/` separators.
fn list_files(dir: &Path) -> Result<Vec<String>, SnapshotError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| SnapshotError::io(&d, e))? {
            let entry = entry.map_err(|e| SnapshotError::io(&d, e))?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).expect("under dir");
                out.push(
                    rel.components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
        }
    }
    out.sort();
    Ok(out)
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, SnapshotError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| SnapshotError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| SnapshotError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The public reference tables stored with a snapshot.
pub fn reference_tables(scope: &RegionScope) -> Vec<(&'static str, RecordBatch)> {
    vec![
        ("kode_referensi", writer::build_kode_referensi()),
        ("wilayah", writer::build_wilayah(scope)),
    ]
}
