//! What a lab run is asked to do: the plan every guest measures (whose hash is the matrix's
//! resume key), the host-side options around it, and the `--inject` test hooks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use pinstorm_workloads::scenario::Scenario;

use crate::guest::{InjectKind, PmemMode};
use crate::kernels::KernelSpec;

/// The default matrix: an old LTS, the current stable, and the newest in Debian unstable.
pub const DEFAULT_KERNELS: &[&str] = &["deb:6.1", "deb:6.12", "deb:sid"];

/// Everything that changes what a guest measures or how its result is judged.
///
/// The matrix's resume key is a hash of this, serialized ([`LabPlan::resume_key`]): an
/// option added here is part of the key without anyone remembering to add it, and one that
/// does not belong here (where things are cached, how long to wait) goes in [`LabOptions`].
#[derive(Clone, Debug, Serialize)]
pub struct LabPlan {
    pub kernels: Vec<KernelSpec>,
    /// The scenario file's text (validated), as every guest parses it.
    pub scenario_text: String,
    /// `--seed`: overrides the scenario's.
    pub seed: Option<u64>,
    pub label: Option<String>,
    /// The `--expectations` files as (origin, text), in order; None: the built-in ones.
    pub expectations: Option<Vec<(String, String)>>,
    /// `auto`, `kvm` or `tcg`.
    pub accel: String,
    pub pmem: PmemMode,
    pub devdax: bool,
    pub rxe: bool,
    pub memory_mib: u64,
    pub cpus: usize,
    pub inject: Option<Inject>,
    pub guest_exec: Option<String>,
    /// `--build`: build `tree:` kernels (vng --kconfig with the lab's options, make) before
    /// booting them; such a kernel is measured every time, never resumed (the tree changes
    /// between runs: that is what a bisection does).
    pub build: bool,
    /// `--pmem-scratch-dev`: the guest makes an fsdax namespace per filesystem and hands
    /// them to the run as `--scratch-dev FS=DEV` instead of making the filesystems itself.
    pub pmem_scratch_dev: bool,
    /// `--kmem-node`: the guest gets a memoryless NUMA node 1 whose memory is a device-dax
    /// namespace onlined as system RAM (the memory-offline operation's target).
    pub kmem_node: bool,
    /// `--movablecore SIZE`: the guest kernel boots with `movablecore=SIZE` (a ZONE_MOVABLE
    /// of that size, or percentage of memory), where a long-term pin must migrate its pages
    /// out first (docs/lab.md).
    pub movablecore: Option<String>,
    /// `--kselftests`: the kernel's own selftests (allow-listed names) run in each guest
    /// after the scenario, built from Debian's `linux-source` of the guest's kernel.
    pub kselftests: Vec<String>,
    /// `--kselftest-source SERIES`: build them from `linux-source-SERIES` instead (a tree
    /// that has a test the kernel's own lacks; the record says the versions differ).
    pub kselftest_source: Option<String>,
}

/// Whether `s` is a value the kernel takes for `movablecore=`: a size (`512M`, `1G`,
/// `1048576`) or a percentage of memory below 100 (`25%`).
pub fn valid_movablecore(s: &str) -> bool {
    if let Some(p) = s.strip_suffix('%') {
        return !p.is_empty()
            && p.len() <= 2
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n > 0);
    }
    let digits = s.strip_suffix(['K', 'M', 'G']).unwrap_or(s);
    !digits.is_empty()
        && digits.len() <= 12
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<u64>().is_ok_and(|n| n > 0)
}

impl LabPlan {
    /// What makes two lab runs the same matrix, for resuming: a hash of the whole plan.
    pub fn resume_key(&self) -> Result<String> {
        let json = serde_json::to_string(self)
            .context("the lab plan does not serialize (a path that is not UTF-8?)")?;
        Ok(format!("{:016x}", crate::fnv(&json)))
    }
}

/// A lab run: the plan, and how the host goes about it.
#[derive(Clone, Debug)]
pub struct LabOptions {
    pub plan: LabPlan,
    /// Where the scenario came from (a file, `builtin:NAME`), recorded in results.
    pub origin: String,
    pub scenario_name: String,
    pub results_root: PathBuf,
    pub cache: PathBuf,
    pub vng: Option<PathBuf>,
    /// Watchdog: a guest that has not returned after this long is killed. Not in the plan:
    /// a kernel that timed out runs again when the matrix resumes anyway.
    pub timeout: Duration,
    /// Guests booted at once (`--jobs`).
    pub jobs: usize,
    pub refresh: bool,
    pub fresh: bool,
    pub mirror: String,
    pub security_mirror: String,
    /// The pinstorm binary the guest runs (default: this one).
    pub guest_exe: Option<PathBuf>,
    pub verbose: bool,
}

/// Guests at once when `--jobs` is not given: half the host's CPUs (each TCG guest keeps a
/// core or more busy), and no more than free memory holds (a guest's RAM and its 1 GiB
/// NVDIMM), at least one.
pub fn default_jobs(memory_mib: u64) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let available_mib =
        pinstorm_workloads::sysctl::meminfo_kb("MemAvailable:").map_or(0, |kb| kb / 1024);
    jobs_for(cpus, available_mib, memory_mib.saturating_add(1024))
}

fn jobs_for(cpus: usize, available_mib: u64, guest_mib: u64) -> usize {
    let by_memory = (available_mib / guest_mib.max(1)) as usize;
    (cpus / 2).min(by_memory).max(1)
}

impl LabOptions {
    /// The seed every guest runs with: `--seed`, else the scenario's own (the guest parses
    /// the same text).
    pub fn seed(&self) -> Result<u64> {
        if let Some(s) = self.plan.seed {
            return Ok(s);
        }
        Scenario::parse(&self.plan.scenario_text, &self.origin)
            .map(|s| s.seed)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("the lab's scenario ({})", self.origin))
    }
}

/// Check the parts of the options a user typed, before anything is fetched or booted.
/// The most guest memory and CPUs: far beyond what a lab guest needs, so that a typo (an
/// extra digit, a byte count given as MiB) is refused instead of handed to QEMU.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
pub const MAX_CPUS: usize = 256;

pub fn check(opts: &LabOptions) -> Result<()> {
    if opts.plan.kernels.is_empty() {
        bail!("--kernels is empty");
    }
    if opts.plan.build
        && !opts
            .plan
            .kernels
            .iter()
            .any(|k| matches!(k, KernelSpec::Tree(_)))
    {
        bail!("--build builds tree: kernels, and --kernels names none (e.g. --kernels tree:.)");
    }
    if !(1024..=MAX_MEMORY_MIB).contains(&opts.plan.memory_mib) {
        bail!(
            "--memory {}: must be between 1024 and {MAX_MEMORY_MIB} MiB",
            opts.plan.memory_mib
        );
    }
    if !(1..=MAX_CPUS).contains(&opts.plan.cpus) {
        bail!(
            "--cpus {}: must be between 1 and {MAX_CPUS}",
            opts.plan.cpus
        );
    }
    if let Some(m) = &opts.plan.movablecore {
        if !valid_movablecore(m) {
            bail!("--movablecore {m:?}: a size (512M, 1G) or a percentage of memory (25%)");
        }
    }
    if let Some(s) = &opts.plan.kselftest_source {
        if !crate::kselftest::valid_series(s) {
            bail!("--kselftest-source {s:?}: a kernel series such as 6.12");
        }
        if opts.plan.kselftests.is_empty() {
            bail!("--kselftest-source without --kselftests: name the tests to build");
        }
    }
    for n in &opts.plan.kselftests {
        crate::kselftest::parse_names(n).map_err(anyhow::Error::msg)?;
    }
    if opts.timeout.is_zero() {
        bail!("--timeout must be greater than zero (and at most 168h)");
    }
    if let Some(Inject {
        only: Some(only), ..
    }) = &opts.plan.inject
    {
        if !opts.plan.kernels.iter().any(|k| k.to_string() == *only) {
            let ks: Vec<String> = opts.plan.kernels.iter().map(|k| k.to_string()).collect();
            bail!(
                "--inject: {only} is not one of --kernels ({})",
                ks.join(", ")
            );
        }
    }
    opts.seed()?;
    Ok(())
}

/// `--inject KIND[:KERNEL]`: a test hook that proves the lab reports a dead guest and goes
/// on with the next kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Inject {
    pub kind: InjectKind,
    /// The one kernel of the matrix it applies to (as written in `--kernels`); every
    /// kernel when absent.
    pub only: Option<String>,
}

impl Inject {
    /// Parse `--inject`'s value: `panic` or `hang`, optionally `:KERNEL`.
    pub fn parse(s: &str) -> Result<Inject> {
        let (kind, only) = match s.split_once(':') {
            Some((k, only)) => (k, Some(only)),
            None => (s, None),
        };
        let kind = match kind {
            "panic" => InjectKind::Panic,
            "hang" => InjectKind::Hang,
            _ => bail!("--inject {s:?}: KIND is panic or hang"),
        };
        if only == Some("") {
            bail!("--inject {s:?}: name the kernel after the colon (e.g. {kind}:deb:6.1), or leave out the colon for every kernel");
        }
        Ok(Inject {
            kind,
            only: only.map(str::to_string),
        })
    }

    /// What the guest booting `spec` is told to do.
    pub fn for_kernel(&self, spec: &KernelSpec) -> Option<InjectKind> {
        match &self.only {
            Some(only) if *only != spec.to_string() => None,
            _ => Some(self.kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_at_once_default_to_half_the_cpus_within_free_memory_and_at_least_one() {
        assert_eq!(jobs_for(2, 64 * 1024, 3072), 1);
        assert_eq!(jobs_for(16, 64 * 1024, 3072), 8);
        assert_eq!(jobs_for(16, 7000, 3072), 2, "memory for two guests");
        assert_eq!(jobs_for(1, 0, 3072), 1, "never none");
    }

    fn plan() -> LabPlan {
        LabPlan {
            kernels: vec![KernelSpec::Deb("6.1".into())],
            scenario_text: Scenario::resolve("quick").unwrap().1,
            seed: None,
            label: None,
            expectations: None,
            accel: "auto".into(),
            pmem: PmemMode::Nvdimm,
            devdax: false,
            rxe: true,
            memory_mib: 2048,
            cpus: 2,
            inject: None,
            guest_exec: None,
            build: false,
            pmem_scratch_dev: false,
            kmem_node: false,
            movablecore: None,
            kselftests: Vec::new(),
            kselftest_source: None,
        }
    }

    #[test]
    fn movablecore_takes_what_the_kernel_takes() {
        for ok in ["512M", "1G", "1048576", "25%", "4K"] {
            assert!(valid_movablecore(ok), "{ok}");
        }
        for bad in [
            "", "0", "0%", "100%", "25%%", "1T", "-1G", "1G ro", "x", "512M\n",
        ] {
            assert!(!valid_movablecore(bad), "{bad:?}");
        }
    }

    #[test]
    fn every_field_of_the_plan_changes_the_resume_key() {
        type Change = fn(&mut LabPlan);
        let changes: &[(&str, Change)] = &[
            ("kernels", |p| p.kernels.push(KernelSpec::Deb("sid".into()))),
            ("scenario_text", |p| p.scenario_text.push_str("# another\n")),
            ("seed", |p| p.seed = Some(1)),
            ("label", |p| p.label = Some("gup-v3".into())),
            ("expectations", |p| {
                p.expectations = Some(vec![("/e.toml".into(), "[[rule]]\n".into())])
            }),
            ("accel", |p| p.accel = "tcg".into()),
            ("pmem", |p| p.pmem = PmemMode::Memmap),
            ("devdax", |p| p.devdax = true),
            ("rxe", |p| p.rxe = false),
            ("memory_mib", |p| p.memory_mib = 4096),
            ("cpus", |p| p.cpus = 4),
            ("inject", |p| {
                p.inject = Some(Inject {
                    kind: InjectKind::Hang,
                    only: None,
                })
            }),
            ("guest_exec", |p| p.guest_exec = Some("true".into())),
            ("build", |p| p.build = true),
            ("pmem_scratch_dev", |p| p.pmem_scratch_dev = true),
            ("kmem_node", |p| p.kmem_node = true),
            ("movablecore", |p| p.movablecore = Some("25%".into())),
            ("kselftests", |p| p.kselftests = vec!["gup_longterm".into()]),
            ("kselftest_source", |p| {
                p.kselftest_source = Some("6.12".into())
            }),
        ];
        let base = plan();
        let base_json = serde_json::to_value(&base).unwrap();
        let mut fields: Vec<&str> = base_json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut changed: Vec<&str> = changes.iter().map(|(n, _)| *n).collect();
        fields.sort_unstable();
        changed.sort_unstable();
        assert_eq!(
            fields, changed,
            "every field of the plan is changed once here"
        );
        let key = base.resume_key().unwrap();
        assert_eq!(key, plan().resume_key().unwrap(), "the key is stable");
        for (name, change) in changes {
            let mut p = plan();
            change(&mut p);
            let json = serde_json::to_value(&p).unwrap();
            assert_ne!(
                json[name], base_json[name],
                "{name}: the change is to {name}"
            );
            assert_ne!(p.resume_key().unwrap(), key, "{name} is not in the key");
        }
    }

    #[test]
    fn inject_is_parsed_once_with_clear_errors() {
        let all = Inject::parse("panic").unwrap();
        assert_eq!(all.kind, InjectKind::Panic);
        assert_eq!(all.only, None);
        let one = Inject::parse("hang:deb:6.1").unwrap();
        assert_eq!(one.kind, InjectKind::Hang);
        assert_eq!(one.only.as_deref(), Some("deb:6.1"));
        let e = Inject::parse("crash").unwrap_err().to_string();
        assert!(e.contains("--inject") && e.contains("panic or hang"), "{e}");
        let e = Inject::parse("panic:").unwrap_err().to_string();
        assert!(e.contains("name the kernel"), "{e}");
        assert!(Inject::parse("Panic").is_err());
    }

    #[test]
    fn inject_applies_to_every_kernel_or_the_one_named() {
        let k61 = KernelSpec::Deb("6.1".into());
        let k612 = KernelSpec::Deb("6.12".into());
        let all = Inject::parse("hang").unwrap();
        assert_eq!(all.for_kernel(&k61), Some(InjectKind::Hang));
        assert_eq!(all.for_kernel(&k612), Some(InjectKind::Hang));
        let one = Inject::parse("panic:deb:6.1").unwrap();
        assert_eq!(one.for_kernel(&k61), Some(InjectKind::Panic));
        assert_eq!(one.for_kernel(&k612), None);
    }

    fn opts(plan: LabPlan) -> LabOptions {
        LabOptions {
            plan,
            origin: "builtin:test".into(),
            scenario_name: "test".into(),
            results_root: "/r".into(),
            cache: "/c".into(),
            vng: None,
            timeout: Duration::from_secs(600),
            refresh: false,
            fresh: false,
            mirror: String::new(),
            security_mirror: String::new(),
            guest_exe: None,
            jobs: 1,
            verbose: false,
        }
    }

    #[test]
    fn check_refuses_an_inject_for_a_kernel_outside_the_matrix() {
        let mut p = plan();
        p.inject = Some(Inject::parse("panic:deb:6.12").unwrap());
        let e = check(&opts(p.clone())).unwrap_err().to_string();
        assert!(
            e.contains("deb:6.12 is not one of --kernels (deb:6.1)"),
            "{e}"
        );
        p.inject = Some(Inject::parse("panic:deb:6.1").unwrap());
        check(&opts(p)).unwrap();
    }

    #[test]
    fn build_is_refused_without_a_tree_kernel() {
        let mut p = plan();
        p.build = true;
        let e = check(&opts(p.clone())).unwrap_err().to_string();
        assert!(e.contains("--build builds tree: kernels"), "{e}");
        p.kernels.push(KernelSpec::Tree("/src/linux".into()));
        check(&opts(p)).unwrap();
    }

    #[test]
    fn the_seed_is_the_flags_else_the_scenarios() {
        let mut p = plan();
        assert!(p.scenario_text.contains("\nseed = 1\n"));
        p.scenario_text = p.scenario_text.replace("\nseed = 1\n", "\nseed = 7\n");
        assert_eq!(opts(p.clone()).seed().unwrap(), 7);
        p.seed = Some(3);
        assert_eq!(opts(p).seed().unwrap(), 3);
    }
}
