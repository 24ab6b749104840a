//! What protection costs the education office: the share of cells withheld
//! and the mean absolute error of the published cells of `usia_sekolah` on
//! a full-scale Kota Pontianak snapshot (690,000 synthetic people), under
//! the shipped education-office protection (cell-key, D = 5, k = 10),
//! against the true table; and what the earlier rule (withhold true counts
//! 1..9, publish zeros and everything else) would have withheld.
//!
//! Ignored by default (it generates the snapshot, about 15 s): run it with
//! `cargo test --test it utility -- --ignored --nocapture`. The figures are
//! in the README.

use std::collections::HashMap;

use agregat::agreement::Agreement;
use agregat::catalog::RegionScope;
use agregat::generate::{GenerateOptions, generate};
use agregat::query::{Engine, EngineConfig};
use agregat::record_key::RecordKeySecret;
use agregat::release::run_query;
use agregat::saved::SavedQueries;
use agregat::warehouse::{Snapshot, Verify};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::util::display::array_value_to_string;

use crate::common;

fn table(r: &agregat::query::QueryResult) -> HashMap<String, Option<i64>> {
    let mut out = HashMap::new();
    for b in r.table.batches() {
        let n = b.num_columns();
        let count = b
            .column_by_name("jumlah")
            .unwrap()
            .as_primitive::<Int64Type>();
        for row in 0..b.num_rows() {
            let key: Vec<String> = (0..n - 2)
                .map(|c| array_value_to_string(b.column(c), row).unwrap())
                .collect();
            out.insert(
                key.join("|"),
                (!count.is_null(row)).then(|| count.value(row)),
            );
        }
    }
    out
}

#[test]
#[ignore = "generates a full-scale snapshot; run with --ignored"]
fn usia_sekolah_withheld_share_and_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pontianak-2026-s1");
    let secret = RecordKeySecret::from_text(&"5a".repeat(32), "test").unwrap();
    let opts = GenerateOptions::new(
        "61.71",
        Some(690_000),
        42,
        "2026-06-30".parse().unwrap(),
        out.clone(),
    );
    generate(&opts, &secret).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = rt
        .block_on(Engine::open(
            Snapshot::open(&out, Verify::Structure).unwrap(),
            EngineConfig::default(),
        ))
        .unwrap();
    let saved = SavedQueries::load_dir(std::path::Path::new("queries")).unwrap();
    let sql = saved
        .get("usia_sekolah")
        .unwrap()
        .render(&serde_json::Map::new())
        .unwrap();
    measure("690,000 people", &rt, &engine, &sql);
    let sample = common::sample();
    measure(
        "the committed 69,000-person sample",
        &sample.rt,
        &sample.engine,
        &sql,
    );
}

fn measure(what: &str, rt: &tokio::runtime::Runtime, engine: &Engine, sql: &str) {
    let scope = RegionScope::parse("61.71").unwrap();
    let mut truth = Agreement::unrestricted("truth", scope.clone());
    truth = truth.with_unchecked_protection_for_tests(common::true_values());
    let disdik = Agreement::unrestricted("disdik", scope);
    let t = table(&rt.block_on(run_query(engine, &truth, sql)).unwrap());
    let r = table(&rt.block_on(run_query(engine, &disdik, sql)).unwrap());
    let cells = t.len();
    let (mut withheld, mut before_withheld, mut abs, mut published) = (0, 0, 0i64, 0);
    for (k, tv) in &t {
        let tv = tv.unwrap_or(0);
        if (1..10).contains(&tv) {
            before_withheld += 1;
        }
        match r[k] {
            None => withheld += 1,
            Some(v) => {
                abs += (v - tv).abs();
                published += 1;
            }
        }
    }
    let share = |n: usize| 100.0 * n as f64 / cells as f64;
    eprintln!(
        "usia_sekolah on {what}: {cells} cells; withheld now {withheld} ({:.1}%), under the earlier rule {before_withheld} ({:.1}%); mean absolute error of the {published} published cells {:.2}",
        share(withheld),
        share(before_withheld),
        abs as f64 / published.max(1) as f64
    );
    assert!(published > 0);
    assert!(abs as f64 / published as f64 <= 5.0);
}
