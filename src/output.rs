//! Encoding results for people and programs: an aligned text table, CSV,
//! JSON (an object with `columns` and `rows`), or Parquet.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::parquet::arrow::ArrowWriter;

use crate::query::QueryResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot encode the result: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
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

pub fn encode(result: &QueryResult, format: Format) -> Result<Vec<u8>, OutputError> {
    let names: Vec<String> = result
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut rows = Vec::new();
    for b in &result.batches {
        rows.extend(cells(b)?);
    }
    Ok(match format {
        Format::Table => {
            let batches = &result.batches;
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
                            .zip(result.schema.fields())
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
            let mut v =
                serde_json::to_vec_pretty(&serde_json::json!({ "columns": names, "rows": rows }))
                    .expect("JSON values serialise");
            v.push(b'\n');
            v
        }
        Format::Parquet => {
            let mut buf = Vec::new();
            let mut w = ArrowWriter::try_new(&mut buf, result.schema.clone(), None)?;
            for b in &result.batches {
                w.write(b)?;
            }
            w.close()?;
            buf
        }
    })
}
