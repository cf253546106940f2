//! The guest side of the lab: `pinstorm __lab-guest PLAN` runs as PID 1's child in a
//! virtme-ng guest, sets up the emulated hardware (pmem namespaces with ndctl, FS-DAX xfs
//! and ext4 mounted `dax=always`, a device-dax namespace, soft-RoCE on a dummy netdev), runs
//! the scenario exactly as `pinstorm run` does on a host, and leaves the result and a record
//! of what it set up in the staging directory the host shared (`--rwdir`).
//!
//! Everything here happens inside the guest: its root is the host's, read-only, with
//! writable overlays (/tmp, /var, ...). The only host directory it can write is the staging
//! directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use pinstorm_analysis::expect::Expectations;
use pinstorm_analysis::schema::{LabFact, LabPhase};
use pinstorm_workloads::layout::LabMachine;
use pinstorm_workloads::scenario::Scenario;
use pinstorm_workloads::scratch::ScratchDevice;

use pinstorm_runners::backings::{Arriving, ArrivingSender, DaxTargets};
use pinstorm_runners::run::{self, RunOptions, ScratchDir, WriteDir};

use crate::template::TemplatePlan;

/// Where the guest mounts and scratches (inside the guest's writable /tmp overlay).
const GUEST_ROOT: &str = "/tmp/pinstorm-lab";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PmemMode {
    /// An emulated NVDIMM with labels: namespaces made with ndctl (fsdax, devdax).
    Nvdimm,
    /// Legacy e820 pmem from the `memmap=` kernel option: one raw pmem device, no ndctl.
    Memmap,
    /// No persistent memory.
    None,
}

/// What a guest does instead of running the scenario when told to (`--inject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InjectKind {
    /// Crash the guest kernel (sysrq-c).
    Panic,
    /// Never return.
    Hang,
}

impl fmt::Display for InjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            InjectKind::Panic => "panic",
            InjectKind::Hang => "hang",
        })
    }
}

/// What the host asks the guest to do. Written as JSON into the staging directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GuestPlan {
    /// The scenario file's text (already validated on the host) and where it came from.
    pub scenario_text: String,
    pub origin: String,
    pub seed: Option<u64>,
    pub label: Option<String>,
    /// The `--expectations` files as (origin, text), when the user gave any.
    pub expectations: Option<Vec<(String, String)>>,
    /// The staging directory (same path in the guest and on the host).
    pub stage: PathBuf,
    pub pmem: PmemMode,
    pub devdax: bool,
    pub rxe: bool,
    /// Test hooks: `panic` crashes the guest kernel (sysrq-c) before running, `hang` never
    /// returns. They let the tests prove the lab reports a dead guest and goes on.
    pub inject: Option<InjectKind>,
    /// A shell command to run after the scenario (`--guest-exec`), e.g. an independent
    /// probe; its output goes to `guest-exec.log` next to the result.
    pub guest_exec: Option<String>,
    /// How a reproducer names this guest's run: `pinstorm lab --kernels deb:sid` (with
    /// `--build` or `--modules` where the kernel needs them), before the scenario.
    #[serde(default)]
    pub reproduce_as: Vec<String>,
    /// Make an fsdax namespace per filesystem and hand them to the run as `--scratch-dev
    /// FS=DEV` instead of making the DAX filesystems here.
    #[serde(default)]
    pub pmem_scratch_dev: bool,
    /// Make a device-dax namespace of what the region has left and online it as system RAM
    /// on the guest's memoryless node 1 (`--kmem-node`).
    #[serde(default)]
    pub kmem_node: bool,
    /// The kernel was booted with `movablecore=` (`--movablecore`): record the zones.
    #[serde(default)]
    pub movablecore: bool,
    /// Whether the NVDIMM's backing file is a copy of the cache's template, or this guest
    /// makes it (see [`crate::template`]).
    #[serde(default)]
    pub nvdimm_template: Option<TemplatePlan>,
    /// The kernel selftests to run after the scenario (`--kselftests`), built on the host.
    #[serde(default)]
    pub kselftests: Vec<crate::kselftest::GuestSelftest>,
}

/// What the guest set up, written next to the result as `guest.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GuestReport {
    pub facts: Vec<LabFact>,
    pub result: Option<PathBuf>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub guest_exec_status: Option<i32>,
    /// Each set-up step and how long it took, by the guest's clock, when the run waited
    /// for them.
    #[serde(default)]
    pub setup: Vec<LabPhase>,
    /// The agent's start to the run's start.
    #[serde(default)]
    pub setup_s: Option<f64>,
    /// Each set-up step when they ran beside the run (see [`main`]).
    #[serde(default)]
    pub beside: Vec<LabPhase>,
    /// The scenario, from its start to its result.
    #[serde(default)]
    pub run_s: Option<f64>,
    /// How each kernel selftest ran (its output is `kselftest-NAME.log` in the staging
    /// directory).
    #[serde(default)]
    pub kselftests: Vec<crate::kselftest::GuestSelftestRun>,
}

/// The file the guest creates in the staging directory as its first step: the host takes
/// the moment it sees it as the end of the boot.
pub const STARTED_MARKER: &str = "started";

/// Set-up steps timed one after the other: each lap is the time since the previous one.
struct Laps {
    last: Instant,
    phases: Vec<LabPhase>,
}

impl Laps {
    fn new() -> Laps {
        Laps {
            last: Instant::now(),
            phases: Vec::new(),
        }
    }

    fn lap(&mut self, name: &str) {
        let now = Instant::now();
        self.phases.push(LabPhase {
            name: name.into(),
            seconds: (now - self.last).as_secs_f64(),
        });
        self.last = now;
    }
}

fn fact(name: &str, ok: bool, detail: impl Into<String>) -> LabFact {
    LabFact {
        name: name.into(),
        outcome: if ok { "ok" } else { "notrun" }.into(),
        detail: detail.into(),
    }
}

/// Run a command, returning stdout, or an error with its stderr.
fn sh(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("{prog}: not found in the guest (the host's root is the guest's; install it on the host)"))?;
    if !out.status.success() {
        bail!(
            "`{prog} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The modules the guest's pmem set-up loads (NVDIMM, FS-DAX, device-dax).
fn pmem_modules(plan: &GuestPlan) -> &'static [&'static str] {
    match (plan.pmem, plan.devdax || plan.kmem_node) {
        (PmemMode::Nvdimm, true) => &["nfit", "nd_pmem", "dax_pmem", "device_dax"],
        (PmemMode::Nvdimm, false) => &["nfit", "nd_pmem"],
        (PmemMode::Memmap, _) => &["nd_e820", "nd_pmem"],
        (PmemMode::None, _) => &[],
    }
}
/// The modules soft-RoCE needs.
const RXE_MODULES: &[&str] = &["dummy", "rdma_rxe", "ib_uverbs"];

/// Every module a lab guest may load: pmem in both modes, device-dax and kmem, soft-RoCE,
/// the disk filesystems and loop. The host decompresses these (and what they depend on) once
/// per unpacked kernel ([`crate::kernels`]): a TCG guest's kmod took seconds to unpack
/// xfs.ko.xz and ext4.ko.xz on 6.12 and 7.2.
pub const LAB_MODULES: &[&str] = &[
    "nfit",
    "nd_pmem",
    "dax_pmem",
    "device_dax",
    "nd_e820",
    "kmem",
    "dummy",
    "rdma_rxe",
    "ib_uverbs",
    "xfs",
    "ext4",
    "btrfs",
    "loop",
];

/// Which parts of the guest's set-up a run needs: why a part is skipped, or None when it
/// runs. A `--guest-exec` command may use anything, so it gets everything; otherwise pmem
/// only for a scenario with a DAX backing (or `--pmem-scratch-dev`), soft-RoCE only for one
/// with a pin path that drives an RDMA device. Each step skipped saves seconds of a TCG boot.
#[derive(Debug, PartialEq)]
struct Needs {
    pmem: Option<String>,
    rxe: Option<String>,
}

fn needs(plan: &GuestPlan, scenario: &Scenario) -> Needs {
    let everything = plan.guest_exec.is_some();
    let dax = scenario.backings_used().into_iter().any(|b| b.is_dax());
    let settings = scenario.pin_settings();
    let rdma = scenario
        .pins_used()
        .into_iter()
        .any(|k| k.path(&settings).uses_rdma_device());
    Needs {
        pmem: (!(everything || dax || plan.pmem_scratch_dev || plan.kmem_node)).then(|| {
            "not needed: the scenario uses no DAX backing (xfs-dax, ext4-dax, devdax)".into()
        }),
        rxe: if !plan.rxe {
            Some("not asked for (--no-rxe)".into())
        } else if !(everything || rdma) {
            Some("not needed: the scenario drives no RDMA device (rdma, rdma-odp)".into())
        } else {
            None
        },
    }
}

/// Whether the guest of `plan` sets up its persistent memory (the host copies a template
/// NVDIMM image only then), and whether its scenario uses the devdax backing (the guest
/// then makes a device-dax namespace whether `--devdax-namespace` was given or not).
pub(crate) fn wants(plan: &GuestPlan, scenario: &Scenario) -> (bool, bool) {
    (
        needs(plan, scenario).pmem.is_none(),
        scenario
            .backings_used()
            .contains(&pinstorm_workloads::backing::BackingKind::Devdax),
    )
}

/// The disk filesystems' modules a run of `scenario` mounts, and loop for their images (a
/// `--guest-exec` command may want loop too, the kernel's selftests loop and ext4).
fn fs_modules(plan: &GuestPlan, scenario: &Scenario) -> Vec<&'static str> {
    let used = scenario.backings_used();
    let mut m: Vec<&'static str> = used.iter().filter_map(|b| b.disk_fs()).collect();
    if plan.guest_exec.is_some() || used.iter().any(|b| b.makes_a_filesystem()) {
        m.push("loop");
    }
    // The kernel's selftests run from an ext4 image of their own (kselftest::run_in_guest).
    if !plan.kselftests.is_empty() {
        m.extend(["loop", "ext4"]);
    }
    m.sort_unstable();
    m.dedup();
    m
}

/// Every module the guest's set-up will load for `plan`, in two groups: the devices (the
/// pmem modules its layout needs, soft-RoCE's), and the filesystems in the order the set-up
/// mounts them (loop last: the run wants it only after the DAX mounts). The lab's init loads
/// the groups side by side in the background while virtme-ng's init runs
/// ([`crate::guest_init::EarlyModules`]); the agent then asks for what is not live yet.
fn module_groups(plan: &GuestPlan, scenario: &Scenario) -> [Vec<&'static str>; 2] {
    let needs = needs(plan, scenario);
    let mut devices = Vec::new();
    if needs.pmem.is_none() {
        devices.extend_from_slice(pmem_modules(plan));
    }
    if needs.rxe.is_none() {
        devices.extend_from_slice(RXE_MODULES);
    }
    let mut fs = fs_modules(plan, scenario);
    // The DAX filesystems are mounted in FSDAX_NAMESPACES's order, xfs first.
    fs.sort_by_key(|m| {
        FSDAX_NAMESPACES
            .iter()
            .position(|(f, _)| f == m)
            .unwrap_or(FSDAX_NAMESPACES.len() + usize::from(*m == "loop"))
    });
    [devices, fs]
}

/// The tags of [`module_groups`]' two groups, in order (their loaders' names, see
/// [`crate::guest_init::loader_name`]).
const GROUP_TAGS: [&str; 2] = ["devices", "fs"];

/// How long the agent waits for one of the init's loaders before it asks kmod itself.
const LOADER_BOUND: Duration = Duration::from_secs(60);

/// [`module_groups`] for the lab's init on the host: the groups that are not empty, each
/// with its tag (the files to load are the host's to add).
pub(crate) fn early_modules(
    plan: &GuestPlan,
    scenario: &Scenario,
) -> Vec<crate::guest_init::EarlyGroup> {
    GROUP_TAGS
        .into_iter()
        .zip(module_groups(plan, scenario))
        .filter(|(_, g)| !g.is_empty())
        .map(|(tag, modules)| crate::guest_init::EarlyGroup {
            tag,
            modules,
            files: None,
        })
        .collect()
}

/// Wait while the lab's init still loads the group `tag` (a process with its loader's name
/// is alive), at most `bound`; returns how long it waited. Then [`not_loaded`] tells what
/// it left for kmod: asking kmod while the loader runs costs a modprobe process started
/// over 9p (0.5-1 s under TCG) only to wait for the same modules.
fn wait_for_loader(tag: &str, bound: Duration) -> Duration {
    let name = crate::guest_init::loader_name(tag);
    let start = Instant::now();
    let alive = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == name.as_bytes()))
            })
    };
    while start.elapsed() < bound && alive() {
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// Of `names`, the modules not in the kernel yet, or still loading: the lab's init may have
/// started loading them in the background, and a module's sysfs directory appears before
/// its init (a driver's probe) is done. modprobe of a module another modprobe is loading
/// waits for it in the kernel, so asking again is always right, only slower.
fn not_loaded<'a>(names: &[&'a str]) -> Vec<&'a str> {
    names
        .iter()
        .filter(|n| {
            let d = Path::new("/sys/module").join(n.replace('-', "_"));
            match std::fs::read_to_string(d.join("initstate")) {
                Ok(state) => state.trim() != "live",
                // Built in (no initstate), or not there at all.
                Err(_) => !d.exists(),
            }
        })
        .copied()
        .collect()
}

/// Of `names`, what is not live yet, in one `modprobe -a` (one process over 9p, not one
/// per module). Whatever it cannot load, the step that needs it reports.
fn modprobe_missing(names: &[&str]) {
    let missing = not_loaded(names);
    if !missing.is_empty() {
        let mut args = vec!["-a"];
        args.extend(missing);
        let _ = sh("modprobe", &args);
    }
}

fn modprobe(names: &[&str]) -> Vec<String> {
    let mut failed = Vec::new();
    for n in not_loaded(names) {
        if let Err(e) = sh("modprobe", &[n]) {
            failed.push(format!("{n}: {e:#}"));
        }
    }
    failed
}

/// `ndctl create-namespace -r region0 ARGS`: its JSON answer, and the text of it.
fn create_namespace(args: &[&str]) -> Result<(serde_json::Value, String)> {
    let mut a = vec!["create-namespace", "-r", "region0"];
    a.extend_from_slice(args);
    let out = sh("ndctl", &a)?;
    Ok((serde_json::from_str(&out).unwrap_or_default(), out))
}

/// Find a string value for `key` anywhere in an ndctl JSON answer.
fn json_find(v: &serde_json::Value, key: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::String(s)) = m.get(key) {
                return Some(s.clone());
            }
            m.values().find_map(|x| json_find(x, key))
        }
        serde_json::Value::Array(a) => a.iter().find_map(|x| json_find(x, key)),
        _ => None,
    }
}

fn sysfs(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("({path}: {e})"))
}

/// The fsdax namespaces the guest makes, one per DAX filesystem, and their sizes; and the
/// device-dax one's (`--devdax-namespace`). A template NVDIMM image is named after them.
pub const FSDAX_NAMESPACES: &[(&str, &str)] = &[("xfs", "384M"), ("ext4", "256M")];
pub const DEVDAX_SIZE: &str = "256M";

/// The name a namespace carries in its label, so a guest booted on a copy of a template
/// finds which is which.
fn namespace_name(what: &str) -> String {
    format!("pinstorm-{what}")
}

/// mkfs on a pmem block device.
fn mkfs_dax(fs: &str, dev: &str) -> Result<()> {
    let devpath = format!("/dev/{dev}");
    match fs {
        "xfs" => sh("mkfs.xfs", &["-q", "-f", "-m", "reflink=1", &devpath])?,
        "ext4" => sh("mkfs.ext4", &["-q", "-F", "-b", "4096", &devpath])?,
        _ => bail!("no DAX mkfs for {fs}"),
    };
    Ok(())
}

/// Mount a pmem block device's filesystem `dax=always`; the FS-DAX backing then verifies
/// STATX_ATTR_DAX on its own files before calling anything DAX.
fn mount_dax(fs: &str, dev: &str) -> Result<PathBuf> {
    let devpath = format!("/dev/{dev}");
    let mnt = PathBuf::from(format!("{GUEST_ROOT}/{fs}-dax"));
    std::fs::create_dir_all(&mnt)?;
    rustix::mount::mount(
        devpath.as_str(),
        &mnt,
        fs,
        rustix::mount::MountFlags::empty(),
        c"dax=always",
    )
    .with_context(|| format!("mount -t {fs} -o dax=always {devpath} {}", mnt.display()))?;
    let scratch = mnt.join("scratch");
    std::fs::create_dir_all(&scratch)?;
    Ok(scratch)
}

#[derive(Default)]
struct Targets {
    dax_dirs: BTreeMap<String, PathBuf>,
    devdax: Option<PathBuf>,
    /// The fsdax namespaces' block devices for the run's `--scratch-dev FS=DEV`.
    scratch_devs: Vec<(&'static str, PathBuf)>,
}

/// The fsdax namespaces' block devices by filesystem, and the device-dax one's character
/// device.
type LabelledNamespaces = (Vec<(&'static str, String)>, Option<String>);

/// The namespaces of a template's labels, by their names: the fsdax ones' block devices
/// and the device-dax one's character device. The kernel probes them when the modules load;
/// this waits (up to 20 s) until every one has its device. Read from sysfs (see
/// [`sysfs_namespaces`]): `ndctl list` reads the same files, but it is a program with six
/// libraries to load over 9p, 0.5-1.5 s of a busy TCG guest's set-up.
fn namespaces_from_labels(devdax: bool) -> Result<LabelledNamespaces> {
    let t0 = Instant::now();
    loop {
        let all = sysfs_namespaces(Path::new(ND_DEVICES));
        let by_name = |n: &str| {
            all.iter()
                .find(|ns| ns.name == n)
                .and_then(|ns| ns.device.clone())
        };
        let fsdax: Vec<(&'static str, Option<String>)> = FSDAX_NAMESPACES
            .iter()
            .map(|(fs, _)| (*fs, by_name(&namespace_name(fs))))
            .collect();
        let dd = devdax.then(|| by_name(&namespace_name("devdax")));
        let complete =
            fsdax.iter().all(|(_, d)| d.is_some()) && dd.as_ref().is_none_or(|d| d.is_some());
        if complete {
            return Ok((
                fsdax
                    .into_iter()
                    .map(|(fs, d)| (fs, d.unwrap_or_default()))
                    .collect(),
                dd.flatten(),
            ));
        }
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("after 20 s the labels show {all:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where the kernel lists the NVDIMM bus's devices.
const ND_DEVICES: &str = "/sys/bus/nd/devices";

/// A labelled namespace as sysfs shows it: its name, and once the driver that claims it is
/// bound, its device (`pmem0` for fsdax, `dax0.2` for device-dax).
#[derive(Debug, PartialEq)]
struct SysfsNamespace {
    name: String,
    device: Option<String>,
}

/// The named namespaces under `nd` (`/sys/bus/nd/devices`): `namespaceX.Y/alt_name` is the
/// label's name and `holder` the pfn or dax device that claims it; an fsdax namespace's
/// block device is `pfnX.Y/block/NAME`, a device-dax one's character device the
/// `daxX.Y` directory under its `daxX.Y` (as ndctl finds them). A device name that is not a
/// plain kernel name (letters, digits, dots) is not taken.
fn sysfs_namespaces(nd: &Path) -> Vec<SysfsNamespace> {
    let read = |p: PathBuf| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let plain = |n: &str| {
        !n.is_empty()
            && !n.starts_with('.')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
    };
    let children = |dir: PathBuf, prefix: &str| -> Option<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix) && plain(n))
            .collect();
        names.sort();
        names.into_iter().next()
    };
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(nd) else {
        return out;
    };
    let mut dirs: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("namespace") && plain(n))
        .collect();
    dirs.sort();
    for ns in dirs {
        let Ok(name) = read(nd.join(&ns).join("alt_name")) else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        let holder = read(nd.join(&ns).join("holder")).unwrap_or_default();
        let device = if !plain(&holder) {
            None
        } else if holder.starts_with("pfn") {
            children(nd.join(&holder).join("block"), "pmem")
        } else if holder.starts_with("dax") {
            children(nd.join(&holder), "dax")
        } else {
            None
        };
        out.push(SysfsNamespace { name, device });
    }
    out
}

/// Hand the freshly made image to the host for the cache's template (see
/// [`crate::template::Maker`]) and wait for its answer. Nothing is mounted yet: the image
/// is quiescent while the host copies it.
fn hand_over_template(stage: &Path) -> Result<String> {
    rustix::fs::sync();
    std::fs::write(stage.join(crate::template::READY), b"")?;
    let t0 = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(stage.join(crate::template::DONE)) {
            if !s.is_empty() {
                return Ok(s);
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the host did not answer in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `pmem` fact of an emulated NVDIMM whose labels are usable.
fn nvdimm_fact() -> LabFact {
    fact(
        "pmem",
        true,
        format!(
            "emulated NVDIMM with labels; region0 size {}",
            sysfs("/sys/bus/nd/devices/region0/size")
        ),
    )
}

/// Why a guest has no device-dax namespace when it was not asked for one.
const DEVDAX_NOT_ASKED: &str =
    "not asked for (the scenario uses no devdax backing; pinstorm lab --devdax-namespace)";

/// The device-dax namespace's character device (or why there is none) as the `devdax` fact,
/// and as the run's devdax target when there is one.
fn devdax_target(t: &mut Targets, chardev: Result<String, String>, how: &str) -> LabFact {
    match chardev {
        Ok(c) => {
            let p = PathBuf::from(format!("/dev/{c}"));
            let f = fact("devdax", p.exists(), format!("{} ({how})", p.display()));
            t.devdax = Some(p);
            f
        }
        Err(why) => fact("devdax", false, why),
    }
}

/// Labels, the fsdax namespaces (one per DAX filesystem) and the device-dax one, made from
/// scratch with ndctl. Fills `fsdax_devs` and `t`; false when the NVDIMM is not usable.
fn make_namespaces(
    plan: &GuestPlan,
    facts: &mut Vec<LabFact>,
    laps: &mut Laps,
    t: &mut Targets,
    fsdax_devs: &mut Vec<(&'static str, Option<String>)>,
    failed_modules: &[String],
) -> bool {
    let setup = (|| -> Result<()> {
        sh("ndctl", &["disable-region", "all"])?;
        sh("ndctl", &["init-labels", "-f", "all"])?;
        sh("ndctl", &["enable-region", "all"])?;
        Ok(())
    })();
    if let Err(e) = setup {
        facts.push(fact(
            "pmem",
            false,
            format!("emulated NVDIMM not usable: {e:#}; modprobe: {failed_modules:?}"),
        ));
        return false;
    }
    facts.push(nvdimm_fact());
    if plan.pmem_scratch_dev {
        // A namespace per filesystem, handed to the run as --scratch-dev FS=DEV:
        // pinstorm's own code formats, mounts and wipes them, as on a host.
        for (fs, size) in FSDAX_NAMESPACES {
            let name = format!("scratch-dev-{fs}");
            match create_namespace(&["-m", "fsdax", "--map=mem", "-s", size]) {
                Ok((v, out)) => match json_find(&v, "blockdev") {
                    Some(b) => {
                        let p = PathBuf::from(format!("/dev/{b}"));
                        facts.push(fact(
                            &name,
                            true,
                            format!(
                                "{} (ndctl fsdax namespace, queue/dax={}), handed to the run as --scratch-dev {fs}={}",
                                p.display(),
                                sysfs(&format!("/sys/block/{b}/queue/dax")),
                                p.display()
                            ),
                        ));
                        t.scratch_devs.push((fs, p));
                    }
                    None => facts.push(fact(
                        &name,
                        false,
                        format!("ndctl answered no blockdev: {out}"),
                    )),
                },
                Err(e) => facts.push(fact(&name, false, format!("{e:#}"))),
            }
        }
    } else {
        for (fs, size) in FSDAX_NAMESPACES {
            let n = namespace_name(fs);
            match create_namespace(&["-m", "fsdax", "--map=mem", "-s", size, "-n", &n]) {
                Ok((v, _)) => fsdax_devs.push((fs, json_find(&v, "blockdev"))),
                Err(e) => facts.push(fact(&format!("fsdax-{fs}"), false, format!("{e:#}"))),
            }
        }
    }
    laps.lap("pmem");
    facts.push(if plan.devdax {
        let n = namespace_name("devdax");
        let chardev =
            match create_namespace(&["-m", "devdax", "-a", "2M", "-s", DEVDAX_SIZE, "-n", &n]) {
                Ok((v, out)) => json_find(&v, "chardev")
                    .ok_or_else(|| format!("ndctl answered no chardev: {out}")),
                Err(e) => Err(format!("{e:#}")),
            };
        devdax_target(t, chardev, "ndctl devdax namespace, align 2M")
    } else {
        fact("devdax", false, DEVDAX_NOT_ASKED)
    });
    laps.lap("devdax");
    true
}

fn setup_pmem(plan: &GuestPlan, facts: &mut Vec<LabFact>, laps: &mut Laps) -> Targets {
    let mut t = Targets::default();
    let mut fsdax_devs: Vec<(&str, Option<String>)> = Vec::new();
    // Whether the filesystems are on the namespaces already (a template's copy).
    let mut formatted = false;
    let mut make_template = false;
    match plan.pmem {
        PmemMode::None => {
            facts.push(fact(
                "pmem",
                false,
                "no persistent memory asked for (--pmem none)",
            ));
            return t;
        }
        PmemMode::Nvdimm => {
            let failed = modprobe(pmem_modules(plan));
            let template = match (&plan.nvdimm_template, plan.pmem_scratch_dev) {
                (_, true) => TemplatePlan::Off {
                    why: "--pmem-scratch-dev: the run formats the namespaces itself".into(),
                },
                (Some(t), false) => t.clone(),
                (None, false) => TemplatePlan::Off {
                    why: "the host sent no template plan".into(),
                },
            };
            if let TemplatePlan::Use { name } = &template {
                match namespaces_from_labels(plan.devdax) {
                    Ok((fsdax, dd)) => {
                        facts.push(nvdimm_fact());
                        facts.push(fact(
                            "pmem-template",
                            true,
                            format!("namespaces and filesystems from the cache's template {name} (no ndctl or mkfs in this guest)"),
                        ));
                        fsdax_devs = fsdax.into_iter().map(|(fs, d)| (fs, Some(d))).collect();
                        facts.push(match dd {
                            Some(c) => devdax_target(
                                &mut t,
                                Ok(c),
                                "ndctl devdax namespace, align 2M, from the template",
                            ),
                            None => fact("devdax", false, DEVDAX_NOT_ASKED),
                        });
                        formatted = true;
                        laps.lap("pmem");
                    }
                    Err(e) => {
                        facts.push(fact(
                            "pmem-template",
                            false,
                            format!("the copy of template {name} is not usable ({e:#}): set up from scratch"),
                        ));
                    }
                }
            }
            if !formatted {
                if let TemplatePlan::Make { name } = &template {
                    make_template = true;
                    facts.push(fact(
                        "pmem-template",
                        false,
                        format!("no template yet ({name}): this guest's set-up makes it"),
                    ));
                } else if let TemplatePlan::Off { why } = &template {
                    facts.push(fact("pmem-template", false, why.clone()));
                }
                if !make_namespaces(plan, facts, laps, &mut t, &mut fsdax_devs, &failed) {
                    return t;
                }
            }
        }
        PmemMode::Memmap => {
            let failed = modprobe(pmem_modules(plan));
            if Path::new("/dev/pmem0").exists() {
                facts.push(fact(
                    "pmem",
                    true,
                    "legacy e820 pmem from memmap= (no labels, no ndctl)",
                ));
                fsdax_devs.push(("xfs", Some("pmem0".into())));
                facts.push(fact(
                    "fsdax-ext4",
                    false,
                    "memmap= gives one pmem device; ext4 FS-DAX needs --pmem nvdimm",
                ));
            } else {
                facts.push(fact(
                    "pmem",
                    false,
                    format!("no /dev/pmem0 after memmap=; modprobe: {failed:?}"),
                ));
            }
            facts.push(fact(
                "devdax",
                false,
                "memmap= pmem has no namespaces; device-dax needs --pmem nvdimm",
            ));
            laps.lap("pmem");
        }
    }
    let mut made: Vec<(&str, String)> = Vec::new();
    for (fs, dev) in fsdax_devs {
        let name = format!("fsdax-{fs}");
        let Some(dev) = dev else {
            facts.push(fact(
                &name,
                false,
                "ndctl made a namespace without a block device",
            ));
            continue;
        };
        if !formatted {
            if let Err(e) = mkfs_dax(fs, &dev) {
                facts.push(fact(
                    &name,
                    false,
                    format!(
                        "/dev/{dev} (queue/dax={}): {e:#}",
                        sysfs(&format!("/sys/block/{dev}/queue/dax"))
                    ),
                ));
                make_template = false;
                continue;
            }
            laps.lap(&format!("mkfs-{fs}"));
        }
        made.push((fs, dev));
    }
    let complete = made.len() == FSDAX_NAMESPACES.len() && (!plan.devdax || t.devdax.is_some());
    if make_template && complete {
        // Every namespace made, every filesystem made and none mounted: the image the next
        // guests start from.
        let answer = hand_over_template(&plan.stage).unwrap_or_else(|e| format!("failed: {e:#}"));
        facts.push(fact(
            "pmem-template-made",
            answer.starts_with("ok"),
            answer.trim().to_string(),
        ));
        laps.lap("template");
    }
    for (fs, dev) in made {
        let name = format!("fsdax-{fs}");
        let dax_flag = sysfs(&format!("/sys/block/{dev}/queue/dax"));
        match mount_dax(fs, &dev) {
            Ok(dir) => {
                facts.push(fact(
                    &name,
                    true,
                    format!(
                        "/dev/{dev} (queue/dax={dax_flag}) {fs} mounted dax=always at {}",
                        dir.parent().unwrap_or(&dir).display()
                    ),
                ));
                t.dax_dirs.insert(fs.to_string(), dir);
            }
            Err(e) => facts.push(fact(
                &name,
                false,
                format!("/dev/{dev} (queue/dax={dax_flag}): {e:#}"),
            )),
        }
    }
    laps.lap("mount");
    t
}

/// What the guest's set-up made: the DAX targets, its facts and timed steps, and the lab
/// machine the memory operations are told about.
struct SetUp {
    targets: Targets,
    facts: Vec<LabFact>,
    laps: Vec<LabPhase>,
    lab: LabMachine,
}

impl SetUp {
    fn failed(why: &str) -> SetUp {
        SetUp {
            targets: Targets::default(),
            facts: vec![fact("setup", false, why)],
            laps: Vec::new(),
            lab: LabMachine::default(),
        }
    }
}

/// The nice value of the run while the set-up runs beside it. Measured in three
/// interleaved sid pairs: with it, xfs was loaded 1.1-1.5 s sooner and the first result
/// came 0.2-0.7 s sooner. The jobs that time anything start only once the set-up is over
/// ([`pinstorm_runners::job::Job::measures_time`]), at nice 0 again.
const BESIDE_NICE: i32 = 19;

/// Every thread of this process to nice `n` (the run's threads, back from
/// [`BESIDE_NICE`]).
fn renice_all(n: i32) {
    for e in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let tid = e.file_name().to_str().and_then(|t| t.parse::<i32>().ok());
        if let Some(pid) = tid.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::setpriority_process(Some(pid), n);
        }
    }
}

/// How long the run's backings wait for the set-up's modules and DAX targets: far more
/// than a TCG guest takes (~10 s), far less than the host's timeout.
const SETUP_BOUND: Duration = Duration::from_secs(300);

/// The guest's set-up: the modules the lab's init is loading, pmem and the DAX filesystems
/// (or device-dax), the kmem node, soft-RoCE. What the run's backings wait for goes to
/// `send` as soon as it is there: the disk filesystems' modules when their loader is done,
/// the DAX targets when pmem is set up.
fn set_up(plan: &GuestPlan, scenario: &Scenario, needs: &Needs, send: ArrivingSender) -> SetUp {
    let mut facts = Vec::new();
    let mut laps = Laps::new();
    // The lab's initramfs (or, without it, the lab's init) has started loading the modules
    // in the background, one loader per group; the set-up waits for each and asks kmod only
    // for what is not live then. The filesystems' group finishes on a thread of its own,
    // beside the rest of the set-up, unless the DAX mounts need it first.
    let [devices, fs] = module_groups(plan, scenario);
    let disks = send.disks;
    let mut fs_loader = Some(std::thread::spawn(move || {
        if !fs.is_empty() {
            wait_for_loader(GROUP_TAGS[1], LOADER_BOUND);
            modprobe_missing(&fs);
        }
        // Whatever it could not load, the run's mount asks for again and reports.
        let _ = disks.send(());
    }));
    // Without udev nothing else loads them. What this misses, the steps' own modprobe
    // reports.
    wait_for_loader(GROUP_TAGS[0], LOADER_BOUND);
    modprobe_missing(&devices);
    laps.lap("modules");
    // The DAX filesystems' mounts need their modules: without them, each mount would have
    // the kernel start a modprobe of its own.
    if needs.pmem.is_none() {
        if let Some(t) = fs_loader.take() {
            let _ = t.join();
            laps.lap("fs-modules");
        }
    }
    let targets = match &needs.pmem {
        None => setup_pmem(plan, &mut facts, &mut laps),
        Some(why) => {
            facts.push(fact("pmem", false, why.clone()));
            Targets::default()
        }
    };
    let _ = send.dax.send(dax_targets(&targets, &facts));
    let lab = setup_kmem(plan, &mut facts);
    if plan.kmem_node {
        laps.lap("kmem-node");
    }
    if plan.movablecore {
        facts.push(movable_zone());
    }
    match &needs.rxe {
        None => {
            setup_rxe(&mut facts);
            laps.lap("rxe");
        }
        Some(why) => facts.push(fact("rxe", false, why.clone())),
    }
    if let Some(t) = fs_loader {
        let _ = t.join();
        laps.lap("fs-modules");
    }
    SetUp {
        targets,
        facts,
        laps: laps.phases,
        lab,
    }
}

/// The run's DAX targets from what the set-up made; what it could not make (a fact that is
/// not ok) is the notrun reason of its backings.
fn dax_targets(t: &Targets, facts: &[LabFact]) -> DaxTargets {
    let mut d = DaxTargets::default();
    for f in facts.iter().filter(|f| f.outcome != "ok") {
        let backings: &[&str] = match f.name.as_str() {
            "fsdax-xfs" => &["xfs-dax"],
            "fsdax-ext4" => &["ext4-dax"],
            "devdax" => &["devdax"],
            "pmem" => &["xfs-dax", "ext4-dax", "devdax"],
            _ => &[],
        };
        for b in backings {
            d.unavailable
                .entry(b.to_string())
                .or_insert_with(|| format!("lab guest: {}", f.detail));
        }
    }
    for (fs, dir) in &t.dax_dirs {
        match ScratchDir::new(dir, &format!("the guest's {fs} DAX directory")) {
            Ok(s) => {
                d.dax_dirs.insert(fs.clone(), s);
            }
            Err(e) => {
                d.unavailable
                    .entry(format!("{fs}-dax"))
                    .or_insert_with(|| format!("lab guest: {e:#}"));
            }
        }
    }
    d.devdax = t.devdax.clone();
    for (fs, dev) in &t.scratch_devs {
        match ScratchDevice::new(&format!("{fs}={}", dev.display()), false) {
            Ok(s) => d.scratch_devs.push(s),
            Err(e) => {
                d.unavailable
                    .entry(format!("{fs}-dax"))
                    .or_insert_with(|| format!("lab guest: {e:#}"));
            }
        }
    }
    d
}

/// Which init started the agent: PID 1's command line, as the kernel shows it (the lab's
/// own init is the busybox shell running the run's `lab-init`; virtme-ng's is its binary).
fn init_fact() -> LabFact {
    match std::fs::read("/proc/1/cmdline") {
        Ok(c) => {
            let words: Vec<String> = c
                .split(|&b| b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            fact("init", true, words.join(" "))
        }
        Err(e) => fact("init", false, format!("/proc/1/cmdline: {e}")),
    }
}

/// The Movable zones of `/proc/zoneinfo` with their present pages (`node 0 Movable`).
fn movable_zones(zoneinfo: &str) -> Vec<(String, u64)> {
    let mut zones = Vec::new();
    let mut current: Option<String> = None;
    for l in zoneinfo.lines() {
        if let Some(rest) = l.strip_prefix("Node ") {
            current = rest
                .split_once(", zone")
                .map(|(n, z)| format!("node {n} {}", z.trim()));
        } else if let (Some(z), Some(p)) = (&current, l.trim().strip_prefix("present ")) {
            if z.ends_with("Movable") {
                zones.push((z.clone(), p.trim().parse().unwrap_or(0)));
            }
        }
    }
    zones
}

/// `--movablecore`: whether the kernel made a ZONE_MOVABLE, and how big (`/proc/zoneinfo`).
fn movable_zone() -> LabFact {
    let zoneinfo = std::fs::read_to_string("/proc/zoneinfo").unwrap_or_default();
    let cmdline = sysfs("/proc/cmdline");
    let arg = cmdline
        .split_whitespace()
        .find(|a| a.starts_with("movablecore="))
        .unwrap_or("no movablecore= on the command line")
        .to_string();
    let zones = movable_zones(&zoneinfo);
    let present: u64 = zones.iter().map(|(_, p)| p).sum();
    let detail = format!(
        "{arg}: ZONE_MOVABLE {} MiB ({})",
        (present * 4096) >> 20,
        if zones.is_empty() {
            "no Movable zone in /proc/zoneinfo".to_string()
        } else {
            zones
                .iter()
                .map(|(z, p)| format!("{z}: {p} pages"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    fact("movablecore", present > 0, detail)
}

/// `--kmem-node`: a device-dax namespace of what the region has left, onlined as system RAM
/// (node 1's only memory); the lab machine the run is told about.
fn setup_kmem(plan: &GuestPlan, facts: &mut Vec<LabFact>) -> LabMachine {
    if !plan.kmem_node {
        return LabMachine::default();
    }
    let made = (|| -> Result<_> {
        if plan.pmem != PmemMode::Nvdimm {
            bail!("--kmem-node needs --pmem nvdimm");
        }
        let failed = modprobe(&["device_dax", "kmem"]);
        let (v, out) = create_namespace(&["-m", "devdax", "-a", "2M"])
            .with_context(|| format!("a devdax namespace for kmem (modprobe: {failed:?})"))?;
        let dev = json_find(&v, "chardev")
            .with_context(|| format!("ndctl answered no chardev: {out}"))?;
        let mut k = crate::kmem::online(&dev).with_context(|| format!("modprobe: {failed:?}"))?;
        let all = k.blocks.clone();
        let (clean, refused) = crate::kmem::clean_blocks(&k)?;
        if clean.is_empty() {
            bail!(
                "{dev} on kmem (node {}), but none of its memory blocks {all:?} goes offline with nothing pinned: {}",
                k.node,
                refused.join(", ")
            );
        }
        k.blocks = clean;
        Ok((k, all, refused))
    })();
    match made {
        Ok((k, all, refused)) => {
            facts.push(fact(
                "kmem-node",
                true,
                format!(
                    "{} on kmem: node {} (online: {}), memory blocks {all:?} in zone {}, of which {:?} go offline with nothing pinned (refused: {}); node {} MemTotal {}",
                    k.device,
                    k.node,
                    sysfs("/sys/devices/system/node/online"),
                    k.zone,
                    k.blocks,
                    if refused.is_empty() { "none".to_string() } else { refused.join(", ") },
                    k.node,
                    sysfs(&format!("/sys/devices/system/node/node{}/meminfo", k.node))
                        .lines()
                        .find(|l| l.contains("MemTotal"))
                        .map(|l| l.split_whitespace().skip(3).collect::<Vec<_>>().join(" "))
                        .unwrap_or_default()
                ),
            ));
            LabMachine {
                kmem: Some(k),
                kmem_missing: None,
            }
        }
        Err(e) => {
            let why = format!("{e:#}");
            facts.push(fact("kmem-node", false, why.clone()));
            LabMachine {
                kmem: None,
                kmem_missing: Some(why),
            }
        }
    }
}

fn setup_rxe(facts: &mut Vec<LabFact>) {
    let failed = modprobe(RXE_MODULES);
    let r = (|| -> Result<String> {
        sh("ip", &["link", "add", "pinstorm0", "type", "dummy"])?;
        sh("ip", &["link", "set", "pinstorm0", "up"])?;
        sh(
            "rdma",
            &["link", "add", "rxe0", "type", "rxe", "netdev", "pinstorm0"],
        )?;
        let state = "/sys/class/infiniband/rxe0/ports/1/state";
        let t0 = Instant::now();
        loop {
            let s = sysfs(state);
            if s.contains("ACTIVE") || t0.elapsed() > Duration::from_secs(5) {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })();
    match r {
        Ok(s) => facts.push(fact(
            "rxe",
            s.contains("ACTIVE"),
            format!(
                "rxe0 on dummy netdev pinstorm0, port 1 state {s:?}; uverbs: {}",
                Path::new("/dev/infiniband/uverbs0").exists()
            ),
        )),
        Err(e) => facts.push(fact(
            "rxe",
            false,
            format!("soft-RoCE not available: {e:#}; modprobe: {failed:?}"),
        )),
    }
}

/// `pinstorm __lab-guest PLAN`: returns the exit code of the run.
pub fn main(plan_path: &Path) -> Result<i32> {
    let plan: GuestPlan = serde_json::from_str(
        &std::fs::read_to_string(plan_path)
            .with_context(|| format!("reading the lab plan {}", plan_path.display()))?,
    )
    .context("parsing the lab plan")?;
    // Before anything else: the host's boot phase ends here.
    let _ = std::fs::write(plan.stage.join(STARTED_MARKER), b"");
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    eprintln!(
        "pinstorm lab guest: [{}] the agent starts",
        uptime.split_whitespace().next().unwrap_or("?")
    );
    let report_path = plan.stage.join("guest.json");
    let mut report = GuestReport::default();
    let write_report = |r: &GuestReport| {
        if let Ok(j) = serde_json::to_vec_pretty(r) {
            let _ = pinstorm_analysis::store::write_atomic(&report_path, &j);
        }
    };
    match plan.inject {
        Some(InjectKind::Panic) => {
            eprintln!("pinstorm lab guest: crashing the kernel on purpose (inject=panic)");
            let _ = std::fs::write("/proc/sys/kernel/sysrq", "1");
            std::fs::write("/proc/sysrq-trigger", "c").context("sysrq-trigger")?;
            std::thread::sleep(Duration::from_secs(60));
        }
        Some(InjectKind::Hang) => {
            eprintln!("pinstorm lab guest: never returning on purpose (inject=hang)");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        None => {}
    }
    let setup_start = Instant::now();
    report.facts.push(init_fact());
    let scenario = Scenario::parse(&plan.scenario_text, &plan.origin)
        .map_err(anyhow::Error::from)
        .context("the scenario (validated on the host) does not parse in the guest")?;
    let needs = needs(&plan, &scenario);
    std::fs::create_dir_all(GUEST_ROOT)?;
    // The run starts beside the guest's set-up (its in-memory cells while the modules load
    // and the pmem filesystems are made) unless it reads at its start what the set-up
    // makes: the RDMA device soft-RoCE brings (the run records the one it finds) or the
    // kmem node (the memory operations' target).
    let beside = needs.rxe.is_some() && !plan.kmem_node;
    let (send, arriving) = Arriving::channel("the lab guest's set-up", SETUP_BOUND);
    let mut run_scenario = scenario.clone();
    if let Some(s) = plan.seed {
        run_scenario.seed = s;
    }
    let expectations = match &plan.expectations {
        None => Expectations::builtin(),
        Some(sources) => Expectations::from_sources(sources)?,
    };
    let opts = |lab: LabMachine| -> Result<RunOptions> {
        Ok(RunOptions {
            scenario: run_scenario.clone(),
            origin: plan.origin.clone(),
            results_root: WriteDir::new(
                &plan.stage.join("results"),
                "the lab's staging directory",
            )?,
            scratch_root: WriteDir::new(
                &PathBuf::from(format!("{GUEST_ROOT}/scratch")),
                "the guest's scratch root",
            )?,
            scratch_dir: None,
            // The DAX targets arrive from the set-up (`arriving`).
            scratch_devs: Vec::new(),
            dax_dirs: BTreeMap::new(),
            devdax: None,
            unavailable: BTreeMap::new(),
            label: plan.label.clone(),
            expectations: expectations.clone(),
            command: std::env::args().collect(),
            progress: false,
            verbose: true,
            holder_exe: None,
            reproduce_as: plan.reproduce_as.clone(),
            // The one place that says "this run is in a lab guest".
            lab: Some(lab),
        })
    };
    let timed_run = |opts: Result<RunOptions>, arriving: Arriving| {
        let start = Instant::now();
        let run = opts.and_then(|o| run::run_with(&o, Some(arriving)));
        (run, start.elapsed().as_secs_f64())
    };
    let (setup, (run, run_s)) = std::thread::scope(|s| {
        if beside {
            let t = s.spawn(|| {
                // Whatever ends the set-up (a panic too), the run gets its priority back.
                struct Restore;
                impl Drop for Restore {
                    fn drop(&mut self) {
                        renice_all(0);
                    }
                }
                let _restore = Restore;
                set_up(&plan, &scenario, &needs, send)
            });
            // The run yields the vCPUs to the set-up while it runs (the module loads are
            // the critical path); its threads, and the mkfs they start, inherit this.
            let _ = rustix::process::setpriority_process(None, BESIDE_NICE);
            report.setup_s = Some(setup_start.elapsed().as_secs_f64());
            write_report(&report);
            let run = timed_run(opts(LabMachine::default()), arriving);
            let setup = t
                .join()
                .unwrap_or_else(|_| SetUp::failed("the set-up panicked"));
            report.beside = setup.laps.clone();
            (setup, run)
        } else {
            let setup = set_up(&plan, &scenario, &needs, send);
            report.setup = setup.laps.clone();
            report.setup_s = Some(setup_start.elapsed().as_secs_f64());
            report.facts.extend(setup.facts.iter().cloned());
            write_report(&report);
            let run = timed_run(opts(setup.lab.clone()), arriving);
            (setup, run)
        }
    });
    if beside {
        report.facts.extend(setup.facts.iter().cloned());
    }
    let SetUp { targets, lab, .. } = setup;
    report.run_s = Some(run_s);
    let exec_env: Vec<(String, String)> = [
        ("PINSTORM_LAB_XFS_DAX", targets.dax_dirs.get("xfs")),
        ("PINSTORM_LAB_EXT4_DAX", targets.dax_dirs.get("ext4")),
        ("PINSTORM_LAB_DEVDAX", targets.devdax.as_ref()),
    ]
    .into_iter()
    .map(|(k, v)| {
        (
            k.to_string(),
            v.map(|p| p.display().to_string()).unwrap_or_default(),
        )
    })
    .collect();
    // The device the run was handed must be blank again, as on a host: blkid, not pinstorm,
    // says so.
    for (fs, d) in &targets.scratch_devs {
        let name = format!("scratch-dev-{fs}-after");
        let blank = Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(d)
            .output()
            .map(|o| {
                (
                    o.status.code(),
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                )
            });
        report.facts.push(match blank {
            Ok((Some(2), _)) => fact(
                &name,
                true,
                format!(
                    "{}: blank after the run (blkid -p found nothing)",
                    d.display()
                ),
            ),
            Ok((code, out)) => fact(
                &name,
                false,
                format!(
                    "{}: not blank after the run (blkid -p exit {code:?}): {}",
                    d.display(),
                    out.split_whitespace().collect::<Vec<_>>().join(" ")
                ),
            ),
            Err(e) => fact(&name, false, format!("blkid: {e}")),
        });
        write_report(&report);
    }
    if let Some(cmd) = &plan.guest_exec {
        let log = plan.stage.join("guest-exec.log");
        let st = std::fs::File::create(&log).and_then(|f| {
            let f2 = f.try_clone()?;
            Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd)
                .envs(exec_env.iter().map(|(k, v)| (k, v)))
                .env("PINSTORM_LAB_WORK", format!("{GUEST_ROOT}/exec"))
                .stdout(f)
                .stderr(f2)
                .status()
        });
        report.guest_exec_status = st.ok().and_then(|s| s.code());
    }
    if !plan.kselftests.is_empty() {
        report.kselftests = crate::kselftest::run_in_guest(
            &plan.kselftests,
            &plan.stage,
            Path::new(GUEST_ROOT),
            crate::kselftest::GUEST_TIMEOUT,
        );
        write_report(&report);
    }
    // After --guest-exec, so a witness there reads the memory blocks as the run left them.
    if let Some(k) = &lab.kmem {
        // Every block the device brought, the ones left out of the operation too.
        let k = pinstorm_workloads::layout::KmemNode {
            blocks: crate::kmem::device_blocks(&k.device).unwrap_or_else(|_| k.blocks.clone()),
            ..k.clone()
        };
        report.facts.push(match crate::kmem::restore(&k) {
            Ok(done) => fact("kmem-node-after", true, done),
            Err(e) => fact("kmem-node-after", false, format!("{e:#}")),
        });
        write_report(&report);
    }
    match run {
        Ok(outcome) => {
            report.result = Some(outcome.path.clone());
            report.exit_code = Some(outcome.exit_code());
            write_report(&report);
            Ok(outcome.exit_code())
        }
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            write_report(&report);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_namespaces_and_their_devices_are_read_from_sysfs() {
        // The tree a 7.2 guest showed for a template's copy: two fsdax namespaces claimed by
        // pfn devices, a device-dax one claimed by dax0.1, the region's empty seed.
        let nd = std::env::temp_dir().join(format!("pinstorm-nd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&nd);
        let file = |p: &str, text: &str| {
            let p = nd.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        let dir = |p: &str| std::fs::create_dir_all(nd.join(p)).unwrap();
        file("namespace0.0/alt_name", "pinstorm-xfs\n");
        file("namespace0.0/holder", "pfn0.1\n");
        dir("pfn0.1/block/pmem0");
        file("namespace0.1/alt_name", "pinstorm-ext4\n");
        file("namespace0.1/holder", "pfn0.2\n");
        dir("pfn0.2/block");
        file("namespace0.2/alt_name", "pinstorm-devdax\n");
        file("namespace0.2/holder", "dax0.1\n");
        dir("dax0.1/dax_region");
        dir("dax0.1/dax0.2");
        file("namespace0.3/alt_name", "\n");
        file("namespace0.3/holder", "\n");
        // A name that could climb out of /dev is never a device.
        file("namespace0.4/alt_name", "odd\n");
        file("namespace0.4/holder", "pfn0.9\n");
        dir("pfn0.9/block/..x");
        let got = sysfs_namespaces(&nd);
        let _ = std::fs::remove_dir_all(&nd);
        let ns = |name: &str, device: Option<&str>| SysfsNamespace {
            name: name.into(),
            device: device.map(str::to_string),
        };
        assert_eq!(
            got,
            [
                ns("pinstorm-xfs", Some("pmem0")),
                // Its pfn device has no block device yet: still probing.
                ns("pinstorm-ext4", None),
                ns("pinstorm-devdax", Some("dax0.2")),
                ns("odd", None),
            ]
        );
        assert!(sysfs_namespaces(Path::new("/nonexistent/nd")).is_empty());
    }

    fn plan(scenario: &str, guest_exec: Option<&str>) -> (GuestPlan, Scenario) {
        let (s, text, origin) = Scenario::resolve(scenario).unwrap();
        let p = GuestPlan {
            scenario_text: text,
            origin,
            seed: None,
            label: None,
            expectations: None,
            stage: PathBuf::from("/stage"),
            pmem: PmemMode::Nvdimm,
            devdax: true,
            rxe: true,
            inject: None,
            guest_exec: guest_exec.map(str::to_string),
            reproduce_as: Vec::new(),
            pmem_scratch_dev: false,
            kmem_node: false,
            movablecore: false,
            nvdimm_template: None,
            kselftests: Vec::new(),
        };
        (p, s)
    }

    #[test]
    fn the_guest_sets_up_pmem_and_rxe_only_for_scenarios_that_use_them() {
        // quick: in-memory backings, io_uring: neither.
        let (p, s) = plan("quick", None);
        let n = needs(&p, &s);
        assert!(
            n.pmem
                .as_deref()
                .is_some_and(|w| w.contains("no DAX backing")),
            "{n:?}"
        );
        assert!(
            n.rxe
                .as_deref()
                .is_some_and(|w| w.contains("no RDMA device")),
            "{n:?}"
        );
        // default: DAX backings in the probe, no RDMA.
        let (p, s) = plan("default", None);
        let n = needs(&p, &s);
        assert_eq!(n.pmem, None);
        assert!(n.rxe.is_some(), "{n:?}");
        // rdma-vs-layout: both.
        let (p, s) = plan("rdma-vs-layout", None);
        assert_eq!(
            needs(&p, &s),
            Needs {
                pmem: None,
                rxe: None
            }
        );
        // A guest command may use anything.
        let (p, s) = plan("quick", Some("true"));
        assert_eq!(
            needs(&p, &s),
            Needs {
                pmem: None,
                rxe: None
            }
        );
        // --pmem-scratch-dev needs pmem whatever the scenario; --no-rxe is never overridden.
        let (mut p, s) = plan("quick", Some("true"));
        p.rxe = false;
        assert_eq!(
            needs(&p, &s).rxe.as_deref(),
            Some("not asked for (--no-rxe)")
        );
        let (mut p, s) = plan("quick", None);
        p.pmem_scratch_dev = true;
        assert_eq!(needs(&p, &s).pmem, None);
        // So does --kmem-node: its device-dax namespace is cut from the NVDIMM's region.
        let (mut p, s) = plan("quick", None);
        p.kmem_node = true;
        assert_eq!(needs(&p, &s).pmem, None);
    }

    /// The nice value of thread `tid` of this process (/proc's `stat`, field 19).
    fn nice_of(tid: i32) -> i64 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split_whitespace().nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn renice_all_gives_every_thread_its_priority_back() {
        if !rustix::process::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("skipped: raising a thread's priority again needs root");
            return;
        }
        // A thread that yielded (as the run does beside the set-up), and stays alive.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            rustix::process::setpriority_process(None, BESIDE_NICE).unwrap();
            tx.send(rustix::thread::gettid().as_raw_nonzero().get())
                .unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert_eq!(nice_of(tid), i64::from(BESIDE_NICE));
        renice_all(0);
        assert_eq!(nice_of(tid), 0);
        drop(done_tx);
        t.join().unwrap();
    }

    #[test]
    fn movable_zones_are_read_from_zoneinfo_with_their_present_pages() {
        let z = "Node 0, zone   Normal\n  pages free     1000\n        present  262144\nNode 0, zone  Movable\n  pages free     5\n        present  131072\n        managed  131000\nNode 1, zone  Movable\n        present  0\n";
        assert_eq!(
            movable_zones(z),
            vec![
                ("node 0 Movable".to_string(), 131072),
                ("node 1 Movable".to_string(), 0)
            ]
        );
        assert!(movable_zones("Node 0, zone   Normal\n        present  5\n").is_empty());
    }
}
