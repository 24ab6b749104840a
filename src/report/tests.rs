use std::collections::BTreeMap;

use chrono::NaiveDate;

use super::*;
use crate::state::{BreakReason, BrokenLink, ChainReport, LedgerRow, LedgerState, Outcome};

fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

/// One audit record; tests set further fields on `.entry`.
fn rec(
    time: &str,
    agreement: &str,
    endpoint: &str,
    outcome: Outcome,
    code: Option<&str>,
) -> AuditRecord {
    AuditRecord {
        seq: 0,
        prev_hash: crate::state::GENESIS_HASH.to_string(),
        hash: "0".repeat(64),
        entry: crate::state::AuditEntry {
            time: time.to_string(),
            agreement: agreement.to_string(),
            token_id: format!("tok-{agreement}"),
            endpoint: endpoint.to_string(),
            sql: None,
            plan_fingerprint: None,
            snapshot: None,
            outcome,
            code: code.map(str::to_string),
            cells: 0,
            suppressed_cells: 0,
            privacy_loss: None,
            bytes_out: 0,
            duration_ms: 1,
            result_hash: None,
            client_addr: None,
            request_id: None,
            elements: Vec::new(),
        },
    }
}

/// An accepted ad-hoc query release.
fn release(time: &str, agreement: &str, sql: &str, elements: &[&str]) -> AuditRecord {
    let mut r = rec(time, agreement, "/v1/query", Outcome::Accepted, None);
    r.entry.sql = Some(sql.to_string());
    r.entry.snapshot = Some("dkb-2025-s2".to_string());
    r.entry.elements = elements.iter().map(|s| s.to_string()).collect();
    r.entry.cells = 20;
    r.entry.suppressed_cells = 3;
    r
}

fn info(id: &str, method: &str, from: &str, until: &str, permitted: &[&str]) -> AgreementInfo {
    AgreementInfo {
        id: id.to_string(),
        institution: format!("Instansi {id}"),
        pks_number: format!("PKS/{id}/2026"),
        stage: "production".to_string(),
        valid_from: d(from),
        valid_until: d(until),
        permitted_elements: permitted.iter().map(|s| s.to_string()).collect(),
        minister_permission: Vec::new(),
        method: method.to_string(),
        budget_per_period: (method == "dp").then_some(2.0),
    }
}

fn intact(entries: u64) -> ChainReport {
    ChainReport {
        entries,
        first_broken: None,
        head_hash: Some("ab".repeat(32)),
    }
}

fn broken() -> ChainReport {
    ChainReport {
        entries: 40,
        first_broken: Some(BrokenLink {
            seq: 17,
            reason: BreakReason::SequenceGap { expected: 16 },
        }),
        head_hash: Some("cd".repeat(32)),
    }
}

fn ledger(id: i64, agreement: &str, period: &str, amount: f64, state: LedgerState) -> LedgerRow {
    LedgerRow {
        id,
        agreement: agreement.to_string(),
        period: period.to_string(),
        request_id: format!("r{id}"),
        amount,
        state,
        reserved_at: "2026-03-02T03:00:00Z".to_string(),
        committed_at: None,
    }
}

struct Fixture {
    records: Vec<AuditRecord>,
    agreements: Vec<AgreementInfo>,
    ledger: Vec<LedgerRow>,
}

/// A half year of mixed traffic for three policy agreements, one
/// agreement known only from the log, and unauthenticated requests.
/// All times are office hours (Tuesdays 02:00–05:00 UTC = 09:00–12:00 WIB)
/// unless a test adds others.
fn fixture() -> Fixture {
    let mut records = Vec::new();
    // bappeda: cell-key, weekly traffic on Tuesdays.
    let mut day = d("2026-01-06");
    let mut i = 0u32;
    while day <= d("2026-06-30") {
        let t = format!("{day}T0{}:15:00Z", 2 + i % 3);
        records.push(release(
            &t,
            "bappeda",
            "SELECT kode_kec, jenis_kelamin, COUNT(*) FROM penduduk GROUP BY 1, 2",
            &["jenis_kelamin", "kode_kec"],
        ));
        if i.is_multiple_of(4) {
            records.push(rec(
                &t,
                "bappeda",
                "/v1/query",
                Outcome::Rejected,
                Some("identifier_in_group_by"),
            ));
        }
        if i.is_multiple_of(5) {
            records.push(rec(
                &t,
                "bappeda",
                "/v1/query",
                Outcome::Rejected,
                Some("too_many_cells"),
            ));
        }
        if i.is_multiple_of(7) {
            records.push(rec(
                &t,
                "bappeda",
                "/v1/query",
                Outcome::Failed,
                Some("query_timeout"),
            ));
        }
        i += 1;
        day += Duration::days(7);
    }
    // disdik: dp, saved queries.
    for (k, date) in ["2026-02-03", "2026-02-10", "2026-03-03", "2026-05-05"]
        .iter()
        .enumerate()
    {
        let mut r = rec(
            &format!("{date}T03:00:00Z"),
            "disdik",
            "/v1/queries/usia_sekolah",
            Outcome::Accepted,
            None,
        );
        r.entry.sql = Some(format!(
            "SELECT kode_kel, umur_pada(tanggal_lahir, DATE '{}-07-01') AS u, COUNT(*) FROM penduduk GROUP BY 1, 2",
            2023 + k
        ));
        r.entry.snapshot = Some("dkb-2026-s1".to_string());
        r.entry.elements = vec!["kode_kel".into(), "tanggal_lahir".into()];
        r.entry.privacy_loss = Some(0.25);
        r.entry.cells = 100;
        records.push(r);
    }
    records.push(rec(
        "2026-04-07T04:00:00Z",
        "disdik",
        "/v1/queries/piramida_penduduk",
        Outcome::Rejected,
        Some("budget_exhausted"),
    ));
    // dinsos: only in the log.
    records.push(release(
        "2026-03-10T02:00:00Z",
        "dinsos",
        "SELECT agama, COUNT(*) FROM penduduk GROUP BY 1",
        &["agama"],
    ));
    // unauthenticated.
    for t in [
        "2026-01-13T02:00:00Z",
        "2026-01-13T02:01:00Z",
        "2026-04-14T02:00:00Z",
    ] {
        records.push(rec(
            t,
            UNATTRIBUTED,
            "/v1/query",
            Outcome::Rejected,
            Some("token_missing"),
        ));
    }
    let mut disdik = info(
        "disdik",
        "dp",
        "2025-07-01",
        "2026-12-31",
        &[
            "jenis_kelamin",
            "kode_kel",
            "penyandang_cacat",
            "tanggal_lahir",
        ],
    );
    disdik.minister_permission = vec!["penyandang_cacat".into()];
    Fixture {
        records,
        agreements: vec![
            info(
                "bappeda",
                "cell_key",
                "2026-01-01",
                "2026-12-31",
                &["jenis_kelamin", "kode_kec", "pendidikan"],
            ),
            disdik,
            info(
                "lama",
                "cell_key",
                "2024-01-01",
                "2024-12-31",
                &["jenis_kelamin"],
            ),
        ],
        ledger: vec![
            ledger(1, "disdik", "2026-S1", 0.75, LedgerState::Committed),
            ledger(2, "disdik", "2026-S1", 0.25, LedgerState::Pending),
            ledger(3, "disdik", "2025-S2", 0.5, LedgerState::Committed),
            ledger(4, "bappeda", "2027-S1", 9.0, LedgerState::Committed),
        ],
    }
}

fn input<'a>(f: &'a Fixture, chain: &'a ChainReport) -> ReportInput<'a> {
    ReportInput {
        from: d("2026-01-01"),
        to: d("2026-06-30"),
        as_of: d("2026-07-01"),
        agreement_filter: None,
        chain,
        records: &f.records,
        agreements: &f.agreements,
        ledger: &f.ledger,
        refusals: &[],
    }
}

fn html_of(r: &Report) -> String {
    String::from_utf8(render(r, Format::Html).unwrap()).unwrap()
}
fn md_of(r: &Report) -> String {
    String::from_utf8(render(r, Format::Markdown).unwrap()).unwrap()
}
fn csv_rows(r: &Report) -> Vec<Vec<String>> {
    let bytes = render(r, Format::Csv).unwrap();
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(bytes.as_slice());
    rd.records()
        .map(|row| row.unwrap().iter().map(str::to_string).collect())
        .collect()
}
fn csv_value(
    rows: &[Vec<String>],
    section: &str,
    agreement: &str,
    metric: &str,
    key: &str,
) -> String {
    rows.iter()
        .find(|r| r[0] == section && r[1] == agreement && r[2] == metric && r[3] == key)
        .unwrap_or_else(|| panic!("no CSV row {section},{agreement},{metric},{key}"))[4]
        .clone()
}
fn json_of(r: &Report) -> serde_json::Value {
    serde_json::from_slice(&render(r, Format::Json).unwrap()).unwrap()
}

fn agreement<'a>(r: &'a Report, id: &str) -> &'a AgreementReport {
    r.agreements.iter().find(|a| a.id == id).unwrap()
}

#[test]
fn figures_equal_independent_counts() {
    let f = fixture();
    let chain = intact(f.records.len() as u64);
    let r = build(&input(&f, &chain));

    // Agreements: those with requests plus policy ones overlapping the
    // window ("lama" ended in 2024 and has none).
    let ids: Vec<&str> = r.agreements.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["bappeda", "dinsos", "disdik"]);
    assert!(!agreement(&r, "dinsos").in_policy);
    assert!(
        agreement(&r, "dinsos")
            .findings
            .iter()
            .any(|f| f.code == "not_in_policy")
    );

    for a in &r.agreements {
        let mine: Vec<&AuditRecord> = f
            .records
            .iter()
            .filter(|x| x.entry.agreement == a.id)
            .collect();
        let count = |o: Outcome| mine.iter().filter(|x| x.entry.outcome == o).count() as u64;
        assert_eq!(a.requests.counts.total, mine.len() as u64, "{}", a.id);
        assert_eq!(a.requests.counts.accepted, count(Outcome::Accepted));
        assert_eq!(a.requests.counts.rejected, count(Outcome::Rejected));
        assert_eq!(a.requests.counts.failed, count(Outcome::Failed));
        let mut by_code: BTreeMap<String, u64> = BTreeMap::new();
        for x in mine.iter().filter(|x| x.entry.outcome == Outcome::Rejected) {
            *by_code.entry(x.entry.code.clone().unwrap()).or_default() += 1;
        }
        let got: BTreeMap<String, u64> = a
            .requests
            .rejections_by_code
            .iter()
            .map(|c| (c.code.clone(), c.count))
            .collect();
        assert_eq!(got, by_code, "{}", a.id);
        // Weekly series add up to the agreement's requests.
        let series = r
            .weekly
            .series
            .iter()
            .find(|s| s.agreement == a.id)
            .unwrap();
        assert_eq!(series.counts.iter().sum::<u64>(), mine.len() as u64);
        // Elements used by accepted queries.
        let mut used: BTreeMap<String, u64> = BTreeMap::new();
        for x in mine.iter().filter(|x| x.entry.outcome == Outcome::Accepted) {
            for e in &x.entry.elements {
                *used.entry(e.clone()).or_default() += 1;
            }
        }
        let got: BTreeMap<String, u64> = a
            .elements
            .used
            .iter()
            .map(|u| (u.element.clone(), u.queries))
            .collect();
        assert_eq!(got, used, "{}", a.id);
    }

    let total = f.records.len() as u64;
    assert_eq!(r.summary.requests.total, total);
    let unattributed = f
        .records
        .iter()
        .filter(|x| x.entry.agreement == "-")
        .count() as u64;
    assert_eq!(r.summary.unattributed.total, unattributed);
    assert_eq!(r.weekly.series.last().unwrap().agreement, "-");
    let all_weeks: u64 = r.weekly.series.iter().flat_map(|s| &s.counts).sum();
    assert_eq!(all_weeks, total);
    assert_eq!(r.weekly.weeks.first().unwrap(), "2026-W01");
    assert_eq!(r.weekly.weeks.last().unwrap(), "2026-W27");

    // Top rejection codes over everything, most frequent first.
    let mut top: BTreeMap<String, u64> = BTreeMap::new();
    for x in f
        .records
        .iter()
        .filter(|x| x.entry.outcome == Outcome::Rejected)
    {
        *top.entry(x.entry.code.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(r.top_rejection_codes.len(), top.len());
    for c in &r.top_rejection_codes {
        assert_eq!(top[&c.code], c.count);
    }
    assert!(
        r.top_rejection_codes
            .windows(2)
            .all(|w| w[0].count >= w[1].count)
    );

    // Snapshots.
    for s in &r.snapshots {
        let n = f
            .records
            .iter()
            .filter(|x| x.entry.snapshot.as_deref() == Some(s.snapshot.as_str()))
            .count() as u64;
        assert_eq!(s.requests, n);
    }
    assert_eq!(r.snapshots.len(), 2);

    // Elements: candidates for narrowing, protected elements.
    let b = agreement(&r, "bappeda");
    assert_eq!(b.elements.unused_permitted, ["pendidikan"]);
    assert!(b.elements.used_not_permitted.is_empty());
    let dinsos = agreement(&r, "dinsos");
    assert_eq!(dinsos.elements.used_not_permitted[0].element, "agama");
    // Gone from the policy: reported, but not as a serious finding.
    assert!(
        dinsos
            .findings
            .iter()
            .all(|f| f.severity != Severity::Danger)
    );

    // Suppression over releases.
    let rel: Vec<&AuditRecord> = f
        .records
        .iter()
        .filter(|x| x.entry.agreement == "bappeda" && x.entry.outcome == Outcome::Accepted)
        .collect();
    assert_eq!(b.budget.suppression.releases, rel.len() as u64);
    assert_eq!(
        b.budget.suppression.cells,
        rel.iter().map(|x| x.entry.cells).sum::<u64>()
    );
    assert_eq!(
        b.budget.suppression.suppressed_cells,
        rel.iter().map(|x| x.entry.suppressed_cells).sum::<u64>()
    );
    assert!(
        b.budget.periods.is_empty(),
        "cell-key, no ledger rows in the window's periods"
    );

    // Budget of the dp agreement: 2026-S1 only (2025-S2 is outside).
    let dis = agreement(&r, "disdik");
    assert_eq!(dis.budget.periods.len(), 1);
    let p = &dis.budget.periods[0];
    assert_eq!(p.period, "2026-S1");
    assert!((p.committed - 0.75).abs() < 1e-12 && (p.pending - 0.25).abs() < 1e-12);
    assert!((p.spent - 1.0).abs() < 1e-12);
    assert!((p.percent.unwrap() - 50.0).abs() < 1e-9);
    assert_eq!((p.reservations, p.pending_reservations), (2, 1));

    // Saved queries.
    assert_eq!(dis.saved_queries[0].name, "usia_sekolah");
    assert_eq!(dis.saved_queries[0].requests.total, 4);
    assert_eq!(dis.saved_queries[1].name, "piramida_penduduk");
    assert_eq!(dis.saved_queries[1].requests.rejected, 1);
    // The saved query's four school years are not a differencing finding.
    assert!(dis.patterns.differencing.is_empty());
}

#[test]
fn filter_reports_one_agreement() {
    let f = fixture();
    let chain = intact(1);
    let mut inp = input(&f, &chain);
    inp.agreement_filter = Some("disdik");
    let r = build(&inp);
    assert_eq!(r.agreements.len(), 1);
    assert_eq!(r.agreements[0].id, "disdik");
    assert_eq!(r.summary.requests.total, 5);
    assert_eq!(r.summary.unattributed.total, 0);
    assert_eq!(r.weekly.series.len(), 1);
    assert_eq!(
        r.top_rejection_codes,
        [CodeCount {
            code: "budget_exhausted".into(),
            count: 1
        }]
    );
}

#[test]
fn window_is_wib_days() {
    let f = Fixture {
        records: vec![
            // 2025-12-31 17:30 UTC is 2026-01-01 00:30 WIB: inside.
            rec(
                "2025-12-31T17:30:00Z",
                "a",
                "/v1/catalog",
                Outcome::Accepted,
                None,
            ),
            // 2026-06-30 17:00 UTC is 2026-07-01 00:00 WIB: outside.
            rec(
                "2026-06-30T17:00:00Z",
                "a",
                "/v1/catalog",
                Outcome::Accepted,
                None,
            ),
            rec("not a time", "a", "/v1/catalog", Outcome::Accepted, None),
        ],
        agreements: vec![],
        ledger: vec![],
    };
    let chain = intact(3);
    let r = build(&input(&f, &chain));
    assert_eq!(r.summary.requests.total, 1);
    assert_eq!(r.summary.records_ignored, 2);
    let (start, end) = window_bounds(d("2026-01-01"), d("2026-06-30"));
    assert_eq!(start, "2025-12-31T17:00:00Z");
    assert_eq!(end, "2026-06-30T17:00:00Z");
}

#[test]
fn html_is_well_formed_and_self_contained() {
    let f = fixture();
    let chain = intact(f.records.len() as u64);
    let mut r = build(&input(&f, &chain));
    // Text needing escapes must not break the markup.
    r.agreements[0].identity.institution =
        Some("Dinas <Kependudukan> & \"Catatan\" 'Sipil'".into());
    let html = html_of(&r);
    assert!(
        html.starts_with(
            "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"id\""
        )
    );

    let mut reader = quick_xml::Reader::from_str(&html);
    let mut depth = 0i64;
    let mut elements = 0;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(quick_xml::events::Event::Start(_)) => {
                depth += 1;
                elements += 1;
            }
            Ok(quick_xml::events::Event::End(_)) => depth -= 1,
            Ok(quick_xml::events::Event::GeneralRef(r)) => {
                // Only the entities XML knows without a DTD.
                let name = r.decode().unwrap();
                assert!(
                    matches!(name.as_ref(), "amp" | "lt" | "gt" | "quot" | "apos")
                        || name.starts_with('#'),
                    "entity &{name};"
                );
            }
            Ok(_) => {}
            Err(e) => panic!(
                "HTML is not well-formed at {}: {e}",
                reader.buffer_position()
            ),
        }
    }
    assert_eq!(depth, 0);
    assert!(elements > 100);

    for heading in [
        doc::H_CHAIN,
        doc::H_SUMMARY,
        doc::H_WEEKLY,
        doc::H_TOP_CODES,
        doc::H_SNAPSHOTS,
        doc::H_IDENTITY,
        doc::H_REQUESTS,
        doc::H_ELEMENTS,
        doc::H_BUDGET,
        doc::H_SAVED,
        doc::H_PATTERNS,
        doc::H_NOTES,
    ] {
        assert!(
            html.contains(&format!(">{}</h", html::esc(heading))),
            "missing {heading}"
        );
    }
    assert!(html.contains(TITLE));
    assert!(html.contains("@page { size: A4; margin: 15mm }"));
    assert!(html.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(html.contains("2026-W03"));
    assert!(html.contains("Dinas &lt;Kependudukan&gt; &amp; &quot;Catatan&quot; &#39;Sipil&#39;"));
    let lower = html.to_lowercase();
    assert!(!lower.contains("<script"));
    assert!(!lower.contains(" onload=") && !lower.contains(" onclick="));
    let stripped = html
        .replace("http://www.w3.org/1999/xhtml", "")
        .replace("http://www.w3.org/2000/svg", "");
    assert!(!stripped.contains("http://") && !stripped.contains("https://"));
    assert!(!lower.contains("<link") && !lower.contains("<img") && !lower.contains("url("));
    // Intact chain: the green line with count and head hash.
    assert!(html.contains(&format!(
        "class=\"ok\">Rantai log audit utuh: {} entri",
        f.records.len()
    )));
    assert!(html.contains(&"ab".repeat(32)));
}

#[test]
fn broken_chain_leads_every_format() {
    let f = fixture();
    let chain = broken();
    let r = build(&input(&f, &chain));
    assert!(!r.chain.ok);
    assert_eq!(r.chain.seq, Some(17));

    let html = html_of(&r);
    let body = html.split_once("<body>").unwrap().1.trim_start();
    assert!(
        body.starts_with("<div class=\"chain-broken\" role=\"alert\">PERINGATAN"),
        "{body:.200}"
    );
    let first_div = body.split_once("</div>").unwrap().0;
    assert!(first_div.contains("seq 17") && first_div.contains("sequence gap"));

    let md = md_of(&r);
    let first = md.lines().next().unwrap();
    assert!(
        first.starts_with("**⚠ PERINGATAN") && first.ends_with("**"),
        "{first}"
    );
    assert!(first.contains("seq 17") && first.contains("sequence gap"));

    let rows = csv_rows(&r);
    assert_eq!(rows[0], csv_long::HEADER);
    assert_eq!(rows[1][0], "chain");
    assert_eq!(rows[1][2], "warning");
    assert_eq!(rows[1][3], "17");
    assert!(rows[1][4].contains("sequence gap"));

    let json = render(&r, Format::Json).unwrap();
    let text = String::from_utf8(json.clone()).unwrap();
    assert!(
        text.trim_start()
            .starts_with("{\n  \"chain\": {\n    \"ok\": false"),
        "{text:.80}"
    );
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["chain"]["ok"], false);
    assert_eq!(v["chain"]["seq"], 17);
    assert!(
        v["chain"]["reason"]
            .as_str()
            .unwrap()
            .contains("sequence gap")
    );

    // Intact: no warning anywhere.
    let ok = build(&input(&f, &intact(3)));
    assert!(!html_of(&ok).contains("chain-broken\""));
    assert!(!md_of(&ok).starts_with("**"));
    assert_eq!(csv_rows(&ok)[1][2], "ok");
}

#[test]
fn sql_templates_normalise_literals_case_and_space() {
    let a = sql_template(
        "SELECT kode_kec, COUNT(*)\n  FROM penduduk -- comment\n WHERE umur(tanggal_lahir) >= 17 AND kode_kel = '61.71.01.1001' /* x */",
    );
    let b = sql_template(
        "select KODE_KEC , count( * ) from PENDUDUK where UMUR(TANGGAL_LAHIR)>=18 and kode_kel='61.71.01.1002'",
    );
    assert_eq!(a.template, b.template);
    assert_eq!(
        a.template,
        "select kode_kec, count(*) from penduduk where umur(tanggal_lahir) >= ? and kode_kel = ?"
    );
    assert_eq!(a.literals, ["17", "'61.71.01.1001'"]);
    assert_eq!(b.literals, ["18", "'61.71.01.1002'"]);
    let c = sql_template(
        "SELECT 1.5e3, DATE '2026-07-01', 'it''s', \"Kol 1\", x2 FROM t WHERE a IN (1, 2)",
    );
    assert_eq!(c.literals, ["1.5e3", "'2026-07-01'", "'it''s'", "1", "2"]);
    assert_eq!(
        c.template,
        "select ?, date ?, ?, \"Kol 1\", x2 from t where a in (?, ?)"
    );
}

#[test]
fn differencing_flags_one_literal_variants_only() {
    let q = |v: &str| {
        format!(
            "SELECT jenis_kelamin, COUNT(*) FROM penduduk WHERE kode_kel = '61.71.01.1001' AND umur(tanggal_lahir) = {v} GROUP BY 1"
        )
    };
    let mut records = Vec::new();
    for (k, v) in ["40", "41", "42", "41"].iter().enumerate() {
        records.push(release(
            &format!("2026-02-0{}T03:00:00Z", k + 2),
            "a",
            &q(v),
            &["jenis_kelamin"],
        ));
    }
    // Unrelated queries: other templates, a template with two values only,
    // and one whose variants differ in two positions at once.
    records.push(release(
        "2026-02-10T03:00:00Z",
        "a",
        "SELECT agama, COUNT(*) FROM penduduk GROUP BY 1",
        &[],
    ));
    for v in ["1", "2"] {
        records.push(release(
            "2026-02-10T03:00:00Z",
            "a",
            &format!("SELECT COUNT(*) FROM penduduk WHERE status_kawin = {v}"),
            &[],
        ));
    }
    for (x, y) in [("1", "a"), ("2", "b"), ("3", "c")] {
        records.push(release(
            "2026-02-11T03:00:00Z",
            "a",
            &format!("SELECT COUNT(*) FROM penduduk WHERE pendidikan = {x} AND kode_kec = '{y}'"),
            &[],
        ));
    }
    // A rejected variant is not a release.
    let mut rejected = release("2026-02-12T03:00:00Z", "a", &q("43"), &[]);
    rejected.entry.outcome = Outcome::Rejected;
    records.push(rejected);

    let f = Fixture {
        records,
        agreements: vec![],
        ledger: vec![],
    };
    let chain = intact(1);
    let r = build(&input(&f, &chain));
    let found = &r.agreements[0].patterns.differencing;
    assert_eq!(found.len(), 1, "{found:#?}");
    let x = &found[0];
    assert_eq!(x.position, 2);
    // `GROUP BY 1` is a literal too.
    assert_eq!(x.fixed, ["'61.71.01.1001'", "…", "1"]);
    let values: Vec<(&str, u64)> = x
        .values
        .iter()
        .map(|v| (v.value.as_str(), v.requests))
        .collect();
    assert_eq!(values, [("40", 1), ("41", 2), ("42", 1)]);
    assert_eq!(x.queries, 4);
    assert!(x.template.contains("umur(tanggal_lahir) = ?"));
    assert!(
        r.agreements[0]
            .findings
            .iter()
            .any(|f| f.code == "differencing")
    );

    // Shown in every format.
    assert!(html_of(&r).contains("umur(tanggal_lahir) = ?"));
    assert!(md_of(&r).contains("umur(tanggal_lahir) = ?"));
    let rows = csv_rows(&r);
    assert_eq!(csv_value(&rows, "differencing", "a", "variants", "1"), "3");
    assert_eq!(csv_value(&rows, "differencing", "a", "value", "1:41"), "2");
}

#[test]
fn off_hours_bursts_and_shared_tokens() {
    let mut records = Vec::new();
    // Saturday 2026-03-14, 22:00–22:59 WIB (15:xx UTC): 10 requests.
    for m in 0..10 {
        records.push(rec(
            &format!("2026-03-14T15:{:02}:00Z", m * 5),
            "a",
            "/v1/catalog",
            Outcome::Accepted,
            None,
        ));
    }
    // Tuesday 2026-03-17 05:00 WIB (22:00 UTC on the 16th): 9, below the bar.
    for m in 0..9 {
        records.push(rec(
            &format!("2026-03-16T22:{:02}:00Z", m),
            "a",
            "/v1/catalog",
            Outcome::Accepted,
            None,
        ));
    }
    // Tuesday 16:00 WIB exactly is outside, 15:59 inside, 07:00 inside.
    records.push(rec(
        "2026-03-17T09:00:00Z",
        "a",
        "/v1/catalog",
        Outcome::Accepted,
        None,
    ));
    records.push(rec(
        "2026-03-17T08:59:00Z",
        "a",
        "/v1/catalog",
        Outcome::Accepted,
        None,
    ));
    records.push(rec(
        "2026-03-17T00:00:00Z",
        "a",
        "/v1/catalog",
        Outcome::Accepted,
        None,
    ));
    // Token used from two addresses (ports do not count), another from one.
    for (tok, addr) in [
        ("t1", "10.0.0.1:5000"),
        ("t1", "10.0.0.1:5001"),
        ("t1", "10.0.0.2"),
        ("t2", "10.0.0.3"),
        ("t2", "10.0.0.3"),
        ("-", "10.0.0.9"),
    ] {
        let mut x = rec(
            "2026-03-18T03:00:00Z",
            "a",
            "/v1/catalog",
            Outcome::Accepted,
            None,
        );
        x.entry.token_id = tok.into();
        x.entry.client_addr = Some(addr.into());
        records.push(x);
    }
    let f = Fixture {
        records,
        agreements: vec![],
        ledger: vec![],
    };
    let chain = intact(1);
    let r = build(&input(&f, &chain));
    let p = &r.agreements[0].patterns;
    // Count off-hours independently: WIB = UTC + 7.
    let off = f
        .records
        .iter()
        .filter(|x| {
            let t =
                chrono::DateTime::parse_from_rfc3339(&x.entry.time).unwrap() + Duration::hours(7);
            let wd = chrono::Datelike::weekday(&t.naive_utc());
            let h = chrono::Timelike::hour(&t.naive_utc());
            matches!(wd, chrono::Weekday::Sat | chrono::Weekday::Sun) || !(7..16).contains(&h)
        })
        .count() as u64;
    assert_eq!(off, 10 + 9 + 1);
    assert_eq!(p.off_hours.total, off);
    assert_eq!(p.off_hours.bursts.len(), 1);
    let b = &p.off_hours.bursts[0];
    assert_eq!(
        (b.date.as_str(), b.weekday.as_str(), b.hour, b.requests),
        ("2026-03-14", "Sabtu", 22, 10)
    );

    assert_eq!(p.multi_address_tokens.len(), 1);
    let t = &p.multi_address_tokens[0];
    assert_eq!(t.token_id, "t1");
    let addrs: Vec<(&str, u64)> = t
        .addresses
        .iter()
        .map(|a| (a.value.as_str(), a.requests))
        .collect();
    assert_eq!(addrs, [("10.0.0.1", 2), ("10.0.0.2", 1)]);
    let codes: Vec<&str> = r.agreements[0]
        .findings
        .iter()
        .map(|f| f.code.as_str())
        .collect();
    assert!(codes.contains(&"off_hours_burst") && codes.contains(&"multi_address_token"));
}

#[test]
fn sensitive_rejection_spike_rules() {
    let sensitive = |t: &str, code: &str| rec(t, "a", "/v1/query", Outcome::Rejected, Some(code));
    let run = |records: Vec<AuditRecord>| {
        let f = Fixture {
            records,
            agreements: vec![],
            ledger: vec![],
        };
        build(&input(&f, &intact(1))).agreements[0]
            .requests
            .sensitive
            .clone()
    };
    let filler = |n: usize| -> Vec<AuditRecord> {
        (0..n)
            .map(|k| {
                rec(
                    &format!("2026-05-{:02}T03:00:00Z", 1 + k % 28),
                    "a",
                    "/v1/catalog",
                    Outcome::Accepted,
                    None,
                )
            })
            .collect()
    };
    // 5 within 24 hours (mixed sensitive codes), among many requests.
    let mut r = filler(100);
    for (k, code) in [
        "identifier_in_output",
        "identifier_in_predicate",
        "record_key_not_queryable",
        "element_not_permitted",
        "minister_permission_required",
    ]
    .iter()
    .enumerate()
    {
        r.push(sensitive(
            &format!("2026-02-02T{:02}:00:00Z", 1 + 5 * k),
            code,
        ));
    }
    r.push(sensitive("2026-02-02T03:00:00Z", "too_many_cells"));
    let s = run(r);
    assert_eq!((s.total, s.max_in_window), (5, 5));
    assert!(s.spike);

    // 5 spread over days, 5 of 105 requests: no spike.
    let mut r = filler(100);
    for k in 0..5 {
        r.push(sensitive(
            &format!("2026-02-{:02}T03:00:00Z", 2 + 2 * k),
            "identifier_in_group_by",
        ));
    }
    let s = run(r);
    assert_eq!((s.total, s.max_in_window), (5, 1));
    assert!(!s.spike);

    // 3 of 10 requests (30%) on separate days: spike by share.
    let mut r = filler(7);
    for k in 0..3 {
        r.push(sensitive(
            &format!("2026-02-{:02}T03:00:00Z", 2 + 3 * k),
            "element_not_permitted",
        ));
    }
    let s = run(r);
    assert!(s.spike);
    assert!((s.share_percent.unwrap() - 30.0).abs() < 1e-9);

    // 2 of 2: share 100% but below the minimum count.
    let r = vec![
        sensitive("2026-02-02T03:00:00Z", "identifier_in_output"),
        sensitive("2026-02-09T03:00:00Z", "identifier_in_output"),
    ];
    assert!(!run(r).spike);
}

#[test]
fn expiry_warning_and_requests_outside_validity() {
    let mut records = vec![
        rec(
            "2026-05-04T03:00:00Z",
            "uji",
            "/v1/catalog",
            Outcome::Accepted,
            None,
        ),
        // Last valid day in WIB (2026-05-31 23:30 WIB).
        rec(
            "2026-05-31T16:30:00Z",
            "uji",
            "/v1/catalog",
            Outcome::Accepted,
            None,
        ),
    ];
    // After valid_until (WIB): 2026-05-31T17:00Z is 2026-06-01 00:00 WIB.
    for t in [
        "2026-05-31T17:00:00Z",
        "2026-06-02T03:00:00Z",
        "2026-06-03T03:00:00Z",
    ] {
        records.push(rec(
            t,
            "uji",
            "/v1/query",
            Outcome::Rejected,
            Some("agreement_expired"),
        ));
    }
    records.push(rec(
        "2026-06-04T03:00:00Z",
        "uji",
        "/v1/catalog",
        Outcome::Accepted,
        None,
    ));
    // Before valid_from.
    records.push(rec(
        "2026-01-05T03:00:00Z",
        "uji",
        "/v1/query",
        Outcome::Rejected,
        Some("agreement_not_yet_valid"),
    ));
    records.push(rec(
        "2026-03-03T03:00:00Z",
        "baik",
        "/v1/catalog",
        Outcome::Accepted,
        None,
    ));
    let f = Fixture {
        records,
        agreements: vec![
            info(
                "uji",
                "cell_key",
                "2026-02-01",
                "2026-05-31",
                &["jenis_kelamin"],
            ),
            info(
                "baik",
                "cell_key",
                "2026-01-01",
                "2026-08-30",
                &["jenis_kelamin"],
            ),
            info(
                "jauh",
                "cell_key",
                "2026-01-01",
                "2026-08-31",
                &["jenis_kelamin"],
            ),
        ],
        ledger: vec![],
    };
    let chain = intact(1);
    let r = build(&input(&f, &chain)); // as_of 2026-07-01

    let uji = agreement(&r, "uji");
    // Independent count: WIB date outside [2026-02-01, 2026-05-31].
    let outside = f
        .records
        .iter()
        .filter(|x| x.entry.agreement == "uji")
        .filter(|x| {
            let t =
                chrono::DateTime::parse_from_rfc3339(&x.entry.time).unwrap() + Duration::hours(7);
            let day = t.date_naive();
            day < d("2026-02-01") || day > d("2026-05-31")
        })
        .count() as u64;
    assert_eq!(outside, 5);
    let o = uji.identity.outside_validity;
    assert_eq!(
        (
            o.total,
            o.after_valid_until,
            o.before_valid_from,
            o.accepted
        ),
        (outside, 4, 1, 1)
    );
    assert_eq!(uji.identity.days_until_expiry, Some(-31));
    assert!(uji.identity.expiry_warning);
    assert!(
        uji.findings[0].severity == Severity::Danger
            && uji.findings[0].code == "outside_validity_accepted"
    );

    let baik = agreement(&r, "baik");
    assert_eq!(baik.identity.days_until_expiry, Some(60));
    assert!(baik.identity.expiry_warning);
    assert_eq!(baik.identity.outside_validity.total, 0);
    let jauh = agreement(&r, "jauh");
    assert_eq!(jauh.identity.days_until_expiry, Some(61));
    assert!(!jauh.identity.expiry_warning);

    let html = html_of(&r);
    assert!(html.contains("berakhir dalam 60 hari"));
    assert!(html.contains("sudah berakhir 31 hari lalu"));
    assert!(html.contains("0 permintaan di luar masa berlaku — sesuai"));
    assert!(html.contains("5 permintaan di luar masa berlaku (1 sebelum mulai berlaku, 4 setelah berakhir; 1 diterima)"));
    let md = md_of(&r);
    assert!(md.contains("0 permintaan di luar masa berlaku — sesuai"));
    let rows = csv_rows(&r);
    assert_eq!(
        csv_value(
            &rows,
            "identity",
            "uji",
            "outside_validity",
            "after_valid_until"
        ),
        "4"
    );
    assert_eq!(
        csv_value(&rows, "identity", "baik", "expiry_warning", ""),
        "true"
    );
    assert_eq!(
        csv_value(&rows, "identity", "jauh", "days_until_expiry", ""),
        "61"
    );
}

#[test]
fn formats_carry_the_same_figures() {
    let f = fixture();
    let chain = intact(f.records.len() as u64);
    let mut r = build(&input(&f, &chain));
    r.generated_at = "2026-07-01T08:00:00+07:00".into();
    let html = html_of(&r);
    let md = md_of(&r);
    let rows = csv_rows(&r);
    let json = json_of(&r);

    let b = agreement(&r, "bappeda");
    let total = b.requests.counts.total;
    assert_eq!(
        csv_value(&rows, "requests", "bappeda", "requests", "total"),
        total.to_string()
    );
    assert_eq!(json["agreements"][0]["requests"]["counts"]["total"], total);
    let rejected = b.requests.counts.rejected;
    let row = format!(
        "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
        text::int(total),
        text::int(b.requests.counts.accepted),
        text::int(rejected),
        text::int(b.requests.counts.failed)
    );
    assert!(html.contains(&row), "{row}");
    assert!(md.contains(&format!(
        "| {} | {} | {} | {} |",
        text::int(total),
        text::int(b.requests.counts.accepted),
        text::int(rejected),
        text::int(b.requests.counts.failed)
    )));

    // Rejections by code.
    let code = &b.requests.rejections_by_code[0];
    assert_eq!(
        csv_value(
            &rows,
            "requests",
            "bappeda",
            "rejections_by_code",
            &code.code
        ),
        code.count.to_string()
    );
    assert!(html.contains(&format!(
        "<td><code>{}</code></td><td class=\"n\">{}</td>",
        code.code, code.count
    )));
    assert!(md.contains(&format!("| `{}` | {} |", code.code, code.count)));

    // Weekly numbers.
    let w = r.weekly.weeks.iter().position(|w| w == "2026-W03").unwrap();
    let n = r.weekly.series[0].counts[w];
    assert_eq!(
        csv_value(&rows, "weekly", "bappeda", "requests", "2026-W03"),
        n.to_string()
    );
    assert_eq!(json["weekly"]["series"][0]["counts"][w], n);
    assert!(
        md.lines()
            .any(|l| l.starts_with(&format!("| 2026-W03 | {n} |")))
    );
    assert!(html.contains(&format!("bappeda 2026-W03: {n}</title>")));

    // Budget percentage and suppression share.
    let dis = agreement(&r, "disdik");
    assert_eq!(
        csv_value(&rows, "budget", "disdik", "percent", "2026-S1"),
        "50.0"
    );
    assert_eq!(
        csv_value(&rows, "budget", "disdik", "pending", "2026-S1"),
        "0.25"
    );
    assert!(html.contains("50%</td>") && md.contains("██████████░░░░░░░░░░ 50%"));
    assert_eq!(
        json["agreements"][2]["budget"]["periods"][0]["percent"],
        50.0
    );
    let sp = b.budget.suppression;
    let pct = text::pct(sp.percent);
    assert_eq!(pct, "15%");
    assert_eq!(
        csv_value(&rows, "suppression", "bappeda", "percent", ""),
        "15.0"
    );
    assert!(html.contains(&format!("<td class=\"n\">{pct}</td>")) && md.contains(&pct));
    let _ = dis;

    // Top code, snapshots, generated-at.
    let top = &r.top_rejection_codes[0];
    assert_eq!(
        csv_value(&rows, "top_rejection_codes", "", "rejections", &top.code),
        top.count.to_string()
    );
    let snap = &r.snapshots[0];
    assert_eq!(
        csv_value(&rows, "snapshots", "", "requests", &snap.snapshot),
        snap.requests.to_string()
    );
    assert!(html.contains("2026-07-01T08:00:00+07:00") && md.contains("2026-07-01T08:00:00+07:00"));
    assert_eq!(
        csv_value(&rows, "report", "", "generated_at", ""),
        "2026-07-01T08:00:00+07:00"
    );
    assert_eq!(rows[0], csv_long::HEADER);
    assert!(rows.iter().all(|r| r.len() == 5));
}

#[test]
fn formats_parse_from_names() {
    assert_eq!("html".parse::<Format>().unwrap(), Format::Html);
    assert_eq!("md".parse::<Format>().unwrap(), Format::Markdown);
    assert_eq!("CSV".parse::<Format>().unwrap(), Format::Csv);
    assert_eq!("json".parse::<Format>().unwrap(), Format::Json);
    let e = "pdf".parse::<Format>().unwrap_err();
    assert!(e.to_string().contains("html, md, csv or json"));
}

#[test]
fn empty_window_renders() {
    let f = Fixture {
        records: vec![],
        agreements: vec![],
        ledger: vec![],
    };
    let chain = intact(0);
    let r = build(&input(&f, &chain));
    assert!(r.agreements.is_empty());
    for format in [Format::Html, Format::Markdown, Format::Csv, Format::Json] {
        assert!(!render(&r, format).unwrap().is_empty());
    }
    assert!(html_of(&r).contains("Tidak ada permintaan dalam periode ini."));
}

#[test]
fn indonesian_number_formatting() {
    assert_eq!(text::int(0), "0");
    assert_eq!(text::int(1234567), "1.234.567");
    assert_eq!(text::pct(Some(42.46)), "42,5%");
    assert_eq!(text::pct(Some(100.0)), "100%");
    assert_eq!(text::pct(None), "—");
    assert_eq!(text::num(1234.5), "1.234,5");
    assert_eq!(text::num(0.25), "0,25");
}

fn refusal(minute: &str, addr: &str, code: &str, count: u64) -> crate::state::RefusalCount {
    crate::state::RefusalCount {
        minute: minute.into(),
        client_addr: addr.into(),
        code: code.into(),
        count,
    }
}

#[test]
fn unauthenticated_refusals_by_code_and_address_in_every_format() {
    let f = fixture();
    let chain = intact(f.records.len() as u64);
    let refusals = vec![
        refusal("2026-03-03T03:00:00Z", "10.0.0.9", "token_unknown", 500),
        refusal("2026-03-03T03:01:00Z", "10.0.0.9", "token_unknown", 400),
        refusal("2026-03-03T03:01:00Z", "10.0.0.9", "rate_limited", 9000),
        refusal("2026-03-04T03:00:00Z", "2001:db8:0:1::", "token_missing", 7),
        refusal("2026-03-04T03:00:00Z", "", "request_timeout", 2),
        // 2026-06-30 17:00 UTC is 1 July WIB: outside the window.
        refusal("2026-06-30T17:00:00Z", "10.0.0.8", "token_unknown", 1000),
    ];
    let mut inp = input(&f, &chain);
    inp.refusals = &refusals;
    let r = build(&inp);
    let u = &r.unauthenticated;
    assert_eq!(u.total, 9909);
    assert_eq!(u.addresses, 3);
    let codes: Vec<(&str, u64)> = u
        .by_code
        .iter()
        .map(|c| (c.code.as_str(), c.count))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("rate_limited", 9000),
            ("token_unknown", 900),
            ("token_missing", 7),
            ("request_timeout", 2)
        ]
    );
    let top = &u.top_addresses[0];
    assert_eq!(
        (
            top.address.as_str(),
            top.count,
            top.minutes,
            top.top_code.as_str()
        ),
        ("10.0.0.9", 9900, 2, "rate_limited")
    );
    assert_eq!(u.top_addresses.len(), 3);

    let html = html_of(&r);
    assert!(
        html.contains(&format!(">{}</h", html::esc(doc::H_UNAUTH))),
        "{html}"
    );
    assert!(
        html.contains("10.0.0.9") && html.contains("9.900"),
        "Indonesian figures"
    );
    let md = md_of(&r);
    assert!(md.contains(doc::H_UNAUTH) && md.contains("2001:db8:0:1::") && md.contains("9.909"));
    let rows = csv_rows(&r);
    assert_eq!(
        csv_value(&rows, "unauthenticated", "", "refusals", ""),
        "9909"
    );
    assert_eq!(
        csv_value(
            &rows,
            "unauthenticated",
            "",
            "refusals_by_code",
            "token_unknown"
        ),
        "900"
    );
    assert_eq!(
        csv_value(
            &rows,
            "unauthenticated",
            "",
            "refusals_by_address",
            "10.0.0.9"
        ),
        "9900"
    );
    let j = json_of(&r);
    assert_eq!(j["unauthenticated"]["total"], 9909);
    assert_eq!(
        j["unauthenticated"]["top_addresses"][0]["address"],
        "10.0.0.9"
    );
    assert_eq!(j["unauthenticated"]["by_code"][0]["code"], "rate_limited");

    // They belong to no agreement: a filtered report leaves them out.
    inp.agreement_filter = Some("bappeda");
    let r = build(&inp);
    assert_eq!(r.unauthenticated.total, 0);
    assert!(!md_of(&r).contains("10.0.0.9"));
}
