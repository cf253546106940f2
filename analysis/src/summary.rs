//! The human summary of a run, printed on stdout after the machine-readable result is
//! safely on disk. Plain aligned text a kernel developer can paste into an email.

use std::fmt::Write;

use crate::expect::verdict;
use crate::schema::{BenchRow, ProbeRow, RunResult};

/// `850ns`, `1.52us`, `1.28ms`, `2.05s`.
pub fn human_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0}ns")
    } else if ns < 1e6 {
        format!("{:.2}us", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2}ms", ns / 1e6)
    } else {
        format!("{:.2}s", ns / 1e9)
    }
}

pub fn human_size(bytes: u64) -> String {
    for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
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
            let mark = match r.verdict.as_str() {
                verdict::DIFFERS => format!(
                    "DIFFERS (expected {})",
                    r.expected.as_deref().unwrap_or("?")
                ),
                verdict::NO_EXPECTATION => "no expectation".into(),
                verdict::AS_EXPECTED => "as expected".into(),
                _ => String::new(),
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

pub fn bench_table(rows: &[BenchRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| match &r.stats {
            Some(s) if r.outcome == "ok" => vec![
                r.pin.clone(),
                r.backing.clone(),
                human_size(r.size),
                r.op.clone(),
                s.count.to_string(),
                human_ns(s.p50_ns as f64),
                human_ns(s.p99_ns as f64),
                human_ns(s.max_ns as f64),
                r.ops_per_sec.map(|v| format!("{v:.0}")).unwrap_or_default(),
                r.ns_per_4k_page
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_default(),
                match (r.baseline_p50_ns, r.overhead_pct) {
                    (Some(b), Some(o)) => format!("{} ({o:+.1}%)", human_ns(b as f64)),
                    _ => String::new(),
                },
            ],
            _ => vec![
                r.pin.clone(),
                r.backing.clone(),
                human_size(r.size),
                r.op.clone(),
                r.outcome.clone(),
                r.reason.clone().unwrap_or_default(),
            ],
        })
        .collect();
    table(
        &[
            "pin",
            "backing",
            "size",
            "op",
            "count",
            "p50",
            "p99",
            "max",
            "ops/s",
            "ns/4K",
            "tight loop p50 (ours vs it)",
        ],
        &body,
    )
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
                        b.mount_options.as_deref().unwrap_or("")
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
            .filter(|p| p.verdict == verdict::DIFFERS)
            .collect();
        if let Some(x) = &r.expectations {
            if differ.is_empty() {
                let _ = writeln!(
                    out,
                    "  All {} measured cells with an expectation agree with {} ({} without one).",
                    x.checked - x.without_expectation,
                    x.origin,
                    x.without_expectation
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
    if let Some(c) = &r.pin_counters {
        let _ = writeln!(
            out,
            "\nFOLL_PIN pages outstanding (/proc/vmstat): {} before, {} after (settled in {} ms)",
            c.outstanding_before, c.outstanding_after, c.settle_ms
        );
    }
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
    if let Some(p) = result_path {
        let _ = writeln!(out, "\nresult: {}", p.display());
    }
    out
}
