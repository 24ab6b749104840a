//! The HTTP service end to end: a real server on a loopback port, a real
//! HTTP client, real Parquet snapshots and a real SQLite state database.

use crate::common;

use agregat::state::Outcome;
use common::server::{Pks, Server, eventually, problem, standard_agreements, token, token_status};
use serde_json::{Value, json};

const COUNT_BY_KEC: &str =
    "SELECT kode_kec, jenis_kelamin, COUNT(*) AS jumlah FROM penduduk GROUP BY 1, 2";

fn audit(s: &Server) -> Vec<agregat::state::AuditRecord> {
    s.state().store.entries(None, None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_and_problem_details() {
    let s = Server::standard().await;

    // 200 in each format, negotiated by ?format= and by Accept.
    let r = s.query("uji", COUNT_BY_KEC).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["columns"][0], "kode_kec");
    assert_eq!(v["protection"]["method"], "cell_key");
    assert_eq!(v["rows"].as_array().unwrap().len(), 6 * 2);
    let csv = s
        .http
        .post(s.url("/v1/query?format=csv"))
        .bearer_auth(token("uji"))
        .json(&json!({ "sql": COUNT_BY_KEC }))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    // CSV has no room for metadata: it travels in a header, ASCII-escaped.
    let meta: Value =
        serde_json::from_str(csv.headers()["x-agregat-protection"].to_str().unwrap()).unwrap();
    assert_eq!(meta["method"], "cell_key");
    assert!(meta["catatan"].as_str().unwrap().contains('±'), "{meta}");
    assert!(
        csv.text()
            .await
            .unwrap()
            .starts_with("kode_kec,jenis_kelamin,jumlah")
    );
    let pq = s
        .http
        .post(s.url("/v1/query"))
        .header("accept", "application/vnd.apache.parquet")
        .bearer_auth(token("uji"))
        .json(&json!({ "sql": COUNT_BY_KEC }))
        .send()
        .await
        .unwrap();
    assert_eq!(pq.status(), 200);
    assert_eq!(
        pq.headers()["content-type"],
        "application/vnd.apache.parquet"
    );
    assert!(pq.bytes().await.unwrap().starts_with(b"PAR1"));

    // 401: no token, malformed header, unknown token.
    let r = s
        .http
        .post(s.url("/v1/query"))
        .json(&json!({ "sql": COUNT_BY_KEC }))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r, 401).await["code"], "token_missing");
    let r = s
        .http
        .post(s.url("/v1/query"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .json(&json!({ "sql": COUNT_BY_KEC }))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r, 401).await["code"], "token_malformed");
    let r = s
        .http
        .post(s.url("/v1/query"))
        .bearer_auth("agt_not_a_token")
        .json(&json!({ "sql": COUNT_BY_KEC }))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r, 401).await["code"], "token_unknown");

    // 400: bad JSON, unknown field, SQL that does not parse.
    let r = s
        .http
        .post(s.url("/v1/query"))
        .bearer_auth(token("uji"))
        .body("{\"sql\": ")
        .send()
        .await
        .unwrap();
    let p = problem(r, 400).await;
    assert_eq!(p["code"], "bad_json");
    assert!(
        p["detail"].as_str().unwrap().contains("send JSON such as"),
        "{p}"
    );
    let r = s
        .http
        .post(s.url("/v1/query"))
        .bearer_auth(token("uji"))
        .json(&json!({ "sql": COUNT_BY_KEC, "limit": 5 }))
        .send()
        .await
        .unwrap();
    assert!(
        problem(r, 400).await["detail"]
            .as_str()
            .unwrap()
            .contains("limit")
    );
    let r = s.query("uji", "SELEC kode_kec FROM penduduk").await;
    assert_eq!(problem(r, 400).await["code"], "parse_error");
    let r = s
        .http
        .post(s.url("/v1/query?format=xlsx"))
        .bearer_auth(token("uji"))
        .json(&json!({ "sql": COUNT_BY_KEC }))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r, 400).await["code"], "unsupported_format");

    // 403: element, Minister's permission, region scope, stage.
    let r = s
        .query(
            "pendidikan",
            "SELECT agama, COUNT(*) FROM penduduk GROUP BY 1",
        )
        .await;
    let p = problem(r, 403).await;
    assert_eq!(p["code"], "element_not_permitted");
    assert!(p["detail"].as_str().unwrap().contains("'agama'"), "{p}");
    let r = s
        .query(
            "cacat",
            "SELECT penyandang_cacat, COUNT(*) FROM penduduk GROUP BY 1",
        )
        .await;
    assert_eq!(
        problem(r, 403).await["code"],
        "minister_permission_required"
    );
    let r = s
        .query(
            "kec",
            "SELECT kode_kel, COUNT(*) FROM penduduk WHERE kode_kec = '61.71.02' GROUP BY 1",
        )
        .await;
    let p = problem(r, 403).await;
    assert_eq!(p["code"], "region_not_permitted");
    assert!(p["detail"].as_str().unwrap().contains("61.71.02"), "{p}");
    let r = s
        .http
        .post(s.url("/v1/query"))
        .bearer_auth(token("uji"))
        .json(&json!({ "sql": COUNT_BY_KEC, "snapshot": "dkb-2026-s1-prod" }))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r, 403).await["code"], "stage_not_allowed");
    let r = s
        .http
        .post(s.url("/v1/query"))
        .bearer_auth(token("produksi"))
        .json(&json!({ "sql": COUNT_BY_KEC, "snapshot": "dkb-2026-s1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r, 403).await["code"], "stage_not_allowed");
    // Production agreements get the production snapshot by default.
    let r = s.query("produksi", COUNT_BY_KEC).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["protection"]["snapshot"], "dkb-2026-s1-prod");
    // Validity: not yet valid.
    let r = s.query("belum", COUNT_BY_KEC).await;
    assert_eq!(problem(r, 403).await["code"], "agreement_not_yet_valid");

    // 404: unknown snapshot, unknown route, unknown saved query.
    let r = s
        .http
        .post(s.url("/v1/query"))
        .bearer_auth(token("uji"))
        .json(&json!({ "sql": COUNT_BY_KEC, "snapshot": "dkb-1999-s1" }))
        .send()
        .await
        .unwrap();
    let p = problem(r, 404).await;
    assert_eq!(p["code"], "snapshot_not_found");
    assert!(
        !p["detail"].as_str().unwrap().contains("prod"),
        "trial sees no production snapshot: {p}"
    );
    let r = s.get("uji", "/v1/nothing").await;
    assert_eq!(problem(r, 404).await["code"], "not_found");
    let r = s
        .http
        .post(s.url("/v1/queries/tidak_ada"))
        .bearer_auth(token("uji"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r, 404).await["code"], "saved_query_not_found");
    // 405
    let r = s.get("uji", "/v1/query").await;
    assert_eq!(problem(r, 405).await["code"], "method_not_allowed");
    // 406
    let r = s
        .http
        .post(s.url("/v1/query"))
        .header("accept", "application/xml")
        .bearer_auth(token("uji"))
        .json(&json!({ "sql": COUNT_BY_KEC }))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r, 406).await["code"], "not_acceptable");

    // 413: body, SQL and grid too large.
    let big = "x".repeat(70 * 1024);
    let r = s
        .http
        .post(s.url("/v1/query"))
        .bearer_auth(token("uji"))
        .json(&json!({ "sql": big }))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r, 413).await["code"], "payload_too_large");
    let long_sql = format!(
        "SELECT kode_kec, COUNT(*) FROM penduduk WHERE 1 = 1 {} GROUP BY 1",
        "AND 1 = 1 ".repeat(2000)
    );
    let r = s.query("uji", &long_sql).await;
    assert_eq!(problem(r, 413).await["code"], "sql_too_large");
    let r = s
        .query(
            "uji",
            "SELECT kode_kel, agama, pendidikan_terakhir, jenis_pekerjaan, COUNT(*) FROM penduduk GROUP BY 1, 2, 3, 4",
        )
        .await;
    assert_eq!(problem(r, 413).await["code"], "too_many_cells");

    // 422: the aggregate-only gate.
    let r = s
        .query("uji", "SELECT no_kk, COUNT(*) FROM penduduk GROUP BY 1")
        .await;
    let p = problem(r, 422).await;
    assert_eq!(p["code"], "identifier_in_group_by");
    assert!(p["detail"].as_str().unwrap().contains("no_kk"), "{p}");
    let r = s.query("uji", "SELECT * FROM penduduk").await;
    assert!(
        problem(r, 422).await["code"]
            .as_str()
            .unwrap()
            .starts_with("identifier_in")
    );

    // 429: the rate limit (3 per minute).
    for _ in 0..3 {
        assert_eq!(s.get("lambat", "/v1/budget").await.status(), 200);
    }
    let r = s.get("lambat", "/v1/budget").await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(problem(r, 429).await["code"], "rate_limited");

    // Every authenticated /v1 request above has exactly one audit entry;
    // the chain holds; no token appears anywhere in the audit log.
    let entries = audit(&s);
    assert!(
        entries
            .iter()
            .any(|e| e.entry.request_id.as_deref() == Some(&rid))
    );
    assert_eq!(entries.len(), 26, "one entry per authenticated /v1 request");
    assert!(s.state().store.verify().unwrap().is_ok());
    let rejected = entries
        .iter()
        .filter(|e| e.entry.outcome == Outcome::Rejected)
        .count();
    assert_eq!(rejected, 26 - 7);
    for e in &entries {
        let text = serde_json::to_string(&e.entry).unwrap();
        assert!(
            !text.contains("agt_test_"),
            "token leaked into the audit log: {text}"
        );
    }
    assert!(entries.iter().all(|e| e.entry.agreement != "-"));
    // The five that never authenticated (three without a valid token, and
    // the unmatched routes) are counted per address and minute instead.
    let env = s.stop().await;
    let store = agregat::state::SqliteStore::open(env.config.state_file()).unwrap();
    use agregat::state::StateStore;
    let counted: u64 = store
        .refusals(None, None)
        .unwrap()
        .iter()
        .map(|c| c.count)
        .sum();
    assert_eq!(counted, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_agreement_is_refused_after_its_last_day() {
    let s = Server::standard().await;
    assert_eq!(s.query("segera", COUNT_BY_KEC).await.status(), 200);
    // 2027-01-01 08:00 WIB: the day after valid_until.
    s.clock.set("2027-01-01T01:00:00Z".parse().unwrap());
    let r = s.query("segera", COUNT_BY_KEC).await;
    let p = problem(r, 403).await;
    assert_eq!(p["code"], "agreement_expired");
    assert!(p["detail"].as_str().unwrap().contains("2026-12-31"), "{p}");
    // WIB, not UTC: 2026-12-31 23:30 WIB is still valid.
    s.clock.set("2026-12-31T16:30:00Z".parse().unwrap());
    assert_eq!(s.query("segera", COUNT_BY_KEC).await.status(), 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_is_enforced_for_a_token_outside_its_region() {
    let s = Server::standard().await;
    // The kecamatan agreement sees only its own kelurahan.
    let r = s
        .query(
            "kec",
            "SELECT kode_kel, COUNT(*) AS n FROM penduduk GROUP BY 1",
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    for row in v["rows"].as_array().unwrap() {
        assert!(row[0].as_str().unwrap().starts_with("61.71.01."), "{row}");
    }
    // Naming another kecamatan, kab or province is refused outright.
    for sql in [
        "SELECT jenis_kelamin, COUNT(*) FROM penduduk WHERE kode_kec = '61.71.03' GROUP BY 1",
        "SELECT jenis_kelamin, COUNT(*) FROM penduduk WHERE kode_kel IN ('61.71.01.1001', '61.71.02.1001') GROUP BY 1",
        "SELECT jenis_kelamin, COUNT(*) FROM penduduk WHERE kode_kel LIKE '61.72%' GROUP BY 1",
    ] {
        let r = s.query("kec", sql).await;
        assert_eq!(
            problem(r, 403).await["code"],
            "region_not_permitted",
            "{sql}"
        );
    }
    // The catalog lists only regions in scope.
    let v: Value = s.get("kec", "/v1/catalog").await.json().await.unwrap();
    let regions = v["regions"].as_array().unwrap();
    assert!(!regions.is_empty());
    for r in regions {
        assert!(r["kode"].as_str().unwrap().starts_with("61.71.01"), "{r}");
    }
    let names: Vec<&str> = v["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["jenis_kelamin", "kode_kec", "kode_kel"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_race_twenty_requests_five_fit() {
    let s = Server::standard().await;
    // rho 0.01 per query, 0.05 per period: exactly five fresh questions.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let http = s.http.clone();
        let url = s.url("/v1/query");
        tasks.push(tokio::spawn(async move {
            let sql = format!(
                "SELECT kode_kec, COUNT(*) AS n FROM penduduk WHERE umur(tanggal_lahir) >= {i} GROUP BY 1"
            );
            let r = http
                .post(url)
                .bearer_auth(token("dp-uji"))
                .json(&json!({ "sql": sql }))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }));
    }
    let mut ok = 0;
    let mut exhausted = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            200 => ok += 1,
            409 => {
                assert_eq!(body["code"], "budget_exhausted");
                exhausted += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, exhausted), (5, 15));
    let rows = s.state().store.ledger_rows("dp-uji").unwrap();
    assert_eq!(rows.len(), 5, "refused requests leave no ledger row");
    assert!(
        rows.iter()
            .all(|r| r.state == agregat::state::LedgerState::Committed)
    );
    let spent: f64 = rows.iter().map(|r| r.amount).sum();
    let charged: f64 = audit(&s)
        .iter()
        .filter(|e| e.entry.outcome == Outcome::Accepted)
        .filter_map(|e| e.entry.privacy_loss)
        .sum();
    assert!(
        (spent - charged).abs() < 1e-12,
        "ledger {spent} vs audit {charged}"
    );
    assert!(spent <= 0.05 + 1e-12);
    // Every charged release has its committed ledger row, by request id.
    for e in audit(&s)
        .iter()
        .filter(|e| e.entry.outcome == Outcome::Accepted)
    {
        let id = e.entry.request_id.as_deref().unwrap();
        assert!(
            rows.iter().any(|r| r.request_id == id),
            "no ledger row for {id}"
        );
    }
    let b: Value = s.get("dp-uji", "/v1/budget").await.json().await.unwrap();
    assert_eq!(b["queries_left"], 0);
    assert_eq!(b["period"], "2026-S2");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_cost_is_a_dry_run_and_repeats_are_free() {
    let s = Server::standard().await;
    let sql =
        "SELECT kode_kec, COUNT(*) AS n, AVG(umur(tanggal_lahir)) AS rata FROM penduduk GROUP BY 1";
    let cost = |sql: &'static str| {
        let http = s.http.clone();
        let url = s.url("/v1/query/cost");
        async move {
            http.post(url)
                .bearer_auth(token("dp-uji"))
                .json(&json!({ "sql": sql }))
                .send()
                .await
                .unwrap()
        }
    };
    let r = cost(sql).await;
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["method"], "dp");
    assert_eq!(c["cells"], 6);
    assert_eq!(c["measure"], "rho");
    let charge = c["charge"].as_f64().unwrap();
    assert!(charge > 0.0099 && charge <= 0.01 + 1e-12, "{c}");
    assert!(
        c["margin_of_error_95"]["n"]
            .as_f64()
            .is_some_and(|m| m > 0.0),
        "{c}"
    );
    assert_eq!(c["budget"]["spent"], 0.0);
    // The dry run charged nothing.
    assert!(s.state().store.ledger_rows("dp-uji").unwrap().is_empty());
    // The real run charges exactly what the dry run said.
    let r = s.query("dp-uji", sql).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let rows = s.state().store.ledger_rows("dp-uji").unwrap();
    assert_eq!(rows.len(), 1);
    assert!((rows[0].amount - charge).abs() < 1e-15);
    // ... and exactly what OpenDP's maps returned for the release (AVG
    // included: its noisy sum and noisy count are both charged).
    let loss = audit(&s).last().unwrap().entry.privacy_loss.unwrap();
    assert!(
        (loss - rows[0].amount).abs() < 1e-15,
        "ledger {} vs release {loss}",
        rows[0].amount
    );
    assert_eq!(v["protection"]["dp"]["reused"], false);
    // The release says what is spent and left.
    let b = &v["protection"]["budget"];
    assert_eq!(b["period"], "2026-S2");
    assert!((b["spent"].as_f64().unwrap() - charge).abs() < 1e-12, "{b}");
    assert!(
        (b["remaining"].as_f64().unwrap() - (0.05 - charge)).abs() < 1e-12,
        "{b}"
    );
    // The same question, written differently: the identical release, free.
    let again = s
        .query("dp-uji", "select kode_kec, count(*) as n, avg(umur(tanggal_lahir)) as rata from penduduk group by kode_kec order by 1")
        .await;
    let w: Value = again.json().await.unwrap();
    assert_eq!(w["protection"]["dp"]["reused"], true);
    let sorted = |x: &Value| {
        let mut rows: Vec<String> = x["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.to_string())
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(sorted(&w), sorted(&v));
    assert_eq!(s.state().store.ledger_rows("dp-uji").unwrap().len(), 1);
    let c2: Value = cost(sql).await.json().await.unwrap();
    assert_eq!(c2["would_reuse"], true);
    assert_eq!(c2["charge"], 0.0);
    // Cell-key cost: no charge, the ptable's bound.
    let r = s
        .http
        .post(s.url("/v1/query/cost"))
        .bearer_auth(token("uji"))
        .json(&json!({ "sql": COUNT_BY_KEC }))
        .send()
        .await
        .unwrap();
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["method"], "cell_key");
    assert_eq!(c["cells"], 12);
    assert!(c["max_perturbation"].as_u64().unwrap() >= 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_repeat_after_a_restart_is_the_same_release_and_free() {
    let s = Server::standard().await;
    let sql = "SELECT kode_kec, jenis_kelamin, COUNT(*) AS n FROM penduduk GROUP BY 1, 2";
    let first: Value = s.query("dp-uji", sql).await.json().await.unwrap();
    assert_eq!(first["protection"]["dp"]["reused"], false);
    let env = s.stop().await;
    let s = Server::start(env).await;
    let r = s.query("dp-uji", sql).await;
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["protection"]["dp"]["reused"], true);
    assert_eq!(
        again["rows"], first["rows"],
        "a fresh noisy release after a restart"
    );
    assert_eq!(
        s.state().store.ledger_rows("dp-uji").unwrap().len(),
        1,
        "charged twice"
    );
    let last = audit(&s).pop().unwrap();
    assert_eq!(last.entry.privacy_loss, Some(0.0));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_queries_with_parameters() {
    let s = Server::standard().await;
    // Listing: only what the agreement's elements allow.
    let v: Value = s
        .get("pendidikan", "/v1/queries")
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"usia_sekolah"), "{names:?}");
    assert!(!names.contains(&"usia_kerja_pendidikan"), "{names:?}");
    let usia = v
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "usia_sekolah")
        .unwrap();
    assert!(
        usia["params"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "tahun_ajaran")
    );

    let run = |name: &'static str, params: Value| {
        let http = s.http.clone();
        let url = s.url(&format!("/v1/queries/{name}"));
        async move {
            http.post(url)
                .bearer_auth(token("pendidikan"))
                .json(&params)
                .send()
                .await
                .unwrap()
        }
    };
    let r = run("usia_sekolah", json!({ "tahun_ajaran": 2026 })).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["columns"],
        json!([
            "kode_kel",
            "jenis_kelamin",
            "umur",
            "jenjang",
            "jumlah",
            "suppression"
        ])
    );
    let r = run(
        "usia_sekolah",
        json!({ "tahun_ajaran": 2026, "kecamatan": "61.71.01" }),
    )
    .await;
    assert_eq!(r.status(), 200);
    for (params, param) in [
        (json!({ "tahun_ajaran": "dua ribu" }), "tahun_ajaran"),
        (json!({ "tahun_ajaran": 1990 }), "tahun_ajaran"),
        (
            json!({ "tahun_ajaran": 2026, "kecamatan": "61.71.99" }),
            "kecamatan",
        ),
        (
            json!({ "tahun_ajaran": 2026, "kecamatan": "61.71.01'; DROP TABLE x; --" }),
            "kecamatan",
        ),
        (json!({ "tahun": 2026 }), "tahun"),
    ] {
        let r = run("usia_sekolah", params.clone()).await;
        let p = problem(r, 400).await;
        assert_eq!(p["code"], "invalid_parameter", "{params}");
        assert_eq!(p["param"], param, "{params}: {p}");
        assert!(p["detail"].as_str().unwrap().contains(param), "{p}");
    }
    // A kecamatan outside the scope is a region refusal, not a parameter error.
    let r = run(
        "usia_sekolah",
        json!({ "tahun_ajaran": 2026, "kecamatan": "61.72.01" }),
    )
    .await;
    assert_eq!(problem(r, 403).await["code"], "region_not_permitted");
    // No back door: a saved query needing unpermitted elements is refused.
    let r = run("usia_kerja_pendidikan", json!({})).await;
    assert_eq!(problem(r, 403).await["code"], "element_not_permitted");
    // Saved queries go through the same protection: DP agreement is charged.
    let r = s
        .http
        .post(s.url("/v1/queries/piramida_penduduk"))
        .bearer_auth(token("dp-uji"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["protection"]["method"], "dp");
    assert_eq!(s.state().store.ledger_rows("dp-uji").unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_endpoints_metrics_and_openapi() {
    let s = Server::standard().await;
    let v: Value = s.get("uji", "/v1/snapshots").await.json().await.unwrap();
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["dkb-2026-s1"],
        "a trial agreement sees synthetic snapshots only"
    );
    let v: Value = s
        .get("produksi", "/v1/snapshots")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v[0]["id"], "dkb-2026-s1-prod");
    let b: Value = s.get("uji", "/v1/budget").await.json().await.unwrap();
    assert_eq!(b["method"], "cell_key");
    let c: Value = s
        .get("pendidikan", "/v1/catalog")
        .await
        .json()
        .await
        .unwrap();
    let jk = c["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "jenis_kelamin")
        .unwrap();
    assert_eq!(jk["values"], json!(["LAKI-LAKI", "PEREMPUAN"]));
    assert!(c["regions"].as_array().unwrap().len() > 30);

    assert_eq!(
        s.http.get(s.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        s.http.get(s.url("/readyz")).send().await.unwrap().status(),
        200
    );
    let _ = s
        .query("uji", "SELECT no_kk, COUNT(*) FROM penduduk GROUP BY 1")
        .await;
    let m = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("agregat_requests_total{route=\"/v1/snapshots\",status=\"200\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("agregat_rejections_total{code=\"identifier_in_group_by\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("agregat_request_duration_seconds_bucket{route=\"/v1/query\""),
        "{m}"
    );
    // No figure per agreement on the service's port.
    assert!(m.contains("agregat_lifetime_privacy_loss 0"), "{m}");
    assert!(!m.contains("agreement="), "{m}");

    // The spec lists exactly the served routes.
    let spec: Value = s
        .http
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut in_spec: Vec<(String, String)> = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            in_spec.push((method.clone(), path.clone()));
        }
    }
    in_spec.sort();
    let mut served: Vec<(String, String)> = agregat::service::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(in_spec, served);
    assert!(spec["components"]["schemas"]["Problem"].is_object());
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reloads_on_change_and_keeps_the_old_one_when_invalid() {
    let s = Server::standard().await;
    let dir = s.env.policy_dir();
    // A new token minted while the service runs starts to work.
    let (new_token, _, _) = agregat::agreement::add_token(
        &dir,
        "uji",
        chrono::NaiveDate::from_ymd_opt(2026, 11, 28).unwrap(),
    )
    .unwrap();
    let works = async |t: &str| token_status(&s.http, &s.base, t).await;
    assert!(
        eventually(async || works(&new_token).await == 200).await,
        "the new token never started to work"
    );
    // An invalid file: the old policy stays in force.
    std::fs::write(
        dir.join("rusak.toml"),
        "id = \"rusak\"\npermitted_elements = [\"sidik_jari\"]\n",
    )
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(works(&new_token).await, 200);
    assert_eq!(works(&token("uji")).await, 200);
    // Revocation: remove the agreement's file (with a valid directory again).
    std::fs::remove_file(dir.join("rusak.toml")).unwrap();
    std::fs::remove_file(dir.join("lambat.toml")).unwrap();
    assert!(
        eventually(async || works(&token("lambat")).await == 401).await,
        "a removed agreement's token still works"
    );
    // Narrowing an agreement takes effect at once, also for questions
    // answered before (the response cache is keyed by the policy).
    let sql = "SELECT agama, COUNT(*) FROM penduduk GROUP BY 1";
    assert_eq!(s.query("uji", sql).await.status(), 200);
    assert_eq!(s.query("uji", sql).await.status(), 200);
    let narrowed = Pks {
        elements: &["jenis_kelamin", "kode_kec"],
        ..Pks::default()
    };
    // Keep the minted token: rewrite the file with it appended.
    let old = std::fs::read_to_string(dir.join("uji.toml")).unwrap();
    let minted = &old[old.rfind("[[token]]").unwrap()..];
    std::fs::write(
        dir.join("uji.toml"),
        format!("{}\n{minted}", narrowed.toml()),
    )
    .unwrap();
    assert!(
        eventually(async || s.query("uji", sql).await.status() == 403).await,
        "a narrowed agreement still answers with the removed element"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_answers_and_audits_in_flight_requests() {
    let s = Server::standard().await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let http = s.http.clone();
        let url = s.url("/v1/query");
        tasks.push(tokio::spawn(async move {
            let sql = format!(
                "SELECT kode_kel, jenis_kelamin, kelompok_umur(umur(tanggal_lahir), 5), COUNT(*) FROM penduduk WHERE umur(tanggal_lahir) >= {} GROUP BY 1, 2, 3", 5 * i
            );
            http.post(url)
                .bearer_auth(token("uji"))
                .json(&json!({ "sql": sql }))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let state = std::sync::Arc::clone(s.state());
    s.stop().await;
    let mut answered = 0;
    for t in tasks {
        if let Ok(status) = t.await.unwrap() {
            assert_eq!(status, 200);
            answered += 1;
        }
    }
    let entries = state.store.entries(None, None).unwrap();
    assert_eq!(entries.len(), answered, "every answered request is audited");
    assert!(state.store.verify().unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_download_opens_in_pyarrow_polars_pandas_and_duckdb_with_its_metadata() {
    let Some(py) = common::python() else {
        eprintln!(
            "SKIPPED: no Python with pyarrow, polars, pandas and duckdb (set AGREGAT_PYTHON; .ci/run installs them)"
        );
        return;
    };
    let s = Server::standard().await;
    let dir = tempfile::tempdir().unwrap();
    for (id, name) in [("uji", "cellkey.parquet"), ("dp-uji", "dp.parquet")] {
        let r = s
            .http
            .post(s.url("/v1/query?format=parquet"))
            .bearer_auth(token(id))
            .json(&json!({ "sql": "SELECT kode_kec, jenis_kelamin, COUNT(*) AS jumlah FROM penduduk GROUP BY 1, 2" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .contains(".parquet")
        );
        std::fs::write(dir.path().join(name), r.bytes().await.unwrap()).unwrap();
    }
    let script = r#"
import json, sys, pyarrow.parquet as pq, polars as pl, pandas as pd, duckdb
for name, method in [("cellkey.parquet", "cell_key"), ("dp.parquet", "dp")]:
    path = sys.argv[1] + "/" + name
    t = pq.read_table(path)
    meta = json.loads(t.schema.metadata[b"agregat.protection"])
    assert meta["method"] == method, meta
    assert t.column_names == ["kode_kec", "jenis_kelamin", "jumlah", "suppression"], t.column_names
    df = pl.read_parquet(path)
    assert df.height == 12, df
    assert df["jumlah"].drop_nulls().min() >= 0
    kv = pq.ParquetFile(path).metadata.metadata
    assert json.loads(kv[b"agregat.protection"])["method"] == method
    if method == "dp":
        assert meta["dp"]["budget"]["measure"] == "z_cdp", meta
        assert all(c["margin_of_error_95"] > 0 for c in meta["dp"]["columns"].values())
    pdf = pd.read_parquet(path)
    assert list(pdf.columns) == t.column_names and len(pdf) == 12, pdf
    assert int(pdf["jumlah"].isna().sum()) == df["jumlah"].null_count()
    con = duckdb.connect()
    rows, nulls = con.execute(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE jumlah IS NULL) FROM read_parquet(?)", [path]
    ).fetchone()
    assert rows == 12 and nulls == df["jumlah"].null_count(), (rows, nulls)
    kv = dict(con.execute("SELECT decode(key), decode(value) FROM parquet_kv_metadata(?)", [path]).fetchall())
    assert json.loads(kv["agregat.protection"])["method"] == method
print("ok")
"#;
    let out = std::process::Command::new(&py)
        .args(["-c", script])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop().await;
}

#[test]
fn standard_agreements_are_valid_policy() {
    let env = common::server::Env::new(&standard_agreements());
    let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
    let p = agregat::agreement::Policy::load_dir(&env.policy_dir(), today).unwrap();
    assert_eq!(p.agreements().count(), standard_agreements().len());
    let _ = Pks::default();
}

/// Two `Authorization` headers are refused (a proxy in front may have
/// checked the other one), and every 401 carries a Bearer challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_credentials_and_bearer_challenges() {
    let s = Server::standard().await;
    let good = format!("Bearer {}", token("uji"));
    let challenge = |r: &reqwest::Response| {
        r.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string())
    };
    for (first, second) in [
        (good.as_str(), "Bearer agt_not_a_token"),
        ("Bearer agt_not_a_token", good.as_str()),
        (good.as_str(), good.as_str()),
    ] {
        let r = s
            .http
            .get(s.url("/v1/budget"))
            .header("authorization", first)
            .header("authorization", second)
            .send()
            .await
            .unwrap();
        let c = challenge(&r);
        let p = problem(r, 400).await;
        assert_eq!(p["code"], "ambiguous_credentials", "{p}");
        assert!(p["detail"].as_str().unwrap().contains("exactly one"), "{p}");
        assert_eq!(
            c.as_deref(),
            Some("Bearer realm=\"agregat\", error=\"invalid_request\"")
        );
    }
    // Two credentials folded into one header are not a token either.
    let r = s
        .http
        .get(s.url("/v1/budget"))
        .header("authorization", format!("{good}, Bearer agt_not_a_token"))
        .send()
        .await
        .unwrap();
    assert!(challenge(&r).unwrap().starts_with("Bearer "));
    assert_eq!(problem(r, 401).await["code"], "token_malformed");

    // Every 401 carries `WWW-Authenticate: Bearer ...` (RFC 6750).
    let r = s.http.get(s.url("/v1/budget")).send().await.unwrap();
    assert_eq!(challenge(&r).as_deref(), Some("Bearer realm=\"agregat\""));
    assert_eq!(problem(r, 401).await["code"], "token_missing");
    let r = s
        .http
        .post(s.url("/v1/query"))
        .bearer_auth("agt_not_a_token")
        .json(&json!({ "sql": COUNT_BY_KEC }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        challenge(&r).as_deref(),
        Some("Bearer realm=\"agregat\", error=\"invalid_token\"")
    );
    assert_eq!(problem(r, 401).await["code"], "token_unknown");
    let r = s
        .http
        .get(s.url("/v1/catalog"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert!(challenge(&r).unwrap().starts_with("Bearer "));
    assert_eq!(problem(r, 401).await["code"], "token_malformed");

    // One good header: answered, no challenge.
    let r = s.get("uji", "/v1/budget").await;
    assert_eq!(r.status(), 200);
    assert!(challenge(&r).is_none());
    s.stop().await;
}

/// Reads (and drops) whatever the server sends on `s` until it closes the
/// connection; the time that took, or `None` if it was still open after
/// `limit`.
async fn closed_within(
    s: &mut tokio::net::TcpStream,
    limit: std::time::Duration,
) -> Option<std::time::Duration> {
    use tokio::io::AsyncReadExt;
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A response head and body read off a raw connection (Content-Length).
async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        assert!(n > 0, "closed before the response: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_silent_and_idle_connections_are_closed_in_time() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let mut env = common::server::Env::new(&standard_agreements());
    env.config.limits.header_read_timeout_seconds = 1;
    env.config.limits.idle_timeout_seconds = 2;
    let s = Server::start(env).await;
    let addr = s.running.as_ref().unwrap().addr;

    // Connects and sends nothing: closed after the header-read timeout.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let t = closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("a silent client is closed");
    assert!(
        t >= Duration::from_millis(900) && t < Duration::from_millis(1800),
        "{t:?}"
    );

    // Sends its head at 10 bytes a second: closed after the header-read
    // timeout, however long it keeps sending.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let t0 = std::time::Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    for b in head {
        if slow.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = t0.elapsed()
        + closed_within(&mut slow, Duration::from_secs(5))
            .await
            .unwrap_or(Duration::from_secs(5));
    assert!(
        t < Duration::from_millis(2000),
        "a slow client was kept {t:?}"
    );

    // A kept-alive connection: answered, then closed after the idle
    // timeout, not after the (shorter) header-read timeout.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
    let t = closed_within(&mut idle, Duration::from_secs(6))
        .await
        .expect("an idle client is closed");
    assert!(
        t >= Duration::from_millis(1800) && t < Duration::from_millis(2800),
        "{t:?}"
    );

    // Kept alive and used again within the idle timeout: served.
    let mut again = tokio::net::TcpStream::connect(addr).await.unwrap();
    for _ in 0..3 {
        again
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut again).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let m = s.http.get(s.url("/metrics")).send().await.unwrap();
    let m = m.text().await.unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("agregat_connections_timed_out_total ") && !l.ends_with(" 0")),
        "{m}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_connection_cap_reached_healthz_still_answers() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let mut env = common::server::Env::new(&standard_agreements());
    env.config.limits.header_read_timeout_seconds = 60;
    env.config.limits.idle_timeout_seconds = 60;
    env.config.limits.max_connections = 20;
    env.config.limits.max_connections_per_address = 20;
    let s = Server::start(env).await;
    let addr = s.running.as_ref().unwrap().addr;

    // A request in flight (its body half sent) is never closed for room.
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = json!({ "sql": COUNT_BY_KEC }).to_string();
    let head = format!(
        "POST /v1/query HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        token("uji"),
        body.len()
    );
    busy.write_all(head.as_bytes()).await.unwrap();
    busy.write_all(&body.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 60 sockets that never send anything, three times the cap.
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), s.http.get(s.url("/healthz")).send())
        .await
        .expect("/healthz answers with the cap reached")
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let m = s.http.get(s.url("/metrics")).send().await.unwrap();
    let m = m.text().await.unwrap();
    let value = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {m}"))
    };
    assert!(value("agregat_connections_open ") <= 20, "{m}");
    assert!(value("agregat_connections_evicted_total ") >= 40, "{m}");

    // The request in flight was kept: it finishes and is answered.
    busy.write_all(&body.as_bytes()[10..]).await.unwrap();
    let resp = read_response(&mut busy).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // Most idle sockets were closed to make room.
    let mut closed = 0;
    for mut c in idle {
        if closed_within(&mut c, Duration::from_millis(50))
            .await
            .is_some()
        {
            closed += 1;
        }
    }
    assert!(closed >= 40, "{closed} of 60 idle sockets closed");
    s.stop().await;
}

/// Requests that never authenticate are counted per address and minute,
/// not logged one row each; they use up the address's allowance, after
/// which its `/v1` requests are refused before authentication. Every
/// authenticated request keeps its own audit entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_refusals_are_counted_and_limited_per_address() {
    let mut env = common::server::Env::new(&standard_agreements());
    env.config.limits.unauthenticated_per_address_per_minute = 60;
    let s = Server::start(env).await;
    let wrong = |path: &'static str| {
        s.http
            .get(s.url(path))
            .bearer_auth("agt_not_a_token")
            .send()
    };
    for _ in 0..30 {
        assert_eq!(wrong("/v1/budget").await.unwrap().status(), 401);
    }
    for _ in 0..15 {
        let r = s.http.get(s.url("/v1/catalog")).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    for _ in 0..5 {
        let r = s.http.get(s.url("/v1/nothing-here")).send().await.unwrap();
        assert_eq!(r.status(), 404);
    }
    let r = s.get("uji", "/v1/budget").await;
    assert_eq!(r.status(), 200, "a valid token still works");
    assert_eq!(audit(&s).len(), 1, "one entry: the authenticated request");

    // The allowance (60, refilling at 60 a minute) is used up: 429 before
    // authentication, even with a valid token, with Retry-After.
    let mut extra = 0;
    let r = loop {
        let r = wrong("/v1/budget").await.unwrap();
        if r.status() == 429 {
            break r;
        }
        assert_eq!(r.status(), 401);
        extra += 1;
        assert!(extra < 20, "no 429 after {extra} more refusals");
    };
    assert!(r.headers().contains_key("retry-after"));
    let p = problem(r, 429).await;
    assert_eq!(p["code"], "rate_limited");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("before authentication"),
        "{p}"
    );
    assert_eq!(s.get("uji", "/v1/budget").await.status(), 429);
    // Probes are not limited.
    assert_eq!(
        s.http.get(s.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(audit(&s).len(), 1);

    let env = s.stop().await;
    let store = agregat::state::SqliteStore::open(env.config.state_file()).unwrap();
    use agregat::state::StateStore;
    let counts = store.refusals(None, None).unwrap();
    let count = |code: &str| {
        counts
            .iter()
            .filter(|c| c.code == code)
            .map(|c| c.count)
            .sum::<u64>()
    };
    assert_eq!(count("token_unknown"), 30 + extra, "{counts:?}");
    assert_eq!(count("token_missing"), 15, "{counts:?}");
    assert_eq!(count("not_found"), 5, "{counts:?}");
    assert_eq!(count("rate_limited"), 2, "{counts:?}");
    assert_eq!(counts.len(), 4, "one row per minute, address and code");
    assert!(
        counts
            .iter()
            .all(|c| c.client_addr == "127.0.0.1" && c.minute == "2026-11-28T03:00:00Z"),
        "{counts:?}"
    );
    let entries = store.entries(None, None).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].entry.agreement, "uji");
    assert!(store.verify().unwrap().is_ok());
}

/// 10,000 wrong-token requests grow the state database by a few pages,
/// not by one row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_flood_grows_the_state_by_a_bounded_amount() {
    let mut env = common::server::Env::new(&standard_agreements());
    // No limit before authentication: the counting alone bounds growth.
    env.config.limits.unauthenticated_per_address_per_minute = 0;
    let s = Server::start(env).await;
    let db = s.env.config.state_file();
    let size = || {
        agregat::state::private::database_files(&db)
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum::<u64>()
    };
    assert_eq!(s.get("uji", "/v1/budget").await.status(), 200);
    let before = size();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let http = s.http.clone();
        let url = s.url("/v1/budget");
        tasks.push(tokio::spawn(async move {
            for _ in 0..1250 {
                let r = http
                    .get(&url)
                    .bearer_auth("agt_not_a_token")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 401);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let env = s.stop().await;
    let growth = size().saturating_sub(before);
    eprintln!("state growth for 10,000 wrong-token requests: {growth} bytes");
    assert!(growth <= 64 * 1024, "{growth} bytes");
    let store = agregat::state::SqliteStore::open(env.config.state_file()).unwrap();
    use agregat::state::StateStore;
    let counts = store.refusals(None, None).unwrap();
    assert_eq!(counts.iter().map(|c| c.count).sum::<u64>(), 10_000);
    assert_eq!(store.entries(None, None).unwrap().len(), 1);
}

/// The memory against averaging: breakdowns of one margin (each
/// kelurahan's total) are counted until their average would pin it, then a
/// new breakdown is refused with `margin_repartitioned`; repeats stay free;
/// the memory survives a restart and `/v1/budget` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_partitions_of_a_margin_are_remembered_and_refused() {
    let s = Server::standard().await;
    let by = |d: &str| {
        if d.is_empty() {
            "SELECT kode_kel, COUNT(*) AS n FROM penduduk GROUP BY 1".to_string()
        } else {
            format!("SELECT kode_kel, {d}, COUNT(*) AS n FROM penduduk GROUP BY 1, 2")
        }
    };
    let mut accepted = Vec::new();
    let mut refused = None;
    for d in [
        "",
        "jenis_kelamin",
        "status_perkawinan",
        "agama",
        "golongan_darah",
        "pendidikan_terakhir",
        "jenis_pekerjaan",
        "status_hubungan_keluarga",
    ] {
        let r = s.query("uji", &by(d)).await;
        match r.status().as_u16() {
            200 => accepted.push(d),
            422 => {
                let p = problem(r, 422).await;
                assert_eq!(p["code"], "margin_repartitioned", "{p}");
                assert!(p["detail"].as_str().unwrap().contains("kode_kel"), "{p}");
                refused = Some(d);
                break;
            }
            other => panic!("{d}: {other}"),
        }
    }
    let refused = refused.expect("some breakdown must be refused");
    assert!(accepted.len() >= 3, "{accepted:?}");
    // Repeats of what was released are free.
    for d in &accepted {
        assert_eq!(s.query("uji", &by(d)).await.status(), 200, "{d}");
    }
    let b: Value = s.get("uji", "/v1/budget").await.json().await.unwrap();
    let margins = b["margins"].as_array().unwrap();
    assert!(
        margins
            .iter()
            .any(|m| m["margin"].as_str().unwrap().contains("kode_kel")
                && m["standard_error"].as_f64().unwrap() <= 1.5),
        "{b}"
    );
    // A restart does not renew the memory.
    let env = s.stop().await;
    let s = Server::start(env).await;
    let r = s.query("uji", &by(refused)).await;
    assert_eq!(problem(r, 422).await["code"], "margin_repartitioned");
    assert_eq!(s.query("uji", &by(accepted[0])).await.status(), 200);
    s.stop().await;
}

/// Deep and long expressions of every kind, up to the SQL size limit, get
/// a client error and the process stays up (a 1,200-term `1+1+…` chain, or
/// 1,400 ORs, used to overflow a worker's stack and abort the service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_and_long_expressions_never_crash_the_service() {
    let s = Server::standard().await;
    let chain = |n: usize, part: &str, op: &str| vec![part; n].join(op);
    let nest = |n: usize, open: &str, inner: &str, close: &str| {
        format!("{}{inner}{}", open.repeat(n), close.repeat(n))
    };
    let mut cases: Vec<String> = Vec::new();
    for n in [70, 1_100, 1_200, 2_000] {
        cases.push(format!(
            "SELECT COUNT(*) FROM penduduk WHERE {} > 0",
            chain(n, "1", "+")
        ));
        cases.push(format!(
            "SELECT COUNT(*) FROM penduduk WHERE {}",
            chain(n, "agama = 'ISLAM'", " OR ")
        ));
        cases.push(format!(
            "SELECT COUNT(*) FROM penduduk WHERE {}",
            chain(n, "jenis_kelamin <> 'X'", " AND ")
        ));
        cases.push(format!(
            "SELECT COUNT(*) FROM penduduk WHERE {}",
            nest(n, "NOT (", "agama = 'ISLAM'", ")")
        ));
        cases.push(format!(
            "SELECT COUNT(*) FROM penduduk WHERE {} = 1",
            nest(n, "(", "1", ")")
        ));
        cases.push(format!(
            "SELECT {} , COUNT(*) FROM penduduk GROUP BY 1",
            nest(n, "CASE WHEN agama = 'ISLAM' THEN ", "1", " ELSE 0 END")
        ));
        cases.push(format!(
            "SELECT COUNT(*) FROM penduduk WHERE {} = 'x'",
            nest(n, "upper(", "agama", ")")
        ));
        cases.push(format!(
            "SELECT COUNT(*) FROM penduduk WHERE umur(tanggal_lahir) IN ({})",
            chain(n, "7", ", ")
        ));
    }
    let mut statuses = std::collections::BTreeMap::new();
    for sql in &cases {
        for who in ["uji", "dp-uji"] {
            let r = s.query(who, sql).await;
            let status = r.status().as_u16();
            assert!(
                (200..500).contains(&status),
                "{who}: {status} for a {}-byte query",
                sql.len()
            );
            *statuses.entry(status).or_insert(0) += 1;
            // Still up.
            let h = s.http.get(s.url("/healthz")).send().await.unwrap();
            assert_eq!(h.status(), 200);
        }
    }
    // The 1,200-term chain is refused as too complex, naming the fix.
    let r = s
        .query(
            "dp-uji",
            &format!(
                "SELECT COUNT(*) FROM penduduk WHERE {} > 0",
                chain(1_200, "1", "+")
            ),
        )
        .await;
    let p = problem(r, 422).await;
    assert_eq!(p["code"], "query_too_complex", "{p}");
    assert!(p["detail"].as_str().unwrap().contains("IN ("), "{p}");
    eprintln!("deep expressions: statuses {statuses:?}");
    s.stop().await;
}
