//! Encoding released tables for people and programs: an aligned text table,
//! CSV, JSON (`columns`, `rows` and `protection`), or Parquet (the
//! protection metadata as the key-value entry `agregat.protection`, which
//! pyarrow and polars read). Only a [`ProtectedTable`] can be encoded.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::parquet::arrow::ArrowWriter;

use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::WriterProperties;

use crate::protect::ProtectedTable;

/// Parquet key-value metadata key holding the protection metadata (JSON).
pub const PARQUET_METADATA_KEY: &str = "agregat.protection";

/// Encoding of a released table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text table for a terminal.
    Table,
    /// CSV with a header line.
    Csv,
    /// JSON object with `columns`, `rows` and `protection`.
    Json,
    /// Parquet, with the protection metadata under `agregat.protection`.
    Parquet,
}

/// Errors encoding a released table.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Formatting the batches or attaching the metadata to them failed.
    #[error("cannot encode the result: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// Writing Parquet failed.
    #[error("cannot encode the result as Parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
}

fn cells(batch: &RecordBatch) -> Result<Vec<Vec<Option<String>>>, OutputError> {
    let opts = FormatOptions::default();
    let fmts: Vec<ArrayFormatter> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
        .collect::<Result<_, _>>()?;
    Ok((0..batch.num_rows())
        .map(|r| {
            batch
                .columns()
                .iter()
                .zip(&fmts)
                .map(|(c, f)| (!c.is_null(r)).then(|| f.value(r).to_string()))
                .collect()
        })
        .collect())
}

/// Encodes a protected table in `format`. JSON and Parquet carry the
/// protection metadata with the data.
pub fn encode(result: &ProtectedTable, format: Format) -> Result<Vec<u8>, OutputError> {
    let metadata = serde_json::to_value(result.metadata()).expect("metadata serialises");
    let names: Vec<String> = result
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut rows = Vec::new();
    for b in result.batches() {
        rows.extend(cells(b)?);
    }
    Ok(match format {
        Format::Table => {
            let batches = result.batches();
            let mut s =
                datafusion::arrow::util::pretty::pretty_format_batches(batches)?.to_string();
            s.push('\n');
            s.into_bytes()
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(&names).expect("in-memory write");
            for r in &rows {
                w.write_record(r.iter().map(|c| c.as_deref().unwrap_or("")))
                    .expect("in-memory write");
            }
            w.into_inner().expect("in-memory write")
        }
        Format::Json => {
            let rows: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    serde_json::Value::Array(
                        r.iter()
                            .zip(result.schema().fields())
                            .map(|(c, f)| match c {
                                None => serde_json::Value::Null,
                                Some(v) if f.data_type().is_numeric() => v
                                    .parse::<serde_json::Number>()
                                    .map(serde_json::Value::Number)
                                    .unwrap_or_else(|_| serde_json::Value::String(v.clone())),
                                Some(v) => serde_json::Value::String(v.clone()),
                            })
                            .collect(),
                    )
                })
                .collect();
            let mut v = serde_json::to_vec_pretty(
                &serde_json::json!({ "columns": names, "rows": rows, "protection": metadata }),
            )
            .expect("JSON values serialise");
            v.push(b'\n');
            v
        }
        Format::Parquet => {
            let mut buf = Vec::new();
            let props = WriterProperties::builder()
                .set_key_value_metadata(Some(vec![KeyValue::new(
                    PARQUET_METADATA_KEY.to_string(),
                    metadata.to_string(),
                )]))
                .build();
            // Also in the Arrow schema's metadata, which pyarrow exposes as
            // `table.schema.metadata`.
            let schema =
                std::sync::Arc::new(result.schema().as_ref().clone().with_metadata(
                    [(PARQUET_METADATA_KEY.to_string(), metadata.to_string())].into(),
                ));
            let mut w = ArrowWriter::try_new(&mut buf, schema.clone(), Some(props))?;
            for b in result.batches() {
                w.write(&b.clone().with_schema(schema.clone())?)?;
            }
            w.close()?;
            buf
        }
    })
}
