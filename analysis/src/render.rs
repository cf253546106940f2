//! A [`Comparison`] as a terminal table or Markdown (JSON is its serde form). The verdict
//! line comes last, where a reader of a CI log looks first.

use std::fmt::Write;

use crate::compare::{Comparison, Side};
use crate::summary::{human_ns, table};

fn side_line(s: &Side) -> String {
    let runs = s.runs.len();
    let labels = if s.labels.is_empty() {
        String::new()
    } else {
        format!(", label {}", s.labels.join(", "))
    };
    let scen: std::collections::BTreeSet<&str> =
        s.runs.iter().map(|r| r.scenario.as_str()).collect();
    let hosts: std::collections::BTreeSet<&str> = s.runs.iter().map(|r| r.host.as_str()).collect();
    let incomplete = s.runs.iter().filter(|r| !r.complete).count();
    format!(
        "{}: kernel {}{labels}; {runs} run{} of {} on {}{}",
        s.name,
        s.kernels.join(", "),
        if runs == 1 { "" } else { "s" },
        scen.into_iter().collect::<Vec<_>>().join(", "),
        hosts.into_iter().collect::<Vec<_>>().join(", "),
        if incomplete > 0 {
            format!(" ({incomplete} incomplete)")
        } else {
            String::new()
        }
    )
}

/// Runs listed one by one per side; beyond that, the counts and every run that was not quiet.
const NOISE_RUNS: usize = 5;

/// How disturbed the machine was while each side measured: one line per run (or the counts
/// and the runs that were not quiet, for many runs).
fn noise_lines(c: &Comparison) -> Vec<String> {
    let mut out = Vec::new();
    for (name, s) in [("base", &c.base), ("cand", &c.cand)] {
        let n = &s.noise;
        if n.runs.len() <= NOISE_RUNS {
            out.extend(n.runs.iter().map(|r| format!("{name} {r}")));
            continue;
        }
        out.push(format!(
            "{name}: {} runs quiet, {} disturbed, {} not recorded",
            n.quiet, n.disturbed, n.not_recorded
        ));
        let loud: Vec<_> = n.runs.iter().filter(|r| r.state != "quiet").collect();
        out.extend(loud.iter().take(NOISE_RUNS).map(|r| format!("{name} {r}")));
        if loud.len() > NOISE_RUNS {
            out.push(format!(
                "{name}: ... and {} more (--format json lists them all)",
                loud.len() - NOISE_RUNS
            ));
        }
    }
    out
}

fn noise_heading() -> String {
    format!(
        "Machine while measuring (disturbed: {}; latency gates do not judge metrics measured on a disturbed machine unless --judge-disturbed):",
        crate::disturbance::thresholds()
    )
}

fn significance_note(c: &Comparison) -> String {
    let o = &c.options;
    format!(
        "{:.0}% intervals of the change: Welch's t-test across runs when both sides have 2+ runs, \
else a bootstrap within runs. A change is significant (marked slower/faster) when its whole interval \
lies beyond a noise floor of {:.0}% ({:.0}% when a side has one run: run-to-run noise cannot be \
measured from one run; repeat runs for finer resolution). ~ means no significant change.",
        o.confidence * 100.0,
        o.min_effect_pct,
        o.min_effect_pct.max(o.single_run_noise_pct)
    )
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{x:+.1}%")
    } else {
        "n/a".into()
    }
}

fn latency_rows(c: &Comparison) -> Vec<Vec<String>> {
    c.latency
        .iter()
        .map(|l| {
            vec![
                l.kind.clone(),
                l.key.clone(),
                l.stat.clone(),
                human_ns(l.base.value_ns),
                human_ns(l.cand.value_ns),
                pct(l.change_pct),
                format!("[{}, {}]", pct(l.ci_low_pct), pct(l.ci_high_pct)),
                if l.disturbed.is_empty() {
                    l.mark.clone()
                } else {
                    format!("{} (disturbed)", l.mark)
                },
            ]
        })
        .collect()
}

fn per_run(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn count_rows(c: &Comparison) -> Vec<Vec<String>> {
    c.violations
        .iter()
        .chain(std::iter::once(&c.differs))
        .map(|v| {
            let mark = if v.base_total == 0 && v.cand_total > 0 {
                "NEW"
            } else if v.base_total > 0 && v.cand_total == 0 {
                "gone"
            } else if v.cand_per_run > v.base_per_run {
                "more"
            } else if v.cand_per_run < v.base_per_run {
                "fewer"
            } else {
                "same"
            };
            vec![
                v.what.clone(),
                per_run(v.base_per_run),
                per_run(v.cand_per_run),
                mark.to_string(),
            ]
        })
        .collect()
}

fn outcome_rows(c: &Comparison) -> Vec<Vec<String>> {
    c.outcomes
        .iter()
        .map(|o| {
            vec![
                o.cell.clone(),
                o.fs.clone(),
                o.base.clone(),
                o.cand.clone(),
                o.change.clone(),
            ]
        })
        .collect()
}

const LAT_HEADER: [&str; 8] = [
    "kind", "cell", "stat", "base", "cand", "change", "interval", "mark",
];
const COUNT_HEADER: [&str; 4] = ["oracle", "base/run", "cand/run", ""];
const OUTCOME_HEADER: [&str; 5] = ["cell", "fs", "base", "cand", "change"];

/// How many of the metrics that crossed a gate are listed (the worst first); the JSON form
/// of the comparison has them all.
pub const GATE_EXAMPLES: usize = 5;

/// What a gate did with metrics measured on a disturbed machine, if there were any.
fn disturbed_note(g: &crate::gate::GateResult) -> String {
    match (g.disturbed, g.disturbed_judged) {
        (0, _) => String::new(),
        (n, true) => {
            format!(" ({n} measured on a disturbed machine, judged because of --judge-disturbed)")
        }
        (n, false) => format!(" ({n} measured on a disturbed machine not judged)"),
    }
}

/// One line per gate: passed, crossed (by how many), judged nothing, or inconclusive.
fn gate_line(g: &crate::gate::GateResult) -> String {
    if g.inconclusive {
        return format!(
            "INCONCLUSIVE {}: {} of {} metric(s) measured on a disturbed machine were not judged ({}); rerun on a quiet machine, or --judge-disturbed",
            g.expr,
            g.disturbed,
            g.matched,
            g.disturbed_by.join("; ")
        );
    }
    let note = disturbed_note(g);
    match (&g.missing, g.crossed, g.failed) {
        (_, true, _) => format!(
            "FAIL {}: crossed by {} of {} metric(s){note}{}",
            g.expr,
            g.by.len(),
            g.matched,
            if g.by.len() > GATE_EXAMPLES {
                format!(", the worst {GATE_EXAMPLES}:")
            } else {
                ":".into()
            }
        ),
        (Some(m), _, true) => format!("FAIL {}: judged nothing: {m}", g.expr),
        (Some(m), _, false) => format!(
            "pass {} (judged nothing: {m}; allowed by --allow-empty-gates)",
            g.expr
        ),
        (None, false, _) if g.judged < g.matched => format!(
            "pass {} ({} matched, {} judged: tails of a single run per side are not judged)",
            g.expr, g.matched, g.judged
        ),
        (None, false, _) => format!("pass {}{note}", g.expr),
    }
}

pub fn text(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Comparing");
    let _ = writeln!(out, "  base {}", side_line(&c.base));
    let _ = writeln!(out, "  cand {}", side_line(&c.cand));
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", noise_heading());
    for l in noise_lines(c) {
        let _ = writeln!(out, "  {l}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Latency (change = cand / base - 1):");
    if c.latency.is_empty() {
        let _ = writeln!(out, "  no latency metric was measured on both sides");
    } else {
        out.push_str(&table(&LAT_HEADER, &latency_rows(c)));
    }
    for (what, v) in [("base", &c.only_in_base), ("candidate", &c.only_in_cand)] {
        if !v.is_empty() {
            let _ = writeln!(out, "  measured in the {what} only: {}", v.join("; "));
        }
    }
    let _ = writeln!(out, "  {}", significance_note(c));
    let _ = writeln!(out);
    let _ = writeln!(out, "Capability cells whose outcome changed:");
    if c.outcomes.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        out.push_str(&table(&OUTCOME_HEADER, &outcome_rows(c)));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Violations and expectation differences (per run):");
    out.push_str(&table(&COUNT_HEADER, &count_rows(c)));
    if !c.gates.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Gates:");
        for g in &c.gates {
            let _ = writeln!(out, "  {}", gate_line(g));
            if g.crossed {
                for b in g.by.iter().take(GATE_EXAMPLES) {
                    let _ = writeln!(out, "         {b}");
                }
                if g.by.len() > GATE_EXAMPLES {
                    let _ = writeln!(
                        out,
                        "         ... and {} more (--format json lists them all)",
                        g.by.len() - GATE_EXAMPLES
                    );
                }
            }
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Verdict: {}", c.verdict.line);
    out
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

fn md_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| md_escape(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

pub fn markdown(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## pinstorm compare\n");
    let _ = writeln!(out, "**Verdict: {}**\n", md_escape(&c.verdict.line));
    let _ = writeln!(out, "- base {}", md_escape(&side_line(&c.base)));
    let _ = writeln!(out, "- cand {}\n", md_escape(&side_line(&c.cand)));
    let _ = writeln!(out, "{}\n", md_escape(&noise_heading()));
    for l in noise_lines(c) {
        let _ = writeln!(out, "- {}", md_escape(&l));
    }
    out.push('\n');
    let _ = writeln!(out, "### Latency\n");
    let rows: Vec<Vec<String>> = latency_rows(c)
        .into_iter()
        .map(|mut r| {
            // The mark in bold, what follows it (`(disturbed)`) not.
            r[7] = match r[7].split_once(' ') {
                _ if r[7].starts_with('~') => r[7].clone(),
                Some((mark, rest)) => format!("**{mark}** {rest}"),
                None => format!("**{}**", r[7]),
            };
            r
        })
        .collect();
    out.push_str(&md_table(&LAT_HEADER, &rows));
    let _ = writeln!(out, "\n{}\n", significance_note(c));
    for (what, v) in [("base", &c.only_in_base), ("candidate", &c.only_in_cand)] {
        if !v.is_empty() {
            let _ = writeln!(
                out,
                "Measured in the {what} only: {}\n",
                md_escape(&v.join("; "))
            );
        }
    }
    let _ = writeln!(out, "### Capability cells whose outcome changed\n");
    if c.outcomes.is_empty() {
        let _ = writeln!(out, "None.\n");
    } else {
        out.push_str(&md_table(&OUTCOME_HEADER, &outcome_rows(c)));
        out.push('\n');
    }
    let _ = writeln!(out, "### Violations (per run)\n");
    out.push_str(&md_table(&COUNT_HEADER, &count_rows(c)));
    if !c.gates.is_empty() {
        let _ = writeln!(out, "\n### Gates\n");
        for g in &c.gates {
            let mut by: Vec<String> = g.by.iter().take(GATE_EXAMPLES).cloned().collect();
            if g.by.len() > GATE_EXAMPLES {
                by.push(format!("... and {} more", g.by.len() - GATE_EXAMPLES));
            }
            if g.crossed {
                let _ = writeln!(
                    out,
                    "- **FAIL** `{}`: crossed by {}: {}",
                    g.expr,
                    g.by.len(),
                    md_escape(&by.join("; "))
                );
            } else if let (Some(m), true) = (&g.missing, g.failed) {
                let _ = writeln!(
                    out,
                    "- **FAIL** `{}`: judged nothing: {}",
                    g.expr,
                    md_escape(m)
                );
            } else {
                let _ = writeln!(out, "- {}", md_escape(&gate_line(g)));
            }
        }
    }
    out
}
