//! Comparing two sets of runs (a baseline and a candidate: two kernels, a patch set and its
//! base, tonight and last night), the way mmtests' compare-kernels and LKP's ncompare do:
//! each latency metric side by side with its change, a confidence interval and a
//! significance mark; the capability cells whose outcome changed; violation counts; and one
//! verdict line. Rendering as text, Markdown and JSON is in [`crate::render`].
//!
//! Significance, and why it needs a noise floor: a run's histogram holds thousands of
//! samples, so the interval of its median is narrow, far narrower than the difference
//! between two runs of the same configuration (on a busy machine, medians move by up to
//! 1.7x run to run). A change is therefore called significant only when
//!
//! - its confidence interval (Welch's t-test on the per-run values, in log space, when both
//!   sides have at least two runs, which measures run-to-run noise; else a bootstrap of the
//!   quantile from each side's histogram, which measures only sampling noise within a run)
//! - lies entirely beyond a noise floor: `min_effect_pct` (5%) always, and
//!   `single_run_noise_pct` (50%) when a side has a single run, since run-to-run noise
//!   cannot be measured from one run. The floor is symmetric in ratio: +50% slower,
//!   1/1.5 - 1 = -33% faster.
//! - Tail quantiles (above p90) with a single run on a side are shown but never called
//!   significant: one run's tail is a handful of disturbed samples.

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::catalog::{Indexed, RunFacts, RunRef};
use crate::disturbance::{self, SideNoise};
use crate::hist::Sparse;
use crate::metrics;
use crate::oracle::OracleKind;
use crate::stats::{interval, welch_interval, Ranked};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareOptions {
    /// Of the confidence intervals (0.95).
    pub confidence: f64,
    /// Smallest change, in percent, ever called significant.
    pub min_effect_pct: f64,
    /// Smallest change called significant when a side has a single run.
    pub single_run_noise_pct: f64,
    /// Bootstrap replicates.
    pub iterations: usize,
    /// Quantiles compared, as `p50`, `p90`, `p99`, `p999`.
    pub stats: Vec<String>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            confidence: 0.95,
            min_effect_pct: 5.0,
            single_run_noise_pct: 50.0,
            iterations: 2000,
            stats: vec!["p50".into(), "p99".into()],
        }
    }
}

/// `p50` -> 0.5, `p999` -> 0.999.
pub fn stat_quantile(stat: &str) -> Option<f64> {
    match stat {
        "p50" => Some(0.5),
        "p90" => Some(0.9),
        "p99" => Some(0.99),
        "p999" => Some(0.999),
        _ => None,
    }
}

pub const STATS: &str = "p50, p90, p99, p999";

/// One side of a comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Side {
    /// What the user named (a path or a selector).
    pub name: String,
    pub kernels: Vec<String>,
    pub labels: Vec<String>,
    pub runs: Vec<RunRef>,
    /// How disturbed the machine was while each run measured.
    #[serde(default)]
    pub noise: SideNoise,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SideStat {
    pub runs: usize,
    /// Samples in all runs together.
    pub samples: u64,
    /// The quantile of all samples of the side together, in ns.
    pub value_ns: f64,
    /// The quantile of each run.
    pub per_run_ns: Vec<f64>,
}

/// One latency metric on both sides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyChange {
    pub kind: String,
    pub key: String,
    pub stat: String,
    pub base: SideStat,
    pub cand: SideStat,
    /// `(cand / base - 1) * 100`.
    pub change_pct: f64,
    pub ci_low_pct: f64,
    pub ci_high_pct: f64,
    /// `welch` (across runs) or `bootstrap` (within runs).
    pub method: String,
    /// The smallest change called significant for this metric.
    pub noise_floor_pct: f64,
    pub significant: bool,
    /// `slower`, `faster` (both significant) or `~` (no significant change).
    pub mark: String,
    /// Runs that measured this metric while the machine was disturbed, with the side and
    /// why (`cand run ID: bench job: other processes used 61% of a CPU ...`): latency gates
    /// do not judge the metric unless asked to (see [`crate::disturbance`]).
    #[serde(default)]
    pub disturbed: Vec<String>,
    /// Runs that measured it and recorded no disturbance (older results): unknown.
    #[serde(default)]
    pub noise_unknown: Vec<String>,
}

/// A capability cell whose outcome is not the same on both sides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutcomeChange {
    pub cell: String,
    pub fs: String,
    pub base: String,
    pub cand: String,
    /// `newly refused`, `newly allowed`, `refusal changed`, `device io changed`,
    /// `notrun on one side`, `inconsistent`, `only in base`, `only in candidate`.
    pub change: String,
    pub reason: Option<String>,
}

impl OutcomeChange {
    /// Whether this is the kernel behaving differently (as opposed to a cell that could not
    /// run on one side, or that exists on one side only).
    pub fn is_behaviour(&self) -> bool {
        matches!(
            self.change.as_str(),
            "newly refused"
                | "newly allowed"
                | "refusal changed"
                | "device io changed"
                | "inconsistent"
        )
    }
}

/// A count on both sides: the total over the side's runs and the mean per run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CountChange {
    pub what: String,
    pub base_total: u64,
    pub cand_total: u64,
    pub base_per_run: f64,
    pub cand_per_run: f64,
    /// Runs of each side that measured it (an oracle that ran, a fact judged against an
    /// expectation): a gate on a count nobody measured judged nothing.
    #[serde(default)]
    pub base_runs_measured: usize,
    #[serde(default)]
    pub cand_runs_measured: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// `REGRESSION`, `CHANGED`, `IMPROVED` or `NO SIGNIFICANT CHANGE`.
    pub word: String,
    pub line: String,
    pub slower: usize,
    pub faster: usize,
    pub compared: usize,
    pub newly_refused: usize,
    pub newly_allowed: usize,
    pub other_outcome_changes: usize,
    /// Oracles with violations in the candidate and none in the baseline.
    pub new_violation_kinds: Vec<String>,
    pub gone_violation_kinds: Vec<String>,
    /// Latency metrics measured while a side's machine was disturbed.
    #[serde(default)]
    pub disturbed: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub base: Side,
    pub cand: Side,
    pub options: CompareOptions,
    pub latency: Vec<LatencyChange>,
    /// Latency metrics measured on one side only (`kind: key`).
    pub only_in_base: Vec<String>,
    pub only_in_cand: Vec<String>,
    pub outcomes: Vec<OutcomeChange>,
    /// Capability cells measured (not notrun) on both sides.
    #[serde(default)]
    pub cells_compared: usize,
    pub violations: Vec<CountChange>,
    pub differs: CountChange,
    pub verdict: Verdict,
    /// Filled by [`crate::gate::apply`].
    #[serde(default)]
    pub gates: Vec<crate::gated::GateResult>,
    /// What the gates amount to, the exit status of `pinstorm compare`; filled by
    /// [`crate::gate::apply`].
    #[serde(default)]
    pub gate_status: crate::gated::GateStatus,
}

fn side(name: &str, runs: &[&RunFacts]) -> Side {
    let set = |f: &dyn Fn(&RunFacts) -> Option<String>| -> Vec<String> {
        runs.iter()
            .filter_map(|r| f(r))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    Side {
        name: name.to_string(),
        kernels: set(&|r| Some(r.kernel().to_string())),
        labels: set(&|r| r.label().map(str::to_string)),
        runs: runs.iter().map(|r| r.reference.clone()).collect(),
        noise: SideNoise::of(runs.iter().copied()),
    }
}

fn seed_of(s: &str) -> u64 {
    // FNV-1a: a fixed seed per metric, so the same inputs give the same intervals.
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One metric on one side: every run's samples merged, and each run's quantiles (in the
/// order of `CompareOptions::stats`). Runs' histograms were decoded once, sparse, when they
/// were loaded; here they are only summed.
#[derive(Clone, Debug, Default)]
struct Pooled {
    merged: Sparse,
    /// (run index, quantiles), by run index.
    runs: Vec<(usize, Vec<f64>)>,
}

impl Pooled {
    fn of(hists: &[(usize, &Sparse)], qs: &[f64]) -> Pooled {
        Pooled {
            merged: Sparse::sum(hists.iter().map(|h| h.1)),
            runs: hists
                .iter()
                .map(|(i, h)| {
                    (
                        *i,
                        qs.iter().map(|q| h.value_at_quantile(*q) as f64).collect(),
                    )
                })
                .collect(),
        }
    }
}

type PoolMap<'a> = BTreeMap<(&'a str, &'a str), Pooled>;

/// Every latency metric of `runs`, pooled per metric, metrics in parallel.
fn pool<'a>(runs: &[&'a RunFacts], qs: &[f64]) -> PoolMap<'a> {
    let mut by_metric: BTreeMap<(&str, &str), Vec<(usize, &Sparse)>> = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        for l in &r.latencies {
            by_metric
                .entry((l.kind, l.key.as_str()))
                .or_default()
                .push((i, &l.hist));
        }
    }
    let by_metric: Vec<_> = by_metric.into_iter().collect();
    by_metric
        .into_par_iter()
        .map(|(k, hists)| (k, Pooled::of(&hists, qs)))
        .collect()
}

fn latency_change(
    kind: &str,
    key: &str,
    (si, stat): (usize, &str),
    base: &Pooled,
    cand: &Pooled,
    o: &CompareOptions,
) -> LatencyChange {
    let q = stat_quantile(stat).expect("stats are checked when options are made");
    let side = |p: &Pooled| {
        let m = Ranked::from_sparse(&p.merged);
        (
            SideStat {
                runs: p.runs.len(),
                samples: m.len(),
                value_ns: m.quantile(q) as f64,
                per_run_ns: p.runs.iter().map(|r| r.1[si]).collect(),
            },
            m,
        )
    };
    let (bs, br) = side(base);
    let (cs, cr) = side(cand);
    let change_pct = (cs.value_ns / bs.value_ns - 1.0) * 100.0;
    let (method, lo, hi, floor) = match welch_interval(
        &bs.per_run_ns.iter().map(|v| v.ln()).collect::<Vec<_>>(),
        &cs.per_run_ns.iter().map(|v| v.ln()).collect::<Vec<_>>(),
        o.confidence,
    ) {
        Some((_, lo, hi)) => (
            "welch",
            (lo.exp() - 1.0) * 100.0,
            (hi.exp() - 1.0) * 100.0,
            o.min_effect_pct,
        ),
        None => {
            let seed = seed_of(&format!("{kind} {key} {stat}"));
            let db = br.bootstrap_quantile(q, o.iterations, seed);
            let dc = cr.bootstrap_quantile(q, o.iterations, seed ^ 0x5555_5555);
            let ratios: Vec<f64> = db
                .iter()
                .zip(&dc)
                .map(|(b, c)| (c / b - 1.0) * 100.0)
                .collect();
            let (lo, hi) = interval(ratios, o.confidence);
            (
                "bootstrap",
                lo,
                hi,
                o.min_effect_pct.max(o.single_run_noise_pct),
            )
        }
    };
    // Significant only when the whole interval lies beyond the noise floor, symmetric in
    // ratio terms: +50% slower or 1/1.5 - 1 = -33% faster. An interval that merely excludes
    // zero is not enough: a p99 from one run of 300 samples can move +800% [+26%, +4500%]
    // on a rerun.
    //
    // Tail quantiles (above p90) from a single run per side are not judged at all: a p99 of
    // a few hundred samples depends on a handful of interrupted cycles, and two real runs of
    // the same configuration on this project's CI machine differed 2.5x there (4K anon p99
    // 1.18 us vs 2.94 us, bootstrap interval [+83%, +202%]). They are shown, marked `~`;
    // judging them needs 2+ runs per side (Welch across runs).
    let tail_unjudged = method == "bootstrap" && q > 0.9;
    let method = if tail_unjudged {
        "bootstrap; tail of one run per side, not judged"
    } else {
        method
    };
    let faster_floor = (1.0 / (1.0 + floor / 100.0) - 1.0) * 100.0;
    let significant = !tail_unjudged && (lo >= floor || hi <= faster_floor);
    let mark = match (significant, change_pct > 0.0) {
        (true, true) => "slower",
        (true, false) => "faster",
        _ => "~",
    };
    LatencyChange {
        kind: kind.to_string(),
        key: key.to_string(),
        stat: stat.to_string(),
        base: bs,
        cand: cs,
        change_pct,
        ci_low_pct: lo,
        ci_high_pct: hi,
        method: method.to_string(),
        noise_floor_pct: floor,
        significant,
        mark: mark.to_string(),
        disturbed: Vec::new(),
        noise_unknown: Vec::new(),
    }
}

/// Outcomes of a cell across a side's runs: `ok`, `EFAULT`, or `ok|EFAULT` when the runs
/// disagree.
fn outcome_set(cells: &[&metrics::Cell], f: impl Fn(&metrics::Cell) -> String) -> String {
    cells
        .iter()
        .map(|c| f(c))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join("|")
}

fn outcome_changes<'a>(base: &[&'a RunFacts], cand: &[&'a RunFacts]) -> Vec<OutcomeChange> {
    type Cells<'a> = BTreeMap<&'a str, Vec<&'a metrics::Cell>>;
    let collect = |runs: &[&'a RunFacts]| -> Cells<'a> {
        let mut m: Cells = BTreeMap::new();
        for r in runs {
            for c in &r.cells {
                m.entry(c.key.as_str()).or_default().push(c);
            }
        }
        m
    };
    let (b, c) = (collect(base), collect(cand));
    let keys: BTreeSet<&str> = b.keys().chain(c.keys()).copied().collect();
    let mut out = Vec::new();
    for k in keys {
        let (bc, cc): (Vec<&metrics::Cell>, Vec<&metrics::Cell>) = (
            b.get(k).cloned().unwrap_or_default(),
            c.get(k).cloned().unwrap_or_default(),
        );
        let fs = cc
            .first()
            .or(bc.first())
            .map(|c| c.fs.clone())
            .unwrap_or_default();
        let reason = cc
            .iter()
            .chain(&bc)
            .find_map(|c| c.reason.clone().filter(|_| c.outcome != "ok"));
        let (bo, co) = (
            outcome_set(&bc, |c| c.outcome.clone()),
            outcome_set(&cc, |c| c.outcome.clone()),
        );
        let change = if bc.is_empty() {
            "only in candidate"
        } else if cc.is_empty() {
            "only in base"
        } else if bo == co {
            let dio = |cells: &[&metrics::Cell]| {
                outcome_set(cells, |c| c.device_io.clone().unwrap_or_default())
            };
            if bo == "ok" && dio(&bc) != dio(&cc) {
                out.push(OutcomeChange {
                    cell: k.to_string(),
                    fs,
                    base: format!("ok, device io {}", dio(&bc)),
                    cand: format!("ok, device io {}", dio(&cc)),
                    change: "device io changed".into(),
                    reason: None,
                });
            }
            continue;
        } else if bo.contains('|') || co.contains('|') {
            "inconsistent"
        } else if bo == "notrun" || co == "notrun" {
            "notrun on one side"
        } else if bo == "ok" {
            "newly refused"
        } else if co == "ok" {
            "newly allowed"
        } else {
            "refusal changed"
        };
        out.push(OutcomeChange {
            cell: k.to_string(),
            fs,
            base: if bc.is_empty() { "-".into() } else { bo },
            cand: if cc.is_empty() { "-".into() } else { co },
            change: change.into(),
            reason,
        });
    }
    out
}

fn count_change(
    what: &str,
    base: &[&RunFacts],
    cand: &[&RunFacts],
    f: impl Fn(&RunFacts) -> u64,
    measured: impl Fn(&RunFacts) -> bool,
) -> CountChange {
    // Counts come from files: saturate rather than overflow on edited ones.
    let bt = base.iter().fold(0u64, |t, r| t.saturating_add(f(r)));
    let ct = cand.iter().fold(0u64, |t, r| t.saturating_add(f(r)));
    CountChange {
        what: what.to_string(),
        base_total: bt,
        cand_total: ct,
        base_per_run: bt as f64 / base.len().max(1) as f64,
        cand_per_run: ct as f64 / cand.len().max(1) as f64,
        base_runs_measured: base.iter().filter(|r| measured(r)).count(),
        cand_runs_measured: cand.iter().filter(|r| measured(r)).count(),
    }
}

/// Capability cells measured (not notrun) on both sides.
fn cells_in_common<'a>(base: &[&'a RunFacts], cand: &[&'a RunFacts]) -> usize {
    let measured = |runs: &[&'a RunFacts]| -> BTreeSet<&'a str> {
        runs.iter()
            .flat_map(|r| &r.cells)
            .filter(|c| c.outcome != "notrun")
            .map(|c| c.key.as_str())
            .collect()
    };
    measured(base).intersection(&measured(cand)).count()
}

/// Compare `cand` against `base`. Both must be non-empty (the caller says which selector
/// or path matched nothing).
pub fn compare(
    base_name: &str,
    base: &[&RunFacts],
    cand_name: &str,
    cand: &[&RunFacts],
    o: &CompareOptions,
) -> Comparison {
    let qs: Vec<f64> = o.stats.iter().filter_map(|s| stat_quantile(s)).collect();
    let (bp, cp) = rayon::join(|| pool(base, &qs), || pool(cand, &qs));
    let empty = Pooled::default();
    let keys: BTreeSet<&(&str, &str)> = bp.keys().chain(cp.keys()).collect();
    let mut only_in_base = Vec::new();
    let mut only_in_cand = Vec::new();
    let mut jobs = Vec::new();
    for k in keys {
        let (kind, key) = k;
        let (b, c) = (bp.get(k).unwrap_or(&empty), cp.get(k).unwrap_or(&empty));
        match (b.runs.is_empty(), c.runs.is_empty()) {
            (false, true) => only_in_base.push(format!("{kind}: {key}")),
            (true, false) => only_in_cand.push(format!("{kind}: {key}")),
            _ => {
                for (si, stat) in o.stats.iter().enumerate() {
                    jobs.push((kind, key, (si, stat.as_str()), b, c));
                }
            }
        }
    }
    let mut latency: Vec<LatencyChange> = jobs
        .par_iter()
        .map(|(kind, key, stat, b, c)| {
            let mut l = latency_change(kind, key, *stat, b, c, o);
            for (name, runs, p) in [("base", base, b), ("cand", cand, c)] {
                let measured = p.runs.iter().map(|(i, _)| runs[*i]);
                disturbance::metric_noise(
                    kind,
                    name,
                    measured,
                    &mut l.disturbed,
                    &mut l.noise_unknown,
                );
            }
            l
        })
        .collect();
    let order = |k: &str| {
        metrics::LATENCY_KINDS
            .iter()
            .position(|x| *x == k)
            .unwrap_or(99)
    };
    latency
        .sort_by(|a, b| (order(&a.kind), &a.key, &a.stat).cmp(&(order(&b.kind), &b.key, &b.stat)));

    let outcomes = outcome_changes(base, cand);
    let violations: Vec<CountChange> = OracleKind::VIOLATIONS
        .iter()
        .map(|k| {
            count_change(
                k.name(),
                base,
                cand,
                |r| r.oracle_count(*k),
                |r| r.oracle_ran(*k),
            )
        })
        .collect();
    let differs = count_change(
        "differs from expectations",
        base,
        cand,
        |r| r.differs,
        |r| r.judged > 0,
    );
    let cells_compared = cells_in_common(base, cand);

    let slower = latency.iter().filter(|l| l.mark == "slower").count();
    let faster = latency.iter().filter(|l| l.mark == "faster").count();
    let n = |what: &str| outcomes.iter().filter(|c| c.change == what).count();
    let (newly_refused, newly_allowed) = (n("newly refused"), n("newly allowed"));
    let other =
        outcomes.iter().filter(|c| c.is_behaviour()).count() - newly_refused - newly_allowed;
    let new_kinds: Vec<String> = violations
        .iter()
        .filter(|v| v.base_total == 0 && v.cand_total > 0)
        .map(|v| v.what.clone())
        .collect();
    let gone_kinds: Vec<String> = violations
        .iter()
        .filter(|v| v.base_total > 0 && v.cand_total == 0)
        .map(|v| v.what.clone())
        .collect();
    let word = if slower > 0 || !new_kinds.is_empty() {
        "REGRESSION"
    } else if newly_refused + newly_allowed + other > 0 {
        "CHANGED"
    } else if faster > 0 || !gone_kinds.is_empty() {
        "IMPROVED"
    } else {
        "NO SIGNIFICANT CHANGE"
    };
    let mut parts = vec![format!(
        "{slower} of {} latency metrics significantly slower, {faster} faster",
        latency.len()
    )];
    parts.push(format!(
        "pins: {newly_refused} newly refused, {newly_allowed} newly allowed, {other} other outcome changes"
    ));
    let vb = violations
        .iter()
        .fold(0u64, |t, v| t.saturating_add(v.base_total));
    let vc = violations
        .iter()
        .fold(0u64, |t, v| t.saturating_add(v.cand_total));
    let mut v = format!("violations {vb} -> {vc}");
    if !new_kinds.is_empty() {
        v.push_str(&format!(" (new: {})", new_kinds.join(", ")));
    }
    if !gone_kinds.is_empty() {
        v.push_str(&format!(" (gone: {})", gone_kinds.join(", ")));
    }
    parts.push(v);
    let disturbed = latency.iter().filter(|l| !l.disturbed.is_empty()).count();
    if disturbed > 0 {
        parts.push(format!(
            "{disturbed} of {} latency metrics measured on a disturbed machine (not conclusive)",
            latency.len()
        ));
    }
    let verdict = Verdict {
        line: format!("{word}: {}", parts.join("; ")),
        word: word.to_string(),
        slower,
        faster,
        compared: latency.len(),
        newly_refused,
        newly_allowed,
        other_outcome_changes: other,
        new_violation_kinds: new_kinds,
        gone_violation_kinds: gone_kinds,
        disturbed,
    };
    Comparison {
        base: side(base_name, base),
        cand: side(cand_name, cand),
        options: o.clone(),
        latency,
        only_in_base,
        only_in_cand,
        outcomes,
        cells_compared,
        violations,
        differs,
        verdict,
        gates: Vec::new(),
        gate_status: crate::gated::GateStatus::Passed,
    }
}

#[cfg(test)]
mod tests;
