//! Property tests of the query gate: random SQL over the schema, mixing
//! legitimate parts with identifier, raw-date and non-approved parts. The
//! gate must accept exactly the queries made only of legitimate parts, and
//! every accepted query must return only aggregate rows over the complete
//! declared grid, with no identifier projected anywhere in the plan.

use crate::common;

use agregat::agreement::Agreement;
use agregat::catalog::{self, ColumnClass, RegionScope};
use agregat::protect::dp::DpBudget;
use agregat::protect::{Method, Protection, SparsityRule};
use agregat::query::{Engine, RunError};
use agregat::release::run_query;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::DataType;
use proptest::prelude::*;

struct Fixture {
    rt: &'static tokio::runtime::Runtime,
    engine: &'static Engine,
    agreement: Agreement,
}

fn fixture() -> Fixture {
    let sample = common::sample();
    let mut agreement = Agreement::unrestricted("prop", RegionScope::parse("61.71").unwrap());
    // Gate and grid properties: differential privacy releases SUM and AVG
    // too (cell-key does not), and noise does not change the grid.
    agreement = agreement.with_unchecked_protection_for_tests(Protection {
        method: Method::Dp {
            budget: DpBudget::ZCdp { rho: 1.0 },
            k: 1,
        },
        sparsity: SparsityRule::default(),
    });
    Fixture {
        rt: &sample.rt,
        engine: &sample.engine,
        agreement,
    }
}

/// A group-by item: SQL, whether it is legitimate, and its domain size
/// (`None` for illegitimate items), under no filter.
const GROUPS: &[(&str, bool, usize)] = &[
    ("jenis_kelamin", true, 2),
    ("agama", true, 7),
    ("kode_kec", true, 6),
    ("status_perkawinan", true, 4),
    ("nik", false, 0),
    ("tanggal_lahir", false, 0),
    ("substr(nik, 1, 6)", false, 0),
    ("nama_lengkap", false, 0),
    ("record_key", false, 0),
    ("CAST(tanggal_lahir AS VARCHAR)", false, 0),
    ("coalesce(nik_ibu, 'x')", false, 0),
];

/// Age-family group items (at most one per query).
const AGES: &[(&str, bool, usize)] = &[
    ("", true, 1),
    ("umur(tanggal_lahir)", true, 121),
    ("kelompok_umur(umur(tanggal_lahir), 5)", true, 16),
    ("tanggal_lahir + INTERVAL '1 day'", false, 0),
];

const AGGS: &[(&str, bool)] = &[
    ("COUNT(*)", true),
    ("COUNT(DISTINCT no_kk)", true),
    ("SUM(umur(tanggal_lahir))", true),
    ("AVG(umur(tanggal_lahir))", true),
    ("COUNT(jenis_kelamin)", true),
    ("MIN(nik)", false),
    ("MAX(tanggal_lahir)", false),
    ("COUNT(nik)", false),
    ("COUNT(DISTINCT nik)", false),
    ("array_agg(nama_lengkap)", false),
    ("SUM(record_key)", false),
];

/// WHERE clauses: SQL, legitimate, and a function narrowing domain sizes.
const WHERES: &[(&str, bool)] = &[
    ("", true),
    ("WHERE jenis_kelamin = 'PEREMPUAN'", true),
    ("WHERE kode_kec IN ('61.71.01', '61.71.02')", true),
    ("WHERE umur(tanggal_lahir) > 17", true),
    ("WHERE nik = '6171010101900001'", false),
    ("WHERE tanggal_lahir > DATE '2000-01-01'", false),
    ("WHERE nama_lengkap LIKE 'A%'", false),
    (
        "WHERE CASE WHEN nik LIKE '6171%' THEN 1 ELSE 0 END = 1",
        false,
    ),
];

fn narrowed(item: &str, domain: usize, where_: &str) -> usize {
    match (item, where_) {
        ("jenis_kelamin", w) if w.contains("PEREMPUAN") => 1,
        ("kode_kec", w) if w.contains("IN (") => 2,
        ("umur(tanggal_lahir)", w) if w.contains("> 17") => 103,
        ("kelompok_umur(umur(tanggal_lahir), 5)", w) if w.contains("> 17") => 13,
        _ => domain,
    }
}

#[derive(Debug, Clone)]
struct Case {
    groups: Vec<usize>,
    age: usize,
    aggs: Vec<usize>,
    where_: usize,
}

fn indices<T>(items: &[T], legit: impl Fn(&T) -> bool, only_legit: bool) -> Vec<usize> {
    (0..items.len())
        .filter(|&i| !only_legit || legit(&items[i]))
        .collect()
}

/// Half the cases use legitimate parts only, so acceptance is exercised as
/// much as rejection.
fn cases() -> impl Strategy<Value = Case> {
    any::<bool>().prop_flat_map(|only_legit| {
        let groups = indices(GROUPS, |g| g.1, only_legit);
        let ages = indices(AGES, |a| a.1, only_legit);
        let aggs = indices(AGGS, |a| a.1, only_legit);
        let wheres = indices(WHERES, |w| w.1, only_legit);
        (
            proptest::sample::subsequence(groups, 0..=2),
            proptest::sample::select(ages),
            proptest::sample::subsequence(aggs, 1..=2),
            proptest::sample::select(wheres),
        )
            .prop_map(|(groups, age, aggs, where_)| Case {
                groups,
                age,
                aggs,
                where_,
            })
    })
}

fn sql(c: &Case) -> (String, bool, usize) {
    let where_ = WHERES[c.where_].0;
    let mut keys: Vec<&str> = c.groups.iter().map(|&i| GROUPS[i].0).collect();
    let mut legit = c.groups.iter().all(|&i| GROUPS[i].1) && AGES[c.age].1 && WHERES[c.where_].1;
    let mut cells = 1usize;
    for &i in &c.groups {
        cells *= narrowed(GROUPS[i].0, GROUPS[i].2, where_);
    }
    if !AGES[c.age].0.is_empty() {
        keys.push(AGES[c.age].0);
        cells *= narrowed(AGES[c.age].0, AGES[c.age].2, where_);
    }
    legit &= c.aggs.iter().all(|&i| AGGS[i].1);
    // The threshold applies to every row's noisy count: a SUM needs a count
    // (or an AVG, which carries one) beside it.
    let summed = c.aggs.iter().any(|&i| AGGS[i].0.starts_with("SUM("));
    let counted = c
        .aggs
        .iter()
        .any(|&i| AGGS[i].0.starts_with("COUNT(") || AGGS[i].0.starts_with("AVG("));
    legit &= !summed || counted;
    let aggs: Vec<&str> = c.aggs.iter().map(|&i| AGGS[i].0).collect();
    let mut select = keys.clone();
    select.extend(aggs);
    let group_by = if keys.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {}", keys.join(", "))
    };
    (
        format!(
            "SELECT {} FROM penduduk {where_}{group_by}",
            select.join(", ")
        ),
        legit,
        cells,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn gate_accepts_exactly_the_legitimate_queries(c in cases()) {
        let f = fixture();
        let (sql, legit, cells) = sql(&c);
        let result = f.rt.block_on(run_query(f.engine, &f.agreement, &sql));
        match result {
            Ok(r) => {
                prop_assert!(legit, "accepted an illegitimate query: {sql}");
                // The complete declared grid, no more, no fewer rows.
                prop_assert_eq!(r.num_rows(), cells, "grid size of {}", sql);
                // No identifier-looking value in any output cell.
                for b in r.table.batches() {
                    for col in b.columns() {
                        if let DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 = col.data_type() {
                            let s = datafusion::arrow::compute::cast(col, &DataType::Utf8).unwrap();
                            for v in s.as_string::<i32>().iter().flatten() {
                                prop_assert!(!(v.len() == 16 && v.bytes().all(|b| b.is_ascii_digit())), "NIK-like value {v} from {sql}");
                            }
                        }
                    }
                }
                // No identifier is projected anywhere in the executed plan.
                let plan = r.plan_display();
                for c in catalog::COLUMNS.iter().filter(|c| matches!(c.class, ColumnClass::Identifier | ColumnClass::FreeText | ColumnClass::RecordKey)) {
                    if c.name == "no_kk" {
                        continue;
                    }
                    prop_assert!(!plan.contains(&format!("penduduk.{}", c.name)), "{} appears in the plan of {}:\n{}", c.name, sql, plan);
                }
            }
            Err(RunError::Query(q)) => {
                prop_assert!(!legit, "rejected a legitimate query {sql}: {q}");
                prop_assert!(!q.message.is_empty());
            }
            Err(RunError::Engine(e)) => prop_assert!(false, "engine failure on {sql}: {e}"),
        }
    }
}

#[test]
fn counts_add_up_to_the_population() {
    let f = fixture();
    let mut agreement = f.agreement.clone();
    agreement = agreement.with_unchecked_protection_for_tests(common::true_values());
    let r =
        f.rt.block_on(run_query(
            f.engine,
            &agreement,
            "SELECT kode_kel, agama, COUNT(*) AS n FROM penduduk GROUP BY kode_kel, agama",
        ))
        .unwrap();
    assert_eq!(r.num_rows(), 29 * 7);
    let total: i64 = r
        .table
        .batches()
        .iter()
        .map(|b| {
            let n = b
                .column_by_name("n")
                .unwrap()
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            (0..n.len()).map(|i| n.value(i)).sum::<i64>()
        })
        .sum();
    assert_eq!(total, 69_000);
}
