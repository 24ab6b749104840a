//! `agregat serve`: the HTTP API. Flags and environment variables are
//! layered over the config file here; the service itself is
//! [`crate::service`].

use std::path::PathBuf;
use std::sync::Arc;

use super::Error;
use crate::calendar::SystemClock;
use crate::service::{AppState, ServiceConfig, ServiceError, run_until_signal};

/// Settings of `agregat serve`: flags and environment variables override
/// the config file, which overrides the built-in defaults.
#[derive(clap::Args)]
pub(super) struct Args {
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
    /// DataFusion memory pool of the process, MiB.
    #[arg(long, env = "AGREGAT_MEMORY_LIMIT_MB")]
    memory_limit_mb: Option<usize>,
    /// Upper bound of one query, seconds.
    #[arg(long, env = "AGREGAT_QUERY_TIMEOUT_SECONDS")]
    query_timeout_seconds: Option<u64>,
    /// Queries executing at once.
    #[arg(long, env = "AGREGAT_MAX_CONCURRENT_QUERIES")]
    max_concurrent_queries: Option<usize>,
}

/// The config file, then flags and environment variables on top.
fn config(args: Args) -> Result<ServiceConfig, Error> {
    let default_file = std::path::Path::new("agregat.toml");
    let mut c = match &args.config {
        Some(p) => ServiceConfig::load(p).map_err(ServiceError::from)?,
        None if default_file.is_file() => {
            ServiceConfig::load(default_file).map_err(ServiceError::from)?
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

pub(super) fn run(args: Args) -> Result<(), Error> {
    let config = config(args)?;
    // Worker threads get the main thread's 8 MiB stack, not tokio's 2 MiB:
    // the gate refuses deep expressions before any recursive walk, and this
    // is the margin behind that limit.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
        .map_err(Error::Runtime)?;
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
            .and_then(|p| crate::agreement::load_demo_tokens(p).ok())
        {
            print_demo(&tokens, listen);
        }
        run_until_signal(state).await?;
        Ok::<(), Error>(())
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
