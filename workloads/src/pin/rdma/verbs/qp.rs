//! Queue pairs: RC connections between two ports (the loopback the `rdma` pin path does
//! device I/O over), their RDMA WRITE/READ work requests and completion status names. Part of
//! the unsafe edge of `verbs.rs`.

use std::os::raw::c_int;
use std::sync::Arc;

use ibverbs_sys as ffi;

use super::{last_errno, pinstorm_post_rdma, Cq, GidPick, Pd};
use crate::sys::Errno;

/// Where the peer of an RC queue pair is, for `ibv_modify_qp` to RTR.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub qp_num: u32,
    pub port: u8,
    pub mtu: u32,
    /// InfiniBand: the port's LID. RoCE: unused (0).
    pub lid: u16,
    /// RoCE (and routed IB): the GID and its index; rxe needs a global route.
    pub gid: Option<GidPick>,
}

/// The most send SGEs pinstorm asks a queue pair for (`Qp::create_rc`).
pub const MAX_SGE: usize = 4;

/// A reliable-connected queue pair, destroyed on drop.
pub struct Qp {
    qp: *mut ffi::ibv_qp,
    max_sge: usize,
    _pd: Arc<Pd>,
    _cq: Arc<Cq>,
}

unsafe impl Send for Qp {}
unsafe impl Sync for Qp {}

impl Qp {
    /// An RC queue pair with up to [`MAX_SGE`] send SGEs where the device allows that many
    /// (else one).
    pub fn create_rc(pd: &Arc<Pd>, cq: &Arc<Cq>, max_wr: u32) -> Result<Qp, Errno> {
        let mut last = Errno(libc::EINVAL);
        for sges in [MAX_SGE, 1] {
            let mut init: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
            init.send_cq = cq.cq;
            init.recv_cq = cq.cq;
            init.cap.max_send_wr = max_wr;
            init.cap.max_recv_wr = 1;
            init.cap.max_send_sge = sges as u32;
            init.cap.max_recv_sge = 1;
            init.qp_type = ffi::ibv_qp_type::IBV_QPT_RC;
            // SAFETY: `init` is a valid ibv_qp_init_attr naming live CQs; destroyed in Drop.
            let qp = unsafe { ffi::ibv_create_qp(pd.pd, &mut init) };
            if !qp.is_null() {
                return Ok(Qp {
                    qp,
                    max_sge: sges,
                    _pd: pd.clone(),
                    _cq: cq.clone(),
                });
            }
            last = last_errno();
        }
        Err(last)
    }

    /// The send SGEs a work request may have on this QP.
    pub fn max_sge(&self) -> usize {
        self.max_sge
    }

    pub fn qp_num(&self) -> u32 {
        // SAFETY: the QP is alive.
        unsafe { (*self.qp).qp_num }
    }

    fn modify(&self, attr: &mut ffi::ibv_qp_attr, mask: u32) -> Result<(), Errno> {
        // SAFETY: `attr` is a valid ibv_qp_attr for the fields `mask` names.
        let rc = unsafe { ffi::ibv_modify_qp(self.qp, attr, mask as c_int) };
        if rc != 0 {
            return Err(Errno(rc));
        }
        Ok(())
    }

    /// RESET (flushes everything outstanding; also the way out of the error state).
    pub fn reset(&self) -> Result<(), Errno> {
        let mut a: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ffi::ibv_qp_state::IBV_QPS_RESET;
        self.modify(&mut a, ffi::ibv_qp_attr_mask::IBV_QP_STATE.0)
    }

    /// ERROR: every outstanding work request completes with a flush error.
    pub fn to_error(&self) -> Result<(), Errno> {
        let mut a: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ffi::ibv_qp_state::IBV_QPS_ERR;
        self.modify(&mut a, ffi::ibv_qp_attr_mask::IBV_QP_STATE.0)
    }

    /// RESET -> INIT -> RTR -> RTS, connected to `peer`, accepting remote reads, writes and
    /// atomics (whether an MR allows them is the MR's access flags' business).
    /// On failure, says which transition the device refused (`RTR: EINVAL (...)`).
    pub fn connect(&self, port: u8, peer: &Peer) -> Result<(), String> {
        use ffi::ibv_qp_attr_mask as m;
        let mut a: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ffi::ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = port;
        a.qp_access_flags = (ffi::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0
            | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_READ.0
            | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC.0) as _;
        self.modify(
            &mut a,
            (m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS).0,
        )
        .map_err(|e| format!("INIT: {e}"))?;

        let mut a: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ffi::ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = peer.mtu;
        a.dest_qp_num = peer.qp_num;
        a.rq_psn = 0;
        a.max_dest_rd_atomic = 1;
        a.min_rnr_timer = 12;
        a.ah_attr.port_num = peer.port;
        a.ah_attr.dlid = peer.lid;
        if let Some(g) = peer.gid {
            a.ah_attr.is_global = 1;
            a.ah_attr.grh.dgid.raw = g.gid;
            a.ah_attr.grh.sgid_index = g.index as u8;
            a.ah_attr.grh.hop_limit = 1;
        }
        self.modify(
            &mut a,
            (m::IBV_QP_STATE
                | m::IBV_QP_AV
                | m::IBV_QP_PATH_MTU
                | m::IBV_QP_DEST_QPN
                | m::IBV_QP_RQ_PSN
                | m::IBV_QP_MAX_DEST_RD_ATOMIC
                | m::IBV_QP_MIN_RNR_TIMER)
                .0,
        )
        .map_err(|e| format!("RTR (path MTU enum {}): {e}", peer.mtu))?;

        let mut a: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ffi::ibv_qp_state::IBV_QPS_RTS;
        a.sq_psn = 0;
        // 4.096 us * 2^14 = 67 ms per try, 7 tries: a lost packet becomes an error completion
        // in well under a second, inside the caller's completion timeout.
        a.timeout = 14;
        a.retry_cnt = 7;
        a.rnr_retry = 7;
        a.max_rd_atomic = 1;
        self.modify(
            &mut a,
            (m::IBV_QP_STATE
                | m::IBV_QP_TIMEOUT
                | m::IBV_QP_RETRY_CNT
                | m::IBV_QP_RNR_RETRY
                | m::IBV_QP_SQ_PSN
                | m::IBV_QP_MAX_QP_RD_ATOMIC)
                .0,
        )
        .map_err(|e| format!("RTS: {e}"))
    }

    /// Post one signaled RDMA WRITE (`write`) or READ between `local`, a scatter/gather list
    /// of (address, length) ranges inside the MR `lkey` taken in order (at most
    /// [`Qp::max_sge`]), and `remote` (inside the MR `rkey`).
    ///
    /// # Safety
    /// Both ranges must lie in live registrations for as long as the work request is
    /// outstanding: the caller must poll its completion, or move the QP to ERROR/RESET (or
    /// destroy it) before releasing either MR or the memory behind `local`.
    pub unsafe fn post_rdma(
        &self,
        write: bool,
        wr_id: u64,
        local: &[(usize, u32)],
        lkey: u32,
        remote: usize,
        rkey: u32,
    ) -> Result<(), Errno> {
        if local.is_empty() || local.len() > self.max_sge {
            return Err(Errno(libc::EINVAL));
        }
        let addrs: Vec<u64> = local.iter().map(|(a, _)| *a as u64).collect();
        let lens: Vec<u32> = local.iter().map(|(_, l)| *l).collect();
        let rc = pinstorm_post_rdma(
            self.qp,
            c_int::from(write),
            wr_id,
            addrs.as_ptr(),
            lens.as_ptr(),
            local.len() as c_int,
            lkey,
            remote as u64,
            rkey,
        );
        if rc != 0 {
            return Err(Errno(rc));
        }
        Ok(())
    }
}

impl Qp {
    /// Post one signaled RDMA WRITE (`write`) or READ of `local.len` bytes between two
    /// pinstorm mappings: `local` registered under `lkey`, `remote` (at least as long) under
    /// `rkey`. Safe where [`Qp::post_rdma`] is not: both ranges are
    /// [`PinTarget`](crate::pin::PinTarget)s, made only from mappings pinstorm never exposes
    /// as Rust slices or objects, so whatever the device moves between them, and whenever,
    /// aliases nothing Rust knows about; a wrong key or a range outside a registration is a
    /// completion error from the device, not memory unsafety.
    pub fn post_rdma_between(
        &self,
        write: bool,
        wr_id: u64,
        local: &[crate::pin::PinTarget],
        lkey: u32,
        remote: crate::pin::PinTarget,
        rkey: u32,
    ) -> Result<(), Errno> {
        let sg = local
            .iter()
            .map(|t| {
                Ok((
                    t.addr,
                    u32::try_from(t.len).map_err(|_| Errno(libc::EINVAL))?,
                ))
            })
            .collect::<Result<Vec<_>, Errno>>()?;
        let total: usize = local.iter().map(|t| t.len).sum();
        if remote.len < total {
            return Err(Errno(libc::EINVAL));
        }
        // SAFETY: see above: every range is a pinstorm mapping.
        unsafe { self.post_rdma(write, wr_id, &sg, lkey, remote.addr, rkey) }
    }
}

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: destroying the QP stops all its DMA; the MRs it used are still registered
        // (their owners outlive the QP by field order).
        unsafe { ffi::ibv_destroy_qp(self.qp) };
    }
}

/// The name of a work completion status, as rdma-core spells the enum (`IBV_WC_REM_ACCESS_ERR`).
pub fn wc_status_name(status: u32) -> String {
    const NAMES: &[&str] = &[
        "IBV_WC_SUCCESS",
        "IBV_WC_LOC_LEN_ERR",
        "IBV_WC_LOC_QP_OP_ERR",
        "IBV_WC_LOC_EEC_OP_ERR",
        "IBV_WC_LOC_PROT_ERR",
        "IBV_WC_WR_FLUSH_ERR",
        "IBV_WC_MW_BIND_ERR",
        "IBV_WC_BAD_RESP_ERR",
        "IBV_WC_LOC_ACCESS_ERR",
        "IBV_WC_REM_INV_REQ_ERR",
        "IBV_WC_REM_ACCESS_ERR",
        "IBV_WC_REM_OP_ERR",
        "IBV_WC_RETRY_EXC_ERR",
        "IBV_WC_RNR_RETRY_EXC_ERR",
        "IBV_WC_LOC_RDD_VIOL_ERR",
        "IBV_WC_REM_INV_RD_REQ_ERR",
        "IBV_WC_REM_ABORT_ERR",
        "IBV_WC_INV_EECN_ERR",
        "IBV_WC_INV_EEC_STATE_ERR",
        "IBV_WC_FATAL_ERR",
        "IBV_WC_RESP_TIMEOUT_ERR",
        "IBV_WC_GENERAL_ERR",
        "IBV_WC_TM_ERR",
        "IBV_WC_TM_RNDV_INCOMPLETE",
    ];
    NAMES
        .get(status as usize)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("IBV_WC_STATUS_{status}"))
}
