//! The benchmark's table: one line per row, then the failed calls, notes and reasons below
//! it (a long reason in a column would widen every row).

use std::collections::BTreeMap;

use super::{human_ns, human_size, table};
use crate::schema::BenchRow;

pub fn bench_table(rows: &[BenchRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| match &r.stats {
            // A row whose calls failed keeps the statistics of those that did not, next to
            // its outcome; the counts are below the table.
            Some(s) if r.outcome != "notrun" => vec![
                r.pin.clone(),
                r.backing.clone(),
                human_size(r.size),
                r.op.clone(),
                r.outcome.clone(),
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
            // The reason goes on its own line below the table: a long one would widen a
            // column of every row.
            _ => vec![
                r.pin.clone(),
                r.backing.clone(),
                human_size(r.size),
                r.op.clone(),
                r.outcome.clone(),
            ],
        })
        .collect();
    let out = table(
        &[
            "pin",
            "backing",
            "size",
            "op",
            "outcome",
            "count",
            "p50",
            "p99",
            "max",
            "ops/s",
            "ns/4K",
            "tight loop p50 (ours vs it)",
        ],
        &body,
    );
    // Failed calls per row, notes on measured rows (how a path ran, e.g. a skipped ODP
    // prefetch), and the reasons of rows that were not measured, once each.
    let mut notes: Vec<String> = Vec::new();
    let counts = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for r in rows {
        let cell = format!("{} {} {}", r.pin, r.backing, human_size(r.size));
        if !r.errors.is_empty() || !r.baseline_errors.is_empty() {
            let mut line = format!("  failed calls ({cell} {}):", r.op);
            if !r.errors.is_empty() {
                line.push_str(&format!(" {}", counts(&r.errors)));
            }
            if !r.baseline_errors.is_empty() {
                if !r.errors.is_empty() {
                    line.push(';');
                }
                line.push_str(&format!(" tight loop {}", counts(&r.baseline_errors)));
            }
            notes.push(line + "\n");
        }
        let Some(n) = &r.reason else { continue };
        let line = if r.outcome == "ok" && r.stats.is_some() {
            format!("  note ({} {}): {n}\n", r.pin, r.backing)
        } else if r.outcome == "notrun" {
            format!("  {} ({} {}): {n}\n", r.outcome, r.pin, r.backing)
        } else {
            format!("  {} ({cell} {}): {n}\n", r.outcome, r.op)
        };
        if !notes.contains(&line) {
            notes.push(line);
        }
    }
    let mut out = out;
    for n in notes {
        out.push_str(&n);
    }
    out
}
