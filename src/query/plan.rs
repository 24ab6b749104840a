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
    check_nesting(sql)?;
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

/// Deepest parenthesis nesting accepted in the SQL text. The parser
/// backtracks on nested parentheses (a `(` may open a subquery or an
/// expression), so its time grows exponentially with depth: 45 nested
/// `NOT (` took longer than any timeout. Real queries stay below 10.
pub const MAX_PAREN_DEPTH: usize = 24;

/// Refuses SQL text nested deeper than [`MAX_PAREN_DEPTH`] parentheses,
/// counted on the text before parsing (quoted strings, quoted identifiers
/// and comments do not count).
fn check_nesting(sql: &str) -> Result<(), QueryError> {
    let b = sql.as_bytes();
    let (mut i, mut depth, mut deepest) = (0usize, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        if i + 1 < b.len() && b[i + 1] == q {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    if deepest > MAX_PAREN_DEPTH {
        return Err(QueryError::new(
            Code::QueryTooComplex,
            format!(
                "the query nests parentheses {deepest} deep; at most {MAX_PAREN_DEPTH} are accepted; write alternatives as IN (...), drop redundant parentheses, and combine conditions with AND"
            ),
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        let deep = format!("SELECT {}1{}", "(".repeat(30), ")".repeat(30));
        assert_eq!(
            check_nesting(&deep).unwrap_err().code,
            Code::QueryTooComplex
        );
        let quoted = format!(
            "SELECT '{}' -- {}\n/* {} */",
            "(".repeat(30),
            "(".repeat(30),
            "(".repeat(30)
        );
        assert!(check_nesting(&quoted).is_ok());
        let ok = format!("SELECT {}1{}", "(".repeat(24), ")".repeat(24));
        assert!(check_nesting(&ok).is_ok());
    }
}
