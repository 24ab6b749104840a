//! The `agregat` command line: a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use agregat::generate::{GenerateOptions, generate};
use agregat::record_key::RecordKeySecret;
use agregat::warehouse::{Snapshot, Verify};

#[derive(Parser)]
#[command(
    name = "agregat",
    version,
    about = "Aggregate-only statistics over the population register (UU 24/2013 Pasal 58 ayat 3)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a synthetic snapshot.
    Generate {
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
        #[arg(long, default_value_t = agregat::warehouse::writer::DEFAULT_ROWS_PER_ROW_GROUP)]
        rows_per_row_group: usize,
    },
    /// Import the register's CSV export into a snapshot (strict validation).
    Import {
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
    },
    /// Run one aggregate query locally through the full pipeline.
    Query {
        /// Snapshot directory.
        #[arg(long)]
        snapshot: PathBuf,
        /// Agreement file (TOML) whose rules apply.
        #[arg(long)]
        agreement: PathBuf,
        #[arg(long)]
        sql: String,
        #[arg(long, value_enum, default_value_t = agregat::output::Format::Table)]
        format: agregat::output::Format,
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Perturbation tables for the cell-key method.
    Ptable {
        #[command(subcommand)]
        command: PtableCommand,
    },
    /// Apply primary and secondary suppression to a table made elsewhere
    /// (CSV with margins as empty, `Total` or `JUMLAH`) and print the pattern.
    Suppress {
        #[arg(long)]
        input: PathBuf,
        /// Dimension columns, comma-separated.
        #[arg(long, value_delimiter = ',')]
        dims: Vec<String>,
        /// The count column.
        #[arg(long)]
        value: String,
        /// Threshold: counts 1..k-1 are withheld.
        #[arg(long, default_value_t = 10)]
        k: u64,
    },
    /// Snapshot maintenance.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

#[derive(Subcommand)]
enum PtableCommand {
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

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Verify a snapshot (sizes, SHA-256, schemas) and print a summary.
    Verify { dir: PathBuf },
}

fn run(cli: Cli) -> Result<(), agregat::Error> {
    match cli.command {
        Command::Generate {
            region,
            people,
            seed,
            as_of,
            out,
            secret_file,
            rows_per_row_group,
        } => {
            let secret = RecordKeySecret::load(secret_file.as_deref())?;
            let mut opts = GenerateOptions::new(&region, people, seed, as_of, out.clone());
            opts.rows_per_row_group = rows_per_row_group;
            opts.progress = true;
            let started = std::time::Instant::now();
            let m = generate(&opts, &secret)?;
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "wrote snapshot '{}' to {}: {} people in {} files, {:.1} s ({:.0} rows/s)",
                m.id,
                out.display(),
                m.row_count,
                m.files.len(),
                secs,
                m.row_count as f64 / secs
            );
        }
        Command::Import {
            csv,
            as_of,
            out,
            secret_file,
            synthetic,
        } => {
            let secret = RecordKeySecret::load(secret_file.as_deref())?;
            let m = agregat::import::import_csv(&csv, as_of, &out, &secret, synthetic)?;
            eprintln!(
                "imported {} people from {} into snapshot '{}' at {}",
                m.row_count,
                csv.display(),
                m.id,
                out.display()
            );
        }
        Command::Query {
            snapshot,
            agreement,
            sql,
            format,
            output,
        } => {
            let agreement = agregat::agreement::Agreement::load(&agreement)?;
            let snap = Snapshot::open(&snapshot, Verify::Full)?;
            let runtime = tokio::runtime::Runtime::new().map_err(agregat::Error::Runtime)?;
            let result = runtime.block_on(async {
                let engine =
                    agregat::query::Engine::open(snap, agregat::query::EngineConfig::default())
                        .await?;
                agregat::query::run_query(&engine, &agreement, &sql).await
            })?;
            let bytes = agregat::output::encode(&result.table, format)?;
            match output {
                Some(path) => std::fs::write(&path, bytes).map_err(agregat::Error::Runtime)?,
                None => {
                    use std::io::Write;
                    std::io::stdout()
                        .write_all(&bytes)
                        .map_err(agregat::Error::Runtime)?;
                }
            }
        }
        Command::Ptable {
            command:
                PtableCommand::Generate {
                    max_perturbation,
                    variance,
                    js,
                    keys,
                },
        } => {
            use agregat::protect::ptable::{PTable, PTableParams};
            let t = PTable::generate(&PTableParams::new(max_perturbation, variance, js, keys))
                .map_err(agregat::Error::PTable)?;
            print!("{}", t.to_csv());
        }
        Command::Ptable {
            command: PtableCommand::Check { file },
        } => {
            let text = std::fs::read_to_string(&file).map_err(agregat::Error::Runtime)?;
            let name = file.display().to_string();
            let t = agregat::protect::ptable::PTable::from_csv(&text, &name)
                .map_err(agregat::Error::PTable)?;
            let violations = t.check(None);
            if violations.is_empty() {
                println!(
                    "{name}: OK ({} keys, rows 0..={}, |perturbation| <= {})",
                    t.key_range(),
                    t.max_value(),
                    t.perturbation_bound()
                );
            } else {
                for v in &violations {
                    println!("{name}: {v}");
                }
                return Err(agregat::Error::PTableCheck {
                    file: name,
                    violations: violations.len(),
                });
            }
        }
        Command::Suppress {
            input,
            dims,
            value,
            k,
        } => {
            let text = std::fs::read_to_string(&input).map_err(agregat::Error::Runtime)?;
            let (out, summary) = agregat::protect::suppress::suppress_csv(&text, &dims, &value, k)
                .map_err(agregat::Error::Suppress)?;
            print!("{out}");
            eprintln!("{summary}");
        }
        Command::Snapshot {
            command: SnapshotCommand::Verify { dir },
        } => {
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
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.category().exit_code() as u8)
        }
    }
}
