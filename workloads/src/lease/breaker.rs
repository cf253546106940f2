//! Breaking a lease: the syscalls another process makes on a leased file.
//!
//! The runner breaks from its own process (never the holder's: a process does not break its
//! own lease), timing the call on CLOCK_MONOTONIC so the holder's signal can be placed on the
//! same clock.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::sys::{monotonic_ns, Errno};

/// How another process breaks the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerKind {
    OpenRdwr,
    OpenRdonly,
    Truncate,
    OpenRdwrNonblock,
    OpenRdonlyNonblock,
    IoUringOpenat,
}

impl BreakerKind {
    pub const ALL: &'static [BreakerKind] = &[
        BreakerKind::OpenRdwr,
        BreakerKind::OpenRdonly,
        BreakerKind::Truncate,
        BreakerKind::OpenRdwrNonblock,
        BreakerKind::OpenRdonlyNonblock,
        BreakerKind::IoUringOpenat,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BreakerKind::OpenRdwr => "open-rdwr",
            BreakerKind::OpenRdonly => "open-rdonly",
            BreakerKind::Truncate => "truncate",
            BreakerKind::OpenRdwrNonblock => "open-rdwr-nonblock",
            BreakerKind::OpenRdonlyNonblock => "open-rdonly-nonblock",
            BreakerKind::IoUringOpenat => "io-uring-openat",
        }
    }
}

/// A breaker's result: when it started, how long it took, what it returned, and the
/// descriptor it opened (the caller closes it when the round ends: until then a broken read
/// lease cannot be taken again).
#[derive(Debug)]
pub struct BreakAttempt {
    /// CLOCK_MONOTONIC at the start of the call.
    pub t0: u64,
    pub wait_ns: u64,
    /// `ok` or the errno's name.
    pub result: String,
    pub fd: Option<OwnedFd>,
}

/// Break the lease on `path` from this process; a truncating breaker truncates to
/// `truncate_to` bytes.
pub fn break_lease(kind: BreakerKind, path: &Path, truncate_to: i64) -> BreakAttempt {
    let t0 = monotonic_ns();
    let open = |flags: OFlags| match rustix::fs::open(path, flags | OFlags::CLOEXEC, Mode::empty())
    {
        Ok(fd) => ("ok".to_string(), Some(fd)),
        Err(e) => (Errno::from(e).name(), None),
    };
    let (result, fd) = match kind {
        BreakerKind::OpenRdwr => open(OFlags::RDWR),
        BreakerKind::OpenRdonly => open(OFlags::RDONLY),
        BreakerKind::OpenRdwrNonblock => open(OFlags::RDWR | OFlags::NONBLOCK),
        BreakerKind::OpenRdonlyNonblock => open(OFlags::RDONLY | OFlags::NONBLOCK),
        BreakerKind::Truncate => match nix::unistd::truncate(path, truncate_to) {
            Ok(()) => ("ok".to_string(), None),
            Err(e) => (Errno(e as i32).name(), None),
        },
        BreakerKind::IoUringOpenat => {
            match super::sys::io_uring_openat(path, OFlags::RDWR | OFlags::CLOEXEC) {
                Ok(fd) => ("ok".to_string(), Some(fd)),
                Err(e) => (e, None),
            }
        }
    };
    BreakAttempt {
        t0,
        wait_ns: monotonic_ns() - t0,
        result,
        fd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn file(name: &str, len: usize) -> std::path::PathBuf {
        let p =
            std::env::temp_dir().join(format!("pinstorm-breaker-{name}-{}", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.write_all_at(&vec![0x5a; len], 0).unwrap();
        p
    }

    #[test]
    fn every_breaker_reaches_the_file_when_no_lease_stands_in_the_way() {
        for &kind in BreakerKind::ALL {
            let p = file(kind.name(), 8192);
            let b = break_lease(kind, &p, 4096);
            // io_uring may be disabled on this machine; then the breaker says why.
            if kind == BreakerKind::IoUringOpenat && b.result.starts_with("io_uring_setup") {
                eprintln!("{}: {}", kind.name(), b.result);
                let _ = std::fs::remove_file(&p);
                continue;
            }
            assert_eq!(b.result, "ok", "{}", kind.name());
            assert!(b.t0 > 0);
            if kind == BreakerKind::Truncate {
                assert!(b.fd.is_none());
                assert_eq!(std::fs::metadata(&p).unwrap().len(), 4096);
            } else {
                let fd = b.fd.expect("an opening breaker keeps its descriptor");
                let meta = std::fs::File::from(fd).metadata().unwrap();
                assert_eq!(meta.len(), 8192, "{} must not change the file", kind.name());
            }
            let _ = std::fs::remove_file(&p);
        }
    }

    #[test]
    fn a_breaker_that_the_kernel_refuses_reports_the_errno_by_name() {
        let missing =
            std::env::temp_dir().join(format!("pinstorm-breaker-missing-{}/f", std::process::id()));
        for &kind in BreakerKind::ALL {
            let b = break_lease(kind, &missing, 0);
            if kind == BreakerKind::IoUringOpenat && b.result.starts_with("io_uring_setup") {
                continue;
            }
            assert_eq!(b.result, "ENOENT", "{}", kind.name());
            assert!(b.fd.is_none());
        }
    }
}
