//! The SQL case corpus: every `tests/sql/*.slt` file, run against the sample
//! snapshot `data-samples/dkb-2026-s1` through the full gate and engine.
//!
//! File format (one case per record, records separated by blank lines, `#`
//! comment lines allowed anywhere):
//!
//! ```text
//! # comment
//! accept [agreement=NAME] [rowsort]
//! SELECT jenis_kelamin, COUNT(*) FROM penduduk GROUP BY jenis_kelamin ORDER BY 1
//! ----
//! LAKI-LAKI    34232
//! PEREMPUAN    34768
//!
//! accept
//! SELECT ...            (no `----` block: the case only needs to be accepted;
//! rows N                 an optional `rows N` line asserts the row count)
//!
//! reject CODE[|CODE...] [agreement=NAME]
//! SELECT nik, COUNT(*) FROM penduduk GROUP BY nik
//! ```
//!
//! Result cells are formatted with Arrow's `array_value_to_string`, NULL as
//! `NULL`, columns separated by one tab. `rowsort` sorts the actual and the
//! expected rows as text before comparing (for queries without ORDER BY).
//! `reject` may list alternative codes separated by `|` for a query that
//! breaks several rules at once.
//!
//! Agreements: `full` (default), `nocacat`, `cacat_no_permission`,
//! `pendidikan`, `kec01`, `tiny`, `dp_exact` (differential privacy without
//! noise), and `table` (cell-key without noise: a query must be a table);
//! see [`agreements`].
//!
//! `SQL_CORPUS_FILTER=substring` runs only the cases whose `file:line` or SQL
//! contains the substring.

use crate::common;

use agregat::protect::{Method, Protection, SparsityRule};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use agregat::agreement::{Agreement, QueryLimits};
use agregat::catalog::{self, ColumnClass, RegionScope};
use agregat::query::{Engine, EngineConfig, RunError};
use agregat::release::run_query;
use agregat::warehouse::{Snapshot, Verify};
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::util::display::array_value_to_string;

/// Message and location of the last panic inside the engine.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

const SNAPSHOT: &str = "data-samples/dkb-2026-s1";
const CORPUS_DIR: &str = "tests/sql";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Accept {
        /// Expected rows (already tab-joined), when a `----` block is given.
        rows: Option<Vec<String>>,
        /// Expected row count, when a `rows N` line is given.
        row_count: Option<usize>,
        rowsort: bool,
    },
    Reject {
        /// Acceptable codes (usually one).
        codes: Vec<String>,
    },
}

#[derive(Debug, Clone)]
struct Case {
    file: String,
    line: usize,
    agreement: String,
    sql: String,
    expect: Expect,
}

impl Case {
    fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

fn fail_at(file: &str, line: usize, msg: &str) -> ! {
    panic!("{file}:{line}: {msg}")
}

/// Parses one `.slt` file. Panics with `file:line` on malformed records.
fn parse_file(name: &str, text: &str) -> Vec<Case> {
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let mut cases = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if is_blank(line) || is_comment(line) {
            i += 1;
            continue;
        }
        // Header.
        let header_line = i + 1;
        let mut words = line.split_whitespace();
        let kind = words.next().unwrap_or_default();
        let mut agreement = "full".to_string();
        let mut rowsort = false;
        let mut codes = Vec::new();
        match kind {
            "accept" => {}
            "reject" => {
                let Some(c) = words.next() else {
                    fail_at(name, header_line, "`reject` needs a code");
                };
                codes = c.split('|').map(str::to_string).collect();
                for c in &codes {
                    if agregat::query::Code::parse(c).is_none() {
                        fail_at(name, header_line, &format!("unknown rejection code '{c}'"));
                    }
                }
            }
            other => fail_at(
                name,
                header_line,
                &format!("expected `accept` or `reject`, found '{other}'"),
            ),
        }
        for w in words {
            if let Some(a) = w.strip_prefix("agreement=") {
                agreement = a.to_string();
            } else if w == "rowsort" && kind == "accept" {
                rowsort = true;
            } else {
                fail_at(name, header_line, &format!("unknown header option '{w}'"));
            }
        }
        i += 1;
        // SQL until `----`, `rows N`, a blank line or the end.
        let mut sql_lines: Vec<&str> = Vec::new();
        let mut rows: Option<Vec<String>> = None;
        let mut row_count: Option<usize> = None;
        while i < lines.len() && !is_blank(lines[i]) {
            let l = lines[i];
            if is_comment(l) {
                i += 1;
                continue;
            }
            if l.trim() == "----" {
                if kind != "accept" {
                    fail_at(name, i + 1, "a `reject` case cannot have a result block");
                }
                i += 1;
                let mut r = Vec::new();
                while i < lines.len() && !is_blank(lines[i]) {
                    if !is_comment(lines[i]) {
                        r.push(lines[i].to_string());
                    }
                    i += 1;
                }
                rows = Some(r);
                break;
            }
            if let Some(n) = l.trim().strip_prefix("rows ")
                && let Ok(n) = n.trim().parse::<usize>()
            {
                if kind != "accept" {
                    fail_at(name, i + 1, "a `reject` case cannot have a `rows` line");
                }
                row_count = Some(n);
                i += 1;
                while i < lines.len() && is_comment(lines[i]) {
                    i += 1;
                }
                if i < lines.len() && !is_blank(lines[i]) {
                    fail_at(name, i + 1, "nothing may follow `rows N` in a record");
                }
                break;
            }
            sql_lines.push(l);
            i += 1;
        }
        if sql_lines.is_empty() {
            fail_at(name, header_line, "case without SQL");
        }
        let sql = sql_lines.join("\n");
        let expect = if kind == "accept" {
            Expect::Accept {
                rows,
                row_count,
                rowsort,
            }
        } else {
            Expect::Reject { codes }
        };
        cases.push(Case {
            file: name.to_string(),
            line: header_line,
            agreement,
            sql,
            expect,
        });
    }
    cases
}

fn load_corpus(root: &Path) -> Vec<Case> {
    let dir = root.join(CORPUS_DIR);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    let mut cases = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = format!("{CORPUS_DIR}/{}", f.file_name().unwrap().to_string_lossy());
        let parsed = parse_file(&name, &text);
        assert!(!parsed.is_empty(), "{name} holds no cases");
        cases.extend(parsed);
    }
    cases
}

/// The agreements cases can name.
fn agreements() -> BTreeMap<&'static str, Agreement> {
    let scope = || RegionScope::parse("61.71").unwrap();
    let all_columns = || {
        catalog::table_columns()
            .filter(|c| c.class != ColumnClass::RecordKey)
            .map(|c| c.name.to_string())
            .collect::<Vec<_>>()
    };
    let no_permission: [&str; 0] = [];
    let mut m = BTreeMap::new();
    m.insert("full", Agreement::unrestricted("full", scope()));
    m.insert(
        "nocacat",
        Agreement::new(
            "nocacat",
            all_columns()
                .into_iter()
                .filter(|c| c != "penyandang_cacat"),
            no_permission,
            scope(),
            QueryLimits::default(),
        )
        .unwrap(),
    );
    m.insert(
        "cacat_no_permission",
        Agreement::new(
            "cacat_no_permission",
            all_columns(),
            no_permission,
            scope(),
            QueryLimits::default(),
        )
        .unwrap(),
    );
    m.insert(
        "pendidikan",
        Agreement::new(
            "pendidikan",
            [
                "jenis_kelamin",
                "tanggal_lahir",
                "kode_prov",
                "kode_kab",
                "kode_kec",
                "kode_kel",
            ],
            no_permission,
            scope(),
            QueryLimits::default(),
        )
        .unwrap(),
    );
    m.insert(
        "kec01",
        Agreement::unrestricted("kec01", RegionScope::parse("61.71.01").unwrap()),
    );
    m.insert(
        "tiny",
        Agreement::new(
            "tiny",
            all_columns(),
            ["penyandang_cacat"],
            scope(),
            QueryLimits {
                max_group_dimensions: 2,
                max_cells: 100,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    // The corpus checks the gate and the grid against true counts computed
    // independently (DuckDB). The gate agreements use differential privacy
    // (the method under which the richer SQL is allowed) with a budget so
    // large that the noise is zero with overwhelming probability and k = 1,
    // so the released values are the true ones. Real protection is tested
    // in tests/it/protect.rs and tests/it/redteam.rs.
    let exact = Protection {
        method: Method::Dp {
            budget: agregat::protect::dp::DpBudget::ZCdp { rho: 1e12 },
            k: 1,
        },
        sparsity: SparsityRule::default(),
    };
    for a in m.values_mut() {
        *a = a.clone().with_unchecked_protection_for_tests(exact.clone());
    }
    let mut dp = Agreement::unrestricted("dp_exact", scope());
    dp = dp.with_unchecked_protection_for_tests(exact);
    m.insert("dp_exact", dp);
    // Under the cell-key method a query must be a table: `table` is `full`
    // with an identity ptable (no perturbation), k = 1 and no sparsity
    // refusal, for the cases of tests/sql/tables.slt.
    let mut table = Agreement::unrestricted("table", scope());
    table = table.with_unchecked_protection_for_tests(common::true_values());
    m.insert("table", table);
    m
}

fn format_batches(batches: &[RecordBatch]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let mut cells = Vec::with_capacity(batch.num_columns());
            for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
                if field.name() == agregat::protect::SUPPRESSION_COLUMN {
                    continue;
                }
                if col.is_null(row) {
                    cells.push("NULL".to_string());
                } else {
                    cells.push(array_value_to_string(col, row).map_err(|e| e.to_string())?);
                }
            }
            out.push(cells.join("\t"));
        }
    }
    Ok(out)
}

/// What one case did, for the report.
enum Outcome {
    Pass,
    Fail(String),
}

fn indent(lines: &[String]) -> String {
    if lines.is_empty() {
        return "      (no rows)\n".to_string();
    }
    let mut s = String::new();
    for l in lines {
        let _ = writeln!(s, "      {l}");
    }
    s
}

/// The SQL of a case for the report, long texts cut.
fn short_sql(sql: &str) -> String {
    const MAX: usize = 600;
    if sql.len() <= MAX {
        return sql.to_string();
    }
    let mut end = MAX;
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … ({} bytes)", &sql[..end], sql.len())
}

fn check_message(message: &str) -> Option<String> {
    if message.trim().is_empty() {
        return Some("the rejection message is empty".into());
    }
    for dump in ["LogicalPlan", "Projection:"] {
        if message.contains(dump) {
            return Some(format!(
                "the rejection message contains a plan dump ('{dump}')"
            ));
        }
    }
    None
}

async fn run_case(engine: &Engine, agreement: &Agreement, case: &Case) -> Outcome {
    let result = run_query(engine, agreement, &case.sql).await;
    match (&case.expect, result) {
        (
            Expect::Accept {
                rows,
                row_count,
                rowsort,
            },
            Ok(res),
        ) => {
            let mut actual = match format_batches(res.table.batches()) {
                Ok(a) => a,
                Err(e) => return Outcome::Fail(format!("cannot format the result: {e}")),
            };
            if let Some(n) = row_count
                && actual.len() != *n
            {
                return Outcome::Fail(format!(
                    "expected {n} rows, got {}:\n{}",
                    actual.len(),
                    indent(&actual[..actual.len().min(20)])
                ));
            }
            if let Some(expected) = rows {
                let mut expected = expected.clone();
                if *rowsort {
                    expected.sort();
                    actual.sort();
                }
                if actual != expected {
                    return Outcome::Fail(format!(
                        "result differs\n    expected:\n{}    actual:\n{}",
                        indent(&expected),
                        indent(&actual)
                    ));
                }
            }
            Outcome::Pass
        }
        (Expect::Accept { .. }, Err(RunError::Query(e))) => Outcome::Fail(format!(
            "expected acceptance, got rejection [{}] {}",
            e.code.as_str(),
            e.message
        )),
        (_, Err(RunError::Engine(e))) => Outcome::Fail(format!("internal engine failure: {e}")),
        (Expect::Reject { codes }, Ok(res)) => {
            let actual = format_batches(res.table.batches()).unwrap_or_default();
            Outcome::Fail(format!(
                "expected rejection [{}], but the query was accepted; {} rows:\n{}",
                codes.join("|"),
                actual.len(),
                indent(&actual[..actual.len().min(10)])
            ))
        }
        (Expect::Reject { codes }, Err(RunError::Query(e))) => {
            let code = e.code.as_str();
            if let Some(problem) = check_message(&e.message) {
                return Outcome::Fail(format!("[{code}] {problem}: {}", e.message));
            }
            if codes.iter().any(|c| c == code) {
                Outcome::Pass
            } else {
                Outcome::Fail(format!(
                    "expected rejection [{}], got [{code}] {}",
                    codes.join("|"),
                    e.message
                ))
            }
        }
    }
}

#[test]
fn sql_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cases = load_corpus(root);
    let total_parsed = cases.len();
    if let Ok(filter) = std::env::var("SQL_CORPUS_FILTER")
        && !filter.is_empty()
    {
        cases.retain(|c| c.location().contains(&filter) || c.sql.contains(&filter));
    }
    let agreements = agreements();
    for c in &cases {
        assert!(
            agreements.contains_key(c.agreement.as_str()),
            "{}: unknown agreement '{}'",
            c.location(),
            c.agreement
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let snapshot =
        Snapshot::open(&root.join(SNAPSHOT), Verify::Full).expect("open sample snapshot");
    let engine = runtime
        .block_on(Engine::open(snapshot, EngineConfig::default()))
        .expect("open engine");

    // Record panics in one line instead of a backtrace per case.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        *LAST_PANIC.lock().unwrap() = Some(format!("{msg} at {at}"));
    }));

    let started = Instant::now();
    // Per file: (cases, passed).
    let mut per_file: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut failures: Vec<(Case, String)> = Vec::new();
    for case in &cases {
        let agreement = &agreements[case.agreement.as_str()];
        let t = Instant::now();
        // An engine panic fails the case, not the whole corpus.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(run_case(&engine, agreement, case))
        }))
        .unwrap_or_else(|_| {
            let what = LAST_PANIC.lock().unwrap().take().unwrap_or_default();
            Outcome::Fail(format!("the engine panicked: {what}"))
        });
        let elapsed = t.elapsed();
        let entry = per_file.entry(case.file.clone()).or_default();
        entry.0 += 1;
        match outcome {
            Outcome::Pass => entry.1 += 1,
            Outcome::Fail(why) => failures.push((case.clone(), why)),
        }
        if elapsed.as_secs() >= 5 {
            eprintln!("slow case {} took {elapsed:.1?}", case.location());
        }
    }

    std::panic::set_hook(default_hook);

    let mut report = String::new();
    let _ = writeln!(
        report,
        "\nSQL corpus: {} cases parsed, {} run in {:.1?}",
        total_parsed,
        cases.len(),
        started.elapsed()
    );
    for (file, (n, ok)) in &per_file {
        let _ = writeln!(report, "  {file}: {ok}/{n} passed");
    }
    let passed: usize = per_file.values().map(|(_, ok)| ok).sum();
    let _ = writeln!(
        report,
        "  total: {passed}/{} passed, {} failed",
        cases.len(),
        failures.len()
    );
    if !failures.is_empty() {
        let _ = writeln!(report, "\nFailing cases:");
        for (case, why) in &failures {
            let _ = writeln!(
                report,
                "\n--- {} [agreement={}]\n    {}\n    {}",
                case.location(),
                case.agreement,
                short_sql(&case.sql).replace('\n', "\n    "),
                why.trim_end()
            );
        }
    }
    println!("{report}");
    assert!(
        failures.is_empty(),
        "{} of {} SQL corpus cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures
            .iter()
            .map(|(c, _)| format!("  {}", c.location()))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn corpus_parser_reads_every_record_form() {
    let text = "# c\naccept agreement=kec01 rowsort\nSELECT 1\n# inner comment\nFROM t\n----\na\t1\nb\t2\n\naccept\nSELECT 2\n\naccept\nSELECT 3\nrows 4\n\n# x\nreject plan_error|parse_error agreement=tiny\nSELECT\n  4\n";
    let cases = parse_file("t.slt", text);
    assert_eq!(cases.len(), 4);
    assert_eq!(cases[0].line, 2);
    assert_eq!(cases[0].agreement, "kec01");
    assert_eq!(cases[0].sql, "SELECT 1\nFROM t");
    assert_eq!(
        cases[0].expect,
        Expect::Accept {
            rows: Some(vec!["a\t1".into(), "b\t2".into()]),
            row_count: None,
            rowsort: true
        }
    );
    assert_eq!(
        cases[1].expect,
        Expect::Accept {
            rows: None,
            row_count: None,
            rowsort: false
        }
    );
    assert_eq!(
        cases[2].expect,
        Expect::Accept {
            rows: None,
            row_count: Some(4),
            rowsort: false
        }
    );
    assert_eq!(cases[3].agreement, "tiny");
    assert_eq!(cases[3].sql, "SELECT\n  4");
    assert_eq!(
        cases[3].expect,
        Expect::Reject {
            codes: vec!["plan_error".into(), "parse_error".into()]
        }
    );
}
