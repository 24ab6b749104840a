//! Indonesian number formatting and the labels HTML and Markdown share.

use super::{OutsideValidity, UNATTRIBUTED};

/// Placeholder for a missing value.
pub(super) const NONE: &str = "—";

/// An integer with `.` as the thousands separator: `1.234.567`.
pub(super) fn int(n: u64) -> String {
    group(&n.to_string())
}

fn group(digits: &str) -> String {
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('.');
        }
        out.push(c);
    }
    out
}

/// A decimal number, at most `places` decimals (trailing zeros dropped),
/// comma as the decimal separator: `1.234,5`.
fn decimal(v: f64, places: usize) -> String {
    if !v.is_finite() {
        return NONE.to_string();
    }
    let s = format!("{:.*}", places, v.abs());
    let (whole, frac) = s.split_once('.').unwrap_or((&s, ""));
    let frac = frac.trim_end_matches('0');
    let sign = if v < 0.0 && s.chars().any(|c| c.is_ascii_digit() && c != '0') {
        "-"
    } else {
        ""
    };
    if frac.is_empty() {
        format!("{sign}{}", group(whole))
    } else {
        format!("{sign}{},{frac}", group(whole))
    }
}

/// A budget amount (ε or ρ), up to 4 decimals.
pub(super) fn num(v: f64) -> String {
    decimal(v, 4)
}

/// A percentage with one decimal: `42,5%`; `—` when undefined.
pub(super) fn pct(p: Option<f64>) -> String {
    match p {
        Some(v) => format!("{}%", decimal((v * 10.0).round() / 10.0, 1)),
        None => NONE.to_string(),
    }
}

/// The percentage as CSV writes it: one decimal, dot separator.
pub(super) fn pct_machine(p: Option<f64>) -> String {
    p.map(|v| format!("{v:.1}")).unwrap_or_default()
}

/// A float as CSV writes it (shortest form, rounded to 9 decimals).
pub(super) fn float_machine(v: f64) -> String {
    let r = (v * 1e9).round() / 1e9;
    format!("{r}")
}

/// The expiry flag text.
pub(super) fn expiry(days: i64) -> String {
    match days {
        d if d < 0 => format!("sudah berakhir {} hari lalu", -d),
        0 => "berakhir hari ini".to_string(),
        d => format!("berakhir dalam {d} hari"),
    }
}

/// The outside-validity check, shown even when nothing is found.
pub(super) fn outside_validity(o: &OutsideValidity) -> String {
    if !o.checked {
        return "tidak dapat diperiksa: perjanjian tidak ada di kebijakan".to_string();
    }
    if o.total == 0 {
        return "0 permintaan di luar masa berlaku — sesuai".to_string();
    }
    format!(
        "{} permintaan di luar masa berlaku ({} sebelum mulai berlaku, {} setelah berakhir; {} diterima)",
        int(o.total),
        int(o.before_valid_from),
        int(o.after_valid_until),
        int(o.accepted)
    )
}

pub(super) fn stage(s: &str) -> String {
    match s {
        "trial" => "uji coba (trial)".to_string(),
        "production" => "produksi (production)".to_string(),
        other => other.to_string(),
    }
}

pub(super) fn method(m: &str) -> String {
    match m {
        "cell_key" => "cell-key (perturbasi)".to_string(),
        "dp" => "privasi diferensial (DP)".to_string(),
        other => other.to_string(),
    }
}

/// How an agreement id is shown in the weekly chart and table.
pub(super) fn series_label(agreement: &str) -> String {
    if agreement == UNATTRIBUTED {
        "(tanpa perjanjian)".to_string()
    } else {
        agreement.to_string()
    }
}

/// A text bar of 20 characters for Markdown.
pub(super) fn text_bar(p: Option<f64>) -> String {
    let filled = p.map_or(0, |v| ((v.clamp(0.0, 100.0) / 5.0).round()) as usize);
    format!("{}{}", "█".repeat(filled), "░".repeat(20 - filled))
}

pub(super) fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or(NONE)
}

/// Indonesian label of a severity.
pub(super) fn severity(s: super::Severity) -> &'static str {
    match s {
        super::Severity::Danger => "SERIUS",
        super::Severity::Warning => "PERHATIAN",
        super::Severity::Info => "INFO",
    }
}

/// The clock hour of an off-hours bucket: `22.00–22.59`.
pub(super) fn hour_range(hour: u32) -> String {
    format!("{hour:02}.00–{hour:02}.59 WIB")
}
