//! `agregat generate`: a realistic synthetic snapshot.

use std::path::PathBuf;

use super::Error;
use crate::generate::{GenerateOptions, generate};
use crate::record_key::RecordKeySecret;

/// Arguments of `agregat generate`.
#[derive(clap::Args)]
pub(super) struct Args {
    /// Kemendagri code prefix (61.71, 61, 61.71.01) or 'all'.
    #[arg(long)]
    region: String,
    /// Total people (default: the Dec 2024 reference population of the region).
    #[arg(long)]
    people: Option<u64>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Reference date (tanggal_data), YYYY-MM-DD.
    #[arg(long)]
    as_of: chrono::NaiveDate,
    /// Snapshot directory to create, e.g. data/warehouse/dkb-2026-s1.
    #[arg(long)]
    out: PathBuf,
    /// Record-key secret file (else $AGREGAT_RECORD_KEY_SECRET).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Rows per Parquet row group.
    #[arg(long, default_value_t = crate::warehouse::writer::DEFAULT_ROWS_PER_ROW_GROUP)]
    rows_per_row_group: usize,
}

pub(super) fn run(a: Args) -> Result<(), Error> {
    let secret = RecordKeySecret::load(a.secret_file.as_deref())?;
    let mut opts = GenerateOptions::new(&a.region, a.people, a.seed, a.as_of, a.out.clone());
    opts.rows_per_row_group = a.rows_per_row_group;
    opts.progress = true;
    let started = std::time::Instant::now();
    let m = generate(&opts, &secret)?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "wrote snapshot '{}' to {}: {} people in {} files, {:.1} s ({:.0} rows/s)",
        m.id,
        a.out.display(),
        m.row_count,
        m.files.len(),
        secs,
        m.row_count as f64 / secs
    );
    Ok(())
}
