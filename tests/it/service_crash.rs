//! The state survives the worst: the `agregat serve` process killed with
//! SIGKILL in the middle of DP requests, an audit row altered on disk, and
//! an audit log that cannot be written.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use agregat::state::{LedgerState, Outcome, SqliteStore, StateStore};
use common::server::{Env, Pks, Server, eventually, standard_agreements, token, token_status};
use serde_json::json;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_agregat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_request_leaves_no_release_without_a_ledger_entry() {
    let mut agreements = standard_agreements();
    agreements.push(Pks {
        id: "dpbesar",
        protection: "method = \"dp\"\nrho = 0.01\nbudget_per_period = 10.0\n",
        ..Pks::default()
    });
    let mut env = Env::new(&agreements);
    let (mut child, base) = spawn_server(&mut env).await;
    let http = reqwest::Client::new();

    let mut tasks = Vec::new();
    for i in 0..40 {
        let http = http.clone();
        let url = format!("{base}/v1/query");
        tasks.push(tokio::spawn(async move {
            let sql = format!(
                "SELECT kode_kel, jenis_kelamin, COUNT(*) AS n FROM penduduk WHERE umur(tanggal_lahir) >= {} GROUP BY 1, 2",
                i % 100
            );
            let r = http
                .post(url)
                .bearer_auth(token("dpbesar"))
                .json(&json!({ "sql": sql }))
                .send()
                .await
                .ok()?;
            let id = r.headers().get("x-request-id")?.to_str().ok()?.to_string();
            let status = r.status().as_u16();
            let body = r.bytes().await.ok()?;
            Some((status, id, body.len()))
        }));
    }
    // Kill as soon as the first release is out, with the rest in flight.
    let first = loop {
        if let Some(i) = tasks.iter().position(|t| t.is_finished()) {
            break i;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut released = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        if let Some((status, id, len)) = t.await.unwrap() {
            if status == 200 && len > 0 {
                released.push(id);
            }
        } else {
            assert_ne!(i, first, "the first finished request got an answer");
        }
    }
    assert!(!released.is_empty());
    assert!(
        released.len() < 40,
        "the kill came after everything finished; no test"
    );

    let store = SqliteStore::open(env.config.state_file()).unwrap();
    let chain = store.verify().unwrap();
    assert!(chain.is_ok(), "{:?}", chain.first_broken);
    let ledger = store.ledger_rows("dpbesar").unwrap();
    let entries = store.entries(None, None).unwrap();
    // Every release the client received: audited as accepted and charged
    // by a committed ledger row with the same request id.
    for id in &released {
        assert!(
            ledger
                .iter()
                .any(|r| &r.request_id == id && r.state == LedgerState::Committed),
            "release {id} has no committed ledger row"
        );
        assert!(
            entries
                .iter()
                .any(|e| e.entry.request_id.as_deref() == Some(id.as_str())
                    && e.entry.outcome == Outcome::Accepted),
            "release {id} has no audit entry"
        );
    }
    // Every accepted, charged entry has its committed row; a pending row
    // (crash before commit) stays charged and has no accepted entry.
    for e in entries
        .iter()
        .filter(|e| e.entry.outcome == Outcome::Accepted)
    {
        let id = e.entry.request_id.as_deref().unwrap();
        assert!(
            ledger
                .iter()
                .any(|r| r.request_id == id && r.state == LedgerState::Committed),
            "audited release {id} not in the ledger"
        );
    }
    for r in ledger.iter().filter(|r| r.state == LedgerState::Pending) {
        assert!(
            !entries.iter().any(
                |e| e.entry.request_id.as_deref() == Some(r.request_id.as_str())
                    && e.entry.outcome == Outcome::Accepted
            ),
            "pending reservation {} was released",
            r.request_id
        );
    }
    let charged: f64 = ledger.iter().map(|r| r.amount).sum();
    let audited: f64 = entries.iter().filter_map(|e| e.entry.privacy_loss).sum();
    assert!(
        charged + 1e-12 >= audited,
        "ledger {charged} < audited {audited}"
    );
    drop(store);

    // The service starts again on the same state and counts pending rows.
    let s = Server::start(env).await;
    let b: serde_json::Value = s.get("dpbesar", "/v1/budget").await.json().await.unwrap();
    assert!((b["spent"].as_f64().unwrap() - charged).abs() < 1e-9, "{b}");
    s.stop().await;
}

/// Starts `agregat serve` on a free port with the environment's config.
async fn spawn_server(env: &mut Env) -> (std::process::Child, String) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    env.config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let config = env.write_config();
    let mut child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..300 {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await
            && r.status() == 200
        {
            return (child, base);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server did not become ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_loses_no_audit_entry() {
    let mut env = Env::new(&standard_agreements());
    let (mut child, base) = spawn_server(&mut env).await;
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let http = http.clone();
        let url = format!("{base}/v1/query");
        tasks.push(tokio::spawn(async move {
            let sql = format!(
                "SELECT kode_kel, jenis_kelamin, kelompok_umur(umur(tanggal_lahir), 5), COUNT(*) FROM penduduk WHERE umur(tanggal_lahir) >= {} GROUP BY 1, 2, 3", 5 * (i % 15)
            );
            let r = http.post(url).bearer_auth(token("uji")).json(&json!({ "sql": sql })).send().await.ok()?;
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            assert!(status != 422, "{sql}: {body}");
            Some(status)
        }));
    }
    while !tasks.iter().any(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status} after SIGTERM");
    let mut answered = 0;
    for t in tasks {
        if let Some(code) = t.await.unwrap() {
            assert_eq!(code, 200);
            answered += 1;
        }
    }
    let store = SqliteStore::open(env.config.state_file()).unwrap();
    let entries = store.entries(None, None).unwrap();
    assert!(answered > 0);
    assert_eq!(
        entries.len(),
        answered,
        "an answered request has no audit entry, or vice versa"
    );
    assert!(store.verify().unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy() {
    let mut env = Env::new(&standard_agreements());
    // No polling to speak of: only the signal can reload.
    env.config.limits.reload_poll_seconds = 3600;
    let (mut child, base) = spawn_server(&mut env).await;
    let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
    let (new_token, _, _) = agregat::agreement::add_token(&env.policy_dir(), "uji", today).unwrap();
    let http = reqwest::Client::new();
    assert_eq!(
        token_status(&http, &base, &new_token).await,
        401,
        "reloaded without a signal"
    );
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let ok = eventually(async || token_status(&http, &base, &new_token).await == 200).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ok, "SIGHUP did not reload the policy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_audit_row_is_detected_and_named() {
    let s = Server::standard().await;
    for _ in 0..4 {
        assert_eq!(
            s.query("uji", "SELECT kode_kec, COUNT(*) FROM penduduk GROUP BY 1")
                .await
                .status(),
            200
        );
    }
    let env = s.stop().await;
    let state_dir = env.config.state.clone();
    let ok = Command::new(bin())
        .args(["audit", "verify", "--state"])
        .arg(&state_dir)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("4 entries"));

    // Someone with the file hides a release: triggers dropped, row altered.
    let conn = rusqlite::Connection::open(env.config.state_file()).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET bytes_out = 0, result_hash = NULL WHERE seq = 3;",
    )
    .unwrap();
    drop(conn);
    let bad = Command::new(bin())
        .args(["audit", "verify", "--state"])
        .arg(&state_dir)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("entry 3"), "{err}");
    assert!(err.contains("altered"), "{err}");
}

/// A state store whose audit appends fail: the service must withhold the
/// answer (503) rather than release data without an audit entry.
struct AuditDown(std::sync::Arc<dyn agregat::state::StateStore>);

impl agregat::state::StateStore for AuditDown {
    fn append(
        &self,
        _: agregat::state::AuditEntry,
    ) -> Result<agregat::state::AuditRecord, agregat::state::StateError> {
        Err(agregat::state::StateError::Corrupt {
            detail: "disk gone (test)".into(),
        })
    }
    fn verify(&self) -> Result<agregat::state::ChainReport, agregat::state::StateError> {
        self.0.verify()
    }
    fn seal_when_over(
        &self,
        entries: u64,
    ) -> Result<Option<agregat::state::Seal>, agregat::state::StateError> {
        self.0.seal_when_over(entries)
    }
    fn entries(
        &self,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<agregat::state::AuditRecord>, agregat::state::StateError> {
        self.0.entries(from, to)
    }
    fn add_refusals(
        &self,
        counts: &[agregat::state::RefusalCount],
    ) -> Result<(), agregat::state::StateError> {
        self.0.add_refusals(counts)
    }
    fn refusals(
        &self,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<agregat::state::RefusalCount>, agregat::state::StateError> {
        self.0.refusals(from, to)
    }
    fn reserve(
        &self,
        agreement: &str,
        period: &str,
        amount: f64,
        allowance: f64,
        request_id: &str,
    ) -> Result<agregat::state::Reservation, agregat::state::StateError> {
        self.0
            .reserve(agreement, period, amount, allowance, request_id)
    }
    fn reserve_within(
        &self,
        agreement: &str,
        period: &str,
        amount: f64,
        allowance: f64,
        lifetime_ceiling: Option<f64>,
        request_id: &str,
    ) -> Result<agregat::state::Reservation, agregat::state::StateError> {
        self.0.reserve_within(
            agreement,
            period,
            amount,
            allowance,
            lifetime_ceiling,
            request_id,
        )
    }
    fn lifetime_spent(&self) -> Result<f64, agregat::state::StateError> {
        self.0.lifetime_spent()
    }
    fn margins_record(
        &self,
        agreement: &str,
        snapshot: &str,
        rows: &[(String, String, f64)],
    ) -> Result<(), agregat::state::StateError> {
        self.0.margins_record(agreement, snapshot, rows)
    }
    fn margins_load(
        &self,
        snapshot: &str,
    ) -> Result<Vec<(String, String, String, f64)>, agregat::state::StateError> {
        self.0.margins_load(snapshot)
    }
    fn commit(&self, r: &agregat::state::Reservation) -> Result<(), agregat::state::StateError> {
        self.0.commit(r)
    }
    fn release(&self, r: &agregat::state::Reservation) -> Result<(), agregat::state::StateError> {
        self.0.release(r)
    }
    fn spent(&self, agreement: &str, period: &str) -> Result<f64, agregat::state::StateError> {
        self.0.spent(agreement, period)
    }
    fn ledger_rows(
        &self,
        agreement: &str,
    ) -> Result<Vec<agregat::state::LedgerRow>, agregat::state::StateError> {
        self.0.ledger_rows(agreement)
    }
    fn release_get(&self, key: &str) -> Result<Option<Vec<u8>>, agregat::state::StateError> {
        self.0.release_get(key)
    }
    fn release_put(
        &self,
        key: &str,
        agreement: &str,
        snapshot: &str,
        release: &[u8],
    ) -> Result<(), agregat::state::StateError> {
        self.0.release_put(key, agreement, snapshot, release)
    }
}

#[test]
fn nothing_is_released_when_the_audit_log_cannot_be_written() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let env = Env::new(&standard_agreements());
    let state = rt.block_on(async {
        let clock = std::sync::Arc::new(agregat::service::ManualClock::new(
            common::server::default_time(),
        ));
        let mut state = agregat::service::AppState::open(env.config.clone(), clock)
            .await
            .unwrap();
        state.store = std::sync::Arc::new(AuditDown(std::sync::Arc::clone(&state.store)));
        std::sync::Arc::new(state)
    });
    let app = agregat::service::router(std::sync::Arc::clone(&state));
    for id in ["uji", "dp-uji"] {
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/v1/query")
            .header("authorization", format!("Bearer {}", token(id)))
            .body(axum::body::Body::from(
                r#"{"sql": "SELECT kode_kec, COUNT(*) AS n FROM penduduk GROUP BY 1"}"#,
            ))
            .unwrap();
        let resp = rt
            .block_on(tower::ServiceExt::oneshot(app.clone(), req))
            .unwrap();
        assert_eq!(
            resp.status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "{id}"
        );
        let bytes = rt
            .block_on(axum::body::to_bytes(resp.into_body(), usize::MAX))
            .unwrap();
        let p: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(p["code"], "unavailable");
        assert!(
            !String::from_utf8_lossy(&bytes).contains("61.71.01"),
            "data leaked: {p}"
        );
    }
    // The DP release was charged (committed before the audit failed):
    // withheld, but never uncharged.
    let rows = state.store.ledger_rows("dp-uji").unwrap();
    assert_eq!(rows.len(), 1);
    assert!(state.store.entries(None, None).unwrap().is_empty());
}

/// Starts `agregat serve` under `umask 000` (the worst case), its stderr
/// in a file; returns the process, the base URL and the log file.
async fn spawn_logged(env: &mut Env) -> (std::process::Child, String, std::path::PathBuf) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    env.config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let config = env.write_config();
    let log = env.dir.path().join(format!("serve-{port}.log"));
    let mut child = Command::new("sh")
        .args(["-c", "umask 000; exec \"$0\" serve --config \"$1\""])
        .arg(bin())
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..300 {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await
            && r.status() == 200
        {
            return (child, base, log);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "server did not become ready: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[cfg(unix)]
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_private_whatever_the_umask_and_readable_secrets_are_reported() {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };

    // A fresh state under umask 000: directory 0700, files 0600, and no
    // warning about the state; the record-key secret, copied 0600, neither.
    let mut env = Env::new(&standard_agreements());
    let secret = env.dir.path().join("record-key.secret");
    std::fs::copy(env.config.record_key_secret.as_ref().unwrap(), &secret).unwrap();
    chmod(&secret, 0o600);
    env.config.record_key_secret = Some(secret.clone());
    let (mut child, base, log) = spawn_logged(&mut env).await;
    let r = reqwest::get(format!("{base}/v1/budget")).await.unwrap();
    assert_eq!(r.status(), 401, "an audited request, so the WAL is in use");
    let state = env.config.state.clone();
    let db = env.config.state_file();
    assert_eq!(mode(&state), 0o700);
    for f in agregat::state::private::database_files(&db) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(!err.contains("WARNING"), "{err}");

    // A state left open (0755, 0644) by an older build and a secret
    // readable by everyone: loud warnings, and the state is made private.
    chmod(&state, 0o755);
    chmod(&db, 0o644);
    chmod(&secret, 0o644);
    let (mut child, _base, log) = spawn_logged(&mut env).await;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&db), 0o600);
    child.kill().unwrap();
    child.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    let secret_line = format!("WARNING: the record-key secret {}", secret.display());
    assert!(err.contains(&secret_line), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(
        err.contains(&format!("WARNING: {} was readable", state.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!("WARNING: {} was readable", db.display())),
        "{err}"
    );
    assert_eq!(mode(&secret), 0o644, "the operator's file is not changed");
}

/// SIGTERM does not wait on clients that are not in a request: one that
/// never sent anything, one half-way through its head, and a kept-alive
/// one between requests. The grace period (30 s) is for requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_on_clients_that_are_not_in_a_request() {
    use std::io::{Read, Write};
    let mut env = Env::new(&standard_agreements());
    let (mut child, base) = spawn_server(&mut env).await;
    let addr = base.trim_start_matches("http://").to_string();
    let silent = std::net::TcpStream::connect(&addr).unwrap();
    let mut partial = std::net::TcpStream::connect(&addr).unwrap();
    partial.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    let mut kept = std::net::TcpStream::connect(&addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = kept.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = std::time::Instant::now();
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    let took = t0.elapsed();
    assert!(status.success(), "serve exited with {status}");
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}");
    drop((silent, partial, kept));
}
