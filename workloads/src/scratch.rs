//! Scratch ownership: the only places pinstorm writes, creates files, mounts or changes
//! sysctls, and the journal that lets a later run undo what a killed run left.
//!
//! Rules enforced here (DEVELOPERS.md, rule 3 and 4):
//! - every path used for writing is absolute, non-empty, free of `..`, and not a system
//!   directory; anything else is a hard error, never a fallback to `/` or the working
//!   directory;
//! - pinstorm only creates, truncates, punches or deletes files it created itself
//!   ([`ScratchFile`]), inside a run directory it created, inside a scratch root it locked;
//! - every mount, loop device, sysctl change and directory outside the run directory is
//!   journaled *before* it is made, so `clean_leftovers` can undo it after SIGKILL.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use crate::mounts;

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
    Ok(canon)
}

/// A lock held for a whole run on one scratch root: with it held, every run directory
/// still present belongs to a run that died.
pub struct ScratchRoot {
    path: PathBuf,
    _lock: File,
}

impl ScratchRoot {
    pub fn open(path: &Path) -> Result<ScratchRoot> {
        let path = checked_write_path(path, "scratch root")?;
        if SYSTEM_DIRS.iter().any(|s| Path::new(s) == path) {
            bail!("scratch root {:?} is a system directory; use a directory of its own, e.g. /tmp/pinstorm", path);
        }
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating scratch root {:?}", path))?;
        let lock_path = path.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .open(&lock_path)
            .with_context(|| format!("opening {:?}", lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                anyhow::anyhow!(
                "another pinstorm run holds {:?} ({}); wait for it, or pick another --scratch-root",
                lock_path,
                e
            )
            },
        )?;
        Ok(ScratchRoot { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run directories left by runs that died (we hold the lock, so none is live).
    pub fn leftover_runs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("run-"))
                    && p.join(JOURNAL).exists()
            })
            .collect();
        v.sort();
        v
    }

    pub fn new_run(&self, run_id: &str) -> Result<RunScratch> {
        let dir = self.path.join(format!("run-{run_id}"));
        std::fs::create_dir(&dir).with_context(|| format!("creating run directory {:?}", dir))?;
        let journal = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(dir.join(JOURNAL))
            .with_context(|| format!("creating journal in {:?}", dir))?;
        let run = RunScratch {
            dir,
            journal: Mutex::new(journal),
            seq: AtomicU64::new(0),
        };
        run.record(&JournalEntry::Owner(std::process::id()))?;
        Ok(run)
    }
}

const JOURNAL: &str = "journal";

/// What a run did that must be undone, one journal line each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalEntry {
    Owner(u32),
    /// A sysctl (path below /proc/sys) and its value before pinstorm changed it.
    Sysctl {
        name: String,
        original: String,
    },
    Mount(PathBuf),
    Loop {
        image: PathBuf,
    },
    /// A directory pinstorm created outside the run directory (in a user scratch dir).
    Dir(PathBuf),
}

impl JournalEntry {
    fn line(&self) -> String {
        match self {
            JournalEntry::Owner(pid) => format!("owner\t{pid}"),
            JournalEntry::Sysctl { name, original } => format!("sysctl\t{name}\t{original}"),
            JournalEntry::Mount(p) => format!("mount\t{}", p.display()),
            JournalEntry::Loop { image } => format!("loop\t{}", image.display()),
            JournalEntry::Dir(p) => format!("dir\t{}", p.display()),
        }
    }

    pub fn parse(line: &str) -> Option<JournalEntry> {
        let mut f = line.split('\t');
        Some(match (f.next()?, f.next()?, f.next()) {
            ("owner", pid, None) => JournalEntry::Owner(pid.parse().ok()?),
            ("sysctl", name, Some(orig)) => JournalEntry::Sysctl {
                name: name.into(),
                original: orig.into(),
            },
            ("mount", p, None) => JournalEntry::Mount(p.into()),
            ("loop", p, None) => JournalEntry::Loop { image: p.into() },
            ("dir", p, None) => JournalEntry::Dir(p.into()),
            _ => return None,
        })
    }
}

/// The directory of one run, with its journal. Removed on drop once nothing is mounted
/// below it.
pub struct RunScratch {
    dir: PathBuf,
    journal: Mutex<File>,
    seq: AtomicU64,
}

impl RunScratch {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Append an entry and make it durable before the action it describes is taken.
    pub fn record(&self, e: &JournalEntry) -> Result<()> {
        let mut f = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        writeln!(f, "{}", e.line()).context("writing the scratch journal")?;
        f.sync_data().context("syncing the scratch journal")?;
        Ok(())
    }

    /// A unique name for a file or directory of this run.
    pub fn unique(&self, stem: &str) -> String {
        format!("{stem}-{}", self.seq.fetch_add(1, Ordering::Relaxed))
    }
}

impl Drop for RunScratch {
    fn drop(&mut self) {
        if !mounts::mounts_below(&self.dir).is_empty() {
            eprintln!(
                "pinstorm: not removing {:?}: something is still mounted below it (the next run or `pinstorm cleanup` will retry)",
                self.dir
            );
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A file pinstorm created (`O_CREAT | O_EXCL`) in a directory it owns. Layout operations
/// take this type, so they cannot be pointed at a file pinstorm did not create. Unlinked on
/// drop.
#[derive(Debug)]
pub struct ScratchFile {
    path: ScratchPath,
    file: File,
}

/// The path of a file pinstorm created, with nothing of it open here (a lease holder must be
/// the file's only opener). Unlinked on drop.
#[derive(Debug)]
pub struct ScratchPath {
    path: PathBuf,
}

impl ScratchPath {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ScratchFile {
    pub fn create(dir: &Path, name: &str) -> Result<ScratchFile> {
        let path = checked_write_path(&dir.join(name), "scratch file")?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("creating scratch file {:?}", path))?;
        Ok(ScratchFile {
            path: ScratchPath { path },
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path.path
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

/// What `clean_leftovers` did, for the report.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub actions: Vec<String>,
    pub problems: Vec<String>,
}

/// Undo what a dead run left in `run_dir`: unmount everything below it (deepest first),
/// detach loop devices backed by files below it, restore journaled sysctls, remove
/// journaled directories, then the run directory itself.
pub fn clean_leftover_run(run_dir: &Path) -> Cleaned {
    let mut c = Cleaned::default();
    let entries: Vec<JournalEntry> = std::fs::read_to_string(run_dir.join(JOURNAL))
        .unwrap_or_default()
        .lines()
        .filter_map(JournalEntry::parse)
        .collect();
    let mut targets = mounts::mounts_below(run_dir);
    for e in &entries {
        if let JournalEntry::Mount(p) = e {
            if mounts::mounts().iter().any(|m| &m.mount_point == p) && !targets.contains(p) {
                targets.push(p.clone());
            }
        }
    }
    for m in targets {
        match unmount(&m) {
            Ok(()) => c.actions.push(format!("unmounted {}", m.display())),
            Err(e) => c.problems.push(format!("unmount {}: {e:#}", m.display())),
        }
    }
    for (dev, backing) in mounts::loop_devices() {
        let journaled = entries
            .iter()
            .any(|e| matches!(e, JournalEntry::Loop { image } if *image == backing));
        if backing.starts_with(run_dir) || journaled {
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
    // The first journaled value of a sysctl is the one from before pinstorm touched it.
    let mut restored: Vec<&str> = Vec::new();
    for e in &entries {
        if let JournalEntry::Sysctl { name, original } = e {
            if restored.contains(&name.as_str()) {
                continue;
            }
            restored.push(name);
            match crate::sysctl::write(name, original) {
                Ok(()) => c.actions.push(format!("restored {name} = {original}")),
                Err(err) => c.problems.push(format!("restore {name}: {err:#}")),
            }
        }
    }
    for e in &entries {
        if let JournalEntry::Dir(d) = e {
            if d.exists() && mounts::mounts_below(d).is_empty() {
                match std::fs::remove_dir_all(d) {
                    Ok(()) => c.actions.push(format!("removed {}", d.display())),
                    Err(err) => c.problems.push(format!("remove {}: {err}", d.display())),
                }
            }
        }
    }
    if mounts::mounts_below(run_dir).is_empty() {
        match std::fs::remove_dir_all(run_dir) {
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
        match unmount(path, UnmountFlags::empty()) {
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
    unmount(path, UnmountFlags::DETACH).map_err(|e| anyhow::anyhow!("umount -l {:?}: {e}", path))
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
    fn journal_lines_round_trip() {
        for e in [
            JournalEntry::Owner(42),
            JournalEntry::Sysctl {
                name: "vm/nr_hugepages".into(),
                original: "0".into(),
            },
            JournalEntry::Mount("/tmp/pinstorm/run-x/xfs.mnt".into()),
            JournalEntry::Loop {
                image: "/tmp/pinstorm/run-x/xfs.img".into(),
            },
            JournalEntry::Dir("/scratch/pinstorm.x".into()),
        ] {
            assert_eq!(JournalEntry::parse(&e.line()), Some(e));
        }
        assert_eq!(JournalEntry::parse("bogus\tline"), None);
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
