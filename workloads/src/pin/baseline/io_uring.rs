//! The io_uring baseline: `IORING_REGISTER_BUFFERS` + `IORING_UNREGISTER_BUFFERS` of one
//! iovec on a ring made by a raw `io_uring_setup`.

use std::os::fd::{AsFd, OwnedFd};

use super::super::{CycleTimes, PinTarget, TightLoop};
use super::{sys, timed_cycle};
use crate::sys::Errno;

/// The smallest ring: the baseline never submits a request, and the ring's size does not
/// change what registering buffers costs (1 and 4096 entries measured the same on 6.18).
const ENTRIES: u32 = 1;

pub struct IoUringBaseline {
    ring: OwnedFd,
}

impl IoUringBaseline {
    /// A ring of its own: no flags, no features asked for, its queues never mapped.
    pub fn new() -> Result<IoUringBaseline, Errno> {
        Ok(IoUringBaseline {
            ring: sys::io_uring_setup(ENTRIES)?,
        })
    }
}

impl TightLoop for IoUringBaseline {
    fn cycle(&mut self, target: PinTarget) -> CycleTimes {
        let ring = self.ring.as_fd();
        timed_cycle(
            ("IORING_REGISTER_BUFFERS", "IORING_UNREGISTER_BUFFERS"),
            || sys::io_uring_register_buffer(ring, target.addr, target.len),
            |()| sys::io_uring_unregister_buffers(ring),
        )
    }
}
