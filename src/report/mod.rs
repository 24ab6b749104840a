//! Six-monthly monitoring and evaluation report (*monev*) over the audit
//! log, for Disdukcapil's review of every institution using the service.
//!
//! [`build`] computes every figure from a [`ReportInput`] (the verified
//! chain, the audit records of the window, the agreements from the policy
//! files and the budget ledger) into a [`Report`]; it is pure, so the same
//! input always gives the same report. [`render`] writes the report as one
//! self-contained HTML file (printable on A4, no JavaScript, no external
//! assets), Markdown, long-format CSV (`section,agreement,metric,key,value`)
//! or JSON. All four carry the same figures; HTML and Markdown format
//! numbers the Indonesian way (`1.234`, `42,5%`), CSV and JSON as plain
//! machine numbers.
//!
//! # Window and calendar
//!
//! `from` and `to` are inclusive calendar days in WIB (UTC+7, Indonesia's
//! western time zone, which has no daylight saving). A record belongs to the
//! report when its time, converted to WIB, falls on one of those days; the
//! caller selects records with [`window_bounds`] and [`build`] ignores (and
//! counts, as `records_ignored`) any record outside the window or with an
//! unreadable time. Weeks are ISO weeks of the WIB date (`2026-W03`).
//!
//! # Contents
//!
//! 1. **Chain verification** comes first. A broken chain leads every format
//!    with a warning naming the first bad entry's `seq` and the reason (HTML:
//!    a red box before the title; Markdown: a bold first line; CSV: the
//!    first row after the header; JSON: `chain.ok = false` with `seq` and
//!    `reason`, the first field of the document).
//! 2. **Summary** over the reported agreements, requests without an
//!    agreement (agreement `-`: missing or unknown token), requests per ISO
//!    week per agreement (an SVG line chart in HTML, a table elsewhere), the
//!    top [`TOP_CODES`] rejection codes, and the snapshots in use.
//! 3. **Per agreement** (every agreement with requests in the window or
//!    whose validity overlaps it, or only the one asked for; agreements that
//!    appear only in the log are reported and marked as no longer in the
//!    policy):
//!    - *Identitas*: PKS number, institution, stage, validity, the
//!      expiry warning and the count of requests outside the validity;
//!    - *Permintaan*: accepted, rejected and failed requests, rejections
//!      and failures by code, and the sensitive-rejection spike rule;
//!    - *Elemen*: elements used by released queries against the permitted
//!      ones;
//!    - *Anggaran*: the DP budget per six-month period from the ledger, and
//!      the share of suppressed cells;
//!    - *Kueri tersimpan*: saved queries and how often they ran;
//!    - *Pola yang perlu diperiksa*: differencing, off-hours bursts and
//!      tokens used from several addresses.
//!
//! A *release* is an accepted request that ran SQL and returned data, i.e.
//! `outcome = accepted`, `sql` present and an endpoint other than a cost
//! estimate (`…/cost`). Elements, suppression and differencing look at
//! releases only; request counts look at every request.
//!
//! # Rules and thresholds
//!
//! - **Expiry** ([`EXPIRY_WARNING_DAYS`]): flagged when `valid_until` is at
//!   most 60 days after `as_of`, or already past. Requests whose WIB date is
//!   before `valid_from` or after `valid_until` are counted (the check is
//!   shown even when the count is 0); any of them that was *accepted* is a
//!   serious finding.
//! - **Sensitive-rejection spike**: a rejection is sensitive when its code is
//!   `identifier_*`, `record_key_not_queryable`, `element_not_permitted` or
//!   `minister_permission_required` (attempts at personal data or at
//!   elements outside the PKS). An agreement has a spike when at least
//!   [`SPIKE_MIN_IN_WINDOW`] (5) sensitive rejections fall in any window of
//!   [`SPIKE_WINDOW_HOURS`] (24) hours, or when sensitive rejections are at
//!   least [`SPIKE_MIN_SHARE_PERCENT`] (20%) of the agreement's requests and
//!   number at least [`SPIKE_SHARE_MIN_COUNT`] (3; so that one mistake in
//!   three requests is not a spike).
//! - **Elements**: used = elements touched by releases. Permitted but never
//!   used elements are candidates for narrowing the PKS. Protected elements
//!   (the catalog's Pasal 84 elements, i.e. `penyandang_cacat`, and anything
//!   under the agreement's `minister_permission`) that were used are listed.
//!   An element is *used but not permitted* when it is not in
//!   `permitted_elements`, or is protected and not in `minister_permission`;
//!   the gate makes this impossible unless the policy changed since, so any
//!   is a finding.
//! - **Budget** (DP): per period (the ledger row's `period`, see
//!   [`crate::state::period_of`]), spent = committed + pending (pending is
//!   shown separately; it counts as spent), as a percentage of
//!   `budget_per_period`; [`BUDGET_HIGH_PERCENT`] (80%) or more is a
//!   warning, more than 100% an error. For every method: suppressed cells /
//!   cells over the releases.
//! - **Differencing**: every release's SQL is reduced to a template (see
//!   [`sql_template`]: numbers and quoted strings, dates included, become
//!   `?`; comments dropped; whitespace collapsed; words lower-cased). Among
//!   the ad-hoc releases of one agreement (saved queries are excluded: their
//!   parameters are typed and meant to vary), a template is flagged when at
//!   least [`DIFFERENCING_MIN_VARIANTS`] (3) distinct literal tuples agree in
//!   every position but one: the same question asked about 3+ neighbouring
//!   values, which is how differencing attacks narrow groups down.
//! - **Off-hours bursts**: office hours are Monday–Friday
//!   [`OFFICE_START_HOUR`]:00–[`OFFICE_END_HOUR`]:00 WIB (public holidays
//!   are not known and count as working days). Every request outside them is
//!   counted; a clock hour (WIB) holding at least [`OFF_HOURS_BURST_MIN`]
//!   (10) off-hours requests is flagged.
//! - **Shared tokens**: a token id seen from more than one client address
//!   (the IP; a port is dropped) is flagged. Behind a reverse proxy the
//!   service must log the client's address, not the proxy's.
//!
//! The same rules are printed as footnotes in every format ([`Report::rules`]).

pub mod collect;
mod csv_long;
mod detect;
mod doc;
mod html;
mod markdown;
#[cfg(test)]
mod tests;
mod text;

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, NaiveTime};
use serde::Serialize;

use crate::state::{
    AuditRecord, ChainReport, LedgerRow, LedgerState, Outcome, RefusalCount, period_of,
};

pub use detect::{SqlTemplate, sql_template};

/// Title of the report.
pub const TITLE: &str = "Laporan Monitoring dan Evaluasi Penggunaan Data Agregat";
/// Agreement and token id of requests without a valid token.
pub const UNATTRIBUTED: &str = "-";
/// WIB is UTC+7.
pub use crate::calendar::WIB_OFFSET_SECONDS;
/// Warn when an agreement ends within this many days after `as_of`.
pub const EXPIRY_WARNING_DAYS: i64 = 60;
/// Width of the sliding window of the spike rule.
pub const SPIKE_WINDOW_HOURS: i64 = 24;
/// Sensitive rejections in one window that make a spike.
pub const SPIKE_MIN_IN_WINDOW: u64 = 5;
/// Share of an agreement's requests, in percent, that makes a spike.
pub const SPIKE_MIN_SHARE_PERCENT: f64 = 20.0;
/// The share rule needs at least this many sensitive rejections.
pub const SPIKE_SHARE_MIN_COUNT: u64 = 3;
/// Budget use (percent of the allowance) that is a warning.
pub const BUDGET_HIGH_PERCENT: f64 = 80.0;
/// Distinct one-literal variants of a template that are flagged.
pub const DIFFERENCING_MIN_VARIANTS: usize = 3;
/// First office hour (WIB), inclusive.
pub const OFFICE_START_HOUR: u32 = 7;
/// End of office hours (WIB), exclusive.
pub const OFFICE_END_HOUR: u32 = 16;
/// Off-hours requests in one clock hour that are flagged.
pub const OFF_HOURS_BURST_MIN: u64 = 10;
/// Rows of the top rejection codes table.
pub const TOP_CODES: usize = 10;
/// Rows of the table of addresses with the most unauthenticated refusals.
pub const TOP_ADDRESSES: usize = 10;

/// One agreement as the policy files describe it; filled by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct AgreementInfo {
    /// The agreement's id, as in the audit log.
    pub id: String,
    /// The institution (OPD) that signed the PKS, by its full name.
    pub institution: String,
    /// The PKS's document number.
    pub pks_number: String,
    /// `trial` or `production`.
    pub stage: String,
    /// First day of validity.
    pub valid_from: NaiveDate,
    /// Last day of validity, inclusive.
    pub valid_until: NaiveDate,
    /// Catalog elements the PKS permits.
    pub permitted_elements: Vec<String>,
    /// Protected elements covered by the minister's permission.
    pub minister_permission: Vec<String>,
    /// `cell_key` or `dp`.
    pub method: String,
    /// DP allowance per six-month period.
    pub budget_per_period: Option<f64>,
}

/// Everything [`build`] needs.
#[derive(Debug, Clone, Copy)]
pub struct ReportInput<'a> {
    /// First day of the window (WIB), inclusive.
    pub from: NaiveDate,
    /// Last day of the window (WIB), inclusive.
    pub to: NaiveDate,
    /// "Today", for the expiry warning.
    pub as_of: NaiveDate,
    /// Report only this agreement.
    pub agreement_filter: Option<&'a str>,
    /// Result of verifying the whole chain.
    pub chain: &'a ChainReport,
    /// The audit records of the window (see [`window_bounds`]).
    pub records: &'a [AuditRecord],
    /// Every agreement in the policy.
    pub agreements: &'a [AgreementInfo],
    /// Every ledger row, of every agreement.
    pub ledger: &'a [LedgerRow],
    /// Unauthenticated refusals counted per address, minute and code
    /// (`refusal_counts`), of the window (see [`window_bounds`]).
    pub refusals: &'a [RefusalCount],
}

/// RFC 3339 UTC bounds `[start, end)` of the WIB days `from..=to`, for
/// [`crate::state::StateStore::entries`]: `from` 00:00 WIB is the day
/// before at 17:00 UTC.
pub fn window_bounds(from: NaiveDate, to: NaiveDate) -> (String, String) {
    let bound = |d: NaiveDate| {
        let utc = d.and_time(NaiveTime::MIN) - Duration::seconds(i64::from(WIB_OFFSET_SECONDS));
        utc.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    };
    (bound(from), bound(to + Duration::days(1)))
}

// ------------------------------------------------------------------ report

/// The whole report; every figure any format shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Chain verification; first, so a broken chain leads the JSON too.
    pub chain: ChainSummary,
    /// The report's title ([`TITLE`]).
    pub title: String,
    /// First day of the window (WIB), `YYYY-MM-DD`.
    pub from: String,
    /// Last day of the window (WIB), inclusive.
    pub to: String,
    /// The day the expiry warning counts from.
    pub as_of: String,
    /// When the report was generated: `as_of` unless the caller sets a
    /// timestamp (the report is built without reading the clock).
    pub generated_at: String,
    /// The one agreement reported, when the caller asked for only one.
    pub agreement_filter: Option<String>,
    /// Totals over the window.
    pub summary: Summary,
    /// Requests per ISO week per agreement.
    pub weekly: Weekly,
    /// The most frequent rejection codes, at most [`TOP_CODES`].
    pub top_rejection_codes: Vec<CodeCount>,
    /// Requests per snapshot id.
    pub snapshots: Vec<SnapshotUse>,
    /// Unauthenticated refusals (counted, not in the chain).
    pub unauthenticated: Unauthenticated,
    /// One section per reported agreement, by id.
    pub agreements: Vec<AgreementReport>,
    /// The detection rules, printed as footnotes.
    pub rules: Vec<Rule>,
}

/// The chain verification as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainSummary {
    /// True when the whole chain verifies.
    pub ok: bool,
    /// Records in the whole log.
    pub entries: u64,
    /// Head hash (intact chain) or the last hash that verified.
    pub head_hash: Option<String>,
    /// Sequence number of the first broken record.
    pub seq: Option<u64>,
    /// Why it is broken.
    pub reason: Option<String>,
    /// The line shown to the reader (the warning when broken).
    pub message: String,
}

/// Requests counted by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// Every request.
    pub total: u64,
    /// Answered.
    pub accepted: u64,
    /// Refused by a gate.
    pub rejected: u64,
    /// Failed while executing.
    pub failed: u64,
}

impl RequestCounts {
    fn add(&mut self, outcome: Outcome) {
        self.total += 1;
        match outcome {
            Outcome::Accepted => self.accepted += 1,
            Outcome::Rejected => self.rejected += 1,
            Outcome::Failed => self.failed += 1,
        }
    }
}

/// Totals over the window, for the summary section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Every request in the window (of the filtered agreement, if any).
    pub requests: RequestCounts,
    /// Requests without an agreement (missing or unknown token).
    pub unattributed: RequestCounts,
    /// Agreements reported.
    pub agreements: u64,
    /// Records given but outside the window or with an unreadable time.
    pub records_ignored: u64,
}

/// How often one refusal or error code occurred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CodeCount {
    /// The code, e.g. `element_not_permitted`; `(tanpa kode)` for requests
    /// logged without one.
    pub code: String,
    /// Requests (or unauthenticated refusals) with this code.
    pub count: u64,
}

/// Refusals of requests that never authenticated (no, a malformed, an
/// unknown or a doubled token, an unknown `/v1` route, the per-address
/// limit, a body too slow, a disk too full). They are counted per client
/// address, minute and code rather than logged one audit entry each, and
/// belong to no agreement: with an agreement filter they are not shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Unauthenticated {
    /// Refusals in the window.
    pub total: u64,
    /// Every code, most frequent first.
    pub by_code: Vec<CodeCount>,
    /// Distinct client addresses (IPv6: /64).
    pub addresses: u64,
    /// The addresses with the most refusals, at most [`TOP_ADDRESSES`].
    pub top_addresses: Vec<AddressCount>,
}

/// The unauthenticated refusals of one client address in the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddressCount {
    /// `""` when the address was unknown; `*` for the addresses counted
    /// together once the service held too many distinct ones.
    pub address: String,
    /// Refusals from this address.
    pub count: u64,
    /// Minutes with at least one refusal.
    pub minutes: u64,
    /// Its most frequent code.
    pub top_code: String,
}

/// How often one snapshot was queried in the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotUse {
    /// The snapshot id.
    pub snapshot: String,
    /// Requests that ran on it.
    pub requests: u64,
    /// Of those, accepted.
    pub accepted: u64,
}

/// Requests per ISO week per agreement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Weekly {
    /// Every ISO week touching the window, e.g. `2026-W03`.
    pub weeks: Vec<String>,
    /// One series per reported agreement, then one for requests without an
    /// agreement (`-`) when there are any and no filter is set.
    pub series: Vec<WeeklySeries>,
}

/// The weekly request counts of one agreement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeeklySeries {
    /// Agreement id (`-` for requests without one).
    pub agreement: String,
    /// One count per week of [`Weekly::weeks`].
    pub counts: Vec<u64>,
}

/// How much attention a finding needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Must be explained (e.g. data released outside the validity).
    Danger,
    /// Should be looked at.
    Warning,
    /// For information (e.g. candidates for narrowing the PKS).
    Info,
}

impl Severity {
    /// The lower-case name (`danger`, `warning`, `info`), as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Danger => "danger",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One thing the reviewer should look at, in Indonesian.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// How much attention it needs.
    pub severity: Severity,
    /// Stable code, e.g. `expiry`, `differencing`.
    pub code: String,
    /// The finding for the reader, in Indonesian.
    pub message: String,
}

/// The section of one agreement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgreementReport {
    /// The agreement's id.
    pub id: String,
    /// False when the agreement appears only in the log.
    pub in_policy: bool,
    /// Findings of all sections, most severe first.
    pub findings: Vec<Finding>,
    /// *Identitas*: the PKS details and validity checks.
    pub identity: Identity,
    /// *Permintaan*: requests by outcome and code.
    pub requests: Requests,
    /// *Elemen*: elements used against those permitted.
    pub elements: Elements,
    /// *Anggaran*: the DP budget per period and the suppression share.
    pub budget: Budget,
    /// *Kueri tersimpan*: the saved queries run, most requested first.
    pub saved_queries: Vec<SavedQueryUse>,
    /// *Pola yang perlu diperiksa*: differencing, off-hours bursts, shared
    /// tokens.
    pub patterns: Patterns,
}

/// The *Identitas* section. The PKS details are `None` for an agreement
/// that is no longer in the policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Identity {
    /// The institution (OPD) that signed the PKS.
    pub institution: Option<String>,
    /// The PKS's document number.
    pub pks_number: Option<String>,
    /// `trial` or `production`.
    pub stage: Option<String>,
    /// First day of validity, `YYYY-MM-DD`.
    pub valid_from: Option<String>,
    /// Last day of validity (inclusive), `YYYY-MM-DD`.
    pub valid_until: Option<String>,
    /// Protection method: `cell_key` or `dp`.
    pub method: Option<String>,
    /// DP allowance per six-month period.
    pub budget_per_period: Option<f64>,
    /// `valid_until - as_of` in days (negative: already ended).
    pub days_until_expiry: Option<i64>,
    /// Ends within [`EXPIRY_WARNING_DAYS`] or already ended.
    pub expiry_warning: bool,
    /// Requests of the window dated outside the validity.
    pub outside_validity: OutsideValidity,
}

/// Requests whose WIB date is outside the agreement's validity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutsideValidity {
    /// False when the validity is unknown (agreement not in the policy).
    pub checked: bool,
    /// Requests dated before `valid_from`.
    pub before_valid_from: u64,
    /// Requests dated after `valid_until`.
    pub after_valid_until: u64,
    /// Requests outside the validity, either side.
    pub total: u64,
    /// Of those, accepted (should be 0).
    pub accepted: u64,
}

/// The *Permintaan* section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Requests {
    /// The agreement's requests by outcome.
    pub counts: RequestCounts,
    /// Rejected requests by code, most frequent first.
    pub rejections_by_code: Vec<CodeCount>,
    /// Failed requests by code, most frequent first.
    pub failures_by_code: Vec<CodeCount>,
    /// Sensitive rejections and the spike rule.
    pub sensitive: SensitiveRejections,
}

/// Rejections with sensitive codes and the spike rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensitiveRejections {
    /// Rejections with a sensitive code ([`is_sensitive_code`]).
    pub total: u64,
    /// Those rejections by code, most frequent first.
    pub by_code: Vec<CodeCount>,
    /// Most sensitive rejections in any [`SPIKE_WINDOW_HOURS`] window.
    pub max_in_window: u64,
    /// Start of that window (WIB, RFC 3339).
    pub window_start: Option<String>,
    /// Share of the agreement's requests, in percent.
    pub share_percent: Option<f64>,
    /// The spike rule fires (by the window count or by the share).
    pub spike: bool,
}

/// The *Elemen* section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Elements {
    /// Permitted elements in the policy.
    pub permitted: Vec<String>,
    /// Minister's permissions in the policy.
    pub minister_permission: Vec<String>,
    /// Elements touched by releases, with the number of releases.
    pub used: Vec<ElementUse>,
    /// Permitted but never used: candidates for narrowing the PKS.
    pub unused_permitted: Vec<String>,
    /// Protected elements that were used.
    pub protected_used: Vec<ElementUse>,
    /// Used but not (or no longer) permitted; should be empty.
    pub used_not_permitted: Vec<ElementUse>,
}

/// One element and how many releases touched it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ElementUse {
    /// The catalog element, e.g. `jenis_kelamin`.
    pub element: String,
    /// Releases that touched it.
    pub queries: u64,
}

/// The *Anggaran* section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Budget {
    /// Protection method (`cell_key` or `dp`); `None` when the agreement is
    /// no longer in the policy.
    pub method: Option<String>,
    /// Ledger figures per period (DP agreements, or any agreement with
    /// ledger rows in the window's periods).
    pub periods: Vec<PeriodBudget>,
    /// Suppressed cells over the releases, for every method.
    pub suppression: Suppression,
}

/// The budget ledger of one agreement in one six-month period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeriodBudget {
    /// `YYYY-S1` or `YYYY-S2`.
    pub period: String,
    /// Sum of the committed ledger rows' amounts.
    pub committed: f64,
    /// Sum of the pending ledger rows' amounts (counted as spent).
    pub pending: f64,
    /// Committed plus pending.
    pub spent: f64,
    /// The agreement's `budget_per_period`, if it has one.
    pub allowance: Option<f64>,
    /// `spent / allowance`, in percent.
    pub percent: Option<f64>,
    /// Ledger rows (reservations) in the period.
    pub reservations: u64,
    /// Of which still pending.
    pub pending_reservations: u64,
}

/// Cells released and suppressed over an agreement's releases.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Suppression {
    /// Releases (accepted queries that returned data).
    pub releases: u64,
    /// Cells in the releases' result grids.
    pub cells: u64,
    /// Of those, cells suppressed by disclosure control.
    pub suppressed_cells: u64,
    /// `suppressed_cells / cells`, in percent.
    pub percent: Option<f64>,
}

/// How often one saved query ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SavedQueryUse {
    /// The saved query's name (`/v1/queries/{name}`).
    pub name: String,
    /// Its requests by outcome.
    pub requests: RequestCounts,
}

/// The *Pola yang perlu diperiksa* section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Patterns {
    /// Templates of ad-hoc releases asked with several values in one
    /// literal position.
    pub differencing: Vec<DifferencingFinding>,
    /// Requests outside office hours and the bursts among them.
    pub off_hours: OffHours,
    /// Tokens seen from more than one client address.
    pub multi_address_tokens: Vec<TokenAddresses>,
}

/// A template asked with 3+ values in one literal position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DifferencingFinding {
    /// The SQL template (`?` for literals).
    pub template: String,
    /// The varying literal, counted from 1.
    pub position: usize,
    /// The literals in order, `…` at the varying position.
    pub fixed: Vec<String>,
    /// The values at the varying position and how many releases used each.
    pub values: Vec<WeightedValue>,
    /// Releases in this group.
    pub queries: u64,
}

/// A value and how many requests used it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightedValue {
    /// A literal at the varying position (differencing) or a client address
    /// without its port (shared tokens).
    pub value: String,
    /// Releases (differencing) or requests (shared tokens) with this value.
    pub requests: u64,
}

/// Requests outside office hours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OffHours {
    /// Requests outside office hours.
    pub total: u64,
    /// Clock hours with at least [`OFF_HOURS_BURST_MIN`] of them.
    pub bursts: Vec<HourBucket>,
}

/// One clock hour (WIB) with an off-hours burst.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HourBucket {
    /// WIB date.
    pub date: String,
    /// Indonesian weekday name.
    pub weekday: String,
    /// WIB hour: the bucket is `hour:00–hour:59`.
    pub hour: u32,
    /// Off-hours requests in that hour.
    pub requests: u64,
}

/// A token used from more than one client address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenAddresses {
    /// The token's id (never the token itself).
    pub token_id: String,
    /// Each address and its requests.
    pub addresses: Vec<WeightedValue>,
}

/// A detection rule as printed in the footnotes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Stable id, e.g. `expiry`, `differencing`.
    pub id: String,
    /// The rule in Indonesian, with its thresholds.
    pub text: String,
}

// ------------------------------------------------------------------- build

/// A record of the window with its WIB time.
struct Req<'a> {
    rec: &'a AuditRecord,
    at: DateTime<FixedOffset>,
}

impl Req<'_> {
    fn outcome(&self) -> Outcome {
        self.rec.entry.outcome
    }

    fn is_release(&self) -> bool {
        let e = &self.rec.entry;
        e.outcome == Outcome::Accepted && e.sql.is_some() && !e.endpoint.ends_with("/cost")
    }

    fn saved_query(&self) -> Option<&str> {
        saved_query_name(&self.rec.entry.endpoint)
    }
}

/// Name of the saved query an endpoint runs (`/v1/queries/usia_sekolah`).
fn saved_query_name(endpoint: &str) -> Option<&str> {
    let rest = endpoint.strip_prefix("/v1/queries/")?;
    let name = rest.split('/').next().unwrap_or_default();
    (!name.is_empty()).then_some(name)
}

/// Whether a rejection code counts towards the spike rule.
pub fn is_sensitive_code(code: &str) -> bool {
    code.starts_with("identifier_")
        || matches!(
            code,
            "record_key_not_queryable" | "element_not_permitted" | "minister_permission_required"
        )
}

/// Counts by code, most frequent first (ties by code).
fn by_code<'a>(codes: impl IntoIterator<Item = Option<&'a str>>) -> Vec<CodeCount> {
    let mut map: BTreeMap<&str, u64> = BTreeMap::new();
    for c in codes {
        *map.entry(c.unwrap_or("(tanpa kode)")).or_default() += 1;
    }
    let mut v: Vec<CodeCount> = map
        .into_iter()
        .map(|(code, count)| CodeCount {
            code: code.to_string(),
            count,
        })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.code.cmp(&b.code)));
    v
}

fn percent(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| part * 100.0 / whole)
}

/// Builds the report. Pure: every figure comes from `input`.
pub fn build(input: &ReportInput) -> Report {
    let mut ignored = 0u64;
    let mut reqs: Vec<Req> = Vec::new();
    for rec in input.records {
        if input
            .agreement_filter
            .is_some_and(|f| rec.entry.agreement != f)
        {
            continue;
        }
        match detect::parse_wib(&rec.entry.time) {
            Some(at) if (input.from..=input.to).contains(&at.date_naive()) => {
                reqs.push(Req { rec, at });
            }
            _ => ignored += 1,
        }
    }

    let policy: BTreeMap<&str, &AgreementInfo> = input
        .agreements
        .iter()
        .map(|a| (a.id.as_str(), a))
        .collect();
    let mut by_agreement: BTreeMap<&str, Vec<&Req>> = BTreeMap::new();
    for r in &reqs {
        by_agreement
            .entry(r.rec.entry.agreement.as_str())
            .or_default()
            .push(r);
    }
    let ids: BTreeSet<&str> = match input.agreement_filter {
        Some(f) => BTreeSet::from([f]),
        None => by_agreement
            .keys()
            .copied()
            .filter(|id| *id != UNATTRIBUTED)
            .chain(
                input
                    .agreements
                    .iter()
                    .filter(|a| a.valid_from <= input.to && a.valid_until >= input.from)
                    .map(|a| a.id.as_str()),
            )
            .collect(),
    };

    let periods: BTreeSet<String> = days(input.from, input.to).map(period_of).collect();
    let agreements: Vec<AgreementReport> = ids
        .iter()
        .map(|id| {
            let rs = by_agreement.get(id).map(Vec::as_slice).unwrap_or_default();
            let ledger: Vec<&LedgerRow> =
                input.ledger.iter().filter(|l| l.agreement == *id).collect();
            agreement_report(id, policy.get(id).copied(), rs, &ledger, &periods, input)
        })
        .collect();

    let mut requests = RequestCounts::default();
    let mut unattributed = RequestCounts::default();
    for r in &reqs {
        requests.add(r.outcome());
        if r.rec.entry.agreement == UNATTRIBUTED {
            unattributed.add(r.outcome());
        }
    }

    // Weekly series: reported agreements, then requests without one.
    let weeks = detect::iso_weeks(input.from, input.to);
    let week_index: BTreeMap<&str, usize> = weeks
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i))
        .collect();
    let mut series_ids: Vec<&str> = ids.iter().copied().collect();
    if input.agreement_filter.is_none() && unattributed.total > 0 {
        series_ids.push(UNATTRIBUTED);
    }
    let series = series_ids
        .into_iter()
        .map(|id| {
            let mut counts = vec![0u64; weeks.len()];
            for r in by_agreement.get(id).map(Vec::as_slice).unwrap_or_default() {
                let label = detect::iso_week_label(r.at.date_naive());
                if let Some(i) = week_index.get(label.as_str()) {
                    counts[*i] += 1;
                }
            }
            WeeklySeries {
                agreement: id.to_string(),
                counts,
            }
        })
        .collect();

    let mut top = by_code(
        reqs.iter()
            .filter(|r| r.outcome() == Outcome::Rejected)
            .map(|r| r.rec.entry.code.as_deref()),
    );
    top.truncate(TOP_CODES);

    let mut snaps: BTreeMap<&str, SnapshotUse> = BTreeMap::new();
    for r in &reqs {
        if let Some(s) = r.rec.entry.snapshot.as_deref() {
            let u = snaps.entry(s).or_insert_with(|| SnapshotUse {
                snapshot: s.to_string(),
                requests: 0,
                accepted: 0,
            });
            u.requests += 1;
            if r.outcome() == Outcome::Accepted {
                u.accepted += 1;
            }
        }
    }
    let mut snapshots: Vec<SnapshotUse> = snaps.into_values().collect();
    snapshots.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then_with(|| a.snapshot.cmp(&b.snapshot))
    });

    let unauthenticated = match input.agreement_filter {
        Some(_) => Unauthenticated::default(),
        None => unauthenticated(input),
    };

    Report {
        chain: chain_summary(input.chain),
        title: TITLE.to_string(),
        from: input.from.to_string(),
        to: input.to.to_string(),
        as_of: input.as_of.to_string(),
        generated_at: input.as_of.to_string(),
        agreement_filter: input.agreement_filter.map(str::to_string),
        summary: Summary {
            requests,
            unattributed,
            agreements: agreements.len() as u64,
            records_ignored: ignored,
        },
        weekly: Weekly { weeks, series },
        top_rejection_codes: top,
        snapshots,
        unauthenticated,
        agreements,
        rules: rules(),
    }
}

/// Totals per code and the top addresses of the refusal counts whose
/// minute falls on a day of the window (WIB).
fn unauthenticated(input: &ReportInput) -> Unauthenticated {
    let mut by_code: BTreeMap<&str, u64> = BTreeMap::new();
    // address -> (count, minutes, count per code)
    type PerAddress<'a> = (u64, BTreeSet<&'a str>, BTreeMap<&'a str, u64>);
    let mut by_addr: BTreeMap<&str, PerAddress> = BTreeMap::new();
    let mut total = 0u64;
    for c in input.refusals {
        let in_window = detect::parse_wib(&c.minute)
            .is_some_and(|at| (input.from..=input.to).contains(&at.date_naive()));
        if !in_window {
            continue;
        }
        total += c.count;
        *by_code.entry(&c.code).or_default() += c.count;
        let a = by_addr.entry(&c.client_addr).or_default();
        a.0 += c.count;
        a.1.insert(&c.minute);
        *a.2.entry(&c.code).or_default() += c.count;
    }
    let mut codes: Vec<CodeCount> = by_code
        .into_iter()
        .map(|(code, count)| CodeCount {
            code: code.to_string(),
            count,
        })
        .collect();
    codes.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.code.cmp(&b.code)));
    let addresses = by_addr.len() as u64;
    let mut top: Vec<AddressCount> = by_addr
        .into_iter()
        .map(|(address, (count, minutes, codes))| AddressCount {
            address: address.to_string(),
            count,
            minutes: minutes.len() as u64,
            top_code: codes
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                .map(|(c, _)| c.to_string())
                .unwrap_or_default(),
        })
        .collect();
    top.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.address.cmp(&b.address))
    });
    top.truncate(TOP_ADDRESSES);
    Unauthenticated {
        total,
        by_code: codes,
        addresses,
        top_addresses: top,
    }
}

/// Every day of `from..=to`.
fn days(from: NaiveDate, to: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    from.iter_days().take_while(move |d| *d <= to)
}

fn chain_summary(chain: &ChainReport) -> ChainSummary {
    let head = chain.head_hash.clone();
    match &chain.first_broken {
        None => ChainSummary {
            ok: true,
            entries: chain.entries,
            message: format!(
                "Rantai log audit utuh: {} entri terverifikasi, hash kepala {}.",
                text::int(chain.entries),
                head.as_deref().unwrap_or("(log kosong)")
            ),
            head_hash: head,
            seq: None,
            reason: None,
        },
        Some(b) => {
            let reason = b.reason.to_string();
            ChainSummary {
                ok: false,
                entries: chain.entries,
                message: format!(
                    "PERINGATAN: rantai log audit RUSAK pada entri seq {}: {}. Log tidak dapat \
                     dipercaya mulai entri ini; angka dalam laporan ini harus diperiksa ulang \
                     setelah kerusakan diselidiki.",
                    b.seq, reason
                ),
                head_hash: head,
                seq: Some(b.seq),
                reason: Some(reason),
            }
        }
    }
}

fn agreement_report(
    id: &str,
    info: Option<&AgreementInfo>,
    reqs: &[&Req],
    ledger: &[&LedgerRow],
    periods: &BTreeSet<String>,
    input: &ReportInput,
) -> AgreementReport {
    let mut findings: Vec<Finding> = Vec::new();
    let mut find = |severity, code: &str, message: String| {
        findings.push(Finding {
            severity,
            code: code.to_string(),
            message,
        });
    };
    if info.is_none() {
        find(
            Severity::Warning,
            "not_in_policy",
            "Perjanjian ini tidak lagi ada di berkas kebijakan; hanya tercatat di log audit."
                .into(),
        );
    }

    // Identitas.
    let mut outside = OutsideValidity::default();
    let mut days_until_expiry = None;
    if let Some(a) = info {
        outside.checked = true;
        for r in reqs {
            let d = r.at.date_naive();
            let (before, after) = (d < a.valid_from, d > a.valid_until);
            if before {
                outside.before_valid_from += 1;
            }
            if after {
                outside.after_valid_until += 1;
            }
            if before || after {
                outside.total += 1;
                if r.outcome() == Outcome::Accepted {
                    outside.accepted += 1;
                }
            }
        }
        days_until_expiry = Some((a.valid_until - input.as_of).num_days());
    }
    let expiry_warning = days_until_expiry.is_some_and(|d| d <= EXPIRY_WARNING_DAYS);
    if expiry_warning && let Some(d) = days_until_expiry {
        find(Severity::Warning, "expiry", text::expiry(d));
    }
    if outside.accepted > 0 {
        find(
            Severity::Danger,
            "outside_validity_accepted",
            format!(
                "{} permintaan di luar masa berlaku diterima (data keluar tanpa PKS yang berlaku).",
                text::int(outside.accepted)
            ),
        );
    } else if outside.total > 0 {
        find(
            Severity::Warning,
            "outside_validity",
            format!(
                "{} permintaan di luar masa berlaku (semuanya ditolak).",
                text::int(outside.total)
            ),
        );
    }
    let identity = Identity {
        institution: info.map(|a| a.institution.clone()),
        pks_number: info.map(|a| a.pks_number.clone()),
        stage: info.map(|a| a.stage.clone()),
        valid_from: info.map(|a| a.valid_from.to_string()),
        valid_until: info.map(|a| a.valid_until.to_string()),
        method: info.map(|a| a.method.clone()),
        budget_per_period: info.and_then(|a| a.budget_per_period),
        days_until_expiry,
        expiry_warning,
        outside_validity: outside,
    };

    // Permintaan.
    let mut counts = RequestCounts::default();
    for r in reqs {
        counts.add(r.outcome());
    }
    fn code_of<'a>(r: &&Req<'a>) -> Option<&'a str> {
        r.rec.entry.code.as_deref()
    }
    let rejected: Vec<&Req> = reqs
        .iter()
        .copied()
        .filter(|r| r.outcome() == Outcome::Rejected)
        .collect();
    let sensitive: Vec<&Req> = rejected
        .iter()
        .copied()
        .filter(|r| code_of(r).is_some_and(is_sensitive_code))
        .collect();
    let times: Vec<DateTime<FixedOffset>> = sensitive.iter().map(|r| r.at).collect();
    let (max_in_window, window_start) = detect::max_in_window(&times);
    let share_percent = percent(sensitive.len() as f64, counts.total as f64);
    let by_window = max_in_window >= SPIKE_MIN_IN_WINDOW;
    let by_share = sensitive.len() as u64 >= SPIKE_SHARE_MIN_COUNT
        && share_percent.is_some_and(|p| p >= SPIKE_MIN_SHARE_PERCENT);
    let spike = by_window || by_share;
    if spike {
        find(
            Severity::Warning,
            "sensitive_spike",
            format!(
                "Lonjakan penolakan sensitif (identitas/elemen di luar PKS): {} penolakan, \
                 paling banyak {} dalam {} jam, {} dari semua permintaan.",
                text::int(sensitive.len() as u64),
                text::int(max_in_window),
                SPIKE_WINDOW_HOURS,
                text::pct(share_percent)
            ),
        );
    }
    let requests = Requests {
        counts,
        rejections_by_code: by_code(rejected.iter().map(code_of)),
        failures_by_code: by_code(
            reqs.iter()
                .filter(|r| r.outcome() == Outcome::Failed)
                .map(|r| r.rec.entry.code.as_deref()),
        ),
        sensitive: SensitiveRejections {
            total: sensitive.len() as u64,
            by_code: by_code(sensitive.iter().map(code_of)),
            max_in_window,
            window_start: window_start.map(|t| t.to_rfc3339()),
            share_percent,
            spike,
        },
    };

    // Elemen.
    let releases: Vec<&&Req> = reqs.iter().filter(|r| r.is_release()).collect();
    let mut used: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &releases {
        for e in r.rec.entry.elements.iter().collect::<BTreeSet<_>>() {
            *used.entry(e.as_str()).or_default() += 1;
        }
    }
    let permitted: BTreeSet<&str> = info
        .map(|a| a.permitted_elements.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let minister: BTreeSet<&str> = info
        .map(|a| a.minister_permission.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let is_protected = |e: &str| {
        minister.contains(e)
            || crate::catalog::column(e).is_some_and(|c| c.needs_minister_permission())
    };
    let uses = |pred: &dyn Fn(&str) -> bool| -> Vec<ElementUse> {
        used.iter()
            .filter(|(e, _)| pred(e))
            .map(|(e, n)| ElementUse {
                element: e.to_string(),
                queries: *n,
            })
            .collect()
    };
    let elements = Elements {
        permitted: detect::sorted(permitted.iter().copied()),
        minister_permission: detect::sorted(minister.iter().copied()),
        used: uses(&|_| true),
        unused_permitted: permitted
            .iter()
            .filter(|e| !used.contains_key(*e))
            .map(|e| e.to_string())
            .collect(),
        protected_used: uses(&|e| is_protected(e)),
        used_not_permitted: uses(&|e| {
            !permitted.contains(e) || (is_protected(e) && !minister.contains(e))
        }),
    };
    // An agreement gone from the policy permits nothing now; its
    // `not_in_policy` finding says so already.
    if info.is_some() && !elements.used_not_permitted.is_empty() {
        find(
            Severity::Danger,
            "used_not_permitted",
            format!(
                "Elemen dipakai tetapi tidak (lagi) diizinkan: {}.",
                names(&elements.used_not_permitted)
            ),
        );
    }
    if !elements.protected_used.is_empty() {
        find(
            Severity::Info,
            "protected_used",
            format!(
                "Elemen yang dilindungi (izin Menteri) dipakai: {}.",
                names(&elements.protected_used)
            ),
        );
    }
    if !elements.unused_permitted.is_empty() {
        find(
            Severity::Info,
            "unused_permitted",
            format!(
                "Kandidat penyempitan PKS (diizinkan, tidak pernah dipakai): {}.",
                elements.unused_permitted.join(", ")
            ),
        );
    }

    // Anggaran.
    let method = info.map(|a| a.method.clone());
    let allowance = info.and_then(|a| a.budget_per_period);
    let has_rows = ledger.iter().any(|l| periods.contains(&l.period));
    let show_ledger = method.as_deref() == Some("dp") || has_rows;
    let mut period_budgets = Vec::new();
    if show_ledger {
        for p in periods {
            let rows: Vec<&&LedgerRow> = ledger.iter().filter(|l| &l.period == p).collect();
            let sum = |s: LedgerState| -> f64 {
                rows.iter().filter(|l| l.state == s).map(|l| l.amount).sum()
            };
            let (committed, pending) = (sum(LedgerState::Committed), sum(LedgerState::Pending));
            let spent = committed + pending;
            let pct = allowance.and_then(|a| percent(spent, a));
            if let Some(v) = pct {
                if v > 100.0 + 1e-9 {
                    find(
                        Severity::Danger,
                        "budget_over",
                        format!(
                            "Anggaran privasi {p} terlampaui: {} terpakai.",
                            text::pct(pct)
                        ),
                    );
                } else if v >= BUDGET_HIGH_PERCENT {
                    find(
                        Severity::Warning,
                        "budget_high",
                        format!("Anggaran privasi {p}: {} terpakai.", text::pct(pct)),
                    );
                }
            }
            period_budgets.push(PeriodBudget {
                period: p.clone(),
                committed,
                pending,
                spent,
                allowance,
                percent: pct,
                reservations: rows.len() as u64,
                pending_reservations: rows
                    .iter()
                    .filter(|l| l.state == LedgerState::Pending)
                    .count() as u64,
            });
        }
    }
    let cells: u64 = releases.iter().map(|r| r.rec.entry.cells).sum();
    let suppressed: u64 = releases.iter().map(|r| r.rec.entry.suppressed_cells).sum();
    let budget = Budget {
        method,
        periods: period_budgets,
        suppression: Suppression {
            releases: releases.len() as u64,
            cells,
            suppressed_cells: suppressed,
            percent: percent(suppressed as f64, cells as f64),
        },
    };

    // Kueri tersimpan.
    let mut saved: BTreeMap<&str, RequestCounts> = BTreeMap::new();
    for r in reqs {
        if let Some(name) = r.saved_query() {
            saved.entry(name).or_default().add(r.outcome());
        }
    }
    let mut saved_queries: Vec<SavedQueryUse> = saved
        .into_iter()
        .map(|(name, requests)| SavedQueryUse {
            name: name.to_string(),
            requests,
        })
        .collect();
    saved_queries.sort_by(|a, b| {
        b.requests
            .total
            .cmp(&a.requests.total)
            .then_with(|| a.name.cmp(&b.name))
    });

    // Pola.
    let differencing = detect::differencing(
        releases
            .iter()
            .filter(|r| r.saved_query().is_none())
            .filter_map(|r| r.rec.entry.sql.as_deref()),
    );
    let all_times: Vec<DateTime<FixedOffset>> = reqs.iter().map(|r| r.at).collect();
    let (off_total, bursts) = detect::off_hours(&all_times);
    let multi = detect::multi_address_tokens(reqs.iter().filter_map(|r| {
        let e = &r.rec.entry;
        e.client_addr.as_deref().map(|a| (e.token_id.as_str(), a))
    }));
    if !differencing.is_empty() {
        find(
            Severity::Warning,
            "differencing",
            format!(
                "{} pola kueri yang hanya berbeda pada satu nilai (kemungkinan differencing).",
                text::int(differencing.len() as u64)
            ),
        );
    }
    if !bursts.is_empty() {
        find(
            Severity::Warning,
            "off_hours_burst",
            format!(
                "{} jam di luar jam kerja dengan ≥ {} permintaan.",
                text::int(bursts.len() as u64),
                OFF_HOURS_BURST_MIN
            ),
        );
    }
    if !multi.is_empty() {
        find(
            Severity::Warning,
            "multi_address_token",
            format!(
                "Token dipakai dari lebih dari satu alamat: {}.",
                multi
                    .iter()
                    .map(|t| t.token_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let patterns = Patterns {
        differencing,
        off_hours: OffHours {
            total: off_total,
            bursts,
        },
        multi_address_tokens: multi,
    };

    findings.sort_by_key(|f| f.severity);
    AgreementReport {
        id: id.to_string(),
        in_policy: info.is_some(),
        findings,
        identity,
        requests,
        elements,
        budget,
        saved_queries,
        patterns,
    }
}

fn names(uses: &[ElementUse]) -> String {
    uses.iter()
        .map(|u| u.element.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The detection rules, in Indonesian, for the footnotes.
fn rules() -> Vec<Rule> {
    let rule = |id: &str, text: String| Rule {
        id: id.to_string(),
        text,
    };
    vec![
        rule(
            "window",
            "Periode laporan memakai tanggal WIB (UTC+7); minggu adalah minggu ISO. \
             Rilis = permintaan diterima yang menjalankan SQL dan mengeluarkan data \
             (bukan estimasi biaya)."
                .to_string(),
        ),
        rule(
            "expiry",
            format!(
                "Masa berlaku ditandai bila berakhir dalam {EXPIRY_WARNING_DAYS} hari setelah \
                 tanggal acuan atau sudah berakhir. Permintaan di luar masa berlaku dihitung \
                 menurut tanggal WIB."
            ),
        ),
        rule(
            "sensitive_spike",
            format!(
                "Penolakan sensitif: kode identifier_*, record_key_not_queryable, \
                 element_not_permitted, minister_permission_required. Lonjakan bila \
                 ≥ {SPIKE_MIN_IN_WINDOW} dalam {SPIKE_WINDOW_HOURS} jam mana pun, atau \
                 ≥ {SPIKE_MIN_SHARE_PERCENT}% dari seluruh permintaan perjanjian (minimal \
                 {SPIKE_SHARE_MIN_COUNT} penolakan)."
            ),
        ),
        rule(
            "elements",
            "Elemen dipakai = elemen yang disentuh rilis. Elemen diizinkan yang tidak pernah \
             dipakai adalah kandidat penyempitan PKS. Elemen dilindungi (Pasal 84) memerlukan \
             izin Menteri; elemen dipakai yang tidak diizinkan seharusnya tidak ada."
                .to_string(),
        ),
        rule(
            "budget",
            format!(
                "Anggaran privasi (DP) per periode enam bulan dari buku besar: terpakai = \
                 committed + pending (pending tetap dihitung terpakai). ≥ \
                 {BUDGET_HIGH_PERCENT}% ditandai. Untuk semua metode: persentase sel yang \
                 disembunyikan atas sel rilis."
            ),
        ),
        rule(
            "differencing",
            format!(
                "Differencing: SQL rilis ad-hoc dinormalkan (angka, string dan tanggal menjadi ?, \
                 spasi dan huruf diseragamkan); templat yang muncul dengan ≥ \
                 {DIFFERENCING_MIN_VARIANTS} nilai berbeda pada satu posisi literal, sedangkan \
                 literal lain sama, ditandai. Kueri tersimpan tidak ikut dihitung."
            ),
        ),
        rule(
            "off_hours",
            format!(
                "Jam kerja: Senin–Jumat {OFFICE_START_HOUR:02}.00–{OFFICE_END_HOUR:02}.00 WIB \
                 (hari libur nasional tidak diperhitungkan). Jam (WIB) di luar jam kerja dengan \
                 ≥ {OFF_HOURS_BURST_MIN} permintaan ditandai."
            ),
        ),
        rule(
            "multi_address_token",
            "Token yang dipakai dari lebih dari satu alamat klien (IP, tanpa port) ditandai."
                .to_string(),
        ),
    ]
}

// ------------------------------------------------------------------ render

/// Output format of [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One self-contained HTML file, printable on A4.
    Html,
    /// Markdown.
    Markdown,
    /// Long-format CSV: `section,agreement,metric,key,value`.
    Csv,
    /// The [`Report`] as pretty-printed JSON.
    Json,
}

impl Format {
    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Html => "html",
            Format::Markdown => "md",
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }
}

impl FromStr for Format {
    type Err = ReportError;

    /// `html`, `md` (or `markdown`), `csv`, `json`.
    fn from_str(s: &str) -> Result<Format, ReportError> {
        match s.to_ascii_lowercase().as_str() {
            "html" => Ok(Format::Html),
            "md" | "markdown" => Ok(Format::Markdown),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            _ => Err(ReportError::UnknownFormat(s.to_string())),
        }
    }
}

/// Why a format name could not be parsed or a report not rendered.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A format name other than `html`, `md`, `markdown`, `csv` or `json`
    /// (the name as given).
    #[error("unknown report format {0:?}; use html, md, csv or json")]
    UnknownFormat(String),
    /// Serialising the report as JSON failed.
    #[error("cannot write the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Writing the CSV failed.
    #[error("cannot write the report as CSV: {0}")]
    Csv(#[from] csv::Error),
}

/// Writes the report in one format.
pub fn render(report: &Report, format: Format) -> Result<Vec<u8>, ReportError> {
    match format {
        Format::Html => Ok(html::render(report).into_bytes()),
        Format::Markdown => Ok(markdown::render(report).into_bytes()),
        Format::Csv => csv_long::render(report),
        Format::Json => Ok(serde_json::to_vec_pretty(report)?),
    }
}
