//! `agregat audit`: verify the audit chain, write the monitoring report.
//! Both open the state read-only and never create it.

use std::path::{Path, PathBuf};

use super::{Error, state_file, write_out};
use crate::calendar::{Clock, SystemClock, WIB_OFFSET_SECONDS};
use crate::report;
use crate::state::{SqliteStore, StateStore};

/// `agregat audit` subcommands.
#[derive(clap::Subcommand)]
pub(super) enum Command {
    /// Recompute every hash of the audit chain; report the first broken link.
    Verify {
        /// State directory where `agregat serve` ran (or its state.sqlite);
        /// opened read-only, never created.
        #[arg(long, default_value = "agregat-state")]
        state: PathBuf,
    },
    /// Seal the live audit chain into a read-only segment file
    /// (`audit-segments/` in the state directory); the chain continues
    /// from its head and `audit verify` checks every segment.
    Seal {
        /// State directory where `agregat serve` ran (or its state.sqlite);
        /// never created.
        #[arg(long, default_value = "agregat-state")]
        state: PathBuf,
    },
    /// The six-monthly monitoring report (monev) for Disdukcapil.
    Report(ReportArgs),
}

/// Arguments of `agregat audit report`.
#[derive(clap::Args)]
pub(super) struct ReportArgs {
    /// First day (WIB), YYYY-MM-DD.
    #[arg(long)]
    from: chrono::NaiveDate,
    /// Last day (WIB), inclusive.
    #[arg(long)]
    to: chrono::NaiveDate,
    /// Only this agreement.
    #[arg(long)]
    agreement: Option<String>,
    /// html, md, csv or json.
    #[arg(long, default_value = "html")]
    format: String,
    /// Output file (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    /// State directory where `agregat serve` ran (or its state.sqlite);
    /// opened read-only, never created.
    #[arg(long, default_value = "agregat-state")]
    state: PathBuf,
    /// Policy directory, for the agreements' PKS details and allowances.
    #[arg(long, default_value = "data-samples/agreements")]
    policy: PathBuf,
    /// "Today" for the expiry warnings (default: today in WIB).
    #[arg(long)]
    as_of: Option<chrono::NaiveDate>,
}

pub(super) fn run(c: Command) -> Result<(), Error> {
    match c {
        Command::Verify { state } => verify(&state),
        Command::Seal { state } => {
            match crate::state::seal_segment(&state)? {
                Some(seal) => println!(
                    "sealed entries {}..={} ({} entries) into {}, head {}, sha256 {}",
                    seal.first_seq,
                    seal.last_seq,
                    seal.entries,
                    seal.relative_path(),
                    seal.head_hash,
                    seal.sha256
                ),
                None => println!("nothing to seal: the live audit chain is empty"),
            }
            Ok(())
        }
        Command::Report(a) => {
            let bytes = build_report(&a)?;
            write_out(a.out.as_deref(), &bytes)
        }
    }
}

fn verify(state: &Path) -> Result<(), Error> {
    let store = SqliteStore::open_read_only(state_file(state))?;
    let report = store.verify()?;
    match &report.first_broken {
        None => {
            println!(
                "audit chain OK: {} entries, head {}",
                report.entries,
                report.head_hash.as_deref().unwrap_or("(empty)")
            );
            Ok(())
        }
        Some(b) => Err(Error::ChainBroken {
            seq: b.seq,
            entries: report.entries,
            reason: b.reason.to_string(),
        }),
    }
}

/// Builds the monitoring report from the state database and the policy.
fn build_report(a: &ReportArgs) -> Result<Vec<u8>, Error> {
    let format: report::Format = a.format.parse().map_err(Error::Report)?;
    if a.to < a.from {
        return Err(Error::Usage(format!(
            "--to {} is before --from {}; give the first and the last day of the period",
            a.to, a.from
        )));
    }
    let store = SqliteStore::open_read_only(state_file(&a.state))?;
    // Expired agreements belong in the report: validate everything except
    // expiry (the report flags it itself).
    let policy = crate::agreement::Policy::load_dir(&a.policy, chrono::NaiveDate::MIN)?;
    let as_of = a.as_of.unwrap_or_else(|| SystemClock.today());
    let mut r =
        report::collect::from_state(&store, &policy, a.from, a.to, a.agreement.as_deref(), as_of)?;
    r.generated_at = (SystemClock.now() + chrono::Duration::seconds(i64::from(WIB_OFFSET_SECONDS)))
        .format("%Y-%m-%d %H:%M WIB")
        .to_string();
    if !r.chain.ok {
        eprintln!("WARNING: {}", r.chain.message);
    }
    report::render(&r, format).map_err(Error::Report)
}
