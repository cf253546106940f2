//! The storm table and each storm's details: layout operations, the first example of every
//! oracle with its history and reproducers, blocked syscalls and kernel warnings.

use std::fmt::Write;

use super::{human_ns, storm_notes, table};
use crate::oracle::OracleKind;
use crate::schema::StormResult;

pub fn storm_table(storms: &[StormResult]) -> String {
    let body: Vec<Vec<String>> = storms
        .iter()
        .filter(|s| s.outcome == "ok")
        .map(|s| {
            let o = &s.oracle;
            let t = &s.totals;
            let mut row = vec![
                s.pin.clone(),
                s.backing.clone(),
                s.fs.clone(),
                if s.control {
                    format!("{} (control)", s.map)
                } else {
                    s.map.clone()
                },
                format!(
                    "{}/{}",
                    t.registrations,
                    // Counts come from the file: saturate rather than overflow on edited
                    // ones.
                    t.register_errors
                        .values()
                        .fold(t.registrations, |a, b| a.saturating_add(*b))
                ),
                t.device_writes.to_string(),
                t.verified.to_string(),
                t.ambiguous.to_string(),
                storm_notes::ambiguity_ratio(t),
                t.readback_mismatches.to_string(),
            ];
            row.extend(
                OracleKind::STORM
                    .iter()
                    .map(|k| match (k.notrun(o), k.count(o)) {
                        (Some(_), 0) => "notrun".to_string(),
                        (_, n) => n.to_string(),
                    }),
            );
            row
        })
        .collect();
    let mut header = vec![
        "pin",
        "backing",
        "fs",
        "map",
        "pins ok/tried",
        "writes",
        "verified",
        "ambiguous",
        "amb/ver",
        "readback-mismatch",
    ];
    header.extend(OracleKind::STORM.iter().map(|k| k.column()));
    let mut out = table(&header, &body);
    for s in storms.iter().filter(|s| s.outcome != "ok") {
        let _ = writeln!(
            out,
            "  {}: notrun: {}",
            s.cell(),
            s.reason.as_deref().unwrap_or("")
        );
    }
    out.push_str(&storm_notes::storm_notes(storms));
    out
}

pub(super) fn storm_details(out: &mut String, storms: &[StormResult]) {
    let _ = writeln!(
        out,
        "  Layout operations per storm (count, p50, p99; errors; notrun reasons):"
    );
    for s in storms.iter().filter(|s| s.outcome == "ok") {
        let ops: Vec<String> = s
            .layout_ops
            .iter()
            .map(|l| match (&l.stats, l.outcome.as_str()) {
                (_, "notrun") => format!("{} notrun ({})", l.op, l.reason.as_deref().unwrap_or("")),
                (Some(st), _) => {
                    let errs: Vec<String> =
                        l.errors.iter().map(|(e, n)| format!("{e} x{n}")).collect();
                    let errs = if errs.is_empty() {
                        String::new()
                    } else {
                        format!(", errors {}", errs.join(" "))
                    };
                    format!(
                        "{} {} ({} / {}{errs})",
                        l.op,
                        l.count,
                        human_ns(st.p50_ns as f64),
                        human_ns(st.p99_ns as f64)
                    )
                }
                (None, _) => format!("{} 0", l.op),
            })
            .collect();
        if !ops.is_empty() {
            let _ = writeln!(out, "    {}: {}", s.cell(), ops.join("; "));
        }
    }
    for s in storms {
        let o = &s.oracle;
        for (kind, f) in OracleKind::STORM
            .iter()
            .filter_map(|k| Some((k, k.finding(o)?)))
        {
            if let Some(v) = f.examples.first() {
                let _ = writeln!(
                    out,
                    "\n  {} ({} in all) in {}{}: {} offset {}+{}",
                    kind.name().replace('_', " ").to_uppercase(),
                    f.count,
                    s.cell(),
                    if s.control {
                        ", seen without any layout change"
                    } else {
                        ""
                    },
                    v.file,
                    v.offset,
                    v.len
                );
                let _ = writeln!(out, "    {}", v.what);
                for h in &v.history {
                    let _ = writeln!(out, "      {h}");
                }
                let labels = ["reproduce", "that write alone"];
                for (label, line) in labels.iter().zip(&f.reproduce) {
                    let _ = writeln!(out, "    {label}: {line}");
                }
            }
        }
        for b in o.blocked.examples.iter().take(3) {
            let _ = writeln!(
                out,
                "\n  BLOCKED in {}: {} in {} (tid {}) for {} (wchan {})",
                s.cell(),
                b.op,
                b.thread,
                b.tid,
                b.blocked_ms
                    .map(|m| format!("{m:.1} ms"))
                    .unwrap_or_else(|| "ever (never returned)".into()),
                b.wchan.as_deref().unwrap_or("?")
            );
        }
        for l in o.kernel_warnings.lines.iter().take(5) {
            let _ = writeln!(out, "  KERNEL: {l}");
        }
    }
}
