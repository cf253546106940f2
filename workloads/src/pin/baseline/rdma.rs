//! The RDMA baseline: `ibv_reg_mr` + `ibv_dereg_mr` on a protection domain of its own. The
//! only thing it shares with the pinner is the device context the PD belongs to.

use std::sync::Arc;

use super::super::rdma::verbs::Pd;
use super::super::{CycleTimes, PinTarget, TightLoop};
use super::{sys, timed_cycle};

pub struct RdmaBaseline {
    pd: Arc<Pd>,
    /// Access flags for writable and for read-only targets, as the pin path would pass them.
    access_rw: u32,
    access_ro: u32,
}

impl RdmaBaseline {
    pub fn new(pd: Arc<Pd>, access_rw: u32, access_ro: u32) -> RdmaBaseline {
        RdmaBaseline {
            pd,
            access_rw,
            access_ro,
        }
    }
}

impl TightLoop for RdmaBaseline {
    fn cycle(&mut self, target: PinTarget) -> CycleTimes {
        let access = if target.writable {
            self.access_rw
        } else {
            self.access_ro
        };
        timed_cycle(
            ("ibv_reg_mr", "ibv_dereg_mr"),
            || sys::ibv_reg_mr(&self.pd, target.addr, target.len, access),
            sys::ibv_dereg_mr,
        )
    }
}
