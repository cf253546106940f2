//! Measuring how disturbed the machine is while a run measures: the CPU time of everything
//! outside this run's process tree, steal and iowait (cumulative counters in /proc/stat and
//! /proc/PID/stat, read at both ends of an interval), and the 1-minute load average and CPU
//! frequencies (sampled every [`SAMPLE_EVERY`] by one thread, since only their extremes
//! tell anything). The judgement of the numbers is analysis's
//! ([`pinstorm_analysis::disturbance`]); this module only reads /proc and /sys.
//!
//! Why subtract a process tree rather than count other processes: a process that starts and
//! exits inside the interval (a compiler job) is gone before anyone could read it, but its
//! time is in /proc/stat. This run's tree is known: this process (every thread, and the
//! children it reaped, through `cutime`/`cstime`) and its live descendants (lease holders,
//! mkfs). Kernel threads are counted apart: they often work for this run.

use std::collections::{BTreeMap, HashMap};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use pinstorm_analysis::disturbance::{
    Disturbance, JobDisturbance, RunDisturbance, TICK_SLACK_PER_BUSY_CPU,
};
use pinstorm_analysis::schema::RunResult;

/// How often the load average and CPU frequencies are sampled between the ends.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The aggregate `cpu` line of /proc/stat, in USER_HZ ticks (`guest` and `guest_nice` are
/// already inside `user` and `nice`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// The `cpu` line and the number of `cpuN` lines of /proc/stat's text.
    pub fn parse(proc_stat: &str) -> Result<(CpuTimes, usize)> {
        let Some(line) = proc_stat.lines().find(|l| l.starts_with("cpu ")) else {
            bail!("/proc/stat has no aggregate cpu line");
        };
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse::<u64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("/proc/stat: {line:?}"))?;
        // user nice system idle iowait irq softirq steal: steal since 2.6.11.
        if v.len() < 8 {
            bail!("/proc/stat: {line:?}: fewer than 8 fields");
        }
        let cpus = proc_stat
            .lines()
            .filter(|l| {
                l.strip_prefix("cpu")
                    .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            })
            .count();
        let t = CpuTimes {
            user: v[0],
            nice: v[1],
            system: v[2],
            idle: v[3],
            iowait: v[4],
            irq: v[5],
            softirq: v[6],
            steal: v[7],
        };
        Ok((t, cpus.max(1)))
    }
}

/// `(ppid, utime + stime + cutime + cstime)` from /proc/PID/stat's text. The command name
/// is in parentheses and may hold anything, spaces and `)` included: fields are counted
/// from the last `)`.
pub fn parse_pid_stat(text: &str) -> Option<(u32, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let ppid = f.get(1)?.parse().ok()?;
    let mut ticks = 0u64;
    for i in 11..=14 {
        // cutime and cstime are signed in the kernel's format; never negative in practice.
        ticks = ticks.saturating_add(f.get(i)?.parse::<i64>().ok()?.max(0) as u64);
    }
    Some((ppid, ticks))
}

/// CPU ticks of the tree rooted at `root` (it, its reaped children, its live descendants)
/// and of kernel threads, from the stat lines of every process (`pid -> (ppid, ticks)`).
pub fn split_ticks(procs: &HashMap<u32, (u32, u64)>, root: u32) -> (u64, u64) {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, (ppid, _)) in procs {
        children.entry(*ppid).or_default().push(*pid);
    }
    let mut own = 0u64;
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if let Some((_, t)) = procs.get(&p) {
            own = own.saturating_add(*t);
        }
        stack.extend(children.get(&p).into_iter().flatten());
    }
    // kthreadd is pid 2 and the parent of every kernel thread.
    let kernel = procs
        .iter()
        .filter(|(pid, (ppid, _))| **pid == 2 || *ppid == 2)
        .fold(0u64, |s, (_, (_, t))| s.saturating_add(*t));
    (own, kernel)
}

/// Every process's stat line that could be read (a process may exit while /proc is walked).
fn all_processes() -> Result<HashMap<u32, (u32, u64)>> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(e) = e else { continue };
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        if let Some(v) = parse_pid_stat(&text) {
            out.insert(pid, v);
        }
    }
    Ok(out)
}

/// The cumulative counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reading {
    pub cpu: CpuTimes,
    pub cpus: usize,
    /// This run's process tree.
    pub own: u64,
    /// Kernel threads.
    pub kernel: u64,
}

impl Reading {
    /// The counters now, and when /proc/stat was read (the interval's wall time is between
    /// those instants).
    pub fn now() -> Result<(Reading, Instant)> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let at = Instant::now();
        let (cpu, cpus) = CpuTimes::parse(&text)?;
        let (own, kernel) = split_ticks(&all_processes()?, std::process::id());
        let r = Reading {
            cpu,
            cpus,
            own,
            kernel,
        };
        Ok((r, at))
    }
}

/// The extremes of the sampled values over an interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    pub load_start: f64,
    pub load_end: f64,
    pub load_max: f64,
    pub freq: Option<(u64, u64)>,
    pub freq_unreadable: Option<String>,
    pub samples: u32,
}

/// One sample of the load average and every readable CPU frequency (lowest, highest).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub load: f64,
    pub freq: Result<(u64, u64), String>,
}

fn sample() -> Sample {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Sample {
        load,
        freq: frequencies(),
    }
}

/// The lowest and highest `scaling_cur_freq` (kHz) of the CPUs that have one, or why none.
fn frequencies() -> Result<(u64, u64), String> {
    let dir = "/sys/devices/system/cpu";
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{dir}: {e}"))?;
    let mut range: Option<(u64, u64)> = None;
    for e in entries.flatten() {
        let name = e.file_name();
        let is_cpu = name
            .to_str()
            .and_then(|n| n.strip_prefix("cpu"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_cpu {
            continue;
        }
        let Some(khz) = std::fs::read_to_string(e.path().join("cpufreq/scaling_cur_freq"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
        else {
            continue;
        };
        range = Some(match range {
            Some((lo, hi)) => (lo.min(khz), hi.max(khz)),
            None => (khz, khz),
        });
    }
    range.ok_or_else(|| format!("no {dir}/cpu*/cpufreq/scaling_cur_freq"))
}

impl Seen {
    fn first(s: &Sample) -> Seen {
        let mut seen = Seen {
            load_start: s.load,
            ..Seen::default()
        };
        seen.fold(s);
        seen
    }

    fn fold(&mut self, s: &Sample) {
        self.samples += 1;
        self.load_end = s.load;
        self.load_max = self.load_max.max(s.load);
        match &s.freq {
            Ok((lo, hi)) => {
                self.freq = Some(match self.freq {
                    Some((a, b)) => (a.min(*lo), b.max(*hi)),
                    None => (*lo, *hi),
                });
            }
            Err(why) if self.freq.is_none() => self.freq_unreadable = Some(why.clone()),
            Err(_) => {}
        }
    }
}

/// The judged disturbance between two readings `wall` apart, at `hz` ticks per second.
pub fn between(
    start: &Reading,
    end: &Reading,
    wall: Duration,
    seen: &Seen,
    hz: u64,
) -> Disturbance {
    let d = |a: u64, b: u64| b.saturating_sub(a) as f64;
    let (s, e) = (&start.cpu, &end.cpu);
    let processes = d(s.user + s.nice + s.system, e.user + e.nice + e.system);
    let own = d(start.own, end.own);
    let kthreads = d(start.kernel, end.kernel);
    let interrupts = d(s.irq + s.softirq, e.irq + e.softirq);
    // Ticks one CPU counts over the interval; at least one, so an empty interval divides.
    let span = (wall.as_secs_f64() * hz as f64).max(1.0);
    let of_one_cpu = |ticks: f64| ticks / span * 100.0;
    let busy_cpus = ((processes + interrupts) / span)
        .ceil()
        .clamp(1.0, end.cpus.max(1) as f64);
    Disturbance {
        wall_s: wall.as_secs_f64(),
        cpus: end.cpus,
        // Tick-sampled totals minus precise process times can dip below zero.
        other_cpu_pct: of_one_cpu((processes - own - kthreads).max(0.0)),
        own_cpu_pct: of_one_cpu(own),
        kernel_cpu_pct: of_one_cpu(kthreads + interrupts),
        steal_pct: of_one_cpu(d(s.steal, e.steal)),
        iowait_pct: of_one_cpu(d(s.iowait, e.iowait)),
        resolution_pct: of_one_cpu(TICK_SLACK_PER_BUSY_CPU * busy_cpus),
        load_start: seen.load_start,
        load_end: seen.load_end,
        load_max: seen.load_max,
        freq_min_khz: seen.freq.map(|f| f.0),
        freq_max_khz: seen.freq.map(|f| f.1),
        freq_unreadable: seen.freq.is_none().then(|| {
            seen.freq_unreadable
                .clone()
                .unwrap_or_else(|| "not sampled".into())
        }),
        samples: seen.samples,
        ..Disturbance::default()
    }
    .judged()
}

type Open = Arc<Mutex<BTreeMap<u64, Seen>>>;

/// The sampling thread and the intervals open on it.
pub struct Monitor {
    open: Open,
    next: std::sync::atomic::AtomicU64,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// One measured interval: its readings at the start, and its extremes as they are sampled.
pub struct Interval {
    id: u64,
    at: Instant,
    start: Reading,
    open: Open,
}

impl Drop for Interval {
    fn drop(&mut self) {
        lock(&self.open).remove(&self.id);
    }
}

fn lock(open: &Open) -> std::sync::MutexGuard<'_, BTreeMap<u64, Seen>> {
    // A panic elsewhere while holding it leaves extremes that are still extremes.
    open.lock().unwrap_or_else(|p| p.into_inner())
}

impl Monitor {
    /// Start sampling. A thread that cannot be started leaves the ends' samples only.
    pub fn start() -> Monitor {
        let open: Open = Arc::default();
        let (tx, rx) = mpsc::channel::<()>();
        let shared = open.clone();
        let thread = std::thread::Builder::new()
            .name("pinstorm-noise".into())
            .spawn(move || {
                // Dropping the sender ends the wait at once.
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(SAMPLE_EVERY) {
                    let s = sample();
                    for seen in lock(&shared).values_mut() {
                        seen.fold(&s);
                    }
                }
            })
            .ok();
        Monitor {
            open,
            next: Default::default(),
            stop: Some(tx),
            thread,
        }
    }

    /// Open an interval now.
    pub fn begin(&self) -> Result<Interval> {
        let (start, at) = Reading::now()?;
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.open).insert(id, Seen::first(&sample()));
        Ok(Interval {
            id,
            at,
            start,
            open: self.open.clone(),
        })
    }

    /// The interval from its start until now (it stays open).
    pub fn measure(&self, iv: &Interval) -> Result<Disturbance> {
        let (end, at) = Reading::now()?;
        let wall = at.duration_since(iv.at);
        let s = sample();
        let seen = {
            let mut open = lock(&self.open);
            let seen = open.entry(iv.id).or_default();
            seen.fold(&s);
            seen.clone()
        };
        let hz = rustix::param::clock_ticks_per_second();
        Ok(between(&iv.start, &end, wall, &seen, hz))
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A run's intervals: the whole run, and one per job, recorded into its result.
pub struct RunMonitor {
    monitor: Monitor,
    whole: Option<Interval>,
}

impl RunMonitor {
    /// Start measuring the run; when the readings fail, why (the result then records no
    /// disturbance, which comparisons treat as unknown).
    pub fn start() -> (RunMonitor, Option<String>) {
        let monitor = Monitor::start();
        let (whole, note) = match monitor.begin() {
            Ok(iv) => (Some(iv), None),
            Err(e) => (
                None,
                Some(format!("the machine's disturbance was not recorded: {e:#}")),
            ),
        };
        (RunMonitor { monitor, whole }, note)
    }

    /// Start measuring a job (nothing when the run's readings failed).
    pub fn job(&self) -> Option<Interval> {
        self.whole.as_ref().and_then(|_| self.monitor.begin().ok())
    }

    /// Record the whole run so far and, when it was measured, the job `name` that just
    /// ended.
    pub fn record(&self, job: Option<(&str, Interval)>, result: &mut RunResult) {
        let Some(whole) = &self.whole else { return };
        let run = match self.monitor.measure(whole) {
            Ok(d) => d,
            Err(e) => {
                result.notes.push(format!(
                    "the machine's disturbance was not recorded at the end: {e:#}"
                ));
                return;
            }
        };
        let d = result
            .disturbance
            .get_or_insert_with(RunDisturbance::default);
        let ended_s = Some(run.wall_s);
        d.run = run;
        if let Some((name, iv)) = job {
            if let Ok(measured) = self.monitor.measure(&iv) {
                d.jobs.push(JobDisturbance {
                    job: name.into(),
                    ended_s,
                    measured,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
