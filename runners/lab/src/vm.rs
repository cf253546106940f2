//! Booting a guest with virtme-ng: the command line, the acceleration probe, and a watchdog
//! that always ends with QEMU dead.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::console;
use super::guest::PmemMode;
use super::sys::{cmdline_mentions, group_alive, group_members, kill_group, pids};
use pinstorm_runners::signals;

/// Where `vng` is: `--vng`, else `PATH`, else the virtual environment the test command
/// makes (`CACHE/venv/bin/vng`).
pub fn find_vng(explicit: Option<&Path>, cache: &Path) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--vng {}: no such file", p.display());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let c = d.join("vng");
            if c.is_file() {
                return Ok(c);
            }
        }
    }
    let c = cache.join("venv/bin/vng");
    if c.is_file() {
        return Ok(c);
    }
    bail!(
        "virtme-ng (vng) not found on PATH or in {}: install it with `python3 -m venv {} && {}/bin/pip install virtme-ng` (scripts/lab-setup.sh does this), or give --vng",
        c.display(),
        cache.join("venv").display(),
        cache.join("venv").display()
    )
}

#[derive(Clone, Debug)]
pub struct Accel {
    pub kvm: bool,
    pub reason: String,
}

/// Decide KVM or TCG. KVM is used only when a real guest kernel gets through its boot under
/// it within a few seconds (`/dev/kvm` existing is not enough: on a paravirtualised host it
/// can fail to run a stock kernel at all). The verdict is cached per host boot.
pub fn probe_accel(cache: &Path, kernel_image: &Path, want: &str) -> Accel {
    match want {
        "tcg" => {
            return Accel {
                kvm: false,
                reason: "--accel tcg".into(),
            }
        }
        "kvm" => {
            return Accel {
                kvm: true,
                reason: "--accel kvm".into(),
            }
        }
        _ => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Accel {
            kvm: false,
            reason: "/dev/kvm cannot be opened".into(),
        };
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string();
    let stamp = cache.join(format!("accel-{boot_id}.txt"));
    if let Ok(s) = std::fs::read_to_string(&stamp) {
        if let Some((v, reason)) = s.split_once('\n') {
            return Accel {
                kvm: v == "kvm",
                reason: format!("{} (cached for this host boot)", reason.trim()),
            };
        }
    }
    let a = kvm_boots(cache, kernel_image);
    let _ = std::fs::write(
        &stamp,
        format!("{}\n{}\n", if a.kvm { "kvm" } else { "tcg" }, a.reason),
    );
    a
}

fn probe_log(path: &Path) -> Stdio {
    File::create(path)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

fn kvm_boots(cache: &Path, image: &Path) -> Accel {
    let limit = Duration::from_secs(8);
    let log_out = cache.join("accel-probe.out");
    let log_err = cache.join("accel-probe.err");
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "kvm", "-cpu", "host", "-M", "pc", "-m", "256M", "-display", "none",
        ])
        .args(["-nodefaults", "-no-reboot", "-serial", "stdio", "-kernel"])
        .arg(image)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/pinstorm-no-init"])
        .stdin(Stdio::null())
        // Files, not pipes: a boot log longer than a pipe's buffer would stall QEMU until
        // the probe gave up and wrongly cached TCG.
        .stdout(probe_log(&log_out))
        .stderr(probe_log(&log_err))
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return Accel {
                kvm: false,
                reason: format!("qemu-system-x86_64: {e}"),
            }
        }
    };
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if t0.elapsed() < limit => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                kill_group(child.id() as i32);
                let _ = child.wait();
                let _ = std::fs::remove_file(&log_out);
                let _ = std::fs::remove_file(&log_err);
                return Accel {
                    kvm: false,
                    reason: format!(
                        "a stock kernel did not get through its boot under -accel kvm within {}s",
                        limit.as_secs()
                    ),
                };
            }
        }
    }
    let _ = child.wait();
    let stdout = std::fs::read_to_string(&log_out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&log_err).unwrap_or_default();
    let _ = std::fs::remove_file(&log_out);
    let _ = std::fs::remove_file(&log_err);
    // With no init to run the kernel panics at the end of its boot: that is success here.
    if stdout.contains("Kernel panic") || stdout.contains("No working init") {
        Accel {
            kvm: true,
            reason: format!(
                "a stock kernel booted under -accel kvm in {:.1}s",
                t0.elapsed().as_secs_f64()
            ),
        }
    } else {
        let why = stderr
            .lines()
            .find(|l| !l.contains("warning"))
            .unwrap_or("no boot messages")
            .trim()
            .to_string();
        Accel {
            kvm: false,
            reason: format!("-accel kvm did not boot a stock kernel: {why}"),
        }
    }
}

/// Everything that shapes the guest's QEMU command line.
pub struct GuestShape<'a> {
    pub boot: &'a Path,
    pub accel: &'a Accel,
    pub stage: &'a Path,
    pub pmem: PmemMode,
    pub nvdimm_image: &'a Path,
    pub memory_mib: u64,
    pub cpus: usize,
    /// A memoryless NUMA node 1 that the NVDIMM belongs to (`--kmem-node`).
    pub kmem_node: bool,
    /// `movablecore=` for the kernel (`--movablecore`).
    pub movablecore: Option<String>,
    /// The uncompressed kernel for QEMU's PVH entry ([`crate::pvh`]): given to QEMU after
    /// vng's `-kernel` (QEMU keeps the last), so vng still finds the kernel's version and
    /// modules from the image it is given.
    pub pvh: Option<&'a Path>,
    pub exec: String,
}

/// The emulated NVDIMM's size in MiB: 1 GiB (the fsdax namespaces take 640 MiB, a devdax
/// one 256 MiB), 2 GiB with `--kmem-node`, whose namespace takes what is left (1408 MiB: ten
/// whole 128 MiB memory blocks after alignment).
pub fn nvdimm_mib(kmem_node: bool) -> u64 {
    if kmem_node {
        2048
    } else {
        1024
    }
}

/// The `vng` arguments (after the program name).
pub fn vng_args(s: &GuestShape) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--run".into(),
        s.boot.display().to_string(),
        "--verbose".into(),
        "--force-9p".into(),
        "--disable-microvm".into(),
        "--name".into(),
        "pinstorm-lab".into(),
        "--cpus".into(),
        s.cpus.to_string(),
        "--rwdir".into(),
        s.stage.display().to_string(),
        "--cwd".into(),
        "/".into(),
    ];
    if !s.accel.kvm {
        a.push("--disable-kvm".into());
    }
    // Hung tasks are reported after 20 s instead of 120 s, so a storm that blocks a task
    // for good shows up in the console well before the watchdog's timeout.
    let mut append = vec!["sysctl.kernel.hung_task_timeout_secs=20".to_string()];
    if !s.accel.kvm {
        // Under TCG the clocksource watchdog takes vCPU scheduling delays for TSC skew and
        // marks the TSC unstable, which flips the sched_clock static keys by live text
        // patching (int3) while the other vCPU runs that code; on 6.12 and 7.2 guests that
        // ended in "Oops: int3 ... RIP: sched_clock_cpu" and a panic in 2 of ~30 boots
        // (docs/findings.md). TCG's TSC follows the host's clock on every vCPU: it is
        // reliable, and saying so keeps the watchdog away from it (and the vDSO on it).
        append.push("tsc=reliable".into());
    }
    if let Some(m) = &s.movablecore {
        append.push(format!("movablecore={m}"));
    }
    match s.pmem {
        PmemMode::Nvdimm => {
            a.push("--memory".into());
            a.push(format!("{}M", s.memory_mib));
            // --kmem-node: node 0 has all the RAM and the CPUs, node 1 none (vng's `--numa
            // 0`); the NVDIMM's proximity domain is node 1, so its memory hot-added through
            // kmem becomes node 1's only memory.
            let node = if s.kmem_node {
                a.push(format!(
                    "--numa={}M,cpus=0-{}",
                    s.memory_mib,
                    s.cpus.saturating_sub(1)
                ));
                a.push("--numa=0".into());
                ",node=1"
            } else {
                ""
            };
            // `--opt=value`: argparse would take a value starting with '-' for an option.
            a.push(format!(
                "--qemu-opts=-machine nvdimm=on -m {}M,slots=2,maxmem={}M -object memory-backend-file,id=pinstorm-nv,share=on,mem-path={},size={}M -device nvdimm,id=nv1,memdev=pinstorm-nv,label-size=128K{node}",
                s.memory_mib,
                s.memory_mib + 4096,
                s.nvdimm_image.display(),
                nvdimm_mib(s.kmem_node)
            ));
        }
        PmemMode::Memmap => {
            // 512 MiB of the guest's RAM at 1 GiB becomes legacy e820 pmem: inside the low
            // RAM that q35 maps below 2 GiB when the guest has more than 2.75 GiB (above it is
            // the PCI hole, not RAM), and clear of the firmware's reservation at its top edge
            // (a range touching it is split in two and nd_e820 gives up).
            a.push("--memory".into());
            a.push(format!("{}M", s.memory_mib + 1024));
            append.push("memmap=512M!1G".into());
        }
        PmemMode::None => {
            a.push("--memory".into());
            a.push(format!("{}M", s.memory_mib));
        }
    }
    // vng gives each of its seven ports (stdin, stdout, stderr, ret, ...) a virtio-serial
    // device of its own, and QEMU gives each device room for 31 ports: 64 virtqueues with
    // an ioeventfd each, ~400 descriptors QEMU's main loop polls every time it wakes (~20%
    // of a host core under TCG, 1.4 ms a wake). Two ports (the reserved console's and the
    // one vng adds) keep 6 queues a device: under TCG on 2 cores the boot took 1.4 s less
    // (docs/lab.md).
    a.push("--qemu-opts=-global virtio-serial-pci.max_ports=2".into());
    if let Some(k) = s.pvh.and_then(|p| shlex::try_quote(p.to_str()?).ok()) {
        a.push(format!("--qemu-opts=-kernel {k}"));
    }
    a.push(format!("--append={}", append.join(" ")));
    a.push(format!("--exec={}", s.exec));
    a
}

/// The `vng` arguments with the lab's init (`init_path`, see [`crate::guest_init`]) in front
/// of virtme-ng's: the kernel command line `vng --dry-run` printed (`qemu_line`) with `init=`
/// pointing at `init_path`, given to QEMU as a later `-append` (QEMU keeps the last). Returns
/// them with virtme-ng's init, which the lab's execs; None when the command line cannot be
/// read or rewritten (then the guest boots as vng boots it).
pub fn with_lab_init(
    args: &[String],
    qemu_line: &str,
    init_path: &Path,
) -> Option<(Vec<String>, String)> {
    let cmdline = kernel_cmdline(qemu_line)?;
    let init = init_path.to_str()?;
    // The kernel splits its command line on spaces and takes quotes: a path with either
    // cannot be init= as it is.
    if init.is_empty() || init.contains(|c: char| c.is_whitespace() || c == '"') {
        return None;
    }
    let at = cmdline
        .rfind(" init=")
        .map(|p| p + 1)
        .or_else(|| cmdline.starts_with("init=").then_some(0))?;
    let rest = &cmdline[at + "init=".len()..];
    let (next, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    if next.is_empty() || next.contains('"') {
        return None;
    }
    let mut new = format!("{}init={init}", &cmdline[..at]);
    if !tail.is_empty() {
        new.push(' ');
        new.push_str(tail);
    }
    let mut a = args.to_vec();
    // vng joins its --qemu-opts and splits them again as a shell would.
    a.push(format!(
        "--qemu-opts=-append {}",
        shlex::try_quote(&new).ok()?
    ));
    Some((a, next.to_string()))
}

/// What the lab's own init needs to run the agent in place of virtme-ng's init (see
/// [`crate::guest_init::OwnInit`]), read from the kernel command line `vng --dry-run`
/// printed and from the lab's own `--exec`. Err says why virtme-ng's init runs after all:
/// a parameter of virtme-ng's this code does not know (a newer virtme-ng may want more than
/// these mounts), a host mount that is not 9p, or a value that cannot be quoted.
pub fn own_init(
    args: &[String],
    qemu_line: &str,
) -> std::result::Result<crate::guest_init::OwnInit, String> {
    let cmdline = kernel_cmdline(qemu_line).ok_or("the QEMU command has no kernel command line")?;
    let exec = args
        .iter()
        .rev()
        .find_map(|a| a.strip_prefix("--exec="))
        .ok_or("no --exec")?;
    let mut own = crate::guest_init::OwnInit {
        exec: exec.to_string(),
        mounts: Vec::new(),
        link_mods: None,
        hostname: None,
    };
    let mut fstypes = Vec::new();
    // The kernel hands init the parameters it does not know; virtme-ng's init acts on
    // these. The base64 script (`virtme.exec`) is the lab's own `--exec`.
    for w in cmdline.split_whitespace() {
        let Some((key, value)) = w.split_once('=') else {
            continue;
        };
        let Some(name) = key.strip_prefix("virtme_") else {
            continue;
        };
        match name {
            "hostname" => own.hostname = Some(value.to_string()),
            "link_mods" => own.link_mods = Some(value.to_string()),
            // The ttyS0 console, `--cwd /` (the agent runs in /), root: what the lab's init
            // does anyway. The writable overlays: the agent writes only /tmp (its own
            // directory there) and the staging directory.
            "console" | "chdir" | "root_user" => {}
            _ if name.starts_with("rw_overlay") => {}
            _ => {
                let Some(n) = name.strip_prefix("initmount") else {
                    return Err(format!(
                        "virtme-ng's parameter {key} is not known to the lab"
                    ));
                };
                match n.split_once('_') {
                    None if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                        // virtme-ng names it relative to its init's working directory, /.
                        own.mounts.push((
                            format!("virtme.initmount{n}"),
                            format!("/{}", value.trim_start_matches('/')),
                        ));
                    }
                    Some((_, "fstype")) => fstypes.push(value.to_string()),
                    Some((_, "access")) if value == "rw" => {}
                    _ => return Err(format!("virtme-ng's parameter {w} is not known to the lab")),
                }
            }
        }
    }
    if let Some(f) = fstypes.iter().find(|f| f.as_str() != "9p") {
        return Err(format!("a host directory is shared as {f}, not 9p"));
    }
    Ok(own)
}

/// The kernel command line of a QEMU command: the value of its last `-append` (QEMU keeps
/// the last).
fn kernel_cmdline(qemu_line: &str) -> Option<String> {
    let words = shlex::split(qemu_line)?;
    let i = words.iter().rposition(|w| w == "-append")?;
    words.into_iter().nth(i + 1)
}

/// The environment `vng` runs with: its venv first on PATH (it calls `virtme-run`), and
/// HOME/TMPDIR inside the lab's own directories so virtme-ng's caches and temporary files
/// land there and nowhere else on the host.
pub fn vng_env(vng: &Path, home: &Path, tmp: &Path) -> Vec<(String, String)> {
    let mut path = vng
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if let Ok(p) = std::env::var("PATH") {
        path = format!("{path}:{p}");
    }
    vec![
        ("PATH".into(), path),
        ("HOME".into(), home.display().to_string()),
        (
            "XDG_CACHE_HOME".into(),
            home.join(".cache").display().to_string(),
        ),
        (
            "XDG_CONFIG_HOME".into(),
            home.join(".config").display().to_string(),
        ),
        ("TMPDIR".into(), tmp.display().to_string()),
    ]
}

/// The QEMU command line `vng` would run, from `vng --dry-run` with the same arguments.
pub fn qemu_command(vng: &Path, args: &[String], env: &[(String, String)]) -> Option<String> {
    let out = Command::new(vng)
        .arg("--dry-run")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .rev()
        .find(|l| l.contains("qemu-system"))
        .map(|l| l.trim().to_string())
}

/// How a guest ended.
pub struct GuestEnd {
    pub exit: Option<i32>,
    pub timed_out: bool,
    pub interrupted: Option<i32>,
    pub panicked: bool,
    pub wall: Duration,
    /// When the guest's first step was seen (its marker in the staging directory), from
    /// QEMU's start; None if it never got there.
    pub first_step: Option<Duration>,
    /// The boot stopped before the guest's first step: the console was silent for
    /// [`BootFiles::stall`]; its last line (the guest was killed then).
    pub stalled: Option<String>,
}

/// The files of one boot: where the console and the guest's stdout go, where the process
/// group is recorded while it runs, and the marker whose appearance ends the boot phase.
pub struct BootFiles<'a> {
    pub console: &'a Path,
    pub stdout: &'a Path,
    pub pgid: &'a Path,
    pub started: &'a Path,
    /// How long the console may stay silent before the guest's first step: a kernel that
    /// stops while booting (seen once: 6.1 under TCG, right after its sched_clock static-key
    /// flip) is killed then rather than at the timeout.
    pub stall: Duration,
}

/// Run `vng` with `args`, console (stderr) into `files.console`, guest stdout into
/// `files.stdout`, under a watchdog: at most `timeout`, stopped early by SIGINT/SIGTERM to
/// pinstorm, and QEMU is dead when this returns, whatever happened. `files.pgid` records the
/// process group while it runs, so a later run can kill it if pinstorm itself is killed.
pub fn boot(
    vng: &Path,
    args: &[String],
    env: &[(String, String)],
    files: &BootFiles,
    timeout: Duration,
) -> Result<GuestEnd> {
    let (console_path, stdout_path, pgid_file) = (files.console, files.stdout, files.pgid);
    let con = File::create(console_path)
        .with_context(|| format!("creating {}", console_path.display()))?;
    let out = File::create(stdout_path)?;
    let t0 = Instant::now();
    let mut child = Command::new(vng)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(con)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", vng.display()))?;
    let pgid = child.id() as i32;
    // Whatever happens from here (an error return, a panic), the group dies with this guard.
    struct GroupGuard(i32);
    impl Drop for GroupGuard {
        fn drop(&mut self) {
            if group_alive(self.0) {
                kill_group(self.0);
            }
        }
    }
    let _group = GroupGuard(pgid);
    std::fs::write(pgid_file, format!("{pgid}\n"))
        .with_context(|| format!("writing {}", pgid_file.display()))?;
    let mut end = GuestEnd {
        exit: None,
        timed_out: false,
        interrupted: None,
        panicked: false,
        wall: Duration::ZERO,
        first_step: None,
        stalled: None,
    };
    let mut panic_seen: Option<Instant> = None;
    let mut last_len = 0u64;
    let mut last_line = String::new();
    let mut last_growth = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            end.exit = st.code();
            break;
        }
        if let Some(sig) = signals::pending() {
            end.interrupted = Some(sig);
            break;
        }
        if t0.elapsed() > timeout {
            end.timed_out = true;
            break;
        }
        if end.first_step.is_none() && files.started.exists() {
            end.first_step = Some(t0.elapsed());
        }
        // A panicked guest reboots and QEMU (-no-reboot) exits by itself; give it a moment.
        // Only what the console added since the last look (from the start of its last,
        // possibly unfinished line), so a chatty guest does not cost a re-read each time.
        if panic_seen.is_none() {
            if let Ok(mut f) = File::open(console_path) {
                use std::io::{Read, Seek, SeekFrom};
                let mut new = Vec::new();
                if f.seek(SeekFrom::Start(last_len)).is_ok() && f.read_to_end(&mut new).is_ok() {
                    let upto = new.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                    let text = String::from_utf8_lossy(&new[..upto]);
                    if console::panicked(&console::events(&text)).is_some() {
                        panic_seen = Some(Instant::now());
                    }
                    if upto > 0 {
                        last_growth = Instant::now();
                        if let Some(l) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                            last_line = l.trim().to_string();
                        }
                    }
                    last_len += upto as u64;
                }
            }
        }
        if end.first_step.is_none() && panic_seen.is_none() && last_growth.elapsed() > files.stall {
            end.stalled = Some(last_line.clone());
            break;
        }
        if panic_seen.is_some_and(|t| t.elapsed() > Duration::from_secs(15)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // A guest that wrote its marker and ended before the next look (an injected panic comes
    // right after the marker, and QEMU exits at the panic): the marker is there all the
    // same, seen now.
    if end.first_step.is_none() && files.started.exists() {
        end.first_step = Some(t0.elapsed());
    }
    end.panicked = panic_seen.is_some();
    if group_alive(pgid) {
        kill_group(pgid);
    }
    let _ = child.wait();
    // Whatever vng started must be gone before we say the guest ended.
    let t1 = Instant::now();
    while group_alive(pgid) && t1.elapsed() < Duration::from_secs(5) {
        kill_group(pgid);
        std::thread::sleep(Duration::from_millis(100));
    }
    if group_alive(pgid) {
        bail!("processes of the guest's group {pgid} survive SIGKILL");
    }
    let _ = std::fs::remove_file(pgid_file);
    end.wall = t0.elapsed();
    Ok(end)
}

/// Whether any process still mentions the run directory `run_dir` on its command line
/// (vng and QEMU do: the staging directory and the NVDIMM file are in it).
pub fn run_dir_processes(run_dir: &Path) -> bool {
    let marker = run_dir.display().to_string();
    pids().any(|pid| cmdline_mentions(pid, &marker))
}

/// Kill a guest a killed pinstorm left running (its process group, recorded in
/// `pgid_file`), if its processes still belong to the lab run directory `run_dir`.
pub fn kill_leftover(pgid_file: &Path, run_dir: &Path) -> Option<String> {
    let pgid: i32 = std::fs::read_to_string(pgid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let marker = run_dir.display().to_string();
    let ours = group_members(pgid).any(|pid| cmdline_mentions(pid, &marker));
    if ours {
        kill_group(pgid);
        Some(format!(
            "killed the guest (process group {pgid}) a killed lab run left"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `boot` of a stand-in for vng (a shell script: what it prints is the console) with a
    /// 1 s stall bound.
    fn boot_stand_in(name: &str, script: &str, timeout: Duration) -> (GuestEnd, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("pinstorm-stall-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let vng = dir.join("vng");
        let started = dir.join("started");
        std::fs::write(
            &vng,
            format!("#!/bin/sh\nSTARTED={}\n{script}\n", started.display()),
        )
        .unwrap();
        std::fs::set_permissions(&vng, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let end = boot(
            &vng,
            &[],
            &[],
            &BootFiles {
                console: &dir.join("console.log"),
                stdout: &dir.join("stdout.log"),
                pgid: &dir.join("pgid"),
                started: &started,
                stall: Duration::from_secs(1),
            },
            timeout,
        )
        .unwrap();
        (end, dir)
    }

    #[test]
    fn a_boot_whose_console_stops_before_the_first_step_is_ended_as_stalled() {
        // The guest's group (this sleep) must be dead afterwards: its pid is kept to check.
        let (end, dir) = boot_stand_in(
            "stopped",
            "echo '[    2.3] early line' >&2\necho '[    2.319620] sched_clock: Marking stable' >&2\necho $$ > \"$STARTED.pid\"\nexec sleep 60",
            Duration::from_secs(30),
        );
        assert_eq!(
            end.stalled.as_deref(),
            Some("[    2.319620] sched_clock: Marking stable")
        );
        assert!(!end.timed_out && end.first_step.is_none());
        assert!(end.wall < Duration::from_secs(20), "{:?}", end.wall);
        let pid: i32 = std::fs::read_to_string(dir.join("started.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the stand-in survived"
        );
        // Once the guest's first step is there, silence is the agent's business: only the
        // timeout ends it.
        let (end, _) = boot_stand_in(
            "started",
            "echo booting >&2\ntouch \"$STARTED\"\nexec sleep 60",
            Duration::from_secs(3),
        );
        assert!(end.stalled.is_none() && end.timed_out && end.first_step.is_some());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn shape<'a>(accel: &'a Accel, pmem: PmemMode) -> GuestShape<'a> {
        GuestShape {
            boot: Path::new("/cache/kernels/k/boot/vmlinuz-6.1.0-56-amd64"),
            accel,
            stage: Path::new("/cache/runs/r/stage"),
            pmem,
            nvdimm_image: Path::new("/cache/runs/r/nvdimm.img"),
            memory_mib: 2048,
            cpus: 2,
            kmem_node: false,
            movablecore: None,
            pvh: None,
            exec: "/bin/pinstorm __lab-guest /cache/runs/r/stage/plan.json".into(),
        }
    }

    #[test]
    fn the_guest_never_gets_a_writable_host_root_or_network() {
        let tcg = Accel {
            kvm: false,
            reason: String::new(),
        };
        for pmem in [PmemMode::Nvdimm, PmemMode::Memmap, PmemMode::None] {
            let a = vng_args(&shape(&tcg, pmem));
            assert!(!a.iter().any(|x| x == "--rw"), "{a:?}");
            assert!(!a.iter().any(|x| x.starts_with("--network")), "{a:?}");
            // The only writable host directory is the run's staging directory.
            let rw: Vec<_> = a
                .iter()
                .enumerate()
                .filter(|(_, x)| x.starts_with("--rwdir"))
                .map(|(i, x)| {
                    if x.as_str() == "--rwdir" {
                        a[i + 1].clone()
                    } else {
                        x.trim_start_matches("--rwdir=").to_string()
                    }
                })
                .collect();
            assert_eq!(rw, ["/cache/runs/r/stage"], "{a:?}");
            assert!(a.iter().any(|x| x == "--disable-kvm"));
        }
        let a = vng_args(&shape(&tcg, PmemMode::Nvdimm));
        let q = a.iter().find(|x| x.starts_with("--qemu-opts=")).unwrap();
        assert!(q.contains("nvdimm=on") && q.contains("label-size=128K"));
        assert!(q.contains("mem-path=/cache/runs/r/nvdimm.img"));
        // Room for two ports per virtio-serial device, not QEMU's 31.
        assert!(a
            .iter()
            .any(|x| x == "--qemu-opts=-global virtio-serial-pci.max_ports=2"));
        assert!(!a.iter().any(|x| x.starts_with("--numa")) && !q.contains("node="));
        // The PVH kernel comes after vng's own -kernel, quoted for vng's shell split.
        let pvh = vng_args(&GuestShape {
            pvh: Some(Path::new("/cache/kernels/a b/boot/vmlinux-6.1.0-56-amd64")),
            ..shape(&tcg, PmemMode::Nvdimm)
        });
        let k = pvh
            .iter()
            .position(|x| x.starts_with("--qemu-opts=-kernel "))
            .unwrap();
        assert_eq!(
            pvh[k],
            "--qemu-opts=-kernel '/cache/kernels/a b/boot/vmlinux-6.1.0-56-amd64'"
        );
        assert!(pvh.iter().position(|x| x.contains("nvdimm=on")).unwrap() < k);
        assert!(!a.iter().any(|x| x.contains("-kernel")));
        // --kmem-node: node 0 holds the RAM and the CPUs, node 1 is memoryless and owns
        // the NVDIMM.
        let k = vng_args(&GuestShape {
            kmem_node: true,
            ..shape(&tcg, PmemMode::Nvdimm)
        });
        let numa: Vec<_> = k.iter().filter(|x| x.starts_with("--numa")).collect();
        assert_eq!(numa, ["--numa=2048M,cpus=0-1", "--numa=0"]);
        let q = k.iter().find(|x| x.starts_with("--qemu-opts=")).unwrap();
        assert!(q.ends_with("label-size=128K,node=1"), "{q}");
        assert!(!a
            .iter()
            .any(|x| x.starts_with("--append=") && x.contains("movablecore")));
        // Under TCG the TSC is declared reliable (the clocksource watchdog's static-key
        // flip raced live patching into int3 oopses); under KVM nothing is added.
        assert!(a
            .iter()
            .any(|x| x.starts_with("--append=") && x.contains("tsc=reliable")));
        let kvm = Accel {
            kvm: true,
            reason: String::new(),
        };
        assert!(!vng_args(&shape(&kvm, PmemMode::Nvdimm))
            .iter()
            .any(|x| x.contains("tsc=reliable")));
        let mc = vng_args(&GuestShape {
            movablecore: Some("25%".into()),
            ..shape(&tcg, PmemMode::Nvdimm)
        });
        assert!(mc
            .iter()
            .any(|x| x.starts_with("--append=") && x.contains(" movablecore=25%")));
        let m = vng_args(&shape(&tcg, PmemMode::Memmap));
        assert!(m
            .iter()
            .any(|x| x.starts_with("--append=") && x.contains("memmap=512M!1G")));
    }

    #[test]
    fn vng_runs_with_home_and_tmpdir_inside_the_cache() {
        let env = vng_env(
            Path::new("/cache/venv/bin/vng"),
            Path::new("/cache/runs/r/home"),
            Path::new("/cache/runs/r/tmp"),
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("HOME").as_deref(), Some("/cache/runs/r/home"));
        assert_eq!(get("TMPDIR").as_deref(), Some("/cache/runs/r/tmp"));
        assert!(get("PATH").unwrap().starts_with("/cache/venv/bin:"));
    }

    #[test]
    fn the_labs_own_init_takes_virtme_ngs_mounts_from_its_command_line_and_nothing_unknown() {
        let line = |extra: &str| {
            format!(
                "/usr/bin/qemu-system-x86_64 -name pinstorm-lab -append 'virtme_hostname=pinstorm-lab \
                 nr_open=1048576 virtme_link_mods=/cache/kernels/k/lib/modules/7.2 \
                 virtme_initmount0=cache/runs/r/stage virtme_initmount0_fstype=9p \
                 virtme_initmount0_access=rw virtme_rw_overlay0=/etc virtme_rw_overlay7=/tmp \
                 virtme_console=ttyS0 console=ttyS0 panic=-1 virtme.exec=`L2Jpbi90cnVl` \
                 virtme_chdir=. virtme_root_user=1 {extra}init=/venv/bin/virtme-ng-init'"
            )
        };
        let args = vec![
            "--run".to_string(),
            "/k/vmlinuz".into(),
            "--exec=/t/pinstorm __lab-guest /cache/runs/r/stage/plan.json".into(),
        ];
        let own = own_init(&args, &line("")).unwrap();
        assert_eq!(
            own,
            crate::guest_init::OwnInit {
                exec: "/t/pinstorm __lab-guest /cache/runs/r/stage/plan.json".into(),
                mounts: vec![("virtme.initmount0".into(), "/cache/runs/r/stage".into())],
                link_mods: Some("/cache/kernels/k/lib/modules/7.2".into()),
                hostname: Some("pinstorm-lab".into()),
            }
        );
        // Something of virtme-ng's it does not know, a share that is not 9p, no command:
        // virtme-ng's init, and why.
        let e = own_init(&args, &line("virtme_user=alice ")).unwrap_err();
        assert!(e.contains("virtme_user"), "{e}");
        let e = own_init(&args, &line("virtme_initmount1_fstype=virtiofs ")).unwrap_err();
        assert!(e.contains("virtiofs"), "{e}");
        let e = own_init(&args, &line("virtme_initmount0_access=ro ")).unwrap_err();
        assert!(e.contains("virtme_initmount0_access=ro"), "{e}");
        assert!(own_init(&args[..2], &line("")).is_err());
        assert!(own_init(&args, "qemu-system-x86_64 -name x").is_err());
    }
}
