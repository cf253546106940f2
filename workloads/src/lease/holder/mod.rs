//! The lease holder process: `pinstorm __lease-holder CONFIG_JSON`.
//!
//! It runs one of three things its configuration asks for: break rounds (here), the
//! lease-check overhead measurement ([`overhead`]) or a lifecycle scenario ([`lifecycle`]),
//! and reports on stdout until the runner says `exit` or goes away.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use super::protocol::{Command, Event, HolderConfig};
use super::{get_lease, set_lease, set_sig, Behaviour, LeaseKind};
use crate::sys::{self, Errno};

mod handover;
mod lifecycle;
mod overhead;
mod pin;

use pin::HeldPin;

/// Entry point of `pinstorm __lease-holder CONFIG_JSON`.
pub fn holder_main(config_json: &str) -> i32 {
    match serde_json::from_str::<HolderConfig>(config_json) {
        Ok(cfg) => {
            run_holder(&cfg);
            0
        }
        Err(e) => {
            Reporter.emit(&Event::Error {
                message: format!("bad holder configuration: {e}"),
            });
            2
        }
    }
}

/// The holder's main: run what `cfg` says, report on stdout.
fn run_holder(cfg: &HolderConfig) {
    let out = Reporter;
    sys::block_signal(cfg.signal);
    out.emit(&Event::Pid {
        pid: std::process::id(),
        role: "holder".into(),
    });
    if let Some(cycles) = cfg.overhead_cycles {
        overhead::run(&out, cfg, cycles);
    } else if let Some(l) = cfg.lifecycle {
        lifecycle::run(&out, cfg, l);
    } else {
        rounds(&out, cfg);
    }
    out.emit(&Event::Done);
    wait_for_exit();
}

/// Wait for the runner to let go, so nothing is released before it looked.
fn wait_for_exit() {
    while let Some(c) = command() {
        if c == Command::Exit {
            break;
        }
    }
}

/// Writes events to stdout, whole lines at a time: a forked child shares the pipe.
struct Reporter;

impl Reporter {
    fn emit(&self, e: &Event) {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(e.line().as_bytes());
        let _ = o.flush();
    }

    fn emit_all(&self, events: &[Event]) {
        for e in events {
            self.emit(e);
        }
    }

    fn fact(&self, key: &str, value: impl ToString) {
        self.emit(&Event::Fact {
            key: key.into(),
            value: value.to_string(),
        });
    }

    fn error(&self, message: String) {
        self.emit(&Event::Error { message });
    }

    fn refused(&self, what: &str, errno: String) {
        self.emit(&Event::Refused {
            what: what.into(),
            errno,
        });
    }
}

/// Read one command from the runner; `None` at the end of its input (stop), and for a line
/// that is no command (reported).
fn command() -> Option<Command> {
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => {
            let c = Command::parse(&line);
            if c.is_none() {
                Reporter.error(format!("unknown command {:?}", line.trim()));
            }
            c
        }
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

/// Open the file, or report the refusal (`None`).
fn open_or_refuse(out: &Reporter, cfg: &HolderConfig, write: bool) -> Option<File> {
    open(cfg, write)
        .map_err(|e| out.refused("open", e.name()))
        .ok()
}

/// Set the break signal and take the lease; the time `F_SETLEASE` took, or `None` (reported).
fn take_lease(out: &Reporter, cfg: &HolderConfig, file: &File) -> Option<u64> {
    if let Err(e) = set_sig(file, cfg.signal) {
        out.refused("F_SETSIG", e.name());
        return None;
    }
    let t = Instant::now();
    match set_lease(file, Some(cfg.lease), cfg.extra_flags) {
        Ok(()) => Some(t.elapsed().as_nanos() as u64),
        Err(e) => {
            out.refused("F_SETLEASE", e.name());
            None
        }
    }
}

/// Tell the runner the lease is held (round 0 in lifecycle scenarios).
fn ready(out: &Reporter, round: u32, acquire_ns: u64) {
    out.emit(&Event::Ready { round, acquire_ns });
}

/// The break signal as the holder took it. Reported (as `Event::Signal`) only once the holder
/// has answered: the report's JSON and pipe write never sit between the signal and the
/// release a breaker is waiting for.
#[derive(Clone, Copy, Debug)]
struct Woke {
    /// CLOCK_MONOTONIC right after `sigtimedwait` returned.
    t: u64,
    si_fd: i32,
}

impl Woke {
    fn event(self) -> Event {
        Event::Signal {
            t: self.t,
            si_fd: self.si_fd,
            pid: std::process::id(),
        }
    }
}

/// How the holder gave the lease up, measured while doing it and reported afterwards.
struct Release {
    how: &'static str,
    result: Result<(), Errno>,
    /// CLOCK_MONOTONIC when the release returned.
    t: u64,
    /// Unpin (if any) and the release call together.
    release_ns: u64,
    unpin_ns: Option<u64>,
}

impl Release {
    /// Unregister `pin` (if any), then run `give_up` (the `F_SETLEASE` or `munmap` that ends
    /// the lease), timing both.
    fn run(
        how: &'static str,
        pin: Option<&mut HeldPin>,
        give_up: impl FnOnce() -> Result<(), Errno>,
    ) -> Release {
        let start = Instant::now();
        let unpin_ns = pin.map(|p| {
            p.unpin();
            start.elapsed().as_nanos() as u64
        });
        let result = give_up();
        Release {
            how,
            result,
            t: sys::monotonic_ns(),
            release_ns: start.elapsed().as_nanos() as u64,
            unpin_ns,
        }
    }

    /// `Released`, or `ReleaseFailed` with the errno.
    fn event(&self) -> Event {
        match self.result {
            Ok(()) => Event::Released {
                t: self.t,
                release_ns: self.release_ns,
                unpin_ns: self.unpin_ns,
                how: self.how.into(),
            },
            Err(e) => Event::ReleaseFailed {
                how: self.how.into(),
                errno: e.name(),
            },
        }
    }
}

/// Wait until the kernel takes the lease away or downgrades it (lease-break-time), up to
/// `limit`: `Revoked`, or nothing when the limit passed.
fn wait_revoked(fd: impl AsFd, limit: Duration) -> Option<Event> {
    let start = Instant::now();
    let held = get_lease(&fd).unwrap_or(libc::F_UNLCK);
    while start.elapsed() < limit {
        let to = match get_lease(&fd) {
            Ok(l) if l == held && l != libc::F_UNLCK => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Ok(l) if l == libc::F_RDLCK => "read",
            _ => "none",
        };
        return Some(Event::Revoked {
            t: sys::monotonic_ns(),
            to: to.into(),
        });
    }
    None
}

/// Answer a break the configured way (releasing `pin` first when there is one) and return
/// what to report: the signal, then how the lease ended. Nothing is written here, so the
/// caller reports when it no longer stands between the breaker and the CPU.
fn respond(cfg: &HolderConfig, file: &File, pin: Option<&mut HeldPin>, woke: Woke) -> Vec<Event> {
    let wait = Duration::from_millis(cfg.wait_ms);
    let mut report = vec![woke.event()];
    match cfg.behaviour {
        Behaviour::Hung => report.extend(wait_revoked(file, wait)),
        Behaviour::Downgrading => {
            let r = Release::run("downgrade", None, || {
                set_lease(file, Some(LeaseKind::Read), cfg.extra_flags)
            });
            report.push(r.event());
            if r.result.is_err() {
                report.extend(wait_revoked(file, wait));
            }
        }
        Behaviour::Cooperative | Behaviour::Delayed => {
            if cfg.behaviour == Behaviour::Delayed {
                // Counted from the signal, as a program that answers late would.
                let until = woke.t + cfg.delay_ms * 1_000_000;
                std::thread::sleep(Duration::from_nanos(
                    until.saturating_sub(sys::monotonic_ns()),
                ));
            }
            report.push(Release::run("unlock", pin, || set_lease(file, None, 0)).event());
        }
    }
    report
}

/// How a wait for the break signal may end early besides its time limit.
#[derive(Clone, Copy)]
enum Until<'a> {
    /// Only the signal or the limit.
    Signal,
    /// A command line from the runner ends the wait (break storms: its breaker returned
    /// without breaking the lease).
    Command,
    /// The lease on this descriptor disappearing ends it (emitted as `Revoked`).
    LeaseGone(BorrowedFd<'a>),
}

/// Wait for the break signal; `Some` when it came (for the caller to report once it has
/// answered), else `NoSignal` or `Revoked` is emitted.
fn await_signal(out: &Reporter, cfg: &HolderConfig, until: Until<'_>) -> Option<Woke> {
    let start = Instant::now();
    let limit = Duration::from_millis(cfg.wait_ms);
    while start.elapsed() < limit {
        if let Until::LeaseGone(fd) = until {
            if matches!(get_lease(fd), Ok(l) if l == libc::F_UNLCK) {
                out.emit(&Event::Revoked {
                    t: sys::monotonic_ns(),
                    to: "none".into(),
                });
                return None;
            }
        }
        if let Some(si_fd) = sys::wait_signal(cfg.signal, Duration::from_millis(20)) {
            return Some(Woke {
                t: sys::monotonic_ns(),
                si_fd,
            });
        }
        if matches!(until, Until::Command) && stdin_has_input() {
            // The runner writes only after its breaker returned, and a break signal is queued
            // before the breaking call returns: if none is pending now, none is coming. (The
            // wait above may have timed out just before it was queued.)
            if let Some(si_fd) = sys::wait_signal(cfg.signal, Duration::ZERO) {
                return Some(Woke {
                    t: sys::monotonic_ns(),
                    si_fd,
                });
            }
            let _ = command();
            out.emit(&Event::NoSignal {
                waited_ms: start.elapsed().as_millis() as u64,
            });
            return None;
        }
    }
    out.emit(&Event::NoSignal {
        waited_ms: cfg.wait_ms,
    });
    None
}

fn stdin_has_input() -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let stdin = std::io::stdin();
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    poll(&mut [PollFd::new(&stdin, PollFlags::IN)], Some(&now)).unwrap_or(0) > 0
}

/// Whether the runner asks for the device write after the break: only in scenarios whose
/// row says it will (then this waits for the command).
fn asked_to_write(cfg: &HolderConfig) -> bool {
    cfg.lifecycle.is_some_and(|l| l.spec().writes_after_break) && command() == Some(Command::Write)
}

/// Break rounds: take the lease (and the pin), wait for the break, respond, again.
fn rounds(out: &Reporter, cfg: &HolderConfig) {
    let write_open = cfg.pin_len.is_some();
    for round in 0..cfg.rounds {
        let Some(file) = open_or_refuse(out, cfg, write_open) else {
            return;
        };
        let mut pin = match cfg.pin_len {
            Some(len) => match HeldPin::new_or_refuse(out, cfg, &file, len) {
                Some(p) => Some(p),
                None => return,
            },
            None => None,
        };
        let Some(acquire_ns) = take_lease(out, cfg, &file) else {
            return;
        };
        ready(out, round, acquire_ns);
        if let Some(woke) = await_signal(out, cfg, Until::Command) {
            let report = respond(cfg, &file, pin.as_mut(), woke);
            // Report once the runner says its breaker returned (and closed what it opened):
            // blocked on that read, this process leaves the CPU to the breaker its release
            // woke, as a program that answers and goes back to sleep does.
            let next = command();
            out.emit_all(&report);
            if next != Some(Command::Next) {
                return;
            }
        }
        let _ = set_lease(&file, None, 0);
    }
}
