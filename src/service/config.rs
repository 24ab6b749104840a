//! Service configuration: `agregat.toml`, overridden by flags and
//! environment variables (the command line resolves those), with defaults
//! that serve the committed sample out of the box.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! warehouse = "data-samples"              # directory of snapshot directories
//! policy = "data-samples/agreements"      # PKS agreement files (*.toml)
//! queries = "queries"                     # saved queries (*.sql)
//! state = "agregat-state"                 # audit log + budget ledger (SQLite)
//! record_key_secret = "data-samples/SAMPLE-record-key-NOT-FOR-PRODUCTION.secret"
//! demo_tokens = "data-samples/DEMO-TOKENS-NOT-FOR-PRODUCTION.toml"   # optional
//! verify_snapshots = "full"               # or "structure": skip the SHA-256 of
//!                                         # every file at start (large warehouses)
//!
//! [limits]
//! memory_limit_mb = 2048          # DataFusion memory pool of the process (all snapshots)
//! target_partitions = 0           # 0: one per core
//! query_timeout_seconds = 60      # upper bound; agreements may set less
//! max_body_bytes = 65536          # request bodies
//! max_concurrent_queries = 32     # queries executing at once; more wait
//! reload_poll_seconds = 2         # policy directory change detection
//! shutdown_grace_seconds = 30     # in-flight requests finish within this
//! header_read_timeout_seconds = 10  # a request head arrives within this
//! idle_timeout_seconds = 60       # idle kept-alive connections closed after
//! body_read_timeout_seconds = 30  # a request body arrives within this of its head (else 408)
//! max_connections = 0             # 0: below the file-descriptor limit
//! max_connections_per_address = 256 # behind a proxy: raise to max_connections
//! unauthenticated_per_address_per_minute = 120  # then 429 before authentication
//! lifetime_privacy_loss = 5.0     # per-person zCDP ρ ceiling, all agreements, all periods
//! min_free_disk_mb = 512          # below this free on the state's filesystem: /readyz and /v1 answer 503
//! audit_segment_entries = 1000000  # live audit entries sealed into a read-only segment (0: only `agregat audit seal`)
//! ```
//!
//! At a connection cap, the longest idle connection is closed to admit the
//! new one (see [`super::conn`]).
//!
//! Relative paths resolve against the directory of the config file (or the
//! working directory when there is none).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::state::STATE_FILE;

/// Resource limits of the service as a whole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceLimits {
    /// DataFusion memory pool (MiB) of the whole process, shared by all
    /// snapshots; at least 64 is used.
    pub memory_limit_mb: usize,
    /// DataFusion partitions per query; 0: one per core.
    pub target_partitions: usize,
    /// Upper bound (seconds) on a query's execution; agreements may set
    /// less. At least 1 is used.
    pub query_timeout_seconds: u64,
    /// Largest request body (bytes) accepted; larger bodies are refused
    /// with 413.
    pub max_body_bytes: usize,
    /// Queries executing at once; more wait for a slot. At least 1 is used.
    pub max_concurrent_queries: usize,
    /// How often (seconds) the policy directory is checked for changes.
    pub reload_poll_seconds: u64,
    /// How long (seconds) in-flight requests may take to finish after
    /// SIGTERM or Ctrl-C.
    pub shutdown_grace_seconds: u64,
    /// A request head must be complete this long after the connection
    /// opened (first request) or after its first byte (later requests).
    pub header_read_timeout_seconds: u64,
    /// A kept-alive connection with no request is closed after this long.
    pub idle_timeout_seconds: u64,
    /// A request body must be complete this long after its head, or the
    /// request is answered 408 and the connection closed.
    pub body_read_timeout_seconds: u64,
    /// Open connections at most; 0: as many as the file-descriptor limit
    /// allows (less a reserve). Always kept below that limit.
    pub max_connections: usize,
    /// Open connections per client address (IPv6: per /64) at most.
    pub max_connections_per_address: usize,
    /// Unauthenticated refusals an address may collect per minute; when
    /// they are used up, its `/v1` requests get 429 before authentication
    /// until the bucket refills. 0: no such limit.
    pub unauthenticated_per_address_per_minute: u32,
    /// The per-person privacy-loss ceiling (zCDP ρ) of the snapshot
    /// lineage, shared by every agreement in every period: the same people
    /// are in every snapshot, so their loss adds up across all of them.
    /// Each agreement's `budget_per_period` is carved out of it.
    pub lifetime_privacy_loss: f64,
    /// Free space (MiB) the state directory's filesystem must keep: below
    /// it `/readyz` answers 503 and `/v1` requests are refused with 503
    /// `disk_low` before anything is written (see [`super::disk`]).
    pub min_free_disk_mb: u64,
    /// Live audit entries after which the service seals them into a
    /// read-only segment by itself (checked every 10 s; `0`: only
    /// `agregat audit seal` seals). Keeps the live database small; the
    /// chain, `audit verify` and the report span the segments.
    pub audit_segment_entries: u64,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        ServiceLimits {
            memory_limit_mb: 2048,
            target_partitions: 0,
            query_timeout_seconds: 60,
            max_body_bytes: 64 * 1024,
            max_concurrent_queries: 32,
            reload_poll_seconds: 2,
            shutdown_grace_seconds: 30,
            header_read_timeout_seconds: 10,
            idle_timeout_seconds: 60,
            body_read_timeout_seconds: 30,
            max_connections: 0,
            max_connections_per_address: 256,
            unauthenticated_per_address_per_minute: 120,
            lifetime_privacy_loss: 5.0,
            min_free_disk_mb: 512,
            audit_segment_entries: 1_000_000,
        }
    }
}

/// Everything `agregat serve` needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Address and port the HTTP API listens on (`--listen`).
    pub listen: SocketAddr,
    /// Directory of snapshot directories (each with a `manifest.json`);
    /// every snapshot in it is served.
    pub warehouse: PathBuf,
    /// Directory of the PKS agreement files (`*.toml`); reloaded on SIGHUP
    /// and when its files change.
    pub policy: PathBuf,
    /// Directory of the saved queries (`*.sql`).
    pub queries: PathBuf,
    /// Directory of the state database (`state.sqlite`).
    pub state: PathBuf,
    /// The record-key secret; every served snapshot must have been built
    /// with it (its fingerprint is in the manifest), so cell keys agree
    /// across snapshots.
    pub record_key_secret: Option<PathBuf>,
    /// Demo tokens to print at start (the sample only).
    pub demo_tokens: Option<PathBuf>,
    /// How snapshots are checked at start.
    pub verify_snapshots: VerifySnapshots,
    /// Resource limits (the `[limits]` table).
    pub limits: ServiceLimits,
}

/// How thoroughly snapshots are checked when the service starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifySnapshots {
    /// Sizes, schemas and the SHA-256 of every file (seconds per 10 GB).
    #[default]
    Full,
    /// Sizes and schemas only; for large warehouses verified offline with
    /// `agregat snapshot verify`.
    Structure,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            warehouse: "data-samples".into(),
            policy: "data-samples/agreements".into(),
            queries: "queries".into(),
            state: "agregat-state".into(),
            record_key_secret: Some(
                "data-samples/SAMPLE-record-key-NOT-FOR-PRODUCTION.secret".into(),
            ),
            demo_tokens: Some("data-samples/DEMO-TOKENS-NOT-FOR-PRODUCTION.toml".into()),
            verify_snapshots: VerifySnapshots::Full,
            limits: ServiceLimits::default(),
        }
    }
}

/// Why the config file cannot be used (the service does not start).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown or mistyped key.
    #[error("config file {}: {message}", path.display())]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// The TOML parser's message (names the key and position).
        message: String,
    },
}

impl ServiceConfig {
    /// Reads a config file; relative paths in it resolve against its
    /// directory.
    pub fn load(path: &Path) -> Result<ServiceConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c: ServiceConfig = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if let Some(base) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            c.rebase(base);
        }
        Ok(c)
    }

    fn rebase(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        join(&mut self.warehouse);
        join(&mut self.policy);
        join(&mut self.queries);
        join(&mut self.state);
        if let Some(p) = self.record_key_secret.as_mut() {
            join(p);
        }
        if let Some(p) = self.demo_tokens.as_mut() {
            join(p);
        }
    }

    /// The SQLite file inside the state directory.
    pub fn state_file(&self) -> PathBuf {
        self.state.join(STATE_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_rebases() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agregat.toml");
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:9999\"\nwarehouse = \"wh\"\nverify_snapshots = \"structure\"\n[limits]\nmax_body_bytes = 10\n",
        )
        .unwrap();
        let c = ServiceConfig::load(&p).unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.warehouse, dir.path().join("wh"));
        assert_eq!(c.limits.max_body_bytes, 10);
        assert_eq!(c.verify_snapshots, VerifySnapshots::Structure);
        std::fs::write(&p, "listn = 1\n").unwrap();
        let e = ServiceConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("listn"), "{e}");
    }
}
