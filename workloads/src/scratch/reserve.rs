//! Sysctl changes a run makes, journaled before they are made and restored on drop (normal
//! exit, error, signal-driven unwinding, panic); after SIGKILL the journal lets the next run
//! restore them.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{JournalEntry, RunScratch};
use crate::sysctl::{hugepage_counts, read, write, Sysctl};

/// How long a run waits for another pinstorm run to put a sysctl back.
const LOCK_WAIT: Duration = Duration::from_secs(300);

/// The machine-wide lock on one sysctl, held from before its original value is read until
/// after it is written back. Runs with different scratch roots lock nothing else in common;
/// without this, a run that starts while another has changed the sysctl would take that
/// change for the original and write it back at the end.
///
/// The lock file is in `/run`, which only root can write (and only root can change a
/// sysctl): `/run/pinstorm-sysctl-NAME.lock`, opened without following links and used only if
/// it is a regular file of ours. Without root there is nothing to lock (the write fails).
fn lock(sysctl: Sysctl, wait: Duration) -> Result<Option<OwnedFd>> {
    use rustix::fs::{flock, fstat, open, FileType, FlockOperation, Mode, OFlags};
    let name = sysctl.name().replace('/', "-");
    let path = format!("/run/pinstorm-sysctl-{name}.lock");
    let fd = match open(
        path.as_str(),
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::ACCESS | rustix::io::Errno::ROFS | rustix::io::Errno::NOENT) => {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("opening {path}")),
    };
    let st = fstat(&fd).with_context(|| format!("fstat {path}"))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || st.st_uid != rustix::process::geteuid().as_raw()
    {
        bail!("{path} is not a regular file of ours; refusing to use it as a lock");
    }
    let until = Instant::now() + wait;
    let mut said = false;
    loop {
        match flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(Some(fd)),
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < until => {
                if !said {
                    eprintln!(
                        "pinstorm: waiting for another pinstorm run to put {sysctl} back ({path})"
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => bail!(
                "another pinstorm run has held {sysctl} changed for {}s ({path}); not changing it",
                wait.as_secs()
            ),
            Err(e) => return Err(e).with_context(|| format!("flock {path}")),
        }
    }
}

pub struct SysctlGuard {
    sysctl: Sysctl,
    original: String,
    /// Dropped after the write-back (fields drop after `Drop::drop`).
    _lock: Option<OwnedFd>,
}

impl SysctlGuard {
    pub fn set(scratch: &RunScratch, sysctl: Sysctl, value: &str) -> Result<SysctlGuard> {
        Self::set_waiting(scratch, sysctl, value, LOCK_WAIT)
    }

    /// [`SysctlGuard::set`], waiting at most `wait` for another run to put it back.
    pub fn set_waiting(
        scratch: &RunScratch,
        sysctl: Sysctl,
        value: &str,
        wait: Duration,
    ) -> Result<SysctlGuard> {
        let lock = lock(sysctl, wait)?;
        let original = read(sysctl.name())?;
        if !sysctl.valid_value(&original) {
            bail!("{sysctl} holds {original:?}, which pinstorm could not restore; not changing it");
        }
        scratch.record(&JournalEntry::Sysctl {
            sysctl,
            original: original.clone(),
        })?;
        write(sysctl, value)?;
        Ok(SysctlGuard {
            sysctl,
            original,
            _lock: lock,
        })
    }

    pub fn original(&self) -> &str {
        &self.original
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = write(self.sysctl, &self.original) {
            eprintln!(
                "pinstorm: failed to restore {} to {}: {e:#}",
                self.sysctl, self.original
            );
        }
    }
}

/// Huge pages reserved for a run: raises `vm/nr_hugepages` so that at least `pages` are
/// free, and puts the old value back on drop.
pub struct HugePageReservation {
    pub requested: u64,
    /// Free huge pages after the reservation (the kernel may give fewer than asked).
    pub free: u64,
    pub page_size: u64,
    _guard: Option<SysctlGuard>,
}

impl HugePageReservation {
    /// The `vm/nr_hugepages` value that will be written back on drop, if it was changed.
    pub fn restores_to(&self) -> Option<&str> {
        self._guard.as_ref().map(|g| g.original())
    }

    pub fn reserve(scratch: &RunScratch, pages: u64) -> Result<HugePageReservation> {
        let (total, free, page_size) = hugepage_counts();
        let guard = if free < pages {
            let want = total + (pages - free);
            Some(SysctlGuard::set(
                scratch,
                Sysctl::NrHugepages,
                &want.to_string(),
            )?)
        } else {
            None
        };
        let (_, free, _) = hugepage_counts();
        Ok(HugePageReservation {
            requested: pages,
            free,
            page_size,
            _guard: guard,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchRoot;

    #[test]
    fn a_second_run_waits_for_the_first_to_put_a_sysctl_back_and_keeps_the_true_original() {
        if !crate::is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("skipped: changing fs/lease-break-time needs root");
            return;
        }
        let base =
            std::env::temp_dir().join(format!("pinstorm-sysctl-lock-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let root = ScratchRoot::open(&base.join("root")).unwrap();
        let (a_run, b_run) = (root.new_run("a").unwrap(), root.new_run("b").unwrap());
        let sysctl = Sysctl::LeaseBreakTime;
        let before = read(sysctl.name()).unwrap();
        let a = SysctlGuard::set(&a_run, sysctl, "7").unwrap();
        // While the first run holds it changed, a second one cannot take "7" for the original.
        let e = SysctlGuard::set_waiting(&b_run, sysctl, "9", Duration::from_millis(200))
            .err()
            .expect("refused while another run holds it");
        assert!(format!("{e:#}").contains("another pinstorm run"), "{e:#}");
        let seen = std::thread::scope(|s| {
            let b = s.spawn(|| {
                let g =
                    SysctlGuard::set_waiting(&b_run, sysctl, "9", Duration::from_secs(30)).unwrap();
                let seen = (g.original().to_string(), read(sysctl.name()).unwrap());
                drop(g);
                seen
            });
            std::thread::sleep(Duration::from_millis(200));
            drop(a);
            b.join().unwrap()
        });
        assert_eq!(seen, (before.clone(), "9".to_string()));
        assert_eq!(read(sysctl.name()).unwrap(), before, "put back as found");
        drop((a_run, b_run, root));
        let _ = std::fs::remove_dir_all(&base);
    }
}
