//! A block device the user names as scratch (`--scratch-dev`), fstests style: pinstorm
//! checks that nothing uses it and nothing is on it, partitions it, makes xfs (with reflink)
//! and ext4 on it, mounts them `dax=always` in the run directory for the `xfs-dax` and
//! `ext4-dax` backings, and leaves the device blank at the end.
//!
//! The device is the user's: it is checked where it is named ([`ScratchDevice::new`]) and
//! again, through a descriptor, before anything is written ([`DeviceFs::make`]). A device
//! that is mounted, held open exclusively (a filesystem, device-mapper, md, swap), has
//! holders or partitions, or carries any signature `blkid` knows (a filesystem, a partition
//! table, LVM, RAID) is refused unless the user says `--scratch-dev-force`, which wipes it.
//! Whether the mounts really are DAX is proved later, per file, by `STATX_ATTR_DAX` (a
//! device without DAX gives `notrun` backings, never ones called DAX).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{JournalEntry, RunScratch};
use crate::backing::loopfs::find_program;

/// Smallest partition for each filesystem: xfs refuses fewer than 300 MiB since xfsprogs
/// 5.19.
const MIN_PART: u64 = 300 << 20;
/// Partitions start and end on 2 MiB boundaries, so huge-page (PMD) DAX mappings are
/// possible on them.
const ALIGN: u64 = 2 << 20;

/// The filesystems made on a scratch device, in partition order, with their mkfs.
const FILESYSTEMS: &[(&str, &str, &[&str])] = &[
    ("xfs", "mkfs.xfs", &["-f", "-q", "-m", "reflink=1"]),
    ("ext4", "mkfs.ext4", &["-F", "-q", "-E", "nodiscard"]),
];

/// A block device named as scratch, checked where it was named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScratchDevice {
    path: PathBuf,
    /// `--scratch-dev-force`: wipe what is on it instead of refusing it.
    force: bool,
}

impl ScratchDevice {
    /// Check `path` (`--scratch-dev`): absolute, a block device, not in use; with nothing
    /// on it unless `force`.
    pub fn new(path: &Path, force: bool) -> Result<ScratchDevice> {
        if path.as_os_str().is_empty() || !path.is_absolute() {
            bail!("--scratch-dev must be an absolute path to a block device, got {path:?}");
        }
        let d = ScratchDevice {
            path: path.to_path_buf(),
            force,
        };
        d.check()?;
        Ok(d)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open the device exclusively (which the kernel refuses with EBUSY while it is mounted
    /// or claimed) and check what a path cannot show: that it is a block device with no
    /// holders and no partitions, and, unless forced, no signature. Returns the descriptor
    /// and `(major, minor)`.
    fn check(&self) -> Result<(OwnedFd, (u32, u32))> {
        use rustix::fs::{open, Mode, OFlags};
        let p = self.path.display();
        let fd = open(
            &self.path,
            OFlags::RDONLY | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::BUSY => anyhow::anyhow!(
                "--scratch-dev {p}: in use (mounted, swap, device-mapper or md, or open exclusively): refused"
            ),
            rustix::io::Errno::LOOP => anyhow::anyhow!(
                "--scratch-dev {p}: a symbolic link; name the device itself (/dev/pmem0, not a link to it)"
            ),
            e => anyhow::anyhow!("--scratch-dev {p}: {e}"),
        })?;
        let st = rustix::fs::fstat(&fd).with_context(|| format!("--scratch-dev {p}: fstat"))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::BlockDevice {
            bail!("--scratch-dev {p}: not a block device");
        }
        let dev = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
        let sys = sys_dir(dev);
        if sys.join("partition").exists() {
            bail!("--scratch-dev {p}: a partition; name the whole device");
        }
        let holders: Vec<String> = std::fs::read_dir(sys.join("holders"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !holders.is_empty() {
            bail!(
                "--scratch-dev {p}: in use by {} (device-mapper, md or another holder): refused",
                holders.join(", ")
            );
        }
        if !self.force {
            let parts = partitions(dev);
            if !parts.is_empty() {
                bail!(
                    "--scratch-dev {p}: has partitions ({}); pinstorm only takes a blank device, or one you let it wipe with --scratch-dev-force",
                    parts.join(", ")
                );
            }
            let found = signatures(&fd)?;
            if !found.is_empty() {
                bail!(
                    "--scratch-dev {p}: holds {}; pinstorm only takes a blank device, or one you let it wipe with --scratch-dev-force (a killed pinstorm run leaves its own filesystems there too)",
                    found.join(", ")
                );
            }
        }
        Ok((fd, dev))
    }
}

fn sys_dir((major, minor): (u32, u32)) -> PathBuf {
    PathBuf::from(format!("/sys/dev/block/{major}:{minor}"))
}

/// The partitions the kernel knows on the device, by name.
fn partitions(dev: (u32, u32)) -> Vec<String> {
    let sys = sys_dir(dev);
    let mut parts: Vec<String> = std::fs::read_dir(&sys)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("partition").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    parts
}

/// What `blkid -p` finds on the device (read through our descriptor): `xfs filesystem`,
/// `gpt partition table`, ...; empty when it is blank.
fn signatures(fd: &OwnedFd) -> Result<Vec<String>> {
    let blkid = find_program("blkid").context("--scratch-dev: blkid not found (util-linux)")?;
    let inherited = rustix::io::dup(fd)?;
    let out = Command::new(blkid)
        .args(["-p", "-o", "export"])
        .arg(format!("/proc/self/fd/{}", inherited.as_raw_fd()))
        .stdin(Stdio::null())
        .output()
        .context("running blkid")?;
    drop(inherited);
    // blkid -p: 0 found something, 2 found nothing, anything else failed.
    match out.status.code() {
        Some(2) => return Ok(vec![]),
        Some(0) => {}
        _ => bail!(
            "--scratch-dev: blkid -p failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
    Ok(parse_blkid(&String::from_utf8_lossy(&out.stdout)))
}

/// `TYPE=xfs` and `PTTYPE=gpt` lines of `blkid -o export`, in words.
fn parse_blkid(out: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in out.lines() {
        let word = |v: &str| {
            v.chars()
                .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
                .take(32)
                .collect::<String>()
        };
        if let Some(v) = line.strip_prefix("TYPE=") {
            found.push(format!("a {} signature", word(v)));
        } else if let Some(v) = line.strip_prefix("PTTYPE=") {
            found.push(format!("a {} partition table", word(v)));
        }
    }
    if found.is_empty() {
        found.push("a signature blkid knows".into());
    }
    found
}

/// Where each partition goes on a device of `bytes`: two equal halves, 2 MiB aligned, after
/// a 2 MiB gap for the partition table; `None` when a half would be too small for xfs.
/// In 512-byte sectors: `(start, size)` each.
fn layout(bytes: u64) -> Option<[(u64, u64); 2]> {
    // The backup GPT takes the last 33 sectors: keep 2 MiB at the end too.
    let usable = bytes.checked_sub(2 * ALIGN)?;
    let half = usable / 2 / ALIGN * ALIGN;
    if half < MIN_PART {
        return None;
    }
    let s = |b: u64| b / 512;
    Some([(s(ALIGN), s(half)), (s(ALIGN + half), s(half))])
}

/// The name of partition `n` of `dev`: `/dev/pmem0p1`, `/dev/loop3p2`, `/dev/sdb1`.
fn partition_path(dev: &Path, n: usize) -> PathBuf {
    let s = dev.to_string_lossy();
    let sep = if s.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    PathBuf::from(format!("{s}{sep}{n}"))
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .take(3)
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    Ok(())
}

fn tool(name: &str) -> Result<PathBuf> {
    find_program(name)
        .with_context(|| format!("{name} not found (util-linux, xfsprogs, e2fsprogs)"))
}

/// The filesystems pinstorm made on a scratch device, mounted in the run directory.
/// Dropping it unmounts them and wipes the device.
pub struct DeviceFs {
    dev: PathBuf,
    /// `(filesystem, partition, mount point, mounted)`.
    mounts: Vec<(&'static str, PathBuf, PathBuf, bool)>,
    /// `(filesystem, why)` for each that could not be made or mounted.
    failed: Vec<(&'static str, String)>,
}

impl DeviceFs {
    /// Check `d` again, wipe it when forced, partition it, make the filesystems and mount
    /// them `dax=always` in the run directory (journaled first, so a killed run's mounts
    /// are undone by the next run).
    pub fn make(d: &ScratchDevice, scratch: &RunScratch) -> Result<DeviceFs> {
        let (fd, dev) = d.check()?;
        let p = d.path.display();
        let by_fd = |fd: &OwnedFd| -> Result<(OwnedFd, String)> {
            let inherited = rustix::io::dup(fd.as_fd())?;
            let path = format!("/proc/self/fd/{}", inherited.as_raw_fd());
            Ok((inherited, path))
        };
        let bytes: u64 = std::fs::read_to_string(sys_dir(dev).join("size"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|sectors| sectors * 512)
            .with_context(|| format!("--scratch-dev {p}: its size"))?;
        let Some(parts) = layout(bytes) else {
            bail!(
                "--scratch-dev {p}: {} MiB is too small for an xfs and an ext4 of at least {} MiB each",
                bytes >> 20,
                MIN_PART >> 20
            );
        };
        // Nothing may be open on it while mkfs and the kernel re-read it: the check held
        // it exclusively, and what follows names it through a descriptor that is not.
        drop(fd);
        let fd = rustix::fs::open(
            &d.path,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NOFOLLOW,
            rustix::fs::Mode::empty(),
        )
        .with_context(|| format!("--scratch-dev {p}: opening it for writing"))?;
        let st = rustix::fs::fstat(&fd)?;
        if (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev)) != dev {
            bail!("--scratch-dev {p}: the name now points at another device; refused");
        }
        let mut made = DeviceFs {
            dev: d.path.clone(),
            mounts: vec![],
            failed: vec![],
        };
        if d.force {
            let (_keep, path) = by_fd(&fd)?;
            run(
                Command::new(tool("wipefs")?).args(["-a", "-q"]).arg(&path),
                "wipefs -a",
            )?;
        }
        let table = format!(
            "label: gpt\nstart={}, size={}, type=linux\nstart={}, size={}, type=linux\n",
            parts[0].0, parts[0].1, parts[1].0, parts[1].1
        );
        let mut sfdisk = Command::new(tool("sfdisk")?)
            .args(["-q", "--wipe", "always", "--wipe-partitions", "always"])
            .arg(&d.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running sfdisk")?;
        {
            use std::io::Write;
            let mut stdin = sfdisk.stdin.take().expect("piped");
            stdin.write_all(table.as_bytes())?;
        }
        let out = sfdisk.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "--scratch-dev {p}: sfdisk failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // sfdisk asks the kernel to re-read the table, which it may decline (a loop device
        // here ignored it); partx adds the partitions one by one.
        let _ = run(
            Command::new(tool("partx")?).arg("-u").arg(&d.path),
            "partx -u",
        );
        let dax = std::fs::read_to_string(sys_dir(dev).join("queue/dax"))
            .map(|v| v.trim() == "1")
            .unwrap_or(false);
        for (i, &(fs, mkfs, args)) in FILESYSTEMS.iter().enumerate() {
            let part = partition_path(&d.path, i + 1);
            let name = format!("{fs}-dev.mnt");
            let mnt = scratch.owned().join(&name);
            made.mounts.push((fs, part.clone(), mnt.clone(), false));
            let r = (|| -> Result<()> {
                wait_for_partition(&part, dev)?;
                run(Command::new(tool(mkfs)?).args(args).arg(&part), mkfs)?;
                scratch
                    .owned()
                    .create_dir(&name, None)
                    .map_err(|e| anyhow::anyhow!("mkdir {}: {e}", mnt.display()))?;
                scratch.record(&JournalEntry::Mount(name.clone()))?;
                rustix::mount::mount(
                    &part,
                    &mnt,
                    fs,
                    rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
                    Some(c"dax=always"),
                )
                .map_err(|e| {
                    let why = if dax {
                        ""
                    } else {
                        " (the device has no DAX: queue/dax is 0)"
                    };
                    anyhow::anyhow!(
                        "mount -t {fs} -o dax=always {} {}: {e}{why}",
                        part.display(),
                        mnt.display()
                    )
                })
            })();
            match r {
                Ok(()) => made.mounts.last_mut().expect("pushed").3 = true,
                Err(e) => made.failed.push((fs, format!("{e:#}"))),
            }
        }
        Ok(made)
    }

    /// The filesystems that could not be made or mounted, with why.
    pub fn failures(&self) -> &[(&'static str, String)] {
        &self.failed
    }

    /// The mounted filesystems: `(filesystem, mount point)`.
    pub fn mounts(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        self.mounts
            .iter()
            .filter(|m| m.3)
            .map(|m| (m.0, m.2.as_path()))
    }
}

/// Wait until the kernel shows partition `part` of device `dev` (devtmpfs makes the node
/// after sfdisk told the kernel; no udev needed), and check it is that device's partition.
fn wait_for_partition(part: &Path, dev: (u32, u32)) -> Result<()> {
    let t = Instant::now();
    loop {
        if let Ok(m) = std::fs::symlink_metadata(part) {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            let rdev = m.rdev();
            let mine = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
            let parent = sys_dir(mine).join("..").canonicalize().ok();
            if m.file_type().is_block_device() && parent == sys_dir(dev).canonicalize().ok() {
                return Ok(());
            }
            bail!(
                "{} is not a partition of the scratch device; refused",
                part.display()
            );
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!(
                "{} did not appear within 10 s after partitioning",
                part.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for DeviceFs {
    fn drop(&mut self) {
        for (_, part, mnt, mounted) in self.mounts.iter().rev() {
            if *mounted {
                if let Err(e) = super::unmount(mnt) {
                    eprintln!("pinstorm: {e:#}");
                    // Wiping what is still mounted would fail anyway; say what is left.
                    eprintln!(
                        "pinstorm: --scratch-dev {}: left as is ({} still mounted)",
                        self.dev.display(),
                        part.display()
                    );
                    return;
                }
            }
            let _ = std::fs::remove_dir(mnt);
        }
        if self.mounts.is_empty() {
            return;
        }
        // The filesystems first, then the partition table (wipefs tells the kernel, which
        // drops the partitions): the device is blank again.
        let wipe = find_program("wipefs").map(|w| {
            let mut c = Command::new(w);
            c.args(["-a", "-q"]);
            for (_, part, _, _) in &self.mounts {
                c.arg(part);
            }
            c.arg(&self.dev);
            run(&mut c, "wipefs -a")
        });
        // And the kernel forgets the partitions (the re-read wipefs asks for may be
        // declined, as after sfdisk).
        if let Some(partx) = find_program("partx") {
            let _ = run(Command::new(partx).arg("-d").arg(&self.dev), "partx -d");
        }
        match wipe {
            Some(Ok(())) => {}
            Some(Err(e)) => eprintln!("pinstorm: --scratch-dev {}: {e:#}", self.dev.display()),
            None => eprintln!(
                "pinstorm: --scratch-dev {}: wipefs not found; the device keeps pinstorm's filesystems",
                self.dev.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_aligned_halves_or_none_when_too_small() {
        let [(s1, n1), (s2, n2)] = layout(16 << 30).unwrap();
        assert_eq!(s1 * 512, ALIGN);
        assert_eq!(s2, s1 + n1);
        assert_eq!(n1, n2);
        for v in [s1, n1, s2, n2] {
            assert_eq!(v * 512 % ALIGN, 0);
        }
        assert!((s2 + n2) * 512 <= (16 << 30) - ALIGN);
        assert!(layout(600 << 20).is_none());
        assert!(layout(0).is_none());
        assert!(layout(2 * MIN_PART + 2 * ALIGN).is_some());
    }

    #[test]
    fn partitions_are_named_as_the_kernel_names_them() {
        assert_eq!(
            partition_path(Path::new("/dev/pmem0"), 1),
            Path::new("/dev/pmem0p1")
        );
        assert_eq!(
            partition_path(Path::new("/dev/loop12"), 2),
            Path::new("/dev/loop12p2")
        );
        assert_eq!(
            partition_path(Path::new("/dev/sdb"), 1),
            Path::new("/dev/sdb1")
        );
    }

    #[test]
    fn what_blkid_found_is_named_and_hostile_values_stay_words() {
        assert_eq!(
            parse_blkid("PTUUID=x\nPTTYPE=gpt\n"),
            ["a gpt partition table"]
        );
        assert_eq!(
            parse_blkid("UUID=1\nTYPE=xfs\nUSAGE=filesystem\n"),
            ["a xfs signature"]
        );
        assert_eq!(parse_blkid("TYPE=x\u{1b}[2J;rm\n"), ["a x2Jrm signature"]);
        assert_eq!(parse_blkid(""), ["a signature blkid knows"]);
    }

    #[test]
    fn a_relative_or_empty_path_is_refused_before_anything_is_opened() {
        for p in ["", "dev/pmem0", "pmem0"] {
            let e = ScratchDevice::new(Path::new(p), false).unwrap_err();
            assert!(e.to_string().contains("absolute"), "{p}: {e}");
        }
    }

    #[test]
    fn a_file_is_not_a_block_device() {
        let f = std::env::temp_dir().join(format!("pinstorm-scratchdev-{}", std::process::id()));
        std::fs::write(&f, b"x").unwrap();
        let e = ScratchDevice::new(&f, false).unwrap_err().to_string();
        let _ = std::fs::remove_file(&f);
        assert!(e.contains("not a block device"), "{e}");
    }
}
