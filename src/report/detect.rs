//! The detection rules of the "Pola yang perlu diperiksa" section and the
//! time helpers they share (WIB calendar, office hours, SQL templates).
//! The thresholds are the constants in the parent module; the rules are
//! documented there.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, Timelike, Weekday};

use super::{
    DIFFERENCING_MIN_VARIANTS, DifferencingFinding, HourBucket, OFF_HOURS_BURST_MIN,
    OFFICE_END_HOUR, OFFICE_START_HOUR, SPIKE_WINDOW_HOURS, TokenAddresses, WIB_OFFSET_SECONDS,
    WeightedValue,
};

/// The WIB time zone (UTC+7, no daylight saving).
pub(super) fn wib() -> FixedOffset {
    FixedOffset::east_opt(WIB_OFFSET_SECONDS).expect("UTC+7 is a valid offset")
}

/// Parses an audit entry time (RFC 3339) and converts it to WIB.
pub(super) fn parse_wib(time: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.with_timezone(&wib()))
}

/// Whether a WIB time falls in office hours: Monday to Friday, from
/// [`OFFICE_START_HOUR`]:00 up to (not including) [`OFFICE_END_HOUR`]:00.
/// Public holidays are not known to the report and count as working days.
pub(super) fn in_office_hours(t: &DateTime<FixedOffset>) -> bool {
    let weekday = t.weekday();
    let working_day = !matches!(weekday, Weekday::Sat | Weekday::Sun);
    working_day && (OFFICE_START_HOUR..OFFICE_END_HOUR).contains(&t.hour())
}

/// Indonesian name of a weekday.
pub(super) fn hari(weekday: Weekday) -> &'static str {
    match weekday {
        Weekday::Mon => "Senin",
        Weekday::Tue => "Selasa",
        Weekday::Wed => "Rabu",
        Weekday::Thu => "Kamis",
        Weekday::Fri => "Jumat",
        Weekday::Sat => "Sabtu",
        Weekday::Sun => "Minggu",
    }
}

/// ISO week label of a date, e.g. `2026-W03`.
pub(super) fn iso_week_label(date: NaiveDate) -> String {
    let w = date.iso_week();
    format!("{}-W{:02}", w.year(), w.week())
}

/// Every ISO week touching `[from, to]`, in order.
pub(super) fn iso_weeks(from: NaiveDate, to: NaiveDate) -> Vec<String> {
    let mut weeks: Vec<String> = Vec::new();
    let mut d = from;
    while d <= to {
        let label = iso_week_label(d);
        if weeks.last() != Some(&label) {
            weeks.push(label);
        }
        match d.succ_opt() {
            Some(next) => d = next,
            None => break,
        }
    }
    weeks
}

/// The largest number of events in any window of [`SPIKE_WINDOW_HOURS`]
/// hours (`[t, t + 24 h)`, starting at an event), and the first such
/// window's start. `times` need not be sorted.
pub(super) fn max_in_window(
    times: &[DateTime<FixedOffset>],
) -> (u64, Option<DateTime<FixedOffset>>) {
    let mut sorted = times.to_vec();
    sorted.sort();
    let width = Duration::hours(SPIKE_WINDOW_HOURS);
    let mut best = (0u64, None);
    let mut end = 0;
    for (start, t) in sorted.iter().enumerate() {
        if end < start {
            end = start;
        }
        while end < sorted.len() && sorted[end] - *t < width {
            end += 1;
        }
        let n = (end - start) as u64;
        if n > best.0 {
            best = (n, Some(*t));
        }
    }
    best
}

/// Off-hours requests: the total and the clock-hour buckets (WIB) holding
/// at least [`OFF_HOURS_BURST_MIN`] of them.
pub(super) fn off_hours(times: &[DateTime<FixedOffset>]) -> (u64, Vec<HourBucket>) {
    let mut total = 0u64;
    let mut buckets: BTreeMap<(NaiveDate, u32), u64> = BTreeMap::new();
    for t in times.iter().filter(|t| !in_office_hours(t)) {
        total += 1;
        *buckets.entry((t.date_naive(), t.hour())).or_default() += 1;
    }
    let bursts = buckets
        .into_iter()
        .filter(|(_, n)| *n >= OFF_HOURS_BURST_MIN)
        .map(|((date, hour), requests)| HourBucket {
            date: date.to_string(),
            weekday: hari(date.weekday()).to_string(),
            hour,
            requests,
        })
        .collect();
    (total, bursts)
}

/// The address part of a client address: `203.0.113.5:51234` and
/// `[2001:db8::1]:443` lose their port, so a new connection from the same
/// host is not a new address.
pub(super) fn host_of(addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(sa) => sa.ip().to_string(),
        Err(_) => addr.trim().to_string(),
    }
}

/// Tokens seen from more than one client address. Input: `(token_id,
/// client_addr)` of every request that has an address; the placeholder
/// token `-` (no or unknown token) is skipped.
pub(super) fn multi_address_tokens<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<TokenAddresses> {
    let mut by_token: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    for (token, addr) in pairs {
        if token == super::UNATTRIBUTED {
            continue;
        }
        *by_token
            .entry(token)
            .or_default()
            .entry(host_of(addr))
            .or_default() += 1;
    }
    by_token
        .into_iter()
        .filter(|(_, addrs)| addrs.len() > 1)
        .map(|(token, addrs)| TokenAddresses {
            token_id: token.to_string(),
            addresses: addrs
                .into_iter()
                .map(|(value, requests)| WeightedValue { value, requests })
                .collect(),
        })
        .collect()
}

/// A SQL text reduced to its template: literals replaced by `?`, comments
/// dropped, whitespace collapsed, words lower-cased (quoted identifiers
/// keep their case), and the literals in order of appearance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlTemplate {
    /// The normalised SQL with every literal replaced by `?`.
    pub template: String,
    /// The literals as written, in order of appearance (strings keep
    /// their single quotes: `'61.71.01'`).
    pub literals: Vec<String>,
}

/// Words after which `(` keeps its space in a template (`in (?, ?)`),
/// unlike a function call (`count(*)`).
const SPACED_BEFORE_PAREN: &[&str] = &[
    "and", "as", "between", "by", "else", "exists", "from", "in", "join", "not", "on", "or",
    "over", "select", "then", "using", "when", "where", "with",
];

/// Reduces SQL to a [`SqlTemplate`]. Literals are numbers (`17`, `0.5`,
/// `1e3`) and single-quoted strings (`'61.71.01'`, and the text of `DATE
/// '2026-07-01'`; the `date` keyword stays in the template).
pub fn sql_template(sql: &str) -> SqlTemplate {
    let chars: Vec<char> = sql.chars().collect();
    let mut tokens: Vec<String> = Vec::new();
    let mut literals: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && next == Some('-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i = (i + 2).min(chars.len());
        } else if c == '\'' || c == '"' {
            // A quoted string ('' escapes a quote) or quoted identifier.
            let start = i;
            i += 1;
            while i < chars.len() {
                if chars[i] == c {
                    if chars.get(i + 1) == Some(&c) {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            if c == '\'' {
                literals.push(text);
                tokens.push("?".into());
            } else {
                tokens.push(text);
            }
        } else if c.is_ascii_digit() || (c == '.' && next.is_some_and(|n| n.is_ascii_digit())) {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let mut j = i + 1;
                if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
                    j += 1;
                }
                if j < chars.len() && chars[j].is_ascii_digit() {
                    i = j;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            literals.push(chars[start..i].iter().collect());
            tokens.push("?".into());
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            tokens.push(word.to_lowercase());
        } else {
            let pair: String = [c, next.unwrap_or(' ')].iter().collect();
            if matches!(pair.as_str(), "<=" | ">=" | "<>" | "!=" | "||" | "::") {
                tokens.push(pair);
                i += 2;
            } else {
                tokens.push(c.to_string());
                i += 1;
            }
        }
    }
    SqlTemplate {
        template: join_tokens(&tokens),
        literals,
    }
}

/// Joins template tokens with single spaces, except inside parentheses
/// and before commas, so templates read like SQL.
fn join_tokens(tokens: &[String]) -> String {
    let mut out = String::new();
    let mut prev: Option<&str> = None;
    for t in tokens {
        let t = t.as_str();
        let space = match prev {
            None => false,
            Some(p) => {
                let after_open = p == "(" || p == ".";
                let before_close = matches!(t, ")" | "," | "." | ";");
                let call = t == "("
                    && p.chars()
                        .next()
                        .is_some_and(|c| c.is_alphabetic() || c == '_')
                    && !SPACED_BEFORE_PAREN.contains(&p);
                !(after_open || before_close || call)
            }
        };
        if space {
            out.push(' ');
        }
        out.push_str(t);
        prev = Some(t);
    }
    out
}

/// Differencing candidates among SQL texts (one per query, repeats
/// included): for every template, every literal position `p` and every
/// combination of the other literals, the distinct values at `p`; a group
/// with at least [`DIFFERENCING_MIN_VARIANTS`] values is a finding.
pub(super) fn differencing<'a>(
    sqls: impl IntoIterator<Item = &'a str>,
) -> Vec<DifferencingFinding> {
    // template -> literal tuple -> queries
    let mut templates: BTreeMap<String, BTreeMap<Vec<String>, u64>> = BTreeMap::new();
    for sql in sqls {
        let t = sql_template(sql);
        if t.literals.is_empty() {
            continue;
        }
        *templates
            .entry(t.template)
            .or_default()
            .entry(t.literals)
            .or_default() += 1;
    }
    let mut findings = Vec::new();
    for (template, tuples) in &templates {
        if tuples.len() < DIFFERENCING_MIN_VARIANTS {
            continue;
        }
        let arity = tuples.keys().next().map_or(0, Vec::len);
        for position in 0..arity {
            // the other literals -> varying value -> queries
            let mut groups: BTreeMap<Vec<&str>, BTreeMap<&str, u64>> = BTreeMap::new();
            for (tuple, n) in tuples {
                let fixed: Vec<&str> = tuple
                    .iter()
                    .enumerate()
                    .map(|(k, v)| if k == position { "…" } else { v.as_str() })
                    .collect();
                *groups
                    .entry(fixed)
                    .or_default()
                    .entry(tuple[position].as_str())
                    .or_default() += n;
            }
            for (fixed, values) in groups {
                if values.len() < DIFFERENCING_MIN_VARIANTS {
                    continue;
                }
                let mut values: Vec<WeightedValue> = values
                    .into_iter()
                    .map(|(v, requests)| WeightedValue {
                        value: v.to_string(),
                        requests,
                    })
                    .collect();
                sort_values(&mut values);
                findings.push(DifferencingFinding {
                    template: template.clone(),
                    position: position + 1,
                    fixed: fixed.into_iter().map(str::to_string).collect(),
                    queries: values.iter().map(|v| v.requests).sum(),
                    values,
                });
            }
        }
    }
    findings
}

/// Numeric order when every value is a number, text order otherwise.
fn sort_values(values: &mut [WeightedValue]) {
    let numbers: Option<Vec<f64>> = values
        .iter()
        .map(|v| v.value.trim_matches('\'').parse::<f64>().ok())
        .collect();
    if numbers.is_some() {
        values.sort_by(|a, b| {
            let x: f64 = a.value.trim_matches('\'').parse().unwrap_or(0.0);
            let y: f64 = b.value.trim_matches('\'').parse().unwrap_or(0.0);
            x.total_cmp(&y)
        });
    } else {
        values.sort_by(|a, b| a.value.cmp(&b.value));
    }
}

/// Distinct values of a set, sorted.
pub(super) fn sorted<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    items
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(str::to_string)
        .collect()
}
