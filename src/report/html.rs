//! The HTML form: one self-contained, XHTML-compatible file (every tag
//! closed, attributes quoted, text escaped), inline CSS with A4 print rules
//! and inline SVG charts; no JavaScript and no external assets.

use std::fmt::Write as _;

use super::doc::{self, Block, Cell, Style};
use super::text;
use super::{Report, Weekly};

const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";
const SVG_NS: &str = "http://www.w3.org/2000/svg";

const CSS: &str = r#"
@page { size: A4; margin: 15mm }
html { background: #fff }
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; font-size: 10pt; color: #111; max-width: 180mm; margin: 0 auto; line-height: 1.35 }
h1 { font-size: 16pt; margin: 0 0 4pt }
h2 { font-size: 13pt; border-bottom: 1.5pt solid #4a5a6a; padding-bottom: 2pt; margin: 14pt 0 6pt }
h3 { font-size: 11pt; margin: 10pt 0 4pt; color: #2a3a4a }
p { margin: 4pt 0 }
.meta { color: #444; margin: 0 }
table { border-collapse: collapse; width: 100%; margin: 4pt 0 8pt }
th, td { border: 0.75pt solid #b8bec4; padding: 2pt 4pt; text-align: left; vertical-align: top }
th { background: #eef1f4 }
td.n { text-align: right; white-space: nowrap }
code, pre { font-family: "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 8.5pt }
pre { white-space: pre-wrap; word-break: break-all; background: #f6f7f8; border: 0.75pt solid #d0d4d8; padding: 4pt; margin: 4pt 0 }
ul { margin: 4pt 0; padding-left: 16pt }
.chain-broken { border: 2.5pt solid #b00020; background: #fde7ea; color: #7a0014; font-weight: bold; font-size: 11pt; padding: 8pt 10pt; margin: 0 0 10pt }
.ok { color: #1b5e20 }
.ok::before { content: "\2713  " }
.warn { background: #fff4d6; border-left: 4pt solid #e0a800; padding: 3pt 6pt }
.danger { background: #fde7ea; border-left: 4pt solid #b00020; padding: 3pt 6pt; color: #7a0014; font-weight: bold }
.info { background: #eef4fb; border-left: 4pt solid #4a78b0; padding: 3pt 6pt }
.note { font-size: 8.5pt; color: #555 }
li.warn, li.danger, li.info { margin: 2pt 0; list-style: none }
.bar { vertical-align: middle; margin-right: 4pt }
figure { margin: 4pt 0 }
.block, table, figure, pre, .chain-broken { break-inside: avoid; page-break-inside: avoid }
h2, h3 { break-after: avoid; page-break-after: avoid }
section.agreement { break-before: page; page-break-before: always }
@media print {
  body { max-width: none }
  .chain-broken, .warn, .danger, .info, th { -webkit-print-color-adjust: exact; print-color-adjust: exact }
}
"#;

/// Escapes text for XML content and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters other than tab and newline are not XML.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn class(style: Style) -> &'static str {
    match style {
        Style::Plain => "",
        Style::Ok => "ok",
        Style::Warn => "warn",
        Style::Danger => "danger",
        Style::Info => "info",
        Style::Note => "note",
    }
}

fn class_attr(style: Style) -> String {
    match class(style) {
        "" => String::new(),
        c => format!(" class=\"{c}\""),
    }
}

pub(super) fn render(report: &Report) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n");
    let _ = writeln!(h, "<html xmlns=\"{XHTML_NS}\" lang=\"id\" xml:lang=\"id\">");
    h.push_str("<head>\n<meta charset=\"utf-8\"/>\n");
    let _ = writeln!(
        h,
        "<title>{} {} s.d. {}</title>",
        esc(&report.title),
        esc(&report.from),
        esc(&report.to)
    );
    let _ = writeln!(h, "<style>{CSS}</style>\n</head>\n<body>");

    let mut in_section = false;
    let mut in_block = false;
    for block in doc::blocks(report) {
        match block {
            Block::ChainAlert(msg) => {
                let _ = writeln!(
                    h,
                    "<div class=\"chain-broken\" role=\"alert\">{}</div>",
                    esc(&msg)
                );
            }
            Block::Title { title, meta } => {
                let _ = writeln!(h, "<header>\n<h1>{}</h1>", esc(&title));
                for (k, v) in meta {
                    let _ = writeln!(
                        h,
                        "<p class=\"meta\"><strong>{}:</strong> {}</p>",
                        esc(&k),
                        esc(&v)
                    );
                }
                h.push_str("</header>\n");
            }
            Block::Section {
                id,
                heading,
                page_break,
            } => {
                let cls = if page_break {
                    " class=\"agreement\""
                } else {
                    ""
                };
                let _ = writeln!(
                    h,
                    "<section id=\"{}\"{cls}>\n<h2>{}</h2>",
                    esc(&id),
                    esc(&heading)
                );
                in_section = true;
            }
            Block::EndSection => {
                if in_block {
                    h.push_str("</div>\n");
                    in_block = false;
                }
                if in_section {
                    h.push_str("</section>\n");
                    in_section = false;
                }
            }
            Block::Sub(title) => {
                if in_block {
                    h.push_str("</div>\n");
                }
                let _ = writeln!(h, "<div class=\"block\">\n<h3>{}</h3>", esc(&title));
                in_block = true;
            }
            Block::Para(style, text) => {
                let _ = writeln!(h, "<p{}>{}</p>", class_attr(style), esc(&text));
            }
            Block::Code(sql) => {
                let _ = writeln!(h, "<pre><code>{}</code></pre>", esc(&sql));
            }
            Block::Table { head, rows } => table(&mut h, &head, &rows),
            Block::List(items) => {
                h.push_str("<ul>\n");
                for (style, text) in items {
                    let _ = writeln!(h, "<li{}>{}</li>", class_attr(style), esc(&text));
                }
                h.push_str("</ul>\n");
            }
            Block::Weekly(w) => weekly_chart(&mut h, w),
        }
    }
    h.push_str("</body>\n</html>\n");
    h
}

fn table(h: &mut String, head: &[String], rows: &[Vec<Cell>]) {
    h.push_str("<table>\n<thead><tr>");
    for c in head {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        h.push_str("<tr>");
        for cell in row {
            match cell {
                Cell::Text(s) => {
                    let _ = write!(h, "<td>{}</td>", esc(s));
                }
                Cell::Num(s) => {
                    let _ = write!(h, "<td class=\"n\">{}</td>", esc(s));
                }
                Cell::Code(s) => {
                    let _ = write!(h, "<td><code>{}</code></td>", esc(s));
                }
                Cell::Bar(p) => {
                    let _ = write!(h, "<td class=\"n\">{}{}</td>", bar(*p), esc(&text::pct(*p)));
                }
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody>\n</table>\n");
}

/// A horizontal percentage bar as inline SVG (prints without background
/// colours being enabled).
fn bar(p: Option<f64>) -> String {
    let Some(p) = p else {
        return String::new();
    };
    let (w, hgt) = (100.0, 9.0);
    let fill = if p > 100.0 {
        "#b00020"
    } else if p >= super::BUDGET_HIGH_PERCENT {
        "#e0a800"
    } else {
        "#2e7d32"
    };
    format!(
        "<svg xmlns=\"{SVG_NS}\" class=\"bar\" width=\"{w}\" height=\"{hgt}\" viewBox=\"0 0 {w} {hgt}\" role=\"img\" aria-label=\"{}\"><rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{hgt}\" fill=\"#eceff1\" stroke=\"#90a4ae\" stroke-width=\"0.5\"/><rect x=\"0\" y=\"0\" width=\"{:.1}\" height=\"{hgt}\" fill=\"{fill}\"/></svg>",
        esc(&text::pct(Some(p))),
        p.clamp(0.0, 100.0) / 100.0 * w
    )
}

/// Colours and dash patterns of the chart's series (distinguishable when
/// printed in grey too).
const COLOURS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22",
];
const DASHES: &[&str] = &["", "6 3", "2 2", "8 3 2 3"];

/// A step of 1, 2 or 5 times a power of ten giving about five ticks.
fn nice_step(max: u64) -> u64 {
    let rough = (max as f64 / 5.0).max(1.0);
    let pow = 10f64.powi(rough.log10().floor() as i32);
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * pow)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * pow);
    step.max(1.0) as u64
}

/// Requests per ISO week per agreement as a line chart with axes, week
/// labels and a legend.
fn weekly_chart(h: &mut String, w: &Weekly) {
    if w.series.is_empty() || w.weeks.is_empty() {
        h.push_str("<p>Tidak ada permintaan dalam periode ini.</p>\n");
        return;
    }
    let (left, right, top) = (46.0, 12.0, 14.0);
    let width = 680.0;
    let plot_h = 200.0;
    let label_h = 62.0;
    let per_row = 4;
    let legend_rows = w.series.len().div_ceil(per_row);
    let legend_top = top + plot_h + label_h;
    let height = legend_top + legend_rows as f64 * 16.0 + 6.0;
    let plot_w = width - left - right;
    let max = w
        .series
        .iter()
        .flat_map(|s| s.counts.iter().copied())
        .max()
        .unwrap_or(0);
    let step = nice_step(max);
    let y_max = (max.div_ceil(step).max(1) * step) as f64;
    let n = w.weeks.len() as f64;
    let x = |i: usize| left + (i as f64 + 0.5) * plot_w / n;
    let y = |v: u64| top + plot_h - v as f64 / y_max * plot_h;

    let _ = writeln!(
        h,
        "<figure>\n<svg xmlns=\"{SVG_NS}\" width=\"100%\" viewBox=\"0 0 {width} {height:.0}\" role=\"img\" aria-label=\"Permintaan per minggu ISO per perjanjian\" font-family=\"DejaVu Sans, Arial, sans-serif\" font-size=\"9\">"
    );
    h.push_str("<title>Permintaan per minggu ISO per perjanjian</title>\n");
    // Grid and y axis.
    let mut v = 0;
    while v as f64 <= y_max {
        let yy = y(v);
        let _ = writeln!(
            h,
            "<line x1=\"{left}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#dde1e4\" stroke-width=\"0.6\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + plot_w,
            left - 4.0,
            yy + 3.0,
            esc(&text::int(v))
        );
        v += step;
    }
    let _ = writeln!(
        h,
        "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{:.1}\" stroke=\"#333\" stroke-width=\"0.8\"/><line x1=\"{left}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#333\" stroke-width=\"0.8\"/>",
        top + plot_h,
        top + plot_h,
        left + plot_w,
        top + plot_h
    );
    let _ = writeln!(
        h,
        "<text x=\"10\" y=\"{:.1}\" transform=\"rotate(-90 10 {:.1})\" text-anchor=\"middle\" font-size=\"10\">Permintaan</text>",
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    // Week labels (every week up to 30 weeks, else every other week).
    let every = if w.weeks.len() > 30 { 2 } else { 1 };
    for (i, week) in w.weeks.iter().enumerate() {
        let xx = x(i);
        let _ = write!(
            h,
            "<line x1=\"{xx:.1}\" y1=\"{:.1}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"#333\" stroke-width=\"0.6\"/>",
            top + plot_h,
            top + plot_h + 3.0
        );
        if i.is_multiple_of(every) {
            let ly = top + plot_h + 8.0;
            let _ = write!(
                h,
                "<text x=\"{xx:.1}\" y=\"{ly:.1}\" transform=\"rotate(-60 {xx:.1} {ly:.1})\" text-anchor=\"end\" font-size=\"8\">{}</text>",
                esc(week)
            );
        }
        h.push('\n');
    }
    let _ = writeln!(
        h,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">Minggu ISO (tanggal WIB)</text>",
        left + plot_w / 2.0,
        legend_top - 6.0
    );
    // Series.
    for (k, s) in w.series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let dash = DASHES[(k / COLOURS.len() + k) % DASHES.len()];
        let dash_attr = if dash.is_empty() {
            String::new()
        } else {
            format!(" stroke-dasharray=\"{dash}\"")
        };
        let points: Vec<String> = s
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:.1},{:.1}", x(i), y(*c)))
            .collect();
        let _ = writeln!(
            h,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.6\"{dash_attr} points=\"{}\"/>",
            points.join(" ")
        );
        for (i, c) in s.counts.iter().enumerate() {
            let _ = write!(
                h,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.8\" fill=\"{colour}\"><title>{}</title></circle>",
                x(i),
                y(*c),
                esc(&format!(
                    "{} {}: {}",
                    text::series_label(&s.agreement),
                    w.weeks[i],
                    c
                ))
            );
        }
        h.push('\n');
        // Legend entry.
        let lx = left + (k % per_row) as f64 * (plot_w / per_row as f64);
        let ly = legend_top + 4.0 + (k / per_row) as f64 * 16.0;
        let _ = writeln!(
            h,
            "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"2\"{dash_attr}/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            lx + 18.0,
            lx + 22.0,
            ly + 3.0,
            esc(&text::series_label(&s.agreement))
        );
    }
    h.push_str("</svg>\n</figure>\n");
}
