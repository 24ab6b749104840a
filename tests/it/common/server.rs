//! A real `agregat` service on an ephemeral loopback port, with a policy
//! directory of test agreements (known tokens), a warehouse holding the
//! committed synthetic sample and a production-marked copy of it, and a
//! settable clock.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agregat::service::{AppState, ManualClock, RunningServer, ServiceConfig, start};
use chrono::{DateTime, Utc};

/// The token of a test agreement: `agt_test_<id>`.
pub(crate) fn token(id: &str) -> String {
    format!("agt_test_{id}")
}

fn sha(token: &str) -> String {
    agregat::agreement::token_sha256_hex(token)
}

/// Elements of a broad agreement (no protected element).
pub(crate) const BROAD: &[&str] = &[
    "jenis_kelamin",
    "tanggal_lahir",
    "agama",
    "status_perkawinan",
    "status_hubungan_keluarga",
    "pendidikan_terakhir",
    "jenis_pekerjaan",
    "golongan_darah",
    "no_kk",
    "kode_prov",
    "kode_kab",
    "kode_kec",
    "kode_kel",
];

/// One agreement file.
pub(crate) struct Pks<'a> {
    pub(crate) id: &'a str,
    pub(crate) stage: &'a str,
    pub(crate) elements: &'a [&'a str],
    pub(crate) minister: &'a [&'a str],
    pub(crate) scope: &'a [&'a str],
    pub(crate) valid_from: &'a str,
    pub(crate) valid_until: &'a str,
    pub(crate) rpm: u32,
    /// The `[protection]` table body.
    pub(crate) protection: &'a str,
}

impl Default for Pks<'_> {
    fn default() -> Self {
        Pks {
            id: "uji",
            stage: "trial",
            elements: BROAD,
            minister: &[],
            scope: &["61.71"],
            valid_from: "2026-01-01",
            valid_until: "2027-12-31",
            rpm: 100_000,
            protection: "method = \"cell_key\"\nk = 10\n",
        }
    }
}

impl Pks<'_> {
    pub(crate) fn toml(&self) -> String {
        let list = |v: &[&str]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "id = \"{id}\"\ninstitution = \"Test {id}\"\npks_number = \"PKS/{id}/2026\"\nwalikota_permit = \"Izin/{id}/2026\"\nvalid_from = {from}\nvalid_until = {until}\nstage = \"{stage}\"\npermitted_elements = [{el}]\nminister_permission = [{mi}]\nregion_scope = [{sc}]\n\n[limits]\nrequests_per_minute = {rpm}\n\n[protection]\n{prot}\n[[token]]\nid = \"t1\"\nsha256 = \"{sha}\"\n",
            id = self.id,
            from = self.valid_from,
            until = self.valid_until,
            stage = self.stage,
            el = list(self.elements),
            mi = list(self.minister),
            sc = list(self.scope),
            rpm = self.rpm,
            prot = self.protection,
            sha = sha(&token(self.id)),
        )
    }
}

/// The standard test agreements.
pub(crate) fn standard_agreements() -> Vec<Pks<'static>> {
    vec![
        Pks::default(),
        Pks {
            id: "produksi",
            stage: "production",
            ..Pks::default()
        },
        Pks {
            id: "dp-uji",
            protection: "method = \"dp\"\nrho = 0.01\nbudget_per_period = 0.05\nk = 5\n",
            ..Pks::default()
        },
        Pks {
            id: "kec",
            elements: &["jenis_kelamin", "kode_kec", "kode_kel"],
            scope: &["61.71.01"],
            ..Pks::default()
        },
        Pks {
            id: "lambat",
            rpm: 3,
            ..Pks::default()
        },
        Pks {
            id: "pendidikan",
            elements: &["jenis_kelamin", "tanggal_lahir", "kode_kec", "kode_kel"],
            ..Pks::default()
        },
        Pks {
            id: "cacat",
            elements: &["jenis_kelamin", "penyandang_cacat", "kode_kec"],
            ..Pks::default()
        },
        Pks {
            id: "belum",
            valid_from: "2027-01-01",
            ..Pks::default()
        },
        Pks {
            id: "segera",
            valid_until: "2026-12-31",
            ..Pks::default()
        },
    ]
}

/// A directory with the warehouse, the policy and the state.
pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: ServiceConfig,
}

impl Env {
    pub(crate) fn new(agreements: &[Pks<'_>]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let warehouse = dir.path().join("warehouse");
        std::fs::create_dir_all(&warehouse).unwrap();
        let sample = root.join("data-samples/dkb-2026-s1");
        copy_dir(&sample, &warehouse.join("dkb-2026-s1"));
        // A production-marked copy, so stage rules can be exercised.
        let prod = warehouse.join("dkb-2026-s1-prod");
        copy_dir(&sample, &prod);
        let mpath = prod.join("manifest.json");
        let mut m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
        m["id"] = "dkb-2026-s1-prod".into();
        m["synthetic"] = false.into();
        std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        let policy = dir.path().join("policy");
        std::fs::create_dir_all(&policy).unwrap();
        for a in agreements {
            std::fs::write(policy.join(format!("{}.toml", a.id)), a.toml()).unwrap();
        }
        let mut config = ServiceConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            warehouse,
            policy,
            queries: root.join("queries"),
            state: dir.path().join("state"),
            record_key_secret: Some(
                root.join("data-samples/SAMPLE-record-key-NOT-FOR-PRODUCTION.secret"),
            ),
            demo_tokens: None,
            ..ServiceConfig::default()
        };
        config.limits.reload_poll_seconds = 1;
        config.limits.target_partitions = 2;
        Env { dir, config }
    }

    pub(crate) fn policy_dir(&self) -> PathBuf {
        self.config.policy.clone()
    }

    /// Writes the config as an `agregat.toml` (for the binary).
    pub(crate) fn write_config(&self) -> PathBuf {
        let c = &self.config;
        let path = self.dir.path().join("agregat.toml");
        let text = format!(
            "listen = \"{}\"\nwarehouse = \"{}\"\npolicy = \"{}\"\nqueries = \"{}\"\nstate = \"{}\"\nrecord_key_secret = \"{}\"\n[limits]\nreload_poll_seconds = {}\ntarget_partitions = 2\n",
            c.listen,
            c.warehouse.display(),
            c.policy.display(),
            c.queries.display(),
            c.state.display(),
            c.record_key_secret.as_ref().unwrap().display(),
            c.limits.reload_poll_seconds
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// 2026-11-28 10:00 WIB.
pub(crate) fn default_time() -> DateTime<Utc> {
    "2026-11-28T03:00:00Z".parse().unwrap()
}

pub(crate) struct Server {
    pub(crate) env: Env,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) running: Option<RunningServer>,
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
}

impl Server {
    pub(crate) async fn start(env: Env) -> Server {
        Server::start_at(env, default_time()).await
    }

    /// With the clock set to `now` (the policy is loaded as of that day).
    pub(crate) async fn start_at(env: Env, now: DateTime<Utc>) -> Server {
        let clock = Arc::new(ManualClock::new(now));
        let state = AppState::open(env.config.clone(), clock.clone())
            .await
            .expect("service starts");
        let running = start(Arc::new(state)).await.expect("binds");
        let base = format!("http://{}", running.addr);
        Server {
            env,
            clock,
            running: Some(running),
            base,
            http: reqwest::Client::new(),
        }
    }

    pub(crate) async fn standard() -> Server {
        Server::start(Env::new(&standard_agreements())).await
    }

    pub(crate) fn state(&self) -> &Arc<AppState> {
        &self.running.as_ref().unwrap().state
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST /v1/query as agreement `id` with `sql`.
    pub(crate) async fn query(&self, id: &str, sql: &str) -> reqwest::Response {
        self.http
            .post(self.url("/v1/query"))
            .bearer_auth(token(id))
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn get(&self, id: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token(id))
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn stop(mut self) -> Env {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
        self.env
    }
}

/// The problem document of a response, after checking its status and
/// media type.
pub(crate) async fn problem(resp: reqwest::Response, status: u16) -> serde_json::Value {
    let got = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.text().await.unwrap();
    assert_eq!(got, status, "status {got}, body {body}");
    assert_eq!(ctype, "application/problem+json", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], status);
    assert!(v["code"].is_string() && v["detail"].is_string(), "{v}");
    v
}

/// Status of `GET {base}/v1/budget` with `token`: 200 when the token is
/// accepted, 401 when the service does not know it.
pub(crate) async fn token_status(http: &reqwest::Client, base: &str, token: &str) -> u16 {
    http.get(format!("{base}/v1/budget"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Checks `condition` every 100 ms for up to 5 s (policy reloads).
pub(crate) async fn eventually<F: std::future::Future<Output = bool>>(
    mut condition: impl FnMut() -> F,
) -> bool {
    for _ in 0..50 {
        if condition().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}
