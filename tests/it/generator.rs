//! End-to-end tests of the synthetic generator: generate real snapshots on
//! disk, read the Parquet back, and check what a demographer would check.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use agregat::catalog;
use agregat::generate::{GenerateOptions, age_on, date_to_days, days_to_date, generate};
use agregat::record_key::RecordKeySecret;
use agregat::warehouse::{Manifest, Snapshot, SnapshotError, Verify};
use chrono::Datelike;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Date32Type, UInt64Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn secret() -> RecordKeySecret {
    RecordKeySecret::from_text(&"5a".repeat(32), "test").unwrap()
}

fn make(dir: &Path, region: &str, people: u64, seed: u64) -> Manifest {
    let opts = GenerateOptions::new(
        region,
        Some(people),
        seed,
        "2026-06-30".parse().unwrap(),
        dir.to_path_buf(),
    );
    generate(&opts, &secret()).unwrap()
}

/// One person, as read back from Parquet.
#[derive(Debug, Clone)]
struct P {
    no_kk: String,
    nik: String,
    jk: String,
    lahir: i32,
    agama: String,
    kawin: String,
    shk: String,
    cacat: String,
    pendidikan: String,
    pekerjaan: String,
    nik_ibu: Option<String>,
    alamat: String,
    rt: String,
    rw: String,
    kec: String,
    kel: String,
    kab: String,
    record_key: u64,
}

fn read_people(snap: &Snapshot) -> Vec<P> {
    let mut out = Vec::new();
    for f in snap
        .manifest
        .files
        .iter()
        .filter(|f| f.path.starts_with("penduduk/"))
    {
        let kab = f
            .path
            .split('/')
            .nth(1)
            .unwrap()
            .trim_start_matches("kode_kab=")
            .to_string();
        let file = std::fs::File::open(snap.dir.join(&f.path)).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let b: RecordBatch = batch.unwrap();
            let s = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
            let (kk, nik, jk, agama, kawin, shk, cacat, pend, kerja, ibu, alamat, rt, rw, kec, kel) = (
                s("no_kk"),
                s("nik"),
                s("jenis_kelamin"),
                s("agama"),
                s("status_perkawinan"),
                s("status_hubungan_keluarga"),
                s("penyandang_cacat"),
                s("pendidikan_terakhir"),
                s("jenis_pekerjaan"),
                s("nik_ibu"),
                s("alamat"),
                s("no_rt"),
                s("no_rw"),
                s("kode_kec"),
                s("kode_kel"),
            );
            let lahir = b
                .column_by_name("tanggal_lahir")
                .unwrap()
                .as_primitive::<Date32Type>()
                .clone();
            let rk = b
                .column_by_name("record_key")
                .unwrap()
                .as_primitive::<UInt64Type>()
                .clone();
            for i in 0..b.num_rows() {
                out.push(P {
                    no_kk: kk.value(i).into(),
                    nik: nik.value(i).into(),
                    jk: jk.value(i).into(),
                    lahir: lahir.value(i),
                    agama: agama.value(i).into(),
                    kawin: kawin.value(i).into(),
                    shk: shk.value(i).into(),
                    cacat: cacat.value(i).into(),
                    pendidikan: pend.value(i).into(),
                    pekerjaan: kerja.value(i).into(),
                    nik_ibu: (!ibu.is_null(i)).then(|| ibu.value(i).to_string()),
                    alamat: alamat.value(i).into(),
                    rt: rt.value(i).into(),
                    rw: rw.value(i).into(),
                    kec: kec.value(i).into(),
                    kel: kel.value(i).into(),
                    kab: kab.clone(),
                    record_key: rk.value(i),
                });
            }
        }
    }
    out
}

fn as_of() -> i32 {
    date_to_days("2026-06-30".parse().unwrap())
}

/// The shared Pontianak snapshot of these tests (20,000 people).
fn pontianak() -> (tempfile::TempDir, Snapshot, Vec<P>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dkb-2026-s1");
    make(&dir, "61.71", 20_000, 42);
    let snap = Snapshot::open(&dir, Verify::Full).unwrap();
    let people = read_people(&snap);
    (tmp, snap, people)
}

#[test]
fn every_nik_and_kk_is_well_formed_and_unique() {
    let (_tmp, snap, people) = pontianak();
    assert_eq!(people.len(), 20_000);
    assert_eq!(snap.manifest.row_count, 20_000);
    let regions = catalog::regions();
    let mut niks = HashSet::new();
    let mut keys = HashSet::new();
    for p in &people {
        assert_eq!(p.nik.len(), 16, "{p:?}");
        assert!(p.nik.bytes().all(|b| b.is_ascii_digit()), "{p:?}");
        // Region: the kecamatan of (first) registration, which exists.
        let kec = format!("{}.{}.{}", &p.nik[0..2], &p.nik[2..4], &p.nik[4..6]);
        assert!(regions.get(&kec).is_some(), "{p:?}");
        assert_eq!(kec, p.kec);
        // Birth date, with 40 added to the day for women.
        let d = days_to_date(p.lahir);
        let day: u32 = p.nik[6..8].parse().unwrap();
        let female = p.jk == "PEREMPUAN";
        assert_eq!(day, d.day() + if female { 40 } else { 0 }, "{p:?}");
        assert_eq!(p.nik[8..10].parse::<u32>().unwrap(), d.month());
        assert_eq!(p.nik[10..12].parse::<i32>().unwrap(), d.year() % 100);
        assert_ne!(&p.nik[12..], "0000");
        assert!(niks.insert(p.nik.clone()), "duplicate NIK {}", p.nik);
        assert!(keys.insert(p.record_key), "duplicate record key");
        // KK: kecamatan digits, a real issue date, a serial.
        assert_eq!(p.no_kk.len(), 16);
        assert_eq!(&p.no_kk[..6], &p.nik[..6]);
        let (dd, mm, yy): (u32, u32, i32) = (
            p.no_kk[6..8].parse().unwrap(),
            p.no_kk[8..10].parse().unwrap(),
            p.no_kk[10..12].parse().unwrap(),
        );
        assert!(
            chrono::NaiveDate::from_ymd_opt(2000 + yy, mm, dd).is_some(),
            "{}",
            p.no_kk
        );
        assert!(p.kel.starts_with(&format!("{}.", p.kec)));
        assert_eq!(p.kab, "61.71");
    }
}

#[test]
fn households_are_consistent() {
    let (_tmp, _snap, people) = pontianak();
    let mut hh: HashMap<&str, Vec<&P>> = HashMap::new();
    for p in &people {
        hh.entry(&p.no_kk).or_default().push(p);
    }
    let sizes: Vec<usize> = hh.values().map(Vec::len).collect();
    let mean = people.len() as f64 / hh.len() as f64;
    assert!((3.2..=3.8).contains(&mean), "mean household size {mean}");
    assert!(sizes.iter().filter(|&&s| s == 1).count() as f64 / hh.len() as f64 > 0.05);
    let by_nik: HashMap<&str, &P> = people.iter().map(|p| (p.nik.as_str(), p)).collect();
    let mut cut = 0;
    for members in hh.values() {
        let heads: Vec<_> = members
            .iter()
            .filter(|p| p.shk == "KEPALA KELUARGA")
            .collect();
        if heads.len() != 1 {
            // Only the last household of a kelurahan may be cut short.
            cut += 1;
            continue;
        }
        let head = heads[0];
        let spouses: Vec<_> = members
            .iter()
            .filter(|p| p.shk == "ISTRI" || p.shk == "SUAMI")
            .collect();
        assert!(spouses.len() <= 1);
        for s in &spouses {
            assert_eq!(s.kawin, "KAWIN");
            assert_eq!(head.kawin, "KAWIN");
            assert_ne!(s.jk, head.jk);
            assert_eq!(s.shk == "ISTRI", s.jk == "PEREMPUAN");
        }
        for m in members.iter() {
            assert_eq!(
                (&m.kel, &m.rt, &m.rw, &m.alamat),
                (&head.kel, &head.rt, &head.rw, &head.alamat)
            );
            assert_eq!(m.agama, head.agama, "a household shares its religion");
            if m.shk == "ANAK" {
                assert!(
                    m.lahir
                        > head
                            .lahir
                            .min(spouses.first().map_or(i32::MAX, |s| s.lahir))
                );
                if let Some(mother) = m.nik_ibu.as_deref().and_then(|n| by_nik.get(n)) {
                    assert_eq!(mother.jk, "PEREMPUAN");
                    let gap = age_on(mother.lahir, m.lahir);
                    assert!((14..=50).contains(&gap), "mother {gap} years older");
                }
            }
        }
    }
    assert!(cut <= 29, "{cut} households without exactly one head");
}

#[test]
fn age_pyramid_sex_ratio_and_religion_match_targets() {
    let (_tmp, _snap, people) = pontianak();
    let n = people.len() as f64;
    let ages: Vec<i32> = people.iter().map(|p| age_on(p.lahir, as_of())).collect();
    let share = |lo: i32, hi: i32| ages.iter().filter(|&&a| a >= lo && a <= hi).count() as f64 / n;
    let (young, old) = (share(0, 14), share(65, 200));
    assert!((0.21..=0.27).contains(&young), "0-14: {young:.3}");
    assert!((0.05..=0.09).contains(&old), "65+: {old:.3}");
    // The student bulge of a city: 20-24 outnumbers 25-29 and 15-19.
    assert!(
        share(20, 24) > share(25, 29),
        "20-24 {:.3} vs 25-29 {:.3}",
        share(20, 24),
        share(25, 29)
    );
    assert!(ages.iter().all(|&a| (0..=100).contains(&a)));

    // Sex ratio from the reference file: 343,257 men of 687,031.
    let men = people.iter().filter(|p| p.jk == "LAKI-LAKI").count() as f64 / n;
    let target = 343_257.0 / 687_031.0;
    assert!(
        (men - target).abs() < 0.015,
        "male share {men:.3}, target {target:.3}"
    );

    let rel = |r: &str| people.iter().filter(|p| p.agama == r).count() as f64 / n;
    assert!(
        (rel("ISLAM") - 0.745).abs() < 0.03,
        "Islam {:.3}",
        rel("ISLAM")
    );
    assert!(
        (rel("BUDHA") - 0.12).abs() < 0.02,
        "Budha {:.3}",
        rel("BUDHA")
    );
    assert!(((rel("KRISTEN") + rel("KATHOLIK")) - 0.11).abs() < 0.02);
    assert!((rel("KHONGHUCU") - 0.013).abs() < 0.007);

    let disabled = people.iter().filter(|p| p.cacat != "TIDAK CACAT").count() as f64 / n;
    assert!(
        (0.01..=0.02).contains(&disabled),
        "disability {disabled:.4}"
    );
}

#[test]
fn education_occupation_and_marital_status_fit_age() {
    let (_tmp, _snap, people) = pontianak();
    for p in &people {
        let age = age_on(p.lahir, as_of());
        let degree = [
            "DIPLOMA I/II",
            "AKADEMI/DIPLOMA III/S. MUDA",
            "DIPLOMA IV/STRATA I",
            "STRATA II",
            "STRATA III",
        ]
        .contains(&p.pendidikan.as_str());
        if age < 19 {
            assert!(!degree, "{age}-year-old with {}", p.pendidikan);
        }
        if age < 7 {
            assert_eq!(p.pendidikan, "TIDAK/BELUM SEKOLAH");
        }
        if (7..=18).contains(&age) {
            assert_eq!(p.pekerjaan, "PELAJAR/MAHASISWA", "{age}");
        }
        if age < 17 {
            assert_eq!(p.kawin, "BELUM KAWIN", "{age}");
        }
        if p.pekerjaan == "PENSIUNAN" {
            assert!(age >= 58);
        }
        if ["GURU", "DOKTER", "DOSEN"].contains(&p.pekerjaan.as_str()) {
            assert!(degree, "{} with {}", p.pekerjaan, p.pendidikan);
        }
        for (col, v) in [
            ("agama", &p.agama),
            ("status_perkawinan", &p.kawin),
            ("status_hubungan_keluarga", &p.shk),
            ("penyandang_cacat", &p.cacat),
            ("pendidikan_terakhir", &p.pendidikan),
            ("jenis_pekerjaan", &p.pekerjaan),
        ] {
            assert!(
                catalog::code_list(col).unwrap().contains_label(v),
                "{col}={v}"
            );
        }
    }
}

#[test]
fn same_seed_same_bytes_and_other_seed_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = make(&tmp.path().join("a"), "61.71.01", 3_000, 9);
    let b = make(&tmp.path().join("b"), "61.71.01", 3_000, 9);
    let c = make(&tmp.path().join("c"), "61.71.01", 3_000, 10);
    let sums = |m: &Manifest| {
        m.files
            .iter()
            .map(|f| (f.path.clone(), f.sha256.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(sums(&a), sums(&b));
    assert_ne!(sums(&a), sums(&c));
}

#[test]
fn a_province_has_one_partition_per_kab_kota() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kalbar");
    let m = make(&dir, "61", 30_000, 1);
    let kabs: HashSet<&str> = m
        .files
        .iter()
        .filter(|f| f.path.starts_with("penduduk/"))
        .map(|f| f.path.split('/').nth(1).unwrap())
        .collect();
    assert_eq!(kabs.len(), 14);
    let snap = Snapshot::open(&dir, Verify::Full).unwrap();
    let people = read_people(&snap);
    assert_eq!(people.len(), 30_000);
    // Kalimantan Barat outside Pontianak is mostly rural and more Catholic.
    let katolik = people.iter().filter(|p| p.agama == "KATHOLIK").count() as f64 / 30_000.0;
    assert!(katolik > 0.12, "{katolik}");
}

fn fresh_snapshot() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dkb-2026-s1");
    make(&dir, "61.71.05", 2_000, 3);
    (tmp, dir)
}

fn data_file(dir: &Path) -> std::path::PathBuf {
    dir.join("penduduk/kode_kab=61.71/part-0000.parquet")
}

#[test]
fn a_flipped_byte_is_caught_and_named() {
    let (_tmp, dir) = fresh_snapshot();
    let path = data_file(&dir);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let err = Snapshot::open(&dir, Verify::Full).unwrap_err();
    assert!(
        matches!(err, SnapshotError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("penduduk/kode_kab=61.71/part-0000.parquet"),
        "{err}"
    );
}

#[test]
fn missing_truncated_and_unlisted_files_are_caught() {
    let (_tmp, dir) = fresh_snapshot();
    let path = data_file(&dir);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = Snapshot::open(&dir, Verify::Structure).unwrap_err();
    assert!(matches!(err, SnapshotError::SizeMismatch { .. }), "{err:?}");

    std::fs::write(&path, &bytes).unwrap();
    Snapshot::open(&dir, Verify::Full).unwrap();
    std::fs::write(dir.join("penduduk/kode_kab=61.71/extra.parquet"), &bytes).unwrap();
    let err = Snapshot::open(&dir, Verify::Full).unwrap_err();
    assert!(err.to_string().contains("extra.parquet"), "{err}");
    assert!(matches!(err, SnapshotError::UnlistedFile { .. }));

    std::fs::remove_file(dir.join("penduduk/kode_kab=61.71/extra.parquet")).unwrap();
    std::fs::remove_file(&path).unwrap();
    let err = Snapshot::open(&dir, Verify::Full).unwrap_err();
    assert!(matches!(err, SnapshotError::FileMissing { .. }), "{err:?}");
}

#[test]
fn schema_drift_is_caught_even_with_a_matching_checksum() {
    let (_tmp, dir) = fresh_snapshot();
    // Replace the reference code list with a file of another schema, and
    // update the manifest so only the schema check can notice.
    let rel = "referensi/kode_referensi.parquet";
    let wilayah = std::fs::read(dir.join("referensi/wilayah.parquet")).unwrap();
    std::fs::write(dir.join(rel), &wilayah).unwrap();
    let mpath = dir.join("manifest.json");
    let mut m: Manifest = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    let w = m
        .files
        .iter()
        .find(|f| f.path == "referensi/wilayah.parquet")
        .unwrap()
        .clone();
    let e = m.files.iter_mut().find(|f| f.path == rel).unwrap();
    e.bytes = w.bytes;
    e.sha256 = w.sha256;
    e.rows = w.rows;
    std::fs::write(&mpath, serde_json::to_string(&m).unwrap()).unwrap();
    let err = Snapshot::open(&dir, Verify::Full).unwrap_err();
    assert!(matches!(err, SnapshotError::SchemaDrift { .. }), "{err:?}");
    assert!(err.to_string().contains(rel), "{err}");
}

#[test]
fn existing_output_is_never_overwritten() {
    let (_tmp, dir) = fresh_snapshot();
    let opts = GenerateOptions::new(
        "61.71.05",
        Some(10),
        1,
        "2026-06-30".parse().unwrap(),
        dir.clone(),
    );
    let err = generate(&opts, &secret()).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    Snapshot::open(&dir, Verify::Full).unwrap();
}

#[test]
#[ignore]
fn print_pyramid() {
    let (_tmp, _snap, people) = pontianak();
    let n = people.len() as f64;
    let ages: Vec<i32> = people.iter().map(|p| age_on(p.lahir, as_of())).collect();
    for lo in (0..100).step_by(5) {
        let c = ages.iter().filter(|&&a| a >= lo && a < lo + 5).count() as f64 / n;
        eprintln!(
            "{lo:3}-{:3}: {:5.2}% {}",
            lo + 4,
            c * 100.0,
            "#".repeat((c * 300.0) as usize)
        );
    }
}
