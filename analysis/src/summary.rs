//! The human summary of a run, printed on stdout after the machine-readable result is
//! safely on disk. Plain aligned text a kernel developer can paste into an email.

use std::fmt::Write;

mod bench;
mod storm;
mod storm_notes;
use crate::schema::{LeaseResults, Measured, ProbeRow, RunResult};
use crate::verdict::{self, Status, Verdict};
pub use bench::bench_table;
use storm::storm_details;
pub use storm::storm_table;

pub use crate::human::{human_ns, human_size};

/// Left-aligned columns, two spaces apart.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        let _ = writeln!(out, "  {}", s.join("  ").trim_end());
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub fn probe_table(rows: &[ProbeRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mark = match r.verdict {
                Verdict::Differs => format!(
                    "DIFFERS (expected {})",
                    r.expected.as_deref().unwrap_or("?")
                ),
                Verdict::NotRun => String::new(),
                v => v.words().into(),
            };
            vec![
                r.pin.clone(),
                r.backing.clone(),
                r.fs.clone(),
                r.map.clone(),
                r.access.clone(),
                match r.dax {
                    Some(true) => "dax".into(),
                    Some(false) => "-".into(),
                    None => "?".into(),
                },
                r.outcome.clone(),
                r.device_io.clone().unwrap_or_default(),
                mark,
            ]
        })
        .collect();
    table(
        &[
            "pin",
            "backing",
            "fs",
            "map",
            "access",
            "dax",
            "outcome",
            "device-io",
            "verdict",
        ],
        &body,
    )
}

/// Mount options as mountinfo gives them (per-mount, then superblock: `rw,relatime,rw`),
/// each once, in order.
fn once_each(options: &str) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for o in options.split(',').filter(|o| !o.is_empty()) {
        if !seen.contains(&o) {
            seen.push(o);
        }
    }
    seen.join(",")
}

fn p50(m: &Option<Measured>) -> String {
    match m {
        None => "-".into(),
        Some(m) => match (m.median_ci_low_ns, m.median_ci_high_ns) {
            (Some(lo), Some(hi)) => format!(
                "{} [{}, {}]",
                human_ns(m.stats.p50_ns as f64),
                human_ns(lo),
                human_ns(hi)
            ),
            _ => human_ns(m.stats.p50_ns as f64),
        },
    }
}

fn counts(m: &std::collections::BTreeMap<String, u32>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Long-term pins of pages in ZONE_MOVABLE: what moved, what it cost, what could not move,
/// and each fact's verdict (`[migration]`, docs/mm.md).
pub fn migration(out: &mut String, rows: &[crate::schema::MigrationResult]) {
    let _ = writeln!(
        out,
        "\nPin-time migration out of ZONE_MOVABLE (pages of fresh regions; first pin migrates, pin again does not):"
    );
    let p50 = |s: &Option<crate::hist::Stats>| {
        s.as_ref()
            .map_or("-".to_string(), |s| human_ns(s.p50_ns as f64))
    };
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|m| {
            if m.outcome != "ok" {
                return vec![m.pin.clone(), m.backing.clone(), m.outcome.clone()];
            }
            let differs = m
                .verdicts
                .iter()
                .filter(|v| v.verdict == Verdict::Differs)
                .map(|v| {
                    format!(
                        "{} = {} (expected {})",
                        v.fact,
                        v.measured,
                        v.expected.as_deref().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>();
            let judged = m
                .verdicts
                .iter()
                .filter(|v| matches!(v.verdict, Verdict::AsExpected | Verdict::Differs))
                .count();
            vec![
                m.pin.clone(),
                m.backing.clone(),
                "ok".into(),
                format!("{}/{}", m.migrated, m.movable_before),
                m.movable_while_pinned.to_string(),
                p50(&m.first_pin),
                p50(&m.repin),
                m.held.clone(),
                if differs.is_empty() {
                    format!("{judged} as expected")
                } else {
                    format!("DIFFERS: {}", differs.join("; "))
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "pin",
            "backing",
            "outcome",
            "moved out",
            "left in Movable",
            "first pin p50",
            "pin again p50",
            "pages a pipe holds",
            "verdict",
        ],
        &body,
    ));
    // Reasons below the table: a long one would widen a column for every row.
    for m in rows.iter().filter(|m| m.outcome != "ok") {
        let _ = writeln!(
            out,
            "  {} {}: {}: {}",
            m.pin,
            m.backing,
            m.outcome,
            m.reason.as_deref().unwrap_or("(no reason recorded)")
        );
    }
}

pub fn leases(out: &mut String, l: &LeaseResults) {
    let lbt = &l.lease_break_time;
    let lbt_text = match (lbt.original_s, lbt.used_s) {
        (Some(o), Some(u)) if o != u => {
            format!("fs/lease-break-time {u} s for the run ({o} s before, restored)")
        }
        (_, Some(u)) => format!("fs/lease-break-time {u} s"),
        _ => String::new(),
    };
    if !l.breaks.is_empty() {
        let _ = writeln!(
            out,
            "\nLease breaks ({lbt_text}; notify = breaker start to the holder's signal; medians with 95% bootstrap intervals):"
        );
        let body: Vec<Vec<String>> = l
            .breaks
            .iter()
            .map(|b| {
                if b.outcome != "ok" {
                    return vec![
                        b.backing.clone(),
                        b.lease.clone(),
                        b.behaviour.clone(),
                        b.breaker.clone(),
                        format!("notrun: {}", b.reason.as_deref().unwrap_or("")),
                    ];
                }
                vec![
                    b.backing.clone(),
                    b.lease.clone(),
                    b.behaviour.clone(),
                    b.breaker.clone(),
                    format!("{}/{}", b.signalled, b.rounds),
                    counts(&b.ended),
                    counts(&b.breaker_results),
                    p50(&b.notify),
                    p50(&b.breaker_wait),
                    p50(&b.acquire),
                    p50(&b.release),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "backing",
                "lease",
                "holder",
                "breaker",
                "signalled",
                "lease ended",
                "breaker got",
                "notify p50",
                "wait p50",
                "acquire p50",
                "release p50",
            ],
            &body,
        ));
    }
    if !l.overhead.is_empty() {
        let _ = writeln!(out, "\nLease-check overhead (pin register + unregister with a write lease held vs without; median difference, 95% bootstrap CI):");
        for o in &l.overhead {
            match (
                &o.without,
                &o.with,
                o.overhead_ns,
                o.ci_low_ns,
                o.ci_high_ns,
            ) {
                (Some(a), Some(b), Some(d), Some(lo), Some(hi)) => {
                    let _ = writeln!(
                        out,
                        "  {:<10} without {}  with {}  difference {d:+.0} ns [{lo:+.0}, {hi:+.0}] ({:+.2}%) {}",
                        o.backing,
                        human_ns(a.stats.p50_ns as f64),
                        human_ns(b.stats.p50_ns as f64),
                        o.overhead_pct.unwrap_or(0.0),
                        if o.significant == Some(true) { "SIGNIFICANT" } else { "not significant" }
                    );
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "  {:<10} notrun: {}",
                        o.backing,
                        o.reason.as_deref().unwrap_or("")
                    );
                }
            }
        }
    }
    if !l.lifecycle.is_empty() {
        let _ = writeln!(out, "\nLease lifecycle scenarios ({lbt_text}):");
        for s in &l.lifecycle {
            if s.outcome != "ok" {
                let _ = writeln!(
                    out,
                    "  {} ({}): notrun: {}",
                    s.scenario,
                    s.backing,
                    s.reason.as_deref().unwrap_or("")
                );
                continue;
            }
            let f = |k: &str| s.facts.get(k).cloned().unwrap_or_else(|| "-".into());
            let mut line = format!(
                "  {} ({}): signal to {}; lease ended: {}; {} waited {:.1} ms (for {})",
                s.scenario,
                s.backing,
                f("signalled_process"),
                f("lease_ended"),
                s.breaker,
                s.breaker_wait_ms.unwrap_or(0.0),
                f("breaker_waited_for")
            );
            if let Some(w) = s.facts.get("device_write_after_break") {
                line.push_str(&format!("; device write after the break: {w}"));
            }
            let _ = writeln!(out, "{line}");
            let judged: Vec<_> = s
                .verdicts
                .iter()
                .filter(|v| v.verdict.is_judged())
                .collect();
            let differ: Vec<_> = judged
                .iter()
                .filter(|v| v.verdict == Verdict::Differs)
                .collect();
            if differ.is_empty() {
                let _ = writeln!(out, "    {} facts as expected", judged.len());
            }
            for v in differ {
                let _ = writeln!(
                    out,
                    "    DIFFERS: {} = {}, expected {} ({})",
                    v.fact,
                    v.measured,
                    v.expected.as_deref().unwrap_or("?"),
                    v.why.as_deref().unwrap_or("")
                );
            }
            for v in &s.violations {
                let _ = writeln!(
                    out,
                    "    pin outlived the lease ({}): {}",
                    match s
                        .verdicts
                        .iter()
                        .find(|f| f.fact == "device_write_after_break")
                    {
                        Some(f) => f.verdict.words(),
                        None => Verdict::NoExpectation.words(),
                    },
                    v.what
                );
            }
        }
    }
    if let Some(p) = &l.layout_lease {
        match p.outcome.as_str() {
            "ok" => {
                let _ = writeln!(
                    out,
                    "\nLayout leases: accepted ({})",
                    p.answers
                        .iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "\nLayout leases: notrun: {}",
                    p.reason.as_deref().unwrap_or("")
                );
            }
        }
    }
}

/// The whole summary of a run.
pub fn render(r: &RunResult, result_path: Option<&std::path::Path>) -> String {
    let mut out = String::new();
    let e = &r.environment;
    let _ = writeln!(
        out,
        "pinstorm {} | scenario {} | kernel {} | {} | {} CPUs | run {}",
        r.tool.version, r.scenario.name, e.kernel_release, e.cpu_model, e.cpus, r.run_id
    );
    if let Some(l) = &r.label {
        let _ = writeln!(out, "label: {l}");
    }
    let notrun: Vec<_> = r.backings.iter().filter(|b| b.outcome != "ok").collect();
    if !r.backings.is_empty() {
        let _ = writeln!(out, "\nBackings:");
        for b in &r.backings {
            match b.outcome.as_str() {
                "ok" => {
                    let _ = writeln!(
                        out,
                        "  {:<14} {:<10} {}",
                        b.backing,
                        b.fs.as_deref().unwrap_or(""),
                        once_each(b.mount_options.as_deref().unwrap_or(""))
                    );
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "  {:<14} notrun: {}",
                        b.backing,
                        b.reason.as_deref().unwrap_or("")
                    );
                }
            }
        }
    }
    if !r.probe.is_empty() {
        let size = r
            .probe
            .first()
            .map(|p| human_size(p.size))
            .unwrap_or_default();
        let _ = writeln!(out, "\nCapability probe ({size} regions):");
        let ran: Vec<ProbeRow> = r
            .probe
            .iter()
            .filter(|p| p.outcome != "notrun")
            .cloned()
            .collect();
        out.push_str(&probe_table(&ran));
        let skipped = r.probe.len() - ran.len();
        if skipped > 0 {
            let _ = writeln!(
                out,
                "  ({skipped} cells notrun: {} backings unavailable)",
                notrun.len()
            );
        }
        let differ: Vec<&ProbeRow> = r
            .probe
            .iter()
            .filter(|p| p.verdict == Verdict::Differs)
            .collect();
        if let Some(x) = &r.expectations {
            let count = |v: Verdict| r.probe.iter().filter(|p| p.verdict == v).count();
            if differ.is_empty() {
                let _ = writeln!(
                    out,
                    "  All {} measured cells with an expectation agree with {} ({} without one).",
                    count(Verdict::AsExpected),
                    x.origin,
                    count(Verdict::NoExpectation)
                );
            } else {
                let _ = writeln!(
                    out,
                    "\n  {} cell(s) differ from {}:",
                    differ.len(),
                    x.origin
                );
                for p in differ {
                    let _ = writeln!(
                        out,
                        "    {} {} {} {}: measured {}, expected {} ({})",
                        p.pin,
                        p.backing,
                        p.map,
                        p.access,
                        p.outcome,
                        p.expected.as_deref().unwrap_or("?"),
                        p.expected_because.as_deref().unwrap_or("")
                    );
                }
            }
        }
    }
    if !r.bench.is_empty() {
        let first = &r.bench[0];
        let _ = writeln!(
            out,
            "\nPin latency ({} {}, {} thread(s); ns/4K = cycle p50 per 4 KiB page):",
            first.map, first.access, first.threads
        );
        out.push_str(&bench_table(&r.bench));
    }
    if !r.storms.is_empty() {
        // Anonymous memory has no file and so no disruptors: describe the job by its largest.
        let f = &r.storms[0];
        let disruptors = r.storms.iter().map(|s| s.disruptors).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "\nLayout storms ({} pinner(s), {} disruptor(s), {} ms each, seed {}; LOST/STALE/CROSS are violations):",
            f.pinners, disruptors, f.duration_ms, f.seed
        );
        out.push_str(&storm_table(&r.storms));
        storm_details(&mut out, &r.storms);
    }
    if !r.migration.is_empty() {
        migration(&mut out, &r.migration);
    }
    if let Some(l) = &r.leases {
        leases(&mut out, l);
    }
    if let Some(c) = &r.pin_counters {
        let _ = writeln!(
            out,
            "\nFOLL_PIN pages outstanding (/proc/vmstat): {} before, {} after (settled in {} ms)",
            c.outstanding_before, c.outstanding_after, c.settle_ms
        );
    }
    out.push_str(&crate::disturbance::summary_lines(r));
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    if let Some(sig) = &r.interrupted {
        let _ = writeln!(
            out,
            "\nINTERRUPTED by {sig}: the result holds what was measured before it."
        );
    }
    if let Some(err) = &r.error {
        let _ = writeln!(out, "\nSTOPPED by an error: {err}");
    }
    verdict_section(&mut out, r);
    if let Some(p) = result_path {
        let _ = writeln!(out, "\nresult: {}", p.display());
    }
    out
}

/// The run's verdict ([`verdict::judge`]), the same one the exit status, KTAP and JUnit
/// give: each differing fact, the storm oracles that had no expectation but counted
/// something, and the line with the exit status.
fn verdict_section(out: &mut String, r: &RunResult) {
    let j = verdict::judge(r);
    let _ = writeln!(out, "\nVerdict: {}", j.line());
    for f in j.differing() {
        let _ = writeln!(
            out,
            "  DIFFERS: {}: measured {}, expected {}{}",
            f.name,
            f.measured,
            f.expected.as_deref().unwrap_or("?"),
            f.why
                .as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        );
        if let Some(n) = &f.note {
            let _ = writeln!(out, "    {n}");
        }
    }
    let unjudged: Vec<String> = j
        .facts
        .iter()
        .filter(|f| {
            f.class == verdict::FactClass::Storm
                && f.verdict == Verdict::NoExpectation
                && f.measured.parse::<u64>().is_ok_and(|n| n > 0)
        })
        .map(|f| format!("{} {}", f.name, f.measured))
        .collect();
    if !unjudged.is_empty() {
        let _ = writeln!(
            out,
            "  counted with no expectation to judge them by (not part of the exit status): {}",
            unjudged.join("; ")
        );
    }
    if matches!(j.status, Status::Error(_) | Status::Interrupted(_)) {
        let _ = writeln!(
            out,
            "  the run did not complete: facts it did not reach were not judged"
        );
    }
}

#[cfg(test)]
mod tests;
