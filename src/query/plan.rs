//! SQL text to a DataFusion `LogicalPlan`, read-only: exactly one `SELECT`
//! statement; no DDL, DML, `COPY`, `SET`, `EXPLAIN`, `SHOW` or `DESCRIBE`.
//! Tables other than `penduduk` and the reference tables, including file
//! paths and `information_schema`, are refused later by the validator.

use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::GenericDialect;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::Expr;

use super::engine::Engine;
use super::error::{Code, QueryError, clean_message};

/// Parses and plans one read-only statement.
pub async fn sql_to_plan(
    engine: &Engine,
    sql: &str,
    max_bytes: usize,
) -> Result<LogicalPlan, QueryError> {
    if sql.len() > max_bytes {
        return Err(QueryError::new(
            Code::SqlTooLarge,
            format!(
                "the SQL text is {} bytes; this agreement allows at most {max_bytes}; simplify the query",
                sql.len()
            ),
        ));
    }
    let mut statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})
        .map_err(|e| QueryError::new(Code::ParseError, clean_message(&e)))?;
    let statement = match statements.len() {
        0 => {
            return Err(QueryError::new(
                Code::ParseError,
                "the SQL text is empty; send one SELECT statement",
            ));
        }
        1 => statements.pop_front().expect("one statement"),
        n => {
            return Err(QueryError::new(
                Code::MultipleStatements,
                format!("found {n} statements; send exactly one SELECT statement per request"),
            ));
        }
    };
    let refuse = |what: &str| {
        Err(QueryError::new(
            Code::StatementNotAllowed,
            format!(
                "{what} is not allowed; only a single SELECT statement that returns an aggregate is accepted"
            ),
        ))
    };
    match &statement {
        Statement::Statement(s) => match s.as_ref() {
            SqlStatement::Query(_) => {}
            SqlStatement::Explain { .. } | SqlStatement::ExplainTable { .. } => {
                return refuse("EXPLAIN");
            }
            SqlStatement::ShowTables { .. }
            | SqlStatement::ShowColumns { .. }
            | SqlStatement::ShowVariable { .. }
            | SqlStatement::ShowFunctions { .. } => return refuse("SHOW"),
            SqlStatement::Set(_) => return refuse("SET"),
            SqlStatement::Insert(_) | SqlStatement::Update { .. } | SqlStatement::Delete(_) => {
                return refuse("changing data (INSERT/UPDATE/DELETE)");
            }
            other => {
                let head: String = other
                    .to_string()
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                return refuse(&format!("the statement '{head}'"));
            }
        },
        Statement::CreateExternalTable(_) => return refuse("CREATE EXTERNAL TABLE"),
        Statement::CopyTo(_) => return refuse("COPY"),
        Statement::Explain(_) => return refuse("EXPLAIN"),
        Statement::Reset(_) => return refuse("RESET"),
    }
    let state = engine.context().state();
    let plan = state
        .statement_to_plan(statement)
        .await
        .map_err(|e| QueryError::new(Code::PlanError, clean_message(&e)))?;
    // Belt and braces: DataFusion's own read-only check.
    datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| QueryError::new(Code::StatementNotAllowed, clean_message(&e)))?;
    check_depth(&plan)?;
    Ok(plan)
}

/// Deepest expression nesting accepted. Real aggregate queries stay below
/// 20; the limit keeps every later walk over the plan (the gate, the grid,
/// the post-plan, formatting for logs) far from the end of a thread's stack.
pub const MAX_EXPR_DEPTH: usize = 64;

/// Refuses expressions nested deeper than [`MAX_EXPR_DEPTH`], measured
/// without recursion, so that a hostile chain such as `1+1+…+1` or
/// `a = 1 OR a = 2 OR …` is refused instead of exhausting the stack.
fn check_depth(plan: &LogicalPlan) -> Result<(), QueryError> {
    let mut deepest = 0usize;
    let _ = plan.apply_with_subqueries(|node| {
        let _ = node.apply_expressions(|root| {
            let mut stack: Vec<(&Expr, usize)> = vec![(root, 1)];
            while let Some((e, d)) = stack.pop() {
                deepest = deepest.max(d);
                if deepest > MAX_EXPR_DEPTH {
                    return Ok(TreeNodeRecursion::Stop);
                }
                let _ = e.apply_children(|c| {
                    stack.push((c, d + 1));
                    Ok(TreeNodeRecursion::Continue)
                });
            }
            Ok(TreeNodeRecursion::Continue)
        });
        Ok(if deepest > MAX_EXPR_DEPTH {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    if deepest > MAX_EXPR_DEPTH {
        return Err(QueryError::new(
            Code::QueryTooComplex,
            format!(
                "an expression in the query is nested more than {MAX_EXPR_DEPTH} levels deep; write long lists of alternatives as IN (...) (e.g. kode_kel IN ('61.71.01.1001', '61.71.01.1002')) and ranges as BETWEEN, or use a coarser classification such as kelompok_umur(umur(tanggal_lahir), 5)"
            ),
        ));
    }
    Ok(())
}
