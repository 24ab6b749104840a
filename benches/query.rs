//! Query gate and pipeline benchmarks.
//!
//! For the standard queries, on the committed sample and on a generated
//! 10-million-person snapshot (Kalimantan Barat scaled; generated once into
//! `target/bench-data/`), this measures:
//!
//! - `validate/...`: parse, plan and validate only;
//! - `e2e/.../agregat`: the whole pipeline (parse, plan, validate, execute,
//!   complete grid, cell-key protection, post-plan);
//! - `e2e/.../raw`: raw DataFusion running the same aggregate SQL on the same
//!   session.
//!
//! It ends with a table of agregat/raw ratios from interleaved runs in the
//! same process (this machine is shared and noisy, so ratios, not absolute
//! times, are the figures to compare), for the pipeline without protection
//! (target <= 1.2), and a table of protection overhead on an ~11,000-cell
//! query (target <= 1.1).
//!
//! Run: `cargo bench --profile dev --bench query` (set
//! `AGREGAT_BENCH_SKIP_BIG=1` to skip the 10M snapshot).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agregat::agreement::Agreement;
use agregat::catalog::RegionScope;
use agregat::generate::{GenerateOptions, generate};
use agregat::query::{Engine, EngineConfig, check_query};
use agregat::record_key::RecordKeySecret;
use agregat::release::run_query;
use agregat::warehouse::{Snapshot, Verify};
use criterion::Criterion;

const QUERIES: &[(&str, &str)] = &[
    (
        "kecamatan_x_sex",
        "SELECT kode_kec, jenis_kelamin, COUNT(*) FROM penduduk GROUP BY kode_kec, jenis_kelamin",
    ),
    (
        "enrolment_age",
        "SELECT kode_kel, umur_pada(tanggal_lahir, DATE '2026-07-01') AS u, jenis_kelamin, COUNT(*) \
         FROM penduduk WHERE umur_pada(tanggal_lahir, DATE '2026-07-01') BETWEEN 5 AND 18 \
         GROUP BY kode_kel, umur_pada(tanggal_lahir, DATE '2026-07-01'), jenis_kelamin",
    ),
    (
        "age5_sex_religion_by_kec",
        "SELECT kode_kec, kelompok_umur(umur(tanggal_lahir), 5) AS kel, jenis_kelamin, agama, COUNT(*) \
         FROM penduduk GROUP BY kode_kec, kelompok_umur(umur(tanggal_lahir), 5), jenis_kelamin, agama",
    ),
    (
        "households_by_kel",
        "SELECT kode_kel, COUNT(DISTINCT no_kk) FROM penduduk GROUP BY kode_kel",
    ),
];

struct Target {
    name: &'static str,
    engine: Engine,
    agreement: Agreement,
}

fn big_snapshot() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data/kalbar-10m");
    if !dir.join("manifest.json").exists() {
        let secret = RecordKeySecret::from_file(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data-samples/SAMPLE-record-key-NOT-FOR-PRODUCTION.secret"
        )))
        .expect("sample secret");
        let opts = GenerateOptions::new(
            "61",
            Some(10_000_000),
            42,
            "2026-06-30".parse().expect("date"),
            dir.clone(),
        );
        eprintln!(
            "generating the 10M-person bench snapshot into {}",
            dir.display()
        );
        generate(&opts, &secret).expect("generate bench snapshot");
    }
    dir
}

fn targets(rt: &tokio::runtime::Runtime) -> Vec<Target> {
    let mut out = Vec::new();
    let mut add = |name, dir: PathBuf, scope: &str| {
        let snap = Snapshot::open(&dir, Verify::Structure).expect("snapshot");
        let engine = rt
            .block_on(Engine::open(snap, EngineConfig::default()))
            .expect("engine");
        let agreement = Agreement::unrestricted_with_limits(
            "bench",
            RegionScope::parse(scope).expect("scope"),
            agregat::agreement::QueryLimits {
                max_cells: 1_000_000,
                ..Default::default()
            },
        )
        .expect("limits");
        out.push(Target {
            name,
            engine,
            agreement,
        });
    };
    add(
        "sample",
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data-samples/dkb-2026-s1"),
        "61.71",
    );
    if std::env::var_os("AGREGAT_BENCH_SKIP_BIG").is_none() {
        add("10m", big_snapshot(), "61");
    }
    out
}

async fn raw(engine: &Engine, sql: &str) -> usize {
    let df = engine.context().sql(sql).await.expect("raw plan");
    df.collect()
        .await
        .expect("raw run")
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

fn benches(c: &mut Criterion, rt: &tokio::runtime::Runtime, targets: &[Target]) {
    for t in targets {
        for (q, sql) in QUERIES {
            let mut g = c.benchmark_group(format!("{}/{q}", t.name));
            g.sample_size(10).measurement_time(Duration::from_secs(5));
            g.bench_function("validate", |b| {
                b.iter(|| {
                    rt.block_on(check_query(&t.engine, &t.agreement, sql))
                        .expect("valid")
                })
            });
            g.bench_function("agregat", |b| {
                b.iter(|| {
                    rt.block_on(run_query(&t.engine, &t.agreement, sql))
                        .expect("runs")
                })
            });
            g.bench_function("raw", |b| b.iter(|| rt.block_on(raw(&t.engine, sql))));
            g.finish();
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Interleaved runs: raw, agregat, raw, agregat, ... so both see the same
/// machine load.
fn ratios(rt: &tokio::runtime::Runtime, targets: &[Target]) {
    println!(
        "\n{:<40} {:>12} {:>12} {:>12} {:>8}",
        "query", "validate", "raw", "agregat", "ratio"
    );
    for t in targets {
        // The pipeline without protection (measured separately below).
        let agreement = identity(&t.agreement);
        for (q, sql) in QUERIES {
            let (mut r, mut a, mut v) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..7 {
                let s = Instant::now();
                rt.block_on(raw(&t.engine, sql));
                r.push(s.elapsed());
                let s = Instant::now();
                let res = rt
                    .block_on(run_query(&t.engine, &agreement, sql))
                    .expect("runs");
                a.push(s.elapsed());
                std::hint::black_box(res);
                let s = Instant::now();
                rt.block_on(check_query(&t.engine, &agreement, sql))
                    .expect("valid");
                v.push(s.elapsed());
            }
            let (r, a, v) = (median(r), median(a), median(v));
            println!(
                "{:<40} {:>10.2}ms {:>10.2}ms {:>10.2}ms {:>8.2}",
                format!("{}/{q}", t.name),
                v.as_secs_f64() * 1e3,
                r.as_secs_f64() * 1e3,
                a.as_secs_f64() * 1e3,
                a.as_secs_f64() / r.as_secs_f64()
            );
        }
    }
}

/// Row-group size: a city-sized snapshot (690,000 people, one file) written
/// with several row-group sizes, scanned with 1 and with all cores. Run with
/// `AGREGAT_BENCH_ROWGROUPS=1`.
fn row_groups(rt: &tokio::runtime::Runtime) {
    let secret = RecordKeySecret::from_file(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data-samples/SAMPLE-record-key-NOT-FOR-PRODUCTION.secret"
    )))
    .expect("sample secret");
    let sql = "SELECT kode_kel, kelompok_umur(umur(tanggal_lahir), 5), jenis_kelamin, COUNT(*), COUNT(DISTINCT no_kk) FROM penduduk GROUP BY 1, 2, 3";
    println!(
        "\n{:<12} {:>8} {:>10} {:>12} {:>12} {:>8}",
        "rows/group", "groups", "MB", "1 core", "all cores", "speedup"
    );
    for rows in [8 * 1024, 32 * 1024, 128 * 1024, 1024 * 1024] {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("target/bench-data/ptk-690k-rg{rows}"));
        if !dir.join("manifest.json").exists() {
            let mut opts = GenerateOptions::new(
                "61.71",
                Some(690_000),
                42,
                "2026-06-30".parse().expect("date"),
                dir.clone(),
            );
            opts.rows_per_row_group = rows;
            generate(&opts, &secret).expect("generate");
        }
        let snap = Snapshot::open(&dir, Verify::Structure).expect("snapshot");
        let bytes: u64 = snap.manifest.files.iter().map(|f| f.bytes).sum();
        let groups = snap.manifest.row_count.div_ceil(rows as u64);
        let mut times = Vec::new();
        for partitions in [
            1,
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        ] {
            let config = EngineConfig {
                target_partitions: partitions,
                ..EngineConfig::default()
            };
            let engine = rt
                .block_on(Engine::open(snap.clone(), config))
                .expect("engine");
            rt.block_on(raw(&engine, sql));
            let mut t = Vec::new();
            for _ in 0..5 {
                let s = Instant::now();
                rt.block_on(raw(&engine, sql));
                t.push(s.elapsed());
            }
            times.push(median(t));
        }
        println!(
            "{:<12} {:>8} {:>10.1} {:>10.1}ms {:>10.1}ms {:>8.2}",
            rows,
            groups,
            bytes as f64 / 1e6,
            times[0].as_secs_f64() * 1e3,
            times[1].as_secs_f64() * 1e3,
            times[0].as_secs_f64() / times[1].as_secs_f64()
        );
    }
}

/// The agreement with protection that releases true values (identity
/// ptable, k = 1, no sparsity refusal): the pipeline without protection.
fn identity(a: &Agreement) -> Agreement {
    use agregat::protect::ptable::PTable;
    use agregat::protect::{Method, Protection, SparsityRule};
    a.clone().with_unchecked_protection_for_tests(Protection {
        method: Method::CellKey {
            ptable: std::sync::Arc::new(
                PTable::from_csv(
                    "cell_value,cell_key,perturbation\n0,0,0\n1,0,0\n2,0,0\n",
                    "identity",
                )
                .expect("ptable"),
            ),
            k: 1,
        },
        sparsity: SparsityRule {
            max_ones_share: 1.0,
            max_ones_twos_share: 1.0,
        },
    })
}

/// Protection overhead: the same ~11,000-cell query with protection that
/// releases true values (identity ptable, k = 1) versus cell-key (D = 5,
/// k = 10, secondary suppression, sparsity) and DP, interleaved.
fn protection_overhead(rt: &tokio::runtime::Runtime, targets: &[Target]) {
    use agregat::protect::dp::DpBudget;
    use agregat::protect::{Method, Protection, SparsityRule};
    let sql = "SELECT kode_kec, kelompok_umur(umur(tanggal_lahir), 5), jenis_kelamin, akta_lahir, COUNT(*) \
               FROM penduduk GROUP BY 1, 2, 3, 4";
    println!(
        "\n{:<28} {:>8} {:>12} {:>12} {:>8} {:>12} {:>8}",
        "protection overhead", "cells", "identity", "cell-key", "ratio", "dp", "ratio"
    );
    for t in targets {
        let identity = identity(&t.agreement);
        let mut dp = t.agreement.clone();
        dp = dp.with_unchecked_protection_for_tests(Protection {
            method: Method::Dp {
                budget: DpBudget::ZCdp { rho: 0.5 },
                k: 10,
            },
            sparsity: SparsityRule::default(),
        });
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        let mut cells = 0;
        for round in 0..7 {
            for (agreement, times) in [(&identity, &mut a), (&t.agreement, &mut b), (&dp, &mut c)] {
                // Each run_query is a fresh local pipeline: the release
                // cache does not hide the cost.
                let _ = round;
                let s = Instant::now();
                let r = rt
                    .block_on(run_query(&t.engine, agreement, sql))
                    .expect("runs");
                times.push(s.elapsed());
                cells = r.cells;
            }
        }
        let (a, b, c) = (median(a), median(b), median(c));
        println!(
            "{:<28} {:>8} {:>10.1}ms {:>10.1}ms {:>8.2} {:>10.1}ms {:>8.2}",
            t.name,
            cells,
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            b.as_secs_f64() / a.as_secs_f64(),
            c.as_secs_f64() * 1e3,
            c.as_secs_f64() / a.as_secs_f64()
        );
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if std::env::var_os("AGREGAT_BENCH_ROWGROUPS").is_some() {
        row_groups(&rt);
        return;
    }
    let targets = targets(&rt);
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c, &rt, &targets);
    ratios(&rt, &targets);
    protection_overhead(&rt, &targets);
    c.final_summary();
}
