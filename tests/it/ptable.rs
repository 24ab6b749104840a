//! Perturbation tables: hand-worked lookups, the ONS 10-5 table, the
//! generated D=5 V=2 js=2 table, CSV errors, round trips and `check`.

use std::path::PathBuf;

use agregat::protect::ptable::{PTable, PTableError, PTableParams, ons_10_5};

/// Keys 0..8, D = 1, rows 0..=5. W = floor(6/3) = 2: counts above 5 reuse
/// rows 4..=5 (pcv = ((n-1) mod 2) + 4), and rows 4 and 5 differ so the
/// wrap is visible.
const HAND: &str = "\
cell_value,cell_key,perturbation
0,0-7,0
1,0-3,0
1,4-5,-1
1,6-7,1
2,0-1,-1
2,2-5,0
2,6-7,1
3,0,-1
3,1-6,0
3,7,1
4,0-1,-1
4,2-5,0
4,6-7,1
5,0-1,1
5,2-5,0
5,6-7,-1
";

fn hand() -> PTable {
    PTable::from_csv(HAND, "hand.csv").expect("hand table loads")
}

fn d5_v2_js2() -> PTableParams {
    PTableParams::new(5, 2.0, 2, 256)
}

#[test]
fn hand_table_lookups_worked_by_hand() {
    let t = hand();
    assert_eq!(t.name(), "hand.csv");
    assert_eq!(t.key_range(), 8);
    assert_eq!(t.max_value(), 5);
    assert_eq!(t.wrap_width(), 2);
    assert_eq!(t.perturbation_bound(), 1);
    let p = t.params().unwrap();
    assert_eq!((p.max_perturbation, p.js, p.keys), (1, 0, 8));
    assert_eq!(p.max_cell_value, Some(5));
    // Row 5: two keys at -1, two at +1 -> variance 0.5.
    assert!((p.variance - 0.5).abs() < 1e-12);

    // Key range `0-3` of row 1: perturbation 0.
    for k in 0..=3 {
        assert_eq!(t.perturb(1, k), 1);
    }
    assert_eq!(t.perturb(1, 4), 0);
    assert_eq!(t.perturb(1, 5), 0);
    assert_eq!(t.perturb(1, 7), 2);
    assert_eq!(t.perturb(3, 0), 2);
    assert_eq!(t.perturb(3, 3), 3);
    assert_eq!(t.perturb(3, 7), 4);
    assert_eq!(t.perturb(5, 0), 6);
    // Wrap: 6 -> pcv ((6-1) mod 2) + 4 = 5, row 5 key 0 = +1 -> 7.
    assert_eq!(t.pcv(6), 5);
    assert_eq!(t.perturb(6, 0), 7);
    // 7 -> pcv (6 mod 2) + 4 = 4, row 4 key 0 = -1 -> 6.
    assert_eq!(t.pcv(7), 4);
    assert_eq!(t.perturb(7, 0), 6);
    // 100 -> pcv (99 mod 2) + 4 = 5, row 5 key 7 = -1 -> 99.
    assert_eq!(t.pcv(100), 5);
    assert_eq!(t.perturb(100, 7), 99);
    assert_eq!(t.perturb(101, 7), 102);
    for k in 0..8 {
        assert_eq!(t.perturb(0, k), 0);
    }
    assert_eq!(t.checked_perturb(3, 8), None);
    assert!(t.check(None).is_empty(), "{:?}", t.check(None));
}

#[test]
#[should_panic(expected = "cell key 8 outside")]
fn perturb_panics_on_a_key_outside_the_range() {
    hand().perturb(3, 8);
}

#[test]
fn ons_10_5_rounds_every_key() {
    let t = ons_10_5();
    assert_eq!(t.key_range(), 256);
    let cases = [
        (0u64, 0u64),
        (10, 10),
        (12, 10),
        (13, 15),
        (27, 25),
        (28, 30),
        (1_000_003, 1_000_005),
        (1_000_002, 1_000_000),
    ];
    for k in 0..256 {
        for n in 1..=9 {
            assert_eq!(t.perturb(n, k), 0, "n {n} key {k}");
        }
        for (n, want) in cases {
            assert_eq!(t.perturb(n, k), want, "n {n} key {k}");
        }
    }
    // The rule holds for every count, also above max_value (wrap).
    for n in 10..5_000u64 {
        let r = n % 5;
        let want = if r <= 2 { n - r } else { n + 5 - r };
        assert_eq!(t.perturb(n, (n % 256) as u32), want, "n {n}");
    }
    // Deliberately biased: the only violations are bias ones.
    let v = t.check(None);
    assert!(!v.is_empty());
    assert!(v.iter().all(|v| v.message.starts_with("biased")), "{v:?}");
    assert!(v.iter().any(|v| v.cell_value == 9));
}

#[test]
fn generated_d5_v2_js2_256_meets_its_guarantees() {
    let p = d5_v2_js2();
    let t = PTable::generate(&p).unwrap();
    assert_eq!(t.name(), "ptable-D5-V2-js2-256");
    assert!(t.is_generated());
    assert_eq!(t.key_range(), 256);
    assert_eq!(t.perturbation_bound(), 5);
    assert_eq!(t.max_value(), 16);
    assert_eq!(t.params().unwrap().max_cell_value, Some(16));
    let violations = t.check(Some(&p));
    assert!(violations.is_empty(), "{violations:?}");
    assert!(t.check(None).is_empty());

    for i in 0..=t.max_value() {
        let row = t.row(i).unwrap();
        assert!(row.iter().all(|v| v.abs() <= 5), "row {i}");
        let sum: i64 = row.iter().map(|&v| i64::from(v)).sum();
        // Tolerance: |mean| <= (js+1)/keys.
        assert!(sum.abs() <= 3, "row {i} sum {sum}");
        if i >= 8 {
            // Full support -D..=D from js+D+1 = 8: exactly unbiased and
            // variance within 0.1 of V.
            assert_eq!(sum, 0, "row {i}");
            let var = row.iter().map(|&v| f64::from(v * v)).sum::<f64>() / 256.0;
            assert!((var - 2.0).abs() <= 0.1, "row {i} variance {var}");
        }
    }
    let max = u64::from(t.max_value());
    let counts = (0..=3 * max).chain([1_000, 12_345, 1 << 40]);
    for n in counts {
        for k in 0..256 {
            let out = t.perturb(n, k);
            assert!(!(1..=2).contains(&out), "n {n} key {k} -> {out}");
            assert!(out.abs_diff(n) <= 5);
            if n == 0 {
                assert_eq!(out, 0);
            }
        }
    }
}

#[test]
fn sample_file_is_the_generated_table() {
    let t = PTable::generate(&d5_v2_js2()).unwrap();
    let csv = t.to_csv();
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "data-samples",
        "ptable",
        "ptable-D5-V2-js2-256.csv",
    ]
    .iter()
    .collect();
    if std::env::var_os("AGREGAT_WRITE_SAMPLES").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &csv).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; regenerate with `AGREGAT_WRITE_SAMPLES=1 cargo test --test ptable sample_file`",
            path.display()
        )
    });
    assert_eq!(
        on_disk, csv,
        "sample differs from the generator; regenerate with AGREGAT_WRITE_SAMPLES=1"
    );
    let loaded = PTable::from_csv(&on_disk, "ptable-D5-V2-js2-256.csv").unwrap();
    assert_eq!(loaded.sha256(), t.sha256());
    assert!(loaded.check(Some(&d5_v2_js2())).is_empty());
}

fn assert_same_lookups(a: &PTable, b: &PTable) {
    assert_eq!(a.key_range(), b.key_range());
    assert_eq!(a.max_value(), b.max_value());
    for n in 0..=3 * u64::from(a.max_value()) {
        for k in 0..a.key_range() {
            assert_eq!(a.perturb(n, k), b.perturb(n, k), "n {n} key {k}");
        }
    }
}

#[test]
fn round_trip_through_csv_keeps_every_lookup() {
    let mut small = PTableParams::new(3, 1.0, 1, 64);
    small.max_cell_value = Some(40);
    for t in [
        hand(),
        ons_10_5(),
        PTable::generate(&d5_v2_js2()).unwrap(),
        PTable::generate(&small).unwrap(),
    ] {
        let csv = t.to_csv();
        let back = PTable::from_csv(&csv, "round-trip.csv").unwrap();
        assert_same_lookups(&t, &back);
        assert_eq!(back.to_csv(), csv);
        assert_eq!(back.canonical_sha256(), t.canonical_sha256());
        assert_eq!(back.sha256(), back.canonical_sha256());
    }
    // to_csv writes single keys without a range and runs as ranges.
    let h = hand();
    assert_eq!(h.sha256().len(), 64);
    let compact = h.to_csv();
    assert!(compact.contains("\n1,0-3,0\n"), "{compact}");
    assert!(compact.contains("\n3,0,-1\n"), "{compact}");
}

#[test]
fn loaded_text_is_tolerant_of_layout_but_hashes_as_given() {
    let crlf = format!(
        "\u{feff}{}",
        HAND.replace('\n', "\r\n")
            .replace("0,0-7,0", "0, \"0-7\" ,0\r\n")
    );
    let t = PTable::from_csv(&crlf, "crlf.csv").unwrap();
    assert_same_lookups(&t, &hand());
    assert_ne!(t.sha256(), hand().sha256());
    assert_eq!(t.canonical_sha256(), hand().canonical_sha256());
    // Lines in any order.
    let mut lines: Vec<&str> = HAND.lines().collect();
    lines[1..].reverse();
    let t = PTable::from_csv(&lines.join("\n"), "reversed.csv").unwrap();
    assert_same_lookups(&t, &hand());
}

fn load_err(text: &str) -> PTableError {
    PTable::from_csv(text, "bad.csv").expect_err("table must be rejected")
}

#[test]
fn missing_key_coverage_names_the_line() {
    let text = HAND.replace("2,6-7,1\n", "");
    let e = load_err(&text);
    assert!(
        matches!(&e, PTableError::MissingKeys { line: 6, cell_value: 2, keys, .. } if keys == "6-7"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("bad.csv") && msg.contains("line 6") && msg.contains("6-7"),
        "{msg}"
    );

    let text = HAND.replace("3,0,-1\n3,1-6,0\n3,7,1\n", "");
    let e = load_err(&text);
    assert!(
        matches!(
            e,
            PTableError::MissingRow {
                cell_value: 3,
                line: 9,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("line 9"), "{e}");
}

#[test]
fn overlapping_ranges_name_both_lines() {
    let text = HAND.replace("1,6-7,1\n", "1,6-7,1\n1,3-4,0\n");
    let e = load_err(&text);
    assert!(
        matches!(&e, PTableError::Overlap { line: 6, first_line: 3, cell_value: 1, keys, .. } if keys == "3"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("line 6") && msg.contains("line 3"), "{msg}");
}

#[test]
fn non_numeric_values_name_the_line() {
    let e = load_err(&HAND.replace("2,2-5,0", "2,2-5,x"));
    assert!(
        matches!(&e, PTableError::BadNumber { line: 7, field: "perturbation", value, .. } if value == "x"),
        "{e:?}"
    );
    assert!(e.to_string().contains("line 7"), "{e}");
    let e = load_err(&HAND.replace("3,0,-1", "three,0,-1"));
    assert!(
        matches!(
            e,
            PTableError::BadNumber {
                line: 9,
                field: "cell_value",
                ..
            }
        ),
        "{e:?}"
    );
    let e = load_err(&HAND.replace("3,1-6,0", "3,1-six,0"));
    assert!(
        matches!(
            e,
            PTableError::BadNumber {
                line: 10,
                field: "cell_key",
                ..
            }
        ),
        "{e:?}"
    );
    let e = load_err(&HAND.replace("3,7,1", "3,-7,1"));
    assert!(
        matches!(&e, PTableError::BadNumber { line: 11, field: "cell_key", value, .. } if value == "-7"),
        "{e:?}"
    );
    assert!(e.to_string().contains("`12,0-31,-2` or `12,7,-2`"), "{e}");
    let e = load_err(&HAND.replace("3,7,1", "99999999999,7,1"));
    assert!(e.to_string().contains("below 2^32"), "{e}");
    let e = load_err(&HAND.replace("3,1-6,0", "3,6-1,0"));
    assert!(
        matches!(
            e,
            PTableError::BackwardRange {
                line: 10,
                lo: 1,
                hi: 6,
                ..
            }
        ),
        "{e:?}"
    );
    let e = load_err(&HAND.replace("3,1-6,0", "3,1-6"));
    assert!(
        matches!(
            e,
            PTableError::FieldCount {
                line: 10,
                found: 2,
                ..
            }
        ),
        "{e:?}"
    );
    let e = load_err(&HAND.replace("2,0-1,-1", "2,0-1,-3"));
    assert!(
        matches!(
            e,
            PTableError::NegativeOutput {
                line: 6,
                published: -1,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn bad_header_names_line_one() {
    let e = load_err(&HAND.replace("cell_value,cell_key,perturbation", "pcv,ckey,pvalue"));
    assert!(matches!(e, PTableError::BadHeader { line: 1, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("line 1") && msg.contains("cell_value,cell_key,perturbation"),
        "{msg}"
    );
    // A file without header: the first data line is taken for a header.
    let e = load_err(HAND.split_once('\n').unwrap().1);
    assert!(matches!(e, PTableError::BadHeader { line: 1, .. }), "{e:?}");
    assert!(matches!(load_err(""), PTableError::Empty { .. }));
    assert!(matches!(
        load_err("cell_value,cell_key,perturbation\n"),
        PTableError::Empty { .. }
    ));
    assert!(matches!(
        load_err("cell_value,cell_key,perturbation\n0,0-7,0\n"),
        PTableError::TooFewRows { line: 2, .. }
    ));
    assert!(matches!(
        load_err("cell_value,cell_key,perturbation\n0,0-99999,0\n1,0,0\n"),
        PTableError::TooLarge { line: 2, .. }
    ));
}

#[test]
fn check_reports_blocked_outputs_and_excess_perturbation_with_their_rows() {
    // Row 3 key 0 now has |v| = 2 (row still unbiased: -2 + 1 + 1).
    let text = HAND.replace("3,0,-1\n3,1-6,0\n3,7,1\n", "3,0,-2\n3,1-5,0\n3,6-7,1\n");
    let t = PTable::from_csv(&text, "bad-row.csv").unwrap();
    let mut expected = PTableParams::new(1, 0.5, 1, 8);
    expected.max_cell_value = Some(5);
    let v = t.check(Some(&expected));
    // Row 1 keys 0-3 publish 1, inside 1..=js.
    assert!(
        v.iter()
            .any(|v| v.cell_value == 1 && v.keys == "0-3" && v.message.contains("1..=1")),
        "{v:?}"
    );
    // Row 3 key 0 has |v| = 2 > D = 1.
    assert!(
        v.iter()
            .any(|v| v.cell_value == 3 && v.keys == "0" && v.message.contains("exceeds D = 1")),
        "{v:?}"
    );
    // Displayed with row and keys.
    let shown: Vec<String> = v.iter().map(ToString::to_string).collect();
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("cell_value 3, keys 0: ")),
        "{shown:?}"
    );

    // Row 0 must be all zeros; wrong key count and max value are reported.
    let t = PTable::from_csv(&HAND.replace("0,0-7,0", "0,0-6,0\n0,7,1"), "row0.csv").unwrap();
    let v = t.check(None);
    assert!(
        v.iter().any(|v| v.cell_value == 0 && v.keys == "7"),
        "{v:?}"
    );
    assert_eq!(t.perturb(0, 7), 0);
    let mut other = PTableParams::new(1, 0.5, 0, 16);
    other.max_cell_value = Some(9);
    let v = hand().check(Some(&other));
    assert!(
        v.iter().any(|v| v.message.contains("8 keys, expected 16")),
        "{v:?}"
    );
    assert!(
        v.iter().any(|v| v.message.contains("expected 0..=9")),
        "{v:?}"
    );
}

#[test]
fn check_reports_bias_and_variance() {
    // Row 2 made biased: keys 0-1 at -1, 2-7 at +1 (sum +4 > js+1 = 1).
    let text = HAND.replace("2,2-5,0\n", "2,2-5,1\n");
    let t = PTable::from_csv(&text, "biased.csv").unwrap();
    let v = t.check(None);
    assert!(
        v.iter()
            .any(|v| v.cell_value == 2 && v.keys == "0-7" && v.message.starts_with("biased")),
        "{v:?}"
    );
    // A generated table checked against a different V.
    let t = PTable::generate(&d5_v2_js2()).unwrap();
    let mut wrong = d5_v2_js2();
    wrong.variance = 4.0;
    let v = t.check(Some(&wrong));
    assert!(
        v.iter()
            .any(|v| v.cell_value == 16 && v.message.contains("variance")),
        "{v:?}"
    );
}

#[test]
fn generation_parameter_errors_suggest_a_fix() {
    let e = PTable::generate(&PTableParams::new(1, 1.0, 2, 256)).unwrap_err();
    assert!(e.to_string().contains("raise D or lower js"), "{e}");
    let mut p = d5_v2_js2();
    p.max_cell_value = Some(4);
    let e = PTable::generate(&p).unwrap_err();
    assert!(
        matches!(
            e,
            PTableError::MaxValueTooSmall {
                needed: 10,
                default: 16,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("max_cell_value >= 10"), "{e}");
}
