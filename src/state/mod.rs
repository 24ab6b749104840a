//! Durable runtime state for the service: the audit log and the privacy
//! budget ledger.
//!
//! # Backends
//!
//! Everything goes through the [`StateStore`] trait (`Send + Sync`, so one
//! store is shared by all request handlers). Today the only backend is
//! [`SqliteStore`]: an embedded SQLite file in WAL journal mode with
//! `synchronous=FULL` (a returned `Ok` is on disk), a busy timeout, and one
//! `Mutex<Connection>` per store. That suits a single service instance. The
//! trait exists so that a PostgreSQL backend can be added later for
//! multi-instance deployments, where several processes on several hosts must
//! share one chain and one ledger; nothing above this module may depend on
//! SQLite. The schema is versioned in a `schema_version` table and migrated
//! forward on [`SqliteStore::open`]; a file written by a newer build is
//! refused rather than guessed at.
//!
//! # Audit log: append-only and tamper-evident
//!
//! Every authenticated request, accepted, rejected or failed, is
//! [`StateStore::append`]ed as an [`AuditEntry`]; unauthenticated refusals
//! are counted per minute, address and code instead ([`RefusalCount`]). The stored [`AuditRecord`] gets a sequence number
//! (1, 2, 3, … with no gaps), the previous record's hash (`prev_hash`; 64
//! zeros for the first record) and its own `hash`: SHA-256, in lower-case
//! hex, over a canonical serialisation, namely serde_json of a struct with a
//! fixed field order holding a format version, `seq`, `prev_hash` and every
//! field of the entry (see [`chain_hash`]). Each append runs in one
//! `IMMEDIATE` transaction that reads the last hash and inserts the next row,
//! so concurrent appends, from threads or from other processes opening the
//! same file, serialise and can never fork the chain.
//!
//! [`StateStore::verify`] recomputes every hash and walks the chain. It
//! reports the first broken link ([`BrokenLink`]):
//!
//! - [`BreakReason::HashMismatch`]: the row's content no longer matches its
//!   hash, so the row was altered;
//! - [`BreakReason::SequenceGap`]: a sequence number is missing, so a row was
//!   deleted;
//! - [`BreakReason::PrevHashMismatch`]: the row does not link to the row
//!   before it, so rows were deleted, reordered or replaced;
//! - [`BreakReason::Unreadable`]: a value cannot be decoded at all.
//!
//! The log can be rotated into sealed, read-only segment files
//! ([`segments`], `agregat audit seal`); verification then walks every
//! segment, the links between them and the live chain as one chain.
//!
//! SQLite triggers also refuse `UPDATE` and `DELETE` on the table, which
//! stops mistakes but not an attacker with the file: the hash chain is what
//! detects that. The chain alone cannot detect the *last* records being cut
//! off; [`ChainReport::head_hash`] is there to be published or copied
//! elsewhere (an anchor) so that truncation shows too.
//!
//! # DP release cache
//!
//! [`StateStore::release_put`] keeps every DP release under the key of its
//! question (canonical aggregate plan, snapshot, agreement and its
//! protection), so that a repeat after a restart still gets the identical
//! release and is not charged again; the first release for a key wins.
//!
//! # Budget ledger
//!
//! Differential privacy spends a budget per agreement per six-month period
//! ([`period_of`]: January–June is `S1`, July–December is `S2`, e.g.
//! `2026-S1`). A release is charged in two steps:
//!
//! 1. [`StateStore::reserve`] sums what is already charged and, in the same
//!    `IMMEDIATE` transaction, either refuses with
//!    [`StateError::BudgetExhausted`] or inserts a *pending* row. Concurrent
//!    reservations therefore never overspend, however they interleave.
//! 2. After the release is computed, [`StateStore::commit`] marks the row
//!    committed; if execution failed before anything left the service,
//!    [`StateStore::release`] deletes the pending row and the budget returns.
//!
//! **Pending rows count as spent** ([`StateStore::spent`] is committed plus
//! pending). This is deliberate: if the process crashes between sending a
//! release and committing its reservation, nobody can tell whether the
//! release went out, so it stays charged. After a crash pending rows stay
//! charged until an operator looks at them ([`StateStore::ledger_rows`]);
//! nothing releases them automatically.

pub mod private;
/// The SQLite file inside a state directory.
pub const STATE_FILE: &str = "state.sqlite";

pub mod segments;
mod sqlite;

pub use segments::{Seal, seal_segment};
pub use sqlite::SqliteStore;

use chrono::DateTime;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// `prev_hash` of the first audit record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Tolerance when comparing spent + requested with the allowance, so that
/// sums of decimal fractions (0.1 + 0.2) do not refuse a request that fits.
pub const BUDGET_TOLERANCE: f64 = 1e-12;

/// Version of the canonical serialisation hashed into the chain.
const CANONICAL_FORMAT: u32 = 1;

/// The durable state the service needs. Implemented by [`SqliteStore`]; a
/// PostgreSQL backend for multi-instance deployments is meant to implement
/// it too, with the same guarantees (serialised appends, atomic reserve).
pub trait StateStore: Send + Sync {
    /// Appends one entry to the audit chain and returns the stored record
    /// with its sequence number and hashes.
    fn append(&self, entry: AuditEntry) -> Result<AuditRecord, StateError>;

    /// Recomputes every hash and checks every link of the audit chain.
    fn verify(&self) -> Result<ChainReport, StateError>;

    /// Seals the live chain into a read-only segment (see [`segments`])
    /// once it holds at least `entries` entries; `0` never seals. `None`
    /// when nothing was sealed.
    fn seal_when_over(&self, entries: u64) -> Result<Option<Seal>, StateError>;

    /// Adds counts of unauthenticated refusals: a row per minute, client
    /// address and code, its count increased when the row exists (so a
    /// minute flushed in parts adds up).
    fn add_refusals(&self, counts: &[RefusalCount]) -> Result<(), StateError>;

    /// Refusal counts whose minute is in `[from, to)` (RFC 3339 bounds,
    /// either may be left open), oldest first.
    fn refusals(
        &self,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<RefusalCount>, StateError>;

    /// Audit records whose time is in `[from, to)` (either bound may be
    /// left open), in sequence order. Bounds are RFC 3339 timestamps.
    fn entries(&self, from: Option<&str>, to: Option<&str>)
    -> Result<Vec<AuditRecord>, StateError>;

    /// Reserves `amount` of the agreement's budget for `period`, refusing
    /// with [`StateError::BudgetExhausted`] when committed plus pending
    /// spend plus `amount` would exceed `allowance`. `request_id` must be
    /// unique within the agreement and period.
    fn reserve(
        &self,
        agreement: &str,
        period: &str,
        amount: f64,
        allowance: f64,
        request_id: &str,
    ) -> Result<Reservation, StateError>;

    /// As [`StateStore::reserve`], and also refusing with
    /// [`StateError::LifetimeExhausted`] when everything charged so far, by
    /// every agreement in every period, plus `amount` would exceed
    /// `lifetime_ceiling` (the per-person privacy-loss ceiling of the
    /// snapshot lineage: the same people are in every snapshot). Both
    /// checks and the insert are one transaction.
    fn reserve_within(
        &self,
        agreement: &str,
        period: &str,
        amount: f64,
        allowance: f64,
        lifetime_ceiling: Option<f64>,
        request_id: &str,
    ) -> Result<Reservation, StateError>;

    /// Everything charged (committed and pending) by every agreement in
    /// every period.
    fn lifetime_spent(&self) -> Result<f64, StateError>;

    /// Records what a released cell-key table told about margins of a
    /// snapshot: (margin, partition, information) rows; a row already
    /// recorded is kept as it is.
    fn margins_record(
        &self,
        agreement: &str,
        snapshot: &str,
        rows: &[(String, String, f64)],
    ) -> Result<(), StateError>;

    /// Every recorded margin row of a snapshot: (agreement, margin,
    /// partition, information).
    fn margins_load(
        &self,
        snapshot: &str,
    ) -> Result<Vec<(String, String, String, f64)>, StateError>;

    /// Marks a pending reservation as committed (the release went out).
    /// Committing an already committed reservation is a no-op.
    fn commit(&self, reservation: &Reservation) -> Result<(), StateError>;

    /// Deletes a pending reservation (execution failed, nothing went out),
    /// returning its amount to the budget. A committed one cannot be
    /// released.
    fn release(&self, reservation: &Reservation) -> Result<(), StateError>;

    /// Budget charged to the agreement in the period: committed plus
    /// pending (see the module documentation for why pending counts).
    fn spent(&self, agreement: &str, period: &str) -> Result<f64, StateError>;

    /// Every ledger row of the agreement, oldest first, for reports.
    fn ledger_rows(&self, agreement: &str) -> Result<Vec<LedgerRow>, StateError>;

    /// A DP release stored under `key` (canonical plan, snapshot,
    /// agreement and its protection), if any.
    fn release_get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError>;

    /// Stores a DP release under `key`. The first release for a key wins:
    /// a later put with the same key is ignored, so every repeat, in this
    /// process or after a restart, gets the first release.
    fn release_put(
        &self,
        key: &str,
        agreement: &str,
        snapshot: &str,
        release: &[u8],
    ) -> Result<(), StateError>;
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Answered.
    Accepted,
    /// Refused by a gate (malformed, not allowed, budget).
    Rejected,
    /// Failed while executing.
    Failed,
}

impl Outcome {
    /// The lower-case name stored in the audit log (`accepted`, `rejected`,
    /// `failed`), as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        }
    }

    /// The outcome named by [`Outcome::as_str`]; `None` for any other text.
    pub fn parse(s: &str) -> Option<Outcome> {
        match s {
            "accepted" => Some(Outcome::Accepted),
            "rejected" => Some(Outcome::Rejected),
            "failed" => Some(Outcome::Failed),
            _ => None,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request as the caller describes it; the store adds seq and hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the request was received: RFC 3339 in UTC (`Z` or `+00:00`).
    pub time: String,
    /// The agreement (PKS) the request ran under.
    pub agreement: String,
    /// Identifier of the token used; never the token itself.
    pub token_id: String,
    /// Service endpoint, e.g. `/v1/query`.
    pub endpoint: String,
    /// SQL text as submitted, where there was one.
    pub sql: Option<String>,
    /// Fingerprint of the logical plan, where planning got that far.
    pub plan_fingerprint: Option<String>,
    /// Snapshot the query ran on.
    pub snapshot: Option<String>,
    /// Whether the request was answered, refused or failed.
    pub outcome: Outcome,
    /// Error or refusal code, e.g. `budget_exhausted`.
    pub code: Option<String>,
    /// Cells in the result grid.
    pub cells: u64,
    /// Cells suppressed by disclosure control.
    pub suppressed_cells: u64,
    /// Privacy loss charged (DP), where any.
    pub privacy_loss: Option<f64>,
    /// Size in bytes of the released result; 0 unless accepted.
    pub bytes_out: u64,
    /// Wall-clock time from receiving the request to writing this entry,
    /// in milliseconds.
    pub duration_ms: u64,
    /// Hash of the released result, where one was released.
    pub result_hash: Option<String>,
    /// Client address as the service saw it.
    pub client_addr: Option<String>,
    /// The service's id for the request; budget ledger rows carry the same
    /// id, so every charged release can be matched to its entry.
    pub request_id: Option<String>,
    /// Catalog elements the query touched (validated plans only), sorted.
    pub elements: Vec<String>,
}

/// Unauthenticated refusals (no, a malformed, an unknown or two
/// credentials; an unknown `/v1` route; the per-address limit before
/// authentication) of one client address in one minute, with one code.
/// They are counted rather than written one audit row each, so a flood of
/// wrong tokens cannot fill the disk; nothing was released to them and no
/// agreement is involved, so they are not part of the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalCount {
    /// Start of the minute, RFC 3339 UTC (`2026-11-28T03:00:00Z`).
    pub minute: String,
    /// The client's address (IPv6: its /64), or `""` when unknown.
    pub client_addr: String,
    /// The refusal's stable code, e.g. `token_unknown`.
    pub code: String,
    /// Refusals of this address with this code in the minute (at least 1).
    pub count: u64,
}

/// A stored audit entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1 for the first record, then +1 with no gaps.
    pub seq: u64,
    /// `hash` of the record before; [`GENESIS_HASH`] for the first.
    pub prev_hash: String,
    /// [`chain_hash`] of this record.
    pub hash: String,
    /// The request as the caller described it.
    pub entry: AuditEntry,
}

/// Result of [`StateStore::verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChainReport {
    /// Records in the log.
    pub entries: u64,
    /// The first broken link; `None` when the whole chain verifies.
    pub first_broken: Option<BrokenLink>,
    /// Hash of the last record that verified (the chain head when intact).
    /// Publish or copy it elsewhere: the chain alone cannot show that its
    /// last records were removed.
    pub head_hash: Option<String>,
}

impl ChainReport {
    /// True when the whole chain verifies (no broken link).
    pub fn is_ok(&self) -> bool {
        self.first_broken.is_none()
    }
}

/// Where and why the chain breaks.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokenLink {
    /// Sequence number of the first record that does not verify.
    pub seq: u64,
    /// What is wrong with that record.
    pub reason: BreakReason,
}

/// Why a record, or a sealed segment, breaks the audit chain.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BreakReason {
    /// The record's content no longer matches its hash: it was altered.
    #[error(
        "hash mismatch: the record was altered after it was written (stored {stored}, computed {computed})"
    )]
    HashMismatch {
        /// The `hash` stored with the record.
        stored: String,
        /// [`chain_hash`] of the record as it reads now.
        computed: String,
    },
    /// The record's `prev_hash` is not the hash of the record before it:
    /// records were deleted, reordered or replaced.
    #[error(
        "prev_hash mismatch: the record does not link to the one before it; records were deleted, reordered or replaced (expected {expected}, found {found})"
    )]
    PrevHashMismatch {
        /// Hash of the record before (or the seal's head hash).
        expected: String,
        /// The record's stored `prev_hash`.
        found: String,
    },
    /// A sequence number is missing: records before this one were deleted.
    #[error("sequence gap: expected seq {expected}; records before this one were deleted")]
    SequenceGap {
        /// The sequence number that should have come next.
        expected: u64,
    },
    /// The record (or segment file) cannot be decoded at all.
    #[error("record cannot be decoded: {detail}")]
    Unreadable {
        /// The decoding or SQLite error.
        detail: String,
    },
    /// A recorded seal's segment file does not exist.
    #[error(
        "sealed segment {segment} (entries {first} to {last}) is missing; restore it from a backup of the state directory"
    )]
    SegmentMissing {
        /// The segment's path relative to the state directory.
        segment: String,
        /// Sequence number of the segment's first entry, as sealed.
        first: u64,
        /// Sequence number of the segment's last entry, as sealed.
        last: u64,
    },
    /// A break inside a sealed segment file.
    #[error("in sealed segment {segment}: {reason}")]
    InSegment {
        /// The segment's path relative to the state directory.
        segment: String,
        /// The break found among the segment's entries.
        reason: Box<BreakReason>,
    },
    /// A segment's entries verify but do not end at its seal's last entry
    /// and head hash: entries were cut off or the file was replaced.
    #[error(
        "sealed segment {segment} ends at entry {found_last}, its seal at {sealed_last}: entries were cut off or the file was replaced"
    )]
    SegmentCut {
        /// The segment's path relative to the state directory.
        segment: String,
        /// Sequence number of the last entry as recorded in the seal.
        sealed_last: u64,
        /// Sequence number of the last entry actually in the file.
        found_last: u64,
    },
    /// A segment file's SHA-256 differs from the one recorded at sealing.
    #[error(
        "sealed segment {segment} was altered after it was sealed (SHA-256 sealed {sealed}, found {found})"
    )]
    SegmentAltered {
        /// The segment's path relative to the state directory.
        segment: String,
        /// SHA-256 (lower-case hex) recorded in the seal.
        sealed: String,
        /// SHA-256 (lower-case hex) of the file now.
        found: String,
    },
    /// A seal does not start right after the one before it.
    #[error(
        "the seal of segment {segment} does not follow the one before it (it starts at entry {found_first}, expected {expected_first}): seals were removed, reordered or replaced"
    )]
    SealOutOfOrder {
        /// The segment's path relative to the state directory.
        segment: String,
        /// The sequence number after the previous seal's last entry.
        expected_first: u64,
        /// The first sequence number this seal records.
        found_first: u64,
    },
}

/// A pending charge against a budget, returned by [`StateStore::reserve`].
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// Ledger row id.
    pub id: i64,
    /// The agreement (PKS) whose budget is charged.
    pub agreement: String,
    /// The budget period, e.g. `2026-S1` ([`period_of`]).
    pub period: String,
    /// The service's id of the request the charge is for.
    pub request_id: String,
    /// Privacy loss reserved, in the unit of the agreement's budget (rho
    /// for zCDP, epsilon for pure DP).
    pub amount: f64,
}

/// Whether a ledger row's charge is only reserved or has been committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerState {
    /// Reserved, not yet committed or released. Counts as spent.
    Pending,
    /// The release went out.
    Committed,
}

impl LedgerState {
    /// The lower-case name stored in the ledger's `state` column
    /// (`pending`, `committed`), as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerState::Pending => "pending",
            LedgerState::Committed => "committed",
        }
    }

    /// The state named by [`LedgerState::as_str`]; `None` for any other
    /// text.
    pub fn parse(s: &str) -> Option<LedgerState> {
        match s {
            "pending" => Some(LedgerState::Pending),
            "committed" => Some(LedgerState::Committed),
            _ => None,
        }
    }
}

/// One row of the budget ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerRow {
    /// Ledger row id (the [`Reservation::id`]).
    pub id: i64,
    /// The agreement (PKS) whose budget is charged.
    pub agreement: String,
    /// The budget period, e.g. `2026-S1`.
    pub period: String,
    /// The service's id of the request; its audit entry has the same
    /// [`AuditEntry::request_id`].
    pub request_id: String,
    /// Privacy loss charged, in the unit of the agreement's budget (rho
    /// for zCDP, epsilon for pure DP).
    pub amount: f64,
    /// Pending or committed.
    pub state: LedgerState,
    /// RFC 3339 UTC, when the reservation was made.
    pub reserved_at: String,
    /// RFC 3339 UTC, when it was committed.
    pub committed_at: Option<String>,
}

impl StateError {
    /// Budget refusals are the caller's limit; a missing or foreign state
    /// path a usage error; every other failure is the environment's.
    pub fn category(&self) -> crate::error::ErrorCategory {
        use crate::error::ErrorCategory as C;
        match self {
            StateError::BudgetExhausted { .. } | StateError::LifetimeExhausted { .. } => {
                C::BudgetExhausted
            }
            StateError::Missing { .. } | StateError::NotState { .. } => C::Usage,
            _ => C::Io,
        }
    }
}

/// Errors of the state store: budget refusals, storage failures, and
/// invalid input from the caller.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The agreement's budget for the period cannot cover the request.
    #[error(
        "privacy budget exhausted for agreement {agreement} in {period}: {spent} spent (committed and pending), {requested} requested, allowance {allowance}; wait for the next period or ask for a larger allowance in the agreement"
    )]
    BudgetExhausted {
        /// The agreement (PKS) whose budget is exhausted.
        agreement: String,
        /// The budget period, e.g. `2026-S1`.
        period: String,
        /// Already charged in the period, committed plus pending.
        spent: f64,
        /// Privacy loss the request needs.
        requested: f64,
        /// The agreement's allowance for the period.
        allowance: f64,
    },
    /// Everything charged by every agreement, plus the request, would
    /// exceed the snapshot lineage's lifetime privacy-loss ceiling.
    #[error(
        "the lifetime privacy-loss ceiling is reached: {spent} charged by all agreements in all periods, {requested} requested, ceiling {ceiling}; the same people are in every snapshot, so no agreement can release more differentially private answers about them; ask for a question already answered (free), or use a cell-key agreement"
    )]
    LifetimeExhausted {
        /// Charged so far by every agreement in every period.
        spent: f64,
        /// Privacy loss the request needs.
        requested: f64,
        /// The lifetime per-person privacy-loss ceiling.
        ceiling: f64,
    },
    /// A SQLite operation failed.
    #[error(
        "state database failed while {context}: {source}; check that the file is writable, on a local disk, and not damaged"
    )]
    Sqlite {
        /// What the store was doing, e.g. "reading the schema version".
        context: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// Creating, reading or making private a state file or directory
    /// failed.
    #[error("cannot create, read or make private the state file or directory {}: {source}; check that it exists and is owned by the service's user, or fix its permissions", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No state database where one was expected (only `agregat serve`
    /// creates one).
    #[error(
        "no state database at {}; give --state DIR of a directory where `agregat serve` ran (its `state` setting, ./agregat-state by default); only `agregat serve` creates state",
        path.display()
    )]
    Missing {
        /// Path of the expected state database.
        path: PathBuf,
    },
    /// The file is an SQLite database but not agregat's state.
    #[error(
        "{} is not an agregat state database (no schema_version table); give --state DIR of a directory where `agregat serve` ran",
        path.display()
    )]
    NotState {
        /// Path of the file.
        path: PathBuf,
    },
    /// The database holds values that cannot be correct.
    #[error("state database is corrupt: {detail}; restore it from a backup and run verify")]
    Corrupt {
        /// What is inconsistent.
        detail: String,
    },
    /// The database was written by a newer build.
    #[error(
        "state database has schema version {found}, this build knows up to {supported}; run a newer build of agregat against it"
    )]
    SchemaTooNew {
        /// The schema version in the file.
        found: i64,
        /// The newest schema version this build knows.
        supported: i64,
    },
    /// SQLite did not accept a required pragma setting.
    #[error(
        "SQLite refused {pragma}={wanted} (got {got}); put the state database on a local filesystem that supports WAL"
    )]
    Pragma {
        /// The pragma, e.g. `journal_mode`.
        pragma: &'static str,
        /// The value asked for, e.g. `WAL`.
        wanted: &'static str,
        /// The value SQLite reports instead.
        got: String,
    },
    /// An audit entry or refusal count the caller built is not valid.
    #[error(
        "invalid audit record: {field} {detail}; fix the caller that builds the entry or the refusal count"
    )]
    InvalidEntry {
        /// The offending field (`time`, `agreement`, ...), or `refusal count`.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A time bound or refusal minute that is not RFC 3339.
    #[error(
        "invalid time bound {value:?}: {detail}; give an RFC 3339 timestamp such as 2026-01-31T00:00:00Z"
    )]
    InvalidTime {
        /// The value as given.
        value: String,
        /// The parser's error.
        detail: String,
    },
    /// A budget period not of the form `YEAR-S1` or `YEAR-S2`.
    #[error(
        "invalid budget period {period:?}; periods are YEAR-S1 or YEAR-S2, e.g. 2026-S1 (use period_of)"
    )]
    InvalidPeriod {
        /// The period as given.
        period: String,
    },
    /// A budget amount that is negative, infinite or NaN.
    #[error("invalid {what} {value}: budget amounts must be finite and not negative")]
    InvalidAmount {
        /// Which amount: `amount`, `allowance` or `lifetime ceiling`.
        what: &'static str,
        /// The value given.
        value: f64,
    },
    /// A required text argument is empty.
    #[error("invalid {what}: it must not be empty")]
    EmptyField {
        /// Which argument: `agreement` or `request id`.
        what: &'static str,
    },
    /// The request id already holds a reservation in this agreement and
    /// period.
    #[error(
        "request {request_id:?} already holds a reservation for agreement {agreement} in {period}; use a fresh request id for each request"
    )]
    DuplicateRequest {
        /// The agreement (PKS).
        agreement: String,
        /// The budget period.
        period: String,
        /// The reused request id.
        request_id: String,
    },
    /// The reservation to commit or release has no ledger row.
    #[error(
        "reservation {id} (request {request_id:?}) is not in the ledger; it was released already or never made"
    )]
    ReservationNotFound {
        /// The reservation's ledger row id.
        id: i64,
        /// The reservation's request id.
        request_id: String,
    },
    /// The reservation to release is already committed.
    #[error(
        "reservation {id} (request {request_id:?}) is committed and cannot be released; the budget it charged stays spent"
    )]
    ReservationCommitted {
        /// The reservation's ledger row id.
        id: i64,
        /// The reservation's request id.
        request_id: String,
    },
}

pub use crate::calendar::{is_valid_period, period_of};

/// SHA-256 (lower-case hex) of the canonical serialisation of a record:
/// serde_json of a struct with this fixed field order: format version,
/// seq, prev_hash, then the entry's fields in declaration order.
pub fn chain_hash(seq: u64, prev_hash: &str, e: &AuditEntry) -> String {
    #[derive(Serialize)]
    struct Canonical<'a> {
        format: u32,
        seq: u64,
        prev_hash: &'a str,
        time: &'a str,
        agreement: &'a str,
        token_id: &'a str,
        endpoint: &'a str,
        sql: Option<&'a str>,
        plan_fingerprint: Option<&'a str>,
        snapshot: Option<&'a str>,
        outcome: &'static str,
        code: Option<&'a str>,
        cells: u64,
        suppressed_cells: u64,
        privacy_loss: Option<f64>,
        bytes_out: u64,
        duration_ms: u64,
        result_hash: Option<&'a str>,
        client_addr: Option<&'a str>,
        request_id: Option<&'a str>,
        elements: &'a [String],
    }
    let canonical = Canonical {
        format: CANONICAL_FORMAT,
        seq,
        prev_hash,
        time: &e.time,
        agreement: &e.agreement,
        token_id: &e.token_id,
        endpoint: &e.endpoint,
        sql: e.sql.as_deref(),
        plan_fingerprint: e.plan_fingerprint.as_deref(),
        snapshot: e.snapshot.as_deref(),
        outcome: e.outcome.as_str(),
        code: e.code.as_deref(),
        cells: e.cells,
        suppressed_cells: e.suppressed_cells,
        privacy_loss: e.privacy_loss,
        bytes_out: e.bytes_out,
        duration_ms: e.duration_ms,
        result_hash: e.result_hash.as_deref(),
        client_addr: e.client_addr.as_deref(),
        request_id: e.request_id.as_deref(),
        elements: &e.elements,
    };
    // Strings, integers and finite floats always serialise.
    let bytes = serde_json::to_vec(&canonical).expect("canonical audit record serialises");
    hex::encode(Sha256::digest(&bytes))
}

/// Parses an RFC 3339 timestamp to Unix milliseconds.
fn rfc3339_millis(value: &str) -> Result<(i64, i32), String> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| (t.timestamp_millis(), t.offset().local_minus_utc()))
        .map_err(|e| e.to_string())
}

/// Checks an entry before it enters the chain; returns its time in Unix
/// milliseconds (stored beside it for range queries).
fn validate_entry(e: &AuditEntry) -> Result<i64, StateError> {
    let invalid = |field: &'static str, detail: String| StateError::InvalidEntry { field, detail };
    let (millis, offset) = rfc3339_millis(&e.time)
        .map_err(|d| invalid("time", format!("{:?} is not RFC 3339: {d}", e.time)))?;
    if offset != 0 {
        return Err(invalid(
            "time",
            format!("{:?} is not in UTC; use Z or +00:00", e.time),
        ));
    }
    for (field, value) in [
        ("agreement", &e.agreement),
        ("token_id", &e.token_id),
        ("endpoint", &e.endpoint),
    ] {
        if value.is_empty() {
            return Err(invalid(field, "is empty".into()));
        }
    }
    if let Some(loss) = e.privacy_loss
        && !(loss.is_finite() && loss >= 0.0)
    {
        return Err(invalid(
            "privacy_loss",
            format!("{loss} is not a finite, non-negative number"),
        ));
    }
    for (field, value) in [
        ("cells", e.cells),
        ("suppressed_cells", e.suppressed_cells),
        ("bytes_out", e.bytes_out),
        ("duration_ms", e.duration_ms),
    ] {
        if i64::try_from(value).is_err() {
            return Err(invalid(field, format!("{value} exceeds {}", i64::MAX)));
        }
    }
    Ok(millis)
}

fn validate_amount(what: &'static str, value: f64) -> Result<(), StateError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(StateError::InvalidAmount { what, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn periods() {
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).unwrap();
        assert_eq!(period_of(d(2026, 1, 1)), "2026-S1");
        assert_eq!(period_of(d(2026, 6, 30)), "2026-S1");
        assert_eq!(period_of(d(2026, 7, 1)), "2026-S2");
        assert_eq!(period_of(d(2026, 12, 31)), "2026-S2");
        assert!(is_valid_period("2026-S2"));
        assert!(!is_valid_period("2026-S3"));
        assert!(!is_valid_period("26-S1"));
    }
}
