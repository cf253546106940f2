//! The unsafe edge of the io_uring pin path: a ring with one fixed buffer.
//!
//! Every `unsafe` of the path is here, next to the state its contract depends on: the ring
//! knows which range it registered, and checks every fixed-buffer request against it before
//! the kernel sees it, so the callers above need no `unsafe` at all.

use std::os::fd::{AsRawFd, BorrowedFd};

use io_uring::{opcode, squeue, types, IoUring};

use super::super::{check_span, PinError, PinTarget};

/// A ring and the one range registered as its fixed buffer (index 0), if any.
pub struct FixedRing {
    ring: IoUring,
    registered: Option<PinTarget>,
}

fn iovec(t: PinTarget) -> libc::iovec {
    libc::iovec {
        iov_base: t.addr as *mut libc::c_void,
        iov_len: t.len,
    }
}

impl FixedRing {
    pub fn new(entries: u32) -> std::io::Result<FixedRing> {
        Ok(FixedRing {
            ring: IoUring::new(entries)?,
            registered: None,
        })
    }

    /// The ring's descriptor (for passing it to another process).
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to `self.ring` and lives as long as `self`.
        unsafe { BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
    }

    pub fn registered(&self) -> Option<PinTarget> {
        self.registered
    }

    /// `IORING_REGISTER_BUFFERS` of `target` as buffer 0.
    pub fn register(&mut self, target: PinTarget) -> std::io::Result<()> {
        let iov = [iovec(target)];
        // SAFETY: io_uring keeps the address range and pins its pages; the kernel, not this
        // process, writes through the pin from now on, and only for the fixed-buffer requests
        // of `read_fixed`, which are checked against the range. If the caller unmaps the range
        // while it is registered, the pinned pages stay alive in the kernel and no Rust object
        // refers to them (pinstorm's mappings are never exposed as slices).
        unsafe { self.ring.submitter().register_buffers(&iov) }?;
        self.registered = Some(target);
        Ok(())
    }

    /// Forget the registration without unregistering it: another process holds the ring
    /// (fork, SCM_RIGHTS) and the pin must live on there when this process's ring goes.
    pub fn let_go(&mut self) {
        self.registered = None;
    }

    /// `IORING_UNREGISTER_BUFFERS`.
    pub fn unregister(&mut self) -> std::io::Result<()> {
        self.ring.submitter().unregister_buffers()?;
        self.registered = None;
        Ok(())
    }

    /// `READ_FIXED` of `len` bytes from offset 0 of `from` into the registered buffer at
    /// `offset`: the kernel writes through the pin, as a device would. Returns the CQE
    /// result (bytes or `-errno`).
    pub fn read_fixed(
        &mut self,
        from: BorrowedFd<'_>,
        offset: usize,
        len: u32,
    ) -> Result<i32, PinError> {
        let t = check_span(self.registered, offset, len as usize)?;
        let sqe = opcode::ReadFixed::new(
            types::Fd(from.as_raw_fd()),
            (t.addr + offset) as *mut u8,
            len,
            0,
        )
        .offset(0)
        .build();
        self.run_one(sqe, "READ_FIXED")
    }

    /// `WRITE_FIXED` of `len` bytes of the registered buffer at `offset` to offset 0 of `to`:
    /// the kernel reads through the pin, as a device would.
    pub fn write_fixed(
        &mut self,
        to: BorrowedFd<'_>,
        offset: usize,
        len: u32,
    ) -> Result<i32, PinError> {
        let t = check_span(self.registered, offset, len as usize)?;
        let sqe = opcode::WriteFixed::new(
            types::Fd(to.as_raw_fd()),
            (t.addr + offset) as *const u8,
            len,
            0,
        )
        .offset(0)
        .build();
        self.run_one(sqe, "WRITE_FIXED")
    }

    /// Submit one request and wait for its completion.
    fn run_one(&mut self, sqe: squeue::Entry, op: &'static str) -> Result<i32, PinError> {
        // SAFETY: the SQE points into the registered buffer (checked by the callers above
        // against `self.registered`), whose pages the kernel holds pinned while registered,
        // and at a descriptor the caller lends for the call; we wait for the completion before
        // returning, so nothing the request refers to outlives the call.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| PinError::Tool(anyhow::anyhow!("{op}: submission queue full")))?;
        self.ring
            .submit_and_wait(1)
            .map_err(|e| PinError::kernel("io_uring_enter", &e))?;
        let cqe = self
            .ring
            .completion()
            .next()
            .ok_or_else(|| PinError::Tool(anyhow::anyhow!("{op}: no completion after wait")))?;
        Ok(cqe.result())
    }
}
