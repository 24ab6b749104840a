//! Primary and secondary (complementary) cell suppression for count tables
//! with margins, after Statistics Norway's Gaussian-elimination method
//! (`GaussSuppression`, Langsrud).
//!
//! # The linear model
//!
//! A table is a set of cells, each identified by one coordinate per
//! dimension; `None` means "all" (the margin over that dimension). Codes of
//! one dimension may also nest by the **prefix rule**: code `p` is the
//! parent of code `c` when `c` starts with `p` followed by `.` (the parent
//! is the longest such code present), so kecamatan `61.71.01` is the total
//! of kelurahan `61.71.01.1002`, and `None` is the total of the top-level
//! codes.
//!
//! The *inner* cells are the cells that aggregate no other cell of the
//! table. Every cell `c` is the sum of the inner cells it covers (all
//! coordinates equal, descendants, or under a `None`): its column `x_c` of
//! the 0/1 model matrix `X` (rows = inner cells). Publishing a set `Pub` of
//! cells reveals every linear combination of their columns, so a suppressed
//! cell `s` is **exactly derivable** iff `x_s` lies in the span of
//! `{x_c : c in Pub}`. [`derivable`] computes precisely that set.
//!
//! # Primary suppression
//!
//! A cell whose true count is in `1..k` is primary suppressed. Zero cells
//! are never suppressed (neither primary nor secondary): zeros stay
//! published as 0, exactly as in `GaussSuppression` without
//! `protectZeros`/`secondaryZeros`.
//!
//! # Secondary suppression: the Gaussian greedy pass
//!
//! Candidates (every non-zero, non-primary cell) are processed in
//! **publishing priority**: largest count first, ties going to the cell
//! that aggregates more inner cells (margins before inner cells), then the
//! earlier cell. Equivalently, the *suppression* priority is the reverse:
//! smallest count first, inner cells before margins, the later cell first.
//! This is `CandidatesDefault`'s order.
//!
//! Zero cells are published first. Then each candidate in turn is
//! published unless publishing it (together with everything published so
//! far) would make a protected cell derivable; such a candidate is made
//! secondary suppressed. This is the published algorithm: "candidates that
//! completely eliminate one or more primary suppressed cells are made
//! secondary suppressed". A secondary cell can never become derivable
//! later: if `x_c` entered the span, so would the primary cell it protects.
//!
//! The pass works on the *dual*: a basis `V` of the null space of the
//! published relations (the directions in which the inner cells can move
//! without changing any published value), starting from the identity.
//! Publishing cell `c` adds the constraint `x_c · v = 0`: with
//! `w = x_c^T V`, an empty `w` means `c` is already derivable (publishing
//! it changes nothing); otherwise a pivot vector `b` (the sparsest with
//! `w_b != 0`) is used to eliminate `c` from all others and is dropped. A
//! protected cell `s` stays non-derivable iff its row `x_s^T V` stays
//! non-zero, so publishing `c` reveals `s` exactly when `x_s^T V` is a
//! multiple of `w`, which is tested before committing. Protected margins are
//! carried as extra ("virtual") coordinates of the basis vectors, so the
//! same update maintains them. Everything is sparse (vectors are short
//! cycles of inner cells), so a 100 x 100 table with both margins runs in
//! milliseconds instead of the `O(n^3)` of dense elimination.
//!
//! # Exactness
//!
//! The greedy pass computes over the prime field `Z/(2^61 - 1)`. Modular
//! arithmetic has no rounding, and for the small integer coefficients of
//! table relations it agrees with rational arithmetic; to make the result
//! exact without assuming that, the final pattern is **verified over the
//! rationals** by [`derivable`], an independent fraction-free integer
//! (`i128`, gcd-normalised, overflow-checked) elimination. Should the check
//! find a derivable suppressed cell, the cheapest published candidate
//! whose suppression breaks that derivation is added, and the check is
//! repeated until no suppressed cell is derivable. (If exact arithmetic
//! overflowed, [`suppress`] fails with [`SuppressError::Overflow`] rather
//! than release an unverified pattern.)
//!
//! # The too-small-group rule
//!
//! Non-derivability alone still lets a reader learn the *sum* of the
//! suppressed cells of a single relation: with a published total, the
//! suppressed parts of that row, column or hierarchy line add up to the
//! total minus the published parts. So, for every relation
//! `total = sum of parts` whose total is published, when the suppressed
//! parts sum to a true value in `1..k`, more parts of that line are
//! suppressed (non-zero ones, smallest first in suppression priority) until
//! the suppressed sum is at least `k` or the line is exhausted. The added
//! cells are then protected like primaries and the Gaussian pass is re-run
//! (the protected set only grows, so this terminates), because a cell added
//! by this rule might itself be derivable. Sums spanning several relations
//! are not covered by this rule.
//!
//! Tables without margins (no `None` coordinates and no nesting codes)
//! have no relations, so nothing can be derived and only primary
//! suppression happens.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// A table with margins. Cells are identified by one coordinate per
/// dimension; `None` means "all" (the margin/total over that dimension).
/// Codes nest by the prefix rule described in the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridTable {
    /// Dimension names, in coordinate order.
    pub dims: Vec<String>,
    /// The cells, inner cells and margins alike.
    pub cells: Vec<GridCell>,
}

/// One cell: its coordinates (one per dimension) and its true count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridCell {
    /// One coordinate per dimension; `None` is the margin over that dimension.
    pub coords: Vec<Option<String>>,
    /// The true count.
    pub value: u64,
}

/// Why a cell is suppressed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Suppression {
    /// Its own count is in `1..k`.
    Primary,
    /// Suppressed to protect other cells.
    Secondary,
}

impl Suppression {
    /// The label used in CSV output: `primary` or `secondary`.
    pub fn as_str(self) -> &'static str {
        match self {
            Suppression::Primary => "primary",
            Suppression::Secondary => "secondary",
        }
    }
}

impl fmt::Display for Suppression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts of a [`suppress_csv`] run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct SuppressSummary {
    /// Cells in the table.
    pub cells: usize,
    /// Cells suppressed because their own count is in `1..k`.
    pub primary: usize,
    /// Cells suppressed to protect primary ones.
    pub secondary: usize,
}

impl fmt::Display for SuppressSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cells: {} primary and {} secondary suppressed, {} published",
            self.cells,
            self.primary,
            self.secondary,
            self.cells - self.primary - self.secondary
        )
    }
}

/// The name of the column [`suppress_csv`] appends: the same column the
/// released tables carry.
pub use super::SUPPRESSION_COLUMN;

/// Errors of [`suppress`] and [`suppress_csv`]: malformed input or a pattern
/// that cannot be made safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuppressError {
    /// A cell whose coordinate count differs from the number of dimensions.
    #[error("cell {index} has {found} coordinates but the table has {expected} dimensions")]
    CoordinateCount {
        /// Position of the cell in [`GridTable::cells`].
        index: usize,
        /// The number of dimensions of the table.
        expected: usize,
        /// The number of coordinates the cell has.
        found: usize,
    },
    /// Two cells with the same coordinates.
    #[error("cell {cell} appears twice (cells {first} and {second})")]
    DuplicateCell {
        /// The cell's coordinates as text: `(dim=code, …)`, `Total` for a
        /// margin.
        cell: String,
        /// Position of the first occurrence in [`GridTable::cells`].
        first: usize,
        /// Position of the second occurrence.
        second: usize,
    },
    /// A margin that is not the sum of the inner cells it aggregates.
    #[error("{cell} has value {value} but the inner cells it aggregates sum to {sum}")]
    Inconsistent {
        /// Position of the margin in [`GridTable::cells`].
        index: usize,
        /// The cell's coordinates as text: `(dim=code, …)`, `Total` for a
        /// margin.
        cell: String,
        /// The margin's count.
        value: u64,
        /// The sum of the inner cells it aggregates.
        sum: u128,
    },
    /// Exact arithmetic overflowed while checking what the pattern reveals.
    #[error("exact arithmetic overflowed while verifying the suppression pattern")]
    Overflow,
    /// A cell that stays derivable even with every candidate cell suppressed.
    #[error("cannot protect {cell}: it stays derivable with every candidate suppressed")]
    Unprotectable {
        /// The protected cell that stays derivable, as coordinates.
        cell: String,
    },
    /// The input is not valid CSV.
    #[error("CSV line {line}: {message}")]
    Csv {
        /// 1-based line of the CSV input (0 when unknown).
        line: u64,
        /// The CSV reader's error.
        message: String,
    },
    /// A requested dimension or value column is not in the header.
    #[error("missing column `{column}` (the header has: {available})")]
    MissingColumn {
        /// The requested column.
        column: String,
        /// The header's columns, comma-separated.
        available: String,
    },
    /// The same column was requested twice (as dimensions or as the value).
    #[error("column `{column}` is named more than once in the options")]
    RepeatedColumn {
        /// The column named twice.
        column: String,
    },
    /// The input already has the `suppression` column that would be appended.
    #[error("the input already has a column named `{column}`")]
    ColumnClash {
        /// The clashing name, [`SUPPRESSION_COLUMN`].
        column: String,
    },
    /// A value that is not a non-negative integer.
    #[error("line {line}: value `{value}` in column `{column}` is not a non-negative integer")]
    BadValue {
        /// 1-based line of the CSV input (header = line 1).
        line: u64,
        /// The value column.
        column: String,
        /// The field's text as found.
        value: String,
    },
    /// Two rows with the same cell coordinates.
    #[error("line {line}: cell {cell} already appears on line {first_line}")]
    DuplicateRow {
        /// 1-based line of the CSV input (header = line 1).
        line: u64,
        /// The line where the cell first appears.
        first_line: u64,
        /// The cell's coordinates as text: `(dim=code, …)`, `Total` for a
        /// margin.
        cell: String,
    },
    /// A margin row that is not the sum of the inner rows it aggregates.
    #[error("line {line}: {cell} has value {value} but the inner cells it aggregates sum to {sum}")]
    InconsistentRow {
        /// 1-based line of the CSV input (header = line 1).
        line: u64,
        /// The cell's coordinates as text: `(dim=code, …)`, `Total` for a
        /// margin.
        cell: String,
        /// The margin row's count.
        value: u64,
        /// The sum of the inner rows it aggregates.
        sum: u128,
    },
}

// ---------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------

/// Primary and secondary suppression of `table` for threshold `k`: one entry
/// per cell, in the table's order (`None` = published).
///
/// Errors when a cell has the wrong number of coordinates, two cells share
/// coordinates, or a total differs from the sum of the inner cells it
/// aggregates (the linear relations must hold for suppression to mean
/// anything).
pub fn suppress(table: &GridTable, k: u64) -> Result<Vec<Option<Suppression>>, SuppressError> {
    let nd = table.dims.len();
    for (index, cell) in table.cells.iter().enumerate() {
        if cell.coords.len() != nd {
            return Err(SuppressError::CoordinateCount {
                index,
                expected: nd,
                found: cell.coords.len(),
            });
        }
    }
    let model = Model::build(table);
    for (i, &c) in model.canonical.iter().enumerate() {
        if c != i {
            return Err(SuppressError::DuplicateCell {
                cell: describe(table, i),
                first: c,
                second: i,
            });
        }
    }
    let values: Vec<u64> = table.cells.iter().map(|c| c.value).collect();
    check_additive(table, &model, &values)?;

    let primary: Vec<bool> = values.iter().map(|&v| v >= 1 && v < k).collect();
    pattern(table, &model, &values, k, &primary)
}

/// Secondary suppression around a given set of withheld cells: the cells
/// in `primary` are withheld, and complementary cells are chosen so that
/// none of them is derivable from the published ones. The values (which
/// must be additive, as in [`suppress`]) only steer the choice of
/// complements. The service passes released values here, so the pattern
/// depends on nothing the release does not show.
pub fn suppress_around(
    table: &GridTable,
    k: u64,
    primary: &[bool],
) -> Result<Vec<Option<Suppression>>, SuppressError> {
    let model = Model::build(table);
    let values: Vec<u64> = table.cells.iter().map(|c| c.value).collect();
    check_additive(table, &model, &values)?;
    let primary: Vec<bool> = (0..values.len())
        .map(|i| primary.get(i).copied().unwrap_or(false))
        .collect();
    pattern(table, &model, &values, k, &primary)
}

/// Every total must equal the sum of the inner cells it aggregates, or
/// suppression means nothing.
fn check_additive(table: &GridTable, model: &Model, values: &[u64]) -> Result<(), SuppressError> {
    for (i, cover) in model.cover.iter().enumerate() {
        if model.inner_of[i].is_some() {
            continue;
        }
        let sum: u128 = cover
            .iter()
            .map(|&j| u128::from(values[model.inner_cells[j as usize]]))
            .sum();
        if sum != u128::from(values[i]) {
            return Err(SuppressError::Inconsistent {
                index: i,
                cell: describe(table, i),
                value: values[i],
                sum,
            });
        }
    }
    Ok(())
}

fn pattern(
    table: &GridTable,
    model: &Model,
    values: &[u64],
    k: u64,
    primary: &[bool],
) -> Result<Vec<Option<Suppression>>, SuppressError> {
    let forced: Vec<bool> = values
        .iter()
        .zip(primary)
        .map(|(&v, &p)| v == 0 && !p)
        .collect();
    let mut suppressed = gauss_with_small_groups(model, values, k, &forced, primary);
    repair(model, values, k, &forced, &mut suppressed).map_err(|e| match e {
        RepairError::Overflow => SuppressError::Overflow,
        RepairError::Unprotectable(i) => SuppressError::Unprotectable {
            cell: describe(table, i),
        },
    })?;

    Ok(suppressed
        .iter()
        .zip(primary)
        .map(|(&s, &p)| match (s, p) {
            (false, _) => None,
            (true, true) => Some(Suppression::Primary),
            (true, false) => Some(Suppression::Secondary),
        })
        .collect())
}

/// Indices of the suppressed cells (`suppressed[i] == true`) whose value is
/// exactly derivable, over the rationals, from the published cells (all
/// others). Empty for a safe pattern.
///
/// Depends only on the table's structure, not on its values. Coordinates
/// missing from a short `coords` count as `None`; entries missing from a
/// short `suppressed` count as published. Should exact `i128` arithmetic
/// overflow (not seen for table relations), every suppressed cell is
/// reported, the conservative answer.
pub fn derivable(table: &GridTable, suppressed: &[bool]) -> Vec<usize> {
    let mut flags = vec![false; table.cells.len()];
    for (f, &s) in flags.iter_mut().zip(suppressed) {
        *f = s;
    }
    let model = Model::build(table);
    match derivable_exact(&model, &flags) {
        Ok(d) => d,
        Err(Overflow) => (0..flags.len()).filter(|&i| flags[i]).collect(),
    }
}

/// `agregat suppress`: reads a CSV with a header, the `dims` columns and
/// the `value` column; a margin is an empty field or `Total`/`JUMLAH` (any
/// case). Returns the same CSV (every column kept, in order) with the value
/// emptied for suppressed cells and a `suppression` column appended
/// (empty, `primary` or `secondary`), and the counts.
///
/// Errors name the line and the value: a missing column, a value that is
/// not a non-negative integer, a duplicate cell, a total that is not the
/// sum of its parts.
pub fn suppress_csv(
    input: &str,
    dims: &[String],
    value: &str,
    k: u64,
) -> Result<(String, SuppressSummary), SuppressError> {
    suppress_csv_labelled(input, dims, value, k, true)
}

/// As [`suppress_csv`]; with `reasons` false every withheld cell is
/// labelled `withheld`, so a reader of the CSV cannot tell the primary
/// cells (true counts 1..k-1) from their complements (`agregat suppress`
/// without `--show-reasons`).
pub fn suppress_csv_labelled(
    input: &str,
    dims: &[String],
    value: &str,
    k: u64,
    reasons: bool,
) -> Result<(String, SuppressSummary), SuppressError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(input.as_bytes());
    let header = reader.headers().map_err(csv_error)?.clone();
    let names: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let h = if i == 0 {
                h.trim_start_matches('\u{feff}')
            } else {
                h
            };
            h.trim().to_string()
        })
        .collect();
    if names.iter().any(|h| h == SUPPRESSION_COLUMN) {
        return Err(SuppressError::ColumnClash {
            column: SUPPRESSION_COLUMN.to_string(),
        });
    }
    let find = |column: &str| {
        names
            .iter()
            .position(|h| h == column)
            .ok_or_else(|| SuppressError::MissingColumn {
                column: column.to_string(),
                available: names.join(", "),
            })
    };
    let mut wanted: Vec<&str> = Vec::new();
    for column in dims.iter().map(String::as_str).chain([value]) {
        if wanted.contains(&column) {
            return Err(SuppressError::RepeatedColumn {
                column: column.to_string(),
            });
        }
        wanted.push(column);
    }
    let dim_idx: Vec<usize> = dims.iter().map(|d| find(d)).collect::<Result<_, _>>()?;
    let value_idx = find(value)?;

    let mut records = Vec::new();
    let mut lines = Vec::new();
    let mut cells = Vec::new();
    let mut seen: HashMap<Vec<Option<String>>, u64> = HashMap::new();
    for result in reader.records() {
        let record = result.map_err(csv_error)?;
        let line = record.position().map_or(0, |p| p.line());
        let coords: Vec<Option<String>> = dim_idx
            .iter()
            .map(|&j| parse_coordinate(record.get(j).unwrap_or("")))
            .collect();
        let raw = record.get(value_idx).unwrap_or("");
        let v: u64 = raw.trim().parse().map_err(|_| SuppressError::BadValue {
            line,
            column: value.to_string(),
            value: raw.to_string(),
        })?;
        if let Some(&first_line) = seen.get(&coords) {
            return Err(SuppressError::DuplicateRow {
                line,
                first_line,
                cell: describe_coords(dims, &coords),
            });
        }
        seen.insert(coords.clone(), line);
        cells.push(GridCell { coords, value: v });
        records.push(record);
        lines.push(line);
    }
    let table = GridTable {
        dims: dims.to_vec(),
        cells,
    };
    let pattern = suppress(&table, k).map_err(|e| match e {
        SuppressError::Inconsistent {
            index,
            cell,
            value,
            sum,
        } => SuppressError::InconsistentRow {
            line: lines[index],
            cell,
            value,
            sum,
        },
        other => other,
    })?;

    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let mut out_header: Vec<&str> = header.iter().collect();
    out_header.push(SUPPRESSION_COLUMN);
    writer.write_record(&out_header).map_err(csv_error)?;
    let mut summary = SuppressSummary {
        cells: records.len(),
        ..SuppressSummary::default()
    };
    for (record, label) in records.iter().zip(&pattern) {
        let mut fields: Vec<&str> = record.iter().collect();
        match label {
            Some(Suppression::Primary) => summary.primary += 1,
            Some(Suppression::Secondary) => summary.secondary += 1,
            None => {}
        }
        if label.is_some() {
            fields[value_idx] = "";
        }
        fields.push(match label {
            Some(_) if !reasons => "withheld",
            Some(l) => l.as_str(),
            None => "",
        });
        writer.write_record(&fields).map_err(csv_error)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| csv_error(e.into_error().into()))?;
    let text = String::from_utf8(bytes).expect("CSV built from UTF-8 fields");
    Ok((text, summary))
}

fn parse_coordinate(field: &str) -> Option<String> {
    let t = field.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("total") || t.eq_ignore_ascii_case("jumlah") {
        None
    } else {
        Some(t.to_string())
    }
}

fn csv_error(e: csv::Error) -> SuppressError {
    SuppressError::Csv {
        line: e.position().map_or(0, |p| p.line()),
        message: e.to_string(),
    }
}

fn describe_coords(dims: &[String], coords: &[Option<String>]) -> String {
    let parts: Vec<String> = coords
        .iter()
        .enumerate()
        .map(|(d, c)| {
            let name = dims.get(d).map_or("?", String::as_str);
            format!("{name}={}", c.as_deref().unwrap_or("Total"))
        })
        .collect();
    format!("({})", parts.join(", "))
}

fn describe(table: &GridTable, i: usize) -> String {
    describe_coords(&table.dims, &table.cells[i].coords)
}

// ---------------------------------------------------------------------------
// The model: inner cells, covers, relations
// ---------------------------------------------------------------------------

const ALL: u32 = u32::MAX;

/// One linear relation: `total = sum of parts`, along one dimension.
struct Line {
    total: usize,
    parts: Vec<usize>,
}

struct Model {
    /// For each cell, the first cell with the same coordinates.
    canonical: Vec<usize>,
    /// For each cell, its inner coordinate if it is an inner cell.
    inner_of: Vec<Option<u32>>,
    /// For each cell, the sorted inner coordinates it aggregates.
    cover: Vec<Vec<u32>>,
    /// Inner coordinate -> cell.
    inner_cells: Vec<usize>,
    lines: Vec<Line>,
}

impl Model {
    fn build(table: &GridTable) -> Model {
        let nd = table.dims.len();
        let n = table.cells.len();

        // Intern the codes of each dimension.
        let mut ids: Vec<HashMap<&str, u32>> = vec![HashMap::new(); nd];
        let mut names: Vec<Vec<&str>> = vec![Vec::new(); nd];
        let keys: Vec<Vec<u32>> = table
            .cells
            .iter()
            .map(|cell| {
                (0..nd)
                    .map(|d| match cell.coords.get(d).and_then(|c| c.as_deref()) {
                        None => ALL,
                        Some(code) => *ids[d].entry(code).or_insert_with(|| {
                            names[d].push(code);
                            (names[d].len() - 1) as u32
                        }),
                    })
                    .collect()
            })
            .collect();

        // Prefix hierarchy: the parent is the longest code present that the
        // code starts with, followed by '.'.
        let mut parent: Vec<Vec<u32>> = Vec::with_capacity(nd);
        let mut children: Vec<Vec<Vec<u32>>> = Vec::with_capacity(nd);
        let mut top: Vec<Vec<u32>> = Vec::with_capacity(nd);
        for d in 0..nd {
            let mut par = vec![ALL; names[d].len()];
            let mut ch = vec![Vec::new(); names[d].len()];
            let mut tp = Vec::new();
            for (id, name) in names[d].iter().enumerate() {
                let p = name
                    .rmatch_indices('.')
                    .find_map(|(pos, _)| ids[d].get(&name[..pos]).copied());
                match p {
                    Some(p) => {
                        par[id] = p;
                        ch[p as usize].push(id as u32);
                    }
                    None => tp.push(id as u32),
                }
            }
            parent.push(par);
            children.push(ch);
            top.push(tp);
        }
        let chain = |d: usize, mut v: u32| {
            let mut out = vec![v];
            while v != ALL {
                v = parent[d][v as usize];
                out.push(v);
            }
            out
        };

        let mut key_map: HashMap<&[u32], usize> = HashMap::with_capacity(n);
        let canonical: Vec<usize> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| *key_map.entry(key.as_slice()).or_insert(i))
            .collect();

        // Every proper ancestor tuple of a cell that is present in the table
        // aggregates it.
        let mut aggregates_something = vec![false; n];
        let mut below: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut tuple = vec![0u32; nd];
        let mut idx = vec![0usize; nd];
        for i in (0..n).filter(|&i| canonical[i] == i) {
            let chains: Vec<Vec<u32>> = (0..nd).map(|d| chain(d, keys[i][d])).collect();
            idx.fill(0);
            'tuples: loop {
                let mut d = 0;
                loop {
                    if d == nd {
                        break 'tuples;
                    }
                    idx[d] += 1;
                    if idx[d] < chains[d].len() {
                        break;
                    }
                    idx[d] = 0;
                    d += 1;
                }
                for d in 0..nd {
                    tuple[d] = chains[d][idx[d]];
                }
                if let Some(&m) = key_map.get(tuple.as_slice()) {
                    aggregates_something[m] = true;
                    below[m].push(i);
                }
            }
        }

        let mut inner_of: Vec<Option<u32>> = vec![None; n];
        let mut inner_cells = Vec::new();
        for i in 0..n {
            if canonical[i] == i && !aggregates_something[i] {
                inner_of[i] = Some(inner_cells.len() as u32);
                inner_cells.push(i);
            }
        }
        for i in 0..n {
            inner_of[i] = inner_of[canonical[i]];
        }
        let mut cover: Vec<Vec<u32>> = vec![Vec::new(); n];
        for i in 0..n {
            if canonical[i] != i {
                continue;
            }
            cover[i] = match inner_of[i] {
                Some(c) => vec![c],
                None => {
                    let mut v: Vec<u32> = below[i].iter().filter_map(|&j| inner_of[j]).collect();
                    v.sort_unstable();
                    v.dedup();
                    v
                }
            };
        }
        for i in 0..n {
            if canonical[i] != i {
                cover[i] = cover[canonical[i]].clone();
            }
        }

        // Relations: a total and its parts one step down one dimension.
        let mut lines = Vec::new();
        for m in (0..n).filter(|&m| canonical[m] == m && inner_of[m].is_none()) {
            for d in 0..nd {
                let v = keys[m][d];
                let kids = if v == ALL {
                    &top[d]
                } else {
                    &children[d][v as usize]
                };
                if kids.is_empty() {
                    continue;
                }
                tuple.copy_from_slice(&keys[m]);
                let mut parts = Vec::new();
                for &kid in kids {
                    tuple[d] = kid;
                    if let Some(&p) = key_map.get(tuple.as_slice()) {
                        parts.push(p);
                    }
                }
                if !parts.is_empty() {
                    lines.push(Line { total: m, parts });
                }
            }
        }

        Model {
            canonical,
            inner_of,
            cover,
            inner_cells,
            lines,
        }
    }

    fn n_inner(&self) -> usize {
        self.inner_cells.len()
    }

    /// Suppression priority: smaller sorts first = suppressed first.
    fn suppression_key(&self, values: &[u64], i: usize) -> (u64, usize, Reverse<usize>) {
        (values[i], self.cover[i].len(), Reverse(i))
    }
}

// ---------------------------------------------------------------------------
// The Gaussian greedy pass and the small-group rule
// ---------------------------------------------------------------------------

fn gauss_with_small_groups(
    model: &Model,
    values: &[u64],
    k: u64,
    forced: &[bool],
    primary: &[bool],
) -> Vec<bool> {
    let mut protected = primary.to_vec();
    loop {
        let mut suppressed = gauss_pass(model, values, forced, &protected);
        if !small_groups(model, values, k, forced, &mut suppressed) {
            return suppressed;
        }
        // The protected set strictly grows, so this terminates.
        protected = suppressed;
    }
}

/// One greedy pass: publishes zeros, then candidates in publishing priority
/// unless that would make a protected cell derivable. Returns the
/// suppressed cells (protected plus secondary).
fn gauss_pass(model: &Model, values: &[u64], forced: &[bool], protected: &[bool]) -> Vec<bool> {
    let n = values.len();
    let n_inner = model.n_inner();
    let virtual_cells: Vec<usize> = (0..n)
        .filter(|&i| protected[i] && model.inner_of[i].is_none())
        .collect();
    let mut watched = vec![false; n_inner + virtual_cells.len()];
    for i in (0..n).filter(|&i| protected[i]) {
        if let Some(c) = model.inner_of[i] {
            watched[c as usize] = true;
        }
    }
    watched[n_inner..].fill(true);
    let covers: Vec<&[u32]> = virtual_cells
        .iter()
        .map(|&m| model.cover[m].as_slice())
        .collect();
    let mut dual = ModDual::new(n_inner, &covers);

    let mut zeros: Vec<usize> = (0..n).filter(|&i| forced[i]).collect();
    zeros.sort_by_key(|&i| (model.cover[i].len(), i));
    for i in zeros {
        let w = dual.sensitivity(&model.cover[i]);
        if !w.is_empty() {
            let b = dual.pivot(&w);
            dual.eliminate(&w, b);
        }
    }

    let mut order: Vec<usize> = (0..n).filter(|&i| !forced[i] && !protected[i]).collect();
    order.sort_by_key(|&i| Reverse(model.suppression_key(values, i)));
    let mut suppressed = protected.to_vec();
    for c in order {
        let w = dual.sensitivity(&model.cover[c]);
        if w.is_empty() {
            continue; // already derivable: publishing it reveals nothing new
        }
        let b = dual.pivot(&w);
        if dual.would_reveal(&w, b, &watched) {
            suppressed[c] = true;
        } else {
            dual.eliminate(&w, b);
        }
    }
    suppressed
}

/// Applies the too-small-group rule once over all relations; returns
/// whether anything was added.
fn small_groups(
    model: &Model,
    values: &[u64],
    k: u64,
    forced: &[bool],
    suppressed: &mut [bool],
) -> bool {
    let mut added = false;
    for line in &model.lines {
        if suppressed[line.total] {
            continue;
        }
        let parts_sum: u128 = line.parts.iter().map(|&p| u128::from(values[p])).sum();
        if parts_sum != u128::from(values[line.total]) {
            continue; // not a complete relation (sparse table)
        }
        let mut total: u128 = line
            .parts
            .iter()
            .filter(|&&p| suppressed[p])
            .map(|&p| u128::from(values[p]))
            .sum();
        if total == 0 || total >= u128::from(k) {
            continue;
        }
        let mut extra: Vec<usize> = line
            .parts
            .iter()
            .copied()
            .filter(|&p| !suppressed[p] && !forced[p])
            .collect();
        extra.sort_by_key(|&p| model.suppression_key(values, p));
        for p in extra {
            suppressed[p] = true;
            added = true;
            total += u128::from(values[p]);
            if total >= u128::from(k) {
                break;
            }
        }
    }
    added
}

enum RepairError {
    Overflow,
    Unprotectable(usize),
}

/// Exact verification, and repair if the modular pass was ever wrong: while
/// some suppressed cell is derivable over the rationals, suppress the
/// cheapest published candidate that breaks its derivation (or, if no
/// single one does, the cheapest one overlapping it), then re-apply the
/// small-group rule.
fn repair(
    model: &Model,
    values: &[u64],
    k: u64,
    forced: &[bool],
    suppressed: &mut [bool],
) -> Result<(), RepairError> {
    loop {
        let bad = derivable_exact(model, suppressed).map_err(|Overflow| RepairError::Overflow)?;
        let Some(&target) = bad.first() else {
            return Ok(());
        };
        let mut candidates: Vec<usize> = (0..values.len())
            .filter(|&c| !suppressed[c] && !forced[c])
            .collect();
        candidates.sort_by_key(|&c| model.suppression_key(values, c));
        let mut choice = None;
        for &c in &candidates {
            suppressed[c] = true;
            let still =
                derivable_exact(model, suppressed).map_err(|Overflow| RepairError::Overflow)?;
            suppressed[c] = false;
            if !still.contains(&target) {
                choice = Some(c);
                break;
            }
        }
        let choice = choice.or_else(|| {
            let t = &model.cover[target];
            candidates
                .iter()
                .copied()
                .find(|&c| model.cover[c].iter().any(|x| t.binary_search(x).is_ok()))
                .or_else(|| candidates.first().copied())
        });
        match choice {
            Some(c) => suppressed[c] = true,
            None => return Err(RepairError::Unprotectable(target)),
        }
        while small_groups(model, values, k, forced, suppressed) {}
    }
}

// ---------------------------------------------------------------------------
// Sparse null-space basis over Z/(2^61 - 1)
// ---------------------------------------------------------------------------

#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

const P: u64 = (1 << 61) - 1;

fn mmul(a: u64, b: u64) -> u64 {
    let x = u128::from(a) * u128::from(b);
    let s = (x as u64 & P) + (x >> 61) as u64;
    if s >= P { s - P } else { s }
}

fn madd(a: u64, b: u64) -> u64 {
    let s = a + b;
    if s >= P { s - P } else { s }
}

fn mneg(a: u64) -> u64 {
    if a == 0 { 0 } else { P - a }
}

fn minv(a: u64) -> u64 {
    // Fermat: a^(P-2).
    let (mut base, mut exp, mut acc) = (a, P - 2, 1);
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mmul(acc, base);
        }
        base = mmul(base, base);
        exp >>= 1;
    }
    acc
}

/// A basis of the null space of the published relations. Coordinates
/// `0..n_inner` are the inner cells; further ("virtual") coordinates hold
/// `x_m · v` for watched margins `m`. `cols[v]` is basis vector `v` (sorted
/// by coordinate), `rows[x]` its transpose.
struct ModDual {
    cols: Vec<Vec<(u32, u64)>>,
    rows: Vec<IdMap<u64>>,
    buf: Vec<(u32, u64)>,
    acc: Vec<u64>,
    seen: Vec<bool>,
    touched: Vec<u32>,
}

impl ModDual {
    fn new(n_inner: usize, virtual_covers: &[&[u32]]) -> ModDual {
        let mut cols: Vec<Vec<(u32, u64)>> = (0..n_inner).map(|i| vec![(i as u32, 1)]).collect();
        let mut rows: Vec<IdMap<u64>> = (0..n_inner)
            .map(|i| {
                let mut m = IdMap::default();
                m.insert(i as u32, 1);
                m
            })
            .collect();
        for (v, cover) in virtual_covers.iter().enumerate() {
            let coord = (n_inner + v) as u32;
            let mut row = IdMap::default();
            for &i in cover.iter() {
                cols[i as usize].push((coord, 1));
                row.insert(i, 1);
            }
            rows.push(row);
        }
        ModDual {
            cols,
            rows,
            buf: Vec::new(),
            acc: vec![0; n_inner],
            seen: vec![false; n_inner],
            touched: Vec::new(),
        }
    }

    /// `w = x^T V` for a cell covering `cover`: its non-zero entries.
    fn sensitivity(&mut self, cover: &[u32]) -> Vec<(u32, u64)> {
        if let [c] = cover {
            return self.rows[*c as usize]
                .iter()
                .map(|(&u, &v)| (u, v))
                .collect();
        }
        let ModDual {
            rows,
            acc,
            seen,
            touched,
            ..
        } = self;
        for &c in cover {
            for (&u, &v) in &rows[c as usize] {
                let u = u as usize;
                if seen[u] {
                    acc[u] = madd(acc[u], v);
                } else {
                    seen[u] = true;
                    acc[u] = v;
                    touched.push(u as u32);
                }
            }
        }
        let mut w = Vec::with_capacity(touched.len());
        for &u in touched.iter() {
            seen[u as usize] = false;
            if acc[u as usize] != 0 {
                w.push((u, acc[u as usize]));
            }
        }
        touched.clear();
        w
    }

    /// Index in `w` of the sparsest basis vector (ties: lowest id).
    fn pivot(&self, w: &[(u32, u64)]) -> usize {
        (0..w.len())
            .min_by_key(|&j| (self.cols[w[j].0 as usize].len(), w[j].0))
            .expect("non-empty sensitivity")
    }

    /// Would adding the constraint `w` zero the row of a watched coordinate?
    /// Only coordinates of the pivot vector can be affected; a row becomes
    /// zero iff it is a multiple of `w`.
    fn would_reveal(&self, w: &[(u32, u64)], b: usize, watched: &[bool]) -> bool {
        let (bv, wb) = w[b];
        let inv = minv(wb);
        self.cols[bv as usize].iter().any(|&(s, sb)| {
            if !watched[s as usize] {
                return false;
            }
            let row = &self.rows[s as usize];
            if row.len() != w.len() {
                return false;
            }
            let alpha = mmul(sb, inv);
            w.iter()
                .all(|&(u, wu)| row.get(&u) == Some(&mmul(alpha, wu)))
        })
    }

    /// Adds the constraint `w`: eliminates pivot vector `w[b]` from the
    /// others and drops it.
    fn eliminate(&mut self, w: &[(u32, u64)], b: usize) {
        let (bv, wb) = w[b];
        let inv = minv(wb);
        let bcol = std::mem::take(&mut self.cols[bv as usize]);
        for &(u, wu) in w {
            if u == bv {
                continue;
            }
            let f = mmul(wu, inv);
            let ucol = std::mem::take(&mut self.cols[u as usize]);
            let mut out = std::mem::take(&mut self.buf);
            out.clear();
            let (mut i, mut j) = (0, 0);
            while i < ucol.len() || j < bcol.len() {
                match (ucol.get(i), bcol.get(j)) {
                    (Some(&(cu, vu)), Some(&(cb, vb))) if cu == cb => {
                        let nv = madd(vu, mneg(mmul(f, vb)));
                        if nv == 0 {
                            self.rows[cu as usize].remove(&u);
                        } else {
                            self.rows[cu as usize].insert(u, nv);
                            out.push((cu, nv));
                        }
                        i += 1;
                        j += 1;
                    }
                    (Some(&(cu, vu)), Some(&(cb, _))) if cu < cb => {
                        out.push((cu, vu));
                        i += 1;
                    }
                    (Some(&(cu, vu)), None) => {
                        out.push((cu, vu));
                        i += 1;
                    }
                    (_, Some(&(cb, vb))) => {
                        let nv = mneg(mmul(f, vb));
                        self.rows[cb as usize].insert(u, nv);
                        out.push((cb, nv));
                        j += 1;
                    }
                    (None, None) => unreachable!(),
                }
            }
            self.cols[u as usize] = out;
            self.buf = ucol;
        }
        for &(coord, _) in &bcol {
            self.rows[coord as usize].remove(&bv);
        }
    }
}

// ---------------------------------------------------------------------------
// Exact verification: fraction-free integer null space
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Overflow;

fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Exact (rational) derivability. Published inner cells are eliminated
/// first (they just drop their coordinate), then the published totals,
/// restricted to the suppressed inner cells, are added as constraints on an
/// integer null-space basis kept primitive (gcd 1) with checked `i128`.
fn derivable_exact(model: &Model, suppressed: &[bool]) -> Result<Vec<usize>, Overflow> {
    let n = suppressed.len();
    let n_inner = model.n_inner();
    let mut published_inner = vec![false; n_inner];
    for (&inner, &s) in model.inner_of.iter().zip(suppressed) {
        if let (Some(c), false) = (inner, s) {
            published_inner[c as usize] = true;
        }
    }
    // Local coordinates: the unpublished inner cells.
    let mut local = vec![u32::MAX; n_inner];
    let mut n_local = 0u32;
    for c in 0..n_inner {
        if !published_inner[c] {
            local[c] = n_local;
            n_local += 1;
        }
    }
    let restrict = |cover: &[u32]| -> Vec<u32> {
        cover
            .iter()
            .filter_map(|&c| (local[c as usize] != u32::MAX).then_some(local[c as usize]))
            .collect()
    };
    let n_local = n_local as usize;
    let mut cols: Vec<Vec<(u32, i128)>> = (0..n_local).map(|i| vec![(i as u32, 1)]).collect();
    let mut rows: Vec<IdMap<i128>> = (0..n_local)
        .map(|i| {
            let mut m = IdMap::default();
            m.insert(i as u32, 1);
            m
        })
        .collect();
    let mut virtual_of = vec![usize::MAX; n];
    for i in (0..n).filter(|&i| suppressed[i] && model.inner_of[i].is_none()) {
        let coord = rows.len();
        virtual_of[i] = coord;
        let mut row = IdMap::default();
        for x in restrict(&model.cover[i]) {
            cols[x as usize].push((coord as u32, 1));
            row.insert(x, 1);
        }
        rows.push(row);
    }

    let mut totals: Vec<(usize, Vec<u32>)> = (0..n)
        .filter(|&i| !suppressed[i] && model.inner_of[i].is_none())
        .map(|i| (i, restrict(&model.cover[i])))
        .filter(|(_, r)| !r.is_empty())
        .collect();
    totals.sort_by_key(|(i, r)| (r.len(), *i));

    let mut acc = vec![0i128; n_local];
    let mut seen = vec![false; n_local];
    let mut touched: Vec<u32> = Vec::new();
    for (_, cover) in &totals {
        for &x in cover {
            for (&u, &v) in &rows[x as usize] {
                let u = u as usize;
                if seen[u] {
                    acc[u] = acc[u].checked_add(v).ok_or(Overflow)?;
                } else {
                    seen[u] = true;
                    acc[u] = v;
                    touched.push(u as u32);
                }
            }
        }
        let mut w: Vec<(u32, i128)> = Vec::with_capacity(touched.len());
        for &u in &touched {
            seen[u as usize] = false;
            if acc[u as usize] != 0 {
                w.push((u, acc[u as usize]));
            }
        }
        touched.clear();
        if w.is_empty() {
            continue;
        }
        let (bv, wb) = *w
            .iter()
            .min_by_key(|&&(u, _)| (cols[u as usize].len(), u))
            .expect("non-empty");
        let bcol = std::mem::take(&mut cols[bv as usize]);
        for &(u, wu) in &w {
            if u == bv {
                continue;
            }
            // u <- (wb * u - wu * b) / gcd
            let ucol = std::mem::take(&mut cols[u as usize]);
            let mut out: Vec<(u32, i128)> = Vec::with_capacity(ucol.len() + bcol.len());
            let (mut i, mut j) = (0, 0);
            while i < ucol.len() || j < bcol.len() {
                let (coord, val) = match (ucol.get(i), bcol.get(j)) {
                    (Some(&(cu, vu)), Some(&(cb, vb))) if cu == cb => {
                        i += 1;
                        j += 1;
                        let a = wb.checked_mul(vu).ok_or(Overflow)?;
                        let b = wu.checked_mul(vb).ok_or(Overflow)?;
                        (cu, a.checked_sub(b).ok_or(Overflow)?)
                    }
                    (Some(&(cu, vu)), Some(&(cb, _))) if cu < cb => {
                        i += 1;
                        (cu, wb.checked_mul(vu).ok_or(Overflow)?)
                    }
                    (Some(&(cu, vu)), None) => {
                        i += 1;
                        (cu, wb.checked_mul(vu).ok_or(Overflow)?)
                    }
                    (_, Some(&(cb, vb))) => {
                        j += 1;
                        let b = wu.checked_mul(vb).ok_or(Overflow)?;
                        (cb, b.checked_neg().ok_or(Overflow)?)
                    }
                    (None, None) => unreachable!(),
                };
                if val != 0 {
                    out.push((coord, val));
                }
            }
            let g = out.iter().fold(0, |g, &(_, v)| gcd(g, v));
            if g > 1 {
                for e in &mut out {
                    e.1 /= g;
                }
            }
            for &(coord, _) in &ucol {
                rows[coord as usize].remove(&u);
            }
            for &(coord, v) in &out {
                rows[coord as usize].insert(u, v);
            }
            cols[u as usize] = out;
        }
        for &(coord, _) in &bcol {
            rows[coord as usize].remove(&bv);
        }
    }

    Ok((0..n)
        .filter(|&i| suppressed[i])
        .filter(|&i| match model.inner_of[i] {
            Some(c) => {
                let l = local[c as usize];
                l == u32::MAX || rows[l as usize].is_empty()
            }
            None => rows[virtual_of[i]].is_empty(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: &[&[u64]]) -> GridTable {
        // Inner cells plus row totals, column totals and the grand total.
        let mut cells = Vec::new();
        let c = |r: Option<usize>, k: Option<usize>, value| GridCell {
            coords: vec![r.map(|r| format!("r{r}")), k.map(|k| format!("c{k}"))],
            value,
        };
        let nc = rows[0].len();
        for (r, row) in rows.iter().enumerate() {
            for (k, &v) in row.iter().enumerate() {
                cells.push(c(Some(r), Some(k), v));
            }
            cells.push(c(Some(r), None, row.iter().sum()));
        }
        for k in 0..nc {
            cells.push(c(None, Some(k), rows.iter().map(|r| r[k]).sum()));
        }
        cells.push(c(None, None, rows.iter().flat_map(|r| r.iter()).sum()));
        GridTable {
            dims: vec!["r".into(), "c".into()],
            cells,
        }
    }

    #[test]
    fn repair_makes_an_unsafe_pattern_safe() {
        let table = grid(&[&[2, 8, 10], &[9, 7, 3], &[12, 11, 20]]);
        let model = Model::build(&table);
        let values: Vec<u64> = table.cells.iter().map(|c| c.value).collect();
        let forced = vec![false; values.len()];
        // Only the two primaries: both derivable from the margins.
        let mut s: Vec<bool> = values.iter().map(|&v| v < 5).collect();
        assert_eq!(derivable_exact(&model, &s).unwrap().len(), 2);
        assert!(repair(&model, &values, 5, &forced, &mut s).is_ok());
        assert!(derivable_exact(&model, &s).unwrap().is_empty());
    }

    #[test]
    fn modular_helpers() {
        for a in [1u64, 2, 3, 12345, P - 1] {
            assert_eq!(mmul(a, minv(a)), 1);
            assert_eq!(madd(a, mneg(a)), 0);
        }
    }
}
