//! No client mistake is a server error: random SQL assembled from
//! fragments of the dialect (identifiers, functions, literals, clauses,
//! junk), random bodies and headers, sent through the router with
//! `oneshot`. Every answer must be a 2xx or a 4xx problem document.

use crate::common;

use std::sync::Arc;

use agregat::service::{AppState, ManualClock, router};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::server::{Env, standard_agreements, token};
use proptest::prelude::*;
use tower::ServiceExt;

const FRAGMENTS: &[&str] = &[
    "SELECT",
    "FROM penduduk",
    "FROM wilayah",
    "WHERE",
    "GROUP BY",
    "HAVING",
    "ORDER BY",
    "LIMIT 5",
    "COUNT(*)",
    "COUNT(DISTINCT no_kk)",
    "SUM(umur(tanggal_lahir))",
    "AVG(umur(tanggal_lahir))",
    "kode_kec",
    "kode_kel",
    "jenis_kelamin",
    "agama",
    "nik",
    "nama_lengkap",
    "record_key",
    "tanggal_lahir",
    "umur(tanggal_lahir)",
    "umur_pada(tanggal_lahir, DATE '2026-07-01')",
    "kelompok_umur(umur(tanggal_lahir), 5)",
    "tahun(tanggal_lahir)",
    "penyandang_cacat",
    "1",
    "1, 2",
    "'61.71.01'",
    "'61.72'",
    "NULL",
    "=",
    ">=",
    "AND",
    "OR",
    "NOT",
    ",",
    "(",
    ")",
    "*",
    "CASE WHEN",
    "THEN",
    "ELSE",
    "END",
    "AS n",
    "UNION ALL",
    "JOIN wilayah w ON w.kode = kode_kec",
    "ROLLUP(kode_kec)",
    "CAST(agama AS INT)",
    "1/0",
    "'",
    "\"",
    ";",
    "--",
    "/*",
    "ü",
    "\u{0}",
    "999999999999999999999999",
    "-1",
    "DATE '2026-02-30'",
    "INTERVAL '1' DAY",
    "random()",
];

fn sql() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..24).prop_map(|v| v.join(" "))
}

const COLUMNS: &[&str] = &[
    "kode_kec",
    "kode_kel",
    "jenis_kelamin",
    "agama",
    "pendidikan_terakhir",
    "no_kk",
    "nik",
    "nama_lengkap",
    "record_key",
    "tanggal_lahir",
    "umur(tanggal_lahir)",
    "tahun(tanggal_lahir)",
    "kelompok_umur(umur(tanggal_lahir), 10)",
    "penyandang_cacat",
    "w.nama",
    "no_rt",
];
const AGGREGATES: &[&str] = &[
    "COUNT(*)",
    "COUNT(no_kk)",
    "COUNT(DISTINCT no_kk)",
    "SUM(umur(tanggal_lahir))",
    "AVG(umur(tanggal_lahir))",
    "MAX(umur(tanggal_lahir))",
    "SUM(1)",
    "COUNT(DISTINCT nik)",
];
const FILTERS: &[&str] = &[
    "",
    "WHERE kode_kec = '61.71.01'",
    "WHERE kode_kab = '61.72'",
    "WHERE nik = '1'",
    "WHERE umur(tanggal_lahir) >= 17",
    "WHERE tanggal_lahir > DATE '2000-01-01'",
    "WHERE agama IN ('ISLAM', 'BUDHA')",
    "WHERE kode_kel LIKE '61.71.02%'",
];

/// Well-formed aggregate SQL over random columns: reaches the gate,
/// protection and the limits rather than the parser.
fn structured_sql() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(COLUMNS), 0..4),
        prop::sample::select(AGGREGATES),
        prop::sample::select(FILTERS),
        any::<bool>(),
    )
        .prop_map(|(cols, agg, filter, join)| {
            let keys = cols.join(", ");
            let select = if keys.is_empty() {
                agg.to_string()
            } else {
                format!("{keys}, {agg}")
            };
            let from = if join {
                "penduduk JOIN wilayah w ON w.kode = kode_kec"
            } else {
                "penduduk"
            };
            let group = if cols.is_empty() {
                String::new()
            } else {
                format!("GROUP BY {keys}")
            };
            format!("SELECT {select} FROM {from} {filter} {group}")
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let json = |q: String| serde_json::to_vec(&serde_json::json!({ "sql": q })).unwrap();
    let prod = |q: String| {
        serde_json::to_vec(&serde_json::json!({ "sql": q, "snapshot": "dkb-2026-s1-prod" }))
            .unwrap()
    };
    prop_oneof![
        4 => structured_sql().prop_map(json),
        2 => sql().prop_map(json),
        1 => sql().prop_map(prod),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => Just(b"{\"sql\": 5}".to_vec()),
        1 => Just(b"[]".to_vec()),
        1 => Just(b"{\"tahun_ajaran\": -1e309}".to_vec()),
    ]
}

fn endpoint() -> impl Strategy<Value = (&'static str, &'static str)> {
    prop::sample::select(vec![
        ("POST", "/v1/query"),
        ("POST", "/v1/query"),
        ("POST", "/v1/query"),
        ("POST", "/v1/query/cost"),
        ("POST", "/v1/query/cost"),
        ("POST", "/v1/query?format=csv"),
        ("POST", "/v1/query?format=parquet"),
        ("POST", "/v1/query?format=%00"),
        ("POST", "/v1/queries/usia_sekolah"),
        ("POST", "/v1/queries/%2e%2e"),
        ("POST", "/v1/queries/%FF%FE"),
        ("GET", "/v1/catalog"),
        ("DELETE", "/v1/query"),
        ("GET", "/v1/../etc/passwd"),
    ])
}

fn auth() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        4 => Just(Some(format!("Bearer {}", token("uji")))),
        3 => Just(Some(format!("Bearer {}", token("dp-uji")))),
        2 => Just(Some(format!("Bearer {}", token("kec")))),
        1 => Just(Some(format!("Bearer {}", token("produksi")))),
        1 => Just(Some("Bearer ".to_string())),
        1 => Just(Some("bearer   x y z".to_string())),
        1 => Just(None),
    ]
}

#[test]
fn no_client_mistake_is_a_server_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let env = Env::new(&standard_agreements());
    let state = rt.block_on(async {
        let clock = Arc::new(ManualClock::new(common::server::default_time()));
        Arc::new(AppState::open(env.config.clone(), clock).await.unwrap())
    });
    let app = router(Arc::clone(&state));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 600,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::new());
    runner
        .run(
            &(endpoint(), auth(), body(), any::<bool>()),
            |((method, uri), auth, body, accept_xml)| {
                let mut req = Request::builder().method(method).uri(uri);
                if let Some(a) = &auth {
                    req = req.header("authorization", a.as_str());
                }
                if accept_xml {
                    req = req.header("accept", "application/xml, text/html");
                }
                let req = req.body(Body::from(body.clone())).unwrap();
                let resp = rt.block_on(app.clone().oneshot(req)).unwrap();
                let status = resp.status();
                let ctype = resp
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                let bytes = rt
                    .block_on(axum::body::to_bytes(resp.into_body(), usize::MAX))
                    .unwrap();
                *seen.lock().unwrap().entry(status.as_u16()).or_insert(0u32) += 1;
                prop_assert!(
                    status.is_success() || status.is_client_error(),
                    "{method} {uri} -> {status}: {}",
                    String::from_utf8_lossy(&bytes)
                );
                if status.is_client_error() {
                    prop_assert_eq!(ctype.as_str(), "application/problem+json");
                    let p: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                    prop_assert_eq!(p["status"].as_u64(), Some(u64::from(status.as_u16())));
                    prop_assert!(p["code"].is_string());
                }
                prop_assert!(status != StatusCode::INTERNAL_SERVER_ERROR);
                Ok(())
            },
        )
        .unwrap();
    let seen = seen.into_inner().unwrap();
    eprintln!("statuses seen: {seen:?}");
    // Every /v1 request was audited and the chain holds.
    assert!(state.store.verify().unwrap().is_ok());
    assert!(seen.len() >= 6, "too little variety: {seen:?}");
}

const DEEP_ATOMS: &[&str] = &[
    "1",
    "umur(tanggal_lahir)",
    "agama = 'ISLAM'",
    "jenis_kelamin <> 'X'",
    "kode_kec",
    "NULL",
    "'x'",
    "tanggal_lahir",
    "no_kk",
    "2.5",
    "TRUE",
];
const DEEP_OPS: &[&str] = &[
    " + ",
    " - ",
    " * ",
    " / ",
    " % ",
    " OR ",
    " AND ",
    " = ",
    " <> ",
    " < ",
    " <= ",
    " > ",
    " >= ",
    " || ",
    " LIKE ",
    " IS DISTINCT FROM ",
    " & ",
    " | ",
];
const DEEP_FUNCS: &[&str] = &[
    "upper", "lower", "abs", "coalesce", "length", "trim", "umur", "tahun", "nullif", "sqrt",
];
/// A little past the agreements' SQL size limit (16 KiB), so both sides of
/// it are tried.
const DEEP_MAX_BYTES: usize = 17 * 1024;

/// A random expression tree of every kind of node.
fn expr_tree() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(DEEP_ATOMS).prop_map(str::to_string);
    leaf.prop_recursive(48, 1_500, 4, |inner| {
        prop_oneof![
            (inner.clone(), prop::sample::select(DEEP_OPS), inner.clone())
                .prop_map(|(a, op, b)| format!("{a}{op}{b}")),
            inner.clone().prop_map(|a| format!("NOT ({a})")),
            inner.clone().prop_map(|a| format!("({a})")),
            inner.clone().prop_map(|a| format!("-{a}")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("CASE WHEN {a} THEN {b} ELSE {c} END")),
            (prop::sample::select(DEEP_FUNCS), inner.clone())
                .prop_map(|(f, a)| format!("{f}({a})")),
            (inner.clone(), prop::collection::vec(inner.clone(), 1..6))
                .prop_map(|(a, l)| format!("{a} IN ({})", l.join(", "))),
            (inner.clone(), inner).prop_map(|(a, b)| format!("{a} BETWEEN {b} AND 1")),
        ]
    })
}

/// Deep and long shapes: chains of one operator, nesting of one kind, and
/// long IN lists, sized up to [`DEEP_MAX_BYTES`].
fn deep_shape() -> impl Strategy<Value = String> {
    let n = 1usize..4_000;
    let fits = |piece: usize, n: usize| n.min(DEEP_MAX_BYTES / piece.max(1)).max(1);
    prop_oneof![
        (
            prop::sample::select(DEEP_ATOMS),
            prop::sample::select(DEEP_OPS),
            n.clone()
        )
            .prop_map(move |(a, op, n)| vec![a; fits(a.len() + op.len(), n)].join(op)),
        (prop::sample::select(DEEP_ATOMS), n.clone()).prop_map(move |(a, n)| {
            let n = fits(8, n);
            format!("{}{a}{}", "NOT (".repeat(n), ")".repeat(n))
        }),
        (prop::sample::select(DEEP_ATOMS), n.clone()).prop_map(move |(a, n)| {
            let n = fits(2, n);
            format!("{}{a}{}", "(".repeat(n), ")".repeat(n))
        }),
        n.clone().prop_map(move |n| {
            let n = fits(40, n);
            format!(
                "{}1{}",
                "CASE WHEN agama = 'ISLAM' THEN ".repeat(n),
                " ELSE 0 END".repeat(n)
            )
        }),
        (prop::sample::select(DEEP_FUNCS), n.clone()).prop_map(move |(f, n)| {
            let n = fits(f.len() + 2, n);
            format!("{}agama{}", format!("{f}(").repeat(n), ")".repeat(n))
        }),
        (prop::sample::select(DEEP_ATOMS), n.clone()).prop_map(move |(a, n)| {
            let n = fits(a.len() + 2, n);
            format!("umur(tanggal_lahir) IN ({})", vec![a; n].join(", "))
        }),
        n.prop_map(move |n| {
            let n = fits(6, n);
            format!("{}1", "- - ".repeat(n))
        }),
    ]
}

/// Where the expression goes in an otherwise allowed aggregate query.
fn deep_sql() -> impl Strategy<Value = String> {
    (prop_oneof![3 => deep_shape(), 2 => expr_tree()], 0..4usize).prop_map(|(e, place)| match place
    {
        0 => format!("SELECT COUNT(*) FROM penduduk WHERE {e}"),
        1 => format!("SELECT COUNT(*) FROM penduduk WHERE ({e}) > 0"),
        2 => format!("SELECT {e} AS x, COUNT(*) FROM penduduk GROUP BY 1"),
        _ => format!(
            "SELECT kode_kec, COUNT(*) FROM penduduk GROUP BY kode_kec HAVING COUNT(*) > ({e})"
        ),
    })
}

/// Deep and long expressions of every kind up to the SQL size limit, in a
/// bounded number of cases (well under a minute in a debug build): every
/// answer is a 2xx or a 4xx problem document, and the process (this test
/// binary, which holds the service) stays up.
#[test]
fn deep_and_long_expressions_are_answered_not_crashed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let env = Env::new(&standard_agreements());
    let state = rt.block_on(async {
        let clock = Arc::new(ManualClock::new(common::server::default_time()));
        Arc::new(AppState::open(env.config.clone(), clock).await.unwrap())
    });
    let app = router(Arc::clone(&state));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        // AGREGAT_FUZZ_CASES=N runs a longer search than CI's bounded one.
        cases: std::env::var("AGREGAT_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::new());
    let started = std::time::Instant::now();
    runner
        .run(
            &(deep_sql(), prop::sample::select(vec!["uji", "dp-uji"])),
            |(sql, who)| {
                let body = serde_json::to_vec(&serde_json::json!({ "sql": sql })).unwrap();
                let req = Request::builder()
                    .method("POST")
                    .uri("/v1/query")
                    .header("authorization", format!("Bearer {}", token(who)))
                    .body(Body::from(body))
                    .unwrap();
                let resp = rt.block_on(app.clone().oneshot(req)).unwrap();
                let status = resp.status();
                let ctype = resp
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                let bytes = rt
                    .block_on(axum::body::to_bytes(resp.into_body(), usize::MAX))
                    .unwrap();
                let code = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["code"].as_str().map(str::to_string))
                    .unwrap_or_default();
                *seen
                    .lock()
                    .unwrap()
                    .entry((status.as_u16(), code))
                    .or_insert(0u32) += 1;
                prop_assert!(
                    status.is_success() || status.is_client_error(),
                    "{who}: {status} for a {}-byte query: {}",
                    sql.len(),
                    String::from_utf8_lossy(&bytes)
                );
                if status.is_client_error() {
                    prop_assert_eq!(ctype.as_str(), "application/problem+json");
                }
                Ok(())
            },
        )
        .unwrap();
    eprintln!(
        "deep expressions: {:?} in {:.1?}",
        seen.into_inner().unwrap(),
        started.elapsed()
    );
    assert!(state.store.verify().unwrap().is_ok());
}
