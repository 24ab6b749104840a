//! `agregat import`: the register's CSV export into a snapshot.

use std::path::PathBuf;

use super::Error;
use crate::record_key::RecordKeySecret;

/// Arguments of `agregat import`.
#[derive(clap::Args)]
pub(super) struct Args {
    #[arg(long)]
    csv: PathBuf,
    #[arg(long)]
    as_of: chrono::NaiveDate,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Mark the snapshot as synthetic (test exports); default production.
    #[arg(long)]
    synthetic: bool,
}

pub(super) fn run(a: Args) -> Result<(), Error> {
    let secret = RecordKeySecret::load(a.secret_file.as_deref())?;
    let m = crate::import::import_csv(&a.csv, a.as_of, &a.out, &secret, a.synthetic)?;
    eprintln!(
        "imported {} people from {} into snapshot '{}' at {}",
        m.row_count,
        a.csv.display(),
        m.id,
        a.out.display()
    );
    Ok(())
}
