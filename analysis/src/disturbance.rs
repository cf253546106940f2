//! How disturbed the machine was while a run measured, and what that means for its timings.
//!
//! The runner (`runners/src/disturbance.rs`) reads /proc and /sys and fills a
//! [`Disturbance`] per run and per job; this module owns the schema of that record, the one
//! judgement of whether an interval was disturbed ([`Disturbance::judged`], against the
//! thresholds below), the lines the run's summary prints, and what a comparison makes of
//! each run ([`RunNoise`]). It reads records only.
//!
//! Why: two runs of the same `bench pin` on hugetlbfs, one of them while another process
//! used the second core of a 2-core machine, crossed `p50>+50%`; rerun on a quiet machine,
//! the same pair differed by +4..+10%. A timing measured on a disturbed machine says more
//! about the machine than about the kernel, so `compare` does not judge latency gates on it
//! unless asked to (`--judge-disturbed`). Facts (pin outcomes, oracle counts) are judged
//! whatever the load: a lost write is a kernel bug however busy the machine was.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::schema::RunResult;

/// CPU time of processes outside the run's process tree above which an interval is
/// disturbed, in % of one CPU over the interval's wall time. The incident this guards
/// against was one busy process (~100%); a quiet machine's daemons use a few %, and
/// /proc/stat's tick accounting moves by a few % more over a second (see
/// [`TICK_SLACK_PER_BUSY_CPU`]). Deliberately not scaled by the number of CPUs: on a large
/// machine a neighbour on another core still shares caches, memory bandwidth and the mm
/// locks pinning takes.
pub const OTHER_CPU_PCT: f64 = 20.0;

/// Steal time above which an interval is disturbed, in % of one CPU: the hypervisor ran
/// something else on this guest's CPUs, which lands directly in whatever latency was being
/// measured there. The steal clock is accounted in nanoseconds, so small values are real.
pub const STEAL_PCT: f64 = 5.0;

/// How far /proc/stat's tick accounting can be off over one interval: a tick in progress at
/// each end is not yet charged, on every CPU that was busy. The runner turns this into
/// [`Disturbance::resolution_pct`] (2 ticks x busy CPUs / ticks in the interval), which is
/// added to each threshold: a short interval must show more to be called disturbed (0.2 s
/// on two busy CPUs at 100 Hz is +-20% of a CPU; one second, +-4%).
pub const TICK_SLACK_PER_BUSY_CPU: f64 = 2.0;

/// What the machine did besides this run over one interval (a run, or one of its jobs).
/// Percentages are of one CPU over the interval's wall time: 100 is one CPU busy all along,
/// so numbers of intervals of different lengths and machines compare directly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Disturbance {
    pub wall_s: f64,
    /// CPUs in /proc/stat (online at the end).
    pub cpus: usize,
    /// CPU time (user and system) of every process outside this run's process tree:
    /// /proc/stat's `user + nice + system` less this process, its live descendants and the
    /// children it reaped (`utime + stime + cutime + cstime` from /proc/PID/stat), less the
    /// kernel threads ([`Disturbance::kernel_cpu_pct`]). Judged against [`OTHER_CPU_PCT`].
    pub other_cpu_pct: f64,
    /// This run's own process tree (pinstorm, its lease holders, the mkfs it ran).
    pub own_cpu_pct: f64,
    /// Kernel threads and interrupts (`irq + softirq`): shown, not judged, because they often
    /// work for this run (loop device workers of ext4/xfs/btrfs backings, compaction after
    /// huge pages were reserved, block completions).
    pub kernel_cpu_pct: f64,
    /// /proc/stat `steal`. Judged against [`STEAL_PCT`].
    pub steal_pct: f64,
    /// /proc/stat `iowait` (idle with I/O outstanding): shown, not judged.
    pub iowait_pct: f64,
    /// How far the CPU numbers can be off because /proc/stat counts in ticks (see
    /// [`TICK_SLACK_PER_BUSY_CPU`]); added to the thresholds.
    pub resolution_pct: f64,
    /// The 1-minute load average (/proc/loadavg) at the start, at the end and the highest
    /// sampled: shown, not judged (it counts this run's own threads and is averaged over a
    /// minute, so it cannot say who was running).
    pub load_start: f64,
    pub load_end: f64,
    pub load_max: f64,
    /// The lowest and highest `scaling_cur_freq` of any CPU in any sample, kHz; null when
    /// cpufreq is not readable (`freq_unreadable` says why). Shown, not judged: idle cores
    /// clock down as a matter of course.
    pub freq_min_khz: Option<u64>,
    pub freq_max_khz: Option<u64>,
    pub freq_unreadable: Option<String>,
    /// Samples of load and frequency taken (start, end and every 250 ms between).
    pub samples: u32,
    /// The judgement: true when a reason below holds.
    pub disturbed: bool,
    /// Why it was disturbed, each with its threshold.
    pub reasons: Vec<String>,
}

/// A job's interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobDisturbance {
    /// `probe`, `bench`, `leases`, `storm`.
    pub job: String,
    /// When the job ended, in seconds since the run's interval began (absent in older
    /// results): what a lab's "first result at" adds to boot and set-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_s: Option<f64>,
    #[serde(flatten)]
    pub measured: Disturbance,
}

/// The disturbance of a whole run and of each of its jobs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunDisturbance {
    /// From the capture of the environment to the final result (so far, while running).
    pub run: Disturbance,
    /// Each job that ran, in order.
    pub jobs: Vec<JobDisturbance>,
}

fn pct(x: f64) -> String {
    if x.abs() < 10.0 {
        format!("{x:.1}%")
    } else {
        format!("{x:.0}%")
    }
}

impl Disturbance {
    /// The judgement: `reasons` from the thresholds, `disturbed` when there is one.
    pub fn judged(mut self) -> Disturbance {
        let slack = |t: f64| {
            if self.resolution_pct >= 0.5 {
                format!(
                    "threshold {} + {} tick resolution",
                    pct(t),
                    pct(self.resolution_pct)
                )
            } else {
                format!("threshold {}", pct(t))
            }
        };
        let mut reasons = Vec::new();
        if self.other_cpu_pct > OTHER_CPU_PCT + self.resolution_pct {
            reasons.push(format!(
                "other processes used {} of a CPU ({})",
                pct(self.other_cpu_pct),
                slack(OTHER_CPU_PCT)
            ));
        }
        if self.steal_pct > STEAL_PCT + self.resolution_pct {
            reasons.push(format!(
                "steal time took {} of a CPU ({})",
                pct(self.steal_pct),
                slack(STEAL_PCT)
            ));
        }
        self.disturbed = !reasons.is_empty();
        self.reasons = reasons;
        self
    }

    /// The numbers in one line: `other processes 3.1% of a CPU, steal 0.0%, ...`.
    pub fn numbers(&self) -> String {
        let freq = match (self.freq_min_khz, self.freq_max_khz, &self.freq_unreadable) {
            (Some(lo), Some(hi), _) => format!(
                "CPU frequency {:.2}..{:.2} GHz",
                lo as f64 / 1e6,
                hi as f64 / 1e6
            ),
            (_, _, Some(why)) => format!("CPU frequency not readable ({why})"),
            _ => "CPU frequency not sampled".into(),
        };
        format!(
            "other processes {} of a CPU, steal {}, kernel threads and interrupts {}, iowait {} (+-{} over {:.1} s); load {:.2}..{:.2} (max {:.2}); {freq}",
            pct(self.other_cpu_pct),
            pct(self.steal_pct),
            pct(self.kernel_cpu_pct),
            pct(self.iowait_pct),
            pct(self.resolution_pct),
            self.wall_s,
            self.load_start,
            self.load_end,
            self.load_max,
        )
    }
}

impl RunDisturbance {
    /// Every disturbed interval of a job that times something, `bench job: reason; reason`
    /// (`whole run: ...` for the run when no job shows it). A job that times nothing (the
    /// probe, whose outcomes are facts, judged whatever the load) is not among them even when
    /// it ran beside other work ([`RunDisturbance::disturbed_untimed`]): in a lab guest the
    /// probe runs while the guest still loads its modules.
    pub fn disturbed(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .jobs
            .iter()
            .filter(|j| j.measured.disturbed && times_anything(&j.job))
            .map(|j| format!("{} job: {}", j.job, j.measured.reasons.join("; ")))
            .collect();
        let any_job = self.jobs.iter().any(|j| j.measured.disturbed);
        if out.is_empty() && !any_job && self.run.disturbed {
            out.push(format!("whole run: {}", self.run.reasons.join("; ")));
        }
        out
    }

    /// The disturbed intervals of jobs that time nothing, in the same words.
    pub fn disturbed_untimed(&self) -> Vec<String> {
        self.jobs
            .iter()
            .filter(|j| j.measured.disturbed && !times_anything(&j.job))
            .map(|j| format!("{} job: {}", j.job, j.measured.reasons.join("; ")))
            .collect()
    }
}

/// Whether a job measures latencies a comparison judges (a job [`job_of`] names).
pub fn times_anything(job: &str) -> bool {
    crate::metrics::LATENCY_KINDS
        .iter()
        .any(|k| job_of(k) == Some(job))
}

/// The thresholds, for help texts and notes.
pub fn thresholds() -> String {
    format!(
        "other processes above {} of a CPU, steal above {} of a CPU",
        pct(OTHER_CPU_PCT),
        pct(STEAL_PCT)
    )
}

/// The summary's lines: the run's numbers, and a warning naming each disturbed interval.
pub fn summary_lines(r: &RunResult) -> String {
    let mut out = String::new();
    let Some(d) = &r.disturbance else {
        let _ = writeln!(
            out,
            "\nMachine while measuring: not recorded (disturbance unknown)"
        );
        return out;
    };
    let bad = d.disturbed();
    let _ = writeln!(
        out,
        "\nMachine while measuring: {}: {}",
        if bad.is_empty() { "quiet" } else { "DISTURBED" },
        d.run.numbers()
    );
    if let Some(host) = r.lab.as_ref().and_then(|l| l.host_disturbance.as_ref()) {
        let _ = writeln!(
            out,
            "  lab host: {}: {}",
            if host.disturbed { "DISTURBED" } else { "quiet" },
            host.numbers()
        );
    }
    if !bad.is_empty() {
        let _ = writeln!(
            out,
            "  WARNING: the machine was disturbed while this run measured ({}); `pinstorm compare` does not judge latency gates on this run unless --judge-disturbed",
            bad.join("; ")
        );
    }
    let untimed = d.disturbed_untimed();
    if !untimed.is_empty() {
        let _ = writeln!(
            out,
            "  note: {}; that job times nothing, and its outcomes are judged whatever the load",
            untimed.join("; ")
        );
    }
    out
}

/// Which job measures a latency metric of this kind ([`crate::metrics::LATENCY_KINDS`]).
pub fn job_of(kind: &str) -> Option<&'static str> {
    match kind {
        "pin" => Some("bench"),
        "storm-pin" | "layout-op" => Some("storm"),
        "lease-break" | "lease-check" => Some("leases"),
        _ => None,
    }
}

/// What the judgements of noise read of a run: its id, its disturbance record and, for a
/// lab guest, its host's. A whole result gives one, and so does what analysis keeps of it
/// ([`crate::facts::RunFacts`]).
#[derive(Clone, Copy, Debug)]
pub struct NoiseRecord<'a> {
    pub run_id: &'a str,
    pub disturbance: Option<&'a RunDisturbance>,
    pub lab_host: Option<&'a Disturbance>,
}

impl<'a> From<&'a RunResult> for NoiseRecord<'a> {
    fn from(r: &'a RunResult) -> NoiseRecord<'a> {
        NoiseRecord {
            run_id: &r.run_id,
            disturbance: r.disturbance.as_ref(),
            lab_host: r.lab.as_ref().and_then(|l| l.host_disturbance.as_ref()),
        }
    }
}

/// The runs of one side (`side`: `base` or `cand`) that measured a latency metric of
/// `kind`: each that was disturbed while doing so goes to `disturbed` with why, each that
/// recorded nothing to `unknown`.
pub fn metric_noise<'a, R: Into<NoiseRecord<'a>>>(
    kind: &str,
    side: &str,
    runs: impl IntoIterator<Item = R>,
    disturbed: &mut Vec<String>,
    unknown: &mut Vec<String>,
) {
    for r in runs {
        let r = r.into();
        match RunNoise::of(r, job_of(kind)) {
            RunNoise::Quiet => {}
            RunNoise::Disturbed(why) => {
                disturbed.push(format!("{side} run {}: {}", r.run_id, why.join("; ")))
            }
            RunNoise::NotRecorded => unknown.push(format!("{side} run {}", r.run_id)),
        }
    }
}

/// What a comparison knows of one run's machine while it measured something.
#[derive(Clone, Debug, PartialEq)]
pub enum RunNoise {
    Quiet,
    /// Each disturbed interval with its reasons.
    Disturbed(Vec<String>),
    /// The result has no disturbance record (written before pinstorm recorded it, or the
    /// readings failed): unknown, not quiet.
    NotRecorded,
}

impl RunNoise {
    /// The run while its `job` ran (the whole run when the job has no interval of its own,
    /// or for `None`), with the lab host's disturbance when the run was a lab guest.
    pub fn of<'a>(r: impl Into<NoiseRecord<'a>>, job: Option<&str>) -> RunNoise {
        let r = r.into();
        let Some(d) = r.disturbance else {
            return RunNoise::NotRecorded;
        };
        let mut reasons = match job.and_then(|j| d.jobs.iter().find(|x| x.job == j)) {
            Some(j) if j.measured.disturbed => {
                vec![format!("{} job: {}", j.job, j.measured.reasons.join("; "))]
            }
            Some(_) => Vec::new(),
            None if job.is_some() && d.run.disturbed => {
                vec![format!("whole run: {}", d.run.reasons.join("; "))]
            }
            None if job.is_none() => d.disturbed(),
            None => Vec::new(),
        };
        if let Some(h) = r.lab_host {
            if h.disturbed {
                reasons.push(format!("lab host: {}", h.reasons.join("; ")));
            }
        }
        if reasons.is_empty() {
            RunNoise::Quiet
        } else {
            RunNoise::Disturbed(reasons)
        }
    }
}

/// One side of a comparison: how many of its runs were quiet, disturbed or unrecorded, and
/// each run's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SideNoise {
    pub quiet: usize,
    pub disturbed: usize,
    pub not_recorded: usize,
    pub runs: Vec<RunNoiseLine>,
}

/// One run of a side.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunNoiseLine {
    pub run_id: String,
    /// `quiet`, `disturbed` or `not recorded`.
    pub state: String,
    /// The numbers when quiet, the disturbed intervals and why, or why it is unknown.
    pub detail: String,
}

impl std::fmt::Display for RunNoiseLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state.as_str() {
            "disturbed" => "DISTURBED",
            s => s,
        };
        write!(f, "run {}: {state}: {}", self.run_id, self.detail)
    }
}

impl SideNoise {
    pub fn of<'a, R: Into<NoiseRecord<'a>>>(runs: impl IntoIterator<Item = R>) -> SideNoise {
        let mut s = SideNoise::default();
        for r in runs {
            let r = r.into();
            let (state, detail) = match RunNoise::of(r, None) {
                RunNoise::Quiet => {
                    s.quiet += 1;
                    let numbers = r.disturbance.map(|d| d.run.numbers());
                    ("quiet", numbers.unwrap_or_default())
                }
                RunNoise::Disturbed(why) => {
                    s.disturbed += 1;
                    ("disturbed", why.join("; "))
                }
                RunNoise::NotRecorded => {
                    s.not_recorded += 1;
                    (
                        "not recorded",
                        "an older result, or the readings failed: unknown, judged as measured"
                            .to_string(),
                    )
                }
            };
            s.runs.push(RunNoiseLine {
                run_id: r.run_id.to_string(),
                state: state.into(),
                detail,
            });
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::planted;

    fn interval(wall_s: f64, other: f64, steal: f64, resolution: f64) -> Disturbance {
        Disturbance {
            wall_s,
            cpus: 2,
            other_cpu_pct: other,
            steal_pct: steal,
            resolution_pct: resolution,
            ..Disturbance::default()
        }
        .judged()
    }

    #[test]
    fn other_processes_above_the_threshold_disturb_and_say_how_much() {
        let d = interval(10.0, 61.0, 0.0, 0.4);
        assert!(d.disturbed);
        assert_eq!(
            d.reasons,
            ["other processes used 61% of a CPU (threshold 20%)"]
        );
        let d = interval(10.0, 12.0, 0.3, 0.4);
        assert!(!d.disturbed && d.reasons.is_empty(), "{d:?}");
    }

    #[test]
    fn steal_above_its_threshold_disturbs_on_its_own() {
        let d = interval(10.0, 1.0, 7.5, 0.4);
        assert!(d.disturbed);
        assert_eq!(
            d.reasons,
            ["steal time took 7.5% of a CPU (threshold 5.0%)"]
        );
    }

    #[test]
    fn a_short_interval_needs_more_than_its_tick_resolution_beyond_the_threshold() {
        // 0.2 s on two busy CPUs at 100 Hz: +-20% of a CPU.
        assert!(!interval(0.2, 35.0, 0.0, 20.0).disturbed);
        let d = interval(0.2, 45.0, 0.0, 20.0);
        assert!(d.disturbed);
        assert_eq!(
            d.reasons,
            ["other processes used 45% of a CPU (threshold 20% + 20% tick resolution)"]
        );
    }

    #[test]
    fn a_run_is_judged_per_job_and_results_without_a_record_are_unknown() {
        let mut r = planted();
        assert_eq!(RunNoise::of(&r, Some("bench")), RunNoise::NotRecorded);
        let quiet = interval(5.0, 2.0, 0.0, 1.0);
        let busy = interval(5.0, 90.0, 0.0, 1.0);
        r.disturbance = Some(RunDisturbance {
            run: quiet.clone(),
            jobs: vec![
                JobDisturbance {
                    ended_s: None,
                    job: "probe".into(),
                    measured: quiet.clone(),
                },
                JobDisturbance {
                    ended_s: None,
                    job: "bench".into(),
                    measured: busy,
                },
            ],
        });
        assert_eq!(RunNoise::of(&r, Some("probe")), RunNoise::Quiet);
        let RunNoise::Disturbed(why) = RunNoise::of(&r, Some("bench")) else {
            panic!("bench was disturbed");
        };
        assert_eq!(
            why,
            ["bench job: other processes used 90% of a CPU (threshold 20% + 1.0% tick resolution)"]
        );
        // A job without an interval of its own (an older writer, an interrupted job) is
        // judged by the whole run; the whole run by every interval.
        assert_eq!(RunNoise::of(&r, Some("storm")), RunNoise::Quiet);
        assert!(matches!(RunNoise::of(&r, None), RunNoise::Disturbed(_)));
        let side = SideNoise::of([&r, &planted()]);
        assert_eq!((side.quiet, side.disturbed, side.not_recorded), (0, 1, 1));
        assert_eq!(side.runs[1].state, "not recorded", "{side:?}");
        assert!(
            side.runs[0].to_string().contains("DISTURBED: bench job"),
            "{side:?}"
        );
        let text = summary_lines(&r);
        assert!(
            text.contains("DISTURBED") && text.contains("WARNING") && text.contains("bench job"),
            "{text}"
        );
        assert!(summary_lines(&planted()).contains("not recorded"));

        // Only the probe ran beside other work (a lab guest loading its modules): nothing
        // it measured is a timing, so the run is quiet for comparisons and the summary says
        // why it mentions it.
        let d = r.disturbance.as_mut().unwrap();
        d.jobs[0].measured = interval(5.0, 40.0, 0.0, 1.0);
        d.jobs[1].measured = quiet.clone();
        d.run = interval(10.0, 25.0, 0.0, 1.0);
        assert_eq!(RunNoise::of(&r, Some("bench")), RunNoise::Quiet);
        assert_eq!(RunNoise::of(&r, None), RunNoise::Quiet);
        let text = summary_lines(&r);
        assert!(text.contains("Machine while measuring: quiet"), "{text}");
        assert!(!text.contains("WARNING"), "{text}");
        assert!(
            text.contains("note: probe job: other processes used 40% of a CPU")
                && text.contains("that job times nothing"),
            "{text}"
        );
        assert!(times_anything("bench") && times_anything("storm") && times_anything("leases"));
        assert!(!times_anything("probe"));
    }

    #[test]
    fn a_lab_guest_is_disturbed_when_its_host_was() {
        let mut r = planted();
        r.disturbance = Some(RunDisturbance {
            run: interval(5.0, 2.0, 0.0, 1.0),
            jobs: Vec::new(),
        });
        r.lab = Some(crate::schema::LabRecord {
            host_disturbance: Some(interval(5.0, 150.0, 0.0, 1.0)),
            ..Default::default()
        });
        let RunNoise::Disturbed(why) = RunNoise::of(&r, Some("bench")) else {
            panic!("the host was disturbed");
        };
        assert!(
            why[0].starts_with("lab host: other processes used 150%"),
            "{why:?}"
        );
    }

    #[test]
    fn results_without_disturbance_fields_load() {
        let mut v = serde_json::to_value(planted()).unwrap();
        v.as_object_mut().unwrap().remove("disturbance");
        let r = RunResult::from_json(&v.to_string()).unwrap();
        assert_eq!(r.disturbance, None);
        // A record from a newer writer with fields this one does not know still loads.
        let d: Disturbance =
            serde_json::from_str(r#"{"other_cpu_pct": 3.0, "psi_some": 1.0}"#).unwrap();
        assert_eq!(d.other_cpu_pct, 3.0);
    }
}
