//! [`StateStore`] on an embedded SQLite file (see the parent module).

use super::private;
use super::{
    AuditEntry, AuditRecord, BUDGET_TOLERANCE, BreakReason, BrokenLink, ChainReport, GENESIS_HASH,
    LedgerRow, LedgerState, Outcome, RefusalCount, Reservation, StateError, StateStore, chain_hash,
    is_valid_period, rfc3339_millis, validate_amount, validate_entry,
};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How long a writer waits for another connection's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Schema migrations; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE audit_log (
    seq              INTEGER PRIMARY KEY,
    time             TEXT    NOT NULL,
    time_ms          INTEGER NOT NULL,
    agreement        TEXT    NOT NULL,
    token_id         TEXT    NOT NULL,
    endpoint         TEXT    NOT NULL,
    sql              TEXT,
    plan_fingerprint TEXT,
    snapshot         TEXT,
    outcome          TEXT    NOT NULL,
    code             TEXT,
    cells            INTEGER NOT NULL,
    suppressed_cells INTEGER NOT NULL,
    privacy_loss     REAL,
    bytes_out        INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL,
    result_hash      TEXT,
    client_addr      TEXT,
    request_id       TEXT,
    elements         TEXT    NOT NULL,
    prev_hash        TEXT    NOT NULL,
    hash             TEXT    NOT NULL
);
CREATE INDEX audit_log_time ON audit_log (time_ms);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

-- AUTOINCREMENT: a released row's id is never reused, so a stale
-- Reservation cannot act on a later one.
CREATE TABLE budget_ledger (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    agreement    TEXT NOT NULL,
    period       TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    amount       REAL NOT NULL CHECK (amount >= 0),
    state        TEXT NOT NULL CHECK (state IN ('pending', 'committed')),
    reserved_at  TEXT NOT NULL,
    committed_at TEXT,
    UNIQUE (agreement, period, request_id)
);
"#,
    r#"
CREATE TABLE dp_release_cache (
    key        TEXT PRIMARY KEY,
    agreement  TEXT NOT NULL,
    snapshot   TEXT NOT NULL,
    created_at TEXT NOT NULL,
    release    BLOB NOT NULL
);
"#,
    r#"
-- Unauthenticated refusals, counted per client address, minute and code
-- instead of one audit row each (see StateStore::add_refusals).
CREATE TABLE refusal_counts (
    minute      TEXT    NOT NULL,
    minute_ms   INTEGER NOT NULL,
    client_addr TEXT    NOT NULL,
    code        TEXT    NOT NULL,
    count       INTEGER NOT NULL CHECK (count > 0),
    PRIMARY KEY (minute_ms, client_addr, code)
) WITHOUT ROWID;
"#,
    r#"
-- The margin memory against averaging (src/query/margins.rs): what each
-- agreement's cell-key tables have released about each margin of a
-- snapshot, so that a restart does not renew it.
CREATE TABLE margin_memory (
    agreement   TEXT NOT NULL,
    snapshot    TEXT NOT NULL,
    margin      TEXT NOT NULL,
    partition   TEXT NOT NULL,
    information REAL NOT NULL CHECK (information > 0),
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (agreement, snapshot, margin, partition)
) WITHOUT ROWID;
"#,
    r#"
-- Sealed audit segments (src/state/segments.rs): the entries first_seq..=
-- last_seq live in the read-only file audit-segments/<file>, whose SHA-256
-- is recorded here; the live chain continues from head_hash.
CREATE TABLE audit_seals (
    segment       INTEGER PRIMARY KEY,
    first_seq     INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL,
    prev_hash     TEXT    NOT NULL,
    head_hash     TEXT    NOT NULL,
    entries       INTEGER NOT NULL,
    first_time_ms INTEGER NOT NULL,
    last_time_ms  INTEGER NOT NULL,
    file          TEXT    NOT NULL UNIQUE,
    sha256        TEXT    NOT NULL,
    sealed_at     TEXT    NOT NULL
);
CREATE TRIGGER audit_seals_no_update BEFORE UPDATE ON audit_seals
BEGIN SELECT RAISE(ABORT, 'audit_seals is append-only'); END;
CREATE TRIGGER audit_seals_no_delete BEFORE DELETE ON audit_seals
BEGIN SELECT RAISE(ABORT, 'audit_seals is append-only'); END;
DROP TRIGGER audit_log_no_delete;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
WHEN OLD.seq > (SELECT COALESCE(MAX(last_seq), 0) FROM audit_seals)
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: only entries sealed into a segment leave it'); END;
"#,
];

pub(super) const AUDIT_COLUMNS: &str = "seq, time, time_ms, agreement, token_id, endpoint, sql, \
    plan_fingerprint, snapshot, outcome, code, cells, suppressed_cells, privacy_loss, \
    bytes_out, duration_ms, result_hash, client_addr, request_id, elements, prev_hash, hash";

const LEDGER_COLUMNS: &str =
    "id, agreement, period, request_id, amount, state, reserved_at, committed_at";

/// The SQLite backend: one connection behind a mutex. Several stores (or
/// processes) may open the same file; `IMMEDIATE` transactions and the busy
/// timeout serialise their writes.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

pub(super) fn sq(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StateError {
    move |source| StateError::Sqlite { context, source }
}

impl SqliteStore {
    /// Opens (creating it and its parent directories if needed) the state
    /// database at `path`, sets WAL, `synchronous=FULL` and the busy
    /// timeout, and migrates the schema to the current version. New
    /// directories get mode 0700; the database and its `-wal` and `-shm`
    /// files are set to 0600 on every open, whatever the umask (see
    /// [`super::private`]).
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StateError> {
        let path = path.as_ref();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            private::create_private_dir(parent).map_err(io(parent))?;
        }
        private::create_private_file(path).map_err(io(path))?;
        let mut conn = Connection::open(path).map_err(sq("opening the database file"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sq("setting the busy timeout"))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sq("setting journal_mode=WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StateError::Pragma {
                pragma: "journal_mode",
                wanted: "WAL",
                got: mode,
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sq("setting synchronous=FULL"))?;
        migrate(&mut conn)?;
        // WAL mode has created the -wal and -shm files by now.
        for file in private::database_files(path) {
            private::set_mode(&file, private::FILE_MODE).map_err(io(&file))?;
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    /// A state database in memory, gone when the store is dropped: the
    /// ledger of a local run ([`crate::release::Pipeline::local`]).
    pub fn in_memory() -> Result<SqliteStore, StateError> {
        let mut conn = Connection::open_in_memory().map_err(sq("opening an in-memory database"))?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path: std::path::PathBuf::from(":memory:"),
        })
    }

    /// Opens an existing state database for reading only (`audit verify`,
    /// `audit report`): nothing is created, migrated or written. A path
    /// that does not exist is [`StateError::Missing`]; a file without the
    /// schema of a state database is [`StateError::NotState`].
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<SqliteStore, StateError> {
        use rusqlite::OpenFlags;
        let path = path.as_ref();
        if !path.is_file() {
            return Err(StateError::Missing {
                path: path.to_path_buf(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sq("opening the database file read-only"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sq("setting the busy timeout"))?;
        let has_schema: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version')",
                [],
                |r| r.get(0),
            )
            .map_err(|_| StateError::NotState {
                path: path.to_path_buf(),
            })?;
        if !has_schema {
            return Err(StateError::NotState {
                path: path.to_path_buf(),
            });
        }
        let found: i64 = conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .map_err(sq("reading the schema version"))?;
        let supported = MIGRATIONS.len() as i64;
        if found > supported {
            return Err(StateError::SchemaTooNew { found, supported });
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StateError> {
        self.lock()
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .map_err(sq("reading the schema version"))
    }

    /// The connection. A panic while it was held cannot leave a transaction
    /// open (rusqlite rolls back on drop), so a poisoned lock is recovered.
    pub(super) fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StateError> {
    let supported = MIGRATIONS.len() as i64;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sq("starting the schema migration"))?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(sq("creating the schema_version table"))?;
    let found: Option<i64> = tx
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .optional()
        .map_err(sq("reading the schema version"))?;
    let found = match found {
        Some(v) => v,
        None => {
            tx.execute("INSERT INTO schema_version (version) VALUES (0)", [])
                .map_err(sq("initialising the schema version"))?;
            0
        }
    };
    if found > supported {
        return Err(StateError::SchemaTooNew { found, supported });
    }
    if found < 0 {
        return Err(StateError::Corrupt {
            detail: format!("schema_version holds {found}"),
        });
    }
    for sql in &MIGRATIONS[found as usize..] {
        tx.execute_batch(sql)
            .map_err(sq("applying a schema migration"))?;
    }
    tx.execute("UPDATE schema_version SET version = ?1", [supported])
        .map_err(sq("recording the schema version"))?;
    tx.commit().map_err(sq("committing the schema migration"))
}

pub(super) fn to_i64(v: u64) -> i64 {
    // validate_entry has checked every count fits.
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A row as stored, before it is checked.
pub(super) struct RawAudit {
    seq: i64,
    time_ms: i64,
    outcome: String,
    counts: [i64; 4],
    elements: String,
    record: AuditRecord,
}

pub(super) fn read_audit_row(r: &Row<'_>) -> rusqlite::Result<RawAudit> {
    Ok(RawAudit {
        seq: r.get(0)?,
        time_ms: r.get(2)?,
        outcome: r.get(9)?,
        counts: [r.get(11)?, r.get(12)?, r.get(14)?, r.get(15)?],
        elements: r.get(19)?,
        record: AuditRecord {
            seq: 0,
            prev_hash: r.get(20)?,
            hash: r.get(21)?,
            entry: AuditEntry {
                time: r.get(1)?,
                agreement: r.get(3)?,
                token_id: r.get(4)?,
                endpoint: r.get(5)?,
                sql: r.get(6)?,
                plan_fingerprint: r.get(7)?,
                snapshot: r.get(8)?,
                outcome: Outcome::Accepted,
                code: r.get(10)?,
                cells: 0,
                suppressed_cells: 0,
                privacy_loss: r.get(13)?,
                bytes_out: 0,
                duration_ms: 0,
                result_hash: r.get(16)?,
                client_addr: r.get(17)?,
                request_id: r.get(18)?,
                elements: Vec::new(),
            },
        },
    })
}

impl RawAudit {
    /// Checks the values that the SQL types do not, and builds the record.
    pub(super) fn decode(self) -> Result<AuditRecord, String> {
        let mut rec = self.record;
        rec.seq = u64::try_from(self.seq).map_err(|_| format!("seq {} is negative", self.seq))?;
        rec.entry.outcome = Outcome::parse(&self.outcome)
            .ok_or_else(|| format!("outcome {:?} is not accepted|rejected|failed", self.outcome))?;
        let names = ["cells", "suppressed_cells", "bytes_out", "duration_ms"];
        let mut counts = [0u64; 4];
        for (i, v) in self.counts.iter().enumerate() {
            counts[i] = u64::try_from(*v).map_err(|_| format!("{} {v} is negative", names[i]))?;
        }
        let e = &mut rec.entry;
        e.elements = serde_json::from_str(&self.elements).map_err(|err| {
            format!(
                "elements {:?} is not a JSON list of names: {err}",
                self.elements
            )
        })?;
        [e.cells, e.suppressed_cells, e.bytes_out, e.duration_ms] = counts;
        match rfc3339_millis(&e.time) {
            Ok((ms, _)) if ms == self.time_ms => {}
            Ok(_) => {
                return Err(format!(
                    "time_ms {} does not match time {:?}",
                    self.time_ms, e.time
                ));
            }
            Err(d) => return Err(format!("time {:?} is not RFC 3339: {d}", e.time)),
        }
        Ok(rec)
    }
}

fn read_ledger_row(r: &Row<'_>) -> rusqlite::Result<(LedgerRow, String)> {
    Ok((
        LedgerRow {
            id: r.get(0)?,
            agreement: r.get(1)?,
            period: r.get(2)?,
            request_id: r.get(3)?,
            amount: r.get(4)?,
            state: LedgerState::Pending,
            reserved_at: r.get(6)?,
            committed_at: r.get(7)?,
        },
        r.get(5)?,
    ))
}

/// A time bound in milliseconds: `default` when absent.
pub(super) fn time_bound(v: Option<&str>, default: i64) -> Result<i64, StateError> {
    match v {
        None => Ok(default),
        Some(s) => rfc3339_millis(s)
            .map(|(ms, _)| ms)
            .map_err(|detail| StateError::InvalidTime {
                value: s.to_string(),
                detail,
            }),
    }
}

pub(super) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Everything ever charged (committed and pending), by every agreement in
/// every period: the loss of the people who stay in every snapshot.
fn sum_lifetime(conn: &Connection) -> Result<f64, StateError> {
    conn.query_row("SELECT TOTAL(amount) FROM budget_ledger", [], |r| r.get(0))
        .map_err(sq("summing the lifetime privacy loss"))
}

fn sum_spent(conn: &Connection, agreement: &str, period: &str) -> Result<f64, StateError> {
    conn.query_row(
        "SELECT TOTAL(amount) FROM budget_ledger WHERE agreement = ?1 AND period = ?2",
        params![agreement, period],
        |r| r.get(0),
    )
    .map_err(sq("summing the budget spent"))
}

/// State of the reservation's ledger row, if that row exists. The row must
/// match the reservation's agreement, period and request id as well as its
/// id.
fn ledger_state(conn: &Connection, r: &Reservation) -> Result<Option<String>, StateError> {
    conn.query_row(
        "SELECT state FROM budget_ledger \
         WHERE id = ?1 AND agreement = ?2 AND period = ?3 AND request_id = ?4",
        params![r.id, r.agreement, r.period, r.request_id],
        |row| row.get(0),
    )
    .optional()
    .map_err(sq("reading a reservation"))
}

/// The audit records of `audit_log` in one database (live or a segment)
/// whose time is in `[from_ms, to_ms)`, in sequence order.
pub(super) fn entries_in(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<AuditRecord>, StateError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log \
             WHERE time_ms >= ?1 AND time_ms < ?2 ORDER BY seq"
        ))
        .map_err(sq("querying the audit log"))?;
    let rows = stmt
        .query_map(params![from_ms, to_ms], read_audit_row)
        .map_err(sq("querying the audit log"))?;
    let mut out = Vec::new();
    for raw in rows {
        let raw = raw.map_err(sq("reading an audit record"))?;
        let seq = raw.seq;
        out.push(raw.decode().map_err(|d| StateError::Corrupt {
            detail: format!("audit record {seq}: {d}"),
        })?);
    }
    Ok(out)
}

/// What walking one stretch of the chain found.
pub(super) struct Walk {
    pub entries: u64,
    pub first_broken: Option<BrokenLink>,
    /// Sequence number and hash of the last record that verified.
    pub head: Option<(u64, String)>,
}

/// Recomputes every hash of `audit_log` in `conn` and checks every link,
/// the first record being expected at `start_seq` after `start_prev`.
pub(super) fn walk_chain(
    conn: &Connection,
    start_seq: u64,
    start_prev: &str,
) -> Result<Walk, StateError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY seq"
        ))
        .map_err(sq("reading the audit log"))?;
    let mut rows = stmt.query([]).map_err(sq("reading the audit log"))?;
    let mut entries = 0u64;
    let mut first_broken = None;
    let mut expected_seq = start_seq;
    let mut prev = start_prev.to_string();
    let mut head = None;
    while let Some(row) = rows.next().map_err(sq("reading the audit log"))? {
        entries += 1;
        if first_broken.is_some() {
            continue;
        }
        let raw = match read_audit_row(row) {
            Ok(raw) => raw,
            Err(e) => {
                let seq: i64 = row.get(0).unwrap_or(0);
                first_broken = Some(BrokenLink {
                    seq: seq.max(0) as u64,
                    reason: BreakReason::Unreadable {
                        detail: e.to_string(),
                    },
                });
                continue;
            }
        };
        let raw_seq = raw.seq;
        let rec = match raw.decode() {
            Ok(rec) => rec,
            Err(detail) => {
                first_broken = Some(BrokenLink {
                    seq: raw_seq.max(0) as u64,
                    reason: BreakReason::Unreadable { detail },
                });
                continue;
            }
        };
        let computed = chain_hash(rec.seq, &rec.prev_hash, &rec.entry);
        let reason = if computed != rec.hash {
            Some(BreakReason::HashMismatch {
                stored: rec.hash.clone(),
                computed,
            })
        } else if rec.seq != expected_seq {
            Some(BreakReason::SequenceGap {
                expected: expected_seq,
            })
        } else if rec.prev_hash != prev {
            Some(BreakReason::PrevHashMismatch {
                expected: prev.clone(),
                found: rec.prev_hash.clone(),
            })
        } else {
            None
        };
        match reason {
            Some(reason) => {
                first_broken = Some(BrokenLink {
                    seq: rec.seq,
                    reason,
                })
            }
            None => {
                expected_seq = rec.seq + 1;
                prev = rec.hash.clone();
                head = Some((rec.seq, rec.hash));
            }
        }
    }
    Ok(Walk {
        entries,
        first_broken,
        head,
    })
}

impl StateStore for SqliteStore {
    fn seal_when_over(&self, entries: u64) -> Result<Option<super::Seal>, StateError> {
        if entries == 0 || self.live_entries()? < entries {
            return Ok(None);
        }
        self.seal_segment()
    }

    fn release_get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.lock()
            .query_row(
                "SELECT release FROM dp_release_cache WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()
            .map_err(sq("reading the release cache"))
    }

    fn release_put(
        &self,
        key: &str,
        agreement: &str,
        snapshot: &str,
        release: &[u8],
    ) -> Result<(), StateError> {
        self.lock()
            .execute(
                "INSERT OR IGNORE INTO dp_release_cache (key, agreement, snapshot, created_at, release) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key, agreement, snapshot, now_rfc3339(), release],
            )
            .map_err(sq("storing a release"))?;
        Ok(())
    }

    fn append(&self, entry: AuditEntry) -> Result<AuditRecord, StateError> {
        let time_ms = validate_entry(&entry)?;
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sq("starting an audit append"))?;
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sq("reading the audit chain head"))?;
        // Everything may have been sealed away: the chain goes on from the
        // head of the last segment.
        let last = match last {
            Some(l) => Some(l),
            None => super::segments::last_seal(&tx)?.map(|s| (to_i64(s.last_seq), s.head_hash)),
        };
        let (seq, prev_hash) = match last {
            None => (1u64, GENESIS_HASH.to_string()),
            Some((s, h)) => {
                let next = u64::try_from(s)
                    .ok()
                    .and_then(|s| s.checked_add(1))
                    .filter(|s| i64::try_from(*s).is_ok())
                    .ok_or_else(|| StateError::Corrupt {
                        detail: format!("audit chain head has seq {s}"),
                    })?;
                (next, h)
            }
        };
        let hash = chain_hash(seq, &prev_hash, &entry);
        let e = &entry;
        tx.execute(
            &format!(
                "INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)"
            ),
            params![
                to_i64(seq),
                e.time,
                time_ms,
                e.agreement,
                e.token_id,
                e.endpoint,
                e.sql,
                e.plan_fingerprint,
                e.snapshot,
                e.outcome.as_str(),
                e.code,
                to_i64(e.cells),
                to_i64(e.suppressed_cells),
                e.privacy_loss,
                to_i64(e.bytes_out),
                to_i64(e.duration_ms),
                e.result_hash,
                e.client_addr,
                e.request_id,
                serde_json::to_string(&e.elements).unwrap_or_else(|_| "[]".into()),
                prev_hash,
                hash,
            ],
        )
        .map_err(sq("inserting an audit record"))?;
        tx.commit().map_err(sq("committing an audit append"))?;
        Ok(AuditRecord {
            seq,
            prev_hash,
            hash,
            entry,
        })
    }

    fn verify(&self) -> Result<ChainReport, StateError> {
        let conn = self.lock();
        super::segments::verify_all(&conn, &self.path)
    }

    fn add_refusals(&self, counts: &[RefusalCount]) -> Result<(), StateError> {
        let mut checked = Vec::with_capacity(counts.len());
        for c in counts {
            let (ms, _) = rfc3339_millis(&c.minute).map_err(|detail| StateError::InvalidTime {
                value: c.minute.clone(),
                detail,
            })?;
            if c.count == 0 || c.code.is_empty() {
                return Err(StateError::InvalidEntry {
                    field: "refusal count",
                    detail: format!("{c:?} needs a code and a count above 0"),
                });
            }
            checked.push((ms, c));
        }
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sq("starting to add refusal counts"))?;
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO refusal_counts (minute, minute_ms, client_addr, code, count) \
                     VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (minute_ms, client_addr, code) DO UPDATE SET count = count + excluded.count",
                )
                .map_err(sq("adding refusal counts"))?;
            for (ms, c) in checked {
                stmt.execute(params![
                    c.minute,
                    ms,
                    c.client_addr,
                    c.code,
                    to_i64(c.count)
                ])
                .map_err(sq("adding refusal counts"))?;
            }
        }
        tx.commit().map_err(sq("committing refusal counts"))
    }

    fn refusals(
        &self,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<RefusalCount>, StateError> {
        let from_ms = time_bound(from, i64::MIN)?;
        let to_ms = time_bound(to, i64::MAX)?;
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT minute, client_addr, code, count FROM refusal_counts \
                 WHERE minute_ms >= ?1 AND minute_ms < ?2 ORDER BY minute_ms, client_addr, code",
            )
            .map_err(sq("querying the refusal counts"))?;
        let rows = stmt
            .query_map(params![from_ms, to_ms], |r| {
                Ok(RefusalCount {
                    minute: r.get(0)?,
                    client_addr: r.get(1)?,
                    code: r.get(2)?,
                    count: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                })
            })
            .map_err(sq("querying the refusal counts"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(sq("reading a refusal count"))
    }

    fn entries(
        &self,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<AuditRecord>, StateError> {
        let from_ms = time_bound(from, i64::MIN)?;
        let to_ms = time_bound(to, i64::MAX)?;
        let conn = self.lock();
        let mut out = super::segments::sealed_entries(&conn, &self.path, from_ms, to_ms)?;
        out.extend(entries_in(&conn, from_ms, to_ms)?);
        Ok(out)
    }

    fn reserve(
        &self,
        agreement: &str,
        period: &str,
        amount: f64,
        allowance: f64,
        request_id: &str,
    ) -> Result<Reservation, StateError> {
        self.reserve_within(agreement, period, amount, allowance, None, request_id)
    }

    fn lifetime_spent(&self) -> Result<f64, StateError> {
        sum_lifetime(&self.lock())
    }

    fn margins_record(
        &self,
        agreement: &str,
        snapshot: &str,
        rows: &[(String, String, f64)],
    ) -> Result<(), StateError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sq("starting to record released margins"))?;
        let now = now_rfc3339();
        for (margin, partition, information) in rows {
            tx.execute(
                "INSERT OR IGNORE INTO margin_memory \
                 (agreement, snapshot, margin, partition, information, recorded_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![agreement, snapshot, margin, partition, information, now],
            )
            .map_err(sq("recording a released margin"))?;
        }
        tx.commit().map_err(sq("committing released margins"))
    }

    fn margins_load(
        &self,
        snapshot: &str,
    ) -> Result<Vec<(String, String, String, f64)>, StateError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT agreement, margin, partition, information FROM margin_memory \
                 WHERE snapshot = ?1",
            )
            .map_err(sq("reading released margins"))?;
        let rows = stmt
            .query_map(params![snapshot], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(sq("reading released margins"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sq("reading released margins"))?;
        Ok(rows)
    }

    fn reserve_within(
        &self,
        agreement: &str,
        period: &str,
        amount: f64,
        allowance: f64,
        lifetime_ceiling: Option<f64>,
        request_id: &str,
    ) -> Result<Reservation, StateError> {
        if agreement.is_empty() {
            return Err(StateError::EmptyField { what: "agreement" });
        }
        if request_id.is_empty() {
            return Err(StateError::EmptyField { what: "request id" });
        }
        if !is_valid_period(period) {
            return Err(StateError::InvalidPeriod {
                period: period.to_string(),
            });
        }
        validate_amount("amount", amount)?;
        validate_amount("allowance", allowance)?;
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sq("starting a budget reservation"))?;
        let duplicate: Option<i64> = tx
            .query_row(
                "SELECT id FROM budget_ledger WHERE agreement = ?1 AND period = ?2 AND request_id = ?3",
                params![agreement, period, request_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sq("checking for a duplicate reservation"))?;
        if duplicate.is_some() {
            return Err(StateError::DuplicateRequest {
                agreement: agreement.to_string(),
                period: period.to_string(),
                request_id: request_id.to_string(),
            });
        }
        if let Some(ceiling) = lifetime_ceiling {
            validate_amount("lifetime ceiling", ceiling)?;
            let lifetime = sum_lifetime(&tx)?;
            if lifetime + amount > ceiling + BUDGET_TOLERANCE {
                return Err(StateError::LifetimeExhausted {
                    spent: lifetime,
                    requested: amount,
                    ceiling,
                });
            }
        }
        let spent = sum_spent(&tx, agreement, period)?;
        if spent + amount > allowance + BUDGET_TOLERANCE {
            return Err(StateError::BudgetExhausted {
                agreement: agreement.to_string(),
                period: period.to_string(),
                spent,
                requested: amount,
                allowance,
            });
        }
        tx.execute(
            "INSERT INTO budget_ledger (agreement, period, request_id, amount, state, reserved_at) \
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
            params![agreement, period, request_id, amount, now_rfc3339()],
        )
        .map_err(sq("inserting a budget reservation"))?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(sq("committing a budget reservation"))?;
        Ok(Reservation {
            id,
            agreement: agreement.to_string(),
            period: period.to_string(),
            request_id: request_id.to_string(),
            amount,
        })
    }

    fn commit(&self, reservation: &Reservation) -> Result<(), StateError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sq("starting a budget commit"))?;
        match ledger_state(&tx, reservation)?.as_deref() {
            None => {
                return Err(StateError::ReservationNotFound {
                    id: reservation.id,
                    request_id: reservation.request_id.clone(),
                });
            }
            Some("committed") => return Ok(()),
            Some(_) => {
                tx.execute(
                    "UPDATE budget_ledger SET state = 'committed', committed_at = ?2 WHERE id = ?1",
                    params![reservation.id, now_rfc3339()],
                )
                .map_err(sq("committing a reservation"))?;
            }
        }
        tx.commit().map_err(sq("committing a budget commit"))
    }

    fn release(&self, reservation: &Reservation) -> Result<(), StateError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sq("starting a budget release"))?;
        match ledger_state(&tx, reservation)?.as_deref() {
            None => {
                return Err(StateError::ReservationNotFound {
                    id: reservation.id,
                    request_id: reservation.request_id.clone(),
                });
            }
            Some("committed") => {
                return Err(StateError::ReservationCommitted {
                    id: reservation.id,
                    request_id: reservation.request_id.clone(),
                });
            }
            Some(_) => {
                tx.execute(
                    "DELETE FROM budget_ledger WHERE id = ?1 AND state = 'pending'",
                    [reservation.id],
                )
                .map_err(sq("releasing a reservation"))?;
            }
        }
        tx.commit().map_err(sq("committing a budget release"))
    }

    fn spent(&self, agreement: &str, period: &str) -> Result<f64, StateError> {
        sum_spent(&self.lock(), agreement, period)
    }

    fn ledger_rows(&self, agreement: &str) -> Result<Vec<LedgerRow>, StateError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {LEDGER_COLUMNS} FROM budget_ledger WHERE agreement = ?1 ORDER BY id"
            ))
            .map_err(sq("querying the budget ledger"))?;
        let rows = stmt
            .query_map([agreement], read_ledger_row)
            .map_err(sq("querying the budget ledger"))?;
        let mut out = Vec::new();
        for row in rows {
            let (mut row, state) = row.map_err(sq("reading a ledger row"))?;
            row.state = LedgerState::parse(&state).ok_or_else(|| StateError::Corrupt {
                detail: format!("ledger row {} has state {state:?}", row.id),
            })?;
            out.push(row);
        }
        Ok(out)
    }
}
