//! Public code lists (SIAK): the domains of categorical columns.
//!
//! Stored values are the official labels (`LAKI-LAKI`, `KEPALA KELUARGA`),
//! which is what users write in SQL; the numeric SIAK code is kept alongside
//! for imports that carry codes and for the `kode_referensi` table.

use std::collections::BTreeMap;
use std::sync::OnceLock;

/// One public code list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeList {
    /// Name of the list (`jenis_kelamin`, `agama`).
    pub name: &'static str,
    /// `(code, label)` in code order.
    pub entries: Vec<(u16, String)>,
}

impl CodeList {
    /// The labels, in code order: the public domain of the column.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(_, l)| l.as_str())
    }

    /// True when `label` is exactly one of the labels (case-sensitive).
    pub fn contains_label(&self, label: &str) -> bool {
        self.entries.iter().any(|(_, l)| l == label)
    }

    /// Resolves either a numeric code (`"2"`) or a label (`"perempuan"`,
    /// case-insensitive) to the canonical label.
    pub fn resolve(&self, value: &str) -> Option<&str> {
        let v = value.trim();
        if let Ok(code) = v.parse::<u16>() {
            return self
                .entries
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, l)| l.as_str());
        }
        self.entries
            .iter()
            .find(|(_, l)| l.eq_ignore_ascii_case(v))
            .map(|(_, l)| l.as_str())
    }

    /// The label of a code. Panics only on a code missing from the compiled
    /// list, which is a programming error.
    pub fn label(&self, code: u16) -> &str {
        self.entries
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, l)| l.as_str())
            .unwrap_or_else(|| panic!("code {code} not in list {}", self.name))
    }
}

/// Code lists that agregat defines itself because SIAK records them as a
/// yes/no flag rather than a published list.
const EXTRA: &[(&str, &[(u16, &str)])] = &[("kepemilikan_akta", &[(1, "ADA"), (2, "TIDAK ADA")])];

/// All code lists, by name.
pub fn code_lists() -> &'static BTreeMap<&'static str, CodeList> {
    static LISTS: OnceLock<BTreeMap<&'static str, CodeList>> = OnceLock::new();
    LISTS.get_or_init(|| {
        let text = include_str!("data/kode_referensi.csv");
        let mut lists: BTreeMap<&'static str, CodeList> = BTreeMap::new();
        for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
            let mut parts = line.splitn(3, ',');
            let (Some(name), Some(code), Some(label)) = (parts.next(), parts.next(), parts.next())
            else {
                panic!("malformed compiled code list line: {line}");
            };
            let name: &'static str = text_slice(text, name);
            let code: u16 = code.parse().expect("compiled code list has numeric codes");
            lists
                .entry(name)
                .or_insert_with(|| CodeList {
                    name,
                    entries: Vec::new(),
                })
                .entries
                .push((code, label.to_string()));
        }
        for (name, entries) in EXTRA {
            lists.insert(
                name,
                CodeList {
                    name,
                    entries: entries.iter().map(|(c, l)| (*c, l.to_string())).collect(),
                },
            );
        }
        for list in lists.values_mut() {
            list.entries.sort_by_key(|(c, _)| *c);
        }
        lists
    })
}

/// Re-borrows a sub-slice of the static text with the static lifetime.
fn text_slice(text: &'static str, part: &str) -> &'static str {
    let start = part.as_ptr() as usize - text.as_ptr() as usize;
    &text[start..start + part.len()]
}

/// The code list called `name`, if there is one.
pub fn code_list(name: &str) -> Option<&'static CodeList> {
    code_lists().get(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_load_with_expected_sizes() {
        assert_eq!(code_list("jenis_kelamin").unwrap().entries.len(), 2);
        assert_eq!(code_list("agama").unwrap().entries.len(), 7);
        assert_eq!(code_list("jenis_pekerjaan").unwrap().entries.len(), 89);
        assert_eq!(
            code_list("status_hubungan_keluarga").unwrap().label(1),
            "KEPALA KELUARGA"
        );
        assert_eq!(code_list("kepemilikan_akta").unwrap().entries.len(), 2);
    }

    #[test]
    fn resolve_accepts_codes_and_labels() {
        let jk = code_list("jenis_kelamin").unwrap();
        assert_eq!(jk.resolve("2"), Some("PEREMPUAN"));
        assert_eq!(jk.resolve("perempuan"), Some("PEREMPUAN"));
        assert_eq!(jk.resolve("3"), None);
        assert_eq!(jk.resolve("WANITA"), None);
    }
}
