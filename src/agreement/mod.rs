//! Agreements (PKS): what one institution may ask, and every access rule.
//!
//! Owns: the agreement ([`Agreement`], the query gate's and protection's
//! part, and [`Pks`], the whole file), its one file format (the PKS TOML of
//! a policy directory, [`policy`]), and the access rules: the stage rule
//! ([`Stage::may_query`]), the validity dates ([`Pks::check_valid_on`]),
//! permitted elements and the Minister's permission
//! ([`Agreement::missing_elements`]), region scope and snapshot overlap
//! ([`Pks::check_snapshot`]), the per-query limits ([`QueryLimits`]) and
//! the protection parameters (checked by the file checks; an `Agreement`
//! has private fields, so nothing can change them afterwards).

use std::collections::BTreeSet;
use std::path::Path;

use chrono::NaiveDate;

use serde::Deserialize;

use crate::catalog::{self, RegionScope};
use crate::protect::Protection;

pub mod policy;

pub use policy::{
    DEFAULT_REQUESTS_PER_MINUTE, Pks, Policy, PolicyErrors, PolicyIssue, Stage, TOKEN_PREFIX,
    TokenEntry, add_token, load_demo_tokens, mint_token, token_sha256_hex,
};

/// Per-query limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryLimits {
    /// Distinct group-by expressions (dimensions) per query.
    pub max_group_dimensions: usize,
    /// Cells of the complete result grid.
    pub max_cells: usize,
    /// Bytes of SQL text.
    pub max_sql_bytes: usize,
    /// Seconds before a query is cancelled.
    pub timeout_seconds: u64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_group_dimensions: 5,
            max_cells: 100_000,
            max_sql_bytes: 16 * 1024,
            timeout_seconds: 30,
        }
    }
}

/// The parts of an agreement the query gate and protection enforce.
#[derive(Debug, Clone)]
pub struct Agreement {
    id: String,
    /// Permitted `penduduk` columns, by catalog name.
    permitted: BTreeSet<String>,
    /// Protected columns the Minister has permitted (Pasal 84).
    minister_permission: BTreeSet<String>,
    scope: RegionScope,
    limits: QueryLimits,
    /// How released cells are protected.
    protection: Protection,
}

/// An agreement that [`Agreement::new`] refuses to build: names or limits
/// that do not fit the element catalog.
#[derive(Debug, thiserror::Error)]
pub enum AgreementError {
    /// A permitted or Minister-permitted column is not in the element catalog.
    #[error(
        "agreement '{id}': '{column}' is not a column of the element catalog; use catalog names such as 'jenis_kelamin', 'kode_kel' or 'tanggal_lahir'"
    )]
    UnknownElement {
        /// The agreement's id.
        id: String,
        /// The column name as the agreement spells it.
        column: String,
    },
    /// A column under `minister_permission` that does not need the
    /// Minister's permission (only protected elements, Pasal 84, do).
    #[error(
        "agreement '{id}': '{column}' is listed under minister_permission but is not a protected element; only 'penyandang_cacat' needs the Minister's permission"
    )]
    NotProtected {
        /// The agreement's id.
        id: String,
        /// The listed column, a catalog element that is not protected.
        column: String,
    },
    /// A `[limits]` value of 0, which would refuse every query.
    #[error(
        "agreement '{id}': [limits] {limit} = 0 would refuse every query; use a positive number"
    )]
    ZeroLimit {
        /// The agreement's id.
        id: String,
        /// The limit's key in `[limits]` (`max_cells`, `timeout_seconds`, …).
        limit: &'static str,
    },
    /// A column no agreement may permit (the record key).
    #[error("agreement '{id}': '{column}' can never be permitted: {reason}")]
    NeverPermitted {
        /// The agreement's id.
        id: String,
        /// The column that was listed as permitted.
        column: String,
        /// Why the column can never be permitted, for the message.
        reason: &'static str,
    },
}

/// `[protection]` of an agreement file.
///
/// ```toml
/// [protection]
/// method = "cell_key"       # default; or "dp"
/// k = 10                    # threshold: counts 1..k-1 withheld (noisy values under dp)
/// ptable = "ptable.csv"     # optional, relative to the agreement file;
///                           # default: generated with D = 5, V = 2, js = 2, 256 keys
/// # dp only: exactly one of
/// rho = 0.05                # zCDP per query (discrete Gaussian)
/// epsilon = 0.5             # pure DP per query (discrete Laplace)
/// ```
///
/// Files cannot switch protection off: k must be at least 3, a ptable must
/// pass `agregat ptable check` with a maximum perturbation of at least 1.
///
/// The service's policy files (`crate::agreement`) reuse this section through
/// [`ProtectionFile::build_keyed`], which also names the offending key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProtectionFile {
    #[serde(default = "default_method")]
    pub(crate) method: String,
    #[serde(default = "default_k")]
    pub(crate) k: u64,
    pub(crate) ptable: Option<std::path::PathBuf>,
    pub(crate) rho: Option<f64>,
    pub(crate) epsilon: Option<f64>,
    pub(crate) sparsity_max_ones: Option<f64>,
    pub(crate) sparsity_max_ones_twos: Option<f64>,
}

pub(crate) fn default_method() -> String {
    "cell_key".to_string()
}

pub(crate) fn default_k() -> u64 {
    10
}

impl ProtectionFile {
    /// Builds the protection; an error names the key it is about
    /// (`"method"`, `"k"`, `"ptable"`, `"rho"`, `"epsilon"`,
    /// `"sparsity_max_ones"` or `"sparsity_max_ones_twos"`) and says what is
    /// wrong.
    pub(crate) fn build_keyed(
        self,
        base: Option<&Path>,
    ) -> Result<Protection, (&'static str, String)> {
        use crate::protect::SparsityRule;
        use crate::protect::dp::DpBudget;
        if self.k < 3 {
            return Err((
                "k",
                format!("k = {} is too small; use at least 3 (10 is usual)", self.k),
            ));
        }
        let defaults = SparsityRule::default();
        for (key, value) in [
            ("sparsity_max_ones", self.sparsity_max_ones),
            ("sparsity_max_ones_twos", self.sparsity_max_ones_twos),
        ] {
            if let Some(v) = value
                && !(v.is_finite() && v > 0.0 && v <= 1.0)
            {
                return Err((
                    key,
                    format!(
                        "{key} = {v} is not a share; use a number in (0, 1] (defaults: sparsity_max_ones = {}, sparsity_max_ones_twos = {})",
                        defaults.max_ones_share, defaults.max_ones_twos_share
                    ),
                ));
            }
        }
        let sparsity = SparsityRule {
            max_ones_share: self.sparsity_max_ones.unwrap_or(defaults.max_ones_share),
            max_ones_twos_share: self
                .sparsity_max_ones_twos
                .unwrap_or(defaults.max_ones_twos_share),
        };
        let protection = match self.method.as_str() {
            "cell_key" => {
                if self.rho.is_some() || self.epsilon.is_some() {
                    let key = if self.rho.is_some() { "rho" } else { "epsilon" };
                    return Err((key, "rho and epsilon belong to method = \"dp\"".into()));
                }
                let ptable = match &self.ptable {
                    None => None,
                    Some(p) => {
                        let path = base.map_or_else(|| p.clone(), |b| b.join(p));
                        let bad = |message: String| ("ptable", message);
                        let text = std::fs::read_to_string(&path).map_err(|e| {
                            bad(format!("cannot read ptable '{}': {e}", path.display()))
                        })?;
                        let t = crate::protect::ptable::PTable::from_csv(
                            &text,
                            &path.display().to_string(),
                        )
                        .map_err(|e| bad(e.to_string()))?;
                        let violations = t.check(None);
                        if let Some(v) = violations.first() {
                            return Err(bad(format!(
                                "ptable '{}' fails its check ({} violations; first: {v}); run `agregat ptable check`",
                                path.display(),
                                violations.len()
                            )));
                        }
                        if t.perturbation_bound() < 1 {
                            return Err(bad(format!(
                                "ptable '{}' does not perturb (maximum perturbation 0)",
                                path.display()
                            )));
                        }
                        Some(std::sync::Arc::new(t))
                    }
                };
                Protection::cell_key(ptable, self.k, sparsity)
            }
            "dp" => {
                let budget = match (self.rho, self.epsilon) {
                    (Some(rho), None) => DpBudget::ZCdp { rho },
                    (None, Some(epsilon)) => DpBudget::PureDp { epsilon },
                    _ => {
                        return Err((
                            "method",
                            "method = \"dp\" needs exactly one of rho (zCDP) or epsilon (pure DP)"
                                .into(),
                        ));
                    }
                };
                budget
                    .validate()
                    .map_err(|e| (budget.parameter(), e.to_string()))?;
                if self.ptable.is_some() {
                    return Err(("ptable", "ptable belongs to method = \"cell_key\"".into()));
                }
                Protection::dp(budget, self.k, sparsity)
            }
            other => {
                return Err((
                    "method",
                    format!("unknown method '{other}'; use \"cell_key\" or \"dp\""),
                ));
            }
        };
        Ok(protection)
    }
}

impl Agreement {
    /// Validates names against the catalog.
    pub fn new(
        id: &str,
        permitted: impl IntoIterator<Item = impl Into<String>>,
        minister_permission: impl IntoIterator<Item = impl Into<String>>,
        scope: RegionScope,
        limits: QueryLimits,
    ) -> Result<Agreement, AgreementError> {
        let permitted: BTreeSet<String> = permitted.into_iter().map(Into::into).collect();
        let minister_permission: BTreeSet<String> =
            minister_permission.into_iter().map(Into::into).collect();
        for c in &permitted {
            let Some(col) = catalog::column(c) else {
                return Err(AgreementError::UnknownElement {
                    id: id.into(),
                    column: c.clone(),
                });
            };
            if col.class == catalog::ColumnClass::RecordKey {
                return Err(AgreementError::NeverPermitted {
                    id: id.into(),
                    column: c.clone(),
                    reason: "the record key is internal to the cell-key method",
                });
            }
        }
        for c in &minister_permission {
            match catalog::column(c) {
                Some(col) if col.needs_minister_permission() => {}
                Some(_) => {
                    return Err(AgreementError::NotProtected {
                        id: id.into(),
                        column: c.clone(),
                    });
                }
                None => {
                    return Err(AgreementError::UnknownElement {
                        id: id.into(),
                        column: c.clone(),
                    });
                }
            }
        }
        for (name, value) in [
            ("max_group_dimensions", limits.max_group_dimensions as u64),
            ("max_cells", limits.max_cells as u64),
            ("max_sql_bytes", limits.max_sql_bytes as u64),
            ("timeout_seconds", limits.timeout_seconds),
        ] {
            if value == 0 {
                return Err(AgreementError::ZeroLimit {
                    id: id.into(),
                    limit: name,
                });
            }
        }
        Ok(Agreement {
            id: id.to_string(),
            permitted,
            minister_permission,
            scope,
            limits,
            protection: Protection::default(),
        })
    }

    /// Every storable element, Minister's permission included, for a scope.
    /// For tests and local exploration only.
    pub fn unrestricted(id: &str, scope: RegionScope) -> Agreement {
        Agreement::unrestricted_with_limits(id, scope, QueryLimits::default())
            .expect("catalog names and default limits are valid")
    }

    /// [`Agreement::unrestricted`] with other limits (benches).
    pub fn unrestricted_with_limits(
        id: &str,
        scope: RegionScope,
        limits: QueryLimits,
    ) -> Result<Agreement, AgreementError> {
        let all = catalog::table_columns()
            .filter(|c| c.class != catalog::ColumnClass::RecordKey)
            .map(|c| c.name);
        Agreement::new(id, all, ["penyandang_cacat"], scope, limits)
    }

    /// Whether the agreement permits this `penduduk` column.
    pub fn permits(&self, column: &str) -> bool {
        self.permitted.contains(column)
    }

    /// The agreement's id (`[a-z0-9-]`), shown in the audit log.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Permitted `penduduk` columns, by catalog name.
    pub fn permitted(&self) -> &BTreeSet<String> {
        &self.permitted
    }

    /// Protected columns the Minister has permitted (Pasal 84).
    pub fn minister_permission(&self) -> &BTreeSet<String> {
        &self.minister_permission
    }

    /// The regions the agreement may see.
    pub fn scope(&self) -> &RegionScope {
        &self.scope
    }

    /// The per-query limits.
    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// How released cells are protected.
    pub fn protection(&self) -> &Protection {
        &self.protection
    }

    /// The same agreement with a protection that passed the file checks
    /// ([`ProtectionFile::build_keyed`]) or is the default.
    pub(crate) fn with_protection(mut self, protection: Protection) -> Agreement {
        self.protection = protection;
        self
    }

    /// The same agreement with *any* protection, including ones that the
    /// file checks refuse (identity, k = 1). Only for measuring protection
    /// against the truth in tests and benches; no agreement file can
    /// produce it.
    #[doc(hidden)]
    pub fn with_unchecked_protection_for_tests(mut self, protection: Protection) -> Agreement {
        self.protection = protection;
        self
    }

    /// The elements of a query (or saved query) the agreement does not
    /// permit: not listed, or protected without the Minister's permission.
    pub fn missing_elements(&self, elements: &[String]) -> Vec<String> {
        elements
            .iter()
            .filter(|e| {
                !self.permits(e)
                    || catalog::column(e).is_some_and(|c| {
                        c.needs_minister_permission() && !self.minister_permission.contains(*e)
                    })
            })
            .cloned()
            .collect()
    }
}

/// Why an authenticated caller may not use an agreement now, or not on a
/// snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessRefusal {
    /// After `valid_until`.
    #[error(
        "agreement '{agreement}' expired on {valid_until}; no data can be released under it until the PKS is renewed"
    )]
    Expired {
        /// The agreement.
        agreement: String,
        /// Its last day.
        valid_until: NaiveDate,
    },
    /// Before `valid_from`.
    #[error("agreement '{agreement}' is valid only from {valid_from}; try again from that date")]
    NotYetValid {
        /// The agreement.
        agreement: String,
        /// Its first day.
        valid_from: NaiveDate,
    },
    /// The stage rule.
    #[error(
        "agreement '{agreement}' is at stage '{stage}' and snapshot '{snapshot}' is {}; {}",
        if *synthetic { "synthetic" } else { "production data" },
        stage.snapshot_hint()
    )]
    Stage {
        /// The agreement.
        agreement: String,
        /// Its stage.
        stage: Stage,
        /// The snapshot asked for.
        snapshot: String,
        /// Whether that snapshot is synthetic.
        synthetic: bool,
    },
    /// The snapshot covers no region of the agreement's scope.
    #[error(
        "snapshot '{snapshot}' covers {coverage}, outside the scope of agreement '{agreement}' ({scope})"
    )]
    OutsideScope {
        /// The agreement.
        agreement: String,
        /// The snapshot asked for.
        snapshot: String,
        /// What the snapshot covers.
        coverage: String,
        /// What the agreement may see.
        scope: String,
    },
}

impl AccessRefusal {
    /// The category of the refusal (all are the agreement's rules).
    pub fn category(&self) -> crate::error::ErrorCategory {
        crate::error::ErrorCategory::Forbidden
    }
}

impl Pks {
    /// The validity rule: from `valid_from` to `valid_until`, both days
    /// included (WIB days).
    pub fn check_valid_on(&self, day: NaiveDate) -> Result<(), AccessRefusal> {
        if day > self.valid_until {
            return Err(AccessRefusal::Expired {
                agreement: self.id().to_string(),
                valid_until: self.valid_until,
            });
        }
        if day < self.valid_from {
            return Err(AccessRefusal::NotYetValid {
                agreement: self.id().to_string(),
                valid_from: self.valid_from,
            });
        }
        Ok(())
    }

    /// Whether the agreement may query a snapshot: the stage rule, then
    /// region overlap.
    pub fn check_snapshot(
        &self,
        snapshot: &str,
        synthetic: bool,
        coverage: &RegionScope,
    ) -> Result<(), AccessRefusal> {
        if !self.stage.may_query(synthetic) {
            return Err(AccessRefusal::Stage {
                agreement: self.id().to_string(),
                stage: self.stage,
                snapshot: snapshot.to_string(),
                synthetic,
            });
        }
        if !self.agreement.scope.overlaps(coverage) {
            return Err(AccessRefusal::OutsideScope {
                agreement: self.id().to_string(),
                snapshot: snapshot.to_string(),
                coverage: coverage.describe(),
                scope: self.agreement.scope.describe(),
            });
        }
        Ok(())
    }

    /// Whether a snapshot is visible to the agreement at all (stage and
    /// overlap), for listings.
    pub fn sees(&self, synthetic: bool, coverage: &RegionScope) -> bool {
        self.stage.may_query(synthetic) && self.agreement.scope.overlaps(coverage)
    }
}
