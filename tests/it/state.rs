//! The state layer on real SQLite files: audit chain integrity under
//! tampering and concurrency, and the budget ledger under a race.

use agregat::state::{
    AuditEntry, BreakReason, GENESIS_HASH, LedgerState, Outcome, SqliteStore, StateError,
    StateStore, period_of,
};
use chrono::NaiveDate;
use std::sync::{Arc, Barrier};
use std::thread;

fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        time: format!("2026-03-{:02}T{:02}:{:02}:00Z", 1 + i % 28, i % 24, i % 60),
        agreement: format!("PKS-{}", i % 3),
        token_id: format!("tok-{i}"),
        endpoint: "/v1/query".into(),
        sql: Some(format!(
            "SELECT kab, COUNT(*) FROM penduduk WHERE umur > {i} GROUP BY kab"
        )),
        plan_fingerprint: Some(format!("fp{i:04}")),
        snapshot: Some("2026-02".into()),
        outcome: match i % 3 {
            0 => Outcome::Accepted,
            1 => Outcome::Rejected,
            _ => Outcome::Failed,
        },
        code: (i % 3 == 1).then(|| "not_aggregate".to_string()),
        cells: i * 10,
        suppressed_cells: i,
        privacy_loss: i.is_multiple_of(2).then_some(0.1 * i as f64),
        bytes_out: 1000 + i,
        duration_ms: 5 + i,
        result_hash: Some(format!("{i:064x}")),
        client_addr: Some("10.0.0.1".into()),
        request_id: Some("r-1".into()),
        elements: vec!["jenis_kelamin".into(), "kode_kel".into()],
    }
}

fn raw(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[test]
fn append_verify_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/state.db");
    let mut records = Vec::new();
    {
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), 5);
        for i in 0..50 {
            records.push(store.append(entry(i)).unwrap());
        }
        assert_eq!(records[0].seq, 1);
        assert_eq!(records[0].prev_hash, GENESIS_HASH);
        for w in records.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + 1);
            assert_eq!(w[1].prev_hash, w[0].hash);
        }
        let report = store.verify().unwrap();
        assert_eq!(report.entries, 50);
        assert_eq!(report.first_broken, None);
        assert_eq!(report.head_hash.as_deref(), Some(records[49].hash.as_str()));
    }
    let store = SqliteStore::open(&path).unwrap();
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.entries, 50);
    // Everything reads back exactly as written, floats included.
    assert_eq!(store.entries(None, None).unwrap(), records);
    // Time range: [from, to).
    let march_2 = store
        .entries(Some("2026-03-02T00:00:00Z"), Some("2026-03-03T00:00:00Z"))
        .unwrap();
    assert!(!march_2.is_empty());
    assert!(
        march_2
            .iter()
            .all(|r| r.entry.time.starts_with("2026-03-02"))
    );
    let expected = records
        .iter()
        .filter(|r| r.entry.time.starts_with("2026-03-02"))
        .count();
    assert_eq!(march_2.len(), expected);
    // Appending continues the chain after reopening.
    let next = store.append(entry(50)).unwrap();
    assert_eq!(next.seq, 51);
    assert_eq!(next.prev_hash, records[49].hash);
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn bad_entries_and_bounds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("s.db")).unwrap();
    let mut e = entry(1);
    e.time = "2026-03-01T07:00:00+07:00".into();
    assert!(matches!(
        store.append(e),
        Err(StateError::InvalidEntry { field: "time", .. })
    ));
    let mut e = entry(1);
    e.privacy_loss = Some(f64::NAN);
    assert!(matches!(
        store.append(e),
        Err(StateError::InvalidEntry {
            field: "privacy_loss",
            ..
        })
    ));
    assert!(matches!(
        store.entries(Some("yesterday"), None),
        Err(StateError::InvalidTime { .. })
    ));
    assert_eq!(store.verify().unwrap().entries, 0);
}

#[test]
fn altered_row_is_reported_as_hash_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    for i in 0..50 {
        store.append(entry(i)).unwrap();
    }
    let conn = raw(&path);
    // The triggers refuse a plain UPDATE ...
    let refused = conn.execute("UPDATE audit_log SET sql = 'SELECT 1' WHERE seq = 17", []);
    assert!(refused.is_err());
    assert!(store.verify().unwrap().is_ok());
    // ... but someone with the file can drop them; the chain still tells.
    conn.execute_batch("DROP TRIGGER audit_log_no_update")
        .unwrap();
    let n = conn
        .execute(
            "UPDATE audit_log SET sql = 'SELECT nik FROM penduduk' WHERE seq = 17",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    let report = store.verify().unwrap();
    assert_eq!(report.entries, 50);
    let broken = report.first_broken.expect("tampering detected");
    assert_eq!(broken.seq, 17);
    assert!(
        matches!(broken.reason, BreakReason::HashMismatch { .. }),
        "{broken:?}"
    );
    // The report names the last good record as head.
    let good = store.entries(None, None).unwrap();
    assert_eq!(report.head_hash.as_deref(), Some(good[15].hash.as_str()));
}

#[test]
fn deleted_row_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    for i in 0..50 {
        store.append(entry(i)).unwrap();
    }
    let conn = raw(&path);
    assert!(
        conn.execute("DELETE FROM audit_log WHERE seq = 25", [])
            .is_err()
    );
    conn.execute_batch("DROP TRIGGER audit_log_no_delete")
        .unwrap();
    conn.execute("DELETE FROM audit_log WHERE seq = 25", [])
        .unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.entries, 49);
    let broken = report.first_broken.expect("deletion detected");
    assert_eq!(broken.seq, 26);
    assert!(
        matches!(
            broken.reason,
            BreakReason::SequenceGap { expected: 25 } | BreakReason::PrevHashMismatch { .. }
        ),
        "{broken:?}"
    );

    // Renumbering the rows after the hole breaks their hashes instead.
    conn.execute_batch("DROP TRIGGER audit_log_no_update")
        .unwrap();
    conn.execute("UPDATE audit_log SET seq = seq - 1 WHERE seq > 25", [])
        .unwrap();
    let broken = store.verify().unwrap().first_broken.unwrap();
    assert_eq!(broken.seq, 25);
    assert!(matches!(broken.reason, BreakReason::HashMismatch { .. }));
}

#[test]
fn concurrent_appends_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let shared = Arc::new(SqliteStore::open(&path).unwrap());
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let shared = Arc::clone(&shared);
            let barrier = Arc::clone(&barrier);
            let path = path.clone();
            thread::spawn(move || {
                // Half the threads share one store, half open their own
                // connection to the same file, as a second process would.
                let own;
                let store: &SqliteStore = if t % 2 == 0 {
                    &shared
                } else {
                    own = SqliteStore::open(&path).unwrap();
                    &own
                };
                barrier.wait();
                for i in 0..25 {
                    store.append(entry(t * 100 + i)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let report = shared.verify().unwrap();
    assert_eq!(report.entries, 200);
    assert!(report.is_ok(), "{report:?}");
    let all = shared.entries(None, None).unwrap();
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    let mut tokens: Vec<&str> = all.iter().map(|r| r.entry.token_id.as_str()).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), 200);
}

#[test]
fn budget_race_never_overspends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let shared = Arc::new(SqliteStore::open(&path).unwrap());
    let barrier = Arc::new(Barrier::new(20));
    let handles: Vec<_> = (0..20)
        .map(|t| {
            let shared = Arc::clone(&shared);
            let barrier = Arc::clone(&barrier);
            let path = path.clone();
            thread::spawn(move || {
                let own;
                let store: &SqliteStore = if t % 2 == 0 {
                    &shared
                } else {
                    own = SqliteStore::open(&path).unwrap();
                    &own
                };
                barrier.wait();
                match store.reserve("PKS-1", "2026-S1", 1.0, 5.0, &format!("req-{t}")) {
                    Ok(r) => {
                        store.commit(&r).unwrap();
                        true
                    }
                    Err(StateError::BudgetExhausted {
                        spent,
                        requested,
                        allowance,
                        ..
                    }) => {
                        assert_eq!(spent, 5.0);
                        assert_eq!(requested, 1.0);
                        assert_eq!(allowance, 5.0);
                        false
                    }
                    Err(e) => panic!("unexpected error: {e}"),
                }
            })
        })
        .collect();
    let ok = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|&ok| ok)
        .count();
    assert_eq!(ok, 5);
    assert_eq!(shared.spent("PKS-1", "2026-S1").unwrap(), 5.0);
    let rows = shared.ledger_rows("PKS-1").unwrap();
    assert_eq!(rows.len(), 5);
    assert!(
        rows.iter()
            .all(|r| r.state == LedgerState::Committed && r.committed_at.is_some())
    );
    // Other agreements and periods are untouched.
    assert_eq!(shared.spent("PKS-1", "2026-S2").unwrap(), 0.0);
    assert_eq!(shared.spent("PKS-2", "2026-S1").unwrap(), 0.0);
}

#[test]
fn release_returns_budget_and_pending_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    let a = store.reserve("PKS-1", "2026-S2", 0.3, 1.0, "a").unwrap();
    let b = store.reserve("PKS-1", "2026-S2", 0.6, 1.0, "b").unwrap();
    // Pending counts as spent: 0.9 charged, 0.2 more does not fit.
    assert!((store.spent("PKS-1", "2026-S2").unwrap() - 0.9).abs() < 1e-12);
    assert!(matches!(
        store.reserve("PKS-1", "2026-S2", 0.2, 1.0, "c"),
        Err(StateError::BudgetExhausted { .. })
    ));
    // Execution of b failed: release returns its share.
    store.release(&b).unwrap();
    assert!((store.spent("PKS-1", "2026-S2").unwrap() - 0.3).abs() < 1e-12);
    let c = store.reserve("PKS-1", "2026-S2", 0.7, 1.0, "c").unwrap();
    // A released id is never reused, so the stale `b` cannot touch `c`.
    assert_ne!(c.id, b.id);
    // 0.3 + 0.7 fits exactly within the tolerance.
    store.commit(&a).unwrap();
    store.commit(&a).unwrap(); // idempotent
    store.commit(&c).unwrap();
    assert!(matches!(
        store.release(&a),
        Err(StateError::ReservationCommitted { .. })
    ));
    assert!(matches!(
        store.release(&b),
        Err(StateError::ReservationNotFound { .. })
    ));
    assert!(matches!(
        store.commit(&b),
        Err(StateError::ReservationNotFound { .. })
    ));
    assert!(matches!(
        store.reserve("PKS-1", "2026-S2", 0.0, 1.0, "a"),
        Err(StateError::DuplicateRequest { .. })
    ));
    assert!(matches!(
        store.reserve("PKS-1", "2026-S3", 0.1, 1.0, "d"),
        Err(StateError::InvalidPeriod { .. })
    ));
    assert!(matches!(
        store.reserve("PKS-1", "2026-S1", -0.1, 1.0, "d"),
        Err(StateError::InvalidAmount { .. })
    ));
    // A pending reservation survives a crash (drop without commit) and
    // stays charged after reopening.
    let d = store.reserve("PKS-2", "2026-S2", 0.5, 1.0, "d").unwrap();
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.spent("PKS-2", "2026-S2").unwrap(), 0.5);
    let rows = store.ledger_rows("PKS-2").unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, d.id);
    assert_eq!(rows[0].state, LedgerState::Pending);
    let rows = store.ledger_rows("PKS-1").unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, ["a", "c"]);
}

#[test]
fn period_boundaries() {
    let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).unwrap();
    assert_eq!(period_of(d(2026, 6, 30)), "2026-S1");
    assert_eq!(period_of(d(2026, 7, 1)), "2026-S2");
    assert_eq!(period_of(d(2026, 1, 1)), "2026-S1");
    assert_eq!(period_of(d(2026, 12, 31)), "2026-S2");
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(SqliteStore::open(&path).unwrap());
    raw(&path)
        .execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StateError::SchemaTooNew {
            found: 99,
            supported: 5
        })
    ));
}
