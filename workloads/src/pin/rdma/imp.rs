//! The `rdma` paths with the feature: device selection, the pinner, the loopback "device",
//! the tight loop and the inventory. Safe code over [`super::verbs`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::verbs::{self, Context, Cq, DeviceList, GidPick, Mr, Pd, Peer, PortAttr, Qp};
use super::{DeviceReport, PortReport, RdmaConfig, HINT};
use crate::pin::{check_span, Availability, PinError, PinTarget, Pinner, TightLoop};
use crate::sys::{Errno, MapMode, Mapping};

const PORT_ACTIVE: u32 = 4;
const LINK_LAYER_ETHERNET: u32 = 2;

fn port_state_name(s: u32) -> String {
    match s {
        0 => "NOP",
        1 => "DOWN",
        2 => "INIT",
        3 => "ARMED",
        4 => "ACTIVE",
        5 => "ACTIVE_DEFER",
        _ => "UNKNOWN",
    }
    .into()
}

fn link_layer_name(l: u32) -> String {
    match l {
        1 => "InfiniBand",
        2 => "Ethernet",
        _ => "unspecified",
    }
    .into()
}

fn gid_type_name(t: u32) -> &'static str {
    match t {
        0 => "IB",
        1 => "RoCEv1",
        2 => "RoCEv2",
        _ => "?",
    }
}

/// The device and port a run uses.
struct Selected {
    ctx: Arc<Context>,
    port: u8,
    attr: PortAttr,
    iwarp: bool,
}

fn no_device(why: &str) -> String {
    format!("{why}; {HINT}")
}

fn select(cfg: &RdmaConfig) -> Result<Selected, String> {
    let list = DeviceList::get().map_err(|e| {
        no_device(&format!(
            "no RDMA support: ibv_get_device_list: {e} (kernel without CONFIG_INFINIBAND_USER_ACCESS, or ib_uverbs not loaded)"
        ))
    })?;
    let entries = list.entries();
    if entries.is_empty() {
        return Err(no_device("no RDMA device (ibv_get_device_list found none)"));
    }
    let names: Vec<_> = entries.iter().map(|e| e.name.clone()).collect();
    let candidates: Vec<_> = match &cfg.device {
        Some(want) => {
            let Some(e) = entries.iter().find(|e| &e.name == want) else {
                return Err(format!(
                    "--rdma-dev {want}: no such RDMA device here (devices: {})",
                    names.join(", ")
                ));
            };
            vec![e.clone()]
        }
        None => entries,
    };
    let mut why = Vec::new();
    for e in candidates {
        let ctx = match list.open(e.index) {
            Ok(c) => Arc::new(c),
            Err(err) => {
                why.push(format!("{}: ibv_open_device: {err}", e.name));
                continue;
            }
        };
        let ports = match ctx.query_device() {
            Ok(a) => a.phys_port_cnt,
            Err(err) => {
                why.push(format!("{}: ibv_query_device: {err}", e.name));
                continue;
            }
        };
        let try_ports: Vec<u8> = match cfg.port {
            Some(p) => vec![p],
            None => (1..=ports).collect(),
        };
        for p in try_ports {
            match ctx.query_port(p) {
                Ok(a) if a.state == PORT_ACTIVE => {
                    return Ok(Selected {
                        ctx,
                        port: p,
                        attr: a,
                        iwarp: e.iwarp,
                    })
                }
                Ok(a) => why.push(format!(
                    "{} port {p} is {}",
                    e.name,
                    port_state_name(a.state)
                )),
                Err(err) => why.push(format!("{} port {p}: ibv_query_port: {err}", e.name)),
            }
        }
    }
    Err(format!(
        "no active RDMA port{}: {}{}",
        if cfg.port.is_some() {
            " (--rdma-port)"
        } else {
            ""
        },
        why.join("; "),
        if cfg.device.is_none() {
            format!("; {HINT}")
        } else {
            String::new()
        }
    ))
}

pub fn availability(cfg: &RdmaConfig) -> Availability {
    match select(cfg) {
        Ok(_) => Availability::Usable,
        Err(r) => Availability::NotRun(r),
    }
}

pub fn selected_name(cfg: &RdmaConfig) -> Option<String> {
    select(cfg).ok().map(|s| s.ctx.name().to_string())
}

pub fn selected_summary(cfg: &RdmaConfig) -> Result<String, String> {
    let s = select(cfg)?;
    let gid = s
        .ctx
        .pick_gid(s.port)
        .map(|g| format!(", gid index {} ({})", g.index, gid_type_name(g.gid_type)))
        .unwrap_or_default();
    let fw = s.ctx.query_device().map(|a| a.fw_ver).unwrap_or_default();
    Ok(format!(
        "{} port {} ({}{}, fw {fw})",
        s.ctx.name(),
        s.port,
        if s.iwarp {
            "iWARP".to_string()
        } else {
            link_layer_name(s.attr.link_layer)
        },
        gid
    ))
}

pub fn inventory() -> Result<Vec<DeviceReport>, String> {
    let list = DeviceList::get().map_err(|e| no_device(&format!("ibv_get_device_list: {e}")))?;
    let entries = list.entries();
    if entries.is_empty() {
        return Err(no_device("no RDMA device"));
    }
    let mut out = Vec::new();
    for e in entries {
        let mut r = DeviceReport {
            name: e.name.clone(),
            transport: if e.iwarp { "iwarp" } else { "ib" }.into(),
            fw_ver: String::new(),
            vendor_id: 0,
            vendor_part_id: 0,
            ports: Vec::new(),
            odp: String::new(),
            odp_rc_write: false,
            error: None,
        };
        let ctx = match list.open(e.index) {
            Ok(c) => c,
            Err(err) => {
                r.error = Some(format!("ibv_open_device: {err}"));
                out.push(r);
                continue;
            }
        };
        match ctx.query_device() {
            Ok(a) => {
                r.fw_ver = a.fw_ver;
                r.vendor_id = a.vendor_id;
                r.vendor_part_id = a.vendor_part_id;
                for p in 1..=a.phys_port_cnt {
                    match ctx.query_port(p) {
                        Ok(pa) => r.ports.push(PortReport {
                            port: p,
                            state: port_state_name(pa.state),
                            link_layer: link_layer_name(pa.link_layer),
                            active_mtu: 128 << pa.active_mtu,
                            gid: ctx.pick_gid(p).ok().map(|g| {
                                format!("index {} {}", g.index, gid_type_name(g.gid_type))
                            }),
                        }),
                        Err(err) => {
                            r.error = Some(format!("ibv_query_port({p}): {err}"));
                        }
                    }
                }
            }
            Err(err) => r.error = Some(format!("ibv_query_device: {err}")),
        }
        match ctx.odp_caps() {
            Ok(c) => {
                r.odp_rc_write = c.general & 1 != 0 && c.rc & (1 << 2) != 0;
                r.odp = if c.general & 1 == 0 {
                    "none (no IBV_ODP_SUPPORT)".into()
                } else {
                    let t = |caps: u32| {
                        let mut v = Vec::new();
                        for (b, n) in [
                            (0, "send"),
                            (1, "recv"),
                            (2, "write"),
                            (3, "read"),
                            (4, "atomic"),
                            (5, "srq"),
                        ] {
                            if caps & (1 << b) != 0 {
                                v.push(n);
                            }
                        }
                        if v.is_empty() {
                            "-".to_string()
                        } else {
                            v.join(",")
                        }
                    };
                    format!(
                        "ODP{} rc:{} uc:{} ud:{}",
                        if c.general & 2 != 0 { "+implicit" } else { "" },
                        t(c.rc),
                        t(c.uc),
                        t(c.ud)
                    )
                };
            }
            Err(err) => r.odp = format!("ibv_query_device_ex: {err}"),
        }
        out.push(r);
    }
    Ok(out)
}

/// Staging memory for the loopback: anonymous, registered once, grown on demand.
struct Staging {
    // Field order is drop order: deregister before unmapping.
    mr: Mr,
    mem: Mapping,
}

impl Staging {
    fn new(pd: &Arc<Pd>, len: usize) -> Result<Staging, PinError> {
        let len = len.max(64 * 1024).next_multiple_of(4096);
        let mem = Mapping::anonymous(
            len,
            MapMode {
                shared: false,
                writable: true,
                hugetlb: false,
                populate: true,
            },
        )
        .map_err(|e| PinError::Kernel {
            op: "mmap(staging)",
            errno: e,
        })?;
        // The staging mapping is dropped after the MR (field order).
        let mr = Mr::register_target(pd, PinTarget::of(&mem, len), 1 | 2 | 4).map_err(|e| {
            PinError::Kernel {
                op: "ibv_reg_mr(staging)",
                errno: e,
            }
        })?;
        Ok(Staging { mr, mem })
    }
}

/// Two RC queue pairs on the same port, connected to each other: the "device" that writes
/// into and reads out of the MR under test.
struct Loopback {
    // Field order is drop order: QPs (stop all DMA) before the staging MR and memory.
    requester: Qp,
    responder: Qp,
    cq: Arc<Cq>,
    staging: Staging,
    port: u8,
    peer_of_requester: Peer,
    peer_of_responder: Peer,
    next_wr: u64,
    /// Why the queue pairs could not be reconnected after a failed transfer.
    broken: Option<String>,
}

impl Loopback {
    fn new(pd: &Arc<Pd>, sel: &Selected, path_mtu: Option<u32>) -> Result<Loopback, String> {
        if sel.iwarp {
            return Err(
                "iWARP devices (siw, cxgb4, irdma in iWARP mode) connect queue pairs through rdma_cm only; the loopback device uses ibv_modify_qp, so device I/O is not run (registration is)"
                    .into(),
            );
        }
        let gid: Option<GidPick> = if sel.attr.link_layer == LINK_LAYER_ETHERNET {
            Some(sel.ctx.pick_gid(sel.port).map_err(|e| {
                format!("RoCE port {} has no usable GID ({e}): give its netdev an address or bring it up", sel.port)
            })?)
        } else {
            sel.ctx
                .pick_gid(sel.port)
                .ok()
                .filter(|_| sel.attr.lid == 0)
        };
        let cq = Cq::create(pd.context(), 16).map_err(|e| format!("ibv_create_cq: {e}"))?;
        let requester = Qp::create_rc(pd, &cq, 4).map_err(|e| format!("ibv_create_qp: {e}"))?;
        let responder = Qp::create_rc(pd, &cq, 4).map_err(|e| format!("ibv_create_qp: {e}"))?;
        let mtu = path_mtu
            .and_then(super::mtu_enum)
            .unwrap_or(sel.attr.active_mtu);
        let peer = |qp: &Qp| Peer {
            qp_num: qp.qp_num(),
            port: sel.port,
            mtu,
            lid: sel.attr.lid,
            gid,
        };
        let staging = Staging::new(pd, 64 * 1024).map_err(|e| format!("{e}"))?;
        let lb = Loopback {
            peer_of_requester: peer(&responder),
            peer_of_responder: peer(&requester),
            requester,
            responder,
            cq,
            staging,
            port: sel.port,
            next_wr: 1,
            broken: None,
        };
        lb.connect()
            .map_err(|e| format!("connecting the loopback queue pairs: ibv_modify_qp to {e}"))?;
        Ok(lb)
    }

    fn connect(&self) -> Result<(), String> {
        self.requester.connect(self.port, &self.peer_of_requester)?;
        self.responder.connect(self.port, &self.peer_of_responder)
    }

    /// After an error completion or a timeout: flush, drain, reset, reconnect. If the device
    /// will not take the queue pairs back (some refuse RESET while a flush is in progress),
    /// mark the loopback broken; the pinner then builds a fresh one before the next transfer.
    fn recover(&mut self) {
        let _ = self.requester.to_error();
        let _ = self.responder.to_error();
        // Flush completions may trickle in: drain until the queue stays empty for a moment.
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline {
            match self.cq.poll_one() {
                Ok(Some(_)) => quiet_since = Instant::now(),
                Ok(None) if quiet_since.elapsed() > Duration::from_millis(5) => break,
                Ok(None) => std::thread::yield_now(),
                Err(_) => break,
            }
        }
        let r = self
            .requester
            .reset()
            .and_then(|_| self.responder.reset())
            .map_err(|e| format!("RESET: {e}"))
            .and_then(|_| self.connect().map_err(|e| format!("reconnect: {e}")));
        if let Err(why) = r {
            self.broken = Some(why);
        }
    }

    /// Post one RDMA WRITE or READ of `len` bytes between the staging buffer and `remote`
    /// (inside the MR `rkey`) and wait for its completion, at most `timeout`.
    fn transfer(
        &mut self,
        write: bool,
        len: usize,
        remote: PinTarget,
        rkey: u32,
        timeout: Duration,
    ) -> Result<usize, PinError> {
        let op = if write { "RDMA WRITE" } else { "RDMA READ" };
        if u32::try_from(len).is_err() {
            return Err(PinError::Tool(anyhow::anyhow!("{op} larger than 4 GiB")));
        }
        let wr = self.next_wr;
        self.next_wr += 1;
        // The staging buffer was grown to fit by the caller; we wait for the completion
        // below, and on a timeout move both QPs to ERROR (flushing the request) before
        // anything is released.
        let local = PinTarget::of(&self.staging.mem, len);
        let sg = scatter(local, wr, self.requester.max_sge());
        self.requester
            .post_rdma_between(write, wr, &sg, self.staging.mr.lkey(), remote, rkey)
            .map_err(|errno| PinError::Kernel {
                op: "ibv_post_send",
                errno,
            })?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.cq.poll_one() {
                Ok(Some(c)) if c.wr_id == wr => {
                    if c.status == 0 {
                        return Ok(if write { len } else { c.byte_len as usize });
                    }
                    let status = verbs::wc_status_name(c.status);
                    self.recover();
                    return Err(PinError::Device { op, status });
                }
                // A stale completion (flushed by an earlier recovery): skip it.
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(errno) => {
                    self.recover();
                    return Err(PinError::Kernel {
                        op: "ibv_poll_cq",
                        errno,
                    });
                }
            }
            if Instant::now() >= deadline {
                self.recover();
                return Err(PinError::Device {
                    op,
                    status: format!("no-completion-in-{}ms", timeout.as_millis()),
                });
            }
            std::hint::spin_loop();
            if Instant::now() + Duration::from_millis(1) < deadline {
                std::thread::yield_now();
            }
        }
    }
}

pub struct RdmaPinner {
    // Field order is drop order: the loopback's QPs go before the MR under test, and both
    // before the PD and context they hold.
    loopback: Result<Loopback, String>,
    mr: Option<Mr>,
    registered: Option<PinTarget>,
    pd: Arc<Pd>,
    /// The device and port, for rebuilding a broken loopback.
    sel: Selected,
    odp: bool,
    cfg: RdmaConfig,
    /// Set once the device said it has no `ibv_advise_mr`.
    prefetch_unsupported: bool,
}

impl RdmaPinner {
    pub fn new(cfg: &RdmaConfig, odp: bool) -> Result<RdmaPinner, PinError> {
        let sel = select(cfg).map_err(PinError::NotRun)?;
        let pd = Pd::alloc(&sel.ctx).map_err(|errno| PinError::Kernel {
            op: "ibv_alloc_pd",
            errno,
        })?;
        let loopback = Loopback::new(&pd, &sel, cfg.path_mtu);
        Ok(RdmaPinner {
            loopback,
            mr: None,
            registered: None,
            pd,
            sel,
            odp,
            cfg: cfg.clone(),
            prefetch_unsupported: false,
        })
    }

    fn loopback(&mut self, len: usize) -> Result<&mut Loopback, PinError> {
        let pd = self.pd.clone();
        if let Ok(lb) = &self.loopback {
            if let Some(why) = lb.broken.clone() {
                // Drop the old queue pairs first (stops their DMA), then build new ones.
                self.loopback = Err(why.clone());
                self.loopback = Ok(Loopback::new(&pd, &self.sel, self.cfg.path_mtu).map_err(
                    |e| {
                        PinError::Tool(anyhow::anyhow!(
                            "rebuilding the loopback queue pairs ({why}) failed: {e}"
                        ))
                    },
                )?);
            }
        }
        let lb = self
            .loopback
            .as_mut()
            .map_err(|why| PinError::NotRun(why.clone()))?;
        if lb.staging.mem.len() < len {
            lb.staging = Staging::new(&pd, len)?;
        }
        Ok(lb)
    }
}

impl Pinner for RdmaPinner {
    fn register(&mut self, target: PinTarget) -> Result<(), PinError> {
        if self.registered.is_some() {
            return Err(PinError::Tool(anyhow::anyhow!(
                "rdma pinner already holds a registration"
            )));
        }
        let access = self.cfg.access_bits(target.writable, self.odp);
        // The device writes into the target only when `device_write` posts an RDMA WRITE.
        let mr =
            Mr::register_target(&self.pd, target, access).map_err(|errno| PinError::Kernel {
                op: "ibv_reg_mr",
                errno,
            })?;
        if self.odp && self.cfg.prefetch && !self.prefetch_unsupported {
            let len = u32::try_from(target.len).unwrap_or(u32::MAX);
            match mr.prefetch(target.addr, len) {
                Ok(()) => {}
                Err(Errno(e)) if e == libc::EOPNOTSUPP => self.prefetch_unsupported = true,
                Err(errno) => {
                    return Err(PinError::Kernel {
                        op: "ibv_advise_mr(PREFETCH_WRITE)",
                        errno,
                    })
                }
            }
        }
        self.mr = Some(mr);
        self.registered = Some(target);
        Ok(())
    }

    fn unregister(&mut self) -> Result<(), PinError> {
        let Some(mr) = self.mr.take() else {
            return Err(PinError::Tool(anyhow::anyhow!(
                "unregister with nothing registered"
            )));
        };
        self.registered = None;
        verbs::deregister(mr).map_err(|errno| PinError::Kernel {
            op: "ibv_dereg_mr",
            errno,
        })
    }

    fn registered(&self) -> Option<PinTarget> {
        self.registered
    }

    fn note(&self) -> Option<String> {
        self.prefetch_unsupported.then(|| {
            "ibv_advise_mr: EOPNOTSUPP (the provider or device has no prefetch): ODP registrations were not prefetched".to_string()
        })
    }

    fn device_write(&mut self, offset: usize, data: &[u8]) -> Result<usize, PinError> {
        let t = check_span(self.registered, offset, data.len())?;
        let rkey = self.mr.as_ref().map(|m| m.rkey()).unwrap_or(0);
        let timeout = self.cfg.completion_timeout.0;
        let lb = self.loopback(data.len())?;
        lb.staging.mem.write_at(0, data);
        let remote = t.sub(offset, data.len()).expect("checked by check_span");
        lb.transfer(true, data.len(), remote, rkey, timeout)
    }

    fn transfer_unit(&self) -> Option<u64> {
        let lb = self.loopback.as_ref().ok()?;
        Some(128u64 << lb.peer_of_requester.mtu)
    }

    fn device_read(&mut self, offset: usize, len: usize) -> Result<Vec<u8>, PinError> {
        let t = check_span(self.registered, offset, len)?;
        let rkey = self.mr.as_ref().map(|m| m.rkey()).unwrap_or(0);
        let timeout = self.cfg.completion_timeout.0;
        let lb = self.loopback(len)?;
        let remote = t.sub(offset, len).expect("checked by check_span");
        let n = lb.transfer(false, len, remote, rkey, timeout)?;
        let mut out = vec![0u8; n.min(len)];
        lb.staging.mem.read_at(0, &mut out);
        Ok(out)
    }
}

/// The local side of transfer `wr` as a scatter/gather list of up to `max` ranges: the
/// request number picks how many (1 to `max`, never more than there are bytes), split at
/// uneven offsets, so a device that mishandles SGE boundaries shows as misplaced or torn
/// bytes in the byte-exact check.
fn scatter(t: PinTarget, wr: u64, max: usize) -> Vec<PinTarget> {
    let n = (1 + (wr % max.max(1) as u64) as usize).min(t.len.max(1));
    let mut out = Vec::with_capacity(n);
    let mut from = 0;
    for i in 1..=n {
        let to = if i == n {
            t.len
        } else {
            (t.len * i / n + i % 2).clamp(from + 1, t.len - (n - i))
        };
        out.push(t.sub(from, to - from).expect("inside the staging buffer"));
        from = to;
    }
    out
}

pub fn tight_loop(cfg: &RdmaConfig, odp: bool) -> Option<Box<dyn TightLoop>> {
    // The baseline registers without prefetch; with prefetch the rows' "ours" side includes
    // ibv_advise_mr and the difference is its cost.
    // It shares the device context with the pinners (the device is the thing measured) and
    // nothing else: a PD of its own, raw verbs (pin/baseline).
    let sel = select(cfg).ok()?;
    let pd = Pd::alloc(&sel.ctx).ok()?;
    Some(Box::new(crate::pin::baseline::RdmaBaseline::new(
        pd,
        cfg.access_bits(true, odp),
        cfg.access_bits(false, odp),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{MapMode, Mapping};

    #[test]
    fn a_transfer_is_scattered_into_consecutive_uneven_sges_covering_every_byte() {
        let m = Mapping::anonymous(
            8192,
            MapMode {
                shared: false,
                writable: true,
                hugetlb: false,
                populate: false,
            },
        )
        .unwrap();
        let t = PinTarget::of(&m, 8192);
        let mut counts = std::collections::BTreeSet::new();
        for wr in 0..8u64 {
            for len in [1usize, 2, 3, 4, 5, 1023, 4096, 8191] {
                let sg = scatter(t.sub(0, len).unwrap(), wr, 4);
                counts.insert(sg.len());
                assert!(sg.len() <= 4 && sg.len() <= len, "{len}: {}", sg.len());
                let mut at = t.addr;
                for s in &sg {
                    assert_eq!(s.addr, at, "consecutive");
                    assert!(s.len >= 1);
                    at += s.len;
                }
                assert_eq!(at, t.addr + len, "every byte once");
            }
        }
        assert_eq!(counts, (1..=4).collect(), "every SGE count is used");
        assert_eq!(scatter(t, 3, 1).len(), 1, "a device with one SGE gets one");
    }
}
