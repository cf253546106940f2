//! The unsafe edge: memory mappings and the few raw operations no crate wraps safely.
//!
//! Everything above this module is safe code. Owns: [`Mapping`] (an `mmap` region whose `Drop`
//! unmaps it), copies in and out of mappings that the kernel may be writing through a pin,
//! `STATX_ATTR_DAX`, and errno naming. Must not touch: files or mounts (that is `backing` and
//! `scratch`), and it never decides what a result means.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};

/// An errno returned by the kernel, printed by name (`EFAULT`) as kernel people read it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// The symbolic name, e.g. `EFAULT`; `E<number>` for values nix does not know.
    pub fn name(self) -> String {
        let e = nix::errno::Errno::from_raw(self.0);
        if e == nix::errno::Errno::UnknownErrno {
            format!("E{}", self.0)
        } else {
            format!("{e:?}")
        }
    }

    pub fn from_io(err: &std::io::Error) -> Option<Errno> {
        err.raw_os_error().map(Errno)
    }

    /// The errno of a failed libc call (reads `errno` of this thread).
    pub fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

impl From<rustix::io::Errno> for Errno {
    fn from(e: rustix::io::Errno) -> Self {
        Errno(e.raw_os_error())
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // "Bad address (os error 14)" -> "EFAULT (Bad address)"
        let text = std::io::Error::from_raw_os_error(self.0).to_string();
        let text = text.split(" (os error").next().unwrap_or(&text).to_string();
        write!(f, "{} ({text})", self.name())
    }
}

/// How a mapping shares its pages with the file or with other processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapMode {
    pub shared: bool,
    pub writable: bool,
    pub hugetlb: bool,
    /// Fault every page in before returning (`MAP_POPULATE`), so a pin measures pinning,
    /// not first-touch faults.
    pub populate: bool,
}

/// One `mmap`ed region. Unmapped on drop.
///
/// The kernel may write into these pages at any time through a pin (that is the point of
/// the tool), so the region is never exposed as a Rust slice: reads and writes go through
/// [`Mapping::read_at`] and [`Mapping::write_at`], which copy bytes with raw pointers.
///
/// Made with `memmap2` wherever it has the mode (its [`memmap2::MmapRaw`] never hands out a
/// slice either): file mappings shared or private, writable or read-only, populated, and
/// private anonymous memory with or without `MAP_HUGETLB`. `memmap2` has no shared anonymous
/// mapping, so that one mode is a raw `mmap` here.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    mode: MapMode,
    /// Who unmaps it: `memmap2` (dropping this), or `Drop` below (`None`: a raw `mmap`).
    _owner: Option<memmap2::MmapRaw>,
}

// The mapping is plain memory owned by this value; moving it between threads is fine.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_io(&e).unwrap_or(Errno(libc::EIO))
}

impl Mapping {
    fn from_raw(raw: memmap2::MmapRaw, mode: MapMode) -> Mapping {
        Mapping {
            ptr: NonNull::new(raw.as_mut_ptr()).expect("mmap returned NULL"),
            len: raw.len(),
            mode,
            _owner: Some(raw),
        }
    }

    fn options(len: usize, offset: u64, mode: MapMode) -> memmap2::MmapOptions {
        let mut o = memmap2::MmapOptions::new();
        o.len(len).offset(offset);
        if mode.populate {
            o.populate();
        }
        o
    }

    /// Anonymous memory (`MAP_ANONYMOUS`, shared or private, optionally `MAP_HUGETLB`).
    pub fn anonymous(len: usize, mode: MapMode) -> Result<Mapping, Errno> {
        if !mode.shared {
            let mut o = Self::options(len, 0, mode);
            if mode.hugetlb {
                o.huge(None);
            }
            let m = o.map_anon().map_err(io_errno)?;
            let m = if mode.writable {
                memmap2::MmapRaw::from(m)
            } else {
                memmap2::MmapRaw::from(m.make_read_only().map_err(io_errno)?)
            };
            return Ok(Self::from_raw(m, mode));
        }
        let prot = if mode.writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        let mut flags = MapFlags::SHARED;
        if mode.populate {
            flags |= MapFlags::POPULATE;
        }
        if mode.hugetlb {
            flags |= MapFlags::HUGETLB;
        }
        // SAFETY: a fresh anonymous mapping at an address the kernel picks aliases no Rust
        // object; we own it until `Drop` unmaps it.
        let ptr = unsafe { rustix::mm::mmap_anonymous(std::ptr::null_mut(), len, prot, flags) }?;
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned NULL"),
            len,
            mode,
            _owner: None,
        })
    }

    /// A mapping of `len` bytes of `fd` from offset 0.
    pub fn file(fd: BorrowedFd<'_>, len: usize, mode: MapMode) -> Result<Mapping, Errno> {
        Self::file_at(fd, len, 0, mode)
    }

    /// A mapping of `len` bytes of `fd` from `offset` (a multiple of the page size; for
    /// device-dax, of the device's alignment). `MAP_HUGETLB` does not apply: a hugetlbfs
    /// file is huge by itself.
    ///
    /// The file may be truncated under the mapping (the tool does that on purpose); a later
    /// access of a page past EOF would raise SIGBUS, which is why this module never touches
    /// pages the caller did not ask for, and why callers only copy from ranges they know are
    /// backed.
    pub fn file_at(
        fd: BorrowedFd<'_>,
        len: usize,
        offset: u64,
        mode: MapMode,
    ) -> Result<Mapping, Errno> {
        let o = Self::options(len, offset, mode);
        let raw_fd = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let m = match (mode.shared, mode.writable) {
            (true, true) => o.map_raw(raw_fd),
            (true, false) => o.map_raw_read_only(raw_fd),
            // SAFETY: a private (copy-on-write) mapping at an address the kernel picks; the
            // `MmapMut`/`Mmap` becomes an `MmapRaw` at once, so no slice of it ever exists.
            (false, true) => unsafe { o.map_copy(raw_fd) }.map(memmap2::MmapRaw::from),
            (false, false) => unsafe { o.map_copy_read_only(raw_fd) }.map(memmap2::MmapRaw::from),
        }
        .map_err(io_errno)?;
        Ok(Self::from_raw(m, mode))
    }

    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn mode(&self) -> MapMode {
        self.mode
    }

    /// Copy `buf.len()` bytes out of the mapping at `offset`.
    ///
    /// # Panics
    /// If the range is outside the mapping.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) {
        assert!(offset
            .checked_add(buf.len())
            .is_some_and(|end| end <= self.len));
        // SAFETY: the range is inside our mapping (checked above) and `buf` is a distinct Rust
        // allocation. The kernel may write the same pages concurrently through a pin; the
        // copy then sees old or new bytes, which is exactly what the oracles want to observe.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        }
    }

    /// Copy `data` into the mapping at `offset` (the CPU's write, not the device's).
    ///
    /// # Panics
    /// If the mapping is read-only or the range is outside it.
    pub fn write_at(&self, offset: usize, data: &[u8]) {
        assert!(self.mode.writable, "write_at on a read-only mapping");
        assert!(offset
            .checked_add(data.len())
            .is_some_and(|end| end <= self.len));
        // SAFETY: as in `read_at`; the mapping is writable (checked) so no SIGSEGV.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len())
        }
    }

    /// Touch one byte per `page` bytes (read for read-only mappings, write otherwise) so
    /// every page is present before a pin is taken.
    pub fn touch(&self, page: usize) {
        let mut off = 0;
        while off < self.len {
            // SAFETY: `off < len`, inside the mapping; volatile so the access is not elided.
            unsafe {
                let p = self.ptr.as_ptr().add(off);
                let v = std::ptr::read_volatile(p);
                if self.mode.writable {
                    std::ptr::write_volatile(p, v);
                }
            }
            off += page;
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self._owner.is_some() {
            // memmap2 unmaps it when the field drops.
            return;
        }
        // SAFETY: we own the mapping and nothing borrows it (no slices are ever handed out).
        // Pins taken on it keep their pages alive in the kernel independently of this range.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len)
            .field("mode", &self.mode)
            .finish()
    }
}

/// Whether the kernel says this open file is accessed with DAX (`statx` `STATX_ATTR_DAX`).
/// `None` when the kernel does not report the attribute at all (older than 5.8).
pub fn statx_dax(fd: impl AsFd) -> Result<Option<bool>, Errno> {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags};
    let st = statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)?;
    // STATX_ATTR_DAX exists since 5.8; the mask says whether this kernel reports it.
    if !st.stx_attributes_mask.contains(StatxAttributes::DAX) {
        return Ok(None);
    }
    Ok(Some(st.stx_attributes.contains(StatxAttributes::DAX)))
}

/// The base page size of this machine.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// `struct file_clone_range` (include/uapi/linux/fs.h).
#[repr(C)]
struct FileCloneRange {
    src_fd: i64,
    src_offset: u64,
    src_length: u64,
    dest_offset: u64,
}

/// `struct file_dedupe_range` with exactly one `struct file_dedupe_range_info`.
#[repr(C)]
struct FileDedupeRangeOne {
    src_offset: u64,
    src_length: u64,
    dest_count: u16,
    reserved1: u16,
    reserved2: u32,
    // info[0]
    dest_fd: i64,
    dest_offset: u64,
    bytes_deduped: u64,
    status: i32,
    reserved: u32,
}

/// The header of `struct file_dedupe_range`, whose size the ioctl number encodes.
#[repr(C)]
struct FileDedupeRangeHeader {
    _src_offset: u64,
    _src_length: u64,
    _dest_count: u16,
    _reserved1: u16,
    _reserved2: u32,
}

/// `FICLONERANGE`: share `len` bytes of `src` at `src_off` into `dest` at `dest_off`.
pub fn ficlonerange(
    dest: impl AsFd,
    src: impl AsFd,
    src_off: u64,
    len: u64,
    dest_off: u64,
) -> Result<(), Errno> {
    use rustix::ioctl::{ioctl, opcode, Setter};
    use std::os::fd::AsRawFd;
    const OP: rustix::ioctl::Opcode = opcode::write::<FileCloneRange>(0x94, 13);
    let arg = FileCloneRange {
        src_fd: i64::from(src.as_fd().as_raw_fd()),
        src_offset: src_off,
        src_length: len,
        dest_offset: dest_off,
    };
    // SAFETY: FICLONERANGE takes a pointer to a `struct file_clone_range`, which `arg` is
    // (repr(C), same field order and sizes); the kernel only reads it during the call.
    unsafe { ioctl(dest, Setter::<OP, FileCloneRange>::new(arg)) }.map_err(Errno::from)
}

/// What `FIDEDUPERANGE` did with one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dedupe {
    /// The ranges were identical and now share blocks.
    Same { bytes: u64 },
    /// The ranges differed; nothing changed.
    Differs,
}

/// `FIDEDUPERANGE`: share `len` bytes of `src` at `src_off` with `dest` at `dest_off` if
/// they are identical.
pub fn fideduperange(
    src: impl AsFd,
    src_off: u64,
    len: u64,
    dest: impl AsFd,
    dest_off: u64,
) -> Result<Dedupe, Errno> {
    use rustix::ioctl::{ioctl, opcode, Updater};
    use std::os::fd::AsRawFd;
    const OP: rustix::ioctl::Opcode = opcode::read_write::<FileDedupeRangeHeader>(0x94, 54);
    let mut arg = FileDedupeRangeOne {
        src_offset: src_off,
        src_length: len,
        dest_count: 1,
        reserved1: 0,
        reserved2: 0,
        dest_fd: i64::from(dest.as_fd().as_raw_fd()),
        dest_offset: dest_off,
        bytes_deduped: 0,
        status: 0,
        reserved: 0,
    };
    // SAFETY: FIDEDUPERANGE takes a `struct file_dedupe_range` followed by `dest_count` (1)
    // `struct file_dedupe_range_info`; `arg` is exactly that layout (repr(C)). The kernel
    // writes `bytes_deduped` and `status` back into it during the call.
    unsafe { ioctl(src, Updater::<OP, FileDedupeRangeOne>::new(&mut arg)) }.map_err(Errno::from)?;
    match arg.status {
        0 => Ok(Dedupe::Same {
            bytes: arg.bytes_deduped,
        }),
        1 => Ok(Dedupe::Differs),
        e if e < 0 => Err(Errno(-e)),
        other => Err(Errno(other)),
    }
}

/// Open `/proc/self/task/<tid>/{wchan,stack}` of a thread of this process, where readable
/// (`stack` needs root). For the blocked-operation watchdog.
pub fn thread_wait_state(tid: i32) -> (Option<String>, Option<String>) {
    let read = |f: &str| {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/{f}"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    (read("wchan"), read("stack"))
}

/// The kernel thread id of the calling thread.
pub fn gettid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// `fcntl(fd, cmd, arg)` for the integer-argument commands libc has but no crate wraps
/// (F_SETLEASE, F_GETLEASE, F_SETSIG).
pub fn fcntl_int(fd: impl AsFd, cmd: i32, arg: i32) -> Result<i32, Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: these commands take an int argument and touch no memory of ours.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), cmd, arg) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

/// Block `sig` in the calling thread, so it can be taken with [`wait_signal`] instead of
/// being delivered to a handler.
pub fn block_signal(sig: i32) {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Wait up to `timeout` for the blocked signal `sig`; returns the `si_fd` it carried (for a
/// lease break signalled with F_SETSIG, the leased descriptor).
pub fn wait_signal(sig: i32, timeout: std::time::Duration) -> Option<i32> {
    // SAFETY: sigset_t and siginfo_t are plain data; sigtimedwait writes only into `info`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        let mut info: libc::siginfo_t = std::mem::zeroed();
        loop {
            let r = libc::sigtimedwait(&set, &mut info, &ts);
            if r == sig {
                // si_fd sits right after si_band in the SIGPOLL member of the union.
                let raw = &info as *const libc::siginfo_t as *const u8;
                let fd = *(raw.add(SIGINFO_FD_OFFSET) as *const i32);
                return Some(fd);
            }
            if r < 0 && Errno::last().0 == libc::EINTR {
                continue;
            }
            return None;
        }
    }
}

/// Offset of `si_fd` in `siginfo_t` on Linux: 3 ints of header, padding to 8, `si_band`
/// (long), then `si_fd` (int): 24 on 64-bit, 16 on 32-bit.
const SIGINFO_FD_OFFSET: usize = if std::mem::size_of::<libc::c_long>() == 8 {
    24
} else {
    16
};

/// SIGRTMIN + n, as the C library numbers it.
pub fn rt_signal(n: i32) -> i32 {
    libc::SIGRTMIN() + n
}

/// CLOCK_MONOTONIC in nanoseconds: comparable between processes of one boot, so a breaker
/// and a lease holder can time the break between them.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// `vmsplice(2)` of `len` bytes at user address `addr` into the pipe `pipe`, without
/// `SPLICE_F_GIFT`: the kernel takes references to the pages (reading the range, never
/// writing it), so any address is sound to pass; an unmapped one is `EFAULT`. Returns the
/// bytes spliced.
pub fn vmsplice_ref(pipe: BorrowedFd<'_>, addr: usize, len: usize) -> Result<usize, Errno> {
    let iov = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: without SPLICE_F_GIFT vmsplice only reads the user range (it takes page
    // references); the kernel does not keep the iovec, which lives across the call.
    let n = unsafe {
        libc::vmsplice(
            std::os::fd::AsRawFd::as_raw_fd(&pipe),
            &iov,
            1,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(Errno::last());
    }
    Ok(n as usize)
}
