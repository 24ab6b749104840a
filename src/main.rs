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
        /// The agreement whose rules apply: a PKS agreement file (as the
        /// service reads), the id of one in `--policy DIR`, or a gate-only
        /// agreement file.
        #[arg(long)]
        agreement: PathBuf,
        /// Directory of PKS agreement files; `--agreement` is then an id.
        #[arg(long)]
        policy: Option<PathBuf>,
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
        /// Label withheld cells `primary` (a small count) or `secondary`
        /// (withheld to protect one). Without it every withheld cell reads
        /// `withheld`: the labels would tell a reader which cells are small.
        #[arg(long)]
        show_reasons: bool,
    },
    /// Snapshot maintenance.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Serve the HTTP API. With no arguments: the committed sample
    /// (data-samples), its example agreements, state in ./agregat-state/,
    /// on 127.0.0.1:8080.
    Serve(ServeArgs),
    /// Agreement (PKS) files: validate a policy directory, mint tokens.
    Agreement {
        #[command(subcommand)]
        command: AgreementCommand,
    },
    /// The audit log: verify its hash chain, write the monitoring report.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

/// Settings of `agregat serve`: flags and environment variables override
/// the config file, which overrides the built-in defaults.
#[derive(clap::Args)]
struct ServeArgs {
    /// Config file (default: ./agregat.toml when it exists).
    #[arg(long, env = "AGREGAT_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:8080.
    #[arg(long, env = "AGREGAT_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Directory of snapshot directories.
    #[arg(long, env = "AGREGAT_WAREHOUSE")]
    warehouse: Option<PathBuf>,
    /// Policy directory of PKS agreement files.
    #[arg(long, env = "AGREGAT_POLICY")]
    policy: Option<PathBuf>,
    /// Saved queries directory.
    #[arg(long, env = "AGREGAT_QUERIES")]
    queries: Option<PathBuf>,
    /// State directory (audit log and budget ledger).
    #[arg(long, env = "AGREGAT_STATE")]
    state: Option<PathBuf>,
    /// Record-key secret file the snapshots were built with.
    #[arg(long, env = "AGREGAT_RECORD_KEY_SECRET_FILE")]
    record_key_secret: Option<PathBuf>,
    /// Memory pool per snapshot, MiB.
    #[arg(long, env = "AGREGAT_MEMORY_LIMIT_MB")]
    memory_limit_mb: Option<usize>,
    /// Upper bound of one query, seconds.
    #[arg(long, env = "AGREGAT_QUERY_TIMEOUT_SECONDS")]
    query_timeout_seconds: Option<u64>,
    /// Queries executing at once.
    #[arg(long, env = "AGREGAT_MAX_CONCURRENT_QUERIES")]
    max_concurrent_queries: Option<usize>,
}

#[derive(Subcommand)]
enum AgreementCommand {
    /// Validate every agreement file of a policy directory; each problem is
    /// reported with its file and line.
    Check {
        #[arg(default_value = "data-samples/agreements")]
        dir: PathBuf,
    },
    /// Mint a new token for an agreement: the token is printed once, only
    /// its SHA-256 is appended to the agreement file as a [[token]] block.
    /// Revoke by deleting the block; a running service reloads either way.
    Token {
        /// Agreement id, e.g. disdikbud-pontianak.
        id: String,
        #[arg(long, default_value = "data-samples/agreements")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute every hash of the audit chain; report the first broken link.
    Verify {
        /// State directory where `agregat serve` ran (or its state.sqlite);
        /// opened read-only, never created.
        #[arg(long, default_value = "agregat-state")]
        state: PathBuf,
    },
    /// The six-monthly monitoring report (monev) for Disdukcapil.
    Report {
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
            policy,
            sql,
            format,
            output,
        } => {
            let agreement = cli_agreement(&agreement, policy.as_deref())?;
            // Decision: the command line is the data owner's local tool (it
            // reads the snapshot files directly, which only Disdukcapil
            // holds). It applies the agreement's gate and protection, but
            // writes no audit entry and charges no budget; agencies query
            // through `agregat serve`, which does both.
            eprintln!(
                "agregat query: local run for the data owner under agreement '{}': protected as the agreement prescribes, but not audited and not charged to its budget; agencies query through `agregat serve`",
                agreement.id
            );
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
            show_reasons,
        } => {
            let text = std::fs::read_to_string(&input).map_err(agregat::Error::Runtime)?;
            let (out, summary) = agregat::protect::suppress::suppress_csv_labelled(
                &text,
                &dims,
                &value,
                k,
                show_reasons,
            )
            .map_err(agregat::Error::Suppress)?;
            print!("{out}");
            if show_reasons {
                eprintln!("{summary}");
            } else {
                eprintln!(
                    "{} cells: {} withheld, {} published",
                    summary.cells,
                    summary.primary + summary.secondary,
                    summary.cells - summary.primary - summary.secondary
                );
            }
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
        Command::Serve(args) => serve(args)?,
        Command::Agreement {
            command: AgreementCommand::Check { dir },
        } => {
            use agregat::service::Clock;
            let today = agregat::service::SystemClock.today();
            let policy = agregat::policy::Policy::load_dir(&dir, today)?;
            for p in policy.agreements() {
                println!(
                    "{}: OK ({}, {}, {} .. {}, {} tokens)",
                    p.id(),
                    p.institution,
                    p.stage,
                    p.valid_from,
                    p.valid_until,
                    p.tokens.len()
                );
            }
        }
        Command::Agreement {
            command: AgreementCommand::Token { id, dir },
        } => {
            use agregat::service::Clock;
            let today = agregat::service::SystemClock.today();
            let (token, token_id, file) = agregat::policy::add_token(&dir, &id, today)?;
            eprintln!(
                "added token '{token_id}' (its SHA-256 only) to {}; a running service picks it up within seconds.\nThe token is shown once; hand it to {id} over a secure channel:",
                file.display()
            );
            println!("{token}");
        }
        Command::Audit {
            command: AuditCommand::Verify { state },
        } => {
            use agregat::state::StateStore;
            let store = agregat::state::SqliteStore::open_read_only(state_file(&state))?;
            let report = store.verify()?;
            match &report.first_broken {
                None => println!(
                    "audit chain OK: {} entries, head {}",
                    report.entries,
                    report.head_hash.as_deref().unwrap_or("(empty)")
                ),
                Some(b) => {
                    return Err(agregat::Error::ChainBroken {
                        seq: b.seq,
                        entries: report.entries,
                        reason: b.reason.to_string(),
                    });
                }
            }
        }
        Command::Audit {
            command:
                AuditCommand::Report {
                    from,
                    to,
                    agreement,
                    format,
                    out,
                    state,
                    policy,
                    as_of,
                },
        } => {
            let bytes = audit_report(from, to, agreement, &format, &state, &policy, as_of)?;
            match out {
                Some(path) => std::fs::write(&path, bytes).map_err(agregat::Error::Runtime)?,
                None => {
                    use std::io::Write;
                    std::io::stdout()
                        .write_all(&bytes)
                        .map_err(agregat::Error::Runtime)?;
                }
            }
        }
    }
    Ok(())
}

/// The config file, then flags and environment variables on top.
fn serve_config(args: ServeArgs) -> Result<agregat::service::ServiceConfig, agregat::Error> {
    use agregat::service::ServiceConfig;
    let mut c = match &args.config {
        Some(p) => ServiceConfig::load(p).map_err(agregat::service::ServiceError::from)?,
        None if std::path::Path::new("agregat.toml").is_file() => {
            ServiceConfig::load(std::path::Path::new("agregat.toml"))
                .map_err(agregat::service::ServiceError::from)?
        }
        None => ServiceConfig::default(),
    };
    if let Some(v) = args.listen {
        c.listen = v;
    }
    if let Some(v) = args.warehouse {
        c.warehouse = v;
    }
    if let Some(v) = args.policy {
        c.policy = v;
    }
    if let Some(v) = args.queries {
        c.queries = v;
    }
    if let Some(v) = args.state {
        c.state = v;
    }
    if let Some(v) = args.record_key_secret {
        c.record_key_secret = Some(v);
    }
    if let Some(v) = args.memory_limit_mb {
        c.limits.memory_limit_mb = v;
    }
    if let Some(v) = args.query_timeout_seconds {
        c.limits.query_timeout_seconds = v;
    }
    if let Some(v) = args.max_concurrent_queries {
        c.limits.max_concurrent_queries = v;
    }
    Ok(c)
}

/// Builds the monitoring report from the state database and the policy.
fn audit_report(
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
    agreement: Option<String>,
    format: &str,
    state: &std::path::Path,
    policy: &std::path::Path,
    as_of: Option<chrono::NaiveDate>,
) -> Result<Vec<u8>, agregat::Error> {
    use agregat::report;
    use agregat::service::Clock;
    let format: report::Format = format.parse().map_err(agregat::Error::Report)?;
    if to < from {
        return Err(agregat::Error::Usage(format!(
            "--to {to} is before --from {from}; give the first and the last day of the period"
        )));
    }
    let store = agregat::state::SqliteStore::open_read_only(state_file(state))?;
    // Expired agreements belong in the report: validate everything except
    // expiry (the report flags it itself).
    let policy = agregat::policy::Policy::load_dir(policy, chrono::NaiveDate::MIN)?;
    let as_of = as_of.unwrap_or_else(|| agregat::service::SystemClock.today());
    let mut r =
        report::collect::from_state(&store, &policy, from, to, agreement.as_deref(), as_of)?;
    r.generated_at = (chrono::Utc::now() + chrono::Duration::hours(7))
        .format("%Y-%m-%d %H:%M WIB")
        .to_string();
    if !r.chain.ok {
        eprintln!("WARNING: {}", r.chain.message);
    }
    report::render(&r, format).map_err(agregat::Error::Report)
}

/// The state database file of a state directory (or the file itself).
/// Only `serve` creates state; the audit commands open it read-only.
fn state_file(path: &std::path::Path) -> PathBuf {
    if path.is_dir() {
        path.join(agregat::service::config::STATE_FILE)
    } else {
        path.to_path_buf()
    }
}

/// The agreement of `agregat query`: an id in a policy directory, a PKS
/// agreement file (validated with its whole directory, as the service
/// does), or a gate-only agreement file.
fn cli_agreement(
    agreement: &std::path::Path,
    policy: Option<&std::path::Path>,
) -> Result<agregat::agreement::Agreement, agregat::Error> {
    use agregat::service::Clock;
    let today = agregat::service::SystemClock.today();
    if let Some(dir) = policy {
        let policy = agregat::policy::Policy::load_dir(dir, today)?;
        let id = agreement.to_string_lossy();
        return match policy.get(&id) {
            Some(p) => Ok(p.agreement.clone()),
            None => {
                let ids: Vec<&str> = policy.agreements().map(|p| p.id()).collect();
                Err(agregat::Error::Usage(format!(
                    "no agreement '{id}' in {}; the agreements there are: {}",
                    dir.display(),
                    ids.join(", ")
                )))
            }
        };
    }
    let text = std::fs::read_to_string(agreement).unwrap_or_default();
    let pks = text
        .lines()
        .any(|l| l.trim_start().starts_with("pks_number"));
    if !pks {
        return Ok(agregat::agreement::Agreement::load(agreement)?);
    }
    let dir = agreement
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let policy = agregat::policy::Policy::load_dir(dir, today)?;
    let wanted = std::fs::canonicalize(agreement).map_err(agregat::Error::Runtime)?;
    policy
        .agreements()
        .find(|p| std::fs::canonicalize(&p.file).is_ok_and(|f| f == wanted))
        .map(|p| p.agreement.clone())
        .ok_or_else(|| {
            agregat::Error::Usage(format!(
                "{} is not one of the agreements loaded from {}",
                agreement.display(),
                dir.display()
            ))
        })
}

fn serve(args: ServeArgs) -> Result<(), agregat::Error> {
    use agregat::service::{AppState, SystemClock, run_until_signal};
    use std::sync::Arc;
    let config = serve_config(args)?;
    // Worker threads get the main thread's 8 MiB stack, not tokio's 2 MiB:
    // the gate refuses deep expressions before any recursive walk, and this
    // is the margin behind that limit.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
        .map_err(agregat::Error::Runtime)?;
    runtime.block_on(async {
        let demo = config.demo_tokens.clone();
        let listen = config.listen;
        eprintln!(
            "agregat: opening warehouse {}, policy {}, state {}",
            config.warehouse.display(),
            config.policy.display(),
            config.state.display()
        );
        let state = Arc::new(AppState::open(config, Arc::new(SystemClock)).await?);
        let policy = state.policy();
        eprintln!(
            "agregat: {} snapshots ({}), {} agreements ({})",
            state.snapshots().len(),
            state
                .snapshots()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            policy.agreements().count(),
            policy
                .agreements()
                .map(|p| p.id().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(tokens) = demo
            .as_deref()
            .filter(|p| p.is_file())
            .and_then(|p| agregat::policy::load_demo_tokens(p).ok())
        {
            print_demo(&tokens, listen);
        }
        run_until_signal(state).await?;
        Ok::<(), agregat::Error>(())
    })
}

/// The demo credentials of the sample, with a ready-to-paste request.
fn print_demo(tokens: &std::collections::BTreeMap<String, String>, listen: std::net::SocketAddr) {
    eprintln!("agregat: DEMO tokens of the synthetic sample (never use these in production):");
    for (id, token) in tokens {
        eprintln!("  {id}: {token}");
    }
    if let Some(token) = tokens.get("disdikbud-pontianak") {
        println!(
            "\nEducation office (Dinas Pendidikan dan Kebudayaan), school-age children per kelurahan:\n\n  curl -s -X POST http://{listen}/v1/queries/usia_sekolah \\\n    -H 'Authorization: Bearer {token}' \\\n    -H 'Content-Type: application/json' -d '{{\"tahun_ajaran\": 2026}}'\n\nAd-hoc SQL (add ?format=csv or ?format=parquet to download):\n\n  curl -s -X POST http://{listen}/v1/query \\\n    -H 'Authorization: Bearer {token}' \\\n    -H 'Content-Type: application/json' \\\n    -d '{{\"sql\": \"SELECT kode_kec, jenis_kelamin, COUNT(*) AS jumlah FROM penduduk GROUP BY 1, 2\"}}'\n"
        );
    }
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
