//! What the runner and a lease holder say to each other.
//!
//! The runner starts `pinstorm __lease-holder CONFIG_JSON` with a [`HolderConfig`], then
//! writes [`Command`]s to its stdin, one per line; the holder (and every process it forks)
//! writes [`Event`]s to stdout, one JSON object per line. Both ends are the same binary, so
//! the protocol has no versions; it is still checked, since a holder's line that does not
//! parse is reported as an error rather than skipped.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Behaviour, LeaseKind, Lifecycle};
use crate::pin::{PinKind, PinSettings};

/// What the holder is asked to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HolderConfig {
    pub path: PathBuf,
    pub lease: LeaseKind,
    pub behaviour: Behaviour,
    pub delay_ms: u64,
    /// Lease / break rounds (break storms).
    pub rounds: u32,
    /// The pin path the holder pins through (`pin_len`, lifecycle scenarios, overhead).
    pub pin: PinKind,
    /// The run's settings for that path (`[rdma]` and the `--rdma-*` flags).
    #[serde(default)]
    pub pins: PinSettings,
    /// Register a pin of this many bytes on a shared read-write mapping.
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

/// A line the runner writes to the holder's stdin. End of input means: stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// The breaker's call returned and it closed what it opened: report the round (break
    /// storms report only now, so nothing the holder writes falls inside the breaker's wait)
    /// and go on.
    Next,
    /// The breaker is done: let the device write through the pin that is still held.
    Write,
    /// Nothing more will be asked: release everything and exit.
    Exit,
}

impl Command {
    pub const ALL: &'static [Command] = &[Command::Next, Command::Write, Command::Exit];

    pub fn line(self) -> &'static str {
        match self {
            Command::Next => "next",
            Command::Write => "write",
            Command::Exit => "exit",
        }
    }

    /// The command on `line` (surrounding whitespace ignored), `None` for anything else.
    pub fn parse(line: &str) -> Option<Command> {
        let line = line.trim();
        Command::ALL.iter().copied().find(|c| c.line() == line)
    }
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
    /// The break signal arrived in this process (`t`: when `sigtimedwait` returned; the event
    /// itself is written after the holder's immediate answer, see `holder::respond`).
    Signal {
        t: u64,
        si_fd: i32,
        pid: u32,
    },
    /// No break signal within the wait.
    NoSignal {
        waited_ms: u64,
    },
    /// The holder gave the lease up (`how`: unlock, downgrade, munmap). `release_ns` is the
    /// unpin (if the holder held a pin) and the release call together; `unpin_ns` the unpin's
    /// part.
    Released {
        t: u64,
        release_ns: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unpin_ns: Option<u64>,
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

impl Event {
    /// The event on one line of holder output; a line that is no event becomes an
    /// [`Event::Error`] quoting it.
    pub fn parse(line: &str) -> Event {
        serde_json::from_str(line).unwrap_or_else(|e| Event::Error {
            message: format!("unreadable holder event {line:?}: {e}"),
        })
    }

    /// One line of holder output, newline included.
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("events serialize");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_reads_back_from_its_line_and_nothing_else_is_a_command() {
        for &c in Command::ALL {
            assert_eq!(Command::parse(c.line()), Some(c));
            assert_eq!(Command::parse(&format!(" {}\n", c.line())), Some(c));
        }
        assert_eq!(Command::parse("nextt"), None);
        assert_eq!(Command::parse(""), None);
    }

    #[test]
    fn events_keep_their_wire_names_and_read_back_unchanged() {
        let e = Event::Revoked {
            t: 7,
            to: "read".into(),
        };
        assert_eq!(e.line(), "{\"ev\":\"revoked\",\"t\":7,\"to\":\"read\"}\n");
        assert_eq!(Event::parse(e.line().trim()), e);
        assert_eq!(
            Event::parse("{\"ev\":\"no-signal\",\"waited_ms\":3}"),
            Event::NoSignal { waited_ms: 3 }
        );
        // A release without an unpin (a no-pin holder) carries no `unpin_ns`.
        let e = Event::Released {
            t: 1,
            release_ns: 2,
            unpin_ns: None,
            how: "unlock".into(),
        };
        assert_eq!(
            e.line(),
            "{\"ev\":\"released\",\"t\":1,\"release_ns\":2,\"how\":\"unlock\"}\n"
        );
        assert_eq!(Event::parse(e.line().trim()), e);
    }

    #[test]
    fn a_line_that_is_no_event_becomes_an_error_that_quotes_it() {
        match Event::parse("panicked at lease.rs") {
            Event::Error { message } => assert!(message.contains("panicked at lease.rs")),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn the_holder_configuration_names_its_pin_path_as_scenario_files_do() {
        let cfg = HolderConfig {
            path: "/tmp/f".into(),
            lease: LeaseKind::Write,
            behaviour: Behaviour::Hung,
            delay_ms: 5,
            rounds: 1,
            pin: PinKind::IoUring,
            pins: PinSettings::default(),
            pin_len: Some(4096),
            lifecycle: Some(Lifecycle::ScmRights),
            overhead_cycles: None,
            extra_flags: 0,
            signal: 35,
            wait_ms: 3000,
            run_tag: 9,
        };
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["pin"], "io_uring");
        assert_eq!(json["lifecycle"], "scm-rights");
        assert_eq!(serde_json::from_value::<HolderConfig>(json).unwrap(), cfg);
    }

    /// The holder is a process of its own: its configuration line is the only way the run's
    /// pin settings reach it, so they must survive the trip, and a configuration without
    /// them (an older runner's) means the defaults.
    #[test]
    fn the_runs_pin_settings_travel_to_the_holder_in_its_configuration() {
        let mut pins = PinSettings::default();
        pins.rdma.device = Some("rxe7".into());
        pins.rdma.port = Some(2);
        pins.rdma.path_mtu = Some(1024);
        let cfg = HolderConfig {
            path: "/tmp/f".into(),
            lease: LeaseKind::Write,
            behaviour: Behaviour::Cooperative,
            delay_ms: 0,
            rounds: 1,
            pin: PinKind::Rdma,
            pins: pins.clone(),
            pin_len: Some(4096),
            lifecycle: None,
            overhead_cycles: None,
            extra_flags: 0,
            signal: 35,
            wait_ms: 3000,
            run_tag: 9,
        };
        let line = serde_json::to_string(&cfg).unwrap();
        let back: HolderConfig = serde_json::from_str(&line).unwrap();
        assert_eq!(back.pins, pins);
        assert_eq!(back.pins.rdma.device.as_deref(), Some("rxe7"));
        let mut json = serde_json::to_value(&cfg).unwrap();
        json.as_object_mut().unwrap().remove("pins");
        let old: HolderConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old.pins, PinSettings::default());
    }
}
