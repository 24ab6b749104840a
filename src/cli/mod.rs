//! The `agregat` command line: the subcommands, one file each, over the
//! library (ripgrep and xsv's layout). `main.rs` only parses and exits.
//!
//! Owns: the command tree, the command line's error type and its exit
//! codes (through [`crate::error::ErrorCategory`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::agreement::AgreementError;
use crate::error::ErrorCategory;
use crate::generate::GenerateError;
use crate::import::ImportError;
use crate::query::RunError;
use crate::record_key::SecretError;
use crate::warehouse::SnapshotError;

mod agreement;
mod audit;
mod generate;
mod import;
mod ptable;
mod query;
mod serve;
mod snapshot;
mod suppress;

/// The `agregat` command.
#[derive(Parser)]
#[command(
    name = "agregat",
    version,
    about = "Aggregate-only statistics over the population register (UU 24/2013 Pasal 58 ayat 3)"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a synthetic snapshot.
    Generate(generate::Args),
    /// Import the register's CSV export into a snapshot (strict validation).
    Import(import::Args),
    /// Run one aggregate query locally through the release pipeline, under a
    /// PKS agreement (a local run of the data owner: not audited, not
    /// charged).
    Query(query::Args),
    /// Perturbation tables for the cell-key method.
    Ptable {
        #[command(subcommand)]
        command: ptable::Command,
    },
    /// Apply primary and secondary suppression to a table made elsewhere
    /// (CSV with margins as empty, `Total` or `JUMLAH`) and print the pattern.
    Suppress(suppress::Args),
    /// Snapshot maintenance.
    Snapshot {
        #[command(subcommand)]
        command: snapshot::Command,
    },
    /// Serve the HTTP API. With no arguments: the committed sample
    /// (data-samples), its example agreements, state in ./agregat-state/,
    /// on 127.0.0.1:8080.
    Serve(serve::Args),
    /// Agreement (PKS) files: validate a policy directory, mint tokens.
    Agreement {
        #[command(subcommand)]
        command: agreement::Command,
    },
    /// The audit log: verify its hash chain, write the monitoring report.
    Audit {
        #[command(subcommand)]
        command: audit::Command,
    },
}

/// Parses the command line, runs the subcommand, prints an error for
/// humans and exits with its category's code.
pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(u8::try_from(e.category().exit_code()).unwrap_or(1))
        }
    }
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Import(a) => import::run(a),
        Command::Query(a) => query::run(a),
        Command::Ptable { command } => ptable::run(command),
        Command::Suppress(a) => suppress::run(a),
        Command::Snapshot { command } => snapshot::run(command),
        Command::Serve(a) => serve::run(a),
        Command::Agreement { command } => agreement::run(command),
        Command::Audit { command } => audit::run(command),
    }
}

/// Writes bytes to a file, or to standard output.
fn write_out(out: Option<&Path>, bytes: &[u8]) -> Result<(), Error> {
    match out {
        Some(path) => std::fs::write(path, bytes).map_err(Error::Runtime),
        None => {
            use std::io::Write;
            std::io::stdout().write_all(bytes).map_err(Error::Runtime)
        }
    }
}

/// The state database file of a state directory (or the file itself).
/// Only `serve` creates state; the audit commands open it read-only.
fn state_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(crate::service::config::STATE_FILE)
    } else {
        path.to_path_buf()
    }
}

/// The command line's error: every module's error, wrapped, never
/// flattened into a string. Its category gives the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A snapshot could not be opened, verified or written.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// `agregat generate` failed: bad options, too large a scale or a failed
    /// snapshot write.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// `agregat import` rejected the register's CSV export.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// The record-key secret could not be loaded.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// An agreement (PKS) file is invalid (exit code of `Usage`).
    #[error(transparent)]
    Agreement(#[from] AgreementError),
    /// A local `agregat query` run failed in planning, validation or
    /// execution.
    #[error(transparent)]
    Query(#[from] RunError),
    /// The agreement may not be used now, or not on this snapshot (stage
    /// rule, region overlap).
    #[error(transparent)]
    Access(crate::agreement::AccessRefusal),
    /// A released table could not be encoded (an internal error).
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    /// Reading an input file, writing the output or starting the runtime
    /// failed (exit code of `Io`).
    #[error("runtime I/O failure: {0}")]
    Runtime(std::io::Error),
    /// A ptable could not be generated or its CSV not parsed.
    #[error(transparent)]
    PTable(crate::protect::ptable::PTableError),
    /// `agregat ptable check` found violations in a ptable file (exit code
    /// of `InvalidData`).
    #[error("{file}: {violations} ptable violations (listed above)")]
    PTableCheck {
        /// The checked ptable file, as displayed.
        file: String,
        /// How many violations were found (each printed before the error).
        violations: usize,
    },
    /// `agregat suppress`: malformed input table or a pattern that cannot
    /// be made safe.
    #[error(transparent)]
    Suppress(crate::protect::suppress::SuppressError),
    /// Saved queries could not be loaded or rendered.
    #[error(transparent)]
    Saved(Box<crate::saved::SavedError>),
    /// The state database (budget ledger, release store, audit chain)
    /// failed or refused.
    #[error(transparent)]
    State(Box<crate::state::StateError>),
    /// `agregat serve` could not start.
    #[error(transparent)]
    Service(Box<crate::service::ServiceError>),
    /// Everything wrong with a policy directory, reported together.
    #[error(transparent)]
    Policy(Box<crate::agreement::PolicyErrors>),
    /// The monitoring report has an unknown format or could not be written.
    #[error(transparent)]
    Report(crate::report::ReportError),
    /// A command-line argument that is wrong in itself.
    #[error("{0}")]
    Usage(String),
    /// `agregat audit verify` found the audit hash chain broken (exit code
    /// of `Integrity`).
    #[error(
        "audit chain broken at entry {seq} (of {entries}): {reason}; the log was tampered with or damaged after it was written: restore it from a backup and investigate"
    )]
    ChainBroken {
        /// Sequence number of the first entry that does not verify.
        seq: u64,
        /// Number of entries in the log.
        entries: u64,
        /// Why that entry does not verify.
        reason: String,
    },
}

impl From<crate::service::ServiceError> for Error {
    fn from(e: crate::service::ServiceError) -> Self {
        Error::Service(Box::new(e))
    }
}

impl From<crate::agreement::PolicyErrors> for Error {
    fn from(e: crate::agreement::PolicyErrors) -> Self {
        Error::Policy(Box::new(e))
    }
}

impl From<crate::saved::SavedError> for Error {
    fn from(e: crate::saved::SavedError) -> Self {
        Error::Saved(Box::new(e))
    }
}

impl From<crate::state::StateError> for Error {
    fn from(e: crate::state::StateError) -> Self {
        Error::State(Box::new(e))
    }
}

impl Error {
    /// The category of the wrapped error (the exit code comes from the one
    /// table in [`crate::error`]).
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::Snapshot(e) => e.category(),
            Error::Generate(e) => e.category(),
            Error::Import(e) => e.category(),
            Error::Secret(e) => e.category(),
            Error::Agreement(_) | Error::Policy(_) => ErrorCategory::Usage,
            Error::Query(e) => e.category(),
            Error::Access(e) => e.category(),
            Error::Output(_) => ErrorCategory::Internal,
            Error::Runtime(_) => ErrorCategory::Io,
            Error::PTable(_) | Error::Suppress(_) => ErrorCategory::Usage,
            Error::PTableCheck { .. } => ErrorCategory::InvalidData,
            Error::Saved(_) => ErrorCategory::Usage,
            Error::State(e) => e.category(),
            Error::Service(e) => e.category(),
            Error::ChainBroken { .. } => ErrorCategory::Integrity,
            Error::Report(_) | Error::Usage(_) => ErrorCategory::Usage,
        }
    }
}
