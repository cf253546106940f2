//! Backings whose regions are files in a directory: `tmpfs`, `hugetlbfs`, the loop-device
//! filesystems (`ext4`, `xfs`, `btrfs`) and `scratch-dir`.
//!
//! Every region is a new file created with `O_EXCL` in a directory this run made (a private
//! mount, or a subdirectory of the user's scratch directory), removed when the region goes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;

use super::loopfs::LoopFs;
use super::{
    map_file, size_file, Backing, BackingInfo, BackingKind, NotRun, Region, RegionError,
    RegionFile, RegionSpec, SetupEnv,
};
use crate::mounts;
use crate::scratch::{self, JournalEntry, OwnedDir, RunScratch, ScratchDir, ScratchFile};
use crate::units::Size;

/// Something this backing set up and must undo.
enum Owned {
    Mount(PathBuf),
    /// pinstorm's marked subdirectory of a user scratch directory: emptied through its
    /// descriptor, then removed from its parent.
    UserDir,
    Loop(LoopFs),
}

pub struct DirBacking {
    info: BackingInfo,
    /// The directory regions are made in, open: files are created through it.
    dir: Arc<OwnedDir>,
    hugetlb: bool,
    next: AtomicU64,
    // Dropped after regions (which the runner drops first), in declaration order.
    owned: Option<Owned>,
}

fn mount_private(scratch: &RunScratch, fs: &str, data: &std::ffi::CStr) -> Result<PathBuf, NotRun> {
    let name = format!("{fs}.mnt");
    let mnt = scratch.owned().join(&name);
    scratch
        .owned()
        .create_dir(&name, None)
        .map_err(|e| NotRun(format!("mkdir {}: {e}", mnt.display())))?;
    scratch
        .record(&JournalEntry::Mount(name))
        .map_err(|e| NotRun(format!("{e:#}")))?;
    rustix::mount::mount(
        "pinstorm",
        &mnt,
        fs,
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        data,
    )
    .map_err(|e| NotRun(format!("mount -t {fs} on {}: {e}", mnt.display())))?;
    Ok(mnt)
}

/// The directory a mount made in the run directory, open (its root must be ours: the
/// mount options say mode=0700; a fresh mkfs makes root's 0755).
fn open_mounted(scratch: &RunScratch, mnt: &Path) -> Result<Arc<OwnedDir>, NotRun> {
    let name = mnt
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| NotRun(format!("{} has no name", mnt.display())))?;
    scratch
        .owned()
        .open_dir(name)
        .map(Arc::new)
        .map_err(|e| NotRun(format!("{e}")))
}

fn own_subdir(parent: &Path, what: &str, scratch: &RunScratch) -> Result<Arc<OwnedDir>, NotRun> {
    scratch
        .user_subdir(parent, what)
        .map(Arc::new)
        .map_err(|e| NotRun(format!("{e:#}")))
}

impl DirBacking {
    fn new(
        kind: BackingKind,
        dir: Arc<OwnedDir>,
        hugetlb: bool,
        owned: Owned,
    ) -> Result<DirBacking, NotRun> {
        let mut b = DirBacking {
            info: BackingInfo {
                backing: kind,
                fs: String::new(),
                mount_point: None,
                mount_source: None,
                mount_options: None,
                page_size: if hugetlb {
                    crate::sysctl::hugepage_counts().2
                } else {
                    crate::sys::page_size() as u64
                },
            },
            dir,
            hugetlb,
            next: AtomicU64::new(0),
            owned: Some(owned),
        };
        let m = mounts::mount_of(b.dir.path()).ok_or_else(|| {
            NotRun(format!(
                "cannot find the mount of {}",
                b.dir.path().display()
            ))
        })?;
        b.info.fs = m.fs_type;
        b.info.mount_point = Some(m.mount_point);
        b.info.mount_source = Some(m.source);
        b.info.mount_options = Some(m.options);
        Ok(b)
    }

    pub fn tmpfs(env: &SetupEnv, scratch: &RunScratch) -> Result<DirBacking, NotRun> {
        if env.is_root {
            let mnt = mount_private(scratch, "tmpfs", c"mode=0700")?;
            let d = open_mounted(scratch, &mnt)?;
            return DirBacking::new(BackingKind::Tmpfs, d, false, Owned::Mount(mnt));
        }
        let shm = Path::new("/dev/shm");
        match mounts::mount_of(shm) {
            Some(m) if m.fs_type == "tmpfs" => {}
            _ => {
                return Err(NotRun(
                    "/dev/shm is not a tmpfs and mounting one needs root".into(),
                ))
            }
        }
        let d = own_subdir(shm, "/dev/shm", scratch)?;
        DirBacking::new(BackingKind::Tmpfs, d, false, Owned::UserDir)
    }

    pub fn hugetlbfs(scratch: &RunScratch) -> Result<DirBacking, NotRun> {
        let mnt = mount_private(scratch, "hugetlbfs", c"mode=0700")?;
        let d = open_mounted(scratch, &mnt)?;
        DirBacking::new(BackingKind::Hugetlbfs, d, true, Owned::Mount(mnt))
    }

    pub fn loop_fs(
        kind: BackingKind,
        env: &super::SetupEnv,
        scratch: &RunScratch,
    ) -> Result<DirBacking, NotRun> {
        let lfs = LoopFs::create(kind, env, scratch)?;
        let d = open_mounted(scratch, lfs.mount_point())?;
        DirBacking::new(kind, d, false, Owned::Loop(lfs))
    }

    /// A directory on an FS-DAX filesystem the user named as scratch. It is called DAX only
    /// if it is on `fs` and a file made there has `STATX_ATTR_DAX`; otherwise notrun.
    pub fn dax_dir(
        kind: BackingKind,
        fs: &str,
        dir: &ScratchDir,
        scratch: &RunScratch,
    ) -> Result<DirBacking, NotRun> {
        let flag = dir.flag();
        let d = own_subdir(dir.path(), flag, scratch)?;
        let dir = dir.path();
        let b = DirBacking::new(kind, d, false, Owned::UserDir)?;
        if b.info.fs != fs {
            return Err(NotRun(format!(
                "{flag}{} is on {}, not {fs}",
                dir.display(),
                b.info.fs
            )));
        }
        let probe =
            ScratchFile::create(&b.dir, "dax-check").map_err(|e| NotRun(format!("{e:#}")))?;
        let dax = crate::sys::statx_dax(probe.file())
            .map_err(|e| NotRun(format!("statx on {}: {e}", probe.path().display())))?;
        drop(probe);
        match dax {
            Some(true) => Ok(b),
            Some(false) => Err(NotRun(format!(
                "{flag}{}: files there are not DAX (STATX_ATTR_DAX is clear; mount options {}); refusing to call it DAX",
                dir.display(),
                b.info.mount_options.as_deref().unwrap_or("?")
            ))),
            None => Err(NotRun(format!(
                "{flag}{}: this kernel does not report STATX_ATTR_DAX, so DAX cannot be verified",
                dir.display()
            ))),
        }
    }

    pub fn user_dir(dir: &ScratchDir, scratch: &RunScratch) -> Result<DirBacking, NotRun> {
        let d = own_subdir(dir.path(), dir.flag(), scratch)?;
        DirBacking::new(BackingKind::ScratchDir, d, false, Owned::UserDir)
    }
}

impl Backing for DirBacking {
    fn kind(&self) -> BackingKind {
        self.info.backing
    }

    fn info(&self) -> &BackingInfo {
        &self.info
    }

    fn dir(&self) -> Option<&Arc<OwnedDir>> {
        Some(&self.dir)
    }

    fn region(&self, spec: &RegionSpec) -> Result<Region, RegionError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let sf = ScratchFile::create(&self.dir, &format!("region-{n}"))?;
        let len = spec.size.round_up(self.info.page_size).as_usize();
        size_file(sf.file(), len, self.hugetlb)?;
        let mapping = map_file(sf.file(), len, spec, self.hugetlb)?;
        mapping.touch(self.info.page_size as usize);
        let dax = crate::sys::statx_dax(sf.file())
            .map_err(|errno| RegionError::Kernel { op: "statx", errno })?;
        Ok(Region {
            mapping,
            spec: RegionSpec {
                size: Size(len as u64),
                ..*spec
            },
            file: Some(RegionFile::scratch(sf)),
            dax,
        })
    }
}

impl Drop for DirBacking {
    fn drop(&mut self) {
        match self.owned.take() {
            Some(Owned::Mount(m)) => {
                if let Err(e) = scratch::unmount(&m).context("cleanup") {
                    eprintln!("pinstorm: {e:#}");
                }
            }
            Some(Owned::UserDir) => {
                if let Err(e) = self.dir.remove_from_user_dir() {
                    eprintln!("pinstorm: removing {}: {e}", self.dir.path().display());
                }
            }
            Some(Owned::Loop(l)) => drop(l),
            None => {}
        }
    }
}
