//! File leases: the lease holder, the breakers, and the lifecycle scenarios of the 2019
//! debate, as one feature.
//!
//! A lease holder is a process of its own (pinstorm re-executes itself with a hidden
//! subcommand) that takes an `F_SETLEASE` read or write lease with `F_SETSIG` set to a
//! real-time signal, optionally pins the file's pages through a pin path, and reacts to a
//! lease break the way the configuration says: *cooperative* (release every pin, then
//! `F_UNLCK`), *delayed* (the same after a delay), *downgrading* (write lease to read lease)
//! or *hung* (never answers: the kernel's `fs/lease-break-time` decides). The lifecycle
//! scenarios (dup + close, fork, SCM_RIGHTS, close or munmap before unpinning, expiry, kill)
//! are scripted in the holder too, so their facts are measured in the processes they are
//! about.
//!
//! - [`lifecycle`]: the scenarios, described once in a table both the holder and the runner
//!   (`pinstorm_runners::lease`) read;
//! - [`protocol`]: what the runner tells the holder (configuration, commands on stdin) and
//!   what the holder reports (events on stdout, one JSON object per line, with
//!   CLOCK_MONOTONIC timestamps comparable across processes);
//! - [`breaker`]: the syscalls another process breaks a lease with;
//! - `holder`: the holder process;
//! - `sys`: fork, `_exit` and the io_uring OPENAT submission, the only unsafe code here.
//!
//! The holder only ever touches the file it is given, which the runner created.

// Unsafe code only in the `sys` edge below (until the crate denies it everywhere).
#![deny(unsafe_code)]

use std::os::fd::AsFd;

use serde::{Deserialize, Serialize};

use crate::sys::Errno;

pub mod breaker;
mod holder;
pub mod lifecycle;
pub mod protocol;
#[allow(unsafe_code)]
mod sys;

pub use breaker::{break_lease, BreakAttempt, BreakerKind};
pub use holder::holder_main;
pub use lifecycle::{Lifecycle, Scenario, SCENARIOS};
pub use protocol::{Command, Event, HolderConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseKind {
    Read,
    Write,
}

impl LeaseKind {
    pub fn raw(self) -> i32 {
        match self {
            LeaseKind::Read => libc::F_RDLCK,
            LeaseKind::Write => libc::F_WRLCK,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            LeaseKind::Read => "read",
            LeaseKind::Write => "write",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    Cooperative,
    Delayed,
    Downgrading,
    Hung,
}

impl Behaviour {
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Cooperative => "cooperative",
            Behaviour::Delayed => "delayed",
            Behaviour::Downgrading => "downgrading",
            Behaviour::Hung => "hung",
        }
    }
}

/// `fcntl(F_SETLEASE)` with `kind | extra` (or F_UNLCK when `kind` is None).
pub fn set_lease(fd: impl AsFd, kind: Option<LeaseKind>, extra: i32) -> Result<(), Errno> {
    let arg = kind.map(|k| k.raw()).unwrap_or(libc::F_UNLCK) | extra;
    crate::sys::fcntl_int(fd, libc::F_SETLEASE, arg).map(|_| ())
}

/// `fcntl(F_GETLEASE)`: F_RDLCK, F_WRLCK or F_UNLCK.
pub fn get_lease(fd: impl AsFd) -> Result<i32, Errno> {
    crate::sys::fcntl_int(fd, libc::F_GETLEASE, 0)
}

/// `F_SETSIG` from include/uapi/asm-generic/fcntl.h (the libc crate does not export it).
const F_SETSIG: i32 = 10;

pub fn set_sig(fd: impl AsFd, sig: i32) -> Result<(), Errno> {
    crate::sys::fcntl_int(fd, F_SETSIG, sig).map(|_| ())
}

/// The lease `F_GETLEASE` reported, as facts name it: `read`, `write`, `none`, or the errno.
pub fn lease_name(r: Result<i32, Errno>) -> String {
    match r {
        Ok(l) if l == libc::F_RDLCK => "read".into(),
        Ok(l) if l == libc::F_WRLCK => "write".into(),
        Ok(_) => "none".into(),
        Err(e) => e.name(),
    }
}
