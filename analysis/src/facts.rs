//! What `compare`, `plot` and `report` read of a run, kept in place of the whole result:
//! its identity, its latency histograms (each decoded once, as it is loaded, into its
//! sparse form), capability cells, oracle and verdict counts, disturbance records, storm
//! timelines, environment and what did not run.
//!
//! Why: a full result is ~0.2-0.3 MB on disk and several times that parsed; a nightly fleet
//! compares and reports on thousands of them. What analysis reads of one is a few tens of
//! KiB, so the catalog keeps this and drops the result as soon as a file is read. Nothing
//! here reads files; exporters, which need every field, load whole results
//! ([`crate::catalog::Catalog::load`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::catalog::{Indexed, RunRef};
use crate::disturbance::{Disturbance, NoiseRecord, RunDisturbance};
use crate::hist::Sparse;
use crate::metrics::{self, Cell};
use crate::oracle::OracleKind;
use crate::schema::RunResult;
use crate::summary::human_size;
use crate::verdict::{self, Verdict};

/// One latency distribution of a run, as comparisons and charts pool it.
#[derive(Clone, Debug)]
pub struct RunLatency {
    /// As [`metrics::LatencyMetric::kind`].
    pub kind: &'static str,
    /// As [`metrics::LatencyMetric::key`].
    pub key: String,
    pub hist: Sparse,
}

/// One storm cell's timeline: (second, registrations, layout operations).
pub type Timeline = Vec<(u64, u64, u64)>;

/// What analysis reads of one run.
#[derive(Clone, Debug)]
pub struct RunFacts {
    pub path: PathBuf,
    pub reference: RunRef,
    /// Every latency distribution with samples, as [`metrics::latencies`] lists them.
    pub latencies: Vec<RunLatency>,
    /// The capability cells ([`metrics::cells`]).
    pub cells: Vec<Cell>,
    /// Per oracle of [`OracleKind::VIOLATIONS`], in that order: its count and whether it
    /// ran.
    pub oracles: Vec<(u64, bool)>,
    /// Facts that differ from the expectations, and facts compared with one
    /// ([`metrics::differs`], [`metrics::judged`]).
    pub differs: u64,
    pub judged: u64,
    pub disturbance: Option<RunDisturbance>,
    /// The lab host's disturbance, when the run was a lab guest.
    pub lab_host_disturbance: Option<Disturbance>,
    /// Per storm cell that ran (`ok`), in the result's order: the cell and its timeline.
    pub timelines: Vec<(String, Timeline)>,
    /// The run's environment as the report shows it, row by row.
    pub environment: Vec<(&'static str, String)>,
    /// Everything that did not run, and why ([`metrics::notrun`]).
    pub notrun: Vec<(String, String)>,
}

impl RunFacts {
    /// The facts of the result read from `path`. Every stored histogram is decoded here,
    /// once: one that does not decode makes the whole file suspect, and it is refused
    /// naming the first such histogram, as [`crate::catalog::parse_result`] does.
    pub fn of(path: &Path, r: &RunResult) -> Result<RunFacts> {
        let mut decoded: HashMap<&str, Sparse> = HashMap::new();
        for (at, h) in r.histograms() {
            if !decoded.contains_key(h) {
                let s = Sparse::decode(h).with_context(|| format!("{at} does not decode"))?;
                decoded.insert(h, s);
            }
        }
        let mut latencies: Vec<RunLatency> =
            metrics::latencies_with(r, |h| decoded.get(h).filter(|s| !s.is_empty()).cloned())
                .into_iter()
                .map(|l| RunLatency {
                    kind: l.kind,
                    key: l.key,
                    hist: l.hist,
                })
                .collect();
        // Kept for the whole command, a thousand times over: no spare capacity.
        latencies.shrink_to_fit();
        let judgement = verdict::judge(r);
        Ok(RunFacts {
            path: path.to_path_buf(),
            reference: RunRef {
                run_id: r.run_id.clone(),
                path: path.display().to_string(),
                kernel_release: r.environment.kernel_release.clone(),
                label: r.label.clone(),
                scenario: r.scenario.name.clone(),
                host: r.environment.hostname.clone(),
                started: r.started.clone(),
                complete: r.complete,
                virtualized: r.environment.virtualized.clone(),
            },
            latencies,
            cells: metrics::cells(r),
            oracles: OracleKind::VIOLATIONS
                .iter()
                .map(|k| (r.oracle_count(*k), r.oracle_ran(*k)))
                .collect(),
            differs: judgement.count(Verdict::Differs) as u64,
            judged: (judgement.count(Verdict::AsExpected) + judgement.count(Verdict::Differs))
                as u64,
            disturbance: r.disturbance.clone(),
            lab_host_disturbance: r.lab.as_ref().and_then(|l| l.host_disturbance.clone()),
            timelines: r
                .storms
                .iter()
                .filter(|s| s.outcome == "ok")
                .map(|s| {
                    let points = s
                        .timeline
                        .iter()
                        .map(|p| (p.second, p.registrations, p.layout_ops))
                        .collect();
                    (s.cell(), points)
                })
                .collect(),
            environment: environment(path, r),
            notrun: metrics::notrun(r),
        })
    }

    /// An oracle's count in this run (0 for one that is not a violation oracle).
    pub fn oracle_count(&self, k: OracleKind) -> u64 {
        self.oracle(k).map_or(0, |o| o.0)
    }

    /// Whether an oracle judged anything in this run.
    pub fn oracle_ran(&self, k: OracleKind) -> bool {
        self.oracle(k).is_some_and(|o| o.1)
    }

    fn oracle(&self, k: OracleKind) -> Option<(u64, bool)> {
        let i = OracleKind::VIOLATIONS.iter().position(|v| *v == k)?;
        self.oracles.get(i).copied()
    }

    /// Violations by oracle name, every violation oracle present, as
    /// [`metrics::violations`] gives them.
    pub fn violations(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        OracleKind::VIOLATIONS
            .iter()
            .zip(&self.oracles)
            .map(|(k, o)| (k.name(), o.0))
    }
}

impl<'a> From<&'a RunFacts> for NoiseRecord<'a> {
    fn from(r: &'a RunFacts) -> NoiseRecord<'a> {
        NoiseRecord {
            run_id: &r.reference.run_id,
            disturbance: r.disturbance.as_ref(),
            lab_host: r.lab_host_disturbance.as_ref(),
        }
    }
}

impl Indexed for RunFacts {
    fn run_id(&self) -> &str {
        &self.reference.run_id
    }

    fn started(&self) -> &str {
        &self.reference.started
    }

    fn kernel(&self) -> &str {
        &self.reference.kernel_release
    }

    fn label(&self) -> Option<&str> {
        self.reference.label.as_deref()
    }

    fn host(&self) -> &str {
        &self.reference.host
    }

    fn scenario(&self) -> &str {
        &self.reference.scenario
    }
}

/// The run's environment as the report lists it: kernel, host, CPU, memory, memlock,
/// capabilities, sysctls, command line, notes.
fn environment(path: &Path, res: &RunResult) -> Vec<(&'static str, String)> {
    let e = &res.environment;
    let mem = |b: Option<u64>| b.map_or("unlimited".to_string(), human_size);
    let mut kv: Vec<(&'static str, String)> = vec![
        ("result file", path.display().to_string()),
        ("run id", res.run_id.clone()),
        ("label", res.label.clone().unwrap_or_default()),
        (
            "scenario",
            format!("{} ({})", res.scenario.name, res.scenario.origin),
        ),
        (
            "started / finished",
            format!(
                "{} / {}",
                res.started,
                res.finished.as_deref().unwrap_or("-")
            ),
        ),
        (
            "complete",
            match (&res.interrupted, &res.error) {
                (Some(s), _) => format!("no: interrupted by {s}"),
                (_, Some(err)) => format!("no: {err}"),
                _ => res.complete.to_string(),
            },
        ),
        (
            "kernel",
            format!("{} {}", e.kernel_release, e.kernel_version),
        ),
        ("host", format!("{} ({})", e.hostname, e.machine)),
        (
            "virtualized",
            e.virtualized.clone().unwrap_or_else(|| "no".into()),
        ),
        ("cpu", format!("{} x {}", e.cpus, e.cpu_model)),
        ("memory", human_size(e.mem_total_bytes)),
        (
            "memlock soft/hard",
            format!(
                "{} / {}",
                mem(e.memlock_soft_bytes),
                mem(e.memlock_hard_bytes)
            ),
        ),
        (
            "CAP_IPC_LOCK, euid",
            format!("{}, {}", e.cap_ipc_lock, e.euid),
        ),
        (
            "io_uring_disabled",
            e.io_uring_disabled.clone().unwrap_or_default(),
        ),
        ("THP", e.thp_enabled.clone().unwrap_or_default()),
        (
            "huge pages",
            format!(
                "{} total, {} free, {} each",
                e.hugepages_total,
                e.hugepages_free,
                human_size(e.hugepage_size_bytes)
            ),
        ),
        ("cmdline", e.cmdline.clone()),
        ("command", res.command.join(" ")),
        ("tool", format!("{} {}", res.tool.name, res.tool.version)),
    ];
    for (k, v) in &e.sysctls {
        kv.push(("sysctl", format!("{k} = {v}")));
    }
    for n in &res.notes {
        kv.push(("note", n.clone()));
    }
    if let Some(lab) = &res.lab {
        kv.extend(lab_rows(lab));
    }
    kv
}

/// How a lab guest ran: the kernel and where it came from, QEMU, what the guest set up and
/// what its console said.
pub(crate) fn lab_rows(lab: &crate::schema::LabRecord) -> Vec<(&'static str, String)> {
    let mut kv = vec![
        (
            "lab kernel",
            format!("{} ({})", lab.kernel_spec, lab.kernel_source.join(", ")),
        ),
        (
            "lab status",
            match &lab.reason {
                Some(r) => format!("{}: {r}", lab.status),
                None => lab.status.clone(),
            },
        ),
        (
            "lab accel",
            format!(
                "{} ({}), {:.1} s in all",
                lab.accel, lab.accel_reason, lab.wall_seconds
            ),
        ),
        (
            "lab QEMU",
            lab.qemu_command
                .clone()
                .unwrap_or_else(|| lab.vng_command.join(" ")),
        ),
    ];
    if let Some(t) = &lab.timings {
        kv.push(("lab phases", t.describe()));
    }
    for f in &lab.guest {
        kv.push((
            "lab guest set-up",
            format!("{} {}: {}", f.name, f.outcome, f.detail),
        ));
    }
    for k in &lab.kselftests {
        kv.push(("lab kselftest", k.describe()));
    }
    if lab.console_events.is_empty() {
        kv.push((
            "lab console",
            format!("no kernel warnings ({})", lab.console_log),
        ));
    }
    for e in &lab.console_events {
        kv.push((
            "lab console",
            format!("{} at line {}: {}", e.kind, e.line, e.text),
        ));
    }
    kv
}

#[cfg(test)]
mod tests;
