//! The analysts' side: a released Parquet download and the sample snapshot
//! open in real pyarrow, polars, pandas and DuckDB, with the protection
//! metadata readable and withheld cells NULL in each.
//!
//! Uses the interpreter in `$AGREGAT_PYTHON` (set by `.ci/run`, which
//! installs the four packages into a venv), else `python3` if it has all
//! four; otherwise the test says why it skipped.

use crate::common;

use common::python;
use std::path::Path;
use std::process::Command;

use agregat::agreement::Agreement;
use agregat::catalog::RegionScope;
use agregat::query::{Engine, EngineConfig};
use agregat::release::run_query;
use agregat::warehouse::{Snapshot, Verify};

const SCRIPT: &str = r#"
import json, sys
import pyarrow.parquet as pq, pyarrow.dataset as ds, polars as pl
release, snapshot = sys.argv[1], sys.argv[2]
t = pq.read_table(release)
meta = json.loads(t.schema.metadata[b"agregat.protection"])
assert meta["method"] == "cell_key", meta
assert meta["k"] == 10 and meta["ptable"]["max_perturbation"] == 5, meta
assert "suppression" in t.column_names, t.column_names
df = pl.read_parquet(release)
assert df.height == t.num_rows and df.height == 29 * 2, df.shape
withheld = df.filter(pl.col("n").is_null())
assert withheld.height == withheld.filter(pl.col("suppression").is_not_null()).height
pmeta = pl.read_parquet_metadata(release)
assert json.loads(pmeta["agregat.protection"])["method"] == "cell_key"
d = ds.dataset(snapshot + "/penduduk", format="parquet", partitioning="hive")
s = d.schema
assert len(s.names) == 34 and "kode_kab" in s.names and "record_key" in s.names, s.names
assert d.count_rows() == 69000
p = pl.scan_parquet(snapshot + "/penduduk/**/*.parquet", hive_partitioning=True).select(pl.len()).collect()
assert p.item() == 69000
import pandas as pd, duckdb
pdf = pd.read_parquet(release)
assert len(pdf) == t.num_rows, pdf.shape
assert int(pdf["n"].isna().sum()) == withheld.height
assert pdf["n"].dropna().ge(0).all()
con = duckdb.connect()
rows, nulls, total = con.execute(
    "SELECT COUNT(*), COUNT(*) FILTER (WHERE n IS NULL), SUM(n) FROM read_parquet(?)", [release]
).fetchone()
assert rows == t.num_rows and nulls == withheld.height, (rows, nulls)
assert total == df["n"].sum(), (total, df["n"].sum())
kv = dict(con.execute("SELECT decode(key), decode(value) FROM parquet_kv_metadata(?)", [release]).fetchall())
assert json.loads(kv["agregat.protection"])["method"] == "cell_key", kv.keys()
n = con.execute(
    "SELECT COUNT(*) FROM read_parquet(? || '/penduduk/**/*.parquet', hive_partitioning = true)",
    [snapshot],
).fetchone()[0]
assert n == 69000, n
print("pyarrow", __import__("pyarrow").__version__, "polars", pl.__version__,
      "pandas", pd.__version__, "duckdb", duckdb.__version__, "ok")
"#;

#[test]
fn downloads_and_snapshots_open_in_pyarrow_polars_pandas_and_duckdb() {
    let Some(python) = python() else {
        eprintln!(
            "SKIPPED: no Python with pyarrow, polars, pandas and duckdb (set AGREGAT_PYTHON; .ci/run installs them)"
        );
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let snap = Snapshot::open(Path::new("data-samples/dkb-2026-s1"), Verify::Full).unwrap();
    let engine = rt
        .block_on(Engine::open(snap, EngineConfig::default()))
        .unwrap();
    let agreement = Agreement::unrestricted("analis", RegionScope::parse("61.71").unwrap());
    let r = rt
        .block_on(run_query(
            &engine,
            &agreement,
            "SELECT kode_kel, jenis_kelamin, COUNT(*) AS n FROM penduduk GROUP BY 1, 2",
        ))
        .unwrap();
    let bytes = agregat::output::encode(&r.table, agregat::output::Format::Parquet).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("hasil.parquet");
    std::fs::write(&release, bytes).unwrap();
    let out = Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(&release)
        .arg("data-samples/dkb-2026-s1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}
