//! Saved queries: named, parameterised SQL kept in `queries/*.sql`.
//!
//! A saved query is ordinary gate SQL with typed parameters. The caller
//! renders it with [`SavedQuery::render`] and runs the result through
//! [`crate::release`] like any ad-hoc SQL: there is no back door,
//! and every check of the gate and the agreement applies.
//!
//! # File format
//!
//! One query per file; the file name (without `.sql`) must equal the
//! query's `name`. The file starts with a header: the leading lines that
//! begin with `--` (blank lines may be mixed in). With the `--` and one
//! following space removed, the header is TOML:
//!
//! ```sql
//! -- name = "usia_sekolah"
//! -- title = "Anak usia sekolah per kelurahan"
//! -- description = "..."
//! -- elements = ["tanggal_lahir", "jenis_kelamin", "kode_kel"]
//! -- [params.tahun_ajaran]
//! -- type = "integer"
//! -- default = 2026
//! -- min = 2020
//! -- max = 2035
//! -- description = "Tahun ajaran; umur dihitung pada 1 Juli tahun ini"
//! -- [params.kecamatan]
//! -- type = "region"
//! -- level = "kecamatan"
//! -- optional = true
//! SELECT ... umur_pada(tanggal_lahir, DATE '{{tahun_ajaran}}-07-01') ...
//! WHERE ... {{#kecamatan}} AND kode_kec = {{kecamatan}} {{/kecamatan}}
//! ```
//!
//! Top-level keys: `name`, `title`, `description` (optional), `elements`
//! (the catalog columns the query reads; each must exist). Each
//! `[params.NAME]` table takes `type`, `description`, `default`, `optional`
//! and, by type:
//!
//! | `type` | keys | accepted JSON value | rendered as |
//! |---|---|---|---|
//! | `integer` | `min`, `max` | a JSON integer (no string, no float) | digits, `(-5)` if negative |
//! | `string` | `allowed = [..]` or `code_list = "NAME"` | a JSON string in the list (code lists also accept the SIAK code or the label in any case) | `'LABEL'`, quotes doubled |
//! | `region` | `level` = `provinsi`, `kabkota`, `kecamatan` or `desa` | a Kemendagri code of that level in [`catalog::regions`] | `'61.71.01'` |
//! | `date` | `min`, `max`, `first_of_month` | a JSON string `YYYY-MM-DD` (TOML defaults may be dates or strings) | `DATE 'YYYY-MM-DD'` |
//!
//! Values are always validated first and then rendered as literals this
//! module produces; user text never reaches the SQL unvalidated.
//!
//! # Template
//!
//! - `{{name}}` is replaced by the parameter's literal. It may not appear
//!   inside a quoted string or a comment, except an `integer` parameter with
//!   `min >= 0` that is not optional (it renders as bare digits), as in
//!   `DATE '{{tahun_ajaran}}-07-01'`. Do not quote placeholders yourself.
//! - `{{#name}} ... {{/name}}` is kept only when the parameter has a value
//!   (given or default); `{{^name}} ... {{/name}}` only when it has none.
//!   An optional parameter without a default may be used only inside its
//!   own `{{#name}}` section. Sections must open and close outside quotes.
//! - Every declared parameter must be used, and every used one declared.
//!
//! Header and template problems are reported at load time as
//! [`SavedError::File`] with the file and line.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::catalog::{self, RegionLevel};

/// Errors loading or rendering saved queries. Every rendering error names
/// the parameter, the value given and what is accepted.
#[derive(thiserror::Error, Debug)]
pub enum SavedError {
    /// The queries directory or a query file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The queries directory or the query file.
        path: PathBuf,
        /// The error from reading it.
        #[source]
        source: std::io::Error,
    },
    /// A bad header or template in a query file.
    #[error("{}:{line}: {message}", path.display())]
    File {
        /// The query file.
        path: PathBuf,
        /// Line in the file (1-based) where the problem is.
        line: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// No saved query has this name.
    #[error("no saved query named '{name}'; available: {}", available.join(", "))]
    UnknownQuery {
        /// The name asked for.
        name: String,
        /// Names of the loaded queries, sorted.
        available: Vec<String>,
    },
    /// A parameter was given that the query does not declare.
    #[error("query '{query}' has no parameter '{param}'; accepted parameters: {}", if accepted.is_empty() { "none".to_string() } else { accepted.join(", ") })]
    UnknownParameter {
        /// The saved query's name.
        query: String,
        /// The parameter name given.
        param: String,
        /// Names of the parameters the query declares.
        accepted: Vec<String>,
    },
    /// A value of the wrong JSON type or form for the parameter's type.
    #[error("parameter '{param}': {value} is not {expected}")]
    WrongType {
        /// The parameter's name.
        param: String,
        /// The value given, as JSON text (`"61.71"`, `2040`).
        value: String,
        /// The JSON form the parameter's type takes ("a string", ...).
        expected: String,
    },
    /// A number or date outside the parameter's `min`/`max`.
    #[error("parameter '{param}': {value} is out of range; accepted: {accepted}")]
    OutOfRange {
        /// The parameter's name.
        param: String,
        /// The value given, as JSON text (`"61.71"`, `2040`).
        value: String,
        /// The accepted range in words ("2020 to 2035", "0 or more").
        accepted: String,
    },
    /// A string outside the allowed values or code list, or a date that is not
    /// the first of a month when `first_of_month` is set.
    #[error("parameter '{param}': {value} is not allowed; accepted: {accepted}")]
    NotAllowed {
        /// The parameter's name.
        param: String,
        /// The value given, as JSON text (`"61.71"`, `2040`).
        value: String,
        /// The accepted values, quoted and comma-separated, or the
        /// first-of-month rule.
        accepted: String,
    },
    /// A region parameter that is not a Kemendagri code.
    #[error("parameter '{param}': {value} is not a known region: {message}")]
    UnknownRegion {
        /// The parameter's name.
        param: String,
        /// The value given, as JSON text (`"61.71"`, `2040`).
        value: String,
        /// Why the code was rejected (not a code, or not in the list).
        message: String,
    },
    /// A region code of another level than the parameter's `level`.
    #[error(
        "parameter '{param}': {value} is a {actual} code; a {expected} code is required (e.g. {example})"
    )]
    WrongRegionLevel {
        /// The parameter's name.
        param: String,
        /// The value given, as JSON text (`"61.71"`, `2040`).
        value: String,
        /// Label of the level the given code is of.
        actual: String,
        /// Label of the parameter's `level`.
        expected: String,
        /// A code of the parameter's level, as a SQL literal (`'61.71.01'`).
        example: String,
    },
    /// A required parameter (neither optional nor defaulted) was not given.
    #[error("parameter '{param}' is required: {description}")]
    Missing {
        /// The parameter's name.
        param: String,
        /// The parameter's description from the header, or "no default
        /// value" when it has none.
        description: String,
    },
}

impl SavedError {
    /// The parameter a rendering error is about.
    pub fn param(&self) -> Option<&str> {
        match self {
            SavedError::UnknownParameter { param, .. }
            | SavedError::WrongType { param, .. }
            | SavedError::OutOfRange { param, .. }
            | SavedError::NotAllowed { param, .. }
            | SavedError::UnknownRegion { param, .. }
            | SavedError::WrongRegionLevel { param, .. }
            | SavedError::Missing { param, .. } => Some(param),
            _ => None,
        }
    }
}

/// The type of a parameter and its constraints.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParamKind {
    /// `integer`: a JSON integer, optionally bounded.
    Integer {
        /// Smallest accepted value (inclusive), if bounded.
        min: Option<i64>,
        /// Largest accepted value (inclusive), if bounded.
        max: Option<i64>,
    },
    /// `string`: one of a fixed list of values, or of a catalog code list.
    String {
        /// The accepted values (a code list's labels when `code_list` is set).
        allowed: Vec<String>,
        /// Name of the catalog code list the values come from, if any.
        code_list: Option<String>,
    },
    /// `region`: a Kemendagri code of one level.
    Region {
        /// The level every accepted code must have.
        level: RegionLevel,
    },
    /// `date`: a `YYYY-MM-DD` date, optionally bounded or a first of a month.
    Date {
        /// Earliest accepted date (inclusive) as `YYYY-MM-DD`, if bounded.
        min: Option<String>,
        /// Latest accepted date (inclusive) as `YYYY-MM-DD`, if bounded.
        max: Option<String>,
        /// Only the first day of a month is accepted.
        first_of_month: bool,
    },
}

/// One parameter of a saved query.
#[derive(Debug, Clone, Serialize)]
pub struct ParamSpec {
    /// Parameter name, as used in `{{name}}` placeholders.
    pub name: String,
    /// Type and constraints (serialised flattened, with a `type` tag).
    #[serde(flatten)]
    pub kind: ParamKind,
    /// Value used when the caller gives none.
    pub default: Option<Value>,
    /// Whether the parameter may be left without a value.
    pub optional: bool,
    /// Human-readable description from the header.
    pub description: String,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Var(String),
    Section {
        name: String,
        inverted: bool,
        body: Vec<Node>,
    },
}

/// One saved query.
#[derive(Debug, Clone, Serialize)]
pub struct SavedQuery {
    /// Query name; equals the file name without `.sql`.
    pub name: String,
    /// Short title.
    pub title: String,
    /// Longer description (empty when the header has none).
    pub description: String,
    /// Catalog columns the query reads.
    pub elements: Vec<String>,
    /// Declared parameters, in header order.
    pub params: Vec<ParamSpec>,
    #[serde(skip)]
    sql_template: String,
    #[serde(skip)]
    nodes: Vec<Node>,
}

/// All saved queries of a directory, by name.
#[derive(Debug, Clone, Default)]
pub struct SavedQueries {
    queries: BTreeMap<String, SavedQuery>,
}

impl SavedQueries {
    /// Loads every `*.sql` file of `dir`.
    pub fn load_dir(dir: &Path) -> Result<SavedQueries, SavedError> {
        let io = |source| SavedError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "sql") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let mut queries = BTreeMap::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| SavedError::Io {
                path: path.clone(),
                source,
            })?;
            let q = SavedQuery::parse(&path, &text)?;
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if q.name != stem {
                return Err(file_err(
                    &path,
                    1,
                    format!(
                        "name = \"{}\" does not match the file name; rename the file to {}.sql or the query to \"{stem}\"",
                        q.name, q.name
                    ),
                ));
            }
            queries.insert(q.name.clone(), q);
        }
        Ok(SavedQueries { queries })
    }

    /// The query called `name`, if loaded.
    pub fn get(&self, name: &str) -> Option<&SavedQuery> {
        self.queries.get(name)
    }

    /// Like [`get`](Self::get), with an error listing the available names.
    pub fn require(&self, name: &str) -> Result<&SavedQuery, SavedError> {
        self.get(name).ok_or_else(|| SavedError::UnknownQuery {
            name: name.to_string(),
            available: self.queries.keys().cloned().collect(),
        })
    }

    /// The queries, by name.
    pub fn iter(&self) -> impl Iterator<Item = &SavedQuery> {
        self.queries.values()
    }

    /// Number of loaded queries.
    pub fn len(&self) -> usize {
        self.queries.len()
    }

    /// True when the directory held no queries.
    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }
}

fn file_err(path: &Path, line: usize, message: impl Into<String>) -> SavedError {
    SavedError::File {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    title: String,
    #[serde(default)]
    description: String,
    elements: Vec<String>,
    #[serde(default)]
    params: BTreeMap<String, RawParam>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    description: String,
    default: Option<toml::Value>,
    #[serde(default)]
    optional: bool,
    min: Option<toml::Value>,
    max: Option<toml::Value>,
    allowed: Option<Vec<String>>,
    code_list: Option<String>,
    level: Option<String>,
    first_of_month: Option<bool>,
}

fn is_ident(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

fn toml_to_json(v: &toml::Value) -> Option<Value> {
    Some(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        _ => return None,
    })
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    if s.len() != 10 {
        return None;
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

fn parse_level(s: &str) -> Option<RegionLevel> {
    Some(match s {
        "provinsi" => RegionLevel::Provinsi,
        "kabkota" | "kab_kota" => RegionLevel::KabKota,
        "kecamatan" => RegionLevel::Kecamatan,
        "desa" | "kelurahan" | "desa_kelurahan" => RegionLevel::DesaKelurahan,
        _ => return None,
    })
}

fn level_example(level: RegionLevel) -> &'static str {
    match level {
        RegionLevel::Provinsi => "'61'",
        RegionLevel::KabKota => "'61.71'",
        RegionLevel::Kecamatan => "'61.71.01'",
        RegionLevel::DesaKelurahan => "'61.71.01.1002'",
    }
}

/// A SQL string literal: single-quoted, quotes doubled.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn list(v: &[String]) -> String {
    v.iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ParamSpec {
    /// Validates a value and renders it as a SQL literal.
    fn literal(&self, v: &Value) -> Result<String, SavedError> {
        let param = || self.name.clone();
        let shown = || v.to_string();
        let wrong = |expected: &str| SavedError::WrongType {
            param: param(),
            value: shown(),
            expected: expected.to_string(),
        };
        match &self.kind {
            ParamKind::Integer { min, max } => {
                let i = v.as_i64().ok_or_else(|| {
                    wrong("an integer (a JSON number without fraction, not a string)")
                })?;
                if min.is_some_and(|m| i < m) || max.is_some_and(|m| i > m) {
                    let accepted = match (min, max) {
                        (Some(a), Some(b)) => format!("{a} to {b}"),
                        (Some(a), None) => format!("{a} or more"),
                        (None, Some(b)) => format!("{b} or less"),
                        (None, None) => unreachable!(),
                    };
                    return Err(SavedError::OutOfRange {
                        param: param(),
                        value: shown(),
                        accepted,
                    });
                }
                Ok(if i < 0 {
                    format!("({i})")
                } else {
                    i.to_string()
                })
            }
            ParamKind::String { allowed, code_list } => {
                let s = v.as_str().ok_or_else(|| wrong("a string"))?;
                let canonical = match code_list.as_deref().and_then(catalog::code_list) {
                    Some(cl) => cl.resolve(s).map(str::to_string),
                    None => allowed.iter().find(|a| *a == s).cloned(),
                };
                let canonical = canonical.ok_or_else(|| SavedError::NotAllowed {
                    param: param(),
                    value: shown(),
                    accepted: list(allowed),
                })?;
                Ok(quote(&canonical))
            }
            ParamKind::Region { level } => {
                let s = v
                    .as_str()
                    .ok_or_else(|| wrong("a region code string such as \"61.71.01\""))?;
                let Some(actual) = RegionLevel::of_code(s) else {
                    return Err(SavedError::UnknownRegion {
                        param: param(),
                        value: shown(),
                        message: format!(
                            "not a Kemendagri code; use a {} code such as {}",
                            level.label(),
                            level_example(*level)
                        ),
                    });
                };
                if let Err(e) = catalog::regions().require(s) {
                    return Err(SavedError::UnknownRegion {
                        param: param(),
                        value: shown(),
                        message: e.to_string(),
                    });
                }
                if actual != *level {
                    return Err(SavedError::WrongRegionLevel {
                        param: param(),
                        value: shown(),
                        actual: actual.label().to_string(),
                        expected: level.label().to_string(),
                        example: level_example(*level).to_string(),
                    });
                }
                // Re-rendered from the catalog's own code, which is digits and dots.
                let r = catalog::regions().get(s).expect("checked above");
                Ok(quote(&r.kode))
            }
            ParamKind::Date {
                min,
                max,
                first_of_month,
            } => {
                let d = v
                    .as_str()
                    .and_then(parse_date)
                    .ok_or_else(|| wrong("a date string \"YYYY-MM-DD\""))?;
                if *first_of_month && d.day() != 1 {
                    return Err(SavedError::NotAllowed {
                        param: param(),
                        value: shown(),
                        accepted: "the first day of a month, e.g. \"2026-07-01\"".into(),
                    });
                }
                let lo = min.as_deref().and_then(parse_date);
                let hi = max.as_deref().and_then(parse_date);
                if lo.is_some_and(|m| d < m) || hi.is_some_and(|m| d > m) {
                    return Err(SavedError::OutOfRange {
                        param: param(),
                        value: shown(),
                        accepted: format!(
                            "{} to {}",
                            min.as_deref().unwrap_or("any date"),
                            max.as_deref().unwrap_or("any date")
                        ),
                    });
                }
                Ok(format!("DATE '{}'", d.format("%Y-%m-%d")))
            }
        }
    }

    /// May this parameter appear inside a quoted string? Only values that
    /// always render as bare digits.
    fn digits_only(&self) -> bool {
        matches!(self.kind, ParamKind::Integer { min: Some(m), .. } if m >= 0) && !self.optional
    }
}

/// Lexical state of the SQL text around template tags.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lex {
    Code,
    Quoted,
    LineComment,
    BlockComment,
}

fn advance(mut state: Lex, text: &str) -> Lex {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let next = b.get(i + 1).copied();
        match state {
            Lex::Code => match (b[i], next) {
                (b'\'', _) => state = Lex::Quoted,
                (b'-', Some(b'-')) => {
                    state = Lex::LineComment;
                    i += 1;
                }
                (b'/', Some(b'*')) => {
                    state = Lex::BlockComment;
                    i += 1;
                }
                _ => {}
            },
            // A doubled quote closes and reopens: same result.
            Lex::Quoted if b[i] == b'\'' => state = Lex::Code,
            Lex::LineComment if b[i] == b'\n' => state = Lex::Code,
            Lex::BlockComment if b[i] == b'*' && next == Some(b'/') => {
                state = Lex::Code;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    state
}

struct TemplateParser<'a> {
    path: &'a Path,
    body: &'a str,
    first_line: usize,
    params: &'a HashMap<String, ParamSpec>,
    used: Vec<String>,
}

impl TemplateParser<'_> {
    fn line(&self, offset: usize) -> usize {
        self.first_line + self.body[..offset].matches('\n').count()
    }

    fn err(&self, offset: usize, msg: impl Into<String>) -> SavedError {
        file_err(self.path, self.line(offset), msg)
    }

    fn parse(&mut self) -> Result<Vec<Node>, SavedError> {
        // Stack of (section name, inverted, start offset, nodes so far).
        let mut stack: Vec<(String, bool, usize, Vec<Node>)> = Vec::new();
        let mut nodes = Vec::new();
        let mut state = Lex::Code;
        let mut pos = 0;
        let body = self.body;
        while let Some(rel) = body[pos..].find("{{") {
            let start = pos + rel;
            let text = &body[pos..start];
            state = advance(state, text);
            if !text.is_empty() {
                nodes.push(Node::Text(text.to_string()));
            }
            let Some(len) = body[start + 2..].find("}}") else {
                return Err(self.err(start, "'{{' without a closing '}}'"));
            };
            let tag = body[start + 2..start + 2 + len].trim();
            pos = start + 2 + len + 2;
            let (sigil, name) = match tag.chars().next() {
                Some(c @ ('#' | '^' | '/')) => (Some(c), tag[1..].trim()),
                _ => (None, tag),
            };
            if !is_ident(name) {
                return Err(self.err(
                    start,
                    format!(
                        "bad template tag '{{{{{tag}}}}}'; use {{{{name}}}}, {{{{#name}}}}, {{{{^name}}}} or {{{{/name}}}}"
                    ),
                ));
            }
            let Some(spec) = self.params.get(name) else {
                return Err(self.err(
                    start,
                    format!("template uses '{name}', which is not declared as [params.{name}]"),
                ));
            };
            if !self.used.iter().any(|u| u == name) {
                self.used.push(name.to_string());
            }
            match state {
                Lex::Code => {}
                Lex::Quoted if sigil.is_none() && spec.digits_only() => {}
                Lex::Quoted => {
                    return Err(self.err(
                        start,
                        format!(
                            "'{{{{{tag}}}}}' is inside a quoted string; placeholders render as complete SQL literals (only a required integer parameter with min >= 0 may appear inside quotes)"
                        ),
                    ));
                }
                Lex::LineComment | Lex::BlockComment => {
                    return Err(self.err(start, format!("'{{{{{tag}}}}}' is inside a SQL comment")));
                }
            }
            match sigil {
                None => {
                    let guarded = stack.iter().any(|(n, inv, _, _)| n == name && !inv);
                    if spec.optional && spec.default.is_none() && !guarded {
                        return Err(self.err(
                            start,
                            format!(
                                "optional parameter '{name}' has no default; use it only inside {{{{#{name}}}}} ... {{{{/{name}}}}}"
                            ),
                        ));
                    }
                    nodes.push(Node::Var(name.to_string()));
                }
                Some(c @ ('#' | '^')) => {
                    stack.push((
                        name.to_string(),
                        c == '^',
                        start,
                        std::mem::take(&mut nodes),
                    ));
                }
                Some(_) => {
                    let Some((open, inverted, _, outer)) = stack.pop() else {
                        return Err(self.err(start, format!("'{{{{/{name}}}}}' closes no section")));
                    };
                    if open != name {
                        return Err(self.err(
                            start,
                            format!(
                                "'{{{{/{name}}}}}' closes section '{open}'; close '{open}' first"
                            ),
                        ));
                    }
                    let body = std::mem::replace(&mut nodes, outer);
                    nodes.push(Node::Section {
                        name: open,
                        inverted,
                        body,
                    });
                }
            }
        }
        if let Some((name, _, start, _)) = stack.pop() {
            return Err(self.err(
                start,
                format!("section '{name}' is never closed with {{{{/{name}}}}}"),
            ));
        }
        let rest = &body[pos..];
        if !rest.is_empty() {
            nodes.push(Node::Text(rest.to_string()));
        }
        Ok(nodes)
    }
}

impl SavedQuery {
    /// Parses one query file's text; `path` is used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<SavedQuery, SavedError> {
        let lines: Vec<&str> = text.split('\n').collect();
        let mut header = String::new();
        let mut header_lines = 0;
        for l in &lines {
            let t = l.trim();
            if let Some(rest) = t.strip_prefix("--") {
                header.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            } else if !t.is_empty() {
                break;
            }
            header.push('\n');
            header_lines += 1;
        }
        if header.trim().is_empty() {
            return Err(file_err(
                path,
                1,
                "missing header: the file must start with '-- name = \"...\"' and the other header lines",
            ));
        }
        // Line (1-based) of the first header line starting with `prefix`.
        let line_of = |prefix: &str| -> usize {
            header
                .lines()
                .position(|l| l.trim_start().starts_with(prefix))
                .map_or(1, |i| i + 1)
        };
        let raw: RawHeader = toml::from_str(&header).map_err(|e| {
            let line = e.span().map_or(1, |s| {
                header[..s.start.min(header.len())].matches('\n').count() + 1
            });
            file_err(path, line, format!("header: {}", e.message().trim()))
        })?;
        if !is_ident(&raw.name) {
            return Err(file_err(
                path,
                line_of("name"),
                format!(
                    "name \"{}\" must be lower-case letters, digits and '_'",
                    raw.name
                ),
            ));
        }
        for el in &raw.elements {
            if catalog::column(el).is_none() {
                return Err(file_err(
                    path,
                    line_of("elements"),
                    format!("element \"{el}\" is not a column of penduduk"),
                ));
            }
        }

        let mut params = Vec::new();
        for (name, rp) in raw.params {
            let line = line_of(&format!("[params.{name}]"));
            let err = |m: String| file_err(path, line, format!("[params.{name}]: {m}"));
            if !is_ident(&name) {
                return Err(err(
                    "parameter names must be lower-case letters, digits and '_'".into(),
                ));
            }
            let unused = |keys: &[(&str, bool)]| -> Result<(), SavedError> {
                match keys.iter().find(|(_, set)| *set) {
                    Some((k, _)) => {
                        Err(err(format!("'{k}' does not apply to type \"{}\"", rp.kind)))
                    }
                    None => Ok(()),
                }
            };
            let kind = match rp.kind.as_str() {
                "integer" => {
                    unused(&[
                        ("allowed", rp.allowed.is_some()),
                        ("code_list", rp.code_list.is_some()),
                        ("level", rp.level.is_some()),
                        ("first_of_month", rp.first_of_month.is_some()),
                    ])?;
                    let int = |v: &Option<toml::Value>, key: &str| match v {
                        None => Ok(None),
                        Some(toml::Value::Integer(i)) => Ok(Some(*i)),
                        Some(_) => Err(err(format!("'{key}' must be an integer"))),
                    };
                    ParamKind::Integer {
                        min: int(&rp.min, "min")?,
                        max: int(&rp.max, "max")?,
                    }
                }
                "string" => {
                    unused(&[
                        ("min", rp.min.is_some()),
                        ("max", rp.max.is_some()),
                        ("level", rp.level.is_some()),
                        ("first_of_month", rp.first_of_month.is_some()),
                    ])?;
                    match (&rp.allowed, &rp.code_list) {
                        (Some(a), None) if !a.is_empty() => ParamKind::String {
                            allowed: a.clone(),
                            code_list: None,
                        },
                        (None, Some(cl)) => {
                            let Some(list) = catalog::code_list(cl) else {
                                return Err(err(format!(
                                    "code_list \"{cl}\" is not a catalog code list; known: {}",
                                    catalog::code_lists()
                                        .keys()
                                        .copied()
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )));
                            };
                            ParamKind::String {
                                allowed: list.labels().map(str::to_string).collect(),
                                code_list: Some(cl.clone()),
                            }
                        }
                        _ => {
                            return Err(err(
                                "a string parameter needs exactly one of 'allowed = [...]' (non-empty) or 'code_list = \"...\"'".into(),
                            ));
                        }
                    }
                }
                "region" => {
                    unused(&[
                        ("min", rp.min.is_some()),
                        ("max", rp.max.is_some()),
                        ("allowed", rp.allowed.is_some()),
                        ("code_list", rp.code_list.is_some()),
                        ("first_of_month", rp.first_of_month.is_some()),
                    ])?;
                    let level = rp.level.as_deref().and_then(parse_level).ok_or_else(|| {
                        err("a region parameter needs level = \"provinsi\", \"kabkota\", \"kecamatan\" or \"desa\"".into())
                    })?;
                    ParamKind::Region { level }
                }
                "date" => {
                    unused(&[
                        ("allowed", rp.allowed.is_some()),
                        ("code_list", rp.code_list.is_some()),
                        ("level", rp.level.is_some()),
                    ])?;
                    let date = |v: &Option<toml::Value>, key: &str| {
                        let Some(v) = v else { return Ok(None) };
                        let s = toml_to_json(v)
                            .and_then(|j| j.as_str().map(str::to_string))
                            .filter(|s| parse_date(s).is_some());
                        s.map(Some)
                            .ok_or_else(|| err(format!("'{key}' must be a date YYYY-MM-DD")))
                    };
                    ParamKind::Date {
                        min: date(&rp.min, "min")?,
                        max: date(&rp.max, "max")?,
                        first_of_month: rp.first_of_month.unwrap_or(false),
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown type \"{other}\"; use \"integer\", \"string\", \"region\" or \"date\""
                    )));
                }
            };
            let default = match &rp.default {
                None => None,
                Some(v) => Some(toml_to_json(v).ok_or_else(|| err("unsupported default".into()))?),
            };
            let spec = ParamSpec {
                name: name.clone(),
                kind,
                default,
                optional: rp.optional,
                description: rp.description,
            };
            if let Some(d) = &spec.default {
                spec.literal(d)
                    .map_err(|e| err(format!("bad default: {e}")))?;
            }
            params.push((line, spec));
        }
        // File order, for listings.
        params.sort_by_key(|(line, _)| *line);
        let params: Vec<ParamSpec> = params.into_iter().map(|(_, p)| p).collect();

        let body_offset: usize = lines[..header_lines].iter().map(|l| l.len() + 1).sum();
        let body = text.get(body_offset..).unwrap_or("");
        if body.trim().is_empty() {
            return Err(file_err(path, header_lines + 1, "no SQL after the header"));
        }
        let by_name: HashMap<String, ParamSpec> =
            params.iter().map(|p| (p.name.clone(), p.clone())).collect();
        let mut parser = TemplateParser {
            path,
            body,
            first_line: header_lines + 1,
            params: &by_name,
            used: Vec::new(),
        };
        let nodes = parser.parse()?;
        if let Some(p) = params.iter().find(|p| !parser.used.contains(&p.name)) {
            return Err(file_err(
                path,
                line_of(&format!("[params.{}]", p.name)),
                format!("parameter '{}' is declared but not used in the SQL", p.name),
            ));
        }

        Ok(SavedQuery {
            name: raw.name,
            title: raw.title,
            description: raw.description,
            elements: raw.elements,
            params,
            sql_template: body.to_string(),
            nodes,
        })
    }

    /// The SQL template (the file without its header).
    pub fn sql_template(&self) -> &str {
        &self.sql_template
    }

    /// The declared parameter called `name`, if any.
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Validates `params` (a JSON object: parameter name to value; `null`
    /// means "not given") and renders the SQL. Parameters not given take
    /// their default; a parameter that is neither optional nor has a
    /// default must be given.
    pub fn render(&self, params: &Map<String, Value>) -> Result<String, SavedError> {
        for key in params.keys() {
            if self.param(key).is_none() {
                return Err(SavedError::UnknownParameter {
                    query: self.name.clone(),
                    param: key.clone(),
                    accepted: self.params.iter().map(|p| p.name.clone()).collect(),
                });
            }
        }
        let mut values: HashMap<&str, String> = HashMap::new();
        for p in &self.params {
            let given = params.get(&p.name).filter(|v| !v.is_null());
            match given.or(p.default.as_ref()) {
                Some(v) => {
                    values.insert(&p.name, p.literal(v)?);
                }
                None if p.optional => {}
                None => {
                    return Err(SavedError::Missing {
                        param: p.name.clone(),
                        description: if p.description.is_empty() {
                            "no default value".to_string()
                        } else {
                            p.description.clone()
                        },
                    });
                }
            }
        }
        let mut out = String::with_capacity(self.sql_template.len());
        render_nodes(&self.nodes, &values, &mut out);
        Ok(out)
    }
}

fn render_nodes(nodes: &[Node], values: &HashMap<&str, String>, out: &mut String) {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Var(name) => {
                // Load-time checks guarantee a value here: required params
                // are checked in `render`, optional ones without a default
                // are only used inside their own section.
                let v = values.get(name.as_str()).expect("checked at load");
                let _ = write!(out, "{v}");
            }
            Node::Section {
                name,
                inverted,
                body,
            } => {
                if values.contains_key(name.as_str()) != *inverted {
                    render_nodes(body, values, out);
                }
            }
        }
    }
}
