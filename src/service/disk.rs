//! Free disk space on the state directory's filesystem: a metric, a
//! readiness condition, and a clean refusal before the disk is full.
//!
//! Every authenticated request writes an audit entry before its response
//! leaves, and a DP release also writes the ledger and the release cache.
//! On a full disk each of those writes would fail and every request would
//! end in a bare 503 after the work was done. Instead, when the free space
//! (for an unprivileged process, `statvfs`'s `f_bavail`) falls below
//! `[limits] min_free_disk_mb` (512 by default):
//!
//! - `/readyz` answers 503 and says why, so a load balancer stops sending
//!   traffic;
//! - every `/v1` request is refused with 503 `disk_low` **before** the
//!   router sees it: no authentication, no audit row, no ledger row. The
//!   refusal is counted per client address, minute and code in
//!   `refusal_counts` (one row per address and minute however many
//!   requests, [`super::refusals`]) and in `/metrics`;
//! - `/metrics` always shows `agregat_state_disk_free_bytes` and the
//!   threshold, `agregat_state_disk_min_free_bytes`.
//!
//! A filesystem whose free space cannot be read (`statvfs` fails, or
//! off Unix) is not held against the service: nothing is refused then.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

/// Bytes available to an unprivileged process on the filesystem of `path`
/// (`None` when unknown).
// `f_bavail` and `f_frsize` are not u64 on every Unix: the casts stay.
#[allow(clippy::unnecessary_cast)]
pub fn free_bytes(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs is all plain integers; zeroed is a valid value.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path; statvfs only writes `s`.
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return None;
        }
        let unit = if s.f_frsize > 0 {
            s.f_frsize as u64
        } else {
            s.f_bsize as u64
        };
        Some((s.f_bavail as u64).saturating_mul(unit))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// The state directory's free space against the configured minimum.
#[derive(Debug, Clone)]
pub struct DiskCheck {
    dir: PathBuf,
    min_free: u64,
}

/// A reading of the free space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskReading {
    /// Free bytes; `None` when the filesystem does not say.
    pub free: Option<u64>,
    /// Free bytes required (`min_free_disk_mb` in bytes).
    pub min_free: u64,
}

impl DiskReading {
    /// Below the minimum (never when unknown).
    pub fn is_low(&self) -> bool {
        self.free.is_some_and(|f| f < self.min_free)
    }

    /// What is wrong and what to do, when the space is low.
    pub fn reason(&self) -> Option<String> {
        let free = self.free.filter(|_| self.is_low())?;
        Some(format!(
            "the state database's disk is almost full: {} MiB free, at least {} MiB required ([limits] min_free_disk_mb); nothing is answered so that every answer can still be audited. The operator must free space on that filesystem (or seal and move old audit segments with `agregat audit seal`); retry later",
            free >> 20,
            self.min_free >> 20
        ))
    }
}

impl DiskCheck {
    /// The check of the state directory `dir` with `min_free_mb` MiB.
    pub fn new(dir: &Path, min_free_mb: u64) -> DiskCheck {
        DiskCheck {
            dir: dir.to_path_buf(),
            min_free: min_free_mb.saturating_mul(1 << 20),
        }
    }

    /// Reads the free space now (one `statvfs`: microseconds).
    pub fn read(&self) -> DiskReading {
        DiskReading {
            free: free_bytes(&self.dir),
            min_free: self.min_free,
        }
    }
}

/// The check of the service's state directory.
pub fn check(state: &super::AppState) -> DiskCheck {
    DiskCheck::new(&state.config.state, state.config.limits.min_free_disk_mb)
}

/// Why the service is not ready because of its disk, if it is not.
pub fn not_ready(state: &super::AppState) -> Option<String> {
    check(state).read().reason()
}

/// The metrics lines of the free space.
pub fn render_metrics(reading: &DiskReading) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP agregat_state_disk_free_bytes Bytes free on the state directory's filesystem.\n",
    );
    out.push_str("# TYPE agregat_state_disk_free_bytes gauge\n");
    if let Some(f) = reading.free {
        out.push_str(&format!("agregat_state_disk_free_bytes {f}\n"));
    }
    out.push_str(
        "# HELP agregat_state_disk_min_free_bytes Below this, /readyz and /v1 answer 503 disk_low.\n",
    );
    out.push_str("# TYPE agregat_state_disk_min_free_bytes gauge\n");
    out.push_str(&format!(
        "agregat_state_disk_min_free_bytes {}\n",
        reading.min_free
    ));
    out
}

/// The layer in front of the router: a `/v1` request while the disk is
/// low gets 503 `disk_low` before anything is written.
pub async fn guard(
    State(state): State<Arc<super::AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if !req.uri().path().starts_with("/v1") {
        return next.run(req).await;
    }
    let Some(reason) = not_ready(&state) else {
        return next.run(req).await;
    };
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| super::conn::address_key(c.0.ip()).to_string())
        .unwrap_or_default();
    state.refusals.record(state.clock.now(), &addr, "disk_low");
    state
        .metrics
        .observe("disk-low", 503, Some("disk_low"), std::time::Duration::ZERO);
    let id = state.ids.next();
    let mut resp =
        super::conn::problem_response(StatusCode::SERVICE_UNAVAILABLE, "disk_low", reason, &id);
    resp.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("60"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_filesystem_and_compares() {
        let t = tempfile::tempdir().unwrap();
        let ok = DiskCheck::new(t.path(), 0).read();
        assert!(ok.free.is_some_and(|f| f > 0), "{ok:?}");
        assert!(!ok.is_low() && ok.reason().is_none());
        let low = DiskCheck::new(t.path(), u64::MAX >> 21).read();
        assert!(low.is_low());
        let r = low.reason().unwrap();
        assert!(
            r.contains("MiB free") && r.contains("min_free_disk_mb"),
            "{r}"
        );
        let m = render_metrics(&low);
        assert!(m.contains("agregat_state_disk_free_bytes "), "{m}");
        let unknown = DiskReading {
            free: None,
            min_free: 1,
        };
        assert!(!unknown.is_low());
    }
}
