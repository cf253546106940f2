//! Reading many results at once: every `result.json` under the given files and directories,
//! parsed in parallel (rayon), checked for the schema name and version, and indexed by kernel
//! release, label, scenario, host and start time. Selectors (`kernel=6.12,label=v2,latest`)
//! pick runs out of a catalog. A catalog keeps whole results ([`LoadedRun`], for exporters)
//! or only what comparisons, charts and reports read of them ([`RunFacts`], for fleets of
//! thousands of results).
//!
//! A file that cannot be read or parsed (a half-copied file, another tool's JSON, a result
//! of another schema version) is listed in [`Catalog::skipped`] with its path and why, and
//! never stops the others from loading. This module only reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use crate::facts::RunFacts;
use crate::kernel::KernelRelease;
use crate::schema::{RunResult, SCHEMA_NAME, SCHEMA_VERSION};

/// One result file as loaded, whole.
#[derive(Clone, Debug)]
pub struct LoadedRun {
    pub path: PathBuf,
    pub result: RunResult,
}

/// What a catalog indexes, groups and selects runs by.
pub trait Indexed {
    fn run_id(&self) -> &str;
    fn started(&self) -> &str;
    fn kernel(&self) -> &str;
    fn label(&self) -> Option<&str>;
    fn host(&self) -> &str;
    fn scenario(&self) -> &str;

    /// `6.18.44-fc (my-series)`: the kernel, and the label when there is one. Plots and
    /// reports group runs by this.
    fn kernel_and_label(&self) -> String {
        match self.label() {
            Some(l) if !l.is_empty() => format!("{} ({l})", self.kernel()),
            _ => self.kernel().to_string(),
        }
    }
}

impl Indexed for LoadedRun {
    fn run_id(&self) -> &str {
        &self.result.run_id
    }

    fn started(&self) -> &str {
        &self.result.started
    }

    fn kernel(&self) -> &str {
        &self.result.environment.kernel_release
    }

    fn label(&self) -> Option<&str> {
        self.result.label.as_deref()
    }

    fn host(&self) -> &str {
        &self.result.environment.hostname
    }

    fn scenario(&self) -> &str {
        &self.result.scenario.name
    }
}

impl LoadedRun {
    /// What analysis reads of this run (the histograms decoded again: for tests and tools
    /// that hold whole results; catalogs make facts as they load).
    pub fn facts(&self) -> Result<RunFacts> {
        RunFacts::of(&self.path, &self.result)
    }
}

/// A run as named in comparisons and reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRef {
    pub run_id: String,
    pub path: String,
    pub kernel_release: String,
    pub label: Option<String>,
    pub scenario: String,
    pub host: String,
    pub started: String,
    pub complete: bool,
    pub virtualized: Option<String>,
}

/// A file that was not loaded, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// Runs loaded from files and directories, sorted by start time (then run id): whole
/// results ([`LoadedRun`]) or their facts ([`RunFacts`]).
#[derive(Clone, Debug)]
pub struct Catalog<R = LoadedRun> {
    pub runs: Vec<R>,
    pub skipped: Vec<Skipped>,
}

impl<R> Default for Catalog<R> {
    fn default() -> Self {
        Catalog {
            runs: Vec::new(),
            skipped: Vec::new(),
        }
    }
}

/// Every `result.json` below `dir` (following no symlinked directories, skipping the
/// temporary files of atomic writes, which start with a dot).
fn walk(dir: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<Skipped>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(Skipped {
                path: dir.to_path_buf(),
                reason: format!("cannot list the directory: {e}"),
            });
            return;
        }
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk(&p, out, errors);
        } else if p.file_name().is_some_and(|n| n == "result.json") {
            out.push(p);
        }
    }
}

#[derive(Deserialize)]
struct Header {
    schema: Option<String>,
    schema_version: Option<u64>,
}

/// Parse one file; the error says what is wrong with it.
pub fn load_file(path: &Path) -> Result<RunResult> {
    let bytes = std::fs::read(path).context("cannot read it")?;
    parse_result(&bytes)
}

/// Parse the bytes of a result file and check what analysis relies on: the schema name and
/// version, and that every stored histogram decodes (one from another HdrHistogram producer
/// does, into pinstorm's bounds; a corrupted or hand-edited one makes the whole file
/// suspect, and it is refused naming the histogram).
pub fn parse_result(bytes: &[u8]) -> Result<RunResult> {
    let r = parse_json(bytes)?;
    for (at, h) in r.histograms() {
        crate::hist::Sparse::decode(h).with_context(|| format!("{at} does not decode"))?;
    }
    Ok(r)
}

fn parse_json(bytes: &[u8]) -> Result<RunResult> {
    match serde_json::from_slice::<RunResult>(bytes) {
        Ok(r) if r.schema != SCHEMA_NAME => {
            bail!("not a pinstorm result (schema {:?})", r.schema)
        }
        Ok(r) if r.schema_version != SCHEMA_VERSION => bail!(
            "result schema version {}, this pinstorm reads version {SCHEMA_VERSION}",
            r.schema_version
        ),
        Ok(r) => Ok(r),
        Err(e) => {
            // Say first whether it is a pinstorm result of this version at all; a version
            // mismatch explains a parse error better than the field it tripped on.
            if let Ok(h) = serde_json::from_slice::<Header>(bytes) {
                if h.schema.as_deref() != Some(SCHEMA_NAME) {
                    bail!(
                        "not a pinstorm result (schema {:?})",
                        h.schema.unwrap_or_default()
                    );
                }
                if let Some(v) = h.schema_version.filter(|v| *v != u64::from(SCHEMA_VERSION)) {
                    bail!(
                        "result schema version {v}, this pinstorm reads version {SCHEMA_VERSION}"
                    );
                }
            }
            if e.is_eof() {
                bail!("truncated JSON ({e}): a partial copy?")
            }
            bail!("malformed result: {e}")
        }
    }
}

impl Catalog<LoadedRun> {
    /// Load every result under `paths` (files are taken as results whatever their name,
    /// directories are searched for `result.json`). Files that fail are in `skipped`; a
    /// path that does not exist is an error (it is a typo, not a bad file).
    pub fn load(paths: &[PathBuf]) -> Result<Catalog<LoadedRun>> {
        Catalog::load_with(paths, |path, bytes| {
            Ok(LoadedRun {
                path: path.to_path_buf(),
                result: parse_result(bytes)?,
            })
        })
    }
}

impl Catalog<RunFacts> {
    /// Load as [`Catalog::load`] does (the same files, refused for the same reasons), but
    /// keep only the facts of each run: every histogram is decoded once, as the file is
    /// checked, and the whole result is dropped as soon as its facts are taken.
    pub fn load_facts(paths: &[PathBuf]) -> Result<Catalog<RunFacts>> {
        Catalog::load_with(paths, |path, bytes| RunFacts::of(path, &parse_json(bytes)?))
    }
}

impl<R: Indexed + Send> Catalog<R> {
    fn load_with(
        paths: &[PathBuf],
        parse: impl Fn(&Path, &[u8]) -> Result<R> + Sync,
    ) -> Result<Catalog<R>> {
        let mut files = Vec::new();
        let mut skipped = Vec::new();
        for p in paths {
            let md = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
            if md.is_dir() {
                walk(p, &mut files, &mut skipped);
            } else {
                files.push(p.clone());
            }
        }
        files.sort();
        files.dedup();
        let loaded: Vec<(PathBuf, Result<R>)> = files
            .into_par_iter()
            .map(|p| {
                let r = std::fs::read(&p)
                    .context("cannot read it")
                    .and_then(|bytes| parse(&p, &bytes));
                (p, r)
            })
            .collect();
        let mut runs = Vec::new();
        let mut seen = BTreeSet::new();
        for (path, r) in loaded {
            match r {
                Ok(run) => {
                    // The same run copied twice (a baseline kept next to the results) must
                    // not count twice.
                    if !seen.insert(run.run_id().to_string()) {
                        skipped.push(Skipped {
                            path,
                            reason: format!(
                                "run {} was already loaded from another file",
                                run.run_id()
                            ),
                        });
                        continue;
                    }
                    runs.push(run);
                }
                Err(e) => skipped.push(Skipped {
                    path,
                    reason: format!("{e:#}"),
                }),
            }
        }
        runs.sort_by(|a, b| (a.started(), a.run_id()).cmp(&(b.started(), b.run_id())));
        Ok(Catalog { runs, skipped })
    }
}

impl<R: Indexed> Catalog<R> {
    /// Runs by kernel release (releases in version order).
    pub fn by_kernel(&self) -> Vec<(String, Vec<&R>)> {
        let mut m: BTreeMap<String, Vec<&R>> = BTreeMap::new();
        for r in &self.runs {
            m.entry(r.kernel().to_string()).or_default().push(r);
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by_key(|(k, _)| kernel_sort_key(k));
        v
    }

    /// Runs grouped by kernel and label (`6.12.0 (baseline)`), in kernel version order:
    /// what plots and reports put side by side.
    pub fn groups(&self) -> Vec<(String, Vec<&R>)> {
        let mut m: BTreeMap<(Vec<u32>, String), Vec<&R>> = BTreeMap::new();
        for r in &self.runs {
            let mut key = kernel_sort_key(r.kernel());
            key.push(0);
            m.entry((key, r.kernel_and_label())).or_default().push(r);
        }
        m.into_iter().map(|((_, name), v)| (name, v)).collect()
    }

    /// The runs a selector picks, oldest first.
    pub fn select(&self, sel: &Selector) -> Vec<&R> {
        let mut v: Vec<&R> = self.runs.iter().filter(|r| sel.matches(*r)).collect();
        if let Some(n) = sel.latest {
            let skip = v.len().saturating_sub(n);
            v.drain(..skip);
        }
        v
    }
}

fn kernel_sort_key(release: &str) -> Vec<u32> {
    match KernelRelease::parse(release) {
        Some(k) => vec![k.version.0, k.version.1, k.version.2],
        None => vec![u32::MAX],
    }
}

/// `kernel=6.12,label=v2,scenario=quick,host=box,run=ID,since=2026-01-01,until=...,latest`
/// (`latest` or `latest=N`: the newest N runs that match; default all).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector {
    pub text: String,
    pub kernel: Option<String>,
    pub label: Option<String>,
    pub scenario: Option<String>,
    pub host: Option<String>,
    pub run: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub latest: Option<usize>,
}

pub const SELECTOR_KEYS: &str =
    "kernel=, label=, scenario=, host=, run=, since=, until=, latest[=N]";

impl Selector {
    /// Whether `s` looks like a selector rather than a path.
    pub fn looks_like(s: &str) -> bool {
        !s.contains('/') && (s.contains('=') || s == "latest")
    }

    pub fn parse(s: &str) -> Result<Selector> {
        let mut sel = Selector {
            text: s.to_string(),
            ..Selector::default()
        };
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (k, v) = match term.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim().to_string())),
                None => (term, None),
            };
            let need = |v: Option<String>| -> Result<Option<String>> {
                match v {
                    Some(v) if !v.is_empty() => Ok(Some(v)),
                    _ => bail!("selector {s:?}: {k} needs a value ({k}=...)"),
                }
            };
            match k {
                "kernel" => sel.kernel = need(v)?,
                "label" => sel.label = need(v)?,
                "scenario" => sel.scenario = need(v)?,
                "host" => sel.host = need(v)?,
                "run" => sel.run = need(v)?,
                "since" => sel.since = need(v)?,
                "until" => sel.until = need(v)?,
                "latest" => {
                    sel.latest = Some(match v {
                        None => 1,
                        Some(n) => match n.parse::<usize>() {
                            Ok(n) if n > 0 => n,
                            _ => bail!("selector {s:?}: latest={n} must be a positive count"),
                        },
                    })
                }
                other => bail!("selector {s:?}: unknown key {other:?} (keys: {SELECTOR_KEYS})"),
            }
        }
        if sel
            == (Selector {
                text: s.to_string(),
                ..Selector::default()
            })
        {
            bail!("selector {s:?} selects nothing in particular (keys: {SELECTOR_KEYS})");
        }
        Ok(sel)
    }

    pub fn matches(&self, r: &impl Indexed) -> bool {
        self.kernel
            .as_deref()
            .is_none_or(|k| release_matches(r.kernel(), k))
            && self.label.as_deref().is_none_or(|l| r.label() == Some(l))
            && self.scenario.as_deref().is_none_or(|s| r.scenario() == s)
            && self.host.as_deref().is_none_or(|h| r.host() == h)
            && self
                .run
                .as_deref()
                .is_none_or(|id| r.run_id().starts_with(id))
            && self.since.as_deref().is_none_or(|t| r.started() >= t)
            && self.until.as_deref().is_none_or(|t| r.started() < t)
    }
}

/// `6.12` matches `6.12`, `6.12.0-1-amd64` and `6.12-rc3`, but not `6.120`: a release
/// prefix that ends at a component boundary.
pub fn release_matches(release: &str, want: &str) -> bool {
    match release.strip_prefix(want) {
        Some("") => true,
        Some(rest) => !rest.starts_with(|c: char| c.is_ascii_digit()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_prefixes_stop_at_component_boundaries() {
        assert!(release_matches("6.12.0-1-amd64", "6.12"));
        assert!(release_matches("6.12", "6.12"));
        assert!(release_matches("6.12-rc3", "6.12"));
        assert!(!release_matches("6.120.1", "6.12"));
        assert!(!release_matches("6.1.0", "6.12"));
    }

    #[test]
    fn selectors_parse_and_refuse_unknown_keys() {
        let s = Selector::parse("kernel=6.12,label=base,latest=2").unwrap();
        assert_eq!(s.kernel.as_deref(), Some("6.12"));
        assert_eq!(s.label.as_deref(), Some("base"));
        assert_eq!(s.latest, Some(2));
        let e = Selector::parse("kernal=6.12").unwrap_err().to_string();
        assert!(e.contains("kernal") && e.contains("kernel="), "{e}");
        assert!(Selector::parse("latest=0").is_err());
        assert!(Selector::parse("label=").is_err());
        assert!(Selector::looks_like("kernel=6.12"));
        assert!(!Selector::looks_like("/tmp/a=b"));
    }

    #[test]
    fn broken_files_are_skipped_with_their_path_and_reason() {
        let d = std::env::temp_dir().join(format!("pinstorm-catalog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("a")).unwrap();
        std::fs::create_dir_all(d.join("b")).unwrap();
        std::fs::create_dir_all(d.join("c")).unwrap();
        std::fs::write(
            d.join("a/result.json"),
            "{\"schema\": \"pinstorm-result\", \"sch",
        )
        .unwrap();
        std::fs::write(d.join("b/result.json"), "{\"schema\": \"other\"}").unwrap();
        std::fs::write(
            d.join("c/result.json"),
            "{\"schema\": \"pinstorm-result\", \"schema_version\": 99}",
        )
        .unwrap();
        let c = Catalog::load(std::slice::from_ref(&d)).unwrap();
        assert!(c.runs.is_empty());
        assert_eq!(c.skipped.len(), 3, "{:?}", c.skipped);
        let why = |sub: &str| {
            c.skipped
                .iter()
                .find(|s| s.path.starts_with(d.join(sub)))
                .map(|s| s.reason.clone())
                .unwrap()
        };
        assert!(why("a").contains("truncated"), "{}", why("a"));
        assert!(why("b").contains("not a pinstorm result"), "{}", why("b"));
        assert!(why("c").contains("version 99"), "{}", why("c"));
        assert!(Catalog::load(&[d.join("missing")]).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
