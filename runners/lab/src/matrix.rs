//! The matrix: kernel after kernel, with a state file so that rerunning the same plan
//! resumes where it stopped instead of measuring again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use pinstorm_analysis::store;
use pinstorm_runners::signals;
use pinstorm_workloads::scratch;

use crate::apt::Apt;
use crate::cache::{clean_leftovers, lock_cache};
use crate::kernel_run::{prepare_kernel, run_kernel, Lab};
use crate::kernels::{Kernel, KernelSpec};
use crate::options::LabOptions;
use crate::status::{self, KernelOutcome, KernelStatus};
use crate::vm;

pub struct LabOutcome {
    pub kernels: Vec<KernelOutcome>,
    pub state_file: PathBuf,
    pub interrupted: Option<i32>,
}

impl LabOutcome {
    /// 0 when every kernel ran and agreed with its expectations; 3 when one differs or
    /// warned; 1 when a guest panicked, hung or could not run; 128+N when interrupted.
    pub fn exit_code(&self) -> i32 {
        status::exit_code(self.kernels.iter().map(|k| k.status), self.interrupted)
    }
}

/// What a matrix has measured so far, in `RESULTS/lab-matrix/<scenario>-<key>.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct MatrixState {
    key: String,
    kernels: Vec<KernelOutcome>,
}

impl MatrixState {
    /// The state file of the matrix with resume key `key` (one per scenario and plan).
    fn path(results_root: &Path, scenario_name: &str, key: &str) -> PathBuf {
        let safe_name: String = scenario_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        results_root
            .join("lab-matrix")
            .join(format!("{safe_name}-{key}.json"))
    }

    /// The state to resume from: what the file says, or nothing (`--fresh`, no file, or a
    /// file that does not parse).
    fn load(path: &Path, key: String, fresh: bool) -> MatrixState {
        let mut state: MatrixState = if fresh {
            MatrixState::default()
        } else {
            std::fs::read(path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default()
        };
        state.key = key;
        state
    }

    /// The kernel's earlier line, if it was measured and its result is still there.
    fn measured(&self, spec: &str) -> Option<&KernelOutcome> {
        self.kernels.iter().find(|k| {
            k.spec == spec && k.status.measured() && k.result.as_ref().is_some_and(|p| p.exists())
        })
    }

    /// Record a kernel's line (replacing an earlier one) and save the state.
    fn record(&mut self, path: &Path, k: KernelOutcome) -> Result<()> {
        self.kernels.retain(|x| x.spec != k.spec);
        self.kernels.push(k);
        store::write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }
}

/// Whether a kernel measured before is taken from the matrix state instead of booted again:
/// not one that `--build` builds, whose tree may be at another commit by now.
fn resumable(build: bool, spec: &KernelSpec) -> bool {
    !(build && matches!(spec, KernelSpec::Tree(_)))
}

/// A lock whose holder panicked still guards plain data: take it anyway.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn logger(opts: &LabOptions) -> impl Fn(&str) + Sync + '_ {
    move |m: &str| {
        if opts.verbose {
            eprintln!("pinstorm lab: {m}");
        }
    }
}

/// Fetch and unpack the kernels only (`--fetch-only`), and build the `--kselftests`.
pub fn fetch(opts: &LabOptions) -> Result<Vec<Kernel>> {
    let cache = scratch::checked_write_path(&opts.cache, "--cache (or PINSTORM_CACHE)")?;
    let _lock = lock_cache(&cache)?;
    let apt = Apt::new(&cache.join("apt"), &opts.mirror, &opts.security_mirror)?;
    let log = logger(opts);
    opts.plan
        .kernels
        .iter()
        .map(|spec| {
            let k = prepare_kernel(opts, &cache, &apt, spec, &log)?;
            // The selftests too (their lines in the log say built or notrun, and why).
            crate::kselftest::prepare(
                &cache,
                &apt,
                &k,
                &opts.plan.kselftests,
                opts.plan.kselftest_source.as_deref(),
                &log,
            );
            Ok(k)
        })
        .collect()
}

/// Run the matrix: every kernel not measured before, one guest each. A kernel whose guest
/// dies does not stop the matrix; a signal does.
pub fn run(opts: &LabOptions) -> Result<LabOutcome> {
    signals::install();
    let cache = scratch::checked_write_path(&opts.cache, "--cache (or PINSTORM_CACHE)")?;
    let results_root = scratch::checked_write_path(&opts.results_root, "--results")?;
    let _lock = lock_cache(&cache)?;
    for line in clean_leftovers(&cache) {
        eprintln!("pinstorm lab: {line}");
    }
    let log = logger(opts);
    let vng = vm::find_vng(opts.vng.as_deref(), &cache)?;
    let guest_exe = match &opts.guest_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("finding the pinstorm binary")?,
    };
    let seed = opts.seed()?;

    let key = opts.plan.resume_key()?;
    let state_file = MatrixState::path(&results_root, &opts.scenario_name, &key);
    if let Some(dir) = state_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let state = MatrixState::load(&state_file, key, opts.fresh);

    let lab = Lab {
        opts,
        apt: Apt::new(&cache.join("apt"), &opts.mirror, &opts.security_mirror)?,
        cache,
        results_root,
        vng,
        guest_exe,
        seed,
        log: &log,
        prepare_lock: Mutex::new(()),
    };
    let kernels = &opts.plan.kernels;
    // Each kernel's line, in matrix order whatever order the guests finish in.
    let lines: Mutex<Vec<Option<KernelOutcome>>> = Mutex::new(vec![None; kernels.len()]);
    let mut todo = Vec::new();
    for (i, spec) in kernels.iter().enumerate() {
        let spec_s = spec.to_string();
        match state
            .measured(&spec_s)
            .filter(|_| resumable(opts.plan.build, spec))
        {
            Some(done) => {
                log(&format!(
                    "{spec_s}: already measured in this matrix ({}), skipping; --fresh measures again",
                    done.result
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ));
                let mut k = done.clone();
                k.summary = format!("(measured before, resumed) {}", k.summary);
                lock(&lines)[i] = Some(k);
            }
            None => todo.push(i),
        }
    }
    let state = Mutex::new(state);
    let next = AtomicUsize::new(0);
    let interrupted: Mutex<Option<i32>> = Mutex::new(None);
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    // Up to --jobs guests at once: each worker takes the next kernel not yet started.
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.clamp(1, todo.len().max(1)) {
            s.spawn(|| loop {
                if lock(&interrupted).is_some() || lock(&failed).is_some() {
                    break;
                }
                let Some(&i) = todo.get(next.fetch_add(1, Ordering::SeqCst)) else {
                    break;
                };
                if let Some(sig) = signals::pending() {
                    *lock(&interrupted) = Some(sig);
                    break;
                }
                let spec = &kernels[i];
                let spec_s = spec.to_string();
                let k = run_kernel(&lab, spec).unwrap_or_else(|e| KernelOutcome {
                    spec: spec_s.clone(),
                    release: None,
                    status: KernelStatus::SetupError,
                    result: None,
                    summary: format!("{e:#}"),
                    wall_seconds: 0.0,
                    timings: None,
                });
                log(&format!("{spec_s}: {} {}", k.status, k.summary));
                if let Err(e) = lock(&state).record(&state_file, k.clone()) {
                    lock(&failed).get_or_insert(e);
                }
                if k.status == KernelStatus::Interrupted {
                    *lock(&interrupted) = signals::pending().or(Some(libc::SIGINT));
                }
                lock(&lines)[i] = Some(k);
            });
        }
    });
    if let Some(e) = lock(&failed).take() {
        return Err(e);
    }
    let outcome = LabOutcome {
        kernels: lock(&lines).drain(..).flatten().collect(),
        state_file: state_file.clone(),
        interrupted: *lock(&interrupted),
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(spec: &str, status: KernelStatus, result: Option<PathBuf>) -> KernelOutcome {
        KernelOutcome {
            spec: spec.into(),
            release: None,
            status,
            result,
            summary: String::new(),
            wall_seconds: 0.0,
            timings: None,
        }
    }

    #[test]
    fn a_tree_the_lab_builds_is_measured_again_every_time() {
        let tree = KernelSpec::Tree("/src/linux".into());
        let deb = KernelSpec::Deb("6.1".into());
        assert!(
            !resumable(true, &tree),
            "a bisection moves the tree between runs"
        );
        assert!(resumable(true, &deb));
        assert!(resumable(false, &tree));
    }

    #[test]
    fn a_resumed_matrix_skips_only_kernels_measured_with_their_result_still_there() {
        let root = std::env::temp_dir().join(format!("pinstorm-labmatrix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let path = MatrixState::path(&root, "dax vs/pin", "00ff");
        assert_eq!(path, root.join("lab-matrix/dax_vs_pin-00ff.json"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let result = root.join("result.json");
        std::fs::write(&result, "{}").unwrap();

        let mut s = MatrixState::load(&path, "00ff".into(), false);
        for (spec, status, r) in [
            ("deb:6.1", KernelStatus::Panic, Some(result.clone())),
            ("deb:6.12", KernelStatus::Timeout, None),
            ("deb:sid", KernelStatus::Ok, Some(root.join("gone.json"))),
            ("deb:7.2", KernelStatus::Differs, Some(result.clone())),
        ] {
            s.record(&path, outcome(spec, status, r)).unwrap();
        }
        s.record(&path, outcome("deb:7.2", KernelStatus::GuestError, None))
            .unwrap();

        let back = MatrixState::load(&path, "00ff".into(), false);
        assert_eq!(back.kernels.len(), 4, "a kernel has one line");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"status\": \"panic\""), "{text}");
        assert!(text.contains("\"status\": \"guest-error\""), "{text}");
        assert!(back.measured("deb:6.1").is_some());
        assert!(back.measured("deb:6.12").is_none(), "a timeout runs again");
        assert!(back.measured("deb:sid").is_none(), "its result is gone");
        assert!(
            back.measured("deb:7.2").is_none(),
            "its last line is an error"
        );
        assert!(MatrixState::load(&path, "00ff".into(), true)
            .measured("deb:6.1")
            .is_none());
        let _ = std::fs::remove_dir_all(&root);
    }
}
