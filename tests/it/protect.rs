//! End-to-end protection tests on the committed sample: every released
//! number goes through cell-key perturbation and suppression (or DP), and
//! the attacks an analyst would try recover nothing new.

use crate::common;

use std::collections::HashMap;

use agregat::agreement::Agreement;
use agregat::catalog::RegionScope;
use agregat::protect::dp::DpBudget;
use agregat::protect::{Method, Protection, SUPPRESSION_COLUMN, SparsityRule};
use agregat::query::{Code, QueryResult, RunError};
use agregat::release::run_query;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::util::display::array_value_to_string;

use common::sample as fixture;

/// The default agreement: cell-key, D = 5, k = 10. Each test gets its own
/// agreement id (the test's name), so the margin memory of one test does
/// not refuse another's tables on the shared engine.
fn cell_key() -> Agreement {
    let id = std::thread::current()
        .name()
        .unwrap_or("ck")
        .replace("::", "-");
    Agreement::unrestricted(&id, RegionScope::parse("61.71").unwrap())
}

/// True values, to compare against (identity ptable, k = 1).
fn truth() -> Agreement {
    let mut a = cell_key();
    a = a.with_unchecked_protection_for_tests(common::true_values());
    a
}

fn run(a: &Agreement, sql: &str) -> QueryResult {
    let f = fixture();
    f.rt.block_on(run_query(&f.engine, a, sql))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Rows as (key columns joined, count, status) for a result whose last
/// two columns are a count and the suppression status.
fn cells(r: &QueryResult) -> HashMap<String, (Option<i64>, Option<String>)> {
    let mut out = HashMap::new();
    for b in r.table.batches() {
        let n = b.num_columns();
        let status = b.column_by_name(SUPPRESSION_COLUMN).unwrap();
        let count = b.column(n - 2).as_primitive::<Int64Type>();
        for row in 0..b.num_rows() {
            let key: Vec<String> = (0..n - 2)
                .map(|c| array_value_to_string(b.column(c), row).unwrap())
                .collect();
            out.insert(
                key.join("|"),
                (
                    (!count.is_null(row)).then(|| count.value(row)),
                    (!status.is_null(row))
                        .then(|| status.as_string::<i32>().value(row).to_string()),
                ),
            );
        }
    }
    out
}

const BY_KEL_AGAMA: &str =
    "SELECT kode_kel, agama, COUNT(*) AS n FROM penduduk GROUP BY kode_kel, agama";

#[test]
fn no_released_cell_reveals_a_small_count_and_noise_is_bounded() {
    let released = cells(&run(&cell_key(), BY_KEL_AGAMA));
    let true_ = cells(&run(&truth(), BY_KEL_AGAMA));
    let households = cells(&run(
        &truth(),
        "SELECT kode_kel, agama, COUNT(DISTINCT no_kk) AS n FROM penduduk GROUP BY kode_kel, agama",
    ));
    assert_eq!(released.len(), 29 * 7);
    let (mut withheld, mut withheld_zero, mut withheld_positive) = (0, 0, 0);
    for (key, (value, status)) in &released {
        // The truth agreement (k = 1) withholds only empty cells.
        let t = true_[key].0.unwrap_or(0);
        match value {
            Some(v) => {
                // Published values are at least k; the true count is
                // within D of them, so at least k - D.
                assert!(*v >= 10, "{key}: published {v} below k");
                assert!((v - t).abs() <= 5, "{key}: {v} vs {t}");
                assert!(t >= 5, "{key}: true {t} released as {v}");
            }
            None => {
                withheld += 1;
                assert_eq!(status.as_deref(), Some("primary"));
                // Below k (within the noise), or people from too few
                // households (the holding rule).
                let h = households[key].0.unwrap_or(0);
                assert!(
                    t < 10 + 5 || h < 10 + 5,
                    "{key}: withheld true {t} from {h} households"
                );
                if t == 0 {
                    withheld_zero += 1;
                } else {
                    withheld_positive += 1;
                }
            }
        }
    }
    assert!(
        withheld > 0,
        "the sample has small religion cells per kelurahan"
    );
    // Zero versus withheld: empty cells and small non-empty ones are both
    // withheld, with the same reason, so "withheld" does not say "somebody
    // is there".
    assert!(
        withheld_zero > 0 && withheld_positive > 0,
        "{withheld_zero} empty and {withheld_positive} non-empty cells withheld"
    );
    let reasons: std::collections::BTreeSet<_> = released
        .iter()
        .filter(|(k, _)| true_[*k].0.unwrap_or(0) == 0)
        .map(|(_, (_, s))| s.clone())
        .collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
}

#[test]
fn the_same_people_get_the_same_noise_whatever_the_query() {
    let ck = cell_key();
    let a = cells(&run(&ck, BY_KEL_AGAMA));
    // Another SQL text for the same cells.
    let b = cells(&run(
        &ck,
        "select KODE_KEL , agama as a, count(1) as jumlah from penduduk p group by 2, 1",
    ));
    for (k, v) in &b {
        let (kel, agama) = k.split_once('|').unwrap();
        assert_eq!(a[&format!("{kel}|{agama}")].0, v.0, "{k}");
    }
    // A table restricted to some of its categories shares its cells.
    let c = cells(&run(
        &ck,
        "SELECT kode_kel, agama, COUNT(*) FROM penduduk WHERE agama = 'ISLAM' AND kode_kec = '61.71.01' GROUP BY kode_kel, agama",
    ));
    assert!(!c.is_empty());
    for (k, v) in &c {
        assert_eq!(a[k].0, v.0, "{k}");
    }
}

#[test]
fn averaging_repeats_recovers_nothing() {
    let ck = cell_key();
    let sql = "SELECT kode_kec, jenis_kelamin, COUNT(*) FROM penduduk WHERE jenis_kelamin = 'PEREMPUAN' GROUP BY kode_kec, jenis_kelamin";
    let first = cells(&run(&ck, sql));
    for _ in 0..200 {
        assert_eq!(cells(&run(&ck, sql)), first);
    }
}

/// Removing one person from a table's population (a condition on a
/// variable the table does not show) is not a table: the two tables would
/// differ only in the removed person's cell.
#[test]
fn differencing_by_removing_one_person_is_refused() {
    let ck = cell_key();
    let f = fixture();
    for sql in [
        "SELECT kode_kel, agama, COUNT(*) FROM penduduk WHERE kode_kel = '61.71.01.1002' AND umur(tanggal_lahir) <> 98 GROUP BY kode_kel, agama",
        "SELECT agama, COUNT(*) FROM penduduk WHERE kode_kel = '61.71.01.1002' GROUP BY agama",
        "SELECT kelompok_umur(umur(tanggal_lahir), 5), agama, COUNT(*) FROM penduduk WHERE umur(tanggal_lahir) <> 98 GROUP BY 1, 2",
    ] {
        match f.rt.block_on(run_query(&f.engine, &ck, sql)) {
            Err(RunError::Query(q)) => {
                assert_eq!(q.code, Code::NotATable, "{sql}: {q}");
                assert!(
                    q.message.contains("GROUP BY") || q.message.contains("categories"),
                    "{}",
                    q.message
                );
            }
            other => panic!(
                "{sql}: accepted or failed otherwise: {:?}",
                other.map(|r| r.num_rows())
            ),
        }
    }
    // What can be asked instead shows the removed age as its own cells, so
    // the difference of two tables is a sum of noisy cells.
    let kel = "61.71.01.1002";
    let tr = truth();
    let all = format!(
        "SELECT kode_kel, COUNT(*) FROM penduduk WHERE kode_kel = '{kel}' GROUP BY kode_kel"
    );
    let by_age = format!(
        "SELECT kode_kel, umur(tanggal_lahir), COUNT(*) FROM penduduk WHERE kode_kel = '{kel}' AND umur(tanggal_lahir) <> 98 GROUP BY 1, 2"
    );
    let (a, b) = (cells(&run(&ck, &all)), cells(&run(&ck, &by_age)));
    let (ta, tb) = (cells(&run(&tr, &all)), cells(&run(&tr, &by_age)));
    let sum = |m: &HashMap<String, (Option<i64>, Option<String>)>| -> i64 {
        m.values().filter_map(|(v, _)| *v).sum()
    };
    let diff = a[kel].0.unwrap() - sum(&b);
    let true_diff = ta[kel].0.unwrap() - sum(&tb);
    assert!(
        b.values().any(|(v, _)| v.is_none()),
        "some ages are withheld"
    );
    assert_ne!(diff, true_diff, "the difference is not the true difference");
}

#[test]
fn margins_get_complementary_suppression() {
    let sql = "SELECT kode_kel, agama, COUNT(*) FROM penduduk WHERE kode_kec = '61.71.01' GROUP BY ROLLUP(kode_kel, agama)";
    let r = run(&cell_key(), sql);
    let m = r.table.metadata();
    assert!(m.primary_suppressed > 0);
    assert!(m.secondary_suppressed > 0, "{m:?}");
    // Every kelurahan row with a primary cell has at least two withheld.
    let rows = cells(&r);
    let mut per_kel: HashMap<&str, usize> = HashMap::new();
    for (k, (v, _)) in &rows {
        let (kel, agama) = k.split_once('|').unwrap();
        if v.is_none() && !agama.is_empty() {
            *per_kel.entry(kel).or_default() += 1;
        }
    }
    assert!(per_kel.values().all(|&n| n >= 2), "{per_kel:?}");
}

#[test]
fn sparse_tables_are_refused_or_their_areas_blocked() {
    let ck = cell_key();
    let f = fixture();
    let err = f
        .rt
        .block_on(run_query(
            &f.engine,
            &ck,
            "SELECT umur(tanggal_lahir), agama, golongan_darah, kode_kel, COUNT(*) FROM penduduk WHERE kode_kel = '61.71.01.1002' GROUP BY 1, 2, 3, 4",
        ))
        .unwrap_err();
    match err {
        RunError::Query(q) => {
            assert_eq!(q.code, Code::TableTooSparse);
            assert!(q.message.contains("coarser"), "{}", q.message);
            // The refusal reads released values and quotes no shares.
            assert!(!q.message.contains('%'), "{}", q.message);
        }
        other => panic!("{other}"),
    }
    let r = run(
        &ck,
        "SELECT kode_kel, umur(tanggal_lahir), agama, COUNT(*) FROM penduduk GROUP BY 1, 2, 3",
    );
    let m = r.table.metadata();
    assert!(!m.blocked_areas.is_empty(), "{m:?}");
    for (k, (v, s)) in cells(&r) {
        if m.blocked_areas.iter().any(|a| k.starts_with(a.as_str())) {
            assert!(v.is_none());
            assert_eq!(s.as_deref(), Some("blocked"));
        }
    }
}

#[test]
fn sum_and_avg_need_differential_privacy() {
    let f = fixture();
    let err =
        f.rt.block_on(run_query(
            &f.engine,
            &cell_key(),
            "SELECT kode_kec, AVG(umur(tanggal_lahir)) FROM penduduk GROUP BY 1",
        ))
        .unwrap_err();
    assert!(matches!(err, RunError::Query(q) if q.code == Code::AggregateNotAllowed));
    let mut dp = cell_key();
    dp = dp.with_unchecked_protection_for_tests(Protection {
        method: Method::Dp {
            budget: DpBudget::ZCdp { rho: 0.5 },
            k: 10,
        },
        sparsity: SparsityRule::default(),
    });
    let r = run(
        &dp,
        "SELECT kode_kec, COUNT(*) AS n, AVG(umur(tanggal_lahir)) AS rata_rata FROM penduduk GROUP BY 1",
    );
    let m = r.table.metadata();
    let info = m.dp.as_ref().unwrap();
    // Keyed by the output columns; the AVG's margin is the ratio's (a few
    // tenths of a year on a kecamatan), and its values are rounded.
    let keys: Vec<&String> = info.columns.keys().collect();
    assert_eq!(keys, ["n", "rata_rata"], "{info:?}");
    let avg = &info.columns["rata_rata"];
    assert_eq!(avg.decimals, Some(2));
    assert!(
        avg.margin_of_error_95 > 0.0 && avg.margin_of_error_95 < 1.0,
        "{avg:?}"
    );
    // Three released parts (count, avg's sum and count), rho split evenly;
    // the charge is what OpenDP's maps returned, never above the budget.
    assert!(
        info.charge.value() <= 0.5 + 1e-12 && info.charge.value() > 0.49,
        "{info:?}"
    );
    assert!(info.columns.values().all(|c| c.margin_of_error_95 > 0.0));
    assert_eq!(r.num_rows(), 6);
}

#[test]
fn parquet_carries_the_protection_metadata() {
    let r = run(&cell_key(), BY_KEL_AGAMA);
    let bytes = agregat::output::encode(&r.table, agregat::output::Format::Parquet).unwrap();
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, &bytes).unwrap();
    let reader = datafusion::parquet::file::reader::SerializedFileReader::new(file).unwrap();
    use datafusion::parquet::file::reader::FileReader;
    let kv = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap();
    let entry = kv
        .iter()
        .find(|k| k.key == agregat::output::PARQUET_METADATA_KEY)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(entry.value.as_deref().unwrap()).unwrap();
    assert_eq!(v["method"], "cell_key");
    assert_eq!(v["ptable"]["max_perturbation"], 5);
    // The true counts, keys and perturbations never appear.
    let text = entry.value.as_deref().unwrap();
    assert!(!text.contains("cell_key_"), "{text}");
}

#[test]
fn repeating_a_dp_query_returns_the_same_release_and_charges_nothing() {
    let mut dp = Agreement::unrestricted("dp-cache", RegionScope::parse("61.71").unwrap());
    dp = dp.with_unchecked_protection_for_tests(Protection {
        method: Method::Dp {
            budget: DpBudget::PureDp { epsilon: 0.3 },
            k: 10,
        },
        sparsity: SparsityRule::default(),
    });
    // One pipeline: its release cache serves the repeat.
    let pipeline = agregat::release::Pipeline::local().unwrap();
    let f = fixture();
    let run = |a: &Agreement, sql: &str| {
        f.rt.block_on(agregat::release::run_with(&pipeline, &f.engine, a, sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    };
    let first = run(
        &dp,
        "SELECT kode_kec, COUNT(*) FROM penduduk GROUP BY kode_kec",
    );
    assert!(!first.table.metadata().dp.as_ref().unwrap().reused);
    assert!(first.table.charge_now().unwrap().value() > 0.0);
    // Whitespace, an alias and an ORDER BY: the same question.
    let again = run(
        &dp,
        "select  kode_kec ,count(*) as jumlah\n from penduduk group by kode_kec order by jumlah desc",
    );
    assert!(again.table.metadata().dp.as_ref().unwrap().reused);
    assert_eq!(again.table.charge_now().unwrap().value(), 0.0);
    let a = cells(&first);
    let b = cells(&again);
    assert_eq!(a, b);
    // A different question is a new release.
    let other = run(
        &dp,
        "SELECT kode_kec, COUNT(*) FROM penduduk WHERE jenis_kelamin = 'PEREMPUAN' GROUP BY kode_kec",
    );
    assert!(!other.table.metadata().dp.as_ref().unwrap().reused);
}
