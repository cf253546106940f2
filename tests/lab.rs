//! The lab for real: Debian 6.1 booted under QEMU (TCG) with virtme-ng, an emulated NVDIMM
//! with FS-DAX xfs and ext4 and a device-dax namespace, and soft-RoCE.
//!
//! These tests need root, QEMU, virtme-ng (scripts/lab-setup.sh) and Debian's archive (the
//! kernel is fetched once into the lab cache). Outside CI they skip with the reason; in CI
//! (`CI` set) a missing piece is a failure. Each boot takes ~20-40 s under TCG.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{build_mm_probe, is_root, pinstorm, serial};

fn cache() -> PathBuf {
    if let Some(c) = std::env::var_os("PINSTORM_CACHE") {
        return PathBuf::from(c);
    }
    match std::env::var_os("XDG_CACHE_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x).join("pinstorm"),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/pinstorm"),
    }
}

/// Why the lab cannot run here, if it cannot.
fn lab_missing() -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("no qemu-system-x86_64 (scripts/lab-setup.sh installs it)".into());
    }
    if !cache().join("venv/bin/vng").exists()
        && Command::new("vng").arg("--version").output().is_err()
    {
        return Some(format!(
            "no virtme-ng on PATH or in {} (scripts/lab-setup.sh installs it)",
            cache().join("venv").display()
        ));
    }
    None
}

fn skip(test: &str) -> bool {
    match lab_missing() {
        None => false,
        Some(why) if std::env::var_os("CI").is_some() => {
            panic!("{test}: the lab cannot run in CI: {why}")
        }
        Some(why) => {
            eprintln!("{test}: skipped: {why}");
            true
        }
    }
}

/// Processes whose command line mentions `needle` (QEMU and vng of the lab runs).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) && !c.contains("cargo") {
                out.push(format!("{pid}: {c}"));
            }
        }
    }
    out
}

fn assert_nothing_left() {
    let runs = cache().join("runs");
    let left: Vec<_> = std::fs::read_dir(&runs)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "lab run directories left behind: {left:?}");
    let procs = processes_mentioning(&runs.display().to_string());
    assert!(procs.is_empty(), "lab processes left behind: {procs:?}");
    // Ours only (its run directories are on QEMU's command line): another lab on this
    // machine, with its own cache, is not this test's to judge.
    let ours = runs.display().to_string();
    let qemu: Vec<String> = processes_mentioning("pinstorm-lab")
        .into_iter()
        .filter(|p| p.contains(&ours))
        .collect();
    assert!(
        qemu.is_empty(),
        "QEMU of a lab guest left running: {qemu:?}"
    );
}

fn results_in(root: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let mut out = Vec::new();
    for k in std::fs::read_dir(root).unwrap().flatten() {
        if k.file_name() == "lab-matrix" {
            continue;
        }
        for r in std::fs::read_dir(k.path()).into_iter().flatten().flatten() {
            let p = r.path().join("result.json");
            if let Ok(b) = std::fs::read(&p) {
                out.push((p, serde_json::from_slice(&b).unwrap()));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// One lab run that must file exactly one result: `pinstorm --results RESULTS --quiet lab
/// --fresh ARGS` (the kernels, options and scenario).
struct OneLab {
    code: Option<i32>,
    err: String,
    path: PathBuf,
    r: serde_json::Value,
}

fn lab_once(results: &Path, args: &[&str]) -> OneLab {
    let o = pinstorm()
        .arg("--results")
        .arg(results)
        .args(["--quiet", "lab", "--fresh"])
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let all = results_in(results);
    assert_eq!(all.len(), 1, "{err}");
    let (path, r) = all.into_iter().next().unwrap();
    OneLab {
        code: o.status.code(),
        err,
        path,
        r,
    }
}

/// A scenario file `name` in `dir` with `text`; its path for the command line.
fn scenario_file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn probe_row<'a>(
    r: &'a serde_json::Value,
    pin: &str,
    backing: &str,
    map: &str,
    access: &str,
) -> &'a serde_json::Value {
    r["probe"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["pin"] == pin && p["backing"] == backing && p["map"] == map && p["access"] == access
        })
        .unwrap_or_else(|| panic!("no probe row {pin} {backing} {map} {access}"))
}

const SCENARIO: &str = r#"
name = "lab-test"
description = "io_uring and vmsplice on FS-DAX, device-dax and page-cache/shmem controls"
seed = 1

[probe]
pins = ["io_uring", "vmsplice"]
backings = ["xfs-dax", "ext4-dax", "devdax", "xfs", "tmpfs"]
maps = ["shared"]
access = ["rw", "ro"]
size = "2M"
device_io = false
"#;

/// The independent probe, run in the guest after the scenario on the same kinds of target:
/// its own files on the DAX mounts, the device-dax device, its own tmpfs and xfs (loop).
const GUEST_EXEC: &str = r#"set -u
P="@PROBE@"
w="$PINSTORM_LAB_WORK"; mkdir -p "$w/tmpfs" "$w/xfs"
mount -t tmpfs none "$w/tmpfs"
truncate -s 300M "$w/xfs.img" && mkfs.xfs -q -f "$w/xfs.img" && mount -o loop "$w/xfs.img" "$w/xfs"
for a in rw ro; do
  echo "xfs-dax shared $a $("$P" "file:$PINSTORM_LAB_XFS_DAX/indep-$a" shared $a 2097152 2>&1)"
  echo "ext4-dax shared $a $("$P" "file:$PINSTORM_LAB_EXT4_DAX/indep-$a" shared $a 2097152 2>&1)"
  echo "devdax shared $a $("$P" "dev:$PINSTORM_LAB_DEVDAX" shared $a 2097152 2>&1)"
  echo "tmpfs shared $a $("$P" "file:$w/tmpfs/indep-$a" shared $a 2097152 2>&1)"
  echo "xfs shared $a $("$P" "file:$w/xfs/indep-$a" shared $a 2097152 2>&1)"
done
umount "$w/xfs" "$w/tmpfs"
"#;

fn build_probe(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/independent/io_uring_probe.c");
    let out = dir.join("io_uring_probe");
    let st = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc (gcc is installed by scripts/test.sh)");
    assert!(st.success(), "building the independent probe");
    out
}

/// One lab run of Debian 6.1 inside a private mount namespace in which `/` and every other
/// mount is read-only except the lab cache and the results directory: the lab still works
/// (so it writes nowhere else on the host), the result comes back tagged with the guest
/// kernel, the xfs target is really DAX, io_uring registration on it was measured, the
/// device-dax and rxe checks ran (or say why not), every pin outcome agrees with an
/// independent probe run in the same guest, and no QEMU or temporary file is left.
#[test]
fn lab_runs_a_debian_kernel_confined_and_agrees_with_an_independent_probe() {
    if skip("lab_runs_a_debian_kernel_confined") {
        return;
    }
    let _g = serial();
    let tmp = tempdir("lab-confined");
    let results = tmp.join("results");
    std::fs::create_dir_all(&results).unwrap();
    let scenario = tmp.join("lab-test.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let probe = build_probe(&tmp);
    let cache = cache();
    std::fs::create_dir_all(&cache).unwrap();

    // The namespace: results and cache bound onto themselves (so they are mounts of their
    // own), then every other mount remounted read-only. The first check proves it.
    let confine = r#"set -eu
mount --make-rprivate /
mount --bind "$CACHE" "$CACHE"
mount --bind "$RESULTS" "$RESULTS"
awk '{print $5}' /proc/self/mountinfo | while read -r mp; do
  case "$mp" in
    /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;;
  esac
  [ "$mp" = "$CACHE" ] || [ "$mp" = "$RESULTS" ] && continue
  mount -o remount,bind,ro "$mp" 2>/dev/null || true
done
if touch /pinstorm-confinement-check /tmp/pinstorm-confinement-check "$HOME/pinstorm-confinement-check" 2>/dev/null; then
  echo "confinement is not in force" >&2; exit 99
fi
exec "$@"
"#;
    let exe = env!("CARGO_BIN_EXE_pinstorm");
    // CI boots Debian 6.1; PINSTORM_TEST_LAB_KERNELS=deb:6.1,deb:6.12,deb:sid checks more.
    let kernels = std::env::var("PINSTORM_TEST_LAB_KERNELS").unwrap_or_else(|_| "deb:6.1".into());
    let n = kernels.split(',').count();
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            confine,
            "sh",
        ])
        .arg(exe)
        .arg("--results")
        .arg(&results)
        .arg("--label")
        .arg("lab-test")
        .args([
            "lab",
            "--kernels",
            &kernels,
            "--devdax-namespace",
            "--timeout",
            "8m",
        ])
        .arg("--guest-exec")
        // The guest does not inherit our environment: the probe's path goes in the text.
        .arg(GUEST_EXEC.replace("@PROBE@", &probe.display().to_string()))
        .arg(&scenario)
        .env("CACHE", &cache)
        .env("RESULTS", &results)
        .env("PINSTORM_CACHE", &cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(99), "{stderr}");
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "lab failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );

    let rs = results_in(&results);
    assert_eq!(rs.len(), n, "one result per kernel: {rs:?}");
    for (path, r) in &rs {
        check_lab_result(path, r);
    }
    assert_nothing_left();
}

fn check_lab_result(path: &Path, r: &serde_json::Value) {
    let release = r["environment"]["kernel_release"].as_str().unwrap();
    eprintln!("checking the result of {release}: {}", path.display());
    assert_eq!(
        path.parent()
            .unwrap()
            .parent()
            .unwrap()
            .file_name()
            .unwrap(),
        release,
        "results are filed under the guest kernel's release"
    );
    assert_eq!(r["label"], "lab-test");
    let lab = &r["lab"];
    assert_eq!(lab["status"], "ok", "{lab:#}");
    assert!(
        matches!(lab["accel"].as_str(), Some("tcg" | "kvm"))
            && !lab["accel_reason"].as_str().unwrap().is_empty(),
        "{lab:#}"
    );
    let qemu = lab["qemu_command"].as_str().unwrap_or("");
    assert!(qemu.contains("nvdimm"), "{qemu}");
    assert!(path.with_file_name("console.log").exists());
    // Debian's kernel boots through QEMU's PVH entry: the last -kernel QEMU got is the
    // uncompressed vmlinux of this release, and the console has the kernel's banner but not
    // the line the bzImage's real-mode set-up prints ("Probing EDD"), which PVH skips.
    let kernel = qemu
        .rsplit(" -kernel ")
        .next()
        .and_then(|k| k.split_whitespace().next())
        .unwrap_or("");
    assert!(
        kernel.ends_with(&format!("/boot/vmlinux-{release}")),
        "QEMU's last -kernel is {kernel}: {qemu}"
    );
    let console = std::fs::read_to_string(path.with_file_name("console.log")).unwrap();
    assert!(
        console.contains(&format!("Linux version {release}")),
        "{console}"
    );
    assert!(
        !console.contains("Probing EDD"),
        "a bzImage boot: {console}"
    );
    // Its phases: the guest got through boot and set-up and ran every job, each timed, and
    // the phases that follow one another add up to no more than the whole.
    let t = &lab["timings"];
    let secs = |k: &str| {
        t[k].as_f64()
            .unwrap_or_else(|| panic!("timings.{k}: {t:#}"))
    };
    let phases = ["prepare_s", "boot_s", "setup_s", "run_s", "end_s"].map(secs);
    assert!(phases.iter().all(|&p| p >= 0.0), "{t:#}");
    assert!(
        phases.iter().sum::<f64>() <= secs("total_s") + 1e-6,
        "{t:#}"
    );
    let names = |k: &str| -> Vec<String> {
        t[k].as_array()
            .unwrap_or_else(|| panic!("timings.{k}: {t:#}"))
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    // The filesystems are made here, or came with a copy of the cache's NVDIMM template.
    let from_template = lab["guest"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "pmem-template" && f["outcome"] == "ok");
    let steps: &[&str] = if from_template {
        &["pmem", "mount", "rxe"]
    } else {
        &["pmem", "mkfs-xfs", "mkfs-ext4", "mount", "rxe"]
    };
    assert!(
        steps.iter().all(|n| names("setup").iter().any(|x| x == n)),
        "{from_template} {t:#}"
    );
    if from_template {
        assert!(
            !names("setup").iter().any(|x| x.starts_with("mkfs")),
            "{t:#}"
        );
    }
    let jobs: Vec<String> = r["disturbance"]["jobs"]
        .as_array()
        .map(|j| {
            j.iter()
                .map(|x| x["job"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(names("jobs"), jobs, "one timed phase per job: {t:#}");
    // The lab's own init ran the agent (CI has busybox): the guest saw the run's lab-init
    // as PID 1, not virtme-ng's init, and its console says so.
    let console = std::fs::read_to_string(path.with_file_name("console.log")).unwrap();
    let init = fact(r, "init").unwrap_or_else(|| panic!("no init fact: {lab:#}"));
    assert!(
        init["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("/bin/busybox sh ") && d.ends_with("/lab-init")),
        "{init:#}"
    );
    assert!(
        console
            .lines()
            .any(|l| l.starts_with("pinstorm lab init: [")
                && l.ends_with("] the lab's own init runs the agent (not virtme-ng's init)")),
        "{console}"
    );

    // The xfs target is really DAX: the backing was set up (it verifies STATX_ATTR_DAX) and
    // every region on it says dax.
    let xfs_dax = r["backings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backing"] == "xfs-dax")
        .unwrap();
    assert_eq!(xfs_dax["outcome"], "ok", "{xfs_dax:#}");
    assert!(xfs_dax["mount_options"].as_str().unwrap().contains("dax"));
    let cell = probe_row(r, "io_uring", "xfs-dax", "shared", "rw");
    assert_eq!(cell["dax"], true, "{cell:#}");
    assert_ne!(
        cell["outcome"], "notrun",
        "io_uring on FS-DAX was measured: {cell:#}"
    );
    let pagecache = probe_row(r, "io_uring", "xfs", "shared", "rw");
    assert_eq!(
        pagecache["dax"], false,
        "the control is page cache: {pagecache:#}"
    );

    // device-dax and rxe: ran, or notrun with a reason.
    let dd = probe_row(r, "io_uring", "devdax", "shared", "rw");
    assert!(
        dd["outcome"] != "notrun" || dd["reason"].as_str().is_some_and(|s| !s.is_empty()),
        "{dd:#}"
    );
    let rxe = lab["guest"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "rxe")
        .expect("an rxe fact");
    assert!(
        rxe["outcome"] == "ok" || !rxe["detail"].as_str().unwrap().is_empty(),
        "{rxe:#}"
    );

    // The independent probe, same guest, same kinds of target, agrees cell by cell.
    let indep = std::fs::read_to_string(path.with_file_name("guest-exec.log")).unwrap();
    let mut compared = 0;
    for line in indep.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || !["xfs-dax", "ext4-dax", "devdax", "tmpfs", "xfs"].contains(&f[0]) {
            continue;
        }
        let row = probe_row(r, "io_uring", f[0], f[1], f[2]);
        assert_eq!(
            row["outcome"].as_str().unwrap(),
            f[3],
            "pinstorm and the independent probe disagree on {line}:\n{row:#}\nindependent output:\n{indep}"
        );
        compared += 1;
    }
    assert_eq!(compared, 10, "independent probe output:\n{indep}");
}

/// A kernel that panics is reported as such, with the console excerpt, and the matrix goes
/// on to the next kernel (here the same image booted as `path:` with `--modules`).
#[test]
fn a_panicking_kernel_is_reported_and_the_matrix_goes_on() {
    if skip("a_panicking_kernel_is_reported") {
        return;
    }
    let _g = serial();
    let tmp = tempdir("lab-panic");
    let results = tmp.join("results");
    // The Debian kernel, unpacked in the cache, to boot a second time as path: + --modules.
    let prep = pinstorm()
        .args([
            "--format",
            "json",
            "lab",
            "--kernels",
            "deb:6.1",
            "--fetch-only",
        ])
        .output()
        .unwrap();
    assert!(
        prep.status.success(),
        "{}",
        String::from_utf8_lossy(&prep.stderr)
    );
    let ks: serde_json::Value = serde_json::from_slice(&prep.stdout).unwrap();
    let image = PathBuf::from(ks[0]["boot"].as_str().unwrap());
    let release = ks[0]["release"].as_str().unwrap().to_string();
    let kdir = image.parent().unwrap().parent().unwrap().to_path_buf();

    let t0 = Instant::now();
    let out = pinstorm()
        .arg("--results")
        .arg(&results)
        .args([
            "lab",
            "--pmem",
            "none",
            "--no-rxe",
            "--inject",
            "panic:deb:6.1",
        ])
        .arg("--kernels")
        .arg(format!("deb:6.1,path:{}", image.display()))
        .arg("--modules")
        .arg(kdir.join("lib/modules").join(&release))
        .arg("quick")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a panic fails the matrix:\n{stdout}\n{stderr}"
    );
    let rs = results_in(&results);
    assert_eq!(rs.len(), 2, "{stdout}\n{stderr}");
    let statuses: Vec<&str> = rs
        .iter()
        .map(|(_, r)| r["lab"]["status"].as_str().unwrap())
        .collect();
    let panicked = rs
        .iter()
        .find(|(_, r)| r["lab"]["status"] == "panic")
        .expect("a panic");
    let reason = panicked.1["lab"]["reason"].as_str().unwrap();
    assert!(reason.contains("Kernel panic"), "{reason}");
    assert_eq!(panicked.1["lab"]["kernel_spec"], "deb:6.1");
    assert_eq!(panicked.1["complete"], false);
    // A panic after the agent's first step is the kernel's answer: never booted again.
    assert!(
        panicked.1["lab"]["boot_retry"].is_null(),
        "{:#}",
        panicked.1["lab"]
    );
    let ok = rs
        .iter()
        .find(|(_, r)| r["lab"]["status"] == "ok")
        .unwrap_or_else(|| panic!("the second kernel ran: {statuses:?}\n{stdout}"));
    assert!(ok.1["lab"]["kernel_spec"]
        .as_str()
        .unwrap()
        .starts_with("path:"));
    assert_eq!(ok.1["complete"], true);
    assert!(
        stdout.contains("panic") && stdout.contains("ok"),
        "{stdout}"
    );
    eprintln!("panic + second kernel: {:.0}s", t0.elapsed().as_secs_f64());
    assert_nothing_left();
}

/// A guest that never returns is killed at the watchdog's timeout and reported; SIGKILL of
/// pinstorm itself leaves a guest that `pinstorm cleanup --cache` then kills; SIGINT stops
/// the lab with 130 and no guest left.
#[test]
fn hung_guests_time_out_and_killed_labs_are_cleaned_up() {
    if skip("hung_guests_time_out") {
        return;
    }
    let _g = serial();
    let tmp = tempdir("lab-hang");
    let results = tmp.join("results");
    let lab = |extra: &[&str]| {
        let mut c = pinstorm();
        c.arg("--results")
            .arg(&results)
            .args([
                "lab",
                "--kernels",
                "deb:6.1",
                "--pmem",
                "none",
                "--no-rxe",
                "--fresh",
            ])
            .args(extra)
            .arg("quick");
        c
    };

    // 1. Watchdog.
    let out = lab(&["--inject", "hang", "--timeout", "60s"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rs = results_in(&results);
    let hung = rs
        .iter()
        .find(|(_, r)| r["lab"]["status"] == "timeout")
        .expect("a timeout");
    assert!(hung.1["lab"]["reason"]
        .as_str()
        .unwrap()
        .contains("no result after 60s"));
    assert_nothing_left();

    // 2. SIGKILL pinstorm while the guest runs: the guest survives it (its own process
    // group), and cleanup kills it and removes the run directory.
    let wait_for_guest = |child: &mut std::process::Child| {
        let t0 = Instant::now();
        loop {
            let pg = std::fs::read_dir(cache().join("runs"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.path().join("pgid").exists());
            if pg {
                std::thread::sleep(Duration::from_secs(3));
                return;
            }
            assert!(child.try_wait().unwrap().is_none(), "the lab ended early");
            assert!(t0.elapsed() < Duration::from_secs(120), "no guest started");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let mut child = lab(&["--inject", "hang"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_guest(&mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !processes_mentioning(&cache().join("runs").display().to_string()).is_empty(),
        "the guest should outlive a SIGKILLed pinstorm (that is what cleanup is for)"
    );
    let c = pinstorm()
        .args(["cleanup", "--cache"])
        .arg(cache())
        .output()
        .unwrap();
    let cs = String::from_utf8_lossy(&c.stdout);
    assert!(c.status.success(), "{cs}");
    assert!(cs.contains("killed the guest"), "{cs}");
    assert_nothing_left();

    // 3. SIGINT: the lab kills its guest and exits 130.
    let mut child = lab(&["--inject", "hang"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_guest(&mut child);
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_left();
}

/// A temporary directory removed when the test ends, passing or failing.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("pinstorm-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

const TEMPLATE_SCENARIO: &str = r#"
name = "lab-template"
description = "the DAX backings on a guest's own set-up, then on a copy of the template it made"
seed = 1
[probe]
pins = ["io_uring"]
backings = ["xfs-dax", "ext4-dax", "devdax"]
maps = ["shared"]
access = ["rw"]
size = "2M"
"#;

fn fact<'a>(r: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    r["lab"]["guest"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
}

/// The first guest of a layout makes the cache's NVDIMM template (before it mounts
/// anything), the next boots on a copy of it: no ndctl or mkfs there, yet the same DAX
/// backings are DAX (STATX_ATTR_DAX on the files the probe made) and device-dax works; the
/// template itself is not changed by the guest that used it (its bytes, read by the test, are
/// the same before and after), and it is ours: mode 0600 in a 0700 directory.
#[test]
fn a_template_nvdimm_image_is_made_once_and_the_next_guest_boots_on_a_copy() {
    if skip("a_template_nvdimm_image") {
        return;
    }
    let _g = serial();
    let tmp = tempdir("lab-template");
    let scenario = scenario_file(&tmp, "template.toml", TEMPLATE_SCENARIO);
    // The templates are the cache's and made again on demand: start without any.
    let dir = cache().join("nvdimm");
    let _ = std::fs::remove_dir_all(&dir);
    let run = |results: &Path| {
        let l = lab_once(
            results,
            &[
                "--kernels",
                "deb:6.1",
                "--no-rxe",
                "--timeout",
                "8m",
                &scenario,
            ],
        );
        assert_eq!(l.code, Some(0), "{}", l.err);
        l.r
    };
    let dax_everywhere = |r: &serde_json::Value| {
        for b in ["xfs-dax", "ext4-dax", "devdax"] {
            let cell = probe_row(r, "io_uring", b, "shared", "rw");
            assert_eq!(cell["dax"], true, "{cell:#}");
            assert_eq!(cell["verdict"], "as-expected", "{cell:#}");
        }
    };

    let first = run(&tmp.join("results-1"));
    let made =
        fact(&first, "pmem-template-made").unwrap_or_else(|| panic!("{:#}", first["lab"]["guest"]));
    assert_eq!(made["outcome"], "ok", "{made:#}");
    dax_everywhere(&first);
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let template = &files[0];
    let detail = made["detail"].as_str().unwrap();
    let name = template.file_name().unwrap().to_str().unwrap();
    assert!(detail.contains(name), "{detail} vs {name}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(template).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let before = std::fs::read(template).unwrap();
    // Something was made there (labels and filesystems), not an empty file.
    assert!(before.iter().any(|b| *b != 0));

    let second = run(&tmp.join("results-2"));
    let used =
        fact(&second, "pmem-template").unwrap_or_else(|| panic!("{:#}", second["lab"]["guest"]));
    assert_eq!(used["outcome"], "ok", "{used:#}");
    assert!(used["detail"].as_str().unwrap().contains(name), "{used:#}");
    assert!(fact(&second, "pmem-template-made").is_none());
    // No namespace or mkfs step in its set-up: they came with the copy.
    let steps: Vec<&str> = second["lab"]["timings"]["setup"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        !steps
            .iter()
            .any(|s| s.starts_with("mkfs") || *s == "devdax"),
        "{steps:?}"
    );
    dax_everywhere(&second);
    assert!(
        std::fs::read(template).unwrap() == before,
        "the template changed while a guest ran on its copy"
    );
    assert_nothing_left();
}

const SCRATCH_DEV_SCENARIO: &str = r#"
name = "lab-scratch-dev"
description = "the DAX backings on the guest's pmem named as --scratch-dev"
seed = 1
[probe]
pins = ["io_uring", "vmsplice"]
backings = ["xfs-dax", "ext4-dax"]
maps = ["shared"]
access = ["rw"]
size = "2M"
"#;

/// The guest's pmem handed to the run as `--scratch-dev` (not made by the lab's own set-up):
/// pinstorm makes xfs and ext4 on two fsdax namespaces, mounts them dax=always, the
/// regions there are DAX (STATX_ATTR_DAX), and afterwards `blkid -p` in the guest finds the
/// devices blank.
#[test]
fn the_guests_pmem_as_a_scratch_device_gets_dax_and_is_blank_afterwards() {
    if skip("the_guests_pmem_as_a_scratch_device") {
        return;
    }
    let _g = serial();
    let tmp = tempdir("lab-scratch-dev");
    let scenario = scenario_file(&tmp, "scratch-dev.toml", SCRATCH_DEV_SCENARIO);
    let OneLab { code, err, r, .. } = lab_once(
        &tmp.join("results"),
        &[
            "--kernels",
            "deb:6.1",
            "--no-rxe",
            "--pmem-scratch-dev",
            "--timeout",
            "8m",
            &scenario,
        ],
    );
    assert!(matches!(code, Some(0) | Some(3)), "{err}");
    let r = &r;
    let facts = r["lab"]["guest"].as_array().unwrap();
    let fact = |name: &str| {
        facts
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no {name} fact: {facts:?}"))
    };
    for fs in ["xfs", "ext4"] {
        assert_eq!(
            fact(&format!("scratch-dev-{fs}"))["outcome"],
            "ok",
            "{facts:?}"
        );
        assert_eq!(
            fact(&format!("scratch-dev-{fs}-after"))["outcome"],
            "ok",
            "{facts:?}"
        );
    }
    for fs in ["xfs-dax", "ext4-dax"] {
        let b = r["backings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["backing"] == fs)
            .unwrap();
        assert_eq!(b["outcome"], "ok", "{b:#}");
        // The namespace's block device, reached through pinstorm's descriptor.
        assert!(
            b["mount_options"]
                .as_str()
                .is_some_and(|o| o.contains("dax")),
            "{b:#}"
        );
        for pin in ["io_uring", "vmsplice"] {
            let cell = probe_row(r, pin, fs, "shared", "rw");
            assert_eq!(cell["dax"], true, "{cell:#}");
        }
    }
}

/// The witness of `mm-vs-pin-lab`, run in the guest after the scenario and before the kmem
/// node is put back: HardwareCorrupted, the state of node 1's memory blocks, and the C probe
/// (tests/independent/mm_probe.c) running soft-offline and hwpoison on its own pinned
/// buffers.
const MM_LAB_EXEC: &str = r#"set -u
P="@PROBE@"
echo "hardware-corrupted $(awk '/^HardwareCorrupted/ {print $2}' /proc/meminfo)"
for f in /sys/devices/system/node/node1/memory*; do echo "block ${f##*memory} $(cat "$f/state")"; done
for c in "anon private soft-offline" "memfd shared soft-offline" "anon private hwpoison" "anon private none"; do
  set -- $c
  echo "probe $1 $2 $3 $("$P" "$1" "$2" "$3" 2097152 2>&1)"
done
"#;

/// `mm-vs-pin-lab` in a 6.1 guest with a kmem node: the lab-only operations ran (none is
/// notrun where it applies), the storm's verdict is the expectations', no pinned page moved,
/// every memory block the operation took offline is back online (read by the witness, not
/// by pinstorm), HardwareCorrupted holds at least the pages pinstorm says it poisoned, and
/// the errno pinstorm counted for soft-offline and hwpoison of pinned pages is the one the
/// C probe gets for its own pinned buffer on the same kernel.
#[test]
fn memory_operations_that_damage_memory_agree_with_the_witnesses_in_a_lab_guest() {
    if skip("memory_operations_that_damage_memory") {
        return;
    }
    let _g = serial();
    let tmp = tempdir("lab-mm");
    let results = tmp.join("results");
    let Some(probe) = build_mm_probe(&tmp.join("mm_probe")) else {
        return;
    };
    let exec = MM_LAB_EXEC.replace("@PROBE@", probe.to_str().unwrap());
    let OneLab { code, err, path, r } = lab_once(
        &results,
        &[
            "--kernels",
            "deb:6.1",
            "--no-rxe",
            "--kmem-node",
            "--timeout",
            "8m",
            "--guest-exec",
            &exec,
            "mm-vs-pin-lab",
        ],
    );
    let (path, r) = (&path, &r);
    assert_eq!(r["lab"]["status"], "ok", "{err} {:#}", r["lab"]);
    assert_eq!(code, Some(0), "{err}");
    let facts = r["lab"]["guest"].as_array().unwrap();
    let kmem = facts.iter().find(|f| f["name"] == "kmem-node").unwrap();
    assert_eq!(kmem["outcome"], "ok", "{kmem:#}");
    // "... of which [39, 40] go offline ...": the blocks the operation may take offline.
    let detail = kmem["detail"].as_str().unwrap();
    let usable: Vec<u32> = detail
        .split("of which [")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap_or_else(|| panic!("{detail}"))
        .split(", ")
        .map(|b| b.parse().unwrap())
        .collect();
    assert!(!usable.is_empty(), "{detail}");

    let log = std::fs::read_to_string(path.with_file_name("guest-exec.log")).unwrap();
    let field = |prefix: &str| -> Vec<String> {
        log.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(|s| s.trim().to_string())
            .collect()
    };
    let storms = r["storms"].as_array().unwrap();
    // Every block the operation may have taken offline is online again, unless pinstorm
    // reported that the kernel refused to online it because it holds hardware-poisoned pages
    // (then the witness must see poisoned memory too).
    let refused_online = storms
        .iter()
        .flat_map(|s| s["layout_ops"].as_array().unwrap())
        .filter(|op| op["op"] == "memory-offline")
        .flat_map(|op| op["errors"].as_object().unwrap().keys())
        .filter(|k| k.starts_with("EHWPOISON (left offline"))
        .count();
    let states: Vec<String> = field("block ");
    let mut left_offline = 0;
    for b in &usable {
        let st = states
            .iter()
            .find_map(|s| s.strip_prefix(&format!("{b} ")))
            .unwrap_or_else(|| panic!("no block {b} in the witness: {log}"));
        if st != "online" {
            left_offline += 1;
        }
        assert!(
            st == "online" || refused_online > 0,
            "memory{b} is {st} and pinstorm did not report why: {log}"
        );
    }
    if left_offline > 0 {
        let hc: u64 = field("hardware-corrupted ")[0].parse().unwrap();
        assert!(
            hc > 0,
            "a block left offline with no poisoned memory: {log}"
        );
        eprintln!("{left_offline} block(s) left offline holding hardware-poisoned pages, as pinstorm reported");
    }

    let mut ran = std::collections::BTreeMap::<String, u64>::new();
    let mut errors = std::collections::BTreeMap::<String, Vec<String>>::new();
    let mut poisoned = 0u64;
    for s in storms.iter().filter(|s| s["control"] != true) {
        assert_eq!(
            s["oracle"]["moved"]["count"], 0,
            "{:#}",
            s["oracle"]["moved"]
        );
        assert!(
            s["oracle"]["moved"]["notrun"].is_null(),
            "{:#}",
            s["oracle"]
        );
        for op in s["layout_ops"].as_array().unwrap() {
            let name = op["op"].as_str().unwrap().to_string();
            if op["outcome"] == "ok" {
                *ran.entry(name.clone()).or_default() += op["count"].as_u64().unwrap();
                let ok = op["stats"]["count"].as_u64().unwrap_or(0);
                if name == "hwpoison" {
                    poisoned += ok;
                }
                for e in op["errors"].as_object().unwrap().keys() {
                    errors.entry(name.clone()).or_default().push(e.clone());
                }
            } else {
                // Only where the operation does not apply, or where the cell's random draw
                // did not pick it before the cell ended (the loop below checks each ran in
                // some cell), never for want of a capability.
                let why = op["reason"].as_str().unwrap_or("");
                assert!(
                    why.contains("private anonymous memory only")
                        || why.contains("control")
                        || why.contains("the disruptors did not draw it"),
                    "{name}: {why}"
                );
            }
        }
    }
    for op in ["hwpoison", "soft-offline", "memory-offline"] {
        assert!(
            ran.get(op).is_some_and(|n| *n > 0),
            "{op} never ran: {ran:?}"
        );
    }
    // The kernel's count of poisoned memory holds what pinstorm poisoned (and what it
    // soft-offlined; the probe's own pages come after this line).
    let hc: u64 = field("hardware-corrupted ")[0].parse().unwrap();
    assert!(
        hc >= poisoned * 4,
        "HardwareCorrupted {hc} kB < {poisoned} pages: {log}"
    );
    if poisoned > 0 {
        assert!(hc > 0);
    }
    // The errno of a pinned page, as the probe gets it on its own buffer.
    let probe_says = |what: &str| -> String {
        field("probe ")
            .into_iter()
            .find_map(|l| l.strip_prefix(what).map(|s| s.trim().to_string()))
            .unwrap_or_else(|| panic!("no probe line for {what}: {log}"))
    };
    assert_eq!(probe_says("anon private none"), "same kept", "{log}");
    for (op, what) in [
        ("soft-offline", "anon private soft-offline"),
        ("soft-offline", "memfd shared soft-offline"),
    ] {
        let p = probe_says(what);
        let errno = p
            .strip_prefix(&format!("{op}:"))
            .unwrap_or_else(|| panic!("{what}: the probe's pinned buffer was offlined: {p}"));
        for e in errors.get(op).into_iter().flatten() {
            let e = e.split(' ').next().unwrap();
            assert_eq!(
                e, errno,
                "{op}: pinstorm counted {e}, the probe got {errno}"
            );
        }
    }
    // hwpoison of a pinned page: what pinstorm counted failing failed as the probe's call
    // did; a call that succeeded (a page between two pins) leaves pin and mapping agreeing
    // on the other pages.
    let p = probe_says("anon private hwpoison");
    match p.strip_prefix("hwpoison:") {
        Some(errno) => {
            // `EHWPOISON+SIGBUS` from the probe is `EHWPOISON (and the kernel sent the
            // caller SIGBUS ...)` in pinstorm's count.
            let (errno, sigbus) = match errno.strip_suffix("+SIGBUS") {
                Some(e) => (e, true),
                None => (errno, false),
            };
            for e in errors.get("hwpoison").into_iter().flatten() {
                assert_eq!(
                    e.contains("SIGBUS"),
                    sigbus,
                    "hwpoison: pinstorm {e}, probe {p}"
                );
                let e = if e.starts_with("returned 0") {
                    "0"
                } else {
                    e.split(' ').next().unwrap()
                };
                assert_eq!(
                    e, errno,
                    "hwpoison: pinstorm counted {e}, the probe got {errno}"
                );
            }
        }
        None => assert_eq!(p, "same kept", "{log}"),
    }
}

/// `pin-migration` in a 6.1 guest booted with `movablecore=25%`: the guest has a ZONE_MOVABLE
/// (read by the witness from /proc/zoneinfo, not by pinstorm), fresh regions start there,
/// every page a long-term io_uring pin held had been moved out of it, the first pin is
/// slower than pinning the same pages again, pinning pages a pipe holds has an outcome, and
/// every fact was judged against an expectation (a fact without one fails the test).
#[test]
fn a_long_term_pin_moves_pages_out_of_zone_movable_in_a_lab_guest() {
    if skip("a_long_term_pin_moves_pages_out_of_zone_movable") {
        return;
    }
    let _g = serial();
    let tmp = tempdir("lab-movable");
    let OneLab {
        code,
        err,
        path,
        r,
    } = lab_once(
        &tmp.join("results"),
        &[
            "--kernels",
            "deb:6.1",
            "--no-rxe",
            "--movablecore",
            "25%",
            "--timeout",
            "8m",
            "--guest-exec",
            "awk '/^Node/ {z=$4} z==\"Movable\" && $1==\"present\" {print \"movable-present\", $2}' /proc/zoneinfo",
            "pin-migration",
        ],
    );
    let (path, r) = (&path, &r);
    assert_eq!(r["lab"]["status"], "ok", "{err} {:#}", r["lab"]);
    assert_eq!(code, Some(0), "{err}");
    let log = std::fs::read_to_string(path.with_file_name("guest-exec.log")).unwrap();
    let present: u64 = log
        .lines()
        .filter_map(|l| l.strip_prefix("movable-present "))
        .map(|n| n.trim().parse::<u64>().unwrap())
        .sum();
    assert!(present > 0, "no ZONE_MOVABLE in the guest: {log}");
    let m = &r["migration"][0];
    assert_eq!(m["outcome"], "ok", "{m:#}");
    let before = m["movable_before"].as_u64().unwrap();
    assert!(before > 0, "{m:#}");
    assert_eq!(m["migrated"], before, "{m:#}");
    assert_eq!(m["movable_while_pinned"], 0, "{m:#}");
    assert!(!m["held"].as_str().unwrap().is_empty(), "{m:#}");
    let verdicts = m["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 4, "{m:#}");
    for v in verdicts {
        assert_eq!(v["verdict"], "as-expected", "{v:#}");
    }
}

const MIGRATION_SCENARIO: &str = r#"
name = "lab-migration-witness"
description = "move_pages between two nodes under io_uring pins on anonymous memory, the ground migration.c covers without pins"
seed = 1

[storm]
pins = ["io_uring"]
backings = ["anon"]
maps = ["private"]
ops = ["migrate"]
file_size = "2M"
pinners = 1
disruptors = 1
hold = "2ms"
rate = 100
duration = "2s"
"#;

/// The kernel's own migration selftest (6.12's tree, its own kernel) on a guest with a kmem
/// node, so two nodes with memory, and three CPUs (it needs two threads besides its own),
/// beside a `migrate` storm on the same kind of memory: `migration.private_anon` moves an
/// unpinned private anonymous buffer between the two nodes while threads read it and passes
/// when every `move_pages` succeeds; pinstorm's storm moves ranges of a private anonymous
/// buffer that is registered as an io_uring fixed buffer now and then, and says per call
/// how many pages moved. The selftest passes exactly where pinstorm saw pages move, and
/// none of pinstorm's pinned pages moved (its moved oracle, where it judged).
#[test]
fn kernel_selftest_migration_agrees_with_a_migrate_storm_on_a_kmem_node_in_a_lab_guest() {
    if skip("kernel_selftest_migration_agrees_with_a_migrate_storm") {
        return;
    }
    let _g = serial();
    let tmp = tempdir("lab-migration");
    let scenario = scenario_file(&tmp, "migration.toml", MIGRATION_SCENARIO);
    let OneLab { err, r, .. } = lab_once(
        &tmp.join("results"),
        &[
            "--kernels",
            "deb:6.12",
            "--no-rxe",
            "--kmem-node",
            "--cpus",
            "3",
            "--timeout",
            "8m",
            "--kselftests",
            "migration",
            &scenario,
        ],
    );
    let r = &r;
    assert_eq!(r["lab"]["status"], "ok", "{err} {:#}", r["lab"]);
    let m = r["lab"]["kselftests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "migration")
        .unwrap_or_else(|| panic!("{:#}", r["lab"]["kselftests"]));
    assert_ne!(m["outcome"], "notrun", "{m:#}");
    assert_eq!(m["source_matches"], true, "6.12's own tree: {m:#}");
    let case = m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["description"] == "migration.private_anon")
        .unwrap_or_else(|| panic!("no private_anon case: {m:#}"));
    let selftest_moved = match case["result"].as_str().unwrap() {
        "ok" => true,
        "fail" => false,
        other => panic!("private_anon {other} with two nodes and three CPUs: {case:#}"),
    };

    let storm = r["storms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["backing"] == "anon" && s["control"] != true)
        .unwrap_or_else(|| panic!("{:#}", r["storms"]));
    let op = storm["layout_ops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["op"] == "migrate")
        .unwrap();
    assert_eq!(op["outcome"], "ok", "{op:#}");
    // "migrate file=0: move_pages 40960+1916928 node 0 -> 1: 467 of 468 moved (EBUSY x1)"
    let calls: Vec<(u64, u64)> = storm["sequence_head"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|per_file| per_file.as_array().unwrap())
        .filter_map(|l| {
            let l = l.as_str()?;
            let (_, tail) = l.split_once(" moved")?.0.rsplit_once(": ")?;
            let (n, of) = tail.split_once(" of ")?;
            Some((n.parse().ok()?, of.parse().ok()?))
        })
        .collect();
    assert!(!calls.is_empty(), "no move_pages call described: {storm:#}");
    let pinstorm_moved = calls.iter().any(|(n, _)| *n > 0);
    eprintln!(
        "migration.private_anon {}; pinstorm's move_pages calls (moved of asked): {calls:?}",
        case["result"]
    );
    assert_eq!(
        pinstorm_moved, selftest_moved,
        "migration.private_anon {case:#} against pinstorm's calls {calls:?}"
    );
    let moved = &storm["oracle"]["moved"];
    assert!(
        moved["notrun"].is_string() || moved["count"] == 0,
        "a pinned page moved: {moved:#}"
    );
    assert_nothing_left();
}

const KSELFTEST_SCENARIO: &str = r#"
name = "lab-kselftest-witness"
description = "io_uring long-term pins per backing and map, the cells gup_longterm also tests"
seed = 1

[probe]
pins = ["io_uring"]
backings = ["memfd", "memfd-hugetlb", "tmpfs", "ext4", "xfs"]
maps = ["shared", "private"]
access = ["rw"]
size = "2M"

# The cells cow.c's "fork() with an iouring fixed buffer" also tests.
[storm]
pins = ["io_uring"]
backings = ["anon", "anon-hugetlb"]
maps = ["private"]
ops = ["fork-cow"]
file_size = "2M"
pinners = 1
disruptors = 1
hold = "2ms"
rate = 100
duration = "2s"
"#;

/// The pinstorm storm cell a cow.c case tests: its "fork() with an iouring fixed buffer"
/// cases register anonymous private memory as an io_uring fixed buffer (FOLL_WRITE |
/// FOLL_PIN | FOLL_LONGTERM), fork, write it in the parent and have the device read it back:
/// the pin must see the parent's write. pinstorm's `fork-cow` storms do the same (the child
/// writes too) and judge it with the diverged oracle, both ways. pinstorm's `anon` is
/// whatever the kernel gives a 2 MiB private anonymous mapping: Debian builds THP `always`,
/// so a THP where the mapping happens to be 2 MiB-aligned (kernels from 6.7 align such
/// mappings) and base pages otherwise; pinstorm does not record which. So both cow.c's
/// "base page" and "THP (2048 kB)" cases are compared with it, and each must agree;
/// "hugetlb (2048 kB)" is its `anon-hugetlb`. cow.c's swapped-out, PTE-mapped and
/// partially-mapped variants have no pinstorm cell.
fn cow_fork_cell(description: &str) -> Option<&'static str> {
    match description.strip_prefix("fork() with an iouring fixed buffer ... with ")? {
        "base page" | "THP (2048 kB)" => Some("anon"),
        "hugetlb (2048 kB)" => Some("anon-hugetlb"),
        _ => None,
    }
}

/// The pinstorm cell a gup_longterm case tests, and what the test expects of it, read from
/// gup_longterm.c (6.5 and later; the 6.12 tree here): only its io_uring cases pin the way
/// a pinstorm path does (io_uring fixed buffers, always FOLL_WRITE | FOLL_PIN |
/// FOLL_LONGTERM: pinstorm's `io_uring` cells with access `rw`); the GUP ones need
/// CONFIG_GUP_TEST's debugfs file, which Debian's kernels lack. `do_test()`:
/// `should_work = !shared || fs_supports_writable_longterm_pinning(fs_type)`, true only on
/// tmpfs and hugetlbfs; memfd is tmpfs, memfd hugetlb hugetlbfs, `tmpfile` is made in /tmp
/// and `local tmpfile` in the working directory (`tmp_fs` and `cwd_fs` in the record).
/// Returns `(backing, map, should_work)`.
fn gup_longterm_cell(
    description: &str,
    tmp_fs: &str,
    cwd_fs: &str,
) -> Option<(String, String, bool)> {
    let rest = description.strip_prefix("io_uring fixed buffer with MAP_")?;
    let (map, file) = rest.split_once(" file mapping ... with ")?;
    let shared = match map {
        "SHARED" => true,
        "PRIVATE" => false,
        _ => return None,
    };
    let (backing, fs) = match file {
        "memfd" => ("memfd", "tmpfs"),
        // pinstorm's memfd-hugetlb uses the default (2 MiB) huge pages.
        "memfd hugetlb (2048 kB)" => ("memfd-hugetlb", "hugetlbfs"),
        "tmpfile" => (tmp_fs, tmp_fs),
        "local tmpfile" => (cwd_fs, cwd_fs),
        _ => return None,
    };
    if !["memfd", "memfd-hugetlb", "tmpfs", "ext4", "xfs"].contains(&backing) {
        return None;
    }
    let should_work = !shared || matches!(fs, "tmpfs" | "hugetlbfs");
    Some((backing.to_string(), map.to_ascii_lowercase(), should_work))
}

/// The kernel's own gup_longterm (and cow) built from Debian's linux-source and run in the
/// same 6.1 guest as pinstorm's probe: every io_uring case the selftest ran is compared with
/// pinstorm's cell of the same backing and map. The selftest's observed outcome is its
/// expectation when the case passed and the opposite when it failed (its result line says
/// which: "Should have worked" is printed after a pin that worked); pinstorm's cell must
/// be the same, and at least one pin that works and one the kernel refuses must be compared.
/// cow.c's io_uring fork cases are compared the same way with pinstorm's fork-cow storms
/// ([`cow_fork_cell`]): at least one must be. Debian 6.1's tree has neither test
/// (gup_longterm is from 6.5, cow from 6.2), so they are built from linux-source-6.12 and
/// the record must say the versions differ.
#[test]
fn kernel_selftests_gup_longterm_and_cow_agree_with_pinstorm_cell_by_cell_in_a_lab_guest() {
    if skip("kernel_selftest_gup_longterm_agrees_with_the_probe") {
        return;
    }
    let _g = serial();
    let tmp = tempdir("lab-kselftest");
    let scenario = scenario_file(&tmp, "kselftest.toml", KSELFTEST_SCENARIO);
    let start = Instant::now();
    let OneLab { err, path, r, .. } = lab_once(
        &tmp.join("results"),
        &[
            "--kernels",
            "deb:6.1",
            "--pmem",
            "none",
            "--no-rxe",
            "--timeout",
            "6m",
            "--kselftests",
            "gup_longterm,cow",
            "--kselftest-source",
            "6.12",
            &scenario,
        ],
    );
    eprintln!(
        "lab with the selftests: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let (path, r) = (&path, &r);
    assert_eq!(r["lab"]["status"], "ok", "{err} {:#}", r["lab"]);
    let tests = r["lab"]["kselftests"].as_array().unwrap();
    let named = |n: &str| {
        tests
            .iter()
            .find(|t| t["name"] == n)
            .unwrap_or_else(|| panic!("no {n} in {tests:#?}"))
    };
    let cow = named("cow");
    assert_ne!(cow["outcome"], "notrun", "{cow:#}");
    assert_eq!(
        cow["planned"].as_u64().map(|n| n as usize),
        Some(cow["cases"].as_array().unwrap().len()),
        "every planned cow case reported: {cow:#}"
    );
    let g = named("gup_longterm");
    assert_ne!(g["outcome"], "notrun", "{g:#}");
    assert!(
        g["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("linux-source-6.12=")),
        "{g:#}"
    );
    assert_eq!(
        g["source_matches"], false,
        "a 6.12 tree is not the 6.1 kernel's: {g:#}"
    );
    assert!(
        g["source_note"]
            .as_str()
            .unwrap()
            .contains(g["kernel_version"].as_str().unwrap()),
        "{g:#}"
    );
    assert!(path.with_file_name("kselftest-gup_longterm.log").exists());
    let tmp_fs = g["tmp_fs"].as_str().unwrap_or("");
    let cwd_fs = g["cwd_fs"].as_str().unwrap_or("");
    assert_eq!((tmp_fs, cwd_fs), ("tmpfs", "ext4"), "{g:#}");

    let mut table = Vec::new();
    let (mut worked, mut refused) = (0, 0);
    for c in g["cases"].as_array().unwrap() {
        let desc = c["description"].as_str().unwrap();
        let Some((backing, map, should_work)) = gup_longterm_cell(desc, tmp_fs, cwd_fs) else {
            continue;
        };
        let observed = match c["result"].as_str().unwrap() {
            "ok" => should_work,
            "fail" => !should_work,
            _ => continue, // skipped: nothing observed
        };
        // Up to 6.x the result line says what happened (7.x names the case instead).
        let message = c["message"].as_str().unwrap();
        if message.starts_with("Should have") {
            assert_eq!(
                message,
                if observed {
                    "Should have worked"
                } else {
                    "Should have failed"
                },
                "the case's own line says what happened: {c:#}"
            );
        }
        let cell = probe_row(r, "io_uring", &backing, &map, "rw");
        let outcome = cell["outcome"].as_str().unwrap();
        if outcome == "notrun" {
            continue;
        }
        let pinned = outcome == "ok";
        table.push(format!(
            "{backing:14} {map:8} selftest {} ({}), pinstorm {outcome}",
            if observed { "pinned" } else { "refused" },
            c["result"].as_str().unwrap()
        ));
        assert_eq!(
            pinned, observed,
            "io_uring {backing} {map}: pinstorm {outcome}, gup_longterm {desc}: {c:#}"
        );
        if pinned {
            worked += 1;
        } else {
            refused += 1;
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(
        worked > 0 && refused > 0,
        "at least one pin that works and one refused must be compared: {table:#?}"
    );

    // cow.c's io_uring fork cases against pinstorm's fork-cow storms of the same memory: the
    // selftest passes exactly where pinstorm's diverged oracle found nothing.
    let mut compared = Vec::new();
    for c in cow["cases"].as_array().unwrap() {
        let desc = c["description"].as_str().unwrap();
        let Some(backing) = cow_fork_cell(desc) else {
            continue;
        };
        let reliable = match c["result"].as_str().unwrap() {
            "ok" => true,
            "fail" => false,
            _ => continue, // skipped (no free huge page left for it, say): nothing observed
        };
        let storm = r["storms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["pin"] == "io_uring"
                    && s["backing"] == backing
                    && s["map"] == "private"
                    && s["control"] != true
            })
            .unwrap_or_else(|| panic!("no io_uring {backing} fork-cow storm: {:#}", r["storms"]));
        if storm["outcome"] == "notrun" {
            continue;
        }
        let op = storm["layout_ops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["op"] == "fork-cow")
            .unwrap();
        assert_eq!(op["outcome"], "ok", "{op:#}");
        assert!(
            op["count"].as_u64().unwrap() > 0,
            "fork-cow never ran: {op:#}"
        );
        let diverged = &storm["oracle"]["diverged"];
        assert!(diverged["notrun"].is_null(), "{diverged:#}");
        let clean = diverged["count"] == 0;
        compared.push(format!(
            "{backing:14} cow.c {} ({desc}), pinstorm diverged {} after {} forks",
            c["result"].as_str().unwrap(),
            diverged["count"],
            op["count"]
        ));
        assert_eq!(
            clean, reliable,
            "io_uring {backing} private fork: cow.c {c:#}, pinstorm {diverged:#}"
        );
    }
    eprintln!("{}", compared.join("\n"));
    assert!(
        !compared.is_empty(),
        "no cow.c fork case was compared with a fork-cow storm: {cow:#}"
    );
    assert_nothing_left();
}
