//! Pin path `vmsplice`: transient pins. `vmsplice(2)` puts references to the mapping's pages
//! into a pipe; they stay held until the pipe is drained. No root, no RDMA, and on FS-DAX it
//! makes truncate and punch wait for the pages (the DAX "busy page" path), which is what this
//! path is for.
//!
//! The pipe holds the pages read-only: the "device" can read them (by `tee`ing the pipe and
//! reading the copy) but cannot write through them, so `device_write` is `notrun`.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::pipe::{fcntl_setpipe_size, pipe_with, tee, PipeFlags, SpliceFlags};

use super::{
    check_span, Availability, DeviceIo, FollPins, PinError, PinKind, PinPath, PinTarget, Pinner,
    TightLoop,
};
use crate::sys::Errno;

const NO_WRITE: &str =
    "vmsplice pins are read-only: a pipe holds the pages, nothing writes through them";

pub struct VmsplicePath;

impl PinPath for VmsplicePath {
    fn kind(&self) -> PinKind {
        PinKind::Vmsplice
    }

    fn foll_pins(&self) -> FollPins {
        FollPins::NotTaken(
            "vmsplice holds page references (FOLL_GET), not FOLL_PIN pins: /proc/vmstat cannot see them",
        )
    }

    fn device_writes(&self) -> DeviceIo {
        DeviceIo::Unsupported(NO_WRITE)
    }

    /// By `tee`ing the pipe and reading the copy.
    fn device_reads(&self) -> DeviceIo {
        DeviceIo::Supported
    }

    fn availability(&self) -> Availability {
        match pipe_with(PipeFlags::CLOEXEC) {
            Ok(_) => Availability::Usable,
            Err(e) => Availability::NotRun(format!("pipe2 failed: {}", Errno::from(e))),
        }
    }

    fn pinner(&self) -> Result<Box<dyn Pinner>, PinError> {
        Ok(Box::new(VmsplicePinner::new()))
    }

    /// Raw vmsplice and read on pipes of the baseline's own.
    fn tight_loop(&self) -> Option<Box<dyn TightLoop>> {
        Some(Box::new(super::baseline::VmspliceBaseline::new()))
    }
}

/// One pipe and how many bytes of the region it holds.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    held: usize,
}

/// Holds a region in as many pipes as `fs/pipe-max-size` requires (a pipe's capacity is
/// limited for unprivileged users and, without CAP_SYS_RESOURCE, for root too).
pub struct VmsplicePinner {
    pipes: Vec<Pipe>,
    chunk: usize,
    registered: Option<PinTarget>,
}

/// The pipe capacity for `len` bytes: a power of two number of pages.
fn pipe_capacity(len: usize) -> usize {
    len.div_ceil(4096).next_power_of_two() * 4096
}

fn new_pipe(capacity: usize) -> Result<Pipe, PinError> {
    let (r, w) =
        pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).map_err(|e| PinError::Kernel {
            op: "pipe2",
            errno: e.into(),
        })?;
    fcntl_setpipe_size(&w, capacity).map_err(|e| PinError::Kernel {
        op: "F_SETPIPE_SZ",
        errno: e.into(),
    })?;
    Ok(Pipe { r, w, held: 0 })
}

fn drain(p: &mut Pipe) -> Result<(), PinError> {
    let mut buf = vec![0u8; 1 << 16];
    let mut f = std::fs::File::from(p.r.try_clone().map_err(|e| PinError::kernel("dup", &e))?);
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(PinError::kernel("read(pipe)", &e)),
        }
    }
    p.held = 0;
    Ok(())
}

impl VmsplicePinner {
    fn new() -> VmsplicePinner {
        let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(1 << 20);
        // A power of two number of pages no larger than the limit.
        let chunk = (max / 4096).max(1);
        let chunk = (1usize << (usize::BITS - 1 - chunk.leading_zeros())) * 4096;
        VmsplicePinner {
            pipes: Vec::new(),
            chunk,
            registered: None,
        }
    }

    fn splice_in(&mut self, t: PinTarget) -> Result<(), PinError> {
        let mut done = 0usize;
        let mut idx = 0;
        while done < t.len {
            let part = (t.len - done).min(self.chunk);
            if idx == self.pipes.len() {
                self.pipes.push(new_pipe(pipe_capacity(part))?);
            } else {
                fcntl_setpipe_size(&self.pipes[idx].w, pipe_capacity(part)).map_err(|e| {
                    PinError::Kernel {
                        op: "F_SETPIPE_SZ",
                        errno: e.into(),
                    }
                })?;
            }
            let mut off = 0;
            while off < part {
                let n = crate::sys::vmsplice_ref(
                    self.pipes[idx].w.as_fd(),
                    t.addr + done + off,
                    part - off,
                )
                .map_err(|errno| PinError::Kernel {
                    op: "vmsplice",
                    errno,
                })?;
                if n == 0 {
                    return Err(PinError::Tool(anyhow::anyhow!("vmsplice made no progress")));
                }
                off += n;
                self.pipes[idx].held += n;
            }
            done += part;
            idx += 1;
        }
        Ok(())
    }

    fn drain_all(&mut self) -> Result<(), PinError> {
        for p in &mut self.pipes {
            if p.held > 0 {
                drain(p)?;
            }
        }
        Ok(())
    }
}

impl Pinner for VmsplicePinner {
    fn register(&mut self, target: PinTarget) -> Result<(), PinError> {
        if self.registered.is_some() {
            return Err(PinError::Tool(anyhow::anyhow!(
                "vmsplice pinner already holds a registration"
            )));
        }
        if let Err(e) = self.splice_in(target) {
            let _ = self.drain_all();
            return Err(e);
        }
        self.registered = Some(target);
        Ok(())
    }

    fn unregister(&mut self) -> Result<(), PinError> {
        if self.registered.is_none() {
            return Err(PinError::Tool(anyhow::anyhow!(
                "unregister with nothing registered"
            )));
        }
        self.drain_all()?;
        self.registered = None;
        Ok(())
    }

    fn registered(&self) -> Option<PinTarget> {
        self.registered
    }

    fn device_write(&mut self, _offset: usize, _data: &[u8]) -> Result<usize, PinError> {
        Err(PinError::NotRun(NO_WRITE.into()))
    }

    fn device_read(&mut self, offset: usize, len: usize) -> Result<Vec<u8>, PinError> {
        check_span(self.registered, offset, len)?;
        let mut out = Vec::with_capacity(offset + len);
        for p in &self.pipes {
            if out.len() >= offset + len || p.held == 0 {
                break;
            }
            let copy = new_pipe(pipe_capacity(p.held))?;
            // tee duplicates the pipe's contents without consuming them.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match tee(p.r.as_fd(), &copy.w, p.held, SpliceFlags::NONBLOCK) {
                    Ok(_) => break,
                    Err(rustix::io::Errno::AGAIN) if Instant::now() < deadline => {
                        std::thread::yield_now()
                    }
                    Err(e) => {
                        return Err(PinError::Kernel {
                            op: "tee",
                            errno: e.into(),
                        })
                    }
                }
            }
            drop(copy.w);
            std::fs::File::from(copy.r)
                .read_to_end(&mut out)
                .map_err(|e| PinError::kernel("read(pipe)", &e))?;
        }
        if out.len() < offset + len {
            return Err(PinError::Tool(anyhow::anyhow!(
                "tee gave {} of {} bytes",
                out.len(),
                offset + len
            )));
        }
        Ok(out[offset..offset + len].to_vec())
    }
}

impl Drop for VmsplicePinner {
    fn drop(&mut self) {
        // Closing the pipe drops the page references too; drain first so it is immediate.
        if self.registered.is_some() {
            let _ = self.drain_all();
        }
    }
}
