//! Cell suppression with Gaussian-elimination secondary suppression.

use agregat::protect::suppress::{
    GridCell, GridTable, SuppressError, SuppressSummary, Suppression, derivable, suppress,
    suppress_csv,
};

use Suppression::{Primary as P, Secondary as S};

/// A tiny deterministic generator (Knuth's MMIX LCG); no rand crate needed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn cell(coords: &[Option<&str>], value: u64) -> GridCell {
    GridCell {
        coords: coords.iter().map(|c| c.map(str::to_string)).collect(),
        value,
    }
}

/// A 2-D table: inner cells row-major, then row totals, column totals and
/// the grand total. Rows are `r1..`, columns `c1..`.
struct Grid {
    table: GridTable,
    nr: usize,
    nc: usize,
}

impl Grid {
    fn new(rows: &[Vec<u64>]) -> Grid {
        let nr = rows.len();
        let nc = rows[0].len();
        let name = |p: &str, i: usize| Some(format!("{p}{}", i + 1));
        let mut cells = Vec::new();
        for (r, row) in rows.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                cells.push(GridCell {
                    coords: vec![name("r", r), name("c", c)],
                    value: v,
                });
            }
        }
        for (r, row) in rows.iter().enumerate() {
            cells.push(GridCell {
                coords: vec![name("r", r), None],
                value: row.iter().sum(),
            });
        }
        for c in 0..nc {
            cells.push(GridCell {
                coords: vec![None, name("c", c)],
                value: rows.iter().map(|r| r[c]).sum(),
            });
        }
        cells.push(GridCell {
            coords: vec![None, None],
            value: rows.iter().flatten().sum(),
        });
        Grid {
            table: GridTable {
                dims: vec!["baris".into(), "kolom".into()],
                cells,
            },
            nr,
            nc,
        }
    }

    /// Index of cell (r, c), 1-based; `None` = total.
    fn at(&self, r: Option<usize>, c: Option<usize>) -> usize {
        match (r, c) {
            (Some(r), Some(c)) => (r - 1) * self.nc + (c - 1),
            (Some(r), None) => self.nr * self.nc + (r - 1),
            (None, Some(c)) => self.nr * self.nc + self.nr + (c - 1),
            (None, None) => self.nr * self.nc + self.nr + self.nc,
        }
    }
}

fn pattern_of(n: usize, entries: &[(usize, Suppression)]) -> Vec<Option<Suppression>> {
    let mut out = vec![None; n];
    for &(i, s) in entries {
        out[i] = Some(s);
    }
    out
}

fn flags(pattern: &[Option<Suppression>]) -> Vec<bool> {
    pattern.iter().map(Option::is_some).collect()
}

/// The checks every returned pattern must pass.
fn assert_safe(table: &GridTable, k: u64, pattern: &[Option<Suppression>]) {
    assert_eq!(pattern.len(), table.cells.len());
    let d = derivable(table, &flags(pattern));
    assert!(d.is_empty(), "derivable suppressed cells: {d:?}");
    for (cell, s) in table.cells.iter().zip(pattern) {
        let small = cell.value >= 1 && cell.value < k;
        assert_eq!(*s == Some(P), small, "primary status of {cell:?}");
        if cell.value == 0 {
            assert_eq!(*s, None, "a zero cell is suppressed: {cell:?}");
        }
    }
}

// 1. The textbook case: a pattern with at least two suppressed cells in
//    every row and column (margins included) that still reveals a primary.
#[test]
fn pairwise_rule_is_not_enough_and_gauss_finds_the_rectangle() {
    //        c1  c2  c3 | total
    //  r1     2   8  10 |  20
    //  r2     9   7   3 |  19
    //  r3    12  11  20 |  43
    //  total 23  26  33 |  82
    let g = Grid::new(&[vec![2, 8, 10], vec![9, 7, 3], vec![12, 11, 20]]);
    let k = 5;

    // The naive pattern: protect (r1,c1) by the rectangle (r1..r2 x c1..c2);
    // (r2,c3) already has two suppressed in its row; its column gets (r3,c3),
    // row r3 gets its total, the totals column the grand total, and the
    // totals row (total,c3).
    let naive_cells = [
        g.at(Some(1), Some(1)),
        g.at(Some(1), Some(2)),
        g.at(Some(2), Some(1)),
        g.at(Some(2), Some(2)),
        g.at(Some(2), Some(3)),
        g.at(Some(3), Some(3)),
        g.at(Some(3), None),
        g.at(None, Some(3)),
        g.at(None, None),
    ];
    let mut naive = vec![false; g.table.cells.len()];
    for i in naive_cells {
        naive[i] = true;
    }
    // Every row and column of the extended 4 x 4 table (margins included)
    // has either no suppressed cell or at least two.
    let line = |cells: Vec<usize>| cells.iter().filter(|&&i| naive[i]).count();
    let idx = |i: usize| (i <= 3).then_some(i);
    for a in 1..=4 {
        let row = line((1..=4).map(|b| g.at(idx(a), idx(b))).collect());
        let col = line((1..=4).map(|b| g.at(idx(b), idx(a))).collect());
        assert!(row != 1 && col != 1, "line {a}: {row} / {col}");
    }
    // Yet (r2,c3) = R1 + R2 - C1 - C2 - (r1,c3) + (r3,c1) + (r3,c2) = 3.
    assert_eq!(derivable(&g.table, &naive), vec![g.at(Some(2), Some(3))]);

    let got = suppress(&g.table, k).unwrap();
    let want = pattern_of(
        g.table.cells.len(),
        &[
            (g.at(Some(1), Some(1)), P),
            (g.at(Some(2), Some(3)), P),
            (g.at(Some(1), Some(3)), S),
            (g.at(Some(2), Some(1)), S),
        ],
    );
    assert_eq!(got, want);
    assert_safe(&g.table, k, &got);

    // Suppressing only the primaries is unsafe: both are derivable.
    let primaries = flags(&pattern_of(
        g.table.cells.len(),
        &[(g.at(Some(1), Some(1)), P), (g.at(Some(2), Some(3)), P)],
    ));
    assert_eq!(
        derivable(&g.table, &primaries),
        vec![g.at(Some(1), Some(1)), g.at(Some(2), Some(3))]
    );
}

// 2. The small-group rule in one dimension.
#[test]
fn one_dimension_small_group_rule() {
    let table = GridTable {
        dims: vec!["x".into()],
        cells: vec![
            cell(&[Some("A")], 3),
            cell(&[Some("B")], 4),
            cell(&[Some("C")], 50),
            cell(&[Some("D")], 60),
            cell(&[None], 117),
        ],
    };
    let got = suppress(&table, 10).unwrap();
    // A and B are primary; A + B = 7 < 10 is revealed by the total, so the
    // smallest other cell, C, is added.
    assert_eq!(got, vec![Some(P), Some(P), Some(S), None, None]);
    assert_safe(&table, 10, &got);
    // Gauss alone would have been content with {A, B}: neither is derivable.
    assert!(derivable(&table, &[true, true, false, false, false]).is_empty());
}

// 3. A single primary in a row with a total needs a partner in that row.
#[test]
fn single_primary_gets_a_complement_in_its_row() {
    let table = GridTable {
        dims: vec!["x".into()],
        cells: vec![
            cell(&[Some("A")], 2),
            cell(&[Some("B")], 20),
            cell(&[Some("C")], 30),
            cell(&[None], 52),
        ],
    };
    let got = suppress(&table, 5).unwrap();
    assert_eq!(got, vec![Some(P), Some(S), None, None]);
    assert_eq!(derivable(&table, &[true, false, false, false]), vec![0]);

    //        c1  c2  c3 | total
    //  r1     1  30  40 |  71
    //  r2    25  50  60 | 135
    //  r3    35  45  55 | 135
    let g = Grid::new(&[vec![1, 30, 40], vec![25, 50, 60], vec![35, 45, 55]]);
    let got = suppress(&g.table, 5).unwrap();
    assert_safe(&g.table, 5, &got);
    let in_row_1 = (1..=3)
        .filter(|&c| got[g.at(Some(1), Some(c))] == Some(S))
        .count();
    assert!(in_row_1 >= 1);
    // The cheapest rectangle through (r1,c1) that the greedy order leaves:
    // (r1,c2), (r3,c1), (r3,c2).
    let want = pattern_of(
        g.table.cells.len(),
        &[
            (g.at(Some(1), Some(1)), P),
            (g.at(Some(1), Some(2)), S),
            (g.at(Some(3), Some(1)), S),
            (g.at(Some(3), Some(2)), S),
        ],
    );
    assert_eq!(got, want);
}

// 4. Without margins nothing can be derived: primaries only.
#[test]
fn no_margins_means_primaries_only() {
    let table = GridTable {
        dims: vec!["a".into(), "b".into()],
        cells: vec![
            cell(&[Some("x"), Some("p")], 3),
            cell(&[Some("x"), Some("q")], 0),
            cell(&[Some("y"), Some("p")], 20),
            cell(&[Some("y"), Some("q")], 7),
        ],
    };
    assert_eq!(
        suppress(&table, 5).unwrap(),
        vec![Some(P), None, None, None]
    );
    assert_eq!(
        suppress(&table, 8).unwrap(),
        vec![Some(P), None, None, Some(P)]
    );
    assert!(derivable(&table, &[true, false, false, true]).is_empty());
}

// 5. Zeros are never suppressed; nothing small means nothing suppressed.
#[test]
fn zeros_are_published_and_large_tables_untouched() {
    let table = GridTable {
        dims: vec!["x".into()],
        cells: vec![
            cell(&[Some("A")], 0),
            cell(&[Some("B")], 3),
            cell(&[Some("C")], 20),
            cell(&[Some("D")], 25),
            cell(&[None], 48),
        ],
    };
    // B is primary; A = 0 is published, so C must go with B.
    assert_eq!(
        suppress(&table, 5).unwrap(),
        vec![None, Some(P), Some(S), None, None]
    );

    // The total equals the only non-zero cell: both are primary, the zero
    // stays published.
    let table = GridTable {
        dims: vec!["x".into()],
        cells: vec![
            cell(&[Some("A")], 0),
            cell(&[Some("B")], 3),
            cell(&[None], 3),
        ],
    };
    assert_eq!(suppress(&table, 5).unwrap(), vec![None, Some(P), Some(P)]);

    let g = Grid::new(&[vec![0, 12, 0], vec![30, 0, 15], vec![10, 11, 0]]);
    let got = suppress(&g.table, 10).unwrap();
    assert_eq!(got, vec![None; g.table.cells.len()]);

    let g = Grid::new(&[vec![0, 2, 0], vec![30, 0, 15], vec![10, 11, 0]]);
    let got = suppress(&g.table, 10).unwrap();
    assert_safe(&g.table, 10, &got);
}

// 6. Hierarchy: kecamatan totals over kelurahan, by the code-prefix rule.
#[test]
fn kecamatan_totals_over_kelurahan() {
    let table = GridTable {
        dims: vec!["wilayah".into()],
        cells: vec![
            cell(&[Some("61.71.01.1001")], 3),
            cell(&[Some("61.71.01.1002")], 40),
            cell(&[Some("61.71.01.1003")], 25),
            cell(&[Some("61.71.01")], 68),
            cell(&[Some("61.71.02.1001")], 30),
            cell(&[Some("61.71.02.1002")], 45),
            cell(&[Some("61.71.02")], 75),
            cell(&[None], 143),
        ],
    };
    // The kecamatan total makes the lone primary derivable ...
    let mut only_primary = vec![false; 8];
    only_primary[0] = true;
    assert_eq!(derivable(&table, &only_primary), vec![0]);
    // ... so a sibling kelurahan (the smallest) is suppressed with it.
    let got = suppress(&table, 10).unwrap();
    assert_eq!(
        got,
        vec![Some(P), None, Some(S), None, None, None, None, None]
    );
    assert_safe(&table, 10, &got);

    // Kecamatan x sex, with kecamatan and overall totals.
    let kel = [
        ("61.71.01.1001", [4, 30]),
        ("61.71.01.1002", [25, 26]),
        ("61.71.01.1003", [40, 2]),
        ("61.71.02.1001", [33, 35]),
        ("61.71.02.1002", [3, 50]),
    ];
    let mut cells = Vec::new();
    let mut kec = std::collections::BTreeMap::<&str, [u64; 2]>::new();
    let mut all = [0u64; 2];
    for (code, v) in kel {
        for (s, sex) in ["L", "P"].iter().enumerate() {
            cells.push(cell(&[Some(code), Some(*sex)], v[s]));
            kec.entry(&code[..8]).or_default()[s] += v[s];
            all[s] += v[s];
        }
        cells.push(cell(&[Some(code), None], v[0] + v[1]));
    }
    for (code, v) in &kec {
        for (s, sex) in ["L", "P"].iter().enumerate() {
            cells.push(cell(&[Some(code), Some(*sex)], v[s]));
        }
        cells.push(cell(&[Some(code), None], v[0] + v[1]));
    }
    for (s, sex) in ["L", "P"].iter().enumerate() {
        cells.push(cell(&[None, Some(sex)], all[s]));
    }
    cells.push(cell(&[None, None], all[0] + all[1]));
    let table = GridTable {
        dims: vec!["wilayah".into(), "jenis_kelamin".into()],
        cells,
    };
    let got = suppress(&table, 5).unwrap();
    assert_safe(&table, 5, &got);
    // Every kecamatan with a suppressed kelurahan cell has at least two.
    for kec_code in ["61.71.01", "61.71.02"] {
        let n = table
            .cells
            .iter()
            .zip(&got)
            .filter(|(c, s)| {
                s.is_some()
                    && c.coords[0]
                        .as_deref()
                        .is_some_and(|w| w.starts_with(&format!("{kec_code}.")))
            })
            .count();
        assert!(n >= 2, "{kec_code}: {n}");
    }
}

// 7. CSV round trip and errors.
#[test]
fn csv_round_trip_and_errors() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/suppress");
    let input = std::fs::read_to_string(format!("{dir}/penduduk.csv")).unwrap();
    let expected = std::fs::read_to_string(format!("{dir}/penduduk_k10_expected.csv")).unwrap();
    let dims = vec!["kecamatan".to_string(), "jenis_kelamin".to_string()];
    let (out, summary) = suppress_csv(&input, &dims, "jumlah", 10).unwrap();
    assert_eq!(out, expected);
    assert_eq!(
        summary,
        SuppressSummary {
            cells: 9,
            primary: 1,
            secondary: 3
        }
    );
    assert_eq!(
        summary.to_string(),
        "9 cells: 1 primary and 3 secondary suppressed, 5 published"
    );

    // Round trip: the published values in the output are the input's.
    let mut a = csv::Reader::from_reader(input.as_bytes());
    let mut b = csv::Reader::from_reader(out.as_bytes());
    for (x, y) in a.records().zip(b.records()) {
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(&x[0], &y[0]);
        assert_eq!(&x[1], &y[1]);
        if y[3].is_empty() {
            assert_eq!(&x[2], &y[2]);
        } else {
            assert_eq!(&y[2], "");
        }
    }

    // Empty fields work as margins too, and no small cell means no change.
    let (out, summary) = suppress_csv("a,n\nx,10\ny,20\n,30\n", &["a".into()], "n", 5).unwrap();
    assert_eq!(out, "a,n,suppression\nx,10,\ny,20,\n,30,\n");
    assert_eq!(summary.primary + summary.secondary, 0);

    let bad = input.replace("61.71.01,P,30", "61.71.01,P,3o");
    let err = suppress_csv(&bad, &dims, "jumlah", 10).unwrap_err();
    assert_eq!(
        err,
        SuppressError::BadValue {
            line: 3,
            column: "jumlah".into(),
            value: "3o".into()
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("line 3") && msg.contains("`3o`"), "{msg}");

    let err = suppress_csv(&input, &["desa".to_string()], "jumlah", 10).unwrap_err();
    assert!(matches!(&err, SuppressError::MissingColumn { column, .. } if column == "desa"));
    assert!(err.to_string().contains("`desa`"), "{err}");
    let err = suppress_csv(&input, &dims, "n", 10).unwrap_err();
    assert!(err.to_string().contains("missing column `n`"), "{err}");

    let dup = format!("{input}61.71.02,TOTAL,78\n");
    let err = suppress_csv(&dup, &dims, "jumlah", 10).unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 11: cell (kecamatan=61.71.02, jenis_kelamin=Total) already appears on line 7"
    );

    let inconsistent = input.replace("Total,P,68", "Total,P,69");
    let err = suppress_csv(&inconsistent, &dims, "jumlah", 10).unwrap_err();
    assert!(
        matches!(
            err,
            SuppressError::InconsistentRow {
                line: 9,
                value: 69,
                sum: 68,
                ..
            }
        ),
        "{err}"
    );
}

fn random_grid(rng: &mut Lcg, nr: usize, nc: usize, max: u64) -> Grid {
    let rows: Vec<Vec<u64>> = (0..nr)
        .map(|_| (0..nc).map(|_| rng.below(max)).collect())
        .collect();
    Grid::new(&rows)
}

// 8. Property-style: random small 2-D tables with margins.
#[test]
fn random_tables_are_always_safe() {
    let mut rng = Lcg(0x5eed_2024);
    let k = 5;
    let mut suppressed_total = 0;
    for _ in 0..200 {
        let nr = 2 + rng.below(5) as usize;
        let nc = 2 + rng.below(5) as usize;
        let max = [6, 10, 20][rng.below(3) as usize];
        let g = random_grid(&mut rng, nr, nc, max);
        let got = suppress(&g.table, k).unwrap();
        assert_safe(&g.table, k, &got);
        suppressed_total += got.iter().filter(|s| s.is_some()).count();
    }
    assert!(suppressed_total > 0);
}

// Also 3-D tables with all margins (not totally unimodular), and a
// hierarchy: the same invariants.
#[test]
fn random_three_dimensional_and_hierarchical_tables_are_safe() {
    let mut rng = Lcg(42);
    let k = 5;
    for _ in 0..40 {
        let n = [
            2 + rng.below(3) as usize,
            2 + rng.below(3) as usize,
            2 + rng.below(2) as usize,
        ];
        let mut inner = Vec::new();
        for a in 0..n[0] {
            for b in 0..n[1] {
                for c in 0..n[2] {
                    inner.push(([a, b, c], rng.below(12)));
                }
            }
        }
        let mut cells = Vec::new();
        // Every combination of "fixed or total" per dimension.
        for mask in 0..8u32 {
            let mut sums = std::collections::BTreeMap::<Vec<Option<usize>>, u64>::new();
            for (pos, v) in &inner {
                let key: Vec<Option<usize>> = (0..3)
                    .map(|d| (mask & (1 << d) == 0).then_some(pos[d]))
                    .collect();
                *sums.entry(key).or_default() += v;
            }
            for (key, v) in sums {
                cells.push(GridCell {
                    coords: key
                        .iter()
                        .enumerate()
                        .map(|(d, x)| x.map(|x| format!("{d}:{x}")))
                        .collect(),
                    value: v,
                });
            }
        }
        let table = GridTable {
            dims: vec!["a".into(), "b".into(), "c".into()],
            cells,
        };
        let got = suppress(&table, k).unwrap();
        assert_safe(&table, k, &got);
    }

    for _ in 0..40 {
        // Two kecamatan with 2..4 kelurahan each, by two categories.
        let mut cells = Vec::new();
        let mut all = [0u64; 2];
        for kec in 1..=2 {
            let mut kec_sum = [0u64; 2];
            for kel in 1..=(2 + rng.below(3)) {
                let code = format!("61.71.0{kec}.100{kel}");
                let v = [rng.below(15), rng.below(15)];
                for s in 0..2 {
                    cells.push(cell(&[Some(code.as_str()), Some(["L", "P"][s])], v[s]));
                    kec_sum[s] += v[s];
                }
                cells.push(cell(&[Some(code.as_str()), None], v[0] + v[1]));
            }
            let code = format!("61.71.0{kec}");
            for s in 0..2 {
                cells.push(cell(
                    &[Some(code.as_str()), Some(["L", "P"][s])],
                    kec_sum[s],
                ));
                all[s] += kec_sum[s];
            }
            cells.push(cell(&[Some(code.as_str()), None], kec_sum[0] + kec_sum[1]));
        }
        cells.push(cell(&[None, Some("L")], all[0]));
        cells.push(cell(&[None, Some("P")], all[1]));
        cells.push(cell(&[None, None], all[0] + all[1]));
        let table = GridTable {
            dims: vec!["wilayah".into(), "jk".into()],
            cells,
        };
        let got = suppress(&table, k).unwrap();
        assert_safe(&table, k, &got);
    }
}

// The 100 x 100 table with both margins (10,201 cells) is safe.
#[test]
fn hundred_by_hundred_is_safe() {
    let mut rng = Lcg(7);
    let g = random_grid(&mut rng, 100, 100, 40);
    let got = suppress(&g.table, 5).unwrap();
    assert_safe(&g.table, 5, &got);
}

#[test]
fn errors_for_malformed_tables() {
    let table = GridTable {
        dims: vec!["x".into()],
        cells: vec![cell(&[Some("A")], 3), cell(&[Some("A")], 4)],
    };
    assert!(matches!(
        suppress(&table, 5),
        Err(SuppressError::DuplicateCell {
            first: 0,
            second: 1,
            ..
        })
    ));
    let table = GridTable {
        dims: vec!["x".into()],
        cells: vec![cell(&[Some("A"), None], 3)],
    };
    assert!(matches!(
        suppress(&table, 5),
        Err(SuppressError::CoordinateCount { index: 0, .. })
    ));
    let table = GridTable {
        dims: vec!["x".into()],
        cells: vec![cell(&[Some("A")], 3), cell(&[None], 4)],
    };
    assert_eq!(
        suppress(&table, 5).unwrap_err().to_string(),
        "(x=Total) has value 4 but the inner cells it aggregates sum to 3"
    );
}

/// Timing: `cargo test --test suppress -- --ignored --nocapture`.
#[test]
#[ignore]
fn time_hundred_by_hundred() {
    for (seed, max) in [(7, 40), (8, 20), (9, 10), (10, 200), (11, 1000), (12, 5000)] {
        let mut rng = Lcg(seed);
        let g = random_grid(&mut rng, 100, 100, max);
        let t = std::time::Instant::now();
        let got = suppress(&g.table, 5).unwrap();
        let took = t.elapsed();
        let t2 = std::time::Instant::now();
        let d = derivable(&g.table, &flags(&got));
        let check = t2.elapsed();
        let p = got.iter().filter(|s| **s == Some(P)).count();
        let s = got.iter().filter(|s| **s == Some(S)).count();
        println!(
            "100x100 counts 0..{max}: {} cells, {p} primary, {s} secondary, suppress {took:?}, derivable {check:?} ({} derivable)",
            g.table.cells.len(),
            d.len()
        );
    }
}
