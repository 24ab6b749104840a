//! The `agregat` command line, run as a real process.

use std::process::Command;

fn agregat(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_agregat"))
        .args(args)
        .output()
        .expect("run agregat");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SNAPSHOT: &str = "data-samples/dkb-2026-s1";
const AGREEMENT: &str = "data-samples/lokal/contoh-lokal.toml";

/// `agregat query` reads the same PKS agreement files as the service, by
/// file or by id in a policy directory, applies their protection, and says
/// that it is an unaudited local run.
#[test]
fn query_reads_pks_agreements_and_says_it_is_a_local_run() {
    let table = "SELECT kode_kec, jenis_kelamin, COUNT(*) AS n FROM penduduk GROUP BY 1, 2";
    for args in [
        vec![
            "--agreement",
            "data-samples/agreements/disdikbud-pontianak.toml",
        ],
        vec![
            "--policy",
            "data-samples/agreements",
            "--agreement",
            "disdikbud-pontianak",
        ],
    ] {
        let mut all = vec![
            "query",
            "--snapshot",
            SNAPSHOT,
            "--format",
            "json",
            "--sql",
            table,
        ];
        all.extend(args);
        let (code, out, err) = agregat(&all);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["rows"].as_array().unwrap().len(), 12);
        assert_eq!(v["protection"]["method"], "cell_key");
        assert!(err.contains("not audited"), "{err}");
    }
    // The agreement's rules: a FILTER is not a table under cell-key, and
    // agama is not among the education office's elements.
    for (sql, code_text) in [
        (
            "SELECT COUNT(*) FILTER (WHERE jenis_kelamin = 'LAKI-LAKI') FROM penduduk",
            "[not_a_table]",
        ),
        (
            "SELECT agama, COUNT(*) FROM penduduk GROUP BY 1",
            "[element_not_permitted]",
        ),
    ] {
        let (code, _, err) = agregat(&[
            "query",
            "--snapshot",
            SNAPSHOT,
            "--agreement",
            "data-samples/agreements/disdikbud-pontianak.toml",
            "--sql",
            sql,
        ]);
        assert_ne!(code, 0, "{sql}");
        assert!(err.contains(code_text), "{sql}: {err}");
    }
    let (code, _, err) = agregat(&[
        "query",
        "--snapshot",
        SNAPSHOT,
        "--policy",
        "data-samples/agreements",
        "--agreement",
        "tidak-ada",
        "--sql",
        table,
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("tidak-ada") && err.contains("disdikbud-pontianak"),
        "{err}"
    );
}

#[test]
fn query_json_carries_protection_and_rejections_exit_with_the_code() {
    let (code, out, err) = agregat(&[
        "query",
        "--snapshot",
        SNAPSHOT,
        "--agreement",
        AGREEMENT,
        "--format",
        "json",
        "--sql",
        "SELECT kode_kec, COUNT(*) FROM penduduk GROUP BY kode_kec",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 6);
    assert_eq!(v["protection"]["method"], "cell_key");
    assert_eq!(v["protection"]["snapshot"], "dkb-2026-s1");

    let (code, _, err) = agregat(&[
        "query",
        "--snapshot",
        SNAPSHOT,
        "--agreement",
        AGREEMENT,
        "--sql",
        "SELECT nik, COUNT(*) FROM penduduk GROUP BY nik",
    ]);
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("[identifier_in_group_by]") && err.contains("'nik'"),
        "{err}"
    );

    let (code, _, err) = agregat(&[
        "query",
        "--snapshot",
        SNAPSHOT,
        "--agreement",
        AGREEMENT,
        "--sql",
        "SELECT penyandang_cacat, COUNT(*) FROM penduduk GROUP BY 1",
    ]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("[element_not_permitted]"), "{err}");
}

#[test]
fn ptable_generate_then_check() {
    let (code, csv, err) = agregat(&[
        "ptable",
        "generate",
        "--max-perturbation",
        "5",
        "--variance",
        "2",
        "--js",
        "2",
        "--keys",
        "256",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(csv.starts_with("cell_value,cell_key,perturbation\n"));
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("p.csv");
    std::fs::write(&good, &csv).unwrap();
    let (code, out, err) = agregat(&["ptable", "check", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK"), "{out}");
    // A row that publishes 1 (inside 1..=js) is reported with its row.
    let bad = dir.path().join("bad.csv");
    let text = csv.replacen("\n1,0-170,-1\n", "\n1,0-170,0\n", 1);
    std::fs::write(&bad, text).unwrap();
    let (code, out, _) = agregat(&["ptable", "check", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(out.contains("cell_value 1"), "{out}");
}

#[test]
fn suppress_a_spreadsheet() {
    let (code, out, err) = agregat(&[
        "suppress",
        "--input",
        "tests/data/suppress/penduduk.csv",
        "--dims",
        "kecamatan,jenis_kelamin",
        "--value",
        "jumlah",
        "--k",
        "10",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().next().unwrap().ends_with(",suppression"),
        "{out}"
    );
    // Without --show-reasons a reader cannot tell small cells from their
    // complements.
    assert!(out.contains(",withheld"), "{out}");
    assert!(
        !out.contains("primary") && !out.contains("secondary"),
        "{out}"
    );
    assert!(
        !err.contains("primary") && err.contains("withheld"),
        "{err}"
    );
    let (code, out, err) = agregat(&[
        "suppress",
        "--input",
        "tests/data/suppress/penduduk.csv",
        "--dims",
        "kecamatan,jenis_kelamin",
        "--value",
        "jumlah",
        "--k",
        "10",
        "--show-reasons",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(",primary") && out.contains(",secondary"),
        "{out}"
    );
    assert!(err.contains("primary"), "{err}");
    let (code, _, err) = agregat(&[
        "suppress",
        "--input",
        "tests/data/suppress/penduduk.csv",
        "--dims",
        "kecamatan",
        "--value",
        "n",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`n`"), "{err}");
}

/// `audit verify` and `audit report` read the state `serve` wrote: a
/// missing or mistyped `--state` fails with a clear message and creates
/// nothing; an existing state is read without being written.
#[test]
fn audit_commands_never_create_state() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("does-not-exist");
    let m = missing.to_str().unwrap();
    let report = |state: &str| {
        agregat(&[
            "audit",
            "report",
            "--from",
            "2026-01-01",
            "--to",
            "2026-06-30",
            "--format",
            "json",
            "--state",
            state,
        ])
    };
    for (code, out, err) in [agregat(&["audit", "verify", "--state", m]), report(m)] {
        assert_eq!(code, 2, "{out}{err}");
        assert!(out.is_empty(), "{out}");
        assert!(err.contains(m), "names the path: {err}");
        assert!(
            err.contains("--state DIR") && err.contains("agregat serve"),
            "says what to give instead: {err}"
        );
        assert!(!missing.exists(), "nothing is created at {m}");
    }

    // An existing directory without a database: the file is named, and
    // not created either.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = empty.to_str().unwrap();
    for (code, _, err) in [agregat(&["audit", "verify", "--state", e]), report(e)] {
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("state.sqlite"), "{err}");
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "{err}");
    }

    // A file that is not a state database is refused, not migrated.
    let other = dir.path().join("other.sqlite");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x INTEGER)")
        .unwrap();
    let (code, _, err) = agregat(&["audit", "verify", "--state", other.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not an agregat state database"), "{err}");

    // The state of a service: verified read-only.
    let state = dir.path().join("state");
    {
        use agregat::state::StateStore;
        let store = agregat::state::SqliteStore::open(state.join("state.sqlite")).unwrap();
        store
            .append(agregat::state::AuditEntry {
                time: "2026-03-01T01:00:00Z".into(),
                agreement: "uji".into(),
                token_id: "t1".into(),
                endpoint: "/v1/query".into(),
                sql: None,
                plan_fingerprint: None,
                snapshot: None,
                outcome: agregat::state::Outcome::Rejected,
                code: Some("token_unknown".into()),
                cells: 0,
                suppressed_cells: 0,
                privacy_loss: None,
                bytes_out: 0,
                duration_ms: 1,
                result_hash: None,
                client_addr: None,
                request_id: None,
                elements: Vec::new(),
            })
            .unwrap();
    }
    let db = state.join("state.sqlite");
    let before = std::fs::read(&db).unwrap();
    let (code, out, err) = agregat(&["audit", "verify", "--state", state.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("audit chain OK: 1 entries"), "{out}");
    let (code, out, err) = report(state.to_str().unwrap());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with('{'), "{out}");
    assert_eq!(std::fs::read(&db).unwrap(), before, "read-only");

    // Sealed into a segment, the chain still verifies across it; a
    // tampered segment is named by verify, which then fails.
    let s = state.to_str().unwrap();
    let (code, out, err) = agregat(&["audit", "seal", "--state", s]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sealed entries 1..=1"), "{out}");
    let (code, out, err) = agregat(&["audit", "verify", "--state", s]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("audit chain OK: 1 entries"), "{out}");
    let segment = std::fs::read_dir(state.join("audit-segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "sqlite"))
        .unwrap();
    let mut perms = std::fs::metadata(&segment).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&segment, perms).unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&segment, bytes).unwrap();
    let (code, _, err) = agregat(&["audit", "verify", "--state", s]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("audit chain broken"), "{err}");
}
