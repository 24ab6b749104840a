//! Gathering the report's inputs from the service's state and policy: the
//! verified chain (every sealed segment and the live log), the audit
//! records of the window (by WIB day, across segments), the counts of
//! unauthenticated refusals of the window, every ledger row of every
//! agreement involved, and each agreement's PKS details.

use chrono::NaiveDate;

use super::{AgreementInfo, Report, ReportInput, build, window_bounds};
use crate::agreement::{Pks, Policy};
use crate::state::{StateError, StateStore};

/// What the report needs to know about one agreement.
pub fn agreement_info(p: &Pks) -> AgreementInfo {
    AgreementInfo {
        id: p.id().to_string(),
        institution: p.institution.clone(),
        pks_number: p.pks_number.clone(),
        stage: p.stage.to_string(),
        valid_from: p.valid_from,
        valid_until: p.valid_until,
        permitted_elements: p.agreement.permitted().iter().cloned().collect(),
        minister_permission: p.agreement.minister_permission().iter().cloned().collect(),
        method: p.agreement.protection().method_name().into(),
        budget_per_period: p.budget_per_period,
    }
}

/// Verifies the chain and builds the report of the WIB days `from..=to`.
/// Agreements that appear in the log but no longer in the policy are
/// reported too (marked as such).
pub fn from_state(
    store: &dyn StateStore,
    policy: &Policy,
    from: NaiveDate,
    to: NaiveDate,
    agreement: Option<&str>,
    as_of: NaiveDate,
) -> Result<Report, StateError> {
    let chain = store.verify()?;
    let (lo, hi) = window_bounds(from, to);
    let records = store.entries(Some(&lo), Some(&hi))?;
    let refusals = store.refusals(Some(&lo), Some(&hi))?;
    let agreements: Vec<AgreementInfo> = policy.agreements().map(|p| agreement_info(p)).collect();
    let mut ids: std::collections::BTreeSet<String> =
        agreements.iter().map(|a| a.id.clone()).collect();
    ids.extend(records.iter().map(|r| r.entry.agreement.clone()));
    let mut ledger = Vec::new();
    for id in &ids {
        ledger.extend(store.ledger_rows(id)?);
    }
    Ok(build(&ReportInput {
        from,
        to,
        as_of,
        agreement_filter: agreement,
        chain: &chain,
        records: &records,
        agreements: &agreements,
        ledger: &ledger,
        refusals: &refusals,
    }))
}
