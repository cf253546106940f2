//! Helpers shared by the integration tests: run the real binary in a sandbox of its own
//! (results and scratch root under a fresh directory) and compare the machine's state
//! before and after.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

pub mod results;

pub fn pinstorm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pinstorm"))
}

/// The pinstorm binary user nobody runs: the build itself when nobody can execute it, else
/// a copy in a directory nobody can reach (a build under a private 0700 directory, as
/// root's home, is not executable by nobody; the tests must not depend on where CI clones).
pub fn nobody_exe() -> PathBuf {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_pinstorm"));
        if can_exec_as_nobody(&built) {
            return built;
        }
        let dir = PathBuf::from(format!("/tmp/pinstorm-nobody-exe-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let copy = dir.join("pinstorm");
        let _ = std::fs::copy(&built, &copy);
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755));
        copy
    })
    .clone()
}

fn can_exec_as_nobody(exe: &Path) -> bool {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/bin/sh",
            "-c",
            "exec \"$0\" --version",
        ])
        .arg(exe)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `pinstorm` run as user nobody (uid and gid 65534, no supplementary groups).
pub fn pinstorm_as_nobody() -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(nobody_exe());
    c
}

/// Whether user nobody can run pinstorm (the build or its copy), checked with a second exec
/// from the unprivileged process, as pinstorm's own children are made.
pub fn nobody_can_run_pinstorm() -> bool {
    can_exec_as_nobody(&nobody_exe())
}

/// A test that cannot take its real path: with `CI` set (the test command sets it, and CI
/// runs as root with every package installed) that is a failure; elsewhere it prints why it
/// skipped. Returns so callers can `return` after it.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot take its real path: {why} (CI must: it runs as root with the test command's packages)");
    }
    eprintln!("skipped {test}: {why}");
}

/// The independent mm probe (tests/independent/mm_probe.c) built at `out`, or None when it
/// cannot be built (no C compiler, no liburing-dev), which [`skip`] reports.
pub fn build_mm_probe(out: &Path) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/independent/mm_probe.c");
    match Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(out)
        .arg(&src)
        .arg("-luring")
        .output()
    {
        Ok(o) if o.status.success() => Some(out.to_path_buf()),
        Ok(o) => {
            skip(
                "independent mm probe",
                &format!("it needs liburing-dev: {}", stderr(&o)),
            );
            None
        }
        Err(e) => {
            skip("independent mm probe", &format!("no C compiler ({e})"));
            None
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Tests that look at machine-wide state (mounts, loop devices, sysctls, pin counters)
/// take this lock so that they do not see each other's work.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the machine looks like, as far as pinstorm could change it.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct MachineState {
    pub mounts_below: Vec<String>,
    pub loops_below: Vec<String>,
    pub nr_hugepages: String,
    pub lease_break_time: String,
    pub pins_outstanding: i64,
}

pub fn machine_state(base: &Path) -> MachineState {
    let base_s = base.to_string_lossy().to_string();
    let mounts_below = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&base_s))
        .collect();
    let mut loops_below = Vec::new();
    for e in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            if b.starts_with(&base_s) {
                loops_below.push(format!("{}: {}", e.file_name().to_string_lossy(), b.trim()));
            }
        }
    }
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let vmstat = read("/proc/vmstat");
    let get = |k: &str| {
        vmstat
            .lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse::<i64>().ok())
            .unwrap_or(0)
    };
    MachineState {
        mounts_below,
        loops_below,
        nr_hugepages: read("/proc/sys/vm/nr_hugepages"),
        lease_break_time: read("/proc/sys/fs/lease-break-time"),
        pins_outstanding: (get("nr_foll_pin_acquired ") - get("nr_foll_pin_released ")).max(0),
    }
}

/// A private results directory and scratch root for one test.
pub struct Sandbox {
    pub base: PathBuf,
    pub results: PathBuf,
    pub scratch: PathBuf,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        let base = PathBuf::from(format!("/tmp/pinstorm-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        Sandbox {
            results: base.join("results"),
            scratch: base.join("scratch"),
            base,
        }
    }

    /// `pinstorm` with this sandbox's results directory and scratch root.
    pub fn cmd(&self) -> Command {
        let mut c = pinstorm();
        c.arg("--results")
            .arg(&self.results)
            .arg("--scratch-root")
            .arg(&self.scratch)
            .arg("--quiet");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("running pinstorm")
    }

    /// Every result.json written under this sandbox.
    pub fn results(&self) -> Vec<PathBuf> {
        fn walk(d: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.file_name().is_some_and(|n| n == "result.json") {
                    out.push(p);
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.results, &mut v);
        v.sort();
        v
    }

    /// Files left in the results tree other than result.json (a temporary file would mean
    /// a non-atomic write).
    pub fn stray_result_files(&self) -> Vec<PathBuf> {
        fn walk(d: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.file_name().is_none_or(|n| n != "result.json") {
                    out.push(p);
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.results, &mut v);
        v
    }

    pub fn leftover_run_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.scratch)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("run-"))
            })
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // If a test failed half-way, leave no mount behind: unmount lazily, detach loops,
        // then remove the directory (never across a mount point).
        let st = machine_state(&self.base);
        for m in st.mounts_below.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        for l in &st.loops_below {
            if let Some(dev) = l.split(':').next() {
                let _ = Command::new("losetup")
                    .arg("-d")
                    .arg(format!("/dev/{dev}"))
                    .status();
            }
        }
        if machine_state(&self.base).mounts_below.is_empty() {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            stdout(o),
            stderr(o)
        )
    })
}

pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

impl MachineState {
    /// Left as found: the same mounts, loop devices and sysctls, and no more pinned pages
    /// than before (the pin counters are system-wide, and pins of processes that exited are
    /// released asynchronously, so fewer is fine: an earlier test's releases landing).
    pub fn as_found(&self, before: &MachineState) -> bool {
        self.mounts_below == before.mounts_below
            && self.loops_below == before.loops_below
            && self.nr_hugepages == before.nr_hugepages
            && self.lease_break_time == before.lease_break_time
            && self.pins_outstanding <= before.pins_outstanding
    }
}

/// Wait (bounded) until the machine is as found, then assert it: pins of a killed process
/// are released by the kernel asynchronously (io_uring ring teardown is deferred work).
pub fn assert_left_as_found(base: &Path, before: &MachineState) {
    let start = std::time::Instant::now();
    loop {
        let now = machine_state(base);
        if now.as_found(before) {
            return;
        }
        if start.elapsed() > std::time::Duration::from_secs(10) {
            panic!("the machine is not as found:\n  before: {before:?}\n  after:  {now:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
