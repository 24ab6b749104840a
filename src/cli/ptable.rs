//! `agregat ptable`: perturbation tables of the cell-key method.

use std::path::PathBuf;

use super::Error;
use crate::protect::ptable::{PTable, PTableParams};

/// `agregat ptable` subcommands.
#[derive(clap::Subcommand)]
pub(super) enum Command {
    /// Generate a ptable (maximum-entropy construction) as CSV on stdout.
    Generate {
        #[arg(long)]
        max_perturbation: u32,
        #[arg(long)]
        variance: f64,
        #[arg(long)]
        js: u32,
        #[arg(long, default_value_t = 256)]
        keys: u32,
    },
    /// Check a ptable CSV; every violation is reported with its row.
    Check { file: PathBuf },
}

pub(super) fn run(c: Command) -> Result<(), Error> {
    match c {
        Command::Generate {
            max_perturbation,
            variance,
            js,
            keys,
        } => {
            let t = PTable::generate(&PTableParams::new(max_perturbation, variance, js, keys))
                .map_err(Error::PTable)?;
            print!("{}", t.to_csv());
            Ok(())
        }
        Command::Check { file } => {
            let text = std::fs::read_to_string(&file).map_err(Error::Runtime)?;
            let name = file.display().to_string();
            let t = PTable::from_csv(&text, &name).map_err(Error::PTable)?;
            let violations = t.check(None);
            if violations.is_empty() {
                println!(
                    "{name}: OK ({} keys, rows 0..={}, |perturbation| <= {})",
                    t.key_range(),
                    t.max_value(),
                    t.perturbation_bound()
                );
                return Ok(());
            }
            for v in &violations {
                println!("{name}: {v}");
            }
            Err(Error::PTableCheck {
                file: name,
                violations: violations.len(),
            })
        }
    }
}
