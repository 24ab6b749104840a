//! Writing snapshots: row builders for `penduduk`, Parquet settings, and an
//! all-or-nothing snapshot directory (written to a temporary sibling and
//! renamed into place by [`SnapshotWriter::finish`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Date32Builder, Int32Builder, RecordBatch, StringBuilder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::metadata::SortingColumn;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};

use super::manifest::{FileEntry, Manifest};
use super::{SnapshotError, reference_tables};
use crate::catalog::{self, COLUMNS, ColumnClass, Domain, RegionScope};

/// Rows per Parquet row group. Chosen by measurement (see README, "Parquet
/// layout"): small enough that a city-sized file has many row groups to
/// spread over every core, large enough that zstd and dictionaries work
/// well and a national snapshot's footers stay small.
pub const DEFAULT_ROWS_PER_ROW_GROUP: usize = 32 * 1024;

/// A file is closed and a new one started past this many rows, so a large
/// kab/kota is split into several files of bounded size.
pub const MAX_ROWS_PER_FILE: u64 = 2 * 1024 * 1024;

/// Rows accumulated in memory before being handed to the Parquet writer.
const BATCH_ROWS: usize = 8 * 1024;

/// One person, borrowed. Dates are days since 1970-01-01 (Arrow `Date32`).
/// Categorical values are the code list labels.
#[derive(Debug, Clone, Default)]
pub struct PersonRow<'a> {
    /// `no_kk`: nomor KK, the family card number (element a).
    pub no_kk: &'a str,
    /// `nik`: the 16-digit NIK (element b).
    pub nik: &'a str,
    /// `nama_lengkap`: full name.
    pub nama_lengkap: &'a str,
    /// `jenis_kelamin`: sex, as its code list label.
    pub jenis_kelamin: &'a str,
    /// `tempat_lahir`: place of birth, free text.
    pub tempat_lahir: Option<&'a str>,
    /// `tanggal_lahir`: date of birth, days since 1970-01-01.
    pub tanggal_lahir: i32,
    /// `golongan_darah`: blood group label.
    pub golongan_darah: &'a str,
    /// `agama`: religion label.
    pub agama: &'a str,
    /// `status_perkawinan`: marital status label.
    pub status_perkawinan: &'a str,
    /// `status_hubungan_keluarga`: relationship to the head of the family.
    pub status_hubungan_keluarga: &'a str,
    /// `penyandang_cacat`: disability label (a Pasal 84 protected element).
    pub penyandang_cacat: &'a str,
    /// `pendidikan_terakhir`: highest completed education, label.
    pub pendidikan_terakhir: &'a str,
    /// `jenis_pekerjaan`: occupation label.
    pub jenis_pekerjaan: &'a str,
    /// `nik_ibu`: the mother's NIK, if known.
    pub nik_ibu: Option<&'a str>,
    /// `nama_ibu`: the mother's name, if known.
    pub nama_ibu: Option<&'a str>,
    /// `nik_ayah`: the father's NIK, if known.
    pub nik_ayah: Option<&'a str>,
    /// `nama_ayah`: the father's name, if known.
    pub nama_ayah: Option<&'a str>,
    /// `alamat_sebelumnya`: previous address, if any.
    pub alamat_sebelumnya: Option<&'a str>,
    /// `alamat`: current street address.
    pub alamat: &'a str,
    /// `no_rt`: RT number, zero-padded to three digits.
    pub no_rt: &'a str,
    /// `no_rw`: RW number, zero-padded to three digits.
    pub no_rw: &'a str,
    /// `kode_prov`: Kemendagri provinsi code.
    pub kode_prov: &'a str,
    /// `kode_kec`: Kemendagri kecamatan code.
    pub kode_kec: &'a str,
    /// `kode_kel`: Kemendagri desa/kelurahan code.
    pub kode_kel: &'a str,
    /// `akta_lahir`: whether there is a birth certificate (`ADA`/`TIDAK ADA`).
    pub akta_lahir: &'a str,
    /// `no_akta_lahir`: birth certificate number, if any.
    pub no_akta_lahir: Option<&'a str>,
    /// `akta_kawin`: whether there is a marriage certificate.
    pub akta_kawin: &'a str,
    /// `no_akta_kawin`: marriage certificate number, if any.
    pub no_akta_kawin: Option<&'a str>,
    /// `tanggal_kawin`: date of marriage, days since 1970-01-01, if any.
    pub tanggal_kawin: Option<i32>,
    /// `akta_cerai`: whether there is a divorce certificate.
    pub akta_cerai: &'a str,
    /// `no_akta_cerai`: divorce certificate number, if any.
    pub no_akta_cerai: Option<&'a str>,
    /// `tanggal_cerai`: date of divorce, days since 1970-01-01, if any.
    pub tanggal_cerai: Option<i32>,
    /// `record_key`: the keyed hash of the NIK (see `crate::record_key`).
    pub record_key: u64,
}

/// Column builders for `penduduk` files, in catalog order.
pub struct PendudukBuilder {
    strings: Vec<StringBuilder>,
    tanggal_lahir: Date32Builder,
    tanggal_kawin: Date32Builder,
    tanggal_cerai: Date32Builder,
    record_key: UInt64Builder,
    len: usize,
}

/// Number of string columns in the file schema.
const STRING_COLUMNS: usize = 29;

impl Default for PendudukBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PendudukBuilder {
    /// Empty builders for every `penduduk` file column.
    pub fn new() -> Self {
        PendudukBuilder {
            strings: (0..STRING_COLUMNS).map(|_| StringBuilder::new()).collect(),
            tanggal_lahir: Date32Builder::new(),
            tanggal_kawin: Date32Builder::new(),
            tanggal_cerai: Date32Builder::new(),
            record_key: UInt64Builder::new(),
            len: 0,
        }
    }

    /// Rows pushed since the last [`PendudukBuilder::finish`].
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no row is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one person to the column builders.
    pub fn push(&mut self, p: &PersonRow<'_>) {
        let s = &mut self.strings;
        s[0].append_value(p.no_kk);
        s[1].append_value(p.nik);
        s[2].append_value(p.nama_lengkap);
        s[3].append_value(p.jenis_kelamin);
        s[4].append_option(p.tempat_lahir);
        self.tanggal_lahir.append_value(p.tanggal_lahir);
        s[5].append_value(p.golongan_darah);
        s[6].append_value(p.agama);
        s[7].append_value(p.status_perkawinan);
        s[8].append_value(p.status_hubungan_keluarga);
        s[9].append_value(p.penyandang_cacat);
        s[10].append_value(p.pendidikan_terakhir);
        s[11].append_value(p.jenis_pekerjaan);
        s[12].append_option(p.nik_ibu);
        s[13].append_option(p.nama_ibu);
        s[14].append_option(p.nik_ayah);
        s[15].append_option(p.nama_ayah);
        s[16].append_option(p.alamat_sebelumnya);
        s[17].append_value(p.alamat);
        s[18].append_value(p.no_rt);
        s[19].append_value(p.no_rw);
        s[20].append_value(p.kode_prov);
        s[21].append_value(p.kode_kec);
        s[22].append_value(p.kode_kel);
        s[23].append_value(p.akta_lahir);
        s[24].append_option(p.no_akta_lahir);
        s[25].append_value(p.akta_kawin);
        s[26].append_option(p.no_akta_kawin);
        self.tanggal_kawin.append_option(p.tanggal_kawin);
        s[27].append_value(p.akta_cerai);
        s[28].append_option(p.no_akta_cerai);
        self.tanggal_cerai.append_option(p.tanggal_cerai);
        self.record_key.append_value(p.record_key);
        self.len += 1;
    }

    /// Drains the builders into a batch with [`catalog::penduduk_file_schema`].
    pub fn finish(&mut self) -> RecordBatch {
        let mut s = self
            .strings
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef);
        let mut next = || s.next().expect("string column");
        let columns: Vec<ArrayRef> = vec![
            next(), // no_kk
            next(), // nik
            next(), // nama_lengkap
            next(), // jenis_kelamin
            next(), // tempat_lahir
            Arc::new(self.tanggal_lahir.finish()),
            next(), // golongan_darah
            next(), // agama
            next(), // status_perkawinan
            next(), // status_hubungan_keluarga
            next(), // penyandang_cacat
            next(), // pendidikan_terakhir
            next(), // jenis_pekerjaan
            next(), // nik_ibu
            next(), // nama_ibu
            next(), // nik_ayah
            next(), // nama_ayah
            next(), // alamat_sebelumnya
            next(), // alamat
            next(), // no_rt
            next(), // no_rw
            next(), // kode_prov
            next(), // kode_kec
            next(), // kode_kel
            next(), // akta_lahir
            next(), // no_akta_lahir
            next(), // akta_kawin
            next(), // no_akta_kawin
            Arc::new(self.tanggal_kawin.finish()),
            next(), // akta_cerai
            next(), // no_akta_cerai
            Arc::new(self.tanggal_cerai.finish()),
            Arc::new(self.record_key.finish()),
        ];
        self.len = 0;
        RecordBatch::try_new(catalog::penduduk_file_schema(), columns)
            .expect("builder columns follow the catalog schema")
    }
}

/// Parquet settings for `penduduk` files: zstd, dictionaries for categorical
/// columns only, page-level statistics, and the region sort order recorded
/// in the footer.
pub fn penduduk_properties(rows_per_row_group: usize) -> WriterProperties {
    let schema = catalog::penduduk_file_schema();
    let idx = |name: &str| schema.index_of(name).expect("catalog column") as i32;
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_max_row_group_row_count(Some(rows_per_row_group.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by(format!("agregat {}", env!("CARGO_PKG_VERSION")))
        .set_sorting_columns(Some(
            ["kode_kec", "kode_kel", "no_rw", "no_rt", "no_kk"]
                .iter()
                .map(|c| SortingColumn {
                    column_idx: idx(c),
                    descending: false,
                    nulls_first: false,
                })
                .collect(),
        ));
    for c in COLUMNS {
        let categorical = c.class.is_groupable() || matches!(c.domain, Domain::Region { .. });
        let high_cardinality = matches!(
            c.class,
            ColumnClass::Identifier | ColumnClass::RecordKey | ColumnClass::FreeText
        );
        // Names and places repeat (name lists, kab names) and do benefit from
        // dictionaries; numbers and keys are unique per row and do not.
        let dictionary = categorical
            || !high_cardinality
            || matches!(
                c.name,
                "nama_lengkap" | "nama_ibu" | "nama_ayah" | "tempat_lahir"
            );
        b = b.set_column_dictionary_enabled(ColumnPath::from(c.name), dictionary);
    }
    b.build()
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub(crate) fn finish(mut self) -> std::io::Result<(u64, String)> {
        self.inner.flush()?;
        Ok((self.bytes, hex::encode(self.hasher.finalize())))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type ParquetFile = ArrowWriter<HashingWriter<BufWriter<File>>>;

fn create_parquet(
    root: &Path,
    rel: &str,
    schema: Arc<Schema>,
    props: WriterProperties,
) -> Result<ParquetFile, SnapshotError> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| SnapshotError::io(parent, e))?;
    }
    let file = File::create(&path).map_err(|e| SnapshotError::io(&path, e))?;
    let w = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    ArrowWriter::try_new(w, schema, Some(props)).map_err(|e| SnapshotError::parquet(rel, e))
}

fn close_parquet(w: ParquetFile, rel: &str, rows: u64) -> Result<FileEntry, SnapshotError> {
    let inner = w.into_inner().map_err(|e| SnapshotError::parquet(rel, e))?;
    let (bytes, sha256) = inner.finish().map_err(|e| SnapshotError::io(rel, e))?;
    Ok(FileEntry {
        path: rel.to_string(),
        bytes,
        sha256,
        rows,
    })
}

/// Streams rows of one `penduduk` file. Rows must arrive in region order.
pub struct PartitionWriter {
    writer: ParquetFile,
    rel: String,
    builder: PendudukBuilder,
    rows: u64,
}

impl PartitionWriter {
    /// Opens `penduduk/kode_kab=<kab>/part-<part>.parquet` under `root`.
    pub fn create(
        root: &Path,
        kode_kab: &str,
        part: usize,
        rows_per_row_group: usize,
    ) -> Result<Self, SnapshotError> {
        let rel = format!("penduduk/kode_kab={kode_kab}/part-{part:04}.parquet");
        let writer = create_parquet(
            root,
            &rel,
            catalog::penduduk_file_schema(),
            penduduk_properties(rows_per_row_group),
        )?;
        Ok(PartitionWriter {
            writer,
            rel,
            builder: PendudukBuilder::new(),
            rows: 0,
        })
    }

    /// Appends a row, writing a batch to the file every `BATCH_ROWS` rows.
    pub fn push(&mut self, row: &PersonRow<'_>) -> Result<(), SnapshotError> {
        self.builder.push(row);
        self.rows += 1;
        if self.builder.len() >= BATCH_ROWS {
            self.flush_batch()?;
        }
        Ok(())
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn flush_batch(&mut self) -> Result<(), SnapshotError> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let batch = self.builder.finish();
        self.writer
            .write(&batch)
            .map_err(|e| SnapshotError::parquet(&self.rel, e))
    }

    /// Writes the pending rows, closes the file and returns its manifest
    /// entry (size, SHA-256, rows).
    pub fn close(mut self) -> Result<FileEntry, SnapshotError> {
        self.flush_batch()?;
        close_parquet(self.writer, &self.rel, self.rows)
    }
}

/// Writes a snapshot into a temporary directory next to its destination
/// and moves it into place only when complete. Dropping an unfinished
/// writer removes the temporary directory.
pub struct SnapshotWriter {
    out: PathBuf,
    tmp: PathBuf,
    finished: bool,
}

impl SnapshotWriter {
    /// Refuses to overwrite an existing directory.
    pub fn create(out: &Path) -> Result<Self, SnapshotError> {
        if out.exists() {
            return Err(SnapshotError::OutputExists {
                path: out.to_path_buf(),
            });
        }
        let name =
            out.file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| SnapshotError::BadId {
                    id: out.display().to_string(),
                })?;
        super::check_id(name)?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| SnapshotError::io(&parent, e))?;
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| SnapshotError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| SnapshotError::io(&tmp, e))?;
        Ok(SnapshotWriter {
            out: out.to_path_buf(),
            tmp,
            finished: false,
        })
    }

    /// Where files go while the snapshot is being written.
    pub fn root(&self) -> &Path {
        &self.tmp
    }

    /// The snapshot id: the destination directory's name.
    pub fn id(&self) -> String {
        self.out
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string()
    }

    /// Writes the reference tables and the manifest, then renames the
    /// directory into place. `manifest.files` must hold the `penduduk`
    /// files; reference files are added here.
    pub fn finish(
        mut self,
        mut manifest: Manifest,
        scope: &RegionScope,
    ) -> Result<Manifest, SnapshotError> {
        for (name, batch) in reference_tables(scope) {
            let rel = format!("referensi/{name}.parquet");
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(
                    ZstdLevel::try_new(3).expect("valid level"),
                ))
                .set_created_by(format!("agregat {}", env!("CARGO_PKG_VERSION")))
                .build();
            let mut w = create_parquet(&self.tmp, &rel, batch.schema(), props)?;
            w.write(&batch)
                .map_err(|e| SnapshotError::parquet(&rel, e))?;
            manifest
                .files
                .push(close_parquet(w, &rel, batch.num_rows() as u64)?);
        }
        manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
        manifest.id = self.id();
        let path = self.tmp.join(super::MANIFEST);
        let mut text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
        text.push('\n');
        std::fs::write(&path, text).map_err(|e| SnapshotError::io(&path, e))?;
        std::fs::rename(&self.tmp, &self.out).map_err(|e| SnapshotError::io(&self.out, e))?;
        self.finished = true;
        Ok(manifest)
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Schema of the `wilayah` reference table.
pub fn wilayah_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("kode", DataType::Utf8, false),
        Field::new("nama", DataType::Utf8, false),
        Field::new("tingkat", DataType::Utf8, false),
        Field::new("kode_induk", DataType::Utf8, true),
    ]))
}

/// Schema of the `kode_referensi` reference table.
pub fn kode_referensi_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("elemen", DataType::Utf8, false),
        Field::new("kode", DataType::Int32, false),
        Field::new("label", DataType::Utf8, false),
    ]))
}

pub(super) fn build_wilayah(scope: &RegionScope) -> RecordBatch {
    let (mut kode, mut nama, mut tingkat, mut induk) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    for r in catalog::regions()
        .all()
        .iter()
        .filter(|r| scope.touches(&r.kode))
    {
        kode.append_value(&r.kode);
        nama.append_value(&r.nama);
        tingkat.append_value(if r.is_kelurahan() {
            "kelurahan"
        } else {
            r.level.label()
        });
        induk.append_option(r.kode.rfind('.').map(|i| &r.kode[..i]));
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(kode.finish()),
        Arc::new(nama.finish()),
        Arc::new(tingkat.finish()),
        Arc::new(induk.finish()),
    ];
    RecordBatch::try_new(wilayah_schema(), cols).expect("wilayah schema")
}

pub(super) fn build_kode_referensi() -> RecordBatch {
    let (mut e, mut k, mut l) = (
        StringBuilder::new(),
        Int32Builder::new(),
        StringBuilder::new(),
    );
    for list in catalog::code_lists().values() {
        for (code, label) in &list.entries {
            e.append_value(list.name);
            k.append_value(i32::from(*code));
            l.append_value(label);
        }
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(e.finish()),
        Arc::new(k.finish()),
        Arc::new(l.finish()),
    ];
    RecordBatch::try_new(kode_referensi_schema(), cols).expect("kode_referensi schema")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_matches_catalog_schema() {
        let mut b = PendudukBuilder::new();
        b.push(&PersonRow {
            nik: "6171014501900001",
            ..Default::default()
        });
        let batch = b.finish();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.schema(), catalog::penduduk_file_schema());
    }

    #[test]
    fn wilayah_for_pontianak_has_ancestors_and_children() {
        let batch = build_wilayah(&RegionScope::parse("61.71").unwrap());
        // provinsi + kota + 6 kecamatan + 29 kelurahan
        assert_eq!(batch.num_rows(), 37);
    }
}
