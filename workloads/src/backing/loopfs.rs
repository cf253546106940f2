//! Scratch filesystems on loop devices: a sparse image in the run directory, `mkfs`, a loop
//! device, a mount in the run directory. Undone in reverse on drop; journaled before each
//! step so a later run can undo it after SIGKILL.
//!
//! The image is created with `O_EXCL | O_NOFOLLOW` through the run directory's descriptor
//! and handed to `mkfs` and `losetup` as `/proc/self/fd/N` of a descriptor they inherit, so
//! the file they format and attach is the one pinstorm created, whatever happens to names;
//! the loop device is then checked to be backed by that image before it is mounted.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BackingKind, NotRun, SetupEnv};
use crate::mounts;
use crate::pin::Availability;
use crate::scratch::{self, JournalEntry, RunScratch};

/// Size of each image. Sparse, so it costs only what the filesystem writes; xfs needs at
/// least 300 MiB since xfsprogs 5.19.
const IMAGE_SIZE: u64 = 512 << 20;

fn mkfs_command(kind: BackingKind) -> (&'static str, &'static [&'static str], &'static str) {
    match kind {
        // lazy_itable_init said outright: mke2fs picks it only if the ext4 module is loaded
        // (/sys/fs/ext4/features), which a lab guest's may not be yet when the image is made.
        BackingKind::Ext4 => (
            "mkfs.ext4",
            &["-F", "-q", "-E", "nodiscard,lazy_itable_init=1"],
            "e2fsprogs",
        ),
        BackingKind::Xfs => (
            "mkfs.xfs",
            &["-f", "-q", "-K", "-m", "reflink=1"],
            "xfsprogs",
        ),
        BackingKind::Btrfs => ("mkfs.btrfs", &["-f", "-q", "-K"], "btrfs-progs"),
        _ => unreachable!("not a loop filesystem: {kind}"),
    }
}

/// Find a program in PATH or the sbin directories (root's tools live there, and a PATH
/// from sudo or a service manager may lack them).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub(super) fn availability(kind: BackingKind, env: &SetupEnv) -> Availability {
    let (mkfs, _, package) = mkfs_command(kind);
    if !env.is_root {
        return Availability::NotRun(format!(
            "a scratch {kind} on a loop device needs root (mount, losetup)"
        ));
    }
    if find_program(mkfs).is_none() {
        return Availability::NotRun(format!("{mkfs} not found (install {package})"));
    }
    if find_program("losetup").is_none() {
        return Availability::NotRun("losetup not found (install util-linux/mount)".into());
    }
    // With a gate before the attach, the loop module may still be loading: checked after it.
    if env.before_attach.is_none() {
        if let Err(why) = loop_control() {
            return Availability::NotRun(why);
        }
    }
    Availability::Usable
}

fn loop_control() -> Result<(), String> {
    if Path::new("/dev/loop-control").exists() {
        Ok(())
    } else {
        Err("no /dev/loop-control (kernel without loop device support)".into())
    }
}

pub struct LoopFs {
    image: PathBuf,
    dev: Option<PathBuf>,
    mnt: PathBuf,
    mounted: bool,
}

/// `losetup --show` printed the device it attached: accept only `/dev/loopN`.
fn checked_loop_device(out: &str) -> Result<PathBuf, NotRun> {
    let n = out.trim().strip_prefix("/dev/loop").unwrap_or("");
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NotRun(format!(
            "losetup printed {out:?}, not a loop device"
        )));
    }
    Ok(PathBuf::from(out.trim()))
}

fn run_tool(cmd: &mut Command) -> Result<String, NotRun> {
    let out = cmd
        .output()
        .map_err(|e| NotRun(format!("running {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(NotRun(format!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            err.lines().take(3).collect::<Vec<_>>().join(" / ")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl LoopFs {
    /// Make the image and its filesystem, then (after `env`'s gate, if any) attach and
    /// mount it.
    pub fn create(
        kind: BackingKind,
        env: &SetupEnv,
        scratch: &RunScratch,
    ) -> Result<LoopFs, NotRun> {
        let fs = kind.name();
        let image_name = format!("{fs}.img");
        let mnt_name = format!("{fs}.mnt");
        let run = scratch.owned();
        let image = run.join(&image_name);
        let mnt = run.join(&mnt_name);
        let mut lfs = LoopFs {
            image: image.clone(),
            dev: None,
            mnt: mnt.clone(),
            mounted: false,
        };
        let f = run
            .create_file(&image_name)
            .map_err(|e| NotRun(format!("creating {}: {e}", image.display())))?;
        f.set_len(IMAGE_SIZE)
            .map_err(|e| NotRun(format!("sizing {}: {e}", image.display())))?;
        // A descriptor the tools inherit (not close-on-exec): they open the very file
        // pinstorm created through /proc/self/fd, never a name.
        let inherited =
            rustix::io::dup(&f).map_err(|e| NotRun(format!("dup of {}: {e}", image.display())))?;
        let by_fd = format!("/proc/self/fd/{}", inherited.as_raw_fd());
        let (mkfs, args, _) = mkfs_command(kind);
        let mkfs = find_program(mkfs).ok_or_else(|| NotRun(format!("{mkfs} not found")))?;
        run_tool(Command::new(mkfs).args(args).arg(&by_fd))?;
        if let Some(gate) = &env.before_attach {
            gate.wait().map_err(NotRun)?;
            loop_control().map_err(NotRun)?;
        }
        scratch
            .record(&JournalEntry::Loop(image_name.clone()))
            .map_err(|e| NotRun(format!("{e:#}")))?;
        let losetup = find_program("losetup").ok_or_else(|| NotRun("losetup not found".into()))?;
        let dev = run_tool(Command::new(losetup).args(["--find", "--show"]).arg(&by_fd))?;
        drop(inherited);
        let dev = checked_loop_device(&dev)?;
        lfs.dev = Some(dev.clone());
        let backing = mounts::loop_devices()
            .into_iter()
            .find(|(d, _)| *d == dev)
            .map(|(_, b)| b);
        if backing.as_deref() != Some(image.as_path()) {
            return Err(NotRun(format!(
                "{} is backed by {:?}, not by {}; not mounting it",
                dev.display(),
                backing,
                image.display()
            )));
        }
        drop(f);
        run.create_dir(&mnt_name, None)
            .map_err(|e| NotRun(format!("mkdir {}: {e}", mnt.display())))?;
        scratch
            .record(&JournalEntry::Mount(mnt_name))
            .map_err(|e| NotRun(format!("{e:#}")))?;
        rustix::mount::mount(
            &dev,
            &mnt,
            fs,
            rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
            None,
        )
        .map_err(|e| {
            NotRun(format!(
                "mount -t {fs} {} {}: {e}",
                dev.display(),
                mnt.display()
            ))
        })?;
        lfs.mounted = true;
        Ok(lfs)
    }

    pub fn mount_point(&self) -> &Path {
        &self.mnt
    }

    pub fn device(&self) -> Option<&Path> {
        self.dev.as_deref()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = scratch::unmount(&self.mnt) {
                eprintln!("pinstorm: {e:#}");
            }
        }
        if let Some(dev) = &self.dev {
            if let Err(e) = scratch::detach_loop(dev) {
                eprintln!("pinstorm: {e:#}");
            }
        }
        // The run directory (and so the image and mount point) goes with the run; removing
        // them here too frees the space as soon as the backing is done.
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_dir(&self.mnt);
    }
}
