//! Differential privacy for released tables, built on OpenDP 0.16.
//!
//! # Mechanisms
//!
//! Every cell of a released table gets independent integer noise from an
//! OpenDP measurement over `Vec<i64>`:
//!
//! - [`DpBudget::ZCdp`] (`rho`): the **discrete Gaussian** mechanism,
//!   `opendp::measurements::make_gaussian` on
//!   `VectorDomain<AtomDomain<i64>>` with `L2Distance<f64>` and
//!   `ZeroConcentratedDivergence`; `scale` is the sigma of the discrete
//!   Gaussian.
//! - [`DpBudget::PureDp`] (`epsilon`): the **discrete Laplace** (two-sided
//!   geometric) mechanism, `opendp::measurements::make_laplace` on the same
//!   domain with `L1Distance<f64>` and `MaxDivergence`.
//!
//! Both add noise to the exact integers (OpenDP's CKS20 samplers over
//! big rationals), so there is no floating-point attack surface, and
//! saturate back to `i64`.
//!
//! # Sensitivity rule
//!
//! The caller releases the *full* grid (zeros included), so adding or
//! removing one person changes exactly one cell per grouping set, each by
//! at most the per-set sensitivity `c`:
//!
//! - counts: `c = 1`;
//! - bounded sums (values clamped to `[lo, hi]`): `c = max(|lo|, |hi|)`.
//!
//! With `g` grouping sets, the L1 sensitivity is `g * c` (pure DP) and the
//! L2 sensitivity is `sqrt(g) * c` (zCDP). Both are computed in `f64`
//! rounded *upwards* (exact `fma` checks, see [`l1_sensitivity`] and
//! [`l2_sensitivity`]), so the `d_in` handed to OpenDP never understates
//! the true sensitivity.
//!
//! # How the scale is chosen, how the charge is obtained
//!
//! OpenDP maps a scale to a privacy loss; it does not invert that map. We
//! take the closed-form guess (`d / sqrt(2 rho)` or `d / epsilon`), bracket
//! it, then bisect over the bit patterns of positive `f64`s, each step
//! building the real OpenDP measurement at the candidate scale and
//! evaluating its privacy map at the sensitivity. The result is the
//! *smallest* `f64` scale whose map is `<= budget`; the map there is
//! required to be within [`TIGHTNESS`] (1e-9) relative of the budget, else
//! [`DpError::ScaleSearch`]. The charge in [`DpRelease::charge`] is what
//! the privacy map of the very measurement that produced the noise returned
//! at the sensitivity, never a hand-computed number, and is never above the
//! budget.
//!
//! `noisy_sums` and `noisy_counts` each charge their own budget: an AVG
//! built from one of each costs the sum of both charges (for zCDP,
//! rho_sum + rho_count; for pure DP, epsilon_sum + epsilon_count). Splitting
//! the agreement's budget between them is the caller's job.
//!
//! # Margin of error
//!
//! [`DpRelease::margin_of_error_95`] comes from OpenDP's accuracy functions
//! at `alpha = 0.05`, whose meaning is `P[|noise| >= margin] <= alpha`: at
//! least 95% of cells have `|noise| < margin` (for the discrete Laplace the
//! margin is a non-integer, so `<` and `<=` agree).
//!
//! - discrete Laplace: `opendp::accuracy::discrete_laplacian_scale_to_accuracy`;
//! - discrete Gaussian: `opendp::accuracy::discrete_gaussian_scale_to_accuracy`
//!   up to scale [`DG_EXACT_ACCURACY_MAX_SCALE`]. That function sums the
//!   pmf term by term (about 40 x scale `exp` calls, and `i32` counters),
//!   so above that scale we use OpenDP's continuous
//!   `gaussian_scale_to_accuracy`, rounded up, plus one: by CKS20
//!   Proposition 25 (`P[X >= m] <= P[N(0, sigma^2) >= m - 1]`, the bound
//!   OpenDP's `conservative_discrete_gaussian_tail_to_alpha` relies on) this
//!   keeps the same `>= 95%` guarantee; the two differ by at most one unit.
//!
//! # Features and randomness
//!
//! Cargo.toml: `opendp = { version = "0.16", default-features = false,
//! features = ["contrib", "use-openssl"] }`.
//!
//! - `contrib` is required: `make_gaussian`, `make_laplace` (the whole
//!   `measurements::noise` module) are behind it.
//! - `use-openssl` is kept: all of OpenDP's samplers draw their bits from
//!   `opendp::traits::samplers::fill_bytes`, which with this feature calls
//!   OpenSSL's `RAND_priv_bytes` (OpenSSL's private DRBG, seeded from the
//!   operating system). Without it, `fill_bytes` falls back to
//!   `rand 0.7`'s `thread_rng()`, which OpenDP documents as "Non-securely
//!   fill a byte buffer with random bits ... Enable `use-openssl` for a
//!   secure implementation". OpenDP pins `openssl-src =300.3.1` (OpenSSL
//!   3.3.1) with `vendored`, so OpenSSL is built from source once per
//!   target directory: measured at 72 s of build script on this 2-core
//!   machine (1 min 47 s wall for all of OpenDP's dependency tree), a
//!   one-off cost that does not justify weakening the randomness.
//! - the default `partials` (and with it `derive`, `syn`, `opendp_tooling`)
//!   is left out: it only adds the `then_*` partial constructors.
//!
//! OpenDP's sampler cannot be seeded, so releases are not reproducible
//! and the tests are statistical.
//!
//! # Threads and async
//!
//! OpenDP's `Measurement` is neither `Send` nor `Sync`. Every function here
//! builds and invokes its measurements synchronously and returns plain
//! data, so no measurement ever lives across an `.await`; from async code,
//! call them directly (they are fast) or inside `spawn_blocking`.

use opendp::accuracy::{
    discrete_gaussian_scale_to_accuracy, discrete_laplacian_scale_to_accuracy,
    gaussian_scale_to_accuracy,
};
use opendp::core::Measurement;
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::{make_gaussian, make_laplace};
use opendp::measures::{MaxDivergence, ZeroConcentratedDivergence};
use opendp::metrics::{L1Distance, L2Distance};

/// Significance level of [`DpRelease::margin_of_error_95`].
pub const ALPHA_95: f64 = 0.05;

/// The charge must be at least `budget * (1 - TIGHTNESS)` (and never above
/// the budget).
pub const TIGHTNESS: f64 = 1e-9;

/// Largest discrete Gaussian scale for which the margin of error comes from
/// OpenDP's exact `discrete_gaussian_scale_to_accuracy`; see the module
/// documentation.
pub const DG_EXACT_ACCURACY_MAX_SCALE: f64 = 1e5;

/// Per-query privacy parameter from the agreement.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "measure", rename_all = "snake_case")]
pub enum DpBudget {
    /// Zero-concentrated DP: discrete Gaussian noise.
    ZCdp {
        /// zCDP parameter ρ per query.
        rho: f64,
    },
    /// Pure DP: discrete Laplace noise.
    PureDp {
        /// Pure-DP parameter ε per query.
        epsilon: f64,
    },
}

impl DpBudget {
    /// The numeric parameter (`rho` or `epsilon`).
    pub fn value(self) -> f64 {
        match self {
            DpBudget::ZCdp { rho } => rho,
            DpBudget::PureDp { epsilon } => epsilon,
        }
    }

    /// The parameter's name, `"rho"` or `"epsilon"`.
    pub fn parameter(self) -> &'static str {
        match self {
            DpBudget::ZCdp { .. } => "rho",
            DpBudget::PureDp { .. } => "epsilon",
        }
    }

    /// Checks that the parameter is finite and strictly positive.
    pub fn validate(self) -> Result<(), DpError> {
        let value = self.value();
        if value.is_finite() && value > 0.0 {
            Ok(())
        } else {
            Err(DpError::InvalidBudget {
                parameter: self.parameter(),
                value,
            })
        }
    }
}

/// What OpenDP's privacy map returned at the sensitivity.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpCharge {
    /// zCDP loss.
    Rho(f64),
    /// Pure-DP loss.
    Epsilon(f64),
}

impl DpCharge {
    /// The numeric loss.
    pub fn value(self) -> f64 {
        match self {
            DpCharge::Rho(v) | DpCharge::Epsilon(v) => v,
        }
    }
}

/// Noisy values for one released table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DpRelease {
    /// One noisy value per input cell, in input order.
    pub values: Vec<i64>,
    /// Noise scale: sigma of the discrete Gaussian, or the discrete Laplace
    /// scale.
    pub scale: f64,
    /// What OpenDP's privacy map of the measurement that produced `values`
    /// returned at the sensitivity.
    pub charge: DpCharge,
    /// Half-width of the 95% interval from OpenDP's accuracy function:
    /// `P[|noise| >= margin] <= 0.05` per cell.
    pub margin_of_error_95: f64,
}

/// Why a release or a cost plan failed.
#[derive(thiserror::Error, Debug)]
pub enum DpError {
    /// The budget is not finite or not strictly positive.
    #[error("invalid privacy budget: {parameter} = {value} (must be finite and > 0)")]
    InvalidBudget {
        /// `"rho"` or `"epsilon"`.
        parameter: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// Zero grouping sets: nothing to protect, and no sensitivity.
    #[error("grouping_sets = {grouping_sets}: a released table has at least one grouping set")]
    InvalidGroupingSets {
        /// The number of grouping sets given (always 0).
        grouping_sets: usize,
    },
    /// The per-grouping-set sensitivity is not finite or not positive.
    #[error("sensitivity per grouping set = {value} (must be finite and > 0)")]
    InvalidSensitivity {
        /// The rejected sensitivity per grouping set.
        value: f64,
    },
    /// Clamp bounds of a sum are reversed or both zero.
    #[error("clamp bounds [{lo}, {hi}] are invalid (need lo <= hi and not both 0)")]
    InvalidBounds {
        /// Lower clamp bound of the summed values.
        lo: i64,
        /// Upper clamp bound of the summed values.
        hi: i64,
    },
    /// No `f64` scale makes OpenDP's map meet the budget tightly (absurdly
    /// large or small budgets).
    #[error("no noise scale meets {parameter} = {budget} at sensitivity {sensitivity}: {detail}")]
    ScaleSearch {
        /// `"rho"` or `"epsilon"`.
        parameter: &'static str,
        /// The per-query budget the scale had to meet.
        budget: f64,
        /// The L1 (pure DP) or L2 (zCDP) sensitivity of the whole table.
        sensitivity: f64,
        /// Where the search failed (guess, bracket or tightness).
        detail: String,
    },
    /// OpenDP itself failed.
    #[error("OpenDP failed while {context}: {message}")]
    OpenDp {
        /// What was being done (`"sampling noise"`, …).
        context: &'static str,
        /// OpenDP's error variant and message.
        message: String,
    },
}

impl DpError {
    /// Category for exit codes and HTTP statuses.
    pub fn category(&self) -> crate::ErrorCategory {
        match self {
            DpError::InvalidBudget { .. }
            | DpError::InvalidGroupingSets { .. }
            | DpError::InvalidSensitivity { .. }
            | DpError::InvalidBounds { .. }
            | DpError::ScaleSearch { .. } => crate::ErrorCategory::Usage,
            DpError::OpenDp { .. } => crate::ErrorCategory::Internal,
        }
    }

    fn opendp(context: &'static str, e: opendp::error::Error) -> DpError {
        let message = match &e.message {
            Some(m) => format!("{}: {m}", e.variant),
            None => e.variant.to_string(),
        };
        DpError::OpenDp { context, message }
    }
}

/// Noisy counts for one released table.
///
/// `counts` are the true counts of every cell of the full grid (zeros
/// included). `grouping_sets`: one person adds 1 to one cell per grouping
/// set, so the L1 sensitivity is `grouping_sets` and the L2 sensitivity
/// `sqrt(grouping_sets)`. Discrete Gaussian under zCDP, discrete Laplace
/// under pure DP; the scale is the smallest for which OpenDP's privacy map
/// at the sensitivity is `<= budget` (and within 1e-9 relative of it).
pub fn noisy_counts(
    counts: &[i64],
    grouping_sets: usize,
    budget: DpBudget,
) -> Result<DpRelease, DpError> {
    release(counts, grouping_sets, 1.0, budget)
}

/// Noisy bounded sums (e.g. `SUM(umur(...))` with values clamped to
/// `[lo, hi]`). The sensitivity per grouping set is `max(|lo|, |hi|)`;
/// otherwise as [`noisy_counts`]. Charges its own budget: an AVG released
/// as sum / count pays for both.
pub fn noisy_sums(
    sums: &[i64],
    lo: i64,
    hi: i64,
    grouping_sets: usize,
    budget: DpBudget,
) -> Result<DpRelease, DpError> {
    release(sums, grouping_sets, clamp_sensitivity(lo, hi)?, budget)
}

/// Half-width of the 95% interval of a released average `sum / count`,
/// by the delta method, from the two noisy values and the 95% margins of
/// their (independent) noises: `Var(S/C) ≈ Var(S)/C² + S²·Var(C)/C⁴`, with
/// each variance taken as (margin / 1.96)², then scaled back by 1.96.
pub fn ratio_margin_95(sum: f64, count: f64, sum_margin: f64, count_margin: f64) -> f64 {
    if count <= 0.0 {
        return f64::INFINITY;
    }
    ((sum_margin / count).powi(2) + (sum * count_margin / (count * count)).powi(2)).sqrt()
}

/// The scale, charge and 95% margin a query would get, without sampling
/// (for a dry-run cost endpoint). Identical to what [`noisy_counts`]
/// (`sensitivity_per_set = 1.0`) or [`noisy_sums`]
/// (`max(|lo|, |hi|)`) would report.
pub fn plan_cost(
    grouping_sets: usize,
    sensitivity_per_set: f64,
    budget: DpBudget,
) -> Result<(f64, DpCharge, f64), DpError> {
    let plan = plan(grouping_sets, sensitivity_per_set, budget)?;
    Ok((plan.scale, plan.charge, plan.margin_of_error_95))
}

/// Sensitivity per grouping set of a sum clamped to `[lo, hi]`:
/// `max(|lo|, |hi|)`, as an `f64` rounded up.
pub fn clamp_sensitivity(lo: i64, hi: i64) -> Result<f64, DpError> {
    if lo > hi || (lo == 0 && hi == 0) {
        return Err(DpError::InvalidBounds { lo, hi });
    }
    Ok(u64_to_f64_up(lo.unsigned_abs().max(hi.unsigned_abs())))
}

/// L1 sensitivity `grouping_sets * per_set`, rounded up to an `f64`: the
/// `d_in` given to OpenDP's pure-DP privacy map.
pub fn l1_sensitivity(grouping_sets: usize, per_set: f64) -> f64 {
    mul_up(u64_to_f64_up(grouping_sets as u64), per_set)
}

/// L2 sensitivity `sqrt(grouping_sets) * per_set`, rounded up to an `f64`:
/// the `d_in` given to OpenDP's zCDP privacy map.
pub fn l2_sensitivity(grouping_sets: usize, per_set: f64) -> f64 {
    mul_up(sqrt_up(u64_to_f64_up(grouping_sets as u64)), per_set)
}

/// Sensitivity (`d_in`) for the budget's mechanism.
fn sensitivity(grouping_sets: usize, per_set: f64, budget: DpBudget) -> f64 {
    match budget {
        DpBudget::ZCdp { .. } => l2_sensitivity(grouping_sets, per_set),
        DpBudget::PureDp { .. } => l1_sensitivity(grouping_sets, per_set),
    }
}

fn u64_to_f64_up(x: u64) -> f64 {
    let f = x as f64;
    // `as u128` is exact for every f64 in [0, 2^64].
    if (f as u128) < u128::from(x) {
        f.next_up()
    } else {
        f
    }
}

/// Smallest f64 `s` with `s * s >= x` (up to one ulp): the sign of the
/// single-rounding `fma(s, s, -x)` is the sign of the exact `s^2 - x`.
fn sqrt_up(x: f64) -> f64 {
    let s = x.sqrt();
    if s.mul_add(s, -x) < 0.0 {
        s.next_up()
    } else {
        s
    }
}

/// `a * b` rounded up: `fma(a, b, -p)` is the exact rounding error of `p`.
fn mul_up(a: f64, b: f64) -> f64 {
    let p = a * b;
    if p.is_finite() && a.mul_add(b, -p) > 0.0 {
        p.next_up()
    } else {
        p
    }
}

type CellDomain = VectorDomain<AtomDomain<i64>>;
type GaussianMeasurement =
    Measurement<CellDomain, L2Distance<f64>, ZeroConcentratedDivergence, Vec<i64>>;
type LaplaceMeasurement = Measurement<CellDomain, L1Distance<f64>, MaxDivergence, Vec<i64>>;

fn gaussian(scale: f64) -> Result<GaussianMeasurement, DpError> {
    make_gaussian::<CellDomain, L2Distance<f64>, ZeroConcentratedDivergence>(
        VectorDomain::new(AtomDomain::default()),
        L2Distance::default(),
        scale,
        None,
    )
    .map_err(|e| DpError::opendp("building the discrete Gaussian measurement", e))
}

fn laplace(scale: f64) -> Result<LaplaceMeasurement, DpError> {
    make_laplace::<CellDomain, L1Distance<f64>, MaxDivergence>(
        VectorDomain::new(AtomDomain::default()),
        L1Distance::default(),
        scale,
        None,
    )
    .map_err(|e| DpError::opendp("building the discrete Laplace measurement", e))
}

/// OpenDP's privacy map at `d_in` of the budget's mechanism at `scale`.
fn privacy_loss(budget: DpBudget, scale: f64, d_in: f64) -> Result<f64, DpError> {
    let map_err = |e| DpError::opendp("evaluating the privacy map", e);
    match budget {
        DpBudget::ZCdp { .. } => gaussian(scale)?.map(&d_in).map_err(map_err),
        DpBudget::PureDp { .. } => laplace(scale)?.map(&d_in).map_err(map_err),
    }
}

/// Smallest positive `f64` scale whose privacy map at `d_in` is `<=` the
/// budget; errors unless the map there is within [`TIGHTNESS`].
fn find_scale(budget: DpBudget, d_in: f64) -> Result<f64, DpError> {
    let target = budget.value();
    let fail = |detail: String| DpError::ScaleSearch {
        parameter: budget.parameter(),
        budget: target,
        sensitivity: d_in,
        detail,
    };
    let guess = match budget {
        DpBudget::ZCdp { rho } => d_in / (2.0 * rho).sqrt(),
        DpBudget::PureDp { epsilon } => d_in / epsilon,
    };
    if !(guess.is_finite() && guess > 0.0) {
        return Err(fail(format!(
            "closed-form scale {guess} is not a positive finite number"
        )));
    }

    // Bracket: loss(lo) > target >= loss(hi).
    let mut hi = guess;
    while privacy_loss(budget, hi, d_in)? > target {
        hi *= 2.0;
        if !hi.is_finite() {
            return Err(fail("scale overflows f64".to_string()));
        }
    }
    let mut lo = hi / 2.0;
    // loss(0) is infinite, so this ends at the latest when `lo` reaches 0.
    while lo > 0.0 && privacy_loss(budget, lo, d_in)? <= target {
        hi = lo;
        lo /= 2.0;
    }

    // Positive f64s are ordered like their bit patterns.
    let (mut lo_bits, mut hi_bits) = (lo.to_bits(), hi.to_bits());
    while hi_bits - lo_bits > 1 {
        let mid = lo_bits + (hi_bits - lo_bits) / 2;
        if privacy_loss(budget, f64::from_bits(mid), d_in)? <= target {
            hi_bits = mid;
        } else {
            lo_bits = mid;
        }
    }
    let scale = f64::from_bits(hi_bits);
    let loss = privacy_loss(budget, scale, d_in)?;
    if loss > target || loss < target * (1.0 - TIGHTNESS) {
        return Err(fail(format!(
            "the privacy map at the smallest admissible scale {scale} is {loss}, \
             not within {TIGHTNESS} relative below the budget"
        )));
    }
    Ok(scale)
}

/// Half-width of the 95% interval from OpenDP's accuracy functions.
fn margin_95(budget: DpBudget, scale: f64) -> Result<f64, DpError> {
    let map_err = |e| DpError::opendp("computing the 95% margin of error", e);
    let margin = match budget {
        DpBudget::ZCdp { .. } if scale <= DG_EXACT_ACCURACY_MAX_SCALE => {
            discrete_gaussian_scale_to_accuracy::<f64>(scale, ALPHA_95).map_err(map_err)?
        }
        // CKS20 Prop. 25: P[X >= m] <= P[N(0, scale^2) >= m - 1].
        DpBudget::ZCdp { .. } => {
            gaussian_scale_to_accuracy::<f64>(scale, ALPHA_95)
                .map_err(map_err)?
                .ceil()
                + 1.0
        }
        DpBudget::PureDp { .. } => {
            discrete_laplacian_scale_to_accuracy::<f64>(scale, ALPHA_95).map_err(map_err)?
        }
    };
    if margin.is_finite() && margin >= 0.0 {
        Ok(margin)
    } else {
        Err(DpError::OpenDp {
            context: "computing the 95% margin of error",
            message: format!("accuracy at scale {scale} is {margin}"),
        })
    }
}

struct Plan {
    scale: f64,
    d_in: f64,
    charge: DpCharge,
    margin_of_error_95: f64,
}

fn charge_of(budget: DpBudget, loss: f64) -> DpCharge {
    match budget {
        DpBudget::ZCdp { .. } => DpCharge::Rho(loss),
        DpBudget::PureDp { .. } => DpCharge::Epsilon(loss),
    }
}

fn plan(grouping_sets: usize, per_set: f64, budget: DpBudget) -> Result<Plan, DpError> {
    budget.validate()?;
    if grouping_sets == 0 {
        return Err(DpError::InvalidGroupingSets { grouping_sets });
    }
    if !(per_set.is_finite() && per_set > 0.0) {
        return Err(DpError::InvalidSensitivity { value: per_set });
    }
    let d_in = sensitivity(grouping_sets, per_set, budget);
    let scale = find_scale(budget, d_in)?;
    let charge = charge_of(budget, privacy_loss(budget, scale, d_in)?);
    let margin_of_error_95 = margin_95(budget, scale)?;
    Ok(Plan {
        scale,
        d_in,
        charge,
        margin_of_error_95,
    })
}

fn release(
    cells: &[i64],
    grouping_sets: usize,
    per_set: f64,
    budget: DpBudget,
) -> Result<DpRelease, DpError> {
    let plan = plan(grouping_sets, per_set, budget)?;
    let input = cells.to_vec();
    // The charge is read from the very measurement that samples, and
    // checked before any noise is drawn.
    let check = |loss: Result<f64, opendp::error::Error>| {
        let loss = loss.map_err(|e| DpError::opendp("evaluating the privacy map", e))?;
        if charge_of(budget, loss) == plan.charge && loss <= budget.value() {
            Ok(plan.charge)
        } else {
            Err(DpError::OpenDp {
                context: "evaluating the privacy map",
                message: format!(
                    "map at scale {} gave {loss}, planned {}",
                    plan.scale,
                    plan.charge.value()
                ),
            })
        }
    };
    let invoke_err = |e| DpError::opendp("sampling noise", e);
    let (values, charge) = match budget {
        DpBudget::ZCdp { .. } => {
            let m = gaussian(plan.scale)?;
            let charge = check(m.map(&plan.d_in))?;
            (m.invoke(&input).map_err(invoke_err)?, charge)
        }
        DpBudget::PureDp { .. } => {
            let m = laplace(plan.scale)?;
            let charge = check(m.map(&plan.d_in))?;
            (m.invoke(&input).map_err(invoke_err)?, charge)
        }
    };
    Ok(DpRelease {
        values,
        scale: plan.scale,
        charge,
        margin_of_error_95: plan.margin_of_error_95,
    })
}
