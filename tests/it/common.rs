//! Fixtures shared by the integration tests: the committed sample snapshot
//! behind one engine, and protection that releases true values so the gate
//! and the grid can be checked against independently computed counts.
#![allow(dead_code)] // each test crate uses only some of these

pub(crate) mod server;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use agregat::protect::ptable::PTable;
use agregat::protect::{Method, Protection, SparsityRule};
use agregat::query::{Engine, EngineConfig};
use agregat::warehouse::{Snapshot, Verify};

pub(crate) struct Sample {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) engine: Engine,
}

/// The engine over `data-samples/dkb-2026-s1`, opened once per test binary.
pub(crate) fn sample() -> &'static Sample {
    static S: OnceLock<Sample> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let snap = Snapshot::open(Path::new("data-samples/dkb-2026-s1"), Verify::Full).unwrap();
        let engine = rt
            .block_on(Engine::open(snap, EngineConfig::default()))
            .unwrap();
        Sample { rt, engine }
    })
}

/// Identity ptable, k = 1, no sparsity refusal: true values, for tests of
/// the gate only. Agreement files cannot configure this.
pub(crate) fn true_values() -> Protection {
    let ptable = PTable::from_csv(
        "cell_value,cell_key,perturbation\n0,0,0\n1,0,0\n2,0,0\n",
        "identity",
    )
    .unwrap();
    Protection {
        method: Method::CellKey {
            ptable: Arc::new(ptable),
            k: 1,
        },
        sparsity: SparsityRule {
            max_ones_share: 1.0,
            max_ones_twos_share: 1.0,
        },
    }
}

/// The interpreter with pyarrow and polars: `$AGREGAT_PYTHON` (set by
/// `.ci/run`, which installs them in a venv), else `python3`; `None`
/// where neither can import both.
pub(crate) fn python() -> Option<String> {
    let candidates: Vec<String> = std::env::var("AGREGAT_PYTHON")
        .ok()
        .into_iter()
        .chain(["python3".to_string()])
        .collect();
    candidates.into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import pyarrow, polars, pandas, duckdb"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}
