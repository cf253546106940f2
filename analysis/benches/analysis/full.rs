//! Full-size results, shaped like one of `pinstorm run default` (~170 KB each): 60 benchmark
//! rows (io_uring x 5 backings x 4 sizes x 3 ops) with a histogram and a baseline histogram
//! of 2,000 samples each, 104 probe cells with their expectations, 4 storms with register
//! and layout-operation histograms and timelines, 40 storm verdicts and a disturbance
//! record. Histograms are drawn from a pool of variants (encoding a fresh 1 ns..1 h
//! HdrHistogram for each of 120,000 rows would take longer than the benchmark), assigned so
//! that runs differ from each other.

use pinstorm_analysis::disturbance::{Disturbance, JobDisturbance, RunDisturbance};
use pinstorm_analysis::hist::{Latency, Stats};
use pinstorm_analysis::oracle::Oracle;
use pinstorm_analysis::schema::*;
use pinstorm_analysis::verdict::Verdict;

const BACKINGS: [&str; 5] = ["anon", "anon-hugetlb", "memfd", "tmpfs", "hugetlbfs"];
const SIZES: [u64; 4] = [4096, 64 << 10, 2 << 20, 64 << 20];
const OPS: [&str; 3] = ["register", "unregister", "cycle"];
const VARIANTS: usize = 8;

/// splitmix64.
fn next(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` samples around `centre` ns with a tail, as pin latencies look: most within a few
/// percent, one in fifty up to 20x.
fn latency(centre: u64, n: usize, seed: &mut u64) -> (Stats, String) {
    let mut l = Latency::new();
    for _ in 0..n {
        let r = next(seed);
        let v = if r % 50 == 0 {
            centre * (2 + (r >> 8) % 18)
        } else {
            centre + (r >> 8) % (centre / 20 + 1)
        };
        l.record(v);
    }
    (l.stats(), l.encode())
}

/// Encoded histograms, `VARIANTS` per benchmark row and per storm histogram.
pub struct Pool {
    bench: Vec<Vec<(Stats, String)>>,
    storms: Vec<Vec<(Stats, String)>>,
}

impl Pool {
    pub fn new() -> Pool {
        let mut seed = 1;
        let mut bench = Vec::new();
        for (b, _) in BACKINGS.iter().enumerate() {
            for size in SIZES {
                for (o, _) in OPS.iter().enumerate() {
                    let centre = 300 + size / 64 + 200 * b as u64 + 150 * o as u64;
                    bench.push(
                        (0..VARIANTS)
                            .map(|v| latency(centre + centre * v as u64 / 40, 2000, &mut seed))
                            .collect(),
                    );
                }
            }
        }
        let storms = (0..12u64)
            .map(|i| {
                let (centre, n) = if i % 3 == 0 {
                    (30_000, 900)
                } else {
                    (200_000 + 50_000 * i, 100)
                };
                (0..VARIANTS as u64)
                    .map(|v| latency(centre + centre * v / 30, n, &mut seed))
                    .collect()
            })
            .collect();
        Pool { bench, storms }
    }
}

fn probe(pin: &str, backing: &str, map: &str, access: &str) -> ProbeRow {
    let ok = access == "rw" || pin == "vmsplice";
    ProbeRow {
        pin: pin.into(),
        backing: backing.into(),
        fs: backing.into(),
        map: map.into(),
        access: access.into(),
        size: 2 << 20,
        outcome: if ok { "ok" } else { "EFAULT" }.into(),
        reason: None,
        dax: Some(false),
        device_io: ok.then(|| "ok".into()),
        expected: Some(if ok { "ok" } else { "EFAULT" }.into()),
        verdict: Verdict::AsExpected,
        expected_because: Some(
            "anonymous, shmem and hugetlb memory is long-term pinnable; measured ok on 6.1, \
             6.12, 6.18 and 7.2"
                .into(),
        ),
    }
}

fn disturbance(i: usize) -> RunDisturbance {
    let interval = |other: f64| {
        Disturbance {
            wall_s: 60.0,
            cpus: 2,
            other_cpu_pct: other,
            resolution_pct: 0.4,
            ..Disturbance::default()
        }
        .judged()
    };
    RunDisturbance {
        run: interval(3.0 + (i % 5) as f64),
        jobs: ["probe", "bench", "storm"]
            .iter()
            .map(|j| JobDisturbance {
                ended_s: None,
                job: j.to_string(),
                measured: interval(2.0 + (i % 3) as f64),
            })
            .collect(),
    }
}

/// Run `i` of a kernel, with a label.
pub fn result(pool: &Pool, i: usize, kernel: &str, label: &str) -> RunResult {
    let pick = |variants: &[(Stats, String)], row: usize| variants[(i + row) % VARIANTS].clone();
    let mut bench = Vec::new();
    let mut row = 0;
    for backing in BACKINGS {
        for size in SIZES {
            for op in OPS {
                let (stats, histogram) = pick(&pool.bench[row], row);
                let (_, baseline) = pick(&pool.bench[row], row + 1);
                bench.push(BenchRow {
                    pin: "io_uring".into(),
                    backing: backing.into(),
                    fs: backing.into(),
                    map: "shared".into(),
                    access: "rw".into(),
                    size,
                    op: op.into(),
                    threads: 1,
                    outcome: "ok".into(),
                    reason: None,
                    baseline_p50_ns: Some(stats.p50_ns),
                    overhead_pct: Some(1.5),
                    ops_per_sec: Some(1e9 / stats.mean_ns),
                    stats: Some(stats),
                    histogram: Some(histogram),
                    baseline_histogram: Some(baseline),
                    dax: Some(false),
                    ..BenchRow::default()
                });
                row += 1;
            }
        }
    }
    let mut probe_rows = Vec::new();
    for pin in ["io_uring", "vmsplice"] {
        for backing in BACKINGS.iter().chain(&[
            "ext4",
            "xfs",
            "btrfs",
            "scratch-dir",
            "xfs-dax",
            "ext4-dax",
            "devdax",
            "zram",
        ]) {
            for map in ["shared", "private"] {
                for access in ["rw", "ro"] {
                    probe_rows.push(probe(pin, backing, map, access));
                }
            }
        }
    }
    let mut storms = Vec::new();
    let mut storm_verdicts = Vec::new();
    for (s, backing) in ["anon", "memfd", "tmpfs", "hugetlbfs"].iter().enumerate() {
        let (register, register_histogram) = pick(&pool.storms[3 * s], s);
        let layout_ops = ["truncate", "punch-hole"]
            .iter()
            .enumerate()
            .map(|(o, op)| {
                let (stats, histogram) = pick(&pool.storms[3 * s + 1 + o], s + o);
                LayoutOpResult {
                    op: op.to_string(),
                    outcome: "ok".into(),
                    reason: None,
                    count: stats.count,
                    errors: Default::default(),
                    stats: Some(stats),
                    histogram: Some(histogram),
                }
            })
            .collect();
        storms.push(StormResult {
            pin: "io_uring".into(),
            backing: backing.to_string(),
            fs: backing.to_string(),
            map: "shared".into(),
            outcome: "ok".into(),
            reason: None,
            dax: Some(false),
            pinners: 2,
            disruptors: 1,
            file_size: 2 << 20,
            hold_ns: 2_000_000,
            duration_ms: 30_000,
            seed: 1,
            totals: StormTotals {
                registrations: register.count,
                ..StormTotals::default()
            },
            register: Some(register),
            register_histogram: Some(register_histogram),
            layout_ops,
            timeline: (0..30)
                .map(|t| TimelinePoint {
                    second: t,
                    registrations: 30 + (t + i as u64) % 7,
                    layout_ops: 3 + (t + s as u64) % 4,
                    ..TimelinePoint::default()
                })
                .collect(),
            oracle: Oracle::default(),
            sequence_head: vec![vec![
                "truncate 0+4096".into(),
                "punch-hole 8192+4096".into(),
            ]],
            control: false,
            shapes: vec!["page".into()],
            shapes_notrun: Vec::new(),
            placement: Vec::new(),
        });
        for fact in [
            "registrations",
            "lost_write",
            "misplaced_write",
            "torn_write",
            "spill",
            "stale_exposure",
            "cross_file",
            "leaked_pins",
            "blocked",
            "unexpected_outcomes",
        ] {
            storm_verdicts.push(StormVerdict {
                pin: "io_uring".into(),
                backing: backing.to_string(),
                map: "shared".into(),
                control: false,
                fact: FactVerdict {
                    fact: fact.into(),
                    measured: "0".into(),
                    expected: Some("0".into()),
                    verdict: Verdict::AsExpected,
                    why: Some("no layout operation may lose a pinned write".into()),
                },
            });
        }
    }
    RunResult {
        command: vec!["pinstorm".into(), "run".into(), "default".into()],
        tool: Tool {
            name: "pinstorm".into(),
            version: "bench".into(),
        },
        label: Some(label.into()),
        probe: probe_rows,
        bench,
        storms,
        storm_verdicts,
        disturbance: Some(disturbance(i)),
        ..RunResult::new(
            &format!("20260101T000000.000Z-full-{i:04}"),
            format!(
                "2026-01-01T{:02}:{:02}:{:02}Z",
                i / 3600,
                i / 60 % 60,
                i % 60
            ),
            ScenarioRecord {
                name: "default".into(),
                origin: "preset".into(),
                seed: 1,
                text: String::new(),
            },
            Environment {
                kernel_release: kernel.into(),
                hostname: "bench".into(),
                cpus: 2,
                cpu_model: "AMD EPYC".into(),
                ..Environment::default()
            },
        )
    }
}
