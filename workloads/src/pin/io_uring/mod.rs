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
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use io_uring::IoUring;

use super::{
    Availability, DeviceIo, FollPins, PinError, PinKind, PinPath, PinTarget, Pinner, TightLoop,
};

#[allow(unsafe_code)]
mod sys;
use sys::FixedRing;

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

    /// Raw `io_uring_register` on a ring of the baseline's own.
    fn tight_loop(&self) -> Option<Box<dyn TightLoop>> {
        super::baseline::IoUringBaseline::new()
            .ok()
            .map(|b| Box::new(b) as Box<dyn TightLoop>)
    }
}

pub struct IoUringPinner {
    ring: FixedRing,
    /// The file the device reads from (device write) and writes to (device read).
    staging: File,
}

impl IoUringPinner {
    pub fn new() -> Result<Self, PinError> {
        let ring =
            FixedRing::new(RING_ENTRIES).map_err(|e| PinError::kernel("io_uring_setup", &e))?;
        let staging = rustix::fs::memfd_create("pinstorm-staging", rustix::fs::MemfdFlags::CLOEXEC)
            .map(File::from)
            .map_err(|e| PinError::kernel("memfd_create", &e.into()))?;
        Ok(IoUringPinner { ring, staging })
    }

    /// The ring's descriptor (for passing it to another process).
    pub fn ring_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ring.fd()
    }
}

/// A CQE result as bytes, or the kernel's errno for `op`.
fn cqe_bytes(res: i32, op: &'static str) -> Result<usize, PinError> {
    if res < 0 {
        return Err(PinError::Kernel {
            op,
            errno: super::Errno(-res),
        });
    }
    Ok(res as usize)
}

impl Pinner for IoUringPinner {
    fn register(&mut self, target: PinTarget) -> Result<(), PinError> {
        if self.ring.registered().is_some() {
            return Err(PinError::Tool(anyhow::anyhow!(
                "io_uring pinner already holds a registration"
            )));
        }
        self.ring
            .register(target)
            .map_err(|e| PinError::kernel("IORING_REGISTER_BUFFERS", &e))
    }

    fn unregister(&mut self) -> Result<(), PinError> {
        if self.ring.registered().is_none() {
            return Err(PinError::Tool(anyhow::anyhow!(
                "unregister with nothing registered"
            )));
        }
        self.ring
            .unregister()
            .map_err(|e| PinError::kernel("IORING_UNREGISTER_BUFFERS", &e))
    }

    fn registered(&self) -> Option<PinTarget> {
        self.ring.registered()
    }

    fn device_write(&mut self, offset: usize, data: &[u8]) -> Result<usize, PinError> {
        self.staging
            .write_all_at(data, 0)
            .map_err(|e| PinError::kernel("pwrite(staging)", &e))?;
        let len = u32::try_from(data.len())
            .map_err(|_| PinError::Tool(anyhow::anyhow!("device write larger than 4 GiB")))?;
        let res = self.ring.read_fixed(self.staging.as_fd(), offset, len)?;
        cqe_bytes(res, "READ_FIXED")
    }

    fn device_read(&mut self, offset: usize, len: usize) -> Result<Vec<u8>, PinError> {
        let len32 = u32::try_from(len)
            .map_err(|_| PinError::Tool(anyhow::anyhow!("device read larger than 4 GiB")))?;
        self.staging
            .set_len(0)
            .map_err(|e| PinError::kernel("ftruncate(staging)", &e))?;
        let res = self.ring.write_fixed(self.staging.as_fd(), offset, len32)?;
        let n = cqe_bytes(res, "WRITE_FIXED")?;
        let mut out = vec![0u8; n];
        self.staging
            .read_exact_at(&mut out, 0)
            .map_err(|e| PinError::kernel("pread(staging)", &e))?;
        Ok(out)
    }

    fn pin_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(self.ring_fd())
    }

    fn let_go(mut self: Box<Self>) {
        // Dropping the ring closes this process's descriptor and unmaps its queues; the
        // registration lives on in the ring for as long as another process holds it, so it
        // must not be unregistered here.
        self.ring.let_go();
    }
}

impl Drop for IoUringPinner {
    fn drop(&mut self) {
        if self.ring.registered().is_some() {
            // Ring teardown would release the pin too; unregister explicitly so the release
            // is not deferred to the ring's asynchronous exit work.
            let _ = self.ring.unregister();
        }
    }
}
