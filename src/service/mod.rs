//! The HTTP service: `agregat serve`.
//!
//! Each request flows through the modules in data-flow order:
//!
//! 1. [`auth`]: the `Authorization` header is taken off the request before
//!    anything else sees it; the bearer token is hashed and compared in
//!    constant time with every token hash of the policy; the agreement's
//!    validity dates, stage and rate limit are checked;
//! 2. [`api`]: the body is parsed, the snapshot chosen, the SQL planned and
//!    validated by the query gate ([`crate::query`]), the DP budget
//!    reserved in the ledger, the query executed and protected
//!    ([`crate::protect`]), the ledger committed, and the release encoded
//!    ([`crate::output`]);
//!    cell-key repeats come from the response cache ([`cache`]);
//! 3. [`audit`]: one audit entry per request, accepted, rejected or failed,
//!    appended to the hash chain **before** the response leaves; if the
//!    append fails, nothing is released (503).
//!
//! The policy directory is reloaded on SIGHUP and when its files change
//! (polled); an invalid new policy is reported and the old one kept.
//! SIGTERM and Ctrl-C stop accepting connections, close the connections
//! that are not in a request, and let in-flight requests finish (and be
//! audited) within the grace period. Connection timeouts and caps are in
//! [`conn`].

pub mod api;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod config;
pub mod conn;
pub mod disk;
pub mod extract;
pub mod metrics;
pub mod problem;
pub mod ratelimit;
pub mod refusals;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;

pub use self::config::{ServiceConfig, ServiceLimits, VerifySnapshots};
use self::metrics::Metrics;
use self::ratelimit::RateLimiter;
use crate::agreement::{Policy, PolicyErrors};
use crate::query::{Engine, EngineConfig};
use crate::saved::SavedQueries;
use crate::state::{SqliteStore, StateStore, private};
use crate::warehouse::{Snapshot, Verify};

pub use crate::calendar::{Clock, ManualClock, SystemClock};

/// The client's address, as the connection saw it (no proxy headers are
/// trusted), for the audit log.
#[derive(Debug, Clone)]
pub struct ClientAddr(pub Option<String>);

impl ServiceError {
    /// The category of a failure to start or run the service.
    pub fn category(&self) -> crate::error::ErrorCategory {
        use crate::error::ErrorCategory as C;
        match self {
            ServiceError::Snapshot(e) => e.category(),
            ServiceError::Secret(e) => e.category(),
            ServiceError::SecretMismatch { .. } => C::Integrity,
            ServiceError::State(_)
            | ServiceError::Warehouse { .. }
            | ServiceError::Bind { .. }
            | ServiceError::Serve(_) => C::Io,
            ServiceError::Engine { .. } => C::Internal,
            _ => C::Usage,
        }
    }
}

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The config file cannot be read or parsed.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The policy directory is invalid (every problem listed).
    #[error(transparent)]
    Policy(#[from] PolicyErrors),
    /// A snapshot of the warehouse cannot be opened or fails verification.
    #[error(transparent)]
    Snapshot(#[from] crate::warehouse::SnapshotError),
    /// The warehouse directory holds no snapshot.
    #[error(
        "no snapshot in warehouse directory {}: it needs subdirectories with a manifest.json (see `agregat generate` and `agregat import`)",
        dir.display()
    )]
    NoSnapshots {
        /// The warehouse directory.
        dir: PathBuf,
    },
    /// The warehouse directory cannot be listed.
    #[error("cannot list warehouse directory {}: {source}", dir.display())]
    Warehouse {
        /// The warehouse directory.
        dir: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A snapshot was built with another record-key secret than the
    /// configured one (an integrity failure).
    #[error(
        "snapshot '{snapshot}' was built with a different record-key secret (fingerprint {found}, configured {expected}); cell keys would not agree across snapshots: rebuild it or configure its secret"
    )]
    SecretMismatch {
        /// The snapshot id.
        snapshot: String,
        /// The secret fingerprint in the snapshot's manifest.
        found: String,
        /// The fingerprint of the configured `record_key_secret`.
        expected: String,
    },
    /// The configured record-key secret cannot be loaded.
    #[error(transparent)]
    Secret(#[from] crate::record_key::SecretError),
    /// The state database cannot be created, opened or read.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The saved queries cannot be loaded.
    #[error(transparent)]
    Saved(#[from] crate::saved::SavedError),
    /// The query engine cannot register a snapshot.
    #[error("cannot open snapshot '{snapshot}' in the query engine: {source}")]
    Engine {
        /// The snapshot id.
        snapshot: String,
        /// The engine's error.
        source: crate::query::error::EngineError,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}; choose another address with --listen")]
    Bind {
        /// The configured listen address.
        addr: SocketAddr,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The server failed while running (or its task panicked).
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

/// Everything request handlers share.
pub struct AppState {
    /// The configuration the service started with.
    pub config: ServiceConfig,
    snapshots: BTreeMap<String, Arc<Engine>>,
    policy: RwLock<Arc<Policy>>,
    /// The state database: budget ledger, release store and audit chain.
    pub store: Arc<dyn StateStore>,
    /// The saved queries of the `queries` directory, loaded at start.
    pub saved: SavedQueries,
    /// Counters and histograms exposed at `/metrics`.
    pub metrics: Metrics,
    /// Per-agreement request rate limits, after authentication.
    pub limiter: RateLimiter,
    /// Unauthenticated refusals per client address, before authentication.
    pub address_limiter: RateLimiter,
    /// Unauthenticated refusals, counted until they are flushed.
    pub refusals: refusals::Refusals,
    /// The clock (WIB) for validity dates, budget periods and audit times.
    pub clock: Arc<dyn Clock>,
    ids: audit::RequestIds,
    /// Queries executing at once.
    pub query_slots: tokio::sync::Semaphore,
    /// Encoded cell-key releases by question.
    pub responses: cache::ResponseCache,
    /// The release pipeline (with the DP release cache), on this state
    /// and clock.
    pub pipeline: crate::release::Pipeline,
}

impl AppState {
    /// Opens everything the service needs; refuses to start on an invalid
    /// policy, a damaged snapshot or an unreadable state database.
    pub async fn open(
        config: ServiceConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<AppState, ServiceError> {
        let policy = Policy::load_dir(&config.policy, clock.today())?;
        let saved = SavedQueries::load_dir(&config.queries)?;
        let secret = match &config.record_key_secret {
            Some(p) => Some(crate::record_key::RecordKeySecret::from_file(p)?.fingerprint()),
            None => None,
        };
        let engine_config = EngineConfig {
            memory_limit_bytes: config.limits.memory_limit_mb.max(64) << 20,
            target_partitions: match config.limits.target_partitions {
                0 => EngineConfig::default().target_partitions,
                n => n,
            },
            query_timeout: Duration::from_secs(config.limits.query_timeout_seconds.max(1)),
        };
        let mut snapshots = BTreeMap::new();
        for dir in snapshot_dirs(&config.warehouse)? {
            let verify = match config.verify_snapshots {
                config::VerifySnapshots::Full => Verify::Full,
                config::VerifySnapshots::Structure => Verify::Structure,
            };
            let snapshot = Snapshot::open(&dir, verify)?;
            if let Some(expected) = &secret
                && &snapshot.manifest.record_key.secret_fingerprint != expected
            {
                return Err(ServiceError::SecretMismatch {
                    snapshot: snapshot.id().to_string(),
                    found: snapshot.manifest.record_key.secret_fingerprint.clone(),
                    expected: expected.clone(),
                });
            }
            let id = snapshot.id().to_string();
            let engine = Engine::open(snapshot, engine_config.clone())
                .await
                .map_err(|source| ServiceError::Engine {
                    snapshot: id.clone(),
                    source,
                })?;
            snapshots.insert(id, Arc::new(engine));
        }
        if snapshots.is_empty() {
            return Err(ServiceError::NoSnapshots {
                dir: config.warehouse.clone(),
            });
        }
        if let Some(p) = &config.record_key_secret {
            warn_if_secret_exposed(p);
        }
        let was_exposed = private::exposed_state(&config.state, &config.state_file());
        private::create_private_dir(&config.state).map_err(|source| {
            crate::state::StateError::Io {
                path: config.state.clone(),
                source,
            }
        })?;
        let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(config.state_file())?);
        // The margin memory of every snapshot lives in the state database.
        for (id, engine) in &snapshots {
            let recorded = store.margins_load(id)?;
            let (journal_store, snapshot) = (Arc::clone(&store), id.clone());
            engine.persist_margins(
                recorded,
                Arc::new(move |agreement: &str, rows: &[(String, String, f64)]| {
                    journal_store
                        .margins_record(agreement, &snapshot, rows)
                        .map_err(|e| e.to_string())
                }),
            );
        }
        for (path, mode) in was_exposed {
            eprintln!(
                "agregat: WARNING: {} was readable by group or others (mode {mode:03o}); it is now private (directory 0700, files 0600). It holds every agency's SQL, client addresses and token ids: if other users could read it, treat that as a disclosure.",
                path.display()
            );
        }
        let slots = config.limits.max_concurrent_queries.max(1);
        let pipeline = crate::release::Pipeline::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            Some(config.limits.lifetime_privacy_loss),
        );
        let metrics = Metrics::default();
        let _ = metrics.disk.set(disk::DiskCheck::new(
            &config.state,
            config.limits.min_free_disk_mb,
        ));
        Ok(AppState {
            config,
            snapshots,
            policy: RwLock::new(Arc::new(policy)),
            store,
            saved,
            metrics,
            limiter: RateLimiter::default(),
            address_limiter: RateLimiter::default(),
            refusals: refusals::Refusals::default(),
            clock,
            ids: audit::RequestIds::new(),
            query_slots: tokio::sync::Semaphore::new(slots),
            responses: cache::ResponseCache::default(),
            pipeline,
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the policy if the directory now loads cleanly; otherwise
    /// keeps the old one and returns the problems.
    pub fn reload_policy(&self) -> Result<usize, PolicyErrors> {
        let new = Policy::load_dir(&self.config.policy, self.clock.today())?;
        let n = new.agreements().count();
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        Ok(n)
    }

    /// The connection limits in force: the configuration's, with the caps
    /// kept below the file-descriptor soft limit (see [`conn`]).
    pub fn connection_limits(&self) -> conn::ConnConfig {
        conn::ConnConfig::from_limits(&self.config.limits, conn::fd_limit().map(|l| l.soft))
    }

    /// Every served snapshot's query engine, by snapshot id (all of them,
    /// whatever the caller's agreement may see).
    pub fn snapshots(&self) -> &BTreeMap<String, Arc<Engine>> {
        &self.snapshots
    }
}

/// Warns loudly when group or others can read the record-key secret.
/// The service starts anyway: the file belongs to the operator (it may be a
/// mounted secret), so the service neither refuses nor changes it.
fn warn_if_secret_exposed(path: &Path) {
    if let Some(mode) = private::exposed(path) {
        let sample = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains("NOT-FOR-PRODUCTION"));
        eprintln!(
            "agregat: WARNING: the record-key secret {} is readable by group or others (mode {mode:03o}): whoever reads it can recompute record keys from NIKs and weaken the cell-key protection. Run `chmod 600 {}`.{}",
            path.display(),
            path.display(),
            if sample {
                " (This is the public sample secret: never use it in production.)"
            } else {
                ""
            }
        );
    }
}

/// Subdirectories of the warehouse holding a `manifest.json`, sorted.
fn snapshot_dirs(dir: &Path) -> Result<Vec<PathBuf>, ServiceError> {
    let err = |source| ServiceError::Warehouse {
        dir: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        if path.join(crate::warehouse::MANIFEST).is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The router over shared state (`oneshot`-testable).
pub fn router(state: Arc<AppState>) -> Router {
    api::routes(Arc::clone(&state)).layer(axum::middleware::from_fn_with_state(
        Arc::clone(&state),
        disk::guard,
    ))
}

/// Reloads the policy on SIGHUP and when the directory changes.
fn spawn_policy_watch(state: Arc<AppState>) {
    tokio::spawn(async move {
        let poll = Duration::from_secs(state.config.limits.reload_poll_seconds.max(1));
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut last_seen = state.policy().stamp().to_string();
        loop {
            #[cfg(unix)]
            let forced = match hup.as_mut() {
                Some(h) => tokio::select! {
                    _ = h.recv() => true,
                    _ = tokio::time::sleep(poll) => false,
                },
                None => {
                    tokio::time::sleep(poll).await;
                    false
                }
            };
            #[cfg(not(unix))]
            let forced = {
                tokio::time::sleep(poll).await;
                false
            };
            let stamp = match Policy::dir_stamp(&state.config.policy) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!(
                        "agregat: cannot read policy directory {}: {e}; keeping the policy in force",
                        state.config.policy.display()
                    );
                    continue;
                }
            };
            if !forced && stamp == last_seen {
                continue;
            }
            last_seen = stamp;
            match state.reload_policy() {
                Ok(n) => eprintln!("agregat: policy reloaded: {n} agreements"),
                Err(e) => eprintln!("agregat: new policy rejected, keeping the one in force:\n{e}"),
            }
        }
    });
}

/// Writes the unauthenticated refusals of every completed minute, and
/// seals the live audit chain into a segment once it holds
/// `audit_segment_entries` entries.
fn spawn_housekeeping(state: Arc<AppState>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            refusals::flush(&state, false).await;
            let store = Arc::clone(&state.store);
            let entries = state.config.limits.audit_segment_entries;
            match tokio::task::spawn_blocking(move || store.seal_when_over(entries)).await {
                Ok(Ok(Some(seal))) => eprintln!(
                    "agregat: sealed audit entries {}..={} ({} entries) into {}",
                    seal.first_seq,
                    seal.last_seq,
                    seal.entries,
                    seal.relative_path()
                ),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => eprintln!("agregat: the audit log could not be sealed: {e}"),
                Err(e) => eprintln!("agregat: the audit sealing task failed: {e}"),
            }
        }
    });
}

/// A running server (for tests): its address and a way to stop it.
pub struct RunningServer {
    /// The address actually bound (the real port when the config asked for
    /// port 0).
    pub addr: SocketAddr,
    /// The state the server runs on, shared with its handlers.
    pub state: Arc<AppState>,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<Result<(), ServiceError>>,
}

impl RunningServer {
    /// Graceful stop: connections with no request in flight are closed
    /// at once; in-flight requests finish and are audited.
    pub async fn stop(mut self) -> Result<(), ServiceError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        let served = self
            .task
            .await
            .map_err(|e| ServiceError::Serve(std::io::Error::other(e)))?;
        refusals::flush(&self.state, true).await;
        served
    }
}

/// Binds and serves in the background until [`RunningServer::stop`].
pub async fn start(state: Arc<AppState>) -> Result<RunningServer, ServiceError> {
    let addr = state.config.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServiceError::Bind { addr, source })?;
    let addr = listener.local_addr().map_err(ServiceError::Serve)?;
    spawn_policy_watch(Arc::clone(&state));
    let (tx, rx) = tokio::sync::watch::channel(false);
    spawn_housekeeping(Arc::clone(&state));
    let cfg = state.connection_limits();
    let served = Arc::clone(&state);
    let task = tokio::spawn(async move {
        conn::serve(listener, served, cfg, rx).await;
        Ok(())
    });
    Ok(RunningServer {
        addr,
        state,
        shutdown: Some(tx),
        task,
    })
}

/// Serves until SIGTERM or Ctrl-C, then drains in-flight requests within
/// the grace period.
pub async fn run_until_signal(state: Arc<AppState>) -> Result<(), ServiceError> {
    let grace = Duration::from_secs(state.config.limits.shutdown_grace_seconds);
    match conn::raise_fd_limit() {
        Some((before, now)) => eprintln!(
            "agregat: file descriptors: soft limit {}{} (hard {})",
            now.soft,
            if now.soft > before {
                format!(", raised from {before}")
            } else {
                String::new()
            },
            now.hard.map_or("unlimited".to_string(), |h| h.to_string())
        ),
        None => eprintln!("agregat: file descriptors: limit unknown"),
    }
    let c = state.connection_limits();
    eprintln!(
        "agregat: connections: at most {} open, {} per client address; request heads within {} s, bodies within {} s of their head, idle connections closed after {} s",
        c.max_connections,
        c.max_per_address,
        c.header_read.as_secs(),
        c.body_read.as_secs(),
        c.idle.as_secs()
    );
    let d = disk::check(&state).read();
    eprintln!(
        "agregat: state disk: {} free, at least {} MiB required ([limits] min_free_disk_mb)",
        d.free
            .map_or("unknown".to_string(), |f| format!("{} MiB", f >> 20)),
        d.min_free >> 20
    );
    let server = start(state).await?;
    eprintln!("agregat: listening on http://{}", server.addr);
    shutdown_signal().await;
    eprintln!(
        "agregat: shutting down; finishing in-flight requests (up to {} s)",
        grace.as_secs()
    );
    match tokio::time::timeout(grace, server.stop()).await {
        Ok(r) => r,
        Err(_) => {
            eprintln!("agregat: grace period over; requests still running were not answered");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
