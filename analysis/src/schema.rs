//! The result file schema (`result.json`), version [`SCHEMA_VERSION`]. Documented field by
//! field in docs/result-schema.md; a change that renames or removes a field bumps the version.
//!
//! Plain strings and numbers on purpose: results outlive the code that wrote them and are
//! read by other tools (jq, Python), so nothing here depends on the workload types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::disturbance::{Disturbance, JobDisturbance, RunDisturbance};
use crate::hist::Stats;
use crate::oracle::OracleKind;

mod lab;
mod lease;
pub use crate::oracle::{
    Blocked, BlockedOp, KernelWarnings, LeakedPins, Oracle, OracleFinding, Violation,
};
pub use lab::{
    ConsoleEvent, KselftestCase, KselftestRecord, LabFact, LabPhase, LabRecord, LabTimings,
};
pub use lease::{
    LayoutLeaseProbe, LeaseBreakResult, LeaseBreakTime, LeaseOverhead, LeaseResults,
    LifecycleResult,
};

pub const SCHEMA_NAME: &str = "pinstorm-result";
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub schema: String,
    pub schema_version: u32,
    pub run_id: String,
    /// Free-form name of what was tested (a patch set, a machine), from `--label`.
    pub label: Option<String>,
    /// RFC 3339, UTC.
    pub started: String,
    pub finished: Option<String>,
    /// True only when every job of the scenario ran to its end.
    pub complete: bool,
    /// The signal that stopped the run early (`SIGINT`, `SIGTERM`), if any.
    pub interrupted: Option<String>,
    /// The error that stopped the run early, if any.
    pub error: Option<String>,
    pub command: Vec<String>,
    pub tool: Tool,
    pub scenario: ScenarioRecord,
    pub environment: Environment,
    pub backings: Vec<BackingRecord>,
    pub probe: Vec<ProbeRow>,
    pub bench: Vec<BenchRow>,
    /// Layout storms against held pins, with their oracles.
    #[serde(default)]
    pub storms: Vec<StormResult>,
    /// Lease breaks, lease-check overhead, lifecycle scenarios, layout-lease probe.
    #[serde(default)]
    pub leases: Option<LeaseResults>,
    /// Long-term pins of pages in ZONE_MOVABLE (`[migration]`), one row per pin path, its
    /// facts judged against `[[fact]]` rules of scenario `pin-migration`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migration: Vec<MigrationResult>,
    /// Each storm's registrations and oracle counts judged against the expectations
    /// (`[[expect]]` and `[[oracle]]` rules), one row per storm and fact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storm_verdicts: Vec<StormVerdict>,
    pub expectations: Option<ExpectationsRecord>,
    pub pin_counters: Option<PinCounters>,
    pub hugepages: Option<HugepageRecord>,
    pub notes: Vec<String>,
    /// How disturbed the machine was while the run and each job measured (other processes'
    /// CPU time, steal, load, CPU frequency) and whether that was too much to trust its
    /// timings. Null in results written before it was recorded: unknown, not quiet.
    #[serde(default)]
    pub disturbance: Option<RunDisturbance>,
    /// Set when the run happened in a `pinstorm lab` guest: how the guest was booted and
    /// what its emulated hardware turned out to be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab: Option<LabRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScenarioRecord {
    pub name: String,
    /// The file or preset it came from.
    pub origin: String,
    pub seed: u64,
    /// The scenario text as run (after command-line overrides, re-serialized).
    pub text: String,
}

/// The machine and kernel a result was measured on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub kernel_release: String,
    pub kernel_version: String,
    pub machine: String,
    pub hostname: String,
    pub cmdline: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub mem_total_bytes: u64,
    /// `RLIMIT_MEMLOCK`; `None` is unlimited.
    pub memlock_soft_bytes: Option<u64>,
    pub memlock_hard_bytes: Option<u64>,
    pub cap_ipc_lock: bool,
    pub euid: u32,
    pub io_uring_disabled: Option<String>,
    pub hugepages_total: u64,
    pub hugepages_free: u64,
    pub hugepage_size_bytes: u64,
    pub thp_enabled: Option<String>,
    /// Sysctls that change what pinning does, as read at the start of the run.
    pub sysctls: BTreeMap<String, String>,
    pub boot_id: Option<String>,
    /// True when this environment is a QEMU guest started by pinstorm's lab.
    pub virtualized: Option<String>,
    /// The RDMA device and port the `rdma` pin paths used, or why there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma: Option<String>,
}

/// One backing as set up for the run, or why it could not be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackingRecord {
    pub backing: String,
    /// `ok` or `notrun`.
    pub outcome: String,
    pub reason: Option<String>,
    pub fs: Option<String>,
    pub mount_source: Option<String>,
    pub mount_options: Option<String>,
    pub page_size: Option<u64>,
}

/// One cell of the capability matrix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeRow {
    pub pin: String,
    pub backing: String,
    pub fs: String,
    pub map: String,
    pub access: String,
    /// Bytes registered (the requested size rounded up to the backing's page size).
    pub size: u64,
    /// `ok`, an errno name such as `EFAULT`, or `notrun`.
    pub outcome: String,
    pub reason: Option<String>,
    /// `STATX_ATTR_DAX` of the file; null where unknown or not run.
    pub dax: Option<bool>,
    /// After an `ok` pin: `ok` when the device's write was seen in the mapping and read back
    /// intact, `mismatch`, or the errno of the device I/O.
    pub device_io: Option<String>,
    /// What the expectations file says for this cell, if anything.
    pub expected: Option<String>,
    /// `as-expected`, `differs`, `no-expectation` or `notrun`.
    pub verdict: Verdict,
    /// Why the expectation is what it is (the rule's `why`).
    pub expected_because: Option<String>,
}

/// One latency row of the pin benchmark.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    pub pin: String,
    pub backing: String,
    pub fs: String,
    pub map: String,
    pub access: String,
    /// Requested region size in bytes.
    pub size: u64,
    /// `register`, `unregister`, `cycle` (register + unregister), or a device write:
    /// `device-write`/`device-rewrite` (4 KiB) or `device-write-LEN`/`device-rewrite-LEN`.
    pub op: String,
    pub threads: usize,
    /// `ok`; the errno (or device status) that failed this row's calls most often, when any
    /// failed on either side; or `notrun` (with too few samples among the reasons).
    pub outcome: String,
    pub reason: Option<String>,
    #[serde(flatten)]
    pub stats: Option<Stats>,
    /// Successful calls of this row's op per second of wall time, summed over threads (each
    /// thread: its calls in measured cycles over the wall time of its measured blocks).
    pub ops_per_sec: Option<f64>,
    pub ns_per_4k_page: Option<f64>,
    /// Median of the same syscalls made in a tight loop, interleaved with this row's
    /// measurement.
    pub baseline_p50_ns: Option<u64>,
    /// `(p50 / baseline_p50 - 1) * 100`.
    pub overhead_pct: Option<f64>,
    /// HdrHistogram V2 compressed, base64; values in nanoseconds.
    pub histogram: Option<String>,
    pub baseline_histogram: Option<String>,
    /// Failed calls of this row's op through pinstorm's path, by errno name (warm-up
    /// included); on `cycle` rows every failed call of the cycle. Empty in older results.
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// The same for the baseline (tight loop).
    #[serde(default)]
    pub baseline_errors: BTreeMap<String, u64>,
    /// `STATX_ATTR_DAX` of the regions' file; null where unknown or not run.
    #[serde(default)]
    pub dax: Option<bool>,
    /// On `cycle` rows: what the expectations say of the cell's outcome, if anything.
    #[serde(default)]
    pub expected: Option<String>,
    /// On `cycle` rows: the outcome judged against the expectations (`[[expect]]`, as probe
    /// cells); null on the other rows and in older results.
    #[serde(default)]
    pub verdict: Option<Verdict>,
    #[serde(default)]
    pub expected_because: Option<String>,
}

/// One storm: a pin path x backing x map cell, its measurements and its oracles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StormResult {
    pub pin: String,
    pub backing: String,
    pub fs: String,
    pub map: String,
    /// `ok` (the storm ran) or `notrun`.
    pub outcome: String,
    pub reason: Option<String>,
    pub dax: Option<bool>,
    pub pinners: usize,
    pub disruptors: usize,
    pub file_size: u64,
    pub hold_ns: u64,
    pub duration_ms: u64,
    pub seed: u64,
    pub totals: StormTotals,
    /// Register latency of the pinners.
    pub register: Option<crate::hist::Stats>,
    pub register_histogram: Option<String>,
    pub layout_ops: Vec<LayoutOpResult>,
    /// Per second since the storm started.
    pub timeline: Vec<TimelinePoint>,
    pub oracle: Oracle,
    /// The first operations each disruptor chose (a replay with the same seed repeats them).
    pub sequence_head: Vec<Vec<String>>,
    /// A control cell: the same pinners and device writes with no layout operation, so what
    /// its oracles find is a pin-path or device defect, not a layout race.
    #[serde(default)]
    pub control: bool,
    /// The write shapes the device's writes were drawn from (`page` before shapes existed),
    /// and why any of the job's shapes could not be drawn here.
    #[serde(default)]
    pub shapes: Vec<String>,
    #[serde(default)]
    pub shapes_notrun: Vec<String>,
    /// Where operations placed the pinned memory before the storm (`LayoutOp::prepare`:
    /// memory-offline moves it to the lab guest's kmem node), one line per file and
    /// operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<String>,
}

impl StormResult {
    /// The cell in words: `io_uring tmpfs shared`, `... (control)` for a control cell.
    pub fn cell(&self) -> String {
        let control = if self.control { " (control)" } else { "" };
        format!("{} {} {}{control}", self.pin, self.backing, self.map)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StormTotals {
    pub registrations: u64,
    /// Refused registrations by errno name.
    pub register_errors: BTreeMap<String, u64>,
    pub device_writes: u64,
    pub device_write_errors: BTreeMap<String, u64>,
    /// Device writes found in the file (shared mappings) or the memory (anonymous) afterwards.
    pub verified: u64,
    /// Device writes whose check overlapped a layout operation: not judged.
    pub ambiguous: u64,
    /// Device reads through the pin that did not return what the device had written.
    pub readback_mismatches: u64,
    /// Files (pinned files, clones, donors) the end scan could not read: their pages were not
    /// judged for stale or cross-file data. The first error is in the `stale_exposure` note.
    #[serde(default)]
    pub end_scan_errors: u64,
    /// Device writes that succeeded, by write shape.
    #[serde(default)]
    pub writes_by_shape: BTreeMap<String, u64>,
    /// Shaped writes not issued: the bytes around the target could not be read first (the
    /// file was shorter than the window, a truncate in flight), so nothing could have judged
    /// them. Not in `device_writes`.
    #[serde(default)]
    pub skipped_writes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayoutOpResult {
    pub op: String,
    /// `ok`, or `notrun` when the filesystem or backing does not have the operation.
    pub outcome: String,
    pub reason: Option<String>,
    pub count: u64,
    /// Failures by errno name.
    pub errors: BTreeMap<String, u64>,
    pub stats: Option<crate::hist::Stats>,
    pub histogram: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    pub second: u64,
    pub registrations: u64,
    pub register_errors: u64,
    pub device_writes: u64,
    pub layout_ops: u64,
    pub layout_errors: u64,
}

/// A histogram with its statistics, and (where the raw samples were kept) a 95% bootstrap
/// confidence interval of the median.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub stats: crate::hist::Stats,
    pub histogram: String,
    #[serde(default)]
    pub median_ci_low_ns: Option<f64>,
    #[serde(default)]
    pub median_ci_high_ns: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FactVerdict {
    pub fact: String,
    pub measured: String,
    pub expected: Option<String>,
    /// `as-expected`, `differs`, `no-expectation` or `notrun`.
    pub verdict: Verdict,
    pub why: Option<String>,
}

/// One long-term pin path against pages in ZONE_MOVABLE (`[migration]`, docs/mm.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationResult {
    pub pin: String,
    pub backing: String,
    /// `ok` or `notrun` (with the reason).
    pub outcome: String,
    pub reason: Option<String>,
    pub rounds: u32,
    /// Pages per region.
    pub pages: u64,
    /// Pages of the fresh regions in ZONE_MOVABLE before their first pin, all rounds.
    pub movable_before: u64,
    /// Of those, at another frame outside ZONE_MOVABLE while the pin held them.
    pub migrated: u64,
    /// Pages found in ZONE_MOVABLE while a pin held them.
    pub movable_while_pinned: u64,
    /// Latency of the first pin of each region (its pages in ZONE_MOVABLE) and of pinning it
    /// again (its pages already moved out).
    pub first_pin: Option<crate::hist::Stats>,
    pub repin: Option<crate::hist::Stats>,
    /// Each round's outcome when the region's pages were also referenced by a pipe
    /// (vmsplice) while in ZONE_MOVABLE: `EBUSY x3, ok (stayed in Movable) x1`.
    pub held: String,
    pub verdicts: Vec<FactVerdict>,
}

impl MigrationResult {
    /// A pin path whose migration facts could not be measured, and why.
    pub fn notrun(pin: &str, backing: &str, rounds: u32, pages: u64, why: String) -> Self {
        MigrationResult {
            pin: pin.into(),
            backing: backing.into(),
            outcome: "notrun".into(),
            reason: Some(why),
            rounds,
            pages,
            movable_before: 0,
            migrated: 0,
            movable_while_pinned: 0,
            first_pin: None,
            repin: None,
            held: String::new(),
            verdicts: Vec::new(),
        }
    }
}

/// One fact of a storm judged against the expectations: `registrations` (did every
/// registration that raced no layout operation give the outcome `[[expect]]` says) or an
/// oracle's count (`lost_write`, ...; against `[[oracle]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StormVerdict {
    pub pin: String,
    pub backing: String,
    pub map: String,
    /// The verdict of a control cell (no layout operation).
    #[serde(default)]
    pub control: bool,
    #[serde(flatten)]
    pub fact: FactVerdict,
}

/// The expectations a run was judged by, and how its facts fared (see [`crate::verdict`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpectationsRecord {
    /// The expectation files, comma-separated.
    pub origin: String,
    /// Measured facts: probe cells, storm registrations and oracle counts, lease lifecycle
    /// facts (not those that did not run).
    pub checked: usize,
    pub differing: usize,
    pub without_expectation: usize,
}

/// `/proc/vmstat` `nr_foll_pin_acquired - nr_foll_pin_released` around the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinCounters {
    pub outstanding_before: i64,
    pub outstanding_after: i64,
    /// How long after the last release the counters took to come back (pins can be
    /// released asynchronously), in milliseconds.
    pub settle_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HugepageRecord {
    pub requested: u64,
    pub free_after_reserve: u64,
    pub page_size_bytes: u64,
    /// `vm/nr_hugepages` before the run changed it (restored at the end), if it did.
    pub nr_hugepages_restored_to: Option<String>,
}

impl RunResult {
    /// A result of this pinstorm with nothing measured yet: complete and without error,
    /// every job's section empty. Callers set what they know with struct update syntax, so
    /// a new field of the schema is added here once.
    pub fn new(
        run_id: &str,
        started: String,
        scenario: ScenarioRecord,
        environment: Environment,
    ) -> RunResult {
        RunResult {
            schema: SCHEMA_NAME.into(),
            schema_version: SCHEMA_VERSION,
            run_id: run_id.into(),
            label: None,
            started,
            finished: None,
            complete: true,
            interrupted: None,
            error: None,
            command: Vec::new(),
            tool: Tool {
                name: "pinstorm".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            scenario,
            environment,
            backings: Vec::new(),
            probe: Vec::new(),
            bench: Vec::new(),
            storms: Vec::new(),
            leases: None,
            migration: Vec::new(),
            storm_verdicts: Vec::new(),
            expectations: None,
            pin_counters: None,
            hugepages: None,
            notes: Vec::new(),
            disturbance: None,
            lab: None,
        }
    }

    /// Every stored histogram, with where it is in the file (`bench[2].histogram`).
    pub fn histograms(&self) -> Vec<(String, &str)> {
        let mut v = Vec::new();
        for (i, b) in self.bench.iter().enumerate() {
            if let Some(h) = &b.histogram {
                v.push((format!("bench[{i}].histogram"), h.as_str()));
            }
            if let Some(h) = &b.baseline_histogram {
                v.push((format!("bench[{i}].baseline_histogram"), h.as_str()));
            }
        }
        for (i, s) in self.storms.iter().enumerate() {
            if let Some(h) = &s.register_histogram {
                v.push((format!("storms[{i}].register_histogram"), h.as_str()));
            }
            for (j, op) in s.layout_ops.iter().enumerate() {
                if let Some(h) = &op.histogram {
                    v.push((format!("storms[{i}].layout_ops[{j}].histogram"), h.as_str()));
                }
            }
        }
        if let Some(l) = &self.leases {
            for (i, b) in l.breaks.iter().enumerate() {
                for (name, m) in [
                    ("acquire", &b.acquire),
                    ("release", &b.release),
                    ("notify", &b.notify),
                    ("breaker_wait", &b.breaker_wait),
                ] {
                    if let Some(m) = m {
                        v.push((
                            format!("leases.breaks[{i}].{name}.histogram"),
                            m.histogram.as_str(),
                        ));
                    }
                }
            }
            for (i, o) in l.overhead.iter().enumerate() {
                for (name, m) in [("without", &o.without), ("with", &o.with)] {
                    if let Some(m) = m {
                        v.push((
                            format!("leases.overhead[{i}].{name}.histogram"),
                            m.histogram.as_str(),
                        ));
                    }
                }
            }
        }
        v
    }

    /// Parse and check the schema name and version.
    pub fn from_json(text: &str) -> anyhow::Result<RunResult> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        let schema = v.get("schema").and_then(|s| s.as_str()).unwrap_or("");
        if schema != SCHEMA_NAME {
            anyhow::bail!("not a pinstorm result (schema {schema:?})");
        }
        let ver = v
            .get("schema_version")
            .and_then(|s| s.as_u64())
            .unwrap_or(0);
        if ver != u64::from(SCHEMA_VERSION) {
            anyhow::bail!(
                "result schema version {ver}, this pinstorm reads version {SCHEMA_VERSION}"
            );
        }
        Ok(serde_json::from_value(v)?)
    }
}

/// An empty, complete result of kernel 6.18.0, for unit tests to plant facts in.
#[cfg(test)]
pub(crate) fn planted() -> RunResult {
    RunResult {
        finished: Some("2026-01-01T00:01:00Z".into()),
        tool: Tool {
            name: "pinstorm".into(),
            version: "0".into(),
        },
        ..RunResult::new(
            "planted",
            "2026-01-01T00:00:00Z".into(),
            ScenarioRecord {
                name: "planted".into(),
                origin: "test".into(),
                seed: 1,
                text: String::new(),
            },
            Environment {
                kernel_release: "6.18.0".into(),
                ..Environment::default()
            },
        )
    }
}

impl RunResult {
    /// This oracle's count in a whole run: summed over its storms, or, for `lifecycle`, the
    /// lifecycle scenarios' violations.
    pub fn oracle_count(&self, k: OracleKind) -> u64 {
        let r = self;
        match k {
            OracleKind::Lifecycle => r
                .leases
                .iter()
                .flat_map(|l| &l.lifecycle)
                .map(|c| c.violations.len() as u64)
                .fold(0u64, u64::saturating_add),
            // Counts come from files: saturate rather than overflow on edited ones.
            k => r
                .storms
                .iter()
                .map(|s| k.count(&s.oracle))
                .fold(0u64, u64::saturating_add),
        }
    }

    /// Whether this oracle judged anything in a run: a storm (or lifecycle scenario) that
    /// ran, where the oracle was not notrun.
    pub fn oracle_ran(&self, k: OracleKind) -> bool {
        let r = self;
        match k {
            OracleKind::Lifecycle => r
                .leases
                .iter()
                .flat_map(|l| &l.lifecycle)
                .any(|c| c.outcome == "ok"),
            k => r
                .storms
                .iter()
                .any(|s| s.outcome == "ok" && k.notrun(&s.oracle).is_none()),
        }
    }
}

/// How a measured fact compares with its expectation. Serialized as the strings the result
/// schema has always used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    #[serde(rename = "as-expected")]
    AsExpected,
    #[serde(rename = "differs")]
    Differs,
    #[serde(rename = "no-expectation")]
    NoExpectation,
    #[serde(rename = "notrun")]
    NotRun,
    /// The fact could not be measured because the run failed (the run itself, say).
    #[serde(rename = "error")]
    Error,
}

impl Verdict {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::AsExpected => "as-expected",
            Verdict::Differs => "differs",
            Verdict::NoExpectation => "no-expectation",
            Verdict::NotRun => "notrun",
            Verdict::Error => "error",
        }
    }

    /// In words, for tables: `as expected`, `DIFFERS`, `no expectation`, `notrun`, `ERROR`.
    pub const fn words(self) -> &'static str {
        match self {
            Verdict::AsExpected => "as expected",
            Verdict::Differs => "DIFFERS",
            Verdict::NoExpectation => "no expectation",
            Verdict::NotRun => "notrun",
            Verdict::Error => "ERROR",
        }
    }

    /// Whether the fact was compared with an expectation.
    pub const fn is_judged(self) -> bool {
        matches!(self, Verdict::AsExpected | Verdict::Differs)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
