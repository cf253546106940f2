//! The blocked-operation watchdog: every storm thread announces the syscall it is in; a
//! watchdog thread reports any that runs longer than the threshold, with the thread's
//! `wchan` and kernel stack where readable. The run goes on; when the thread finally returns,
//! the report gets the time it took.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pinstorm_analysis::schema::BlockedOp;

/// One thread's announcement board.
pub struct Slot {
    name: String,
    tid: AtomicI32,
    op: Mutex<&'static str>,
    /// Nanoseconds since the watchdog's epoch when the current syscall began; 0 when idle.
    started: AtomicU64,
    /// Index + 1 of this slot's open report, 0 when none.
    report: AtomicU64,
}

pub struct Watchdog {
    epoch: Instant,
    threshold: Duration,
    slots: Vec<Arc<Slot>>,
    reports: Mutex<Vec<BlockedOp>>,
    stop: AtomicBool,
}

impl Watchdog {
    pub fn new(threshold: Duration, names: &[String]) -> Arc<Watchdog> {
        Arc::new(Watchdog {
            epoch: Instant::now(),
            threshold,
            slots: names
                .iter()
                .map(|n| {
                    Arc::new(Slot {
                        name: n.clone(),
                        tid: AtomicI32::new(0),
                        op: Mutex::new(""),
                        started: AtomicU64::new(0),
                        report: AtomicU64::new(0),
                    })
                })
                .collect(),
            reports: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    pub fn slot(&self, i: usize) -> Arc<Slot> {
        self.slots[i].clone()
    }

    /// The calling thread is about to make `op`.
    pub fn begin(&self, slot: &Slot, op: &'static str) {
        if slot.tid.load(Ordering::Relaxed) == 0 {
            slot.tid
                .store(pinstorm_workloads::sys::gettid(), Ordering::Relaxed);
        }
        *slot.op.lock().unwrap_or_else(|p| p.into_inner()) = op;
        slot.started.store(self.now_ns(), Ordering::SeqCst);
    }

    /// The calling thread's syscall returned.
    pub fn end(&self, slot: &Slot) {
        let started = slot.started.swap(0, Ordering::SeqCst);
        let r = slot.report.swap(0, Ordering::SeqCst);
        if r > 0 && started > 0 {
            let took = self.now_ns().saturating_sub(started) as f64 / 1e6;
            if let Some(rep) = self
                .reports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(r as usize - 1)
            {
                rep.blocked_ms = Some(took);
            }
        }
    }

    /// Look at every slot once; report the ones over the threshold.
    pub fn scan(&self) {
        let now = self.now_ns();
        for s in &self.slots {
            let started = s.started.load(Ordering::SeqCst);
            // `started` may be a hair newer than `now`: the thread began after we read the clock.
            if started == 0
                || now.saturating_sub(started) < self.threshold.as_nanos() as u64
                || s.report.load(Ordering::SeqCst) != 0
            {
                continue;
            }
            let tid = s.tid.load(Ordering::Relaxed);
            let (wchan, stack) = pinstorm_workloads::sys::thread_wait_state(tid);
            let mut reps = self.reports.lock().unwrap_or_else(|p| p.into_inner());
            reps.push(BlockedOp {
                thread: s.name.clone(),
                op: s.op.lock().unwrap_or_else(|p| p.into_inner()).to_string(),
                tid,
                at_ms: started as f64 / 1e6,
                blocked_ms: None,
                wchan,
                stack,
            });
            // If the syscall returned meanwhile, `end` already cleared `started`: the report
            // stays open-ended only if it is still running.
            if s.started.load(Ordering::SeqCst) == started {
                s.report.store(reps.len() as u64, Ordering::SeqCst);
            } else if let Some(r) = reps.last_mut() {
                r.blocked_ms = Some(self.now_ns().saturating_sub(started) as f64 / 1e6);
            }
        }
    }

    /// Scan every 50 ms until `stop`.
    pub fn run(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let me = self.clone();
        std::thread::spawn(move || {
            while !me.stop.load(Ordering::SeqCst) {
                me.scan();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn reports(&self) -> Vec<BlockedOp> {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Milliseconds since the watchdog started (the storm's clock).
    pub fn elapsed_ms(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1e3
    }
}

/// One job's current cell, for a job that runs its cells one at a time on one thread (the
/// probe): when a cell runs longer than the threshold, what every thread of the process
/// waits on (its `wchan` and kernel stack, io_uring's `iou-wrk` workers included) goes to
/// `report` once, so a cell stuck in the kernel (an interruptible wait is invisible to the
/// kernel's hung-task detector) leaves its evidence in the log, or a lab guest's console,
/// before anyone kills it.
pub struct CellWatch {
    current: Arc<Mutex<Option<(String, Instant)>>>,
    /// Dropped to stop the watcher: it wakes at once, not at its next tick (a second's
    /// sleep on drop was half a second added to every probe).
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CellWatch {
    pub fn start(threshold: Duration, report: impl Fn(String) + Send + 'static) -> CellWatch {
        let current: Arc<Mutex<Option<(String, Instant)>>> = Arc::new(Mutex::new(None));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let c = current.clone();
        let tick = (threshold / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let thread = std::thread::spawn(move || {
            let mut reported: Option<Instant> = None;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                let now = c.lock().unwrap_or_else(|p| p.into_inner()).clone();
                match now {
                    Some((label, since))
                        if since.elapsed() >= threshold && reported != Some(since) =>
                    {
                        reported = Some(since);
                        report(format!(
                            "{label}: still running after {:.0} s; the threads wait in:\n{}",
                            since.elapsed().as_secs_f64(),
                            threads_waiting()
                        ));
                    }
                    _ => {}
                }
            }
        });
        CellWatch {
            current,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The job starts the cell `label`.
    pub fn enter(&self, label: String) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((label, Instant::now()));
    }

    /// The cell is done.
    pub fn leave(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Drop for CellWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every thread of this process: id, name, `wchan` and kernel stack (what is readable).
fn threads_waiting() -> String {
    let mut out = String::new();
    let tids = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok());
    for tid in tids {
        let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        let (wchan, stack) = pinstorm_workloads::sys::thread_wait_state(tid);
        out.push_str(&format!(
            "  {tid} {comm}: {}\n",
            wchan.as_deref().unwrap_or("-")
        ));
        for l in stack.iter().flat_map(|s| s.lines()) {
            out.push_str(&format!("      {l}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_syscall_over_the_threshold_is_reported_with_where_it_waits_and_then_timed() {
        let wd = Watchdog::new(Duration::from_millis(100), &["reader".to_string()]);
        let h = wd.run();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let slot = wd.slot(0);
        let wd2 = wd.clone();
        let t = std::thread::spawn(move || {
            let mut f = std::fs::File::from(r);
            let mut b = [0u8; 1];
            wd2.begin(&slot, "read(pipe)");
            // A real blocking syscall: read from a pipe nobody writes to yet.
            f.read_exact(&mut b).unwrap();
            wd2.end(&slot);
        });
        std::thread::sleep(Duration::from_millis(400));
        let reps = wd.reports();
        assert_eq!(reps.len(), 1, "{reps:?}");
        assert_eq!(reps[0].op, "read(pipe)");
        assert_eq!(reps[0].blocked_ms, None, "still blocked");
        assert!(
            reps[0].wchan.is_some(),
            "wchan of a blocked thread is readable: {reps:?}"
        );
        // Unblock it; the report gets its duration.
        rustix::io::write(&w, b"x").unwrap();
        t.join().unwrap();
        wd.stop();
        h.join().unwrap();
        let reps = wd.reports();
        assert!(reps[0].blocked_ms.unwrap() >= 300.0, "{reps:?}");
    }

    #[test]
    fn fast_syscalls_are_not_reported() {
        let wd = Watchdog::new(Duration::from_millis(200), &["fast".to_string()]);
        let slot = wd.slot(0);
        for _ in 0..1000 {
            wd.begin(&slot, "getpid");
            let _ = rustix::process::getpid();
            wd.end(&slot);
            wd.scan();
        }
        assert!(wd.reports().is_empty());
    }

    #[test]
    fn a_cell_over_the_threshold_is_reported_once_with_every_threads_wait() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let w = CellWatch::start(Duration::from_millis(100), move |r| {
            s2.lock().unwrap().push(r)
        });
        w.enter("probe io_uring anon shared rw".into());
        // A real blocking syscall on this thread while the cell runs: read from a pipe
        // nobody writes to, until a helper writes after the threshold.
        let (r, wr) = rustix::pipe::pipe().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(600));
            rustix::io::write(&wr, b"x").unwrap();
        });
        let mut b = [0u8; 1];
        rustix::io::read(&r, &mut b).unwrap();
        t.join().unwrap();
        w.leave();
        // A quick cell is not reported.
        w.enter("probe io_uring anon shared ro".into());
        w.leave();
        std::thread::sleep(Duration::from_millis(300));
        drop(w);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].starts_with("probe io_uring anon shared rw: still running after"),
            "{}",
            seen[0]
        );
        // This thread, by its id, waiting in the pipe read (where wchan is readable).
        let me = pinstorm_workloads::sys::gettid();
        assert!(seen[0].contains(&format!("\n  {me} ")), "{}", seen[0]);
    }
}
