//! Perturbation tables (ptables) for the cell-key method.
//!
//! A ptable says, for a true count `n` and a cell key `k` (the sum of the
//! record keys of the cell's records, reduced to `0..keys`), which
//! perturbation `v` is added before the count is published: the published
//! count is `n + v`. This is the ABS TableBuilder / ONS Cantabular scheme:
//! the same records always give the same cell key, hence the same published
//! value, however the query is phrased.
//!
//! # Rows, lookup and the pcv wrap rule
//!
//! A table holds one row per cell value `0..=max_value`; each row holds one
//! perturbation per key `0..keys`. A true count `n` is looked up in row
//! `pcv(n)` (the "perturbation cell value", ONS terminology):
//!
//! ```text
//! pcv(n) = n                                   if n <= max
//! pcv(n) = ((n - 1) mod W) + (max - W + 1)     if n >  max
//! W      = max(1, floor((max + 1) / 3))        the wrap width
//! ```
//!
//! Counts above `max` therefore reuse the top `W` rows (`max-W+1..=max`),
//! cycling through them. The choice `W = floor((max + 1) / 3)` reproduces
//! ONS practice exactly: ONS tables have rows up to 750 and counts above 750
//! reuse rows 501..=750 (`W = 250`, `pcv = ((n-1) mod 250) + 501`). The
//! perturbation read from row `pcv(n)` is applied to `n` itself, never to
//! `pcv(n)`.
//!
//! `perturb` keeps 0 at 0 whatever row 0 says, and never returns a value in
//! `1..=js`: as a last safety net, a result in that range (which no table
//! passing [`PTable::check`] can produce) is published as 0.
//!
//! # CSV format
//!
//! The ONS/Cantabular layout, one header line then data lines:
//!
//! ```text
//! cell_value,cell_key,perturbation
//! 0,0-255,0
//! 1,0-170,-1
//! 1,171-255,2
//! ```
//!
//! `cell_key` is a single key (`7`) or an inclusive range (`0-31`). The key
//! range of the table is `0..=(largest key mentioned)`; rows run
//! `0..=(largest cell_value mentioned)`, `max_value >= 1`. Every
//! `(cell_value, key)` pair must be covered exactly once; lines may come in
//! any order. Blank lines are ignored, fields are trimmed, a UTF-8 BOM and
//! surrounding double quotes are tolerated. `cell_value + perturbation` must
//! not be negative. Every error names the CSV line (1-based, header = line 1)
//! and says how to fix it. [`PTable::to_csv`] writes the same format,
//! compacted: rows in increasing cell value, runs of equal perturbation over
//! consecutive keys as one range line, `\n` line ends.
//!
//! [`PTable::sha256`] is the SHA-256 of the text the table was loaded from,
//! or of `to_csv()` for generated/built-in tables, so it identifies the
//! exact file an operator used. [`PTable::canonical_sha256`] is always the
//! SHA-256 of `to_csv()`, so two files with the same content but different
//! layout share it.
//!
//! # Generation (maximum entropy, as the R `ptable` package)
//!
//! [`PTable::generate`] follows Enderle, Giessing and Tent (R package
//! `ptable`). For each cell value `i >= 1` the allowed perturbations are
//!
//! ```text
//! S(i) = { v in -D..=D : i + v >= 0 and i + v not in 1..=js }
//! ```
//!
//! (row 0 is all zeros). The row distribution maximises entropy subject to
//! `E[v] = 0` and `Var[v] = V_i`, so `p(v) ∝ exp(λ1·v + λ2·v²)` on `S(i)`;
//! `λ1, λ2` are found by damped Newton's method on the convex dual
//! `log Σ exp(λ1·v + λ2·(v² - V_i))` (backtracking line search, gradient
//! below 1e-13 in units scaled by `max |v|`).
//!
//! With mean 0 the variance on `S(i)` can only lie in `[Vmin_i, Vmax_i]`:
//! `Vmin_i = 0` if `0 ∈ S(i)`, otherwise `a·b` for the allowed values `-a < 0
//! < b` closest to 0 (rows `1..=js`, where `v = 0` would publish a blocked
//! count: `Vmin_i = i·(js+1-i)`); `Vmax_i = a'·b'` for the extreme values
//! `-a'` and `b'` of `S(i)`. The row target is `V_i = clamp(V, Vmin_i,
//! Vmax_i)`: unbiasedness wins over the variance target. When `V > Vmax_i`
//! (truncated support near 0) the variance is reduced, as the `ptable`
//! package does; when `V < Vmin_i` it is raised. At a bound (within 1e-9 of
//! the feasible interval's width) the only feasible distribution is used
//! directly: the two-point distribution on `-a, b` (or on the extremes), or
//! the point mass at 0. `js <= D` is required, otherwise a count of 1 has no
//! unbiased option.
//!
//! Rows `i >= js + D + 1` have the full support `-D..=D` and are identical.
//! The default `max_value` is `2·(js + D + 1)`, so the wrap rows (the top
//! `W`) all lie in that identical region; an explicit `max_cell_value` must
//! satisfy the same condition ([`PTableError::MaxValueTooSmall`] otherwise).
//!
//! **Discretisation.** Keys are assigned in increasing order of `v` (key 0
//! gets the most negative perturbation), like the transition matrix of the
//! `ptable` package: the cumulative boundaries `x_k = keys·F(v_k)` are
//! rounded to `floor(x_k)` or `ceil(x_k)` — so each key count is within one
//! key of its exact share and the counts always sum to `keys`. Among these
//! roundings the generator picks the one with the smallest
//! `|Σ_keys v|` (exact unbiasedness whenever the integers allow it), ties
//! broken by the smallest total rounding distance `Σ|B_k - x_k|` (without
//! the bias criterion that is plain nearest rounding of the cumulative
//! probabilities); a small dynamic programme over boundaries finds it.
//! Rows with full support come out exactly unbiased (`Σ_keys v = 0`).
//!
//! # `check` tolerances
//!
//! With `D`, `js`, `V`, `keys` from the expected parameters (or the table's
//! own, see [`PTable::params`]), [`PTable::check`] reports:
//!
//! - table shape: every row has `keys` entries; `keys`/`max_value` equal the
//!   expected ones when given;
//! - row 0 not all zeros;
//! - `|v| > D`; `n + v` in `1..=js`; `n + v < 0`;
//! - bias: `|Σ_keys v| > js + 1`, i.e. `|mean| > (js + 1) / keys`. Choosing
//!   boundaries one by one so the running bias stays nearest 0 already gives
//!   `|Σ v| <= floor(g/2)`, with `g <= js + 1` the widest gap in `S(i)`, so
//!   the optimal rounding does at least as well (unit tests verify the
//!   tolerance over a grid of D, js, V and keys); full-support rows reach 0;
//! - variance (only for generated tables or when expected parameters are
//!   given): `|Var_keys - V_i| > 2·D²/keys + ((js+1)/keys)² + 1e-6`, with
//!   `V_i` the clamped row target above. Rounding each cumulative boundary
//!   by less than one key moves `E[v²]` by at most `Σ|v_k² - v_{k-1}²|/keys
//!   <= 2·D²/keys`, and the mean term adds at most `((js+1)/keys)²`;
//! - when parameters are given, a wrap region starting below `js + D + 1`;
//! - rows in the wrap region that publish 0: counts above `max_value` that
//!   wrap onto them would be published as `n - pcv`.
//!
//! # The ONS 10-5 table
//!
//! [`ons_10_5`] is ONS's open test table: it is not noise but a rounding
//! rule. Counts `1..=9` are published as 0; counts `>= 10` are rounded to
//! the nearest multiple of 5 (`r = n mod 5`: `v = -r` if `r <= 2`, else
//! `5 - r`; 5 is odd so there are no ties). It has 256 keys, all equal per
//! row, and rows `0..=30`: `W = 10` is a multiple of 5 and the wrap rows
//! 21..=30 are above 10, so `pcv(n) ≡ n (mod 5)` and the rule holds for
//! every count. Being deliberately biased, it fails the bias check.

use std::fmt;

use sha2::{Digest, Sha256};

/// The CSV header line.
pub const CSV_HEADER: &str = "cell_value,cell_key,perturbation";
/// Largest key range accepted (`keys`).
pub const MAX_KEYS: u32 = 65_536;
/// Largest `max_value` accepted.
pub const MAX_CELL_VALUE: u32 = 99_999;
/// Largest number of entries (`(max_value + 1) * keys`) accepted.
pub const MAX_ENTRIES: u64 = 1 << 22;
/// Largest `D` accepted by [`PTable::generate`].
pub const MAX_GENERATED_PERTURBATION: u32 = 100;

/// Parameters of a generated ptable (or those derived from a loaded one).
#[derive(Debug, Clone, PartialEq)]
pub struct PTableParams {
    /// `D`: largest absolute perturbation.
    pub max_perturbation: u32,
    /// `V`: target variance of the perturbation.
    pub variance: f64,
    /// Blocking threshold: positive outputs `1..=js` are never published.
    pub js: u32,
    /// Key range, e.g. 256: cell keys run `0..keys`.
    pub keys: u32,
    /// Rows `0..=max`; `None`: [`PTableParams::default_max_cell_value`].
    pub max_cell_value: Option<u32>,
}

impl PTableParams {
    /// Parameters with the default number of rows.
    pub fn new(max_perturbation: u32, variance: f64, js: u32, keys: u32) -> Self {
        PTableParams {
            max_perturbation,
            variance,
            js,
            keys,
            max_cell_value: None,
        }
    }

    /// The first cell value whose row has the full support `-D..=D`; all
    /// rows from here on are identical: `js + D + 1`.
    pub fn stationary_from(&self) -> u32 {
        self.js
            .saturating_add(self.max_perturbation)
            .saturating_add(1)
    }

    /// Default `max_value`: `2·(js + D + 1)`, so that the top
    /// `W = floor((max+1)/3)` rows all lie in the identical region.
    pub fn default_max_cell_value(&self) -> u32 {
        self.stationary_from().saturating_mul(2)
    }

    /// The name of a generated table, e.g. `ptable-D5-V2-js2-256`, with
    /// `-max<m>` appended when `max_cell_value` is set to a non-default value.
    pub fn label(&self) -> String {
        let mut s = format!(
            "ptable-D{}-V{}-js{}-{}",
            self.max_perturbation, self.variance, self.js, self.keys
        );
        if let Some(m) = self.max_cell_value
            && m != self.default_max_cell_value()
        {
            s.push_str(&format!("-max{m}"));
        }
        s
    }
}

/// A problem found by [`PTable::check`], located by row and keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The row (cell value) concerned.
    pub cell_value: u32,
    /// The keys concerned, as compact ranges (`0-3,7`).
    pub keys: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cell_value {}, keys {}: {}",
            self.cell_value, self.keys, self.message
        )
    }
}

/// Errors loading or generating a ptable.
#[derive(Debug, thiserror::Error)]
pub enum PTableError {
    /// The ptable CSV has no lines at all.
    #[error(
        "ptable '{name}' is empty: expected the header line `{CSV_HEADER}` followed by lines such as `0,0-255,0`"
    )]
    Empty {
        /// The table's name, as given to [`PTable::from_csv`].
        name: String,
    },
    /// The first line is not the expected CSV header.
    #[error(
        "ptable '{name}' line {line}: header is `{found}`; the first line must be `{CSV_HEADER}` (ONS/Cantabular layout)"
    )]
    BadHeader {
        /// The table's name, as given to [`PTable::from_csv`].
        name: String,
        /// 1-based CSV line (header = line 1).
        line: usize,
        /// The first line as found.
        found: String,
    },
    /// A line without exactly three fields.
    #[error(
        "ptable '{name}' line {line}: {found} field(s); expected 3 (cell_value,cell_key,perturbation), e.g. `12,0-31,-2`"
    )]
    FieldCount {
        /// The table's name, as given to [`PTable::from_csv`].
        name: String,
        /// 1-based CSV line (header = line 1).
        line: usize,
        /// Number of comma-separated fields on the line.
        found: usize,
    },
    /// A field that is not a number of the expected kind.
    #[error(
        "ptable '{name}' line {line}: {field} `{value}` is not {expected}; write e.g. `{example}`"
    )]
    BadNumber {
        /// The table's name, as given to [`PTable::from_csv`].
        name: String,
        /// 1-based CSV line (header = line 1).
        line: usize,
        /// The column: `cell_value`, `cell_key` or `perturbation`.
        field: &'static str,
        /// The field's text as found (a whole key range for either end).
        value: String,
        /// What kind of number the column takes, for the message.
        expected: &'static str,
        /// A valid line to show in the message.
        example: &'static str,
    },
    /// A `cell_key` range whose first key is larger than its last.
    #[error(
        "ptable '{name}' line {line}: cell_key range `{value}` runs backwards; write the smaller key first (`{lo}-{hi}`)"
    )]
    BackwardRange {
        /// The table's name, as given to [`PTable::from_csv`].
        name: String,
        /// 1-based CSV line (header = line 1).
        line: usize,
        /// The `cell_key` field as found.
        value: String,
        /// The smaller of the two keys.
        lo: u32,
        /// The larger of the two keys.
        hi: u32,
    },
    /// A cell value or cell key beyond the supported size.
    #[error(
        "ptable '{name}' line {line}: {what} {value} exceeds the limit {limit}; ptables this large are not supported, check the value"
    )]
    TooLarge {
        /// The table's name, as given to [`PTable::from_csv`].
        name: String,
        /// 1-based CSV line (header = line 1).
        line: usize,
        /// What is too large: `cell_value`, `cell_key` or the number of
        /// entries.
        what: &'static str,
        /// The value found.
        value: u64,
        /// The largest value supported ([`MAX_CELL_VALUE`], [`MAX_KEYS`] - 1
        /// or [`MAX_ENTRIES`]).
        limit: u64,
    },
    /// A perturbation that would publish a negative count.
    #[error(
        "ptable '{name}' line {line}: cell_value {cell_value} with perturbation {perturbation} publishes {published}; a perturbation must be at least -cell_value"
    )]
    NegativeOutput {
        /// The table's name, as given to [`PTable::from_csv`].
        name: String,
        /// 1-based CSV line (header = line 1).
        line: usize,
        /// The line's true count.
        cell_value: u32,
        /// The line's perturbation.
        perturbation: i32,
        /// The negative count it would publish (`cell_value + perturbation`).
        published: i64,
    },
    /// A `(cell_value, cell_key)` pair given by more than one line.
    #[error(
        "ptable '{name}' line {line}: cell_value {cell_value}, keys {keys} are already covered by line {first_line}; each (cell_value, cell_key) must appear exactly once: remove or narrow one of the two ranges"
    )]
    Overlap {
        /// The table's name, as given to [`PTable::from_csv`].
        name: String,
        /// 1-based CSV line (header = line 1).
        line: usize,
        /// The earlier line that already covers the keys.
        first_line: usize,
        /// The row (true count) concerned.
        cell_value: u32,
        /// The keys covered twice, as compact ranges (`0-3,7`).
        keys: String,
    },
    /// The lines for one cell value leave some cell keys uncovered.
    #[error(
        "ptable '{name}': the lines for cell_value {cell_value} (from line {line}) do not cover keys {keys}; every row must cover keys 0-{last_key}: add lines for the missing keys"
    )]
    MissingKeys {
        /// The table's name, as given to [`PTable::from_csv`].
        name: String,
        /// The first line for this cell value (1-based).
        line: usize,
        /// The row (true count) with uncovered keys.
        cell_value: u32,
        /// The uncovered keys, as compact ranges (`0-3,7`).
        keys: String,
        /// The table's largest cell key.
        last_key: u32,
    },
    /// A cell value between 0 and the largest one has no lines.
    #[error(
        "ptable '{name}' line {line}: no line for cell_value {cell_value}, but rows must run 0..={max_value} without gaps; add lines `{cell_value},0-{last_key},<perturbation>` (e.g. before line {line})"
    )]
    MissingRow {
        /// The table's name, as given to [`PTable::from_csv`].
        name: String,
        /// The first line of the next cell value present (1-based), where
        /// the missing lines belong.
        line: usize,
        /// The cell value with no lines.
        cell_value: u32,
        /// The table's largest cell value.
        max_value: u32,
        /// The table's largest cell key.
        last_key: u32,
    },
    /// The table has only row 0, which perturbs nothing.
    #[error(
        "ptable '{name}' line {line}: the largest cell_value is {max_value}; a ptable needs rows 0..=max with max >= 1 (row 0 alone perturbs nothing)"
    )]
    TooFewRows {
        /// The table's name, as given to [`PTable::from_csv`].
        name: String,
        /// The last data line (1-based).
        line: usize,
        /// The largest cell value found (0).
        max_value: u32,
    },
    /// A generation parameter out of its valid range.
    #[error("ptable parameters: {field} = {value}: {reason}")]
    InvalidParams {
        /// The parameter: `keys`, `max_perturbation (D)`, `variance (V)`,
        /// `js` or `max_cell_value`.
        field: &'static str,
        /// The rejected value, as text.
        value: String,
        /// Why it is out of range and what to use instead.
        reason: String,
    },
    /// `max_cell_value` is too small for D and js: counts above it would wrap
    /// onto rows that do not yet follow the large-count distribution.
    #[error(
        "ptable parameters: max_cell_value {max_value} is too small for D={d}, js={js}: counts above it wrap onto rows {wrap_start}..={max_value}, but rows below {stationary} differ from the large-count distribution; use max_cell_value >= {needed} or leave it unset (default {default})"
    )]
    MaxValueTooSmall {
        /// The requested `max_cell_value`.
        max_value: u32,
        /// `D`: the largest absolute perturbation.
        d: u32,
        /// The blocking threshold `js`.
        js: u32,
        /// First of the wrap rows that counts above `max_value` reuse.
        wrap_start: u32,
        /// First row with the full support `-D..=D` (`js + D + 1`).
        stationary: u32,
        /// The smallest `max_cell_value` that would be accepted.
        needed: u32,
        /// The default `max_cell_value`, `2·(js + D + 1)`.
        default: u32,
    },
    /// The maximum-entropy solve for one row did not converge.
    #[error(
        "ptable generation: the maximum-entropy solve for cell_value {cell_value} did not converge ({detail}); try a variance further from the row's feasible bounds or a smaller D"
    )]
    NotConverged {
        /// The row (true count) whose distribution was being solved.
        cell_value: u32,
        /// Why the solve failed (no unbiased distribution on the row's
        /// support).
        detail: String,
    },
}

/// A perturbation table: for each cell value `0..=max_value`, one
/// perturbation per cell key `0..keys`.
#[derive(Debug, Clone)]
pub struct PTable {
    name: String,
    keys: u32,
    rows: Vec<Vec<i32>>,
    params: PTableParams,
    generated: bool,
    sha256: String,
}

impl PTable {
    /// Loads a table from the CSV layout described in the module docs.
    /// `name` labels the table in errors and in [`PTable::name`].
    pub fn from_csv(text: &str, name: &str) -> Result<PTable, PTableError> {
        let rows = parse_csv(text, name)?;
        let mut table = PTable::from_valid_rows(name, rows, false, None);
        table.sha256 = sha256_hex(text.as_bytes());
        Ok(table)
    }

    /// Generates a table by the maximum-entropy construction described in
    /// the module docs.
    pub fn generate(p: &PTableParams) -> Result<PTable, PTableError> {
        let max_value = validate_params(p)?;
        let keys = p.keys as usize;
        let stationary = p.stationary_from();
        let mut rows: Vec<Vec<i32>> = Vec::with_capacity(max_value as usize + 1);
        rows.push(vec![0; keys]);
        let mut stationary_row: Option<Vec<i32>> = None;
        for i in 1..=max_value {
            if let Some(r) = &stationary_row {
                rows.push(r.clone());
                continue;
            }
            let row = generate_row(i, p)?;
            if i >= stationary {
                stationary_row = Some(row.clone());
            }
            rows.push(row);
        }
        let mut params = p.clone();
        params.max_cell_value = Some(max_value);
        Ok(PTable::from_valid_rows(
            &p.label(),
            rows,
            true,
            Some(params),
        ))
    }

    fn from_valid_rows(
        name: &str,
        rows: Vec<Vec<i32>>,
        generated: bool,
        params: Option<PTableParams>,
    ) -> PTable {
        let keys = rows[0].len() as u32;
        let params = params.unwrap_or_else(|| derive_params(&rows, keys));
        let mut t = PTable {
            name: name.to_string(),
            keys,
            rows,
            params,
            generated,
            sha256: String::new(),
        };
        t.sha256 = t.canonical_sha256();
        t
    }

    /// The table in CSV form, compacted to key ranges.
    pub fn to_csv(&self) -> String {
        let mut out = String::with_capacity(32 * self.rows.len());
        out.push_str(CSV_HEADER);
        out.push('\n');
        for (i, row) in self.rows.iter().enumerate() {
            let mut start = 0usize;
            while start < row.len() {
                let v = row[start];
                let mut end = start;
                while end + 1 < row.len() && row[end + 1] == v {
                    end += 1;
                }
                if start == end {
                    out.push_str(&format!("{i},{start},{v}\n"));
                } else {
                    out.push_str(&format!("{i},{start}-{end},{v}\n"));
                }
                start = end + 1;
            }
        }
        out
    }

    /// Number of cell keys: keys run `0..key_range()`.
    pub fn key_range(&self) -> u32 {
        self.keys
    }

    /// The largest cell value with its own row.
    pub fn max_value(&self) -> u32 {
        (self.rows.len() - 1) as u32
    }

    /// The table's name (the file name given to `from_csv`, or the label of
    /// the generation parameters).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 (hex) of the loaded text, or of `to_csv()` for tables built
    /// in code.
    pub fn sha256(&self) -> String {
        self.sha256.clone()
    }

    /// SHA-256 (hex) of `to_csv()`: identical for identical content.
    pub fn canonical_sha256(&self) -> String {
        sha256_hex(self.to_csv().as_bytes())
    }

    /// The generation parameters of a generated table (with `max_cell_value`
    /// resolved). For loaded tables, derived parameters: `D` = the largest
    /// `|v|`, `js` = (smallest positive published count) - 1 (0 when nothing
    /// positive is published), `variance` = the variance over keys of the
    /// top row. Always `Some` for tables built by this module.
    pub fn params(&self) -> Option<&PTableParams> {
        Some(&self.params)
    }

    /// Whether the table came from [`PTable::generate`].
    pub fn is_generated(&self) -> bool {
        self.generated
    }

    /// The perturbations of one row, indexed by key.
    pub fn row(&self, cell_value: u32) -> Option<&[i32]> {
        self.rows.get(cell_value as usize).map(Vec::as_slice)
    }

    /// The wrap width `W = max(1, floor((max_value + 1) / 3))`.
    pub fn wrap_width(&self) -> u32 {
        ((self.max_value() + 1) / 3).max(1)
    }

    /// The row used for a true count (see the module docs).
    pub fn pcv(&self, count: u64) -> u32 {
        let max = u64::from(self.max_value());
        if count <= max {
            count as u32
        } else {
            let w = u64::from(self.wrap_width());
            ((count - 1) % w + (max - w + 1)) as u32
        }
    }

    /// Published count for a true count and a cell key in `0..key_range()`.
    /// 0 stays 0; the result is never in `1..=js`.
    ///
    /// # Panics
    ///
    /// If `cell_key >= key_range()`; see [`PTable::checked_perturb`].
    pub fn perturb(&self, count: u64, cell_key: u32) -> u64 {
        match self.checked_perturb(count, cell_key) {
            Some(v) => v,
            None => panic!(
                "cell key {cell_key} outside the ptable '{}' key range 0..{}",
                self.name, self.keys
            ),
        }
    }

    /// As [`PTable::perturb`], `None` when `cell_key >= key_range()`.
    pub fn checked_perturb(&self, count: u64, cell_key: u32) -> Option<u64> {
        if cell_key >= self.keys {
            return None;
        }
        if count == 0 {
            return Some(0);
        }
        let v = self.rows[self.pcv(count) as usize][cell_key as usize];
        let out = if v >= 0 {
            count.saturating_add(u64::from(v.unsigned_abs()))
        } else {
            count.saturating_sub(u64::from(v.unsigned_abs()))
        };
        if out >= 1 && out <= u64::from(self.params.js) {
            Some(0)
        } else {
            Some(out)
        }
    }

    /// `D`: the largest absolute perturbation (generation parameter, or the
    /// largest `|v|` in a loaded table).
    pub fn perturbation_bound(&self) -> u32 {
        self.params.max_perturbation
    }

    /// Checks the table against `expected` (or its own parameters) and
    /// returns every violation; tolerances are in the module docs.
    pub fn check(&self, expected: Option<&PTableParams>) -> Vec<Violation> {
        let mut out = Vec::new();
        let p = expected.unwrap_or(&self.params);
        let check_variance = expected.is_some() || self.generated;
        let keys = self.keys;
        let all_keys = format_keys(&(0..keys).collect::<Vec<_>>());
        let d = i64::from(p.max_perturbation);
        let js = i64::from(p.js);
        let max = self.max_value();

        if let Some(e) = expected {
            if e.keys != keys {
                out.push(Violation {
                    cell_value: 0,
                    keys: all_keys.clone(),
                    message: format!("table has {keys} keys, expected {}", e.keys),
                });
            }
            if let Some(m) = e.max_cell_value
                && m != max
            {
                out.push(Violation {
                    cell_value: max,
                    keys: all_keys.clone(),
                    message: format!("table has rows 0..={max}, expected 0..={m}"),
                });
            }
        }
        let wrap_start = max - self.wrap_width() + 1;
        if expected.is_some() || self.generated {
            let stationary = p.stationary_from();
            if wrap_start < stationary {
                out.push(Violation {
                    cell_value: wrap_start,
                    keys: all_keys.clone(),
                    message: format!(
                        "counts above {max} wrap onto rows {wrap_start}..={max}, but rows below js+D+1 = {stationary} are not the large-count distribution; add rows up to at least {}",
                        needed_max(stationary)
                    ),
                });
            }
        }

        for (i, row) in self.rows.iter().enumerate() {
            let cv = i as u32;
            let n = i as i64;
            if row.len() != keys as usize {
                out.push(Violation {
                    cell_value: cv,
                    keys: all_keys.clone(),
                    message: format!("row has {} entries, expected {keys}", row.len()),
                });
                continue;
            }
            let select = |f: &dyn Fn(i64) -> bool| -> Vec<u32> {
                row.iter()
                    .enumerate()
                    .filter(|&(_, &v)| f(i64::from(v)))
                    .map(|(k, _)| k as u32)
                    .collect()
            };
            if i == 0 {
                let bad = select(&|v| v != 0);
                if !bad.is_empty() {
                    out.push(Violation {
                        cell_value: 0,
                        keys: format_keys(&bad),
                        message: "row 0 must be all zeros: a zero count is always published as 0"
                            .to_string(),
                    });
                }
                continue;
            }
            let bad = select(&|v| v.abs() > d);
            if !bad.is_empty() {
                let worst = row.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
                out.push(Violation {
                    cell_value: cv,
                    keys: format_keys(&bad),
                    message: format!("|perturbation| up to {worst} exceeds D = {d}"),
                });
            }
            let bad = select(&|v| n + v < 0);
            if !bad.is_empty() {
                out.push(Violation {
                    cell_value: cv,
                    keys: format_keys(&bad),
                    message: "publishes a negative count".to_string(),
                });
            }
            let bad = select(&|v| (1..=js).contains(&(n + v)));
            if !bad.is_empty() {
                let example = n + i64::from(row[bad[0] as usize]);
                out.push(Violation {
                    cell_value: cv,
                    keys: format_keys(&bad),
                    message: format!("publishes {example}, inside the blocked range 1..={js}"),
                });
            }
            if cv >= wrap_start {
                let bad = select(&|v| n + v == 0);
                if !bad.is_empty() {
                    out.push(Violation {
                        cell_value: cv,
                        keys: format_keys(&bad),
                        message: format!(
                            "row in the wrap region {wrap_start}..={max} publishes 0; counts above {max} that wrap onto it would be published as count - {i}"
                        ),
                    });
                }
            }
            let sum: i64 = row.iter().map(|&v| i64::from(v)).sum();
            if sum.abs() > js + 1 {
                out.push(Violation {
                    cell_value: cv,
                    keys: all_keys.clone(),
                    message: format!(
                        "biased: mean perturbation {:.6} (sum {sum} over {keys} keys), tolerance |mean| <= (js+1)/keys = {:.6}",
                        sum as f64 / f64::from(keys),
                        (js + 1) as f64 / f64::from(keys)
                    ),
                });
            }
            if check_variance {
                let support = support(cv, p.max_perturbation, p.js);
                let (vmin, vmax) = variance_bounds(&support);
                let target = p.variance.clamp(vmin, vmax.max(vmin));
                let (_, var) = row_moments(row);
                let kf = f64::from(keys);
                let tol = 2.0 * (d * d) as f64 / kf + ((js + 1) as f64 / kf).powi(2) + 1e-6;
                if (var - target).abs() > tol || !var.is_finite() {
                    out.push(Violation {
                        cell_value: cv,
                        keys: all_keys.clone(),
                        message: format!(
                            "variance {var:.6}, row target {target:.6} (V = {} clamped to [{vmin:.6}, {vmax:.6}]), tolerance {tol:.6}",
                            p.variance
                        ),
                    });
                }
            }
        }
        out
    }
}

/// ONS's open "10-5" test table (see the module docs): counts 1..=9 are
/// published as 0, counts >= 10 rounded to the nearest multiple of 5.
pub fn ons_10_5() -> PTable {
    const KEYS: usize = 256;
    const MAX: i32 = 30;
    let rows = (0..=MAX)
        .map(|n| {
            let v = if n < 10 {
                -n
            } else {
                let r = n % 5;
                if r <= 2 { -r } else { 5 - r }
            };
            vec![v; KEYS]
        })
        .collect();
    PTable::from_valid_rows("ons-10-5", rows, false, None)
}

// ---------------------------------------------------------------------------
// CSV parsing

struct Entry {
    line: usize,
    cell_value: u32,
    lo: u32,
    hi: u32,
    perturbation: i32,
}

fn field(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .map(str::trim)
        .unwrap_or(s)
}

/// Parses a non-negative integer field; `shown` is the text quoted in the
/// error (the whole field, also when `s` is one end of a key range).
fn parse_u32(
    s: &str,
    shown: &str,
    name: &str,
    line: usize,
    field_name: &'static str,
    example: &'static str,
) -> Result<u32, PTableError> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    s.parse::<u32>()
        .ok()
        .filter(|_| digits)
        .ok_or_else(|| PTableError::BadNumber {
            name: name.to_string(),
            line,
            field: field_name,
            value: shown.to_string(),
            expected: if digits {
                "an integer below 2^32"
            } else {
                "a non-negative integer"
            },
            example,
        })
}

const KEY_EXAMPLE: &str = "12,0-31,-2` or `12,7,-2";

fn parse_csv(text: &str, name: &str) -> Result<Vec<Vec<i32>>, PTableError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((header_line, header)) = lines.next() else {
        return Err(PTableError::Empty {
            name: name.to_string(),
        });
    };
    let cols: Vec<String> = header
        .split(',')
        .map(|c| field(c).to_ascii_lowercase())
        .collect();
    if cols != ["cell_value", "cell_key", "perturbation"] {
        return Err(PTableError::BadHeader {
            name: name.to_string(),
            line: header_line,
            found: header.trim().to_string(),
        });
    }

    let mut entries = Vec::new();
    for (line, l) in lines {
        let parts: Vec<&str> = l.split(',').map(field).collect();
        if parts.len() != 3 {
            return Err(PTableError::FieldCount {
                name: name.to_string(),
                line,
                found: parts.len(),
            });
        }
        let cell_value = parse_u32(parts[0], parts[0], name, line, "cell_value", "12,0-31,-2")?;
        if cell_value > MAX_CELL_VALUE {
            return Err(PTableError::TooLarge {
                name: name.to_string(),
                line,
                what: "cell_value",
                value: u64::from(cell_value),
                limit: u64::from(MAX_CELL_VALUE),
            });
        }
        let key = parts[1];
        let (lo, hi) = match key.split_once('-') {
            Some((a, b)) => {
                let a = parse_u32(a.trim(), key, name, line, "cell_key", KEY_EXAMPLE)?;
                let b = parse_u32(b.trim(), key, name, line, "cell_key", KEY_EXAMPLE)?;
                if a > b {
                    return Err(PTableError::BackwardRange {
                        name: name.to_string(),
                        line,
                        value: key.to_string(),
                        lo: b,
                        hi: a,
                    });
                }
                (a, b)
            }
            None => {
                let k = parse_u32(key, key, name, line, "cell_key", KEY_EXAMPLE)?;
                (k, k)
            }
        };
        if hi >= MAX_KEYS {
            return Err(PTableError::TooLarge {
                name: name.to_string(),
                line,
                what: "cell_key",
                value: u64::from(hi),
                limit: u64::from(MAX_KEYS - 1),
            });
        }
        let perturbation = parts[2]
            .parse::<i32>()
            .map_err(|_| PTableError::BadNumber {
                name: name.to_string(),
                line,
                field: "perturbation",
                value: parts[2].to_string(),
                expected: "an integer",
                example: "12,0-31,-2",
            })?;
        let published = i64::from(cell_value) + i64::from(perturbation);
        if published < 0 {
            return Err(PTableError::NegativeOutput {
                name: name.to_string(),
                line,
                cell_value,
                perturbation,
                published,
            });
        }
        entries.push(Entry {
            line,
            cell_value,
            lo,
            hi,
            perturbation,
        });
    }
    let Some(last) = entries.last() else {
        return Err(PTableError::Empty {
            name: name.to_string(),
        });
    };
    let last_line = last.line;
    let max_value = entries.iter().map(|e| e.cell_value).max().unwrap_or(0);
    let keys = entries.iter().map(|e| e.hi).max().unwrap_or(0) + 1;
    if max_value == 0 {
        return Err(PTableError::TooFewRows {
            name: name.to_string(),
            line: last_line,
            max_value,
        });
    }
    let cells = (u64::from(max_value) + 1) * u64::from(keys);
    if cells > MAX_ENTRIES {
        let e = entries
            .iter()
            .find(|e| e.cell_value == max_value)
            .map_or(last_line, |e| e.line);
        return Err(PTableError::TooLarge {
            name: name.to_string(),
            line: e,
            what: "(max cell_value + 1) x (max cell_key + 1)",
            value: cells,
            limit: MAX_ENTRIES,
        });
    }

    let width = keys as usize;
    let mut values = vec![0i32; cells as usize];
    // Line that covered each cell; 0 = not yet covered.
    let mut owner = vec![0usize; cells as usize];
    let mut first_line = vec![usize::MAX; max_value as usize + 1];
    for e in &entries {
        let base = e.cell_value as usize * width;
        let fl = &mut first_line[e.cell_value as usize];
        *fl = (*fl).min(e.line);
        for k in e.lo..=e.hi {
            let idx = base + k as usize;
            if owner[idx] != 0 {
                let prev = owner[idx];
                let mut end = k;
                while end < e.hi && owner[base + end as usize + 1] == prev {
                    end += 1;
                }
                return Err(PTableError::Overlap {
                    name: name.to_string(),
                    line: e.line,
                    first_line: prev,
                    cell_value: e.cell_value,
                    keys: format_range(k, end),
                });
            }
            owner[idx] = e.line;
            values[idx] = e.perturbation;
        }
    }
    for c in 0..=max_value as usize {
        if first_line[c] == usize::MAX {
            let next = first_line[c + 1..]
                .iter()
                .copied()
                .filter(|&l| l != usize::MAX)
                .min()
                .unwrap_or(last_line);
            return Err(PTableError::MissingRow {
                name: name.to_string(),
                line: next,
                cell_value: c as u32,
                max_value,
                last_key: keys - 1,
            });
        }
        let missing: Vec<u32> = (0..keys)
            .filter(|&k| owner[c * width + k as usize] == 0)
            .collect();
        if !missing.is_empty() {
            return Err(PTableError::MissingKeys {
                name: name.to_string(),
                line: first_line[c],
                cell_value: c as u32,
                keys: format_keys(&missing),
                last_key: keys - 1,
            });
        }
    }
    Ok(values.chunks(width).map(<[i32]>::to_vec).collect())
}

fn derive_params(rows: &[Vec<i32>], keys: u32) -> PTableParams {
    let d = rows
        .iter()
        .flatten()
        .map(|v| v.unsigned_abs())
        .max()
        .unwrap_or(0);
    let smallest_positive = rows
        .iter()
        .enumerate()
        .skip(1)
        .flat_map(|(i, row)| row.iter().map(move |&v| i as i64 + i64::from(v)))
        .filter(|&o| o > 0)
        .min();
    let js = smallest_positive.map_or(0, |o| (o - 1).min(i64::from(u32::MAX)) as u32);
    let (_, variance) = row_moments(rows.last().map_or(&[][..], Vec::as_slice));
    PTableParams {
        max_perturbation: d,
        variance,
        js,
        keys,
        max_cell_value: Some((rows.len() - 1) as u32),
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn format_range(lo: u32, hi: u32) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// Compact ranges of an ascending key list: `0-3,7,9-10`.
fn format_keys(keys: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < keys.len() {
        let lo = keys[i];
        let mut hi = lo;
        while i + 1 < keys.len() && keys[i + 1] == hi + 1 {
            i += 1;
            hi = keys[i];
        }
        parts.push(format_range(lo, hi));
        i += 1;
    }
    parts.join(",")
}

/// Mean and variance of a row over its keys.
fn row_moments(row: &[i32]) -> (f64, f64) {
    if row.is_empty() {
        return (0.0, 0.0);
    }
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let m2 = row
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        / n;
    (mean, (m2 - mean * mean).max(0.0))
}

/// The smallest `max_value` whose wrap rows all lie at or above `stationary`.
fn needed_max(stationary: u32) -> u32 {
    let mut m = stationary.max(1);
    while m - ((m + 1) / 3).max(1) + 1 < stationary {
        m += 1;
    }
    m
}

fn validate_params(p: &PTableParams) -> Result<u32, PTableError> {
    let invalid = |field: &'static str, value: String, reason: String| {
        Err(PTableError::InvalidParams {
            field,
            value,
            reason,
        })
    };
    if p.keys == 0 || p.keys > MAX_KEYS {
        return invalid(
            "keys",
            p.keys.to_string(),
            format!("the key range must be 1..={MAX_KEYS}; ABS and ONS use 256"),
        );
    }
    if p.max_perturbation > MAX_GENERATED_PERTURBATION {
        return invalid(
            "max_perturbation (D)",
            p.max_perturbation.to_string(),
            format!(
                "at most {MAX_GENERATED_PERTURBATION} is supported; published tables use D <= 10"
            ),
        );
    }
    if !p.variance.is_finite() || p.variance < 0.0 {
        return invalid(
            "variance (V)",
            p.variance.to_string(),
            "must be a finite number >= 0, e.g. 2".to_string(),
        );
    }
    if p.js > p.max_perturbation {
        return invalid(
            "js",
            p.js.to_string(),
            format!(
                "must be at most D = {}: a count of 1 must be publishable as 0 or as js+1, which needs a perturbation of js; raise D or lower js",
                p.max_perturbation
            ),
        );
    }
    let stationary = p.stationary_from();
    let default = p.default_max_cell_value();
    let max_value = p.max_cell_value.unwrap_or(default);
    if max_value > MAX_CELL_VALUE || (u64::from(max_value) + 1) * u64::from(p.keys) > MAX_ENTRIES {
        return invalid(
            "max_cell_value",
            max_value.to_string(),
            format!(
                "at most {MAX_CELL_VALUE} rows and {MAX_ENTRIES} entries are supported; leave it unset (default {default})"
            ),
        );
    }
    let wrap_start = max_value.saturating_sub(((max_value + 1) / 3).max(1)) + 1;
    if max_value == 0 || wrap_start < stationary {
        return Err(PTableError::MaxValueTooSmall {
            max_value,
            d: p.max_perturbation,
            js: p.js,
            wrap_start,
            stationary,
            needed: needed_max(stationary),
            default,
        });
    }
    Ok(max_value)
}

// ---------------------------------------------------------------------------
// Generation

/// Allowed perturbations for cell value `i >= 1`: `-D..=D`, output `>= 0`
/// and not in `1..=js`.
fn support(i: u32, d: u32, js: u32) -> Vec<i32> {
    let (i, d, js) = (i64::from(i), i64::from(d), i64::from(js));
    (-d..=d)
        .filter(|&v| {
            let out = i + v;
            out >= 0 && !(1..=js).contains(&out)
        })
        .map(|v| v as i32)
        .collect()
}

/// Feasible variance interval with mean 0 on a support.
fn variance_bounds(support: &[i32]) -> (f64, f64) {
    let min = support.first().copied().unwrap_or(0);
    let max = support.last().copied().unwrap_or(0);
    if min >= 0 || max <= 0 {
        return (0.0, 0.0);
    }
    let vmax = f64::from(-min) * f64::from(max);
    if support.contains(&0) {
        return (0.0, vmax);
    }
    let a = support
        .iter()
        .copied()
        .filter(|&v| v < 0)
        .max()
        .unwrap_or(0);
    let b = support
        .iter()
        .copied()
        .filter(|&v| v > 0)
        .min()
        .unwrap_or(0);
    (f64::from(-a) * f64::from(b), vmax)
}

fn generate_row(i: u32, p: &PTableParams) -> Result<Vec<i32>, PTableError> {
    let s = support(i, p.max_perturbation, p.js);
    let probs = row_distribution(&s, p.variance).map_err(|detail| PTableError::NotConverged {
        cell_value: i,
        detail,
    })?;
    let counts = discretise(&s, &probs, p.keys);
    let mut row = Vec::with_capacity(p.keys as usize);
    for (&v, &c) in s.iter().zip(&counts) {
        row.extend(std::iter::repeat_n(v, c as usize));
    }
    debug_assert_eq!(row.len(), p.keys as usize);
    Ok(row)
}

/// Maximum-entropy probabilities over `support` with mean 0 and variance
/// `clamp(v, Vmin, Vmax)`.
fn row_distribution(support: &[i32], v: f64) -> Result<Vec<f64>, String> {
    let n = support.len();
    let (vmin, vmax) = variance_bounds(support);
    let point = |values: &[(i32, f64)]| -> Vec<f64> {
        support
            .iter()
            .map(|s| values.iter().find(|(x, _)| x == s).map_or(0.0, |&(_, p)| p))
            .collect()
    };
    let min = support.first().copied().unwrap_or(0);
    let max = support.last().copied().unwrap_or(0);
    if min >= 0 || max <= 0 {
        // Only a point mass is unbiased-feasible (or nothing is); use 0 when
        // allowed. Unreachable for validated parameters.
        if support.contains(&0) {
            return Ok(point(&[(0, 1.0)]));
        }
        return Err(format!("no unbiased distribution on {support:?}"));
    }
    let width = vmax - vmin;
    let target = v.clamp(vmin, vmax);
    let two_point = |a: i32, b: i32| {
        // mean 0 on {a < 0 < b}: p(b) = -a / (b - a).
        let pb = f64::from(-a) / f64::from(b - a);
        point(&[(a, 1.0 - pb), (b, pb)])
    };
    if target - vmin <= 1e-9 * width {
        if support.contains(&0) {
            return Ok(point(&[(0, 1.0)]));
        }
        let a = support
            .iter()
            .copied()
            .filter(|&x| x < 0)
            .max()
            .unwrap_or(min);
        let b = support
            .iter()
            .copied()
            .filter(|&x| x > 0)
            .min()
            .unwrap_or(max);
        return Ok(two_point(a, b));
    }
    if vmax - target <= 1e-9 * width {
        return Ok(two_point(min, max));
    }
    // Interior: at least 3 support points. Damped Newton on the dual, in
    // units scaled by max |v|.
    let scale = f64::from(min.unsigned_abs().max(max.unsigned_abs()));
    let x: Vec<f64> = support.iter().map(|&s| f64::from(s) / scale).collect();
    let t = target / (scale * scale);
    let eval = |l: [f64; 2]| -> (f64, Vec<f64>) {
        let e: Vec<f64> = x
            .iter()
            .map(|&xi| l[0] * xi + l[1] * (xi * xi - t))
            .collect();
        let m = e.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = e.iter().map(|&ei| (ei - m).exp()).collect();
        let z: f64 = w.iter().sum();
        (m + z.ln(), w.iter().map(|wi| wi / z).collect())
    };
    let moments = |p: &[f64]| -> ([f64; 2], [f64; 3]) {
        let mut g = [0.0; 2];
        let mut s = [0.0; 3];
        for (&pi, &xi) in p.iter().zip(&x) {
            let f0 = xi;
            let f1 = xi * xi - t;
            g[0] += pi * f0;
            g[1] += pi * f1;
            s[0] += pi * f0 * f0;
            s[1] += pi * f0 * f1;
            s[2] += pi * f1 * f1;
        }
        let h = [s[0] - g[0] * g[0], s[1] - g[0] * g[1], s[2] - g[1] * g[1]];
        (g, h)
    };
    debug_assert!(n >= 3);
    let mut lam = [0.0f64; 2];
    let (mut phi, mut p) = eval(lam);
    for _ in 0..500 {
        let (g, h) = moments(&p);
        if g[0].abs() < 1e-13 && g[1].abs() < 1e-13 {
            break;
        }
        let det = h[0] * h[2] - h[1] * h[1];
        let mut dir = if det > 1e-300 {
            [
                -(h[2] * g[0] - h[1] * g[1]) / det,
                -(h[0] * g[1] - h[1] * g[0]) / det,
            ]
        } else {
            [-g[0], -g[1]]
        };
        let mut slope = g[0] * dir[0] + g[1] * dir[1];
        if slope >= 0.0 || !slope.is_finite() {
            dir = [-g[0], -g[1]];
            slope = -(g[0] * g[0] + g[1] * g[1]);
        }
        let mut step = 1.0;
        let mut moved = false;
        while step > 1e-14 {
            let cand = [lam[0] + step * dir[0], lam[1] + step * dir[1]];
            let (phi_c, p_c) = eval(cand);
            if phi_c.is_finite() && phi_c <= phi + 1e-4 * step * slope + 1e-15 * phi.abs().max(1.0)
            {
                lam = cand;
                phi = phi_c;
                p = p_c;
                moved = true;
                break;
            }
            step *= 0.5;
        }
        if !moved {
            break;
        }
    }
    let mean: f64 = p
        .iter()
        .zip(support)
        .map(|(pi, &s)| pi * f64::from(s))
        .sum();
    let var: f64 = p
        .iter()
        .zip(support)
        .map(|(pi, &s)| pi * f64::from(s) * f64::from(s))
        .sum::<f64>()
        - mean * mean;
    if mean.abs() > 1e-9 * scale || (var - target).abs() > 1e-8 * scale * scale {
        return Err(format!(
            "mean {mean:e}, variance {var} for target {target} on support {support:?}"
        ));
    }
    Ok(p)
}

/// Key counts per support value (see "Discretisation" in the module docs).
fn discretise(support: &[i32], probs: &[f64], keys: u32) -> Vec<u32> {
    let k_len = support.len();
    if k_len <= 1 {
        return vec![keys; k_len];
    }
    let kf = f64::from(keys);
    // Boundary b (1..k_len): keys assigned to support[..b]; options fl or fl+1.
    let mut cum = 0.0;
    let mut options: Vec<(u32, bool, f64)> = Vec::with_capacity(k_len - 1); // (floor, can round up, x)
    for &pr in &probs[..k_len - 1] {
        cum += pr;
        let x = (cum * kf).clamp(0.0, kf);
        let r = x.round();
        if (x - r).abs() < 1e-7 {
            options.push((r as u32, false, r));
        } else {
            let fl = x.floor() as u32;
            options.push((fl, fl < keys, x));
        }
    }
    let gaps: Vec<u32> = support.windows(2).map(|w| (w[1] - w[0]) as u32).collect();
    let gmax: u32 = gaps.iter().sum();
    let states = gmax as usize + 1;
    // dp[b][u][G] = (cost, previous u); b indexes boundaries 0..k_len-1.
    type Cell = Option<(f64, u8)>;
    let mut dp: Vec<Vec<[Cell; 2]>> = vec![vec![[None, None]; states]; k_len - 1];
    for (b, &(fl, up, x)) in options.iter().enumerate() {
        for u in 0..=u8::from(up) {
            let val = fl + u32::from(u);
            let cost = (f64::from(val) - x).abs();
            let add_g = if u == 1 { gaps[b] as usize } else { 0 };
            if b == 0 {
                dp[0][add_g][u as usize] = Some((cost, 0));
                continue;
            }
            let (pfl, _, _) = options[b - 1];
            for g in 0..states {
                for pu in 0..2u8 {
                    let Some((pc, _)) = dp[b - 1][g][pu as usize] else {
                        continue;
                    };
                    if pfl + u32::from(pu) > val || g + add_g >= states {
                        continue;
                    }
                    let c = pc + cost;
                    let slot = &mut dp[b][g + add_g][u as usize];
                    if slot.is_none_or(|(best, _)| c < best) {
                        *slot = Some((c, pu));
                    }
                }
            }
        }
    }
    // Bias I = keys * v_last - Σ fl_b g_b - G.
    let base: i64 = i64::from(keys) * i64::from(support[k_len - 1])
        - options
            .iter()
            .zip(&gaps)
            .map(|(&(fl, _, _), &g)| i64::from(fl) * i64::from(g))
            .sum::<i64>();
    let last = k_len - 2;
    let mut best: Option<(i64, f64, usize, u8)> = None;
    for (g, cells) in dp[last].iter().enumerate() {
        for (u, cell) in (0..2u8).zip(cells) {
            if let Some((c, _)) = *cell {
                let bias = (base - g as i64).abs();
                let better = match best {
                    None => true,
                    Some((bb, bc, _, _)) => bias < bb || (bias == bb && c < bc),
                };
                if better {
                    best = Some((bias, c, g, u));
                }
            }
        }
    }
    let (_, _, mut g, mut u) = best.expect("rounding every boundary down is always feasible");
    let mut bounds = vec![0u32; k_len + 1];
    bounds[k_len] = keys;
    for b in (0..k_len - 1).rev() {
        bounds[b + 1] = options[b].0 + u32::from(u);
        let (_, pu) = dp[b][g][u as usize].expect("backtracking a feasible path");
        if u == 1 {
            g -= gaps[b] as usize;
        }
        u = pu;
    }
    bounds.windows(2).map(|w| w[1] - w[0]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(d: u32, v: f64, js: u32, keys: u32) -> PTableParams {
        PTableParams::new(d, v, js, keys)
    }

    #[test]
    fn support_excludes_blocked_and_negative_outputs() {
        assert_eq!(support(1, 5, 2), vec![-1, 2, 3, 4, 5]);
        assert_eq!(support(2, 5, 2), vec![-2, 1, 2, 3, 4, 5]);
        assert_eq!(support(3, 5, 2), vec![-3, 0, 1, 2, 3, 4, 5]);
        assert_eq!(support(6, 5, 2), vec![-3, -2, -1, 0, 1, 2, 3, 4, 5]);
        assert_eq!(support(8, 5, 2), (-5..=5).collect::<Vec<_>>());
        assert_eq!(support(2, 1, 0), vec![-1, 0, 1]);
    }

    #[test]
    fn variance_bounds_follow_the_two_point_rule() {
        assert_eq!(variance_bounds(&support(1, 5, 2)), (2.0, 5.0));
        assert_eq!(variance_bounds(&support(2, 5, 2)), (2.0, 10.0));
        assert_eq!(variance_bounds(&support(3, 5, 2)), (0.0, 15.0));
        assert_eq!(variance_bounds(&support(8, 5, 2)), (0.0, 25.0));
    }

    fn moments(s: &[i32], p: &[f64]) -> (f64, f64) {
        let m: f64 = s.iter().zip(p).map(|(&v, q)| f64::from(v) * q).sum();
        let m2: f64 = s.iter().zip(p).map(|(&v, q)| f64::from(v * v) * q).sum();
        (m, m2 - m * m)
    }

    #[test]
    fn max_entropy_hits_mean_and_variance_exactly() {
        for (s, v) in [
            (support(8, 5, 2), 2.0),
            (support(8, 5, 2), 20.0),
            (support(3, 5, 2), 2.0),
            (support(2, 5, 2), 2.0 + 1e-6),
            (support(2, 5, 2), 10.0 - 1e-6),
            (support(1, 5, 2), 4.0),
            (support(4, 3, 0), 0.5),
        ] {
            let p = row_distribution(&s, v).unwrap();
            let (m, var) = moments(&s, &p);
            assert!(m.abs() < 1e-9, "{s:?} {v}: mean {m}");
            assert!((var - v).abs() < 1e-7, "{s:?} {v}: var {var}");
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        // Full support, V=2: p(v) ∝ exp(λ2 v²) symmetric, decreasing in |v|.
        let s = support(8, 5, 2);
        let p = row_distribution(&s, 2.0).unwrap();
        for k in 0..5 {
            assert!((p[k] - p[10 - k]).abs() < 1e-12);
            assert!(p[k] < p[k + 1]);
        }
    }

    #[test]
    fn infeasible_variance_is_clamped_to_the_two_point_bounds() {
        let s = support(1, 5, 2); // {-1, 2..5}: Vmin 2, Vmax 5
        let p = row_distribution(&s, 1.0).unwrap();
        assert!((p[0] - 2.0 / 3.0).abs() < 1e-15 && (p[1] - 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(p[2..], [0.0, 0.0, 0.0]);
        let p = row_distribution(&s, 9.0).unwrap();
        let (m, var) = moments(&s, &p);
        assert!(m.abs() < 1e-12 && (var - 5.0).abs() < 1e-12);
        assert_eq!(p[1..4], [0.0, 0.0, 0.0]);
    }

    #[test]
    fn discretisation_sums_to_keys_and_is_unbiased_on_full_support() {
        for keys in [7u32, 16, 100, 256, 1000] {
            for v in [0.5, 1.0, 2.0, 3.3, 8.0] {
                let s = support(20, 5, 2);
                let p = row_distribution(&s, v).unwrap();
                let c = discretise(&s, &p, keys);
                assert_eq!(c.iter().sum::<u32>(), keys);
                let bias: i64 = s
                    .iter()
                    .zip(&c)
                    .map(|(&v, &n)| i64::from(v) * i64::from(n))
                    .sum();
                assert_eq!(bias, 0, "keys {keys} V {v}: {c:?}");
                for (&n, &q) in c.iter().zip(&p) {
                    assert!((f64::from(n) - q * f64::from(keys)).abs() < 2.0);
                }
            }
        }
    }

    #[test]
    fn two_point_row_is_discretised_by_hand() {
        // Row 1 with D=5, V=2, js=2: p(-1)=2/3, p(2)=1/3 -> 170.67 keys.
        // Rounding to 171 gives bias -171 + 2*85 = -1 (170 would give +2).
        let s = support(1, 5, 2);
        let p = row_distribution(&s, 2.0).unwrap();
        assert_eq!(discretise(&s, &p, 256), vec![171, 85, 0, 0, 0]);
    }

    #[test]
    fn stationary_rows_are_identical_to_independently_generated_ones() {
        let p = params(3, 1.5, 1, 64);
        let t = PTable::generate(&p).unwrap();
        for i in 1..=t.max_value() {
            assert_eq!(t.row(i).unwrap(), generate_row(i, &p).unwrap().as_slice());
        }
    }

    #[test]
    fn generated_tables_pass_their_own_check_over_a_grid() {
        for d in 0..=7u32 {
            for js in 0..=d.min(4) {
                for v in [0.3, 1.0, 2.0, 4.5, 12.0] {
                    for keys in [16u32, 64, 256] {
                        let p = params(d, v, js, keys);
                        let t = PTable::generate(&p).unwrap();
                        let violations = t.check(Some(&p));
                        assert!(violations.is_empty(), "{}: {violations:?}", p.label());
                        assert!(t.check(None).is_empty());
                        // Full-support rows are exactly unbiased.
                        let row = t.row(t.max_value()).unwrap();
                        assert_eq!(row.iter().map(|&v| i64::from(v)).sum::<i64>(), 0);
                        for n in 0..=3 * u64::from(t.max_value()) {
                            for k in 0..keys {
                                let out = t.perturb(n, k);
                                assert!(!(1..=u64::from(js)).contains(&out));
                                assert!(out.abs_diff(n) <= u64::from(d));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn pcv_matches_ons_750_convention() {
        let rows = vec![vec![0i32; 2]; 751];
        let t = PTable::from_valid_rows("ons-shape", rows, false, None);
        assert_eq!(t.wrap_width(), 250);
        assert_eq!(t.pcv(750), 750);
        assert_eq!(t.pcv(751), 501);
        assert_eq!(t.pcv(1000), 750);
        assert_eq!(t.pcv(1001), 501);
        assert_eq!(t.pcv(u64::MAX), ((u64::MAX - 1) % 250 + 501) as u32);
    }

    #[test]
    fn needed_max_and_default_keep_wrap_rows_stationary() {
        for s in 1..200u32 {
            let m = needed_max(s);
            assert!(m - ((m + 1) / 3).max(1) + 1 >= s);
            let m1 = m - 1;
            assert!(m1 == 0 || m1 - ((m1 + 1) / 3).max(1) + 1 < s);
            let d = 2 * s;
            assert!(d - ((d + 1) / 3).max(1) + 1 >= s);
        }
    }

    #[test]
    fn key_sets_are_compacted() {
        assert_eq!(format_keys(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
        assert_eq!(format_keys(&[5]), "5");
        assert_eq!(format_keys(&[]), "");
    }

    #[test]
    fn params_are_validated() {
        assert!(matches!(
            PTable::generate(&params(2, 1.0, 3, 256)),
            Err(PTableError::InvalidParams { field: "js", .. })
        ));
        assert!(matches!(
            PTable::generate(&params(2, f64::NAN, 0, 256)),
            Err(PTableError::InvalidParams { .. })
        ));
        assert!(matches!(
            PTable::generate(&params(2, 1.0, 0, 0)),
            Err(PTableError::InvalidParams { field: "keys", .. })
        ));
        let mut p = params(5, 2.0, 2, 256);
        // js+D+1 = 8; max 9 has W = 3 and wrap rows 7..=9, max 10 rows 8..=10.
        p.max_cell_value = Some(9);
        let e = PTable::generate(&p).unwrap_err();
        assert!(
            matches!(e, PTableError::MaxValueTooSmall { needed: 10, .. }),
            "{e}"
        );
        p.max_cell_value = Some(10);
        assert_eq!(PTable::generate(&p).unwrap().max_value(), 10);
    }
}
