//! Running a scenario (on a host, or inside a lab guest): the order of things, and the
//! guarantee that whatever happens (success, error, SIGINT/SIGTERM, panic) the machine is
//! left as it was found.
//!
//! Order: lock the scratch root and clean what dead runs left -> capture the environment ->
//! start measuring how disturbed the machine is (the whole run, and each job) -> write an
//! initial (incomplete) result -> reserve huge pages -> start setting up the backings of
//! every job, beside the jobs ([`crate::backings`]) -> run the jobs (probe, bench, leases,
//! storm), each waiting only for the backing it pins, rewriting the result after each ->
//! tear down backings and huge pages -> settle pin counters -> write the final result. The
//! result is rewritten atomically after every job, so an interrupted run keeps what it
//! measured.
//!
//! The jobs are [`Job`]s: this module never looks inside one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use pinstorm_analysis::expect::Expectations;
use pinstorm_analysis::kernel::KernelRelease;
use pinstorm_analysis::schema::{Environment, HugepageRecord, PinCounters, RunResult};
use pinstorm_analysis::verdict;
use pinstorm_workloads::backing::{BackingKind, SetupEnv};
use pinstorm_workloads::scenario::Scenario;
use pinstorm_workloads::scratch::{HugePageReservation, ScratchRoot};

use crate::backings::{Arriving, BackingSet, DaxTargets, Setup};
use crate::job::{self, Job, JobContext, Progress};
use crate::signals::{self, Interrupted};
use crate::{cleanup, disturbance, environment, kmsg};

mod paths;
mod result;

pub use paths::{ScratchDir, WriteDir};
pub use result::{new_run_id, now_rfc3339, ResultWriter};

/// Everything a run needs besides the scenario.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub scenario: Scenario,
    /// Where the scenario came from (file path or preset), for the record.
    pub origin: String,
    pub results_root: WriteDir,
    pub scratch_root: WriteDir,
    pub scratch_dir: Option<ScratchDir>,
    /// Block devices named as scratch (`--scratch-dev`), checked: the run makes each one's
    /// filesystem on it for its DAX backing.
    pub scratch_devs: Vec<pinstorm_workloads::scratch::ScratchDevice>,
    /// Directories on FS-DAX filesystems named as scratch, by filesystem (`--dax-dir`).
    pub dax_dirs: BTreeMap<String, ScratchDir>,
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
    /// How a reproducer's command line starts, up to the scenario: empty for `pinstorm run`
    /// on this machine; `pinstorm lab --kernels deb:sid` in a lab guest.
    pub reproduce_as: Vec<String>,
    /// Set only by the lab guest's entry point (`pinstorm __lab-guest`): the run is inside a
    /// lab guest, which operations that damage memory require, with what the guest made
    /// for them. Never derived from the machine (a file or variable could be planted).
    pub lab: Option<pinstorm_workloads::layout::LabMachine>,
}

/// Why a scenario may not run here, if it may not: its storm has operations that require a
/// lab guest and this run is not in one. `pinstorm run` turns it into exit 2.
pub fn lab_only_refusal(scenario: &Scenario, in_lab: bool) -> Option<String> {
    use pinstorm_workloads::layout::Requirement;
    if in_lab {
        return None;
    }
    let ops: Vec<&str> = scenario
        .storm
        .as_ref()?
        .ops
        .iter()
        .filter(|k| k.op().requires().contains(&Requirement::LabGuest))
        .map(|k| k.name())
        .collect();
    (!ops.is_empty()).then(|| {
        format!(
            "scenario {}: {} damage memory and run only inside a lab guest; run it with 'pinstorm lab {}' (docs/mm.md)",
            scenario.name,
            ops.join(", "),
            scenario.name
        )
    })
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

/// The scenario's jobs, in the order they run.
fn jobs(s: &Scenario) -> Vec<&dyn Job> {
    let probe = s.probe.as_ref().map(|j| j as &dyn Job);
    let bench = s.bench.as_ref().map(|j| j as &dyn Job);
    let lease = s.lease.as_ref().map(|j| j as &dyn Job);
    let storm = s.storm.as_ref().map(|j| j as &dyn Job);
    let migration = s.migration.as_ref().map(|j| j as &dyn Job);
    [probe, bench, lease, storm, migration]
        .into_iter()
        .flatten()
        .collect()
}

fn memlock_hint(env: &Environment) -> Option<String> {
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

/// Huge pages the jobs can hold at once: the most any one job holds, doubled because
/// private mappings of hugetlb files copy on write into a second huge page.
fn hugepages_needed(jobs: &[&dyn Job], hp_size: u64) -> u64 {
    if hp_size == 0 {
        return 0;
    }
    jobs.iter()
        .filter(|j| j.backings().iter().any(|k| k.uses_hugetlb()))
        .map(|j| j.hugepages(hp_size))
        .max()
        .unwrap_or(0)
        * 2
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
    run_with(opts, None)
}

/// [`run`], with what another thread is still making when the run starts (a lab guest's
/// disk filesystems' modules and DAX targets): the backings that need it wait for it, the
/// jobs start at once. Its DAX targets add to those of `opts`.
pub fn run_with(opts: &RunOptions, arriving: Option<Arriving>) -> Result<RunOutcome> {
    if let Some(why) = lab_only_refusal(&opts.scenario, opts.lab.is_some()) {
        anyhow::bail!(why);
    }
    signals::install();
    let root = ScratchRoot::open(opts.scratch_root.path())?;
    for line in cleanup::clean_leftovers(&root) {
        eprintln!("pinstorm: {line}");
    }

    let pins = opts.scenario.pin_settings();
    let env = environment::capture(&pins);
    let (noise, noise_failed) = disturbance::RunMonitor::start();
    let kernel = KernelRelease::parse(&env.kernel_release).unwrap_or(KernelRelease {
        release: env.kernel_release.clone(),
        version: (0, 0, 0),
    });
    let run_id = new_run_id();
    let mut result = result::started(opts, &run_id, &env);
    result.notes.extend(noise_failed);
    let writer = ResultWriter::create(opts.results_root.path(), &result, &opts.expectations)?;
    log(
        opts,
        &format!("run {run_id}, result {}", writer.path().display()),
    );

    let pins_before = pinstorm_workloads::pinned_pages_outstanding();
    let body = (|| -> Result<()> {
        let scratch = root.new_run(&run_id)?;
        let is_root = pinstorm_workloads::is_root();
        let jobs = jobs(&opts.scenario);
        // In the order the jobs use them: the first job's first backing is set up first.
        let kinds: Vec<BackingKind> = jobs
            .iter()
            .flat_map(|j| j.backings().iter().copied())
            .collect();

        // Huge pages first: hugetlb backings look at the pool when they are set up.
        let need = if kinds.iter().any(|k| k.uses_hugetlb()) && is_root {
            hugepages_needed(&jobs, env.hugepage_size_bytes)
        } else {
            0
        };
        let reservation = if need > 0 {
            log(opts, &format!("reserving {need} huge pages"));
            let r = HugePageReservation::reserve(&scratch, need)?;
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
        let setup_env = SetupEnv {
            is_root,
            scratch_dir: opts.scratch_dir.clone(),
            dax_dirs: opts.dax_dirs.clone(),
            devdax: opts.devdax.clone(),
            unavailable: opts.unavailable.clone(),
            before_attach: None,
        };
        let log_setup = |m: &str| log(opts, m);
        let setup = Setup {
            env: &setup_env,
            scratch: &scratch,
            scratch_devs: &opts.scratch_devs,
            log: &log_setup,
        };
        let backings = BackingSet::new(kinds);
        signals::check()?;
        let progress = Progress::new(opts.progress, jobs.iter().map(|j| j.cells()).sum());
        let kmsg = std::sync::Mutex::new(kmsg::Kmsg::open());
        // A preset by its name, a file by its path.
        let scenario_arg = if opts.origin.starts_with("preset ") {
            opts.scenario.name.clone()
        } else {
            opts.origin.clone()
        };
        let ctx = JobContext {
            backings: &backings,
            expectations: &opts.expectations,
            kernel: &kernel,
            seed: opts.scenario.seed,
            run_tag: job::run_tag(&run_id),
            pins: &pins,
            memlock_hint: memlock_hint(&env),
            kmsg: &kmsg,
            scratch: &scratch,
            is_root,
            holder_exe: opts.holder_exe.as_deref(),
            scenario: &scenario_arg,
            reproduce_as: &opts.reproduce_as,
            lab: opts.lab.as_ref(),
        };
        let arriving = arriving.unwrap_or_else(|| Arriving::now(DaxTargets::default()));
        let outcome = std::thread::scope(|s| {
            backings.start(s, &setup, arriving);
            let outcome = jobs.iter().try_for_each(|job| {
                if job.measures_time() {
                    backings.wait_all();
                    signals::check()?;
                }
                log(opts, job.name());
                let measured = noise.job();
                let r = job.run(&ctx, &progress, &mut result);
                noise.record(measured.map(|iv| (job.name(), iv)), &mut result);
                result.backings = backings.records();
                writer.write(&mut result)?;
                r
            });
            // What is still being set up (a backing no job reached) finishes or gives up
            // before the scope ends.
            backings.finish();
            outcome
        });
        result.backings = backings.records();
        progress.finish();
        // Tear down in reverse: backings (unmount, detach), then huge pages, then the run dir.
        log(opts, "cleaning up");
        drop(backings);
        drop(reservation);
        drop(scratch);
        outcome
    })();
    // Everything the jobs set up is gone by now.
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
    noise.record(None, &mut result);
    result.finished = Some(now_rfc3339());
    writer
        .write(&mut result)
        .context("writing the final result")?;
    Ok(RunOutcome {
        path: writer.path().to_path_buf(),
        result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinstorm_workloads::scenario::PRESETS;

    fn preset(name: &str) -> Scenario {
        let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).unwrap();
        Scenario::parse(text, name).unwrap()
    }

    #[test]
    fn only_scenarios_with_lab_only_operations_are_refused_outside_a_lab_guest() {
        let lab = preset("mm-vs-pin-lab");
        let why = lab_only_refusal(&lab, false).unwrap();
        for op in ["hwpoison", "soft-offline", "memory-offline"] {
            assert!(why.contains(op), "{why}");
        }
        assert!(why.contains("pinstorm lab"), "{why}");
        assert_eq!(lab_only_refusal(&lab, true), None);
        for name in ["mm-vs-pin", "default", "quick", "truncate-vs-pin"] {
            assert_eq!(lab_only_refusal(&preset(name), false), None, "{name}");
        }
    }

    #[test]
    fn jobs_run_in_the_order_probe_bench_leases_storm() {
        let mut s = preset("default");
        s.lease = Some(Default::default());
        let names: Vec<_> = jobs(&s).iter().map(|j| j.name()).collect();
        assert_eq!(names, ["probe", "bench", "leases", "storm"]);
        s.probe = None;
        s.storm = None;
        let names: Vec<_> = jobs(&s).iter().map(|j| j.name()).collect();
        assert_eq!(names, ["bench", "leases"]);
    }

    #[test]
    fn huge_pages_are_what_the_greediest_hugetlb_job_holds_doubled_for_copy_on_write() {
        use pinstorm_workloads::scenario::{ProbeJob, StormJob};
        use pinstorm_workloads::units::Size;
        let mb = 1 << 20;
        let mut s = preset("quick");
        s.bench = None;
        s.storm = Some(StormJob {
            backings: vec![BackingKind::Hugetlbfs],
            file_size: Size(4 * mb),
            pinners: std::num::NonZeroUsize::new(2).unwrap(),
            ..StormJob::default()
        });
        s.probe = Some(ProbeJob {
            backings: vec![BackingKind::Anon],
            size: Size(64 * mb),
            ..ProbeJob::default()
        });
        // Two pinners of two 2 MiB pages each, twice over; the anonymous probe holds none.
        assert_eq!(hugepages_needed(&jobs(&s), 2 * mb), 8);
        // A probe region of 16 pages on hugetlb is the most one job holds at once.
        s.probe.as_mut().unwrap().backings = vec![BackingKind::AnonHugetlb];
        s.probe.as_mut().unwrap().size = Size(32 * mb);
        assert_eq!(hugepages_needed(&jobs(&s), 2 * mb), 32);
        assert_eq!(hugepages_needed(&jobs(&s), 0), 0);
        s.storm = None;
        s.probe = None;
        assert_eq!(hugepages_needed(&jobs(&s), 2 * mb), 0);
    }
}
