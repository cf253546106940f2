//! The unsafe edge of the baselines: the raw calls they time, and nothing else.
//!
//! io_uring through `syscall(2)` (not the `io-uring` crate the pinner uses), vmsplice
//! through libc, pipes and reads through rustix, RDMA registrations straight into
//! libibverbs. Must not touch the pinners' types; it keeps no state, so each function's
//! contract is in its own comment.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::sys::Errno;

/// `IORING_REGISTER_BUFFERS` and `IORING_UNREGISTER_BUFFERS` (include/uapi/linux/io_uring.h).
const IORING_REGISTER_BUFFERS: libc::c_uint = 0;
const IORING_UNREGISTER_BUFFERS: libc::c_uint = 1;

/// `sizeof(struct io_uring_params)`: seven `__u32`s, three reserved, and the SQ and CQ ring
/// offsets (40 bytes each).
const IO_URING_PARAMS_BYTES: usize = 120;

/// `io_uring_setup(entries, params)` with every parameter zero: no flags, no features.
pub fn io_uring_setup(entries: u32) -> Result<OwnedFd, Errno> {
    let mut params = [0u64; IO_URING_PARAMS_BYTES / 8];
    // SAFETY: `params` is a zeroed, writable buffer of exactly `struct io_uring_params`'s
    // size that lives across the call; the kernel reads it and writes the ring offsets back.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            entries as libc::c_long,
            params.as_mut_ptr(),
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a descriptor the kernel just returned to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `IORING_REGISTER_BUFFERS` of one iovec, `addr..addr+len`, on `ring`.
pub fn io_uring_register_buffer(
    ring: BorrowedFd<'_>,
    addr: usize,
    len: usize,
) -> Result<(), Errno> {
    let iov = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: the kernel reads the one iovec during the call and pins the pages it names.
    // Afterwards it writes into them only for fixed-buffer requests submitted on this ring,
    // and no baseline submits any (their queues are never even mapped), so the range may be
    // any memory: nothing will write it. An address that is not mapped is EFAULT.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd() as libc::c_long,
            IORING_REGISTER_BUFFERS as libc::c_long,
            &iov as *const libc::iovec,
            1 as libc::c_long,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `IORING_UNREGISTER_BUFFERS` on `ring`: releases the pins.
pub fn io_uring_unregister_buffers(ring: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: no memory is passed (the argument is NULL and the count 0, as the ABI asks).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd() as libc::c_long,
            IORING_UNREGISTER_BUFFERS as libc::c_long,
            std::ptr::null::<libc::c_void>(),
            0 as libc::c_long,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// A non-blocking pipe (read end, write end): a short or full pipe is an errno, never a
/// wait.
pub fn pipe_nonblock() -> Result<(OwnedFd, OwnedFd), Errno> {
    use rustix::pipe::{pipe_with, PipeFlags};
    Ok(pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?)
}

/// `F_SETPIPE_SZ`.
pub fn set_pipe_size(pipe: BorrowedFd<'_>, bytes: usize) -> Result<(), Errno> {
    rustix::pipe::fcntl_setpipe_size(pipe, bytes)?;
    Ok(())
}

/// `vmsplice(pipe, {addr, len}, 1, SPLICE_F_NONBLOCK)`: the pipe takes references to the
/// pages. Returns the bytes spliced.
pub fn vmsplice(pipe: BorrowedFd<'_>, addr: usize, len: usize) -> Result<usize, Errno> {
    let iov = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: without SPLICE_F_GIFT the kernel only reads the user range (it takes page
    // references, and a pipe never writes into them), so any address is sound; the iovec
    // lives across the call and is not kept.
    let n = unsafe { libc::vmsplice(pipe.as_raw_fd(), &iov, 1, libc::SPLICE_F_NONBLOCK) };
    if n < 0 {
        return Err(Errno::last());
    }
    Ok(n as usize)
}

/// `read(2)` into `buf`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    Ok(rustix::io::read(fd, buf)?)
}

/// A memory region registered by [`ibv_reg_mr`], deregistered by [`ibv_dereg_mr`] (or, if
/// dropped on the way, by `Drop`). Borrows its PD, which therefore outlives it.
#[cfg(feature = "rdma")]
pub struct RawMr<'pd> {
    mr: std::ptr::NonNull<ibverbs_sys::ibv_mr>,
    _pd: std::marker::PhantomData<&'pd crate::pin::rdma::verbs::Pd>,
}

/// `ibv_reg_mr(pd, addr, len, access)`.
#[cfg(feature = "rdma")]
pub fn ibv_reg_mr(
    pd: &crate::pin::rdma::verbs::Pd,
    addr: usize,
    len: usize,
    access: u32,
) -> Result<RawMr<'_>, Errno> {
    // SAFETY: the PD is alive (borrowed for as long as the MR lives). The device could write
    // the range only through a work request naming this MR's keys, and the baseline has no
    // queue pair and posts none, so any range is sound to register; an unmapped one is an
    // errno.
    let mr = unsafe {
        ibverbs_sys::ibv_reg_mr(
            pd.as_ptr(),
            addr as *mut libc::c_void,
            len,
            access as libc::c_int,
        )
    };
    match std::ptr::NonNull::new(mr) {
        Some(mr) => Ok(RawMr {
            mr,
            _pd: std::marker::PhantomData,
        }),
        // libibverbs sets errno; a provider that forgot to is still a failure.
        None => Err(match Errno::last() {
            Errno(0) => Errno(libc::EINVAL),
            e => e,
        }),
    }
}

/// `ibv_dereg_mr`.
#[cfg(feature = "rdma")]
pub fn ibv_dereg_mr(mr: RawMr<'_>) -> Result<(), Errno> {
    let mr = std::mem::ManuallyDrop::new(mr);
    // SAFETY: the MR came from ibv_reg_mr, and `Drop` will not run for it, so this is its
    // only deregistration.
    let rc = unsafe { ibverbs_sys::ibv_dereg_mr(mr.mr.as_ptr()) };
    if rc != 0 {
        return Err(Errno(rc));
    }
    Ok(())
}

#[cfg(feature = "rdma")]
impl Drop for RawMr<'_> {
    fn drop(&mut self) {
        // SAFETY: registered by ibv_reg_mr and not deregistered: ibv_dereg_mr keeps `Drop`
        // from running.
        unsafe { ibverbs_sys::ibv_dereg_mr(self.mr.as_ptr()) };
    }
}
