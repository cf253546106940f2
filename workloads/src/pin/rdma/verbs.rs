//! The unsafe edge of the `rdma` pin path: libibverbs objects as RAII types.
//!
//! Owns every raw verbs call pinstorm makes: the device list, device contexts, protection
//! domains, memory regions, completion queues and queue pairs, each a type whose `Drop`
//! destroys it. Children hold an `Arc` of their parent (MR -> PD -> context, QP -> PD and CQ),
//! so a parent can never be destroyed before its children, whatever order the caller drops
//! things in. Everything above this module is safe code.
//!
//! The exported verbs come from `ibverbs-sys` (the `ffi` module of the `ibverbs` crate). The
//! ones rdma-core only has as `static inline` functions (query_port, query_gid_table,
//! query_device_ex, advise_mr, post_send, poll_cq) go through the small C shim in `shim.c`.
//! Must not touch: mappings and files (the caller passes plain addresses), and it never
//! decides what an outcome means.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::Arc;

use ibverbs_sys as ffi;

use crate::sys::Errno;

// The shim (shim.c). Each returns 0 or a positive errno unless documented otherwise.
extern "C" {
    fn pinstorm_query_port(
        ctx: *mut ffi::ibv_context,
        port: u8,
        state: *mut u32,
        link_layer: *mut u32,
        active_mtu: *mut u32,
        lid: *mut u32,
        gid_tbl_len: *mut u32,
        max_msg_sz: *mut u32,
    ) -> c_int;
    fn pinstorm_pick_gid(
        ctx: *mut ffi::ibv_context,
        port: u8,
        gid: *mut u8,
        index: *mut u32,
        gid_type: *mut u32,
    ) -> c_int;
    fn pinstorm_odp_caps(
        ctx: *mut ffi::ibv_context,
        general: *mut u64,
        rc: *mut u32,
        uc: *mut u32,
        ud: *mut u32,
    ) -> c_int;
    fn pinstorm_prefetch_mr(pd: *mut ffi::ibv_pd, addr: u64, len: u32, lkey: u32) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn pinstorm_post_rdma(
        qp: *mut ffi::ibv_qp,
        write: c_int,
        wr_id: u64,
        laddr: *const u64,
        len: *const u32,
        nsge: c_int,
        lkey: u32,
        raddr: u64,
        rkey: u32,
    ) -> c_int;
    fn pinstorm_poll_one(
        cq: *mut ffi::ibv_cq,
        wr_id: *mut u64,
        status: *mut u32,
        opcode: *mut u32,
        byte_len: *mut u32,
        vendor_err: *mut u32,
        qp_num: *mut u32,
    ) -> c_int;
}

/// `errno` after a verbs call that returned NULL (EINVAL when the library left it at 0).
fn last_errno() -> Errno {
    match Errno::last() {
        Errno(0) => Errno(libc::EINVAL),
        e => e,
    }
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libibverbs returns NUL-terminated strings that live as long as the device list.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// One device of `ibv_get_device_list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEntry {
    pub name: String,
    /// `IBV_TRANSPORT_IB` (0, also RoCE) or `IBV_TRANSPORT_IWARP` (1), ...
    pub iwarp: bool,
    pub index: usize,
}

/// The device list. Freed on drop; contexts opened from it stay valid after that (libibverbs
/// reference-counts the devices).
pub struct DeviceList {
    list: *mut *mut ffi::ibv_device,
    n: usize,
}

impl DeviceList {
    /// `ibv_get_device_list`. An empty list is not an error; a kernel without uverbs gives
    /// `ENOSYS`.
    pub fn get() -> Result<DeviceList, Errno> {
        let mut n: c_int = 0;
        // SAFETY: `n` is a valid out pointer; the list is freed in `Drop`.
        let list = unsafe { ffi::ibv_get_device_list(&mut n) };
        if list.is_null() {
            return Err(last_errno());
        }
        Ok(DeviceList {
            list,
            n: n.max(0) as usize,
        })
    }

    fn raw(&self, i: usize) -> *mut ffi::ibv_device {
        assert!(i < self.n);
        // SAFETY: `i < n`, and the list holds `n` valid device pointers until freed.
        unsafe { *self.list.add(i) }
    }

    pub fn entries(&self) -> Vec<DeviceEntry> {
        (0..self.n)
            .map(|i| {
                let d = self.raw(i);
                // SAFETY: `d` is a valid device of the list (see `raw`).
                let (name, transport) =
                    unsafe { (cstr(ffi::ibv_get_device_name(d)), (*d).transport_type) };
                DeviceEntry {
                    name,
                    iwarp: transport == ffi::IBV_TRANSPORT_IWARP,
                    index: i,
                }
            })
            .collect()
    }

    /// `ibv_open_device` on entry `index`.
    pub fn open(&self, index: usize) -> Result<Context, Errno> {
        let d = self.raw(index);
        let name = self.entries()[index].name.clone();
        // SAFETY: `d` is a valid device; the context is closed in `Context::drop`.
        let ctx = unsafe { ffi::ibv_open_device(d) };
        if ctx.is_null() {
            return Err(last_errno());
        }
        Ok(Context { ctx, name })
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: `list` came from ibv_get_device_list and is freed once.
        unsafe { ffi::ibv_free_device_list(self.list) }
    }
}

/// An open device (`ibv_open_device`), closed on drop.
pub struct Context {
    ctx: *mut ffi::ibv_context,
    name: String,
}

// libibverbs contexts are thread safe (every verb takes its own locks where needed).
unsafe impl Send for Context {}
unsafe impl Sync for Context {}

/// What `ibv_query_device` says that pinstorm shows.
#[derive(Clone, Debug)]
pub struct DeviceAttr {
    pub fw_ver: String,
    pub phys_port_cnt: u8,
    pub max_mr_size: u64,
    pub vendor_id: u32,
    pub vendor_part_id: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct PortAttr {
    /// `enum ibv_port_state`: 4 = ACTIVE.
    pub state: u32,
    /// `IBV_LINK_LAYER_*`: 1 InfiniBand, 2 Ethernet.
    pub link_layer: u32,
    /// `enum ibv_mtu`.
    pub active_mtu: u32,
    pub lid: u16,
    pub gid_tbl_len: u32,
    pub max_msg_sz: u32,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct OdpCaps {
    pub general: u64,
    pub rc: u32,
    pub uc: u32,
    pub ud: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct GidPick {
    pub gid: [u8; 16],
    pub index: u32,
    /// `enum ibv_gid_type`: 0 IB, 1 RoCE v1, 2 RoCE v2.
    pub gid_type: u32,
}

impl Context {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn query_device(&self) -> Result<DeviceAttr, Errno> {
        let mut a: ffi::ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: `a` is a valid, writable ibv_device_attr; the context is open.
        let rc = unsafe { ffi::ibv_query_device(self.ctx, &mut a) };
        if rc != 0 {
            return Err(Errno(rc));
        }
        Ok(DeviceAttr {
            fw_ver: cstr(a.fw_ver.as_ptr()),
            phys_port_cnt: a.phys_port_cnt,
            max_mr_size: a.max_mr_size,
            vendor_id: a.vendor_id,
            vendor_part_id: a.vendor_part_id,
        })
    }

    pub fn query_port(&self, port: u8) -> Result<PortAttr, Errno> {
        let (mut st, mut ll, mut mtu, mut lid, mut gl, mut mm) =
            (0u32, 0u32, 0u32, 0u32, 0u32, 0u32);
        // SAFETY: all out pointers are valid u32s; the context is open.
        let rc = unsafe {
            pinstorm_query_port(
                self.ctx, port, &mut st, &mut ll, &mut mtu, &mut lid, &mut gl, &mut mm,
            )
        };
        if rc != 0 {
            return Err(Errno(rc));
        }
        Ok(PortAttr {
            state: st,
            link_layer: ll,
            active_mtu: mtu,
            lid: lid as u16,
            gid_tbl_len: gl,
            max_msg_sz: mm,
        })
    }

    /// The GID a loopback connection addresses this port with (RoCE v2 preferred).
    pub fn pick_gid(&self, port: u8) -> Result<GidPick, Errno> {
        let mut g = GidPick {
            gid: [0; 16],
            index: 0,
            gid_type: 0,
        };
        // SAFETY: `gid` has room for 16 bytes; the other out pointers are valid u32s.
        let rc = unsafe {
            pinstorm_pick_gid(
                self.ctx,
                port,
                g.gid.as_mut_ptr(),
                &mut g.index,
                &mut g.gid_type,
            )
        };
        if rc != 0 {
            return Err(Errno(rc));
        }
        Ok(g)
    }

    /// `ibv_query_device_ex`'s ODP capabilities.
    pub fn odp_caps(&self) -> Result<OdpCaps, Errno> {
        let mut c = OdpCaps::default();
        // SAFETY: valid out pointers; the context is open.
        let rc =
            unsafe { pinstorm_odp_caps(self.ctx, &mut c.general, &mut c.rc, &mut c.uc, &mut c.ud) };
        if rc != 0 {
            return Err(Errno(rc));
        }
        Ok(c)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: every child holds an Arc of this context, so none is alive any more.
        unsafe { ffi::ibv_close_device(self.ctx) };
    }
}

/// A protection domain, deallocated on drop.
pub struct Pd {
    pd: *mut ffi::ibv_pd,
    ctx: Arc<Context>,
}

unsafe impl Send for Pd {}
unsafe impl Sync for Pd {}

impl Pd {
    pub fn alloc(ctx: &Arc<Context>) -> Result<Arc<Pd>, Errno> {
        // SAFETY: the context is open; the PD is deallocated in `Drop`.
        let pd = unsafe { ffi::ibv_alloc_pd(ctx.ctx) };
        if pd.is_null() {
            return Err(last_errno());
        }
        Ok(Arc::new(Pd {
            pd,
            ctx: ctx.clone(),
        }))
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The raw PD, valid while `self` lives: for the benchmark baseline's own
    /// `ibv_reg_mr` (pin/baseline/sys.rs), which must not go through [`Mr`].
    pub(crate) fn as_ptr(&self) -> *mut ffi::ibv_pd {
        self.pd
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: MRs and QPs hold an Arc of this PD, so none is alive any more.
        unsafe { ffi::ibv_dealloc_pd(self.pd) };
    }
}

/// A registered memory region (`ibv_reg_mr`), deregistered on drop.
pub struct Mr {
    mr: *mut ffi::ibv_mr,
    pd: Arc<Pd>,
}

unsafe impl Send for Mr {}
unsafe impl Sync for Mr {}

impl Mr {
    /// Register a pinstorm mapping's range. Safe where [`Mr::register`] is not: a
    /// [`PinTarget`](crate::pin::PinTarget) is made only from a mapping pinstorm never exposes
    /// as a Rust slice or object, which is that function's contract.
    pub fn register_target(
        pd: &Arc<Pd>,
        target: crate::pin::PinTarget,
        access: u32,
    ) -> Result<Mr, Errno> {
        // SAFETY: the range is a pinstorm mapping (see `PinTarget`), never borrowed by Rust
        // code, so the device writing into it aliases nothing Rust knows about.
        unsafe { Mr::register(pd, target.addr, target.len, access) }
    }

    /// `ibv_reg_mr(pd, addr, len, access)`: the kernel pins the pages (or, with
    /// `IBV_ACCESS_ON_DEMAND`, mirrors the page tables) until `Drop` deregisters.
    ///
    /// # Safety
    /// `addr..addr+len` must not be memory that Rust code borrows as a slice or object: from
    /// now on the device may write into those pages whenever a work request naming this MR's
    /// keys is posted. (pinstorm's mappings never hand out slices; see `sys::Mapping`.) The
    /// range need not stay mapped: unmapping under a registration is a scenario, and the
    /// kernel keeps pinned pages alive until deregistration.
    pub unsafe fn register(
        pd: &Arc<Pd>,
        addr: usize,
        len: usize,
        access: u32,
    ) -> Result<Mr, Errno> {
        let mr = ffi::ibv_reg_mr(pd.pd, addr as *mut c_void, len, access as c_int);
        if mr.is_null() {
            return Err(last_errno());
        }
        Ok(Mr { mr, pd: pd.clone() })
    }

    pub fn lkey(&self) -> u32 {
        // SAFETY: `mr` is a valid registration until Drop.
        unsafe { (*self.mr).lkey }
    }

    pub fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.mr).rkey }
    }

    /// `ibv_advise_mr(PREFETCH_WRITE, FLAG_FLUSH)` over `addr..addr+len` of this (ODP) MR.
    pub fn prefetch(&self, addr: usize, len: u32) -> Result<(), Errno> {
        // SAFETY: the MR and PD are valid; the SGE is built and consumed inside the call.
        let rc = unsafe { pinstorm_prefetch_mr(self.pd.pd, addr as u64, len, self.lkey()) };
        if rc != 0 {
            return Err(Errno(rc));
        }
        Ok(())
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: registered in `register`, deregistered once. QPs that could still DMA
        // through it are the caller's to destroy first (see `Loopback`'s field order).
        unsafe { ffi::ibv_dereg_mr(self.mr) };
    }
}

/// `ibv_dereg_mr` with its result, for callers that want the errno of an unregister.
pub fn deregister(mr: Mr) -> Result<(), Errno> {
    let raw = mr.mr;
    let pd = mr.pd.clone();
    std::mem::forget(mr);
    // SAFETY: `mr` was forgotten, so this is the only deregistration.
    let rc = unsafe { ffi::ibv_dereg_mr(raw) };
    drop(pd);
    if rc != 0 {
        return Err(Errno(rc));
    }
    Ok(())
}

/// A completion queue, destroyed on drop.
pub struct Cq {
    cq: *mut ffi::ibv_cq,
    _ctx: Arc<Context>,
}

unsafe impl Send for Cq {}
unsafe impl Sync for Cq {}

/// One polled work completion.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub wr_id: u64,
    pub status: u32,
    pub opcode: u32,
    pub byte_len: u32,
    pub vendor_err: u32,
    pub qp_num: u32,
}

impl Cq {
    pub fn create(ctx: &Arc<Context>, entries: i32) -> Result<Arc<Cq>, Errno> {
        // SAFETY: the context is open; no completion channel; destroyed in Drop.
        let cq = unsafe {
            ffi::ibv_create_cq(
                ctx.ctx,
                entries,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if cq.is_null() {
            return Err(last_errno());
        }
        Ok(Arc::new(Cq {
            cq,
            _ctx: ctx.clone(),
        }))
    }

    /// Poll at most one completion (never blocks).
    pub fn poll_one(&self) -> Result<Option<Completion>, Errno> {
        let mut c = Completion {
            wr_id: 0,
            status: 0,
            opcode: 0,
            byte_len: 0,
            vendor_err: 0,
            qp_num: 0,
        };
        // SAFETY: valid out pointers; the CQ is alive.
        let n = unsafe {
            pinstorm_poll_one(
                self.cq,
                &mut c.wr_id,
                &mut c.status,
                &mut c.opcode,
                &mut c.byte_len,
                &mut c.vendor_err,
                &mut c.qp_num,
            )
        };
        match n {
            0 => Ok(None),
            1 => Ok(Some(c)),
            n => Err(Errno(if n < 0 { -n } else { libc::EIO })),
        }
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: QPs using this CQ hold an Arc of it, so none is alive any more.
        unsafe { ffi::ibv_destroy_cq(self.cq) };
    }
}

mod qp;
pub use qp::{wc_status_name, Peer, Qp, MAX_SGE};
