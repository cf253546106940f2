//! Scratch ownership: the only places pinstorm writes, creates files, mounts or changes
//! sysctls, and the journal that lets a later run undo what a killed run left.
//!
//! Rules enforced here (DEVELOPERS.md, rules 3 and 4; the threat model is in
//! docs/safety.md):
//! - every path used for writing is absolute, non-empty, free of `..`, and not a system
//!   directory; anything else is a hard error, never a fallback to `/` or the working
//!   directory;
//! - the scratch root is created by pinstorm (mode 0700, a marker file) and an existing one
//!   is used only if it passes the ownership checks of [`owned`]; run directories, files
//!   and pinstorm's subdirectories of user scratch directories are created and removed
//!   through directory descriptors, never by a path someone else could swap;
//! - pinstorm only creates, truncates, punches or deletes files it created itself
//!   ([`ScratchFile`]), inside a run directory it created, inside a scratch root it locked;
//! - every mount, loop device, sysctl change and directory outside the run directory is
//!   journaled *before* it is made, so [`clean_leftover_run`] can undo it after SIGKILL;
//!   a journal is replayed only from a run directory of ours, and every entry is checked
//!   again before it is acted on ([`journal`]).

pub mod device;
pub mod journal;
pub mod owned;
mod reserve;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};

use crate::mounts;
pub use crate::sysctl::Sysctl;
pub use device::{DeviceFs, ScratchDevice};
pub use journal::JournalEntry;
pub use owned::{OwnedDir, Untrusted};
pub use reserve::{HugePageReservation, SysctlGuard};

/// Directories pinstorm refuses to write into or treat as scratch, whatever the user says.
const SYSTEM_DIRS: &[&str] = &[
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/opt", "/proc",
    "/root", "/run", "/sbin", "/srv", "/sys", "/usr", "/var", "/var/lib", "/var/log", "/tmp",
    "/var/tmp", "/mnt", "/media", "/dev/shm",
];

/// Check a path that pinstorm is about to write under. `what` names the flag or key the
/// path came from, for the error message.
pub fn checked_write_path(path: &Path, what: &str) -> Result<PathBuf> {
    if path.as_os_str().is_empty() {
        bail!("{what} is empty; refusing to guess a directory to write to");
    }
    if !path.is_absolute() {
        bail!(
            "{what} must be an absolute path, got {:?}; relative paths are refused so nothing is written somewhere unexpected",
            path
        );
    }
    if path.components().any(|c| c == Component::ParentDir) {
        bail!("{what} must not contain '..': {:?}", path);
    }
    Ok(path.to_path_buf())
}

/// Check a directory the user named as scratch: it must exist, be a directory, and not be a
/// system directory itself. Destructive operations happen only in a subdirectory pinstorm
/// creates inside it.
pub fn checked_scratch_dir(path: &Path, what: &str) -> Result<PathBuf> {
    let p = checked_write_path(path, what)?;
    let canon = p
        .canonicalize()
        .with_context(|| format!("{what} {:?} does not exist or cannot be resolved", p))?;
    if !canon.is_dir() {
        bail!("{what} {:?} is not a directory", canon);
    }
    if let Some(sys) = SYSTEM_DIRS.iter().find(|s| Path::new(s) == canon) {
        bail!(
            "{what} {:?} is a system directory ({sys}); name a directory that holds nothing but scratch data, e.g. a fresh directory on the filesystem under test",
            p
        );
    }
    // Ancestors (and the directory itself) must not be replaceable by another user: the
    // subdirectory pinstorm makes in it is reached through descriptors, but a killed run's
    // journal names it by path.
    owned::open_user_dir(&canon, what)?;
    Ok(canon)
}

/// A directory the user named as scratch, checked once where it was named
/// ([`checked_scratch_dir`]), with the flag that named it for messages. Where it is used,
/// pinstorm reaches it through descriptors ([`RunScratch::user_subdir`]), which check again
/// what a path cannot keep true.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScratchDir {
    path: PathBuf,
    flag: String,
}

impl ScratchDir {
    /// Check `path`; `flag` names it in errors (`--scratch-dir`, `--dax-dir xfs=`).
    pub fn new(path: &Path, flag: &str) -> Result<ScratchDir> {
        Ok(ScratchDir {
            path: checked_scratch_dir(path, flag)?,
            flag: flag.to_string(),
        })
    }

    /// The canonical path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn flag(&self) -> &str {
        &self.flag
    }
}

/// The first line of the marker file in a scratch root pinstorm made.
pub const ROOT_MARKER: &str = "pinstorm scratch root";
const JOURNAL: &str = "journal";
const LOCK: &str = ".lock";

/// The marker of pinstorm's subdirectory of a user scratch directory for run `run_id`.
pub fn user_dir_marker(run_id: &str) -> String {
    format!("pinstorm scratch directory of run {run_id}")
}

/// The default scratch root: one no other user can pre-create. Root: `/run/pinstorm`
/// (cleared at boot, writable only by root). Others: `$XDG_RUNTIME_DIR/pinstorm` (a
/// directory of the user's own), else `$TMPDIR/pinstorm-$UID`. Whichever it is, an existing
/// one is used only after [`ScratchRoot::open`]'s checks.
pub fn default_scratch_root() -> Result<PathBuf> {
    let uid = rustix::process::geteuid().as_raw();
    if uid == 0 && Path::new("/run").is_dir() {
        return Ok(PathBuf::from("/run/pinstorm"));
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        let x = PathBuf::from(x);
        // Only a runtime directory that is really the user's own (as pam_systemd makes it).
        if x.is_absolute() && owned::open_user_dir(&x, "XDG_RUNTIME_DIR").is_ok() {
            let own = std::fs::metadata(&x).is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.uid() == uid && m.mode() & 0o077 == 0
            });
            if own {
                return Ok(x.join("pinstorm"));
            }
        }
    }
    let t = std::env::var_os("TMPDIR")
        .filter(|t| !t.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    Ok(checked_write_path(&t, "TMPDIR")?.join(format!("pinstorm-{uid}")))
}

/// A scratch root of ours, locked for a whole run: with the lock held, every run directory
/// still present belongs to a run that died.
pub struct ScratchRoot {
    dir: Arc<OwnedDir>,
    _lock: File,
}

/// A run directory found in the scratch root: ours (with its journal), or not.
#[derive(Debug)]
pub enum Leftover {
    Ours {
        dir: OwnedDir,
        run_id: String,
        journal: journal::Journal,
    },
    NotOurs {
        path: PathBuf,
        why: String,
    },
}

impl ScratchRoot {
    /// Create the scratch root (mode 0700, with a marker), or open an existing one that
    /// passes the checks of [`OwnedDir::create_or_open`]; then lock it. A root that fails
    /// them is an [`Untrusted`] error, which the CLI reports as bad input.
    pub fn open(path: &Path) -> Result<ScratchRoot> {
        let path = checked_write_path(path, "scratch root")?;
        if SYSTEM_DIRS.iter().any(|s| Path::new(s) == path) {
            bail!(Untrusted(format!(
                "scratch root {} is a system directory; name a directory of its own, e.g. /run/pinstorm",
                path.display()
            )));
        }
        let dir = OwnedDir::create_or_open(&path, ROOT_MARKER, "scratch root")?;
        let lock = match dir.open_file(LOCK) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => dir
                .create_file(LOCK)
                .with_context(|| format!("creating {}/{LOCK}", path.display()))?,
            Err(e) => bail!(Untrusted(format!("scratch root {}: {e}", path.display()))),
        };
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                anyhow::anyhow!(
                    "another pinstorm run holds {}/{LOCK} ({e}); wait for it, or pick another --scratch-root",
                    path.display()
                )
            },
        )?;
        Ok(ScratchRoot {
            dir: Arc::new(dir),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Run directories left by runs that died (we hold the lock, so none is live), each
    /// checked: ours with a journal of ours, or not ours and never touched.
    pub fn leftover_runs(&self) -> Vec<Leftover> {
        let mut out = Vec::new();
        for name in self.dir.names() {
            let Some(run_id) = name.strip_prefix("run-") else {
                continue;
            };
            let path = self.dir.path().join(&name);
            let dir = match self.dir.open_dir(&name) {
                Ok(d) => d,
                Err(e) => {
                    out.push(Leftover::NotOurs { path, why: e.0 });
                    continue;
                }
            };
            let text = match dir.open_file(JOURNAL) {
                Ok(f) => {
                    let mut s = String::new();
                    match f.take(1 << 20).read_to_string(&mut s) {
                        Ok(_) => s,
                        Err(e) => {
                            out.push(Leftover::NotOurs {
                                path,
                                why: format!("journal unreadable: {e}"),
                            });
                            continue;
                        }
                    }
                }
                Err(e) => {
                    out.push(Leftover::NotOurs {
                        path,
                        why: format!("no journal of ours: {e}"),
                    });
                    continue;
                }
            };
            match journal::parse(&text, run_id) {
                Ok(journal) => out.push(Leftover::Ours {
                    dir,
                    run_id: run_id.to_string(),
                    journal,
                }),
                Err(why) => out.push(Leftover::NotOurs {
                    path,
                    why: format!("journal not ours: {why}"),
                }),
            }
        }
        out
    }

    pub fn new_run(&self, run_id: &str) -> Result<RunScratch> {
        let name = format!("run-{run_id}");
        if !owned::plain_name(&name) {
            bail!("run id {run_id:?} cannot name a directory");
        }
        let dir = self.dir.create_dir(&name, None)?;
        let mut journal = dir
            .create_file(JOURNAL)
            .with_context(|| format!("creating the journal in {}", dir.path().display()))?;
        writeln!(journal, "{}", journal::header(run_id))
            .and_then(|()| journal.sync_all())
            .context("writing the scratch journal")?;
        let run = RunScratch {
            dir: Arc::new(dir),
            root: self.dir.clone(),
            name,
            run_id: run_id.to_string(),
            journal: JournalHandle(Arc::new(Mutex::new(journal))),
            seq: AtomicU64::new(0),
        };
        run.record(&JournalEntry::Owner(std::process::id()))?;
        Ok(run)
    }

    /// Undo what a dead run left (see [`clean_leftover_run`]).
    pub fn clean(&self, leftover: Leftover) -> Cleaned {
        clean_leftover_run(&self.dir, leftover)
    }
}

/// The directory of one run, with its journal. Removed on drop once nothing is mounted
/// below it.
pub struct RunScratch {
    dir: Arc<OwnedDir>,
    root: Arc<OwnedDir>,
    name: String,
    run_id: String,
    journal: JournalHandle,
    seq: AtomicU64,
}

/// The run's journal, for code that outlives a borrow of the [`RunScratch`] (a storm's
/// threads): [`JournalHandle::record`] appends and syncs an entry like
/// [`RunScratch::record`].
#[derive(Clone)]
pub struct JournalHandle(Arc<Mutex<File>>);

impl JournalHandle {
    /// Append an entry and make it durable before the action it describes is taken.
    pub fn record(&self, e: &JournalEntry) -> Result<()> {
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        writeln!(f, "{}", e.line()).context("writing the scratch journal")?;
        f.sync_data().context("syncing the scratch journal")?;
        Ok(())
    }
}

impl std::fmt::Debug for JournalHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JournalHandle")
    }
}

impl RunScratch {
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The run directory, open: create files and directories in it through this.
    pub fn owned(&self) -> &Arc<OwnedDir> {
        &self.dir
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Append an entry and make it durable before the action it describes is taken.
    pub fn record(&self, e: &JournalEntry) -> Result<()> {
        self.journal.record(e)
    }

    /// The journal, for threads that outlive a borrow of this run directory.
    pub fn journal(&self) -> JournalHandle {
        self.journal.clone()
    }

    /// A unique name for a file or directory of this run.
    pub fn unique(&self, stem: &str) -> String {
        format!("{stem}-{}", self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Make pinstorm's own subdirectory of a user scratch directory (`--scratch-dir`,
    /// `--dax-dir`): journaled first, created with `mkdirat` (an existing entry of that name
    /// is never adopted), mode 0700, marked with this run's id.
    pub fn user_subdir(&self, parent: &Path, what: &str) -> Result<OwnedDir> {
        let (pfd, _) = owned::open_user_dir(parent, what)?;
        let name = format!("pinstorm.{}", self.name);
        self.record(&JournalEntry::Dir {
            parent: parent.to_path_buf(),
            name: name.clone(),
        })?;
        Ok(owned::create_marked_child(
            &pfd,
            parent,
            &name,
            &user_dir_marker(&self.run_id),
        )?)
    }
}

impl Drop for RunScratch {
    fn drop(&mut self) {
        if !mounts::mounts_below(self.dir.path()).is_empty() {
            eprintln!(
                "pinstorm: not removing {:?}: something is still mounted below it (the next run or `pinstorm cleanup` will retry)",
                self.dir.path()
            );
            return;
        }
        if let Err(e) = self.root.remove_tree(&self.name) {
            eprintln!("pinstorm: removing {}: {e}", self.dir.path().display());
        }
    }
}

/// A file pinstorm created (`O_CREAT | O_EXCL | O_NOFOLLOW`, through the descriptor of a
/// directory it owns). Layout operations take this type, so they cannot be pointed at a
/// file pinstorm did not create. Unlinked on drop.
#[derive(Debug)]
pub struct ScratchFile {
    path: ScratchPath,
    file: File,
}

/// The path of a file pinstorm created, with nothing of it open here (a lease holder must be
/// the file's only opener). Unlinked on drop, through its directory's descriptor.
#[derive(Debug)]
pub struct ScratchPath {
    dir: Arc<OwnedDir>,
    name: String,
    path: PathBuf,
}

impl ScratchPath {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchPath {
    fn drop(&mut self) {
        let _ = self.dir.remove_file(&self.name);
    }
}

impl ScratchFile {
    pub fn create(dir: &Arc<OwnedDir>, name: &str) -> Result<ScratchFile> {
        let path = checked_write_path(&dir.path().join(name), "scratch file")?;
        let file = dir
            .create_file(name)
            .with_context(|| format!("creating scratch file {:?}", path))?;
        Ok(ScratchFile {
            path: ScratchPath {
                dir: dir.clone(),
                name: name.to_string(),
                path,
            },
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path.path
    }

    /// The directory the file was made in.
    pub fn dir(&self) -> &Arc<OwnedDir> {
        &self.path.dir
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Close the descriptor, keep ownership of the file.
    pub fn into_closed(self) -> ScratchPath {
        drop(self.file);
        self.path
    }
}

/// What `clean_leftover_run` did, for the report.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub actions: Vec<String>,
    pub problems: Vec<String>,
}

/// Undo what a dead run left: unmount everything below its directory (deepest first),
/// detach loop devices backed by files in it, restore journaled sysctls (allow-listed, the
/// first value journaled for each), remove pinstorm's marked subdirectories of user scratch
/// directories, then the run directory itself. A run directory that is not ours is left
/// alone and reported.
pub fn clean_leftover_run(root: &OwnedDir, leftover: Leftover) -> Cleaned {
    let mut c = Cleaned::default();
    let (dir, run_id, journal) = match leftover {
        Leftover::Ours {
            dir,
            run_id,
            journal,
        } => (dir, run_id, journal),
        Leftover::NotOurs { path, why } => {
            c.problems.push(format!(
                "left alone {} (not a run directory of ours: {why})",
                path.display()
            ));
            return c;
        }
    };
    let run_dir = dir.path().to_path_buf();
    for why in &journal.refused {
        c.problems.push(format!(
            "refused a journal line of {}: {why}",
            run_dir.display()
        ));
    }
    for m in mounts::mounts_below(&run_dir) {
        match unmount(&m) {
            Ok(()) => c.actions.push(format!("unmounted {}", m.display())),
            Err(e) => c.problems.push(format!("unmount {}: {e:#}", m.display())),
        }
    }
    // Loop devices whose backing file is in the run directory, which is ours and which
    // nobody else can write to; a journaled image name elsewhere is never trusted.
    for (dev, backing) in mounts::loop_devices() {
        if backing.parent() == Some(run_dir.as_path()) {
            match detach_loop(&dev) {
                Ok(()) => c.actions.push(format!(
                    "detached {} ({})",
                    dev.display(),
                    backing.display()
                )),
                Err(e) => c.problems.push(format!("detach {}: {e:#}", dev.display())),
            }
        }
    }
    let mut restored: Vec<Sysctl> = Vec::new();
    for e in &journal.entries {
        if let JournalEntry::Sysctl { sysctl, original } = e {
            if restored.contains(sysctl) {
                continue;
            }
            restored.push(*sysctl);
            match crate::sysctl::write(*sysctl, original) {
                Ok(()) => c.actions.push(format!("restored {sysctl} = {original}")),
                Err(err) => c.problems.push(format!("restore {sysctl}: {err:#}")),
            }
        }
    }
    // Memory blocks a memory operation took offline: put back online the way they were
    // (journaled before the offline; a block that is online again is left alone).
    let mut onlined: Vec<u32> = Vec::new();
    for e in &journal.entries {
        if let JournalEntry::MemoryBlock { block, online } = e {
            if onlined.contains(block) {
                continue;
            }
            onlined.push(*block);
            match crate::memblock::restore(*block, *online) {
                Ok(Some(done)) => c.actions.push(done),
                Ok(None) => {}
                Err(err) => c.problems.push(format!("memory{block}: {err:#}")),
            }
        }
    }
    let own_subdir = format!("pinstorm.run-{run_id}");
    for e in &journal.entries {
        if let JournalEntry::Dir { parent, name } = e {
            let shown = parent.join(name);
            if *name != own_subdir {
                c.problems.push(format!(
                    "refused to remove {}: not the name this run gives its directories",
                    shown.display()
                ));
                continue;
            }
            let (pfd, _) = match owned::open_user_dir(parent, "scratch directory") {
                Ok(p) => p,
                Err(e) => {
                    c.problems
                        .push(format!("refused to remove {}: {e}", shown.display()));
                    continue;
                }
            };
            if !mounts::mounts_below(&shown).is_empty() {
                c.problems.push(format!(
                    "{} has mounts below it; left in place",
                    shown.display()
                ));
                continue;
            }
            match owned::remove_marked_child(&pfd, parent, name, &user_dir_marker(&run_id)) {
                Ok(()) => c.actions.push(format!("removed {}", shown.display())),
                // Journaled before it was made: a run killed in between left nothing.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => c
                    .problems
                    .push(format!("refused to remove {}: {err}", shown.display())),
            }
        }
    }
    if mounts::mounts_below(&run_dir).is_empty() {
        let name = run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        drop(dir);
        match root.remove_tree(&name) {
            Ok(()) => c.actions.push(format!("removed {}", run_dir.display())),
            Err(err) => c
                .problems
                .push(format!("remove {}: {err}", run_dir.display())),
        }
    } else {
        c.problems.push(format!(
            "{} still has mounts below it; left in place",
            run_dir.display()
        ));
    }
    c
}

/// Unmount, retrying briefly on EBUSY (a just-closed file can hold the mount for a moment),
/// then detach lazily so a stuck user cannot keep the mount forever.
pub fn unmount(path: &Path) -> Result<()> {
    use rustix::mount::{unmount, UnmountFlags};
    for _ in 0..20 {
        match unmount(path, UnmountFlags::NOFOLLOW) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::BUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(rustix::io::Errno::INVAL)
                if !mounts::mounts().iter().any(|m| m.mount_point == path) =>
            {
                return Ok(())
            }
            Err(e) => return Err(anyhow::anyhow!("umount {:?}: {e}", path)),
        }
    }
    unmount(path, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
        .map_err(|e| anyhow::anyhow!("umount -l {:?}: {e}", path))
}

/// Detach a loop device with util-linux's `losetup -d`.
pub fn detach_loop(dev: &Path) -> Result<()> {
    let out = std::process::Command::new("losetup")
        .arg("-d")
        .arg(dev)
        .output()
        .context("running losetup -d")?;
    if !out.status.success() {
        bail!(
            "losetup -d {}: {}",
            dev.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_relative_write_paths_are_hard_errors() {
        let e = checked_write_path(Path::new(""), "--results")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--results is empty"), "{e}");
        let e = checked_write_path(Path::new("results"), "--results")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be an absolute path"), "{e}");
        let e = checked_write_path(Path::new("/tmp/../etc"), "--results")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'..'"), "{e}");
        assert!(checked_write_path(Path::new("/tmp/x"), "--results").is_ok());
    }

    #[test]
    fn system_directories_are_refused_as_scratch() {
        for d in ["/etc", "/", "/usr", "/tmp"] {
            let e = checked_scratch_dir(Path::new(d), "--scratch-dir")
                .unwrap_err()
                .to_string();
            assert!(e.contains("system directory"), "{d}: {e}");
        }
        let e = checked_scratch_dir(Path::new("/nonexistent/pinstorm"), "--scratch-dir")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn a_second_run_on_the_same_scratch_root_is_refused() {
        let base = std::env::temp_dir().join(format!("pinstorm-test-lock-{}", std::process::id()));
        let first = ScratchRoot::open(&base).unwrap();
        let e = ScratchRoot::open(&base)
            .err()
            .expect("second open must fail")
            .to_string();
        assert!(e.contains("another pinstorm run holds"), "{e}");
        drop(first);
        let again = ScratchRoot::open(&base).unwrap();
        drop(again);
        std::fs::remove_dir_all(&base).unwrap();
    }
}

#[cfg(test)]
mod trust_tests;
