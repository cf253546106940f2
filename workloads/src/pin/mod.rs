//! Pin paths: the ways user space asks the kernel to pin pages for a "device".
//!
//! Like fio's ioengines, each path is one module behind one trait. A [`PinPath`] says whether
//! it can run here and hands out [`Pinner`]s; a `Pinner` is one pinning context (an io_uring
//! instance, an RDMA protection domain with its queue pair, a pipe for vmsplice) that holds at
//! most one registered region at a time and can make the "device" write into or read out of
//! it. A storm that wants many pins at once uses many pinners.
//!
//! A path declares what it can do ([`PinPath::device_writes`], [`PinPath::device_reads`],
//! [`PinPath::foll_pins`], [`PinPath::device`]) so runners never name a path, and gets its
//! settings (the scenario's `[rdma]`, say) from [`PinSettings`] when it is built, so there is
//! no process-wide configuration. Adding a path touches its own module, this module's
//! registry ([`PinKind`], [`PinKind::path`], and [`PinSettings`] if it has settings), and the
//! scenario's table for those settings.
//!
//! This module must not decide what an outcome means: it reports `ok` or the kernel's errno,
//! and the expectations files decide whether that was expected.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sys::Errno;

pub mod baseline;
pub mod io_uring;
pub mod rdma;
pub mod vmsplice;

/// The pin paths pinstorm knows. The serialized name is what scenario files and result
/// rows use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PinKind {
    /// io_uring fixed buffers: `IORING_REGISTER_BUFFERS` (FOLL_WRITE | FOLL_LONGTERM).
    #[serde(rename = "io_uring")]
    IoUring,
    /// vmsplice(2) into a pipe that is not read: transient page references.
    #[serde(rename = "vmsplice")]
    Vmsplice,
    /// RDMA memory registration: `ibv_reg_mr` (long-term pin; FOLL_WRITE unless the access
    /// flags are read-only).
    #[serde(rename = "rdma")]
    Rdma,
    /// RDMA on-demand paging: `ibv_reg_mr` with `IBV_ACCESS_ON_DEMAND` (no pin: the device
    /// mirrors the page tables and faults; invalidated by MMU notifiers).
    #[serde(rename = "rdma-odp")]
    RdmaOdp,
}

impl PinKind {
    pub const ALL: &'static [PinKind] = &[
        PinKind::IoUring,
        PinKind::Vmsplice,
        PinKind::Rdma,
        PinKind::RdmaOdp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PinKind::IoUring => "io_uring",
            PinKind::Vmsplice => "vmsplice",
            PinKind::Rdma => "rdma",
            PinKind::RdmaOdp => "rdma-odp",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            PinKind::IoUring => {
                "io_uring fixed buffers (IORING_REGISTER_BUFFERS, long-term writable pin); device write = READ_FIXED, device read = WRITE_FIXED"
            }
            PinKind::Vmsplice => {
                "vmsplice(2) into a pipe left unread (transient page references, read-only); device read = tee + read"
            }
            PinKind::Rdma => {
                "RDMA memory registration (ibv_reg_mr, long-term pin); device write/read = RDMA WRITE/READ over a loopback RC queue pair"
            }
            PinKind::RdmaOdp => {
                "RDMA on-demand paging (ibv_reg_mr + IBV_ACCESS_ON_DEMAND, no pin; ibv_advise_mr prefetch); device I/O as rdma"
            }
        }
    }

    /// Build the path with its settings. Cheap: no kernel object is created until
    /// [`PinPath::pinner`].
    pub fn path(self, settings: &PinSettings) -> Box<dyn PinPath> {
        match self {
            PinKind::IoUring => Box::new(io_uring::IoUringPath),
            PinKind::Vmsplice => Box::new(vmsplice::VmsplicePath),
            PinKind::Rdma => Box::new(rdma::RdmaPath::new(settings.rdma.clone(), false)),
            PinKind::RdmaOdp => Box::new(rdma::RdmaPath::new(settings.rdma.clone(), true)),
        }
    }

    pub fn parse(name: &str) -> Result<PinKind, String> {
        PinKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let known: Vec<_> = PinKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown pin path {name:?} (known: {})", known.join(", "))
            })
    }
}

impl std::fmt::Display for PinKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a run tells its pin paths: each path reads its own part. Built from the scenario
/// (`Scenario::pin_settings`), into which the command line merged its flags. Serializable so
/// that processes pinstorm starts (lease holders) are told the same.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PinSettings {
    /// `[rdma]`: device, port, path MTU and MR access flags of `rdma` and `rdma-odp`.
    #[serde(default)]
    pub rdma: rdma::RdmaConfig,
}

/// Whether something can run on this machine; if not, the reason, in the words a
/// kernel developer would want (like fstests' `_notrun`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    Usable,
    NotRun(String),
}

impl Availability {
    pub fn is_usable(&self) -> bool {
        matches!(self, Availability::Usable)
    }
}

/// The user-space range to pin. Plain numbers on purpose: a pin outlives borrows (munmap
/// before unregister is a scenario we test), so a pinner never holds a Rust reference to
/// the region.
///
/// Made only from a [`crate::sys::Mapping`] ([`PinTarget::of`]; `non_exhaustive` keeps
/// other crates from building one): a mapping pinstorm never
/// exposes as a Rust slice or object, so a device writing into it (which the pin paths' edge
/// modules allow without `unsafe` at their callers) cannot break what Rust assumes about
/// any other memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PinTarget {
    pub addr: usize,
    pub len: usize,
    /// Whether the mapping is writable (`PROT_WRITE`). Paths whose registration names an
    /// access mode (RDMA access flags) derive their default from it; io_uring always pins for
    /// writing.
    pub writable: bool,
}

impl PinTarget {
    /// `len` bytes at `offset` of this target, if they lie inside it (still a range of the
    /// same pinstorm mapping).
    pub fn sub(self, offset: usize, len: usize) -> Option<PinTarget> {
        let end = offset.checked_add(len)?;
        (end <= self.len).then_some(PinTarget {
            addr: self.addr + offset,
            len,
            ..self
        })
    }

    /// The first `len` bytes of `m` (at most its length).
    pub fn of(m: &crate::sys::Mapping, len: usize) -> PinTarget {
        PinTarget {
            addr: m.addr(),
            len: len.min(m.len()),
            writable: m.mode().writable,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The kernel refused: this is a measured outcome, not a tool failure.
    #[error("{op}: {errno}")]
    Kernel { op: &'static str, errno: Errno },
    /// The device reported a failed transfer (an RDMA work completion with an error status
    /// such as `IBV_WC_REM_ACCESS_ERR`, or no completion in time): a measured outcome too.
    #[error("{op}: {status}")]
    Device { op: &'static str, status: String },
    /// Cannot run here (missing capability, device, limit), with the reason.
    #[error("not run: {0}")]
    NotRun(String),
    /// The tool itself failed (bad state, short I/O, ...).
    #[error("{0:#}")]
    Tool(anyhow::Error),
}

impl PinError {
    /// The name a measured failure is recorded under (`EFAULT`, `IBV_WC_REM_ACCESS_ERR`);
    /// `None` for `NotRun` and `Tool`.
    pub fn outcome(&self) -> Option<String> {
        match self {
            PinError::Kernel { errno, .. } => Some(errno.name()),
            PinError::Device { status, .. } => Some(status.clone()),
            _ => None,
        }
    }

    pub fn kernel(op: &'static str, err: &std::io::Error) -> PinError {
        match Errno::from_io(err) {
            Some(errno) => PinError::Kernel { op, errno },
            None => PinError::Tool(anyhow::anyhow!("{op}: {err}")),
        }
    }
}

/// Whether the pages a path holds are FOLL_PIN pins, which `/proc/vmstat` counts
/// (`nr_foll_pin_acquired`, `nr_foll_pin_released`) and the leaked-pins oracle reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollPins {
    Counted,
    /// The path holds pages some other way, or not at all; why, for the oracle's `notrun`.
    NotTaken(&'static str),
}

/// Whether a path's "device" can do one kind of I/O through a held pin at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceIo {
    Supported,
    /// Never on this path, whatever the machine; why, for the `notrun` of what needs it.
    Unsupported(&'static str),
}

impl DeviceIo {
    pub fn is_supported(self) -> bool {
        self == DeviceIo::Supported
    }

    /// Why not, if not.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            DeviceIo::Supported => None,
            DeviceIo::Unsupported(why) => Some(why),
        }
    }
}

/// One way of pinning pages. Shared between threads; each thread asks for its own pinner.
///
/// Every path declares what it can do, so callers ask instead of naming paths.
pub trait PinPath: Send + Sync {
    fn kind(&self) -> PinKind;
    /// Whether what this path holds shows up in the FOLL_PIN counters. Every path says so:
    /// a leak check that cannot see a path's pins must say it did not run.
    fn foll_pins(&self) -> FollPins;
    /// Whether the device can write into the pinned pages ([`Pinner::device_write`]). A
    /// path that can may still fail on one machine (`PinError::NotRun` from the pinner).
    fn device_writes(&self) -> DeviceIo;
    /// Whether the device can read the pinned pages back ([`Pinner::device_read`]).
    fn device_reads(&self) -> DeviceIo;
    /// The name of the device this path drives here (`rxe0`), if it drives a named one:
    /// what expectation rules with a device (`rdma_device`) match against.
    fn device(&self) -> Option<String> {
        None
    }
    /// Whether it drives an RDMA device (a NIC, or soft-RoCE): a lab guest sets up rxe only
    /// for scenarios with such a path.
    fn uses_rdma_device(&self) -> bool {
        false
    }
    /// The `pinstorm run` flags that select what this path drove here (`--rdma-dev rxe0
    /// --rdma-port 1`), for reproducer command lines.
    fn run_flags(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether this path can run on this machine at all.
    fn availability(&self) -> Availability;
    /// A fresh pinning context for one thread.
    fn pinner(&self) -> Result<Box<dyn Pinner>, PinError>;
    /// The benchmark's baseline: the same register/unregister calls made raw in a tight loop
    /// ([`baseline`]), sharing no code with this path's pinner, so the difference between
    /// the two is pinstorm's own overhead.
    fn tight_loop(&self) -> Option<Box<dyn TightLoop>> {
        None
    }
}

/// One pinning context, holding at most one registered region.
///
/// Dropping a pinner releases its pin (and its kernel objects).
pub trait Pinner: Send {
    /// Pin `target` (a long-term pin for io_uring and RDMA, a transient one for vmsplice).
    fn register(&mut self, target: PinTarget) -> Result<(), PinError>;
    /// Release the pin taken by `register`.
    fn unregister(&mut self) -> Result<(), PinError>;
    /// The currently registered range, if any.
    fn registered(&self) -> Option<PinTarget>;
    /// Let the device write `data` into the pinned pages at `offset` (bytes from the start of
    /// the registered range). Returns the number of bytes the device reported written.
    fn device_write(&mut self, offset: usize, data: &[u8]) -> Result<usize, PinError>;
    /// Let the device read `len` bytes out of the pinned pages at `offset`.
    fn device_read(&mut self, offset: usize, len: usize) -> Result<Vec<u8>, PinError>;
    /// The unit the device splits its transfers into (the RDMA path MTU in bytes), if it has
    /// one: what `packets` write shapes are drawn around.
    fn transfer_unit(&self) -> Option<u64> {
        None
    }
    /// Something about how this pinner ran that a reader of the results must know although
    /// nothing failed (e.g. an ODP prefetch the device does not have, so it was skipped).
    fn note(&self) -> Option<String> {
        None
    }
    /// The descriptor this pinner's pin lives in, if it lives in one (an io_uring instance):
    /// a process that gets it, by fork or SCM_RIGHTS, holds the pin too. The lease lifecycle
    /// scenarios hand pins over this way.
    fn pin_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
    /// Close this process's pinning context without releasing the pin, which stays for as
    /// long as another process holds [`Pinner::pin_fd`]. A path without such a descriptor has
    /// nobody to leave the pin to and keeps everything.
    fn let_go(self: Box<Self>) {
        std::mem::forget(self)
    }
}

/// The baseline of a pin path: register + unregister with the raw calls, timed inline.
/// Implemented in [`baseline`] only, where nothing of the pinners is used.
pub trait TightLoop: Send {
    /// One register + unregister of `target`, each half timed on its own.
    fn cycle(&mut self, target: PinTarget) -> CycleTimes;
}

/// What one baseline cycle measured: each half's time or the error it ended in. A refused
/// registration leaves nothing to release, so it has no second half.
#[derive(Debug)]
pub struct CycleTimes {
    pub register: Result<Duration, PinError>,
    /// `None` when the registration failed.
    pub unregister: Option<Result<Duration, PinError>>,
}

/// Check that `offset..offset+len` lies inside the registered range.
pub(crate) fn check_span(
    registered: Option<PinTarget>,
    offset: usize,
    len: usize,
) -> Result<PinTarget, PinError> {
    let t = registered
        .ok_or_else(|| PinError::Tool(anyhow::anyhow!("device I/O with no registered region")))?;
    match offset.checked_add(len) {
        Some(end) if end <= t.len => Ok(t),
        _ => Err(PinError::Tool(anyhow::anyhow!(
            "device I/O at {offset}+{len} outside the registered {} bytes",
            t.len
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backing::{Access, BackingKind, MapKind, RegionSpec, SetupEnv};
    use crate::scratch::ScratchRoot;
    use crate::units::Size;

    /// What a path declares about device I/O is what its pinners do: a path without device
    /// writes refuses one with the declared reason, a usable path with them writes, and the
    /// device reads back what is in the pinned pages.
    #[test]
    fn paths_do_the_device_io_they_declare() {
        let dir = std::env::temp_dir().join(format!("pinstorm-device-io-{}", std::process::id()));
        let root = ScratchRoot::open(&dir).unwrap();
        let run = root.new_run("device-io").unwrap();
        let anon = BackingKind::Anon.setup(&SetupEnv::default(), &run).unwrap();
        let region = anon
            .region(&RegionSpec {
                size: Size(64 << 10),
                map: MapKind::Private,
                access: Access::Rw,
            })
            .unwrap();
        let mut checked = Vec::new();
        for &kind in PinKind::ALL {
            let path = kind.path(&PinSettings::default());
            if let Availability::NotRun(why) = path.availability() {
                eprintln!("{kind} not checked: {why}");
                continue;
            }
            let mut pinner = path.pinner().unwrap();
            pinner.register(region.pin_target()).unwrap();
            let page = vec![0x5a; 4096];
            match (path.device_writes(), pinner.device_write(0, &page)) {
                (DeviceIo::Supported, Ok(n)) => assert_eq!(n, 4096, "{kind}"),
                (DeviceIo::Unsupported(why), Err(PinError::NotRun(r))) => {
                    assert_eq!(r, why, "{kind}")
                }
                (declared, got) => panic!("{kind} declares {declared:?}, device write: {got:?}"),
            }
            assert!(path.device_reads().is_supported(), "{kind}");
            let mut cpu = vec![0u8; 4096];
            region.mapping.read_at(0, &mut cpu);
            assert_eq!(pinner.device_read(0, 4096).unwrap(), cpu, "{kind}");
            pinner.unregister().unwrap();
            checked.push(kind);
        }
        assert!(checked.contains(&PinKind::IoUring) && checked.contains(&PinKind::Vmsplice));
        drop((region, anon, run, root));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A path that declares FOLL_PIN pins is seen by the kernel's counters: registering 2 MiB
    /// of 4 KiB pages moves `nr_foll_pin_acquired` by at least 512, and releasing them moves
    /// `nr_foll_pin_released` as much (other pinning on the machine only adds to both).
    #[test]
    fn paths_that_declare_foll_pins_move_the_kernels_counters_by_what_they_pin() {
        if crate::foll_pin_counters().is_none() {
            eprintln!("skipped: no nr_foll_pin_* counters in /proc/vmstat (kernel before 5.6)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("pinstorm-foll-pins-{}", std::process::id()));
        let root = ScratchRoot::open(&dir).unwrap();
        let run = root.new_run("foll-pins").unwrap();
        let anon = BackingKind::Anon.setup(&SetupEnv::default(), &run).unwrap();
        let region = anon
            .region(&RegionSpec {
                size: Size(2 << 20),
                map: MapKind::Private,
                access: Access::Rw,
            })
            .unwrap();
        let mut checked = Vec::new();
        for &kind in PinKind::ALL {
            let path = kind.path(&PinSettings::default());
            match (path.foll_pins(), path.availability()) {
                (FollPins::NotTaken(why), _) => assert!(!why.is_empty(), "{kind}"),
                (FollPins::Counted, Availability::NotRun(why)) => {
                    eprintln!("{kind} not checked: {why}")
                }
                (FollPins::Counted, Availability::Usable) => {
                    let mut pinner = path.pinner().unwrap();
                    let (acquired0, released0) = crate::foll_pin_counters().unwrap();
                    pinner.register(region.pin_target()).unwrap();
                    let (acquired1, _) = crate::foll_pin_counters().unwrap();
                    assert!(
                        acquired1 - acquired0 >= 512,
                        "{kind}: {} pages pinned",
                        acquired1 - acquired0
                    );
                    pinner.unregister().unwrap();
                    drop(pinner);
                    let t = std::time::Instant::now();
                    let released = loop {
                        let (_, released1) = crate::foll_pin_counters().unwrap();
                        if released1 - released0 >= 512 || t.elapsed().as_secs() >= 5 {
                            break released1 - released0;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    };
                    assert!(released >= 512, "{kind}: {released} pages released");
                    checked.push(kind);
                }
            }
        }
        assert!(
            checked.contains(&PinKind::IoUring),
            "io_uring was not checked"
        );
        drop(region);
        drop(anon);
        drop(run);
        drop(root);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
