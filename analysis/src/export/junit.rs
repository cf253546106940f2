//! JUnit XML (the format generic CI systems read): one `<testsuite>` per run, one
//! `<testcase>` per probe cell, storm oracle and lifecycle fact, `<failure>` for a
//! violation or a differing cell, `<skipped>` with the reason for notrun.

use std::fmt::Write;

use super::{cases, Status};
use crate::catalog::LoadedRun;

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

pub fn render(runs: &[&LoadedRun]) -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"pinstorm\">\n",
    );
    for run in runs {
        let r = &run.result;
        let cs = cases(r);
        let failures = cs
            .iter()
            .filter(|c| matches!(c.status, Status::Fail(_)))
            .count();
        let skipped = cs
            .iter()
            .filter(|c| matches!(c.status, Status::Skip(_)))
            .count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" timestamp=\"{}\" hostname=\"{}\">",
            esc(&format!("pinstorm {} on {} ({})", r.scenario.name, r.environment.kernel_release, r.run_id)),
            cs.len(),
            esc(&r.started),
            esc(&r.environment.hostname),
        );
        let _ = writeln!(out, "    <properties>");
        for (k, v) in [
            ("kernel_release", r.environment.kernel_release.as_str()),
            ("kernel_version", r.environment.kernel_version.as_str()),
            ("label", r.label.as_deref().unwrap_or("")),
            ("run_id", r.run_id.as_str()),
            ("result", &run.path.display().to_string()),
        ] {
            let _ = writeln!(out, "      <property name=\"{k}\" value=\"{}\"/>", esc(v));
        }
        let _ = writeln!(out, "    </properties>");
        for c in &cs {
            let open = format!(
                "    <testcase classname=\"pinstorm.{}\" name=\"{}\"",
                c.class,
                esc(&c.name)
            );
            match &c.status {
                Status::Pass => {
                    let _ = writeln!(out, "{open}/>");
                }
                Status::Fail(why) => {
                    let _ = writeln!(
                        out,
                        "{open}>\n      <failure message=\"{}\"/>\n    </testcase>",
                        esc(why)
                    );
                }
                Status::Skip(why) => {
                    let _ = writeln!(
                        out,
                        "{open}>\n      <skipped message=\"{}\"/>\n    </testcase>",
                        esc(why)
                    );
                }
            }
        }
        let _ = writeln!(out, "  </testsuite>");
    }
    out.push_str("</testsuites>\n");
    out
}
