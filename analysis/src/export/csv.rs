//! CSV: one row per latency metric, violation count and capability cell of every run, with
//! the run's kernel, label, scenario, host and start time on each row (for spreadsheets,
//! pandas, R).

use std::fmt::Write;

use crate::catalog::LoadedRun;
use crate::metrics;

pub const HEADER: &str = "run_id,kernel_release,label,scenario,host,started,kind,cell,outcome,count,min_ns,p50_ns,p90_ns,p99_ns,p999_ns,max_ns,mean_ns";

/// A field, quoted when it has to be (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn render(runs: &[&LoadedRun]) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    for run in runs {
        let r = &run.result;
        let prefix = [
            r.run_id.as_str(),
            r.environment.kernel_release.as_str(),
            r.label.as_deref().unwrap_or(""),
            r.scenario.name.as_str(),
            r.environment.hostname.as_str(),
            r.started.as_str(),
        ]
        .map(field)
        .join(",");
        for l in metrics::latencies(r) {
            let s = l.hist.stats();
            let _ = writeln!(
                out,
                "{prefix},{},{},ok,{},{},{},{},{},{},{},{:.1}",
                l.kind,
                field(&l.key),
                s.count,
                s.min_ns,
                s.p50_ns,
                s.p90_ns,
                s.p99_ns,
                s.p999_ns,
                s.max_ns,
                s.mean_ns
            );
        }
        for (k, n) in metrics::violations(r) {
            let _ = writeln!(out, "{prefix},violation,{k},,{n},,,,,,,");
        }
        for c in metrics::cells(r) {
            let _ = writeln!(
                out,
                "{prefix},probe,{},{},,,,,,,,",
                field(&format!("{} ({})", c.key, c.fs)),
                field(&c.outcome)
            );
        }
    }
    out
}
