//! The element catalog: the single source of truth about every data element
//! of UU 24/2013 Pasal 58 ayat (2).
//!
//! For each element it records the column(s) it maps to, the Arrow type, the
//! class that decides what a query may do with it, the public code list of
//! categorical columns, and whether it needs the Minister's permission
//! (Pasal 84). The snapshot writer, the importer, the generator and the query
//! gate all read these facts from here and nowhere else.
//!
//! The public reference data (code lists, Kemendagri region codes and the
//! population per kab/kota) is compiled in from `src/catalog/data/`; see the
//! README there for sources and licences.

mod codes;
mod regions;

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Serialize;

pub use codes::{CodeList, code_list, code_lists};
pub use regions::{
    KabPopulation, Region, RegionLevel, RegionScope, Regions, UnknownRegion, kab_population,
    regions,
};

/// Version of the `penduduk` schema written into every manifest. Bump it
/// whenever a column is added, removed, renamed or retyped.
pub const SCHEMA_VERSION: u32 = 1;

/// What a query may do with a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnClass {
    /// Names a person, household, certificate or address. Never output,
    /// grouped by or filtered on; `no_kk` may appear inside
    /// `COUNT(DISTINCT no_kk)` only.
    Identifier,
    /// Free text without a public code list (`tempat_lahir`). Treated like an
    /// identifier by the query gate.
    FreeText,
    /// Categorical column with a public domain: may be grouped by and
    /// filtered on.
    Dimension,
    /// A date: usable only through the coarsening functions (age, age band,
    /// year).
    DateDimension,
    /// A dimension that needs the Minister's permission (Pasal 84), recorded
    /// in the agreement (`penyandang_cacat`).
    Protected,
    /// The keyed-hash record key feeding the cell-key method. Never
    /// queryable.
    RecordKey,
}

impl ColumnClass {
    /// True when the column may be used as a group key or in a predicate.
    pub fn is_groupable(self) -> bool {
        matches!(self, ColumnClass::Dimension | ColumnClass::Protected)
    }
}

/// Class of a Pasal 58 element as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ElementClass {
    /// Identifies a person, household or certificate (NIK, nomor KK, names).
    Identifier,
    /// Free text without a public code list (`tempat_lahir`).
    FreeText,
    /// Categorical, with a public code list.
    Dimension,
    /// A date, queryable only through the coarsening functions.
    DateDimension,
    /// A dimension that needs the Minister's permission (Pasal 84).
    Protected,
    /// Current address: the street text is an identifier, RT/RW and the
    /// region codes are dimensions.
    Address,
    /// Fingerprints, iris, signature: never enter a snapshot.
    Biometric,
    /// "aib" (Pasal 84 ayat 1 huruf e): protected and never stored.
    NeverStored,
}

/// Physical type of a stored column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// UTF-8 string (Arrow `Utf8`).
    Utf8,
    /// Calendar date (Arrow `Date32`).
    Date32,
    /// Unsigned 64-bit integer (Arrow `UInt64`); used by the record key.
    UInt64,
}

impl ColumnType {
    /// The Arrow `DataType` this column type is stored as.
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Date32 => DataType::Date32,
            ColumnType::UInt64 => DataType::UInt64,
        }
    }
}

/// The public domain of a column: the values every result grid lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Domain {
    /// No public domain (identifiers, free text, the record key).
    None,
    /// The labels of a public code list, by list name.
    CodeList {
        /// Name of the code list in `kode_referensi` (see [`code_list`]).
        list: &'static str,
    },
    /// Kemendagri region codes of one level.
    Region {
        /// The region level the column's codes are at.
        level: RegionLevel,
    },
    /// Zero-padded numbers `001..=max` (RT, RW).
    Numbered {
        /// Digits of each value, zero-padded (3 for `001`).
        width: u8,
        /// The largest number in the domain.
        max: u16,
    },
    /// Dates, reachable only through coarsening functions.
    Dates,
}

/// One stored column of the `penduduk` table.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Column {
    /// Column name in `penduduk` (`jenis_kelamin`, `kode_kec`).
    pub name: &'static str,
    /// Letter of Pasal 58 ayat (2) this column belongs to (`""` for the
    /// record key, which is derived, not an element).
    pub element: &'static str,
    /// What a query may do with the column.
    pub class: ColumnClass,
    /// Physical type in the Parquet files (serialised as `type`).
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// The public domain the result grid lists for this column.
    pub domain: Domain,
    /// Whether the column may hold nulls.
    pub nullable: bool,
}

impl Column {
    /// The Arrow field (name, type, nullability) of this column.
    pub fn field(&self) -> Field {
        Field::new(self.name, self.ty.arrow(), self.nullable)
    }

    /// Needs the Minister's permission in the agreement.
    pub fn needs_minister_permission(&self) -> bool {
        self.class == ColumnClass::Protected
    }
}

/// One element of Pasal 58 ayat (2).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Element {
    /// The letter in Pasal 58 ayat (2): `a` … `ee`.
    pub letter: &'static str,
    /// The element as the law names it.
    pub name: &'static str,
    /// Stored columns (empty for elements that never enter a snapshot).
    pub columns: &'static [&'static str],
    /// Class of the element as a whole.
    pub class: ElementClass,
    /// Pasal 84: usable only with the Minister's permission.
    pub minister_permission: bool,
}

/// Name of the column holding the keyed hash of the NIK.
pub const RECORD_KEY: &str = "record_key";
/// The partition column of `penduduk`.
pub const PARTITION_COLUMN: &str = "kode_kab";

const fn col(
    name: &'static str,
    element: &'static str,
    class: ColumnClass,
    ty: ColumnType,
    domain: Domain,
    nullable: bool,
) -> Column {
    Column {
        name,
        element,
        class,
        ty,
        domain,
        nullable,
    }
}

use ColumnClass as C;
use ColumnType as T;

const fn codes(list: &'static str) -> Domain {
    Domain::CodeList { list }
}

/// Every stored column of `penduduk`, in file order. `kode_kab` is the hive
/// partition column: it is part of the table but not of each file.
pub const COLUMNS: &[Column] = &[
    col("no_kk", "a", C::Identifier, T::Utf8, Domain::None, false),
    col("nik", "b", C::Identifier, T::Utf8, Domain::None, false),
    col(
        "nama_lengkap",
        "c",
        C::Identifier,
        T::Utf8,
        Domain::None,
        false,
    ),
    col(
        "jenis_kelamin",
        "d",
        C::Dimension,
        T::Utf8,
        codes("jenis_kelamin"),
        false,
    ),
    col(
        "tempat_lahir",
        "e",
        C::FreeText,
        T::Utf8,
        Domain::None,
        true,
    ),
    col(
        "tanggal_lahir",
        "f",
        C::DateDimension,
        T::Date32,
        Domain::Dates,
        false,
    ),
    col(
        "golongan_darah",
        "g",
        C::Dimension,
        T::Utf8,
        codes("golongan_darah"),
        false,
    ),
    col("agama", "h", C::Dimension, T::Utf8, codes("agama"), false),
    col(
        "status_perkawinan",
        "i",
        C::Dimension,
        T::Utf8,
        codes("status_perkawinan"),
        false,
    ),
    col(
        "status_hubungan_keluarga",
        "j",
        C::Dimension,
        T::Utf8,
        codes("status_hubungan_keluarga"),
        false,
    ),
    col(
        "penyandang_cacat",
        "k",
        C::Protected,
        T::Utf8,
        codes("penyandang_cacat"),
        false,
    ),
    col(
        "pendidikan_terakhir",
        "l",
        C::Dimension,
        T::Utf8,
        codes("pendidikan_terakhir"),
        false,
    ),
    col(
        "jenis_pekerjaan",
        "m",
        C::Dimension,
        T::Utf8,
        codes("jenis_pekerjaan"),
        false,
    ),
    col("nik_ibu", "n", C::Identifier, T::Utf8, Domain::None, true),
    col("nama_ibu", "o", C::Identifier, T::Utf8, Domain::None, true),
    col("nik_ayah", "p", C::Identifier, T::Utf8, Domain::None, true),
    col("nama_ayah", "q", C::Identifier, T::Utf8, Domain::None, true),
    col(
        "alamat_sebelumnya",
        "r",
        C::Identifier,
        T::Utf8,
        Domain::None,
        true,
    ),
    col("alamat", "s", C::Identifier, T::Utf8, Domain::None, false),
    col(
        "no_rt",
        "s",
        C::Dimension,
        T::Utf8,
        Domain::Numbered { width: 3, max: 999 },
        false,
    ),
    col(
        "no_rw",
        "s",
        C::Dimension,
        T::Utf8,
        Domain::Numbered { width: 3, max: 999 },
        false,
    ),
    col(
        "kode_prov",
        "s",
        C::Dimension,
        T::Utf8,
        Domain::Region {
            level: RegionLevel::Provinsi,
        },
        false,
    ),
    col(
        "kode_kec",
        "s",
        C::Dimension,
        T::Utf8,
        Domain::Region {
            level: RegionLevel::Kecamatan,
        },
        false,
    ),
    col(
        "kode_kel",
        "s",
        C::Dimension,
        T::Utf8,
        Domain::Region {
            level: RegionLevel::DesaKelurahan,
        },
        false,
    ),
    col(
        "akta_lahir",
        "t",
        C::Dimension,
        T::Utf8,
        codes("kepemilikan_akta"),
        false,
    ),
    col(
        "no_akta_lahir",
        "u",
        C::Identifier,
        T::Utf8,
        Domain::None,
        true,
    ),
    col(
        "akta_kawin",
        "v",
        C::Dimension,
        T::Utf8,
        codes("kepemilikan_akta"),
        false,
    ),
    col(
        "no_akta_kawin",
        "w",
        C::Identifier,
        T::Utf8,
        Domain::None,
        true,
    ),
    col(
        "tanggal_kawin",
        "x",
        C::DateDimension,
        T::Date32,
        Domain::Dates,
        true,
    ),
    col(
        "akta_cerai",
        "y",
        C::Dimension,
        T::Utf8,
        codes("kepemilikan_akta"),
        false,
    ),
    col(
        "no_akta_cerai",
        "z",
        C::Identifier,
        T::Utf8,
        Domain::None,
        true,
    ),
    col(
        "tanggal_cerai",
        "aa",
        C::DateDimension,
        T::Date32,
        Domain::Dates,
        true,
    ),
    col(RECORD_KEY, "", C::RecordKey, T::UInt64, Domain::None, false),
];

/// The partition column, listed separately because files do not store it.
pub const PARTITION: Column = col(
    PARTITION_COLUMN,
    "s",
    C::Dimension,
    T::Utf8,
    Domain::Region {
        level: RegionLevel::KabKota,
    },
    false,
);

/// The 31 elements of Pasal 58 ayat (2).
pub const ELEMENTS: &[Element] = &[
    el("a", "nomor KK", &["no_kk"], ElementClass::Identifier, false),
    el("b", "NIK", &["nik"], ElementClass::Identifier, false),
    el(
        "c",
        "nama lengkap",
        &["nama_lengkap"],
        ElementClass::Identifier,
        false,
    ),
    el(
        "d",
        "jenis kelamin",
        &["jenis_kelamin"],
        ElementClass::Dimension,
        false,
    ),
    el(
        "e",
        "tempat lahir",
        &["tempat_lahir"],
        ElementClass::FreeText,
        false,
    ),
    el(
        "f",
        "tanggal/bulan/tahun lahir",
        &["tanggal_lahir"],
        ElementClass::DateDimension,
        false,
    ),
    el(
        "g",
        "golongan darah",
        &["golongan_darah"],
        ElementClass::Dimension,
        false,
    ),
    el(
        "h",
        "agama/kepercayaan",
        &["agama"],
        ElementClass::Dimension,
        false,
    ),
    el(
        "i",
        "status perkawinan",
        &["status_perkawinan"],
        ElementClass::Dimension,
        false,
    ),
    el(
        "j",
        "status hubungan dalam keluarga",
        &["status_hubungan_keluarga"],
        ElementClass::Dimension,
        false,
    ),
    el(
        "k",
        "cacat fisik dan/atau mental",
        &["penyandang_cacat"],
        ElementClass::Protected,
        true,
    ),
    el(
        "l",
        "pendidikan terakhir",
        &["pendidikan_terakhir"],
        ElementClass::Dimension,
        false,
    ),
    el(
        "m",
        "jenis pekerjaan",
        &["jenis_pekerjaan"],
        ElementClass::Dimension,
        false,
    ),
    el(
        "n",
        "NIK ibu kandung",
        &["nik_ibu"],
        ElementClass::Identifier,
        false,
    ),
    el(
        "o",
        "nama ibu kandung",
        &["nama_ibu"],
        ElementClass::Identifier,
        false,
    ),
    el(
        "p",
        "NIK ayah",
        &["nik_ayah"],
        ElementClass::Identifier,
        false,
    ),
    el(
        "q",
        "nama ayah",
        &["nama_ayah"],
        ElementClass::Identifier,
        false,
    ),
    el(
        "r",
        "alamat sebelumnya",
        &["alamat_sebelumnya"],
        ElementClass::Identifier,
        false,
    ),
    el(
        "s",
        "alamat sekarang",
        &[
            "alamat",
            "no_rt",
            "no_rw",
            "kode_prov",
            "kode_kab",
            "kode_kec",
            "kode_kel",
        ],
        ElementClass::Address,
        false,
    ),
    el(
        "t",
        "kepemilikan akta kelahiran/surat kenal lahir",
        &["akta_lahir"],
        ElementClass::Dimension,
        false,
    ),
    el(
        "u",
        "nomor akta kelahiran/surat kenal lahir",
        &["no_akta_lahir"],
        ElementClass::Identifier,
        false,
    ),
    el(
        "v",
        "kepemilikan akta perkawinan/buku nikah",
        &["akta_kawin"],
        ElementClass::Dimension,
        false,
    ),
    el(
        "w",
        "nomor akta perkawinan/buku nikah",
        &["no_akta_kawin"],
        ElementClass::Identifier,
        false,
    ),
    el(
        "x",
        "tanggal perkawinan",
        &["tanggal_kawin"],
        ElementClass::DateDimension,
        false,
    ),
    el(
        "y",
        "kepemilikan akta perceraian",
        &["akta_cerai"],
        ElementClass::Dimension,
        false,
    ),
    el(
        "z",
        "nomor akta perceraian/surat cerai",
        &["no_akta_cerai"],
        ElementClass::Identifier,
        false,
    ),
    el(
        "aa",
        "tanggal perceraian",
        &["tanggal_cerai"],
        ElementClass::DateDimension,
        false,
    ),
    el("bb", "sidik jari", &[], ElementClass::Biometric, true),
    el("cc", "iris mata", &[], ElementClass::Biometric, true),
    el("dd", "tanda tangan", &[], ElementClass::Biometric, true),
    el(
        "ee",
        "elemen data lainnya yang merupakan aib seseorang",
        &[],
        ElementClass::NeverStored,
        true,
    ),
];

const fn el(
    letter: &'static str,
    name: &'static str,
    columns: &'static [&'static str],
    class: ElementClass,
    minister_permission: bool,
) -> Element {
    Element {
        letter,
        name,
        columns,
        class,
        minister_permission,
    }
}

/// Looks a column of `penduduk` up by name, including the partition column.
pub fn column(name: &str) -> Option<&'static Column> {
    if name == PARTITION_COLUMN {
        return Some(&PARTITION);
    }
    COLUMNS.iter().find(|c| c.name == name)
}

/// Every column of the `penduduk` table, partition column included, in
/// table order (file columns first, then `kode_kab`).
pub fn table_columns() -> impl Iterator<Item = &'static Column> {
    COLUMNS.iter().chain(std::iter::once(&PARTITION))
}

/// The element a column belongs to.
pub fn element_of(column: &Column) -> Option<&'static Element> {
    ELEMENTS.iter().find(|e| e.columns.contains(&column.name))
}

/// Arrow schema of one `penduduk` Parquet file (without the partition
/// column, which lives in the directory name).
pub fn penduduk_file_schema() -> SchemaRef {
    Arc::new(Schema::new(
        COLUMNS.iter().map(Column::field).collect::<Vec<_>>(),
    ))
}

/// Levenshtein distance between two names, for "did you mean"
/// suggestions (element names in agreement files, CSV headers).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_one_elements_and_every_column_belongs_to_one() {
        assert_eq!(ELEMENTS.len(), 31);
        for c in COLUMNS.iter().filter(|c| c.class != ColumnClass::RecordKey) {
            let e = element_of(c).unwrap_or_else(|| panic!("{} has no element", c.name));
            assert_eq!(e.letter, c.element, "{}", c.name);
        }
        for e in ELEMENTS {
            for name in e.columns {
                assert!(
                    column(name).is_some(),
                    "{name} of element {} missing",
                    e.letter
                );
            }
        }
    }

    #[test]
    fn catalog_agrees_with_the_reference_element_list() {
        let text = include_str!("data/elemen_data.csv");
        let mut rdr = csv::Reader::from_reader(text.as_bytes());
        let mut n = 0;
        for row in rdr.records() {
            let row = row.unwrap();
            let letter = &row[0];
            let e = ELEMENTS.iter().find(|e| e.letter == letter).unwrap();
            assert_eq!(e.name, &row[1]);
            assert_eq!(e.minister_permission, &row[4] == "1", "element {letter}");
            let class = &row[3];
            if class.starts_with("identifier (") {
                assert_eq!(e.class, ElementClass::Address);
            } else if class.starts_with("identifier") {
                assert_eq!(e.class, ElementClass::Identifier, "element {letter}");
                assert_eq!(e.columns, &[&row[2]]);
            } else if class == "biometric" {
                assert_eq!(e.class, ElementClass::Biometric);
                assert!(e.columns.is_empty());
            }
            n += 1;
        }
        assert_eq!(n, 31);
    }

    #[test]
    fn categorical_columns_have_code_lists() {
        for c in table_columns() {
            if let Domain::CodeList { list } = c.domain {
                assert!(code_list(list).is_some(), "{}: no list {list}", c.name);
            }
            if c.class.is_groupable() {
                assert_ne!(c.domain, Domain::None, "{}", c.name);
            }
        }
        assert_eq!(
            column("penyandang_cacat").unwrap().class,
            ColumnClass::Protected
        );
        assert!(
            column("penyandang_cacat")
                .unwrap()
                .needs_minister_permission()
        );
    }
}
