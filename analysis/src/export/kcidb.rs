//! KCIDB I/O JSON (schema v5.3, the `kcidb-io` package's; docs/nightly.md): what the kernel
//! community's shared results database takes from CI systems.
//!
//! - one *checkout* per kernel release and label (and commit, when a `--build` tree was a
//!   git checkout): the source that was tested;
//! - one *build* per kernel as booted (its release, `uname -v` or the lab's kernel source);
//! - one *test* per fact of each run, with a dotted path (`pinstorm.probe.io_uring.xfs-dax.
//!   shared.rw`, `pinstorm.storm.io_uring.tmpfs.shared.lost_write`, `pinstorm.run`), its
//!   status from the run's one judgement ([`verdict::judge`]): as expected PASS, differs
//!   FAIL, no expectation DONE (measured, not judged), notrun SKIP with the reason in the
//!   comment, the run's own error ERROR; oracle counts carry their number and unit;
//! - one DONE test per latency quantile (`....register.p50`) with the value in seconds;
//! - for a lab guest, `pinstorm.boot`: how the guest went, its console events (panics,
//!   oopses, warnings, with line numbers) as the log excerpt.
//!
//! Ids are `pinstorm:` and what identifies the object (a test: its run id and path), so
//! exporting the same results again gives the same ids and KCIDB merges instead of
//! duplicating. No string carries a NUL and no value is null (the schema forbids both; a
//! result file is not trusted to be free of them), and excerpts are cut to the schema's
//! 16 KiB.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::catalog::LoadedRun;
use crate::metrics;
use crate::oracle::OracleKind;
use crate::schema::RunResult;
use crate::verdict::{self, FactClass, Verdict};

/// The CI system's name in KCIDB (`origin`, and the prefix of every id).
pub const ORIGIN: &str = "pinstorm";
/// The I/O schema version written (kcidb-io's `V5_3`).
pub const VERSION: (u32, u32) = (5, 3);
/// The schema's bound on `log_excerpt`.
pub const EXCERPT_MAX: usize = 16384;
/// The latency quantiles exported as tests.
pub const QUANTILES: [&str; 2] = ["p50", "p99"];

/// A path component: the schema allows `[a-zA-Z0-9_-]`; anything else becomes `_`.
fn component(s: &str) -> String {
    let c: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if c.is_empty() {
        "_".into()
    } else {
        c
    }
}

/// `pinstorm.` and the parts, each made a valid component.
pub fn test_path<S: AsRef<str>>(parts: &[S]) -> String {
    std::iter::once(ORIGIN.to_string())
        .chain(parts.iter().map(|p| component(p.as_ref())))
        .collect::<Vec<_>>()
        .join(".")
}

fn id(rest: &str) -> String {
    format!("{ORIGIN}:{rest}")
}

/// At most [`EXCERPT_MAX`] characters, cut at a character boundary and saying so.
fn excerpt(s: &str) -> String {
    if s.chars().count() <= EXCERPT_MAX {
        return s.to_string();
    }
    const CUT: &str = "\n[... cut to the KCIDB excerpt limit]";
    let keep: String = s.chars().take(EXCERPT_MAX - CUT.len()).collect();
    keep + CUT
}

fn fnv16(s: &str) -> String {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{h:016x}")
}

/// The commit a `--build` tree was at (`git:HASH` in the lab's kernel source).
fn git_commit(r: &RunResult) -> Option<&str> {
    r.lab
        .as_ref()?
        .kernel_source
        .iter()
        .filter_map(|s| s.strip_prefix("git:"))
        .find(|h| h.len() == 40 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

fn checkout_key(r: &RunResult) -> String {
    let mut k = r.environment.kernel_release.clone();
    if let Some(l) = r.label.as_deref().filter(|l| !l.is_empty()) {
        k.push('@');
        k.push_str(l);
    }
    if let Some(g) = git_commit(r) {
        k.push('#');
        k.push_str(g);
    }
    k
}

/// What tells two builds of one release apart: the lab's kernel source (a Debian package
/// and version, a tree), else `uname -v`.
fn build_key(r: &RunResult) -> String {
    let what = match &r.lab {
        Some(l) if !l.kernel_source.is_empty() => l.kernel_source.join(" "),
        _ => r.environment.kernel_version.clone(),
    };
    format!("{}/{}", checkout_key(r), fnv16(&what))
}

fn checkout(r: &RunResult) -> Value {
    let mut c = json!({
        "id": id(&checkout_key(r)),
        "origin": ORIGIN,
        "comment": format!(
            "Linux {}{}",
            r.environment.kernel_release,
            r.label.as_deref().map(|l| format!(" ({l})")).unwrap_or_default()
        ),
        "start_time": r.started,
        "valid": true,
        "misc": {
            "kernel_release": r.environment.kernel_release,
            "label": r.label,
        },
    });
    if let Some(g) = git_commit(r) {
        c["git_commit_hash"] = json!(g.to_ascii_lowercase());
    }
    c
}

fn build(r: &RunResult) -> Value {
    let mut b = json!({
        "id": id(&build_key(r)),
        "checkout_id": id(&checkout_key(r)),
        "origin": ORIGIN,
        "comment": format!("Linux {} {}", r.environment.kernel_release, r.environment.kernel_version),
        "start_time": r.started,
        "status": "PASS",
        "misc": {
            "kernel_release": r.environment.kernel_release,
            "kernel_version": r.environment.kernel_version,
            "kernel_source": r.lab.as_ref().map(|l| l.kernel_source.clone()).unwrap_or_default(),
            "label": r.label,
        },
    });
    let arch = &r.environment.machine;
    if !arch.is_empty()
        && arch
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        b["architecture"] = json!(arch);
    }
    b
}

/// The tests of one run.
fn tests(r: &RunResult, out: &mut Vec<Value>) {
    let build_id = id(&build_key(r));
    let env = json!({
        "comment": match &r.lab {
            Some(l) => format!("pinstorm lab guest ({}) of {}", l.accel, r.environment.hostname),
            None => format!("host {}", r.environment.hostname),
        },
        "misc": {
            "hostname": r.environment.hostname,
            "cpu_model": r.environment.cpu_model,
            "cpus": r.environment.cpus,
            "virtualized": r.environment.virtualized,
        },
    });
    let mut used = BTreeSet::new();
    let mut push = |path: String, mut t: Map<String, Value>| {
        // Two facts of one run on one path (not expected, but a result is only data):
        // numbered, so that ids stay unique and stable.
        let mut p = path.clone();
        let mut n = 1;
        while !used.insert(p.clone()) {
            n += 1;
            p = format!("{path}_{n}");
        }
        t.insert("id".into(), json!(id(&format!("{}:{p}", r.run_id))));
        t.insert("build_id".into(), json!(build_id));
        t.insert("origin".into(), json!(ORIGIN));
        t.insert("path".into(), json!(p));
        t.insert("start_time".into(), json!(r.started));
        t.insert("environment".into(), env.clone());
        out.push(Value::Object(t));
    };
    let j = verdict::judge(r);
    for f in &j.facts {
        let path = match f.class {
            FactClass::Run => test_path(&["run"]),
            c => test_path(
                &std::iter::once(c.name().to_string())
                    .chain(f.path.iter().cloned())
                    .collect::<Vec<_>>(),
            ),
        };
        let why = f.why.as_deref().unwrap_or("no reason recorded");
        let (status, comment) = match f.verdict {
            Verdict::AsExpected => ("PASS", format!("measured {}", f.measured)),
            Verdict::NoExpectation => ("DONE", format!("measured {} (no expectation)", f.measured)),
            Verdict::Differs => (
                "FAIL",
                format!(
                    "measured {}, expected {} ({why})",
                    f.measured,
                    f.expected.as_deref().unwrap_or("?")
                ),
            ),
            Verdict::NotRun => ("SKIP", format!("notrun: {why}")),
            Verdict::Error => ("ERROR", why.to_string()),
        };
        let mut t = Map::new();
        t.insert("status".into(), json!(status));
        t.insert("comment".into(), json!(comment));
        let log = match (f.class, f.verdict) {
            (FactClass::Run, Verdict::Error) => Some(
                std::iter::once(why.to_string())
                    .chain(r.notes.iter().cloned())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            _ => f.note.clone(),
        };
        if let Some(l) = log {
            t.insert("log_excerpt".into(), json!(excerpt(&l)));
        }
        if f.class == FactClass::Storm && f.verdict != Verdict::NotRun {
            if let (Some(k), Ok(n)) = (
                f.path.last().and_then(|o| OracleKind::parse(o)),
                f.measured.parse::<u64>(),
            ) {
                t.insert("number".into(), json!({"value": n, "unit": k.unit()}));
            }
        }
        t.insert(
            "misc".into(),
            json!({
                "run_id": r.run_id,
                "fact": f.name,
                "verdict": f.verdict.as_str(),
                "measured": f.measured,
                "expected": f.expected,
                "why": f.why,
                "note": f.note,
            }),
        );
        push(path, t);
    }
    for l in metrics::latencies(r) {
        let st = l.hist.stats();
        for q in QUANTILES {
            let ns = match q {
                "p50" => st.p50_ns,
                _ => st.p99_ns,
            };
            let mut t = Map::new();
            t.insert("status".into(), json!("DONE"));
            t.insert("comment".into(), json!(format!("{} {q}", l.key)));
            t.insert(
                "number".into(),
                json!({"value": ns as f64 / 1e9, "unit": "s", "prefix": "metric"}),
            );
            t.insert(
                "misc".into(),
                json!({"run_id": r.run_id, "kind": l.kind, "samples": st.count, "value_ns": ns}),
            );
            let mut parts = l.path.clone();
            parts.push(q.to_string());
            push(test_path(&parts), t);
        }
    }
    if let Some(lab) = &r.lab {
        let warned = lab.console_events.iter().any(|e| e.is_warning());
        let status = match lab.status.as_str() {
            "ok" if warned => "FAIL",
            "ok" => "PASS",
            "panic" | "oops" => "FAIL",
            "interrupted" => "MISS",
            _ => "ERROR",
        };
        let mut log: Vec<String> = lab
            .console_events
            .iter()
            .map(|e| format!("console.log:{}: [{}] {}", e.line, e.kind, e.text))
            .collect();
        if let Some(reason) = &lab.reason {
            log.push(reason.clone());
        }
        let mut t = Map::new();
        t.insert("status".into(), json!(status));
        t.insert(
            "comment".into(),
            json!(format!(
                "lab guest {}: {}",
                lab.status,
                lab.reason
                    .as_deref()
                    .and_then(|r| r.lines().next())
                    .unwrap_or(if warned {
                        "the console shows kernel warnings"
                    } else {
                        "booted and returned its result"
                    })
            )),
        );
        if !log.is_empty() {
            t.insert("log_excerpt".into(), json!(excerpt(&log.join("\n"))));
        }
        if lab.wall_seconds.is_finite() && lab.wall_seconds >= 0.0 {
            t.insert("duration".into(), json!(lab.wall_seconds));
        }
        t.insert(
            "misc".into(),
            json!({
                "run_id": r.run_id,
                "kernel_spec": lab.kernel_spec,
                "accel": lab.accel,
                "console_log": lab.console_log,
                "console_events": lab.console_events.len(),
            }),
        );
        push(test_path(&["boot"]), t);
    }
}

/// Replace NULs in every string (keys included) and leave out nulls: the schema forbids
/// both everywhere.
fn without_nul(v: Value) -> Value {
    let clean = |s: String| {
        if s.contains('\0') {
            s.replace('\0', " ")
        } else {
            s
        }
    };
    match v {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(a) => Value::Array(
            a.into_iter()
                .filter(|v| !v.is_null())
                .map(without_nul)
                .collect(),
        ),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (clean(k), without_nul(v)))
                .collect(),
        ),
        v => v,
    }
}

/// The KCIDB document of `runs`: checkouts and builds once each, every run's tests.
pub fn document(runs: &[&LoadedRun]) -> Value {
    let (mut checkouts, mut builds, mut tests_out) = (Vec::new(), Vec::new(), Vec::new());
    let (mut seen_c, mut seen_b) = (BTreeSet::new(), BTreeSet::new());
    for run in runs {
        let r = &run.result;
        if seen_c.insert(checkout_key(r)) {
            checkouts.push(checkout(r));
        }
        if seen_b.insert(build_key(r)) {
            builds.push(build(r));
        }
        tests(r, &mut tests_out);
    }
    without_nul(json!({
        "version": {"major": VERSION.0, "minor": VERSION.1},
        "checkouts": checkouts,
        "builds": builds,
        "tests": tests_out,
    }))
}

pub fn render(runs: &[&LoadedRun]) -> String {
    let mut s = serde_json::to_string_pretty(&document(runs)).expect("a JSON value serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests;
