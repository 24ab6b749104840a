//! `agregat snapshot`: snapshot maintenance.

use std::path::PathBuf;

use super::Error;
use crate::warehouse::{Snapshot, Verify};

/// `agregat snapshot` subcommands.
#[derive(clap::Subcommand)]
pub(super) enum Command {
    /// Verify a snapshot (sizes, SHA-256, schemas) and print a summary.
    Verify { dir: PathBuf },
}

pub(super) fn run(c: Command) -> Result<(), Error> {
    let Command::Verify { dir } = c;
    let s = Snapshot::open(&dir, Verify::Full)?;
    let m = &s.manifest;
    println!(
        "snapshot '{}' OK: tanggal_data {}, {} rows, {} files, coverage {}, {}",
        m.id,
        m.tanggal_data,
        m.row_count,
        m.files.len(),
        m.coverage.join(","),
        if m.synthetic {
            "synthetic"
        } else {
            "production"
        }
    );
    Ok(())
}
