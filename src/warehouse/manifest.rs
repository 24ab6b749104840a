//! `manifest.json`: what a snapshot holds and how it was produced.

use serde::{Deserialize, Serialize};

/// The manifest written at the root of every snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Snapshot id, e.g. `dkb-2026-s1`; equals the directory name.
    pub id: String,
    /// Reference date of the data: fixes age arithmetic.
    #[serde(with = "iso_date")]
    pub tanggal_data: chrono::NaiveDate,
    /// Version of the `penduduk` schema (see `catalog::SCHEMA_VERSION`).
    pub schema_version: u32,
    /// True for generated data. Trial agreements see only synthetic
    /// snapshots; production agreements only non-synthetic ones.
    pub synthetic: bool,
    /// Region prefixes covered (`["61.71"]`, or `["all"]`).
    pub coverage: Vec<String>,
    /// Rows of `penduduk`.
    pub row_count: u64,
    /// How the `record_key` column was derived.
    pub record_key: RecordKeyInfo,
    /// What produced the snapshot (generator or importer) and from what input.
    pub produced_by: Provenance,
    /// Every data file, `penduduk` partitions and reference tables alike.
    pub files: Vec<FileEntry>,
}

/// How a snapshot's record keys were derived, without revealing the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordKeyInfo {
    /// `hmac-sha256-u64be`: the first 8 bytes of HMAC-SHA256(secret, NIK).
    pub algorithm: String,
    /// Fingerprint of the secret (not its hash); equal fingerprints mean
    /// record keys are comparable across snapshots.
    pub secret_fingerprint: String,
}

/// How the snapshot was produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Provenance {
    /// Synthetic data from `agregat generate`.
    Generator {
        /// The producing program and version (`agregat 0.1.0`).
        tool: String,
        /// The run seed (`--seed`): the same seed and options give the same
        /// snapshot.
        seed: u64,
        /// `--region` as given: a Kemendagri code prefix or `all`.
        region: String,
        /// `--people` as given; `None` means the reference population.
        people: Option<u64>,
        /// Rows per Parquet row group of the `penduduk` files.
        rows_per_row_group: usize,
    },
    /// Real data imported from a register CSV export with `agregat import`.
    Import {
        /// The producing program and version (`agregat 0.1.0`).
        tool: String,
        /// File name of the imported CSV export (without its directory).
        source_file: String,
        /// SHA-256 of the CSV file's bytes, lowercase hex.
        source_sha256: String,
        /// Data rows of the CSV export (header excluded).
        source_rows: u64,
    },
}

/// One file of the snapshot, relative to its root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path with `/` separators.
    pub path: String,
    /// File size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file's contents, lowercase hex.
    pub sha256: String,
    /// Rows in the Parquet file.
    pub rows: u64,
}

/// `YYYY-MM-DD` dates in JSON, without pulling chrono's serde feature into
/// the whole dependency graph.
pub mod iso_date {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a date as `YYYY-MM-DD`.
    pub fn serialize<S: Serializer>(d: &chrono::NaiveDate, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&d.format("%Y-%m-%d"))
    }

    /// Reads a `YYYY-MM-DD` date.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<chrono::NaiveDate, D::Error> {
        let text = String::deserialize(d)?;
        chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d").map_err(|e| {
            serde::de::Error::custom(format!("'{text}' is not a YYYY-MM-DD date ({e})"))
        })
    }
}
