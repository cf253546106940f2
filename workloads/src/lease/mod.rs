//! File leases and the lease holder.
//!
//! A lease holder is a process of its own (pinstorm re-executes itself with a hidden
//! subcommand) that takes an `F_SETLEASE` read or write lease with `F_SETSIG` set to a
//! real-time signal, optionally pins the file's pages with io_uring, and reacts to a lease
//! break the way the configuration says: *cooperative* (release every pin, then `F_UNLCK`),
//! *delayed* (the same after a delay), *downgrading* (write lease to read lease) or *hung*
//! (never answers: the kernel's `fs/lease-break-time` decides). The lifecycle scenarios of the
//! 2019 debate (dup + close, fork, SCM_RIGHTS, close or munmap before unpinning, expiry, kill)
//! are scripted here too, so their facts are measured in the processes they are about.
//!
//! The holder talks to its orchestrator over stdin (commands, one per line) and stdout
//! (events, one JSON object per line, with CLOCK_MONOTONIC timestamps comparable across
//! processes). It only ever touches the file it is given, which the orchestrator created.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::canary::Canary;
use crate::pin::{io_uring::IoUringPinner, PinTarget, Pinner};
use crate::sys::{self, Errno, MapMode, Mapping};

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

/// The lifecycle scenarios of the 2019 debate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lifecycle {
    /// The lease fd is dup'ed and the original closed; then a breaker comes.
    DupClose,
    /// The holder forks; the child pins the shared mapping; the parent keeps the lease.
    ForkChildPins,
    /// The lease fd and the pinning ring go to another process over SCM_RIGHTS; the sender exits.
    ScmRights,
    /// The lease fd is closed while the mapping and the pin remain.
    CloseBeforeUnpin,
    /// The mapping is unmapped while the pin remains registered.
    MunmapBeforeUnregister,
    /// The holder never answers; the lease expires while the pin is held; the device writes.
    HungExpiry,
    /// The holder is killed while a breaker waits.
    KilledWhileWaiting,
}

impl Lifecycle {
    pub const ALL: &'static [Lifecycle] = &[
        Lifecycle::DupClose,
        Lifecycle::ForkChildPins,
        Lifecycle::ScmRights,
        Lifecycle::CloseBeforeUnpin,
        Lifecycle::MunmapBeforeUnregister,
        Lifecycle::HungExpiry,
        Lifecycle::KilledWhileWaiting,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Lifecycle::DupClose => "dup-close",
            Lifecycle::ForkChildPins => "fork-child-pins",
            Lifecycle::ScmRights => "scm-rights",
            Lifecycle::CloseBeforeUnpin => "close-before-unpin",
            Lifecycle::MunmapBeforeUnregister => "munmap-before-unregister",
            Lifecycle::HungExpiry => "hung-expiry",
            Lifecycle::KilledWhileWaiting => "killed-while-waiting",
        }
    }

    /// Whether the breaker of this scenario is `truncate(path)` (so a pin that outlives the
    /// lease meets a truncated file) rather than an `open(O_RDWR)`.
    pub fn breaker_truncates(self) -> bool {
        matches!(
            self,
            Lifecycle::ForkChildPins
                | Lifecycle::ScmRights
                | Lifecycle::MunmapBeforeUnregister
                | Lifecycle::HungExpiry
        )
    }
}

/// How another process breaks the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerKind {
    OpenRdwr,
    OpenRdonly,
    Truncate,
    OpenRdwrNonblock,
    OpenRdonlyNonblock,
    IoUringOpenat,
}

impl BreakerKind {
    pub const ALL: &'static [BreakerKind] = &[
        BreakerKind::OpenRdwr,
        BreakerKind::OpenRdonly,
        BreakerKind::Truncate,
        BreakerKind::OpenRdwrNonblock,
        BreakerKind::OpenRdonlyNonblock,
        BreakerKind::IoUringOpenat,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BreakerKind::OpenRdwr => "open-rdwr",
            BreakerKind::OpenRdonly => "open-rdonly",
            BreakerKind::Truncate => "truncate",
            BreakerKind::OpenRdwrNonblock => "open-rdwr-nonblock",
            BreakerKind::OpenRdonlyNonblock => "open-rdonly-nonblock",
            BreakerKind::IoUringOpenat => "io-uring-openat",
        }
    }
}

/// What the holder is asked to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HolderConfig {
    pub path: PathBuf,
    pub lease: LeaseKind,
    pub behaviour: Behaviour,
    pub delay_ms: u64,
    /// Lease / break rounds (break storms).
    pub rounds: u32,
    /// Register an io_uring pin of this many bytes on a shared read-write mapping.
    pub pin_len: Option<usize>,
    /// Run a lifecycle scenario instead of rounds.
    pub lifecycle: Option<Lifecycle>,
    /// Measure register + unregister with and without a lease held, this many cycles each.
    pub overhead_cycles: Option<u32>,
    /// Extra bits OR'ed into the lease type (layout-lease kernels: F_LAYOUT, F_EXCLUSIVE).
    pub extra_flags: i32,
    /// Signal number for F_SETSIG.
    pub signal: i32,
    /// How long to wait for a break signal (and for an expiry) before giving up.
    pub wait_ms: u64,
    /// The run's canary tag.
    pub run_tag: u32,
}

/// What the holder reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "kebab-case")]
pub enum Event {
    /// A process of the holder side (the holder, a forked child, a receiver) to clean up.
    Pid {
        pid: u32,
        role: String,
    },
    /// The lease is held (and the pin registered, if asked); break now.
    Ready {
        round: u32,
        acquire_ns: u64,
    },
    /// A step was refused by the kernel.
    Refused {
        what: String,
        errno: String,
    },
    /// The break signal arrived in this process.
    Signal {
        t: u64,
        si_fd: i32,
        pid: u32,
    },
    /// No break signal within the wait.
    NoSignal {
        waited_ms: u64,
    },
    /// The holder gave the lease up (`how`: unlock, downgrade, munmap).
    Released {
        t: u64,
        release_ns: u64,
        how: String,
    },
    ReleaseFailed {
        how: String,
        errno: String,
    },
    /// The lease went away (`to`: none) or was downgraded (`to`: read) without the holder's
    /// doing: the lease-break-time expired.
    Revoked {
        t: u64,
        #[serde(default)]
        to: String,
    },
    /// The device wrote through the pin; `result` is kept, lost, or the errno.
    DeviceWrite {
        phase: String,
        result: String,
    },
    /// Register + unregister cycle times (ns) without and with a lease held.
    Samples {
        without: Vec<u64>,
        with: Vec<u64>,
    },
    Fact {
        key: String,
        value: String,
    },
    Done,
    Error {
        message: String,
    },
}

/// `fcntl(F_SETLEASE)` with `kind | extra` (or F_UNLCK when `kind` is None).
pub fn set_lease(fd: impl AsFd, kind: Option<LeaseKind>, extra: i32) -> Result<(), Errno> {
    let arg = kind.map(|k| k.raw()).unwrap_or(libc::F_UNLCK) | extra;
    sys::fcntl_int(fd, libc::F_SETLEASE, arg).map(|_| ())
}

/// `fcntl(F_GETLEASE)`: F_RDLCK, F_WRLCK or F_UNLCK.
pub fn get_lease(fd: impl AsFd) -> Result<i32, Errno> {
    sys::fcntl_int(fd, libc::F_GETLEASE, 0)
}

/// `F_SETSIG` from include/uapi/asm-generic/fcntl.h (the libc crate does not export it).
const F_SETSIG: i32 = 10;

pub fn set_sig(fd: impl AsFd, sig: i32) -> Result<(), Errno> {
    sys::fcntl_int(fd, F_SETSIG, sig).map(|_| ())
}

struct Out;

impl Out {
    fn emit(&self, e: &Event) {
        let mut s = serde_json::to_string(e).expect("events serialize");
        s.push('\n');
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(s.as_bytes());
        let _ = o.flush();
    }

    fn fact(&self, key: &str, value: impl ToString) {
        self.emit(&Event::Fact {
            key: key.into(),
            value: value.to_string(),
        });
    }
}

/// Read one command line from the orchestrator (EOF means: stop).
fn command() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_string()),
    }
}

fn open(cfg: &HolderConfig, write: bool) -> Result<File, Errno> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_CLOEXEC)
        .open(&cfg.path)
        .map_err(|e| Errno::from_io(&e).unwrap_or(Errno(libc::EIO)))
}

/// A pin on a shared read-write mapping of the file.
struct Pin {
    mapping: Option<Mapping>,
    pinner: IoUringPinner,
}

impl Pin {
    fn new(file: &File, len: usize) -> Result<Pin, String> {
        let mapping = Mapping::file(
            file.as_fd(),
            len,
            MapMode {
                shared: true,
                writable: true,
                hugetlb: false,
                populate: true,
            },
        )
        .map_err(|e| format!("mmap: {}", e.name()))?;
        let mut pinner = IoUringPinner::new().map_err(|e| format!("{e}"))?;
        let target = PinTarget {
            addr: mapping.addr(),
            len,
            writable: mapping.mode().writable,
        };
        pinner.register(target).map_err(|e| match e {
            crate::pin::PinError::Kernel { errno, .. } => errno.name(),
            e => e.to_string(),
        })?;
        Ok(Pin {
            mapping: Some(mapping),
            pinner,
        })
    }

    /// The device writes a canary page at offset 0; read the file back through `via`, a
    /// descriptor this process already has: opening the file again would break the
    /// holder's own lease.
    fn device_write(&mut self, via: &File, run_tag: u32, event: u64) -> String {
        let data = Canary {
            run_tag,
            file_id: 0,
            offset: 0,
            event,
        }
        .page(4096);
        match self.pinner.device_write(0, &data) {
            Ok(_) => {}
            Err(crate::pin::PinError::Kernel { errno, .. }) => return errno.name(),
            Err(e) => return format!("error: {e}"),
        }
        let mut back = vec![0u8; 4096];
        match via.read_exact_at(&mut back, 0) {
            Ok(()) if back == data => "kept".into(),
            Ok(()) => "lost".into(),
            // A file truncated to 0 has nothing at offset 0: the write is not in it.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => "lost".into(),
            Err(e) => format!("error: {e}"),
        }
    }

    fn unpin(&mut self) {
        let _ = self.pinner.unregister();
    }

    fn munmap(&mut self) {
        self.mapping = None;
    }
}

/// Pin the file, or report the refusal (`None`).
fn pin_or_refuse(out: &Out, file: &File, len: usize) -> Option<Pin> {
    match Pin::new(file, len) {
        Ok(p) => Some(p),
        Err(errno) => {
            out.emit(&Event::Refused {
                what: "pin".into(),
                errno,
            });
            None
        }
    }
}

/// Wait until the kernel takes the lease away or downgrades it (lease-break-time), up to
/// `limit`; emits `Revoked`.
fn wait_revoked(out: &Out, fd: impl AsFd, limit: Duration) {
    let start = Instant::now();
    let held = get_lease(&fd).unwrap_or(libc::F_UNLCK);
    while start.elapsed() < limit {
        match get_lease(&fd) {
            Ok(l) if l == held && l != libc::F_UNLCK => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Ok(l) => {
                let to = if l == libc::F_RDLCK { "read" } else { "none" };
                return out.emit(&Event::Revoked {
                    t: sys::monotonic_ns(),
                    to: to.into(),
                });
            }
            Err(_) => {
                return out.emit(&Event::Revoked {
                    t: sys::monotonic_ns(),
                    to: "none".into(),
                })
            }
        }
    }
}

fn take_lease(out: &Out, cfg: &HolderConfig, file: &File) -> Option<u64> {
    if let Err(e) = set_sig(file, cfg.signal) {
        out.emit(&Event::Refused {
            what: "F_SETSIG".into(),
            errno: e.name(),
        });
        return None;
    }
    let t = Instant::now();
    match set_lease(file, Some(cfg.lease), cfg.extra_flags) {
        Ok(()) => Some(t.elapsed().as_nanos() as u64),
        Err(e) => {
            out.emit(&Event::Refused {
                what: "F_SETLEASE".into(),
                errno: e.name(),
            });
            None
        }
    }
}

/// React to a break the configured way. Returns false when the holder is hung.
fn respond(out: &Out, cfg: &HolderConfig, file: &File, pin: Option<&mut Pin>) {
    let wait = Duration::from_millis(cfg.wait_ms);
    match cfg.behaviour {
        Behaviour::Hung => wait_revoked(out, file, wait),
        Behaviour::Downgrading => {
            let t = Instant::now();
            match set_lease(file, Some(LeaseKind::Read), cfg.extra_flags) {
                Ok(()) => out.emit(&Event::Released {
                    t: sys::monotonic_ns(),
                    release_ns: t.elapsed().as_nanos() as u64,
                    how: "downgrade".into(),
                }),
                Err(e) => {
                    out.emit(&Event::ReleaseFailed {
                        how: "downgrade".into(),
                        errno: e.name(),
                    });
                    wait_revoked(out, file, wait);
                }
            }
        }
        Behaviour::Cooperative | Behaviour::Delayed => {
            if cfg.behaviour == Behaviour::Delayed {
                std::thread::sleep(Duration::from_millis(cfg.delay_ms));
            }
            let t = Instant::now();
            if let Some(p) = pin {
                p.unpin();
            }
            match set_lease(file, None, 0) {
                Ok(()) => out.emit(&Event::Released {
                    t: sys::monotonic_ns(),
                    release_ns: t.elapsed().as_nanos() as u64,
                    how: "unlock".into(),
                }),
                Err(e) => out.emit(&Event::ReleaseFailed {
                    how: "unlock".into(),
                    errno: e.name(),
                }),
            }
        }
    }
}

/// Wait for the break signal; the orchestrator may end the wait early with "next" (its
/// breaker finished without a break). Returns true when the signal came.
fn await_signal(out: &Out, cfg: &HolderConfig) -> bool {
    await_signal_or(out, cfg, true, None)
}

/// Wait for the break signal. With `interruptible`, a command line from the orchestrator
/// ends the wait (break storms); with `lease_fd`, so does the lease disappearing (emitted as
/// `Revoked`).
fn await_signal_or(
    out: &Out,
    cfg: &HolderConfig,
    interruptible: bool,
    lease_fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> bool {
    let start = Instant::now();
    let limit = Duration::from_millis(cfg.wait_ms);
    while start.elapsed() < limit {
        if let Some(fd) = lease_fd {
            if matches!(get_lease(fd), Ok(l) if l == libc::F_UNLCK) {
                out.emit(&Event::Revoked {
                    t: sys::monotonic_ns(),
                    to: "none".into(),
                });
                return false;
            }
        }
        if let Some(fd) = sys::wait_signal(cfg.signal, Duration::from_millis(20)) {
            out.emit(&Event::Signal {
                t: sys::monotonic_ns(),
                si_fd: fd,
                pid: std::process::id(),
            });
            return true;
        }
        let stdin = std::io::stdin();
        if interruptible
            && rustix::event::poll(
                &mut [rustix::event::PollFd::new(
                    &stdin,
                    rustix::event::PollFlags::IN,
                )],
                Some(&rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                }),
            )
            .unwrap_or(0)
                > 0
        {
            let _ = command();
            out.emit(&Event::NoSignal {
                waited_ms: start.elapsed().as_millis() as u64,
            });
            return false;
        }
    }
    out.emit(&Event::NoSignal {
        waited_ms: cfg.wait_ms,
    });
    false
}

/// The holder's main: run what `cfg` says, report on stdout.
pub fn run_holder(cfg: &HolderConfig) {
    let out = Out;
    sys::block_signal(cfg.signal);
    out.emit(&Event::Pid {
        pid: std::process::id(),
        role: "holder".into(),
    });
    if let Some(cycles) = cfg.overhead_cycles {
        overhead(&out, cfg, cycles);
    } else if let Some(l) = cfg.lifecycle {
        lifecycle(&out, cfg, l);
    } else {
        rounds(&out, cfg);
    }
    out.emit(&Event::Done);
    // Wait for the orchestrator to let go, so nothing is released before it looked.
    while let Some(c) = command() {
        if c == "exit" {
            break;
        }
    }
}

fn rounds(out: &Out, cfg: &HolderConfig) {
    let write_open = cfg.pin_len.is_some();
    for round in 0..cfg.rounds {
        let file = match open(cfg, write_open) {
            Ok(f) => f,
            Err(e) => {
                return out.emit(&Event::Refused {
                    what: "open".into(),
                    errno: e.name(),
                })
            }
        };
        let mut pin = match cfg.pin_len {
            Some(len) => match pin_or_refuse(out, &file, len) {
                Some(p) => Some(p),
                None => return,
            },
            None => None,
        };
        let Some(acquire_ns) = take_lease(out, cfg, &file) else {
            return;
        };
        out.emit(&Event::Ready { round, acquire_ns });
        if await_signal(out, cfg) {
            respond(out, cfg, &file, pin.as_mut());
            // The orchestrator closes its breaking fd, then says "next".
            match command().as_deref() {
                Some("next") => {}
                _ => return,
            }
        }
        let _ = set_lease(&file, None, 0);
    }
}

fn overhead(out: &Out, cfg: &HolderConfig, cycles: u32) {
    let len = cfg.pin_len.unwrap_or(2 << 20);
    let file = match open(cfg, true) {
        Ok(f) => f,
        Err(e) => {
            return out.emit(&Event::Refused {
                what: "open".into(),
                errno: e.name(),
            })
        }
    };
    let mapping = match Mapping::file(
        file.as_fd(),
        len,
        MapMode {
            shared: true,
            writable: true,
            hugetlb: false,
            populate: true,
        },
    ) {
        Ok(m) => m,
        Err(e) => {
            return out.emit(&Event::Refused {
                what: "mmap".into(),
                errno: e.name(),
            })
        }
    };
    let target = PinTarget {
        addr: mapping.addr(),
        len,
        writable: mapping.mode().writable,
    };
    let mut pinner = match IoUringPinner::new() {
        Ok(p) => p,
        Err(e) => {
            return out.emit(&Event::Error {
                message: e.to_string(),
            })
        }
    };
    if let Err(e) = set_sig(&file, cfg.signal) {
        return out.emit(&Event::Refused {
            what: "F_SETSIG".into(),
            errno: e.name(),
        });
    }
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut cycle = |v: &mut Vec<u64>| -> Result<(), String> {
        let t = Instant::now();
        pinner.register(target).map_err(|e| e.to_string())?;
        pinner.unregister().map_err(|e| e.to_string())?;
        v.push(t.elapsed().as_nanos() as u64);
        Ok(())
    };
    // Interleave blocks so both sides see the same machine state.
    const BLOCK: u32 = 16;
    let mut done = 0;
    while done < cycles {
        let n = BLOCK.min(cycles - done);
        for _ in 0..n {
            if let Err(e) = cycle(&mut without) {
                return out.emit(&Event::Refused {
                    what: "register".into(),
                    errno: e,
                });
            }
        }
        if let Err(e) = set_lease(&file, Some(cfg.lease), cfg.extra_flags) {
            return out.emit(&Event::Refused {
                what: "F_SETLEASE".into(),
                errno: e.name(),
            });
        }
        for _ in 0..n {
            if let Err(e) = cycle(&mut with) {
                return out.emit(&Event::Refused {
                    what: "register (lease held)".into(),
                    errno: e,
                });
            }
        }
        let _ = set_lease(&file, None, 0);
        done += n;
    }
    out.emit(&Event::Samples { without, with });
}

fn lifecycle(out: &Out, cfg: &HolderConfig, l: Lifecycle) {
    let len = cfg.pin_len.unwrap_or(2 << 20);
    let file = match open(cfg, true) {
        Ok(f) => f,
        Err(e) => {
            return out.emit(&Event::Refused {
                what: "open".into(),
                errno: e.name(),
            })
        }
    };
    match l {
        Lifecycle::DupClose => {
            let Some(acquire_ns) = take_lease(out, cfg, &file) else {
                return;
            };
            let dup = match file.try_clone() {
                Ok(d) => d,
                Err(e) => {
                    return out.emit(&Event::Error {
                        message: format!("dup: {e}"),
                    })
                }
            };
            drop(file);
            out.fact("lease_after_close_of_original", lease_name(get_lease(&dup)));
            out.fact("lease_at_ready", lease_name(get_lease(&dup)));
            out.emit(&Event::Ready {
                round: 0,
                acquire_ns,
            });
            if await_signal_or(out, cfg, false, None) {
                respond(out, cfg, &dup, None);
            }
        }
        Lifecycle::CloseBeforeUnpin => {
            let Some(mut pin) = pin_or_refuse(out, &file, len) else {
                return;
            };
            let Some(acquire_ns) = take_lease(out, cfg, &file) else {
                return;
            };
            drop(file);
            out.fact("lease_fd_closed_with_mapping_and_pin_held", "yes");
            out.emit(&Event::Ready {
                round: 0,
                acquire_ns,
            });
            if await_signal_or(out, cfg, false, None) {
                // No fd is left to F_UNLCK with: release the pin, then the mapping, which holds
                // the last reference to the open file (and so to the lease).
                let t = Instant::now();
                pin.unpin();
                pin.munmap();
                out.emit(&Event::Released {
                    t: sys::monotonic_ns(),
                    release_ns: t.elapsed().as_nanos() as u64,
                    how: "munmap".into(),
                });
            }
        }
        Lifecycle::MunmapBeforeUnregister | Lifecycle::HungExpiry => {
            let Some(mut pin) = pin_or_refuse(out, &file, len) else {
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
            out.emit(&Event::Ready {
                round: 0,
                acquire_ns,
            });
            if await_signal_or(out, cfg, false, None) {
                match l {
                    // Lost track of the pin: gives up the lease, the pin stays registered.
                    Lifecycle::MunmapBeforeUnregister => match set_lease(&file, None, 0) {
                        Ok(()) => out.emit(&Event::Released {
                            t: sys::monotonic_ns(),
                            release_ns: 0,
                            how: "unlock".into(),
                        }),
                        Err(e) => out.emit(&Event::ReleaseFailed {
                            how: "unlock".into(),
                            errno: e.name(),
                        }),
                    },
                    _ => wait_revoked(out, &file, Duration::from_millis(cfg.wait_ms)),
                }
            }
            out.fact("pin_registered_after_lease_gone", "yes");
            // The orchestrator lets the breaker (a truncate) finish, then asks for the write.
            if command().as_deref() == Some("write") {
                let r = pin.device_write(&file, cfg.run_tag, 2);
                out.emit(&Event::DeviceWrite {
                    phase: "after-break".into(),
                    result: r,
                });
            }
        }
        Lifecycle::KilledWhileWaiting => {
            let Some(acquire_ns) = take_lease(out, cfg, &file) else {
                return;
            };
            out.emit(&Event::Ready {
                round: 0,
                acquire_ns,
            });
            // Take the signal, then hold on until the orchestrator kills this process.
            await_signal_or(out, cfg, false, None);
            std::thread::sleep(Duration::from_millis(cfg.wait_ms));
        }
        Lifecycle::ForkChildPins => fork_child_pins(out, cfg, file, len),
        Lifecycle::ScmRights => scm_rights(out, cfg, file, len),
    }
}

fn lease_name(r: Result<i32, Errno>) -> String {
    match r {
        Ok(l) if l == libc::F_RDLCK => "read".into(),
        Ok(l) if l == libc::F_WRLCK => "write".into(),
        Ok(_) => "none".into(),
        Err(e) => e.name(),
    }
}

/// fork(2) in the holder, which is single-threaded (a fresh exec of pinstorm that started no
/// threads), so the child may run ordinary Rust code. `None` (reported) when fork fails.
fn fork_holder(out: &Out) -> Option<libc::pid_t> {
    // SAFETY: see above: no other thread can hold a lock the child would inherit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        out.emit(&Event::Error {
            message: format!("fork: {}", Errno::last().name()),
        });
        return None;
    }
    Some(pid)
}

/// The parent takes the lease and pins the file; it forks, and the child keeps the pinning
/// ring while the parent closes its copy: the child holds the pin, the parent the lease.
/// The child also tries a registration of its own on the inherited mapping (a fact).
fn fork_child_pins(out: &Out, cfg: &HolderConfig, file: File, len: usize) {
    let Some(pin) = pin_or_refuse(out, &file, len) else {
        return;
    };
    let Some(acquire_ns) = take_lease(out, cfg, &file) else {
        return;
    };
    let (to_child_r, to_child_w) = match rustix::pipe::pipe() {
        Ok(p) => p,
        Err(e) => {
            return out.emit(&Event::Error {
                message: format!("pipe: {e}"),
            })
        }
    };
    let (from_child_r, from_child_w) = match rustix::pipe::pipe() {
        Ok(p) => p,
        Err(e) => {
            return out.emit(&Event::Error {
                message: format!("pipe: {e}"),
            })
        }
    };
    let Some(pid) = fork_holder(out) else { return };
    if pid == 0 {
        drop(to_child_w);
        let mut pin = pin;
        out.emit(&Event::Pid {
            pid: std::process::id(),
            role: "forked-child".into(),
        });
        let own = IoUringPinner::new()
            .map_err(|e| e.to_string())
            .and_then(|mut p| {
                let m = pin.mapping.as_ref().expect("mapped");
                p.register(PinTarget {
                    addr: m.addr(),
                    len,
                    writable: m.mode().writable,
                })
                .map_err(|e| match e {
                    crate::pin::PinError::Kernel { errno, .. } => errno.name(),
                    e => e.to_string(),
                })
            });
        out.fact(
            "child_own_pin_of_inherited_mapping",
            own.map(|_| "ok".to_string()).unwrap_or_else(|e| e),
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
        // SAFETY: end the forked child without running the parent's exit handlers twice.
        unsafe { libc::_exit(0) };
    }
    drop(to_child_r);
    drop(from_child_w);
    let mut b = [0u8; 1];
    let _ = rustix::io::read(&from_child_r, &mut b);
    // Give the pin to the child: close the parent's copy of the ring without unregistering.
    let ring = pin.pinner.ring_fd().as_raw_fd();
    std::mem::forget(pin);
    // SAFETY: closing the ring descriptor this process owns; its other copy lives in the child.
    unsafe { libc::close(ring) };
    out.fact("parent_closed_its_ring", "yes");
    out.emit(&Event::Ready {
        round: 0,
        acquire_ns,
    });
    if await_signal_or(out, cfg, false, None) {
        respond(out, cfg, &file, None);
    }
    if command().as_deref() == Some("write") {
        let _ = rustix::io::write(&to_child_w, b"w");
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// Send the lease fd and the pinning ring to a forked receiver over SCM_RIGHTS, then exit:
/// the receiver holds the pin and answers the orchestrator from then on.
fn scm_rights(out: &Out, cfg: &HolderConfig, file: File, len: usize) {
    use rustix::net::{
        recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
        RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
    };
    let Some(mut pin) = pin_or_refuse(out, &file, len) else {
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
        Err(e) => {
            return out.emit(&Event::Error {
                message: format!("socketpair: {e}"),
            })
        }
    };
    let Some(pid) = fork_holder(out) else { return };
    if pid == 0 {
        drop(a);
        drop(file);
        out.emit(&Event::Pid {
            pid: std::process::id(),
            role: "receiver".into(),
        });
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let mut byte = [0u8; 1];
        let _ = recvmsg(
            &b,
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
        // Wait until the sender is gone, then serve the orchestrator.
        let _ = rustix::io::read(&b, &mut byte);
        out.fact(
            "receiver_lease",
            fds.first()
                .map(|f| lease_name(get_lease(f)))
                .unwrap_or_else(|| "no fd".into()),
        );
        out.emit(&Event::Ready {
            round: 0,
            acquire_ns,
        });
        // The receiver did not set the lease: only its owner (the sender, gone) would be
        // signalled. Watch for a signal and for the kernel revoking the lease.
        if await_signal_or(out, cfg, false, fds.first().map(|f| f.as_fd())) {
            if let Some(f) = fds.first() {
                let _ = set_lease(f, None, 0);
            }
        }
        out.fact(
            "receiver_holds_pin_via",
            if fds.len() > 1 {
                "scm-rights"
            } else {
                "fork inheritance"
            },
        );
        if command().as_deref() == Some("write") {
            // Write through the ring the receiver holds: the one that came over SCM_RIGHTS,
            // put where the inherited copy was (the ring's queues are mapped here since the
            // fork), or else the inherited one.
            // Read back through the received lease descriptor (opening the file anew while
            // a lease exists would break it).
            let Some(lease_file) = fds.first().and_then(|f| f.try_clone().ok()).map(File::from)
            else {
                out.emit(&Event::DeviceWrite {
                    phase: "after-break".into(),
                    result: "no lease fd received".into(),
                });
                // SAFETY: end the forked receiver.
                unsafe { libc::_exit(0) };
            };
            let r = match fds.get(1) {
                Some(ring) => {
                    let slot = pin.pinner.ring_fd().as_raw_fd();
                    // SAFETY: dup2 onto a descriptor number this process owns; the inherited
                    // ring descriptor is replaced by the received one.
                    if unsafe { libc::dup2(ring.as_raw_fd(), slot) } < 0 {
                        format!("dup2: {}", Errno::last().name())
                    } else {
                        pin.device_write(&lease_file, cfg.run_tag, 2)
                    }
                }
                None => pin.device_write(&lease_file, cfg.run_tag, 2),
            };
            out.emit(&Event::DeviceWrite {
                phase: "after-break".into(),
                result: r,
            });
        }
        out.emit(&Event::Done);
        while let Some(c) = command() {
            if c == "exit" {
                break;
            }
        }
        // SAFETY: end the forked receiver.
        unsafe { libc::_exit(0) };
    }
    drop(b);
    // The lease fd and the pinning ring together; io_uring may refuse to let a ring travel.
    let send = |fds: &[std::os::fd::BorrowedFd<'_>]| {
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        cmsg.push(SendAncillaryMessage::ScmRights(fds));
        sendmsg(
            &a,
            &[std::io::IoSlice::new(b"x")],
            &mut cmsg,
            SendFlags::empty(),
        )
    };
    match send(&[file.as_fd(), pin.pinner.ring_fd()]) {
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
    // The sender exits without releasing anything. Closing `a` tells the receiver.
    std::mem::forget(pin);
    std::mem::forget(file);
    // SAFETY: leave at once; the receiver (our child) carries on.
    unsafe { libc::_exit(0) };
}

/// Entry point of `pinstorm __lease-holder CONFIG_JSON`.
pub fn holder_main(config_json: &str) -> i32 {
    match serde_json::from_str::<HolderConfig>(config_json) {
        Ok(cfg) => {
            run_holder(&cfg);
            0
        }
        Err(e) => {
            Out.emit(&Event::Error {
                message: format!("bad holder configuration: {e}"),
            });
            2
        }
    }
}
