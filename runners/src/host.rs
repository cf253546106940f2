//! Running a scenario on this host: the order of things, and the guarantee that whatever
//! happens (success, error, SIGINT/SIGTERM, panic) the machine is left as it was found.
//!
//! Order: check paths -> lock the scratch root and clean what dead runs left -> capture the
//! environment -> write an initial (incomplete) result -> reserve huge pages -> set up
//! backings -> probe -> bench -> tear down backings and huge pages -> settle pin counters
//! -> write the final result. The result is rewritten atomically after every job, so an
//! interrupted run keeps what it measured.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use pinstorm_analysis::expect::Expectations;
use pinstorm_analysis::kernel::KernelRelease;
use pinstorm_analysis::schema::{
    BackingRecord, ExpectationsRecord, HugepageRecord, PinCounters, RunResult, ScenarioRecord,
    Tool, SCHEMA_NAME, SCHEMA_VERSION,
};
use pinstorm_analysis::store;
use pinstorm_analysis::verdict::{self, Verdict};
use pinstorm_workloads::backing::{Backing, BackingKind, NotRun, SetupEnv};
use pinstorm_workloads::scenario::Scenario;
use pinstorm_workloads::scratch::HugePageReservation;
use pinstorm_workloads::scratch::{self, ScratchRoot};

use crate::signals::{self, Interrupted};
use crate::{bench, cleanup, environment, probe, storm};

/// The tag written into every canary of a run: a hash of the run id.
fn run_tag(run_id: &str) -> u32 {
    run_id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Everything a run needs besides the scenario.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub scenario: Scenario,
    /// Where the scenario came from (file path or preset), for the record.
    pub origin: String,
    pub results_root: PathBuf,
    pub scratch_root: PathBuf,
    pub scratch_dir: Option<PathBuf>,
    /// Directories on FS-DAX filesystems named as scratch, by filesystem (`--dax-dir`).
    pub dax_dirs: BTreeMap<String, PathBuf>,
    /// A device-dax device named as scratch (`--devdax`).
    pub devdax: Option<PathBuf>,
    /// Backings known to be unavailable, with the reason (see `SetupEnv::unavailable`).
    pub unavailable: BTreeMap<String, String>,
    pub label: Option<String>,
    pub expectations: Expectations,
    pub command: Vec<String>,
    /// Show a progress bar (only ever on a terminal).
    pub progress: bool,
    /// Print phase messages on stderr.
    pub verbose: bool,
    /// The pinstorm binary that runs lease holders (`__lease-holder`); default: this one.
    pub holder_exe: Option<PathBuf>,
}

pub struct RunOutcome {
    pub result: RunResult,
    pub path: PathBuf,
}

impl RunOutcome {
    /// Exit status for CI, from the run's one verdict ([`verdict::judge`], which the summary
    /// and the KTAP/JUnit exports read too): 0 every judged fact as expected, 3 a fact
    /// differs from the expectations, 1 the run stopped on an error, 128+N stopped by
    /// signal N.
    pub fn exit_code(&self) -> i32 {
        verdict::judge(&self.result).exit_code()
    }
}

/// The backings set up for a run, or why each could not be.
pub struct BackingSet {
    map: BTreeMap<BackingKind, Result<Box<dyn Backing>, NotRun>>,
}

impl BackingSet {
    pub fn get(&self, kind: BackingKind) -> Result<&dyn Backing, NotRun> {
        match self.map.get(&kind) {
            Some(Ok(b)) => Ok(b.as_ref()),
            Some(Err(e)) => Err(e.clone()),
            None => Err(NotRun(format!("{kind} was not set up for this run"))),
        }
    }

    pub fn records(&self) -> Vec<BackingRecord> {
        self.map
            .iter()
            .map(|(k, b)| match b {
                Ok(b) => {
                    let i = b.info();
                    BackingRecord {
                        backing: k.name().into(),
                        outcome: "ok".into(),
                        reason: None,
                        fs: Some(i.fs.clone()),
                        mount_source: i.mount_source.clone(),
                        mount_options: i.mount_options.clone(),
                        page_size: Some(i.page_size),
                    }
                }
                Err(e) => BackingRecord {
                    backing: k.name().into(),
                    outcome: "notrun".into(),
                    reason: Some(e.0.clone()),
                    fs: None,
                    mount_source: None,
                    mount_options: None,
                    page_size: None,
                },
            })
            .collect()
    }
}

/// A progress bar on stderr when it is a terminal; otherwise nothing at all.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(enabled: bool, total: u64) -> Progress {
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Progress { bar: Some(bar) }
    }

    pub fn hidden() -> Progress {
        Progress { bar: None }
    }

    pub fn step(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.inc(1);
            b.set_message(msg.to_string());
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// `20261122T043000.123Z-1a2b`: sorts by start time (to the millisecond), unique enough for
/// one host.
pub fn new_run_id() -> String {
    let now = SystemTime::now();
    let t = humantime::format_rfc3339_millis(now)
        .to_string()
        .replace(['-', ':'], "");
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let salt = (u64::from(nanos) ^ (u64::from(std::process::id()) << 16)) & 0xffff;
    format!("{t}-{salt:04x}")
}

fn memlock_hint(env: &pinstorm_analysis::schema::Environment) -> Option<String> {
    if env.cap_ipc_lock {
        return None;
    }
    Some(match env.memlock_soft_bytes {
        Some(b) => format!(
            "without CAP_IPC_LOCK pinned memory is charged to RLIMIT_MEMLOCK, here {} KiB (ulimit -l)",
            b / 1024
        ),
        None => "RLIMIT_MEMLOCK is unlimited".into(),
    })
}

/// A refusal's reason, with the memlock explanation when the kernel said ENOMEM.
pub fn with_memlock_hint(mut reason: String, errno: &str, hint: Option<&str>) -> String {
    if let (true, Some(h)) = (errno == "ENOMEM", hint) {
        reason.push_str(&format!(" ({h})"));
    }
    reason
}

/// Huge pages the scenario can hold at once: one region per probe cell, one region per
/// bench thread.
fn hugepages_needed(s: &Scenario, hp_size: u64) -> u64 {
    if hp_size == 0 {
        return 0;
    }
    let pages = |size: u64| size.div_ceil(hp_size);
    let mut need = 0;
    if let Some(p) = &s.probe {
        if p.backings.iter().any(|b| b.uses_hugetlb()) {
            need = need.max(pages(p.size.bytes()));
        }
    }
    if let Some(b) = &s.bench {
        if b.backings.iter().any(|k| k.uses_hugetlb()) {
            let max = b.sizes.iter().map(|s| s.bytes()).max().unwrap_or(0);
            need = need.max(pages(max) * b.threads.get() as u64);
        }
    }
    if let Some(st) = &s.storm {
        if st.backings.iter().any(|k| k.uses_hugetlb()) {
            need = need.max(pages(st.file_size.bytes()) * st.pinners.get() as u64);
        }
    }
    if let Some(l) = &s.lease {
        if l.backings.iter().any(|k| k.uses_hugetlb()) {
            need = need.max(pages(l.pin_size.bytes()) * 2);
        }
    }
    // Private mappings of hugetlb files copy on write into a second huge page.
    if need > 0 {
        need * 2
    } else {
        0
    }
}

/// Wait (bounded) until the system-wide FOLL_PIN count is back to `target`: a ring's or
/// an MR's pages can be released asynchronously after the last handle goes.
fn settle_pins(target: i64, bound: Duration) -> (i64, u64) {
    let start = Instant::now();
    loop {
        let now = pinstorm_workloads::pinned_pages_outstanding().unwrap_or(target);
        if now <= target || start.elapsed() >= bound {
            return (now, start.elapsed().as_millis() as u64);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn log(opts: &RunOptions, msg: &str) {
    if opts.verbose {
        eprintln!("pinstorm: {msg}");
    }
}

pub fn run(opts: &RunOptions) -> Result<RunOutcome> {
    signals::install();
    let results_root = scratch::checked_write_path(&opts.results_root, "--results")?;
    let scratch_root = scratch::checked_write_path(&opts.scratch_root, "--scratch-root")?;
    let scratch_dir = opts
        .scratch_dir
        .as_deref()
        .map(|d| scratch::checked_scratch_dir(d, "--scratch-dir"))
        .transpose()?;
    let root = ScratchRoot::open(&scratch_root)?;
    for line in cleanup::clean_leftovers(&root) {
        eprintln!("pinstorm: {line}");
    }

    let env = environment::capture(&opts.scenario.pin_settings());
    let kernel = KernelRelease::parse(&env.kernel_release).unwrap_or(KernelRelease {
        release: env.kernel_release.clone(),
        version: (0, 0, 0),
    });
    let run_id = new_run_id();
    let dir = store::result_dir(&results_root, &env.kernel_release, &run_id);
    let mut result = RunResult {
        schema: SCHEMA_NAME.into(),
        schema_version: SCHEMA_VERSION,
        run_id: run_id.clone(),
        label: opts.label.clone(),
        started: now_rfc3339(),
        finished: None,
        complete: false,
        interrupted: None,
        error: None,
        command: opts.command.clone(),
        tool: Tool {
            name: "pinstorm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        scenario: ScenarioRecord {
            name: opts.scenario.name.clone(),
            origin: opts.origin.clone(),
            seed: opts.scenario.seed,
            text: toml::to_string(&opts.scenario).unwrap_or_default(),
        },
        environment: env.clone(),
        backings: Vec::new(),
        probe: Vec::new(),
        storms: Vec::new(),
        leases: None,
        storm_verdicts: Vec::new(),
        bench: Vec::new(),
        expectations: None,
        pin_counters: None,
        hugepages: None,
        notes: Vec::new(),
        lab: None,
    };
    result.notes.extend(unjudged_kinds(opts));
    let path = store::write_result(&dir, &result).context("writing the initial result")?;
    log(opts, &format!("run {run_id}, result {}", path.display()));

    let pins_before = pinstorm_workloads::pinned_pages_outstanding();
    let body = run_jobs(
        opts,
        &root,
        &run_id,
        scratch_dir,
        &kernel,
        &env,
        &mut result,
        &path,
    );
    // Everything the jobs set up is gone by now (dropped inside run_jobs).
    if let Some(before) = pins_before {
        let (after, ms) = settle_pins(before, Duration::from_secs(5));
        result.pin_counters = Some(PinCounters {
            outstanding_before: before,
            outstanding_after: after,
            settle_ms: ms,
        });
        if after > before {
            result.notes.push(format!(
                "{} pages were still pinned after every pin was released (leaked pins?)",
                after - before
            ));
        }
    }
    match body {
        Ok(()) => result.complete = true,
        Err(e) => match e.downcast_ref::<Interrupted>() {
            Some(Interrupted(sig)) => result.interrupted = Some(signals::signal_name(*sig).into()),
            None => result.error = Some(format!("{e:#}")),
        },
    }
    if let Some(sig) = signals::pending() {
        result.complete = false;
        result.interrupted = Some(signals::signal_name(sig).into());
    }
    summarize_expectations(opts, &mut result);
    result.finished = Some(now_rfc3339());
    let path = store::write_result(&dir, &result).context("writing the final result")?;
    Ok(RunOutcome { result, path })
}

#[allow(clippy::too_many_arguments)]
fn run_jobs(
    opts: &RunOptions,
    root: &ScratchRoot,
    run_id: &str,
    scratch_dir: Option<PathBuf>,
    kernel: &KernelRelease,
    env: &pinstorm_analysis::schema::Environment,
    result: &mut RunResult,
    path: &Path,
) -> Result<()> {
    let s = &opts.scenario;
    // What the pin paths are told: the scenario's `[rdma]` (into which the command line
    // merged `--rdma-*`), in a host run and in a lab guest alike.
    let pins = s.pin_settings();
    let run_scratch = root.new_run(run_id)?;
    let is_root = pinstorm_workloads::is_root();
    let setup_env = SetupEnv {
        is_root,
        scratch_dir,
        dax_dirs: opts.dax_dirs.clone(),
        devdax: opts.devdax.clone(),
        unavailable: opts.unavailable.clone(),
    };

    let mut kinds: Vec<BackingKind> = Vec::new();
    if let Some(p) = &s.probe {
        kinds.extend(&p.backings);
    }
    if let Some(b) = &s.bench {
        kinds.extend(&b.backings);
    }
    if let Some(st) = &s.storm {
        kinds.extend(&st.backings);
    }
    if let Some(l) = &s.lease {
        kinds.extend(&l.backings);
    }
    kinds.sort();
    kinds.dedup();

    // Huge pages first: hugetlb backings look at the pool when they are set up.
    let need = if kinds.iter().any(|k| k.uses_hugetlb()) && is_root {
        hugepages_needed(s, env.hugepage_size_bytes)
    } else {
        0
    };
    let reservation = if need > 0 {
        log(opts, &format!("reserving {need} huge pages"));
        let r = HugePageReservation::reserve(&run_scratch, need)?;
        result.hugepages = Some(HugepageRecord {
            requested: r.requested,
            free_after_reserve: r.free,
            page_size_bytes: r.page_size,
            nr_hugepages_restored_to: r.restores_to().map(str::to_string),
        });
        Some(r)
    } else {
        None
    };

    let mut backings = BackingSet {
        map: BTreeMap::new(),
    };
    for k in kinds {
        signals::check()?;
        log(opts, &format!("setting up {k}"));
        let b = k.setup(&setup_env, &run_scratch);
        if let Err(e) = &b {
            log(opts, &format!("{k}: notrun: {e}"));
        }
        backings.map.insert(k, b);
    }
    result.backings = backings.records();

    let total = s
        .probe
        .as_ref()
        .map(|p| (p.backings.len() * p.pins.len() * p.maps.len() * p.access.len()) as u64)
        .unwrap_or(0)
        + s.bench
            .as_ref()
            .map(|b| (b.backings.len() * b.pins.len() * b.sizes.len()) as u64)
            .unwrap_or(0)
        + s.storm
            .as_ref()
            .map(|st| (st.backings.len() * st.pins.len() * st.maps.len()) as u64)
            .unwrap_or(0)
        + s.lease
            .as_ref()
            .map(|l| {
                let breaks = if l.rounds > 0 {
                    l.leases.len() * l.behaviours.len() * l.breakers.len()
                } else {
                    0
                };
                (l.backings.len()
                    * (breaks + usize::from(l.overhead_cycles > 0) + l.lifecycle.len()))
                    as u64
            })
            .unwrap_or(0);
    let progress = Progress::new(opts.progress, total);
    // Opened before any storm so only messages from this run are read.
    let kmsg = std::sync::Mutex::new(crate::kmsg::Kmsg::open());
    let hint = memlock_hint(env);

    let outcome = (|| -> Result<()> {
        if let Some(job) = &s.probe {
            log(opts, "probe");
            let ctx = probe::ProbeContext {
                backings: &backings,
                expectations: &opts.expectations,
                kernel,
                seed: s.seed,
                memlock_hint: hint.clone(),
                pins: &pins,
            };
            let r = probe::run(job, &ctx, &progress, &mut result.probe);
            summarize_expectations(opts, result);
            store::write_result(path.parent().expect("result dir"), result)?;
            r?;
        }
        if let Some(job) = &s.bench {
            log(opts, "bench");
            let ctx = bench::BenchContext {
                backings: &backings,
                memlock_hint: hint.clone(),
                pins: &pins,
            };
            let r = bench::run(job, &ctx, &progress, &mut result.bench);
            store::write_result(path.parent().expect("result dir"), result)?;
            r?;
        }
        if let Some(job) = &s.lease {
            log(opts, "leases");
            let (lbt, _guard) = lease_break_time(job, &run_scratch, is_root, result)?;
            let exe = match &opts.holder_exe {
                Some(p) => p.clone(),
                None => std::env::current_exe()
                    .context("finding the pinstorm binary for lease holders")?,
            };
            let ctx = crate::lease::LeaseContext {
                backings: &backings,
                facts: opts.expectations.facts(),
                kernel,
                seed: s.seed,
                run_tag: run_tag(run_id),
                holder_exe: &exe,
                lease_break_time_s: lbt,
                expiry_notrun: (lbt > 10).then(|| {
                    format!("waiting a lease out takes fs/lease-break-time ({lbt} s here); shortening it needs root")
                }),
            };
            let mut out = result.leases.take().unwrap_or_default();
            let r = crate::lease::run(job, &ctx, &progress, &mut out);
            result.leases = Some(out);
            summarize_expectations(opts, result);
            store::write_result(path.parent().expect("result dir"), result)?;
            r?;
            // `_guard` restores fs/lease-break-time here, on every path out of this block.
        }
        if let Some(job) = &s.storm {
            log(opts, "storm");
            let ctx = storm::StormContext {
                backings: &backings,
                expectations: &opts.expectations,
                kernel,
                seed: s.seed,
                run_tag: run_tag(run_id),
                kmsg: &kmsg,
                pins: &pins,
            };
            let r = storm::run(job, &ctx, &progress, &mut result.storms);
            judge_storms(opts, kernel, result);
            summarize_expectations(opts, result);
            store::write_result(path.parent().expect("result dir"), result)?;
            r?;
        }
        Ok(())
    })();
    progress.finish();
    // Tear down in reverse: backings (unmount, detach), then huge pages, then the run dir.
    log(opts, "cleaning up");
    drop(backings);
    drop(reservation);
    drop(run_scratch);
    outcome
}

/// Read fs/lease-break-time and, when something in the job waits a lease out and we are root,
/// set it to the job's value for the run (journaled, restored by the returned guard).
fn lease_break_time(
    job: &pinstorm_workloads::scenario::LeaseJob,
    scratch: &pinstorm_workloads::scratch::RunScratch,
    is_root: bool,
    result: &mut RunResult,
) -> Result<(u64, Option<pinstorm_workloads::scratch::SysctlGuard>)> {
    use pinstorm_workloads::lease::{Behaviour, Lifecycle};
    let original: u64 = pinstorm_workloads::sysctl::read("fs/lease-break-time")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(45);
    let waits = job.rounds > 0
        && (job.behaviours.contains(&Behaviour::Hung)
            || job.behaviours.contains(&Behaviour::Downgrading))
        || job
            .lifecycle
            .iter()
            .any(|l| matches!(l, Lifecycle::HungExpiry | Lifecycle::ScmRights));
    let want = job.lease_break_time.0.as_secs().max(1);
    let mut rec = pinstorm_analysis::schema::LeaseBreakTime {
        original_s: Some(original),
        used_s: Some(original),
        restored: true,
    };
    let guard = if waits && is_root && want != original {
        let g = pinstorm_workloads::scratch::SysctlGuard::set(
            scratch,
            pinstorm_workloads::sysctl::Sysctl::LeaseBreakTime,
            &want.to_string(),
        )?;
        rec.used_s = Some(want);
        Some(g)
    } else {
        None
    };
    let used = rec.used_s.unwrap_or(original);
    result
        .leases
        .get_or_insert_with(Default::default)
        .lease_break_time = rec;
    Ok((used, guard))
}

/// Notes for the kinds of facts the scenario measures that the expectations have no rules
/// for (a `--expectations` set without `[[fact]]` rules, say): those facts are reported as
/// `no-expectation` and never change the exit status, which should not go unnoticed.
fn unjudged_kinds(opts: &RunOptions) -> Vec<String> {
    let s = &opts.scenario;
    let (pins, facts, oracles) = opts.expectations.counts();
    let mut out = Vec::new();
    let mut say = |what: &str, kind: &str| {
        out.push(format!(
            "the expectations ({}) have no {kind} rules: {what} are not judged (no-expectation)",
            opts.expectations.origin
        ))
    };
    if pins == 0 && (s.probe.is_some() || s.storm.is_some()) {
        say("probe cells and storm registrations", "[[expect]]");
    }
    if facts == 0 && s.lease.as_ref().is_some_and(|l| !l.lifecycle.is_empty()) {
        say("lease lifecycle facts", "[[fact]]");
    }
    if oracles == 0 && s.storm.is_some() {
        say("storm oracle counts", "[[oracle]]");
    }
    out
}

/// Judge every storm that ran against the expectations (its registrations and oracle
/// counts), for `storm_verdicts`; with the device each pin path drove, as the storm matched
/// its `[[expect]]` rule.
fn judge_storms(opts: &RunOptions, kernel: &KernelRelease, result: &mut RunResult) {
    let pins = opts.scenario.pin_settings();
    let mut devices: BTreeMap<String, Option<String>> = BTreeMap::new();
    result.storm_verdicts = result
        .storms
        .iter()
        .flat_map(|s| {
            let dev = devices
                .entry(s.pin.clone())
                .or_insert_with(|| {
                    pinstorm_workloads::pin::PinKind::parse(&s.pin)
                        .ok()
                        .and_then(|p| p.path(&pins).device())
                })
                .clone();
            verdict::judge_storm(&opts.expectations, s, kernel, dev.as_deref())
                .into_iter()
                .map(|fact| pinstorm_analysis::schema::StormVerdict {
                    pin: s.pin.clone(),
                    backing: s.backing.clone(),
                    map: s.map.clone(),
                    fact,
                })
        })
        .collect();
}

/// How the run's facts fared against the expectations so far (from the one judgement).
fn summarize_expectations(opts: &RunOptions, result: &mut RunResult) {
    let j = verdict::judge(result);
    result.expectations = Some(ExpectationsRecord {
        origin: opts.expectations.origin.clone(),
        checked: j.count(Verdict::AsExpected)
            + j.count(Verdict::Differs)
            + j.count(Verdict::NoExpectation),
        differing: j.count(Verdict::Differs),
        without_expectation: j.count(Verdict::NoExpectation),
    });
}
