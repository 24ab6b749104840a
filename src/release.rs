//! The release pipeline: the one path from a question to released values,
//! for every front end (the HTTP service, `agregat query`, the SQL corpus,
//! the saved queries and the benches).
//!
//! ```text
//! plan → validate → DP reuse? → reserve → execute + protect → commit → post-plan
//! ```
//!
//! Owns: the order of those steps, the privacy-budget accounting around
//! them (reserve before any noise is drawn, commit once it is drawn,
//! release the reservation when nothing was drawn), and the DP release
//! cache in both its tiers (memory, and the state database for repeats
//! after a restart): a repeated DP question on the same snapshot under the
//! same agreement and budget is answered with the identical release, free
//! of charge. That rule is written here and nowhere else.
//!
//! The pipeline takes its state store and clock from its caller: the
//! service passes its SQLite state and the system clock; a local run
//! ([`Pipeline::local`]) an in-memory ledger, which is why `agregat query`
//! is a local run of the data owner, not audited and not charged (it
//! says so on every run).
//!
//! What it does not own: authentication and the access rules
//! ([`crate::agreement`]), the gate ([`crate::query::validate`]),
//! protection ([`crate::protect`]), encoding ([`crate::output`]) and the
//! audit entry ([`crate::service`]); [`Facts`] carries what the audit needs
//! to know, filled in as the steps pass, also when a step fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::Digest;

use crate::agreement::Agreement;
use crate::calendar::{Clock, SystemClock, period_of};
use crate::error::ErrorCategory;
use crate::protect::dp::DpError;
use crate::protect::{DpCost, ProtectedTable, check_aggregates};
use crate::query::{
    Engine, Executed, QueryResult, RunError, ValidatedPlan, check_cells, check_query, execute,
    grid_cells, plan_fingerprint, post_plan, within_timeout,
};
use crate::state::{Reservation, SqliteStore, StateError, StateStore};

/// Released DP tables kept in memory before the memory tier is cleared
/// (the durable tier keeps them all).
const MEMORY_ENTRIES: usize = 4096;

/// Why a release did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Refused by the gate or a limit, or the engine failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The ledger refused (budget) or failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// OpenDP could not state the charge of a validated question.
    #[error("privacy cost: {0}")]
    Privacy(#[from] DpError),
    /// A blocking ledger task did not finish.
    #[error("the ledger task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ReleaseError {
    /// The category, from the wrapped error.
    pub fn category(&self) -> ErrorCategory {
        match self {
            ReleaseError::Run(e) => e.category(),
            ReleaseError::State(e) => e.category(),
            ReleaseError::Privacy(_) | ReleaseError::Task(_) => ErrorCategory::Internal,
        }
    }
}

/// One question to release.
pub struct Ask<'a> {
    /// The snapshot's engine.
    pub engine: &'a Engine,
    /// The agreement whose rules apply.
    pub agreement: &'a Agreement,
    /// DP: the agreement's budget per six-month period.
    pub allowance: Option<f64>,
    /// The SQL text.
    pub sql: &'a str,
    /// Unique per request: the ledger's reservation key, and the log's.
    pub request_id: &'a str,
}

/// What the audit entry needs to know of a release, filled in step by step
/// (a refused question still has its snapshot, and a validated one its
/// plan fingerprint and elements).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The snapshot queried.
    pub snapshot: Option<String>,
    /// SHA-256 of the canonical aggregate plan.
    pub plan_fingerprint: Option<String>,
    /// Catalog elements the query uses.
    pub elements: Vec<String>,
    /// Cells of the complete grid.
    pub cells: u64,
    /// Cells withheld (primary and secondary).
    pub suppressed_cells: u64,
    /// Privacy loss charged by this release (DP; 0 for a repeat).
    pub privacy_loss: Option<f64>,
}

/// What a question would cost, without running it.
#[derive(Debug)]
pub struct Cost {
    /// The validated plan.
    pub plan: ValidatedPlan,
    /// Cells of the complete grid.
    pub cells: usize,
    /// DP: the charge and each column's margin of error.
    pub dp: Option<DpCost>,
    /// DP: whether the question was released before (then it is free).
    pub would_reuse: bool,
}

/// The pipeline, with its ledger, clock and release cache.
pub struct Pipeline {
    store: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
    lifetime_ceiling: Option<f64>,
    memory: Mutex<HashMap<String, ProtectedTable>>,
}

impl Pipeline {
    /// A pipeline charging `store`, dating periods by `clock`, and refusing
    /// DP charges beyond `lifetime_ceiling` (all agreements and periods).
    pub fn new(
        store: Arc<dyn StateStore>,
        clock: Arc<dyn Clock>,
        lifetime_ceiling: Option<f64>,
    ) -> Pipeline {
        Pipeline {
            store,
            clock,
            lifetime_ceiling,
            memory: Mutex::new(HashMap::new()),
        }
    }

    /// A local run of the data owner: an in-memory ledger that lives as
    /// long as the pipeline, the system clock, no lifetime ceiling. Nothing
    /// is audited or charged to an agreement's real budget; only
    /// Disdukcapil, who holds the snapshot files, can run it.
    pub fn local() -> Result<Pipeline, StateError> {
        Ok(Pipeline::new(
            Arc::new(SqliteStore::in_memory()?),
            Arc::new(SystemClock),
            None,
        ))
    }

    /// The ledger.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Plans and validates, within the agreement's timeout.
    pub async fn validate(
        &self,
        ask: &Ask<'_>,
        facts: &mut Facts,
    ) -> Result<ValidatedPlan, RunError> {
        facts.snapshot = Some(ask.engine.snapshot().id().to_string());
        let validated = within_timeout(
            ask.engine,
            ask.agreement,
            check_query(ask.engine, ask.agreement, ask.sql),
        )
        .await?;
        facts.plan_fingerprint = Some(plan_fingerprint(&validated));
        facts.elements = validated.elements().iter().map(|e| e.to_string()).collect();
        Ok(validated)
    }

    /// What a question would cost (the dry run): cells, the DP charge and
    /// margins, and whether it would be a free repeat. Reads no personal
    /// data and charges nothing.
    pub async fn cost(&self, ask: &Ask<'_>, facts: &mut Facts) -> Result<Cost, ReleaseError> {
        let plan = self.validate(ask, facts).await?;
        let cells = grid_cells(ask.engine, ask.agreement, &plan).await?;
        facts.cells = cells as u64;
        check_cells(cells, ask.agreement).map_err(RunError::from)?;
        let protection = ask.agreement.protection();
        check_aggregates(&protection.method, plan.aggregates()).map_err(RunError::from)?;
        let dp = protection.cost(plan.aggregates(), plan.grouping_sets())?;
        let would_reuse = dp.is_some()
            && self
                .known(ask, &release_key(ask.engine, ask.agreement, &plan))
                .await?
                .is_some();
        Ok(Cost {
            plan,
            cells,
            dp,
            would_reuse,
        })
    }

    /// Releases one question: validated, charged (DP), executed and
    /// protected, committed, then HAVING/ORDER BY/LIMIT over the released
    /// values.
    pub async fn run(&self, ask: &Ask<'_>, facts: &mut Facts) -> Result<QueryResult, ReleaseError> {
        let validated = self.validate(ask, facts).await?;
        let protection = ask.agreement.protection();
        if !protection.is_dp() {
            let executed = execute_within(ask, &validated).await?;
            return self.finish(ask, validated, executed, facts).await;
        }
        // DP: a question released before (also before a restart) is
        // answered with that release, free of charge.
        let key = release_key(ask.engine, ask.agreement, &validated);
        if let Some(table) = self.known(ask, &key).await? {
            return self.finish(ask, validated, reused(table), facts).await;
        }
        let cost = protection
            .cost(validated.aggregates(), validated.grouping_sets())?
            .map_or(0.0, |c| c.charge.value());
        let reservation = self.reserve(ask, cost).await?;
        // Between the lookup and the reservation an identical question may
        // have been released: the same noise is served, nothing is charged.
        if let Some(table) = self.memory_get(&key) {
            self.settle(reservation, false).await?;
            return self.finish(ask, validated, reused(table), facts).await;
        }
        let executed = match execute_within(ask, &validated).await {
            Ok(e) => e,
            Err(e) => {
                // No noise was drawn: nothing is charged.
                self.settle(reservation, false).await?;
                return Err(e.into());
            }
        };
        // The noise exists now: the charge is committed before anything
        // leaves, and whatever happens after (a post-plan that cannot be
        // evaluated on the released values, a timeout) keeps it; the
        // release is cached so that the repeat is free because it was
        // paid for. If the commit fails, nothing is released or cached.
        // An identical release made meanwhile is served instead of ours.
        if let Some(earlier) = self.memory_get(&key) {
            self.settle(reservation, false).await?;
            return self.finish(ask, validated, reused(earlier), facts).await;
        }
        self.settle(reservation, true).await?;
        facts.privacy_loss = executed.table.charge_now().map(|c| c.value());
        self.memory_put(key.clone(), executed.table.clone());
        self.store_durable(ask, &key, &executed.table).await;
        self.finish(ask, validated, executed, facts).await
    }

    /// The post-plan over released values, and the facts of the release.
    async fn finish(
        &self,
        ask: &Ask<'_>,
        plan: ValidatedPlan,
        released: Executed,
        facts: &mut Facts,
    ) -> Result<QueryResult, ReleaseError> {
        let Executed {
            table,
            cells,
            outside_grid,
        } = released;
        let table = within_timeout(
            ask.engine,
            ask.agreement,
            post_plan(ask.engine, &plan, table),
        )
        .await?;
        let m = table.metadata();
        facts.cells = cells as u64;
        facts.suppressed_cells = (m.primary_suppressed + m.secondary_suppressed) as u64;
        facts.privacy_loss = table.charge_now().map(|c| c.value());
        Ok(QueryResult {
            table,
            cells,
            plan,
            outside_grid,
        })
    }

    /// DP: the earlier release with this key, from memory or from the
    /// state database (loaded into memory then).
    async fn known(
        &self,
        ask: &Ask<'_>,
        key: &str,
    ) -> Result<Option<ProtectedTable>, ReleaseError> {
        if let Some(t) = self.memory_get(key) {
            return Ok(Some(t));
        }
        let store = Arc::clone(&self.store);
        let k = key.to_string();
        let stored = tokio::task::spawn_blocking(move || store.release_get(&k)).await??;
        let Some(bytes) = stored else {
            return Ok(None);
        };
        match ProtectedTable::from_bytes(&bytes) {
            Ok(t) => {
                self.memory_put(key.to_string(), t.clone());
                Ok(Some(t))
            }
            Err(e) => {
                eprintln!(
                    "agregat: request {}: stored release unreadable ({e}); answering afresh",
                    ask.request_id
                );
                Ok(None)
            }
        }
    }

    /// DP: the budget left in the current period, after `amount` more.
    async fn reserve(&self, ask: &Ask<'_>, amount: f64) -> Result<Reservation, ReleaseError> {
        let store = Arc::clone(&self.store);
        let id = ask.agreement.id().to_string();
        let period = period_of(self.clock.today());
        // A local run has no allowance: the largest finite one.
        let allowance = ask.allowance.unwrap_or(f64::MAX);
        let lifetime = self.lifetime_ceiling;
        let request_id = ask.request_id.to_string();
        Ok(tokio::task::spawn_blocking(move || {
            store.reserve_within(&id, &period, amount, allowance, lifetime, &request_id)
        })
        .await??)
    }

    async fn settle(&self, r: Reservation, commit: bool) -> Result<(), ReleaseError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            if commit {
                store.commit(&r)
            } else {
                store.release(&r)
            }
        })
        .await??;
        Ok(())
    }

    /// Keeps a committed DP release in the state database for repeats after
    /// a restart. A failure here only means a later repeat is charged
    /// again.
    async fn store_durable(&self, ask: &Ask<'_>, key: &str, table: &ProtectedTable) {
        let Ok(bytes) = table.to_bytes() else {
            eprintln!(
                "agregat: request {}: release not stored for repeats",
                ask.request_id
            );
            return;
        };
        let store = Arc::clone(&self.store);
        let key = key.to_string();
        let agreement = ask.agreement.id().to_string();
        let snapshot = ask.engine.snapshot().id().to_string();
        let put = tokio::task::spawn_blocking(move || {
            store.release_put(&key, &agreement, &snapshot, &bytes)
        })
        .await;
        if !matches!(put, Ok(Ok(()))) {
            eprintln!(
                "agregat: request {}: release not stored for repeats",
                ask.request_id
            );
        }
    }

    fn memory_get(&self, key: &str) -> Option<ProtectedTable> {
        self.memory.lock().ok()?.get(key).cloned()
    }

    fn memory_put(&self, key: String, table: ProtectedTable) {
        if let Ok(mut m) = self.memory.lock() {
            if m.len() >= MEMORY_ENTRIES {
                m.clear();
            }
            m.insert(key, table);
        }
    }
}

/// Runs the validated plan within the agreement's timeout.
async fn execute_within(ask: &Ask<'_>, validated: &ValidatedPlan) -> Result<Executed, RunError> {
    within_timeout(
        ask.engine,
        ask.agreement,
        execute(ask.engine, ask.agreement, validated),
    )
    .await
}

/// An earlier DP release served again: marked reused, charging nothing.
fn reused(table: ProtectedTable) -> Executed {
    Executed {
        cells: table.metadata().cells,
        table: table.reused(),
        outside_grid: 0,
    }
}

/// The identity of a release: the snapshot, the agreement, its protection
/// (DP budget and threshold, or the ptable's hash, k and the sparsity
/// rule) and the canonical aggregate plan, scope applied (whitespace,
/// aliases and ORDER BY do not matter), hashed.
fn release_key(engine: &Engine, agreement: &Agreement, validated: &ValidatedPlan) -> String {
    hex::encode(sha2::Sha256::digest(
        format!(
            "{}\n{}\n{}\n{}",
            engine.snapshot().id(),
            agreement.id(),
            agreement.protection().release_identity(),
            validated.aggregate().display_indent()
        )
        .as_bytes(),
    ))
}

/// Releases one question for a local run (the data owner's `agregat
/// query`, the SQL corpus, the benches): [`Pipeline::run`] on a fresh
/// [`Pipeline::local`], its refusals as [`RunError`].
pub async fn run_query(
    engine: &Engine,
    agreement: &Agreement,
    sql: &str,
) -> Result<QueryResult, RunError> {
    let pipeline = Pipeline::local().map_err(|e| RunError::Engine(e.into()))?;
    run_with(&pipeline, engine, agreement, sql).await
}

/// [`Pipeline::run`] on a given local pipeline (so that repeats share its
/// release cache and ledger), its refusals as [`RunError`].
pub async fn run_with(
    pipeline: &Pipeline,
    engine: &Engine,
    agreement: &Agreement,
    sql: &str,
) -> Result<QueryResult, RunError> {
    static LOCAL_REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = LOCAL_REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let request_id = format!("local-{}-{n}", std::process::id());
    let ask = Ask {
        engine,
        agreement,
        allowance: None,
        sql,
        request_id: &request_id,
    };
    match pipeline.run(&ask, &mut Facts::default()).await {
        Ok(r) => Ok(r),
        Err(ReleaseError::Run(e)) => Err(e),
        Err(ReleaseError::State(e)) => Err(RunError::Engine(e.into())),
        Err(ReleaseError::Privacy(e)) => Err(RunError::Engine(e.into())),
        Err(ReleaseError::Task(e)) => Err(RunError::Engine(e.into())),
    }
}

/// An agreement's DP budget as the ledger has it now.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetView {
    /// The six-month period (`2026-S2`).
    pub period: String,
    /// `"rho"` (zCDP) or `"epsilon"` (pure DP).
    pub measure: &'static str,
    /// The agreement's allowance per period.
    pub allowance: f64,
    /// Committed and pending charges in the period.
    pub spent: f64,
    /// What is left: of the allowance, and under the lifetime ceiling.
    pub remaining: f64,
    /// The charge of one query (one aggregate, one grouping set).
    pub per_query: f64,
    /// New questions of that charge still possible.
    pub queries_left: u64,
    /// The lifetime ceiling (all agreements, all periods), if any.
    pub lifetime_ceiling: Option<f64>,
    /// Everything charged by all agreements in all periods.
    pub lifetime_spent: f64,
}

impl Pipeline {
    /// The agreement's DP budget now; `None` under cell-key, which spends
    /// none.
    pub async fn budget(
        &self,
        agreement: &Agreement,
        allowance: Option<f64>,
    ) -> Result<Option<BudgetView>, ReleaseError> {
        let Some(budget) = agreement.protection().dp_budget() else {
            return Ok(None);
        };
        let period = period_of(self.clock.today());
        let store = Arc::clone(&self.store);
        let (a, p) = (agreement.id().to_string(), period.clone());
        let spent = tokio::task::spawn_blocking(move || store.spent(&a, &p)).await??;
        let store = Arc::clone(&self.store);
        let lifetime_spent = tokio::task::spawn_blocking(move || store.lifetime_spent()).await??;
        let allowance = allowance.unwrap_or(0.0);
        let mut remaining = allowance - spent;
        if let Some(ceiling) = self.lifetime_ceiling {
            remaining = remaining.min(ceiling - lifetime_spent);
        }
        let remaining = remaining.max(0.0);
        let per_query = budget.value();
        Ok(Some(BudgetView {
            period,
            measure: budget.parameter(),
            allowance,
            spent,
            remaining,
            per_query,
            queries_left: ((remaining + crate::state::BUDGET_TOLERANCE) / per_query).floor() as u64,
            lifetime_ceiling: self.lifetime_ceiling,
            lifetime_spent,
        }))
    }
}
