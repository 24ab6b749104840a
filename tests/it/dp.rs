//! Differential privacy: charges against OpenDP's own privacy maps, noise
//! distribution against theory, margins, errors and monotonicity.
//!
//! OpenDP's sampler draws from OpenSSL's `RAND_priv_bytes` and cannot be
//! seeded, so the statistical tests use 20,000 draws and 5-standard-error
//! tolerances (two-sided false-failure probability about 6e-7 per check).

use agregat::protect::dp::{
    DpBudget, DpCharge, DpError, l1_sensitivity, l2_sensitivity, noisy_counts, noisy_sums,
    plan_cost,
};
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::{make_gaussian, make_laplace};
use opendp::measures::{MaxDivergence, ZeroConcentratedDivergence};
use opendp::metrics::{L1Distance, L2Distance};

const N: usize = 20_000;
const Z: f64 = 5.0;

fn opendp_rho(scale: f64, d_in: f64) -> f64 {
    make_gaussian::<VectorDomain<AtomDomain<i64>>, L2Distance<f64>, ZeroConcentratedDivergence>(
        VectorDomain::new(AtomDomain::default()),
        L2Distance::default(),
        scale,
        None,
    )
    .unwrap()
    .map(&d_in)
    .unwrap()
}

fn opendp_epsilon(scale: f64, d_in: f64) -> f64 {
    make_laplace::<VectorDomain<AtomDomain<i64>>, L1Distance<f64>, MaxDivergence>(
        VectorDomain::new(AtomDomain::default()),
        L1Distance::default(),
        scale,
        None,
    )
    .unwrap()
    .map(&d_in)
    .unwrap()
}

/// Exact (to f64) pmf of the noise on [-r, r], r far in the tails.
fn pmf(budget: DpBudget, scale: f64) -> Vec<(i64, f64)> {
    let r = (60.0 * scale).ceil() as i64 + 10;
    let w: Vec<(i64, f64)> = (-r..=r)
        .map(|x| {
            let xf = x as f64;
            let w = match budget {
                DpBudget::ZCdp { .. } => (-(xf / scale).powi(2) / 2.0).exp(),
                DpBudget::PureDp { .. } => (-xf.abs() / scale).exp(),
            };
            (x, w)
        })
        .collect();
    let total: f64 = w.iter().map(|(_, w)| w).sum();
    w.into_iter().map(|(x, w)| (x, w / total)).collect()
}

fn moment(p: &[(i64, f64)], k: i32) -> f64 {
    p.iter().map(|&(x, w)| (x as f64).powi(k) * w).sum()
}

fn exact_sqrt_up_ok(d: f64, g: f64) -> bool {
    // sign of the exact d*d - g
    d.mul_add(d, -g) >= 0.0
}

#[test]
fn charge_is_opendps_privacy_map_rho() {
    for (g, rho) in [(1usize, 0.5), (3, 0.5), (1, 0.01), (3, 0.0123)] {
        let release = noisy_counts(&[5, 0, 7], g, DpBudget::ZCdp { rho }).unwrap();
        let DpCharge::Rho(charged) = release.charge else {
            panic!("zCDP budget charged {:?}", release.charge);
        };
        // The sensitivity the module hands to OpenDP: sqrt(g), never below.
        let d = l2_sensitivity(g, 1.0);
        assert!(exact_sqrt_up_ok(d, g as f64), "d_in {d} < sqrt({g})");
        assert!(d <= (g as f64).sqrt().next_up());
        // The same measurement, built here, maps d to exactly the charge.
        assert_eq!(opendp_rho(release.scale, d), charged);
        // ... and the naive f64 sqrt would not cost more.
        assert!(opendp_rho(release.scale, (g as f64).sqrt()) <= charged);
        assert!(charged <= rho, "charged {charged} > budget {rho}");
        assert!(charged >= rho * (1.0 - 1e-9), "charged {charged} not tight");
        // Smallest admissible scale: one ulp less overspends.
        assert!(opendp_rho(release.scale.next_down(), d) > rho);
    }
}

#[test]
fn charge_is_opendps_privacy_map_epsilon() {
    for (g, epsilon) in [(1usize, 1.0), (3, 1.0), (1, 0.1), (3, 0.37)] {
        let release = noisy_counts(&[5, 0, 7], g, DpBudget::PureDp { epsilon }).unwrap();
        let DpCharge::Epsilon(charged) = release.charge else {
            panic!("pure-DP budget charged {:?}", release.charge);
        };
        let d = l1_sensitivity(g, 1.0);
        assert_eq!(d, g as f64);
        assert_eq!(opendp_epsilon(release.scale, d), charged);
        assert!(charged <= epsilon);
        assert!(charged >= epsilon * (1.0 - 1e-9));
        assert!(opendp_epsilon(release.scale.next_down(), d) > epsilon);
    }
}

#[test]
fn sums_use_clamp_sensitivity() {
    let (lo, hi, g) = (-50i64, 120i64, 2usize);
    let budget = DpBudget::PureDp { epsilon: 0.8 };
    let release = noisy_sums(&[1000, 0, 360], lo, hi, g, budget).unwrap();
    assert_eq!(release.values.len(), 3);
    // L1 = g * max(|lo|, |hi|) = 240.
    assert_eq!(opendp_epsilon(release.scale, 240.0), release.charge.value());
    assert!((release.scale - 240.0 / 0.8).abs() / 300.0 < 1e-12);
    let (scale, charge, moe) = plan_cost(g, 120.0, budget).unwrap();
    assert_eq!(
        (scale, charge, moe),
        (release.scale, release.charge, release.margin_of_error_95)
    );

    let budget = DpBudget::ZCdp { rho: 0.02 };
    let release = noisy_sums(&[1000, 0, 360], lo, hi, g, budget).unwrap();
    let d = l2_sensitivity(g, 120.0);
    assert!(d >= 2f64.sqrt() * 120.0);
    assert_eq!(opendp_rho(release.scale, d), release.charge.value());
    assert!(release.charge.value() <= 0.02);

    assert!(matches!(
        noisy_sums(&[1], 5, -5, 1, budget),
        Err(DpError::InvalidBounds { lo: 5, hi: -5 })
    ));
    assert!(matches!(
        noisy_sums(&[1], 0, 0, 1, budget),
        Err(DpError::InvalidBounds { .. })
    ));
}

/// Second moment about 0 of the noise against the pmf, with the standard
/// error sqrt((mu4 - var^2) / n).
fn check_variance(budget: DpBudget, theory_closed_form: impl Fn(f64) -> f64) {
    let release = noisy_counts(&vec![0; N], 1, budget).unwrap();
    let s = release.scale;
    let p = pmf(budget, s);
    let var = moment(&p, 2);
    let mu4 = moment(&p, 4);
    let closed = theory_closed_form(s);
    assert!(
        (var - closed).abs() / closed < 1e-6,
        "pmf variance {var} vs closed form {closed}"
    );
    let n = release.values.len() as f64;
    let emp = release
        .values
        .iter()
        .map(|&x| (x as f64).powi(2))
        .sum::<f64>()
        / n;
    let se = ((mu4 - var * var) / n).sqrt();
    assert!(
        (emp - var).abs() <= Z * se,
        "{budget:?}: scale {s}, empirical variance {emp}, theory {var} +- {}",
        Z * se
    );
    let mean = release.values.iter().sum::<i64>() as f64 / n;
    assert!(mean.abs() <= Z * (var / n).sqrt(), "mean {mean}");
}

#[test]
fn discrete_gaussian_variance_matches_theory() {
    // rho = 0.005, sensitivity 1: scale = 1 / sqrt(0.01) = 10, variance ~ 100
    // (the discrete Gaussian's variance differs from scale^2 by ~e^{-2 pi^2 s^2}).
    check_variance(DpBudget::ZCdp { rho: 0.005 }, |s| s * s);
}

#[test]
fn discrete_laplace_variance_matches_theory() {
    // epsilon = 0.5, sensitivity 1: scale = 2, variance 2q/(1-q)^2 ~ 7.83.
    check_variance(DpBudget::PureDp { epsilon: 0.5 }, |s| {
        let q = (-1.0 / s).exp();
        2.0 * q / (1.0 - q).powi(2)
    });
}

/// About 95% of |noise| fall under the margin: the exact coverage under the
/// pmf is >= 95% (OpenDP's guarantee, P[|noise| >= moe] <= 0.05) and the
/// empirical share is within 5 binomial standard errors of it.
fn check_margin(budget: DpBudget, grouping_sets: usize) {
    let release = noisy_counts(&vec![0; N], grouping_sets, budget).unwrap();
    let moe = release.margin_of_error_95;
    let p = pmf(budget, release.scale);
    let coverage: f64 = p
        .iter()
        .filter(|&&(x, _)| (x.abs() as f64) < moe)
        .map(|&(_, w)| w)
        .sum();
    assert!(
        (0.95 - 1e-9..0.97).contains(&coverage),
        "{budget:?}: exact coverage {coverage} of margin {moe}"
    );
    let n = release.values.len() as f64;
    let inside = release
        .values
        .iter()
        .filter(|&&x| (x.abs() as f64) <= moe)
        .count() as f64;
    // |x| <= moe and |x| < moe differ only when moe is an integer (Gaussian).
    let coverage_le: f64 = p
        .iter()
        .filter(|&&(x, _)| (x.abs() as f64) <= moe)
        .map(|&(_, w)| w)
        .sum();
    let share = inside / n;
    let se = (coverage_le * (1.0 - coverage_le) / n).sqrt();
    assert!(
        (share - coverage_le).abs() <= Z * se,
        "{budget:?}: {share} of |noise| <= {moe}, expected {coverage_le} +- {}",
        Z * se
    );
    assert!((share - 0.95).abs() < 0.02, "share {share} not about 95%");
}

#[test]
fn margin_covers_95_percent_gaussian() {
    check_margin(DpBudget::ZCdp { rho: 0.01 }, 3);
}

#[test]
fn margin_covers_95_percent_laplace() {
    check_margin(DpBudget::PureDp { epsilon: 0.3 }, 3);
}

#[test]
fn invalid_budgets_are_typed_errors_naming_the_value() {
    for value in [0.0, -0.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        for budget in [
            DpBudget::ZCdp { rho: value },
            DpBudget::PureDp { epsilon: value },
        ] {
            let name = match budget {
                DpBudget::ZCdp { .. } => "rho",
                DpBudget::PureDp { .. } => "epsilon",
            };
            for result in [
                noisy_counts(&[1, 2], 1, budget).map(|_| ()),
                noisy_sums(&[1, 2], 0, 10, 1, budget).map(|_| ()),
                plan_cost(1, 1.0, budget).map(|_| ()),
            ] {
                let err = result.unwrap_err();
                match &err {
                    DpError::InvalidBudget {
                        parameter,
                        value: v,
                    } => {
                        assert_eq!(*parameter, name);
                        assert!(v.to_bits() == value.to_bits(), "{v} vs {value}");
                    }
                    other => panic!("{budget:?}: expected InvalidBudget, got {other:?}"),
                }
                let msg = err.to_string();
                assert!(
                    msg.contains(&format!("{name} = {value}")),
                    "message {msg:?} does not name {name} = {value}"
                );
                assert_eq!(err.category(), agregat::ErrorCategory::Usage);
            }
        }
    }
    assert!(matches!(
        noisy_counts(&[1], 0, DpBudget::ZCdp { rho: 1.0 }),
        Err(DpError::InvalidGroupingSets { grouping_sets: 0 })
    ));
    for bad in [0.0, -1.0, f64::NAN] {
        assert!(matches!(
            plan_cost(1, bad, DpBudget::PureDp { epsilon: 1.0 }),
            Err(DpError::InvalidSensitivity { .. })
        ));
    }
}

#[test]
fn more_grouping_sets_means_more_noise() {
    for budget in [
        DpBudget::ZCdp { rho: 0.1 },
        DpBudget::PureDp { epsilon: 0.5 },
    ] {
        let mut last = (0.0, 0.0);
        for g in 1..=6 {
            let (scale, charge, moe) = plan_cost(g, 1.0, budget).unwrap();
            assert!(
                scale > last.0,
                "{budget:?}: g={g} scale {scale} <= {}",
                last.0
            );
            assert!(moe >= last.1, "{budget:?}: g={g} margin {moe} < {}", last.1);
            assert!(charge.value() <= budget.value());
            last = (scale, moe);
        }
    }
    // zCDP scale grows like sqrt(g), pure DP like g.
    let (s1, _, _) = plan_cost(1, 1.0, DpBudget::ZCdp { rho: 0.1 }).unwrap();
    let (s4, _, _) = plan_cost(4, 1.0, DpBudget::ZCdp { rho: 0.1 }).unwrap();
    assert!((s4 / s1 - 2.0).abs() < 1e-12);
    let (s1, _, _) = plan_cost(1, 1.0, DpBudget::PureDp { epsilon: 0.5 }).unwrap();
    let (s3, _, _) = plan_cost(3, 1.0, DpBudget::PureDp { epsilon: 0.5 }).unwrap();
    assert!((s3 / s1 - 3.0).abs() < 1e-12);
}

#[test]
fn plan_cost_matches_release_and_large_scales_work() {
    let budget = DpBudget::ZCdp { rho: 0.05 };
    let release = noisy_counts(&[3, 1, 4, 1, 5], 2, budget).unwrap();
    let (scale, charge, moe) = plan_cost(2, 1.0, budget).unwrap();
    assert_eq!(scale, release.scale);
    assert_eq!(charge, release.charge);
    assert_eq!(moe, release.margin_of_error_95);
    assert_eq!(release.values.len(), 5);

    // Bounded sums of large values: scale ~ 7e6, beyond the exact
    // discrete-Gaussian accuracy loop; the fallback margin is ~1.96 sigma.
    let (scale, charge, moe) = plan_cost(1, 1e6, DpBudget::ZCdp { rho: 0.01 }).unwrap();
    assert!((scale / (1e6 / 0.02f64.sqrt()) - 1.0).abs() < 1e-12);
    assert!(charge.value() <= 0.01);
    assert!(
        (moe / scale - 1.959964).abs() < 1e-4,
        "margin {moe} at scale {scale}"
    );
    // Just below the switch the exact function agrees with it.
    let (s, _, exact) = plan_cost(1, 9.9e4, DpBudget::ZCdp { rho: 0.5 }).unwrap();
    assert!(
        (exact / s - 1.959964).abs() < 1e-4,
        "margin {exact} at scale {s}"
    );
}

#[test]
fn budget_json_is_tagged() {
    let b: DpBudget = serde_json::from_str(r#"{"measure":"z_cdp","rho":0.25}"#).unwrap();
    assert_eq!(b, DpBudget::ZCdp { rho: 0.25 });
    let b: DpBudget = serde_json::from_str(r#"{"measure":"pure_dp","epsilon":1.5}"#).unwrap();
    assert_eq!(b, DpBudget::PureDp { epsilon: 1.5 });
    assert_eq!(
        serde_json::to_string(&DpBudget::ZCdp { rho: 0.25 }).unwrap(),
        r#"{"measure":"z_cdp","rho":0.25}"#
    );
}

/// The margin an AVG reports is the margin of the released ratio (noisy
/// sum / noisy count, delta method), not the noisy sum's: by simulation,
/// 95% of released averages fall within it of the true mean.
#[test]
fn avg_margin_is_the_margin_of_the_released_ratio() {
    use agregat::protect::dp::ratio_margin_95;
    // Cells of 40 people of mean age 32 (sum 1280), ages clamped to 0..120.
    let (count, sum) = (40i64, 1280i64);
    let budget = DpBudget::ZCdp { rho: 0.05 };
    let sums = noisy_sums(&vec![sum; N], 0, 120, 1, budget).unwrap();
    let counts = noisy_counts(&vec![count; N], 1, budget).unwrap();
    let truth = sum as f64 / count as f64;
    let mut inside = 0usize;
    let mut margins = Vec::with_capacity(N);
    for i in 0..N {
        let (s, c) = (sums.values[i] as f64, counts.values[i] as f64);
        let m = ratio_margin_95(s, c, sums.margin_of_error_95, counts.margin_of_error_95);
        margins.push(m);
        if ((s / c) - truth).abs() <= m {
            inside += 1;
        }
    }
    let coverage = inside as f64 / N as f64;
    let se = (0.95f64 * 0.05 / N as f64).sqrt();
    // OpenDP's margins are tail bounds (at least 95%); the delta method is
    // an approximation: coverage between 95% - 5 se and 99%.
    assert!(
        coverage >= 0.95 - Z * se && coverage <= 0.99,
        "coverage {coverage:.4}"
    );
    // And it is about the ratio, orders of magnitude below the sum's.
    let typical = margins[N / 2];
    assert!(
        typical < sums.margin_of_error_95 / 10.0,
        "{typical} vs {}",
        sums.margin_of_error_95
    );
    assert!(typical > 0.1, "{typical}");
}
