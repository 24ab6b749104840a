//! `agregat query`: one aggregate query through the release pipeline,
//! under a PKS agreement, on a snapshot directory.
//!
//! Decision: this is the data owner's local tool. It reads the snapshot
//! files directly, which only Disdukcapil holds, so an agency cannot run
//! it. It applies the agreement exactly as the service does (the same
//! file format and checks, the same pipeline, gate and protection), but on
//! a local ledger ([`crate::release::Pipeline::local`]): it writes no audit
//! entry and charges no agreement's budget, and says so on every run.
//! Agencies query through `agregat serve`, which does both.

use std::path::{Path, PathBuf};

use super::{Error, write_out};
use crate::agreement::{Pks, Policy};
use crate::calendar::{Clock, SystemClock};
use crate::output::Format;
use crate::query::{Engine, EngineConfig};
use crate::release::{Pipeline, run_with};
use crate::warehouse::{Snapshot, Verify};

/// Arguments of `agregat query`.
#[derive(clap::Args)]
pub(super) struct Args {
    /// Snapshot directory.
    #[arg(long)]
    snapshot: PathBuf,
    /// The agreement whose rules apply: a PKS agreement file (validated
    /// with its whole directory, as the service reads it), or the id of
    /// one in `--policy DIR`.
    #[arg(long)]
    agreement: PathBuf,
    /// Directory of PKS agreement files; `--agreement` is then an id.
    #[arg(long)]
    policy: Option<PathBuf>,
    #[arg(long)]
    sql: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Write to this file instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
}

pub(super) fn run(a: Args) -> Result<(), Error> {
    let pks = agreement(&a.agreement, a.policy.as_deref())?;
    let agreement = &pks.agreement;
    eprintln!(
        "agregat query: local run for the data owner under agreement '{}': protected as the agreement prescribes, but not audited and not charged to its budget; agencies query through `agregat serve`",
        agreement.id()
    );
    let snap = Snapshot::open(&a.snapshot, Verify::Full)?;
    // The same access rules as the service: the stage rule and the region
    // overlap (validity was checked when the directory loaded).
    pks.check_snapshot(snap.id(), snap.manifest.synthetic, &snap.coverage())
        .map_err(Error::Access)?;
    let runtime = tokio::runtime::Runtime::new().map_err(Error::Runtime)?;
    let result = runtime.block_on(async {
        let engine = Engine::open(snap, EngineConfig::default())
            .await
            .map_err(|e| Error::Query(e.into()))?;
        let pipeline = Pipeline::local()?;
        Ok::<_, Error>(run_with(&pipeline, &engine, agreement, &a.sql).await?)
    })?;
    let bytes = crate::output::encode(&result.table, a.format)?;
    write_out(a.output.as_deref(), &bytes)
}

/// The agreement of `agregat query`: an id in a policy directory, or a
/// PKS agreement file, validated with its whole directory as the service
/// does.
fn agreement(agreement: &Path, policy: Option<&Path>) -> Result<Pks, Error> {
    let today = SystemClock.today();
    if let Some(dir) = policy {
        let policy = Policy::load_dir(dir, today)?;
        let id = agreement.to_string_lossy();
        return match policy.get(&id) {
            Some(p) => Ok(Pks::clone(p)),
            None => {
                let ids: Vec<&str> = policy.agreements().map(|p| p.id()).collect();
                Err(Error::Usage(format!(
                    "no agreement '{id}' in {}; the agreements there are: {}",
                    dir.display(),
                    ids.join(", ")
                )))
            }
        };
    }
    if !agreement.is_file() {
        return Err(Error::Usage(format!(
            "no agreement file {}; give a PKS agreement file (e.g. data-samples/agreements/bappeda-pontianak.toml), or --policy DIR --agreement ID",
            agreement.display()
        )));
    }
    let dir = agreement
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let policy = Policy::load_dir(dir, today)?;
    let wanted = std::fs::canonicalize(agreement).map_err(Error::Runtime)?;
    policy
        .agreements()
        .find(|p| std::fs::canonicalize(&p.file).is_ok_and(|f| f == wanted))
        .map(|p| Pks::clone(p))
        .ok_or_else(|| {
            Error::Usage(format!(
                "{} is not one of the agreements loaded from {}",
                agreement.display(),
                dir.display()
            ))
        })
}
