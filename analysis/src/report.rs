//! One self-contained HTML report: the charts (SVG, embedded as data URIs), the comparison
//! of each kernel group against the baseline group, per-kernel latency tables side by
//! side, the environment of every run, what did not run and why, and the files that could
//! not be read. No external resource is loaded, so the file can be mailed or archived.
//!
//! A small script marks `<body>` with `data-plots` (images), `data-plots-visible` (images
//! that decoded and have a size on the page) and `data-errors` (script errors seen), so a
//! headless browser can check that the report renders.

use std::fmt::Write;

use anyhow::Result;
use base64::Engine;

use crate::catalog::{Catalog, Indexed, RunFacts};
use crate::compare::{compare, CompareOptions, Comparison};
use crate::plot::{self, Chart, PlotData};
use crate::summary::human_ns;

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn table(out: &mut String, class: &str, header: &[&str], rows: &[Vec<String>]) {
    let _ = write!(out, "<table class=\"{class}\"><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>\n");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            // Cells are escaped by the callers that build them (some carry markup).
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

const STYLE: &str = "
body { font-family: 'DejaVu Sans', Arial, sans-serif; margin: 2em auto; max-width: 1450px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .85em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.slower { color: #b00; font-weight: bold; } .faster { color: #070; font-weight: bold; }
.verdict { font-size: 1.15em; font-weight: bold; padding: .5em; background: #f6f6f6; border-left: 5px solid #888; }
.verdict.REGRESSION { border-color: #b00; } .verdict.IMPROVED { border-color: #070; } .verdict.CHANGED { border-color: #d90; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; margin-top: .3em; }
.note { color: #555; font-size: .9em; }
details { margin: .4em 0; } summary { cursor: pointer; }
";

const SCRIPT: &str = "
(function () {
  var errors = [];
  window.addEventListener('error', function (e) { errors.push(String(e.message || e.type)); mark(); }, true);
  function mark() {
    var imgs = Array.prototype.slice.call(document.querySelectorAll('img.plot'));
    var visible = imgs.filter(function (i) {
      var r = i.getBoundingClientRect();
      var st = window.getComputedStyle(i);
      return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0 && r.width > 0 && r.height > 0
        && st.display !== 'none' && st.visibility !== 'hidden';
    });
    var broken = imgs.filter(function (i) { return visible.indexOf(i) < 0; }).map(function (i) { return i.alt; });
    document.body.setAttribute('data-plots', String(imgs.length));
    document.body.setAttribute('data-plots-visible', String(visible.length));
    document.body.setAttribute('data-plots-broken', broken.join('; '));
    document.body.setAttribute('data-errors', String(errors.length));
    document.body.setAttribute('data-error-text', errors.join('; '));
    document.body.setAttribute('data-checked', 'yes');
  }
  window.addEventListener('load', mark);
})();
";

/// An `<img>` of an SVG document, as a data URI.
pub fn svg_img(svg: &str, alt: &str) -> String {
    format!(
        "<img class=\"plot\" alt=\"{}\" src=\"data:image/svg+xml;base64,{}\">",
        esc(alt),
        base64::engine::general_purpose::STANDARD.encode(svg)
    )
}

fn comparison_html(out: &mut String, c: &Comparison) {
    let _ = writeln!(
        out,
        "<p class=\"verdict {}\">{}</p>",
        c.verdict.word.split(' ').next().unwrap_or(""),
        esc(&format!("Verdict: {}", c.verdict.line))
    );
    let rows: Vec<Vec<String>> = c
        .latency
        .iter()
        .map(|l| {
            let pct = |x: f64| {
                if x.is_finite() {
                    format!("{x:+.1}%")
                } else {
                    "n/a".into()
                }
            };
            vec![
                esc(&l.kind),
                esc(&l.key),
                esc(&l.stat),
                format!("{}", human_ns(l.base.value_ns)),
                format!("{}", human_ns(l.cand.value_ns)),
                pct(l.change_pct),
                format!("[{}, {}]", pct(l.ci_low_pct), pct(l.ci_high_pct)),
                format!("<span class=\"{}\">{}</span>", esc(&l.mark), esc(&l.mark)),
            ]
        })
        .collect();
    table(
        out,
        "latency",
        &[
            "kind", "cell", "stat", "base", "cand", "change", "interval", "mark",
        ],
        &rows,
    );
    let o = &c.options;
    let _ = writeln!(
        out,
        "<p class=\"note\">{:.0}% intervals of the change (Welch's t-test across runs when both sides have 2+ runs, \
else a bootstrap within runs). Significant (slower/faster) when the whole interval lies beyond a noise floor of \
{:.0}% ({:.0}% when a side has a single run, whose run-to-run noise cannot be measured). See docs/analysis.md.</p>",
        o.confidence * 100.0,
        o.min_effect_pct,
        o.min_effect_pct.max(o.single_run_noise_pct)
    );
    if c.outcomes.is_empty() {
        out.push_str("<p>No capability cell changed outcome.</p>\n");
    } else {
        let rows: Vec<Vec<String>> = c
            .outcomes
            .iter()
            .map(|o| {
                vec![
                    esc(&o.cell),
                    esc(&o.fs),
                    esc(&o.base),
                    esc(&o.cand),
                    esc(&o.change),
                ]
            })
            .collect();
        table(
            out,
            "outcomes",
            &["cell", "fs", "base", "cand", "change"],
            &rows,
        );
    }
    let rows: Vec<Vec<String>> = c
        .violations
        .iter()
        .chain(std::iter::once(&c.differs))
        .map(|v| {
            vec![
                esc(&v.what),
                format!("{:.2}", v.base_per_run),
                format!("{:.2}", v.cand_per_run),
            ]
        })
        .collect();
    table(
        out,
        "violations",
        &["violations per run", "base", "cand"],
        &rows,
    );
}

/// The report for these groups of runs (in order; the first is the baseline the others
/// are compared against).
pub fn render(
    catalog: &Catalog<RunFacts>,
    groups: &[(String, Vec<&RunFacts>)],
    options: &CompareOptions,
    title: &str,
) -> Result<String> {
    let data = PlotData::new(groups);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n<script>{SCRIPT}</script>\n</head><body>\n",
        esc(title)
    );
    let _ = writeln!(out, "<h1>{}</h1>", esc(title));
    let runs: usize = groups.iter().map(|g| g.1.len()).sum();
    let _ = writeln!(
        out,
        "<p>{runs} run(s) in {} group(s) by kernel and label: {}.</p>",
        groups.len(),
        groups
            .iter()
            .map(|(n, r)| format!(
                "<b>{}</b> ({} run{})",
                esc(n),
                r.len(),
                if r.len() == 1 { "" } else { "s" }
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );

    if groups.len() >= 2 {
        let _ = writeln!(out, "<h2>Comparisons against {}</h2>", esc(&groups[0].0));
        for (name, cand) in &groups[1..] {
            let c = compare(&groups[0].0, &groups[0].1, name, cand, options);
            let _ = writeln!(out, "<h3>{} versus {}</h3>", esc(name), esc(&groups[0].0));
            comparison_html(&mut out, &c);
        }
    } else {
        out.push_str("<p class=\"note\">One kernel group only: nothing to compare against.</p>\n");
    }

    out.push_str("<h2>Charts</h2>\n");
    for chart in Chart::ALL {
        if let Some(why) = chart.missing(&data) {
            let _ = writeln!(
                out,
                "<p class=\"note\">{}: not drawn, {}.</p>",
                esc(chart.title()),
                esc(why)
            );
            continue;
        }
        let svg = plot::svg(chart, &data)?;
        let _ = writeln!(
            out,
            "<figure id=\"{}\">{}<figcaption>{}</figcaption></figure>",
            chart.name(),
            svg_img(&svg, chart.title()),
            esc(chart.title())
        );
    }

    // Pin latency per kernel, side by side.
    if !data.pin_table.is_empty() {
        out.push_str("<h2>Pin latency per kernel (p50 / p99, all runs of a group together)</h2>\n");
        let mut header = vec!["cell".to_string()];
        header.extend(groups.iter().map(|g| g.0.clone()));
        let rows: Vec<Vec<String>> = data
            .pin_table
            .iter()
            .map(|(cell, per)| {
                let mut row = vec![esc(cell)];
                row.extend(per.iter().map(|v| {
                    v.map_or("-".into(), |(a, b)| {
                        format!("{} / {}", human_ns(a as f64), human_ns(b as f64))
                    })
                }));
                row
            })
            .collect();
        let h: Vec<&str> = header.iter().map(String::as_str).collect();
        table(&mut out, "side-by-side", &h, &rows);
    }

    out.push_str("<h2>Runs: environment and what did not run</h2>\n");
    for (name, runs) in groups {
        for r in runs {
            let nr = &r.notrun;
            let _ = writeln!(
                out,
                "<details><summary><b>{}</b>: run {} ({} on {}), {} notrun</summary>",
                esc(name),
                esc(r.run_id()),
                esc(r.scenario()),
                esc(r.host()),
                nr.len()
            );
            let env: Vec<Vec<String>> = r
                .environment
                .iter()
                .map(|(k, v)| vec![esc(k), esc(v)])
                .collect();
            table(&mut out, "env", &["", ""], &env);
            if !nr.is_empty() {
                let rows: Vec<Vec<String>> =
                    nr.iter().map(|(w, why)| vec![esc(w), esc(why)]).collect();
                table(&mut out, "notrun", &["not run", "why"], &rows);
            }
            out.push_str("</details>\n");
        }
    }
    if !catalog.skipped.is_empty() {
        out.push_str("<h2>Files not loaded</h2>\n");
        let rows: Vec<Vec<String>> = catalog
            .skipped
            .iter()
            .map(|s| vec![esc(&s.path.display().to_string()), esc(&s.reason)])
            .collect();
        table(&mut out, "skipped", &["file", "why"], &rows);
    }
    let _ = writeln!(
        out,
        "<p class=\"note\">Made by pinstorm {}. Schema: docs/result-schema.md; how to read comparisons: docs/analysis.md.</p>",
        env!("CARGO_PKG_VERSION")
    );
    out.push_str("</body></html>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ConsoleEvent, LabFact, LabRecord};

    #[test]
    fn a_lab_run_shows_its_kernel_qemu_guest_set_up_and_console_events() {
        let lab = LabRecord {
            kernel_spec: "deb:6.1".into(),
            kernel_source: vec!["debian:linux-image-6.1.0-57-amd64=6.1.192-3".into()],
            status: "ok".into(),
            accel: "tcg".into(),
            accel_reason: "no KVM".into(),
            qemu_command: Some("qemu-system-x86_64 -machine nvdimm=on".into()),
            console_log: "console.log".into(),
            console_events: vec![ConsoleEvent {
                kind: "warning".into(),
                line: 812,
                text: "WARNING: CPU: 1 PID: 7 at mm/gup.c:1 <script>".into(),
            }],
            wall_seconds: 45.2,
            timings: Some(crate::schema::LabTimings {
                boot_s: Some(11.5),
                setup_s: Some(4.0),
                run_s: Some(20.0),
                to_scenario_s: Some(15.5),
                first_result_s: Some(17.0),
                total_s: 45.2,
                ..crate::schema::LabTimings::default()
            }),
            guest: vec![LabFact {
                name: "fsdax-xfs".into(),
                outcome: "ok".into(),
                detail: "/dev/pmem0 xfs mounted dax=always".into(),
            }],
            ..LabRecord::default()
        };
        let rows = crate::facts::lab_rows(&lab);
        let text: Vec<String> = rows.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let all = text.join("\n");
        for want in [
            "lab kernel: deb:6.1 (debian:linux-image-6.1.0-57-amd64=6.1.192-3)",
            "lab status: ok",
            "lab accel: tcg (no KVM), 45.2 s in all",
            "lab QEMU: qemu-system-x86_64 -machine nvdimm=on",
            "lab guest set-up: fsdax-xfs ok: /dev/pmem0 xfs mounted dax=always",
            "lab phases: prepare 0.0s, boot 11.5s, set-up 4.0s, run 20.0s, end -; scenario at 15.5s, first result at 17.0s, total 45.2s",
            "lab console: warning at line 812: WARNING: CPU: 1 PID: 7 at mm/gup.c:1 <script>",
        ] {
            assert!(text.iter().any(|t| t == want), "{want} not in:\n{all}");
        }
        // The table escapes what a hostile console line holds.
        assert!(esc("<script>").contains("&lt;script&gt;"));
    }
}
