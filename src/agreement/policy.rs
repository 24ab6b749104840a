//! Policy directory: the PKS agreement files the service enforces.
//!
//! The service loads a **policy directory** holding one TOML file per
//! institution's cooperation agreement (*perjanjian kerja sama*, PKS). The
//! files are declarative and reviewed like the legal documents they stand
//! for; only the hashes of the access tokens are in them, never the tokens.
//!
//! Every `*.toml` file directly in the directory is an agreement (files are
//! read in name order; other files and subdirectories are ignored). The
//! directory loads all or nothing: [`Policy::load_dir`] checks every file and
//! reports **every** problem of **every** file at once, each as
//! `file:line: message`, and returns no policy until all of them are fixed.
//!
//! # File format
//!
//! ```toml
//! # Keys at the top, before any [table].
//! id = "disdikbud-pontianak"      # [a-z0-9-], 3 to 64 characters, unique
//!                                 # across the directory; shown in the audit log
//! institution = "Dinas Pendidikan dan Kebudayaan Kota Pontianak"
//! pks_number = "400.3/123/DISDUKCAPIL-DISDIKBUD/2026"
//! walikota_permit = "Keputusan Wali Kota Pontianak Nomor 470/45/2026"
//! valid_from = 2026-01-01         # TOML dates (strings "YYYY-MM-DD" work too);
//! valid_until = 2027-12-31        # both days inclusive
//! stage = "production"            # or "trial": trial agreements see only
//!                                 # synthetic snapshots, production ones only
//!                                 # production snapshots
//! permitted_elements = ["jenis_kelamin", "tanggal_lahir", "kode_kec", "kode_kel"]
//! minister_permission = []        # protected elements (only "penyandang_cacat")
//!                                 # the Minister has permitted (Pasal 84); the
//!                                 # gate needs them under permitted_elements too
//! region_scope = ["61.71"]        # Kemendagri code prefixes ("all" is refused)
//!
//! [limits]                        # optional; these are the defaults
//! max_cells = 100000              # cells of the complete result grid
//! max_group_dimensions = 5        # group-by dimensions per query
//! max_sql_bytes = 16384           # bytes of SQL text
//! timeout_seconds = 30            # seconds before a query is cancelled
//! requests_per_minute = 60        # per agreement, all of its tokens together
//!
//! [protection]                    # optional; default: cell_key, k = 10
//! method = "dp"                   # or "cell_key"
//! k = 10                          # threshold (under dp: on the noisy value)
//! rho = 0.01                      # zCDP per query; or epsilon = 0.5 (pure DP)
//! budget_per_period = 0.5         # dp only, required: per six-month period, in
//!                                 # the same measure as the per-query value
//! # cell_key only: ptable = "ptable.csv" (relative to this file; default:
//! # generated with D = 5, V = 2, js = 2, 256 keys)
//! # both: sparsity_max_ones = 0.25, sparsity_max_ones_twos = 0.5
//!
//! [[token]]                       # zero or more
//! id = "2026-11-28-3fa9"          # shown in the audit log, never the token
//! sha256 = "<64 lower-case hex>"  # SHA-256 of the token's UTF-8 bytes
//! ```
//!
//! `[protection]` is the gate-only agreement format's section
//! ([`crate::agreement`]) plus `budget_per_period`.
//!
//! # Validation
//!
//! Beyond TOML syntax, unknown keys and missing keys, the loader refuses
//! (following [`Agreement::new`]): elements that are not in the catalog, the
//! record key, Minister's permissions for elements that are not protected;
//! and besides: an empty element list, region codes that are not Kemendagri
//! codes, and `"all"`; `valid_until` before `valid_from` or before today (an
//! expired PKS: renew it or move the file out of the directory; a
//! `valid_from` in the future is fine, the service refuses requests until
//! then); a stage other than trial/production; a malformed or duplicate id;
//! a token hash that is not 64 lower-case hex digits; a token hash used
//! twice, in one file or in two; duplicate token ids in one file; `dp`
//! without a positive, finite `budget_per_period` at least as large as the
//! per-query rho/epsilon, and `cell_key` with one; limits below 1.
//! Permitting `penyandang_cacat` without the Minister's permission loads:
//! the gate refuses such queries (`minister_permission_required`).
//!
//! # Tokens: issuing, rotating, revoking
//!
//! Tokens are random secrets (`agt_` and 64 hex digits, 256 bits from the
//! operating system). Requests present them as `Authorization: Bearer`; the
//! service hashes the presented token and compares it with every known hash
//! in constant time ([`Policy::authenticate`]).
//!
//! `agregat agreement token ID` ([`add_token`]) appends a new `[[token]]`
//! block with the hash to the agreement file itself (written atomically, and
//! only if the file still validates) and prints the token once; the token is
//! stored nowhere. Rotation is several blocks for a while; revocation is
//! deleting the block. The running service picks both up when it reloads the
//! directory ([`Policy::dir_stamp`] tells it when a file changed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use toml::Spanned;

use crate::agreement::{Agreement, ProtectionFile, QueryLimits};
use crate::catalog::{self, ColumnClass, RegionScope};

/// Requests per minute when `[limits]` does not say.
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 60;

/// Prefix of every minted token.
pub const TOKEN_PREFIX: &str = "agt_";

/// Which snapshots an agreement may query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Synthetic snapshots only: trying the service out, new OPD.
    Trial,
    /// Production snapshots only.
    Production,
}

impl Stage {
    /// The stage as the file spells it (`trial`, `production`).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Trial => "trial",
            Stage::Production => "production",
        }
    }

    /// The stage rule: trial agreements query synthetic snapshots,
    /// production agreements production ones.
    pub fn may_query(self, synthetic_snapshot: bool) -> bool {
        match self {
            Stage::Trial => synthetic_snapshot,
            Stage::Production => !synthetic_snapshot,
        }
    }

    /// What a refusal by the stage rule suggests.
    pub fn snapshot_hint(self) -> &'static str {
        match self {
            Stage::Trial => "trial agreements may query synthetic snapshots only",
            Stage::Production => "production agreements may query production snapshots only",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[token]]` block: the hash of a token, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// Shown in the audit log.
    pub id: String,
    /// SHA-256 of the token's UTF-8 bytes (the file's 64 hex digits, decoded).
    pub sha256: [u8; 32],
}

/// One validated agreement file.
#[derive(Debug, Clone)]
pub struct Pks {
    /// The query gate's part: id, elements, scope, limits, protection.
    pub agreement: Agreement,
    /// The institution (OPD) that signed the PKS, by its full name.
    pub institution: String,
    /// The PKS's document number.
    pub pks_number: String,
    /// The Wali Kota's permit for the PKS: the decree, as cited.
    pub walikota_permit: String,
    /// First day of validity.
    pub valid_from: NaiveDate,
    /// Last day of validity.
    pub valid_until: NaiveDate,
    /// Which snapshots the agreement may query (trial: synthetic only).
    pub stage: Stage,
    /// Requests per minute for the agreement, all of its tokens together.
    pub requests_per_minute: u32,
    /// Budget per six-month period, in the per-query measure (rho or
    /// epsilon); `Some` exactly for `method = "dp"`.
    pub budget_per_period: Option<f64>,
    /// The `[[token]]` blocks: hashes of the tokens that act for it.
    pub tokens: Vec<TokenEntry>,
    /// The file it was loaded from.
    pub file: PathBuf,
}

impl Pks {
    /// The agreement's id.
    pub fn id(&self) -> &str {
        self.agreement.id()
    }
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyIssue {
    /// The agreement file with the problem.
    pub file: PathBuf,
    /// 1-based line, when the problem has one.
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for PolicyIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Everything wrong with a policy directory.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render_issues(.dir, .issues))]
pub struct PolicyErrors {
    /// The policy directory that failed to load.
    pub dir: PathBuf,
    /// Every problem of every file, sorted by file and line.
    pub issues: Vec<PolicyIssue>,
}

impl PolicyErrors {
    fn one(dir: &Path, file: &Path, line: Option<usize>, message: String) -> PolicyErrors {
        PolicyErrors {
            dir: dir.to_path_buf(),
            issues: vec![PolicyIssue {
                file: file.to_path_buf(),
                line,
                message,
            }],
        }
    }
}

fn render_issues(dir: &Path, issues: &[PolicyIssue]) -> String {
    let mut out = String::new();
    for issue in issues {
        out.push_str(&issue.to_string());
        out.push('\n');
    }
    let n = issues.len();
    out.push_str(&format!(
        "{n} problem{} in policy directory '{}'; fix {} and load again: nothing from the directory is used until every agreement file is valid",
        if n == 1 { "" } else { "s" },
        dir.display(),
        if n == 1 { "it" } else { "them" },
    ));
    out
}

/// A known token hash and whose it is.
#[derive(Debug)]
struct TokenSlot {
    sha256: [u8; 32],
    pks: Arc<Pks>,
    token_id: String,
}

/// The loaded, validated policy directory.
#[derive(Debug)]
pub struct Policy {
    dir: PathBuf,
    agreements: BTreeMap<String, Arc<Pks>>,
    tokens: Vec<TokenSlot>,
    stamp: String,
    content_sha256: String,
}

impl Policy {
    /// Loads and validates every `*.toml` file directly in `dir` (in name
    /// order; other files are ignored; a directory without agreement files
    /// is an error). `today` decides which agreements have expired.
    ///
    /// The stamp is taken before the files are read, so a file changed
    /// while loading makes the next [`Policy::dir_stamp`] differ and the
    /// directory is loaded again.
    pub fn load_dir(dir: &Path, today: NaiveDate) -> Result<Policy, PolicyErrors> {
        let stamp = Self::dir_stamp(dir).map_err(|e| {
            PolicyErrors::one(
                dir,
                dir,
                None,
                format!("cannot read the policy directory: {e}"),
            )
        })?;
        let files = toml_files(dir).map_err(|e| {
            PolicyErrors::one(
                dir,
                dir,
                None,
                format!("cannot read the policy directory: {e}"),
            )
        })?;
        if files.is_empty() {
            return Err(PolicyErrors::one(
                dir,
                dir,
                None,
                "no agreement files (*.toml) in the policy directory; add one file per PKS (see data-samples/agreements/ for examples)".into(),
            ));
        }
        let mut issues = Vec::new();
        let mut checked = Vec::new();
        let mut content = Sha256::new();
        for path in files {
            let text = match std::fs::read(&path) {
                Ok(bytes) => {
                    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                    content.update(name.unwrap_or_default().as_bytes());
                    content.update([0]);
                    content.update((bytes.len() as u64).to_le_bytes());
                    content.update(&bytes);
                    match String::from_utf8(bytes) {
                        Ok(text) => text,
                        Err(e) => {
                            issues.push(PolicyIssue {
                                file: path,
                                line: None,
                                message: format!("the file is not UTF-8 text: {e}"),
                            });
                            continue;
                        }
                    }
                }
                Err(e) => {
                    issues.push(PolicyIssue {
                        file: path,
                        line: None,
                        message: format!("cannot read the file: {e}"),
                    });
                    continue;
                }
            };
            let c = check_file(&path, &text, today);
            issues.extend(c.issues.iter().cloned());
            checked.push(c);
        }

        // Across files: unique ids, each token hash in one place only.
        let mut ids: HashMap<&str, (&Path, usize)> = HashMap::new();
        let mut hashes: HashMap<[u8; 32], (&Path, usize)> = HashMap::new();
        let mut cross = Vec::new();
        for c in &checked {
            if let Some((id, line)) = &c.id {
                if let Some((other, other_line)) = ids.get(id.as_str()) {
                    cross.push(PolicyIssue {
                        file: c.file.clone(),
                        line: Some(*line),
                        message: format!(
                            "id \"{id}\" is also the id of {}:{other_line}; each agreement file needs its own id (e.g. \"{id}-2\")",
                            other.display()
                        ),
                    });
                } else {
                    ids.insert(id, (&c.file, *line));
                }
            }
            for (hash, line) in &c.hashes {
                if let Some((other, other_line)) = hashes.get(hash) {
                    if *other != c.file.as_path() {
                        cross.push(PolicyIssue {
                            file: c.file.clone(),
                            line: Some(*line),
                            message: format!(
                                "this token hash is also in {}:{other_line}; a token belongs to one agreement: delete this block and mint a new token with `agregat agreement token ID`",
                                other.display()
                            ),
                        });
                    }
                } else {
                    hashes.insert(*hash, (&c.file, *line));
                }
            }
        }
        issues.extend(cross);
        if !issues.is_empty() {
            // Grouped by file (in name order), then by line.
            issues.sort_by(|a, b| a.file.cmp(&b.file).then(a.line.cmp(&b.line)));
            return Err(PolicyErrors {
                dir: dir.to_path_buf(),
                issues,
            });
        }

        let mut agreements = BTreeMap::new();
        let mut tokens = Vec::new();
        for c in checked {
            let pks = Arc::new(c.pks.expect("a file without issues yields an agreement"));
            for t in &pks.tokens {
                tokens.push(TokenSlot {
                    sha256: t.sha256,
                    pks: Arc::clone(&pks),
                    token_id: t.id.clone(),
                });
            }
            agreements.insert(pks.id().to_string(), pks);
        }
        Ok(Policy {
            dir: dir.to_path_buf(),
            agreements,
            tokens,
            stamp,
            content_sha256: hex::encode(content.finalize()),
        })
    }

    /// The directory the policy was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The agreement with this id, if the directory has one.
    pub fn get(&self, id: &str) -> Option<&Arc<Pks>> {
        self.agreements.get(id)
    }

    /// All agreements, in id order.
    pub fn agreements(&self) -> impl Iterator<Item = &Arc<Pks>> {
        self.agreements.values()
    }

    /// The agreement and token id of a presented token.
    ///
    /// The token's SHA-256 is compared with **every** known hash with
    /// [`subtle::ConstantTimeEq`], without an early exit and without a
    /// lookup keyed by the secret, so the time taken does not depend on
    /// which hash (if any) matched or how much of it did.
    pub fn authenticate(&self, token: &str) -> Option<(Arc<Pks>, String)> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // 0 = no match; i + 1 = slot i matched.
        let mut found = 0u64;
        for (i, slot) in self.tokens.iter().enumerate() {
            let matched = slot.sha256.ct_eq(&presented);
            found = u64::conditional_select(&found, &(i as u64 + 1), matched);
        }
        let slot = self
            .tokens
            .get(usize::try_from(found).ok()?.checked_sub(1)?)?;
        Some((Arc::clone(&slot.pks), slot.token_id.clone()))
    }

    /// Cheap change detection for hot reload: a hash of the names, sizes
    /// and modification times (and, on Unix, inode numbers and change
    /// times) of the `*.toml` files directly in `dir`. It does not look at
    /// the ptable files an agreement may refer to.
    pub fn dir_stamp(dir: &Path) -> std::io::Result<String> {
        let mut lines = Vec::new();
        for path in toml_files(dir)? {
            let meta = std::fs::metadata(&path)?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            #[cfg(unix)]
            let extra = {
                use std::os::unix::fs::MetadataExt;
                format!("{} {}.{}", meta.ino(), meta.ctime(), meta.ctime_nsec())
            };
            #[cfg(not(unix))]
            let extra = String::new();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            lines.push(format!("{name}\t{}\t{mtime}\t{extra}\n", meta.len()));
        }
        let mut h = Sha256::new();
        for l in &lines {
            h.update(l.as_bytes());
        }
        Ok(hex::encode(h.finalize()))
    }

    /// The [`Policy::dir_stamp`] taken when this policy was loaded.
    pub fn stamp(&self) -> &str {
        &self.stamp
    }

    /// SHA-256 over the names and contents of the loaded files: which
    /// version of the policy answered (for the audit log).
    pub fn content_sha256(&self) -> &str {
        &self.content_sha256
    }
}

/// `*.toml` files directly in `dir`, sorted by name (symbolic links to
/// files count; hidden files, such as the temporary files of [`add_token`],
/// do not).
fn toml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with('.') || path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Mints a random 256-bit token: `agt_` and 64 lower-case hex digits (32
/// bytes from the operating system's random number generator). Returns the
/// token and its SHA-256 in lower-case hex.
pub fn mint_token() -> (String, String) {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator failed");
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let hash = token_sha256_hex(&token);
    (token, hash)
}

/// SHA-256 of the token's UTF-8 bytes, lower-case hex: what a `[[token]]`
/// block stores.
pub fn token_sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// `agregat agreement token ID`: adds a fresh token to agreement `ID`.
///
/// Finds the file in `dir` whose `id` is `agreement_id`, appends a
/// `[[token]]` block with a new token id (`today` and four random hex
/// digits) and the token's hash, checks the whole file again (nothing is
/// written unless it validates) and replaces the file atomically (a
/// temporary file in the same directory, then a rename). Returns the token,
/// its id and the file. The token itself is written nowhere: print it once
/// and hand it to the institution. Deleting the block revokes it; the
/// running service picks up both on its next reload.
pub fn add_token(
    dir: &Path,
    agreement_id: &str,
    today: NaiveDate,
) -> Result<(String, String, PathBuf), PolicyErrors> {
    let fail = |file: &Path, message: String| PolicyErrors::one(dir, file, None, message);
    let files =
        toml_files(dir).map_err(|e| fail(dir, format!("cannot read the policy directory: {e}")))?;
    let mut found = Vec::new();
    let mut other_ids = Vec::new();
    let mut unreadable = Vec::new();
    for path in files {
        let parsed = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| toml::from_str::<toml::Table>(&text).ok().map(|t| (text, t)));
        let Some((text, table)) = parsed else {
            unreadable.push(path.display().to_string());
            continue;
        };
        match table.get("id").and_then(toml::Value::as_str) {
            Some(id) if id == agreement_id => found.push((path, text, table)),
            Some(id) => other_ids.push(id.to_string()),
            None => unreadable.push(path.display().to_string()),
        }
    }
    let (path, text, table) = match found.len() {
        1 => found.pop().expect("one file"),
        0 => {
            let mut message = format!(
                "no agreement file with id \"{agreement_id}\"; the agreements here are: {}",
                if other_ids.is_empty() {
                    "(none)".to_string()
                } else {
                    other_ids.join(", ")
                }
            );
            if !unreadable.is_empty() {
                message.push_str(&format!(
                    " (not searched, because they do not parse: {})",
                    unreadable.join(", ")
                ));
            }
            return Err(fail(dir, message));
        }
        _ => {
            let names: Vec<String> = found.iter().map(|f| f.0.display().to_string()).collect();
            return Err(fail(
                dir,
                format!(
                    "several files have id \"{agreement_id}\": {}; keep one",
                    names.join(", ")
                ),
            ));
        }
    };
    let used: BTreeSet<String> = table
        .get("token")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("id").and_then(toml::Value::as_str).map(String::from))
        .collect();
    let token_id = loop {
        let candidate = format!("{today}-{}", hex::encode(os_random::<2>()));
        if !used.contains(&candidate) {
            break candidate;
        }
    };
    let (token, hash) = mint_token();
    let mut new_text = text;
    if !new_text.is_empty() && !new_text.ends_with('\n') {
        new_text.push('\n');
    }
    new_text.push_str(&format!(
        "\n[[token]]\n# Added by `agregat agreement token` on {today}. Delete this block to revoke the token.\nid = \"{token_id}\"\nsha256 = \"{hash}\"\n"
    ));
    let checked = check_file(&path, &new_text, today);
    if !checked.issues.is_empty() {
        return Err(PolicyErrors {
            dir: dir.to_path_buf(),
            issues: checked.issues,
        });
    }
    write_atomically(&path, new_text.as_bytes())
        .map_err(|e| fail(&path, format!("cannot write the agreement file: {e}")))?;
    Ok((token, token_id, path))
}

/// `N` bytes from the operating system's random number generator.
fn os_random<const N: usize>() -> [u8; N] {
    use rand::TryRngCore;
    let mut bytes = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator failed");
    bytes
}

/// Replaces `path` by a temporary file in the same directory, renamed over
/// it once its contents are on disk. The file keeps its permissions.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(os_random::<4>())));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // Make the rename itself durable (best effort: not every platform can
    // open a directory).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `[tokens]` of a demo-token file: agreement id -> plain token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoTokensFile {
    tokens: BTreeMap<String, String>,
}

/// Reads a demo-token file such as
/// `data-samples/DEMO-TOKENS-NOT-FOR-PRODUCTION.toml`:
///
/// ```toml
/// [tokens]
/// "disdikbud-pontianak" = "agt_…"
/// ```
///
/// Plain tokens in a file are for the synthetic sample, tests and the load
/// bench only; real tokens are printed once and stored nowhere.
pub fn load_demo_tokens(path: &Path) -> Result<BTreeMap<String, String>, PolicyErrors> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(path).map_err(|e| {
        PolicyErrors::one(dir, path, None, format!("cannot read the demo tokens: {e}"))
    })?;
    let lines = Lines::new(&text);
    toml::from_str::<DemoTokensFile>(&text)
        .map(|f| f.tokens)
        .map_err(|e| {
            PolicyErrors::one(
                dir,
                path,
                e.span().map(|s| lines.line(s.start)),
                format!(
                    "{}; expected [tokens] with \"agreement-id\" = \"agt_...\" lines",
                    e.message()
                ),
            )
        })
}

/// Byte offsets of line starts, for 1-based line numbers.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Lines {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines(starts)
    }

    /// The 1-based line holding byte `offset`.
    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }
}

// ---------------------------------------------------------------------------
// One file: parsing and checks.

/// The file form; every key is optional here so that all missing keys are
/// reported together.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PksFile {
    id: Option<Spanned<String>>,
    institution: Option<Spanned<String>>,
    pks_number: Option<Spanned<String>>,
    walikota_permit: Option<Spanned<String>>,
    valid_from: Option<Spanned<toml::Value>>,
    valid_until: Option<Spanned<toml::Value>>,
    stage: Option<Spanned<String>>,
    permitted_elements: Option<Spanned<Vec<Spanned<String>>>>,
    minister_permission: Option<Spanned<Vec<Spanned<String>>>>,
    region_scope: Option<Spanned<Vec<Spanned<String>>>>,
    limits: Option<LimitsSection>,
    protection: Option<Spanned<ProtectionSection>>,
    #[serde(default)]
    token: Vec<TokenSection>,
}

/// Keys of the top level, for the hint when one ends up inside a table.
const TOP_LEVEL_KEYS: &[&str] = &[
    "id",
    "institution",
    "pks_number",
    "walikota_permit",
    "valid_from",
    "valid_until",
    "stage",
    "permitted_elements",
    "minister_permission",
    "region_scope",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    max_cells: Option<Spanned<u64>>,
    max_group_dimensions: Option<Spanned<u64>>,
    max_sql_bytes: Option<Spanned<u64>>,
    timeout_seconds: Option<Spanned<u64>>,
    requests_per_minute: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectionSection {
    method: Option<Spanned<String>>,
    k: Option<Spanned<u64>>,
    ptable: Option<Spanned<PathBuf>>,
    rho: Option<Spanned<f64>>,
    epsilon: Option<Spanned<f64>>,
    sparsity_max_ones: Option<Spanned<f64>>,
    sparsity_max_ones_twos: Option<Spanned<f64>>,
    budget_per_period: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSection {
    id: Spanned<String>,
    sha256: Spanned<String>,
}

/// What checking one file found.
struct FileCheck {
    file: PathBuf,
    /// The id and its line, when there is one (for the duplicate check).
    id: Option<(String, usize)>,
    /// Well-formed token hashes and their lines (for the duplicate check).
    hashes: Vec<([u8; 32], usize)>,
    issues: Vec<PolicyIssue>,
    /// Set exactly when `issues` is empty.
    pks: Option<Pks>,
}

impl FileCheck {
    fn push(&mut self, line: Option<usize>, message: String) {
        self.issues.push(PolicyIssue {
            file: self.file.clone(),
            line,
            message,
        });
    }
}

/// Checks one agreement file completely, collecting every issue.
fn check_file(path: &Path, text: &str, today: NaiveDate) -> FileCheck {
    let lines = Lines::new(text);
    let at = |offset: usize| Some(lines.line(offset));
    let mut c = FileCheck {
        file: path.to_path_buf(),
        id: None,
        hashes: Vec::new(),
        issues: Vec::new(),
        pks: None,
    };
    let f: PksFile = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let line = e.span().map(|s| lines.line(s.start));
            c.push(line, toml_error_message(&e));
            return c;
        }
    };

    // Required keys, all reported at once.
    let missing: Vec<&str> = [
        ("id", f.id.is_none()),
        ("institution", f.institution.is_none()),
        ("pks_number", f.pks_number.is_none()),
        ("walikota_permit", f.walikota_permit.is_none()),
        ("valid_from", f.valid_from.is_none()),
        ("valid_until", f.valid_until.is_none()),
        ("stage", f.stage.is_none()),
        ("permitted_elements", f.permitted_elements.is_none()),
        ("region_scope", f.region_scope.is_none()),
    ]
    .into_iter()
    .filter_map(|(key, absent)| absent.then_some(key))
    .collect();
    if !missing.is_empty() {
        c.push(
            None,
            format!(
                "missing key{} {}; every agreement file has id, institution, pks_number, walikota_permit, valid_from, valid_until, stage, permitted_elements and region_scope at the top, before any [table]",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", ")
            ),
        );
    }

    // Identity.
    if let Some(id) = &f.id {
        let line = lines.line(id.span().start);
        let value = id.get_ref();
        if !is_valid_id(value) {
            c.push(
                Some(line),
                format!(
                    "id = \"{value}\" is not a valid agreement id; use 3 to 64 characters of a-z, 0-9 and '-', e.g. \"{}\"",
                    suggest_id(value)
                ),
            );
        }
        c.id = Some((value.clone(), line));
    }
    for (key, field) in [
        ("institution", &f.institution),
        ("pks_number", &f.pks_number),
        ("walikota_permit", &f.walikota_permit),
    ] {
        if let Some(v) = field
            && v.get_ref().trim().is_empty()
        {
            c.push(
                at(v.span().start),
                format!("{key} is empty; write it as in the signed document"),
            );
        }
    }

    // Validity.
    let valid_from = f
        .valid_from
        .as_ref()
        .and_then(|v| date_of(&mut c, &lines, "valid_from", v));
    let valid_until = f
        .valid_until
        .as_ref()
        .and_then(|v| date_of(&mut c, &lines, "valid_until", v));
    if let (Some(from), Some(until), Some(v)) = (valid_from, valid_until, &f.valid_until) {
        let line = at(v.span().start);
        if until < from {
            c.push(
                line,
                format!(
                    "valid_until = {until} is before valid_from = {from}; check the dates in the PKS"
                ),
            );
        } else if until < today {
            c.push(
                line,
                format!(
                    "the PKS expired on {until} (valid_until; today is {today}); renew the PKS and update valid_until, or move the file out of the policy directory"
                ),
            );
        }
    }

    // Stage.
    let stage = f.stage.as_ref().and_then(|s| match s.get_ref().as_str() {
        "trial" => Some(Stage::Trial),
        "production" => Some(Stage::Production),
        other => {
            c.push(
                at(s.span().start),
                format!(
                    "stage = \"{other}\" is not a stage; use \"trial\" (synthetic snapshots only) or \"production\" (production snapshots only)"
                ),
            );
            None
        }
    });

    // Elements and the Minister's permissions.
    let ministers: Vec<&Spanned<String>> = f
        .minister_permission
        .as_ref()
        .map(|m| m.get_ref().iter().collect())
        .unwrap_or_default();
    let minister_names: BTreeSet<&str> = ministers.iter().map(|m| m.get_ref().as_str()).collect();
    let mut permitted = BTreeSet::new();
    if let Some(list) = &f.permitted_elements {
        if list.get_ref().is_empty() {
            c.push(
                at(list.span().start),
                "permitted_elements is empty; list the elements the PKS grants, e.g. [\"jenis_kelamin\", \"tanggal_lahir\", \"kode_kel\"]".into(),
            );
        }
        for e in list.get_ref() {
            let name = e.get_ref().as_str();
            let line = at(e.span().start);
            if !permitted.insert(name.to_string()) {
                c.push(
                    line,
                    format!("\"{name}\" is listed twice in permitted_elements; remove one"),
                );
                continue;
            }
            match catalog::column(name) {
                None => c.push(line, unknown_element(name, "permitted_elements")),
                Some(col) if col.class == ColumnClass::RecordKey => c.push(
                    line,
                    format!(
                        "\"{name}\" can never be permitted: the record key is internal to the cell-key method; remove it"
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    let mut seen_ministers = BTreeSet::new();
    for m in &ministers {
        let name = m.get_ref().as_str();
        let line = at(m.span().start);
        if !seen_ministers.insert(name) {
            c.push(
                line,
                format!("\"{name}\" is listed twice in minister_permission; remove one"),
            );
            continue;
        }
        match catalog::column(name) {
            None => c.push(line, unknown_element(name, "minister_permission")),
            Some(col) if !col.needs_minister_permission() => c.push(
                line,
                format!(
                    "\"{name}\" is not a protected element, so it needs no Minister's permission; only \"penyandang_cacat\" does. List \"{name}\" under permitted_elements only"
                ),
            ),
            Some(_) => {}
        }
    }

    // Region scope.
    let mut scope_codes = Vec::new();
    if let Some(list) = &f.region_scope {
        if list.get_ref().is_empty() {
            c.push(
                at(list.span().start),
                "region_scope is empty; a PKS covers a region: list its Kemendagri codes, e.g. [\"61.71\"] for Kota Pontianak".into(),
            );
        }
        for r in list.get_ref() {
            let code = r.get_ref().trim();
            let line = at(r.span().start);
            if code.eq_ignore_ascii_case("all") {
                c.push(
                    line,
                    "region_scope \"all\" is not allowed in a PKS file: a PKS always covers a region; list its Kemendagri codes, e.g. \"61.71\" (Kota Pontianak)".into(),
                );
            } else if let Err(e) = catalog::regions().require(code) {
                c.push(line, format!("region_scope: {e}"));
            } else {
                scope_codes.push(code.to_string());
            }
        }
    }

    // Limits.
    let mut limits = QueryLimits::default();
    let mut requests_per_minute = DEFAULT_REQUESTS_PER_MINUTE;
    if let Some(l) = &f.limits {
        let mut positive = |key: &str, v: &Option<Spanned<u64>>| -> Option<u64> {
            let v = v.as_ref()?;
            if *v.get_ref() == 0 {
                c.push(
                    at(v.span().start),
                    format!("{key} = 0 would refuse every request; use at least 1, or remove the key for the default"),
                );
                return None;
            }
            Some(*v.get_ref())
        };
        let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        if let Some(v) = positive("max_cells", &l.max_cells) {
            limits.max_cells = to_usize(v);
        }
        if let Some(v) = positive("max_group_dimensions", &l.max_group_dimensions) {
            limits.max_group_dimensions = to_usize(v);
        }
        if let Some(v) = positive("max_sql_bytes", &l.max_sql_bytes) {
            limits.max_sql_bytes = to_usize(v);
        }
        if let Some(v) = positive("timeout_seconds", &l.timeout_seconds) {
            limits.timeout_seconds = v;
        }
        if let Some(v) = positive("requests_per_minute", &l.requests_per_minute) {
            match u32::try_from(v) {
                Ok(v) => requests_per_minute = v,
                Err(_) => c.push(
                    l.requests_per_minute
                        .as_ref()
                        .and_then(|s| at(s.span().start)),
                    format!(
                        "requests_per_minute = {v} is too large; use at most {}",
                        u32::MAX
                    ),
                ),
            }
        }
    }

    // Protection and the DP budget.
    let base = path.parent();
    let (protection, budget_per_period) = match &f.protection {
        None => (Some(crate::protect::Protection::default_cell_key()), None),
        Some(section) => check_protection(&mut c, &lines, section, base),
    };

    // Tokens.
    let mut tokens = Vec::new();
    let mut token_ids: HashMap<&str, usize> = HashMap::new();
    let mut file_hashes: HashMap<[u8; 32], usize> = HashMap::new();
    for t in &f.token {
        let id = t.id.get_ref().as_str();
        let id_line = lines.line(t.id.span().start);
        let mut ok = true;
        if !is_valid_token_id(id) {
            ok = false;
            c.push(
                Some(id_line),
                format!(
                    "token id \"{id}\" is not valid; use 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-', e.g. \"{today}-a\""
                ),
            );
        } else if let Some(first) = token_ids.get(id) {
            ok = false;
            c.push(
                Some(id_line),
                format!(
                    "token id \"{id}\" is also used on line {first}; token ids name tokens in the audit log, so give this one another id"
                ),
            );
        } else {
            token_ids.insert(id, id_line);
        }
        let hash_line = lines.line(t.sha256.span().start);
        match parse_sha256(t.sha256.get_ref()) {
            Err(message) => c.push(Some(hash_line), message),
            Ok(hash) => {
                if let Some(first) = file_hashes.get(&hash) {
                    ok = false;
                    c.push(
                        Some(hash_line),
                        format!(
                            "this token hash is also on line {first}; a token is listed once: delete one of the blocks"
                        ),
                    );
                } else {
                    file_hashes.insert(hash, hash_line);
                    c.hashes.push((hash, hash_line));
                }
                if ok {
                    tokens.push(TokenEntry {
                        id: id.to_string(),
                        sha256: hash,
                    });
                }
            }
        }
    }

    if !c.issues.is_empty() {
        return c;
    }
    // Everything is present and valid here.
    let (Some((id, _)), Some(valid_from), Some(valid_until), Some(stage), Some(protection)) =
        (c.id.clone(), valid_from, valid_until, stage, protection)
    else {
        c.push(None, "internal: a checked file lacks a value".into());
        return c;
    };
    let scope = match RegionScope::parse(&scope_codes.join(",")) {
        Ok(scope) => scope,
        Err(e) => {
            c.push(None, format!("region_scope: {e}"));
            return c;
        }
    };
    let ministers: Vec<String> = minister_names.iter().map(|s| s.to_string()).collect();
    let agreement = match Agreement::new(&id, permitted, ministers, scope, limits) {
        Ok(a) => a,
        Err(e) => {
            c.push(None, e.to_string());
            return c;
        }
    };
    let agreement = agreement.with_protection(protection);
    let text_of = |v: &Option<Spanned<String>>| v.as_ref().map(|s| s.get_ref().trim().to_string());
    c.pks = Some(Pks {
        agreement,
        institution: text_of(&f.institution).unwrap_or_default(),
        pks_number: text_of(&f.pks_number).unwrap_or_default(),
        walikota_permit: text_of(&f.walikota_permit).unwrap_or_default(),
        valid_from,
        valid_until,
        stage,
        requests_per_minute,
        budget_per_period,
        tokens,
        file: path.to_path_buf(),
    });
    c
}

/// `[protection]`: the gate's rules ([`ProtectionFile::build_keyed`]) and
/// the budget per period.
fn check_protection(
    c: &mut FileCheck,
    lines: &Lines,
    section: &Spanned<ProtectionSection>,
    base: Option<&Path>,
) -> (Option<crate::protect::Protection>, Option<f64>) {
    let table_line = lines.line(section.span().start);
    let s = section.get_ref();
    let line_of = |v: Option<std::ops::Range<usize>>| v.map_or(table_line, |r| lines.line(r.start));
    let span = |v: &Option<Spanned<f64>>| v.as_ref().map(Spanned::span);
    let method = s
        .method
        .as_ref()
        .map_or_else(crate::agreement::default_method, |m| m.get_ref().clone());
    let per_query = s.rho.as_ref().or(s.epsilon.as_ref()).map(|v| {
        let name = if s.rho.is_some() { "rho" } else { "epsilon" };
        (name, *v.get_ref())
    });
    let budget = s.budget_per_period.as_ref().map(|b| *b.get_ref());
    let budget_line = line_of(span(&s.budget_per_period));
    let mut budget_ok = true;
    match method.as_str() {
        "dp" => match budget {
            None => {
                budget_ok = false;
                c.push(
                    Some(table_line),
                    format!(
                        "method = \"dp\" needs budget_per_period: the total {} per six-month period, e.g. budget_per_period = 1.0",
                        per_query.map_or("rho or epsilon", |(n, _)| n)
                    ),
                );
            }
            Some(b) if !(b.is_finite() && b > 0.0) => {
                budget_ok = false;
                c.push(
                    Some(budget_line),
                    format!(
                        "budget_per_period = {b} is not a budget; use a positive, finite number in the per-query measure"
                    ),
                );
            }
            Some(b) => {
                if let Some((name, q)) = per_query
                    && q.is_finite()
                    && q > 0.0
                    && b < q
                {
                    budget_ok = false;
                    c.push(
                        Some(budget_line),
                        format!(
                            "budget_per_period = {b} is smaller than one query's {name} = {q}, so no query could ever run; raise it to at least {q} (usually many times more)"
                        ),
                    );
                }
            }
        },
        "cell_key" if budget.is_some() => {
            budget_ok = false;
            c.push(
                Some(budget_line),
                "budget_per_period belongs to method = \"dp\"; cell-key perturbation spends no budget, so remove it".into(),
            );
        }
        _ => {}
    }
    let file = ProtectionFile {
        method,
        k: s.k
            .as_ref()
            .map_or_else(crate::agreement::default_k, |k| *k.get_ref()),
        ptable: s.ptable.as_ref().map(|p| p.get_ref().clone()),
        rho: s.rho.as_ref().map(|v| *v.get_ref()),
        epsilon: s.epsilon.as_ref().map(|v| *v.get_ref()),
        sparsity_max_ones: s.sparsity_max_ones.as_ref().map(|v| *v.get_ref()),
        sparsity_max_ones_twos: s.sparsity_max_ones_twos.as_ref().map(|v| *v.get_ref()),
    };
    match file.build_keyed(base) {
        Ok(p) => {
            let is_dp = p.is_dp();
            (Some(p), if is_dp && budget_ok { budget } else { None })
        }
        Err((key, message)) => {
            let range = match key {
                "method" => s.method.as_ref().map(Spanned::span),
                "k" => s.k.as_ref().map(Spanned::span),
                "ptable" => s.ptable.as_ref().map(Spanned::span),
                "rho" => span(&s.rho),
                "epsilon" => span(&s.epsilon),
                "sparsity_max_ones" => span(&s.sparsity_max_ones),
                "sparsity_max_ones_twos" => span(&s.sparsity_max_ones_twos),
                _ => None,
            };
            c.push(Some(line_of(range)), format!("[protection]: {message}"));
            (None, None)
        }
    }
}

/// The message of a TOML error, with a hint for the usual mistakes.
fn toml_error_message(e: &toml::de::Error) -> String {
    let message = e.message().trim_end().to_string();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        if TOP_LEVEL_KEYS.contains(&field) {
            return format!(
                "{message}; top-level keys such as {field} must come before the first [table] of the file"
            );
        }
        return format!("{message}; remove the key or correct its spelling");
    }
    message
}

/// A date key: a TOML local date, or a "YYYY-MM-DD" string.
fn date_of(
    c: &mut FileCheck,
    lines: &Lines,
    key: &str,
    v: &Spanned<toml::Value>,
) -> Option<NaiveDate> {
    let date = match v.get_ref() {
        toml::Value::Datetime(dt) if dt.time.is_none() && dt.offset.is_none() => dt
            .date
            .and_then(|d| NaiveDate::from_ymd_opt(d.year.into(), d.month.into(), d.day.into())),
        toml::Value::String(s) if s.len() == 10 => NaiveDate::parse_from_str(s, "%Y-%m-%d").ok(),
        _ => None,
    };
    if date.is_none() {
        let shown = match v.get_ref() {
            toml::Value::String(s) => format!("\"{s}\""),
            toml::Value::Datetime(dt) => dt.to_string(),
            other => format!("a {}", other.type_str()),
        };
        c.push(
            Some(lines.line(v.span().start)),
            format!(
                "{key} = {shown} is not a date; write a date without time, e.g. {key} = 2026-01-01"
            ),
        );
    }
    date
}

/// `[a-z0-9-]`, 3 to 64 characters.
fn is_valid_id(id: &str) -> bool {
    (3..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A valid id close to `id`, for the error message.
fn suggest_id(id: &str) -> String {
    let mut s: String = id
        .trim()
        .chars()
        .map(|ch| {
            let ch = ch.to_ascii_lowercase();
            if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
                ch
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(64);
    if s.len() < 3 {
        "disdikbud-pontianak".to_string()
    } else {
        s
    }
}

/// `[A-Za-z0-9._-]`, 1 to 64 characters.
fn is_valid_token_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 64 lower-case hex digits.
fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let lower = text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !lower {
        let hint = if text.starts_with(TOKEN_PREFIX) {
            "this looks like the token itself: never store a token; store its hash (`agregat agreement token ID` does this), and treat this token as leaked"
        } else if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            "write the hex digits in lower case"
        } else {
            "use the SHA-256 of the token's UTF-8 bytes as 64 lower-case hex digits (`agregat agreement token ID` writes it)"
        };
        let shown: String = if text.starts_with(TOKEN_PREFIX) {
            format!("\"{TOKEN_PREFIX}…\"")
        } else {
            format!("\"{text}\" ({} characters)", text.chars().count())
        };
        return Err(format!("sha256 = {shown} is not a token hash; {hint}"));
    }
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text, &mut hash).map_err(|e| e.to_string())?;
    Ok(hash)
}

/// The message for a name that is not in the catalog, with the nearest
/// catalog name when there is one.
fn unknown_element(name: &str, key: &str) -> String {
    let nearest = catalog::table_columns()
        .filter(|c| c.class != ColumnClass::RecordKey)
        .map(|c| (catalog::edit_distance(name, c.name), c.name))
        .min();
    match nearest {
        Some((d, best)) if d <= 3 => {
            format!("{key}: \"{name}\" is not an element of the catalog; did you mean \"{best}\"?")
        }
        _ => format!(
            "{key}: \"{name}\" is not an element of the catalog; use catalog column names such as \"jenis_kelamin\", \"tanggal_lahir\" or \"kode_kel\""
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn today() -> NaiveDate {
        day(2026, 11, 28)
    }

    const TOKEN: &str = "agt_0000000000000000000000000000000000000000000000000000000000000001";

    /// A valid file; the line numbers matter to the tests below.
    fn good(id: &str, token: &str) -> String {
        [
            &format!("id = \"{id}\""),                                // 1
            "institution = \"Dinas Uji Coba Kota Pontianak\"",        // 2
            "pks_number = \"400/1/UJI/2026\"",                        // 3
            "walikota_permit = \"Keputusan Wali Kota 1/2026\"",       // 4
            "valid_from = 2026-01-01",                                // 5
            "valid_until = 2027-12-31",                               // 6
            "stage = \"trial\"",                                      // 7
            "permitted_elements = [\"jenis_kelamin\", \"kode_kel\"]", // 8
            "minister_permission = []",                               // 9
            "region_scope = [\"61.71\"]",                             // 10
            "",                                                       // 11
            "[limits]",                                               // 12
            "requests_per_minute = 60",                               // 13
            "",                                                       // 14
            "[protection]",                                           // 15
            "method = \"cell_key\"",                                  // 16
            "k = 10",                                                 // 17
            "",                                                       // 18
            "[[token]]",                                              // 19
            "id = \"t1\"",                                            // 20
            &format!("sha256 = \"{}\"", token_sha256_hex(token)),     // 21
        ]
        .join("\n")
            + "\n"
    }

    /// `good` with some lines (1-based) replaced.
    fn variant(replace: &[(usize, &str)]) -> String {
        let text = good("uji-coba", TOKEN);
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        for (n, new) in replace {
            lines[n - 1] = (*new).to_string();
        }
        lines.join("\n") + "\n"
    }

    fn issues(text: &str) -> Vec<PolicyIssue> {
        let c = check_file(Path::new("uji.toml"), text, today());
        assert_eq!(c.pks.is_some(), c.issues.is_empty());
        c.issues
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn shipped() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data-samples")
    }

    #[test]
    fn the_shipped_directory_loads_and_every_demo_token_authenticates() {
        let policy = Policy::load_dir(&shipped().join("agreements"), today()).unwrap();
        let ids: Vec<&str> = policy.agreements().map(|p| p.id()).collect();
        assert_eq!(
            ids,
            [
                "bappeda-pontianak",
                "dinsos-pontianak-ujicoba",
                "disdikbud-pontianak",
                "dpmptsp-pontianak"
            ]
        );
        let demo =
            load_demo_tokens(&shipped().join("DEMO-TOKENS-NOT-FOR-PRODUCTION.toml")).unwrap();
        assert_eq!(demo.len(), 4);
        for (id, token) in &demo {
            let (pks, token_id) = policy.authenticate(token).unwrap_or_else(|| panic!("{id}"));
            assert_eq!(pks.id(), id);
            assert_eq!(pks.tokens.len(), 1);
            assert_eq!(pks.tokens[0].id, token_id);
            assert!(pks.check_valid_on(today()).is_ok(), "{id}");
            assert_eq!(pks.agreement.scope(), &RegionScope::parse("61.71").unwrap());
            assert!(token.starts_with(TOKEN_PREFIX) && token.len() == 68);
        }
        let get = |id: &str| policy.get(id).unwrap();
        let disdik = get("disdikbud-pontianak");
        assert_eq!(disdik.stage, Stage::Trial);
        assert_eq!(disdik.requests_per_minute, 6000);
        assert_eq!(disdik.budget_per_period, None);
        let d = disdik.agreement.protection();
        assert!(!d.is_dp() && d.k() == 10);
        assert!(disdik.agreement.permits("tanggal_lahir"));
        let bappeda = get("bappeda-pontianak");
        assert_eq!(bappeda.stage, Stage::Trial);
        assert_eq!(bappeda.budget_per_period, Some(1.0));
        assert!(bappeda.agreement.protection().is_dp());
        assert!(bappeda.agreement.permits("no_kk"));
        assert!(!bappeda.agreement.permits("nik"));
        assert!(!bappeda.agreement.permits("penyandang_cacat"));
        assert_eq!(get("dpmptsp-pontianak").stage, Stage::Production);
        let dinsos = get("dinsos-pontianak-ujicoba");
        assert_eq!(dinsos.stage, Stage::Trial);
        assert!(dinsos.check_valid_on(day(2027, 3, 1)).is_err());
        assert!(dinsos.check_valid_on(day(2027, 2, 28)).is_ok());
        assert!(dinsos.check_valid_on(day(2026, 8, 31)).is_err());
        // The data owner's local agreement is a PKS file like the others.
        let local = Policy::load_dir(&shipped().join("lokal"), today()).unwrap();
        assert!(local.get("contoh-lokal").is_some());
    }

    #[test]
    fn wrong_tokens_do_not_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", &good("uji-a", TOKEN));
        let policy = Policy::load_dir(dir.path(), today()).unwrap();
        assert!(policy.authenticate(TOKEN).is_some());
        for wrong in [
            "",
            "agt_",
            &TOKEN[..TOKEN.len() - 1],
            &format!("{TOKEN} "),
            &token_sha256_hex(TOKEN),
        ] {
            assert!(policy.authenticate(wrong).is_none(), "{wrong}");
        }
    }

    #[test]
    fn the_good_template_is_valid() {
        assert_eq!(issues(&good("uji-coba", TOKEN)), []);
        // Dates as strings work too.
        let text = variant(&[(5, "valid_from = \"2026-01-01\"")]);
        assert_eq!(issues(&text), []);
        // A future valid_from is fine.
        let text = variant(&[(5, "valid_from = 2027-01-01")]);
        assert_eq!(issues(&text), []);
    }

    /// Lines to replace, the expected line of the one issue, a part of its
    /// message.
    type Case<'a> = (Vec<(usize, &'a str)>, Option<usize>, &'a str);

    #[test]
    fn each_rule_reports_its_line() {
        let agt = format!("sha256 = \"{TOKEN}\"");
        let upper = format!("sha256 = \"{}\"", token_sha256_hex(TOKEN).to_uppercase());
        let cases: Vec<Case> = vec![
            // syntax, unknown keys, missing keys
            (
                vec![(4, "walikota_permit = \"Keputusan")],
                Some(4),
                "string",
            ),
            (
                vec![(13, "requests_per_mnute = 60")],
                Some(13),
                "unknown field `requests_per_mnute`",
            ),
            (
                vec![(2, "instituton = \"x\"")],
                Some(2),
                "unknown field `instituton`",
            ),
            (
                vec![(14, "stage = \"trial\""), (7, "")],
                Some(14),
                "before the first [table]",
            ),
            (
                vec![(3, ""), (4, "")],
                None,
                "missing keys pks_number, walikota_permit",
            ),
            (vec![(20, "")], Some(19), "missing field `id`"),
            // identity
            (vec![(1, "id = \"Uji_Coba\"")], Some(1), "e.g. \"uji-coba\""),
            (vec![(1, "id = \"ab\"")], Some(1), "3 to 64 characters"),
            (
                vec![(2, "institution = \" \"")],
                Some(2),
                "institution is empty",
            ),
            // dates
            (
                vec![(5, "valid_from = \"2026-13-01\"")],
                Some(5),
                "is not a date",
            ),
            (
                vec![(5, "valid_from = 2026-01-01T08:00:00Z")],
                Some(5),
                "without time",
            ),
            (
                vec![(6, "valid_until = 2025-12-31")],
                Some(6),
                "before valid_from = 2026-01-01",
            ),
            (
                vec![(6, "valid_until = 2026-11-27")],
                Some(6),
                "expired on 2026-11-27",
            ),
            // stage
            (vec![(7, "stage = \"prod\"")], Some(7), "\"trial\""),
            // elements
            (
                vec![(
                    8,
                    "permitted_elements = [\"jenis_kelamin\", \"jenis_kelamn\"]",
                )],
                Some(8),
                "did you mean \"jenis_kelamin\"",
            ),
            (
                vec![(8, "permitted_elements = [\"sidik_jari\"]")],
                Some(8),
                "\"sidik_jari\" is not an element",
            ),
            (
                vec![(8, "permitted_elements = [\"record_key\"]")],
                Some(8),
                "never be permitted",
            ),
            (
                vec![(8, "permitted_elements = [\"agama\", \"agama\"]")],
                Some(8),
                "listed twice",
            ),
            (
                vec![(8, "permitted_elements = []")],
                Some(8),
                "permitted_elements is empty",
            ),
            (
                vec![(9, "minister_permission = [\"agama\"]")],
                Some(9),
                "not a protected element",
            ),
            (
                vec![(9, "minister_permission = [\"cacat\"]")],
                Some(9),
                "not an element",
            ),
            // regions
            (
                vec![(10, "region_scope = [\"all\"]")],
                Some(10),
                "\"all\" is not allowed",
            ),
            (
                vec![(10, "region_scope = [\"61.99\"]")],
                Some(10),
                "'61.99' is not a Kemendagri region code",
            ),
            (
                vec![(10, "region_scope = []")],
                Some(10),
                "region_scope is empty",
            ),
            // limits
            (
                vec![(13, "requests_per_minute = 0")],
                Some(13),
                "at least 1",
            ),
            (vec![(13, "max_cells = 0")], Some(13), "max_cells = 0"),
            (
                vec![(13, "requests_per_minute = 5000000000")],
                Some(13),
                "too large",
            ),
            // protection
            (vec![(17, "k = 2")], Some(17), "at least 3"),
            (vec![(16, "method = \"noise\"")], Some(16), "unknown method"),
            (
                vec![(16, "method = \"dp\""), (17, "rho = 0.01")],
                Some(15),
                "needs budget_per_period",
            ),
            (
                vec![
                    (16, "method = \"dp\""),
                    (17, "rho = 0.5"),
                    (18, "budget_per_period = 0.1"),
                ],
                Some(18),
                "smaller than one query's rho = 0.5",
            ),
            (
                vec![
                    (16, "method = \"dp\""),
                    (17, "epsilon = 0.5"),
                    (18, "budget_per_period = nan"),
                ],
                Some(18),
                "not a budget",
            ),
            (
                vec![
                    (16, "method = \"dp\""),
                    (17, "rho = -1.0"),
                    (18, "budget_per_period = 1.0"),
                ],
                Some(17),
                "-1",
            ),
            (
                vec![(18, "budget_per_period = 1.0")],
                Some(18),
                "cell-key perturbation spends no budget",
            ),
            (
                vec![(18, "rho = 0.1")],
                Some(18),
                "belong to method = \"dp\"",
            ),
            (vec![(18, "sparsity_max_ones = 1.5")], Some(18), "(0, 1]"),
            // tokens
            (vec![(21, "sha256 = \"abc\"")], Some(21), "not a token hash"),
            (vec![(21, &upper)], Some(21), "lower case"),
            (vec![(21, &agt)], Some(21), "looks like the token itself"),
            (
                vec![(20, "id = \"t 1\"")],
                Some(20),
                "token id \"t 1\" is not valid",
            ),
        ];
        for (replace, line, needle) in cases {
            let text = variant(&replace);
            let found = issues(&text);
            assert_eq!(found.len(), 1, "{replace:?}: {found:#?}");
            assert_eq!(found[0].line, line, "{replace:?}: {found:#?}");
            assert!(
                found[0].message.contains(needle),
                "{replace:?}: expected {needle:?} in {:?}",
                found[0].message
            );
            assert_eq!(found[0].file, Path::new("uji.toml"));
        }
    }

    #[test]
    fn every_issue_of_a_file_is_reported_with_the_line_of_the_value() {
        let text = variant(&[
            (7, "stage = \"prod\""),
            (
                8,
                "permitted_elements = [\n  \"jenis_kelamin\",\n  \"sidik_jari\",\n  \"record_key\",\n]",
            ),
            (10, "region_scope = [\"61.71\", \"all\"]"),
        ]);
        let found = issues(&text);
        let lines: Vec<Option<usize>> = found.iter().map(|i| i.line).collect();
        // The list spans lines 8-12, so what follows moves down by four.
        assert_eq!(lines, [Some(7), Some(10), Some(11), Some(14)], "{found:#?}");
    }

    #[test]
    fn duplicate_tokens_and_token_ids_in_one_file() {
        let block = format!(
            "\n[[token]]\nid = \"t1\"\nsha256 = \"{}\"\n",
            token_sha256_hex(TOKEN)
        );
        let text = good("uji-coba", TOKEN) + &block;
        let found = issues(&text);
        let lines: Vec<Option<usize>> = found.iter().map(|i| i.line).collect();
        assert_eq!(lines, [Some(24), Some(25)], "{found:#?}");
        assert!(found[0].message.contains("also used on line 20"));
        assert!(found[1].message.contains("also on line 21"));
    }

    #[test]
    fn problems_in_several_files_are_all_reported() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", &variant(&[(7, "stage = \"prod\"")]));
        write(dir.path(), "b.toml", &good("uji-b", "agt_b"));
        write(dir.path(), "c.toml", "id = [\n");
        write(dir.path(), "notes.txt", "not an agreement");
        let err = Policy::load_dir(dir.path(), today()).unwrap_err();
        let at: Vec<(String, Option<usize>)> = err
            .issues
            .iter()
            .map(|i| {
                (
                    i.file.file_name().unwrap().to_string_lossy().into_owned(),
                    i.line,
                )
            })
            .collect();
        assert_eq!(
            at,
            [
                ("a.toml".to_string(), Some(7)),
                ("c.toml".to_string(), Some(1))
            ],
            "{err}"
        );
        let shown = err.to_string();
        assert!(shown.contains("a.toml:7: stage = \"prod\""), "{shown}");
        assert!(shown.contains("c.toml:1: unclosed array"), "{shown}");
        assert!(
            shown
                .trim_end()
                .ends_with("until every agreement file is valid"),
            "{shown}"
        );
        assert!(shown.contains("2 problems"), "{shown}");
    }

    #[test]
    fn ids_and_token_hashes_are_unique_across_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", &good("uji-sama", "agt_a"));
        write(dir.path(), "b.toml", &good("uji-sama", "agt_b"));
        write(dir.path(), "c.toml", &good("uji-c", "agt_a"));
        let err = Policy::load_dir(dir.path(), today()).unwrap_err();
        assert_eq!(err.issues.len(), 2, "{err}");
        let b = &err.issues[0];
        assert!(b.file.ends_with("b.toml") && b.line == Some(1), "{err}");
        assert!(b.message.contains("a.toml:1"), "{err}");
        let c = &err.issues[1];
        assert!(c.file.ends_with("c.toml") && c.line == Some(21), "{err}");
        assert!(c.message.contains("a.toml:21"), "{err}");
    }

    #[test]
    fn an_empty_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "README", "agreements go here");
        let err = Policy::load_dir(dir.path(), today()).unwrap_err();
        assert!(err.to_string().contains("no agreement files"), "{err}");
        let err = Policy::load_dir(&dir.path().join("missing"), today()).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    #[test]
    fn add_token_appends_and_deleting_the_block_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "uji.toml", &good("uji-coba", TOKEN));
        write(dir.path(), "lain.toml", &good("uji-lain", "agt_lain"));
        let before = std::fs::read_to_string(&path).unwrap();
        let policy = Policy::load_dir(dir.path(), today()).unwrap();
        let stamp = Policy::dir_stamp(dir.path()).unwrap();
        assert_eq!(policy.stamp(), stamp);

        let (token, token_id, file) = add_token(dir.path(), "uji-coba", today()).unwrap();
        assert_eq!(file, path);
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() == 68);
        assert!(token_id.starts_with("2026-11-28-") && token_id.len() == 15);
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(after.starts_with(&before));
        assert!(after.contains(&token_sha256_hex(&token)));
        assert!(!after.contains(&token), "the token itself is never written");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
        assert_ne!(Policy::dir_stamp(dir.path()).unwrap(), stamp);

        let policy = Policy::load_dir(dir.path(), today()).unwrap();
        let (pks, id) = policy.authenticate(&token).unwrap();
        assert_eq!((pks.id(), id.as_str()), ("uji-coba", token_id.as_str()));
        let (pks, id) = policy.authenticate(TOKEN).unwrap();
        assert_eq!((pks.id(), id.as_str()), ("uji-coba", "t1"));
        assert_eq!(policy.authenticate("agt_lain").unwrap().0.id(), "uji-lain");

        // Revocation: delete the block.
        let cut = after.find("\n[[token]]\n# Added by").unwrap();
        std::fs::write(&path, &after[..cut]).unwrap();
        let policy = Policy::load_dir(dir.path(), today()).unwrap();
        assert!(policy.authenticate(&token).is_none());
        assert!(policy.authenticate(TOKEN).is_some());

        // Unknown id: the message lists the known ones.
        let err = add_token(dir.path(), "tidak-ada", today()).unwrap_err();
        assert!(
            err.to_string().contains("uji-coba, uji-lain")
                || err.to_string().contains("uji-lain, uji-coba"),
            "{err}"
        );
    }

    #[test]
    fn add_token_leaves_an_invalid_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let text = variant(&[(6, "valid_until = 2026-06-30")]);
        let path = write(dir.path(), "uji.toml", &text);
        let err = add_token(dir.path(), "uji-coba", today()).unwrap_err();
        assert!(err.to_string().contains("expired on 2026-06-30"), "{err}");
        assert_eq!(err.issues[0].line, Some(6));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn add_token_on_a_file_without_tokens_or_final_newline() {
        let dir = tempfile::tempdir().unwrap();
        let text = good("uji-coba", TOKEN);
        let cut = text.find("\n[[token]]").unwrap();
        write(dir.path(), "uji.toml", &text[..cut]);
        let policy = Policy::load_dir(dir.path(), today()).unwrap();
        assert!(policy.get("uji-coba").unwrap().tokens.is_empty());
        let (token, _, _) = add_token(dir.path(), "uji-coba", today()).unwrap();
        let (token2, id2, _) = add_token(dir.path(), "uji-coba", today()).unwrap();
        let policy = Policy::load_dir(dir.path(), today()).unwrap();
        assert_eq!(policy.get("uji-coba").unwrap().tokens.len(), 2);
        assert!(policy.authenticate(&token).is_some());
        assert_eq!(policy.authenticate(&token2).unwrap().1, id2);
    }

    #[test]
    fn minted_tokens_are_random_and_hashed() {
        let (a, ha) = mint_token();
        let (b, hb) = mint_token();
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert_eq!(ha, token_sha256_hex(&a));
        assert!(
            a[4..]
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        );
        assert_eq!(ha.len(), 64);
        // Known answer: SHA-256("abc").
        assert_eq!(
            token_sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn stage_names() {
        assert_eq!(Stage::Trial.to_string(), "trial");
        assert_eq!(Stage::Production.to_string(), "production");
        assert_eq!(
            serde_json::to_string(&Stage::Production).unwrap(),
            "\"production\""
        );
        assert_eq!(
            serde_json::from_str::<Stage>("\"trial\"").unwrap(),
            Stage::Trial
        );
        assert!(Stage::Trial.may_query(true) && !Stage::Trial.may_query(false));
        assert!(Stage::Production.may_query(false) && !Stage::Production.may_query(true));
    }

    #[test]
    fn demo_token_files_must_have_the_tokens_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "demo.toml", "[tokens]\n\"a\" = \"agt_1\"\n");
        assert_eq!(load_demo_tokens(&path).unwrap()["a"], "agt_1");
        let path = write(
            dir.path(),
            "bad.toml",
            "# demo\n[token]\n\"a\" = \"agt_1\"\n",
        );
        let err = load_demo_tokens(&path).unwrap_err();
        assert_eq!(err.issues[0].line, Some(2), "{err}");
    }
}
