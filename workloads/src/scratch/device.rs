//! Block devices the user names as scratch (`--scratch-dev [FS=]DEV`), fstests style:
//! pinstorm checks that nothing uses a device and nothing is on it, makes the filesystem on
//! the whole device (xfs with reflink, or ext4), mounts it `dax=always` in the run directory
//! for the `xfs-dax` / `ext4-dax` backing, and leaves the device blank at the end.
//!
//! One filesystem per device, on the whole device: xfs refuses DAX together with reflink on
//! a partition ("DAX and reflink cannot work with multi-partitions!", `xfs_setup_dax_always`;
//! measured on 6.1), so a device is never partitioned.
//!
//! The device is the user's: it is checked where it is named ([`ScratchDevice::new`]) and
//! again, through a descriptor, before anything is written ([`DeviceFs::make`]), and every
//! tool and the mount reach it through that descriptor (`/proc/self/fd/N`), never by its name
//! again. A device that is mounted, held open exclusively (a filesystem, device-mapper, md,
//! swap), has holders or partitions, or carries any signature `blkid` knows (a filesystem,
//! a partition table, LVM, RAID) is refused unless the user says `--scratch-dev-force`,
//! which wipes it. Whether the mount really is DAX is proved later, per file, by
//! `STATX_ATTR_DAX` (a device without DAX gives a `notrun` backing, never one called DAX).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::{JournalEntry, RunScratch};
use crate::backing::loopfs::find_program;

/// Smallest device for xfs: mkfs.xfs refuses fewer than 300 MiB since xfsprogs 5.19.
const MIN_XFS: u64 = 300 << 20;

/// The filesystems a scratch device can get (an allow-list: the name reaches mkfs and
/// mount), with their mkfs and its arguments.
const FILESYSTEMS: &[(&str, &str, &[&str])] = &[
    ("xfs", "mkfs.xfs", &["-f", "-q", "-m", "reflink=1"]),
    (
        "ext4",
        "mkfs.ext4",
        &["-F", "-q", "-E", "nodiscard", "-b", "4096"],
    ),
];

/// A block device named as scratch, checked where it was named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScratchDevice {
    path: PathBuf,
    /// `xfs` or `ext4`: the filesystem it gets.
    fs: &'static str,
    /// `--scratch-dev-force`: wipe what is on it instead of refusing it.
    force: bool,
}

impl ScratchDevice {
    /// Check one `--scratch-dev` value, `[FS=]DEV` (FS `xfs`, the default, or `ext4`):
    /// an absolute path to a block device, not in use; with nothing on it unless `force`.
    pub fn new(arg: &str, force: bool) -> Result<ScratchDevice> {
        let (fs, dev) = match arg.split_once('=') {
            Some((fs, dev)) => (fs, dev),
            None => ("xfs", arg),
        };
        let Some(&(fs, _, _)) = FILESYSTEMS.iter().find(|f| f.0 == fs) else {
            bail!("--scratch-dev {arg}: the filesystem must be xfs or ext4 (FS=DEV), got {fs:?}");
        };
        let path = Path::new(dev);
        if dev.is_empty() || !path.is_absolute() {
            bail!("--scratch-dev {arg}: must be an absolute path to a block device ([xfs=|ext4=]/dev/pmem0)");
        }
        let d = ScratchDevice {
            path: path.to_path_buf(),
            fs,
            force,
        };
        d.check()?;
        Ok(d)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `xfs` or `ext4`.
    pub fn fs(&self) -> &'static str {
        self.fs
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

/// The filesystem pinstorm made on a scratch device, mounted in the run directory.
/// Dropping it unmounts it and wipes the device.
pub struct DeviceFs {
    dev: PathBuf,
    /// Our descriptor of the device, which the tools and the mount reach it through.
    fd: OwnedFd,
    fs: &'static str,
    mnt: PathBuf,
    mounted: bool,
}

impl DeviceFs {
    /// Check `d` again, wipe it when forced, make its filesystem and mount it `dax=always`
    /// in the run directory (journaled first, so a killed run's mount is undone by the next
    /// run).
    pub fn make(d: &ScratchDevice, scratch: &RunScratch) -> Result<DeviceFs> {
        let (fd, dev) = d.check()?;
        let p = d.path.display();
        let bytes: u64 = std::fs::read_to_string(sys_dir(dev).join("size"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|sectors| sectors * 512)
            .with_context(|| format!("--scratch-dev {p}: its size"))?;
        if d.fs == "xfs" && bytes < MIN_XFS {
            bail!(
                "--scratch-dev {p}: {} MiB is too small for xfs (at least {} MiB)",
                bytes >> 20,
                MIN_XFS >> 20
            );
        }
        // mkfs opens the device exclusively itself: let go of the check's claim, and from
        // here on reach it through a descriptor that is not exclusive, of the same device.
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
        let name = format!("{}-dev.mnt", d.fs);
        let mut made = DeviceFs {
            dev: d.path.clone(),
            fd,
            fs: d.fs,
            mnt: scratch.owned().join(&name),
            mounted: false,
        };
        let (_keep, by_fd) = made.by_fd()?;
        if d.force {
            run(
                Command::new(tool("wipefs")?).args(["-a", "-q"]).arg(&by_fd),
                "wipefs -a",
            )?;
        }
        let &(_, mkfs, args) = FILESYSTEMS
            .iter()
            .find(|f| f.0 == d.fs)
            .expect("an allowed filesystem");
        run(Command::new(tool(mkfs)?).args(args).arg(&by_fd), mkfs)?;
        scratch
            .owned()
            .create_dir(&name, None)
            .map_err(|e| anyhow::anyhow!("mkdir {}: {e}", made.mnt.display()))?;
        scratch.record(&JournalEntry::Mount(name))?;
        let dax =
            std::fs::read_to_string(sys_dir(dev).join("queue/dax")).is_ok_and(|v| v.trim() == "1");
        rustix::mount::mount(
            by_fd.as_str(),
            &made.mnt,
            d.fs,
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
                "mount -t {} -o dax=always {p} {}: {e}{why}",
                d.fs,
                made.mnt.display()
            )
        })?;
        made.mounted = true;
        Ok(made)
    }

    /// A duplicate of our descriptor that a child inherits, and its `/proc/self/fd` path.
    fn by_fd(&self) -> Result<(OwnedFd, String)> {
        let inherited = rustix::io::dup(self.fd.as_fd())?;
        let path = format!("/proc/self/fd/{}", inherited.as_raw_fd());
        Ok((inherited, path))
    }

    /// The filesystem and where it is mounted.
    pub fn mount(&self) -> (&'static str, &Path) {
        (self.fs, &self.mnt)
    }
}

impl Drop for DeviceFs {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = super::unmount(&self.mnt) {
                eprintln!("pinstorm: {e:#}");
                // Wiping what is still mounted would fail anyway; say what is left.
                eprintln!(
                    "pinstorm: --scratch-dev {}: left as is (still mounted)",
                    self.dev.display()
                );
                return;
            }
        }
        let _ = std::fs::remove_dir(&self.mnt);
        let wipe = match (find_program("wipefs"), self.by_fd()) {
            (Some(w), Ok((_keep, path))) => {
                run(Command::new(w).args(["-a", "-q"]).arg(path), "wipefs -a")
            }
            (None, _) => Err(anyhow::anyhow!("wipefs not found")),
            (_, Err(e)) => Err(e),
        };
        if let Err(e) = wipe {
            eprintln!(
                "pinstorm: --scratch-dev {}: {e:#}; the device keeps pinstorm's {}",
                self.dev.display(),
                self.fs
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_relative_or_empty_path_or_an_unknown_filesystem_is_refused_before_anything_is_opened() {
        for p in ["", "dev/pmem0", "pmem0", "xfs=", "ext4=pmem0"] {
            let e = ScratchDevice::new(p, false).unwrap_err();
            assert!(e.to_string().contains("absolute"), "{p}: {e}");
        }
        let e = ScratchDevice::new("btrfs=/dev/pmem0", false).unwrap_err();
        assert!(e.to_string().contains("xfs or ext4"), "{e}");
    }

    #[test]
    fn a_file_is_not_a_block_device() {
        let f = std::env::temp_dir().join(format!("pinstorm-scratchdev-{}", std::process::id()));
        std::fs::write(&f, b"x").unwrap();
        let e = ScratchDevice::new(f.to_str().unwrap(), false)
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_file(&f);
        assert!(e.contains("not a block device"), "{e}");
    }
}
