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
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Agreement, AgreementError> {
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
        Agreement::new(
            &f.id,
            f.permitted_elements,
            f.minister_permission,
            scope,
            f.limits,
        )
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
        let e = Agreement::parse(
            "id = \"x\"\npermitted_elements = []\nregion_scope = [\"61.71\"]\nfoo = 1\n",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().contains("foo"), "{e}");
    }
}
