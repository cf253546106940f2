//! What comparisons, plots and exporters measure in a run, in one place: its latency
//! distributions (pin latency, storm pins, layout operations, lease breaks, lease-check
//! overhead), its violation counts by oracle, and its capability cells.

use std::collections::BTreeMap;

use crate::hist::Latency;
use crate::oracle::OracleKind;
use crate::schema::{Measured, RunResult};
use crate::summary::human_size;
use crate::verdict::{self, Verdict};

/// One latency distribution of a run (`H`: the histogram, full or [`crate::hist::Sparse`]).
#[derive(Clone, Debug)]
pub struct LatencyMetric<H = Latency> {
    /// `pin` (benchmark rows), `storm-pin` (pins taken during a storm), `layout-op`,
    /// `lease-break`, `lease-check`.
    pub kind: &'static str,
    /// The cell, in words: `io_uring tmpfs shared rw 4K register`.
    pub key: String,
    /// The same cell field by field, under its section, for tools that address metrics
    /// (KCIDB test paths): `[bench, io_uring, tmpfs, shared, rw, 4K, register]`,
    /// `[storm, io_uring, tmpfs, shared, register]`, `[storm, io_uring, tmpfs, shared,
    /// layout, truncate]`, `[lease, break, tmpfs, write, unlock, open-rdwr, pinned, wait]`,
    /// `[lease, check, tmpfs, with]`.
    pub path: Vec<String>,
    pub hist: H,
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

/// Every latency distribution in `r` that has samples. Histograms that do not decode are
/// left out (the stats in the file are still shown by `summary`).
pub fn latencies(r: &RunResult) -> Vec<LatencyMetric> {
    latencies_with(r, |h| Latency::decode(h).ok().filter(|l| l.count() > 0))
}

/// Every latency distribution in `r` for which `decode` gives a histogram (it is handed
/// each stored histogram in turn, and says `None` for one without samples).
pub fn latencies_with<H>(
    r: &RunResult,
    mut decode_stored: impl FnMut(&str) -> Option<H>,
) -> Vec<LatencyMetric<H>> {
    let mut decode = |h: Option<&str>| decode_stored(h?);
    let mut out = Vec::new();
    for b in r.bench.iter().filter(|b| b.outcome == "ok") {
        if let Some(hist) = decode(b.histogram.as_deref()) {
            out.push(LatencyMetric {
                kind: "pin",
                key: bench_key(
                    &b.pin, &b.backing, &b.map, &b.access, b.size, &b.op, b.threads,
                ),
                path: ["bench", &b.pin, &b.backing, &b.map, &b.access]
                    .into_iter()
                    .map(str::to_string)
                    .chain([human_size(b.size), b.op.clone()])
                    .chain((b.threads > 1).then(|| format!("x{}", b.threads)))
                    .collect(),
                hist,
            });
        }
    }
    for s in r.storms.iter().filter(|s| s.outcome == "ok") {
        let cell = s.cell();
        let storm_path = |leaf: &[&str]| -> Vec<String> {
            ["storm", &s.pin, &s.backing, &s.map]
                .iter()
                .chain(s.control.then_some(&"control"))
                .chain(leaf)
                .map(|p| p.to_string())
                .collect()
        };
        if let Some(hist) = decode(s.register_histogram.as_deref()) {
            out.push(LatencyMetric {
                kind: "storm-pin",
                key: format!("{cell} register during storm"),
                path: storm_path(&["register"]),
                hist,
            });
        }
        for op in s.layout_ops.iter().filter(|o| o.outcome == "ok") {
            if let Some(hist) = decode(op.histogram.as_deref()) {
                out.push(LatencyMetric {
                    kind: "layout-op",
                    key: format!("{} on {} {} (pinned by {})", op.op, s.backing, s.map, s.pin),
                    path: storm_path(&["layout", &op.op]),
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
            for (what, leaf, m) in [
                ("break wait", "wait", &b.breaker_wait),
                ("notify", "notify", &b.notify),
            ] {
                if let Some(hist) = decode(m.as_ref().map(|m: &Measured| m.histogram.as_str())) {
                    out.push(LatencyMetric {
                        kind: "lease-break",
                        key: format!("{cell}: {what}"),
                        path: [
                            "lease",
                            "break",
                            &b.backing,
                            &b.lease,
                            &b.behaviour,
                            &b.breaker,
                        ]
                        .into_iter()
                        .chain(b.pinned.then_some("pinned"))
                        .chain([leaf])
                        .map(str::to_string)
                        .collect(),
                        hist,
                    });
                }
            }
        }
        for o in l.overhead.iter().filter(|o| o.outcome == "ok") {
            for (what, leaf, m) in [
                ("without lease", "without", &o.without),
                ("with lease", "with", &o.with),
            ] {
                if let Some(hist) = decode(m.as_ref().map(|m: &Measured| m.histogram.as_str())) {
                    out.push(LatencyMetric {
                        kind: "lease-check",
                        key: format!("{} pin+unpin {what}", o.backing),
                        path: ["lease", "check", &o.backing, leaf]
                            .into_iter()
                            .map(str::to_string)
                            .collect(),
                        hist,
                    });
                }
            }
        }
    }
    out
}

/// The oracles that count correctness violations ([`OracleKind::VIOLATIONS`]), by name, in
/// the order tables show them.
pub const VIOLATION_KINDS: [&str; OracleKind::VIOLATIONS.len()] = {
    let mut names = [""; OracleKind::VIOLATIONS.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = OracleKind::VIOLATIONS[i].name();
        i += 1;
    }
    names
};

/// Violations by oracle, summed over the run's storms (and lease lifecycle scenarios as
/// `lifecycle`). Every kind is present, zero when none were seen.
pub fn violations(r: &RunResult) -> BTreeMap<&'static str, u64> {
    OracleKind::VIOLATIONS
        .iter()
        .map(|k| (k.name(), r.oracle_count(*k)))
        .collect()
}

/// Facts that differ from the expectations (probe cells, storm registrations and oracle
/// counts, lease lifecycle facts), as [`verdict::judge`] counts them.
pub fn differs(r: &RunResult) -> u64 {
    verdict::judge(r).count(Verdict::Differs) as u64
}

/// Facts that were compared with an expectation (as expected or differing).
pub fn judged(r: &RunResult) -> u64 {
    let j = verdict::judge(r);
    (j.count(Verdict::AsExpected) + j.count(Verdict::Differs)) as u64
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
    pub verdict: Verdict,
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
            verdict: p.verdict,
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
        let cell = format!("storm {}", s.cell());
        if s.outcome == "notrun" {
            v.push((cell.clone(), why(&s.reason)));
            continue;
        }
        for op in s.layout_ops.iter().filter(|o| o.outcome == "notrun") {
            v.push((format!("{cell} {}", op.op), why(&op.reason)));
        }
        for k in OracleKind::STORM {
            if let Some(n) = k.notrun(&s.oracle) {
                v.push((format!("{cell} oracle {k}"), n.to_string()));
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
