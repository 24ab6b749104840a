//! Agreements (PKS): what one institution may ask.
//!
//! An agreement lists the permitted elements (catalog column names), the
//! Minister's permissions for protected elements, the region scope and the
//! per-query limits. The query gate takes it as an input to validation. The
//! service adds tokens, stage, validity and the protection method on top.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use crate::catalog::{self, RegionScope, UnknownRegion};
use crate::protect::Protection;

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
    pub id: String,
    /// Permitted `penduduk` columns, by catalog name.
    pub permitted: BTreeSet<String>,
    /// Protected columns the Minister has permitted (Pasal 84).
    pub minister_permission: BTreeSet<String>,
    pub scope: RegionScope,
    pub limits: QueryLimits,
    /// How released cells are protected.
    pub protection: Protection,
}

#[derive(Debug, thiserror::Error)]
pub enum AgreementError {
    #[error("cannot read agreement file '{path}': {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("agreement file '{path}' is invalid: {message}")]
    Syntax { path: String, message: String },
    #[error(
        "agreement '{id}': '{column}' is not a column of the element catalog; use catalog names such as 'jenis_kelamin', 'kode_kel' or 'tanggal_lahir'"
    )]
    UnknownElement { id: String, column: String },
    #[error(
        "agreement '{id}': '{column}' is listed under minister_permission but is not a protected element; only 'penyandang_cacat' needs the Minister's permission"
    )]
    NotProtected { id: String, column: String },
    #[error("agreement '{id}': {source}")]
    Region { id: String, source: UnknownRegion },
    #[error("agreement '{id}': [protection]: {message}")]
    Protection { id: String, message: String },
    #[error("agreement '{id}': '{column}' can never be permitted: {reason}")]
    NeverPermitted {
        id: String,
        column: String,
        reason: &'static str,
    },
}

/// The file form of the gate's part of an agreement (TOML).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgreementFile {
    id: String,
    permitted_elements: Vec<String>,
    #[serde(default)]
    minister_permission: Vec<String>,
    region_scope: Vec<String>,
    #[serde(default)]
    limits: QueryLimits,
    #[serde(default)]
    protection: Option<ProtectionFile>,
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
/// The service's policy files (`crate::policy`) reuse this section through
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
    fn build(self, id: &str, base: Option<&Path>) -> Result<Protection, AgreementError> {
        self.build_keyed(base)
            .map_err(|(_, message)| AgreementError::Protection {
                id: id.to_string(),
                message,
            })
    }

    /// Builds the protection; an error names the key it is about
    /// (`"method"`, `"k"`, `"ptable"`, `"rho"`, `"epsilon"`,
    /// `"sparsity_max_ones"` or `"sparsity_max_ones_twos"`) and says what is
    /// wrong.
    pub(crate) fn build_keyed(
        self,
        base: Option<&Path>,
    ) -> Result<Protection, (&'static str, String)> {
        use crate::protect::dp::DpBudget;
        use crate::protect::{Method, SparsityRule};
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
        let method = match self.method.as_str() {
            "cell_key" => {
                if self.rho.is_some() || self.epsilon.is_some() {
                    let key = if self.rho.is_some() { "rho" } else { "epsilon" };
                    return Err((key, "rho and epsilon belong to method = \"dp\"".into()));
                }
                let ptable = match &self.ptable {
                    None => match Protection::default_cell_key().method {
                        Method::CellKey { ptable, .. } => ptable,
                        Method::Dp { .. } => unreachable!("default is cell-key"),
                    },
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
                        std::sync::Arc::new(t)
                    }
                };
                Method::CellKey { ptable, k: self.k }
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
                Method::Dp { budget, k: self.k }
            }
            other => {
                return Err((
                    "method",
                    format!("unknown method '{other}'; use \"cell_key\" or \"dp\""),
                ));
            }
        };
        Ok(Protection { method, sparsity })
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
        let all = catalog::table_columns()
            .filter(|c| c.class != catalog::ColumnClass::RecordKey)
            .map(|c| c.name);
        Agreement::new(id, all, ["penyandang_cacat"], scope, QueryLimits::default())
            .expect("catalog names are valid")
    }

    pub fn load(path: &Path) -> Result<Agreement, AgreementError> {
        let text = std::fs::read_to_string(path).map_err(|source| AgreementError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_in(&text, &path.display().to_string(), path.parent())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Agreement, AgreementError> {
        Self::parse_in(text, origin, None)
    }

    /// Parses an agreement; relative ptable paths resolve against `base`.
    fn parse_in(
        text: &str,
        origin: &str,
        base: Option<&Path>,
    ) -> Result<Agreement, AgreementError> {
        let f: AgreementFile = toml::from_str(text).map_err(|e| AgreementError::Syntax {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        let scope = RegionScope::parse(&f.region_scope.join(",")).map_err(|source| {
            AgreementError::Region {
                id: f.id.clone(),
                source,
            }
        })?;
        let mut a = Agreement::new(
            &f.id,
            f.permitted_elements,
            f.minister_permission,
            scope,
            f.limits,
        )?;
        if let Some(p) = f.protection {
            a.protection = p.build(&f.id, base)?;
        }
        Ok(a)
    }

    pub fn permits(&self, column: &str) -> bool {
        self.permitted.contains(column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_unknown_names() {
        let a = Agreement::parse(
            "id = \"x\"\npermitted_elements = [\"jenis_kelamin\", \"kode_kel\"]\nregion_scope = [\"61.71\"]\n",
            "t",
        )
        .unwrap();
        assert!(a.permits("kode_kel"));
        assert_eq!(a.limits.max_cells, 100_000);
        let e = Agreement::parse(
            "id = \"x\"\npermitted_elements = [\"sidik_jari\"]\nregion_scope = [\"61.71\"]\n",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("'sidik_jari'"), "{e}");
        let e = Agreement::parse(
            "id = \"x\"\npermitted_elements = [\"record_key\"]\nregion_scope = [\"61.71\"]\n",
            "t",
        )
        .unwrap_err();
        assert!(matches!(e, AgreementError::NeverPermitted { .. }));
        for (body, needle) in [
            ("[protection]\nk = 1\n", "at least 3"),
            ("[protection]\nmethod = \"dp\"\n", "exactly one of rho"),
            ("[protection]\nmethod = \"dp\"\nrho = -1.0\n", "-1"),
            ("[protection]\nmethod = \"noise\"\n", "unknown method"),
        ] {
            let text =
                format!("id = \"x\"\npermitted_elements = []\nregion_scope = [\"61.71\"]\n{body}");
            let e = Agreement::parse(&text, "t").unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let a = Agreement::parse(
            "id = \"x\"\npermitted_elements = []\nregion_scope = [\"61.71\"]\n[protection]\nmethod = \"dp\"\nepsilon = 0.5\n",
            "t",
        )
        .unwrap();
        assert!(matches!(
            a.protection.method,
            crate::protect::Method::Dp { .. }
        ));
        let e = Agreement::parse(
            "id = \"x\"\npermitted_elements = []\nregion_scope = [\"61.71\"]\nfoo = 1\n",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("foo"), "{e}");
    }
}
