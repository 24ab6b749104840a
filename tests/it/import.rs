//! `agregat import`: the sample exports, all-or-nothing validation, and the
//! error reports.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use agregat::ErrorCategory;
use agregat::catalog::{self, Domain, code_list};
use agregat::import::{ImportError, NumberDefect, RowReason, import_csv};
use agregat::record_key::{RecordKeySecret, sha256_hex};
use agregat::warehouse::{Manifest, Provenance, Snapshot, SnapshotError, Verify};
use chrono::NaiveDate;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Date32Type, UInt64Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const CLEAN_ROWS: u64 = 42;

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data-samples")
        .join(name)
}

fn secret() -> RecordKeySecret {
    RecordKeySecret::from_text(&"ab".repeat(32), "test").unwrap()
}

fn as_of() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 6, 30).unwrap()
}

fn import(csv: &Path, out: &Path) -> Result<Manifest, ImportError> {
    import_csv(csv, as_of(), out, &secret(), true)
}

/// The CSV as header + rows of strings.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn read(path: &Path) -> Table {
        let mut rdr = csv::Reader::from_path(path).unwrap();
        let header = rdr.headers().unwrap().iter().map(String::from).collect();
        let rows = rdr
            .records()
            .map(|r| r.unwrap().iter().map(String::from).collect())
            .collect();
        Table { header, rows }
    }

    fn col(&self, name: &str) -> usize {
        self.header.iter().position(|h| h == name).unwrap()
    }

    fn set(&mut self, row: usize, name: &str, value: &str) {
        let c = self.col(name);
        self.rows[row][c] = value.to_string();
    }

    fn drop_column(&mut self, name: &str) {
        let c = self.col(name);
        self.header.remove(c);
        for r in &mut self.rows {
            r.remove(c);
        }
    }

    fn write(&self, path: &Path) {
        let mut w = csv::Writer::from_path(path).unwrap();
        w.write_record(&self.header).unwrap();
        for r in &self.rows {
            w.write_record(r).unwrap();
        }
        w.flush().unwrap();
    }
}

/// Every file under `dir`, relative.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        out.push(e.unwrap().file_name().to_string_lossy().into_owned());
    }
    out.sort();
    out
}

fn penduduk(snap: &Snapshot) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for f in &snap.manifest.files {
        if !f.path.starts_with("penduduk/") {
            continue;
        }
        let file = std::fs::File::open(snap.dir.join(&f.path)).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            batches.push(b.unwrap());
        }
    }
    batches
}

fn strings(batches: &[RecordBatch], column: &str) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name(column)
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(String::from))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn problems(err: &ImportError) -> BTreeSet<(u64, &'static str, &'static str)> {
    match err {
        ImportError::InvalidRows { problems, .. } => problems
            .iter()
            .map(|p| (p.line, p.column, p.reason.code()))
            .collect(),
        other => panic!("expected InvalidRows, got {other:?}"),
    }
}

#[test]
fn clean_example_imports_into_a_verified_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("contoh-2026");
    let csv = sample("export-contoh.csv");
    let m = import(&csv, &out).unwrap();

    assert_eq!(m.id, "contoh-2026");
    assert_eq!(m.row_count, CLEAN_ROWS);
    assert_eq!(m.coverage, vec!["61.71".to_string()]);
    assert_eq!(m.tanggal_data, as_of());
    assert_eq!(m.schema_version, catalog::SCHEMA_VERSION);
    assert!(m.synthetic);
    assert_eq!(m.record_key.secret_fingerprint, secret().fingerprint());
    match &m.produced_by {
        Provenance::Import {
            tool,
            source_file,
            source_sha256,
            source_rows,
        } => {
            assert_eq!(tool, &format!("agregat {}", env!("CARGO_PKG_VERSION")));
            assert_eq!(source_file, "export-contoh.csv");
            assert_eq!(source_sha256, &sha256_hex(&std::fs::read(&csv).unwrap()));
            assert_eq!(*source_rows, CLEAN_ROWS);
        }
        other => panic!("unexpected provenance {other:?}"),
    }
    // Only the snapshot is left: no temporary directory.
    assert_eq!(listing(dir.path()), vec!["contoh-2026".to_string()]);

    let snap = Snapshot::open(&out, Verify::Full).unwrap();
    assert_eq!(snap.manifest, m);
    let batches = penduduk(&snap);
    assert_eq!(
        batches.iter().map(|b| b.num_rows() as u64).sum::<u64>(),
        CLEAN_ROWS
    );

    // Record keys: non-zero, unique, HMAC of the NIK.
    let niks = strings(&batches, "nik");
    let keys: Vec<u64> = batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("record_key")
                .unwrap()
                .as_primitive::<UInt64Type>()
                .values()
                .to_vec()
        })
        .collect();
    assert!(keys.iter().all(|&k| k != 0));
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len());
    let hasher = secret().hasher();
    for (nik, key) in niks.iter().zip(&keys) {
        assert_eq!(hasher.key(nik.as_deref().unwrap()), *key);
    }
    let source = Table::read(&csv);
    let source_niks: BTreeSet<String> = source
        .rows
        .iter()
        .map(|r| r[source.col("nik")].clone())
        .collect();
    let stored_niks: BTreeSet<String> = niks.iter().flatten().cloned().collect();
    assert_eq!(source_niks, stored_niks);

    // Categorical values are canonical labels, whatever the export used.
    for c in catalog::COLUMNS {
        if let Domain::CodeList { list } = c.domain {
            let l = code_list(list).unwrap();
            for v in strings(&batches, c.name) {
                let v = v.unwrap();
                assert!(l.contains_label(&v), "{}: '{v}' is not a label", c.name);
            }
        }
    }
    // The sample really does mix codes, labels and letter case.
    let agama = source.col("agama");
    assert!(source.rows.iter().any(|r| r[agama] == "1"));
    assert!(source.rows.iter().any(|r| r[agama] == "ISLAM"));
    assert!(source.rows.iter().any(|r| r[agama] == "islam"));

    // RT/RW zero-padded; regions nested; rows in region/household order.
    let rt = strings(&batches, "no_rt");
    let rw = strings(&batches, "no_rw");
    assert!(rt.iter().chain(&rw).flatten().all(|v| v.len() == 3));
    let kec = strings(&batches, "kode_kec");
    let kel = strings(&batches, "kode_kel");
    let kk = strings(&batches, "no_kk");
    let keys: Vec<_> = (0..niks.len())
        .map(|i| {
            (
                kec[i].clone(),
                kel[i].clone(),
                rw[i].clone(),
                rt[i].clone(),
                kk[i].clone(),
                niks[i].clone(),
            )
        })
        .collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "rows are not sorted");
    for (c, l) in kec.iter().zip(&kel) {
        assert!(
            l.as_ref()
                .unwrap()
                .starts_with(c.as_ref().unwrap().as_str())
        );
    }

    // Dates survive as Date32: HENDRA SAPUTRA was born on 1978-05-14.
    let names = strings(&batches, "nama_lengkap");
    let births: Vec<i32> = batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("tanggal_lahir")
                .unwrap()
                .as_primitive::<Date32Type>()
                .values()
                .to_vec()
        })
        .collect();
    let i = names
        .iter()
        .position(|n| n.as_deref() == Some("HENDRA SAPUTRA"))
        .unwrap();
    assert_eq!(
        births[i],
        agregat::generate::date_to_days(NaiveDate::from_ymd_opt(1978, 5, 14).unwrap())
    );
}

#[test]
fn damaged_example_is_rejected_whole_and_names_every_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rusak");
    let err = import(&sample("export-contoh-rusak.csv"), &out).unwrap_err();
    assert_eq!(err.category(), ErrorCategory::InvalidData);

    let expected: BTreeSet<(u64, &str, &str)> = [
        (44, "nik", "malformed_nik"),             // 15 digits
        (45, "nik", "malformed_nik"),             // kecamatan 61.71.09 does not exist
        (46, "nik", "nik_birth_date"),            // NIK says 21-07-87, tanggal_lahir 1987-07-12
        (47, "nik", "nik_sex"),                   // male NIK, jenis_kelamin PEREMPUAN
        (48, "no_kk", "malformed_kk"),            // issue date 30-02-99
        (49, "agama", "unknown_code"),            // code 9
        (50, "jenis_pekerjaan", "unknown_code"),  // label ASTRONOT
        (51, "tanggal_lahir", "impossible_date"), // 2023-02-30
        (52, "tanggal_lahir", "after_as_of"),     // 2026-08-01
        (53, "nik", "duplicate_nik"),             // same NIK as line 2
        (54, "nama_lengkap", "missing"),
        (55, "kode_kel", "region_mismatch"), // 61.71.02.1001 under kode_kec 61.71.01
        (56, "no_rt", "rt_rw"),              // 1234
    ]
    .into_iter()
    .collect();
    assert_eq!(problems(&err), expected);

    let ImportError::InvalidRows {
        problems,
        total,
        rows,
        bad_rows,
        ..
    } = &err
    else {
        unreachable!()
    };
    assert_eq!((*total, *rows, *bad_rows), (13, 55, 13));
    let at = |line: u64| problems.iter().find(|p| p.line == line).unwrap();
    assert_eq!(
        at(44).reason,
        RowReason::MalformedNik(NumberDefect::Length { found: 15 })
    );
    assert_eq!(
        at(45).reason,
        RowReason::MalformedNik(NumberDefect::UnknownKecamatan {
            code: "61.71.09".into()
        })
    );
    assert_eq!(at(53).reason, RowReason::DuplicateNik { first_line: 2 });
    assert_eq!(at(51).value, "2023-02-30");
    assert_eq!(at(50).value, "ASTRONOT");

    // The message names each line and value, and says how to fix it.
    let msg = err.to_string();
    for line in 44..=56 {
        assert!(
            msg.contains(&format!("line {line}, ")),
            "line {line}: {msg}"
        );
    }
    for value in [
        "617101120492001",
        "2023-02-30",
        "ASTRONOT",
        "1234",
        "2026-08-01",
    ] {
        assert!(msg.contains(&format!("'{value}'")), "{value}: {msg}");
    }
    assert!(msg.contains("nothing was written"), "{msg}");
    assert!(msg.contains("line 2 already has this NIK"), "{msg}");
    assert!(msg.contains("e.g. 6171014505900001"), "{msg}");
    assert!(msg.contains("1=ISLAM"), "{msg}");
    assert!(!msg.contains("more problems"), "{msg}");

    // Nothing written, and no temporary directory left behind.
    assert!(!out.exists());
    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[test]
fn header_missing_a_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Table::read(&sample("export-contoh.csv"));
    t.drop_column("golongan_darah");
    let csv = dir.path().join("export.csv");
    t.write(&csv);
    let err = import(&csv, &dir.path().join("out")).unwrap_err();
    match &err {
        ImportError::Header {
            missing, unknown, ..
        } => {
            assert_eq!(missing, &vec!["golongan_darah"]);
            assert!(unknown.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("missing column(s) golongan_darah"), "{msg}");
    assert!(msg.contains("in any order"), "{msg}");
    assert_eq!(err.category(), ErrorCategory::InvalidData);
    assert_eq!(listing(dir.path()), vec!["export.csv".to_string()]);
}

#[test]
fn unknown_header_columns_are_named_with_suggestions() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Table::read(&sample("export-contoh.csv"));
    t.header.push("hobi".into());
    t.header.push("record_key".into());
    let c = t.col("tanggal_lahir");
    t.header[c] = "tanggal lahir".into();
    for r in &mut t.rows {
        r.push("MEMBACA".into());
        r.push("123".into());
    }
    let csv = dir.path().join("export.csv");
    t.write(&csv);
    let err = import(&csv, &dir.path().join("out")).unwrap_err();
    let ImportError::Header {
        missing, unknown, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(missing, &vec!["tanggal_lahir"]);
    let names: Vec<&str> = unknown.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, vec!["tanggal lahir", "hobi", "record_key"]);
    assert_eq!(unknown[0].suggestion, Some("tanggal_lahir"));
    let msg = err.to_string();
    assert!(msg.contains("'hobi'"), "{msg}");
    assert!(msg.contains("did you mean 'tanggal_lahir'?"), "{msg}");
    assert!(msg.contains("derived on import"), "{msg}");
}

#[test]
fn duplicate_nik_names_both_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Table::read(&sample("export-contoh.csv"));
    let copy = t.rows[4].clone(); // line 6
    t.rows.push(copy); // line 44
    let csv = dir.path().join("export.csv");
    t.write(&csv);
    let err = import(&csv, &dir.path().join("out")).unwrap_err();
    let expected: BTreeSet<_> = [(44, "nik", "duplicate_nik")].into_iter().collect();
    assert_eq!(problems(&err), expected);
    let msg = err.to_string();
    assert!(
        msg.contains("line 44, nik = '") && msg.contains("line 6 already has this NIK"),
        "{msg}"
    );
}

#[test]
fn column_order_header_case_and_code_or_label_do_not_change_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let a = import(&sample("export-contoh.csv"), &dir.path().join("a")).unwrap();

    // Reverse the columns, upper-case the header, and write every
    // categorical value as its label.
    let mut t = Table::read(&sample("export-contoh.csv"));
    for (i, name) in t.header.clone().iter().enumerate() {
        let list = catalog::column(name).and_then(|c| match c.domain {
            Domain::CodeList { list } => code_list(list),
            _ => None,
        });
        if let Some(list) = list {
            for r in &mut t.rows {
                r[i] = list.resolve(&r[i]).unwrap().to_string();
            }
        }
    }
    t.header = t.header.iter().map(|h| h.to_uppercase()).rev().collect();
    for r in &mut t.rows {
        r.reverse();
    }
    let csv = dir.path().join("export-labels.csv");
    t.write(&csv);
    let b = import(&csv, &dir.path().join("b")).unwrap();

    let data = |m: &Manifest| -> Vec<(String, String)> {
        m.files
            .iter()
            .filter(|f| f.path.starts_with("penduduk/"))
            .map(|f| (f.path.clone(), f.sha256.clone()))
            .collect()
    };
    assert_eq!(data(&a), data(&b));
    assert_eq!(a.row_count, b.row_count);
}

#[test]
fn several_kab_kota_make_one_partition_each() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Table::read(&sample("export-contoh.csv"));
    // A Singkawang resident: NIK and KK from a Singkawang kecamatan.
    t.rows.push(t.rows[16].clone()); // AGUS SETIAWAN, who lives alone
    let n = t.rows.len() - 1;
    let birth = t.rows[n][t.col("tanggal_lahir")].clone();
    assert_eq!(birth, "1990-10-10");
    t.set(n, "nik", "6172011010909001");
    t.set(n, "no_kk", "6172010101209001");
    t.set(n, "nama_lengkap", "KURNIA SANTOSO");
    t.set(n, "kode_kab", "61.72");
    t.set(n, "kode_kec", "61.72.01");
    t.set(n, "kode_kel", "61.72.01.1002");
    let csv = dir.path().join("export.csv");
    t.write(&csv);
    let m = import(&csv, &dir.path().join("dua")).unwrap();
    assert_eq!(m.coverage, vec!["61.71".to_string(), "61.72".to_string()]);
    assert_eq!(m.row_count, CLEAN_ROWS + 1);
    let parts: Vec<&str> = m
        .files
        .iter()
        .filter(|f| f.path.starts_with("penduduk/"))
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(
        parts,
        vec![
            "penduduk/kode_kab=61.71/part-0000.parquet",
            "penduduk/kode_kab=61.72/part-0000.parquet"
        ]
    );
    Snapshot::open(&dir.path().join("dua"), Verify::Full).unwrap();
}

#[test]
fn the_message_is_capped_at_50_problems() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Table::read(&sample("export-contoh.csv"));
    for i in 0..t.rows.len() {
        t.set(i, "agama", "SHINTO");
        t.set(i, "golongan_darah", "Z");
    }
    let csv = dir.path().join("export.csv");
    t.write(&csv);
    let err = import(&csv, &dir.path().join("out")).unwrap_err();
    let ImportError::InvalidRows {
        problems, total, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*total, 84);
    assert_eq!(problems.len(), 84);
    let msg = err.to_string();
    assert_eq!(msg.lines().filter(|l| l.starts_with("  line ")).count(), 50);
    assert!(msg.ends_with("... and 34 more problems"), "{msg}");
}

#[test]
fn file_level_problems() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };

    let err = import(&dir.path().join("tidak-ada.csv"), &out).unwrap_err();
    assert!(matches!(err, ImportError::Unreadable { .. }), "{err:?}");
    assert_eq!(err.category(), ErrorCategory::Usage);
    assert!(err.to_string().contains("tidak-ada.csv"), "{err}");

    let err = import(&write("kosong.csv", b"\n  \n"), &out).unwrap_err();
    assert!(matches!(err, ImportError::Empty { .. }), "{err:?}");
    assert!(err.to_string().contains("header line"), "{err}");

    let clean = std::fs::read_to_string(sample("export-contoh.csv")).unwrap();
    let header = clean.lines().next().unwrap();
    let err = import(&write("header.csv", format!("{header}\n").as_bytes()), &out).unwrap_err();
    assert!(matches!(err, ImportError::NoRows { .. }), "{err:?}");

    // Latin-1 'é' on line 3.
    let mut bytes = clean.as_bytes().to_vec();
    let second_newline = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .unwrap()
        .0;
    bytes.insert(second_newline + 20, 0xE9);
    let err = import(&write("latin1.csv", &bytes), &out).unwrap_err();
    match &err {
        ImportError::NotUtf8 { line, byte, .. } => assert_eq!((*line, *byte), (3, 0xE9)),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("UTF-8"), "{err}");

    let semicolons = header.replace(',', ";");
    let err = import(
        &write("semicolon.csv", format!("{semicolons}\n").as_bytes()),
        &out,
    )
    .unwrap_err();
    assert!(err.to_string().contains("semicolon"), "{err}");

    // A byte-order mark is accepted.
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(clean.as_bytes());
    let m = import(&write("bom.csv", &bom), &out).unwrap();
    assert_eq!(m.row_count, CLEAN_ROWS);

    // The destination already exists now: refused before validation.
    let err = import(&sample("export-contoh.csv"), &out).unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::Snapshot(SnapshotError::OutputExists { .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.category(), ErrorCategory::Usage);
}

#[test]
fn a_short_row_is_reported_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = std::fs::read_to_string(sample("export-contoh.csv")).unwrap();
    text.push_str("6171011203150001,6171011405780099,ORANG\n");
    let csv = dir.path().join("export.csv");
    std::fs::write(&csv, text).unwrap();
    let err = import(&csv, &dir.path().join("out")).unwrap_err();
    let expected: BTreeSet<_> = [(44, "*", "field_count")].into_iter().collect();
    assert_eq!(problems(&err), expected);
    assert!(
        err.to_string().contains("3 fields but the header has 33"),
        "{err}"
    );
}
