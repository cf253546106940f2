//! The two scenarios in which the pin changes process: `fork-child-pins` (the holder forks and
//! leaves the pin to its child) and `scm-rights` (the lease descriptor, and the pin's, go to a
//! receiver over SCM_RIGHTS and the sender exits).
//!
//! Both need the pin to live in a descriptor another process can hold (an io_uring
//! instance); a pin path without one is refused here, never faked.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::process::{waitpid, WaitOptions};

use super::pin::HeldPin;
use super::{
    asked_to_write, await_signal, ready, respond, take_lease, wait_for_exit, Reporter, Until,
};
use crate::lease::protocol::{Event, HolderConfig};
use crate::lease::sys::{exit_now, fork_single_threaded, Forked};
use crate::lease::{get_lease, lease_name, set_lease};
use crate::sys::Errno;

/// Pin the file for a handover, or report why not (`None`).
fn handover_pin(out: &Reporter, cfg: &HolderConfig, file: &File, len: usize) -> Option<HeldPin> {
    let pin = HeldPin::new_or_refuse(out, cfg, file, len)?;
    if pin.pin_fd().is_none() {
        out.refused(
            "pin",
            format!(
                "the {} pin path holds its pin in no descriptor another process could take over",
                cfg.pin
            ),
        );
        return None;
    }
    Some(pin)
}

fn fork(out: &Reporter) -> Option<Forked> {
    fork_single_threaded().map_err(|e| out.error(e)).ok()
}

/// The parent takes the lease and pins the file; it forks, and the child keeps the pin while
/// the parent closes its pinning context: the child holds the pin, the parent the lease.
/// The child also tries a registration of its own on the inherited mapping (a fact).
pub(super) fn fork_child_pins(out: &Reporter, cfg: &HolderConfig, file: File, len: usize) {
    let Some(mut pin) = handover_pin(out, cfg, &file, len) else {
        return;
    };
    let Some(acquire_ns) = take_lease(out, cfg, &file) else {
        return;
    };
    let pipes = rustix::pipe::pipe().and_then(|a| Ok((a, rustix::pipe::pipe()?)));
    let ((to_child_r, to_child_w), (from_child_r, from_child_w)) = match pipes {
        Ok(p) => p,
        Err(e) => return out.error(format!("pipe: {e}")),
    };
    let Some(forked) = fork(out) else { return };
    let child = match forked {
        Forked::Child => {
            drop(to_child_w);
            drop(from_child_r);
            out.emit(&Event::Pid {
                pid: std::process::id(),
                role: "forked-child".into(),
            });
            let own = super::pin::pin(cfg, pin.target()).map(|_| "ok".to_string());
            out.fact(
                "child_own_pin_of_inherited_mapping",
                own.unwrap_or_else(|e| e),
            );
            // Tell the parent the attempt is over: nothing may break the lease before it.
            let _ = rustix::io::write(&from_child_w, b"p");
            let mut b = [0u8; 1];
            if rustix::io::read(&to_child_r, &mut b).unwrap_or(0) == 1 {
                let r = pin.device_write(&file, cfg.run_tag, 2);
                out.emit(&Event::DeviceWrite {
                    phase: "after-break".into(),
                    result: r,
                });
            }
            // The inherited pin must stay registered: no destructor may run.
            exit_now(0);
        }
        Forked::Parent(child) => child,
    };
    drop(to_child_r);
    drop(from_child_w);
    let mut b = [0u8; 1];
    let _ = rustix::io::read(&from_child_r, &mut b);
    pin.hand_over();
    out.fact("parent_closed_its_ring", "yes");
    ready(out, 0, acquire_ns);
    if let Some(woke) = await_signal(out, cfg, Until::Signal) {
        out.emit_all(&respond(cfg, &file, None, woke));
    }
    if asked_to_write(cfg) {
        let _ = rustix::io::write(&to_child_w, b"w");
    }
    let _ = waitpid(Some(child), WaitOptions::empty());
}

/// Send the lease fd and the pin's descriptor to a forked receiver over SCM_RIGHTS, then
/// exit: the receiver holds the pin and answers the runner from then on.
pub(super) fn scm_rights(out: &Reporter, cfg: &HolderConfig, file: File, len: usize) {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let Some(pin) = handover_pin(out, cfg, &file, len) else {
        return;
    };
    let Some(acquire_ns) = take_lease(out, cfg, &file) else {
        return;
    };
    let (a, b) = match socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    ) {
        Ok(p) => p,
        Err(e) => return out.error(format!("socketpair: {e}")),
    };
    match fork(out) {
        None => {}
        Some(Forked::Child) => {
            drop(a);
            drop(file);
            receive(out, cfg, pin, b, acquire_ns);
        }
        Some(Forked::Parent(_)) => {
            drop(b);
            send(out, &a, &file, &pin);
            // The sender exits without releasing anything (no destructor runs); its end of
            // the socket closing tells the receiver.
            exit_now(0);
        }
    }
}

/// The lease fd and the pin's descriptor together; io_uring may refuse to let a ring travel,
/// and then the lease fd goes alone.
fn send(out: &Reporter, sock: &OwnedFd, file: &File, pin: &HeldPin) {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let send = |fds: &[BorrowedFd<'_>]| {
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        cmsg.push(SendAncillaryMessage::ScmRights(fds));
        sendmsg(
            sock,
            &[std::io::IoSlice::new(b"x")],
            &mut cmsg,
            SendFlags::empty(),
        )
    };
    let both: Vec<BorrowedFd<'_>> = [Some(file.as_fd()), pin.pin_fd()]
        .into_iter()
        .flatten()
        .collect();
    match send(&both) {
        Ok(_) => {
            out.fact("ring_over_scm_rights", "ok");
            out.fact("sender_sent_fds", "lease fd and ring");
        }
        Err(e) => {
            out.fact("ring_over_scm_rights", Errno::from(e).name());
            out.fact(
                "sender_sent_fds",
                match send(&[file.as_fd()]) {
                    Ok(_) => "lease fd only".to_string(),
                    Err(e) => format!("sendmsg: {}", Errno::from(e).name()),
                },
            );
        }
    }
}

/// The receiver: takes what came over the socket, waits for the sender to be gone, then
/// serves the runner. Never returns.
fn receive(out: &Reporter, cfg: &HolderConfig, mut pin: HeldPin, sock: OwnedFd, acquire_ns: u64) {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    out.emit(&Event::Pid {
        pid: std::process::id(),
        role: "receiver".into(),
    });
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let _ = recvmsg(
        &sock,
        &mut [std::io::IoSliceMut::new(&mut byte)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    );
    let mut fds: Vec<OwnedFd> = Vec::new();
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(r) = m {
            fds.extend(r);
        }
    }
    out.fact("receiver_got_fds", fds.len());
    // Wait until the sender is gone, then serve the runner.
    let _ = rustix::io::read(&sock, &mut byte);
    out.fact(
        "receiver_lease",
        fds.first()
            .map(|f| lease_name(get_lease(f)))
            .unwrap_or_else(|| "no fd".into()),
    );
    ready(out, 0, acquire_ns);
    // The receiver did not set the lease: only its owner (the sender, gone) would be
    // signalled. Watch for a signal and for the kernel revoking the lease.
    let until = match fds.first() {
        Some(f) => Until::LeaseGone(f.as_fd()),
        None => Until::Signal,
    };
    if let Some(woke) = await_signal(out, cfg, until) {
        if let Some(f) = fds.first() {
            let _ = set_lease(f, None, 0);
        }
        out.emit(&woke.event());
    }
    out.fact(
        "receiver_holds_pin_via",
        if fds.len() > 1 {
            "scm-rights"
        } else {
            "fork inheritance"
        },
    );
    if asked_to_write(cfg) {
        // Read back through the received lease descriptor (opening the file anew while a
        // lease exists would break it). The device writes through the pinner inherited at
        // the fork: a pin descriptor that came over SCM_RIGHTS names the same open file (the
        // kernel passes the file, not a copy), so that is the ring the receiver holds either
        // way.
        let result = match fds.first().map(|f| f.try_clone()) {
            Some(Ok(f)) => pin.device_write(&File::from(f), cfg.run_tag, 2),
            Some(Err(e)) => format!("dup: {e}"),
            None => "no lease fd received".into(),
        };
        out.emit(&Event::DeviceWrite {
            phase: "after-break".into(),
            result,
        });
    }
    out.emit(&Event::Done);
    wait_for_exit();
    exit_now(0);
}
