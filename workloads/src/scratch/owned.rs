//! Directories pinstorm owns, proven through file descriptors.
//!
//! pinstorm runs as root on shared machines, so a directory found on disk is used only after
//! it is shown to be ours: a real directory (never followed through a symlink), owned by the
//! effective user, not writable by group or others, and for a root a marker file written by
//! pinstorm. Every ancestor of such a directory must be owned by root or the effective user,
//! and writable by others only with the sticky bit set (as `/tmp`), so nobody else can rename
//! it away between a check and a use. Once a directory is open, everything below it is
//! reached through `openat`/`mkdirat`/`unlinkat` on its descriptor with `O_NOFOLLOW`, never
//! by path, so nothing can be swapped in between the check and the use.
//!
//! This module never removes or writes anything outside a directory it has opened and
//! checked, and removes trees without crossing into other filesystems (mounts).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, CWD};
use rustix::io::Errno;

/// Why a directory or file is not trusted. The CLI reports it as bad input (exit 2): the
/// user named, or the environment points at, something pinstorm must not use.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Untrusted(pub String);

fn untrusted<T>(msg: String) -> Result<T, Untrusted> {
    Err(Untrusted(msg))
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Whether a name is one path component we may create or open: no `/`, not `.` or `..`,
/// not empty, no NUL.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() <= 255
}

fn kind(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Check a directory descriptor: a directory, owned by us, not writable by group or others.
fn check_own_dir_stat(st: &Stat, what: &str, path: &Path) -> Result<(), Untrusted> {
    if kind(st) != FileType::Directory {
        return untrusted(format!("{what} {} is not a directory", path.display()));
    }
    if st.st_uid != euid() {
        return untrusted(format!(
            "{what} {} is owned by uid {}, not by this user (uid {}); pinstorm only uses directories it created. Remove it (after checking what it holds) or name another path",
            path.display(),
            st.st_uid,
            euid()
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return untrusted(format!(
            "{what} {} is writable by group or others (mode {:o}); another user could plant files in it. Remove it or name another path",
            path.display(),
            st.st_mode & 0o7777
        ));
    }
    Ok(())
}

/// Walk `path` (absolute, already free of `..`) from `/` with `O_NOFOLLOW` and check every
/// component, the last one included: owned by root or us, and writable by others only if
/// sticky. Returns the descriptor of the directory `path` names.
///
/// Symlinks in the path are resolved once up front (`/var/run` is one on Debian); the walk
/// then refuses any symlink it meets, so a link planted after the resolution fails.
fn open_checked_path(path: &Path, what: &str) -> Result<OwnedFd, Untrusted> {
    let canon = path
        .canonicalize()
        .map_err(|e| Untrusted(format!("{what} {}: cannot resolve it: {e}", path.display())))?;
    let mut fd = rustix::fs::openat(CWD, "/", DIR_FLAGS, Mode::empty())
        .map_err(|e| Untrusted(format!("opening /: {e}")))?;
    let mut walked = PathBuf::from("/");
    for c in canon.components() {
        let Component::Normal(name) = c else { continue };
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| Untrusted(format!("fstat {}: {e}", walked.display())))?;
        check_ancestor(&st, &walked, what, path)?;
        fd = rustix::fs::openat(&fd, name, DIR_FLAGS, Mode::empty()).map_err(|e| {
            Untrusted(format!(
                "{what} {}: opening {} (without following symlinks): {e}",
                path.display(),
                walked.join(name).display()
            ))
        })?;
        walked.push(name);
    }
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| Untrusted(format!("fstat {}: {e}", walked.display())))?;
    check_ancestor(&st, &walked, what, path)?;
    Ok(fd)
}

fn check_ancestor(st: &Stat, dir: &Path, what: &str, path: &Path) -> Result<(), Untrusted> {
    let owner_ok = st.st_uid == 0 || st.st_uid == euid();
    let writable_by_others = st.st_mode & 0o022 != 0;
    let sticky = st.st_mode & 0o1000 != 0;
    if !owner_ok || (writable_by_others && !sticky) {
        return untrusted(format!(
            "{what} {}: its ancestor {} is {} (uid {}, mode {:o}), so another user could replace what pinstorm checked; use a path whose every parent directory belongs to root or you and is not writable by others (or is sticky, like /tmp)",
            path.display(),
            dir.display(),
            if !owner_ok { "owned by another user" } else { "writable by others without the sticky bit" },
            st.st_uid,
            st.st_mode & 0o7777
        ));
    }
    Ok(())
}

/// A directory pinstorm created (or proved to be its own), held open.
#[derive(Debug)]
pub struct OwnedDir {
    path: PathBuf,
    fd: OwnedFd,
    dev: u64,
}

/// What a marker file says: the first line of `.pinstorm` in a directory pinstorm owns.
pub const MARKER: &str = ".pinstorm";

impl OwnedDir {
    /// Open `path` as a directory of ours marked `marker` (its marker's first line), creating
    /// it (mode 0700, with the marker) if it does not exist. Its parent must exist.
    pub fn create_or_open(path: &Path, marker: &str, what: &str) -> Result<OwnedDir, Untrusted> {
        let (parent, name) = split(path, what)?;
        let pfd = open_checked_path(parent, what)?;
        match rustix::fs::mkdirat(&pfd, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {
                let d = OwnedDir::open_child_fd(&pfd, name, path.to_path_buf(), what)?;
                rustix::fs::fchmod(&d.fd, Mode::from_raw_mode(0o700))
                    .map_err(|e| Untrusted(format!("chmod {}: {e}", path.display())))?;
                d.write_marker(marker)?;
                Ok(d)
            }
            Err(Errno::EXIST) => {
                let d = OwnedDir::open_child_fd(&pfd, name, path.to_path_buf(), what)?;
                d.check_marker(marker, what)?;
                Ok(d)
            }
            Err(e) => untrusted(format!("{what} {}: mkdir: {e}", path.display())),
        }
    }

    /// Open an existing directory of ours marked `marker`; never creates anything.
    pub fn open_existing(path: &Path, marker: &str, what: &str) -> Result<OwnedDir, Untrusted> {
        let (parent, name) = split(path, what)?;
        let pfd = open_checked_path(parent, what)?;
        let d = OwnedDir::open_child_fd(&pfd, name, path.to_path_buf(), what)?;
        d.check_marker(marker, what)?;
        Ok(d)
    }

    fn open_child_fd(
        parent: &OwnedFd,
        name: &str,
        path: PathBuf,
        what: &str,
    ) -> Result<OwnedDir, Untrusted> {
        let fd = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()).map_err(|e| {
            Untrusted(if e == Errno::LOOP || e == Errno::NOTDIR {
                format!(
                    "{what} {} is a symlink or not a directory; refusing to follow it",
                    path.display()
                )
            } else {
                format!("{what} {}: {e}", path.display())
            })
        })?;
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| Untrusted(format!("fstat {}: {e}", path.display())))?;
        check_own_dir_stat(&st, what, &path)?;
        Ok(OwnedDir {
            path,
            fd,
            dev: st.st_dev,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The marker's text, if this directory has one that is a regular file of ours.
    pub fn marker(&self) -> Option<String> {
        let mut f = self.open_file(MARKER).ok()?;
        let mut s = String::new();
        (&mut f).take(4096).read_to_string(&mut s).ok()?;
        Some(s)
    }

    fn check_marker(&self, marker: &str, what: &str) -> Result<(), Untrusted> {
        match self.marker() {
            Some(m) if m.lines().next() == Some(marker) => Ok(()),
            Some(_) => untrusted(format!(
                "{what} {} carries a marker of something else (not \"{marker}\"); name another path",
                self.path.display()
            )),
            None => untrusted(format!(
                "{what} {} exists but was not made by pinstorm (no {MARKER} marker of ours); pinstorm creates this directory itself. Remove it (after checking what it holds) or name a path that does not exist yet",
                self.path.display()
            )),
        }
    }

    fn write_marker(&self, marker: &str) -> Result<(), Untrusted> {
        let mut f = self
            .create_file(MARKER)
            .map_err(|e| Untrusted(format!("writing {}/{MARKER}: {e}", self.path.display())))?;
        writeln!(f, "{marker}")
            .and_then(|()| f.sync_all())
            .map_err(|e| Untrusted(format!("writing {}/{MARKER}: {e}", self.path.display())))
    }

    /// Create a new subdirectory (mode 0700, `EEXIST` is an error: a name we did not make
    /// is never adopted), optionally with a marker.
    pub fn create_dir(&self, name: &str, marker: Option<&str>) -> Result<OwnedDir, Untrusted> {
        make_child(&self.fd, &self.path, name, marker)
    }

    /// Open a subdirectory that must be ours (owner, mode, no symlink).
    pub fn open_dir(&self, name: &str) -> Result<OwnedDir, Untrusted> {
        open_child(&self.fd, &self.path, name)
    }

    /// Create a new file (`O_EXCL`, `O_NOFOLLOW`, mode 0600).
    pub fn create_file(&self, name: &str) -> std::io::Result<File> {
        self.create_file_mode(name, 0o600)
    }

    pub fn create_file_mode(&self, name: &str, mode: u32) -> std::io::Result<File> {
        self.child_path(name).map_err(std::io::Error::other)?;
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?;
        Ok(File::from(fd))
    }

    /// Open an existing file that must be a regular file of ours with one link, not
    /// writable by group or others.
    pub fn open_file(&self, name: &str) -> std::io::Result<File> {
        self.child_path(name).map_err(std::io::Error::other)?;
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if kind(&st) != FileType::RegularFile
            || st.st_uid != euid()
            || st.st_mode & 0o022 != 0
            || st.st_nlink != 1
        {
            return Err(std::io::Error::other(format!(
                "{}/{name} is not a regular file of ours (uid {}, mode {:o}, {} links)",
                self.path.display(),
                st.st_uid,
                st.st_mode & 0o7777,
                st.st_nlink
            )));
        }
        Ok(File::from(fd))
    }

    /// Names in this directory (not `.`/`..`), sorted.
    pub fn names(&self) -> Vec<String> {
        let Ok(fd) = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty()) else {
            return Vec::new();
        };
        let Ok(dir) = rustix::fs::Dir::new(fd) else {
            return Vec::new();
        };
        let mut v: Vec<String> = dir
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_str().ok()?.to_string();
                (n != "." && n != "..").then_some(n)
            })
            .collect();
        v.sort();
        v
    }

    fn child_path(&self, name: &str) -> Result<PathBuf, Untrusted> {
        child_of(&self.path, name)
    }

    /// The path of a child for tools that need a path (mkfs, losetup, mount). Only for
    /// children this directory's owner created: the directory is ours and not writable by
    /// others, so nobody else can swap the entry.
    pub fn join(&self, name: &str) -> PathBuf {
        debug_assert!(plain_name(name), "{name:?}");
        self.path.join(name)
    }

    /// Remove the file `name` (not a directory), if present.
    pub fn remove_file(&self, name: &str) -> std::io::Result<()> {
        self.child_path(name).map_err(std::io::Error::other)?;
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove the subdirectory `name` and everything in it, through descriptors, without
    /// following symlinks, without descending into another filesystem (a mount point is
    /// left alone and reported), and only if the subdirectory is ours.
    pub fn remove_tree(&self, name: &str) -> std::io::Result<()> {
        let sub = self.open_dir(name).map_err(std::io::Error::other)?;
        sub.empty_self()?;
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove this directory, a subdirectory pinstorm made in a user scratch directory:
    /// emptied through its descriptor (never following a link, never crossing a mount),
    /// then its name removed from the parent, reopened with the ancestor checks.
    pub fn remove_from_user_dir(&self) -> std::io::Result<()> {
        let (parent, name) = split(&self.path, "directory").map_err(std::io::Error::other)?;
        self.empty_self()?;
        let (pfd, _) = open_user_dir(parent, "scratch directory").map_err(std::io::Error::other)?;
        rustix::fs::unlinkat(&pfd, name, AtFlags::REMOVEDIR).map_err(Into::into)
    }

    /// Remove everything inside this directory (not itself).
    pub fn empty_self(&self) -> std::io::Result<()> {
        remove_contents(&self.fd, self.dev, &self.path)
    }
}

fn remove_contents(fd: &OwnedFd, dev: u64, path: &Path) -> std::io::Result<()> {
    let dirfd = rustix::fs::openat(fd, ".", DIR_FLAGS, Mode::empty())?;
    let dir = rustix::fs::Dir::new(dirfd)?;
    let mut first_err: Option<std::io::Error> = None;
    for e in dir {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name).to_os_string();
        let r = (|| -> std::io::Result<()> {
            let st = rustix::fs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW)?;
            if kind(&st) == FileType::Directory {
                if st.st_dev != dev {
                    return Err(std::io::Error::other(format!(
                        "{} is another filesystem (a mount point); not descending into it",
                        path.join(&name).display()
                    )));
                }
                let sub = rustix::fs::openat(fd, &name, DIR_FLAGS, Mode::empty())?;
                let sst = rustix::fs::fstat(&sub)?;
                if sst.st_dev != dev || sst.st_ino != st.st_ino {
                    return Err(std::io::Error::other(format!(
                        "{} changed while being removed",
                        path.join(&name).display()
                    )));
                }
                remove_contents(&sub, dev, &path.join(&name))?;
                rustix::fs::unlinkat(fd, &name, AtFlags::REMOVEDIR)?;
            } else {
                rustix::fs::unlinkat(fd, &name, AtFlags::empty())?;
            }
            Ok(())
        })();
        if let Err(err) = r {
            first_err.get_or_insert(err);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn split<'a>(path: &'a Path, what: &str) -> Result<(&'a Path, &'a str), Untrusted> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return untrusted(format!(
            "{what} {} must be an absolute path without '..'",
            path.display()
        ));
    }
    let name = path.file_name().and_then(|n| n.to_str());
    match (path.parent(), name) {
        (Some(p), Some(n)) if plain_name(n) => Ok((p, n)),
        _ => untrusted(format!(
            "{what} {} has no usable last component",
            path.display()
        )),
    }
}

/// Check, by descriptor, that `path` names a directory whose every component is safe (see
/// the module doc) and that is not writable by others; for directories the user names as
/// scratch (`--scratch-dir`, `--dax-dir`), which pinstorm does not own but creates its own
/// subdirectory in. Returns the open directory.
pub fn open_user_dir(path: &Path, what: &str) -> Result<(OwnedFd, Stat), Untrusted> {
    let fd = open_checked_path(path, what)?;
    let st = rustix::fs::fstat(&fd).map_err(|e| Untrusted(format!("fstat: {e}")))?;
    Ok((fd, st))
}

/// Check, by descriptor, that `path` is a directory of ours (owner, not writable by group or
/// others, not a symlink) with safe ancestors; for caches pinstorm keeps (the lab's), whose
/// contents it deletes.
pub fn check_own_dir(path: &Path, what: &str) -> Result<(), Untrusted> {
    let fd = open_checked_path(path, what)?;
    let st = rustix::fs::fstat(&fd).map_err(|e| Untrusted(format!("fstat: {e}")))?;
    let lst = std::fs::symlink_metadata(path)
        .map_err(|e| Untrusted(format!("{what} {}: {e}", path.display())))?;
    if lst.file_type().is_symlink() {
        return untrusted(format!(
            "{what} {} is a symlink; name the directory itself",
            path.display()
        ));
    }
    check_own_dir_stat(&st, what, path)
}

/// Open the subdirectory `name` of the user's scratch directory `parent` (opened with
/// [`open_user_dir`]) as ours: owner, mode, no symlink, marker `marker`.
pub fn open_marked_child(
    parent: &OwnedFd,
    parent_path: &Path,
    name: &str,
    marker: &str,
) -> Result<OwnedDir, Untrusted> {
    let d = open_child(parent, parent_path, name)?;
    d.check_marker(marker, "directory")?;
    Ok(d)
}

/// Create the subdirectory `name` of a user's scratch directory, with a marker.
pub fn create_marked_child(
    parent: &OwnedFd,
    parent_path: &Path,
    name: &str,
    marker: &str,
) -> Result<OwnedDir, Untrusted> {
    make_child(parent, parent_path, name, Some(marker))
}

/// `parent_path/name`, if `name` is one plain path component.
fn child_of(parent_path: &Path, name: &str) -> Result<PathBuf, Untrusted> {
    if !plain_name(name) {
        return untrusted(format!(
            "{name:?} is not a plain file name (in {})",
            parent_path.display()
        ));
    }
    Ok(parent_path.join(name))
}

/// `mkdirat` a new subdirectory (mode 0700; an existing name is an error, never adopted),
/// open it as ours and mark it if asked.
fn make_child(
    parent: &OwnedFd,
    parent_path: &Path,
    name: &str,
    marker: Option<&str>,
) -> Result<OwnedDir, Untrusted> {
    let path = child_of(parent_path, name)?;
    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
        .map_err(|e| Untrusted(format!("mkdir {}: {e}", path.display())))?;
    let d = OwnedDir::open_child_fd(parent, name, path, "directory")?;
    if let Some(m) = marker {
        d.write_marker(m)?;
    }
    Ok(d)
}

/// Open an existing subdirectory that must be ours (owner, mode, no symlink).
fn open_child(parent: &OwnedFd, parent_path: &Path, name: &str) -> Result<OwnedDir, Untrusted> {
    let path = child_of(parent_path, name)?;
    OwnedDir::open_child_fd(parent, name, path, "directory")
}

/// Remove a marked child of a user scratch directory (see [`open_marked_child`]).
pub fn remove_marked_child(
    parent: &OwnedFd,
    parent_path: &Path,
    name: &str,
    marker: &str,
) -> std::io::Result<()> {
    let d = open_marked_child(parent, parent_path, name, marker).map_err(std::io::Error::other)?;
    d.empty_self()?;
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR).map_err(Into::into)
}
