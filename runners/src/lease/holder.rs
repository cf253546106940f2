//! A lease holder as the runner sees it: a child process to command and to read events from,
//! and every process it spawned to kill at the end.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use pinstorm_workloads::lease::{self, Event, HolderConfig};
use rustix::process::{kill_process, Pid, Signal};

/// A running holder and everything it spawned.
pub(super) struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Event>,
    /// Every holder-side process that reported itself, with its role (`holder`,
    /// `forked-child`, `receiver`).
    pids: Vec<(u32, String)>,
}

impl Holder {
    pub(super) fn spawn(exe: &Path, cfg: &HolderConfig) -> anyhow::Result<Holder> {
        let mut child = Command::new(exe)
            .arg("__lease-holder")
            .arg(serde_json::to_string(cfg)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting the lease holder {}: {e}", exe.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(Event::parse(&line)).is_err() {
                    break;
                }
            }
        });
        Ok(Holder {
            stdin: child.stdin.take(),
            child,
            rx,
            pids: Vec::new(),
        })
    }

    /// The next event within `timeout` (process ids are noted on the way).
    fn next(&mut self, timeout: Duration) -> Option<Event> {
        let ev = self.rx.recv_timeout(timeout).ok()?;
        if let Event::Pid { pid, role } = &ev {
            self.pids.push((*pid, role.clone()));
        }
        Some(ev)
    }

    /// Events until one satisfies `stop` (included) or the timeout passes.
    pub(super) fn until(&mut self, timeout: Duration, stop: impl Fn(&Event) -> bool) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut v = Vec::new();
        while let Some(ev) = self.next(deadline.saturating_duration_since(Instant::now())) {
            let done = stop(&ev);
            v.push(ev);
            if done {
                break;
            }
        }
        v
    }

    /// Events until the holder is ready, or says why it cannot be.
    pub(super) fn until_ready(&mut self) -> Vec<Event> {
        self.until(Duration::from_secs(10), |e| {
            matches!(
                e,
                Event::Ready { .. } | Event::Refused { .. } | Event::Error { .. } | Event::Done
            )
        })
    }

    pub(super) fn send(&mut self, c: lease::Command) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{}", c.line());
            let _ = s.flush();
        }
    }

    /// The holder-side processes seen so far, with their roles.
    pub(super) fn pids(&self) -> &[(u32, String)] {
        &self.pids
    }

    pub(super) fn kill_all(&mut self) {
        for (pid, _) in &self.pids {
            // Only our own holder processes: they run this same binary.
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.windows(14).any(|w| w == b"__lease-holder"))
                .unwrap_or(false);
            if let Some(pid) = Pid::from_raw(*pid as i32).filter(|_| ours) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
        let _ = self.child.kill();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.send(lease::Command::Exit);
        self.stdin = None;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill_all();
        let _ = self.child.wait();
    }
}
