//! The DataFusion session of one snapshot: `penduduk` as a listing table over
//! its hive-partitioned Parquet, the public reference tables, the coarsening
//! functions, and the resource limits (memory pool, partitions, timeout).

use std::time::Duration;

use datafusion::arrow::datatypes::DataType;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

use super::error::EngineError;
use super::udf::coarsening_udfs;
use crate::calendar::date_to_days;
use crate::catalog;
use crate::warehouse::{PENDUDUK_DIR, Snapshot};

/// Names of the public reference tables a query may join.
pub const REFERENCE_TABLES: &[&str] = &["wilayah", "kode_referensi"];
/// Name of the population table in SQL.
pub const PENDUDUK: &str = "penduduk";

/// Resource limits of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Memory pool for all queries of the process: engines with the same
    /// limit share one pool, so serving several snapshots does not
    /// multiply it.
    pub memory_limit_bytes: usize,
    /// Parallelism of scans and aggregations.
    pub target_partitions: usize,
    /// Upper bound for one query; an agreement may set a lower one.
    pub query_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            memory_limit_bytes: 2 << 30,
            target_partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            query_timeout: Duration::from_secs(60),
        }
    }
}

/// The process's DataFusion runtime (memory pool, spill files) for a memory
/// limit: one pool however many snapshots are served, so concurrent
/// queries on different snapshots are admitted against the same bound.
fn shared_runtime(
    limit: usize,
) -> Result<std::sync::Arc<datafusion::execution::runtime_env::RuntimeEnv>, EngineError> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    type Pools = Mutex<HashMap<usize, Arc<datafusion::execution::runtime_env::RuntimeEnv>>>;
    static POOLS: OnceLock<Pools> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(rt) = pools.get(&limit) {
        return Ok(Arc::clone(rt));
    }
    let rt = RuntimeEnvBuilder::new()
        .with_memory_limit(limit, 1.0)
        .build_arc()?;
    pools.insert(limit, Arc::clone(&rt));
    Ok(rt)
}

/// One snapshot, ready to query.
pub struct Engine {
    snapshot: Snapshot,
    ctx: SessionContext,
    config: EngineConfig,
    /// Result grids by aggregate plan: a grid is a function of public
    /// information only (plan, scope, snapshot coverage), so it is reused.
    grids:
        std::sync::Mutex<std::collections::HashMap<String, datafusion::arrow::array::RecordBatch>>,
    /// What each agreement's cell-key tables have released about each
    /// margin of this snapshot (see [`super::margins`]).
    margins: super::margins::MarginMemory,
}

/// Grids kept per engine before the cache is cleared.
const GRID_CACHE_ENTRIES: usize = 512;

impl Engine {
    /// Opens a session over `snapshot` with `penduduk`, the reference tables
    /// and the coarsening functions registered, in the shared memory pool.
    pub async fn open(snapshot: Snapshot, config: EngineConfig) -> Result<Engine, EngineError> {
        let runtime = shared_runtime(config.memory_limit_bytes)?;
        let session = SessionConfig::new()
            .with_target_partitions(config.target_partitions.max(1))
            .with_information_schema(false)
            .with_collect_statistics(true);
        let ctx = SessionContext::new_with_config_rt(session, runtime);
        for udf in coarsening_udfs(date_to_days(snapshot.manifest.tanggal_data)) {
            ctx.register_udf(udf);
        }
        let schema = catalog::penduduk_file_schema();
        let opts = ParquetReadOptions::default()
            .schema(&schema)
            .table_partition_cols(vec![(
                catalog::PARTITION_COLUMN.to_string(),
                DataType::Utf8,
            )]);
        let dir = snapshot.dir.join(PENDUDUK_DIR);
        ctx.register_parquet(PENDUDUK, format!("{}/", dir.display()), opts)
            .await?;
        for t in REFERENCE_TABLES {
            ctx.register_parquet(
                *t,
                snapshot.reference_file(t).display().to_string(),
                ParquetReadOptions::default(),
            )
            .await?;
        }
        Ok(Engine {
            snapshot,
            ctx,
            config,
            grids: Default::default(),
            margins: Default::default(),
        })
    }

    /// The DataFusion session.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The snapshot this engine queries.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The resource limits the engine was opened with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub(crate) fn margins(&self) -> &super::margins::MarginMemory {
        &self.margins
    }

    /// Makes the margin memory durable: loads what was recorded for this
    /// snapshot and records every later admission through `journal`.
    pub fn persist_margins(
        &self,
        recorded: Vec<(String, String, String, f64)>,
        journal: super::margins::Journal,
    ) {
        self.margins.restore(recorded);
        self.margins.set_journal(journal);
    }

    /// The margins of an agreement's released tables on this snapshot that
    /// are closest to the averaging floor (worst first), for `/v1/budget`.
    pub fn margin_state(
        &self,
        agreement: &crate::agreement::Agreement,
        limit: usize,
    ) -> Vec<super::margins::MarginState> {
        self.margins.state(
            agreement.id(),
            agreement.protection().noise_variance(),
            limit,
        )
    }

    pub(crate) fn cached_grid(&self, key: &str) -> Option<datafusion::arrow::array::RecordBatch> {
        self.grids.lock().ok()?.get(key).cloned()
    }

    pub(crate) fn cache_grid(&self, key: String, grid: datafusion::arrow::array::RecordBatch) {
        if let Ok(mut g) = self.grids.lock() {
            if g.len() >= GRID_CACHE_ENTRIES {
                g.clear();
            }
            g.insert(key, grid);
        }
    }

    /// The snapshot's reference date as Date32 days.
    pub fn as_of_days(&self) -> i32 {
        date_to_days(self.snapshot.manifest.tanggal_data)
    }
}
