//! Pin path `io_uring`: fixed buffers.
//!
//! `IORING_REGISTER_BUFFERS` pins the pages with `FOLL_WRITE | FOLL_LONGTERM` (through
//! `pin_user_pages()` since 5.6) and keeps them pinned until `IORING_UNREGISTER_BUFFERS` or
//! ring teardown. The "device" is the kernel's own copy engine: `READ_FIXED` from a staging
//! file writes into the pinned pages without touching the process's page tables, exactly as
//! a DMA engine would; `WRITE_FIXED` to the staging file reads them.
//!
//! One ring per pinner: a ring has one buffer table, and a second registration on the same
//! ring is EBUSY.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use super::{
    check_span, Availability, DeviceIo, FollPins, PinError, PinKind, PinPath, PinTarget, Pinner,
    TightLoop,
};

/// Entries in each ring: device I/O is one request at a time.
const RING_ENTRIES: u32 = 4;

pub struct IoUringPath;

impl PinPath for IoUringPath {
    fn kind(&self) -> PinKind {
        PinKind::IoUring
    }

    /// IORING_REGISTER_BUFFERS pins with pin_user_pages (FOLL_WRITE | FOLL_LONGTERM).
    fn foll_pins(&self) -> FollPins {
        FollPins::Counted
    }

    /// `IORING_OP_READ_FIXED` from a file into the registered buffer.
    fn device_writes(&self) -> DeviceIo {
        DeviceIo::Supported
    }

    /// `IORING_OP_WRITE_FIXED` from the registered buffer into a file.
    fn device_reads(&self) -> DeviceIo {
        DeviceIo::Supported
    }

    fn availability(&self) -> Availability {
        // kernel/io_uring_disabled (6.6+): 2 = disabled for all, 1 = only io_uring_group.
        if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
            if v.trim() == "2" {
                return Availability::NotRun(
                    "io_uring is disabled (kernel.io_uring_disabled = 2)".into(),
                );
            }
        }
        match IoUring::new(RING_ENTRIES) {
            Ok(_) => Availability::Usable,
            Err(e) => Availability::NotRun(format!(
                "io_uring_setup failed: {} (kernel without CONFIG_IO_URING, a seccomp filter, or kernel.io_uring_disabled)",
                super::Errno::from_io(&e).map(|e| e.to_string()).unwrap_or_else(|| e.to_string())
            )),
        }
    }

    fn pinner(&self) -> Result<Box<dyn Pinner>, PinError> {
        Ok(Box::new(IoUringPinner::new()?))
    }

    fn tight_loop(&self) -> Option<Box<dyn TightLoop>> {
        IoUring::new(RING_ENTRIES)
            .ok()
            .map(|ring| Box::new(IoUringTightLoop { ring }) as Box<dyn TightLoop>)
    }
}

fn iovec(t: PinTarget) -> libc::iovec {
    libc::iovec {
        iov_base: t.addr as *mut libc::c_void,
        iov_len: t.len,
    }
}

pub struct IoUringPinner {
    ring: IoUring,
    registered: Option<PinTarget>,
    /// The file the device reads from (device write) and writes to (device read).
    staging: File,
}

impl IoUringPinner {
    pub fn new() -> Result<Self, PinError> {
        let ring =
            IoUring::new(RING_ENTRIES).map_err(|e| PinError::kernel("io_uring_setup", &e))?;
        let staging = rustix::fs::memfd_create("pinstorm-staging", rustix::fs::MemfdFlags::CLOEXEC)
            .map(File::from)
            .map_err(|e| PinError::kernel("memfd_create", &e.into()))?;
        Ok(IoUringPinner {
            ring,
            registered: None,
            staging,
        })
    }

    /// The ring's descriptor (for passing it to another process).
    pub fn ring_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to `self.ring` and lives as long as `self`.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
    }

    /// Submit one fixed-buffer request and wait for its completion.
    fn run_one(
        &mut self,
        sqe: io_uring::squeue::Entry,
        op: &'static str,
    ) -> Result<usize, PinError> {
        // SAFETY: the SQE points into the registered buffer (checked by `check_span`), whose
        // pages the kernel holds pinned for as long as it is registered, and at a staging file
        // we own; we wait for the completion before returning, so nothing outlives the call.
        unsafe {
            self.ring
                .submission()
                .push(&sqe)
                .map_err(|_| PinError::Tool(anyhow::anyhow!("{op}: submission queue full")))?;
        }
        self.ring
            .submit_and_wait(1)
            .map_err(|e| PinError::kernel("io_uring_enter", &e))?;
        let cqe = self
            .ring
            .completion()
            .next()
            .ok_or_else(|| PinError::Tool(anyhow::anyhow!("{op}: no completion after wait")))?;
        let res = cqe.result();
        if res < 0 {
            return Err(PinError::Kernel {
                op,
                errno: super::Errno(-res),
            });
        }
        Ok(res as usize)
    }
}

impl Pinner for IoUringPinner {
    fn register(&mut self, target: PinTarget) -> Result<(), PinError> {
        if self.registered.is_some() {
            return Err(PinError::Tool(anyhow::anyhow!(
                "io_uring pinner already holds a registration"
            )));
        }
        let iov = [iovec(target)];
        // SAFETY: io_uring keeps the address range and pins its pages; the kernel, not this
        // process, writes through the pin from now on, and only when we submit fixed-buffer
        // requests. If the caller unmaps the range while it is registered, the pinned pages
        // stay alive in the kernel and no Rust object refers to them.
        unsafe { self.ring.submitter().register_buffers(&iov) }
            .map_err(|e| PinError::kernel("IORING_REGISTER_BUFFERS", &e))?;
        self.registered = Some(target);
        Ok(())
    }

    fn unregister(&mut self) -> Result<(), PinError> {
        if self.registered.is_none() {
            return Err(PinError::Tool(anyhow::anyhow!(
                "unregister with nothing registered"
            )));
        }
        self.ring
            .submitter()
            .unregister_buffers()
            .map_err(|e| PinError::kernel("IORING_UNREGISTER_BUFFERS", &e))?;
        self.registered = None;
        Ok(())
    }

    fn registered(&self) -> Option<PinTarget> {
        self.registered
    }

    fn device_write(&mut self, offset: usize, data: &[u8]) -> Result<usize, PinError> {
        let t = check_span(self.registered, offset, data.len())?;
        self.staging
            .write_all_at(data, 0)
            .map_err(|e| PinError::kernel("pwrite(staging)", &e))?;
        let len = u32::try_from(data.len())
            .map_err(|_| PinError::Tool(anyhow::anyhow!("device write larger than 4 GiB")))?;
        let sqe = opcode::ReadFixed::new(
            types::Fd(self.staging.as_raw_fd()),
            (t.addr + offset) as *mut u8,
            len,
            0,
        )
        .offset(0)
        .build();
        self.run_one(sqe, "READ_FIXED")
    }

    fn device_read(&mut self, offset: usize, len: usize) -> Result<Vec<u8>, PinError> {
        let t = check_span(self.registered, offset, len)?;
        let len32 = u32::try_from(len)
            .map_err(|_| PinError::Tool(anyhow::anyhow!("device read larger than 4 GiB")))?;
        self.staging
            .set_len(0)
            .map_err(|e| PinError::kernel("ftruncate(staging)", &e))?;
        let sqe = opcode::WriteFixed::new(
            types::Fd(self.staging.as_raw_fd()),
            (t.addr + offset) as *const u8,
            len32,
            0,
        )
        .offset(0)
        .build();
        let n = self.run_one(sqe, "WRITE_FIXED")?;
        let mut out = vec![0u8; n];
        self.staging
            .read_exact_at(&mut out, 0)
            .map_err(|e| PinError::kernel("pread(staging)", &e))?;
        Ok(out)
    }
}

impl Drop for IoUringPinner {
    fn drop(&mut self) {
        if self.registered.is_some() {
            // Ring teardown would release the pin too; unregister explicitly so the release
            // is not deferred to the ring's asynchronous exit work.
            let _ = self.ring.submitter().unregister_buffers();
        }
    }
}

/// The tight-loop baseline: the same two syscalls, no trait objects, no bookkeeping.
pub struct IoUringTightLoop {
    ring: IoUring,
}

impl TightLoop for IoUringTightLoop {
    fn cycle(&mut self, target: PinTarget) -> Result<(Duration, Duration), PinError> {
        let iov = [iovec(target)];
        let t0 = Instant::now();
        // SAFETY: as in `IoUringPinner::register`; the buffer is unregistered below before
        // this function returns.
        let r = unsafe { self.ring.submitter().register_buffers(&iov) };
        let t1 = Instant::now();
        r.map_err(|e| PinError::kernel("IORING_REGISTER_BUFFERS", &e))?;
        let r = self.ring.submitter().unregister_buffers();
        let t2 = Instant::now();
        r.map_err(|e| PinError::kernel("IORING_UNREGISTER_BUFFERS", &e))?;
        Ok((t1 - t0, t2 - t1))
    }
}
