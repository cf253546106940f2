use super::*;

use pinstorm_analysis::disturbance::OTHER_CPU_PCT;

const PROC_STAT: &str = "\
cpu  852499 326134 257913 1322618 12361 0 1766 4767 0 0
cpu0 419411 152840 123414 685540 5033 0 159 2359 0 0
cpu1 433088 173293 134499 637077 7327 0 1607 2407 0 0
intr 9570416 0 0 0
ctxt 1234
";

#[test]
fn the_aggregate_cpu_line_parses_and_cpus_are_counted() {
    let (t, cpus) = CpuTimes::parse(PROC_STAT).unwrap();
    assert_eq!(cpus, 2);
    assert_eq!(
        (t.user, t.system, t.idle, t.steal),
        (852499, 257913, 1322618, 4767)
    );
    assert!(CpuTimes::parse("intr 1\n").is_err());
    let e = CpuTimes::parse("cpu  1 2 x 4 5 6 7 8\n").unwrap_err();
    assert!(format!("{e:#}").contains("/proc/stat"), "{e:#}");
}

#[test]
fn a_process_name_with_spaces_and_parens_does_not_shift_the_fields() {
    // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    // utime stime cutime cstime ...
    let line = "4242 (a) b (c)) R 77 1 1 0 -1 0 0 0 0 0 150 50 7 3 20 0 1 0";
    assert_eq!(parse_pid_stat(line), Some((77, 210)));
    assert_eq!(parse_pid_stat("4242 (truncated) R 77"), None);
}

#[test]
fn the_run_tree_and_kernel_threads_are_told_apart_from_other_processes() {
    let procs: HashMap<u32, (u32, u64)> = [
        (1, (0, 1000)),   // init: other
        (100, (1, 500)),  // this run
        (200, (100, 40)), // a lease holder
        (201, (200, 2)),  // the holder's fork
        (2, (0, 0)),      // kthreadd
        (3, (2, 30)),     // a kworker
        (300, (1, 800)),  // a neighbour's build
    ]
    .into_iter()
    .collect();
    assert_eq!(split_ticks(&procs, 100), (542, 30));
}

fn reading(processes: u64, own: u64, kernel: u64, steal: u64) -> Reading {
    Reading {
        cpu: CpuTimes {
            user: processes,
            steal,
            ..CpuTimes::default()
        },
        cpus: 2,
        own,
        kernel,
    }
}

#[test]
fn planted_readings_of_a_busy_neighbour_are_disturbed_and_a_quiet_interval_is_not() {
    let seen = Seen {
        load_start: 1.0,
        load_end: 2.0,
        load_max: 2.5,
        freq: None,
        freq_unreadable: Some("no cpufreq".into()),
        samples: 9,
    };
    let start = reading(10_000, 5_000, 300, 40);
    // Two seconds at 100 Hz: this run kept one CPU busy (200 ticks), a kernel thread took
    // 10, and another process 150: 75% of a CPU.
    let end = reading(10_360, 5_200, 310, 41);
    let d = between(&start, &end, Duration::from_secs(2), &seen, 100);
    assert_eq!(
        (d.own_cpu_pct, d.other_cpu_pct, d.kernel_cpu_pct),
        (100.0, 75.0, 5.0)
    );
    assert_eq!(d.steal_pct, 0.5);
    // Two busy CPUs, two ticks each, out of 200.
    assert_eq!(d.resolution_pct, 2.0);
    assert!(d.disturbed);
    assert_eq!(
        d.reasons,
        ["other processes used 75% of a CPU (threshold 20% + 2.0% tick resolution)"]
    );
    assert_eq!((d.load_start, d.load_max, d.samples), (1.0, 2.5, 9));
    assert_eq!(d.freq_unreadable.as_deref(), Some("no cpufreq"));
    assert_eq!(d.freq_min_khz, None);

    // The same run with the neighbour at 10 ticks (5%) and 16 ticks of steal (8%).
    let end = reading(10_220, 5_200, 310, 56);
    let d = between(&start, &end, Duration::from_secs(2), &seen, 100);
    assert_eq!(d.other_cpu_pct, 5.0);
    assert_eq!(
        d.reasons,
        ["steal time took 8.0% of a CPU (threshold 5.0% + 2.0% tick resolution)"]
    );
    let end = reading(10_220, 5_200, 310, 42);
    assert!(!between(&start, &end, Duration::from_secs(2), &seen, 100).disturbed);
}

#[test]
fn frequencies_are_folded_into_the_lowest_and_highest_seen() {
    let mut seen = Seen::first(&Sample {
        load: 0.5,
        freq: Ok((1_200_000, 3_000_000)),
    });
    seen.fold(&Sample {
        load: 1.5,
        freq: Ok((800_000, 2_000_000)),
    });
    seen.fold(&Sample {
        load: 0.7,
        freq: Err("gone".into()),
    });
    assert_eq!(seen.freq, Some((800_000, 3_000_000)));
    assert_eq!(seen.freq_unreadable, None);
    assert_eq!(
        (seen.load_start, seen.load_end, seen.load_max, seen.samples),
        (0.5, 0.7, 1.5, 3)
    );
}

/// CPU ticks a process has used (utime + stime), read independently of the sampler.
fn ticks_of(pid: u32) -> (u32, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (ppid, all) = parse_pid_stat(&text).unwrap();
    let f: Vec<&str> = text[text.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    let mine = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    assert!(all >= mine);
    (ppid, mine)
}

/// Kills (and, for a child, reaps) a busy loop this test started, however the test ends.
struct Busy {
    pid: u32,
    child: Option<std::process::Child>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        if let Some(c) = &mut self.child {
            let _ = c.wait();
        }
    }
}

const BUSY: &str = "while :; do :; done";

fn pct(ticks: u64, wall_s: f64) -> f64 {
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64 / wall_s * 100.0
}

#[test]
fn a_busy_process_outside_the_run_is_counted_as_other_cpu_and_disturbs() {
    let m = Monitor::start();
    let iv = m.begin().unwrap();
    // The busy loop's parent exits at once: it is nobody's child here, as a neighbour's
    // process would be.
    let o = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("sh -c '{BUSY}' </dev/null >/dev/null 2>&1 & echo $!"),
        ])
        .output()
        .unwrap();
    let pid: u32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let busy = Busy { pid, child: None };
    std::thread::sleep(Duration::from_secs(2));
    let (ppid, witness) = ticks_of(pid);
    let d = m.measure(&iv).unwrap();
    drop(busy);
    assert_ne!(
        ppid,
        std::process::id(),
        "the busy loop must not be this run's child"
    );
    // Everything it used falls inside the interval: the recorded share of other processes
    // holds at least that (it may hold more: others build on this machine).
    let witness_pct = pct(witness, d.wall_s);
    assert!(witness_pct > 0.0, "the busy loop never ran: {d:?}");
    assert!(
        d.other_cpu_pct >= witness_pct - d.resolution_pct,
        "other {:.1}% < the busy loop's {witness_pct:.1}%: {d:?}",
        d.other_cpu_pct
    );
    assert!(
        d.other_cpu_pct > OTHER_CPU_PCT + d.resolution_pct && d.disturbed,
        "{d:?}"
    );
    assert!(d.reasons[0].starts_with("other processes used"), "{d:?}");
    assert!(d.samples >= 2, "{d:?}");
}

#[test]
fn a_busy_child_of_the_run_is_counted_as_its_own_cpu() {
    let m = Monitor::start();
    let iv = m.begin().unwrap();
    let (_, me_before) = ticks_of(std::process::id());
    let child = std::process::Command::new("sh")
        .args(["-c", BUSY])
        .spawn()
        .unwrap();
    let busy = Busy {
        pid: child.id(),
        child: Some(child),
    };
    std::thread::sleep(Duration::from_secs(2));
    let (_, witness) = ticks_of(busy.pid);
    let (_, me_after) = ticks_of(std::process::id());
    let d = m.measure(&iv).unwrap();
    drop(busy);
    // The run's own share is this process's plus its descendants': without the child it
    // would be this (mostly sleeping) process alone.
    let child_pct = pct(witness, d.wall_s);
    let me_pct = pct(me_after - me_before, d.wall_s);
    assert!(child_pct > 0.0, "the busy loop never ran: {d:?}");
    assert!(
        d.own_cpu_pct - me_pct >= child_pct - d.resolution_pct,
        "own {:.1}% less this process's {me_pct:.1}% misses the child's {child_pct:.1}%: {d:?}",
        d.own_cpu_pct
    );
}
