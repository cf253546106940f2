//! The benchmark's baselines: each pin path's register and unregister made with the raw
//! calls in a tight loop, on descriptors of their own, so that pinstorm's cycle next to
//! them shows the harness's own cost and nothing else.
//!
//! Must not use anything of the pinners: not their rings, pipes, MR wrappers, helpers or
//! constants. A baseline that shared the pinner's code would measure that code twice and
//! call the difference zero (the vmsplice baseline once wrapped the pinner itself). What a
//! baseline may share with its pin path is the target (the same pages, prepared once by the
//! backing) and, for RDMA, the device context, which is the device itself. Every raw call
//! is in [`sys`]; the loops here are safe code.
//!
//! Each half is timed alone with `Instant` (CLOCK_MONOTONIC through the vDSO), exactly
//! around the call, and an errno ends the half as a measured outcome
//! ([`PinError::Kernel`]), which the benchmark counts per operation.

mod io_uring;
#[cfg(feature = "rdma")]
mod rdma;
#[allow(unsafe_code)]
mod sys;
mod vmsplice;

pub use io_uring::IoUringBaseline;
#[cfg(feature = "rdma")]
pub use rdma::RdmaBaseline;
pub use vmsplice::VmspliceBaseline;

use std::time::Instant;

use super::{CycleTimes, PinError};
use crate::sys::Errno;

/// Time `register`, and `unregister` (given what `register` made) only if it succeeded:
/// one cycle of a baseline. `ops` names the two calls in errors.
fn timed_cycle<T>(
    ops: (&'static str, &'static str),
    register: impl FnOnce() -> Result<T, Errno>,
    unregister: impl FnOnce(T) -> Result<(), Errno>,
) -> CycleTimes {
    let t0 = Instant::now();
    let r = register();
    let t1 = Instant::now();
    let made = match r {
        Ok(made) => made,
        Err(errno) => {
            return CycleTimes {
                register: Err(PinError::Kernel { op: ops.0, errno }),
                unregister: None,
            }
        }
    };
    let u = unregister(made);
    let t2 = Instant::now();
    CycleTimes {
        register: Ok(t1 - t0),
        unregister: Some(
            u.map(|()| t2 - t1)
                .map_err(|errno| PinError::Kernel { op: ops.1, errno }),
        ),
    }
}
