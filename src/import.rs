//! Strict import of the register's CSV export into a snapshot.
//!
//! This module owns the import format and its validation rules, the
//! problems they report ([`ImportError`], [`RowProblem`], [`RowReason`]) and
//! the conversion of a clean export into a snapshot directory.
//!
//! # Format
//!
//! A UTF-8 CSV file (comma-separated, optional byte-order mark) whose header
//! names every column of the catalog ([`crate::catalog::COLUMNS`]) except
//! `record_key`, plus the partition column `kode_kab`, in any order
//! ([`import_columns`]). Header names are matched case-insensitively.
//! Values are trimmed; an empty value is missing. Categorical columns take
//! the SIAK numeric code or the label (case-insensitive) and store the
//! canonical label; dates are `YYYY-MM-DD`; region codes are dotted
//! Kemendagri codes (`61.71.01.1002`) of the column's level; `no_rt` and
//! `no_rw` are 1 to 3 digits, stored zero-padded (`001`).
//!
//! # Validation is all-or-nothing
//!
//! Every row is checked (see [`RowReason`] for the rules) and every problem
//! is collected. A file with any bad row is rejected whole with
//! [`ImportError::InvalidRows`], which lists each problem with its CSV line
//! (the header is line 1), column, value and the fix; nothing is written.
//! Only a clean file reaches the [`SnapshotWriter`], which writes into a
//! temporary directory and renames it into place when complete.
//!
//! # Memory
//!
//! Memory is proportional to the input: the importer holds the whole file,
//! then every validated row (about 1.5 KB per person, one small allocation
//! per text value) and the set of NIKs seen, so it can check NIK uniqueness
//! and sort each kab/kota partition by region before writing. Measured peak:
//! about six times the CSV size (a 57 MB export of 200,000 people peaks at
//! 330 MB), so a city of 700,000 people needs about 1 GB and a national
//! export of 285 million people would not fit; import such data one
//! province at a time into separate snapshots.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{Datelike, NaiveDate};
use rayon::prelude::*;

use crate::calendar::{age_on, date_to_days, days_to_date};
use crate::catalog::{
    self, COLUMNS, Column, Domain, PARTITION, PARTITION_COLUMN, RECORD_KEY, RegionLevel,
    RegionScope, UnknownRegion, code_list,
};
use crate::error::ErrorCategory;
use crate::record_key::{RecordKeyHasher, RecordKeySecret, sha256_hex};
use crate::warehouse::writer::{DEFAULT_ROWS_PER_ROW_GROUP, MAX_ROWS_PER_FILE};
use crate::warehouse::{
    FileEntry, Manifest, PartitionWriter, PersonRow, Provenance, RECORD_KEY_ALGORITHM,
    RecordKeyInfo, SnapshotError, SnapshotWriter,
};

/// Problems shown in the message of [`ImportError::InvalidRows`].
pub const MAX_SHOWN_PROBLEMS: usize = 50;

/// Problems kept in [`ImportError::InvalidRows::problems`]; further ones are
/// only counted in `total`, so a completely wrong file cannot exhaust memory
/// with error reports.
pub const MAX_KEPT_PROBLEMS: usize = 100_000;

/// Oldest plausible age on the reference date.
const MAX_AGE: i32 = 150;

/// Label of `jenis_kelamin` whose NIK day has 40 added.
const PEREMPUAN: &str = "PEREMPUAN";

/// The columns an export must have, in catalog order: every stored column
/// except `record_key` (derived on import), then `kode_kab`.
pub fn import_columns() -> impl Iterator<Item = &'static Column> {
    COLUMNS
        .iter()
        .filter(|c| c.name != RECORD_KEY)
        .chain(std::iter::once(&PARTITION))
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read at all.
    #[error(
        "cannot read the CSV export '{path}': {source}; check the path and that the file is a readable file"
    )]
    Unreadable {
        /// The CSV export's path as given.
        path: PathBuf,
        /// The error from reading the file.
        source: std::io::Error,
    },
    /// The file is not UTF-8.
    #[error(
        "'{file}' is not UTF-8 text: line {line} holds an invalid byte (0x{byte:02X}); re-save the export as UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8 export.csv > export-utf8.csv`"
    )]
    NotUtf8 {
        /// The CSV export.
        file: PathBuf,
        /// Line of the first invalid byte (1-based, counted after any
        /// byte-order mark).
        line: u64,
        /// The first byte that is not valid UTF-8.
        byte: u8,
    },
    /// No header line.
    #[error(
        "'{file}' is empty; export the register as CSV with a header line naming the columns ({}) and one line per person",
        import_column_list()
    )]
    Empty {
        /// The CSV export.
        file: PathBuf,
    },
    /// A header but no data rows.
    #[error(
        "'{file}' has a header but no data rows, so there is nothing to import; check that the export query selected the intended region"
    )]
    NoRows {
        /// The CSV export.
        file: PathBuf,
    },
    /// The header does not name exactly the expected columns.
    #[error("{}", header_message(file, missing, unknown, duplicate, *semicolons))]
    Header {
        /// The CSV export.
        file: PathBuf,
        /// Expected columns absent from the header.
        missing: Vec<&'static str>,
        /// Header names that are not import columns.
        unknown: Vec<UnknownColumn>,
        /// Header names given more than once.
        duplicate: Vec<String>,
        /// The header looks semicolon-separated.
        semicolons: bool,
    },
    /// The CSV structure itself is broken.
    #[error(
        "'{file}' line {line} is not valid CSV ({source}); check quoting: a value containing a comma, quote or line break must be enclosed in double quotes, with inner quotes doubled"
    )]
    Csv {
        /// The CSV export.
        file: PathBuf,
        /// CSV line where the broken record starts; the header is line 1.
        line: u64,
        /// The CSV reader's error.
        source: csv::Error,
    },
    /// Rows failed validation; nothing was written.
    #[error("{}", rows_message(file, *rows, *bad_rows, problems, *total))]
    InvalidRows {
        /// The CSV export.
        file: PathBuf,
        /// Data rows in the file.
        rows: u64,
        /// Rows with at least one problem.
        bad_rows: u64,
        /// The problems in line order (at most [`MAX_KEPT_PROBLEMS`]).
        problems: Vec<RowProblem>,
        /// All problems found, including any beyond `problems`.
        total: usize,
    },
    /// Writing the snapshot failed (or its destination is unusable).
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

impl ImportError {
    /// A missing path is usage; other read failures are I/O; bad content is
    /// invalid data; snapshot failures follow [`SnapshotError::category`].
    pub fn category(&self) -> ErrorCategory {
        match self {
            ImportError::Unreadable { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory => {
                    ErrorCategory::Usage
                }
                _ => ErrorCategory::Io,
            },
            ImportError::NotUtf8 { .. }
            | ImportError::Empty { .. }
            | ImportError::NoRows { .. }
            | ImportError::Header { .. }
            | ImportError::Csv { .. }
            | ImportError::InvalidRows { .. } => ErrorCategory::InvalidData,
            ImportError::Snapshot(e) => match e {
                SnapshotError::NotFound { .. }
                | SnapshotError::OutputExists { .. }
                | SnapshotError::BadId { .. }
                | SnapshotError::ManifestMissing { .. } => ErrorCategory::Usage,
                SnapshotError::Io { .. } => ErrorCategory::Io,
                _ => ErrorCategory::Integrity,
            },
        }
    }
}

/// A header name that is not an import column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownColumn {
    /// The name as written in the header.
    pub name: String,
    /// The expected column it most likely means, if any.
    pub suggestion: Option<&'static str>,
}

impl fmt::Display for UnknownColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}'", clip(&self.name))?;
        if self.name.trim().eq_ignore_ascii_case(RECORD_KEY) {
            write!(f, " (derived on import from the NIK; remove the column)")
        } else if let Some(s) = self.suggestion {
            write!(f, " (did you mean '{s}'?)")
        } else if self.name.trim().is_empty() {
            write!(f, " (an empty column name; remove the empty column)")
        } else {
            Ok(())
        }
    }
}

fn import_column_list() -> String {
    import_columns()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn header_message(
    file: &Path,
    missing: &[&'static str],
    unknown: &[UnknownColumn],
    duplicate: &[String],
    semicolons: bool,
) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing column(s) {}", missing.join(", ")));
    }
    if !unknown.is_empty() {
        let u: Vec<String> = unknown.iter().map(|u| u.to_string()).collect();
        parts.push(format!("unknown column(s) {}", u.join(", ")));
    }
    if !duplicate.is_empty() {
        parts.push(format!(
            "column(s) named more than once: {}",
            duplicate.join(", ")
        ));
    }
    let hint = if semicolons {
        " The header looks semicolon-separated: export with commas as separators."
    } else {
        ""
    };
    format!(
        "'{}' has a bad header line: {}. The header must name exactly these columns, in any order: {}.{hint}",
        file.display(),
        parts.join("; "),
        import_column_list()
    )
}

fn rows_message(
    file: &Path,
    rows: u64,
    bad_rows: u64,
    problems: &[RowProblem],
    total: usize,
) -> String {
    use std::fmt::Write;
    let mut s = format!(
        "'{}' was not imported: {total} problem{} in {bad_rows} of {rows} rows, and nothing was written. Fix these rows in the export (or in the register) and run the import again:",
        file.display(),
        if total == 1 { "" } else { "s" },
    );
    for p in problems.iter().take(MAX_SHOWN_PROBLEMS) {
        let _ = write!(s, "\n  {p}");
    }
    let shown = problems.len().min(MAX_SHOWN_PROBLEMS);
    if total > shown {
        let _ = write!(s, "\n  ... and {} more problems", total - shown);
    }
    s
}

/// One problem in one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    /// CSV line where the row starts; the header is line 1.
    pub line: u64,
    /// Column of the offending value (`*` for the row as a whole).
    pub column: &'static str,
    /// The offending value as written (trimmed).
    pub value: String,
    /// The rule the value breaks.
    pub reason: RowReason,
}

impl fmt::Display for RowProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(
                f,
                "line {}, {} (empty): {}",
                self.line, self.column, self.reason
            )
        } else {
            write!(
                f,
                "line {}, {} = '{}': {}",
                self.line,
                self.column,
                clip(&self.value),
                self.reason
            )
        }
    }
}

/// What is wrong with a NIK or KK number's structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberDefect {
    /// Characters other than the digits 0-9.
    #[error(
        "it contains characters other than digits (if a spreadsheet turned it into 6.17E+15, format the column as text before exporting)"
    )]
    NotDigits,
    /// Not exactly 16 digits.
    #[error("it has {found} digits, not 16")]
    Length {
        /// Number of digits actually given.
        found: usize,
    },
    /// The first six digits are not a Kemendagri kecamatan code.
    #[error("its first 6 digits name kecamatan '{code}', which is not in the Kemendagri list")]
    UnknownKecamatan {
        /// The first six digits as a dotted kecamatan code (`61.71.01`).
        code: String,
    },
    /// Digits 7-12 are not a real DDMMYY date (for a NIK, with 40 added to a
    /// woman's day).
    #[error("its digits 7-12 '{part}' are not a real date DDMMYY{women}")]
    BadDate {
        /// Digits 7-12 as written.
        part: String,
        /// Hint appended to the message: `", day +40 for women"` for a NIK,
        /// empty for a KK number.
        women: &'static str,
    },
    /// The serial (last four digits) is `0000`.
    #[error("its serial (last 4 digits) is 0000; serials start at 0001")]
    ZeroSerial,
}

/// Why a value was rejected. [`RowReason::code`] gives a stable short name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowReason {
    /// A required column is empty.
    #[error("a value is required in this column; fill it in from the register")]
    Missing,
    /// The row has a different number of fields from the header.
    #[error(
        "the row has {found} fields but the header has {expected}; check for an unquoted comma or a missing separator"
    )]
    FieldCount {
        /// Fields in the header line.
        expected: usize,
        /// Fields in this row.
        found: usize,
    },
    /// `nik` is not a structurally valid NIK.
    #[error(
        "not a valid NIK: {0}; a NIK is 16 digits: kecamatan code (6), birth date DDMMYY with 40 added to the day for women (6), serial (4), e.g. 6171014505900001"
    )]
    MalformedNik(NumberDefect),
    /// `no_kk` is not a structurally valid KK number.
    #[error(
        "not a valid KK number: {0}; a KK number is 16 digits: kecamatan code (6), issue date DDMMYY (6), serial (4), e.g. 6171011203150001"
    )]
    MalformedKk(NumberDefect),
    /// The NIK's birth-date digits disagree with `tanggal_lahir` and
    /// `jenis_kelamin`.
    #[error(
        "the NIK's birth-date digits are {found}, but tanggal_lahir {tanggal_lahir} and jenis_kelamin give {expected}; correct tanggal_lahir or the NIK in the register"
    )]
    NikBirthDate {
        /// The NIK's digits 7-12 (DDMMYY) as written.
        found: String,
        /// The DDMMYY digits that `tanggal_lahir` and `jenis_kelamin` give
        /// (day + 40 for a woman).
        expected: String,
        /// The row's `tanggal_lahir`.
        tanggal_lahir: NaiveDate,
    },
    /// The NIK's day digits give a sex other than `jenis_kelamin`.
    #[error(
        "the NIK's day digits {day} mean {nik_sex}, but jenis_kelamin is {jenis_kelamin}; women's NIKs have 40 added to the day, so correct jenis_kelamin or the NIK in the register"
    )]
    NikSex {
        /// The NIK's day digits (digits 7-8) as written.
        day: String,
        /// The sex those digits mean, as worded in the message ("a woman
        /// (day + 40)" or "a man (day below 40)").
        nik_sex: &'static str,
        /// The row's `jenis_kelamin` label.
        jenis_kelamin: &'static str,
    },
    /// A categorical value that is neither a code nor a label of its list.
    #[error("{}", unknown_code_message(list))]
    UnknownCode {
        /// Name of the column's code list ([`crate::catalog::code_list`]).
        list: &'static str,
    },
    /// A date not written as `YYYY-MM-DD`.
    #[error("not a date; write dates as YYYY-MM-DD, e.g. 1990-05-17")]
    DateFormat,
    /// A `YYYY-MM-DD` date that does not exist in the calendar.
    #[error("no such calendar date; check the day and month (YYYY-MM-DD)")]
    ImpossibleDate,
    /// A date after the reference date (`tanggal_data`).
    #[error(
        "the date is after tanggal_data {as_of}; correct the date, or import with a later --as-of"
    )]
    AfterAsOf {
        /// The reference date of the import (`--as-of`).
        as_of: NaiveDate,
    },
    /// `tanggal_lahir` makes the person older than 150 on the reference date.
    #[error(
        "the birth date makes the person {age} years old on {as_of}, older than {MAX_AGE}; correct tanggal_lahir"
    )]
    TooOld {
        /// Age in whole years on the reference date.
        age: i32,
        /// The reference date of the import (`--as-of`).
        as_of: NaiveDate,
    },
    /// `tanggal_kawin` or `tanggal_cerai` before `tanggal_lahir`.
    #[error("the date is before tanggal_lahir {tanggal_lahir}; correct one of the two dates")]
    BeforeBirth {
        /// The row's `tanggal_lahir`.
        tanggal_lahir: NaiveDate,
    },
    /// A region value that is not a dotted Kemendagri code.
    #[error(
        "not a dotted Kemendagri {} code; write it like {}{}",
        level_name(*level),
        level_example(*level),
        dotted_hint(value, *level)
    )]
    RegionFormat {
        /// The region level of the column.
        level: RegionLevel,
        /// The value as written (trimmed).
        value: String,
    },
    /// A region code of another level than the column's (a kecamatan code in
    /// `kode_kel`, say).
    #[error(
        "a {} code in a column of {} codes; give the {} code here, e.g. {}",
        level_name(*found),
        level_name(*expected),
        level_name(*expected),
        level_example(*expected)
    )]
    RegionLevel {
        /// The region level of the column.
        expected: RegionLevel,
        /// The level the code's shape belongs to.
        found: RegionLevel,
    },
    /// A well-formed region code that is not in the Kemendagri list.
    #[error("{0}")]
    UnknownRegion(UnknownRegion),
    /// A region code outside the parent region in the same row (`kode_kel`
    /// outside `kode_kec`, say).
    #[error(
        "the region does not lie in {parent_column} '{parent}' of the same row; correct one of the two codes"
    )]
    RegionMismatch {
        /// The parent column (`kode_kec` for `kode_kel`, say).
        parent_column: &'static str,
        /// The parent column's code in the same row.
        parent: String,
    },
    /// `no_rt` or `no_rw` is not 1 to `width` digits valued 1 to `max`.
    #[error(
        "not an RT/RW number; give 1 to {width} digits from 1 to {max} (stored zero-padded, e.g. 7 -> 007)"
    )]
    Numbered {
        /// Most digits allowed, and the zero-padded stored width.
        width: u8,
        /// Largest number allowed.
        max: u16,
    },
    /// The NIK already appeared on an earlier line.
    #[error(
        "duplicate NIK: line {first_line} already has this NIK; each person appears once, so remove the duplicate row or correct the NIK"
    )]
    DuplicateNik {
        /// CSV line of the first row with this NIK.
        first_line: u64,
    },
}

impl RowReason {
    /// A stable short name of the rule, for tests and machine-readable
    /// reports.
    pub fn code(&self) -> &'static str {
        match self {
            RowReason::Missing => "missing",
            RowReason::FieldCount { .. } => "field_count",
            RowReason::MalformedNik(_) => "malformed_nik",
            RowReason::MalformedKk(_) => "malformed_kk",
            RowReason::NikBirthDate { .. } => "nik_birth_date",
            RowReason::NikSex { .. } => "nik_sex",
            RowReason::UnknownCode { .. } => "unknown_code",
            RowReason::DateFormat => "date_format",
            RowReason::ImpossibleDate => "impossible_date",
            RowReason::AfterAsOf { .. } => "after_as_of",
            RowReason::TooOld { .. } => "too_old",
            RowReason::BeforeBirth { .. } => "before_birth",
            RowReason::RegionFormat { .. } => "region_format",
            RowReason::RegionLevel { .. } => "region_level",
            RowReason::UnknownRegion(_) => "unknown_region",
            RowReason::RegionMismatch { .. } => "region_mismatch",
            RowReason::Numbered { .. } => "rt_rw",
            RowReason::DuplicateNik { .. } => "duplicate_nik",
        }
    }
}

fn unknown_code_message(list: &str) -> String {
    let Some(l) = code_list(list) else {
        return format!("not in code list '{list}'");
    };
    let n = l.entries.len();
    let shown: Vec<String> = l
        .entries
        .iter()
        .take(12)
        .map(|(c, label)| format!("{c}={label}"))
        .collect();
    let contiguous = l
        .entries
        .iter()
        .enumerate()
        .all(|(i, (c, _))| usize::from(*c) == i + 1);
    let codes = if contiguous {
        format!("a code 1-{n}")
    } else {
        "a code".to_string()
    };
    format!(
        "not a code or label of the '{list}' list; use {codes} or its label (any case): {}{}",
        shown.join(", "),
        if n > shown.len() {
            format!(", ... ({n} in all; see the kode_referensi table)")
        } else {
            String::new()
        }
    )
}

fn level_name(level: RegionLevel) -> &'static str {
    match level {
        RegionLevel::Provinsi => "provinsi",
        RegionLevel::KabKota => "kab/kota",
        RegionLevel::Kecamatan => "kecamatan",
        RegionLevel::DesaKelurahan => "desa/kelurahan",
    }
}

fn level_example(level: RegionLevel) -> &'static str {
    match level {
        RegionLevel::Provinsi => "61",
        RegionLevel::KabKota => "61.71",
        RegionLevel::Kecamatan => "61.71.01",
        RegionLevel::DesaKelurahan => "61.71.01.1002",
    }
}

/// Suggests the dotted form of an undotted code of the right length.
fn dotted_hint(value: &str, level: RegionLevel) -> String {
    let v = value.trim();
    let widths: &[usize] = match level {
        RegionLevel::Provinsi => &[2],
        RegionLevel::KabKota => &[2, 2],
        RegionLevel::Kecamatan => &[2, 2, 2],
        RegionLevel::DesaKelurahan => &[2, 2, 2, 4],
    };
    if v.len() == widths.iter().sum::<usize>() && v.bytes().all(|b| b.is_ascii_digit()) {
        let mut parts = Vec::new();
        let mut at = 0;
        for w in widths {
            parts.push(&v[at..at + w]);
            at += w;
        }
        format!(" (did you mean {}?)", parts.join("."))
    } else {
        String::new()
    }
}

/// Shortens a value for display and makes control characters visible.
fn clip(value: &str) -> String {
    const MAX: usize = 80;
    let mut out = String::new();
    for (i, ch) in value.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        match ch {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Column slots
// ---------------------------------------------------------------------------

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Position of a column in [`import_columns`] order, at compile time (a
/// misspelt name fails the build).
const fn slot(name: &str) -> usize {
    let mut i = 0;
    let mut s = 0;
    while i < COLUMNS.len() {
        if !str_eq(COLUMNS[i].name, RECORD_KEY) {
            if str_eq(COLUMNS[i].name, name) {
                return s;
            }
            s += 1;
        }
        i += 1;
    }
    if str_eq(name, PARTITION_COLUMN) {
        return s;
    }
    panic!("not an import column")
}

const SLOTS: usize = slot(PARTITION_COLUMN) + 1;
const NO_KK: usize = slot("no_kk");
const NIK: usize = slot("nik");
const NAMA_LENGKAP: usize = slot("nama_lengkap");
const JENIS_KELAMIN: usize = slot("jenis_kelamin");
const TEMPAT_LAHIR: usize = slot("tempat_lahir");
const TANGGAL_LAHIR: usize = slot("tanggal_lahir");
const GOLONGAN_DARAH: usize = slot("golongan_darah");
const AGAMA: usize = slot("agama");
const STATUS_PERKAWINAN: usize = slot("status_perkawinan");
const STATUS_HUBUNGAN_KELUARGA: usize = slot("status_hubungan_keluarga");
const PENYANDANG_CACAT: usize = slot("penyandang_cacat");
const PENDIDIKAN_TERAKHIR: usize = slot("pendidikan_terakhir");
const JENIS_PEKERJAAN: usize = slot("jenis_pekerjaan");
const NIK_IBU: usize = slot("nik_ibu");
const NAMA_IBU: usize = slot("nama_ibu");
const NIK_AYAH: usize = slot("nik_ayah");
const NAMA_AYAH: usize = slot("nama_ayah");
const ALAMAT_SEBELUMNYA: usize = slot("alamat_sebelumnya");
const ALAMAT: usize = slot("alamat");
const NO_RT: usize = slot("no_rt");
const NO_RW: usize = slot("no_rw");
const KODE_PROV: usize = slot("kode_prov");
const KODE_KAB: usize = slot(PARTITION_COLUMN);
const KODE_KEC: usize = slot("kode_kec");
const KODE_KEL: usize = slot("kode_kel");
const AKTA_LAHIR: usize = slot("akta_lahir");
const NO_AKTA_LAHIR: usize = slot("no_akta_lahir");
const AKTA_KAWIN: usize = slot("akta_kawin");
const NO_AKTA_KAWIN: usize = slot("no_akta_kawin");
const TANGGAL_KAWIN: usize = slot("tanggal_kawin");
const AKTA_CERAI: usize = slot("akta_cerai");
const NO_AKTA_CERAI: usize = slot("no_akta_cerai");
const TANGGAL_CERAI: usize = slot("tanggal_cerai");

/// One validated value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cell {
    Missing,
    Text(Box<str>),
    /// A code list label or region code, borrowed from the compiled catalog.
    Static(&'static str),
    Date(i32),
}

impl Cell {
    fn text(&self) -> Option<&str> {
        match self {
            Cell::Text(s) => Some(s),
            Cell::Static(s) => Some(s),
            Cell::Missing | Cell::Date(_) => None,
        }
    }

    fn str(&self) -> &str {
        self.text().unwrap_or_default()
    }

    fn label(&self) -> Option<&'static str> {
        match self {
            Cell::Static(s) => Some(s),
            _ => None,
        }
    }

    fn date(&self) -> Option<i32> {
        match self {
            Cell::Date(d) => Some(*d),
            _ => None,
        }
    }
}

/// A validated row: one cell per import column, in [`import_columns`] order.
type Record = Box<[Cell]>;

fn person_row(c: &[Cell], record_key: u64) -> PersonRow<'_> {
    PersonRow {
        no_kk: c[NO_KK].str(),
        nik: c[NIK].str(),
        nama_lengkap: c[NAMA_LENGKAP].str(),
        jenis_kelamin: c[JENIS_KELAMIN].str(),
        tempat_lahir: c[TEMPAT_LAHIR].text(),
        tanggal_lahir: c[TANGGAL_LAHIR].date().unwrap_or_default(),
        golongan_darah: c[GOLONGAN_DARAH].str(),
        agama: c[AGAMA].str(),
        status_perkawinan: c[STATUS_PERKAWINAN].str(),
        status_hubungan_keluarga: c[STATUS_HUBUNGAN_KELUARGA].str(),
        penyandang_cacat: c[PENYANDANG_CACAT].str(),
        pendidikan_terakhir: c[PENDIDIKAN_TERAKHIR].str(),
        jenis_pekerjaan: c[JENIS_PEKERJAAN].str(),
        nik_ibu: c[NIK_IBU].text(),
        nama_ibu: c[NAMA_IBU].text(),
        nik_ayah: c[NIK_AYAH].text(),
        nama_ayah: c[NAMA_AYAH].text(),
        alamat_sebelumnya: c[ALAMAT_SEBELUMNYA].text(),
        alamat: c[ALAMAT].str(),
        no_rt: c[NO_RT].str(),
        no_rw: c[NO_RW].str(),
        kode_prov: c[KODE_PROV].str(),
        kode_kec: c[KODE_KEC].str(),
        kode_kel: c[KODE_KEL].str(),
        akta_lahir: c[AKTA_LAHIR].str(),
        no_akta_lahir: c[NO_AKTA_LAHIR].text(),
        akta_kawin: c[AKTA_KAWIN].str(),
        no_akta_kawin: c[NO_AKTA_KAWIN].text(),
        tanggal_kawin: c[TANGGAL_KAWIN].date(),
        akta_cerai: c[AKTA_CERAI].str(),
        no_akta_cerai: c[NO_AKTA_CERAI].text(),
        tanggal_cerai: c[TANGGAL_CERAI].date(),
        record_key,
    }
}

// ---------------------------------------------------------------------------
// Value rules
// ---------------------------------------------------------------------------

/// A DDMMYY part that is a real date in 19YY or 20YY; `women` allows the
/// day to carry +40.
fn ddmmyy(part: &str, women: bool) -> Option<(u32, u32, u32, bool)> {
    let num = |r: std::ops::Range<usize>| part.get(r).and_then(|s| s.parse::<u32>().ok());
    let (day, month, yy) = (num(0..2)?, num(2..4)?, num(4..6)?);
    let (dom, female) = if women && day > 40 {
        (day - 40, true)
    } else {
        (day, false)
    };
    let real = [1900, 2000]
        .iter()
        .any(|c| NaiveDate::from_ymd_opt(c + yy as i32, month, dom).is_some());
    real.then_some((dom, month, yy, female))
}

/// Structure shared by NIK and KK numbers.
fn check_number(raw: &str, women: bool) -> Result<(), NumberDefect> {
    if !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NumberDefect::NotDigits);
    }
    if raw.len() != 16 {
        return Err(NumberDefect::Length { found: raw.len() });
    }
    let code = format!("{}.{}.{}", &raw[0..2], &raw[2..4], &raw[4..6]);
    if catalog::regions().get(&code).is_none() {
        return Err(NumberDefect::UnknownKecamatan { code });
    }
    if ddmmyy(&raw[6..12], women).is_none() {
        return Err(NumberDefect::BadDate {
            part: raw[6..12].to_string(),
            women: if women { ", day +40 for women" } else { "" },
        });
    }
    if &raw[12..] == "0000" {
        return Err(NumberDefect::ZeroSerial);
    }
    Ok(())
}

fn parse_date(raw: &str) -> Result<NaiveDate, RowReason> {
    let b = raw.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape {
        return Err(RowReason::DateFormat);
    }
    let (y, m, d) = (
        raw[0..4].parse::<i32>(),
        raw[5..7].parse::<u32>(),
        raw[8..10].parse::<u32>(),
    );
    match (y, m, d) {
        (Ok(y), Ok(m), Ok(d)) => NaiveDate::from_ymd_opt(y, m, d).ok_or(RowReason::ImpossibleDate),
        _ => Err(RowReason::DateFormat),
    }
}

fn parse_region(raw: &str, level: RegionLevel) -> Result<&'static str, RowReason> {
    let Some(found) = RegionLevel::of_code(raw) else {
        return Err(RowReason::RegionFormat {
            level,
            value: raw.to_string(),
        });
    };
    if found != level {
        return Err(RowReason::RegionLevel {
            expected: level,
            found,
        });
    }
    catalog::regions()
        .require(raw)
        .map(|r| r.kode.as_str())
        .map_err(RowReason::UnknownRegion)
}

fn parse_numbered(raw: &str, width: u8, max: u16) -> Result<String, RowReason> {
    let bad = RowReason::Numbered { width, max };
    if raw.is_empty() || raw.len() > width as usize || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    match raw.parse::<u16>() {
        Ok(n) if n >= 1 && n <= max => Ok(format!("{n:0w$}", w = width as usize)),
        _ => Err(bad),
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

struct Validator {
    as_of: NaiveDate,
    as_of_days: i32,
    /// For each slot, the field index in the CSV.
    fields: Vec<usize>,
    header_len: usize,
    columns: Vec<&'static Column>,
    problems: Vec<RowProblem>,
    total: usize,
    bad_rows: u64,
    /// First line of each NIK seen.
    niks: HashMap<Box<str>, u64>,
}

impl Validator {
    fn report(&mut self, p: RowProblem) {
        self.total += 1;
        if self.problems.len() < MAX_KEPT_PROBLEMS {
            self.problems.push(p);
        }
    }

    /// Validates one row; returns it when clean.
    fn row(&mut self, line: u64, rec: &csv::StringRecord) -> Option<Record> {
        let mut found: Vec<RowProblem> = Vec::new();
        let mut problem = |column: &'static str, value: &str, reason: RowReason| {
            found.push(RowProblem {
                line,
                column,
                value: value.to_string(),
                reason,
            })
        };
        if rec.len() != self.header_len {
            problem(
                "*",
                &format!("{} fields", rec.len()),
                RowReason::FieldCount {
                    expected: self.header_len,
                    found: rec.len(),
                },
            );
            self.bad_rows += 1;
            for p in found {
                self.report(p);
            }
            return None;
        }

        let raw = |slot: usize| rec.get(self.fields[slot]).unwrap_or_default().trim();
        let mut cells: Vec<Cell> = Vec::with_capacity(SLOTS);
        for (slot, col) in self.columns.iter().enumerate() {
            let value = raw(slot);
            let cell = if value.is_empty() {
                if !col.nullable {
                    problem(col.name, value, RowReason::Missing);
                }
                Cell::Missing
            } else {
                match self.parse(col, value) {
                    Ok(c) => c,
                    Err(reason) => {
                        problem(col.name, value, reason);
                        Cell::Missing
                    }
                }
            };
            cells.push(cell);
        }

        // NIK against birth date and sex.
        if let (Some(nik), Some(birth), Some(jk)) = (
            cells[NIK].text(),
            cells[TANGGAL_LAHIR].date(),
            cells[JENIS_KELAMIN].label(),
        ) {
            let d = days_to_date(birth);
            let female = jk == PEREMPUAN;
            let part = &nik[6..12];
            if let Some((dom, month, yy, nik_female)) = ddmmyy(part, true) {
                let year = d.year().rem_euclid(100) as u32;
                if (dom, month, yy) != (d.day(), d.month(), year) {
                    let expected = format!(
                        "{:02}{:02}{:02}",
                        d.day() + if female { 40 } else { 0 },
                        d.month(),
                        year
                    );
                    problem(
                        "nik",
                        nik,
                        RowReason::NikBirthDate {
                            found: part.to_string(),
                            expected,
                            tanggal_lahir: d,
                        },
                    );
                }
                if nik_female != female {
                    problem(
                        "nik",
                        nik,
                        RowReason::NikSex {
                            day: part[..2].to_string(),
                            nik_sex: if nik_female {
                                "a woman (day + 40)"
                            } else {
                                "a man (day below 40)"
                            },
                            jenis_kelamin: jk,
                        },
                    );
                }
            }
        }

        // Region codes nest: kel in kec in kab in prov.
        for (child, parent) in [
            (KODE_KAB, KODE_PROV),
            (KODE_KEC, KODE_KAB),
            (KODE_KEL, KODE_KEC),
        ] {
            if let (Some(c), Some(p)) = (cells[child].label(), cells[parent].label())
                && !(c.starts_with(p) && c.as_bytes().get(p.len()) == Some(&b'.'))
            {
                problem(
                    self.columns[child].name,
                    c,
                    RowReason::RegionMismatch {
                        parent_column: self.columns[parent].name,
                        parent: p.to_string(),
                    },
                );
            }
        }

        // Marriage and divorce cannot precede birth.
        if let Some(birth) = cells[TANGGAL_LAHIR].date() {
            for s in [TANGGAL_KAWIN, TANGGAL_CERAI] {
                if let Some(d) = cells[s].date()
                    && d < birth
                {
                    problem(
                        self.columns[s].name,
                        raw(s),
                        RowReason::BeforeBirth {
                            tanggal_lahir: days_to_date(birth),
                        },
                    );
                }
            }
        }

        // Each NIK once.
        if let Some(nik) = cells[NIK].text() {
            match self.niks.get(nik) {
                Some(&first_line) => {
                    problem("nik", nik, RowReason::DuplicateNik { first_line });
                }
                None => {
                    self.niks.insert(nik.into(), line);
                }
            }
        }

        if found.is_empty() {
            Some(cells.into_boxed_slice())
        } else {
            self.bad_rows += 1;
            for p in found {
                self.report(p);
            }
            None
        }
    }

    /// Parses a non-empty value of one column.
    fn parse(&self, col: &'static Column, raw: &str) -> Result<Cell, RowReason> {
        match col.domain {
            Domain::CodeList { list } => code_list(list)
                .and_then(|l| l.resolve(raw))
                .map(Cell::Static)
                .ok_or(RowReason::UnknownCode { list }),
            Domain::Region { level } => parse_region(raw, level).map(Cell::Static),
            Domain::Numbered { width, max } => {
                parse_numbered(raw, width, max).map(|s| Cell::Text(s.into()))
            }
            Domain::Dates => {
                let d = parse_date(raw)?;
                let days = date_to_days(d);
                if days > self.as_of_days {
                    return Err(RowReason::AfterAsOf { as_of: self.as_of });
                }
                if col.name == "tanggal_lahir" {
                    let age = age_on(days, self.as_of_days);
                    if age > MAX_AGE {
                        return Err(RowReason::TooOld {
                            age,
                            as_of: self.as_of,
                        });
                    }
                }
                Ok(Cell::Date(days))
            }
            Domain::None => {
                match col.name {
                    "nik" | "nik_ibu" | "nik_ayah" => {
                        check_number(raw, true).map_err(RowReason::MalformedNik)?
                    }
                    "no_kk" => check_number(raw, false).map_err(RowReason::MalformedKk)?,
                    _ => {}
                }
                Ok(Cell::Text(raw.into()))
            }
        }
    }
}

fn suggest(name: &str, missing: &[&'static str]) -> Option<&'static str> {
    let n = name.replace([' ', '-'], "_");
    missing
        .iter()
        .map(|m| (crate::catalog::edit_distance(&n, m), *m))
        .filter(|(d, m)| *d <= 2.max(m.len() / 4))
        .min()
        .map(|(_, m)| m)
}

/// Matches the header against the import columns; returns the CSV field
/// index of each slot.
fn check_header(file: &Path, header: &csv::StringRecord) -> Result<Vec<usize>, ImportError> {
    let columns: Vec<&'static Column> = import_columns().collect();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut duplicate = Vec::new();
    let mut unknown_names = Vec::new();
    for (i, name) in header.iter().enumerate() {
        let key = name.trim().to_ascii_lowercase();
        if !columns.iter().any(|c| c.name == key) {
            unknown_names.push(name.trim().to_string());
        } else if index.insert(key.clone(), i).is_some() && !duplicate.contains(&key) {
            duplicate.push(key);
        }
    }
    let missing: Vec<&'static str> = columns
        .iter()
        .map(|c| c.name)
        .filter(|n| !index.contains_key(*n))
        .collect();
    if missing.is_empty() && unknown_names.is_empty() && duplicate.is_empty() {
        return Ok(columns.iter().map(|c| index[c.name]).collect());
    }
    let unknown = unknown_names
        .into_iter()
        .map(|name| {
            let suggestion = suggest(&name.to_ascii_lowercase(), &missing);
            UnknownColumn { name, suggestion }
        })
        .collect();
    Err(ImportError::Header {
        file: file.to_path_buf(),
        missing,
        unknown,
        duplicate,
        semicolons: header.len() == 1 && header.get(0).is_some_and(|h| h.contains(';')),
    })
}

/// Reads the file and checks it is non-empty UTF-8; returns the text
/// without a byte-order mark and the SHA-256 of the bytes.
fn read_text(csv: &Path) -> Result<(String, String), ImportError> {
    let bytes = std::fs::read(csv).map_err(|source| ImportError::Unreadable {
        path: csv.to_path_buf(),
        source,
    })?;
    let sha = sha256_hex(&bytes);
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => {
            let at = e.valid_up_to();
            let line = body[..at].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            return Err(ImportError::NotUtf8 {
                file: csv.to_path_buf(),
                line,
                byte: body[at],
            });
        }
    };
    if text.trim().is_empty() {
        return Err(ImportError::Empty {
            file: csv.to_path_buf(),
        });
    }
    Ok((text.to_string(), sha))
}

/// Parses and validates the whole file: the clean rows grouped by kab/kota,
/// and the number of data rows.
type Validated = (BTreeMap<&'static str, Vec<Record>>, u64);

fn validate(csv: &Path, text: &str, as_of: NaiveDate) -> Result<Validated, ImportError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text.as_bytes());
    let header = rdr
        .headers()
        .map_err(|source| ImportError::Csv {
            file: csv.to_path_buf(),
            line: 1,
            source,
        })?
        .clone();
    let fields = check_header(csv, &header)?;
    let mut v = Validator {
        as_of,
        as_of_days: date_to_days(as_of),
        fields,
        header_len: header.len(),
        columns: import_columns().collect(),
        problems: Vec::new(),
        total: 0,
        bad_rows: 0,
        niks: HashMap::new(),
    };
    let mut groups: BTreeMap<&'static str, Vec<Record>> = BTreeMap::new();
    let mut rows = 0u64;
    let mut rec = csv::StringRecord::new();
    loop {
        let more = rdr
            .read_record(&mut rec)
            .map_err(|source| ImportError::Csv {
                file: csv.to_path_buf(),
                line: source
                    .position()
                    .map(|p| p.line())
                    .unwrap_or(rows.saturating_add(2)),
                source,
            })?;
        if !more {
            break;
        }
        rows += 1;
        let line = rec.position().map(|p| p.line()).unwrap_or(rows + 1);
        if let Some(cells) = v.row(line, &rec)
            && v.total == 0
        {
            let kab = cells[KODE_KAB].label().unwrap_or_default();
            groups.entry(kab).or_default().push(cells);
        } else if v.total > 0 && !groups.is_empty() {
            // The import is lost anyway; free the rows kept so far.
            groups.clear();
        }
    }
    if rows == 0 {
        return Err(ImportError::NoRows {
            file: csv.to_path_buf(),
        });
    }
    if v.total > 0 {
        return Err(ImportError::InvalidRows {
            file: csv.to_path_buf(),
            rows,
            bad_rows: v.bad_rows,
            problems: v.problems,
            total: v.total,
        });
    }
    Ok((groups, rows))
}

/// The order of rows within a partition, as recorded in the Parquet footer
/// (then NIK, which makes it total).
fn sort_key(c: &[Cell]) -> [&str; 6] {
    [KODE_KEC, KODE_KEL, NO_RW, NO_RT, NO_KK, NIK].map(|s| c[s].str())
}

/// Writes one kab/kota: rows sorted by region, household and NIK, split
/// into parts of at most [`MAX_ROWS_PER_FILE`] rows.
fn write_kab(
    root: &Path,
    kab: &str,
    rows: &mut [Record],
    hasher: &RecordKeyHasher,
) -> Result<Vec<FileEntry>, SnapshotError> {
    rows.sort_unstable_by(|a, b| sort_key(a).cmp(&sort_key(b)));
    let mut files = Vec::new();
    let mut part = 0;
    let mut w = PartitionWriter::create(root, kab, part, DEFAULT_ROWS_PER_ROW_GROUP)?;
    for cells in rows.iter() {
        if w.rows() >= MAX_ROWS_PER_FILE {
            files.push(w.close()?);
            part += 1;
            w = PartitionWriter::create(root, kab, part, DEFAULT_ROWS_PER_ROW_GROUP)?;
        }
        let key = hasher.key(cells[NIK].str());
        w.push(&person_row(cells, key))?;
    }
    files.push(w.close()?);
    Ok(files)
}

/// Imports a CSV export into a new snapshot at `out`.
///
/// The whole file is validated first; if any row is bad, the error lists
/// every problem and nothing is written. `synthetic` marks test exports.
pub fn import_csv(
    csv: &Path,
    as_of: chrono::NaiveDate,
    out: &Path,
    secret: &RecordKeySecret,
    synthetic: bool,
) -> Result<Manifest, ImportError> {
    // Refuse an unusable destination before the (long) validation.
    if out.exists() {
        return Err(SnapshotError::OutputExists {
            path: out.to_path_buf(),
        }
        .into());
    }
    if let Some(name) = out.file_name().and_then(|n| n.to_str()) {
        crate::warehouse::check_id(name)?;
    }

    let (text, source_sha256) = read_text(csv)?;
    let (mut groups, source_rows) = validate(csv, &text, as_of)?;
    drop(text);

    let writer = SnapshotWriter::create(out)?;
    let hasher = secret.hasher();
    let root = writer.root().to_path_buf();
    let written: Vec<Result<Vec<FileEntry>, SnapshotError>> = groups
        .par_iter_mut()
        .map(|(kab, rows)| write_kab(&root, kab, rows, &hasher))
        .collect();
    let mut files = Vec::new();
    for r in written {
        files.extend(r?);
    }

    let coverage: Vec<String> = groups.keys().map(|k| k.to_string()).collect();
    let scope = RegionScope::Prefixes(coverage.clone());
    let manifest = Manifest {
        id: writer.id(),
        tanggal_data: as_of,
        schema_version: catalog::SCHEMA_VERSION,
        synthetic,
        coverage,
        row_count: files.iter().map(|f| f.rows).sum(),
        record_key: RecordKeyInfo {
            algorithm: RECORD_KEY_ALGORITHM.to_string(),
            secret_fingerprint: secret.fingerprint(),
        },
        produced_by: Provenance::Import {
            tool: format!("agregat {}", env!("CARGO_PKG_VERSION")),
            source_file: csv
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| csv.display().to_string()),
            source_sha256,
            source_rows,
        },
        files,
    };
    Ok(writer.finish(manifest, &scope)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ColumnClass;

    #[test]
    fn slots_follow_import_columns() {
        let cols: Vec<&str> = import_columns().map(|c| c.name).collect();
        assert_eq!(cols.len(), SLOTS);
        assert_eq!(cols[NIK], "nik");
        assert_eq!(cols[KODE_KAB], PARTITION_COLUMN);
        assert_eq!(cols[TANGGAL_CERAI], "tanggal_cerai");
        assert!(!cols.contains(&RECORD_KEY));
        assert!(
            import_columns().all(|c| c.class != ColumnClass::RecordKey),
            "record key is derived"
        );
    }

    #[test]
    fn nik_and_kk_structure() {
        assert_eq!(check_number("6171014505900001", true), Ok(()));
        assert_eq!(
            check_number("617101450590001", true),
            Err(NumberDefect::Length { found: 15 })
        );
        assert_eq!(
            check_number("6.17101E+15", true),
            Err(NumberDefect::NotDigits)
        );
        assert!(matches!(
            check_number("6171094505900001", true),
            Err(NumberDefect::UnknownKecamatan { .. })
        ));
        assert!(matches!(
            check_number("6171013002990001", false),
            Err(NumberDefect::BadDate { .. })
        ));
        // 29 Feb exists in 2000 (and 1900 is not needed).
        assert_eq!(check_number("6171012902000001", false), Ok(()));
        assert_eq!(
            check_number("6171011203150000", false),
            Err(NumberDefect::ZeroSerial)
        );
        // Day + 40 is only valid in NIKs.
        assert!(check_number("6171014503150001", false).is_err());
    }

    #[test]
    fn value_rules() {
        assert_eq!(parse_numbered("7", 3, 999), Ok("007".to_string()));
        assert_eq!(parse_numbered("012", 3, 999), Ok("012".to_string()));
        assert!(parse_numbered("0", 3, 999).is_err());
        assert!(parse_numbered("1234", 3, 999).is_err());
        assert!(parse_numbered("1a", 3, 999).is_err());
        assert_eq!(parse_date("2023-02-30"), Err(RowReason::ImpossibleDate));
        assert_eq!(parse_date("2023-2-3"), Err(RowReason::DateFormat));
        assert_eq!(parse_date("30/01/2023"), Err(RowReason::DateFormat));
        assert!(parse_date("2024-02-29").is_ok());
        assert_eq!(
            parse_region("61.71.01", RegionLevel::Kecamatan),
            Ok("61.71.01")
        );
        assert!(matches!(
            parse_region("617101", RegionLevel::Kecamatan),
            Err(RowReason::RegionFormat { .. })
        ));
        assert!(
            RowReason::RegionFormat {
                level: RegionLevel::Kecamatan,
                value: "617101".into()
            }
            .to_string()
            .contains("did you mean 61.71.01?")
        );
        assert!(matches!(
            parse_region("61.71", RegionLevel::Kecamatan),
            Err(RowReason::RegionLevel { .. })
        ));
        assert!(matches!(
            parse_region("61.71.09", RegionLevel::Kecamatan),
            Err(RowReason::UnknownRegion(_))
        ));
    }

    #[test]
    fn header_suggestions() {
        assert_eq!(
            suggest("tanggal lahir", &["tanggal_lahir"]),
            Some("tanggal_lahir")
        );
        assert_eq!(suggest("kode_kelurahan", &["nik"]), None);
        let u = UnknownColumn {
            name: "record_key".into(),
            suggestion: None,
        };
        assert!(u.to_string().contains("remove the column"));
    }

    #[test]
    fn clip_shows_control_characters() {
        assert_eq!(clip("a\nb"), "a\\nb");
        assert_eq!(clip(&"x".repeat(100)).chars().count(), 81);
    }
}
