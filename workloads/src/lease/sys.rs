//! The unsafe edge of the lease feature: fork, `_exit` and an io_uring OPENAT, each behind a
//! safe function whose conditions it checks or establishes itself.
//!
//! Everything else in `lease` is safe code; waitpid, kill, open and truncate come from
//! rustix and nix.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::OFlags;
use rustix::process::Pid;

use crate::sys::Errno;

/// Which side of a fork this process is.
#[derive(Debug)]
pub enum Forked {
    Child,
    Parent(Pid),
}

/// fork(2), refused unless this process has a single thread (counted in `/proc/self/task`).
///
/// In a single-threaded process no other thread can hold a lock (the allocator's, stdout's)
/// that the child would inherit locked, so the child may run ordinary Rust code. The lease
/// holder is a fresh exec of pinstorm that starts no threads; a test harness is not, and gets
/// the error.
pub fn fork_single_threaded() -> Result<Forked, String> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(|e| format!("counting this process's threads in /proc/self/task: {e}"))?
        .count();
    if threads != 1 {
        return Err(format!(
            "fork refused: this process has {threads} threads, and a forked child could inherit one of their locks held"
        ));
    }
    // SAFETY: the process has one thread (checked above, and only this thread could start
    // another), so the child inherits no lock that another thread holds; both sides go on
    // with ordinary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", Errno::last().name()));
    }
    // fork returns 0 in the child, which is no pid.
    Ok(Pid::from_raw(pid).map_or(Forked::Child, Forked::Parent))
}

/// End this process at once with `code`: `_exit(2)`, so a forked child runs none of the exit
/// handlers and destructors that belong to its parent's state (a pinner's drop would
/// unregister a pin the scenario means to leave behind).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// An `IORING_OP_OPENAT` of `path` relative to the working directory, submitted on a ring of
/// its own and waited for. Errors are named as results name them: `io_uring_setup: ...`, the
/// errno of the OPENAT, and so on.
pub fn io_uring_openat(path: &Path, flags: OFlags) -> Result<OwnedFd, String> {
    use io_uring::{opcode, types, IoUring};
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} has a NUL byte", path.display()))?;
    let mut ring = IoUring::new(2).map_err(|e| format!("io_uring_setup: {e}"))?;
    let sqe = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), c.as_ptr())
        .flags(flags.bits() as i32)
        .build();
    // SAFETY: the request points at `c` only, which lives until the end of this function; we
    // wait for the request's completion below before returning, and the ring is dropped here.
    if unsafe { ring.submission().push(&sqe) }.is_err() {
        return Err("submission queue full".into());
    }
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter: {e}"))?;
    let res = ring.completion().next().map(|c| c.result());
    match res {
        // SAFETY: a successful OPENAT returns a fresh descriptor that nothing else owns.
        Some(fd) if fd >= 0 => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Some(r) => Err(Errno(-r).name()),
        None => Err("no completion".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit test harness runs tests on threads of their own, so this process has several:
    /// a fork here must be refused rather than risk a child that deadlocks on an inherited lock.
    #[test]
    fn fork_is_refused_in_a_process_with_more_than_one_thread() {
        let other = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(1)));
        let r = fork_single_threaded();
        other.join().unwrap();
        match r {
            Err(e) => assert!(e.contains("threads"), "{e}"),
            Ok(Forked::Child) => exit_now(0),
            Ok(Forked::Parent(_)) => panic!("forked with another thread running"),
        }
    }
}
