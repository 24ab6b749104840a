//! Memory against averaging. Under the cell-key method the same people
//! always get the same noise, but a margin (one kelurahan's total, say) is
//! re-estimated by every table that splits it a different way (by agama, by
//! pendidikan, by age band…), each split with independent noise. Averaging
//! enough of them pins the margin, and exact margins make differencing work
//! again (Asghar & Kaafar, PETS 2020, against ABS TableBuilder).
//!
//! This module owns that memory. Per agreement and snapshot it records, for
//! every margin a released table determines (a universe, that is the
//! table's category restrictions, and a set of classified dimensions), how
//! much information the releases so far carry about it:
//!
//! - a direct release (the margin is a cell of the table) counts 1, once:
//!   asking again gives the same noise;
//! - a table whose cells partition the margin into `m` cells counts `1/m`,
//!   once per distinct partition: the sum of `m` cells has `m` times the
//!   variance of one.
//!
//! With the ptable's variance `V`, the averaged estimate of a margin has
//! standard error `sqrt(V / I)` for information `I`. A table that would
//! push any margin's standard error below [`SE_FLOOR`] is refused with
//! `margin_repartitioned`, before any data is read, so the refusal depends
//! only on what was asked, never on the data.
//!
//! Margins that are public anyway (the population of the whole scope by
//! kab/kota and sex, which Dukcapil publishes) are not counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::Serialize;

use super::error::{Code, QueryError};

/// The smallest standard error, in persons, that averaging the released
/// breakdowns of a margin may reach.
pub const SE_FLOOR: f64 = 1.0;

/// What one table releases about one margin.
#[derive(Debug, Clone)]
pub(crate) struct Estimate {
    /// The margin: universe and dimensions, canonical.
    pub margin: String,
    /// The partition: the grouping set that splits it (or `direct`).
    pub partition: String,
    /// Information relative to one direct release: 1 or 1/m.
    pub information: f64,
}

#[derive(Debug, Default, Clone)]
struct Margin {
    /// Information per distinct partition.
    partitions: BTreeMap<String, f64>,
}

impl Margin {
    fn information(&self) -> f64 {
        self.partitions.values().sum()
    }
}

/// The state of one margin, for `/v1/budget` and the monitoring report.
#[derive(Debug, Clone, Serialize)]
pub struct MarginState {
    /// The margin (universe and dimensions) in canonical form.
    pub margin: String,
    /// Distinct partitions released about it so far (a direct release is one).
    pub breakdowns: usize,
    /// Standard error (persons) of the best estimate from what was released.
    pub standard_error: f64,
}

/// Where admitted breakdowns are made durable (the state database), so that
/// a restart does not renew the memory: called with the agreement and the
/// new (margin, partition, information) rows before a table is admitted.
pub type Journal =
    std::sync::Arc<dyn Fn(&str, &[(String, String, f64)]) -> Result<(), String> + Send + Sync>;

/// Per agreement: margin → what has been released about it.
#[derive(Default)]
pub(crate) struct MarginMemory {
    agreements: Mutex<HashMap<String, HashMap<String, Margin>>>,
    journal: Mutex<Option<Journal>>,
}

impl std::fmt::Debug for MarginMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarginMemory").finish_non_exhaustive()
    }
}

impl MarginMemory {
    /// Makes every later admission durable through `journal`.
    pub(crate) fn set_journal(&self, journal: Journal) {
        *self
            .journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(journal);
    }

    /// Loads recorded rows: (agreement, margin, partition, information).
    pub(crate) fn restore(&self, rows: Vec<(String, String, String, f64)>) {
        let mut all = self
            .agreements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (agreement, margin, partition, information) in rows {
            all.entry(agreement)
                .or_default()
                .entry(margin)
                .or_default()
                .partitions
                .entry(partition)
                .or_insert(information);
        }
    }

    /// Admits a table's estimates for `agreement` under a ptable of variance
    /// `variance`, recording them, or refuses the table without recording
    /// anything.
    pub(crate) fn admit(
        &self,
        agreement: &str,
        variance: f64,
        estimates: &[Estimate],
    ) -> Result<(), super::error::RunError> {
        if variance <= 0.0 {
            // No noise (an identity table in tests): nothing to average.
            return Ok(());
        }
        let max_information = variance / (SE_FLOOR * SE_FLOOR);
        let mut all = self
            .agreements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let margins = all.entry(agreement.to_string()).or_default();
        let mut after: HashMap<&str, Margin> = HashMap::new();
        for e in estimates {
            let m = after
                .entry(e.margin.as_str())
                .or_insert_with(|| margins.get(&e.margin).cloned().unwrap_or_default());
            m.partitions
                .entry(e.partition.clone())
                .or_insert(e.information);
        }
        for (name, m) in &after {
            let before = margins.get(*name).map_or(0.0, Margin::information);
            let info = m.information();
            // Only a new breakdown can be refused; repeats add nothing.
            if info > before + 1e-12 && info > max_information + 1e-9 {
                return Err(super::error::RunError::Query(QueryError::new(
                    Code::MarginRepartitioned,
                    format!(
                        "the margin {name} has already been released in {} breakdown(s); another breakdown of it would let the released tables be averaged to within ±{SE_FLOOR} person of its true value. Ask for a breakdown you already have, add the margin to the query as a total (ROLLUP), or restrict the table to other categories",
                        margins.get(*name).map_or(0, |m| m.partitions.len())
                    ),
                )));
            }
        }
        // Durable before anything is released: a table whose breakdowns
        // cannot be remembered is not answered.
        let new_rows: Vec<(String, String, f64)> = after
            .iter()
            .flat_map(|(name, m)| {
                let known = margins.get(*name);
                m.partitions
                    .iter()
                    .filter(move |(p, _)| known.is_none_or(|k| !k.partitions.contains_key(*p)))
                    .map(move |(p, i)| (name.to_string(), p.clone(), *i))
            })
            .collect();
        if !new_rows.is_empty()
            && let Some(journal) = self
                .journal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        {
            journal(agreement, &new_rows).map_err(|e| {
                super::error::RunError::Engine(super::error::EngineError::MarginJournal(e))
            })?;
        }
        for (name, m) in after {
            margins.insert(name.to_string(), m);
        }
        Ok(())
    }

    /// The margins of an agreement that are closest to the floor, worst
    /// first.
    pub(crate) fn state(&self, agreement: &str, variance: f64, limit: usize) -> Vec<MarginState> {
        let all = self
            .agreements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(margins) = all.get(agreement) else {
            return Vec::new();
        };
        let mut v: Vec<MarginState> = margins
            .iter()
            .map(|(name, m)| MarginState {
                margin: name.clone(),
                breakdowns: m.partitions.len(),
                standard_error: (variance / m.information().max(1e-12)).sqrt(),
            })
            .collect();
        v.sort_by(|a, b| a.standard_error.total_cmp(&b.standard_error));
        v.truncate(limit);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(margin: &str, partition: &str, information: f64) -> Estimate {
        Estimate {
            margin: margin.into(),
            partition: partition.into(),
            information,
        }
    }

    #[test]
    fn repeats_are_free_and_new_breakdowns_are_counted() {
        let m = MarginMemory::default();
        // V = 2: information up to 2 keeps the standard error at 1 person.
        m.admit("a", 2.0, &[est("kel=1", "direct", 1.0)]).unwrap();
        m.admit("a", 2.0, &[est("kel=1", "direct", 1.0)]).unwrap();
        m.admit("a", 2.0, &[est("kel=1", "agama", 1.0 / 2.0)])
            .unwrap();
        m.admit("a", 2.0, &[est("kel=1", "agama", 1.0 / 2.0)])
            .unwrap();
        m.admit("a", 2.0, &[est("kel=1", "sex", 1.0 / 2.0)])
            .unwrap();
        let e = m
            .admit("a", 2.0, &[est("kel=1", "pendidikan", 1.0 / 10.0)])
            .unwrap_err();
        assert!(
            matches!(e, super::super::error::RunError::Query(q) if q.code == Code::MarginRepartitioned)
        );
        // Another agreement has its own memory; a refusal records nothing.
        m.admit("b", 2.0, &[est("kel=1", "pendidikan", 0.1)])
            .unwrap();
        let s = m.state("a", 2.0, 10);
        assert_eq!(s[0].breakdowns, 3);
        assert!((s[0].standard_error - 1.0).abs() < 1e-9);
    }
}
