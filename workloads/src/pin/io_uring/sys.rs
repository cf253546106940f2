//! The unsafe edge of the io_uring pin path: a ring with one fixed buffer.
//!
//! Every `unsafe` of the path is here, next to the state its contract depends on: the ring
//! knows which range it registered, and checks every fixed-buffer request against it before
//! the kernel sees it, so the callers above need no `unsafe` at all.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

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

    /// Submit one request and wait for its completion, at most [`WAIT_BOUND`].
    fn run_one(&mut self, sqe: squeue::Entry, op: &'static str) -> Result<i32, PinError> {
        self.run_one_within(sqe, op, WAIT_BOUND)
    }

    /// Submit one request and wait for its completion, at most `bound`. A request that has
    /// not completed by then, or whose completion is in the CQ while the wait was not woken,
    /// is a blocked operation: `PinError::Device` with a `blocked(...)` status saying which,
    /// after an attempt to cancel it (`IORING_REGISTER_SYNC_CANCEL`), and the ring's
    /// `fdinfo` heads and tails, as the wait left them, on stderr.
    fn run_one_within(
        &mut self,
        sqe: squeue::Entry,
        op: &'static str,
        bound: Duration,
    ) -> Result<i32, PinError> {
        // SAFETY: the SQE points into the registered buffer (checked by the callers above
        // against `self.registered`), whose pages the kernel holds pinned while registered,
        // and at a descriptor the caller lends for the call; the kernel holds its own
        // reference to that file for the request. We wait for the completion, or cancel the
        // request, before returning; one that outlives the call (a cancel that failed) only
        // writes into pages the ring keeps pinned, never into memory Rust owns.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| PinError::Tool(anyhow::anyhow!("{op}: submission queue full")))?;
        let start = Instant::now();
        loop {
            let left = bound.saturating_sub(start.elapsed());
            let ts = types::Timespec::new()
                .sec(left.as_secs())
                .nsec(left.subsec_nanos());
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                Err(e) => return Err(PinError::kernel("io_uring_enter", &e)),
            }
            let cqe = self.ring.completion().next();
            let late = start.elapsed() >= bound;
            match cqe {
                Some(c) if !late => return Ok(c.result()),
                Some(c) => {
                    let ring = self.ring_state();
                    return Err(blocked(
                        op,
                        &ring,
                        format!(
                            "io_uring_enter waited {} s; its completion (res {}) was in the CQ",
                            bound.as_secs_f64(),
                            c.result()
                        ),
                    ));
                }
                None if late => {
                    // The ring as the wait left it, before the cancel changes it.
                    let ring = self.ring_state();
                    let cancel = match self.ring.submitter().register_sync_cancel(
                        Some(types::Timespec::new().sec(5)),
                        types::CancelBuilder::any(),
                    ) {
                        Ok(()) => "cancelled".to_string(),
                        Err(e) => format!("cancel failed: {e}"),
                    };
                    let after = match self.ring.completion().next() {
                        Some(c) => format!("then res {}", c.result()),
                        None => "no completion".into(),
                    };
                    return Err(blocked(
                        op,
                        &ring,
                        format!(
                            "no completion in {} s; {cancel}, {after}",
                            bound.as_secs_f64()
                        ),
                    ));
                }
                None => {}
            }
        }
    }

    /// The ring's submission and completion heads and tails, from `/proc/self/fdinfo`.
    fn ring_state(&self) -> String {
        let fdinfo =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.ring.as_raw_fd()))
                .unwrap_or_default();
        let state: Vec<&str> = fdinfo
            .lines()
            .filter(|l| {
                [
                    "SqHead",
                    "SqTail",
                    "CachedSqHead",
                    "CqHead",
                    "CqTail",
                    "CachedCqTail",
                ]
                .iter()
                .any(|k| l.starts_with(&format!("{k}:")))
            })
            .map(str::trim)
            .collect();
        state.join(" ")
    }
}

/// The blocked operation's error; `ring` (its state when the wait gave up) on stderr.
fn blocked(op: &'static str, ring: &str, what: String) -> PinError {
    eprintln!("pinstorm: io_uring {op} blocked: {what}; ring: {ring}");
    PinError::Device {
        op,
        status: format!("blocked({op}: {what})"),
    }
}

/// How long one fixed-buffer request may take before it is a blocked operation: a copy
/// between a memfd and pinned memory takes microseconds on a host and milliseconds in a TCG
/// guest. Seen on 7.2 in a TCG guest under host load: a READ_FIXED of the probe's
/// `private rw` cells on hugetlb memory that was never run (io_cqring_wait, no io-wq worker;
/// docs/findings.md).
const WAIT_BOUND: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_never_completes_is_blocked_and_cancelled_not_waited_for() {
        let mut ring = FixedRing::new(4).unwrap();
        // Written by the kernel only through the registration; never read here.
        let mut buf = vec![0u8; 4096];
        let addr = buf.as_mut_ptr();
        let target = PinTarget {
            addr: addr as usize,
            len: buf.len(),
            writable: true,
        };
        if let Err(e) = ring.register(target) {
            eprintln!("skipped: IORING_REGISTER_BUFFERS: {e} (memlock limit?)");
            return;
        }
        // A READ_FIXED from an empty pipe nobody writes to: the kernel waits for data.
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let sqe = opcode::ReadFixed::new(types::Fd(r.as_raw_fd()), addr, 16, 0)
            .offset(u64::MAX)
            .build();
        let e = ring
            .run_one_within(sqe, "READ_FIXED", Duration::from_millis(300))
            .unwrap_err();
        let status = e.outcome().unwrap();
        assert!(
            status.starts_with(
                "blocked(READ_FIXED: no completion in 0.3 s; cancelled, then res -125"
            ),
            "{status}"
        );
        // The ring is usable again: a request that completes is not blocked.
        let (r2, w2) = rustix::pipe::pipe().unwrap();
        rustix::io::write(&w2, b"pinstorm").unwrap();
        let sqe = opcode::ReadFixed::new(types::Fd(r2.as_raw_fd()), addr, 8, 0)
            .offset(u64::MAX)
            .build();
        assert_eq!(
            ring.run_one_within(sqe, "READ_FIXED", Duration::from_secs(5))
                .unwrap(),
            8
        );
        ring.unregister().unwrap();
        drop(buf);
    }
}
