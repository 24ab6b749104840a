//! The Markdown form: the same blocks as the HTML, as headings, tables and
//! quotes; the weekly chart becomes a table.

use std::fmt::Write as _;

use super::Report;
use super::doc::{self, Block, Cell, Style};
use super::text;

/// Escapes Markdown punctuation in running text; `_` only at word edges,
/// so `penyandang_cacat` stays readable.
fn esc(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    for (i, c) in chars.iter().enumerate() {
        match c {
            '\\' | '*' | '`' | '[' | ']' | '|' | '#' => {
                out.push('\\');
                out.push(*c);
            }
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '_' => {
                let inner = i > 0
                    && chars[i - 1].is_alphanumeric()
                    && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
                if !inner {
                    out.push('\\');
                }
                out.push('_');
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(*c),
        }
    }
    out
}

/// A code span that survives any backticks inside and, in tables, pipes.
fn code(s: &str) -> String {
    let s = s.replace(['\n', '\r'], " ").replace('|', "\\|");
    let mut fence = String::from("`");
    while s.contains(fence.as_str()) {
        fence.push('`');
    }
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

fn para(style: Style, text: &str) -> String {
    let t = esc(text);
    match style {
        Style::Plain => t,
        Style::Ok => format!("✓ {t}"),
        Style::Warn => format!("> ⚠ {t}"),
        Style::Danger => format!("> **⛔ {t}**"),
        Style::Info => format!("> ℹ {t}"),
        Style::Note => format!("_{t}_"),
    }
}

fn table(out: &mut String, head: &[String], rows: &[Vec<Cell>]) {
    let numeric: Vec<bool> = (0..head.len())
        .map(|i| {
            !rows.is_empty()
                && rows
                    .iter()
                    .all(|r| matches!(r.get(i), Some(Cell::Num(_) | Cell::Bar(_))))
        })
        .collect();
    let _ = writeln!(
        out,
        "| {} |",
        head.iter().map(|h| esc(h)).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(
        out,
        "|{}|",
        numeric
            .iter()
            .map(|n| if *n { "---:" } else { "---" })
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .map(|c| match c {
                Cell::Text(s) | Cell::Num(s) => esc(s),
                Cell::Code(s) => code(s),
                Cell::Bar(p) => format!("{} {}", text::text_bar(*p), esc(&text::pct(*p))),
            })
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

pub(super) fn render(report: &Report) -> String {
    let mut out = String::new();
    for block in doc::blocks(report) {
        match block {
            Block::ChainAlert(msg) => {
                let _ = writeln!(out, "**⚠ {}**\n", esc(&msg));
            }
            Block::Title { title, meta } => {
                let _ = writeln!(out, "# {}\n", esc(&title));
                for (k, v) in meta {
                    let _ = writeln!(out, "- **{}:** {}", esc(&k), esc(&v));
                }
                out.push('\n');
            }
            Block::Section { heading, .. } => {
                let _ = writeln!(out, "## {}\n", esc(&heading));
            }
            Block::EndSection => {}
            Block::Sub(title) => {
                let _ = writeln!(out, "### {}\n", esc(&title));
            }
            Block::Para(style, text) => {
                let _ = writeln!(out, "{}\n", para(style, &text));
            }
            Block::Code(sql) => {
                let mut fence = String::from("```");
                while sql.contains(fence.as_str()) {
                    fence.push('`');
                }
                let _ = writeln!(out, "{fence}sql\n{sql}\n{fence}\n");
            }
            Block::Table { head, rows } => table(&mut out, &head, &rows),
            Block::List(items) => {
                for (style, text) in items {
                    let item = match style {
                        Style::Danger => format!("**⛔ {}**", esc(&text)),
                        Style::Warn => format!("⚠ {}", esc(&text)),
                        Style::Info => format!("ℹ {}", esc(&text)),
                        _ => esc(&text),
                    };
                    let _ = writeln!(out, "- {item}");
                }
                out.push('\n');
            }
            Block::Weekly(w) => {
                if w.series.is_empty() || w.weeks.is_empty() {
                    out.push_str("Tidak ada permintaan dalam periode ini.\n\n");
                    continue;
                }
                let mut head = vec!["Minggu".to_string()];
                head.extend(w.series.iter().map(|s| text::series_label(&s.agreement)));
                let rows: Vec<Vec<Cell>> = w
                    .weeks
                    .iter()
                    .enumerate()
                    .map(|(i, week)| {
                        let mut row = vec![Cell::Text(week.clone())];
                        row.extend(w.series.iter().map(|s| Cell::Num(text::int(s.counts[i]))));
                        row
                    })
                    .collect();
                table(&mut out, &head, &rows);
            }
        }
    }
    out
}
