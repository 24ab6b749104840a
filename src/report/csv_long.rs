//! The CSV form: long format, one figure per row,
//! `section,agreement,metric,key,value`, numbers as plain machine numbers
//! (percentages with one decimal). A broken chain's warning is the first
//! row after the header.

use super::text::{float_machine, pct_machine};
use super::{AgreementReport, Report, ReportError};

/// Header of the CSV form.
pub(super) const HEADER: [&str; 5] = ["section", "agreement", "metric", "key", "value"];

struct Rows {
    w: csv::Writer<Vec<u8>>,
}

impl Rows {
    fn row(
        &mut self,
        section: &str,
        agreement: &str,
        metric: &str,
        key: &str,
        value: impl ToString,
    ) -> Result<(), ReportError> {
        self.w
            .write_record([section, agreement, metric, key, &value.to_string()])?;
        Ok(())
    }

    fn counts(
        &mut self,
        section: &str,
        agreement: &str,
        metric: &str,
        c: &super::RequestCounts,
    ) -> Result<(), ReportError> {
        self.row(section, agreement, metric, "total", c.total)?;
        self.row(section, agreement, metric, "accepted", c.accepted)?;
        self.row(section, agreement, metric, "rejected", c.rejected)?;
        self.row(section, agreement, metric, "failed", c.failed)
    }
}

pub(super) fn render(r: &Report) -> Result<Vec<u8>, ReportError> {
    let mut out = Rows {
        w: csv::Writer::from_writer(Vec::new()),
    };
    out.w.write_record(HEADER)?;
    let c = &r.chain;
    if !c.ok {
        let seq = c.seq.map(|s| s.to_string()).unwrap_or_default();
        out.row("chain", "", "warning", &seq, &c.message)?;
    }
    out.row("chain", "", "ok", "", c.ok)?;
    out.row("chain", "", "entries", "", c.entries)?;
    out.row(
        "chain",
        "",
        "head_hash",
        "",
        c.head_hash.as_deref().unwrap_or(""),
    )?;
    if let Some(seq) = c.seq {
        out.row("chain", "", "seq", "", seq)?;
    }
    if let Some(reason) = &c.reason {
        out.row("chain", "", "reason", "", reason)?;
    }
    if c.ok {
        out.row("chain", "", "message", "", &c.message)?;
    }

    out.row("report", "", "title", "", &r.title)?;
    out.row("report", "", "from", "", &r.from)?;
    out.row("report", "", "to", "", &r.to)?;
    out.row("report", "", "as_of", "", &r.as_of)?;
    out.row("report", "", "generated_at", "", &r.generated_at)?;
    if let Some(f) = &r.agreement_filter {
        out.row("report", "", "agreement_filter", "", f)?;
    }

    let s = &r.summary;
    out.counts("summary", "", "requests", &s.requests)?;
    out.counts("summary", "", "unattributed", &s.unattributed)?;
    out.row("summary", "", "agreements", "", s.agreements)?;
    out.row("summary", "", "records_ignored", "", s.records_ignored)?;

    for series in &r.weekly.series {
        for (week, n) in r.weekly.weeks.iter().zip(&series.counts) {
            out.row("weekly", &series.agreement, "requests", week, n)?;
        }
    }
    for code in &r.top_rejection_codes {
        out.row(
            "top_rejection_codes",
            "",
            "rejections",
            &code.code,
            code.count,
        )?;
    }
    for snap in &r.snapshots {
        out.row("snapshots", "", "requests", &snap.snapshot, snap.requests)?;
        out.row("snapshots", "", "accepted", &snap.snapshot, snap.accepted)?;
    }
    let u = &r.unauthenticated;
    out.row("unauthenticated", "", "refusals", "", u.total)?;
    out.row("unauthenticated", "", "addresses", "", u.addresses)?;
    for code in &u.by_code {
        out.row(
            "unauthenticated",
            "",
            "refusals_by_code",
            &code.code,
            code.count,
        )?;
    }
    for a in &u.top_addresses {
        out.row(
            "unauthenticated",
            "",
            "refusals_by_address",
            &a.address,
            a.count,
        )?;
        out.row(
            "unauthenticated",
            "",
            "minutes_by_address",
            &a.address,
            a.minutes,
        )?;
    }

    for a in &r.agreements {
        agreement(&mut out, a)?;
    }

    for rule in &r.rules {
        out.row("rules", "", "rule", &rule.id, &rule.text)?;
    }
    out.w
        .into_inner()
        .map_err(|e| ReportError::Csv(e.into_error().into()))
}

fn agreement(out: &mut Rows, a: &AgreementReport) -> Result<(), ReportError> {
    let id = a.id.as_str();
    out.row("agreement", id, "in_policy", "", a.in_policy)?;
    for f in &a.findings {
        out.row("findings", id, f.severity.as_str(), &f.code, &f.message)?;
    }

    let i = &a.identity;
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    out.row("identity", id, "institution", "", opt(&i.institution))?;
    out.row("identity", id, "pks_number", "", opt(&i.pks_number))?;
    out.row("identity", id, "stage", "", opt(&i.stage))?;
    out.row("identity", id, "valid_from", "", opt(&i.valid_from))?;
    out.row("identity", id, "valid_until", "", opt(&i.valid_until))?;
    out.row("identity", id, "method", "", opt(&i.method))?;
    if let Some(b) = i.budget_per_period {
        out.row("identity", id, "budget_per_period", "", float_machine(b))?;
    }
    if let Some(d) = i.days_until_expiry {
        out.row("identity", id, "days_until_expiry", "", d)?;
    }
    out.row("identity", id, "expiry_warning", "", i.expiry_warning)?;
    let o = &i.outside_validity;
    out.row("identity", id, "outside_validity", "checked", o.checked)?;
    out.row("identity", id, "outside_validity", "total", o.total)?;
    out.row(
        "identity",
        id,
        "outside_validity",
        "before_valid_from",
        o.before_valid_from,
    )?;
    out.row(
        "identity",
        id,
        "outside_validity",
        "after_valid_until",
        o.after_valid_until,
    )?;
    out.row("identity", id, "outside_validity", "accepted", o.accepted)?;

    let rq = &a.requests;
    out.counts("requests", id, "requests", &rq.counts)?;
    for c in &rq.rejections_by_code {
        out.row("requests", id, "rejections_by_code", &c.code, c.count)?;
    }
    for c in &rq.failures_by_code {
        out.row("requests", id, "failures_by_code", &c.code, c.count)?;
    }
    let s = &rq.sensitive;
    out.row("requests", id, "sensitive_rejections", "total", s.total)?;
    for c in &s.by_code {
        out.row(
            "requests",
            id,
            "sensitive_rejections_by_code",
            &c.code,
            c.count,
        )?;
    }
    out.row(
        "requests",
        id,
        "sensitive_max_in_24h",
        s.window_start.as_deref().unwrap_or(""),
        s.max_in_window,
    )?;
    out.row(
        "requests",
        id,
        "sensitive_share_percent",
        "",
        pct_machine(s.share_percent),
    )?;
    out.row("requests", id, "sensitive_spike", "", s.spike)?;

    let e = &a.elements;
    for el in &e.permitted {
        out.row("elements", id, "permitted", el, "ya")?;
    }
    for el in &e.minister_permission {
        out.row("elements", id, "minister_permission", el, "ya")?;
    }
    for u in &e.used {
        out.row("elements", id, "used", &u.element, u.queries)?;
    }
    for el in &e.unused_permitted {
        out.row(
            "elements",
            id,
            "unused_permitted",
            el,
            "kandidat penyempitan PKS",
        )?;
    }
    for u in &e.protected_used {
        out.row("elements", id, "protected_used", &u.element, u.queries)?;
    }
    for u in &e.used_not_permitted {
        out.row("elements", id, "used_not_permitted", &u.element, u.queries)?;
    }

    let g = &a.budget;
    if let Some(m) = &g.method {
        out.row("budget", id, "method", "", m)?;
    }
    for p in &g.periods {
        let k = p.period.as_str();
        out.row("budget", id, "committed", k, float_machine(p.committed))?;
        out.row("budget", id, "pending", k, float_machine(p.pending))?;
        out.row("budget", id, "spent", k, float_machine(p.spent))?;
        out.row(
            "budget",
            id,
            "allowance",
            k,
            p.allowance.map(float_machine).unwrap_or_default(),
        )?;
        out.row("budget", id, "percent", k, pct_machine(p.percent))?;
        out.row("budget", id, "reservations", k, p.reservations)?;
        out.row(
            "budget",
            id,
            "pending_reservations",
            k,
            p.pending_reservations,
        )?;
    }
    let sp = &g.suppression;
    out.row("suppression", id, "releases", "", sp.releases)?;
    out.row("suppression", id, "cells", "", sp.cells)?;
    out.row(
        "suppression",
        id,
        "suppressed_cells",
        "",
        sp.suppressed_cells,
    )?;
    out.row("suppression", id, "percent", "", pct_machine(sp.percent))?;

    for q in &a.saved_queries {
        out.counts("saved_queries", id, &q.name, &q.requests)?;
    }

    let p = &a.patterns;
    for (n, d) in p.differencing.iter().enumerate() {
        let k = (n + 1).to_string();
        out.row("differencing", id, "template", &k, &d.template)?;
        out.row("differencing", id, "position", &k, d.position)?;
        out.row("differencing", id, "fixed", &k, d.fixed.join(", "))?;
        out.row("differencing", id, "queries", &k, d.queries)?;
        out.row("differencing", id, "variants", &k, d.values.len())?;
        for v in &d.values {
            out.row(
                "differencing",
                id,
                "value",
                &format!("{k}:{}", v.value),
                v.requests,
            )?;
        }
    }
    out.row("off_hours", id, "total", "", p.off_hours.total)?;
    for b in &p.off_hours.bursts {
        out.row(
            "off_hours",
            id,
            "burst",
            &format!("{} {:02}:00", b.date, b.hour),
            b.requests,
        )?;
    }
    for t in &p.multi_address_tokens {
        for ad in &t.addresses {
            out.row(
                "multi_address_token",
                id,
                "requests",
                &format!("{}/{}", t.token_id, ad.value),
                ad.requests,
            )?;
        }
    }
    Ok(())
}
