//! Backings: the memory a pin is taken on.
//!
//! Each kind is one module behind the [`Backing`] trait: anonymous memory, anonymous hugetlb,
//! memfd (also `MFD_HUGETLB`), tmpfs and hugetlbfs files, files in a directory the user named
//! as scratch, and scratch filesystems (ext4, xfs with reflink, btrfs) made on loop devices.
//! A backing is set up once per run ([`BackingKind::setup`]) and then hands out [`Region`]s:
//! a fresh file (where there is one) mapped shared or private, read-write or read-only.
//!
//! This module owns the files and mounts it creates and nothing else: it writes only inside
//! the run's scratch directory or a user-named scratch directory (see `scratch`).

use std::fmt;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pin::{Availability, PinTarget};
use crate::scratch::{RunScratch, ScratchFile};
use crate::sys::{Errno, Mapping};
use crate::units::Size;

mod anon;
mod devdax;
mod dir;
pub(crate) mod loopfs;
mod memfd;

pub use loopfs::LoopFs;
pub use memfd::Memfd;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackingKind {
    Anon,
    AnonHugetlb,
    Memfd,
    MemfdHugetlb,
    Tmpfs,
    Hugetlbfs,
    Ext4,
    Xfs,
    Btrfs,
    ScratchDir,
    XfsDax,
    Ext4Dax,
    Devdax,
}

impl BackingKind {
    pub const ALL: &'static [BackingKind] = &[
        BackingKind::Anon,
        BackingKind::AnonHugetlb,
        BackingKind::Memfd,
        BackingKind::MemfdHugetlb,
        BackingKind::Tmpfs,
        BackingKind::Hugetlbfs,
        BackingKind::Ext4,
        BackingKind::Xfs,
        BackingKind::Btrfs,
        BackingKind::ScratchDir,
        BackingKind::XfsDax,
        BackingKind::Ext4Dax,
        BackingKind::Devdax,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackingKind::Anon => "anon",
            BackingKind::AnonHugetlb => "anon-hugetlb",
            BackingKind::Memfd => "memfd",
            BackingKind::MemfdHugetlb => "memfd-hugetlb",
            BackingKind::Tmpfs => "tmpfs",
            BackingKind::Hugetlbfs => "hugetlbfs",
            BackingKind::Ext4 => "ext4",
            BackingKind::Xfs => "xfs",
            BackingKind::Btrfs => "btrfs",
            BackingKind::ScratchDir => "scratch-dir",
            BackingKind::XfsDax => "xfs-dax",
            BackingKind::Ext4Dax => "ext4-dax",
            BackingKind::Devdax => "devdax",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            BackingKind::Anon => "anonymous memory (MAP_ANONYMOUS)",
            BackingKind::AnonHugetlb => "anonymous huge pages (MAP_HUGETLB); needs free huge pages",
            BackingKind::Memfd => "memfd_create() file (shmem)",
            BackingKind::MemfdHugetlb => "memfd_create(MFD_HUGETLB) file; needs free huge pages",
            BackingKind::Tmpfs => "file on a private tmpfs mount (root) or in /dev/shm",
            BackingKind::Hugetlbfs => "file on a private hugetlbfs mount; needs root",
            BackingKind::Ext4 => {
                "file on a scratch ext4 made on a loop device; needs root and mkfs.ext4"
            }
            BackingKind::Xfs => {
                "file on a scratch xfs (-m reflink=1) on a loop device; needs root and mkfs.xfs"
            }
            BackingKind::Btrfs => {
                "file on a scratch btrfs on a loop device; needs root and mkfs.btrfs"
            }
            BackingKind::ScratchDir => {
                "file in the directory named by --scratch-dir (any filesystem, e.g. DAX)"
            }
            BackingKind::XfsDax => {
                "file on an FS-DAX xfs named by --dax-dir xfs=DIR (checked with STATX_ATTR_DAX)"
            }
            BackingKind::Ext4Dax => {
                "file on an FS-DAX ext4 named by --dax-dir ext4=DIR (checked with STATX_ATTR_DAX)"
            }
            BackingKind::Devdax => {
                "device-dax character device named by --devdax /dev/daxX.Y (its contents are overwritten)"
            }
        }
    }

    /// The filesystem of an FS-DAX directory backing (`xfs-dax` -> `xfs`).
    pub fn dax_fs(self) -> Option<&'static str> {
        match self {
            BackingKind::XfsDax => Some("xfs"),
            BackingKind::Ext4Dax => Some("ext4"),
            _ => None,
        }
    }

    /// Whether it is a DAX backing: a file on FS-DAX (`xfs-dax`, `ext4-dax`) or device-dax.
    pub fn is_dax(self) -> bool {
        self.dax_fs().is_some() || self == BackingKind::Devdax
    }

    /// The disk filesystem the backing mounts (`xfs` for `xfs` and `xfs-dax`), which may be a
    /// kernel module: a lab guest loads it early, beside its other set-up.
    pub fn disk_fs(self) -> Option<&'static str> {
        match self {
            BackingKind::Ext4 | BackingKind::Ext4Dax => Some("ext4"),
            BackingKind::Xfs | BackingKind::XfsDax => Some("xfs"),
            BackingKind::Btrfs => Some("btrfs"),
            _ => None,
        }
    }

    /// Whether setting it up makes a filesystem (an image, mkfs, a loop device, a mount):
    /// about a second each in a TCG guest, so a run sets these up beside each other.
    pub fn makes_a_filesystem(self) -> bool {
        matches!(
            self,
            BackingKind::Ext4 | BackingKind::Xfs | BackingKind::Btrfs
        )
    }

    /// Whether its regions have a file whose layout can change (anonymous memory has none).
    pub fn has_file(self) -> bool {
        !matches!(self, BackingKind::Anon | BackingKind::AnonHugetlb)
    }

    /// Whether the backing's memory is made of huge pages from the hugetlb pool.
    pub fn uses_hugetlb(self) -> bool {
        matches!(
            self,
            BackingKind::AnonHugetlb | BackingKind::MemfdHugetlb | BackingKind::Hugetlbfs
        )
    }

    pub fn parse(name: &str) -> Result<BackingKind, String> {
        BackingKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let known: Vec<_> = BackingKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown backing {name:?} (known: {})", known.join(", "))
            })
    }

    /// A cheap check of whether this backing can be set up here, without creating anything.
    pub fn availability(self, ctx: &SetupEnv) -> Availability {
        if let Some(why) = ctx.unavailable.get(self.name()) {
            return Availability::NotRun(why.clone());
        }
        match self {
            BackingKind::Anon | BackingKind::Memfd => Availability::Usable,
            BackingKind::AnonHugetlb | BackingKind::MemfdHugetlb => hugetlb_availability(ctx),
            BackingKind::Tmpfs => {
                if ctx.is_root || Path::new("/dev/shm").is_dir() {
                    Availability::Usable
                } else {
                    Availability::NotRun("not root and no /dev/shm to make tmpfs files in".into())
                }
            }
            BackingKind::Hugetlbfs => {
                if !ctx.is_root {
                    Availability::NotRun("mounting a private hugetlbfs needs root".into())
                } else {
                    hugetlb_availability(ctx)
                }
            }
            BackingKind::Ext4 | BackingKind::Xfs | BackingKind::Btrfs => loopfs::availability(self, ctx),
            BackingKind::ScratchDir => match &ctx.scratch_dir {
                Some(_) => Availability::Usable,
                None => Availability::NotRun(
                    "no --scratch-dir given (name a directory on the filesystem to test, e.g. a DAX mount)".into(),
                ),
            },
            BackingKind::XfsDax | BackingKind::Ext4Dax => {
                let fs = self.dax_fs().expect("a DAX directory backing");
                match ctx.dax_dirs.get(fs) {
                    Some(_) => Availability::Usable,
                    None => Availability::NotRun(format!(
                        "no FS-DAX {fs} named (--dax-dir {fs}=DIR on a filesystem mounted -o dax=always on pmem); `pinstorm lab` makes one in a QEMU guest with an emulated NVDIMM"
                    )),
                }
            }
            BackingKind::Devdax => match &ctx.devdax {
                Some(_) => Availability::Usable,
                None => Availability::NotRun(
                    "no device-dax named (--devdax /dev/daxX.Y, e.g. from `ndctl create-namespace -m devdax`); `pinstorm lab --devdax-namespace` makes one in a QEMU guest".into(),
                ),
            },
        }
    }

    /// Set the backing up for a run (mounts, loop devices, directories).
    pub fn setup(self, ctx: &SetupEnv, scratch: &RunScratch) -> Result<Box<dyn Backing>, NotRun> {
        if let Availability::NotRun(r) = self.availability(ctx) {
            return Err(NotRun(r));
        }
        match self {
            BackingKind::Anon => Ok(Box::new(anon::Anon::new(false))),
            BackingKind::AnonHugetlb => Ok(Box::new(anon::Anon::new(true))),
            BackingKind::Memfd => Ok(Box::new(memfd::Memfd::new(false))),
            BackingKind::MemfdHugetlb => Ok(Box::new(memfd::Memfd::new(true))),
            BackingKind::Tmpfs => dir::DirBacking::tmpfs(ctx, scratch).map(boxed),
            BackingKind::Hugetlbfs => dir::DirBacking::hugetlbfs(scratch).map(boxed),
            BackingKind::Ext4 | BackingKind::Xfs | BackingKind::Btrfs => {
                dir::DirBacking::loop_fs(self, ctx, scratch).map(boxed)
            }
            BackingKind::ScratchDir => {
                dir::DirBacking::user_dir(ctx.scratch_dir.as_ref().expect("checked above"), scratch)
                    .map(boxed)
            }
            BackingKind::XfsDax | BackingKind::Ext4Dax => {
                let fs = self.dax_fs().expect("a DAX directory backing");
                dir::DirBacking::dax_dir(self, fs, &ctx.dax_dirs[fs], scratch).map(boxed)
            }
            BackingKind::Devdax => {
                devdax::DevDax::open(ctx.devdax.as_deref().expect("checked above"))
                    .map(|d| Box::new(d) as Box<dyn Backing>)
            }
        }
    }
}

fn boxed(b: dir::DirBacking) -> Box<dyn Backing> {
    Box::new(b)
}

fn hugetlb_availability(ctx: &SetupEnv) -> Availability {
    let (total, free, _) = crate::sysctl::hugepage_counts();
    if free > 0 || ctx.is_root {
        Availability::Usable
    } else {
        Availability::NotRun(format!(
            "no free huge pages (HugePages_Total {total}, free {free}); run as root so pinstorm can reserve them, or raise vm.nr_hugepages"
        ))
    }
}

impl fmt::Display for BackingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a backing or region could not be made, in words for the `notrun` reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotRun(pub String);

/// What a backing's setup may use.
#[derive(Clone, Debug, Default)]
pub struct SetupEnv {
    pub is_root: bool,
    /// The directory the user named as scratch (`--scratch-dir`), already checked.
    pub scratch_dir: Option<crate::scratch::ScratchDir>,
    /// Directories on FS-DAX filesystems the user named as scratch, by filesystem
    /// (`--dax-dir xfs=DIR`).
    pub dax_dirs: std::collections::BTreeMap<String, crate::scratch::ScratchDir>,
    /// A device-dax character device the user named as scratch (`--devdax`).
    pub devdax: Option<PathBuf>,
    /// Why a backing cannot be set up, known before the run (e.g. a lab guest whose
    /// namespace could not be made): by backing name, reported as its notrun reason.
    pub unavailable: std::collections::BTreeMap<String, String>,
    /// What a filesystem on a loop device waits for between making its image and attaching
    /// it (a lab guest's loop and filesystem modules, still loading when the run starts);
    /// None: nothing.
    pub before_attach: Option<Gate>,
}

/// A wait a backing's set-up goes through at one step ([`SetupEnv::before_attach`]): Err
/// is why it cannot go on, the backing's notrun reason.
#[derive(Clone)]
pub struct Gate(std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

impl Gate {
    pub fn new(wait: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Gate {
        Gate(std::sync::Arc::new(wait))
    }

    pub fn wait(&self) -> Result<(), String> {
        (self.0)()
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Gate")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapKind {
    Shared,
    Private,
}

impl MapKind {
    pub const ALL: &'static [MapKind] = &[MapKind::Shared, MapKind::Private];
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Shared => "shared",
            MapKind::Private => "private",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Rw,
    Ro,
}

impl Access {
    pub const ALL: &'static [Access] = &[Access::Rw, Access::Ro];
    pub fn name(self) -> &'static str {
        match self {
            Access::Rw => "rw",
            Access::Ro => "ro",
        }
    }
}

/// What to map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionSpec {
    pub size: Size,
    pub map: MapKind,
    pub access: Access,
}

/// Where a backing's memory comes from, as recorded in results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackingInfo {
    pub backing: BackingKind,
    /// Filesystem type (`tmpfs`, `xfs`, ...), or `anon` for anonymous memory.
    pub fs: String,
    pub mount_point: Option<PathBuf>,
    pub mount_source: Option<String>,
    pub mount_options: Option<String>,
    /// The page size regions are rounded up to (huge page size for hugetlb backings).
    pub page_size: u64,
}

/// A mapped region of a backing, with the file behind it (if any).
pub struct Region {
    pub mapping: Mapping,
    pub spec: RegionSpec,
    /// The backing file when there is one (memfd, tmpfs, ..., loop filesystems).
    pub file: Option<RegionFile>,
    /// `statx` `STATX_ATTR_DAX` of the file; `Some(false)` for anonymous memory; `None`
    /// where the kernel does not report it.
    pub dax: Option<bool>,
}

/// The file behind a region. Only backings create these, so a `RegionFile` is always a file
/// pinstorm made: layout operations take it and nothing else.
pub struct RegionFile(FileInner);

enum FileInner {
    /// A memfd: no path, no directory.
    Memfd(File),
    /// A file pinstorm created in a scratch directory.
    Scratch(ScratchFile),
}

impl RegionFile {
    pub(crate) fn memfd(f: File) -> RegionFile {
        RegionFile(FileInner::Memfd(f))
    }

    pub(crate) fn scratch(f: ScratchFile) -> RegionFile {
        RegionFile(FileInner::Scratch(f))
    }

    pub fn file(&self) -> &File {
        match &self.0 {
            FileInner::Memfd(f) => f,
            FileInner::Scratch(s) => s.file(),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match &self.0 {
            FileInner::Memfd(_) => None,
            FileInner::Scratch(s) => Some(s.path()),
        }
    }

    /// A new, empty file next to this one (same directory, same filesystem), for reflink
    /// and dedupe partners. `None` for a memfd, which has no directory.
    pub fn sibling(&self, name: &str) -> anyhow::Result<Option<RegionFile>> {
        match &self.0 {
            FileInner::Memfd(_) => Ok(None),
            FileInner::Scratch(s) => Ok(Some(RegionFile::scratch(ScratchFile::create(
                s.dir(),
                name,
            )?))),
        }
    }
}

impl Region {
    pub fn pin_target(&self) -> PinTarget {
        PinTarget::of(&self.mapping, self.mapping.len())
    }
}

/// One kind of memory to pin, set up for this run.
pub trait Backing: Send + Sync {
    fn kind(&self) -> BackingKind;
    fn info(&self) -> &BackingInfo;
    /// The directory this backing makes its files in, if it has one (memfd and anonymous
    /// memory do not).
    fn dir(&self) -> Option<&std::sync::Arc<crate::scratch::OwnedDir>> {
        None
    }
    /// Make a fresh region: a new file (where there is one) of `spec.size` rounded up to the
    /// backing's page size, allocated, filled and mapped as asked, every page faulted in.
    fn region(&self, spec: &RegionSpec) -> Result<Region, RegionError>;
}

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The kernel refused a step of making the region (e.g. mmap of huge pages: ENOMEM).
    #[error("{op}: {errno}")]
    Kernel { op: &'static str, errno: Errno },
    #[error("{0:#}")]
    Tool(#[from] anyhow::Error),
}

/// Map `file` (already `len` bytes long) as `spec` asks.
pub(crate) fn map_file(
    file: &File,
    len: usize,
    spec: &RegionSpec,
    hugetlb: bool,
) -> Result<Mapping, RegionError> {
    Mapping::file(file.as_fd(), len, map_mode(spec, hugetlb))
        .map_err(|errno| RegionError::Kernel { op: "mmap", errno })
}

pub(crate) fn map_mode(spec: &RegionSpec, hugetlb: bool) -> crate::sys::MapMode {
    crate::sys::MapMode {
        shared: spec.map == MapKind::Shared,
        writable: spec.access == Access::Rw,
        hugetlb,
        populate: true,
    }
}

/// Give a fresh file its size with allocated blocks, filled with a recognisable pattern so
/// a read-only mapping maps real data (not holes) and later oracles can tell generations
/// apart. Uses `fallocate` and falls back to writing where it is not supported.
pub(crate) fn size_file(file: &File, len: usize, hugetlb: bool) -> Result<(), RegionError> {
    use rustix::fs::FallocateFlags;
    // shmem's fallocate gives up with EINTR when a signal is pending (seen under virtme's
    // init in a lab guest): retry, as write(2) loops do.
    let fallocate = |f: &File, flags: FallocateFlags, off: u64, len: u64| {
        let mut tries = 0;
        loop {
            match rustix::fs::fallocate(f, flags, off, len) {
                Err(rustix::io::Errno::INTR) if tries < 1000 => tries += 1,
                r => return r,
            }
        }
    };
    if hugetlb {
        // hugetlbfs has no write(2); fallocate reserves the huge pages.
        return fallocate(file, FallocateFlags::empty(), 0, len as u64).map_err(|e| {
            RegionError::Kernel {
                op: "fallocate",
                errno: e.into(),
            }
        });
    }
    match fallocate(file, FallocateFlags::empty(), 0, len as u64) {
        Ok(()) => {}
        Err(rustix::io::Errno::OPNOTSUPP) => {}
        Err(e) => {
            return Err(RegionError::Kernel {
                op: "fallocate",
                errno: e.into(),
            })
        }
    }
    use std::os::unix::fs::FileExt;
    let chunk = vec![0x5au8; 1 << 20];
    let mut off = 0usize;
    while off < len {
        let n = chunk.len().min(len - off);
        file.write_all_at(&chunk[..n], off as u64)
            .map_err(|e| RegionError::Kernel {
                op: "pwrite",
                errno: Errno::from_io(&e).unwrap_or(Errno(0)),
            })?;
        off += n;
    }
    Ok(())
}
