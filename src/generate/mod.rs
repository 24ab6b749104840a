//! The synthetic population generator.
//!
//! Real register data never leaves Disdukcapil, so agregat ships a
//! generator of realistic synthetic snapshots: valid NIK and KK structure,
//! real Kemendagri regions, households, and an Indonesian age pyramid, at any
//! scale from one kelurahan to the whole country.
//!
//! How it runs: a cheap, single-threaded *plan* spreads the reference
//! population of each kab/kota over its real kelurahan/desa (scaled to
//! `--people`) and cuts the work into *units*, each one output file of whole
//! kecamatan. Units run in parallel; each streams its rows to Parquet, so
//! memory stays bounded whatever the scale. Every kecamatan draws from its
//! own random stream, seeded from the run seed and its code, so the output
//! is identical for the same seed and parameters however threads are
//! scheduled.

mod names;
pub mod people;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use people::{KabContext, KecamatanGenerator, KelurahanPlan, SerialOverflow};
pub use people::{age_on, date_to_days, days_to_date};

use crate::catalog::{self, RegionLevel, RegionScope, SCHEMA_VERSION, UnknownRegion};
use crate::record_key::RecordKeySecret;
use crate::warehouse::writer::{DEFAULT_ROWS_PER_ROW_GROUP, MAX_ROWS_PER_FILE};
use crate::warehouse::{
    Manifest, PartitionWriter, Provenance, RECORD_KEY_ALGORITHM, RecordKeyInfo, SnapshotError,
    SnapshotWriter,
};

/// Parameters of one generator run.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// A Kemendagri code prefix (`61.71`, `61`, `61.71.01`) or `all`.
    pub region: String,
    /// Total people; `None` uses the reference population (Dec 2024).
    pub people: Option<u64>,
    /// Run seed: the same seed and options give the same snapshot.
    pub seed: u64,
    /// Reference date of the data (`tanggal_data`); ages are drawn against it.
    pub as_of: chrono::NaiveDate,
    /// Snapshot directory to create; its name becomes the snapshot id.
    pub out: PathBuf,
    /// Rows per Parquet row group of the `penduduk` files.
    pub rows_per_row_group: usize,
    /// Print progress to stderr every few seconds.
    pub progress: bool,
}

impl GenerateOptions {
    /// Options with the default row-group size and no progress output.
    pub fn new(
        region: &str,
        people: Option<u64>,
        seed: u64,
        as_of: chrono::NaiveDate,
        out: PathBuf,
    ) -> Self {
        GenerateOptions {
            region: region.to_string(),
            people,
            seed,
            as_of,
            out,
            rows_per_row_group: DEFAULT_ROWS_PER_ROW_GROUP,
            progress: false,
        }
    }
}

impl GenerateError {
    /// Snapshot failures by their own category; bad options are usage.
    pub fn category(&self) -> crate::error::ErrorCategory {
        match self {
            GenerateError::Snapshot(e) => e.category(),
            _ => crate::error::ErrorCategory::Usage,
        }
    }
}

/// Errors of a generator run: bad options, too large a scale, or a failed
/// snapshot write.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// `--region` is not a Kemendagri code.
    #[error(transparent)]
    Region(#[from] UnknownRegion),
    /// `--region` was given a comma-separated list instead of one prefix.
    #[error(
        "--region takes one code prefix or 'all', not a list ('{0}'); run the generator once per region"
    )]
    RegionList(String),
    /// `--people` was zero.
    #[error("--people must be at least 1, got {0}")]
    NoPeople(u64),
    /// The region holds no desa/kelurahan to place people in.
    #[error(
        "region '{region}' has no desa/kelurahan in the Kemendagri list, so there is nowhere to place people"
    )]
    EmptyRegion {
        /// The `--region` code prefix as given.
        region: String,
    },
    /// A NIK or KK serial number ran out for a kecamatan.
    #[error(transparent)]
    Serial(#[from] SerialOverflow),
    /// Writing the snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// Birthplace label from a kab/kota name: `Kota Pontianak` -> `PONTIANAK`.
pub fn birthplace_label(kab_name: &str) -> String {
    kab_name
        .trim_start_matches("Kabupaten ")
        .trim_start_matches("Kota ")
        .to_uppercase()
}

/// One output file: consecutive kecamatan of one kab/kota.
#[derive(Debug, Clone)]
struct Unit {
    kab: usize,
    part: usize,
    kecamatan: Vec<(String, Vec<KelurahanPlan>)>,
    rows: u64,
}

/// The whole run, decided up front and cheaply.
#[derive(Debug)]
struct Plan {
    kabs: Vec<KabContext>,
    units: Vec<Unit>,
    total: u64,
}

fn stable_seed(seed: u64, code: &str) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed;
    for b in code.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn plan(opts: &GenerateOptions) -> Result<Plan, GenerateError> {
    if opts.region.contains(',') {
        return Err(GenerateError::RegionList(opts.region.clone()));
    }
    if opts.people == Some(0) {
        return Err(GenerateError::NoPeople(0));
    }
    let scope = RegionScope::parse(&opts.region)?;
    let regions = catalog::regions();

    // Reference population of every desa in scope, by kab.
    struct KabDraft {
        ctx: KabContext,
        // (kecamatan, [(desa code, weight-based population)])
        kec: Vec<(String, Vec<(String, f64)>)>,
    }
    let mut drafts: Vec<KabDraft> = Vec::new();
    for kab in catalog::kab_population() {
        if !scope.touches(&kab.kode) {
            continue;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(stable_seed(opts.seed, &kab.kode));
        let desa: Vec<&catalog::Region> = regions
            .under(&kab.kode)
            .iter()
            .filter(|r| r.level == RegionLevel::DesaKelurahan)
            .collect();
        if desa.is_empty() {
            continue;
        }
        // Kelurahan (urban) are larger than desa; sizes vary.
        let weights: Vec<f64> = desa
            .iter()
            .map(|d| (if d.is_kelurahan() { 2.5 } else { 1.0 }) * rng.random_range(0.4..1.6))
            .collect();
        let wsum: f64 = weights.iter().sum();
        let total = kab.total() as f64;
        let mut kec: Vec<(String, Vec<(String, f64)>)> = Vec::new();
        for (d, w) in desa.iter().zip(&weights) {
            if !scope.covers(&d.kode) {
                continue;
            }
            let kec_code = &d.kode[..8];
            if kec.last().map(|(k, _)| k.as_str()) != Some(kec_code) {
                kec.push((kec_code.to_string(), Vec::new()));
            }
            kec.last_mut()
                .expect("just pushed")
                .1
                .push((d.kode.clone(), total * w / wsum));
        }
        if kec.is_empty() {
            continue;
        }
        drafts.push(KabDraft {
            ctx: KabContext {
                kode_kab: kab.kode.clone(),
                kode_prov: kab.kode[..2].to_string(),
                birthplace: birthplace_label(&kab.nama),
                urban: kab.nama.starts_with("Kota "),
                male_share: kab.laki_laki as f64 / kab.total().max(1) as f64,
            },
            kec,
        });
    }
    if drafts.is_empty() {
        return Err(GenerateError::EmptyRegion {
            region: opts.region.clone(),
        });
    }

    // Scale to --people with largest-remainder rounding, so the total is exact.
    let reference: f64 = drafts
        .iter()
        .flat_map(|k| k.kec.iter().flat_map(|(_, d)| d.iter().map(|(_, p)| *p)))
        .sum();
    let target = opts.people.map(|p| p as f64).unwrap_or(reference.round());
    let factor = target / reference;
    let mut shares: Vec<(usize, usize, usize, f64)> = Vec::new();
    for (ki, k) in drafts.iter().enumerate() {
        for (ci, (_, d)) in k.kec.iter().enumerate() {
            for (di, (_, p)) in d.iter().enumerate() {
                shares.push((ki, ci, di, p * factor));
            }
        }
    }
    let mut counts: Vec<u64> = shares.iter().map(|s| s.3.floor() as u64).collect();
    let assigned: u64 = counts.iter().sum();
    let mut short = (target as u64).saturating_sub(assigned);
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| {
        let fa = shares[a].3 - shares[a].3.floor();
        let fb = shares[b].3 - shares[b].3.floor();
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    for &i in order.iter().cycle().take(shares.len() * 2) {
        if short == 0 {
            break;
        }
        counts[i] += 1;
        short -= 1;
    }

    let mut kabs = Vec::new();
    let mut units = Vec::new();
    let mut idx = 0;
    for (ki, k) in drafts.into_iter().enumerate() {
        let mut part = 0;
        let mut current: Option<Unit> = None;
        for (kec_code, desa) in k.kec {
            let kel: Vec<KelurahanPlan> = desa
                .into_iter()
                .map(|(kode, _)| {
                    let people = counts[idx];
                    idx += 1;
                    KelurahanPlan { kode, people }
                })
                .filter(|p| p.people > 0)
                .collect();
            let rows: u64 = kel.iter().map(|k| k.people).sum();
            if rows == 0 {
                continue;
            }
            if let Some(u) = &current
                && u.rows + rows > MAX_ROWS_PER_FILE
            {
                units.push(current.take().expect("checked"));
                part += 1;
            }
            let u = current.get_or_insert_with(|| Unit {
                kab: ki,
                part,
                kecamatan: Vec::new(),
                rows: 0,
            });
            u.kecamatan.push((kec_code, kel));
            u.rows += rows;
        }
        if let Some(u) = current {
            units.push(u);
        }
        kabs.push(k.ctx);
    }
    let total = units.iter().map(|u| u.rows).sum();
    Ok(Plan { kabs, units, total })
}

/// Generates a snapshot. Returns its manifest.
pub fn generate(
    opts: &GenerateOptions,
    secret: &RecordKeySecret,
) -> Result<Manifest, GenerateError> {
    let plan = plan(opts)?;
    let writer = SnapshotWriter::create(&opts.out)?;
    let as_of = date_to_days(opts.as_of);
    let hasher = secret.hasher();
    let done = AtomicU64::new(0);
    let started = Instant::now();

    let stop = std::sync::atomic::AtomicBool::new(false);
    let files = std::thread::scope(|s| {
        if opts.progress {
            s.spawn(|| {
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    if last.elapsed() >= Duration::from_secs(3) {
                        last = Instant::now();
                        let n = done.load(Ordering::Relaxed);
                        let secs = started.elapsed().as_secs_f64();
                        eprintln!(
                            "generated {n} of {} people ({:.0}%), {:.0} rows/s",
                            plan.total,
                            100.0 * n as f64 / plan.total.max(1) as f64,
                            n as f64 / secs
                        );
                    }
                }
            });
        }
        // Stops the progress thread even if a worker panics.
        struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        let result: Result<Vec<_>, GenerateError> = plan
            .units
            .par_iter()
            .map(|unit| {
                let kab = &plan.kabs[unit.kab];
                let mut w = PartitionWriter::create(
                    writer.root(),
                    &kab.kode_kab,
                    unit.part,
                    opts.rows_per_row_group,
                )?;
                for (kec, kels) in &unit.kecamatan {
                    let mut g = KecamatanGenerator::new(opts.seed, kab, kec, as_of, &hasher);
                    for kel in kels {
                        let mut sink = |row: &crate::warehouse::PersonRow<'_>| {
                            w.push(row)?;
                            Ok(())
                        };
                        g.kelurahan(kel, &mut sink)?;
                        done.fetch_add(kel.people, Ordering::Relaxed);
                    }
                }
                Ok(w.close()?)
            })
            .collect();
        result
    })?;

    let row_count = files.iter().map(|f| f.rows).sum();
    let scope = RegionScope::parse(&opts.region)?;
    let manifest = Manifest {
        id: writer.id(),
        tanggal_data: opts.as_of,
        schema_version: SCHEMA_VERSION,
        synthetic: true,
        coverage: vec![opts.region.clone()],
        row_count,
        record_key: RecordKeyInfo {
            algorithm: RECORD_KEY_ALGORITHM.to_string(),
            secret_fingerprint: secret.fingerprint(),
        },
        produced_by: Provenance::Generator {
            tool: format!("agregat {}", env!("CARGO_PKG_VERSION")),
            seed: opts.seed,
            region: opts.region.clone(),
            people: opts.people,
            rows_per_row_group: opts.rows_per_row_group,
        },
        files,
    };
    Ok(writer.finish(manifest, &scope)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(region: &str, people: Option<u64>) -> GenerateOptions {
        GenerateOptions::new(
            region,
            people,
            7,
            "2026-06-30".parse().unwrap(),
            PathBuf::from("unused"),
        )
    }

    #[test]
    fn plan_scales_exactly_and_covers_every_kelurahan() {
        let p = plan(&opts("61.71", Some(69_000))).unwrap();
        assert_eq!(p.total, 69_000);
        let kel: usize = p
            .units
            .iter()
            .flat_map(|u| &u.kecamatan)
            .map(|(_, k)| k.len())
            .sum();
        assert_eq!(kel, 29);
        let p = plan(&opts("61.71", None)).unwrap();
        assert_eq!(p.total, 687_031);
    }

    #[test]
    fn plan_for_a_province_splits_by_kab() {
        let p = plan(&opts("61", Some(100_000))).unwrap();
        assert_eq!(p.total, 100_000);
        assert_eq!(p.kabs.len(), 14);
    }

    #[test]
    fn plan_for_a_kecamatan_and_bad_regions() {
        let p = plan(&opts("61.71.01", Some(5_000))).unwrap();
        assert_eq!(p.total, 5_000);
        assert_eq!(p.units.len(), 1);
        assert!(matches!(
            plan(&opts("61.99", None)),
            Err(GenerateError::Region(_))
        ));
        assert!(matches!(
            plan(&opts("61.71,61.72", None)),
            Err(GenerateError::RegionList(_))
        ));
    }
}
