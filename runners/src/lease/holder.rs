//! A lease holder as the runner sees it: a child process to command and to read events from,
//! and every process it spawned to kill at the end.
//!
//! Events are read in the caller's thread, when it asks for them, never by a thread of their
//! own: a reader thread is woken by every line the holder writes and would compete for a CPU
//! with the breaker whose wait is being measured (the ready line it would relay is one more
//! wake-up before every break, too).

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use pinstorm_workloads::lease::{self, Event, HolderConfig};
use rustix::process::{kill_process, Pid, Signal};

/// A running holder and everything it spawned.
pub(super) struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines,
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
        let stdout = Lines::new(child.stdout.take().expect("piped"));
        Ok(Holder {
            stdin: child.stdin.take(),
            child,
            stdout,
            pids: Vec::new(),
        })
    }

    /// The next event within `timeout` (process ids are noted on the way).
    fn next(&mut self, timeout: Duration) -> Option<Event> {
        let ev = Event::parse(&self.stdout.next(timeout)?);
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

/// The holder's stdout, split into lines as they are asked for.
struct Lines {
    pipe: ChildStdout,
    buf: Vec<u8>,
    /// The holder side closed its end (every holder process is gone): nothing more comes.
    eof: bool,
}

impl Lines {
    fn new(pipe: ChildStdout) -> Lines {
        Lines {
            pipe,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// The next whole line (without its newline) within `timeout`; `None` when the time is up
    /// or the holder side is gone.
    fn next(&mut self, timeout: Duration) -> Option<String> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if self.eof {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = Timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as _,
            };
            let mut fds = [PollFd::new(&self.pipe, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return None,
            }
            let mut chunk = [0u8; 8192];
            match rustix::io::read(self.pipe.as_fd(), &mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(_) => self.eof = true,
            }
        }
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
            // Drained while waiting: a holder blocked writing to a full pipe would not exit.
            let _ = self.stdout.next(Duration::from_millis(5));
        }
        self.kill_all();
        let _ = self.child.wait();
    }
}
