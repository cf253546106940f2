//! The unsafe edge of the memory-management operations: madvise, mremap, fork and
//! move_pages on a pinstorm [`Mapping`], each behind a safe function whose conditions it
//! establishes itself.
//!
//! Why these are sound on a `Mapping`: a mapping is never exposed as a Rust slice (every
//! access copies bytes with raw pointers), so the kernel may drop, replace or move its pages
//! under it without breaking what Rust assumes. What must hold is that the mapping stays
//! mapped, at its address and length, whenever a call here returns: pinners read it and
//! `Drop` unmaps exactly that range. Must not touch: memory pinstorm did not map.

use std::sync::Mutex;

use crate::sys::{Errno, Mapping};

/// The madvise advice the operations use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    DontNeed,
    Free,
    Remove,
    PageOut,
    Cold,
    Mergeable,
    Unmergeable,
    /// MADV_HWPOISON: lab guests only (the operation requires one).
    HwPoison,
    /// MADV_SOFT_OFFLINE: lab guests only.
    SoftOffline,
}

/// `madvise(2)` of `len` bytes at `offset` of `m`.
///
/// # Panics
/// If the range is outside the mapping.
pub fn madvise(m: &Mapping, offset: usize, len: usize, advice: Advice) -> Result<(), Errno> {
    use rustix::mm::Advice as A;
    assert!(offset.checked_add(len).is_some_and(|end| end <= m.len()));
    let a = match advice {
        Advice::DontNeed => A::LinuxDontNeed,
        Advice::Free => A::LinuxFree,
        Advice::Remove => A::LinuxRemove,
        Advice::PageOut => A::LinuxPageOut,
        Advice::Cold => A::LinuxCold,
        Advice::Mergeable => A::LinuxMergeable,
        Advice::Unmergeable => A::LinuxUnmergeable,
        Advice::HwPoison => A::LinuxHwPoison,
        Advice::SoftOffline => A::LinuxSoftOffline,
    };
    // SAFETY: the range is inside our mapping (checked). None of these advices unmaps it:
    // DONTNEED, FREE and REMOVE drop pages (a later access faults in zeros or the file's
    // page, which raw-pointer copies may observe: no Rust reference into the mapping
    // exists), PAGEOUT, COLD and (UN)MERGEABLE only change how the kernel treats the pages.
    // SOFT_OFFLINE migrates a page's contents to a new page (or fails). HWPOISON leaves the
    // range mapped but replaces the page with a poison entry that SIGBUSes an access: the
    // storm never touches the mapping with the CPU where an operation poisons
    // (`LayoutOp::poisons`), and the operation drops the entry (DONTNEED) right after.
    unsafe { rustix::mm::madvise((m.addr() + offset) as *mut _, len, a) }.map_err(Errno::from)
}

/// The thread (its tid) that is injecting a memory failure right now, 0 when none: the one
/// thread whose action-required SIGBUS the handler absorbs.
static INJECTING: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// Action-required memory-failure SIGBUSes absorbed so far.
static MCE_SIGBUS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static HANDLER: std::sync::Once = std::sync::Once::new();

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    use std::sync::atomic::Ordering::SeqCst;
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler; gettid and
    // signal/raise are async-signal-safe; only atomics are touched.
    unsafe {
        let code = (*info).si_code;
        let ours = INJECTING.load(SeqCst) == libc::gettid();
        if ours && (code == libc::BUS_MCEERR_AR || code == libc::BUS_MCEERR_AO) {
            // Sent by the kernel to the caller of MADV_HWPOISON while it is in the call (no
            // instruction faulted): returning resumes after the syscall.
            MCE_SIGBUS.fetch_add(1, SeqCst);
            return;
        }
        // Anything else is a real fault: die of it as without the handler.
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// `madvise(MADV_HWPOISON)` of `len` bytes at `offset` of `m`; `Ok(true)` when the kernel
/// also sent the caller an action-required SIGBUS (it does for a page it cannot recover on
/// some kernels: an unsplittable, pinned THP), which is absorbed and reported instead of
/// killing the process.
///
/// # Panics
/// If the range is outside the mapping.
pub fn hwpoison(m: &Mapping, offset: usize, len: usize) -> Result<bool, Errno> {
    use std::sync::atomic::Ordering::SeqCst;
    HANDLER.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; the handler only reads its siginfo, touches
        // atomics and calls async-signal-safe functions. SIGBUS is not used otherwise by
        // pinstorm; for any SIGBUS that is not an injection in progress the handler restores
        // the default action and re-raises, so real faults still kill the process.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    });
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let before = MCE_SIGBUS.load(SeqCst);
    // SAFETY: gettid has no preconditions.
    INJECTING.store(unsafe { libc::gettid() }, SeqCst);
    let r = madvise(m, offset, len, Advice::HwPoison);
    INJECTING.store(0, SeqCst);
    let signalled = MCE_SIGBUS.load(SeqCst) > before;
    r.map(|()| signalled).map_err(|e| {
        if signalled {
            // The errno stays the measurement; the signal is reported through the cause.
            Errno(e.0 | SIGNALLED)
        } else {
            e
        }
    })
}

/// Marks an errno of [`hwpoison`] whose call also got the SIGBUS (never a real errno bit).
pub const SIGNALLED: i32 = 1 << 24;

/// Serialises every move of a pinstorm mapping in this process: two moves of one mapping at
/// once could move the other's empty leftover back over the real pages.
static REMAP: Mutex<()> = Mutex::new(());

/// A reservation of address space (`PROT_NONE`), unmapped on drop unless moved into.
struct Reserved {
    addr: usize,
    len: usize,
}

impl Reserved {
    fn new(len: usize) -> Result<Reserved, Errno> {
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: a fresh inaccessible mapping at an address the kernel picks aliases nothing.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::empty(),
                MapFlags::PRIVATE,
            )
        }?;
        Ok(Reserved {
            addr: p as usize,
            len,
        })
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        // SAFETY: the range was reserved here and nothing of ours lives in it any more (a
        // mapping moved in was moved back out before this runs, leaving a hole or the
        // reservation); munmap of a hole is a no-op.
        let _ = unsafe { rustix::mm::munmap(self.addr as *mut _, self.len) };
    }
}

/// `mremap(old, old_len, new_len, flags, new)`.
///
/// # Safety
/// Both ranges must be pinstorm's own: the mapping being moved, and a reservation or the
/// mapping's original range (`MREMAP_FIXED` unmaps whatever is at `new`).
unsafe fn mremap(
    old: usize,
    old_len: usize,
    new_len: usize,
    flags: i32,
    new: usize,
) -> Result<usize, Errno> {
    let r = libc::mremap(
        old as *mut libc::c_void,
        old_len,
        new_len,
        flags,
        new as *mut libc::c_void,
    );
    if r == libc::MAP_FAILED {
        Err(Errno::last())
    } else {
        Ok(r as usize)
    }
}

/// Move `m` to a reserved address and back (`grow`: grow it in place there to twice its
/// length first, then shrink it back). Returns the step that failed with its errno; in every
/// case the mapping is at its address, with its length, when this returns.
///
/// The move away uses `MREMAP_DONTUNMAP` (5.7; any mapping from 5.13), so the original
/// range stays mapped (empty) while the pages are away: a pinner that reads it meanwhile
/// sees zeros or the file, never a hole another thread's mmap could take.
pub fn remap_away_and_back(m: &Mapping, grow: bool) -> Result<(), (&'static str, Errno)> {
    let _serial = REMAP.lock().unwrap_or_else(|p| p.into_inner());
    let (addr, len) = (m.addr(), m.len());
    let span = if grow { 2 * len } else { len };
    let away = Reserved::new(span).map_err(|e| ("mmap(reserve)", e))?;
    if grow {
        // Room to grow into: the reservation's tail becomes a hole. Another thread may map
        // into it meanwhile; the growth then fails with ENOMEM (no MREMAP_MAYMOVE), nothing
        // else.
        // SAFETY: the tail of our own reservation.
        unsafe { rustix::mm::munmap((away.addr + len) as *mut _, len) }
            .map_err(|e| ("munmap(reserve tail)", e.into()))?;
    }
    let fixed = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    // SAFETY: moves our mapping onto our reservation; the original range stays mapped.
    unsafe { mremap(addr, len, len, fixed | libc::MREMAP_DONTUNMAP, away.addr) }
        .map_err(|e| ("mremap(away, MREMAP_DONTUNMAP)", e))?;
    let mut failed = None;
    if grow {
        // SAFETY: grows our mapping in place (no MAYMOVE: it fails rather than moves), then
        // shrinks it back, unmapping only the part it grew.
        match unsafe { mremap(away.addr, len, 2 * len, 0, 0) } {
            Ok(_) => {
                if let Err(e) = unsafe { mremap(away.addr, 2 * len, len, 0, 0) } {
                    failed = Some(("mremap(shrink)", e));
                }
            }
            Err(e) => failed = Some(("mremap(grow)", e)),
        }
    }
    // SAFETY: moves the pages back over the empty leftover at the original address (ours:
    // kept mapped by MREMAP_DONTUNMAP), which MREMAP_FIXED replaces atomically.
    if let Err(e) = unsafe { mremap(away.addr, len, len, fixed, addr) } {
        // The pages are stranded at the reservation and the original range holds the empty
        // leftover: still mapped, so the process is safe, but the data is gone from it.
        return Err(("mremap(back)", e));
    }
    match failed {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// A forked child that writes to the mapping and exits.
#[derive(Debug)]
pub struct Child(rustix::process::Pid);

/// fork(2); the child fills `len` bytes at `offset` of `m` with `byte` and `_exit`s.
///
/// The storm is multi-threaded, so the child may only do what is async-signal-safe: it
/// inherits other threads' locks held. It runs no Rust code that could take one: a
/// `write_bytes` (memset) into memory it owns a copy of (or shares), then `_exit`.
///
/// # Panics
/// If the range is outside the mapping or the mapping is read-only.
pub fn fork_child_writes(m: &Mapping, offset: usize, len: usize, byte: u8) -> Result<Child, Errno> {
    assert!(
        m.mode().writable,
        "fork_child_writes on a read-only mapping"
    );
    assert!(offset.checked_add(len).is_some_and(|end| end <= m.len()));
    let dst = (m.addr() + offset) as *mut u8;
    // SAFETY: in the child only memset and _exit run (both async-signal-safe, no locks, no
    // allocation), on a writable range of our own mapping (checked above, before the fork).
    // The parent goes on normally.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above; the range is inside the child's copy of the mapping.
        unsafe {
            std::ptr::write_bytes(dst, byte, len);
            libc::_exit(0)
        }
    }
    if pid < 0 {
        return Err(Errno::last());
    }
    Ok(Child(
        rustix::process::Pid::from_raw(pid).expect("a positive pid"),
    ))
}

impl Child {
    /// Wait for the child; an error says how it ended if not with status 0.
    pub fn wait(self) -> Result<(), String> {
        use rustix::process::{waitpid, WaitOptions};
        loop {
            match waitpid(Some(self.0), WaitOptions::empty()) {
                Ok(Some((_, st))) if st.exit_status() == Some(0) => return Ok(()),
                Ok(Some((_, st))) => return Err(format!("the forked child ended with {st:?}")),
                Ok(None) => continue,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(format!("waitpid: {e}")),
            }
        }
    }
}

/// `MPOL_MF_MOVE` (include/uapi/linux/mempolicy.h): move pages mapped only by this process.
const MPOL_MF_MOVE: i32 = 1 << 1;

/// `move_pages(2)` of this process: every 4 KiB page of `len` bytes at `offset` of `m` to
/// `node` (`None`: only ask where each is). Returns each page's status: its node, or a
/// negative errno for a page that did not move.
///
/// # Panics
/// If the range is outside the mapping.
pub fn move_pages(
    m: &Mapping,
    offset: usize,
    len: usize,
    node: Option<i32>,
) -> Result<Vec<i32>, Errno> {
    assert!(offset.checked_add(len).is_some_and(|end| end <= m.len()));
    let pages: Vec<*mut libc::c_void> = (0..len / 4096)
        .map(|i| (m.addr() + offset + i * 4096) as *mut libc::c_void)
        .collect();
    let nodes: Vec<i32> = node.map(|n| vec![n; pages.len()]).unwrap_or_default();
    let mut status = vec![0i32; pages.len()];
    // SAFETY: move_pages reads `pages` and `nodes` (or NULL) and writes `status`, each an
    // array of `pages.len()` elements that lives across the call; the addresses are pages of
    // our own mapping, which the kernel looks up (and migrates) without our memory's Rust
    // view changing: it is never a slice.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            pages.len() as libc::c_ulong,
            pages.as_ptr(),
            if nodes.is_empty() {
                std::ptr::null()
            } else {
                nodes.as_ptr()
            },
            status.as_mut_ptr(),
            MPOL_MF_MOVE,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::MapMode;

    fn anon(len: usize, shared: bool) -> Mapping {
        let m = Mapping::anonymous(
            len,
            MapMode {
                shared,
                writable: true,
                hugetlb: false,
                populate: true,
            },
        )
        .unwrap();
        m.write_at(0, &vec![0x5a; len]);
        m
    }

    #[test]
    fn a_mapping_moved_away_and_back_is_at_its_address_with_its_data() {
        for shared in [false, true] {
            let m = anon(1 << 16, shared);
            let addr = m.addr();
            remap_away_and_back(&m, false).unwrap();
            assert_eq!(m.addr(), addr);
            let mut buf = vec![0; m.len()];
            m.read_at(0, &mut buf);
            assert!(buf.iter().all(|&b| b == 0x5a), "shared={shared}");
            // Grown and shrunk elsewhere, then back: the same data at the same place.
            remap_away_and_back(&m, true).unwrap();
            m.read_at(0, &mut buf);
            assert!(buf.iter().all(|&b| b == 0x5a), "shared={shared}");
        }
    }

    #[test]
    fn a_forked_child_writes_its_copy_of_private_memory_and_the_shared_one() {
        for (shared, parent_sees) in [(false, 0x5a), (true, 0x11)] {
            let m = anon(8192, shared);
            fork_child_writes(&m, 0, 4096, 0x11)
                .unwrap()
                .wait()
                .unwrap();
            let mut b = [0u8; 1];
            m.read_at(100, &mut b);
            assert_eq!(b[0], parent_sees, "shared={shared}");
        }
    }

    #[test]
    fn dontneed_drops_private_anonymous_data_and_keeps_shared() {
        for (shared, after) in [(false, 0), (true, 0x5a)] {
            let m = anon(8192, shared);
            madvise(&m, 0, 8192, Advice::DontNeed).unwrap();
            let mut b = [0u8; 1];
            m.read_at(0, &mut b);
            assert_eq!(b[0], after, "shared={shared}");
        }
    }

    #[test]
    fn move_pages_says_where_each_page_is() {
        let m = anon(8192, false);
        let st = move_pages(&m, 0, 8192, None).unwrap();
        assert_eq!(st.len(), 2);
        assert!(st.iter().all(|&n| n >= 0), "{st:?}");
    }
}
