//! Sealed audit segments: the audit log rotated into read-only files whose
//! chain stays verifiable across them.
//!
//! [`SqliteStore::seal_segment`] (`agregat audit seal`) moves every entry
//! of the live chain up to now into a new SQLite file
//! `audit-segments/<first>-<last>.sqlite` inside the state directory, mode
//! 0400, and records the seal in the live database's `audit_seals` table:
//! the segment's first and last sequence numbers, the hash it continues
//! from (`prev_hash`) and its head hash, its entry count, time span, file
//! name and the file's SHA-256. The live chain then continues from that
//! head: the next entry gets `last + 1` and links to the head's hash, so
//! the whole log, segments and live, is still one chain.
//!
//! The seal is made in this order, so that a crash at any point leaves a
//! log that verifies: the segment is written to a temporary file, synced,
//! checked against the live chain, made read-only and renamed into place;
//! only then, in one transaction, is the seal recorded and the sealed
//! entries deleted from the live table (its delete trigger allows exactly
//! the entries covered by a recorded seal). A crash before that
//! transaction leaves an unrecorded file, which the next seal replaces.
//! A live chain that does not verify is never sealed.
//!
//! [`StateStore::verify`](super::StateStore::verify) walks every seal in
//! order: the seals must follow each other (each starting after the last
//! sequence number and from the head hash of the one before), each file
//! must exist and match its SHA-256, every entry in it must verify and
//! link, and it must end exactly at its seal's head; then the live chain
//! is walked from the last head. A missing, altered, cut, swapped or
//! reordered segment is reported as the first broken link, naming the
//! segment file and the entry.

use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::sqlite::{Walk, entries_in, now_rfc3339, sq, to_i64, walk_chain};
use super::{
    AuditRecord, BreakReason, BrokenLink, ChainReport, GENESIS_HASH, SqliteStore, StateError,
    private,
};

/// The directory of sealed segments inside the state directory.
pub const SEGMENTS_DIR: &str = "audit-segments";

/// Mode of a sealed segment file: readable by the service's user only,
/// writable by nobody.
pub const SEGMENT_MODE: u32 = 0o400;

/// The schema of a segment file: the live `audit_log` table as it was,
/// append-only, and the segment's own description.
const SEGMENT_SCHEMA: &str = r#"
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
BEGIN SELECT RAISE(ABORT, 'a sealed audit segment is read-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'a sealed audit segment is read-only'); END;
CREATE TABLE segment (
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    prev_hash TEXT    NOT NULL,
    head_hash TEXT    NOT NULL,
    sealed_at TEXT    NOT NULL
);
"#;

/// One recorded seal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// 1 for the first segment, then +1.
    pub segment: u64,
    /// Sequence number of the segment's first entry.
    pub first_seq: u64,
    /// Sequence number of the segment's last entry; the live chain
    /// continues at `last_seq + 1`.
    pub last_seq: u64,
    /// Hash the segment's first entry links to.
    pub prev_hash: String,
    /// Hash of its last entry: the live chain (or the next segment)
    /// continues from it.
    pub head_hash: String,
    /// Number of audit entries in the segment.
    pub entries: u64,
    /// Earliest entry time in the segment, in milliseconds since the Unix
    /// epoch (the entries' `time_ms`).
    pub first_time_ms: i64,
    /// Latest entry time in the segment, in milliseconds since the Unix
    /// epoch.
    pub last_time_ms: i64,
    /// File name inside [`SEGMENTS_DIR`].
    pub file: String,
    /// SHA-256 (lower-case hex) of the file.
    pub sha256: String,
    /// When the seal was made: RFC 3339 UTC with microseconds.
    pub sealed_at: String,
}

impl Seal {
    /// The segment's path, relative to the state directory.
    pub fn relative_path(&self) -> String {
        format!("{SEGMENTS_DIR}/{}", self.file)
    }
}

/// The directory of segments next to a state database file.
pub fn segments_dir(db: &Path) -> PathBuf {
    db.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(SEGMENTS_DIR)
}

fn has_seals_table(conn: &Connection) -> Result<bool, StateError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_seals')",
        [],
        |r| r.get(0),
    )
    .map_err(sq("looking for the audit seals"))
}

const SEAL_COLUMNS: &str = "segment, first_seq, last_seq, prev_hash, head_hash, entries, \
    first_time_ms, last_time_ms, file, sha256, sealed_at";

fn read_seal(r: &rusqlite::Row<'_>) -> rusqlite::Result<Seal> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    Ok(Seal {
        segment: u(0)?,
        first_seq: u(1)?,
        last_seq: u(2)?,
        prev_hash: r.get(3)?,
        head_hash: r.get(4)?,
        entries: u(5)?,
        first_time_ms: r.get(6)?,
        last_time_ms: r.get(7)?,
        file: r.get(8)?,
        sha256: r.get(9)?,
        sealed_at: r.get(10)?,
    })
}

/// Every recorded seal, in segment order (none before the table exists).
pub(super) fn seals(conn: &Connection) -> Result<Vec<Seal>, StateError> {
    if !has_seals_table(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {SEAL_COLUMNS} FROM audit_seals ORDER BY segment"
        ))
        .map_err(sq("reading the audit seals"))?;
    let rows = stmt
        .query_map([], read_seal)
        .map_err(sq("reading the audit seals"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(sq("reading an audit seal"))
}

/// The last recorded seal, if any.
pub(super) fn last_seal(conn: &Connection) -> Result<Option<Seal>, StateError> {
    if !has_seals_table(conn)? {
        return Ok(None);
    }
    conn.query_row(
        &format!("SELECT {SEAL_COLUMNS} FROM audit_seals ORDER BY segment DESC LIMIT 1"),
        [],
        read_seal,
    )
    .optional()
    .map_err(sq("reading the last audit seal"))
}

/// SHA-256 of a file, in lower-case hex.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn open_segment(path: &Path) -> Result<Connection, StateError> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sq("opening a sealed audit segment"))
}

/// Checks one segment file against its seal; the first broken link, if
/// any, names the segment.
fn verify_segment(path: &Path, seal: &Seal) -> Result<(u64, Option<BrokenLink>), StateError> {
    let name = seal.relative_path();
    let broken = |seq: u64, reason: BreakReason| BrokenLink { seq, reason };
    if !path.is_file() {
        return Ok((
            0,
            Some(broken(
                seal.first_seq,
                BreakReason::SegmentMissing {
                    segment: name,
                    first: seal.first_seq,
                    last: seal.last_seq,
                },
            )),
        ));
    }
    let found_sha = sha256_file(path).map_err(|source| StateError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let walk =
        match open_segment(path).and_then(|c| walk_chain(&c, seal.first_seq, &seal.prev_hash)) {
            Ok(w) => w,
            Err(e) => Walk {
                entries: 0,
                first_broken: Some(broken(
                    seal.first_seq,
                    BreakReason::Unreadable {
                        detail: e.to_string(),
                    },
                )),
                head: None,
            },
        };
    if let Some(b) = walk.first_broken {
        return Ok((
            walk.entries,
            Some(BrokenLink {
                seq: b.seq,
                reason: BreakReason::InSegment {
                    segment: name,
                    reason: Box::new(b.reason),
                },
            }),
        ));
    }
    let (head_seq, head_hash) = walk
        .head
        .clone()
        .unwrap_or((seal.first_seq.saturating_sub(1), seal.prev_hash.clone()));
    if head_seq != seal.last_seq || head_hash != seal.head_hash {
        return Ok((
            walk.entries,
            Some(broken(
                (head_seq + 1).min(seal.last_seq),
                BreakReason::SegmentCut {
                    segment: name,
                    sealed_last: seal.last_seq,
                    found_last: head_seq,
                },
            )),
        ));
    }
    if found_sha != seal.sha256 {
        return Ok((
            walk.entries,
            Some(broken(
                seal.first_seq,
                BreakReason::SegmentAltered {
                    segment: name,
                    sealed: seal.sha256.clone(),
                    found: found_sha,
                },
            )),
        ));
    }
    Ok((walk.entries, None))
}

/// The whole chain: every sealed segment in order, the links between them,
/// and the live chain from the last head (see the module documentation).
pub(super) fn verify_all(conn: &Connection, db: &Path) -> Result<ChainReport, StateError> {
    let dir = segments_dir(db);
    let seals = seals(conn)?;
    let mut entries = 0u64;
    let mut first_broken: Option<BrokenLink> = None;
    let mut next_seq = 1u64;
    let mut prev = GENESIS_HASH.to_string();
    for s in &seals {
        if first_broken.is_some() {
            entries += s.entries;
            continue;
        }
        if s.first_seq != next_seq || s.prev_hash != prev || s.last_seq < s.first_seq {
            first_broken = Some(BrokenLink {
                seq: s.first_seq,
                reason: BreakReason::SealOutOfOrder {
                    segment: s.relative_path(),
                    expected_first: next_seq,
                    found_first: s.first_seq,
                },
            });
            entries += s.entries;
            continue;
        }
        let (n, broken) = verify_segment(&dir.join(&s.file), s)?;
        entries += if broken.is_some() {
            n.max(s.entries)
        } else {
            n
        };
        match broken {
            Some(b) => first_broken = Some(b),
            None => {
                next_seq = s.last_seq + 1;
                prev = s.head_hash.clone();
            }
        }
    }
    let head_after_seals = (first_broken.is_none() && !seals.is_empty()).then(|| prev.clone());
    let live = walk_chain(conn, next_seq, &prev)?;
    entries += live.entries;
    if first_broken.is_none() {
        first_broken = live.first_broken;
    }
    Ok(ChainReport {
        entries,
        first_broken,
        head_hash: live.head.map(|(_, h)| h).or(head_after_seals),
    })
}

/// Records of the sealed segments whose time is in `[from_ms, to_ms)`, in
/// sequence order. A missing segment is skipped (verification reports it).
pub(super) fn sealed_entries(
    conn: &Connection,
    db: &Path,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<AuditRecord>, StateError> {
    let dir = segments_dir(db);
    let mut out = Vec::new();
    for s in seals(conn)? {
        if s.last_time_ms < from_ms || s.first_time_ms >= to_ms {
            continue;
        }
        let path = dir.join(&s.file);
        if !path.is_file() {
            continue;
        }
        out.extend(entries_in(&open_segment(&path)?, from_ms, to_ms)?);
    }
    Ok(out)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl SqliteStore {
    /// Entries in the live chain (not yet sealed). Their sequence numbers
    /// are contiguous, so the span of the primary key counts them without
    /// a scan (the check runs every 10 s beside the appends).
    pub fn live_entries(&self) -> Result<u64, StateError> {
        let n: i64 = self
            .lock()
            .query_row(
                "SELECT COALESCE(MAX(seq) - MIN(seq) + 1, 0) FROM audit_log",
                [],
                |r| r.get(0),
            )
            .map_err(sq("counting the live audit entries"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Every recorded seal, oldest first.
    pub fn seals(&self) -> Result<Vec<Seal>, StateError> {
        seals(&self.lock())
    }

    /// Seals every entry of the live chain into a new read-only segment
    /// (see the module documentation); `None` when there is nothing to
    /// seal. Refuses when the live chain does not verify.
    pub fn seal_segment(&self) -> Result<Option<Seal>, StateError> {
        let mut conn = self.lock();
        let before = last_seal(&conn)?;
        let (first, prev) = match &before {
            Some(s) => (s.last_seq + 1, s.head_hash.clone()),
            None => (1, GENESIS_HASH.to_string()),
        };
        let walk = walk_chain(&conn, first, &prev)?;
        if let Some(b) = walk.first_broken {
            return Err(StateError::Corrupt {
                detail: format!(
                    "the live audit chain breaks at entry {} ({}), so it is not sealed; run `agregat audit verify` and restore the state from a backup",
                    b.seq, b.reason
                ),
            });
        }
        let Some((last, head)) = walk.head else {
            return Ok(None);
        };
        let (first_time_ms, last_time_ms): (i64, i64) = conn
            .query_row(
                "SELECT MIN(time_ms), MAX(time_ms) FROM audit_log WHERE seq BETWEEN ?1 AND ?2",
                params![to_i64(first), to_i64(last)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sq("reading the times of the entries to seal"))?;
        let dir = segments_dir(self.path());
        if !dir.is_dir() {
            private::create_private_dir(&dir).map_err(io_err(&dir))?;
        }
        let file = format!("{first}-{last}.sqlite");
        let path = dir.join(&file);
        let tmp = dir.join(format!(".{file}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        private::create_private_file(&tmp).map_err(io_err(&tmp))?;
        let sealed_at = now_rfc3339();
        {
            let mut seg = Connection::open(&tmp).map_err(sq("creating an audit segment"))?;
            seg.execute_batch(SEGMENT_SCHEMA)
                .map_err(sq("creating the audit segment's schema"))?;
            seg.execute(
                "ATTACH DATABASE ?1 AS live",
                [self.path().to_string_lossy()],
            )
            .map_err(sq("attaching the live state to the segment"))?;
            let tx = seg
                .transaction()
                .map_err(sq("starting to copy entries to the segment"))?;
            let cols = super::sqlite::AUDIT_COLUMNS;
            let copied = tx
                .execute(
                    &format!(
                        "INSERT INTO main.audit_log ({cols}) SELECT {cols} FROM live.audit_log \
                         WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq"
                    ),
                    params![to_i64(first), to_i64(last)],
                )
                .map_err(sq("copying entries to the segment"))?;
            tx.execute(
                "INSERT INTO segment (first_seq, last_seq, prev_hash, head_hash, sealed_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![to_i64(first), to_i64(last), prev, head, sealed_at],
            )
            .map_err(sq("describing the segment"))?;
            tx.commit().map_err(sq("committing the segment"))?;
            seg.execute("DETACH DATABASE live", [])
                .map_err(sq("detaching the live state"))?;
            if copied as u64 != walk.entries {
                return Err(StateError::Corrupt {
                    detail: format!(
                        "{copied} entries copied to the segment, {} expected",
                        walk.entries
                    ),
                });
            }
        }
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))?;
        let sha256 = sha256_file(&tmp).map_err(io_err(&tmp))?;
        private::set_mode(&tmp, SEGMENT_MODE).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        let seal = Seal {
            segment: before.as_ref().map_or(1, |s| s.segment + 1),
            first_seq: first,
            last_seq: last,
            prev_hash: prev,
            head_hash: head,
            entries: walk.entries,
            first_time_ms,
            last_time_ms,
            file,
            sha256,
            sealed_at,
        };
        // The file as written must verify before anything leaves the live
        // table.
        if let (_, Some(b)) = verify_segment(&path, &seal)? {
            return Err(StateError::Corrupt {
                detail: format!(
                    "the new segment {} does not verify (entry {}: {}); nothing was moved",
                    seal.relative_path(),
                    b.seq,
                    b.reason
                ),
            });
        }
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sq("starting to record the seal"))?;
        if last_seal(&tx)?.map(|s| s.segment) != before.as_ref().map(|s| s.segment) {
            return Err(StateError::Corrupt {
                detail:
                    "another seal was recorded at the same time; run `agregat audit seal` again"
                        .into(),
            });
        }
        tx.execute(
            &format!("INSERT INTO audit_seals ({SEAL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
            params![
                to_i64(seal.segment),
                to_i64(seal.first_seq),
                to_i64(seal.last_seq),
                seal.prev_hash,
                seal.head_hash,
                to_i64(seal.entries),
                seal.first_time_ms,
                seal.last_time_ms,
                seal.file,
                seal.sha256,
                seal.sealed_at,
            ],
        )
        .map_err(sq("recording the seal"))?;
        tx.execute(
            "DELETE FROM audit_log WHERE seq <= ?1",
            [to_i64(seal.last_seq)],
        )
        .map_err(sq("removing the sealed entries from the live log"))?;
        tx.commit().map_err(sq("committing the seal"))?;
        Ok(Some(seal))
    }
}

/// `agregat audit seal`: seals the live chain of the state directory (or
/// database file) `state`. Nothing is created when there is no state.
pub fn seal_segment(state: &Path) -> Result<Option<Seal>, StateError> {
    let db = if state.is_dir() {
        state.join(super::STATE_FILE)
    } else {
        state.to_path_buf()
    };
    if !db.is_file() {
        return Err(StateError::Missing { path: db });
    }
    SqliteStore::open(&db)?.seal_segment()
}

#[cfg(test)]
mod tests {
    use super::super::{AuditEntry, Outcome, StateStore};
    use super::*;

    fn entry(i: u64) -> AuditEntry {
        AuditEntry {
            time: format!("2026-03-{:02}T10:00:00Z", 1 + i % 28),
            agreement: "PKS-1".into(),
            token_id: format!("tok-{i}"),
            endpoint: "/v1/query".into(),
            sql: Some(format!("SELECT COUNT(*) FROM penduduk WHERE umur > {i}")),
            plan_fingerprint: None,
            snapshot: Some("2026-02".into()),
            outcome: Outcome::Accepted,
            code: None,
            cells: i,
            suppressed_cells: 0,
            privacy_loss: None,
            bytes_out: 10,
            duration_ms: 1,
            result_hash: None,
            client_addr: Some("10.0.0.1".into()),
            request_id: Some(format!("r-{i}")),
            elements: vec![],
        }
    }

    #[test]
    fn sealing_moves_entries_and_the_chain_goes_on() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("state.sqlite");
        let store = SqliteStore::open(&db).unwrap();
        assert_eq!(store.seal_segment().unwrap(), None);
        let mut heads = Vec::new();
        for i in 0..5 {
            heads.push(store.append(entry(i)).unwrap());
        }
        let s1 = store.seal_segment().unwrap().unwrap();
        assert_eq!((s1.segment, s1.first_seq, s1.last_seq), (1, 1, 5));
        assert_eq!(s1.file, "1-5.sqlite");
        assert_eq!(s1.head_hash, heads[4].hash);
        // Everything sealed: the next entry continues the chain.
        let r = store.verify().unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.entries, 5);
        assert_eq!(r.head_hash.as_deref(), Some(heads[4].hash.as_str()));
        let next = store.append(entry(5)).unwrap();
        assert_eq!(next.seq, 6);
        assert_eq!(next.prev_hash, heads[4].hash);
        store.append(entry(6)).unwrap();
        let s2 = store.seal_segment().unwrap().unwrap();
        assert_eq!(
            (s2.first_seq, s2.last_seq, s2.prev_hash.as_str()),
            (6, 7, heads[4].hash.as_str())
        );
        store.append(entry(7)).unwrap();
        let r = store.verify().unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.entries, 8);
        // Entries read across segments and the live log, in order.
        let all = store.entries(None, None).unwrap();
        assert_eq!(
            all.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=8).collect::<Vec<_>>()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(segments_dir(&db).join(&s1.file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, SEGMENT_MODE);
        }
        // Sealed entries cannot be deleted from the live table twice, nor
        // live ones at all.
        let raw = Connection::open(&db).unwrap();
        assert!(
            raw.execute("DELETE FROM audit_log WHERE seq = 8", [])
                .is_err()
        );
        assert!(raw.execute("DELETE FROM audit_seals", []).is_err());
    }

    #[test]
    fn a_missing_segment_breaks_the_chain() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("state.sqlite");
        let store = SqliteStore::open(&db).unwrap();
        for i in 0..3 {
            store.append(entry(i)).unwrap();
        }
        let s = store.seal_segment().unwrap().unwrap();
        std::fs::remove_file(segments_dir(&db).join(&s.file)).unwrap();
        let b = store.verify().unwrap().first_broken.unwrap();
        assert_eq!(b.seq, 1);
        assert!(b.reason.to_string().contains("1-3.sqlite"), "{}", b.reason);
    }
}
