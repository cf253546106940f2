//! What comparisons, plots and exporters measure in a run, in one place: its latency
//! distributions (pin latency, storm pins, layout operations, lease breaks, lease-check
//! overhead), its violation counts by oracle, and its capability cells.

use std::collections::BTreeMap;

use crate::hist::Latency;
use crate::schema::{Measured, RunResult};
use crate::summary::human_size;

/// One latency distribution of a run.
#[derive(Clone, Debug)]
pub struct LatencyMetric {
    /// `pin` (benchmark rows), `storm-pin` (pins taken during a storm), `layout-op`,
    /// `lease-break`, `lease-check`.
    pub kind: &'static str,
    /// The cell, in words: `io_uring tmpfs shared rw 4K register`.
    pub key: String,
    pub hist: Latency,
}

pub const LATENCY_KINDS: [&str; 5] = [
    "pin",
    "storm-pin",
    "layout-op",
    "lease-break",
    "lease-check",
];

/// The bench cell a pin-latency key names, for plots that pick `cycle` rows.
pub fn bench_key(
    pin: &str,
    backing: &str,
    map: &str,
    access: &str,
    size: u64,
    op: &str,
    threads: usize,
) -> String {
    let t = if threads > 1 {
        format!(" x{threads}")
    } else {
        String::new()
    };
    format!(
        "{pin} {backing} {map} {access} {} {op}{t}",
        human_size(size)
    )
}

fn decode(h: Option<&str>) -> Option<Latency> {
    Latency::decode(h?).ok().filter(|l| l.count() > 0)
}

fn measured(m: Option<&Measured>) -> Option<Latency> {
    decode(m.map(|m| m.histogram.as_str()))
}

/// Every latency distribution in `r` that has samples. Histograms that do not decode are
/// left out (the stats in the file are still shown by `summary`).
pub fn latencies(r: &RunResult) -> Vec<LatencyMetric> {
    let mut out = Vec::new();
    for b in r.bench.iter().filter(|b| b.outcome == "ok") {
        if let Some(hist) = decode(b.histogram.as_deref()) {
            out.push(LatencyMetric {
                kind: "pin",
                key: bench_key(
                    &b.pin, &b.backing, &b.map, &b.access, b.size, &b.op, b.threads,
                ),
                hist,
            });
        }
    }
    for s in r.storms.iter().filter(|s| s.outcome == "ok") {
        let cell = format!("{} {} {}", s.pin, s.backing, s.map);
        if let Some(hist) = decode(s.register_histogram.as_deref()) {
            out.push(LatencyMetric {
                kind: "storm-pin",
                key: format!("{cell} register during storm"),
                hist,
            });
        }
        for op in s.layout_ops.iter().filter(|o| o.outcome == "ok") {
            if let Some(hist) = decode(op.histogram.as_deref()) {
                out.push(LatencyMetric {
                    kind: "layout-op",
                    key: format!("{} on {} {} (pinned by {})", op.op, s.backing, s.map, s.pin),
                    hist,
                });
            }
        }
    }
    if let Some(l) = &r.leases {
        for b in l.breaks.iter().filter(|b| b.outcome == "ok") {
            let cell = format!(
                "{} {} lease, holder {}, breaker {}{}",
                b.backing,
                b.lease,
                b.behaviour,
                b.breaker,
                if b.pinned { ", pinned" } else { "" }
            );
            for (what, m) in [("break wait", &b.breaker_wait), ("notify", &b.notify)] {
                if let Some(hist) = measured(m.as_ref()) {
                    out.push(LatencyMetric {
                        kind: "lease-break",
                        key: format!("{cell}: {what}"),
                        hist,
                    });
                }
            }
        }
        for o in l.overhead.iter().filter(|o| o.outcome == "ok") {
            for (what, m) in [("without lease", &o.without), ("with lease", &o.with)] {
                if let Some(hist) = measured(m.as_ref()) {
                    out.push(LatencyMetric {
                        kind: "lease-check",
                        key: format!("{} pin+unpin {what}", o.backing),
                        hist,
                    });
                }
            }
        }
    }
    out
}

/// The oracles that count correctness violations, in the order tables show them.
pub const VIOLATION_KINDS: [&str; 7] = [
    "lost_write",
    "stale_exposure",
    "cross_file",
    "leaked_pins",
    "blocked",
    "kernel_warnings",
    "lifecycle",
];

/// Violations by oracle, summed over the run's storms (and lease lifecycle scenarios as
/// `lifecycle`). Every kind is present, zero when none were seen.
pub fn violations(r: &RunResult) -> BTreeMap<&'static str, u64> {
    let mut m: BTreeMap<&'static str, u64> = VIOLATION_KINDS.iter().map(|k| (*k, 0)).collect();
    // Counts come from files: saturate rather than overflow on edited ones.
    let mut add = |k: &'static str, n: u64| {
        let e = m.entry(k).or_default();
        *e = e.saturating_add(n);
    };
    for s in &r.storms {
        let o = &s.oracle;
        add("lost_write", o.lost_write.count);
        add("stale_exposure", o.stale_exposure.count);
        add("cross_file", o.cross_file.count);
        add("leaked_pins", o.leaked_pins.count);
        add("blocked", o.blocked.count);
        add("kernel_warnings", o.kernel_warnings.count);
    }
    if let Some(l) = &r.leases {
        for c in &l.lifecycle {
            add("lifecycle", c.violations.len() as u64);
        }
    }
    m
}

/// Cells whose outcome differs from the expectations: probe cells, lifecycle facts and
/// storm registrations the expectations did not expect.
pub fn differs(r: &RunResult) -> u64 {
    let probe = r.probe.iter().filter(|p| p.verdict == "differs").count() as u64;
    let facts = r
        .leases
        .iter()
        .flat_map(|l| &l.lifecycle)
        .flat_map(|c| &c.verdicts)
        .filter(|v| v.verdict == "differs")
        .count() as u64;
    let storms = r.storms.iter().fold(0u64, |t, s| {
        t.saturating_add(s.oracle.unexpected_outcomes.count)
    });
    probe.saturating_add(facts).saturating_add(storms)
}

/// One cell of the capability matrix, keyed without the filesystem (a scratch directory
/// may sit on different filesystems on different machines; the fs is shown, not matched).
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub key: String,
    pub pin: String,
    pub backing: String,
    pub map: String,
    pub access: String,
    pub fs: String,
    pub outcome: String,
    pub device_io: Option<String>,
    pub reason: Option<String>,
    pub verdict: String,
}

pub fn cells(r: &RunResult) -> Vec<Cell> {
    r.probe
        .iter()
        .map(|p| Cell {
            key: format!("{} {} {} {}", p.pin, p.backing, p.map, p.access),
            pin: p.pin.clone(),
            backing: p.backing.clone(),
            map: p.map.clone(),
            access: p.access.clone(),
            fs: p.fs.clone(),
            outcome: p.outcome.clone(),
            device_io: p.device_io.clone(),
            reason: p.reason.clone(),
            verdict: p.verdict.clone(),
        })
        .collect()
}

/// Everything in a run that did not run, and why: backings, probe cells, bench cells,
/// storms and their oracles, lease cells.
pub fn notrun(r: &RunResult) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let why = |r: &Option<String>| r.clone().unwrap_or_else(|| "no reason recorded".into());
    for b in r.backings.iter().filter(|b| b.outcome == "notrun") {
        v.push((format!("backing {}", b.backing), why(&b.reason)));
    }
    for p in r.probe.iter().filter(|p| p.outcome == "notrun") {
        v.push((
            format!("probe {} {} {} {}", p.pin, p.backing, p.map, p.access),
            why(&p.reason),
        ));
    }
    for b in r.bench.iter().filter(|b| b.outcome == "notrun") {
        v.push((
            format!("bench {} {} {}", b.pin, b.backing, human_size(b.size)),
            why(&b.reason),
        ));
    }
    for s in &r.storms {
        let cell = format!("storm {} {} {}", s.pin, s.backing, s.map);
        if s.outcome == "notrun" {
            v.push((cell.clone(), why(&s.reason)));
            continue;
        }
        for op in s.layout_ops.iter().filter(|o| o.outcome == "notrun") {
            v.push((format!("{cell} {}", op.op), why(&op.reason)));
        }
        let o = &s.oracle;
        for (name, n) in [
            ("lost_write", &o.lost_write.notrun),
            ("stale_exposure", &o.stale_exposure.notrun),
            ("cross_file", &o.cross_file.notrun),
            ("unexpected_outcomes", &o.unexpected_outcomes.notrun),
            ("leaked_pins", &o.leaked_pins.notrun),
            ("kernel_warnings", &o.kernel_warnings.notrun),
        ] {
            if let Some(n) = n {
                v.push((format!("{cell} oracle {name}"), n.clone()));
            }
        }
    }
    if let Some(l) = &r.leases {
        for b in l.breaks.iter().filter(|b| b.outcome == "notrun") {
            v.push((
                format!(
                    "lease break {} {} {} {}",
                    b.backing, b.lease, b.behaviour, b.breaker
                ),
                why(&b.reason),
            ));
        }
        for o in l.overhead.iter().filter(|o| o.outcome == "notrun") {
            v.push((format!("lease check {}", o.backing), why(&o.reason)));
        }
        for c in l.lifecycle.iter().filter(|c| c.outcome == "notrun") {
            v.push((
                format!("lifecycle {} {}", c.scenario, c.backing),
                why(&c.reason),
            ));
        }
        if let Some(ll) = l.layout_lease.as_ref().filter(|ll| ll.outcome == "notrun") {
            v.push(("layout lease".into(), why(&ll.reason)));
        }
    }
    v
}
