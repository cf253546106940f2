//! The vmsplice baseline: `vmsplice(2)` of the whole range into pipes of its own, sized
//! once with `F_SETPIPE_SZ`, then `read(2)` of exactly what each pipe holds.
//!
//! "Register" is every vmsplice call that puts the range's pages into the pipes (the pages
//! are held from then on); "unregister" is every read that drains them (the references go
//! as the pipe buffers are consumed). A range larger than `fs/pipe-max-size` takes several
//! pipes, because one pipe cannot hold it.

use std::os::fd::{AsFd, OwnedFd};

use super::super::{CycleTimes, PinError, PinTarget, TightLoop};
use super::{sys, timed_cycle};
use crate::sys::Errno;

/// Bytes per `read(2)` when draining: sixteen 4 KiB pipe buffers per call.
const READ_BYTES: usize = 64 << 10;

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Bytes of the range this pipe takes in each cycle.
    part: usize,
}

pub struct VmspliceBaseline {
    /// The most one pipe may hold: `fs/pipe-max-size` rounded down to a power of two pages
    /// (the kernel rounds a pipe's size up to one).
    max_pipe: usize,
    pipes: Vec<Pipe>,
    /// The range length the pipes are sized for.
    sized_for: usize,
    buf: Vec<u8>,
}

impl VmspliceBaseline {
    pub fn new() -> VmspliceBaseline {
        let limit = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(1 << 20);
        let pages = (limit / 4096).max(1);
        VmspliceBaseline {
            max_pipe: (1usize << pages.ilog2()) * 4096,
            pipes: Vec::new(),
            sized_for: 0,
            buf: vec![0; READ_BYTES],
        }
    }

    /// Pipes for a range of `len` bytes, made and sized outside the timed calls.
    fn size_for(&mut self, len: usize) -> Result<(), Errno> {
        if self.sized_for == len && !self.pipes.is_empty() {
            return Ok(());
        }
        self.pipes.clear();
        let mut left = len;
        while left > 0 {
            let part = left.min(self.max_pipe);
            let (r, w) = sys::pipe_nonblock()?;
            sys::set_pipe_size(w.as_fd(), part.div_ceil(4096).next_power_of_two() * 4096)?;
            self.pipes.push(Pipe { r, w, part });
            left -= part;
        }
        self.sized_for = len;
        Ok(())
    }

    /// Drain whatever the pipes hold (after a failed vmsplice), untimed.
    fn empty(&mut self) {
        for p in &self.pipes {
            while matches!(sys::read(p.r.as_fd(), &mut self.buf), Ok(n) if n > 0) {}
        }
    }
}

impl Default for VmspliceBaseline {
    fn default() -> Self {
        Self::new()
    }
}

/// vmsplice `part` bytes at `addr` into `pipe`, call after call until all are in.
fn splice_all(pipe: &Pipe, addr: usize) -> Result<(), Errno> {
    let mut off = 0;
    while off < pipe.part {
        match sys::vmsplice(pipe.w.as_fd(), addr + off, pipe.part - off)? {
            // A pipe sized for the part always has room; no progress would loop forever.
            0 => return Err(Errno(libc::ENOSPC)),
            n => off += n,
        }
    }
    Ok(())
}

/// Read exactly `part` bytes out of `pipe`.
fn drain(pipe: &Pipe, buf: &mut [u8]) -> Result<(), Errno> {
    let mut left = pipe.part;
    while left > 0 {
        let want = left.min(buf.len());
        let n = sys::read(pipe.r.as_fd(), &mut buf[..want])?;
        if n == 0 {
            return Err(Errno(libc::EPIPE));
        }
        left -= n;
    }
    Ok(())
}

impl TightLoop for VmspliceBaseline {
    fn cycle(&mut self, target: PinTarget) -> CycleTimes {
        if let Err(errno) = self.size_for(target.len) {
            return CycleTimes {
                register: Err(PinError::Kernel {
                    op: "F_SETPIPE_SZ",
                    errno,
                }),
                unregister: None,
            };
        }
        let pipes = &self.pipes;
        let buf = &mut self.buf;
        let times = timed_cycle(
            ("vmsplice", "read(pipe)"),
            || {
                let mut addr = target.addr;
                for p in pipes {
                    splice_all(p, addr)?;
                    addr += p.part;
                }
                Ok(())
            },
            |()| pipes.iter().try_for_each(|p| drain(p, buf)),
        );
        if times.register.is_err() || matches!(times.unregister, Some(Err(_))) {
            self.empty();
        }
        times
    }
}
