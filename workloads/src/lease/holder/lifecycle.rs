//! The holder's scripts of the lifecycle scenarios: what each one does in the processes it
//! is about. How the runner breaks each one, and what it asks afterwards, is the scenario's
//! row in [`crate::lease::lifecycle::SCENARIOS`].

use std::fs::File;
use std::time::Duration;

use super::pin::HeldPin;
use super::{
    asked_to_write, await_signal, open_or_refuse, ready, respond, take_lease, Release, Reporter,
    Until,
};
use crate::lease::protocol::{Event, HolderConfig};
use crate::lease::{get_lease, lease_name, Lifecycle};

pub(super) fn run(out: &Reporter, cfg: &HolderConfig, l: Lifecycle) {
    let len = cfg.pin_len.unwrap_or(2 << 20);
    let Some(file) = open_or_refuse(out, cfg, true) else {
        return;
    };
    match l {
        Lifecycle::DupClose => dup_close(out, cfg, file),
        Lifecycle::ForkChildPins => super::handover::fork_child_pins(out, cfg, file, len),
        Lifecycle::ScmRights => super::handover::scm_rights(out, cfg, file, len),
        Lifecycle::CloseBeforeUnpin => close_before_unpin(out, cfg, file, len),
        Lifecycle::MunmapBeforeUnregister | Lifecycle::HungExpiry => {
            pin_outlives_lease(out, cfg, l, file, len)
        }
        Lifecycle::KilledWhileWaiting => killed_while_waiting(out, cfg, file),
    }
}

/// The lease fd is dup'ed and the original closed: the lease stays with the open file, and
/// the holder releases it through the dup.
fn dup_close(out: &Reporter, cfg: &HolderConfig, file: File) {
    let Some(acquire_ns) = take_lease(out, cfg, &file) else {
        return;
    };
    let dup = match file.try_clone() {
        Ok(d) => d,
        Err(e) => return out.error(format!("dup: {e}")),
    };
    drop(file);
    out.fact("lease_after_close_of_original", lease_name(get_lease(&dup)));
    out.fact("lease_at_ready", lease_name(get_lease(&dup)));
    ready(out, 0, acquire_ns);
    if let Some(woke) = await_signal(out, cfg, Until::Signal) {
        out.emit_all(&respond(cfg, &dup, None, woke));
    }
}

/// The lease fd is closed while the mapping and the pin remain.
fn close_before_unpin(out: &Reporter, cfg: &HolderConfig, file: File, len: usize) {
    let Some(mut pin) = HeldPin::new_or_refuse(out, cfg, &file, len) else {
        return;
    };
    let Some(acquire_ns) = take_lease(out, cfg, &file) else {
        return;
    };
    drop(file);
    out.fact("lease_fd_closed_with_mapping_and_pin_held", "yes");
    ready(out, 0, acquire_ns);
    if let Some(woke) = await_signal(out, cfg, Until::Signal) {
        // No fd is left to F_UNLCK with: release the pin, then the mapping, which holds the
        // last reference to the open file (and so to the lease).
        let r = Release::run("munmap", None, || {
            pin.unpin();
            pin.munmap();
            Ok(())
        });
        out.emit_all(&[woke.event(), r.event()]);
    }
}

/// The pin stays registered after the lease is gone: given up by a holder that unmapped the
/// range first (`munmap-before-unregister`: it lost track of the pin), or revoked from a hung
/// one (`hung-expiry`). Then the runner truncates the file and asks for the device's write.
fn pin_outlives_lease(out: &Reporter, cfg: &HolderConfig, l: Lifecycle, file: File, len: usize) {
    let Some(mut pin) = HeldPin::new_or_refuse(out, cfg, &file, len) else {
        return;
    };
    let Some(acquire_ns) = take_lease(out, cfg, &file) else {
        return;
    };
    if l == Lifecycle::MunmapBeforeUnregister {
        pin.munmap();
        let r = pin.device_write(&file, cfg.run_tag, 1);
        out.emit(&Event::DeviceWrite {
            phase: "after-munmap".into(),
            result: r,
        });
    }
    // Whatever the holder did so far must not have cost it its lease.
    out.fact("lease_at_ready", lease_name(get_lease(&file)));
    ready(out, 0, acquire_ns);
    if let Some(woke) = await_signal(out, cfg, Until::Signal) {
        // Cooperative without the pin (it was unmapped, not unregistered): unlock. Hung: wait
        // for the kernel to revoke the lease.
        out.emit_all(&respond(cfg, &file, None, woke));
    }
    out.fact("pin_registered_after_lease_gone", "yes");
    // The runner lets the breaker (a truncate) finish, then asks for the write.
    if asked_to_write(cfg) {
        let r = pin.device_write(&file, cfg.run_tag, 2);
        out.emit(&Event::DeviceWrite {
            phase: "after-break".into(),
            result: r,
        });
    }
}

/// Take the signal, then hold on until the runner kills this process.
fn killed_while_waiting(out: &Reporter, cfg: &HolderConfig, file: File) {
    let Some(acquire_ns) = take_lease(out, cfg, &file) else {
        return;
    };
    ready(out, 0, acquire_ns);
    if let Some(woke) = await_signal(out, cfg, Until::Signal) {
        out.emit(&woke.event());
    }
    std::thread::sleep(Duration::from_millis(cfg.wait_ms));
}
