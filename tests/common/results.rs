//! Helpers for tests on real results: make a real run, read and write result files, plant
//! a regression or a machine's disturbance in a copy, compare as JSON.

use std::path::{Path, PathBuf};

use pinstorm_analysis::hist::Latency;
use pinstorm_analysis::schema::{Disturbance, RunResult};

use super::{json, stderr, Sandbox};

/// One real run of a preset (or scenario file) into `sb`'s results; returns its result file.
pub fn real_run(sb: &Sandbox, args: &[&str]) -> PathBuf {
    let before = sb.results();
    let o = sb.run(args);
    assert!(
        o.status.success() || o.status.code() == Some(3),
        "pinstorm {args:?}: {}",
        stderr(&o)
    );
    let after = sb.results();
    let new: Vec<_> = after.into_iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(new.len(), 1, "one new result expected: {new:?}");
    new[0].clone()
}

pub fn read(p: &Path) -> RunResult {
    RunResult::from_json(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Write `r` as `<dir>/<kernel>/<run_id>/result.json` (as pinstorm lays results out).
pub fn write(dir: &Path, r: &RunResult) -> PathBuf {
    let d = dir.join(&r.environment.kernel_release).join(&r.run_id);
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("result.json");
    std::fs::write(&p, serde_json::to_string_pretty(r).unwrap()).unwrap();
    p
}

/// The planted regression: every benchmark histogram of a real result with each value
/// doubled, its statistics recomputed from the scaled histogram.
pub fn planted_2x(r: &RunResult) -> RunResult {
    let mut c = r.clone();
    c.run_id = format!("{}-planted-2x", r.run_id);
    for row in c.bench.iter_mut() {
        let Some(h) = row.histogram.as_deref() else {
            continue;
        };
        let orig = Latency::decode(h).unwrap();
        let mut scaled = Latency::new();
        for v in orig.histogram().iter_recorded() {
            for _ in 0..v.count_at_value() {
                scaled.record(v.value_iterated_to() * 2);
            }
        }
        row.stats = Some(scaled.stats());
        row.histogram = Some(scaled.encode());
    }
    c
}

pub fn compare_json(
    sb: &Sandbox,
    base: &Path,
    cand: &Path,
    gates: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    compare_json_with(sb, base, cand, gates, &[])
}

/// `compare_json` with more flags (`--judge-disturbed`).
pub fn compare_json_with(
    sb: &Sandbox,
    base: &Path,
    cand: &Path,
    gates: &[&str],
    flags: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let mut c = sb.cmd();
    c.args(["--format", "json", "compare"]).arg(base).arg(cand);
    for g in gates {
        c.args(["--fail-on", g]);
    }
    c.args(flags);
    let o = c.output().unwrap();
    (o.status.code(), json(&o), stderr(&o))
}

/// A disturbance record of `wall_s` seconds with other processes at `other_pct` of a CPU,
/// judged as a run would judge it.
pub fn planted_disturbance(other_pct: f64) -> Disturbance {
    Disturbance {
        wall_s: 10.0,
        cpus: 2,
        other_cpu_pct: other_pct,
        resolution_pct: 0.4,
        ..Disturbance::default()
    }
    .judged()
}

/// `r` as if each of its jobs (and the whole run) had seen other processes at `other_pct`.
pub fn with_disturbance(r: &RunResult, other_pct: f64) -> RunResult {
    let mut c = r.clone();
    let d = c
        .disturbance
        .as_mut()
        .expect("a new run records its disturbance");
    d.run = planted_disturbance(other_pct);
    for j in &mut d.jobs {
        j.measured = planted_disturbance(other_pct);
    }
    c
}
