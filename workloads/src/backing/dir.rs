//! Backings whose regions are files in a directory: `tmpfs`, `hugetlbfs`, the loop-device
//! filesystems (`ext4`, `xfs`, `btrfs`) and `scratch-dir`.
//!
//! Every region is a new file created with `O_EXCL` in a directory this run made (a private
//! mount, or a subdirectory of the user's scratch directory), removed when the region goes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

use super::loopfs::LoopFs;
use super::{
    map_file, size_file, Backing, BackingInfo, BackingKind, NotRun, Region, RegionError,
    RegionFile, RegionSpec, SetupEnv,
};
use crate::mounts;
use crate::scratch::{self, JournalEntry, RunScratch, ScratchFile};
use crate::units::Size;

/// Something this backing set up and must undo.
enum Owned {
    Mount(PathBuf),
    Dir(PathBuf),
    Loop(LoopFs),
}

pub struct DirBacking {
    info: BackingInfo,
    dir: PathBuf,
    hugetlb: bool,
    next: AtomicU64,
    // Dropped after regions (which the runner drops first), in declaration order.
    owned: Option<Owned>,
}

fn mount_private(scratch: &RunScratch, fs: &str, data: &std::ffi::CStr) -> Result<PathBuf, NotRun> {
    let mnt = scratch.dir().join(format!("{fs}.mnt"));
    std::fs::create_dir(&mnt).map_err(|e| NotRun(format!("mkdir {}: {e}", mnt.display())))?;
    scratch
        .record(&JournalEntry::Mount(mnt.clone()))
        .map_err(|e| NotRun(format!("{e:#}")))?;
    rustix::mount::mount(
        "pinstorm",
        &mnt,
        fs,
        rustix::mount::MountFlags::empty(),
        data,
    )
    .map_err(|e| NotRun(format!("mount -t {fs} on {}: {e}", mnt.display())))?;
    Ok(mnt)
}

fn own_subdir(parent: &Path, scratch: &RunScratch) -> Result<PathBuf, NotRun> {
    let run_name = scratch
        .dir()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let d = parent.join(format!("pinstorm.{run_name}"));
    scratch
        .record(&JournalEntry::Dir(d.clone()))
        .map_err(|e| NotRun(format!("{e:#}")))?;
    std::fs::create_dir(&d).map_err(|e| NotRun(format!("mkdir {}: {e}", d.display())))?;
    Ok(d)
}

impl DirBacking {
    fn new(
        kind: BackingKind,
        dir: PathBuf,
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
        let m = mounts::mount_of(&b.dir)
            .ok_or_else(|| NotRun(format!("cannot find the mount of {}", b.dir.display())))?;
        b.info.fs = m.fs_type;
        b.info.mount_point = Some(m.mount_point);
        b.info.mount_source = Some(m.source);
        b.info.mount_options = Some(m.options);
        Ok(b)
    }

    pub fn tmpfs(env: &SetupEnv, scratch: &RunScratch) -> Result<DirBacking, NotRun> {
        if env.is_root {
            let mnt = mount_private(scratch, "tmpfs", c"mode=0700")?;
            return DirBacking::new(BackingKind::Tmpfs, mnt.clone(), false, Owned::Mount(mnt));
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
        let d = own_subdir(shm, scratch)?;
        DirBacking::new(BackingKind::Tmpfs, d.clone(), false, Owned::Dir(d))
    }

    pub fn hugetlbfs(scratch: &RunScratch) -> Result<DirBacking, NotRun> {
        let mnt = mount_private(scratch, "hugetlbfs", c"mode=0700")?;
        DirBacking::new(BackingKind::Hugetlbfs, mnt.clone(), true, Owned::Mount(mnt))
    }

    pub fn loop_fs(kind: BackingKind, scratch: &RunScratch) -> Result<DirBacking, NotRun> {
        let lfs = LoopFs::create(kind, scratch)?;
        DirBacking::new(
            kind,
            lfs.mount_point().to_path_buf(),
            false,
            Owned::Loop(lfs),
        )
    }

    /// A directory on an FS-DAX filesystem the user named as scratch. It is called DAX only
    /// if it is on `fs` and a file made there has `STATX_ATTR_DAX`; otherwise notrun.
    pub fn dax_dir(
        kind: BackingKind,
        fs: &str,
        dir: &Path,
        scratch: &RunScratch,
    ) -> Result<DirBacking, NotRun> {
        let flag = format!("--dax-dir {fs}=");
        let dir = scratch::checked_scratch_dir(dir, &flag).map_err(|e| NotRun(format!("{e:#}")))?;
        let d = own_subdir(&dir, scratch)?;
        let b = DirBacking::new(kind, d.clone(), false, Owned::Dir(d))?;
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

    pub fn user_dir(dir: &Path, scratch: &RunScratch) -> Result<DirBacking, NotRun> {
        let dir = scratch::checked_scratch_dir(dir, "--scratch-dir")
            .map_err(|e| NotRun(format!("{e:#}")))?;
        let d = own_subdir(&dir, scratch)?;
        DirBacking::new(BackingKind::ScratchDir, d.clone(), false, Owned::Dir(d))
    }
}

impl Backing for DirBacking {
    fn kind(&self) -> BackingKind {
        self.info.backing
    }

    fn info(&self) -> &BackingInfo {
        &self.info
    }

    fn dir(&self) -> Option<&Path> {
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
            Some(Owned::Dir(d)) => {
                let _ = std::fs::remove_dir_all(&d);
            }
            Some(Owned::Loop(l)) => drop(l),
            None => {}
        }
    }
}
