//! Leases on the host: lease-break storms, lease-check overhead, the lifecycle scenarios and
//! the layout-lease probe.
//!
//! Holders run in processes of their own (`pinstorm __lease-holder`, see
//! `pinstorm_workloads::lease`); this module is the other side: it creates the files, starts
//! holders, breaks their leases from this process (open, truncate, io_uring OPENAT), times
//! everything on CLOCK_MONOTONIC, and kills every holder-side process at the end.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use pinstorm_analysis::expect::{judge_fact, FactExpectations};
use pinstorm_analysis::hist::Latency;
use pinstorm_analysis::kernel::KernelRelease;
use pinstorm_analysis::schema::{
    FactVerdict, LayoutLeaseProbe, LeaseBreakResult, LeaseOverhead, LeaseResults, LifecycleResult,
    Measured, Violation,
};
use pinstorm_analysis::stats;
use pinstorm_workloads::backing::{Backing, BackingKind};
use pinstorm_workloads::lease::{
    self, Behaviour, BreakerKind, Event, HolderConfig, LeaseKind, Lifecycle,
};
use pinstorm_workloads::scenario::LeaseJob;
use pinstorm_workloads::scratch::{ScratchFile, ScratchPath};
use pinstorm_workloads::sys::{monotonic_ns, rt_signal, Errno};

use crate::host::{BackingSet, Progress};
use crate::signals;

pub struct LeaseContext<'a> {
    pub backings: &'a BackingSet,
    pub facts: &'a FactExpectations,
    pub kernel: &'a KernelRelease,
    pub seed: u64,
    pub run_tag: u32,
    /// The pinstorm binary that runs holders (`__lease-holder`).
    pub holder_exe: &'a Path,
    /// The lease-break-time in force for this run, seconds.
    pub lease_break_time_s: u64,
    /// Why waiting a lease out is not run here (non-root with a long lease-break-time).
    pub expiry_notrun: Option<String>,
}

/// A running holder and everything it spawned.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Event>,
    pids: Vec<(u32, String)>,
}

impl Holder {
    fn spawn(exe: &Path, cfg: &HolderConfig) -> anyhow::Result<Holder> {
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
                let ev = serde_json::from_str::<Event>(&line).unwrap_or_else(|e| Event::Error {
                    message: format!("unreadable holder event {line:?}: {e}"),
                });
                if tx.send(ev).is_err() {
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
    fn until(&mut self, timeout: Duration, stop: impl Fn(&Event) -> bool) -> Vec<Event> {
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

    fn send(&mut self, line: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{line}");
            let _ = s.flush();
        }
    }

    fn kill_all(&mut self) {
        for (pid, _) in &self.pids {
            // Only our own holder processes: they run this same binary.
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.windows(14).any(|w| w == b"__lease-holder"))
                .unwrap_or(false);
            if ours {
                // SAFETY: kill(2) on a process we started (checked by its command line).
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.send("exit");
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

/// A breaker's result: when it started, how long it took, what it returned, and the
/// descriptor it opened (closed by the caller when the round ends).
struct Broke {
    t0: u64,
    wait_ns: u64,
    result: String,
    fd: Option<OwnedFd>,
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths have no NUL")
}

/// Break the lease from this process.
fn break_lease(kind: BreakerKind, path: &Path, truncate_to: i64) -> Broke {
    let c = cpath(path);
    let t0 = monotonic_ns();
    let open = |flags: i32| {
        // SAFETY: open(2) with a valid NUL-terminated path; we own the returned descriptor.
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            (Errno::last().name(), None)
        } else {
            // SAFETY: a fresh descriptor returned by open(2).
            ("ok".to_string(), Some(unsafe { OwnedFd::from_raw_fd(fd) }))
        }
    };
    let (result, fd) = match kind {
        BreakerKind::OpenRdwr => open(libc::O_RDWR),
        BreakerKind::OpenRdonly => open(libc::O_RDONLY),
        BreakerKind::OpenRdwrNonblock => open(libc::O_RDWR | libc::O_NONBLOCK),
        BreakerKind::OpenRdonlyNonblock => open(libc::O_RDONLY | libc::O_NONBLOCK),
        BreakerKind::Truncate => {
            // SAFETY: truncate(2) with a valid path.
            let r = unsafe { libc::truncate(c.as_ptr(), truncate_to) };
            (
                if r < 0 {
                    Errno::last().name()
                } else {
                    "ok".into()
                },
                None,
            )
        }
        BreakerKind::IoUringOpenat => io_uring_openat(&c),
    };
    Broke {
        t0,
        wait_ns: monotonic_ns() - t0,
        result,
        fd,
    }
}

fn io_uring_openat(path: &CString) -> (String, Option<OwnedFd>) {
    use io_uring::{opcode, types, IoUring};
    let mut ring = match IoUring::new(2) {
        Ok(r) => r,
        Err(e) => return (format!("io_uring_setup: {e}"), None),
    };
    let sqe = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
        .flags(libc::O_RDWR | libc::O_CLOEXEC)
        .build();
    // SAFETY: the path outlives the request, which we wait for below.
    if unsafe { ring.submission().push(&sqe) }.is_err() {
        return ("submission queue full".into(), None);
    }
    if let Err(e) = ring.submit_and_wait(1) {
        return (format!("io_uring_enter: {e}"), None);
    }
    let res = ring.completion().next().map(|c| c.result());
    match res {
        Some(r) if r >= 0 => {
            // SAFETY: OPENAT returned a fresh descriptor we now own.
            ("ok".into(), Some(unsafe { OwnedFd::from_raw_fd(r) }))
        }
        Some(r) => (Errno(-r).name(), None),
        None => ("no completion".into(), None),
    }
}

fn measured(l: &Latency) -> Option<Measured> {
    (l.count() > 0).then(|| Measured {
        stats: l.stats(),
        histogram: l.encode(),
        median_ci_low_ns: None,
        median_ci_high_ns: None,
    })
}

/// Samples kept raw as well as in a histogram, for a confidence interval of the median.
#[derive(Default)]
struct Samples {
    hist: Latency,
    raw: Vec<u64>,
}

impl Samples {
    fn record(&mut self, v: u64) {
        self.hist.record(v);
        self.raw.push(v);
    }

    fn measured(&self, seed: u64) -> Option<Measured> {
        let mut m = measured(&self.hist)?;
        let (_, lo, hi) = stats::bootstrap_median_ci(&self.raw, 1000, 0.95, seed);
        m.median_ci_low_ns = Some(lo);
        m.median_ci_high_ns = Some(hi);
        Some(m)
    }
}

/// A file of `size` bytes that pinstorm created in the backing's directory, closed again:
/// a write lease cannot be taken on a file somebody else holds open.
fn lease_file(b: &dyn Backing, name: &str, size: u64) -> Result<ScratchPath, String> {
    let dir = b.dir().ok_or_else(|| {
        format!(
            "{} has no directory: a breaker needs a path to open",
            b.kind()
        )
    })?;
    let f = ScratchFile::create(dir, name).map_err(|e| format!("{e:#}"))?;
    if b.kind().uses_hugetlb() {
        // hugetlbfs has no write(2): allocate the huge pages instead.
        rustix::fs::fallocate(f.file(), rustix::fs::FallocateFlags::empty(), 0, size)
            .map_err(|e| format!("allocating {name}: {}", Errno::from(e)))?;
    } else {
        let fill = vec![0x5au8; size as usize];
        std::os::unix::fs::FileExt::write_all_at(f.file(), &fill, 0)
            .map_err(|e| format!("filling {name}: {e}"))?;
    }
    Ok(f.into_closed())
}

pub fn run(
    job: &LeaseJob,
    ctx: &LeaseContext,
    progress: &Progress,
    out: &mut LeaseResults,
) -> anyhow::Result<()> {
    if job.layout_probe {
        if let Some(kind) = job.backings.first() {
            if let Ok(b) = ctx.backings.get(*kind) {
                out.layout_lease = Some(layout_probe(job, b));
            }
        }
    }
    for &kind in &job.backings {
        let backing = ctx.backings.get(kind);
        if job.rounds > 0 {
            for &lk in &job.leases {
                for &bh in &job.behaviours {
                    for &bk in &job.breakers {
                        signals::check()?;
                        progress.step(&format!(
                            "lease {kind} {} {} {}",
                            lk.name(),
                            bh.name(),
                            bk.name()
                        ));
                        let r = match &backing {
                            Ok(b) => break_cell(job, ctx, *b, lk, bh, bk)?,
                            Err(e) => notrun_break(kind, "", lk, bh, bk, job, e.0.clone()),
                        };
                        out.breaks.push(r);
                    }
                }
            }
        }
        if job.overhead_cycles > 0 {
            signals::check()?;
            progress.step(&format!("lease-check overhead {kind}"));
            out.overhead.push(match &backing {
                Ok(b) => overhead(job, ctx, *b)?,
                Err(e) => overhead_notrun(kind.name(), "", e.0.clone()),
            });
        }
        for &l in &job.lifecycle {
            signals::check()?;
            progress.step(&format!("lease lifecycle {} {kind}", l.name()));
            out.lifecycle.push(match &backing {
                Ok(b) => lifecycle(job, ctx, *b, l)?,
                Err(e) => lifecycle_notrun(l, kind, "", e.0.clone()),
            });
        }
    }
    Ok(())
}

fn notrun_break(
    kind: BackingKind,
    fs: &str,
    lk: LeaseKind,
    bh: Behaviour,
    bk: BreakerKind,
    job: &LeaseJob,
    reason: String,
) -> LeaseBreakResult {
    LeaseBreakResult {
        backing: kind.name().into(),
        fs: fs.into(),
        lease: lk.name().into(),
        behaviour: bh.name().into(),
        breaker: bk.name().into(),
        pinned: false,
        outcome: "notrun".into(),
        reason: Some(reason),
        rounds: 0,
        signalled: 0,
        ended: BTreeMap::new(),
        breaker_results: BTreeMap::new(),
        acquire: None,
        release: None,
        notify: None,
        breaker_wait: None,
        lease_break_time_s: Some(job.lease_break_time.0.as_secs()),
    }
}

fn holder_config(
    job: &LeaseJob,
    ctx: &LeaseContext,
    path: &Path,
    lk: LeaseKind,
    bh: Behaviour,
) -> HolderConfig {
    HolderConfig {
        path: path.to_path_buf(),
        lease: lk,
        behaviour: bh,
        delay_ms: job.delay.0.as_millis() as u64,
        rounds: job.rounds,
        pin_len: None,
        lifecycle: None,
        overhead_cycles: None,
        extra_flags: 0,
        signal: rt_signal(job.signal),
        wait_ms: (ctx.lease_break_time_s * 1000 + 2000).max(3000),
        run_tag: ctx.run_tag,
    }
}

fn break_cell(
    job: &LeaseJob,
    ctx: &LeaseContext,
    b: &dyn Backing,
    lk: LeaseKind,
    bh: Behaviour,
    bk: BreakerKind,
) -> anyhow::Result<LeaseBreakResult> {
    let kind = b.kind();
    let fs = b.info().fs.clone();
    if lk == LeaseKind::Read && bh == Behaviour::Downgrading {
        return Ok(notrun_break(
            kind,
            &fs,
            lk,
            bh,
            bk,
            job,
            "a read lease has nothing to downgrade to".into(),
        ));
    }
    if bh == Behaviour::Hung {
        if let Some(r) = &ctx.expiry_notrun {
            return Ok(notrun_break(kind, &fs, lk, bh, bk, job, r.clone()));
        }
    }
    let size = job.pin_size.bytes();
    let file = match lease_file(
        b,
        &format!("lease-{}-{}-{}", lk.name(), bh.name(), bk.name()),
        size,
    ) {
        Ok(f) => f,
        Err(e) => return Ok(notrun_break(kind, &fs, lk, bh, bk, job, e)),
    };
    let path = file.path().to_path_buf();
    // A hung holder, and a downgrading one whose downgrade the kernel refuses, leave the
    // breaker waiting out the lease-break-time: they get `hung_rounds`.
    let rounds = if matches!(bh, Behaviour::Hung | Behaviour::Downgrading) {
        job.hung_rounds.min(job.rounds)
    } else {
        job.rounds
    };
    let mut cfg = holder_config(job, ctx, &path, lk, bh);
    cfg.rounds = rounds;
    // A write-lease holder pins its file like an RDMA user would; a read lease cannot (the
    // writable mapping a pin needs is itself a conflicting open).
    let pinned = job.pin && lk == LeaseKind::Write;
    cfg.pin_len = pinned.then_some(size as usize);
    let mut h = Holder::spawn(ctx.holder_exe, &cfg)?;
    let (mut acquire, mut release, mut notify, mut bwait) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    let mut ended: BTreeMap<String, u32> = BTreeMap::new();
    let mut results: BTreeMap<String, u32> = BTreeMap::new();
    let (mut signalled, mut done_rounds) = (0, 0);
    let long = Duration::from_millis(cfg.wait_ms + 3000);
    let interval = (job.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / job.rate));
    for _ in 0..rounds {
        let round_start = Instant::now();
        let evs = h.until(Duration::from_secs(10), |e| {
            matches!(
                e,
                Event::Ready { .. } | Event::Refused { .. } | Event::Error { .. } | Event::Done
            )
        });
        match evs.last() {
            Some(Event::Ready { acquire_ns, .. }) => acquire.record(*acquire_ns),
            Some(Event::Refused { what, errno }) => {
                let mut r = notrun_break(
                    kind,
                    &fs,
                    lk,
                    bh,
                    bk,
                    job,
                    format!("the holder's {what} was refused: {errno}"),
                );
                r.pinned = pinned;
                return Ok(r);
            }
            Some(Event::Error { message }) => anyhow::bail!("lease holder: {message}"),
            _ => anyhow::bail!(
                "the lease holder did not become ready (lease {} {} on {kind})",
                lk.name(),
                bh.name()
            ),
        }
        let broke = break_lease(bk, &path, size as i64);
        bwait.record(broke.wait_ns.max(1));
        *results.entry(broke.result.clone()).or_default() += 1;
        // What happened on the holder's side; a breaker that did not break ends the wait.
        let mut evs = h.until(Duration::from_millis(300), |e| {
            matches!(e, Event::Signal { .. })
        });
        let got_signal = evs.iter().any(|e| matches!(e, Event::Signal { .. }));
        if got_signal {
            evs.extend(h.until(long, |e| {
                matches!(
                    e,
                    Event::Released { .. }
                        | Event::Revoked { .. }
                        | Event::ReleaseFailed { .. }
                        | Event::NoSignal { .. }
                )
            }));
        } else {
            h.send("next");
            evs.extend(h.until(long, |e| {
                matches!(e, Event::NoSignal { .. } | Event::Signal { .. })
            }));
        }
        let mut end = "none".to_string();
        for e in &evs {
            match e {
                Event::Signal { t, .. } => {
                    signalled += 1;
                    notify.record(t.saturating_sub(broke.t0).max(1));
                }
                Event::Released {
                    release_ns, how, ..
                } => {
                    release.record((*release_ns).max(1));
                    end = how.clone();
                }
                Event::Revoked { to, .. } => {
                    end = if to == "read" {
                        "downgraded-by-kernel".into()
                    } else {
                        "revoked".into()
                    }
                }
                Event::ReleaseFailed { how, errno } => end = format!("{how}-failed:{errno}"),
                _ => {}
            }
        }
        *ended.entry(end).or_default() += 1;
        drop(broke.fd);
        if got_signal {
            h.send("next");
        }
        done_rounds += 1;
        if signals::pending().is_some() {
            break;
        }
        if let Some(iv) = interval {
            if let Some(rest) = iv.checked_sub(round_start.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }
    drop(h);
    drop(file);
    Ok(LeaseBreakResult {
        backing: kind.name().into(),
        fs,
        lease: lk.name().into(),
        behaviour: bh.name().into(),
        breaker: bk.name().into(),
        pinned,
        outcome: "ok".into(),
        reason: None,
        rounds: done_rounds,
        signalled,
        ended,
        breaker_results: results,
        acquire: acquire.measured(ctx.seed),
        release: release.measured(ctx.seed),
        notify: notify.measured(ctx.seed),
        breaker_wait: bwait.measured(ctx.seed),
        lease_break_time_s: Some(ctx.lease_break_time_s),
    })
}

fn overhead_notrun(backing: &str, fs: &str, reason: String) -> LeaseOverhead {
    LeaseOverhead {
        backing: backing.into(),
        fs: fs.into(),
        outcome: "notrun".into(),
        reason: Some(reason),
        without: None,
        with: None,
        overhead_ns: None,
        ci_low_ns: None,
        ci_high_ns: None,
        confidence: 0.95,
        overhead_pct: None,
        significant: None,
    }
}

fn overhead(job: &LeaseJob, ctx: &LeaseContext, b: &dyn Backing) -> anyhow::Result<LeaseOverhead> {
    let fs = b.info().fs.clone();
    let mut r = overhead_notrun(b.kind().name(), &fs, String::new());
    r.reason = None;
    let size = job.pin_size.bytes();
    let file = match lease_file(b, "lease-overhead", size) {
        Ok(f) => f,
        Err(e) => {
            r.reason = Some(e);
            return Ok(r);
        }
    };
    let path = file.path().to_path_buf();
    let mut cfg = holder_config(job, ctx, &path, LeaseKind::Write, Behaviour::Cooperative);
    cfg.pin_len = Some(size as usize);
    cfg.overhead_cycles = Some(job.overhead_cycles);
    let mut h = Holder::spawn(ctx.holder_exe, &cfg)?;
    let evs = h.until(Duration::from_secs(600), |e| {
        matches!(
            e,
            Event::Samples { .. } | Event::Refused { .. } | Event::Error { .. } | Event::Done
        )
    });
    drop(h);
    drop(file);
    match evs.last() {
        Some(Event::Samples { without, with }) => {
            let mut lw = Latency::new();
            let mut ll = Latency::new();
            without.iter().for_each(|v| lw.record(*v));
            with.iter().for_each(|v| ll.record(*v));
            let (d, lo, hi) = stats::bootstrap_median_diff(without, with, 1000, 0.95, ctx.seed);
            let base = stats::median(without);
            r.outcome = "ok".into();
            r.without = measured(&lw);
            r.with = measured(&ll);
            r.overhead_ns = Some(d);
            r.ci_low_ns = Some(lo);
            r.ci_high_ns = Some(hi);
            r.overhead_pct = Some(d / base * 100.0);
            r.significant = Some(lo > 0.0 || hi < 0.0);
        }
        Some(Event::Refused { what, errno }) => r.reason = Some(format!("{what}: {errno}")),
        Some(Event::Error { message }) => anyhow::bail!("lease holder: {message}"),
        _ => anyhow::bail!("the lease-check overhead holder sent no samples"),
    }
    Ok(r)
}

fn lifecycle_notrun(l: Lifecycle, kind: BackingKind, fs: &str, reason: String) -> LifecycleResult {
    LifecycleResult {
        scenario: l.name().into(),
        backing: kind.name().into(),
        fs: fs.into(),
        outcome: "notrun".into(),
        reason: Some(reason),
        breaker: String::new(),
        breaker_result: None,
        breaker_wait_ms: None,
        facts: BTreeMap::new(),
        verdicts: Vec::new(),
        violations: Vec::new(),
    }
}

/// Scenarios in which nobody releases the lease, so the breaker waits it out.
fn waits_for_expiry(l: Lifecycle) -> bool {
    matches!(l, Lifecycle::HungExpiry | Lifecycle::ScmRights)
}

fn lifecycle(
    job: &LeaseJob,
    ctx: &LeaseContext,
    b: &dyn Backing,
    l: Lifecycle,
) -> anyhow::Result<LifecycleResult> {
    let kind = b.kind();
    let fs = b.info().fs.clone();
    if waits_for_expiry(l) {
        if let Some(r) = &ctx.expiry_notrun {
            return Ok(lifecycle_notrun(l, kind, &fs, r.clone()));
        }
    }
    let size = job.pin_size.bytes();
    let file = match lease_file(b, &format!("lifecycle-{}", l.name()), size) {
        Ok(f) => f,
        Err(e) => return Ok(lifecycle_notrun(l, kind, &fs, e)),
    };
    let path: PathBuf = file.path().to_path_buf();
    let behaviour = if l == Lifecycle::HungExpiry {
        Behaviour::Hung
    } else {
        Behaviour::Cooperative
    };
    let mut cfg = holder_config(job, ctx, &path, LeaseKind::Write, behaviour);
    cfg.lifecycle = Some(l);
    cfg.pin_len = Some(size as usize);
    let breaker = if l.breaker_truncates() {
        BreakerKind::Truncate
    } else {
        BreakerKind::OpenRdwr
    };
    let mut h = Holder::spawn(ctx.holder_exe, &cfg)?;
    let mut facts: BTreeMap<String, String> = BTreeMap::new();
    let mut events = h.until(Duration::from_secs(10), |e| {
        matches!(
            e,
            Event::Ready { .. } | Event::Refused { .. } | Event::Error { .. } | Event::Done
        )
    });
    match events.last() {
        Some(Event::Ready { .. }) => {}
        Some(Event::Refused { what, errno }) => {
            return Ok(lifecycle_notrun(
                l,
                kind,
                &fs,
                format!("the holder's {what} was refused: {errno}"),
            ))
        }
        Some(Event::Error { message }) => anyhow::bail!("lease holder ({}): {message}", l.name()),
        _ => anyhow::bail!("the lease holder of {} did not become ready", l.name()),
    }
    let holder_pid = h.pids.iter().find(|(_, r)| r == "holder").map(|(p, _)| *p);
    let broke = if l == Lifecycle::KilledWhileWaiting {
        // Break from a thread; kill the holder while the breaker waits.
        let p = path.clone();
        let t = std::thread::spawn(move || break_lease(BreakerKind::OpenRdwr, &p, 0));
        std::thread::sleep(Duration::from_millis(300));
        h.kill_all();
        t.join().expect("breaker thread")
    } else {
        break_lease(breaker, &path, 0)
    };
    events.extend(h.until(Duration::from_millis(500), |_| false));
    let needs_write = matches!(
        l,
        Lifecycle::ForkChildPins
            | Lifecycle::ScmRights
            | Lifecycle::MunmapBeforeUnregister
            | Lifecycle::HungExpiry
    );
    if needs_write {
        h.send("write");
        events.extend(h.until(
            Duration::from_secs(10),
            |e| matches!(e, Event::DeviceWrite { phase, .. } if phase == "after-break"),
        ));
    }
    events.extend(h.until(Duration::from_millis(200), |_| false));
    drop(broke.fd);
    let all_pids = h.pids.clone();
    drop(h);
    drop(file);

    // Facts, from what each side saw.
    let signal_from = events.iter().find_map(|e| match e {
        Event::Signal { pid, .. } => Some(*pid),
        _ => None,
    });
    facts.insert(
        "signalled_process".into(),
        match signal_from {
            None => "none".into(),
            Some(p) if Some(p) == holder_pid => "holder".into(),
            Some(p) => all_pids
                .iter()
                .find(|(q, _)| *q == p)
                .map(|(_, r)| r.clone())
                .unwrap_or_else(|| "other".into()),
        },
    );
    let ended = events.iter().rev().find_map(|e| match e {
        Event::Released { how, .. } => Some(how.clone()),
        Event::Revoked { to, .. } => Some(if to == "read" {
            "downgraded-by-kernel".into()
        } else {
            "revoked".into()
        }),
        Event::ReleaseFailed { how, errno } => Some(format!("{how}-failed:{errno}")),
        _ => None,
    });
    facts.insert(
        "lease_ended".into(),
        ended.unwrap_or_else(|| {
            if l == Lifecycle::KilledWhileWaiting {
                "holder-killed".into()
            } else {
                "not-by-the-holder".into()
            }
        }),
    );
    let wait_ms = broke.wait_ns as f64 / 1e6;
    let lbt_ms = ctx.lease_break_time_s as f64 * 1000.0;
    facts.insert(
        "breaker_waited_for".into(),
        if wait_ms >= lbt_ms * 0.8 {
            "lease-break-time".into()
        } else if l == Lifecycle::KilledWhileWaiting && wait_ms >= 250.0 {
            "holder-death".into()
        } else {
            "holder".into()
        },
    );
    facts.insert("breaker_result".into(), broke.result.clone());
    for e in &events {
        match e {
            Event::Fact { key, value } => {
                facts.insert(key.clone(), value.clone());
            }
            Event::DeviceWrite { phase, result } => {
                facts.insert(
                    format!("device_write_{}", phase.replace('-', "_")),
                    result.clone(),
                );
            }
            _ => {}
        }
    }
    let mut violations = Vec::new();
    if facts.get("device_write_after_break").map(String::as_str) == Some("lost") {
        violations.push(Violation {
            file: path.display().to_string(),
            offset: 0,
            len: 4096,
            what: "after the lease was gone and the breaker truncated the file, the device's write through the still-registered pin is not in the file".into(),
            at_ms: wait_ms,
            history: events.iter().filter_map(describe).collect(),
        });
    }
    let verdicts = facts
        .iter()
        .map(|(k, v)| {
            let (verdict, rule) = judge_fact(ctx.facts, l.name(), k, ctx.kernel, v);
            FactVerdict {
                fact: k.clone(),
                measured: v.clone(),
                expected: rule.map(|r| r.value.clone()),
                verdict,
                why: rule.map(|r| r.why.clone()),
            }
        })
        .collect();
    Ok(LifecycleResult {
        scenario: l.name().into(),
        backing: kind.name().into(),
        fs,
        outcome: "ok".into(),
        reason: None,
        breaker: breaker.name().into(),
        breaker_result: Some(broke.result),
        breaker_wait_ms: Some(wait_ms),
        facts,
        verdicts,
        violations,
    })
}

fn describe(e: &Event) -> Option<String> {
    Some(match e {
        Event::Ready { acquire_ns, .. } => format!("lease taken ({acquire_ns} ns), pin registered"),
        Event::Signal { pid, .. } => format!("break signal delivered to pid {pid}"),
        Event::Released { how, .. } => format!("holder released the lease ({how})"),
        Event::Revoked { .. } => "lease revoked after lease-break-time".into(),
        Event::DeviceWrite { phase, result } => format!("device write {phase}: {result}"),
        Event::Fact { key, value } => format!("{key} = {value}"),
        _ => return None,
    })
}

/// The 2019 RFC's promises, on a kernel that accepts layout leases: a long-term pin without
/// the lease is refused; with an exclusive layout lease held, truncating the pinned range
/// fails with ETXTBSY instead of waiting or losing data; the lease cannot be released while
/// pins exist. Each check records what the kernel answered.
fn rfc_checks(job: &LeaseJob, b: &dyn Backing, checks: &mut BTreeMap<String, String>) {
    use pinstorm_workloads::pin::{io_uring::IoUringPinner, PinError, PinTarget, Pinner};
    use pinstorm_workloads::sys::{MapMode, Mapping};
    use std::os::fd::AsFd;
    let size = job.pin_size.bytes();
    let Ok(file) = lease_file(b, "layout-lease-rfc", size) else {
        return;
    };
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file.path())
    else {
        return;
    };
    let mode = MapMode {
        shared: true,
        writable: true,
        hugetlb: false,
        populate: true,
    };
    let Ok(map) = Mapping::file(f.as_fd(), size as usize, mode) else {
        return;
    };
    let target = PinTarget {
        addr: map.addr(),
        len: size as usize,
        writable: map.mode().writable,
    };
    let answer = |r: Result<(), PinError>| match r {
        Ok(()) => "ok".to_string(),
        Err(PinError::Kernel { errno, .. }) => errno.name(),
        Err(e) => e.to_string(),
    };
    let Ok(mut pinner) = IoUringPinner::new() else {
        return;
    };
    let r = pinner.register(target);
    if r.is_ok() {
        let _ = pinner.unregister();
    }
    checks.insert("pin_without_layout_lease (RFC: refused)".into(), answer(r));
    let layout = job.f_layout | libc::F_RDLCK | job.f_exclusive;
    let took = pinstorm_workloads::sys::fcntl_int(&f, libc::F_SETLEASE, layout);
    checks.insert(
        "exclusive_layout_lease".into(),
        took.map(|_| "ok".to_string()).unwrap_or_else(|e| e.name()),
    );
    let r = pinner.register(target);
    let pinned = r.is_ok();
    checks.insert("pin_with_layout_lease (RFC: ok)".into(), answer(r));
    if pinned {
        let t = rustix::fs::ftruncate(&f, 0)
            .map(|_| "ok".to_string())
            .unwrap_or_else(|e| Errno::from(e).name());
        checks.insert("truncate_of_pinned_range (RFC: ETXTBSY)".into(), t);
        let u = lease::set_lease(&f, None, 0)
            .map(|_| "ok".to_string())
            .unwrap_or_else(|e| e.name());
        checks.insert("release_lease_while_pinned (RFC: refused)".into(), u);
        let _ = pinner.unregister();
    }
    let _ = lease::set_lease(&f, None, 0);
}

/// Probe `F_SETLEASE` with the RFC's layout-lease flags. Upstream has none: EINVAL.
fn layout_probe(job: &LeaseJob, b: &dyn Backing) -> LayoutLeaseProbe {
    let mut p = LayoutLeaseProbe {
        outcome: "notrun".into(),
        reason: None,
        f_layout: job.f_layout,
        f_exclusive: job.f_exclusive,
        answers: BTreeMap::new(),
        checks: BTreeMap::new(),
    };
    let file = match lease_file(b, "layout-lease-probe", 4096) {
        Ok(f) => f,
        Err(e) => {
            p.reason = Some(e);
            return p;
        }
    };
    let fd = match std::fs::File::open(file.path()) {
        Ok(f) => f,
        Err(e) => {
            p.reason = Some(format!("opening the probe file: {e}"));
            return p;
        }
    };
    let tries = [
        ("F_LAYOUT|F_RDLCK", job.f_layout | libc::F_RDLCK),
        (
            "F_LAYOUT|F_RDLCK|F_EXCLUSIVE",
            job.f_layout | libc::F_RDLCK | job.f_exclusive,
        ),
    ];
    let mut accepted = false;
    for (name, arg) in tries {
        let r = pinstorm_workloads::sys::fcntl_int(&fd, libc::F_SETLEASE, arg);
        let answer = match r {
            Ok(_) => {
                accepted = true;
                let _ = lease::set_lease(&fd, None, 0);
                "ok".to_string()
            }
            Err(e) => e.name(),
        };
        p.answers.insert(name.into(), answer);
    }
    if accepted {
        p.outcome = "ok".into();
        rfc_checks(job, b, &mut p.checks);
    } else {
        p.reason = Some(format!(
            "this kernel has no layout leases: F_SETLEASE with F_LAYOUT ({}) answered {}",
            job.f_layout,
            p.answers.values().next().cloned().unwrap_or_default()
        ));
    }
    p
}
