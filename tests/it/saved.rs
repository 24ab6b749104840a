//! Saved queries (`queries/*.sql`): every shipped query renders with its
//! defaults and passes the same gate as ad-hoc SQL on the sample; bad
//! parameter values and bad files give typed errors naming what is wrong.

use crate::common;

use std::path::Path;
use std::sync::OnceLock;

use agregat::agreement::Agreement;
use agregat::catalog::RegionScope;
use agregat::query::QueryResult;
use agregat::release::run_query;
use agregat::saved::{ParamKind, SavedError, SavedQueries, SavedQuery};
use serde_json::{Map, Value, json};

use common::sample as fixture;

fn queries() -> &'static SavedQueries {
    static Q: OnceLock<SavedQueries> = OnceLock::new();
    Q.get_or_init(|| SavedQueries::load_dir(Path::new("queries")).unwrap())
}

fn agreement() -> Agreement {
    Agreement::unrestricted("t", RegionScope::parse("61.71").unwrap())
}

fn params(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn query(name: &str) -> &'static SavedQuery {
    queries()
        .get(name)
        .unwrap_or_else(|| panic!("queries/{name}.sql missing"))
}

fn run(name: &str, p: Value) -> QueryResult {
    let sql = query(name).render(&params(p)).unwrap();
    let f = fixture();
    f.rt.block_on(run_query(&f.engine, &agreement(), &sql))
        .unwrap_or_else(|e| panic!("{name}: {e}\n{sql}"))
}

fn render_err(name: &str, p: Value) -> SavedError {
    match query(name).render(&params(p)) {
        Ok(sql) => panic!("{name} rendered:\n{sql}"),
        Err(e) => e,
    }
}

const KECAMATAN: usize = 6;
const KELURAHAN: usize = 29;
/// Kelurahan of kecamatan 61.71.01 (Pontianak Selatan).
const KELURAHAN_0101: usize = 5;

#[test]
fn loads_all_shipped_queries() {
    let q = queries();
    let names: Vec<&str> = q.iter().map(|q| q.name.as_str()).collect();
    for n in [
        "usia_sekolah",
        "piramida_penduduk",
        "wajib_ktp",
        "jumlah_keluarga",
        "usia_kerja_pendidikan",
    ] {
        assert!(names.contains(&n), "{n} not in {names:?}");
    }
    for sq in q.iter() {
        assert!(
            !sq.title.is_empty() && !sq.description.is_empty(),
            "{}",
            sq.name
        );
        assert!(!sq.elements.is_empty(), "{}", sq.name);
    }
    let us = query("usia_sekolah");
    let names: Vec<&str> = us.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["tahun_ajaran", "kecamatan"], "params in file order");
    assert_eq!(
        us.params[0].kind,
        ParamKind::Integer {
            min: Some(2020),
            max: Some(2035)
        }
    );
    assert_eq!(us.params[0].default, Some(json!(2026)));
    assert!(us.params[1].optional);
    // The listing a GET /v1/queries would return.
    let listing = serde_json::to_value(q.iter().collect::<Vec<_>>()).unwrap();
    let us = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "usia_sekolah")
        .unwrap();
    let first = &us["params"][0];
    assert_eq!(first["type"], "integer");
    assert_eq!(first["min"], 2020);
    assert_eq!(first["default"], 2026);
    assert_eq!(us["params"][1]["level"], "kecamatan");
    assert!(us.get("sql_template").is_none());
    assert!(matches!(
        q.require("tidak_ada"),
        Err(SavedError::UnknownQuery { .. })
    ));
}

#[test]
fn usia_sekolah_grid() {
    // 29 kelurahan x 2 sexes x ages 5..=18; the band follows the age.
    let r = run("usia_sekolah", json!({}));
    assert_eq!(r.num_rows(), KELURAHAN * 2 * 14);
    let sql = query("usia_sekolah")
        .render(&params(
            json!({"tahun_ajaran": 2027, "kecamatan": "61.71.01"}),
        ))
        .unwrap();
    assert!(sql.contains("DATE '2027-07-01'"), "{sql}");
    assert!(sql.contains("kode_kec = '61.71.01'"), "{sql}");
    let r = run(
        "usia_sekolah",
        json!({"tahun_ajaran": 2027, "kecamatan": "61.71.01"}),
    );
    assert_eq!(r.num_rows(), KELURAHAN_0101 * 2 * 14);
    // Explicit null means "not given".
    let r = run("usia_sekolah", json!({"kecamatan": null}));
    assert_eq!(r.num_rows(), KELURAHAN * 2 * 14);
}

#[test]
fn piramida_grid() {
    let r = run("piramida_penduduk", json!({}));
    assert_eq!(r.num_rows(), KECAMATAN * 16 * 2);
    let r = run(
        "piramida_penduduk",
        json!({"tanggal": "2026-07-01", "kecamatan": "61.71.02"}),
    );
    assert_eq!(r.num_rows(), 16 * 2);
    let sql = query("piramida_penduduk")
        .render(&params(json!({"tanggal": "2026-07-01"})))
        .unwrap();
    assert!(
        sql.contains("umur_pada(tanggal_lahir, DATE '2026-07-01')")
            && !sql.contains("umur(tanggal_lahir)"),
        "{sql}"
    );
    let e = render_err("piramida_penduduk", json!({"tanggal": "2026-07-15"}));
    assert!(
        matches!(&e, SavedError::NotAllowed { param, .. } if param == "tanggal"),
        "{e}"
    );
    assert!(e.to_string().contains("first day of a month"), "{e}");
    let e = render_err("piramida_penduduk", json!({"tanggal": "1 Juli 2026"}));
    assert!(matches!(e, SavedError::WrongType { .. }), "{e}");
    let e = render_err("piramida_penduduk", json!({"tanggal": "1980-01-01"}));
    assert!(matches!(e, SavedError::OutOfRange { .. }), "{e}");
}

#[test]
fn wajib_ktp_grid() {
    assert_eq!(run("wajib_ktp", json!({})).num_rows(), KELURAHAN);
}

#[test]
fn jumlah_keluarga_grid() {
    assert_eq!(run("jumlah_keluarga", json!({})).num_rows(), KELURAHAN);
    assert_eq!(
        run("jumlah_keluarga", json!({"kecamatan": "61.71.01"})).num_rows(),
        KELURAHAN_0101
    );
}

#[test]
fn usia_kerja_pendidikan_grid() {
    // 10 education levels, 10 five-year bands from 15-19 to 60-64.
    let r = run("usia_kerja_pendidikan", json!({}));
    assert_eq!(r.num_rows(), KECAMATAN * 10 * 2 * 10);
    // Code-list strings resolve case-insensitively to the canonical label.
    let sql = query("usia_kerja_pendidikan")
        .render(&params(json!({"jenis_kelamin": "perempuan"})))
        .unwrap();
    assert!(sql.contains("jenis_kelamin = 'PEREMPUAN'"), "{sql}");
    let r = run(
        "usia_kerja_pendidikan",
        json!({"jenis_kelamin": "PEREMPUAN"}),
    );
    assert_eq!(r.num_rows(), KECAMATAN * 10 * 10);
    let e = render_err("usia_kerja_pendidikan", json!({"jenis_kelamin": "WANITA"}));
    assert!(
        matches!(&e, SavedError::NotAllowed { param, value, .. } if param == "jenis_kelamin" && value.contains("WANITA")),
        "{e}"
    );
    assert!(e.to_string().contains("PEREMPUAN"), "lists accepted: {e}");
}

#[test]
fn wrong_type_is_rejected() {
    for bad in [
        json!("2026"),
        json!(2026.5),
        json!(2026.0),
        json!(true),
        json!([2026]),
    ] {
        let e = render_err("usia_sekolah", json!({ "tahun_ajaran": bad }));
        match &e {
            SavedError::WrongType {
                param,
                value,
                expected,
            } => {
                assert_eq!(param, "tahun_ajaran");
                assert_eq!(value, &bad.to_string());
                assert!(expected.contains("integer"), "{e}");
            }
            _ => panic!("{bad}: {e}"),
        }
        assert!(e.to_string().contains("tahun_ajaran"), "{e}");
    }
    let e = render_err("usia_sekolah", json!({"kecamatan": 6171}));
    assert!(
        matches!(&e, SavedError::WrongType { param, .. } if param == "kecamatan"),
        "{e}"
    );
}

#[test]
fn out_of_range_year_is_rejected() {
    let e = render_err("usia_sekolah", json!({"tahun_ajaran": 1990}));
    match &e {
        SavedError::OutOfRange {
            param,
            value,
            accepted,
        } => {
            assert_eq!(param, "tahun_ajaran");
            assert_eq!(value, "1990");
            assert_eq!(accepted, "2020 to 2035");
        }
        _ => panic!("{e}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("tahun_ajaran") && msg.contains("1990") && msg.contains("2020 to 2035"));
    assert!(matches!(
        render_err("usia_sekolah", json!({"tahun_ajaran": -5})),
        SavedError::OutOfRange { .. }
    ));
}

#[test]
fn unknown_kecamatan_is_rejected() {
    let e = render_err("usia_sekolah", json!({"kecamatan": "61.71.09"}));
    match &e {
        SavedError::UnknownRegion { param, value, .. } => {
            assert_eq!(param, "kecamatan");
            assert_eq!(value, "\"61.71.09\"");
        }
        _ => panic!("{e}"),
    }
    // The catalog's hint lists the kecamatan that do exist.
    assert!(e.to_string().contains("61.71.01"), "{e}");
}

#[test]
fn region_of_wrong_level_is_rejected() {
    for (code, actual) in [
        ("61.71", "kabkota"),
        ("61.71.01.1002", "desa"),
        ("61", "provinsi"),
    ] {
        let e = render_err("usia_sekolah", json!({ "kecamatan": code }));
        match &e {
            SavedError::WrongRegionLevel {
                param,
                actual: a,
                expected,
                ..
            } => {
                assert_eq!(param, "kecamatan");
                assert_eq!(a, actual);
                assert_eq!(expected, "kecamatan");
            }
            _ => panic!("{code}: {e}"),
        }
        assert!(e.to_string().contains(code), "{e}");
    }
}

#[test]
fn unknown_parameter_is_rejected() {
    let e = render_err("usia_sekolah", json!({"tahun": 2026}));
    match &e {
        SavedError::UnknownParameter {
            query,
            param,
            accepted,
        } => {
            assert_eq!(query, "usia_sekolah");
            assert_eq!(param, "tahun");
            assert_eq!(accepted, &["tahun_ajaran", "kecamatan"]);
        }
        _ => panic!("{e}"),
    }
    assert!(e.to_string().contains("tahun_ajaran, kecamatan"), "{e}");
}

#[test]
fn injection_is_rejected_by_validation() {
    for attempt in [
        "61.71.01' OR 1=1 --",
        "61.71.01'; DROP TABLE penduduk; --",
        "61.71.01 ",
        "'61.71.01'",
    ] {
        let e = render_err("usia_sekolah", json!({ "kecamatan": attempt }));
        assert!(
            matches!(&e, SavedError::UnknownRegion { param, .. } if param == "kecamatan"),
            "{attempt}: {e}"
        );
    }
    let e = render_err(
        "usia_kerja_pendidikan",
        json!({"jenis_kelamin": "PEREMPUAN' OR '1'='1"}),
    );
    assert!(matches!(e, SavedError::NotAllowed { .. }), "{e}");
}

fn bad_file(name: &str, text: &str) -> SavedError {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{name}.sql")), text).unwrap();
    let e = SavedQueries::load_dir(dir.path()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("{name}.sql")),
        "names the file: {msg}"
    );
    e
}

fn line_of(e: &SavedError) -> usize {
    match e {
        SavedError::File { line, .. } => *line,
        _ => panic!("not a file error: {e}"),
    }
}

const GOOD_HEAD: &str = "-- name = \"q\"\n-- title = \"t\"\n-- elements = [\"kode_kel\"]\n";

#[test]
fn header_errors_name_file_and_line() {
    // TOML syntax error on line 3.
    let e = bad_file(
        "rusak",
        "-- name = \"rusak\"\n-- title = \"t\"\n-- elements = [\"kode_kel\"\nSELECT kode_kel, COUNT(*) FROM penduduk GROUP BY 1\n",
    );
    assert_eq!(line_of(&e), 3, "{e}");
    assert!(e.to_string().contains("rusak.sql:3:"), "{e}");

    // Unknown parameter type: the line of its [params.x] table.
    let e = bad_file(
        "q",
        &format!(
            "{GOOD_HEAD}-- [params.x]\n-- type = \"float\"\nSELECT kode_kel, COUNT(*) FROM penduduk WHERE 1 = {{{{x}}}} GROUP BY 1\n"
        ),
    );
    assert_eq!(line_of(&e), 4, "{e}");
    assert!(e.to_string().contains("float"), "{e}");

    // Unknown header key.
    let e = bad_file(
        "q",
        &format!("{GOOD_HEAD}-- limit = 5\nSELECT kode_kel, COUNT(*) FROM penduduk GROUP BY 1\n"),
    );
    assert_eq!(line_of(&e), 4, "{e}");

    // Unknown element.
    let e = bad_file(
        "q",
        "-- name = \"q\"\n-- title = \"t\"\n-- elements = [\"nomor_hp\"]\nSELECT 1\n",
    );
    assert_eq!(line_of(&e), 3, "{e}");

    // Default outside its own range.
    let e = bad_file(
        "q",
        &format!(
            "{GOOD_HEAD}-- [params.n]\n-- type = \"integer\"\n-- min = 1\n-- max = 5\n-- default = 9\nSELECT kode_kel, COUNT(*) FROM penduduk WHERE umur(tanggal_lahir) > {{{{n}}}} GROUP BY 1\n"
        ),
    );
    assert_eq!(line_of(&e), 4, "{e}");
    assert!(e.to_string().contains("bad default"), "{e}");

    // Name does not match the file.
    let e = bad_file(
        "lain",
        &format!("{GOOD_HEAD}SELECT kode_kel, COUNT(*) FROM penduduk GROUP BY 1\n"),
    );
    assert_eq!(line_of(&e), 1, "{e}");
}

#[test]
fn template_errors_name_file_and_line() {
    let region =
        "-- [params.kec]\n-- type = \"region\"\n-- level = \"kecamatan\"\n-- optional = true\n";
    // Undeclared placeholder, on SQL line 3 of the file body (file line 9).
    let e = bad_file(
        "q",
        &format!(
            "{GOOD_HEAD}{region}SELECT kode_kel, COUNT(*)\nFROM penduduk\nWHERE kode_kec = {{{{kecamatan}}}}\nGROUP BY 1\n"
        ),
    );
    assert_eq!(line_of(&e), 10, "{e}");
    assert!(e.to_string().contains("kecamatan"), "{e}");

    // Optional parameter without default outside its section.
    let e = bad_file(
        "q",
        &format!(
            "{GOOD_HEAD}{region}SELECT kode_kel, COUNT(*) FROM penduduk WHERE kode_kec = {{{{kec}}}} GROUP BY 1\n"
        ),
    );
    assert_eq!(line_of(&e), 8, "{e}");

    // A placeholder the author quoted.
    let e = bad_file(
        "q",
        &format!(
            "{GOOD_HEAD}{region}SELECT kode_kel, COUNT(*) FROM penduduk\n{{{{#kec}}}}WHERE kode_kec = '{{{{kec}}}}'{{{{/kec}}}}\nGROUP BY 1\n"
        ),
    );
    assert_eq!(line_of(&e), 9, "{e}");
    assert!(e.to_string().contains("quoted"), "{e}");

    // Unclosed section.
    let e = bad_file(
        "q",
        &format!(
            "{GOOD_HEAD}{region}SELECT kode_kel, COUNT(*) FROM penduduk\n{{{{#kec}}}}WHERE kode_kec = {{{{kec}}}}\nGROUP BY 1\n"
        ),
    );
    assert_eq!(line_of(&e), 9, "{e}");

    // Declared but unused.
    let e = bad_file(
        "q",
        &format!("{GOOD_HEAD}{region}SELECT kode_kel, COUNT(*) FROM penduduk GROUP BY 1\n"),
    );
    assert_eq!(line_of(&e), 4, "{e}");
}

#[test]
fn missing_required_parameter() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("q.sql"),
        format!(
            "{GOOD_HEAD}-- [params.umur_min]\n-- type = \"integer\"\n-- min = 0\n-- max = 120\n-- description = \"umur terendah\"\nSELECT kode_kel, COUNT(*) FROM penduduk WHERE umur(tanggal_lahir) >= {{{{umur_min}}}} GROUP BY 1\n"
        ),
    )
    .unwrap();
    let q = SavedQueries::load_dir(dir.path()).unwrap();
    let e = q.get("q").unwrap().render(&Map::new()).unwrap_err();
    assert!(
        matches!(&e, SavedError::Missing { param, .. } if param == "umur_min"),
        "{e}"
    );
    assert_eq!(e.param(), Some("umur_min"));
    let sql = q
        .get("q")
        .unwrap()
        .render(&params(json!({"umur_min": 17})))
        .unwrap();
    assert!(sql.contains(">= 17 GROUP BY"), "{sql}");
}
