//! Kemendagri region codes (Kepmendagri 300.2.2-2138/2025) and the
//! population per kab/kota (Dukcapil DKB Semester II 2024).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Serialize;

/// Level of a Kemendagri region code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionLevel {
    /// Provinsi: one segment (`61`).
    Provinsi,
    /// Kabupaten or kota: two segments (`61.71`).
    KabKota,
    /// Kecamatan: three segments (`61.71.01`).
    Kecamatan,
    /// Desa or kelurahan; see [`Region::is_kelurahan`].
    DesaKelurahan,
}

impl RegionLevel {
    /// Level of a syntactically valid code, by its number of segments.
    pub fn of_code(code: &str) -> Option<RegionLevel> {
        let segments: Vec<&str> = code.split('.').collect();
        let widths = [2usize, 2, 2, 4];
        if segments.len() > 4
            || segments
                .iter()
                .zip(widths)
                .any(|(s, w)| s.len() != w || !s.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        Some(match segments.len() {
            1 => RegionLevel::Provinsi,
            2 => RegionLevel::KabKota,
            3 => RegionLevel::Kecamatan,
            _ => RegionLevel::DesaKelurahan,
        })
    }

    /// Name of the `penduduk` column holding codes of this level.
    pub fn column(self) -> &'static str {
        match self {
            RegionLevel::Provinsi => "kode_prov",
            RegionLevel::KabKota => "kode_kab",
            RegionLevel::Kecamatan => "kode_kec",
            RegionLevel::DesaKelurahan => "kode_kel",
        }
    }

    /// Lowercase label: `provinsi`, `kabkota`, `kecamatan` or `desa`.
    pub fn label(self) -> &'static str {
        match self {
            RegionLevel::Provinsi => "provinsi",
            RegionLevel::KabKota => "kabkota",
            RegionLevel::Kecamatan => "kecamatan",
            RegionLevel::DesaKelurahan => "desa",
        }
    }
}

/// One region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Region {
    /// Dotted Kemendagri code (`61.71.01.1002`).
    pub kode: String,
    /// Official name of the region.
    pub nama: String,
    /// Level of the code, from its number of segments.
    pub level: RegionLevel,
}

impl Region {
    /// A desa code whose fourth segment starts with 1 is a kelurahan.
    pub fn is_kelurahan(&self) -> bool {
        self.level == RegionLevel::DesaKelurahan && self.kode.as_bytes().get(9) == Some(&b'1')
    }

    /// The code without dots, as it appears in a NIK or KK number prefix.
    pub fn digits(&self) -> String {
        self.kode.replace('.', "")
    }
}

/// All Kemendagri regions, sorted by code.
#[derive(Debug)]
pub struct Regions {
    all: Vec<Region>,
    index: HashMap<String, usize>,
}

/// A region code that is not in the Kemendagri list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{code}' is not a Kemendagri region code; use a code such as '61' (provinsi), '61.71' (kab/kota), '61.71.01' (kecamatan) or '61.71.01.1002' (desa/kelurahan){hint}"
)]
pub struct UnknownRegion {
    /// The code as given.
    pub code: String,
    hint: String,
}

impl UnknownRegion {
    fn new(code: &str, regions: &Regions) -> Self {
        // Suggest the nearest existing parent, which is usually the typo's
        // context (e.g. '61.71.09' -> kecamatan of '61.71').
        let mut parent = code.to_string();
        let mut hint = String::new();
        while let Some(pos) = parent.rfind('.') {
            parent.truncate(pos);
            if let Some(p) = regions.get(&parent) {
                let children: Vec<&str> = regions
                    .children(&p.kode)
                    .take(8)
                    .map(|r| r.kode.as_str())
                    .collect();
                hint = format!(
                    "; codes under '{}' ({}) include {}",
                    p.kode,
                    p.nama,
                    children.join(", ")
                );
                break;
            }
        }
        UnknownRegion {
            code: code.to_string(),
            hint,
        }
    }
}

impl Regions {
    fn parse(text: &str) -> Regions {
        let mut rdr = csv::Reader::from_reader(text.as_bytes());
        let mut all: Vec<Region> = rdr
            .records()
            .map(|r| {
                let r = r.expect("compiled region list is valid CSV");
                let kode = r[0].to_string();
                let level = RegionLevel::of_code(&kode).expect("compiled region code is valid");
                Region {
                    kode,
                    nama: r[1].to_string(),
                    level,
                }
            })
            .collect();
        all.sort_by(|a, b| a.kode.cmp(&b.kode));
        let index = all
            .iter()
            .enumerate()
            .map(|(i, r)| (r.kode.clone(), i))
            .collect();
        Regions { all, index }
    }

    /// Every region, sorted by code.
    pub fn all(&self) -> &[Region] {
        &self.all
    }

    /// The region with exactly this code, if it exists.
    pub fn get(&self, code: &str) -> Option<&Region> {
        self.index.get(code).map(|&i| &self.all[i])
    }

    /// Looks a code up, with a helpful error when it does not exist.
    pub fn require(&self, code: &str) -> Result<&Region, UnknownRegion> {
        self.get(code).ok_or_else(|| UnknownRegion::new(code, self))
    }

    /// The region itself and everything under it, in code order.
    pub fn under(&self, prefix: &str) -> &[Region] {
        let lo = self.all.partition_point(|r| r.kode.as_str() < prefix);
        // '/' sorts right after '.', and codes are fixed width.
        let end = format!("{prefix}/");
        let hi = self.all.partition_point(|r| r.kode.as_str() < end.as_str());
        &self.all[lo..hi]
    }

    /// Direct children of a region.
    pub fn children<'a>(&'a self, code: &str) -> impl Iterator<Item = &'a Region> + 'a {
        let depth = code.split('.').count() + 1;
        self.under(code)
            .iter()
            .filter(move |r| r.kode.split('.').count() == depth)
    }

    /// Regions of one level inside a scope.
    pub fn at_level<'a>(
        &'a self,
        scope: &'a RegionScope,
        level: RegionLevel,
    ) -> impl Iterator<Item = &'a Region> + 'a {
        self.all
            .iter()
            .filter(move |r| r.level == level && scope.covers(&r.kode))
    }
}

/// The compiled region list.
pub fn regions() -> &'static Regions {
    static REGIONS: OnceLock<Regions> = OnceLock::new();
    REGIONS.get_or_init(|| Regions::parse(include_str!("data/wilayah_indonesia.csv")))
}

/// A set of regions given as Kemendagri code prefixes, or the whole country.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionScope {
    /// The whole country.
    All,
    /// The regions under these codes (sorted, without duplicates).
    Prefixes(Vec<String>),
}

impl RegionScope {
    /// Whether two scopes share any region (an agreement's scope and a
    /// snapshot's coverage, say).
    pub fn overlaps(&self, other: &RegionScope) -> bool {
        match (self, other) {
            (RegionScope::All, _) | (_, RegionScope::All) => true,
            (RegionScope::Prefixes(pa), RegionScope::Prefixes(pb)) => pa
                .iter()
                .any(|p| other.touches(p) || pb.iter().any(|q| self.touches(q))),
        }
    }

    /// Parses `all` or a comma-separated list of codes; each must exist.
    pub fn parse(text: &str) -> Result<RegionScope, UnknownRegion> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("all") {
            return Ok(RegionScope::All);
        }
        let mut prefixes = Vec::new();
        for code in text.split(',').map(str::trim) {
            regions().require(code)?;
            prefixes.push(code.to_string());
        }
        prefixes.sort();
        prefixes.dedup();
        Ok(RegionScope::Prefixes(prefixes))
    }

    /// True when `code` lies inside the scope (or is itself a scope prefix).
    pub fn covers(&self, code: &str) -> bool {
        match self {
            RegionScope::All => true,
            RegionScope::Prefixes(ps) => ps.iter().any(|p| {
                code == p
                    || (code.starts_with(p.as_str()) && code.as_bytes().get(p.len()) == Some(&b'.'))
            }),
        }
    }

    /// True when some part of the region `code` lies inside the scope: the
    /// region is in scope or is an ancestor of a scope prefix.
    pub fn touches(&self, code: &str) -> bool {
        match self {
            RegionScope::All => true,
            RegionScope::Prefixes(ps) => {
                self.covers(code)
                    || ps
                        .iter()
                        .any(|p| p.starts_with(code) && p.as_bytes().get(code.len()) == Some(&b'.'))
            }
        }
    }

    /// The scope as text, `all` or comma-separated codes: the form
    /// [`RegionScope::parse`] reads.
    pub fn describe(&self) -> String {
        match self {
            RegionScope::All => "all".to_string(),
            RegionScope::Prefixes(ps) => ps.join(","),
        }
    }
}

/// Population of one kab/kota on 31 Dec 2024.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KabPopulation {
    /// Dotted kab/kota code (`61.71`).
    pub kode: String,
    /// Name of the kab/kota.
    pub nama: String,
    /// Number of men.
    pub laki_laki: u64,
    /// Number of women.
    pub perempuan: u64,
}

impl KabPopulation {
    /// Men and women together.
    pub fn total(&self) -> u64 {
        self.laki_laki + self.perempuan
    }
}

/// Population per kab/kota, in code order.
pub fn kab_population() -> &'static [KabPopulation] {
    static POP: OnceLock<Vec<KabPopulation>> = OnceLock::new();
    POP.get_or_init(|| {
        let text = include_str!("data/penduduk_kabkota_2024.csv");
        let mut rdr = csv::Reader::from_reader(text.as_bytes());
        let mut v: Vec<KabPopulation> = rdr
            .records()
            .map(|r| r.expect("compiled population list is valid CSV"))
            .filter(|r| &r[2] == "kabkota")
            .map(|r| KabPopulation {
                kode: r[0].to_string(),
                nama: r[1].to_string(),
                laki_laki: r[3].parse().expect("numeric"),
                perempuan: r[4].parse().expect("numeric"),
            })
            .collect();
        v.sort_by(|a, b| a.kode.cmp(&b.kode));
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_the_kepmendagri_totals() {
        let r = regions();
        let count = |l| r.all().iter().filter(|x| x.level == l).count();
        assert_eq!(r.all().len(), 91_599);
        assert_eq!(count(RegionLevel::Provinsi), 38);
        assert_eq!(count(RegionLevel::KabKota), 514);
        assert_eq!(count(RegionLevel::Kecamatan), 7_285);
        assert_eq!(count(RegionLevel::DesaKelurahan), 83_762);
    }

    #[test]
    fn pontianak_has_6_kecamatan_and_29_kelurahan() {
        let r = regions();
        assert_eq!(r.get("61.71").unwrap().nama, "Kota Pontianak");
        assert_eq!(r.children("61.71").count(), 6);
        let kel: Vec<_> = r
            .under("61.71")
            .iter()
            .filter(|x| x.level == RegionLevel::DesaKelurahan)
            .collect();
        assert_eq!(kel.len(), 29);
        assert!(kel.iter().all(|k| k.is_kelurahan()));
    }

    #[test]
    fn population_totals_match_the_reference() {
        let p = kab_population();
        assert_eq!(p.len(), 514);
        assert_eq!(p.iter().map(|k| k.total()).sum::<u64>(), 284_973_643);
        let ptk = p.iter().find(|k| k.kode == "61.71").unwrap();
        assert_eq!((ptk.laki_laki, ptk.perempuan), (343_257, 343_774));
    }

    #[test]
    fn scope_parsing_and_coverage() {
        let s = RegionScope::parse("61.71").unwrap();
        assert!(s.covers("61.71.01.1002"));
        assert!(!s.covers("61.72.01"));
        assert!(s.touches("61"));
        assert!(!s.covers("61"));
        let err = RegionScope::parse("61.71.09").unwrap_err().to_string();
        assert!(
            err.contains("'61.71.09'") && err.contains("61.71.01"),
            "{err}"
        );
        assert_eq!(RegionLevel::of_code("61.7"), None);
    }
}
