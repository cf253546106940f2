//! The lab cache: whose it is, one lab at a time (a lock), and the run directories of guests,
//! which a killed lab leaves behind and the next one cleans.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use pinstorm_runners::run::new_run_id;
use pinstorm_workloads::scratch;

use crate::vm;

/// A lock on the cache for the whole lab run: with it held, every run directory left under
/// `CACHE/runs` belongs to a lab that died, and is cleaned.
pub(crate) struct CacheLock {
    _f: File,
}

/// The file that marks a directory as a pinstorm lab cache, and one of its run directories.
const CACHE_MARKER: &str = ".pinstorm-lab-cache";
const RUN_MARKER: &str = ".pinstorm-lab-run";

pub(crate) fn lock_cache(cache: &Path) -> Result<CacheLock> {
    // A cache is a directory pinstorm made (or an empty one): never a directory with other
    // data in it, since cleanup removes what it finds under runs/.
    if let Some(sys) = [
        "/", "/tmp", "/var", "/var/tmp", "/home", "/root", "/usr", "/etc", "/srv", "/opt", "/mnt",
    ]
    .iter()
    .find(|s| Path::new(s) == cache)
    {
        bail!("--cache {} is a system directory ({sys}); name a directory of its own, e.g. ~/.cache/pinstorm", cache.display());
    }
    if cache.exists() && !cache.join(CACHE_MARKER).exists() {
        // Only what a lab (or scripts/lab-setup.sh, which makes the venv, and
        // scripts/validators-setup.sh, the validators' venv) puts there.
        let foreign = std::fs::read_dir(cache)
            .with_context(|| format!("--cache {}", cache.display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| {
                let known = matches!(
                    n.as_str(),
                    "venv"
                        | "validators"
                        | "kernels"
                        | "builds"
                        | "apt"
                        | "downloads"
                        | "runs"
                        | "nvdimm"
                        | "kselftests"
                        | "lab.lock"
                ) || n.starts_with("accel-");
                !known
            });
        if foreign.is_some() {
            bail!(
                "--cache {} holds files but is not a pinstorm lab cache (no {CACHE_MARKER}); refusing to use it, since the lab deletes what it leaves in there. Name an empty or new directory.",
                cache.display()
            );
        }
    }
    std::fs::create_dir_all(cache)
        .with_context(|| format!("creating --cache {}", cache.display()))?;
    // The lab deletes run directories in here as root: the cache must be ours (owner, mode,
    // no symlink, parents nobody else can rename in), not just carry the marker.
    scratch::owned::check_own_dir(cache, "--cache")?;
    std::fs::write(cache.join(CACHE_MARKER), "pinstorm lab cache\n")
        .with_context(|| format!("writing {}", cache.join(CACHE_MARKER).display()))?;
    let lock_path = cache.join("lab.lock");
    let f =
        File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        anyhow::anyhow!(
            "another pinstorm lab is using the cache {} (it is locked); wait for it or use --cache",
            cache.display()
        )
    })?;
    Ok(CacheLock { _f: f })
}

/// Kill guests and remove run directories that a killed lab left in `cache/runs`.
/// Call only with the cache lock held.
pub fn clean_leftovers(cache: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let runs = cache.join("runs");
    for e in std::fs::read_dir(&runs).into_iter().flatten().flatten() {
        let dir = e.path();
        if !dir.join(RUN_MARKER).is_file() {
            out.push(format!(
                "left alone {} (not a pinstorm lab run directory)",
                dir.display()
            ));
            continue;
        }
        if let Some(m) = vm::kill_leftover(&dir.join("pgid"), &dir) {
            out.push(m);
        }
        if vm::run_dir_processes(&dir) {
            out.push(format!(
                "PROBLEM: processes of {} survive SIGKILL; kept it so a later cleanup finds them",
                dir.display()
            ));
            continue;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => out.push(format!(
                "removed {} (left by a killed lab run)",
                dir.display()
            )),
            Err(err) => out.push(format!(
                "PROBLEM: could not remove {}: {err}",
                dir.display()
            )),
        }
    }
    out.extend(crate::template::clean_partials(cache));
    out
}

/// `pinstorm cleanup --cache`: take the lock and clean.
pub fn cleanup(cache: &Path) -> Result<Vec<String>> {
    let cache = scratch::checked_write_path(cache, "--cache")?;
    if !cache.exists() {
        return Ok(Vec::new());
    }
    let _l = lock_cache(&cache)?;
    Ok(clean_leftovers(&cache))
}

/// A guest's run directory under `CACHE/runs`: the staging directory shared with the guest,
/// the NVDIMM image, vng's HOME and TMPDIR. Removed when dropped (every early return of a
/// kernel's run), unless kept because something in it must survive.
pub(crate) struct RunDir {
    pub id: String,
    pub dir: PathBuf,
    pub stage: PathBuf,
    pub home: PathBuf,
    pub tmp: PathBuf,
    pub nvdimm: PathBuf,
    keep: bool,
}

impl RunDir {
    /// Make a new run directory, marked as the lab's, with an NVDIMM backing file of
    /// `nvdimm` MiB when the guest gets an emulated NVDIMM.
    pub fn create(cache: &Path, nvdimm: Option<u64>) -> Result<RunDir> {
        let id = new_run_id();
        let dir = cache.join("runs").join(&id);
        let run = RunDir {
            stage: dir.join("stage"),
            home: dir.join("home"),
            tmp: dir.join("tmp"),
            nvdimm: dir.join("nvdimm.img"),
            dir,
            id,
            keep: false,
        };
        for d in [&run.stage, &run.home, &run.tmp] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        std::fs::write(run.dir.join(RUN_MARKER), &run.id)?;
        if let Some(mib) = nvdimm {
            File::create(&run.nvdimm)
                .and_then(|f| f.set_len(mib << 20))
                .with_context(|| {
                    format!("creating the NVDIMM backing file {}", run.nvdimm.display())
                })?;
        }
        Ok(run)
    }

    /// Leave the directory in place when this is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("pinstorm-labcache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_cache_is_new_empty_or_ours_and_cleanup_touches_only_marked_runs() {
        assert!(lock_cache(Path::new("/tmp")).is_err());
        let foreign = tmp("foreign");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("thesis.tex"), "precious").unwrap();
        let e = lock_cache(&foreign).err().unwrap().to_string();
        assert!(e.contains("not a pinstorm lab cache"), "{e}");
        assert!(foreign.join("thesis.tex").exists());

        // What the setup scripts make before any lab ran: the cache of a fresh machine.
        let set_up = tmp("setup");
        for d in ["venv", "validators"] {
            std::fs::create_dir_all(set_up.join(d)).unwrap();
        }
        drop(lock_cache(&set_up).unwrap());
        let _ = std::fs::remove_dir_all(&set_up);

        let ours = tmp("ours");
        drop(lock_cache(&ours).unwrap());
        assert!(ours.join(CACHE_MARKER).exists());
        let marked = ours.join("runs/a");
        let unmarked = ours.join("runs/b");
        std::fs::create_dir_all(&marked).unwrap();
        std::fs::create_dir_all(&unmarked).unwrap();
        std::fs::write(marked.join(RUN_MARKER), "a").unwrap();
        let lines = clean_leftovers(&ours);
        assert!(!marked.exists(), "{lines:?}");
        assert!(unmarked.exists(), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("left alone")), "{lines:?}");
        let _ = std::fs::remove_dir_all(&foreign);
        let _ = std::fs::remove_dir_all(&ours);
    }

    #[test]
    fn a_run_directory_is_marked_and_removed_unless_kept() {
        let cache = tmp("rundir");
        drop(lock_cache(&cache).unwrap());
        let run = RunDir::create(&cache, None).unwrap();
        assert!(run.dir.join(RUN_MARKER).is_file());
        assert!(run.stage.is_dir() && run.home.is_dir() && run.tmp.is_dir());
        assert!(!run.nvdimm.exists());
        let dir = run.dir.clone();
        drop(run);
        assert!(!dir.exists());
        let mut run = RunDir::create(&cache, None).unwrap();
        run.keep();
        let dir = run.dir.clone();
        drop(run);
        assert!(dir.join(RUN_MARKER).is_file());
        let lines = clean_leftovers(&cache);
        assert!(
            !dir.exists(),
            "a kept run directory is a leftover: {lines:?}"
        );
        let _ = std::fs::remove_dir_all(&cache);
    }
}
