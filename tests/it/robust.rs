//! Holding up under hostile input and load: sealed audit segments verified
//! across segments, the body-read timeout and the free-disk condition over
//! real HTTP.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use agregat::state::{AuditEntry, Outcome, SqliteStore, StateStore, seal_segment};
use common::server::{Env, Server, problem, standard_agreements, token};

const COUNT_BY_KEC: &str =
    "SELECT kode_kec, jenis_kelamin, COUNT(*) AS jumlah FROM penduduk GROUP BY 1, 2";

fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        time: format!("2026-03-{:02}T03:{:02}:00Z", 1 + i % 28, i % 60),
        agreement: "uji".into(),
        token_id: "t1".into(),
        endpoint: "/v1/query".into(),
        sql: Some(format!("SELECT COUNT(*) FROM penduduk WHERE umur > {i}")),
        plan_fingerprint: Some(format!("fp{i}")),
        snapshot: Some("dkb-2026-s1".into()),
        outcome: Outcome::Accepted,
        code: None,
        cells: 1,
        suppressed_cells: 0,
        privacy_loss: None,
        bytes_out: 100,
        duration_ms: 3,
        result_hash: None,
        client_addr: Some("127.0.0.1".into()),
        request_id: Some(format!("r-{i}")),
        elements: vec![],
    }
}

/// A state directory with three sealed segments (entries 1–4, 5–7, 8–10)
/// and two live entries (11, 12).
fn sealed_state(dir: &Path) -> Vec<agregat::state::Seal> {
    let store = SqliteStore::open(dir.join("state.sqlite")).unwrap();
    let mut seals = Vec::new();
    let mut i = 0;
    for n in [4, 3, 3] {
        for _ in 0..n {
            store.append(entry(i)).unwrap();
            i += 1;
        }
        seals.push(seal_segment(dir).unwrap().expect("entries to seal"));
    }
    store.append(entry(i)).unwrap();
    store.append(entry(i + 1)).unwrap();
    seals
}

fn verify(dir: &Path) -> agregat::state::ChainReport {
    SqliteStore::open_read_only(dir.join("state.sqlite"))
        .unwrap()
        .verify()
        .unwrap()
}

fn writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn sealed_segments_verify_as_one_chain() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let seals = sealed_state(dir);
    let names: Vec<&str> = seals.iter().map(|s| s.file.as_str()).collect();
    assert_eq!(names, ["1-4.sqlite", "5-7.sqlite", "8-10.sqlite"]);
    for s in &seals {
        let meta = std::fs::metadata(dir.join("audit-segments").join(&s.file)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    }
    let r = verify(dir);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.entries, 12);
    // The live chain continued from the last seal's head.
    let store = SqliteStore::open_read_only(dir.join("state.sqlite")).unwrap();
    let all = store.entries(None, None).unwrap();
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    assert_eq!(all[10].prev_hash, seals[2].head_hash);
    for w in all.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
    assert_eq!(r.head_hash.as_deref(), Some(all[11].hash.as_str()));
    // A window that touches only the first segment reads only it.
    let first_day = store
        .entries(Some("2026-03-01T00:00:00Z"), Some("2026-03-02T00:00:00Z"))
        .unwrap();
    assert_eq!(first_day.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
    // Nothing left to seal twice; sealing a state that does not exist
    // creates nothing.
    let missing = dir.join("nope");
    assert!(seal_segment(&missing).is_err());
    assert!(!missing.exists());
}

#[test]
fn a_tampered_segment_is_named_with_its_entry() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    sealed_state(dir);
    let seg = dir.join("audit-segments/5-7.sqlite");
    writable(&seg);
    let c = rusqlite::Connection::open(&seg).unwrap();
    c.execute_batch("DROP TRIGGER audit_log_no_update").unwrap();
    c.execute("UPDATE audit_log SET sql = 'SELECT 1' WHERE seq = 6", [])
        .unwrap();
    drop(c);
    let r = verify(dir);
    let b = r.first_broken.expect("tampering detected");
    assert_eq!(b.seq, 6);
    let msg = b.reason.to_string();
    assert!(
        msg.contains("5-7.sqlite") && msg.contains("hash mismatch"),
        "{msg}"
    );
}

#[test]
fn a_segment_altered_outside_the_chain_fails_its_checksum() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    sealed_state(dir);
    let seg = dir.join("audit-segments/1-4.sqlite");
    writable(&seg);
    let c = rusqlite::Connection::open(&seg).unwrap();
    c.execute("UPDATE segment SET sealed_at = 'x'", []).unwrap();
    drop(c);
    let b = verify(dir).first_broken.unwrap();
    let msg = b.reason.to_string();
    assert!(
        msg.contains("1-4.sqlite") && msg.contains("SHA-256"),
        "{msg}"
    );
}

#[test]
fn a_missing_or_swapped_segment_breaks_the_chain() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    sealed_state(dir);
    let segs = dir.join("audit-segments");
    // Missing.
    std::fs::rename(segs.join("5-7.sqlite"), dir.join("away.sqlite")).unwrap();
    let b = verify(dir).first_broken.unwrap();
    assert_eq!(b.seq, 5);
    assert!(b.reason.to_string().contains("5-7.sqlite"), "{}", b.reason);
    assert!(b.reason.to_string().contains("missing"), "{}", b.reason);
    // Reordered: the contents of two segments swapped.
    std::fs::rename(segs.join("8-10.sqlite"), segs.join("5-7.sqlite")).unwrap();
    std::fs::rename(dir.join("away.sqlite"), segs.join("8-10.sqlite")).unwrap();
    let b = verify(dir).first_broken.unwrap();
    let msg = b.reason.to_string();
    assert!(msg.contains("5-7.sqlite"), "{msg}");
    assert!(
        msg.contains("sequence gap") || msg.contains("prev_hash"),
        "{msg}"
    );
}

#[test]
fn a_removed_seal_record_breaks_the_chain() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    sealed_state(dir);
    let c = rusqlite::Connection::open(dir.join("state.sqlite")).unwrap();
    assert!(
        c.execute("DELETE FROM audit_seals WHERE segment = 2", [])
            .is_err()
    );
    c.execute_batch("DROP TRIGGER audit_seals_no_delete")
        .unwrap();
    c.execute("DELETE FROM audit_seals WHERE segment = 2", [])
        .unwrap();
    drop(c);
    let b = verify(dir).first_broken.unwrap();
    assert_eq!(b.seq, 8);
    assert!(b.reason.to_string().contains("8-10.sqlite"), "{}", b.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_report_reads_across_segments() {
    let s = Server::standard().await;
    for _ in 0..3 {
        assert_eq!(s.query("uji", COUNT_BY_KEC).await.status(), 200);
    }
    let state_dir = s.env.config.state.clone();
    let seal = seal_segment(&state_dir).unwrap().unwrap();
    assert_eq!((seal.first_seq, seal.last_seq), (1, 3));
    // The service goes on appending after the seal, from its head.
    assert_eq!(s.query("uji", COUNT_BY_KEC).await.status(), 200);
    let all = s.state().store.entries(None, None).unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].seq, 4);
    assert_eq!(all[3].prev_hash, seal.head_hash);
    assert!(s.state().store.verify().unwrap().is_ok());
    let policy =
        agregat::agreement::Policy::load_dir(&s.env.config.policy, chrono::NaiveDate::MIN).unwrap();
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
    let r = agregat::report::collect::from_state(
        s.state().store.as_ref(),
        &policy,
        day,
        day,
        None,
        day,
    )
    .unwrap();
    assert!(r.chain.ok, "{:?}", r.chain);
    assert_eq!(r.chain.entries, 4);
    assert_eq!(r.summary.requests.total, 4);
    s.stop().await;
}

/// With `audit_segment_entries` set, the service seals the live chain by
/// itself (checked every 10 s), keeps appending from the seal's head, and
/// the whole log still verifies and reads as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_seals_the_audit_log_by_itself() {
    let mut env = Env::new(&standard_agreements());
    env.config.limits.audit_segment_entries = 3;
    let s = Server::start(env).await;
    for _ in 0..4 {
        assert_eq!(s.query("uji", COUNT_BY_KEC).await.status(), 200);
    }
    let state_dir = s.env.config.state.clone();
    let store = SqliteStore::open_read_only(state_dir.join("state.sqlite")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let seals = loop {
        let seals = store.seals().unwrap();
        if !seals.is_empty() || Instant::now() > deadline {
            break seals;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(seals.len(), 1, "one seal within 30 s");
    assert_eq!((seals[0].first_seq, seals[0].last_seq), (1, 4));
    assert!(state_dir.join(seals[0].relative_path()).is_file());
    assert_eq!(s.query("uji", COUNT_BY_KEC).await.status(), 200);
    let all = s.state().store.entries(None, None).unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(all[4].prev_hash, seals[0].head_hash);
    assert!(s.state().store.verify().unwrap().is_ok());
    s.stop().await;
}

/// Reads until the peer closes; the bytes read and when.
async fn read_until_closed(
    s: &mut tokio::net::TcpStream,
    limit: Duration,
) -> (String, Option<Duration>) {
    use tokio::io::AsyncReadExt;
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into(), None),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&got).into(), Some(t0.elapsed()));
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_trickled_body_is_answered_408_and_closed() {
    use tokio::io::AsyncWriteExt;
    let mut env = Env::new(&standard_agreements());
    env.config.limits.body_read_timeout_seconds = 1;
    env.config.limits.header_read_timeout_seconds = 5;
    let s = Server::start(env).await;
    let addr = s.running.as_ref().unwrap().addr;
    let body = serde_json::json!({ "sql": COUNT_BY_KEC }).to_string();
    let head = format!(
        "POST /v1/query HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        token("uji"),
        body.len()
    );

    // Stalls after ten bytes of the body.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&body.as_bytes()[..10]).await.unwrap();
    let t0 = Instant::now();
    let (resp, closed) = read_until_closed(&mut stalled, Duration::from_secs(10)).await;
    let kept = closed.expect("a stalled body is closed");
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("request_timeout") && resp.contains("application/problem+json"));
    assert!(
        kept >= Duration::from_millis(900) && kept < Duration::from_millis(2500),
        "{kept:?} (from {:?})",
        t0.elapsed()
    );

    // Trickles its body at 5 bytes a second: answered 408 and closed
    // after the timeout, however long it keeps sending.
    let slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = slow.into_split();
    wr.write_all(head.as_bytes()).await.unwrap();
    let t0 = Instant::now();
    let writer = tokio::spawn(async move {
        for b in body.as_bytes() {
            if wr.write_all(&[*b]).await.is_err() || t0.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let kept = loop {
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout(Duration::from_secs(6), rd.read(&mut buf)).await {
            Err(_) => panic!("a trickling body is not closed"),
            Ok(Ok(0)) | Ok(Err(_)) => break t0.elapsed(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    writer.abort();
    let resp = String::from_utf8_lossy(&got);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(
        kept < Duration::from_millis(2500),
        "a trickling client was kept {kept:?}"
    );

    // A whole body in time is answered as usual.
    assert_eq!(s.query("uji", COUNT_BY_KEC).await.status(), 200);
    // The refusals are counted, not audited one by one.
    let entries = s.state().store.entries(None, None).unwrap();
    assert_eq!(entries.len(), 1, "only the answered query is audited");
    let m = s.http.get(s.url("/metrics")).send().await.unwrap();
    let m = m.text().await.unwrap();
    assert!(
        m.contains("agregat_rejections_total{code=\"request_timeout\"} 2"),
        "{m}"
    );
    let state = std::sync::Arc::clone(s.state());
    s.stop().await;
    let counted: u64 = state
        .store
        .refusals(None, None)
        .unwrap()
        .iter()
        .filter(|c| c.code == "request_timeout")
        .map(|c| c.count)
        .sum();
    assert_eq!(counted, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_disk_makes_the_service_unready_and_refuses_before_writing() {
    let mut env = Env::new(&standard_agreements());
    // More than any disk has.
    env.config.limits.min_free_disk_mb = 1 << 40;
    let s = Server::start(env).await;

    let r = s.http.get(s.url("/readyz")).send().await.unwrap();
    let p = problem(r, 503).await;
    assert_eq!(p["code"], "disk_low");
    assert!(p["detail"].as_str().unwrap().contains("MiB free"), "{p}");

    let m = s.http.get(s.url("/metrics")).send().await.unwrap();
    let m = m.text().await.unwrap();
    let free: u64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("agregat_state_disk_free_bytes ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("free-space gauge in {m}"));
    assert!(free > 0);
    assert!(m.contains(&format!(
        "agregat_state_disk_min_free_bytes {}",
        (1u64 << 40) << 20
    )));

    for _ in 0..20 {
        let r = s.query("uji", COUNT_BY_KEC).await;
        assert_eq!(r.headers()["retry-after"], "60");
        let p = problem(r, 503).await;
        assert_eq!(p["code"], "disk_low");
        assert!(p["detail"].as_str().unwrap().contains("min_free_disk_mb"));
    }
    // A DP query is refused before the ledger is touched.
    let r = s.query("dp-uji", "SELECT COUNT(*) FROM penduduk").await;
    assert_eq!(problem(r, 503).await["code"], "disk_low");
    // Probes still answer.
    let r = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let state = std::sync::Arc::clone(s.state());
    assert!(state.store.entries(None, None).unwrap().is_empty());
    assert_eq!(state.store.spent("dp-uji", "2026-S2").unwrap(), 0.0);
    s.stop().await;
    // 21 refusals, one counted row (one address, one minute, one code).
    let rows = state.store.refusals(None, None).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].code, "disk_low");
    assert_eq!(rows[0].count, 21);
}
