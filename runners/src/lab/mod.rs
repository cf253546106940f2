//! The lab: run a scenario in QEMU guests booted (with virtme-ng) from real kernels, with an
//! emulated NVDIMM (FS-DAX xfs and ext4, device-dax) and soft-RoCE, and bring each result
//! home tagged with the kernel it ran on.
//!
//! Host side, per kernel: fetch/unpack it into the cache ([`kernels`]), decide KVM or TCG
//! ([`vm::probe_accel`]), boot `vng` with the guest agent (`pinstorm __lab-guest`, see
//! [`guest`]) under a watchdog ([`vm::boot`]), read the console for panics and oopses
//! ([`console`]), and store the guest's result (or a result saying why there is none) under
//! `RESULTS/<release>/<run-id>/` with the console log and the QEMU command line.
//!
//! Confinement: the guest never gets a writable host root (no `--rw`); on the host the lab
//! writes only under the cache directory and the results directory, both absolute and
//! checked; virtme-ng runs with HOME and TMPDIR inside the cache.

pub mod apt;
pub mod console;
pub mod guest;
pub mod kernels;
pub mod vm;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use pinstorm_analysis::schema::{
    Environment, LabFact, LabRecord, RunResult, ScenarioRecord, Tool, SCHEMA_NAME, SCHEMA_VERSION,
};
use pinstorm_analysis::store;
use pinstorm_workloads::scratch;

use crate::run::{new_run_id, now_rfc3339};
use crate::signals;
use guest::{GuestPlan, GuestReport, PmemMode};
use kernels::{Kernel, KernelSpec};

/// The default matrix: an old LTS, the current stable, and the newest in Debian unstable.
pub const DEFAULT_KERNELS: &[&str] = &["deb:6.1", "deb:6.12", "deb:sid"];

#[derive(Clone, Debug)]
pub struct LabOptions {
    pub kernels: Vec<KernelSpec>,
    pub scenario_text: String,
    pub origin: String,
    pub scenario_name: String,
    pub seed: Option<u64>,
    pub label: Option<String>,
    /// The `--expectations` files as (origin, text), in order; None: the built-in ones.
    pub expectations: Option<Vec<(String, String)>>,
    pub results_root: PathBuf,
    pub cache: PathBuf,
    pub vng: Option<PathBuf>,
    pub accel: String,
    pub pmem: PmemMode,
    pub devdax: bool,
    pub rxe: bool,
    pub memory_mib: u64,
    pub cpus: usize,
    pub timeout: Duration,
    pub refresh: bool,
    pub fresh: bool,
    pub mirror: String,
    pub security_mirror: String,
    pub inject: Option<String>,
    pub guest_exec: Option<String>,
    /// The pinstorm binary the guest runs (default: this one).
    pub guest_exe: Option<PathBuf>,
    pub verbose: bool,
}

/// One kernel's line of the matrix.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KernelOutcome {
    pub spec: String,
    pub release: Option<String>,
    /// `ok`, `differs` (a fact of the result differs from the expectations: a probe cell, a
    /// storm's registrations or oracle count, a lease lifecycle fact; as `pinstorm run`
    /// would exit 3), `kernel-warning` (the console shows a WARNING, hung task, RCU stall or
    /// lockdep report), `oops`, `panic`,
    /// `timeout`, `guest-error`, `setup-error`, `interrupted`.
    pub status: String,
    pub result: Option<PathBuf>,
    pub summary: String,
    pub wall_seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct MatrixState {
    key: String,
    kernels: Vec<KernelOutcome>,
}

pub struct LabOutcome {
    pub kernels: Vec<KernelOutcome>,
    pub state_file: PathBuf,
    pub interrupted: Option<i32>,
}

impl LabOutcome {
    /// 0 when every kernel ran and agreed with its expectations; 3 when one differs; 1 when a
    /// guest panicked, hung or could not run; 128+N when interrupted.
    pub fn exit_code(&self) -> i32 {
        if let Some(s) = self.interrupted {
            return 128 + s;
        }
        if self
            .kernels
            .iter()
            .any(|k| !matches!(k.status.as_str(), "ok" | "differs" | "kernel-warning"))
        {
            return 1;
        }
        if self
            .kernels
            .iter()
            .any(|k| matches!(k.status.as_str(), "differs" | "kernel-warning"))
        {
            return 3;
        }
        0
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A lock on the cache for the whole lab run: with it held, every run directory left under
/// `CACHE/runs` belongs to a lab that died, and is cleaned.
struct CacheLock {
    _f: File,
}

/// The file that marks a directory as a pinstorm lab cache, and one of its run directories.
const CACHE_MARKER: &str = ".pinstorm-lab-cache";
const RUN_MARKER: &str = ".pinstorm-lab-run";

fn lock_cache(cache: &Path) -> Result<CacheLock> {
    // A cache is a directory pinstorm made (or an empty one): never a directory with other
    // data in it, since cleanup removes what it finds under runs/.
    if let Some(sys) = [
        "/", "/tmp", "/var", "/var/tmp", "/home", "/root", "/usr", "/etc", "/srv", "/opt", "/mnt",
    ]
    .iter()
    .find(|s| Path::new(s) == cache)
    {
        bail!("--cache {} is a system directory ({sys}); name a directory of its own, e.g. ~/.cache/pinstorm", cache.display());
    }
    if cache.exists() && !cache.join(CACHE_MARKER).exists() {
        // Only what a lab (or scripts/lab-setup.sh, which makes the venv) puts there.
        let foreign = std::fs::read_dir(cache)
            .with_context(|| format!("--cache {}", cache.display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| {
                let known = matches!(
                    n.as_str(),
                    "venv" | "kernels" | "apt" | "downloads" | "runs" | "lab.lock"
                ) || n.starts_with("accel-");
                !known
            });
        if foreign.is_some() {
            bail!(
                "--cache {} holds files but is not a pinstorm lab cache (no {CACHE_MARKER}); refusing to use it, since the lab deletes what it leaves in there. Name an empty or new directory.",
                cache.display()
            );
        }
    }
    std::fs::create_dir_all(cache)
        .with_context(|| format!("creating --cache {}", cache.display()))?;
    // The lab deletes run directories in here as root: the cache must be ours (owner, mode,
    // no symlink, parents nobody else can rename in), not just carry the marker.
    pinstorm_workloads::scratch::owned::check_own_dir(cache, "--cache")?;
    std::fs::write(cache.join(CACHE_MARKER), "pinstorm lab cache\n")
        .with_context(|| format!("writing {}", cache.join(CACHE_MARKER).display()))?;
    let lock_path = cache.join("lab.lock");
    let f =
        File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        anyhow::anyhow!(
            "another pinstorm lab is using the cache {} (it is locked); wait for it or use --cache",
            cache.display()
        )
    })?;
    Ok(CacheLock { _f: f })
}

/// Kill guests and remove run directories that a killed lab left in `cache/runs`.
/// Call only with the cache lock held.
pub fn clean_leftovers(cache: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let runs = cache.join("runs");
    for e in std::fs::read_dir(&runs).into_iter().flatten().flatten() {
        let dir = e.path();
        if !dir.join(RUN_MARKER).is_file() {
            out.push(format!(
                "left alone {} (not a pinstorm lab run directory)",
                dir.display()
            ));
            continue;
        }
        if let Some(m) = vm::kill_leftover(&dir.join("pgid"), &dir) {
            out.push(m);
        }
        if vm::run_dir_processes(&dir) {
            out.push(format!(
                "PROBLEM: processes of {} survive SIGKILL; kept it so a later cleanup finds them",
                dir.display()
            ));
            continue;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => out.push(format!(
                "removed {} (left by a killed lab run)",
                dir.display()
            )),
            Err(err) => out.push(format!(
                "PROBLEM: could not remove {}: {err}",
                dir.display()
            )),
        }
    }
    out
}

/// `pinstorm cleanup --cache`: take the lock and clean.
pub fn cleanup(cache: &Path) -> Result<Vec<String>> {
    let cache = scratch::checked_write_path(cache, "--cache")?;
    if !cache.exists() {
        return Ok(Vec::new());
    }
    let _l = lock_cache(&cache)?;
    Ok(clean_leftovers(&cache))
}

/// Fetch and unpack the kernels only (`--fetch-only`).
pub fn fetch(opts: &LabOptions) -> Result<Vec<Kernel>> {
    let cache = scratch::checked_write_path(&opts.cache, "--cache (or PINSTORM_CACHE)")?;
    let _lock = lock_cache(&cache)?;
    let apt = apt::Apt::new(&cache.join("apt"), &opts.mirror, &opts.security_mirror)?;
    let log = |m: &str| {
        if opts.verbose {
            eprintln!("pinstorm lab: {m}");
        }
    };
    opts.kernels
        .iter()
        .map(|spec| prepare(opts, &cache, &apt, spec, &log))
        .collect()
}

fn prepare(
    opts: &LabOptions,
    cache: &Path,
    apt: &apt::Apt,
    spec: &KernelSpec,
    log: &dyn Fn(&str),
) -> Result<Kernel> {
    match spec {
        KernelSpec::Deb(w) => kernels::prepare_deb(cache, apt, w, opts.refresh, log),
        KernelSpec::Path { image, modules } => {
            kernels::prepare_path(cache, image, modules.as_deref())
        }
        KernelSpec::Tree(d) => kernels::prepare_tree(d),
    }
}

pub fn run(opts: &LabOptions) -> Result<LabOutcome> {
    signals::install();
    let cache = scratch::checked_write_path(&opts.cache, "--cache (or PINSTORM_CACHE)")?;
    let results_root = scratch::checked_write_path(&opts.results_root, "--results")?;
    let _lock = lock_cache(&cache)?;
    for line in clean_leftovers(&cache) {
        eprintln!("pinstorm lab: {line}");
    }
    let log = |m: &str| {
        if opts.verbose {
            eprintln!("pinstorm lab: {m}");
        }
    };
    let vng = vm::find_vng(opts.vng.as_deref(), &cache)?;
    let guest_exe = match &opts.guest_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("finding the pinstorm binary")?,
    };

    // The matrix key: what makes two lab runs the same run, for resuming.
    // Everything that changes what a guest measures or how it is judged.
    let key_src = format!(
        "{:?}|{}|{:?}|{:?}|{:?}|{}|{}|{:?}|{:?}|{:?}|{}|{}|{}",
        opts.kernels,
        opts.scenario_text,
        opts.seed,
        opts.label,
        opts.pmem,
        opts.devdax,
        opts.rxe,
        opts.inject,
        opts.expectations,
        opts.guest_exec,
        opts.memory_mib,
        opts.cpus,
        opts.accel
    );
    let key = format!("{:016x}", fnv(&key_src));
    let state_dir = results_root.join("lab-matrix");
    std::fs::create_dir_all(&state_dir)?;
    let safe_name: String = opts
        .scenario_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let state_file = state_dir.join(format!("{safe_name}-{key}.json"));
    let mut state: MatrixState = if opts.fresh {
        MatrixState::default()
    } else {
        std::fs::read(&state_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    };
    state.key = key;

    let apt = apt::Apt::new(&cache.join("apt"), &opts.mirror, &opts.security_mirror)?;
    let mut outcome = LabOutcome {
        kernels: Vec::new(),
        state_file: state_file.clone(),
        interrupted: None,
    };
    for spec in &opts.kernels {
        let spec_s = spec.to_string();
        if let Some(done) = state.kernels.iter().find(|k| {
            k.spec == spec_s
                && matches!(
                    k.status.as_str(),
                    "ok" | "differs" | "panic" | "oops" | "kernel-warning"
                )
                && k.result.as_ref().is_some_and(|p| p.exists())
        }) {
            log(&format!(
                "{spec_s}: already measured in this matrix ({}), skipping; --fresh measures again",
                done.result
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ));
            let mut k = done.clone();
            k.summary = format!("(measured before, resumed) {}", k.summary);
            outcome.kernels.push(k);
            continue;
        }
        if let Some(sig) = signals::pending() {
            outcome.interrupted = Some(sig);
            break;
        }
        let k = run_one(
            opts,
            &cache,
            &results_root,
            &apt,
            &vng,
            &guest_exe,
            spec,
            &log,
        );
        let k = match k {
            Ok(k) => k,
            Err(e) => KernelOutcome {
                spec: spec_s.clone(),
                release: None,
                status: "setup-error".into(),
                result: None,
                summary: format!("{e:#}"),
                wall_seconds: 0.0,
            },
        };
        log(&format!("{spec_s}: {} {}", k.status, k.summary));
        state.kernels.retain(|x| x.spec != spec_s);
        state.kernels.push(k.clone());
        store::write_atomic(&state_file, &serde_json::to_vec_pretty(&state)?)?;
        let stop = k.status == "interrupted";
        outcome.kernels.push(k);
        if stop {
            outcome.interrupted = signals::pending().or(Some(libc::SIGINT));
            break;
        }
    }
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    opts: &LabOptions,
    cache: &Path,
    results_root: &Path,
    apt: &apt::Apt,
    vng: &Path,
    guest_exe: &Path,
    spec: &KernelSpec,
    log: &dyn Fn(&str),
) -> Result<KernelOutcome> {
    let kernel = prepare(opts, cache, apt, spec, log)?;
    log(&format!(
        "{spec}: kernel {} ({}{})",
        kernel.release,
        kernel.source.join(", "),
        if kernel.cached { ", cached" } else { "" }
    ));
    let image = if kernel.boot.is_dir() {
        kernel.boot.join("arch/x86/boot/bzImage")
    } else {
        kernel.boot.clone()
    };
    let accel = vm::probe_accel(cache, &image, &opts.accel);
    log(&format!(
        "{spec}: {} ({})",
        if accel.kvm { "KVM" } else { "TCG" },
        accel.reason
    ));

    // The run directory: staging (shared with the guest), NVDIMM image, vng's HOME/TMPDIR.
    let run_id = new_run_id();
    let run_dir = cache.join("runs").join(&run_id);
    let mut guard = RunDir(Some(run_dir.clone()));
    let stage = run_dir.join("stage");
    let home = run_dir.join("home");
    let tmp = run_dir.join("tmp");
    for d in [&stage, &home, &tmp] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(run_dir.join(RUN_MARKER), &run_id)?;
    let nvdimm = run_dir.join("nvdimm.img");
    if opts.pmem == PmemMode::Nvdimm {
        File::create(&nvdimm)
            .and_then(|f| f.set_len(1 << 30))
            .with_context(|| format!("creating the NVDIMM backing file {}", nvdimm.display()))?;
    }
    // `--inject KIND` applies to every kernel, `--inject KIND:SPEC` to one.
    let inject = opts
        .inject
        .as_deref()
        .and_then(|i| match i.split_once(':') {
            Some((kind, only)) if only == spec.to_string() => Some(kind.to_string()),
            Some(_) => None,
            None => Some(i.to_string()),
        });
    let plan = GuestPlan {
        scenario_text: opts.scenario_text.clone(),
        origin: opts.origin.clone(),
        seed: opts.seed,
        label: opts.label.clone(),
        expectations: opts.expectations.clone(),
        stage: stage.clone(),
        pmem: opts.pmem,
        devdax: opts.devdax,
        rxe: opts.rxe,
        inject,
        guest_exec: opts.guest_exec.clone(),
    };
    let plan_path = stage.join("plan.json");
    std::fs::write(&plan_path, serde_json::to_vec_pretty(&plan)?)?;
    let exec = format!(
        "{} __lab-guest {}",
        shell_quote(&guest_exe.display().to_string()),
        shell_quote(&plan_path.display().to_string())
    );
    let shape = vm::GuestShape {
        boot: &kernel.boot,
        accel: &accel,
        stage: &stage,
        pmem: opts.pmem,
        nvdimm_image: &nvdimm,
        memory_mib: opts.memory_mib,
        cpus: opts.cpus,
        exec,
    };
    let args = vm::vng_args(&shape);
    let env = vm::vng_env(vng, &home, &tmp);
    let qemu = vm::qemu_command(vng, &args, &env);
    log(&format!(
        "{spec}: booting {} (timeout {}s)",
        kernel.release,
        opts.timeout.as_secs()
    ));
    let console_path = run_dir.join("console.log");
    let stdout_path = run_dir.join("guest-stdout.log");
    let end = vm::boot(
        vng,
        &args,
        &env,
        &console_path,
        &stdout_path,
        &run_dir.join("pgid"),
        opts.timeout,
    );
    let console_text = std::fs::read_to_string(&console_path).unwrap_or_default()
        + &std::fs::read_to_string(&stdout_path)
            .map(|s| {
                if s.is_empty() {
                    s
                } else {
                    format!("\n--- guest stdout ---\n{s}")
                }
            })
            .unwrap_or_default();
    let end = match end {
        Ok(e) => e,
        Err(e) => {
            if vm::run_dir_processes(&run_dir) {
                // Keep the directory (and its pgid file): the next lab or cleanup finds them.
                guard.0 = None;
                return Err(e.context(format!(
                    "guest processes of {} are still alive; `pinstorm cleanup --cache` will try again",
                    run_dir.display()
                )));
            }
            return Err(e);
        }
    };
    let events = console::events(&console_text);
    let report: Option<GuestReport> = std::fs::read(stage.join("guest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let guest_result: Option<RunResult> = report
        .as_ref()
        .and_then(|r| r.result.as_ref())
        .filter(|p| p.starts_with(&stage))
        .and_then(|p| store::read_result(p).ok());

    let (status, reason) = if let Some(ev) = console::panicked(&events) {
        (
            "panic",
            Some(format!(
                "the guest kernel panicked (console line {}):\n{}",
                ev.line,
                console::excerpt(&console_text, ev.line, 25, 3)
            )),
        )
    } else if end.timed_out {
        let hung = events.iter().find(|e| e.kind == "hung-task");
        (
            "timeout",
            Some(format!(
                "{} after {}s; the guest was killed{}; console tail:\n{}",
                if guest_result.is_some() {
                    "the guest wrote its result but did not exit"
                } else {
                    "no result"
                },
                opts.timeout.as_secs(),
                hung.map(|h| format!(" (hung task reported: {})", h.text))
                    .unwrap_or_default(),
                console::tail(&console_text, 30)
            )),
        )
    } else if let Some(sig) = end.interrupted {
        (
            "interrupted",
            Some(format!("stopped by {}", signals::signal_name(sig))),
        )
    } else if let Some(ev) = events
        .iter()
        .find(|e| matches!(e.kind.as_str(), "oops" | "bug" | "lockup"))
    {
        (
            "oops",
            Some(format!(
                "the guest kernel reported {} (console line {}):\n{}",
                ev.kind,
                ev.line,
                console::excerpt(&console_text, ev.line, 5, 25)
            )),
        )
    } else if let Some(e) = guest_result.as_ref().and_then(|r| r.error.clone()) {
        (
            "guest-error",
            Some(format!(
                "the scenario stopped on an error in the guest: {e}"
            )),
        )
    } else if guest_result.is_none() {
        (
            "guest-error",
            Some(format!(
                "the guest returned no result (vng exit {:?}{}); console tail:\n{}",
                end.exit,
                report
                    .as_ref()
                    .and_then(|r| r.error.as_ref())
                    .map(|e| format!(", guest error: {e}"))
                    .unwrap_or_default(),
                console::tail(&console_text, 30)
            )),
        )
    } else {
        ("ok", None)
    };

    let lab = LabRecord {
        kernel_spec: spec.to_string(),
        kernel_source: kernel.source.clone(),
        status: status.into(),
        reason: reason.clone(),
        accel: if accel.kvm { "kvm" } else { "tcg" }.into(),
        accel_reason: accel.reason.clone(),
        vng_command: std::iter::once(vng.display().to_string())
            .chain(args.iter().cloned())
            .collect(),
        qemu_command: qemu,
        console_log: "console.log".into(),
        console_events: events,
        wall_seconds: end.wall.as_secs_f64(),
        guest: report.as_ref().map(|r| r.facts.clone()).unwrap_or_default(),
    };
    let mut result = match guest_result {
        Some(r) => r,
        None => placeholder_result(opts, &kernel, &run_id, reason.as_deref().unwrap_or("")),
    };
    if result.label.is_none() {
        result.label = opts.label.clone();
    }
    result.lab = Some(lab);
    // The guest names its release and run id; they become directory names on the host, so
    // they must be plain names (the host's own run id otherwise).
    let plain =
        |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0');
    if !plain(&result.run_id) {
        result.run_id = run_id.clone();
    }
    if !plain(&result.environment.kernel_release) {
        result.environment.kernel_release = kernel.release.clone();
    }
    let dir = store::result_dir(
        results_root,
        &result.environment.kernel_release,
        &result.run_id,
    );
    let stored = (|| -> Result<PathBuf> {
        let path = store::write_result(&dir, &result)?;
        store::write_atomic(&dir.join("console.log"), console_text.as_bytes())?;
        if let Ok(g) = std::fs::read(stage.join("guest-exec.log")) {
            store::write_atomic(&dir.join("guest-exec.log"), &g)?;
        }
        Ok(path)
    })();
    let path = match stored {
        Ok(p) => p,
        Err(e) => {
            // Lose nothing measured: keep the staged result where it is and say where.
            guard.0 = None;
            return Err(e.context(format!(
                "storing the result under {} failed; the guest's result is kept in {}",
                dir.display(),
                stage.display()
            )));
        }
    };
    drop(guard);

    // The same judgement as the run's exit status and its KTAP/JUnit export.
    let differs = pinstorm_analysis::verdict::judge(&result).status
        == pinstorm_analysis::verdict::Status::Differs;
    let warned = lab_events_warn(result.lab.as_ref());
    let status = match status {
        "ok" if differs => "differs",
        "ok" if warned => "kernel-warning",
        s => s,
    };
    Ok(KernelOutcome {
        spec: spec.to_string(),
        release: Some(result.environment.kernel_release.clone()),
        status: status.into(),
        result: Some(path),
        summary: summarize(&result),
        wall_seconds: end.wall.as_secs_f64(),
    })
}

/// A result for a guest that produced none (panic, timeout, error), so the matrix has a
/// record of the kernel with the reason.
fn placeholder_result(opts: &LabOptions, kernel: &Kernel, run_id: &str, reason: &str) -> RunResult {
    RunResult {
        schema: SCHEMA_NAME.into(),
        schema_version: SCHEMA_VERSION,
        run_id: run_id.into(),
        label: opts.label.clone(),
        started: now_rfc3339(),
        finished: Some(now_rfc3339()),
        complete: false,
        interrupted: None,
        error: Some(
            reason
                .lines()
                .next()
                .unwrap_or("the guest returned no result")
                .to_string(),
        ),
        command: std::env::args().collect(),
        tool: Tool {
            name: "pinstorm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        scenario: ScenarioRecord {
            name: opts.scenario_name.clone(),
            origin: opts.origin.clone(),
            seed: opts.seed.unwrap_or(0),
            text: opts.scenario_text.clone(),
        },
        environment: Environment {
            kernel_release: kernel.release.clone(),
            virtualized: Some("qemu".into()),
            ..Environment::default()
        },
        backings: Vec::new(),
        probe: Vec::new(),
        bench: Vec::new(),
        storms: Vec::new(),
        leases: None,
        storm_verdicts: Vec::new(),
        expectations: None,
        pin_counters: None,
        hugepages: None,
        notes: vec![format!("no result came back from the guest: {reason}")],
        lab: None,
    }
}

/// Whether the console shows kernel warnings worth failing a CI run on (exit 3).
fn lab_events_warn(lab: Option<&LabRecord>) -> bool {
    lab.is_some_and(|l| {
        l.console_events.iter().any(|e| {
            matches!(
                e.kind.as_str(),
                "warning" | "hung-task" | "rcu-stall" | "lockdep"
            )
        })
    })
}

/// Removes a lab run directory when dropped (every early return of a kernel's run), unless
/// disarmed because something in it must survive.
struct RunDir(Option<PathBuf>);

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn fact_ok(facts: &[LabFact], name: &str) -> Option<bool> {
    facts
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.outcome == "ok")
}

/// One line for the matrix table: DAX verified, rxe, probe verdicts, violations.
pub fn summarize(r: &RunResult) -> String {
    let mut parts = Vec::new();
    let backing_ok = |name: &str| {
        r.backings
            .iter()
            .find(|b| b.backing == name)
            .map(|b| b.outcome == "ok")
    };
    let dax: Vec<String> = ["xfs-dax", "ext4-dax", "devdax"]
        .iter()
        .filter_map(|n| {
            backing_ok(n).map(|ok| format!("{n} {}", if ok { "DAX" } else { "notrun" }))
        })
        .collect();
    if !dax.is_empty() {
        parts.push(dax.join(", "));
    }
    if let Some(lab) = &r.lab {
        if let Some(ok) = fact_ok(&lab.guest, "rxe") {
            parts.push(format!("rxe {}", if ok { "active" } else { "notrun" }));
        }
        let bad: Vec<_> = lab
            .console_events
            .iter()
            .filter(|e| e.kind != "hung-task" || lab.status != "ok")
            .map(|e| e.kind.as_str())
            .collect();
        if !bad.is_empty() {
            parts.push(format!("console: {}", bad.join(",")));
        }
    }
    if !r.probe.is_empty() {
        use pinstorm_analysis::verdict::Verdict;
        let count = |v: Verdict| r.probe.iter().filter(|p| p.verdict == v).count();
        parts.push(format!(
            "probe {} as expected, {} differ, {} notrun",
            count(Verdict::AsExpected),
            count(Verdict::Differs),
            r.probe.iter().filter(|p| p.outcome == "notrun").count()
        ));
    }
    let lost: u64 = r.storms.iter().map(|s| s.oracle.lost_write.count).sum();
    if !r.storms.is_empty() {
        parts.push(format!("storms: {lost} lost writes"));
    }
    if let Some(e) = &r.error {
        parts.push(format!("error: {e}"));
    }
    parts.join("; ")
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Check the parts of the options a user typed, before anything is fetched or booted.
pub fn check(opts: &LabOptions) -> Result<()> {
    if opts.kernels.is_empty() {
        bail!("--kernels is empty");
    }
    if opts.memory_mib < 1024 {
        bail!("--memory must be at least 1024 MiB");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("pinstorm-labcache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_cache_is_new_empty_or_ours_and_cleanup_touches_only_marked_runs() {
        assert!(lock_cache(Path::new("/tmp")).is_err());
        let foreign = tmp("foreign");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("thesis.tex"), "precious").unwrap();
        let e = lock_cache(&foreign).err().unwrap().to_string();
        assert!(e.contains("not a pinstorm lab cache"), "{e}");
        assert!(foreign.join("thesis.tex").exists());

        let ours = tmp("ours");
        drop(lock_cache(&ours).unwrap());
        assert!(ours.join(CACHE_MARKER).exists());
        let marked = ours.join("runs/a");
        let unmarked = ours.join("runs/b");
        std::fs::create_dir_all(&marked).unwrap();
        std::fs::create_dir_all(&unmarked).unwrap();
        std::fs::write(marked.join(RUN_MARKER), "a").unwrap();
        let lines = clean_leftovers(&ours);
        assert!(!marked.exists(), "{lines:?}");
        assert!(unmarked.exists(), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("left alone")), "{lines:?}");
        let _ = std::fs::remove_dir_all(&foreign);
        let _ = std::fs::remove_dir_all(&ours);
    }

    #[test]
    fn resumed_failures_still_fail_the_exit_code() {
        let k = |status: &str| KernelOutcome {
            spec: "deb:6.1".into(),
            release: None,
            status: status.into(),
            result: None,
            summary: String::new(),
            wall_seconds: 0.0,
        };
        let o = |ks: Vec<KernelOutcome>| LabOutcome {
            kernels: ks,
            state_file: PathBuf::new(),
            interrupted: None,
        };
        assert_eq!(o(vec![k("ok")]).exit_code(), 0);
        assert_eq!(o(vec![k("ok"), k("kernel-warning")]).exit_code(), 3);
        assert_eq!(o(vec![k("differs"), k("panic")]).exit_code(), 1);
        assert_eq!(o(vec![k("oops")]).exit_code(), 1);
    }
}
